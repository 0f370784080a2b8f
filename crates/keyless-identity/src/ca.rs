//! The trust domain's X.509 certificate authority.
//!
//! One CA *generation* is an ECDSA P-256 root (self-signed) and the
//! intermediate it signed; the intermediate signs every X509-SVID of that
//! generation. Both keys are created in the key manager, which signs through
//! [`KmKey`], an adapter implementing rcgen's [`SigningKey`]. The root key is
//! destroyed as soon as the intermediate is signed: a root is only ever needed
//! to sign its one intermediate, so nothing that later reads the key store can
//! mint another CA under a root that relying parties still trust.
//!
//! Leaf keys are generated fresh for every SVID, in memory, and handed out as
//! PKCS#8; the CA never keeps them.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use keyless_store::{KeyAlgorithm, KeyManager, Signer, StoreError};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PublicKeyData, SanType, SerialNumber,
    SignatureAlgorithm, SigningKey,
};

use crate::{IdentityError, SpiffeId, TrustDomain};

/// How far notBefore is backdated, so that a peer whose clock runs a little
/// behind still accepts a certificate minted this instant.
pub(crate) const BACKDATE: Duration = Duration::from_secs(10);

/// Where an authority (CA generation or JWT key) is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AuthorityState {
    /// Published in the bundle, not yet signing: clients learn it before use.
    Prepared,
    /// Signs new SVIDs. At most one per kind.
    Active,
    /// Signs nothing new; stays in the bundle until `not_after`, by which
    /// time everything it signed has expired.
    Retired,
}

impl AuthorityState {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Prepared => "prepared",
            Self::Active => "active",
            Self::Retired => "retired",
        }
    }

    pub(crate) fn parse(s: &str) -> Result<Self, IdentityError> {
        match s {
            "prepared" => Ok(Self::Prepared),
            "active" => Ok(Self::Active),
            "retired" => Ok(Self::Retired),
            other => Err(IdentityError::Corrupt(format!(
                "unknown authority state `{other}`"
            ))),
        }
    }
}

// === impl KmKey ===

/// A key-manager key seen through rcgen's signing traits.
pub(crate) struct KmKey {
    signer: Arc<dyn Signer>,
}

impl KmKey {
    pub(crate) fn new(signer: Arc<dyn Signer>) -> Result<Self, IdentityError> {
        if signer.algorithm() != KeyAlgorithm::EcdsaP256 {
            return Err(IdentityError::Crypto(format!(
                "key `{}` is not ECDSA P-256",
                signer.name()
            )));
        }
        Ok(Self { signer })
    }
}

impl PublicKeyData for KmKey {
    /// The subjectPublicKey bits: the uncompressed SEC1 point.
    fn der_bytes(&self) -> &[u8] {
        self.signer.public_key()
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &PKCS_ECDSA_P256_SHA256
    }
}

impl SigningKey for KmKey {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        // X.509 wants the ASN.1 DER ECDSA-Sig-Value, not JOSE's r‖s.
        self.signer
            .sign_der(msg)
            .map_err(|_| rcgen::Error::RemoteKeyError)
    }
}

// Never prints key material (the signer prints only its name).
impl std::fmt::Debug for KmKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KmKey")
            .field("name", &self.signer.name())
            .finish()
    }
}

// === impl CaGeneration ===

/// One CA generation, as stored plus what is needed to sign with it.
#[derive(Debug)]
pub(crate) struct CaGeneration {
    pub generation: i64,
    pub state: AuthorityState,
    pub root_der: Vec<u8>,
    /// The root's public key, an uncompressed SEC1 point (for the JWKS bundle).
    pub root_public: Vec<u8>,
    pub intermediate_der: Vec<u8>,
    pub root_key: String,
    pub intermediate_key: String,
    /// Unix ms; the validity of both certificates.
    pub not_before: i64,
    pub not_after: i64,
    pub created_at: i64,
    pub activated_at: i64,
    /// The intermediate as an rcgen issuer; `None` when its key could not be
    /// loaded (then this generation cannot sign, only be trusted).
    pub issuer: Option<Arc<Issuer<'static, KmKey>>>,
}

