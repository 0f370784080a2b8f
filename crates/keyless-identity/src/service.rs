//! The identity service (stub while the real implementation lands).

use std::sync::Arc;
use std::time::Duration;

use keyless_audit::EventSink;
use keyless_store::{KeyManager, Store};

use crate::{
    IdentityError, JwtSvid, NewEntry, RegistrationEntry, Selector, TrustDomain, ValidatedJwtSvid,
    X509Svid,
};

/// Settings of the identity service.
#[derive(Debug, Clone)]
pub struct IdentityConfig {
    pub trust_domain: TrustDomain,
    pub public_url: String,
    pub ca_ttl: Duration,
    pub jwt_key_ttl: Duration,
    pub default_x509_ttl: Duration,
    pub default_jwt_ttl: Duration,
}

impl IdentityConfig {
    pub fn new(trust_domain: TrustDomain, public_url: String) -> Self {
        Self {
            trust_domain,
            public_url: public_url.trim_end_matches('/').to_owned(),
            ca_ttl: Duration::from_secs(24 * 3600),
            jwt_key_ttl: Duration::from_secs(24 * 3600),
            default_x509_ttl: Duration::from_secs(3600),
            default_jwt_ttl: Duration::from_secs(300),
        }
    }
}

#[derive(Debug)]
pub struct Identity {
    config: IdentityConfig,
    changes: tokio::sync::watch::Sender<u64>,
}

impl Identity {
    pub async fn open(
        _store: Store,
        _keys: Arc<dyn KeyManager>,
        _events: Arc<dyn EventSink>,
        config: IdentityConfig,
    ) -> Result<Arc<Self>, IdentityError> {
        let (changes, _) = tokio::sync::watch::channel(0);
        let _ = Self { config, changes };
        Err(IdentityError::NoAuthority("implementation"))
    }
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.config.trust_domain
    }
    pub fn issuer(&self) -> String {
        format!("{}/spiffe", self.config.public_url)
    }
    pub async fn create_entry(&self, _new: NewEntry) -> Result<RegistrationEntry, IdentityError> {
        Err(IdentityError::NoAuthority("implementation"))
    }
    pub async fn list_entries(&self) -> Vec<RegistrationEntry> {
        Vec::new()
    }
    pub async fn delete_entry(&self, id: &str) -> Result<RegistrationEntry, IdentityError> {
        Err(IdentityError::NotFound(id.to_owned()))
    }
    pub fn matching_entries(&self, _caller: &[Selector]) -> Vec<RegistrationEntry> {
        Vec::new()
    }
    pub fn mint_x509_svid(&self, _entry: &RegistrationEntry) -> Result<X509Svid, IdentityError> {
        Err(IdentityError::NoAuthority("implementation"))
    }
    pub fn mint_jwt_svid(
        &self,
        _entry: &RegistrationEntry,
        _audience: &[String],
    ) -> Result<JwtSvid, IdentityError> {
        Err(IdentityError::NoAuthority("implementation"))
    }
    pub fn validate_jwt_svid(
        &self,
        _token: &str,
        _audience: &str,
    ) -> Result<ValidatedJwtSvid, IdentityError> {
        Err(IdentityError::NoAuthority("implementation"))
    }
    pub fn x509_authorities(&self) -> Vec<Vec<u8>> {
        Vec::new()
    }
    pub fn jwt_authorities(&self) -> serde_json::Value {
        serde_json::json!({"keys": []})
    }
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }
    pub async fn rotate_x509_ca(&self) -> Result<(), IdentityError> {
        Err(IdentityError::NoAuthority("implementation"))
    }
    pub async fn rotate_jwt_key(&self) -> Result<(), IdentityError> {
        Err(IdentityError::NoAuthority("implementation"))
    }
    pub fn spawn_rotation(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async {})
    }
}
