//! The crate's one error type: every fallible identity operation returns it,
//! and `http.rs` maps it to a status in one exhaustive match.

use crate::spiffe_id::SpiffeIdError;

/// Errors of the identity service.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("invalid spiffe id: {0}")]
    SpiffeId(#[from] SpiffeIdError),
    #[error("invalid selector `{input}`: {reason}")]
    Selector { input: String, reason: &'static str },
    #[error("invalid registration entry: {0}")]
    InvalidEntry(String),
    #[error("{0}")]
    Conflict(String),
    #[error("registration entry `{0}` not found")]
    NotFound(String),
    #[error("trust domain mismatch: the store belongs to `{stored}`, configured `{configured}`")]
    TrustDomainMismatch { stored: String, configured: String },
    #[error("invalid identity configuration: {0}")]
    InvalidConfig(String),
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("invalid jwt-svid: {0}")]
    InvalidJwt(String),
    #[error("no active {0}")]
    NoAuthority(&'static str),
    #[error("certificate error: {0}")]
    Certificate(String),
    #[error("stored identity data is corrupt: {0}")]
    Corrupt(String),
    #[error("crypto error: {0}")]
    Crypto(String),
    #[error(transparent)]
    Store(#[from] keyless_store::StoreError),
    #[error("database error: {0}")]
    Database(#[from] keyless_store::sqlx::Error),
    #[error(transparent)]
    Audit(#[from] keyless_audit::SinkError),
}
