//! X509-SVID validation outside a TLS handshake.
//!
//! The mTLS listener verifies a client certificate during the handshake;
//! a service that is only *told* about a certificate (the STS, when the
//! gateway passes on the X509-SVID an agent authenticated with) must not
//! take it on trust. [`Identity::validate_x509_svid`] runs the same WebPKI
//! verifier the listener runs (rustls' `WebPkiClientVerifier` on aws-lc-rs:
//! signature chain to a current root through one of our intermediates,
//! validity at `now`, the clientAuth usage), then the X509-SVID profile:
//! exactly one URI SAN, a SPIFFE ID of our trust domain with a path, not a
//! CA, no certificate-signing usage.
//!
//! A certificate is public: validating one proves that it is a current
//! SVID, not that whoever hands it over holds its key. Callers must only
//! accept it from a party that verified possession (a TLS handshake).

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::digest;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use x509_parser::extensions::GeneralName;

use crate::{IdentityError, SpiffeId, TrustDomain};

/// An X509-SVID leaf that passed [`crate::Identity::validate_x509_svid`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidatedX509Svid {
    pub spiffe_id: SpiffeId,
    /// RFC 8705 §3.1 thumbprint of the leaf (base64url SHA-256 of its DER).
    pub x5t_s256: String,
    /// The leaf's `notAfter`.
    pub not_after: SystemTime,
}

fn invalid(msg: impl Into<String>) -> IdentityError {
    IdentityError::Certificate(msg.into())
}

