//! Shared fixtures for the STS integration tests: an identity service and
//! an STS on one fresh store (SQLite in a temp dir, or a given URL), a file
//! key manager, an in-memory audit sink, and helpers to mint real JWT-SVIDs
//! for agents and user access tokens that allow them.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use keyless_audit::MemorySink;
use keyless_identity::{Identity, IdentityConfig, NewEntry, TrustDomain};
use keyless_store::{FileKeyManager, KeyManager, Store};
use keyless_sts::{
    GRANT_TYPE_TOKEN_EXCHANGE, Sts, StsConfig, TOKEN_TYPE_ACCESS_TOKEN, TOKEN_TYPE_JWT,
    TokenExchangeRequest, UserTokenRequest,
};
use serde_json::Value;

pub const TD: &str = "example.org";
pub const ISSUER: &str = "http://127.0.0.1:8180";
pub const AGENT: &str = "spiffe://example.org/agent/helper";
pub const OTHER_AGENT: &str = "spiffe://example.org/agent/other";
pub const ALICE: &str = "user-alice";
pub const ALICE_EMAIL: &str = "alice@example.com";

#[derive(Debug)]
pub struct Fixture {
    pub sts: Arc<Sts>,
    pub identity: Arc<Identity>,
    pub events: Arc<MemorySink>,
    pub keys: Arc<FileKeyManager>,
    pub store: Store,
    pub _tmp: Option<tempfile::TempDir>,
}

pub async fn open() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open_sqlite(&tmp.path().join("keyless.db"))
        .await
        .unwrap();
    let mut f = open_with(store, &tmp.path().join("keys"), StsConfig::new(ISSUER)).await;
    f._tmp = Some(tmp);
    f
}

pub async fn open_with(store: Store, keys_dir: &Path, config: StsConfig) -> Fixture {
    open_with_events(store, keys_dir, config, Arc::new(MemorySink::default())).await
}

/// Like [`open_with`], recording into `events` (replicas share one log).
pub async fn open_with_events(
    store: Store,
    keys_dir: &Path,
    mut config: StsConfig,
    events: Arc<MemorySink>,
) -> Fixture {
    // Argon2 at production cost takes seconds in a debug build.
    config.password_hash_cost = keyless_sts::PasswordHashCost {
        memory_kib: 64,
        iterations: 1,
    };
    let keys = Arc::new(FileKeyManager::open(keys_dir).unwrap());
    let identity = Identity::open(
        store.clone(),
        keys.clone(),
        events.clone(),
        IdentityConfig::new(TrustDomain::new(TD).unwrap(), ISSUER.to_owned()),
    )
    .await
    .unwrap();
    let sts = Sts::open(
        store.clone(),
        keys.clone() as Arc<dyn KeyManager>,
        identity.clone(),
        events.clone(),
        config,
    )
    .await
    .unwrap();
    Fixture {
        sts,
        identity,
        events,
        keys,
        store,
        _tmp: None,
    }
}

impl Fixture {
    /// A JWT-SVID for `spiffe_id` with `audience`, from a real entry.
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

    /// Alice's access token (of a live session), allowing `may_act`.
    pub async fn user_token(&self, may_act: &[&str]) -> String {
        self.user_token_with_sid(may_act).await.0
    }

    /// Alice's access token and its session id.
    pub async fn user_token_with_sid(&self, may_act: &[&str]) -> (String, String) {
        let sid = self.sts.start_session(ALICE).await.unwrap().session.sid;
        let token = self
            .sts
            .mint_access_token(&UserTokenRequest {
                subject: ALICE.into(),
                email: Some(ALICE_EMAIL.into()),
                client_id: "keyless-console".into(),
                session_id: Some(sid.clone()),
                scope: Some("openid tools".into()),
                audience: vec![],
                may_act: may_act.iter().map(|s| (*s).to_owned()).collect(),
                auth_time: None,
            })
            .await
            .unwrap()
            .token;
        (token, sid)
    }

    pub async fn consent(&self, agent: &str, types: &[&str]) -> keyless_sts::Consent {
        self.sts
            .grant_consent(
                ALICE,
                agent,
                &types.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>(),
                &["tools".to_owned()],
            )
            .await
            .unwrap()
    }

    pub fn event_kinds(&self) -> Vec<String> {
        self.events.events().into_iter().map(|e| e.kind).collect()
    }
}

/// A token-exchange request of `subject` by `actor` for `audience`.
pub fn exchange_request(
    subject: &str,
    actor: &str,
    audience: &str,
    details: &Value,
) -> TokenExchangeRequest {
    TokenExchangeRequest {
        grant_type: GRANT_TYPE_TOKEN_EXCHANGE.into(),
        subject_token: Some(subject.into()),
        subject_token_type: Some(TOKEN_TYPE_ACCESS_TOKEN.into()),
        actor_token: Some(actor.into()),
        actor_token_type: Some(TOKEN_TYPE_JWT.into()),
        resource: vec![],
        audience: vec![audience.into()],
        scope: None,
        requested_token_type: None,
        authorization_details: Some(details.to_string()),
    }
}

/// The decoded JSON of part `i` (0 header, 1 claims) of a compact JWS.
pub fn jws_part(token: &str, i: usize) -> Value {
    let part = token.split('.').nth(i).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

pub fn b64(v: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(v)
}
