//! The [`Sts`] service: its signing keys and JWKS, user access tokens,
//! consents, single-use consumption and client authentication. The token
//! exchange itself is in `exchange.rs`.

use std::collections::HashMap;
use std::sync::PoisonError;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use keyless_audit::{Event, EventSink, Outcome};
use keyless_identity::Identity;
use keyless_store::{KeyAlgorithm, KeyManager, Store, StoreError, now_millis};
use serde_json::{Value, json};

use crate::db::{self, Consent, KeyRow};
use crate::policy::PolicyStore;
use crate::rar::RarRegistry;
use crate::token::{
    self, AccessTokenClaims, Expect, KeyState, MayAct, SigningKey, StringList, random_id,
};
use crate::{StsConfig, StsError};

/// `client_assertion_type` of the SPIFFE client authentication draft.
pub const CLIENT_ASSERTION_TYPE_JWT_SPIFFE: &str =
    "urn:ietf:params:oauth:client-assertion-type:jwt-spiffe";
/// How often an unknown `kid` may trigger a reload of the key ring from
/// the store (another replica may have rotated); bounded so that forged
/// kids cannot turn into a query per request.
const KEY_REFRESH_INTERVAL: Duration = Duration::from_secs(5);

/// Event types of the STS.
pub mod kinds {
    pub const TOKEN_ISSUED: &str = "token.issued";
    /// A `client_credentials` or `refresh_token` request refused (the
    /// token exchange has its own `token_exchange.denied`).
    pub const TOKEN_DENIED: &str = "token.denied";
    /// A `client_credentials` request that failed on our side.
    pub const TOKEN_ERROR: &str = "token.error";
    pub const TOKEN_EXCHANGE_SUCCESS: &str = "token_exchange.success";
    pub const TOKEN_EXCHANGE_DENIED: &str = "token_exchange.denied";
    pub const TOKEN_EXCHANGE_ERROR: &str = "token_exchange.error";
    pub const TOKEN_CONSUMED: &str = "token.consumed";
    pub const TOKEN_REPLAY_DENIED: &str = "token.replay_denied";
    pub const CONSENT_GRANTED: &str = "consent.granted";
    pub const CONSENT_REVOKED: &str = "consent.revoked";
    pub const CONSENT_DENIED: &str = "consent.denied";
    pub const STS_KEY_ROTATED: &str = "sts_key.rotated";
    pub const USER_CREATED: &str = "user.created";
    pub const USER_PASSWORD_RESET: &str = "user.password_reset";
    pub const LOGIN_SUCCESS: &str = "login.success";
    pub const LOGIN_FAILURE: &str = "login.failure";
    pub const LOGIN_LOCKED: &str = "login.locked";
    pub const SESSION_STARTED: &str = "session.started";
    pub const SESSION_REVOKED: &str = "session.revoked";
    pub const CODE_ISSUED: &str = "authorization_code.issued";
    pub const CODE_REUSE_DETECTED: &str = "authorization_code.reuse_detected";
    pub const REFRESH_REUSE_DETECTED: &str = "refresh.reuse_detected";
    pub const TOKEN_REVOKED: &str = "token.revoked";
}

pub(crate) fn unix_now() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs(),
    )
    .unwrap_or(i64::MAX)
}

pub(crate) fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

/// What a user access token is minted for (the sign-in flow fills it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserTokenRequest {
    /// The user's stable subject identifier.
    pub subject: String,
    pub email: Option<String>,
    pub client_id: String,
    pub session_id: Option<String>,
    pub scope: Option<String>,
    /// Audiences; empty means the STS itself (the token is then good as a
    /// token-exchange subject).
    pub audience: Vec<String>,
    /// The agents (SPIFFE IDs) the user allowed to act for them.
    pub may_act: Vec<String>,
    /// When the user authenticated (Unix seconds); defaults to now.
    pub auth_time: Option<i64>,
}

/// A minted token.
#[derive(Debug, Clone)]
pub struct IssuedToken {
    pub token: String,
    pub claims: AccessTokenClaims,
    pub expires_in: i64,
}

/// A confidential client that authenticated with its JWT-SVID or with
/// `private_key_jwt` (`client_auth.rs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthenticatedClient {
    pub client_id: String,
    /// Its SPIFFE ID when it authenticated with a JWT-SVID.
    pub spiffe_id: Option<String>,
    /// Its canonical URI: actor tokens it relays may carry it as audience.
    pub uri: String,
}

