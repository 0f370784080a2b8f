//! RFC 8693 token exchange end to end on the domain API: real JWT-SVIDs for
//! actors, real user access tokens, consent, RAR, Cedar and single use.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::sync::Arc;

use common::*;
use keyless_audit::Outcome;
use keyless_store::KeyManager;
use keyless_sts::{
    AuthenticatedClient, ExchangeContext, StsConfig, StsError, TOKEN_TYPE_JWT,
    TokenExchangeRequest, TokenExchangeResponse,
};
use serde_json::{Value, json};

fn read_users() -> Value {
    json!([{"type": "directory_read", "actions": ["read"], "datatypes": ["users"], "limit": 50}])
}

fn transfer(amount: f64) -> Value {
    json!([{"type": "transfer_funds", "amount": amount, "currency": "USD", "destination": "ACC-2"}])
}

async fn exchange(
    f: &Fixture,
    req: &TokenExchangeRequest,
) -> Result<TokenExchangeResponse, StsError> {
    f.sts.exchange(req, None, &ExchangeContext::default()).await
}

/// Runs `req`, expects the OAuth error `code` with a description containing
/// `contains`, and checks that nothing was issued and a denial was recorded.
async fn check_refused(f: &Fixture, req: &TokenExchangeRequest, code: &str, contains: &str) {
    let successes = |f: &Fixture| {
        f.event_kinds()
            .iter()
            .filter(|k| *k == "token_exchange.success")
            .count()
    };
    let before = successes(f);
    match exchange(f, req).await {
        Ok(r) => panic!("expected {code}, got a token for {:?}", r.claims.act),
        Err(e) => {
            assert_eq!(e.oauth_code(), code, "{e}");
            assert!(
                e.to_string().contains(contains),
                "`{e}` does not mention `{contains}`"
            );
        }
    }
    assert_eq!(successes(f), before, "nothing may be issued");
    let last = f.events.events().pop().unwrap();
    assert_eq!(last.kind, "token_exchange.denied");
    assert_eq!(last.outcome, Outcome::Denied);
    assert!(last.reason.is_some());
}

/// Alice allows AGENT and consents to directory reads and transfers.
async fn ready() -> (Fixture, String, String) {
    let f = open().await;
    f.consent(
        AGENT,
        &["directory_read", "transfer_funds", "directory_admin"],
    )
    .await;
    let user = f.user_token(&[AGENT]).await;
    let actor = f.svid(AGENT, ISSUER).await;
    (f, user, actor)
}

#[tokio::test]
async fn exchange_issues_an_obo_token_for_exactly_the_granted_call() {
    let (f, user, actor) = ready().await;
    let resp = exchange(
        &f,
        &exchange_request(&user, &actor, "directory", &read_users()),
    )
    .await
    .unwrap();

    assert_eq!(
        resp.issued_token_type,
        "urn:ietf:params:oauth:token-type:access_token"
    );
    assert_eq!(resp.token_type, "Bearer");
    assert_eq!(resp.expires_in, 60, "tier 1 lifetime");
    assert_eq!(
        Value::from(resp.authorization_details.clone()),
        read_users()
    );
    let header = jws_part(&resp.access_token, 0);
    assert_eq!(header["typ"], "at+jwt");
    let claims = jws_part(&resp.access_token, 1);
    assert_eq!(claims["sub"], ALICE);
    assert_eq!(claims["act"], json!({"sub": AGENT}));
    assert_eq!(claims["aud"], "directory");
    assert_eq!(claims["client_id"], AGENT);
    assert_eq!(claims["authorization_details"], read_users());
    assert_eq!(claims["sid"], jws_part(&user, 1)["sid"]);
    assert!(claims["jti"].as_str().unwrap().len() >= 16);
    assert!(claims.get("refresh_token").is_none());
    // The resource server verifies it for its own audience only.
    f.sts
        .verify_access_token(&resp.access_token, Some("directory"))
        .await
        .unwrap();
    assert!(
        f.sts
            .verify_access_token(&resp.access_token, Some("bank"))
            .await
            .is_err()
    );

    let event = f.events.events().pop().unwrap();
    assert_eq!(event.kind, "token_exchange.success");
    assert_eq!(event.user.as_deref(), Some(ALICE_EMAIL));
    assert_eq!(event.agent.as_deref(), Some(AGENT));
    assert_eq!(event.session.as_deref(), jws_part(&user, 1)["sid"].as_str());
    assert_eq!(event.tier, Some(1));
    assert_eq!(event.rar_type.as_deref(), Some("directory_read"));
    assert_eq!(event.rar_summary.as_deref(), Some("Read users, limit=50"));
    assert_eq!(event.token_expires_in, Some(60));
    assert_eq!(event.detail["policies"], json!(["tier-1-read"]));

    // Tier 3 gets the shortest lifetime; the resource= form works too.
    let mut req = exchange_request(&user, &actor, "bank", &transfer(250.0));
    req.audience.clear();
    req.resource.push("bank".into());
    let resp = exchange(&f, &req).await.unwrap();
    assert_eq!(resp.expires_in, 5);
    assert_eq!(
        f.events.events().pop().unwrap().rar_summary.as_deref(),
        Some("Transfer 250 USD to ACC-2")
    );
}

