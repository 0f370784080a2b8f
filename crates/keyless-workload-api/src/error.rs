//! The crate's one error type. Serving the socket and answering requests
//! both fail with it; `grpc.rs` maps each variant to a gRPC status in one
//! exhaustive match, so what a caller sees is decided in a single place.

use std::io;
use std::path::PathBuf;

use keyless_audit::SinkError;
use keyless_identity::IdentityError;

use crate::attest::AttestError;

/// Errors of the Workload API.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadApiError {
    #[error("cannot serve the workload api on `{path}`: {source}")]
    Socket { path: PathBuf, source: io::Error },
    #[error("`{0}` exists and is not a socket")]
    NotASocket(PathBuf),
    #[error("another server is already listening on `{0}`")]
    InUse(PathBuf),
    #[error("invalid workload api endpoint `{address}`: {reason}")]
    InvalidEndpoint {
        address: String,
        reason: &'static str,
    },
    #[error("grpc transport error: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The request lacks `workload.spiffe.io: true` (the SPIFFE guard
    /// against browsers and SSRF reaching the socket through a proxy).
    #[error("security header missing from request")]
    SecurityHeaderMissing,
    #[error("caller attestation failed: {0}")]
    Attestation(#[from] AttestError),
    /// The attested caller matches no registration entry (or not the one it
    /// asked for). The text is what SPIFFE clients match on.
    #[error("no identity issued")]
    NoIdentity,
    #[error("audience must be specified")]
    AudienceMissing,
    #[error("svid must be specified")]
    SvidMissing,
    #[error("invalid requested spiffe id `{0}`")]
    InvalidSpiffeId(String),
    /// A JWT-SVID given to `ValidateJWTSVID` failed validation.
    #[error("{0}")]
    InvalidJwtSvid(IdentityError),
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    Audit(#[from] SinkError),
    #[error("internal error: {0}")]
    Internal(&'static str),
}
