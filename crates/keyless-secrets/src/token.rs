//! Broker tokens: their formats, how they are stored, and how they are checked.
//!
//! - Service tokens (`hvs.` + 256 random bits, base64url) are stored only
//!   as their SHA-256 (hex), next to a random accessor that names the token
//!   without being able to use it. They can be renewed and revoked.
//! - Batch tokens (`hvb.` + base64url(claims JSON) + `.` + base64url(ES256
//!   signature)) are stateless: nothing is stored, the claims carry the
//!   policies and the expiry, and the signature is made by a key-manager key
//!   (`secrets-batch-token`) whose secret never leaves it. They cannot be
//!   renewed or revoked before they expire (the price of statelessness, as
//!   in Vault), so their TTL should stay short.

use std::sync::Arc;

use aws_lc_rs::digest;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED, UnparsedPublicKey};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use keyless_store::{KeyAlgorithm, KeyManager, Signer, StoreError};
use serde::{Deserialize, Serialize};

use crate::SecretsError;

pub const SERVICE_PREFIX: &str = "hvs.";
pub const BATCH_PREFIX: &str = "hvb.";
pub const BATCH_KEY_NAME: &str = "secrets-batch-token";

/// `len` random bytes, base64url.
pub fn random_b64(len: usize) -> Result<String, SecretsError> {
    let mut buf = vec![0u8; len];
    SystemRandom::new()
        .fill(&mut buf)
        .map_err(|_| SecretsError::InvalidRequest("system random generator failed".into()))?;
    Ok(URL_SAFE_NO_PAD.encode(buf))
}

/// A new service token (`hvs.…`).
pub fn new_service_token() -> Result<String, SecretsError> {
    Ok(format!("{SERVICE_PREFIX}{}", random_b64(32)?))
}

/// A new accessor (24 random bytes, base64url).
pub fn new_accessor() -> Result<String, SecretsError> {
    random_b64(24)
}

/// The stored form of a token: hex SHA-256.
pub fn hash_token(token: &str) -> String {
    hex::encode(digest::digest(&digest::SHA256, token.as_bytes()).as_ref())
}

/// What a batch token carries.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BatchClaims {
    /// SPIFFE ID of the workload that logged in.
    pub sub: String,
    pub role: String,
    pub policies: Vec<String>,
    pub meta: serde_json::Map<String, serde_json::Value>,
    /// Unix milliseconds.
    pub iat: i64,
    pub exp: i64,
    /// Random, so two logins in the same millisecond differ.
    pub nonce: String,
}

/// Signs and verifies batch tokens with one key-manager key.
#[derive(Debug, Clone)]
pub struct BatchSigner {
    signer: Arc<dyn Signer>,
}

impl BatchSigner {
    /// Loads the batch-token key, creating it on first use (several
    /// replicas may race to create it: the loser loads the winner's).
    pub async fn open(keys: &dyn KeyManager) -> Result<Self, SecretsError> {
        let signer = match keys.load(BATCH_KEY_NAME).await {
            Ok(s) => s,
            Err(StoreError::KeyNotFound(_)) => {
                match keys.generate(BATCH_KEY_NAME, KeyAlgorithm::EcdsaP256).await {
                    Ok(s) => s,
                    Err(StoreError::KeyExists(_)) => keys.load(BATCH_KEY_NAME).await?,
                    Err(e) => return Err(e.into()),
                }
            }
            Err(e) => return Err(e.into()),
        };
        Ok(Self { signer })
    }

    pub fn mint(&self, claims: &BatchClaims) -> Result<String, SecretsError> {
        let payload = serde_json::to_vec(claims)
            .map_err(|e| SecretsError::InvalidRequest(format!("batch token claims: {e}")))?;
        let body = URL_SAFE_NO_PAD.encode(payload);
        let signed = format!("{BATCH_PREFIX}{body}");
        let sig = self.signer.sign(signed.as_bytes())?;
        Ok(format!("{signed}.{}", URL_SAFE_NO_PAD.encode(sig)))
    }

    /// The claims of a well-signed batch token (expiry is the caller's check).
    pub fn verify(&self, token: &str) -> Option<BatchClaims> {
        let (signed, sig) = token.rsplit_once('.')?;
        let body = signed.strip_prefix(BATCH_PREFIX)?;
        let sig = URL_SAFE_NO_PAD.decode(sig).ok()?;
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, self.signer.public_key())
            .verify(signed.as_bytes(), &sig)
            .ok()?;
        let payload = URL_SAFE_NO_PAD.decode(body).ok()?;
        serde_json::from_slice(&payload).ok()
    }
}