/// How long a consumption waits for the issuance's group commit at most
/// (it normally lands within a millisecond).
const ISSUANCE_WAIT: Duration = Duration::from_millis(200);

/// The security token service. Create with [`Sts::open`].
#[derive(Debug)]
pub struct Sts {
    pub(crate) store: Store,
    pub(crate) keys: Arc<dyn KeyManager>,
    pub(crate) identity: Arc<Identity>,
    pub(crate) events: Arc<dyn EventSink>,
    pub(crate) config: StsConfig,
    pub(crate) rar: RarRegistry,
    pub(crate) policies: Arc<PolicyStore>,
    ring: RwLock<Arc<Vec<Arc<SigningKey>>>>,
    last_refresh: Mutex<Option<Instant>>,
    rotate: tokio::sync::Mutex<()>,
    pub(crate) ip_buckets: Mutex<crate::signin::IpBuckets>,
    pub(crate) dummy_hash: std::sync::OnceLock<String>,
    /// Access-token signatures already verified (a subject token is
    /// presented for every tool call of a session).
    memo: keyless_identity::memo::SignatureMemo,
    /// Session, token and consent facts read for exchanges (`live.rs`).
    pub(crate) live: crate::live::LiveCache,
    /// The W1–W5 ladder's view of sessions and users (`risk.rs`).
    pub(crate) risk_gate: RwLock<Option<Arc<dyn crate::RiskGate>>>,
    /// On-behalf-of tokens spent, when this process owns the store
    /// (SQLite): jti → expiry (Unix s). See [`Sts::consume_token`].
    spent: Option<Mutex<HashMap<String, i64>>>,
    /// Revoked tokens, when this process owns the store (SQLite): jti →
    /// expiry (Unix s). Every revocation goes through this process, so an
    /// OBO token (never tracked in `sts_access_tokens` unless revoked)
    /// is checked here instead of by a query on every consumption.
    pub(crate) revoked: Option<Mutex<HashMap<String, i64>>>,
}

// === impl Sts ===

impl Sts {
    /// Opens the STS with the built-in RAR types and the embedded default
    /// policies; creates its first signing key if the store has none.
    pub async fn open(
        store: Store,
        keys: Arc<dyn KeyManager>,
        identity: Arc<Identity>,
        events: Arc<dyn EventSink>,
        config: StsConfig,
    ) -> Result<Arc<Self>, StsError> {
        let policies = Arc::new(PolicyStore::with_defaults()?);
        Self::open_with(
            store,
            keys,
            identity,
            events,
            config,
            RarRegistry::builtin()?,
            policies,
        )
        .await
    }

    /// Opens the STS with a given RAR registry and policy store (e.g. one
    /// loaded from, and watching, a policy directory).
    pub async fn open_with(
        store: Store,
        keys: Arc<dyn KeyManager>,
        identity: Arc<Identity>,
        events: Arc<dyn EventSink>,
        config: StsConfig,
        rar: RarRegistry,
        policies: Arc<PolicyStore>,
    ) -> Result<Arc<Self>, StsError> {
        config.validate()?;
        // On SQLite this process owns the database; on PostgreSQL facts are
        // cached only while the change listener runs (`live.rs`).
        let cache_alone = store.dialect() == keyless_store::Dialect::Sqlite;
        let sts = Arc::new(Self {
            store,
            keys,
            identity,
            events,
            config,
            rar,
            policies,
            ring: RwLock::new(Arc::new(Vec::new())),
            last_refresh: Mutex::new(None),
            rotate: tokio::sync::Mutex::new(()),
            ip_buckets: Mutex::new(crate::signin::IpBuckets::default()),
            dummy_hash: std::sync::OnceLock::new(),
            memo: keyless_identity::memo::SignatureMemo::default(),
            live: crate::live::LiveCache::new(cache_alone),
            risk_gate: RwLock::new(None),
            spent: cache_alone.then(Mutex::default),
            revoked: cache_alone.then(Mutex::default),
        });
        sts.reload_keys().await?;
        sts.reload_spent().await?;
        if !cache_alone {
            tokio::spawn(crate::live::listen(Arc::downgrade(&sts)));
        }
        let ring = sts.ring();
        match ring.iter().rev().find(|k| k.state == KeyState::Active) {
            None => sts.rotate_signing_key().await?,
            // Replicas must share one key manager: a replica that cannot
            // sign with the active key refuses to start rather than rotate
            // under the others' feet.
            Some(k) if k.signer.is_none() => {
                return Err(StsError::InvalidConfig(format!(
                    "the active sts signing key `{}` is not in this key manager \
                     (replicas sharing a database must share the key manager)",
                    token::key_name(k.generation)
                )));
            }
            Some(_) => {}
        }
        Ok(sts)
    }

