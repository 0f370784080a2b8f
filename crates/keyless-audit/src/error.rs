//! The crate's error type, and the report of a failed verification.

use keyless_store::StoreError;

use crate::merkle::TreeError;

/// Errors of the audit log.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("event cannot be serialized: {0}")]
    Serialize(serde_json::Error),
    #[error("the audit log's origin is `{stored}`, not `{given}`")]
    OriginMismatch { stored: String, given: String },
    #[error("checkpoint key `{0}` does not match its recorded public key")]
    KeyMismatch(String),
    /// The stored log contradicts itself or its last checkpoint: the log
    /// refuses to append or sign until an operator has looked.
    #[error("the audit log is inconsistent: {0}; run `keyless audit verify`")]
    Inconsistent(String),
    /// Verification found tampering (see [`VerifyError`]).
    #[error(transparent)]
    Tampered(#[from] VerifyError),
    #[error(transparent)]
    Tree(#[from] TreeError),
    #[error("invalid range: {0}")]
    InvalidRange(String),
    #[error("no checkpoint has been issued yet")]
    NoCheckpoint,
    #[error("entry {0} does not exist")]
    NoSuchEntry(u64),
    #[error("the audit event was not stored: {0}")]
    WriteFailed(String),
    #[error("the audit log is closed")]
    Closed,
    #[error("internal error: {0}")]
    Internal(String),
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

/// What kind of tampering verification found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TamperKind {
    /// The entry's content no longer hashes to what was logged.
    Modified,
    /// The entry is missing.
    Removed,
    /// The entry holds another entry's content.
    Reordered,
    /// The entries from this index on were replaced, hashes recomputed:
    /// only the signed tree heads show it.
    Rewritten,
    /// A checkpoint was altered, replaced or removed.
    Checkpoint,
    /// A seal (per-batch signature) was altered.
    Seal,
    /// A checkpoint key's recorded public key was altered.
    Key,
}

/// Verification failed: where first, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct VerifyError {
    pub kind: TamperKind,
    /// The first tampered, removed or reordered entry, when entries were touched.
    pub first_bad_index: Option<u64>,
    /// The checkpoint (its `seq`) at fault, when a checkpoint was touched.
    pub checkpoint: Option<u64>,
    /// One line for a person.
    pub reason: String,
}