#[tokio::test]
async fn malformed_requests_are_refused() {
    let (f, user, actor) = ready().await;
    let base = exchange_request(&user, &actor, "directory", &read_users());

    let mut r = base.clone();
    r.actor_token_type = None;
    check_refused(&f, &r, "invalid_request", "actor_token_type is required").await;
    let mut r = base.clone();
    r.actor_token = None;
    check_refused(&f, &r, "invalid_request", "without actor_token").await;
    let mut r = base.clone();
    r.actor_token = None;
    r.actor_token_type = None;
    check_refused(&f, &r, "invalid_request", "actor_token is required").await;
    let mut r = base.clone();
    r.actor_token_type = Some("urn:ietf:params:oauth:token-type:saml2".into());
    check_refused(&f, &r, "invalid_request", "unsupported actor_token_type").await;
    let mut r = base.clone();
    r.subject_token_type = None;
    check_refused(&f, &r, "invalid_request", "subject_token_type is required").await;
    let mut r = base.clone();
    r.requested_token_type = Some("urn:ietf:params:oauth:token-type:refresh_token".into());
    check_refused(&f, &r, "invalid_request", "requested_token_type").await;
    let mut r = base.clone();
    r.authorization_details = None;
    check_refused(
        &f,
        &r,
        "invalid_request",
        "authorization_details is required",
    )
    .await;
    let mut r = base.clone();
    r.scope = Some("admin".into());
    check_refused(&f, &r, "invalid_scope", "`admin`").await;
    let mut r = base.clone();
    r.grant_type = "client_credentials".into();
    check_refused(&f, &r, "unsupported_grant_type", "client_credentials").await;
}

#[tokio::test]
async fn subject_and_actor_tokens_are_checked() {
    let (f, user, actor) = ready().await;
    // A JWT-SVID is not a subject token.
    let svid = f.svid(AGENT, ISSUER).await;
    check_refused(
        &f,
        &exchange_request(&svid, &actor, "directory", &read_users()),
        "invalid_request",
        "subject_token is not valid",
    )
    .await;
    // A user token for another audience is not for the STS.
    let elsewhere = f
        .sts
        .mint_access_token(&keyless_sts::UserTokenRequest {
            subject: ALICE.into(),
            email: None,
            client_id: "c".into(),
            session_id: None,
            scope: None,
            audience: vec!["directory".into()],
            may_act: vec![AGENT.into()],
            auth_time: None,
        })
        .await
        .unwrap()
        .token;
    check_refused(
        &f,
        &exchange_request(&elsewhere, &actor, "directory", &read_users()),
        "invalid_request",
        "not an access token for this sts",
    )
    .await;
    // An actor token for another audience.
    let wrong_aud = f.svid(AGENT, "http://127.0.0.1:8180/mcp").await;
    check_refused(
        &f,
        &exchange_request(&user, &wrong_aud, "directory", &read_users()),
        "invalid_request",
        "actor_token is not valid",
    )
    .await;
    // An actor the user did not name in may_act.
    f.consent(OTHER_AGENT, &["directory_read"]).await;
    let other = f.svid(OTHER_AGENT, ISSUER).await;
    check_refused(
        &f,
        &exchange_request(&user, &other, "directory", &read_users()),
        "invalid_request",
        "not in may_act",
    )
    .await;
    // A user token with no may_act at all.
    let no_may_act = f.user_token(&[]).await;
    check_refused(
        &f,
        &exchange_request(&no_may_act, &actor, "directory", &read_users()),
        "invalid_request",
        "not in may_act",
    )
    .await;
}