    pub fn config(&self) -> &StsConfig {
        &self.config
    }

    pub fn issuer(&self) -> &str {
        &self.config.issuer
    }

    pub fn rar(&self) -> &RarRegistry {
        &self.rar
    }

    pub fn policies(&self) -> &Arc<PolicyStore> {
        &self.policies
    }

    pub fn identity(&self) -> &Arc<Identity> {
        &self.identity
    }

    // --- keys ---

    fn ring(&self) -> Arc<Vec<Arc<SigningKey>>> {
        match self.ring.read() {
            Ok(r) => r.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub(crate) fn active_key(&self) -> Option<Arc<SigningKey>> {
        self.ring()
            .iter()
            .rev()
            .find(|k| k.state == KeyState::Active && k.signer.is_some())
            .cloned()
    }

    /// Re-reads the signing keys from the store (another replica may have
    /// rotated).
    pub async fn reload_keys(&self) -> Result<(), StsError> {
        let rows = db::load_keys(&self.store).await?;
        let mut ring = Vec::with_capacity(rows.len());
        for row in rows {
            let signer = match self.keys.load(&row.key_name).await {
                // A same-named key that is not this row's key (another
                // deployment's key directory) must never sign for this kid.
                Ok(s) if s.public_key() != row.public_key.as_slice() => {
                    tracing::warn!(key = %row.key_name, "sts signing key does not match its stored public key; it only verifies");
                    None
                }
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!(key = %row.key_name, error = %e, "sts signing key not loadable; it only verifies");
                    None
                }
            };
            ring.push(Arc::new(SigningKey {
                generation: row.generation,
                kid: row.kid,
                public_key: row.public_key,
                state: row.state,
                signer,
            }));
        }
        let ring = Arc::new(ring);
        match self.ring.write() {
            Ok(mut r) => *r = ring,
            Err(poisoned) => *poisoned.into_inner() = ring,
        }
        Ok(())
    }

    /// Creates the next signing key generation and makes it the active one;
    /// older keys stay in the JWKS so tokens they signed still verify.
    pub async fn rotate_signing_key(&self) -> Result<(), StsError> {
        let _guard = self.rotate.lock().await;
        self.reload_keys().await?;
        let generation = self.ring().iter().map(|k| k.generation).max().unwrap_or(0) + 1;
        let name = token::key_name(generation);
        let signer = match self.keys.generate(&name, KeyAlgorithm::EcdsaP256).await {
            Ok(s) => s,
            // Left over from a crash between generate and insert, or made
            // by a replica racing us for the same generation: same key.
            Err(StoreError::KeyExists(_)) => self.keys.load(&name).await?,
            Err(e) => return Err(e.into()),
        };
        let public_key = signer.public_key().to_vec();
        let row = KeyRow {
            generation,
            kid: token::thumbprint(&public_key)?,
            key_name: name,
            public_key,
            state: KeyState::Active,
        };
        let inserted = db::insert_active_key(&self.store, &row).await?;
        self.reload_keys().await?;
        if inserted {
            self.events
                .record(
                    Event::new(kinds::STS_KEY_ROTATED, Outcome::Success)
                        .detail("generation", generation)
                        .detail("kid", row.kid.clone()),
                )
                .await?;
        }
        Ok(())
    }

    /// The JWKS (`/oauth2/jwks`): every key, active and retired.
    pub fn jwks(&self) -> Value {
        let keys: Vec<Value> = self.ring().iter().filter_map(|k| k.jwk().ok()).collect();
        json!({ "keys": keys })
    }

    /// Verifies one of our access tokens. `audience`: `Some(aud)` to require
    /// it in `aud`. An unknown `kid` reloads the key ring at most every few
    /// seconds, so a replica's rotation is picked up.
    pub async fn verify_access_token(
        &self,
        token: &str,
        audience: Option<&str>,
    ) -> Result<AccessTokenClaims, StsError> {
        let expect = Expect {
            issuer: &self.config.issuer,
            audience,
            leeway_secs: secs(self.config.leeway),
            now: unix_now(),
        };
        let ring = self.ring();
        if let Some(kid) = token::peek_kid(token)
            && !ring.iter().any(|k| k.kid == kid)
            && self.may_refresh()
        {
            self.reload_keys().await?;
            return token::verify(&self.ring(), &self.memo, token, expect);
        }
        token::verify(&ring, &self.memo, token, expect)
    }

    fn may_refresh(&self) -> bool {
        let Ok(mut last) = self.last_refresh.lock() else {
            return false;
        };
        let now = Instant::now();
        match *last {
            Some(t) if now.duration_since(t) < KEY_REFRESH_INTERVAL => false,
            _ => {
                *last = Some(now);
                true
            }
        }
    }

    /// Signs `claims` with the active key.
    pub(crate) fn sign(&self, claims: &AccessTokenClaims) -> Result<String, StsError> {
        let key = self
            .active_key()
            .ok_or_else(|| StsError::Crypto("no active sts signing key".into()))?;
        let token = key.sign(claims, token::ACCESS_TOKEN_TYP)?;
        // Signed here, so its signature verifies under this key: when it
        // comes back (consumption, introspection, delegation) only the
        // checks that can fail are run again.
        self.memo.insert(
            keyless_identity::memo::TokenDigest::of(&token),
            &key.public_key,
        );
        Ok(token)
    }

    /// Signs an ID token (`typ: JWT`) with the active key.
    pub(crate) fn sign_id_token(&self, claims: &token::IdTokenClaims) -> Result<String, StsError> {
        self.active_key()
            .ok_or_else(|| StsError::Crypto("no active sts signing key".into()))?
            .sign(claims, "JWT")
    }

    // --- user access tokens ---

    /// Mints an RFC 9068 access token for a signed-in user.
    pub async fn mint_access_token(&self, req: &UserTokenRequest) -> Result<IssuedToken, StsError> {
        self.mint_user_token(req, None).await
    }

    /// [`Sts::mint_access_token`], with the `authorization_details` the
    /// user approved at `/oauth2/authorize`.
    pub(crate) async fn mint_user_token(
        &self,
        req: &UserTokenRequest,
        authorization_details: Option<Vec<Value>>,
    ) -> Result<IssuedToken, StsError> {
        if req.subject.is_empty() || req.client_id.is_empty() {
            return Err(StsError::InvalidRequest(
                "subject and client_id are required".into(),
            ));
        }
        let now = unix_now();
        let ttl = secs(self.config.access_token_ttl);
        let audience = if req.audience.is_empty() {
            vec![self.config.issuer.clone()]
        } else {
            req.audience.clone()
        };
        let claims = AccessTokenClaims {
            iss: self.config.issuer.clone(),
            sub: req.subject.clone(),
            aud: StringList(audience),
            client_id: req.client_id.clone(),
            iat: now,
            exp: now.saturating_add(ttl),
            nbf: None,
            jti: random_id()?,
            sid: req.session_id.clone(),
            scope: req.scope.clone(),
            email: req.email.clone(),
            auth_time: Some(req.auth_time.unwrap_or(now)),
            may_act: (!req.may_act.is_empty()).then(|| MayAct {
                sub: StringList(req.may_act.clone()),
            }),
            act: None,
            authorization_details,
            cnf: None,
            gty: None,
        };
        let token = self.sign(&claims)?;
        let mut event = Event::new(kinds::TOKEN_ISSUED, Outcome::Success)
            .user(claims.user_label())
            .detail("client_id", claims.client_id.clone())
            .detail("jti", claims.jti.clone());
        if let Some(sid) = &claims.sid {
            event = event.session(sid.clone());
        }
        event.token_expires_in = Some(ttl);
        self.events.record(event).await?;
        Ok(IssuedToken {
            token,
            claims,
            expires_in: ttl,
        })
    }

    // --- consent ---

    /// Records that `user` lets `agent` (a SPIFFE ID) request `rar_types`
    /// (each registered) and `scopes` on their behalf.
    pub async fn grant_consent(
        &self,
        user: &str,
        agent: &str,
        rar_types: &[String],
        scopes: &[String],
    ) -> Result<Consent, StsError> {
        keyless_identity::SpiffeId::new(agent)
            .map_err(|e| StsError::InvalidRequest(format!("agent `{agent}`: {e}")))?;
        if user.is_empty() {
            return Err(StsError::InvalidRequest("user is required".into()));
        }
        if rar_types.is_empty() && scopes.is_empty() {
            return Err(StsError::InvalidRequest(
                "a consent names at least one rar type or scope".into(),
            ));
        }
        if let Some(unknown) = rar_types.iter().find(|t| self.rar.get(t).is_none()) {
            return Err(StsError::InvalidRequest(format!(
                "unknown authorization_details type `{unknown}`"
            )));
        }
        let consent = Consent {
            id: random_id()?,
            user: user.to_owned(),
            agent: agent.to_owned(),
            rar_types: rar_types.to_vec(),
            scopes: scopes.to_vec(),
            granted_at: now_millis(),
            revoked_at: None,
        };
        db::insert_consent(&self.store, &consent).await?;
        self.changed().await;
        let label = self.consent_user_label(user).await?;
        self.events
            .record(
                Event::new(kinds::CONSENT_GRANTED, Outcome::Success)
                    .user(label)
                    .agent(agent)
                    .detail("user_sub", user)
                    .detail("consent_id", consent.id.clone())
                    .detail("rar_types", rar_types.to_vec())
                    .detail("scopes", scopes.to_vec()),
            )
            .await?;
        Ok(consent)
    }

    /// Consents, of one user or of everyone, including revoked ones.
    pub async fn list_consents(&self, user: Option<&str>) -> Result<Vec<Consent>, StsError> {
        db::list_consents(&self.store, user, false).await
    }

    /// Revokes a consent; the very next exchange relying on it fails.
    pub async fn revoke_consent(&self, id: &str) -> Result<Consent, StsError> {
        let consent = db::revoke_consent(&self.store, id)
            .await?
            .ok_or_else(|| StsError::ConsentNotFound(id.to_owned()))?;
        self.changed().await;
        let label = self.consent_user_label(&consent.user).await?;
        self.events
            .record(
                Event::new(kinds::CONSENT_REVOKED, Outcome::Success)
                    .user(label)
                    .agent(consent.agent.clone())
                    .detail("user_sub", consent.user.clone())
                    .detail("consent_id", consent.id.clone()),
            )
            .await?;
        Ok(consent)
    }

    /// Who a consent's user is for events, like
    /// [`AccessTokenClaims::user_label`]: the email of a local user, else
    /// the subject id itself (the id stays in the `user_sub` detail).
    async fn consent_user_label(&self, user_sub: &str) -> Result<String, StsError> {
        Ok(self
            .user_by_id(user_sub)
            .await?
            .map_or_else(|| user_sub.to_owned(), |u| u.email))
    }

    /// Revokes consent `id` on behalf of `user` (a subject id): only the
    /// user's own consent; someone else's, an unknown or an already revoked
    /// one are all [`StsError::ConsentNotFound`] (nothing tells them apart).
    pub async fn revoke_user_consent(&self, user: &str, id: &str) -> Result<Consent, StsError> {
        match db::get_consent(&self.store, id).await? {
            Some(c) if c.user == user && c.revoked_at.is_none() => self.revoke_consent(id).await,
            _ => Err(StsError::ConsentNotFound(id.to_owned())),
        }
    }

    /// Records that `user` refused to let `agent` act for them (nothing is
    /// stored but the `consent.denied` event).
    pub async fn record_consent_denied(
        &self,
        user: &str,
        agent: &str,
        rar_types: &[String],
        scopes: &[String],
    ) -> Result<(), StsError> {
        self.events
            .record(
                Event::new(kinds::CONSENT_DENIED, Outcome::Denied)
                    .user(user)
                    .agent(agent)
                    .reason("the user denied the consent request")
                    .detail("rar_types", rar_types.to_vec())
                    .detail("scopes", scopes.to_vec()),
            )
            .await?;
        Ok(())
    }

    // --- single use ---

    /// Consumes `jti` (of a token expiring at `expires_at`, Unix seconds)
    /// once; a second call for the same id fails with
    /// [`StsError::AlreadyConsumed`], on any replica sharing the database.
    pub async fn consume(&self, jti: &str, expires_at: i64) -> Result<(), StsError> {
        if jti.is_empty() || jti.len() > 256 {
            return Err(StsError::InvalidRequest("invalid jti".into()));
        }
        if db::consume_jti(&self.store, jti, expires_at).await? {
            Ok(())
        } else {
            Err(StsError::AlreadyConsumed(jti.to_owned()))
        }
    }

    /// Requires the issuance of OBO token `jti` to be committed in the
    /// audit log. The exchange queues that event before answering, so it
    /// normally is; a consumer faster than the group commit waits a few
    /// milliseconds. A token whose issuance never reached the log (the
    /// process died first) is refused for good.
    pub(crate) async fn ensure_issuance_recorded(&self, jti: &str) -> Result<(), StsError> {
        if self
            .events
            .wait_jti(jti, kinds::TOKEN_EXCHANGE_SUCCESS, ISSUANCE_WAIT)
            .await?
        {
            return Ok(());
        }
        Err(StsError::InvalidToken(
            "the token's issuance is not in the audit log".into(),
        ))
    }

    /// Verifies an OBO token presented to the resource server `audience`
    /// (whose SPIFFE ID, when registered, must be `caller`) and consumes it.
    ///
    /// On PostgreSQL the spend is the atomic insert of its `jti` (replicas
    /// race on the primary key), after its issuance is found in the log.
    /// On SQLite this process owns the store: the spend is claimed in memory
    /// (one mutex, exactly one winner), made durable by its own
    /// `token.consumed` event, awaited, and only then is the issuance
    /// checked. The log is one ordered queue and the issuance was queued
    /// before the token left the STS, so once the consumption is committed
    /// the issuance is committed too (or its batch failed, and the check
    /// refuses): one group commit per call instead of a wait for the
    /// issuance's and then a commit of its own. A restart reloads recent
    /// spends from the log (`reload_spent`).
    pub async fn consume_token(
        &self,
        token: &str,
        audience: &str,
        caller: Option<&str>,
    ) -> Result<AccessTokenClaims, StsError> {
        let rs = self.config.resource_server(audience).ok_or_else(|| {
            StsError::InvalidTarget(format!("`{audience}` is not a registered resource server"))
        })?;
        if let Some(expected) = &rs.spiffe_id
            && caller != Some(expected.as_str())
        {
            return Err(StsError::InvalidClient(format!(
                "only `{expected}` may consume tokens for `{audience}`"
            )));
        }
        let claims = self.verify_access_token(token, Some(&rs.audience)).await?;
        if !self.token_live(&claims).await? {
            return Err(StsError::InvalidToken(
                "the token was revoked or its session ended".into(),
            ));
        }
        let Some(act) = &claims.act else {
            return Err(StsError::InvalidRequest("not an on-behalf-of token".into()));
        };
        let owned = self.spent.is_some();
        if !owned {
            self.ensure_issuance_recorded(&claims.jti).await?;
        }
        let result = match &self.spent {
            Some(_) => self.claim_spent(&claims.jti, claims.exp),
            None => self.consume(&claims.jti, claims.exp).await,
        };
        let (kind, outcome) = match &result {
            Ok(()) => (kinds::TOKEN_CONSUMED, Outcome::Success),
            Err(_) => (kinds::TOKEN_REPLAY_DENIED, Outcome::Denied),
        };
        let mut event = Event::new(kind, outcome)
            .user(claims.user_label())
            .agent(act.sub.clone())
            .detail("jti", claims.jti.clone())
            .detail("audience", rs.audience.clone());
        match &result {
            // The spent jti is durable already (the single-use row); the
            // event joins the next group commit without holding the call.
            Ok(()) if !owned => self.events.record_queued(event).await?,
            // The event is the spend's only durable record: awaited. Then
            // the issuance, queued before it, is found committed at once.
            Ok(()) => {
                self.events.record(event).await?;
                self.ensure_issuance_recorded(&claims.jti).await?;
            }
            Err(e) => {
                event = event.reason(e.to_string());
                self.events.record(event).await?;
            }
        }
        result.map(|()| claims)
    }

    /// Claims OBO token `jti` (expiring at `exp`, Unix s) as spent in this
    /// process's set: exactly one caller gets `Ok`.
    fn claim_spent(&self, jti: &str, exp: i64) -> Result<(), StsError> {
        let Some(spent) = &self.spent else {
            return Ok(());
        };
        let mut spent = spent.lock().unwrap_or_else(PoisonError::into_inner);
        match spent.entry(jti.to_owned()) {
            std::collections::hash_map::Entry::Occupied(_) => {
                Err(StsError::AlreadyConsumed(jti.to_owned()))
            }
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(exp);
                Ok(())
            }
        }
    }

