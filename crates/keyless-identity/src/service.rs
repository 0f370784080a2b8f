//! The identity service: registration entries, the CA and JWT keys with
//! their rotation, SVID minting and validation, bundles.
//!
//! The database is the source of truth. The service holds an immutable
//! snapshot of it ([`State`]) behind an `RwLock<Arc<_>>`, so the hot paths
//! (matching entries, minting, validating) only clone an `Arc` and never
//! wait on I/O. Every change takes one async mutex, writes the database,
//! records its audit event, then reloads the snapshot and, if anything
//! visible changed, bumps the [`Identity::changes`] counter that Workload API
//! streams watch.

use std::collections::HashSet;
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::digest;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use keyless_audit::{Event, EventSink, Outcome};
use keyless_store::{KeyManager, Store};
use serde_json::{Value, json};
use tokio::sync::{Mutex, watch};

use crate::ca::{self, AuthorityState, CaGeneration, from_millis, millis};
use crate::db::{self, Kind};
use crate::jwt::{self, JwtKey};
use crate::memo::SignatureMemo;
use crate::rotation::{self, Lifecycle, Plan, Reason, Target};
use crate::{
    IdentityError, JwtSvid, NewEntry, RegistrationEntry, Selector, TrustDomain, ValidatedJwtSvid,
    X509Svid,
};

/// `keyless_meta` key holding the trust domain this store belongs to.
pub const TRUST_DOMAIN_META_KEY: &str = "trust_domain";
/// Longest TTL an entry may ask for.
pub const MAX_ENTRY_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// Most selectors one entry may require.
const MAX_SELECTORS: usize = 64;
const MAX_HINT_LEN: usize = 1024;
/// Upper bound of one rotation sleep: the loop also re-reads the database,
/// so replicas sharing it converge within this time.
const MAX_ROTATION_SLEEP: Duration = Duration::from_secs(30);
const MIN_ROTATION_SLEEP: Duration = Duration::from_secs(1);

/// Settings of the identity service.
#[derive(Debug, Clone)]
pub struct IdentityConfig {
    pub trust_domain: TrustDomain,
    /// Base URL this fabric is reached at, without a trailing slash
    /// (e.g. `http://127.0.0.1:8180`); the JWT-SVID issuer is `{public_url}/spiffe`.
    pub public_url: String,
    /// Lifetime of one CA generation (root and intermediate). Default 24 h.
    pub ca_ttl: Duration,
    /// Lifetime of one JWT signing key. Default 24 h.
    pub jwt_key_ttl: Duration,
    /// X509-SVID TTL of entries that do not set one. Default 1 h.
    pub default_x509_ttl: Duration,
    /// JWT-SVID TTL of entries that do not set one. Default 5 min.
    pub default_jwt_ttl: Duration,
}

impl IdentityConfig {
    /// The configuration with the SPIFFE field defaults.
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

    fn validate(&self) -> Result<(), IdentityError> {
        let bad = |m: &str| Err(IdentityError::InvalidConfig(m.to_owned()));
        if self.ca_ttl < Duration::from_secs(60) || self.jwt_key_ttl < Duration::from_secs(60) {
            return bad("ca_ttl and jwt_key_ttl must be at least 60 s");
        }
        for d in [self.default_x509_ttl, self.default_jwt_ttl] {
            if d < Duration::from_secs(1) || d > MAX_ENTRY_TTL {
                return bad("default svid ttls must be between 1 s and 30 days");
            }
        }
        Ok(())
    }
}

/// A consistent snapshot of the identity tables.
#[derive(Debug, Default)]
struct State {
    /// Ordered by `created_at`, then `id`.
    entries: Vec<RegistrationEntry>,
    /// Ordered by generation.
    cas: Vec<Arc<CaGeneration>>,
    jwt_keys: Vec<Arc<JwtKey>>,
    sequence: i64,
}

impl State {
    fn active_ca(&self) -> Option<&Arc<CaGeneration>> {
        self.cas
            .iter()
            .rev()
            .find(|c| c.state == AuthorityState::Active && c.issuer.is_some())
    }

    fn active_jwt_key(&self) -> Option<&Arc<JwtKey>> {
        self.jwt_keys
            .iter()
            .rev()
            .find(|k| k.state == AuthorityState::Active && k.signer.is_some())
    }

    /// What Workload API clients can observe; a difference means "notify".
    fn fingerprint(&self) -> impl PartialEq + use<'_> {
        (
            &self.entries,
            self.cas
                .iter()
                .map(|c| (c.generation, c.state, c.issuer.is_some()))
                .collect::<Vec<_>>(),
            self.jwt_keys
                .iter()
                .map(|k| (k.generation, k.state, k.signer.is_some()))
                .collect::<Vec<_>>(),
            self.sequence,
        )
    }
}