#[tokio::test]
async fn a_gateway_client_may_relay_an_actor_token_for_its_own_uri() {
    let mut config = StsConfig::new(ISSUER);
    config.clients.push(keyless_sts::ClientRegistration {
        client_id: "gateway".into(),
        spiffe_id: "spiffe://example.org/gateway".into(),
        uri: "http://127.0.0.1:8180/mcp".into(),
    });
    let tmp = tempfile::tempdir().unwrap();
    let store = keyless_store::Store::open_sqlite(&tmp.path().join("k.db"))
        .await
        .unwrap();
    let f = open_with(store, &tmp.path().join("keys"), config).await;
    f.consent(AGENT, &["directory_read"]).await;
    let user = f.user_token(&[AGENT]).await;
    let relayed = f.svid(AGENT, "http://127.0.0.1:8180/mcp").await;
    let assertion = f.svid("spiffe://example.org/gateway", ISSUER).await;
    let client: AuthenticatedClient = f
        .sts
        .authenticate_client(keyless_sts::CLIENT_ASSERTION_TYPE_JWT_SPIFFE, &assertion)
        .unwrap();
    assert_eq!(client.client_id, "gateway");
    let req = exchange_request(&user, &relayed, "directory", &read_users());
    let resp = f
        .sts
        .exchange(&req, Some(&client), &ExchangeContext::default())
        .await
        .unwrap();
    assert_eq!(resp.claims.client_id, "gateway");
    // Without the client, that actor token's audience is not acceptable.
    check_refused(&f, &req, "invalid_request", "actor_token is not valid").await;
    // An unregistered workload cannot authenticate as a client.
    let stranger = f.svid("spiffe://example.org/stranger", ISSUER).await;
    assert!(matches!(
        f.sts
            .authenticate_client(keyless_sts::CLIENT_ASSERTION_TYPE_JWT_SPIFFE, &stranger),
        Err(StsError::InvalidClient(_))
    ));
    assert!(
        f.sts
            .authenticate_client(
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                &assertion
            )
            .is_err()
    );
}

#[tokio::test]
async fn targets_and_details_are_checked() {
    let (f, user, actor) = ready().await;
    check_refused(
        &f,
        &exchange_request(&user, &actor, "payroll", &read_users()),
        "invalid_target",
        "`payroll` is not a registered resource server",
    )
    .await;
    let mut r = exchange_request(&user, &actor, "directory", &read_users());
    r.audience.clear();
    check_refused(&f, &r, "invalid_target", "required").await;
    let mut r = exchange_request(&user, &actor, "directory", &read_users());
    r.resource.push("bank".into());
    check_refused(&f, &r, "invalid_target", "exactly one").await;
    check_refused(
        &f,
        &exchange_request(
            &user,
            &actor,
            "directory",
            &json!([{"type": "launch_missiles"}]),
        ),
        "invalid_authorization_details",
        "unknown type `launch_missiles`",
    )
    .await;
    check_refused(&f, &exchange_request(&user, &actor, "bank", &json!([{"type": "transfer_funds", "amount": -1, "currency": "USD", "destination": "A"}])), "invalid_authorization_details", "/amount").await;
}

/// Consents are cached between changes. Exchanges racing a revocation on
/// other threads: every exchange that starts after the revocation returned
/// is refused, round after round (a stale cached consent would let one
/// through).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_exchange_started_after_a_consent_revocation_passes_while_others_race_it() {
    let f = Arc::new(open().await);
    let user = f.user_token(&[AGENT]).await;
    let actor = f.svid(AGENT, ISSUER).await;
    let req = Arc::new(exchange_request(&user, &actor, "directory", &read_users()));
    for round in 0..15 {
        let consent = f.consent(AGENT, &["directory_read"]).await;
        exchange(&f, &req).await.unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut racers = Vec::new();
        for _ in 0..3 {
            let (f, req, stop) = (f.clone(), req.clone(), stop.clone());
            racers.push(tokio::spawn(async move {
                let mut seen = Vec::new();
                // Bounded, and yielding: a cached exchange may never wait.
                while !stop.load(std::sync::atomic::Ordering::Acquire) && seen.len() < 5_000 {
                    let started = std::time::Instant::now();
                    let ok = exchange(&f, &req).await.is_ok();
                    seen.push((started, ok));
                    tokio::task::yield_now().await;
                }
                seen
            }));
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        f.sts.revoke_consent(&consent.id).await.unwrap();
        let revoked = std::time::Instant::now();
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        stop.store(true, std::sync::atomic::Ordering::Release);
        let mut after = 0;
        for r in racers {
            for (started, ok) in r.await.unwrap() {
                if started > revoked {
                    after += 1;
                    assert!(
                        !ok,
                        "round {round}: an exchange started after the revocation passed"
                    );
                }
            }
        }
        assert!(after > 0, "round {round}: no exchange raced the revocation");
    }
}

