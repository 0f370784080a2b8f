//! The crate's one error type. Only `http.rs` maps it to the Vault wire
//! shape (`{"errors":[…]}` and a status), in one exhaustive match; details
//! of server-side failures are logged, never sent.

use keyless_store::StoreError;

/// Errors of the secrets broker.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    /// Malformed input from the caller (bad JSON shape, bad path, bad TTL).
    #[error("{0}")]
    InvalidRequest(String),
    /// No such secret, version, role, lease or connection.
    #[error("{0}")]
    NotFound(String),
    /// A token is missing, unknown, expired, or its policies do not allow
    /// the operation (Vault answers every one of these `permission denied`).
    #[error("permission denied")]
    PermissionDenied,
    /// A check-and-set or a state conflict (e.g. `cas` mismatch).
    #[error("{0}")]
    Conflict(String),
    /// A ciphertext failed to authenticate (wrong key, moved or altered).
    #[error("decryption failed: {0}")]
    Decrypt(String),
    /// The managed database refused or failed an operation.
    #[error("database: {0}")]
    Database(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A per-identity quota (leases, tokens) would be exceeded.
    #[error("{0}")]
    QuotaExceeded(String),
    /// The audit log could not record the event, so the action did not happen.
    #[error("audit log unavailable: {0}")]
    Audit(String),
    /// A rotating credential's hook failed, timed out or could not start:
    /// nothing was handed out and the previous credential stays valid.
    #[error("rotation failed: {0}")]
    Rotation(String),
    /// A lease revocation failed; the lease stays queued and is retried with
    /// backoff until it succeeds.
    #[error("{0}")]
    RevocationFailed(String),
    /// The external secrets backend (OpenBao/Vault) failed or refused
    /// Keyless itself (not the caller).
    #[error("secrets backend: {0}")]
    Backend(String),
}

impl From<sqlx::Error> for SecretsError {
    fn from(e: sqlx::Error) -> Self {
        Self::Store(StoreError::from(e))
    }
}