/// Validates `leaf` (DER) against `roots` through `intermediates` at `now`,
/// then the X509-SVID profile for `trust_domain`.
pub(crate) fn validate(
    leaf: &[u8],
    roots: &[&[u8]],
    intermediates: &[&[u8]],
    trust_domain: &TrustDomain,
    now: SystemTime,
) -> Result<ValidatedX509Svid, IdentityError> {
    let mut store = RootCertStore::empty();
    for root in roots {
        store
            .add(CertificateDer::from(*root))
            .map_err(|e| IdentityError::Corrupt(format!("a trusted root: {e}")))?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(store), provider)
        .build()
        .map_err(|e| invalid(format!("no trusted root to verify against: {e}")))?;
    let intermediates: Vec<CertificateDer<'_>> = intermediates
        .iter()
        .map(|d| CertificateDer::from(*d))
        .collect();
    let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    verifier
        .verify_client_cert(
            &CertificateDer::from(leaf),
            &intermediates,
            UnixTime::since_unix_epoch(since_epoch),
        )
        .map_err(|e| invalid(format!("the certificate does not verify: {e}")))?;

    let (_, cert) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| invalid(format!("the certificate does not parse: {e}")))?;
    if cert.is_ca() {
        return Err(invalid("an x509-svid leaf is not a ca"));
    }
    if let Ok(Some(ku)) = cert.key_usage()
        && (ku.value.key_cert_sign() || ku.value.crl_sign())
    {
        return Err(invalid("an x509-svid leaf may not sign certificates"));
    }
    let san = cert
        .subject_alternative_name()
        .map_err(|e| invalid(format!("the subject alternative names: {e}")))?
        .ok_or_else(|| invalid("the certificate has no subject alternative name"))?;
    let mut uris = san.value.general_names.iter().filter_map(|n| match n {
        GeneralName::URI(u) => Some(*u),
        _ => None,
    });
    let (Some(uri), None) = (uris.next(), uris.next()) else {
        return Err(invalid("an x509-svid has exactly one uri san"));
    };
    let spiffe_id = SpiffeId::new(uri)?;
    if !spiffe_id.is_member_of(trust_domain) || spiffe_id.path().is_empty() {
        return Err(invalid(format!(
            "`{uri}` is not a workload of the trust domain `{trust_domain}`"
        )));
    }
    let not_after = UNIX_EPOCH
        + std::time::Duration::from_secs(
            u64::try_from(cert.validity().not_after.timestamp()).unwrap_or(0),
        );
    Ok(ValidatedX509Svid {
        spiffe_id,
        x5t_s256: URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, leaf)),
        not_after,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use std::sync::Arc;

    use super::*;
    use crate::{Identity, IdentityConfig, NewEntry};
    use keyless_store::{FileKeyManager, Store};

    async fn identity(dir: &std::path::Path, td: &str) -> Arc<Identity> {
        std::fs::create_dir_all(dir).unwrap();
        let store = Store::open_sqlite(&dir.join("k.db")).await.unwrap();
        let keys = Arc::new(FileKeyManager::open(&dir.join("keys")).unwrap());
        Identity::open(
            store,
            keys,
            Arc::new(keyless_audit::MemorySink::default()),
            IdentityConfig::new(TrustDomain::new(td).unwrap(), "http://127.0.0.1:1".into()),
        )
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn a_current_svid_validates_and_anything_else_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let ours = identity(&tmp.path().join("a"), "example.org").await;
        let entry = ours
            .create_entry(NewEntry::new(
                "spiffe://example.org/agent/a".parse().unwrap(),
                vec!["unix:uid:4242".parse().unwrap()],
            ))
            .await
            .unwrap();
        let svid = ours.mint_x509_svid(&entry).unwrap();
        let v = ours.validate_x509_svid(&svid.cert_chain[0]).unwrap();
        assert_eq!(v.spiffe_id.as_str(), "spiffe://example.org/agent/a");
        let peer = crate::PeerSvid {
            spiffe_id: v.spiffe_id.clone(),
            leaf_der: svid.cert_chain[0].clone(),
        };
        assert_eq!(v.x5t_s256, peer.x5t_s256());

        // An SVID of another trust domain's CA (even naming our domain).
        let theirs = identity(&tmp.path().join("b"), "example.org").await;
        let entry = theirs
            .create_entry(NewEntry::new(
                "spiffe://example.org/agent/a".parse().unwrap(),
                vec!["unix:uid:4242".parse().unwrap()],
            ))
            .await
            .unwrap();
        let foreign = theirs.mint_x509_svid(&entry).unwrap();
        let e = ours
            .validate_x509_svid(&foreign.cert_chain[0])
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not verify"), "{e}");

        // A self-signed certificate naming an agent of ours.
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names = vec![rcgen::SanType::URI(
            "spiffe://example.org/agent/a".try_into().unwrap(),
        )];
        let forged = params.self_signed(&key).unwrap();
        assert!(ours.validate_x509_svid(forged.der()).is_err());

        // Our intermediate itself is not a workload's SVID.
        let e = ours.validate_x509_svid(&svid.cert_chain[1]).unwrap_err();
        assert!(matches!(e, IdentityError::Certificate(_)), "{e}");

        // Garbage.
        assert!(ours.validate_x509_svid(b"not a certificate").is_err());
    }

    #[tokio::test]
    async fn an_svid_of_the_right_ca_but_past_its_life_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let ours = identity(tmp.path(), "example.org").await;
        let entry = ours
            .create_entry(NewEntry::new(
                "spiffe://example.org/agent/a".parse().unwrap(),
                vec!["unix:uid:4242".parse().unwrap()],
            ))
            .await
            .unwrap();
        let svid = ours.mint_x509_svid(&entry).unwrap();
        let state_roots = ours.x509_authorities();
        let roots: Vec<&[u8]> = state_roots.iter().map(Vec::as_slice).collect();
        let later = svid.not_after + std::time::Duration::from_secs(60);
        let e = validate(
            &svid.cert_chain[0],
            &roots,
            &[svid.cert_chain[1].as_slice()],
            ours.trust_domain(),
            later,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("does not verify"), "{e}");
        // The same certificate at a time within its life verifies.
        assert!(
            validate(
                &svid.cert_chain[0],
                &roots,
                &[svid.cert_chain[1].as_slice()],
                ours.trust_domain(),
                SystemTime::now(),
            )
            .is_ok()
        );
    }
}