#[tokio::test]
async fn consent_is_required_and_revocation_bites_on_the_next_exchange() {
    let f = open().await;
    let user = f.user_token(&[AGENT]).await;
    let actor = f.svid(AGENT, ISSUER).await;
    let req = exchange_request(&user, &actor, "directory", &read_users());
    check_refused(&f, &req, "access_denied", "no live consent").await;

    // Consent for another type does not cover this one.
    f.consent(AGENT, &["transfer_funds"]).await;
    check_refused(&f, &req, "access_denied", "`directory_read`").await;

    let consent = f.consent(AGENT, &["directory_read"]).await;
    exchange(&f, &req).await.unwrap();
    assert_eq!(f.sts.list_consents(Some(ALICE)).await.unwrap().len(), 2);

    f.sts.revoke_consent(&consent.id).await.unwrap();
    check_refused(&f, &req, "access_denied", "no live consent").await;
    let listed = f.sts.list_consents(Some(ALICE)).await.unwrap();
    assert!(
        listed
            .iter()
            .find(|c| c.id == consent.id)
            .unwrap()
            .revoked_at
            .is_some()
    );
    assert!(matches!(
        f.sts.revoke_consent(&consent.id).await,
        Err(StsError::ConsentNotFound(_))
    ));
    assert!(f.event_kinds().contains(&"consent.revoked".to_owned()));
    // Consent for unknown types or bad agent ids is refused.
    assert!(
        f.sts
            .grant_consent(ALICE, AGENT, &["nope".into()], &[])
            .await
            .is_err()
    );
    assert!(
        f.sts
            .grant_consent(ALICE, "not-a-spiffe-id", &["tool_call".into()], &[])
            .await
            .is_err()
    );
}

