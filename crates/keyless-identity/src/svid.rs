//! The credentials handed to workloads: X509-SVIDs (certificate chain plus
//! its fresh private key) and JWT-SVIDs, and the result of validating one.

use std::fmt;
use std::time::SystemTime;

use crate::SpiffeId;

/// An X509-SVID with its private key.
#[derive(Clone)]
pub struct X509Svid {
    pub spiffe_id: SpiffeId,
    /// DER certificates: the leaf first, then the intermediate that signed it.
    pub cert_chain: Vec<Vec<u8>>,
    /// The leaf's private key, PKCS#8 DER. Only the workload ever gets it.
    pub private_key_pkcs8: Vec<u8>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    pub hint: String,
    /// The leaf's serial number, lowercase hex (for events and revocation lists).
    pub serial_hex: String,
}

// Deliberately omits the private key: SVIDs end up in logs via `{:?}`.
impl fmt::Debug for X509Svid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("X509Svid")
            .field("spiffe_id", &self.spiffe_id)
            .field("certs", &self.cert_chain.len())
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .field("hint", &self.hint)
            .field("serial_hex", &self.serial_hex)
            .finish_non_exhaustive()
    }
}

/// A signed JWT-SVID.
#[derive(Clone)]
pub struct JwtSvid {
    pub spiffe_id: SpiffeId,
    /// The compact JWS.
    pub token: String,
    pub issued_at: SystemTime,
    pub expires_at: SystemTime,
    pub hint: String,
}

// A JWT-SVID is a bearer token: never print it.
impl fmt::Debug for JwtSvid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtSvid")
            .field("spiffe_id", &self.spiffe_id)
            .field("issued_at", &self.issued_at)
            .field("expires_at", &self.expires_at)
            .field("hint", &self.hint)
            .finish_non_exhaustive()
    }
}

/// A JWT-SVID that passed [`crate::Identity::validate_jwt_svid`].
#[derive(Debug, Clone, PartialEq)]
pub struct ValidatedJwtSvid {
    pub spiffe_id: SpiffeId,
    pub claims: serde_json::Map<String, serde_json::Value>,
}
