//! Tamper-evident audit log for Keyless: every security decision, provable
//! afterwards, and the live event bus behind the console's security panel.
//!
//! # Model
//!
//! - **Entries.** An [`Event`] (versioned schema, `v`) is serialized to
//!   canonical JSON ([`canonical`]: sorted keys, no whitespace, serde_json
//!   number forms) and appended at the next index. Its leaf hash is
//!   `SHA-256(0x00 ‖ json)`; the log is the RFC 6962 Merkle tree over the
//!   leaves ([`merkle`]). Rows are inserted, never updated.
//! - **Durability.** [`AuditLog::append`] (and [`EventSink::record`])
//!   returns only after the transaction holding the event has committed
//!   (SQLite `synchronous=FULL`, PostgreSQL commit). Appends are grouped:
//!   one writer task commits everything queued meanwhile in one
//!   transaction, so throughput grows with concurrency while every
//!   acknowledgement still follows its own commit.
//!   [`AuditLog::append_queued`] ([`EventSink::record_queued`]) queues
//!   for the next group commit without waiting, for decisions whose effect
//!   is checked against the log before it takes hold: events naming a
//!   token (`jti` detail) are indexed in `audit_jtis` in the same
//!   transaction, and [`AuditLog::has_jti`] tells a consumer whether the
//!   issuance is committed (the STS honours no on-behalf-of token before).
//!   Queued appends are refused while commits are failing.
//! - **Chain and seals.** Each row also stores the tree root after it (so an
//!   entry is chained to all before it), and each committed batch stores a
//!   *seal*: the checkpoint-key signature of the checkpoint body for the
//!   tree after the batch. Seals let `verify` name the first rewritten entry
//!   even when someone recomputed every hash (see [`verify`](mod@verify)).
//! - **Checkpoints.** C2SP tlog-checkpoint signed notes ([`note`]), Ed25519,
//!   issued at least once a second while the log grows and on demand
//!   ([`AuditLog::checkpoint_now`]). Each is signed only after an RFC 9162
//!   consistency proof from the previous checkpoint, generated from the
//!   current tree, has verified with the independent verifier ([`proof`]);
//!   otherwise nothing is signed and the error is raised. Every checkpoint
//!   is kept (`audit_checkpoints`).
//! - **Keys.** The checkpoint key lives in the key manager as
//!   `audit-checkpoint-<n>`; [`AuditLog::rotate_checkpoint_key`] makes the
//!   next one and records the rotation as an event. The public key of every
//!   checkpoint key ever used is kept in `audit_keys`.
//! - **Proofs.** Inclusion and consistency proofs (RFC 9162 §2.1.3–2.1.4)
//!   from the in-memory tree, which holds the leaf hashes plus cached
//!   subtree hashes (~36 bytes per entry), so a proof at a million entries
//!   takes microseconds.
//! - **Live bus.** Every committed entry is published, in index order, on a
//!   tokio broadcast channel ([`AuditLog::subscribe`]); [`http`] serves it as
//!   SSE with filters and `Last-Event-ID` resumption.
//!
//! Invariant: an event is acknowledged only once stored; the tree, the bus
//! and checkpoints only ever contain acknowledged-or-committed entries; no
//! checkpoint is signed that does not extend the previous one.
//!
//! # Tables (migration `0003_audit`)
//!
//! `audit_entries(idx PK, leaf_hash, root, event)`,
//! `audit_seals(tree_size PK, root, key_name, signature)`,
//! `audit_checkpoints(seq PK, tree_size, root, key_name, note, issued_at)`,
//! `audit_keys(seq PK, name UNIQUE, public_key, created_at)`; the origin is
//! recorded in `keyless_meta` as `audit.origin`.

pub mod canonical;
mod db;
pub mod error;
pub mod event;
pub mod http;
mod log;
pub mod merkle;
pub mod note;
pub mod proof;
pub mod verify;

pub use error::{AuditError, TamperKind, VerifyError};
pub use event::{EVENT_SCHEMA_VERSION, Event, EventSink, MemorySink, Outcome, SinkError, kinds};
pub use log::{
    AuditLog, BUS_CAPACITY, CHECKPOINT_INTERVAL, CHECKPOINT_KEY_PREFIX, ConsistencyProof,
    InclusionProof, LogEntry, latest_checkpoint,
};
pub use merkle::Hash;
pub use note::Checkpoint;
pub use proof::{ProofError, verify_consistency, verify_inclusion};
pub use verify::{
    EntryProof, VerifyReport, export, inclusion_proof, prove_entry, stored_origin, verify,
    verify_with_keys,
};
