//! SPIFFE identity for Keyless.
//!
//! This crate owns everything that makes a workload's identity: SPIFFE IDs
//! and trust domains, unix selectors and registration entries, the trust
//! domain's X.509 CA (root + intermediate per generation) and JWT signing
//! keys with their rotation, X509-/JWT-SVID minting and validation (an
//! X509-SVID outside a handshake in `x509.rs`),
//! the trust bundles, and (in [`http`], the only module that knows axum) the
//! federation bundle endpoint and OIDC discovery for JWT-SVIDs.
//!
//! Private keys never leave the [`keyless_store::KeyManager`]: CA and JWT keys
//! sign through a [`keyless_store::Signer`]; only the per-SVID leaf key is
//! generated here, in memory, and handed to the workload that asked for it.

mod ca;
mod db;
mod entry;
mod error;
pub mod http;
mod jwt;
pub mod memo;
mod peer;
mod rotation;
mod selector;
mod service;
mod spiffe_id;
mod svid;
mod x509;

pub use entry::{NewEntry, RegistrationEntry};
pub use error::IdentityError;
pub use peer::PeerSvid;
pub use selector::Selector;
pub use service::{Identity, IdentityConfig, MAX_ENTRY_TTL, TRUST_DOMAIN_META_KEY};
pub use spiffe_id::{SpiffeId, SpiffeIdError, TrustDomain};
pub use svid::{JwtSvid, ValidatedJwtSvid, X509Svid};
pub use x509::ValidatedX509Svid;