    /// Whether OBO token `jti` was spent (at a resource server or by a
    /// delegation).
    pub(crate) async fn is_spent(&self, jti: &str) -> Result<bool, StsError> {
        match &self.spent {
            Some(spent) => Ok(spent
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .contains_key(jti)),
            None => db::is_consumed(&self.store, jti).await,
        }
    }

    /// Spends an OBO token used as the subject of a delegation: claimed in
    /// memory first (SQLite), so it cannot also be spent at a resource
    /// server, then recorded as a single-use row.
    pub(crate) async fn spend_delegated(&self, jti: &str, exp: i64) -> Result<(), StsError> {
        self.claim_spent(jti, exp)?;
        self.consume(jti, exp).await
    }

    /// Loads the OBO tokens spent before a restart that may not have
    /// expired yet (SQLite): the single-use rows, and the `token.consumed`
    /// events of the last [`MAX_OBO_TTL`] (plus a minute of skew); and the
    /// revoked tokens not yet expired.
    async fn reload_spent(&self) -> Result<(), StsError> {
        let Some(spent) = &self.spent else {
            return Ok(());
        };
        let now = unix_now();
        let horizon = secs(crate::config::MAX_OBO_TTL).saturating_add(60);
        let rows = db::unexpired_consumed(&self.store, now.saturating_sub(60)).await?;
        let logged = self
            .events
            .jtis_since(
                kinds::TOKEN_CONSUMED,
                now.saturating_sub(horizon).saturating_mul(1000),
            )
            .await?;
        {
            let mut spent = spent.lock().unwrap_or_else(PoisonError::into_inner);
            spent.extend(rows);
            for jti in logged {
                spent.entry(jti).or_insert(now.saturating_add(horizon));
            }
        }
        if let Some(revoked) = &self.revoked {
            let rows = db::unexpired_revoked(&self.store, now.saturating_sub(60)).await?;
            revoked
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend(rows);
        }
        Ok(())
    }

