//! The [`Secrets`] broker: what the HTTP layer and the admin API call.
//! It owns the ACL policies (and the per-token compiled ACL cache), and
//! ties together tokens and JWT login (`auth.rs`), leases (`lease.rs`),
//! response wrapping (`wrap.rs`), KV v2 (`kv.rs`) and database credentials
//! (`database.rs`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use keyless_audit::{Event, EventSink, Outcome};
use keyless_identity::Identity;
use keyless_store::{KeyManager, Store, now_millis};

use crate::acl::{self, Acl, Capability, Policy};
use crate::database::Database;
use crate::kv::Kv;
use crate::lease::{DatabaseBackend, LeaseBackend};
use crate::openbao::{BROKER_ID_PATH, ENGINE_OPENBAO, OpenBaoClient, OpenBaoConfig, OpenBaoLeases};
use crate::token::BatchSigner;
use crate::{SecretsError, TokenInfo};

/// Event types of the secrets broker.
pub mod kinds {
    pub const LOGIN_SUCCESS: &str = "secrets.login.success";
    pub const LOGIN_DENIED: &str = "secrets.login.denied";
    pub const TOKEN_RENEWED: &str = "secrets.token.renewed";
    pub const TOKEN_REVOKED: &str = "secrets.token.revoked";
    pub const POLICY_WRITTEN: &str = "secrets.policy.written";
    pub const POLICY_DELETED: &str = "secrets.policy.deleted";
    pub const ROLE_WRITTEN: &str = "secrets.role.written";
    pub const ROLE_DELETED: &str = "secrets.role.deleted";
    pub const SECRET_READ: &str = "secret.read";
    pub const SECRET_WRITTEN: &str = "secret.written";
    pub const SECRET_DELETED: &str = "secret.deleted";
    pub const LEASE_ISSUED: &str = "lease.issued";
    pub const LEASE_RENEWED: &str = "lease.renewed";
    pub const LEASE_REVOKED: &str = "lease.revoked";
    pub const LEASE_REVOKE_FAILED: &str = "lease.revoke_failed";
    pub const LEASE_QUOTA_EXCEEDED: &str = "lease.quota_exceeded";
    pub const WRAP_CREATED: &str = "secrets.wrap.created";
    pub const WRAP_UNWRAPPED: &str = "secrets.wrap.unwrapped";
    pub const DB_CONFIGURED: &str = "secrets.database.configured";
    pub const DB_ROLE_WRITTEN: &str = "secrets.database.role_written";
}

/// Tunables of the broker.
#[derive(Debug, Clone)]
pub struct SecretsConfig {
    /// Longest token lifetime any role may grant (Vault's system max TTL).
    pub max_token_ttl: Duration,
    /// Service tokens one identity may hold at once.
    pub max_tokens_per_identity: u64,
    /// Leases one identity may hold at once.
    pub max_leases_per_identity: u64,
    /// Longest response-wrapping TTL.
    pub max_wrap_ttl: Duration,
    /// How often the expiry worker looks for due leases.
    pub expiry_interval: Duration,
    /// First retry delay of a failed revocation (doubles up to `max_retry_backoff`).
    pub retry_backoff: Duration,
    pub max_retry_backoff: Duration,
    /// How long a compiled ACL is reused before policies are re-read (other
    /// replicas may have changed them).
    pub acl_cache_ttl: Duration,
}

impl Default for SecretsConfig {
    fn default() -> Self {
        Self {
            max_token_ttl: Duration::from_secs(32 * 24 * 3600),
            max_tokens_per_identity: 1000,
            max_leases_per_identity: 1000,
            max_wrap_ttl: Duration::from_secs(24 * 3600),
            expiry_interval: Duration::from_secs(1),
            retry_backoff: Duration::from_secs(1),
            max_retry_backoff: Duration::from_secs(300),
            acl_cache_ttl: Duration::from_secs(5),
        }
    }
}

/// A compiled ACL, when it was compiled, and the policy generation it saw.
type CachedAcl = (Instant, u64, Arc<Acl>);

/// The secrets broker.
#[derive(Debug)]
pub struct Secrets {
    pub(crate) store: Store,
    pub(crate) identity: Arc<Identity>,
    pub(crate) audit: Arc<dyn EventSink>,
    pub(crate) config: SecretsConfig,
    pub(crate) batch: BatchSigner,
    pub(crate) keys: Arc<dyn KeyManager>,
    pub(crate) kv: Arc<Kv>,
    pub(crate) database: Arc<Database>,
    acl_cache: Mutex<HashMap<Vec<String>, CachedAcl>>,
    policy_generation: std::sync::atomic::AtomicU64,
    pub(crate) backends: RwLock<HashMap<String, Arc<dyn LeaseBackend>>>,
    /// Set once by [`Secrets::use_openbao`]: KV v2 and database credentials
    /// then come from OpenBao (`openbao.rs`).
    pub(crate) openbao: OnceLock<Arc<OpenBaoClient>>,
}