/// Names of a generation's keys in the key manager.
pub(crate) fn key_names(generation: i64) -> (String, String) {
    (
        format!("x509-ca-{generation}-root"),
        format!("x509-ca-{generation}-intermediate"),
    )
}

/// Generates a key, replacing a stale one of the same name. A name is only
/// reused when a crash left a key behind before its generation row was
/// written, so nothing can reference the old key.
pub(crate) async fn fresh_key(
    keys: &dyn KeyManager,
    name: &str,
) -> Result<Arc<dyn Signer>, IdentityError> {
    match keys.generate(name, KeyAlgorithm::EcdsaP256).await {
        Err(StoreError::KeyExists(_)) => {
            tracing::warn!(
                key = name,
                "replacing an orphaned key left by an interrupted rotation"
            );
            keys.delete(name).await?;
            Ok(keys.generate(name, KeyAlgorithm::EcdsaP256).await?)
        }
        other => Ok(other?),
    }
}

fn cert_err(e: rcgen::Error) -> IdentityError {
    IdentityError::Certificate(e.to_string())
}

/// Whole seconds: certificates carry no sub-second precision, and the
/// stored and reported times must be exactly the certificate's.
fn to_secs(t: SystemTime) -> SystemTime {
    let secs = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    UNIX_EPOCH + Duration::from_secs(secs)
}

pub(crate) fn millis(t: SystemTime) -> i64 {
    i64::try_from(t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis()).unwrap_or(i64::MAX)
}

pub(crate) fn from_millis(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

fn ca_params(
    td: &TrustDomain,
    common_name: String,
    path_len: Option<u8>,
    not_before: SystemTime,
    not_after: SystemTime,
) -> Result<CertificateParams, IdentityError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "SPIFFE");
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.not_before = not_before.into();
    params.not_after = not_after.into();
    params.serial_number = Some(random_serial()?.0);
    params.is_ca = IsCa::Ca(match path_len {
        Some(n) => BasicConstraints::Constrained(n),
        None => BasicConstraints::Unconstrained,
    });
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    // A CA's SPIFFE ID is the trust domain's, with no path.
    let uri = td.id().to_string().try_into().map_err(cert_err)?;
    params.subject_alt_names = vec![SanType::URI(uri)];
    Ok(params)
}

/// A random, positive, 16-byte serial number and its hex form.
fn random_serial() -> Result<(SerialNumber, String), IdentityError> {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| IdentityError::Crypto("rng failure".into()))?;
    // Top bit clear keeps the INTEGER positive; 0x40 keeps it exactly 16
    // bytes long so the hex form is the encoded value.
    if let Some(first) = bytes.first_mut() {
        *first = (*first & 0x7f) | 0x40;
    }
    Ok((SerialNumber::from_slice(&bytes), hex::encode(bytes)))
}

/// The uncompressed SEC1 point in a certificate's SubjectPublicKeyInfo.
pub(crate) fn cert_public_key(der: &[u8]) -> Result<Vec<u8>, IdentityError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| IdentityError::Corrupt(format!("stored certificate does not parse: {e}")))?;
    Ok(cert.public_key().subject_public_key.data.to_vec())
}

/// Builds an rcgen issuer for a stored intermediate certificate.
pub(crate) fn issuer_for(
    intermediate_der: &[u8],
    signer: Arc<dyn Signer>,
) -> Result<Issuer<'static, KmKey>, IdentityError> {
    let key = KmKey::new(signer)?;
    if cert_public_key(intermediate_der)? != key.der_bytes() {
        return Err(IdentityError::Corrupt(
            "intermediate certificate does not match its key".into(),
        ));
    }
    Issuer::from_ca_cert_der(&intermediate_der.to_vec().into(), key).map_err(cert_err)
}