#[tokio::test]
async fn policy_denials_name_the_policy_and_its_reason() {
    let (f, user, actor) = ready().await;
    let delete =
        json!([{"type": "directory_admin", "actions": ["delete_user"], "identifier": "u-1"}]);
    check_refused(
        &f,
        &exchange_request(&user, &actor, "directory", &delete),
        "access_denied",
        "forbid-delete-user: deleting users is never delegated",
    )
    .await;
    let event = f.events.events().pop().unwrap();
    assert_eq!(event.tier, Some(4));
    assert_eq!(event.rar_summary.as_deref(), Some("Delete user u-1"));
    assert!(event.reason.unwrap().contains("tier-4-blocked"));

    check_refused(
        &f,
        &exchange_request(&user, &actor, "bank", &transfer(5000.0)),
        "access_denied",
        "transfer-limit",
    )
    .await;
    // With step-up the same transfer passes.
    let ctx = ExchangeContext {
        step_up: true,
        ..ExchangeContext::default()
    };
    f.sts
        .exchange(
            &exchange_request(&user, &actor, "bank", &transfer(5000.0)),
            None,
            &ctx,
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn delegation_nests_act_only_narrows_and_spends_the_subject() {
    let f = open().await;
    f.consent(AGENT, &["transfer_funds"]).await;
    f.consent(OTHER_AGENT, &["transfer_funds"]).await;
    let user = f.user_token(&[AGENT, OTHER_AGENT]).await;
    let first = exchange(
        &f,
        &exchange_request(
            &user,
            &f.svid(AGENT, ISSUER).await,
            "bank",
            &transfer(250.0),
        ),
    )
    .await
    .unwrap();
    let other = f.svid(OTHER_AGENT, ISSUER).await;

    // Widening is refused: a bigger amount, another type, another audience.
    check_refused(
        &f,
        &exchange_request(&first.access_token, &other, "bank", &transfer(251.0)),
        "invalid_authorization_details",
        "cannot widen",
    )
    .await;
    check_refused(
        &f,
        &exchange_request(&first.access_token, &other, "bank", &read_users()),
        "invalid_authorization_details",
        "cannot widen",
    )
    .await;
    check_refused(
        &f,
        &exchange_request(&first.access_token, &other, "directory", &transfer(100.0)),
        "invalid_target",
        "cannot widen the audience",
    )
    .await;
    // The actor checks still apply to an OBO subject: an agent the user did
    // not allow cannot be handed the token.
    f.consent("spiffe://example.org/agent/third", &["transfer_funds"])
        .await;
    let third = f.svid("spiffe://example.org/agent/third", ISSUER).await;
    check_refused(
        &f,
        &exchange_request(&first.access_token, &third, "bank", &transfer(100.0)),
        "invalid_request",
        "not in may_act",
    )
    .await;

    // Narrowing works and records the chain, current actor outermost.
    let second = exchange(
        &f,
        &exchange_request(&first.access_token, &other, "bank", &transfer(100.0)),
    )
    .await
    .unwrap();
    assert_eq!(
        jws_part(&second.access_token, 1)["act"],
        json!({"sub": OTHER_AGENT, "act": {"sub": AGENT}})
    );
    assert!(second.claims.exp <= first.claims.exp);

    // The subject OBO is spent: neither delegable again nor usable.
    check_refused(
        &f,
        &exchange_request(&first.access_token, &other, "bank", &transfer(100.0)),
        "invalid_request",
        "already used",
    )
    .await;
    assert!(matches!(
        f.sts.consume_token(&first.access_token, "bank", None).await,
        Err(StsError::AlreadyConsumed(_))
    ));
}

#[tokio::test]
async fn a_consumed_obo_token_is_refused_everywhere() {
    let (f, user, actor) = ready().await;
    let resp = exchange(
        &f,
        &exchange_request(&user, &actor, "bank", &transfer(10.0)),
    )
    .await
    .unwrap();
    let claims = f
        .sts
        .consume_token(&resp.access_token, "bank", None)
        .await
        .unwrap();
    assert_eq!(claims.act.unwrap().sub, AGENT);
    assert!(matches!(
        f.sts.consume_token(&resp.access_token, "bank", None).await,
        Err(StsError::AlreadyConsumed(_))
    ));
    assert_eq!(f.events.events().pop().unwrap().kind, "token.replay_denied");
    // Presented again as a subject token for a delegation.
    f.consent(OTHER_AGENT, &["transfer_funds"]).await;
    let other = f.svid(OTHER_AGENT, ISSUER).await;
    check_refused(
        &f,
        &exchange_request(&resp.access_token, &other, "bank", &transfer(10.0)),
        "invalid_request",
        "already used",
    )
    .await;
    // A resource server cannot consume a token issued for another one, and a
    // user token is not single use.
    let resp = exchange(
        &f,
        &exchange_request(&user, &actor, "bank", &transfer(10.0)),
    )
    .await
    .unwrap();
    assert!(
        f.sts
            .consume_token(&resp.access_token, "directory", None)
            .await
            .is_err()
    );
    assert!(f.sts.consume_token(&user, "bank", None).await.is_err());
}

#[tokio::test]
async fn only_the_registered_resource_server_may_consume() {
    let mut config = StsConfig::new(ISSUER);
    config.resource_servers[1].spiffe_id = Some("spiffe://example.org/demo/bank".into());
    let tmp = tempfile::tempdir().unwrap();
    let store = keyless_store::Store::open_sqlite(&tmp.path().join("k.db"))
        .await
        .unwrap();
    let f = open_with(store, &tmp.path().join("keys"), config).await;
    f.consent(AGENT, &["transfer_funds"]).await;
    let user = f.user_token(&[AGENT]).await;
    let resp = exchange(
        &f,
        &exchange_request(&user, &f.svid(AGENT, ISSUER).await, "bank", &transfer(1.0)),
    )
    .await
    .unwrap();
    assert!(matches!(
        f.sts
            .consume_token(
                &resp.access_token,
                "bank",
                Some("spiffe://example.org/agent/helper")
            )
            .await,
        Err(StsError::InvalidClient(_))
    ));
    f.sts
        .consume_token(
            &resp.access_token,
            "bank",
            Some("spiffe://example.org/demo/bank"),
        )
        .await
        .unwrap();
}

/// Many concurrent consumers of one jti, on two STS instances sharing one
/// database: exactly one wins.
async fn consume_race(a: Arc<keyless_sts::Sts>, b: Arc<keyless_sts::Sts>) {
    let mut tasks = Vec::new();
    for i in 0..16 {
        let sts = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            sts.consume("race-jti", 4_000_000_000).await
        }));
    }
    let mut wins = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(()) => wins += 1,
            Err(StsError::AlreadyConsumed(j)) => assert_eq!(j, "race-jti"),
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(wins, 1);
    assert!(matches!(
        a.consume("race-jti", 0).await,
        Err(StsError::AlreadyConsumed(_))
    ));
    a.consume("other-jti", 1).await.unwrap();
    // Purge drops only ids whose tokens are long expired.
    assert_eq!(a.purge_consumed().await.unwrap(), 1);
    assert!(b.consume("race-jti", 0).await.is_err());
}