impl Secrets {
    /// Opens the broker (KV and database engines included) on `store`.
    pub async fn open(
        store: Store,
        keys: Arc<dyn KeyManager>,
        identity: Arc<Identity>,
        audit: Arc<dyn EventSink>,
        config: SecretsConfig,
    ) -> Result<Arc<Self>, SecretsError> {
        let batch = BatchSigner::open(keys.as_ref()).await?;
        let kv = Kv::open(store.clone(), keys.clone()).await?;
        let database = Database::open(store.clone(), keys.clone()).await?;
        let mut backends: HashMap<String, Arc<dyn LeaseBackend>> = HashMap::new();
        backends.insert(
            crate::lease::ENGINE_DATABASE.to_owned(),
            Arc::new(DatabaseBackend(database.clone())),
        );
        backends.insert(
            crate::rotating::ENGINE_ROTATING.to_owned(),
            Arc::new(crate::rotating::RotatingBackend(store.clone())),
        );
        Ok(Arc::new(Self {
            store,
            identity,
            audit,
            config,
            batch,
            keys,
            kv,
            database,
            acl_cache: Mutex::new(HashMap::new()),
            policy_generation: std::sync::atomic::AtomicU64::new(0),
            backends: RwLock::new(backends),
            openbao: OnceLock::new(),
        }))
    }

    /// Switches KV v2 and database credentials to OpenBao (once, before
    /// serving). Keyless logs in with a JWT-SVID for
    /// `spiffe://<td>/keyless/secrets-broker` minted from an in-memory entry
    /// — never a stored registration entry, so no workload selector can
    /// obtain the broker's identity. Nothing is contacted yet.
    pub fn use_openbao(&self, config: OpenBaoConfig) -> Result<Arc<OpenBaoClient>, SecretsError> {
        let identity = self.identity.clone();
        let spiffe_id =
            keyless_identity::SpiffeId::from_parts(identity.trust_domain(), BROKER_ID_PATH)
                .map_err(|e| SecretsError::InvalidRequest(format!("broker spiffe id: {e}")))?;
        let entry = keyless_identity::RegistrationEntry {
            id: "keyless-secrets-broker".into(),
            spiffe_id,
            parent_id: None,
            selectors: Vec::new(),
            x509_ttl: identity.config().default_x509_ttl,
            jwt_ttl: identity.config().default_jwt_ttl,
            hint: "keyless-secrets-broker".into(),
            admin: false,
            created_at: 0,
        };
        let audience = vec![config.audience.clone()];
        let jwt: crate::openbao::JwtSource = Arc::new(move || {
            identity
                .mint_jwt_svid(&entry, &audience)
                .map(|svid| svid.token)
                .map_err(|e| SecretsError::Backend(format!("minting the broker jwt-svid: {e}")))
        });
        let client = Arc::new(OpenBaoClient::new(config, jwt)?);
        self.openbao.set(client.clone()).map_err(|_| {
            SecretsError::Conflict("the openbao backend is already configured".into())
        })?;
        self.register_backend(ENGINE_OPENBAO, Arc::new(OpenBaoLeases(client.clone())));
        Ok(client)
    }

    /// The OpenBao backend, when configured.
    pub fn openbao(&self) -> Option<&Arc<OpenBaoClient>> {
        self.openbao.get()
    }

    pub fn config(&self) -> &SecretsConfig {
        &self.config
    }

    /// The KV v2 engine.
    pub fn kv(&self) -> &Arc<Kv> {
        &self.kv
    }

    /// The dynamic database credentials engine.
    pub fn database(&self) -> &Arc<Database> {
        &self.database
    }

    /// Records `event`; the caller's action is reported only after this.
    pub(crate) async fn record(&self, event: Event) -> Result<(), SecretsError> {
        self.audit
            .record(event)
            .await
            .map(|_| ())
            .map_err(|e| SecretsError::Audit(e.to_string()))
    }

    // --- policies ---