/// The identity service. Create with [`Identity::open`].
#[derive(Debug)]
pub struct Identity {
    store: Store,
    keys: Arc<dyn KeyManager>,
    events: Arc<dyn EventSink>,
    config: IdentityConfig,
    state: RwLock<Arc<State>>,
    /// Serializes every change (entries and rotation).
    mutate: Mutex<()>,
    changes: watch::Sender<u64>,
    /// JWT-SVID signatures already verified (see `memo.rs`).
    memo: SignatureMemo,
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(digest::digest(&digest::SHA256, data))
}

fn unix_secs(t: SystemTime) -> i64 {
    i64::try_from(t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()).unwrap_or(i64::MAX)
}

fn random_id() -> Result<String, IdentityError> {
    let mut b = [0u8; 16];
    aws_lc_rs::rand::fill(&mut b).map_err(|_| IdentityError::Crypto("rng failure".into()))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b))
}

// === impl Identity ===

impl Identity {
    /// Opens the identity service on `store`: checks (or, on first open,
    /// records) the trust domain, loads entries and authorities, and creates
    /// the first CA generation and JWT key if there are none (or brings an
    /// overdue rotation up to date).
    pub async fn open(
        store: Store,
        keys: Arc<dyn KeyManager>,
        events: Arc<dyn EventSink>,
        config: IdentityConfig,
    ) -> Result<Arc<Self>, IdentityError> {
        config.validate()?;
        let configured = config.trust_domain.name();
        let stored = store.init_meta(TRUST_DOMAIN_META_KEY, configured).await?;
        if stored != configured {
            return Err(IdentityError::TrustDomainMismatch {
                stored,
                configured: configured.to_owned(),
            });
        }
        let (changes, _) = watch::channel(0);
        let identity = Arc::new(Self {
            store,
            keys,
            events,
            config,
            state: RwLock::new(Arc::new(State::default())),
            mutate: Mutex::new(()),
            changes,
            memo: SignatureMemo::default(),
        });
        identity.rotation_tick(SystemTime::now()).await?;
        Ok(identity)
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.config.trust_domain
    }

    pub fn config(&self) -> &IdentityConfig {
        &self.config
    }

    /// The JWT-SVID issuer and OIDC discovery base, `{public_url}/spiffe`.
    pub fn issuer(&self) -> String {
        format!("{}/spiffe", self.config.public_url.trim_end_matches('/'))
    }