#[tokio::test]
async fn consume_is_atomic_on_sqlite() {
    let tmp = tempfile::tempdir().unwrap();
    let store = keyless_store::Store::open_sqlite(&tmp.path().join("k.db"))
        .await
        .unwrap();
    let a = open_with(
        store.clone(),
        &tmp.path().join("keys"),
        StsConfig::new(ISSUER),
    )
    .await;
    let b = open_with(store, &tmp.path().join("keys"), StsConfig::new(ISSUER)).await;
    consume_race(a.sts, b.sts).await;
}

#[tokio::test]
async fn consume_is_atomic_across_processes_sharing_postgres() {
    let Some(url) = keyless_store::testing::fresh_postgres_database("sts_consume").await else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    // Two pools on one database stand for two replicas (one audit log).
    let events = Arc::new(keyless_audit::MemorySink::default());
    let a = open_with_events(
        keyless_store::Store::open(&url).await.unwrap(),
        &tmp.path().join("keys"),
        StsConfig::new(ISSUER),
        events.clone(),
    )
    .await;
    let b = open_with_events(
        keyless_store::Store::open(&url).await.unwrap(),
        &tmp.path().join("keys"),
        StsConfig::new(ISSUER),
        events.clone(),
    )
    .await;
    assert_eq!(a.sts.jwks(), b.sts.jwks());
    consume_race(a.sts.clone(), b.sts.clone()).await;

    // And the whole exchange works there too.
    a.consent(AGENT, &["directory_read"]).await;
    let user = a.user_token(&[AGENT]).await;
    let actor = a.svid(AGENT, ISSUER).await;
    let resp = exchange(
        &b,
        &exchange_request(&user, &actor, "directory", &read_users()),
    )
    .await
    .unwrap();
    a.sts
        .consume_token(&resp.access_token, "directory", None)
        .await
        .unwrap();
    assert!(
        b.sts
            .consume_token(&resp.access_token, "directory", None)
            .await
            .is_err()
    );
}

#[tokio::test]
async fn the_actor_token_type_must_be_jwt_and_requested_types_are_honoured() {
    let (f, user, actor) = ready().await;
    let mut r = exchange_request(&user, &actor, "directory", &read_users());
    r.requested_token_type = Some(TOKEN_TYPE_JWT.into());
    r.scope = Some("tools".into());
    let resp = exchange(&f, &r).await.unwrap();
    assert_eq!(resp.scope.as_deref(), Some("tools"));
}

#[tokio::test]
async fn exchange_is_refused_once_the_session_is_signed_out() {
    let f = open().await;
    f.consent(AGENT, &["directory_read"]).await;
    let (user, sid) = f.user_token_with_sid(&[AGENT]).await;
    let actor = f.svid(AGENT, ISSUER).await;
    let req = exchange_request(&user, &actor, "directory", &read_users());
    exchange(&f, &req).await.unwrap();
    assert!(f.sts.logout(&sid).await.unwrap());
    let err = exchange(&f, &req).await.unwrap_err();
    assert_eq!(err.oauth_code(), "invalid_request");
    assert!(err.to_string().contains("no longer active"), "{err}");
}