    /// Drops consumed ids of tokens that expired more than a minute ago.
    pub async fn purge_consumed(&self) -> Result<u64, StsError> {
        let before = unix_now().saturating_sub(60);
        for set in [&self.spent, &self.revoked].into_iter().flatten() {
            set.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .retain(|_, exp| *exp >= before);
        }
        db::purge_consumed(&self.store, before).await
    }

    // --- clients ---

    /// Authenticates a confidential client by its JWT-SVID assertion
    /// (`client_assertion_type=…:jwt-spiffe`, audience the issuer or the
    /// token endpoint). [`Sts::authenticate_client_assertion`] also takes
    /// `private_key_jwt`.
    pub fn authenticate_client(
        &self,
        assertion_type: &str,
        assertion: &str,
    ) -> Result<AuthenticatedClient, StsError> {
        if assertion_type != CLIENT_ASSERTION_TYPE_JWT_SPIFFE {
            return Err(StsError::InvalidClient(format!(
                "unsupported client_assertion_type `{assertion_type}`"
            )));
        }
        let token_endpoint = format!("{}/oauth2/token", self.config.issuer);
        let svid = self
            .identity
            .validate_jwt_svid(assertion, &self.config.issuer)
            .or_else(|_| self.identity.validate_jwt_svid(assertion, &token_endpoint))
            .map_err(|e| StsError::InvalidClient(format!("client assertion: {e}")))?;
        let client = self
            .config
            .clients
            .iter()
            .find(|c| c.spiffe_id == svid.spiffe_id.as_str())
            .ok_or_else(|| {
                StsError::InvalidClient(format!("`{}` is not a registered client", svid.spiffe_id))
            })?;
        Ok(AuthenticatedClient {
            client_id: client.client_id.clone(),
            spiffe_id: Some(client.spiffe_id.clone()),
            uri: client.uri.clone(),
        })
    }
}