    fn snapshot(&self) -> Arc<State> {
        match self.state.read() {
            Ok(s) => s.clone(),
            // A writer never panics while holding the lock (it only swaps an
            // Arc), but if it did the last snapshot is still consistent.
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    // --- entries ---

    /// Creates a registration entry.
    ///
    /// Rules: the SPIFFE ID (and parent, if any) must be in this trust domain
    /// and the SPIFFE ID must have a path; at least one selector (duplicates
    /// are folded); TTLs in whole seconds within `[1 s, 30 days]`; an explicit
    /// `x509_ttl` no longer than half the CA lifetime and `jwt_ttl` no longer
    /// than half the JWT key lifetime, because longer ones could never be
    /// honoured (an SVID never outlives the authority that signed it, and the
    /// next one is activated with at most 2/3 of its life left); an entry with
    /// the same SPIFFE ID, parent and selectors must not exist.
    pub async fn create_entry(&self, new: NewEntry) -> Result<RegistrationEntry, IdentityError> {
        let bad = |m: String| Err(IdentityError::InvalidEntry(m));
        let td = &self.config.trust_domain;
        if !new.spiffe_id.is_member_of(td) {
            return bad(format!(
                "spiffe id `{}` is not in trust domain `{td}`",
                new.spiffe_id
            ));
        }
        if new.spiffe_id.path().is_empty() {
            return bad(format!(
                "spiffe id `{}` has no path; the bare trust domain id names the ca",
                new.spiffe_id
            ));
        }
        if let Some(parent) = &new.parent_id
            && !parent.is_member_of(td)
        {
            return bad(format!(
                "parent id `{parent}` is not in trust domain `{td}`"
            ));
        }
        let mut selectors = Vec::with_capacity(new.selectors.len());
        for s in new.selectors {
            if !selectors.contains(&s) {
                selectors.push(s);
            }
        }
        if selectors.is_empty() {
            return bad("at least one selector is required".into());
        }
        if selectors.len() > MAX_SELECTORS {
            return bad(format!("at most {MAX_SELECTORS} selectors are allowed"));
        }
        if new.hint.len() > MAX_HINT_LEN {
            return bad(format!("hint is longer than {MAX_HINT_LEN} bytes"));
        }
        let x509_ttl = check_ttl(
            "x509_ttl",
            new.x509_ttl,
            self.config.default_x509_ttl,
            self.config.ca_ttl / 2,
        )?;
        let jwt_ttl = check_ttl(
            "jwt_ttl",
            new.jwt_ttl,
            self.config.default_jwt_ttl,
            self.config.jwt_key_ttl / 2,
        )?;

        let _guard = self.mutate.lock().await;
        let wanted: HashSet<&Selector> = selectors.iter().collect();
        let state = self.snapshot();
        if let Some(existing) = state.entries.iter().find(|e| {
            e.spiffe_id == new.spiffe_id
                && e.parent_id == new.parent_id
                && e.selectors.iter().collect::<HashSet<_>>() == wanted
        }) {
            return Err(IdentityError::Conflict(format!(
                "entry `{}` already gives `{}` to the same selectors",
                existing.id, existing.spiffe_id
            )));
        }
        let entry = RegistrationEntry {
            id: uuid::Uuid::new_v4().to_string(),
            spiffe_id: new.spiffe_id,
            parent_id: new.parent_id,
            selectors,
            x509_ttl,
            jwt_ttl,
            hint: new.hint,
            admin: new.admin,
            created_at: keyless_store::now_millis(),
        };
        db::insert_entry(&self.store, &entry).await?;
        let event = Event::new("entry.created", Outcome::Success)
            .agent(entry.spiffe_id.to_string())
            .detail("entry_id", entry.id.clone())
            .detail("selectors", selector_strings(&entry.selectors))
            .detail("x509_ttl_secs", entry.x509_ttl.as_secs())
            .detail("jwt_ttl_secs", entry.jwt_ttl.as_secs())
            .detail("admin", entry.admin);
        if let Err(e) = self.events.record(event).await {
            // An identity nobody can audit must not exist: undo.
            db::delete_entry(&self.store, &entry.id).await?;
            return Err(e.into());
        }
        self.reload().await?;
        Ok(entry)
    }

    /// Every entry, ordered by creation time then id.
    pub async fn list_entries(&self) -> Vec<RegistrationEntry> {
        self.snapshot().entries.clone()
    }

    /// One entry by id.
    pub fn get_entry(&self, id: &str) -> Option<RegistrationEntry> {
        self.snapshot().entries.iter().find(|e| e.id == id).cloned()
    }

    /// Deletes an entry; workloads lose the identity on their next update.
    pub async fn delete_entry(&self, id: &str) -> Result<RegistrationEntry, IdentityError> {
        let _guard = self.mutate.lock().await;
        let entry = self
            .snapshot()
            .entries
            .iter()
            .find(|e| e.id == id)
            .cloned()
            .ok_or_else(|| IdentityError::NotFound(id.to_owned()))?;
        if !db::delete_entry(&self.store, id).await? {
            self.reload().await?;
            return Err(IdentityError::NotFound(id.to_owned()));
        }
        let event = Event::new("entry.deleted", Outcome::Success)
            .agent(entry.spiffe_id.to_string())
            .detail("entry_id", entry.id.clone())
            .detail("selectors", selector_strings(&entry.selectors));
        if let Err(e) = self.events.record(event).await {
            db::insert_entry(&self.store, &entry).await?;
            return Err(e.into());
        }
        self.reload().await?;
        Ok(entry)
    }

    /// Entries whose selectors are all among the caller's, in list order
    /// (the first is the caller's default identity).
    pub fn matching_entries(&self, caller: &[Selector]) -> Vec<RegistrationEntry> {
        self.snapshot()
            .entries
            .iter()
            .filter(|e| e.matches(caller))
            .cloned()
            .collect()
    }

    // --- SVIDs ---

    /// Mints an X509-SVID for `entry` with the active CA: a fresh P-256 key,
    /// valid for the entry's TTL but never past the CA's own expiry.
    pub fn mint_x509_svid(&self, entry: &RegistrationEntry) -> Result<X509Svid, IdentityError> {
        self.check_entry_id(entry)?;
        let state = self.snapshot();
        let ca = state
            .active_ca()
            .ok_or(IdentityError::NoAuthority("x509 ca"))?;
        let leaf = ca::mint_leaf(ca, &entry.spiffe_id, entry.x509_ttl, SystemTime::now())?;
        Ok(X509Svid {
            spiffe_id: entry.spiffe_id.clone(),
            cert_chain: vec![leaf.der, ca.intermediate_der.clone()],
            private_key_pkcs8: leaf.pkcs8,
            not_before: leaf.not_before,
            not_after: leaf.not_after,
            hint: entry.hint.clone(),
            serial_hex: leaf.serial_hex,
        })
    }

    /// Mints a JWT-SVID for `entry` and `audience` (at least one, none empty)
    /// with the active JWT key; it never outlives that key.
    pub fn mint_jwt_svid(
        &self,
        entry: &RegistrationEntry,
        audience: &[String],
    ) -> Result<JwtSvid, IdentityError> {
        self.check_entry_id(entry)?;
        if audience.is_empty() || audience.iter().any(String::is_empty) {
            return Err(IdentityError::InvalidRequest(
                "audience must be specified".into(),
            ));
        }
        let state = self.snapshot();
        let key = state
            .active_jwt_key()
            .ok_or(IdentityError::NoAuthority("jwt signing key"))?;
        let now = SystemTime::now();
        let iat = unix_secs(now);
        let ttl = i64::try_from(entry.jwt_ttl.as_secs()).unwrap_or(i64::MAX);
        let exp = iat.saturating_add(ttl).min(key.not_after / 1000);
        if exp <= iat {
            return Err(IdentityError::NoAuthority("unexpired jwt signing key"));
        }
        let claims = json!({
            "sub": entry.spiffe_id.as_str(),
            "aud": audience,
            "exp": exp,
            "iat": iat,
            "iss": self.issuer(),
            "jti": random_id()?,
        });
        let token = key.sign(&claims)?;
        let at = |s: i64| UNIX_EPOCH + Duration::from_secs(u64::try_from(s).unwrap_or(0));
        Ok(JwtSvid {
            spiffe_id: entry.spiffe_id.clone(),
            token,
            issued_at: at(iat),
            expires_at: at(exp),
            hint: entry.hint.clone(),
        })
    }

    /// Validates a JWT-SVID issued by this trust domain for `audience`.
    pub fn validate_jwt_svid(
        &self,
        token: &str,
        audience: &str,
    ) -> Result<ValidatedJwtSvid, IdentityError> {
        let state = self.snapshot();
        jwt::validate(
            &state.jwt_keys,
            &self.memo,
            token,
            audience,
            &self.config.trust_domain,
            unix_secs(SystemTime::now()),
        )
    }

    /// Validates an X509-SVID leaf (DER) of this trust domain: it must chain
    /// to a current root through one of our intermediates, be valid now,
    /// carry clientAuth and follow the X509-SVID profile (`x509.rs`). A
    /// certificate is public: this proves it is a current SVID, not that
    /// the one presenting it holds its key.
    pub fn validate_x509_svid(
        &self,
        leaf_der: &[u8],
    ) -> Result<crate::x509::ValidatedX509Svid, IdentityError> {
        let state = self.snapshot();
        let roots: Vec<&[u8]> = state.cas.iter().map(|c| c.root_der.as_slice()).collect();
        let intermediates: Vec<&[u8]> = state
            .cas
            .iter()
            .map(|c| c.intermediate_der.as_slice())
            .collect();
        crate::x509::validate(
            leaf_der,
            &roots,
            &intermediates,
            &self.config.trust_domain,
            SystemTime::now(),
        )
    }

    fn check_entry_id(&self, entry: &RegistrationEntry) -> Result<(), IdentityError> {
        if entry.spiffe_id.is_member_of(&self.config.trust_domain)
            && !entry.spiffe_id.path().is_empty()
        {
            Ok(())
        } else {
            Err(IdentityError::InvalidEntry(format!(
                "spiffe id `{}` is not a workload id of this trust domain",
                entry.spiffe_id
            )))
        }
    }

    // --- bundles ---

    /// DER root certificates currently trusted: prepared, active and retired
    /// generations, oldest first.
    pub fn x509_authorities(&self) -> Vec<Vec<u8>> {
        self.snapshot()
            .cas
            .iter()
            .map(|c| c.root_der.clone())
            .collect()
    }

    /// The JWT bundle: `{"keys":[{kty,crv,x,y,kid,use:"jwt-svid",alg:"ES256"}…]}`.
    pub fn jwt_authorities(&self) -> Value {
        let keys: Vec<Value> = self
            .snapshot()
            .jwt_keys
            .iter()
            .filter_map(|k| k.jwk("jwt-svid").ok())
            .collect();
        json!({ "keys": keys })
    }

    /// The SPIFFE federation bundle (a JWKS with `x509-svid` and `jwt-svid`
    /// keys, `spiffe_refresh_hint` and `spiffe_sequence`).
    pub fn federation_bundle(&self) -> Value {
        let state = self.snapshot();
        let mut keys = Vec::new();
        for ca in &state.cas {
            if let Ok((x, y)) = jwt::ec_xy(&ca.root_public) {
                keys.push(json!({
                    "kty": "EC",
                    "crv": "P-256",
                    "x": x,
                    "y": y,
                    "use": "x509-svid",
                    "x5c": [STANDARD.encode(&ca.root_der)],
                }));
            }
        }
        keys.extend(state.jwt_keys.iter().filter_map(|k| k.jwk("jwt-svid").ok()));
        json!({
            "keys": keys,
            "spiffe_refresh_hint": self.refresh_hint().as_secs(),
            "spiffe_sequence": state.sequence,
        })
    }

    /// The JWKS published for OIDC discovery (`use: sig`).
    pub fn oidc_jwks(&self) -> Value {
        let keys: Vec<Value> = self
            .snapshot()
            .jwt_keys
            .iter()
            .filter_map(|k| k.jwk("sig").ok())
            .collect();
        json!({ "keys": keys })
    }

    /// How often bundle consumers should refresh: well inside the window
    /// between a new authority's preparation and its activation (a third of
    /// the lifetime), capped at 5 minutes.
    pub fn refresh_hint(&self) -> Duration {
        let shortest = self.config.ca_ttl.min(self.config.jwt_key_ttl);
        (shortest / 12).clamp(Duration::from_secs(1), Duration::from_secs(300))
    }

    /// A counter bumped on every change of entries, CA, JWT keys or bundle.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    // --- rotation ---

    /// Rotates the X.509 CA now: a new generation is prepared and activated
    /// at once; the old root stays in the bundle until it expires.
    pub async fn rotate_x509_ca(&self) -> Result<(), IdentityError> {
        let _guard = self.mutate.lock().await;
        self.reload().await?;
        self.step(Kind::X509Ca, SystemTime::now(), true).await?;
        self.reload().await?;
        Ok(())
    }

    /// Rotates the JWT signing key now; the old key keeps validating until
    /// it expires.
    pub async fn rotate_jwt_key(&self) -> Result<(), IdentityError> {
        let _guard = self.mutate.lock().await;
        self.reload().await?;
        self.step(Kind::JwtKey, SystemTime::now(), true).await?;
        self.reload().await?;
        Ok(())
    }

    /// Runs scheduled rotation in the background until the service is
    /// dropped. Sleeps are bounded, so a changed clock or another replica's
    /// rotation is noticed within [`MAX_ROTATION_SLEEP`].
    pub fn spawn_rotation(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let weak: Weak<Self> = Arc::downgrade(self);
        // Closes when the service (which owns the sender) is dropped, which
        // ends the task without waiting out a sleep.
        let mut closed = self.changes.subscribe();
        tokio::spawn(async move {
            loop {
                let Some(this) = weak.upgrade() else { return };
                let sleep = match this.rotation_tick(SystemTime::now()).await {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::error!(error = %e, "identity rotation failed; retrying");
                        Duration::from_secs(5)
                    }
                };
                drop(this);
                closed.borrow_and_update();
                let deadline = tokio::time::Instant::now() + sleep;
                loop {
                    tokio::select! {
                        () = tokio::time::sleep_until(deadline) => break,
                        changed = closed.changed() => if changed.is_err() { return },
                    }
                }
            }
        })
    }

    /// One scheduled pass at `now`: re-read the database, apply what the
    /// schedule says for both kinds, and return how long to sleep.
    pub(crate) async fn rotation_tick(&self, now: SystemTime) -> Result<Duration, IdentityError> {
        let _guard = self.mutate.lock().await;
        self.reload().await?;
        let wake_ca = self.step(Kind::X509Ca, now, false).await?;
        let wake_jwt = self.step(Kind::JwtKey, now, false).await?;
        self.reload().await?;
        let now_ms = millis(now);
        let wait = [wake_ca, wake_jwt]
            .into_iter()
            .flatten()
            .min()
            .map(|at| Duration::from_millis(u64::try_from(at.saturating_sub(now_ms)).unwrap_or(0)))
            .unwrap_or(MAX_ROTATION_SLEEP);
        Ok(wait.clamp(MIN_ROTATION_SLEEP, MAX_ROTATION_SLEEP))
    }

    /// Plans and applies one rotation step for `kind`. Caller holds `mutate`
    /// and has just reloaded. Returns when to look again (Unix ms).
    async fn step(
        &self,
        kind: Kind,
        now: SystemTime,
        force: bool,
    ) -> Result<Option<i64>, IdentityError> {
        let state = self.snapshot();
        let lifecycles: Vec<Lifecycle> = match kind {
            Kind::X509Ca => state
                .cas
                .iter()
                .map(|c| Lifecycle {
                    generation: c.generation,
                    state: c.state,
                    not_before: c.not_before,
                    not_after: c.not_after,
                })
                .collect(),
            Kind::JwtKey => state
                .jwt_keys
                .iter()
                .map(|k| Lifecycle {
                    generation: k.generation,
                    state: k.state,
                    not_before: k.not_before,
                    not_after: k.not_after,
                })
                .collect(),
        };
        let plan = rotation::plan(&lifecycles, millis(now), force);
        if plan.is_noop() {
            return Ok(plan.wake_at);
        }
        match kind {
            Kind::X509Ca => self.apply_ca(&state, &plan, now).await?,
            Kind::JwtKey => self.apply_jwt(&state, &plan, now).await?,
        }
        // Something changed: look again soon, the new authority has its own schedule.
        Ok(Some(millis(now)))
    }

    async fn apply_ca(
        &self,
        state: &State,
        plan: &Plan,
        now: SystemTime,
    ) -> Result<(), IdentityError> {
        let mut new_generation = None;
        if plan.prepare {
            let generation = db::next_generation(&self.store, Kind::X509Ca).await?;
            let ca = ca::create_generation(
                self.keys.as_ref(),
                &self.config.trust_domain,
                generation,
                self.config.ca_ttl,
                now,
            )
            .await?;
            db::insert_ca(&self.store, &ca).await?;
            db::bump_sequence(&self.store).await?;
            new_generation = Some(generation);
            self.record(
                Event::new("ca.prepared", Outcome::Success)
                    .detail("generation", generation)
                    .detail("not_after", ca.not_after)
                    .detail("root_sha256", sha256_hex(&ca.root_der)),
            )
            .await?;
        }
        if let Some((target, reason)) = plan.activate {
            let to = match target {
                Target::Existing(g) => g,
                Target::New => new_generation.ok_or(IdentityError::Corrupt(
                    "rotation plan without a new ca".into(),
                ))?,
            };
            let from = state
                .cas
                .iter()
                .rev()
                .find(|c| c.state == AuthorityState::Active)
                .map(|c| c.generation);
            db::activate(&self.store, Kind::X509Ca, to, millis(now)).await?;
            self.record(activation_event("ca.rotated", from, to, reason))
                .await?;
        }
        for generation in &plan.prune {
            if let Some(ca) = state.cas.iter().find(|c| c.generation == *generation) {
                db::delete_generation(&self.store, Kind::X509Ca, *generation).await?;
                db::bump_sequence(&self.store).await?;
                self.keys.delete(&ca.intermediate_key).await?;
                self.keys.delete(&ca.root_key).await?;
                self.record(
                    Event::new("ca.pruned", Outcome::Success)
                        .detail("generation", *generation)
                        .detail("root_sha256", sha256_hex(&ca.root_der)),
                )
                .await?;
            }
        }
        Ok(())
    }

    async fn apply_jwt(
        &self,
        state: &State,
        plan: &Plan,
        now: SystemTime,
    ) -> Result<(), IdentityError> {
        let mut new_generation = None;
        if plan.prepare {
            let generation = db::next_generation(&self.store, Kind::JwtKey).await?;
            let key_name = jwt::key_name(generation);
            let signer = ca::fresh_key(self.keys.as_ref(), &key_name).await?;
            let not_before = millis(now);
            let key = JwtKey {
                generation,
                kid: jwt::thumbprint(signer.public_key())?,
                key_name,
                public_key: signer.public_key().to_vec(),
                state: AuthorityState::Prepared,
                not_before,
                not_after: not_before.saturating_add(
                    i64::try_from(self.config.jwt_key_ttl.as_millis()).unwrap_or(i64::MAX),
                ),
                created_at: not_before,
                activated_at: 0,
                signer: Some(signer),
            };
            db::insert_jwt_key(&self.store, &key).await?;
            db::bump_sequence(&self.store).await?;
            new_generation = Some(generation);
            self.record(
                Event::new("jwt_key.prepared", Outcome::Success)
                    .detail("generation", generation)
                    .detail("kid", key.kid.clone())
                    .detail("not_after", key.not_after),
            )
            .await?;
        }
        if let Some((target, reason)) = plan.activate {
            let to = match target {
                Target::Existing(g) => g,
                Target::New => new_generation.ok_or(IdentityError::Corrupt(
                    "rotation plan without a new jwt key".into(),
                ))?,
            };
            let from = state
                .jwt_keys
                .iter()
                .rev()
                .find(|k| k.state == AuthorityState::Active)
                .map(|k| k.generation);
            db::activate(&self.store, Kind::JwtKey, to, millis(now)).await?;
            let fresh = db::load_jwt_keys(&self.store).await?;
            let kid_of = |g: Option<i64>| {
                g.and_then(|g| fresh.iter().find(|k| k.generation == g))
                    .map(|k| k.kid.clone())
            };
            self.record(
                activation_event("jwt_key.rotated", from, to, reason)
                    .detail("from_kid", kid_of(from))
                    .detail("to_kid", kid_of(Some(to))),
            )
            .await?;
        }
        for generation in &plan.prune {
            if let Some(key) = state.jwt_keys.iter().find(|k| k.generation == *generation) {
                db::delete_generation(&self.store, Kind::JwtKey, *generation).await?;
                db::bump_sequence(&self.store).await?;
                self.keys.delete(&key.key_name).await?;
                self.record(
                    Event::new("jwt_key.pruned", Outcome::Success)
                        .detail("generation", *generation)
                        .detail("kid", key.kid.clone()),
                )
                .await?;
            }
        }
        Ok(())
    }

    async fn record(&self, event: Event) -> Result<(), IdentityError> {
        self.events.record(event).await?;
        Ok(())
    }

    /// Re-reads the database into a new snapshot, reusing loaded signers,
    /// and notifies watchers if anything they can see changed. Caller holds
    /// `mutate` (or is `open`).
    async fn reload(&self) -> Result<(), IdentityError> {
        let prev = self.snapshot();
        let entries = db::load_entries(&self.store).await?;
        let sequence = db::load_sequence(&self.store).await?;

        let mut cas = Vec::new();
        for mut ca in db::load_cas(&self.store).await? {
            let known = prev.cas.iter().find(|c| c.generation == ca.generation);
            ca.issuer = match known.and_then(|c| c.issuer.clone()) {
                Some(issuer) => Some(issuer),
                // Only generations that sign or may soon sign need their key.
                None if ca.state != AuthorityState::Retired => {
                    match self.keys.load(&ca.intermediate_key).await {
                        Ok(signer) => Some(Arc::new(ca::issuer_for(&ca.intermediate_der, signer)?)),
                        Err(e) => {
                            tracing::warn!(generation = ca.generation, error = %e, "ca key unavailable");
                            None
                        }
                    }
                }
                None => None,
            };
            cas.push(Arc::new(ca));
        }

        let mut jwt_keys = Vec::new();
        for mut key in db::load_jwt_keys(&self.store).await? {
            let known = prev
                .jwt_keys
                .iter()
                .find(|k| k.generation == key.generation);
            key.signer = match known.and_then(|k| k.signer.clone()) {
                Some(signer) => Some(signer),
                None if key.state != AuthorityState::Retired => {
                    match self.keys.load(&key.key_name).await {
                        Ok(signer) if signer.public_key() == key.public_key.as_slice() => {
                            Some(signer)
                        }
                        Ok(_) => {
                            return Err(IdentityError::Corrupt(format!(
                                "key `{}` does not match its stored public key",
                                key.key_name
                            )));
                        }
                        Err(e) => {
                            tracing::warn!(generation = key.generation, error = %e, "jwt key unavailable");
                            None
                        }
                    }
                }
                None => None,
            };
            jwt_keys.push(Arc::new(key));
        }

        let next = Arc::new(State {
            entries,
            cas,
            jwt_keys,
            sequence,
        });
        let changed = next.fingerprint() != prev.fingerprint();
        match self.state.write() {
            Ok(mut s) => *s = next,
            Err(poisoned) => *poisoned.into_inner() = next,
        }
        if changed {
            self.changes.send_modify(|v| *v = v.wrapping_add(1));
        }
        Ok(())
    }

    /// Test hook: the X.509 generations as (generation, state, not_after).
    #[cfg(test)]
    pub(crate) fn ca_states(&self) -> Vec<(i64, AuthorityState, i64)> {
        self.snapshot()
            .cas
            .iter()
            .map(|c| (c.generation, c.state, c.not_after))
            .collect()
    }

    /// The not_after of the active CA, for tests outside the crate too.
    pub fn active_ca_not_after(&self) -> Option<SystemTime> {
        self.snapshot()
            .active_ca()
            .map(|c| from_millis(c.not_after))
    }
}

fn activation_event(kind: &str, from: Option<i64>, to: i64, reason: Reason) -> Event {
    Event::new(kind, Outcome::Success)
        .detail("from_generation", from)
        .detail("to_generation", to)
        .detail("reason", reason.as_str())
}

fn selector_strings(selectors: &[Selector]) -> Vec<String> {
    selectors.iter().map(ToString::to_string).collect()
}

fn check_ttl(
    name: &str,
    requested: Option<Duration>,
    default: Duration,
    authority_cap: Duration,
) -> Result<Duration, IdentityError> {
    let Some(ttl) = requested else {
        return Ok(Duration::from_secs(default.as_secs()));
    };
    if ttl.subsec_nanos() != 0 || ttl.as_secs() == 0 || ttl > MAX_ENTRY_TTL {
        return Err(IdentityError::InvalidEntry(format!(
            "{name} must be whole seconds between 1 s and 30 days"
        )));
    }
    if ttl > authority_cap {
        return Err(IdentityError::InvalidEntry(format!(
            "{name} of {} s is longer than half the signing authority's lifetime ({} s)",
            ttl.as_secs(),
            authority_cap.as_secs()
        )));
    }
    Ok(ttl)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

    use super::*;
    use keyless_audit::MemorySink;
    use keyless_store::FileKeyManager;

    /// Drives the background schedule with a simulated clock: prepare at
    /// half life, activate at one sixth remaining, prune after expiry.
    #[tokio::test]
    async fn scheduled_rotation_prepares_activates_and_prunes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_sqlite(&dir.path().join("k.db")).await.unwrap();
        let keys = Arc::new(FileKeyManager::open(&dir.path().join("keys")).unwrap());
        let events = Arc::new(MemorySink::default());
        let mut config = IdentityConfig::new(TrustDomain::new("td").unwrap(), "http://x".into());
        config.ca_ttl = Duration::from_secs(600);
        config.jwt_key_ttl = Duration::from_secs(600);
        let t0 = SystemTime::now();
        let id = Identity::open(store, keys.clone(), events.clone(), config)
            .await
            .unwrap();
        let at = |s: u64| t0 + Duration::from_secs(s);
        use AuthorityState::*;
        let states = |id: &Identity| {
            id.ca_states()
                .iter()
                .map(|c| (c.0, c.1))
                .collect::<Vec<_>>()
        };
        let jwt_states = |id: &Identity| {
            id.snapshot()
                .jwt_keys
                .iter()
                .map(|k| (k.generation, k.state))
                .collect::<Vec<_>>()
        };
        assert_eq!(states(&id), vec![(1, Active)]);
        let seq0 = id.snapshot().sequence;

        // Young: nothing to do, and the loop sleeps until half life (bounded).
        let sleep = id.rotation_tick(at(100)).await.unwrap();
        assert_eq!(states(&id), vec![(1, Active)]);
        assert!(sleep <= MAX_ROTATION_SLEEP && sleep >= MIN_ROTATION_SLEEP);

        // Half life (the CA lives 610 s including the 10 s backdate, the JWT
        // key 600 s): prepared and published.
        id.rotation_tick(at(301)).await.unwrap();
        assert_eq!(states(&id), vec![(1, Active), (2, Prepared)]);
        assert_eq!(jwt_states(&id), vec![(1, Active), (2, Prepared)]);
        assert_eq!(
            id.x509_authorities().len(),
            2,
            "clients learn the next root before use"
        );
        assert_eq!(id.snapshot().sequence, seq0 + 2);

        // One sixth of the life remaining (CA: 600 - 610/6 = 498.3 s, less up
        // to 1 s of truncation to whole seconds; JWT: 500 s).
        id.rotation_tick(at(496)).await.unwrap();
        assert_eq!(states(&id), vec![(1, Active), (2, Prepared)]);
        id.rotation_tick(at(501)).await.unwrap();
        assert_eq!(states(&id), vec![(1, Retired), (2, Active)]);
        assert_eq!(jwt_states(&id), vec![(1, Retired), (2, Active)]);
        assert_eq!(id.x509_authorities().len(), 2);

        // Expired: pruned from the bundle, keys destroyed. (Generation 2,
        // created at 301 s, is itself at half life now: 3 is prepared.)
        id.rotation_tick(at(601)).await.unwrap();
        assert_eq!(states(&id), vec![(2, Active), (3, Prepared)]);
        assert_eq!(jwt_states(&id), vec![(2, Active), (3, Prepared)]);
        let names = keys.list().await.unwrap();
        assert_eq!(
            names,
            vec![
                "jwt-2",
                "jwt-3",
                "x509-ca-2-intermediate",
                "x509-ca-3-intermediate"
            ]
        );
        // +1 per prepared and per pruned authority.
        assert_eq!(id.snapshot().sequence, seq0 + 6);

        let kinds: Vec<String> = events.events().into_iter().map(|e| e.kind).collect();
        for kind in [
            "ca.prepared",
            "ca.rotated",
            "ca.pruned",
            "jwt_key.prepared",
            "jwt_key.rotated",
            "jwt_key.pruned",
        ] {
            assert!(kinds.iter().any(|k| k == kind), "{kind} in {kinds:?}");
        }
        let rotated = events
            .events()
            .into_iter()
            .filter(|e| e.kind == "ca.rotated")
            .map(|e| e.detail["reason"].clone())
            .collect::<Vec<_>>();
        assert_eq!(rotated, vec![json!("bootstrap"), json!("scheduled")]);
        // No key material in any event.
        for e in events.events() {
            let text = serde_json::to_string(&e.detail).unwrap();
            assert!(!text.contains("PRIVATE") && text.len() < 400, "{text}");
        }
    }

    #[tokio::test]
    async fn rotation_task_stops_when_the_service_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_sqlite(&dir.path().join("k.db")).await.unwrap();
        let keys = Arc::new(FileKeyManager::open(&dir.path().join("keys")).unwrap());
        let config = IdentityConfig::new(TrustDomain::new("td").unwrap(), "http://x/".into());
        assert_eq!(config.public_url, "http://x");
        let id = Identity::open(store, keys, Arc::new(MemorySink::default()), config)
            .await
            .unwrap();
        assert_eq!(id.issuer(), "http://x/spiffe");
        let handle = id.spawn_rotation();
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(id);
        tokio::time::timeout(Duration::from_secs(5), handle)
            .await
            .unwrap()
            .unwrap();
    }
}