#[tokio::test]
async fn exchange_is_refused_after_all_user_sessions_are_revoked() {
    let f = open().await;
    f.consent(AGENT, &["directory_read"]).await;
    let user = f.user_token(&[AGENT]).await;
    let actor = f.svid(AGENT, ISSUER).await;
    let req = exchange_request(&user, &actor, "directory", &read_users());
    assert_eq!(f.sts.revoke_user_sessions(ALICE, "caep").await.unwrap(), 1);
    assert!(exchange(&f, &req).await.is_err());
}

/// Replicas cache session, token and consent facts between changes; a
/// revocation on one replica must reach the others (LISTEN/NOTIFY) so that
/// their next exchanges fail too.
#[tokio::test]
async fn revocations_on_one_replica_bite_on_the_others_sharing_postgres() {
    let Some(url) = keyless_store::testing::fresh_postgres_database("sts_live").await else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let a = open_with(
        keyless_store::Store::open(&url).await.unwrap(),
        &tmp.path().join("keys"),
        StsConfig::new(ISSUER),
    )
    .await;
    let b = open_with(
        keyless_store::Store::open(&url).await.unwrap(),
        &tmp.path().join("keys"),
        StsConfig::new(ISSUER),
    )
    .await;
    let consent = a.consent(AGENT, &["directory_read"]).await;
    let (user, sid) = a.user_token_with_sid(&[AGENT]).await;
    let actor = a.svid(AGENT, ISSUER).await;
    let req = exchange_request(&user, &actor, "directory", &read_users());
    // Warm B's cache (twice: the second one is served from memory once
    // its listener is up).
    exchange(&b, &req).await.unwrap();
    exchange(&b, &req).await.unwrap();

    // Consent revoked on A: B refuses within the notification latency.
    a.sts.revoke_consent(&consent.id).await.unwrap();
    let mut refused = None;
    for _ in 0..100 {
        match exchange(&b, &req).await {
            Ok(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let err = refused.expect("replica B kept issuing after the consent was revoked on A");
    assert!(err.to_string().contains("no live consent"), "{err}");

    // Consent again (on A), B issues again; then the session dies on A.
    a.consent(AGENT, &["directory_read"]).await;
    let mut ok = false;
    for _ in 0..100 {
        if exchange(&b, &req).await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(ok, "replica B never saw the new consent");
    assert!(a.sts.logout(&sid).await.unwrap());
    let mut refused = None;
    for _ in 0..100 {
        match exchange(&b, &req).await {
            Ok(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let err = refused.expect("replica B kept issuing after the session ended on A");
    assert!(err.to_string().contains("no longer active"), "{err}");
}

/// A validly signed OBO token that the STS never recorded issuing (a lost
/// audit batch, a stolen signing key) is never honoured.
#[tokio::test]
async fn an_obo_token_whose_issuance_is_not_in_the_audit_log_is_not_honoured() {
    let (f, user, actor) = ready().await;
    let resp = exchange(
        &f,
        &exchange_request(&user, &actor, "bank", &transfer(10.0)),
    )
    .await
    .unwrap();
    // Same header, same claims but the jti, signed with the STS's own key.
    let header = jws_part(&resp.access_token, 0);
    let mut claims = jws_part(&resp.access_token, 1);
    claims["jti"] = json!("never-issued-jti");
    let jwks = f.sts.jwks();
    let kid = header["kid"].as_str().unwrap();
    let jwk = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid)
        .unwrap()
        .clone();
    let mut signer = None;
    for name in f.keys.list().await.unwrap() {
        if let Ok(s) = f.keys.load(&name).await {
            let pk = s.public_key();
            if pk.len() == 65 && b64(&pk[1..33]) == jwk["x"].as_str().unwrap() {
                signer = Some(s);
            }
        }
    }
    let signer = signer.unwrap();
    let input = format!(
        "{}.{}",
        b64(&serde_json::to_vec(&header).unwrap()),
        b64(&serde_json::to_vec(&claims).unwrap())
    );
    let forged = format!("{input}.{}", b64(&signer.sign(input.as_bytes()).unwrap()));
    // The signature is good: it verifies as our token...
    f.sts
        .verify_access_token(&forged, Some("bank"))
        .await
        .unwrap();
    // ...but no consumer may honour it.
    let err = f
        .sts
        .consume_token(&forged, "bank", None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not in the audit log"), "{err}");
    // The recorded one is honoured.
    f.sts
        .consume_token(&resp.access_token, "bank", None)
        .await
        .unwrap();
}