    /// Writes (creates or replaces) policy `name` from its Vault-style text.
    pub async fn write_policy(&self, name: &str, text: &str) -> Result<Policy, SecretsError> {
        acl::validate_policy_name(name)?;
        if name == acl::DEFAULT_POLICY_NAME {
            return Err(SecretsError::InvalidRequest(
                "the `default` policy is built in and cannot be written".into(),
            ));
        }
        let policy = Policy::parse(name, text)?;
        let now = now_millis();
        sqlx::query(
            "INSERT INTO secrets_policies (name, body, updated_at) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET body = $2, updated_at = $3",
        )
        .bind(name)
        .bind(text)
        .bind(now)
        .execute(self.store.pool())
        .await?;
        self.policy_changed();
        self.record(
            Event::new(kinds::POLICY_WRITTEN, Outcome::Success)
                .detail("policy", name)
                .detail("paths", policy.rules.len() as u64),
        )
        .await?;
        Ok(policy)
    }

    /// The stored text of policy `name` (the built-in text for `default`).
    pub async fn read_policy(&self, name: &str) -> Result<Option<String>, SecretsError> {
        if name == acl::DEFAULT_POLICY_NAME {
            return Ok(Some(acl::DEFAULT_POLICY.to_owned()));
        }
        let row: Option<(String,)> =
            sqlx::query_as("SELECT body FROM secrets_policies WHERE name = $1")
                .bind(name)
                .fetch_optional(self.store.pool())
                .await?;
        Ok(row.map(|r| r.0))
    }

    /// Names of every policy, `default` included.
    pub async fn list_policies(&self) -> Result<Vec<String>, SecretsError> {
        let rows: Vec<(String,)> =
            sqlx::query_as("SELECT name FROM secrets_policies ORDER BY name")
                .fetch_all(self.store.pool())
                .await?;
        let mut names = vec![acl::DEFAULT_POLICY_NAME.to_owned()];
        names.extend(rows.into_iter().map(|r| r.0));
        Ok(names)
    }

    pub async fn delete_policy(&self, name: &str) -> Result<(), SecretsError> {
        let done = sqlx::query("DELETE FROM secrets_policies WHERE name = $1")
            .bind(name)
            .execute(self.store.pool())
            .await?;
        if done.rows_affected() == 0 {
            return Err(SecretsError::NotFound(format!("no policy `{name}`")));
        }
        self.policy_changed();
        self.record(Event::new(kinds::POLICY_DELETED, Outcome::Success).detail("policy", name))
            .await
    }

    fn policy_changed(&self) {
        self.policy_generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    /// The compiled ACL for a set of policy names, compiled once and cached
    /// (briefly: another replica may change a policy). Unknown names add
    /// nothing, as in Vault.
    pub async fn acl_for(&self, policies: &[String]) -> Result<Arc<Acl>, SecretsError> {
        let mut key: Vec<String> = policies.to_vec();
        key.sort();
        key.dedup();
        let generation = self
            .policy_generation
            .load(std::sync::atomic::Ordering::SeqCst);
        if let Ok(cache) = self.acl_cache.lock()
            && let Some((at, g, acl)) = cache.get(&key)
            && *g == generation
            && at.elapsed() < self.config.acl_cache_ttl
        {
            return Ok(acl.clone());
        }
        let mut parsed = Vec::new();
        for name in &key {
            if let Some(text) = self.read_policy(name).await? {
                match Policy::parse(name, &text) {
                    Ok(p) => parsed.push(p),
                    // Stored policies were parsed at write; a bad one (hand-edited
                    // row) grants nothing rather than failing every request.
                    Err(e) => {
                        tracing::warn!(policy = %name, error = %e, "ignoring invalid stored policy")
                    }
                }
            }
        }
        let acl = Arc::new(Acl::compile(&parsed));
        if let Ok(mut cache) = self.acl_cache.lock() {
            if cache.len() > 4096 {
                cache.clear();
            }
            cache.insert(key, (Instant::now(), generation, acl.clone()));
        }
        Ok(acl)
    }

    /// Resolves `token` and checks that its policies grant one of `caps` on
    /// `path` (relative to `/v1/`). Any failure is `PermissionDenied`.
    pub async fn authorize(
        &self,
        token: Option<&str>,
        path: &str,
        caps: &[Capability],
    ) -> Result<TokenInfo, SecretsError> {
        let info = self.resolve_token(token).await?;
        let acl = self.acl_for(&info.policies).await?;
        if acl.allows_any(path, caps) {
            Ok(info)
        } else {
            Err(SecretsError::PermissionDenied)
        }
    }
}

/// Unix milliseconds → `SystemTime`.
pub(crate) fn millis_to_time(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

/// Unix milliseconds → RFC 3339 (what Vault prints for times).
pub fn rfc3339(ms: i64) -> String {
    humantime::format_rfc3339_nanos(millis_to_time(ms)).to_string()
}

pub(crate) fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}
