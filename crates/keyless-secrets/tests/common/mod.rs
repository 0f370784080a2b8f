//! Shared fixtures for the broker's integration tests: an identity service
//! and a broker on one fresh SQLite store in a temp dir, a file key manager,
//! an in-memory audit sink, real JWT-SVIDs, and a lease engine whose
//! behaviour (fail N times) the test controls.

#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use keyless_audit::MemorySink;
use keyless_identity::{Identity, IdentityConfig, NewEntry, TrustDomain};
use keyless_secrets::{
    JwtRole, LeaseBackend, NewLease, Secrets, SecretsConfig, SecretsError, TokenInfo,
};
use keyless_store::{FileKeyManager, KeyManager, Store};
use serde_json::Value;

pub const TD: &str = "example.org";
pub const ISSUER: &str = "http://127.0.0.1:8180";
pub const AUD: &str = "keyless-secrets";
pub const AGENT: &str = "spiffe://example.org/agent/helper";
pub const OTHER: &str = "spiffe://example.org/agent/other";

pub struct Fixture {
    pub secrets: Arc<Secrets>,
    pub identity: Arc<Identity>,
    pub events: Arc<MemorySink>,
    pub keys: Arc<FileKeyManager>,
    pub store: Store,
    pub tmp: tempfile::TempDir,
}

pub fn test_config() -> SecretsConfig {
    SecretsConfig {
        expiry_interval: Duration::from_millis(20),
        retry_backoff: Duration::from_millis(10),
        max_retry_backoff: Duration::from_millis(40),
        ..SecretsConfig::default()
    }
}

pub async fn open() -> Fixture {
    open_with(test_config()).await
}

pub async fn open_with(config: SecretsConfig) -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open_sqlite(&tmp.path().join("keyless.db"))
        .await
        .unwrap();
    open_on(store, tmp, config).await
}

/// A fixture on a PostgreSQL database of its own, or `None` (SKIPPED printed).
pub async fn open_postgres(label: &str) -> Option<Fixture> {
    let url = keyless_store::testing::fresh_postgres_database(label).await?;
    let store = Store::open(&url).await.unwrap();
    Some(open_on(store, tempfile::tempdir().unwrap(), test_config()).await)
}

pub async fn open_on(store: Store, tmp: tempfile::TempDir, config: SecretsConfig) -> Fixture {
    let keys = Arc::new(FileKeyManager::open(&tmp.path().join("keys")).unwrap());
    let events = Arc::new(MemorySink::default());
    let identity = Identity::open(
        store.clone(),
        keys.clone(),
        events.clone(),
        IdentityConfig::new(TrustDomain::new(TD).unwrap(), ISSUER.to_owned()),
    )
    .await
    .unwrap();
    let secrets = Secrets::open(
        store.clone(),
        keys.clone() as Arc<dyn KeyManager>,
        identity.clone(),
        events.clone(),
        config,
    )
    .await
    .unwrap();
    Fixture {
        secrets,
        identity,
        events,
        keys,
        store,
        tmp,
    }
}

impl Fixture {
    /// A second broker on the same store and keys (a restart, or a replica).
    pub async fn reopen(&self, config: SecretsConfig) -> Arc<Secrets> {
        Secrets::open(
            self.store.clone(),
            self.keys.clone() as Arc<dyn KeyManager>,
            self.identity.clone(),
            self.events.clone(),
            config,
        )
        .await
        .unwrap()
    }

    /// A real JWT-SVID for `spiffe_id` with `audience`.
    pub async fn svid(&self, spiffe_id: &str, audience: &str) -> String {
        let existing = self
            .identity
            .list_entries()
            .await
            .into_iter()
            .find(|e| e.spiffe_id.as_str() == spiffe_id);
        let entry = match existing {
            Some(e) => e,
            None => {
                let n = self.identity.list_entries().await.len() + 1000;
                self.identity
                    .create_entry(NewEntry::new(
                        spiffe_id.parse().unwrap(),
                        vec![format!("unix:uid:{n}").parse().unwrap()],
                    ))
                    .await
                    .unwrap()
            }
        };
        self.identity
            .mint_jwt_svid(&entry, &[audience.to_owned()])
            .unwrap()
            .token
    }

    /// A role binding AUD and `subject` to `policies`.
    pub async fn role(&self, name: &str, subject: &str, policies: &[&str]) -> JwtRole {
        self.secrets
            .write_role(role(name, subject, policies))
            .await
            .unwrap()
    }

    /// Logs AGENT in through a fresh role `name` with `policies`.
    pub async fn login(&self, name: &str, policies: &[&str]) -> TokenInfo {
        self.login_as(name, AGENT, policies).await
    }

    pub async fn login_as(&self, name: &str, who: &str, policies: &[&str]) -> TokenInfo {
        self.role(name, who, policies).await;
        let jwt = self.svid(who, AUD).await;
        self.secrets.login_jwt(name, &jwt).await.unwrap().info
    }

    pub fn event_kinds(&self) -> Vec<String> {
        self.events.events().into_iter().map(|e| e.kind).collect()
    }
}

pub fn role(name: &str, subject: &str, policies: &[&str]) -> JwtRole {
    serde_json::from_value(serde_json::json!({
        "name": name,
        "bound_audiences": [AUD],
        "bound_subject": subject,
        "token_policies": policies,
        "token_ttl": "1h",
        "token_max_ttl": "2h",
    }))
    .unwrap()
}

/// A lease engine that records calls and fails the first `fail_revokes` revocations.
#[derive(Debug, Default)]
pub struct FakeEngine {
    pub revoked: Mutex<Vec<Value>>,
    pub renewed: Mutex<Vec<(Value, SystemTime)>>,
    pub fail_revokes: AtomicUsize,
    pub revoke_calls: AtomicUsize,
}

#[async_trait::async_trait]
impl LeaseBackend for FakeEngine {
    async fn renew(&self, internal: &Value, valid_until: SystemTime) -> Result<(), SecretsError> {
        self.renewed
            .lock()
            .unwrap()
            .push((internal.clone(), valid_until));
        Ok(())
    }

    async fn revoke(&self, internal: &Value) -> Result<(), SecretsError> {
        self.revoke_calls.fetch_add(1, Ordering::SeqCst);
        let left = self.fail_revokes.load(Ordering::SeqCst);
        if left > 0 {
            self.fail_revokes.store(left - 1, Ordering::SeqCst);
            return Err(SecretsError::Database("server unreachable".into()));
        }
        self.revoked.lock().unwrap().push(internal.clone());
        Ok(())
    }
}

pub const FAKE: &str = "fake";

impl Fixture {
    pub fn fake_engine(&self) -> Arc<FakeEngine> {
        let engine = Arc::new(FakeEngine::default());
        self.secrets.register_backend(FAKE, engine.clone());
        engine
    }
}

pub fn new_lease(identity: &str, n: usize, ttl: Duration, max_ttl: Duration) -> NewLease {
    NewLease {
        engine: FAKE.into(),
        path: "fake/creds/role".into(),
        internal: serde_json::json!({ "n": n }),
        identity: identity.into(),
        token_accessor: String::new(),
        ttl,
        max_ttl,
        renewable: true,
    }
}
