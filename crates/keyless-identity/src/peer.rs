//! The mTLS client identity (RFC 8705) as the HTTP layers see it.
//!
//! The binary's TLS listener verifies a client certificate against the
//! trust domain's current X.509 authorities and, when it is a valid
//! X509-SVID, puts a [`PeerSvid`] into every request's extensions. Only
//! that listener inserts it (nothing a client sends can), so a handler that
//! finds one knows the connection proved possession of that SVID's key.
//! It lives here, in the identity crate, so that every crate serving HTTP
//! (the STS binds OBO tokens to it, the secrets broker logs workloads in
//! with it) can read it without depending on another.

use aws_lc_rs::digest;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::SpiffeId;

/// A verified client X509-SVID of the TLS connection a request came on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSvid {
    pub spiffe_id: SpiffeId,
    /// The leaf certificate, DER.
    pub leaf_der: Vec<u8>,
}

// === impl PeerSvid ===

impl PeerSvid {
    /// RFC 8705 §3.1: base64url SHA-256 of the leaf's DER (`x5t#S256`).
    pub fn x5t_s256(&self) -> String {
        URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, &self.leaf_der))
    }
}
