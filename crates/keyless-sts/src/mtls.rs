//! The mTLS client identity (RFC 8705) as the STS sees it.
//!
//! The binary's TLS listener verifies a client certificate and, when it is
//! a valid X509-SVID, puts a [`PeerSvid`] into every request's extensions.
//! The token endpoint binds OBO tokens to it (`cnf.x5t#S256`); the gateway
//! can authenticate agents by it. The type itself lives in
//! `keyless-identity` (the secrets broker reads it too) and is re-exported
//! here so existing users compile unchanged.

pub use keyless_identity::PeerSvid;