/// Creates generation `generation`: both keys, the self-signed root, the
/// intermediate, then destroys the root key. Valid from `now - BACKDATE`
/// for `ttl`.
pub(crate) async fn create_generation(
    keys: &dyn KeyManager,
    td: &TrustDomain,
    generation: i64,
    ttl: Duration,
    now: SystemTime,
) -> Result<CaGeneration, IdentityError> {
    let not_before = to_secs(now.checked_sub(BACKDATE).unwrap_or(now));
    let not_after = to_secs(now + ttl);
    let (root_key, intermediate_key) = key_names(generation);

    let root_signer = fresh_key(keys, &root_key).await?;
    let root_params = ca_params(
        td,
        format!("Keyless Root CA {generation}"),
        None,
        not_before,
        not_after,
    )?;
    let root_kmkey = KmKey::new(root_signer.clone())?;
    let root_cert = root_params.self_signed(&root_kmkey).map_err(cert_err)?;
    let root_issuer = Issuer::new(root_params, root_kmkey);

    let int_signer = fresh_key(keys, &intermediate_key).await?;
    let mut int_params = ca_params(
        td,
        format!("Keyless Intermediate CA {generation}"),
        Some(0),
        not_before,
        not_after,
    )?;
    int_params.use_authority_key_identifier_extension = true;
    let int_kmkey = KmKey::new(int_signer.clone())?;
    let int_cert = int_params
        .signed_by(&int_kmkey, &root_issuer)
        .map_err(cert_err)?;
    drop(root_issuer);
    keys.delete(&root_key).await?;

    let intermediate_der = int_cert.der().to_vec();
    let issuer = issuer_for(&intermediate_der, int_signer)?;
    Ok(CaGeneration {
        generation,
        state: AuthorityState::Prepared,
        root_public: root_signer.public_key().to_vec(),
        root_der: root_cert.der().to_vec(),
        intermediate_der,
        root_key,
        intermediate_key,
        not_before: millis(not_before),
        not_after: millis(not_after),
        created_at: millis(now),
        activated_at: 0,
        issuer: Some(Arc::new(issuer)),
    })
}

/// A freshly minted leaf: DER certificate, PKCS#8 key, validity, serial.
pub(crate) struct Leaf {
    pub der: Vec<u8>,
    pub pkcs8: Vec<u8>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    pub serial_hex: String,
}

/// Mints an X509-SVID leaf for `id`, valid for `ttl` but never past the
/// intermediate's own expiry.
pub(crate) fn mint_leaf(
    ca: &CaGeneration,
    id: &SpiffeId,
    ttl: Duration,
    now: SystemTime,
) -> Result<Leaf, IdentityError> {
    let issuer = ca
        .issuer
        .as_deref()
        .ok_or(IdentityError::NoAuthority("x509 ca key"))?;
    let ca_not_before = from_millis(ca.not_before);
    let ca_not_after = from_millis(ca.not_after);
    let not_before = to_secs(now.checked_sub(BACKDATE).unwrap_or(now)).max(ca_not_before);
    let not_after = to_secs(now + ttl).min(ca_not_after);
    if not_after <= now {
        return Err(IdentityError::NoAuthority("unexpired x509 ca"));
    }

    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "SPIFFE");
    params.distinguished_name = dn;
    params.not_before = not_before.into();
    params.not_after = not_after.into();
    let (serial, serial_hex) = random_serial()?;
    params.serial_number = Some(serial);
    // Exactly one URI SAN: validators reject more.
    let uri = id.as_str().to_owned().try_into().map_err(cert_err)?;
    params.subject_alt_names = vec![SanType::URI(uri)];
    // basicConstraints present with cA=false: a leaf must say it is not a CA.
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
        KeyUsagePurpose::KeyAgreement,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;

    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(cert_err)?;
    let cert = params.signed_by(&key, issuer).map_err(cert_err)?;
    Ok(Leaf {
        der: cert.der().to_vec(),
        pkcs8: key.serialize_der(),
        not_before,
        not_after,
        serial_hex,
    })
}
