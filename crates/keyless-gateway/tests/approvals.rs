//! Human approvals: tiers, session grants, single use, binding, deny,
//! timeout, who may decide; and the console's HTTP API over a real STS.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use keyless_audit::{MemorySink, Outcome};
use keyless_gateway::approvals::{ApprovalError, ApprovalRequest, Approvals, Gate};
use keyless_identity::{Identity, IdentityConfig, NewEntry, TrustDomain};
use keyless_store::{FileKeyManager, KeyManager, Store};
use keyless_sts::{
    ExchangeContext, GRANT_TYPE_TOKEN_EXCHANGE, Sts, StsConfig, TOKEN_TYPE_ACCESS_TOKEN,
    TOKEN_TYPE_JWT, TokenExchangeRequest, UserTokenRequest,
};
use serde_json::{Value, json};
use tower::ServiceExt;

const ALICE: &str = "user-alice";
const ALICE_EMAIL: &str = "alice@example.com";
const BOB: &str = "user-bob";
const AGENT: &str = "spiffe://example.org/agent/helper";
const TD: &str = "example.org";
const ISSUER: &str = "http://127.0.0.1:8180";

fn args_text(args: &Value) -> String {
    args.to_string()
}

fn args_hash(args: &Value) -> String {
    hex::encode(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        args.to_string().as_bytes(),
    ))
}

fn request(user: &str, session: &str, tool: &str, tier: u8, args: &Value) -> ApprovalRequest {
    ApprovalRequest {
        user_sub: user.into(),
        user_email: (user == ALICE).then(|| ALICE_EMAIL.to_owned()),
        session_id: session.into(),
        agent: AGENT.into(),
        tool: tool.into(),
        tier,
        args_sha256: args_hash(args),
        arguments: Some(args_text(args)),
        summary: format!("Call {tool}"),
        correlation_id: Some("corr-1".into()),
    }
}

struct Fixture {
    approvals: Arc<Approvals>,
    events: Arc<MemorySink>,
    store: Store,
    _tmp: tempfile::TempDir,
}

async fn open(timeout: Duration) -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open_sqlite(&tmp.path().join("keyless.db"))
        .await
        .unwrap();
    let events = Arc::new(MemorySink::default());
    let approvals = Arc::new(Approvals::new(
        store.clone(),
        events.clone(),
        timeout,
        Duration::from_secs(30 * 60),
    ));
    Fixture {
        approvals,
        events,
        store,
        _tmp: tmp,
    }
}

fn pending_id(gate: Gate) -> String {
    match gate {
        Gate::Pending { approval_id } => approval_id,
        other => panic!("expected Pending, got {other:?}"),
    }
}

async fn status(f: &Fixture, id: &str) -> String {
    f.approvals.get(id).await.unwrap().unwrap().status
}

#[tokio::test]
async fn tier1_needs_no_approval() {
    let f = open(Duration::from_secs(120)).await;
    let gate = f
        .approvals
        .check(&request(ALICE, "s1", "dir.read", 1, &json!({})))
        .await
        .unwrap();
    assert_eq!(gate, Gate::NotNeeded);
    assert!(f.events.events().is_empty());
    assert!(f.approvals.pending(ALICE).await.unwrap().is_empty());
}

#[tokio::test]
async fn tier2_first_write_waits_then_the_session_is_covered() {
    let f = open(Duration::from_secs(120)).await;
    let req = request(ALICE, "s1", "files.write", 2, &json!({"path": "a"}));
    let id = pending_id(f.approvals.check(&req).await.unwrap());

    let event = f.events.events().pop().unwrap();
    assert_eq!(event.kind, "approval.required");
    assert_eq!(event.outcome, Outcome::Pending);
    assert_eq!(event.user.as_deref(), Some(ALICE_EMAIL));
    assert_eq!(event.agent.as_deref(), Some(AGENT));
    assert_eq!(event.session.as_deref(), Some("s1"));
    assert_eq!(event.tool.as_deref(), Some("files.write"));
    assert_eq!(event.tier, Some(2));
    assert_eq!(event.rar_summary.as_deref(), Some("Call files.write"));
    assert_eq!(event.correlation_id.as_deref(), Some("corr-1"));

    let pending = f.approvals.pending(ALICE).await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].id, id);
    assert_eq!(pending[0].args_sha256, req.args_sha256);
    assert!(f.approvals.pending(BOB).await.unwrap().is_empty());

    // The user approves while the call waits; the waiter wakes promptly.
    let approvals = f.approvals.clone();
    let decider_id = id.clone();
    let decider = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        approvals.decide(&decider_id, ALICE, true).await.unwrap()
    });
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(5), f.approvals.wait(&id))
        .await
        .unwrap()
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(2));
    let decided = decider.await.unwrap();
    assert_eq!(decided.status, "approved");
    assert!(decided.decided_at.is_some());
    assert_eq!(status(&f, &id).await, "used");
    assert!(
        f.events
            .events()
            .iter()
            .any(|e| e.kind == "approval.granted" && e.outcome == Outcome::Success)
    );

    // The next write of the session, whatever its arguments, is covered.
    let next = request(ALICE, "s1", "files.delete", 2, &json!({"path": "b"}));
    assert_eq!(f.approvals.check(&next).await.unwrap(), Gate::Cached);
    let event = f.events.events().pop().unwrap();
    assert_eq!(event.kind, "approval.cached");
    assert_eq!(event.outcome, Outcome::Success);
    assert_eq!(event.duration_ms, Some(0.0));
    assert_eq!(event.tier, Some(2));

    // Not another session, nor another user claiming this session.
    let other_session = request(ALICE, "s2", "files.write", 2, &json!({"path": "a"}));
    pending_id(f.approvals.check(&other_session).await.unwrap());
    let other_user = request(BOB, "s1", "files.write", 2, &json!({"path": "a"}));
    pending_id(f.approvals.check(&other_user).await.unwrap());

    // Ending the session drops its grant.
    f.approvals.end_session("s1").await.unwrap();
    pending_id(f.approvals.check(&next).await.unwrap());
}

#[tokio::test]
async fn tier3_needs_a_fresh_approval_every_call() {
    let f = open(Duration::from_secs(120)).await;
    let req = request(ALICE, "s1", "bank.transfer", 3, &json!({"amount": 10}));
    let id = pending_id(f.approvals.check(&req).await.unwrap());
    f.approvals.decide(&id, ALICE, true).await.unwrap();
    f.approvals.wait(&id).await.unwrap();
    // Same call again: a new approval, no session grant.
    let second = pending_id(f.approvals.check(&req).await.unwrap());
    assert_ne!(second, id);
    assert_eq!(
        f.approvals.pending(ALICE).await.unwrap()[0].id,
        second,
        "newest first"
    );
}

#[tokio::test]
async fn approvals_are_single_use_and_bound_to_the_call() {
    let f = open(Duration::from_secs(120)).await;
    let req = request(ALICE, "s1", "bank.transfer", 3, &json!({"amount": 10}));
    let id = pending_id(f.approvals.check(&req).await.unwrap());
    f.approvals.decide(&id, ALICE, true).await.unwrap();

    // Different arguments, tool or session do not match the approval.
    for other in [
        request(ALICE, "s1", "bank.transfer", 3, &json!({"amount": 10000})),
        request(ALICE, "s1", "bank.close", 3, &json!({"amount": 10})),
        request(ALICE, "s2", "bank.transfer", 3, &json!({"amount": 10})),
    ] {
        let gate = f.approvals.check(&other).await.unwrap();
        assert!(matches!(gate, Gate::Pending { .. }), "{gate:?}");
    }
    assert_eq!(status(&f, &id).await, "approved");

    // The client retries the exact call after the approval: granted once.
    assert_eq!(
        f.approvals.check(&req).await.unwrap(),
        Gate::Granted {
            approval_id: id.clone()
        }
    );
    assert_eq!(status(&f, &id).await, "used");
    // A used approval is not granted again, nor can a waiter spend it.
    let again = pending_id(f.approvals.check(&req).await.unwrap());
    assert_ne!(again, id);
    assert!(matches!(
        f.approvals.wait(&id).await,
        Err(ApprovalError::AlreadyUsed(_))
    ));
    assert!(matches!(
        f.approvals.decide(&id, ALICE, true).await,
        Err(ApprovalError::Conflict { .. })
    ));
}

#[tokio::test]
async fn deny_fails_the_waiting_call() {
    let f = open(Duration::from_secs(120)).await;
    let req = request(ALICE, "s1", "files.write", 2, &json!({}));
    let id = pending_id(f.approvals.check(&req).await.unwrap());
    let denied = f.approvals.decide(&id, ALICE, false).await.unwrap();
    assert_eq!(denied.status, "denied");
    let err = f.approvals.wait(&id).await.unwrap_err();
    assert!(matches!(err, ApprovalError::Denied { .. }), "{err}");
    let event = f.events.events().pop().unwrap();
    assert_eq!(event.kind, "approval.denied");
    assert_eq!(event.outcome, Outcome::Denied);
    // No session grant came of it.
    pending_id(f.approvals.check(&req).await.unwrap());
}

#[tokio::test]
async fn an_undecided_approval_times_out() {
    let f = open(Duration::from_millis(300)).await;
    let req = request(ALICE, "s1", "bank.transfer", 3, &json!({}));
    let id = pending_id(f.approvals.check(&req).await.unwrap());
    let started = Instant::now();
    let err = tokio::time::timeout(Duration::from_secs(5), f.approvals.wait(&id))
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, ApprovalError::TimedOut), "{err}");
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert_eq!(status(&f, &id).await, "expired");
    let event = f.events.events().pop().unwrap();
    assert_eq!(event.kind, "approval.denied");
    assert_eq!(event.reason.as_deref(), Some("approval timed out"));
    // Too late to decide, and it is no longer listed.
    assert!(f.approvals.decide(&id, ALICE, true).await.is_err());
    assert_eq!(status(&f, &id).await, "expired");
    assert!(f.approvals.pending(ALICE).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_pending_approval_past_its_deadline_cannot_be_approved() {
    let f = open(Duration::from_millis(100)).await;
    let req = request(ALICE, "s1", "bank.transfer", 3, &json!({}));
    let id = pending_id(f.approvals.check(&req).await.unwrap());
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(matches!(
        f.approvals.decide(&id, ALICE, true).await,
        Err(ApprovalError::Expired(_))
    ));
    assert!(matches!(
        f.approvals.wait(&id).await,
        Err(ApprovalError::TimedOut)
    ));
}

#[tokio::test]
async fn only_the_bound_user_decides_once() {
    let f = open(Duration::from_secs(120)).await;
    let req = request(ALICE, "s1", "files.write", 2, &json!({}));
    let id = pending_id(f.approvals.check(&req).await.unwrap());
    let n = f.events.events().len();
    assert!(matches!(
        f.approvals.decide(&id, BOB, true).await,
        Err(ApprovalError::NotFound(_))
    ));
    assert!(matches!(
        f.approvals.decide("no-such-id", ALICE, true).await,
        Err(ApprovalError::NotFound(_))
    ));
    assert_eq!(status(&f, &id).await, "pending", "unchanged");
    assert_eq!(f.events.events().len(), n, "no event");

    f.approvals.decide(&id, ALICE, true).await.unwrap();
    let err = f.approvals.decide(&id, ALICE, false).await.unwrap_err();
    assert!(
        matches!(&err, ApprovalError::Conflict { status, .. } if status == "approved"),
        "{err}"
    );
    assert_eq!(status(&f, &id).await, "approved");
}

#[tokio::test]
async fn another_replica_decision_is_seen_by_polling() {
    let f = open(Duration::from_secs(120)).await;
    let replica = Approvals::new(
        f.store.clone(),
        f.events.clone(),
        Duration::from_secs(120),
        Duration::from_secs(1800),
    );
    let req = request(ALICE, "s1", "files.write", 2, &json!({}));
    let id = pending_id(f.approvals.check(&req).await.unwrap());
    let decider = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        replica.decide(&id, ALICE, true).await.unwrap();
    };
    let (waited, ()) = tokio::join!(
        tokio::time::timeout(Duration::from_secs(5), f.approvals.wait(&id)),
        decider
    );
    waited.unwrap().unwrap();
    // The grant is in the store: the replica sees it too.
    assert_eq!(replica.check(&req).await.unwrap(), Gate::Cached);
}

#[tokio::test]
async fn bad_requests_are_refused_and_create_nothing() {
    let f = open(Duration::from_secs(120)).await;
    let good = request(ALICE, "s1", "admin.drop", 4, &json!({}));
    assert!(matches!(
        f.approvals.check(&good).await,
        Err(ApprovalError::Blocked(t)) if t == "admin.drop"
    ));
    let mut bad = Vec::new();
    for tier in [0, 5] {
        bad.push(ApprovalRequest {
            tier,
            ..good.clone()
        });
    }
    bad.push(ApprovalRequest {
        args_sha256: "not-a-hash".into(),
        tier: 3,
        ..good.clone()
    });
    bad.push(ApprovalRequest {
        args_sha256: args_hash(&json!({})).to_uppercase(),
        tier: 3,
        ..good.clone()
    });
    // Arguments that are not the ones hashed: the person would approve
    // something other than what runs.
    bad.push(ApprovalRequest {
        arguments: Some(args_text(&json!({"email": "mallory@example.com"}))),
        tier: 3,
        ..good.clone()
    });
    bad.push(ApprovalRequest {
        session_id: String::new(),
        tier: 3,
        ..good.clone()
    });
    bad.push(ApprovalRequest {
        user_sub: String::new(),
        tier: 3,
        ..good.clone()
    });
    for req in bad {
        let err = f.approvals.check(&req).await.unwrap_err();
        assert!(matches!(err, ApprovalError::InvalidRequest(_)), "{err}");
    }
    assert!(f.approvals.pending(ALICE).await.unwrap().is_empty());
    assert!(f.events.events().is_empty());
    assert!(matches!(
        f.approvals.wait("no-such-id").await,
        Err(ApprovalError::NotFound(_))
    ));
}

// --- HTTP API ---

struct Http {
    f: Fixture,
    sts: Arc<Sts>,
    identity: Arc<Identity>,
}

async fn http() -> Http {
    let f = open(Duration::from_secs(120)).await;
    let mut config = StsConfig::new(ISSUER);
    config.password_hash_cost = keyless_sts::PasswordHashCost {
        memory_kib: 64,
        iterations: 1,
    };
    let keys = Arc::new(FileKeyManager::open(&f._tmp.path().join("keys")).unwrap());
    let identity = Identity::open(
        f.store.clone(),
        keys.clone(),
        f.events.clone(),
        IdentityConfig::new(TrustDomain::new(TD).unwrap(), ISSUER.to_owned()),
    )
    .await
    .unwrap();
    let sts = Sts::open(
        f.store.clone(),
        keys as Arc<dyn KeyManager>,
        identity.clone(),
        f.events.clone(),
        config,
    )
    .await
    .unwrap();
    Http { f, sts, identity }
}

impl Http {
    async fn user_token(&self, may_act: &[&str]) -> String {
        let sid = self.sts.start_session(ALICE).await.unwrap().session.sid;
        self.sts
            .mint_access_token(&UserTokenRequest {
                subject: ALICE.into(),
                email: Some(ALICE_EMAIL.into()),
                client_id: "keyless-console".into(),
                session_id: Some(sid),
                scope: Some("openid tools".into()),
                audience: vec![],
                may_act: may_act.iter().map(|s| (*s).to_owned()).collect(),
                auth_time: None,
            })
            .await
            .unwrap()
            .token
    }

    /// A real on-behalf-of token (with `act`) for AGENT acting for Alice.
    async fn obo_token(&self) -> String {
        self.sts
            .grant_consent(
                ALICE,
                AGENT,
                &["directory_read".to_owned()],
                &["tools".to_owned()],
            )
            .await
            .unwrap();
        let user = self.user_token(&[AGENT]).await;
        let entry = self
            .identity
            .create_entry(NewEntry::new(
                AGENT.parse().unwrap(),
                vec!["unix:uid:1000".parse().unwrap()],
            ))
            .await
            .unwrap();
        let actor = self
            .identity
            .mint_jwt_svid(&entry, &[ISSUER.to_owned()])
            .unwrap()
            .token;
        let req = TokenExchangeRequest {
            grant_type: GRANT_TYPE_TOKEN_EXCHANGE.into(),
            subject_token: Some(user),
            subject_token_type: Some(TOKEN_TYPE_ACCESS_TOKEN.into()),
            actor_token: Some(actor),
            actor_token_type: Some(TOKEN_TYPE_JWT.into()),
            resource: vec![],
            audience: vec!["directory".into()],
            scope: None,
            requested_token_type: None,
            authorization_details: Some(
                json!([{"type": "directory_read", "actions": ["read"], "datatypes": ["users"], "limit": 50}])
                    .to_string(),
            ),
        };
        self.sts
            .exchange(&req, None, &ExchangeContext::default())
            .await
            .unwrap()
            .access_token
    }

    async fn call(
        &self,
        method: &str,
        uri: &str,
        token: Option<&str>,
    ) -> (StatusCode, axum::http::HeaderMap, Value) {
        let router =
            keyless_gateway::approvals_http::router(self.f.approvals.clone(), self.sts.clone());
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(t) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let resp = router
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        };
        assert_eq!(
            headers.get(header::CACHE_CONTROL).unwrap(),
            "no-store",
            "{method} {uri}"
        );
        (status, headers, body)
    }
}

#[tokio::test]
async fn http_requires_a_user_bearer_token() {
    let h = http().await;
    for token in [None, Some("garbage"), Some("a.b.c")] {
        let (status, headers, body) = h.call("GET", "/api/approvals", token).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{token:?}");
        assert!(
            headers
                .get(header::WWW_AUTHENTICATE)
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("Bearer")
        );
        assert!(body["error"].is_string());
        assert!(body["error_description"].is_string());
    }
    let (status, ..) = h.call("POST", "/api/approvals/x/approve", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn http_refuses_an_agent_on_behalf_of_token() {
    let h = http().await;
    let id = pending_id(
        h.f.approvals
            .check(&request(ALICE, "s1", "files.write", 2, &json!({})))
            .await
            .unwrap(),
    );
    let obo = h.obo_token().await;
    let (status, _, body) = h
        .call("POST", &format!("/api/approvals/{id}/approve"), Some(&obo))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["error"], "access_denied");
    let (status, ..) = h.call("GET", "/api/approvals", Some(&obo)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(status_of(&h, &id).await, "pending", "unchanged");
}

async fn status_of(h: &Http, id: &str) -> String {
    h.f.approvals.get(id).await.unwrap().unwrap().status
}

#[tokio::test]
async fn http_lists_approves_and_denies() {
    let h = http().await;
    let token = h.user_token(&[]).await;
    let a = pending_id(
        h.f.approvals
            .check(&request(ALICE, "s1", "files.write", 2, &json!({"n": 1})))
            .await
            .unwrap(),
    );
    let b = pending_id(
        h.f.approvals
            .check(&request(ALICE, "s1", "bank.transfer", 3, &json!({"n": 2})))
            .await
            .unwrap(),
    );
    let bobs = pending_id(
        h.f.approvals
            .check(&request(BOB, "s9", "files.write", 2, &json!({})))
            .await
            .unwrap(),
    );

    let (status, headers, body) = h.call("GET", "/api/approvals", Some(&token)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        headers
            .get(header::CONTENT_TYPE)
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    let ids: Vec<&str> = body["approvals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 2, "only the caller's: {body}");
    assert!(ids.contains(&a.as_str()) && ids.contains(&b.as_str()));
    let first = &body["approvals"][0];
    assert_eq!(first["status"], "pending");
    assert_eq!(first["user_email"], ALICE_EMAIL);
    assert!(first["summary"].is_string());

    let (status, _, body) = h
        .call("POST", &format!("/api/approvals/{a}/approve"), Some(&token))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["id"], a.as_str());
    assert_eq!(body["status"], "approved");
    h.f.approvals.wait(&a).await.unwrap();

    let (status, _, body) = h
        .call("POST", &format!("/api/approvals/{b}/deny"), Some(&token))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "denied");

    // Decided twice → 409; another user's or an unknown id → 404.
    let (status, _, body) = h
        .call("POST", &format!("/api/approvals/{b}/approve"), Some(&token))
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["error"], "conflict");
    for id in [bobs.as_str(), "no-such-id"] {
        let (status, _, body) = h
            .call(
                "POST",
                &format!("/api/approvals/{id}/approve"),
                Some(&token),
            )
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body["error"], "not_found");
    }
    assert_eq!(status_of(&h, &bobs).await, "pending", "bob's is untouched");

    let (_, _, body) = h.call("GET", "/api/approvals", Some(&token)).await;
    assert_eq!(body["approvals"], json!([]));
}

#[tokio::test]
async fn http_refuses_a_token_of_an_ended_session() {
    let h = http().await;
    let token = h.user_token(&[]).await;
    h.sts.revoke_user_sessions(ALICE, "test").await.unwrap();
    let (status, headers, _) = h.call("GET", "/api/approvals", Some(&token)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(headers.get(header::WWW_AUTHENTICATE).is_some());
}

#[tokio::test]
async fn core_flow_on_postgres() {
    let Some(url) = keyless_store::testing::fresh_postgres_database("gateway_approvals").await
    else {
        return;
    };
    let store = Store::open(&url).await.unwrap();
    let events = Arc::new(MemorySink::default());
    let approvals = Approvals::new(
        store,
        events.clone(),
        Duration::from_millis(300),
        Duration::from_secs(1800),
    );
    // Tier 2: approve, wait, then the session is covered.
    let req = request(ALICE, "s1", "files.write", 2, &json!({"path": "a"}));
    let id = pending_id(approvals.check(&req).await.unwrap());
    let listed = approvals.pending(ALICE).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].tier, 2);
    assert!(matches!(
        approvals.decide(&id, BOB, true).await,
        Err(ApprovalError::NotFound(_))
    ));
    approvals.decide(&id, ALICE, true).await.unwrap();
    assert!(matches!(
        approvals.decide(&id, ALICE, true).await,
        Err(ApprovalError::Conflict { .. })
    ));
    approvals.wait(&id).await.unwrap();
    assert_eq!(approvals.check(&req).await.unwrap(), Gate::Cached);
    // Tier 3: the retry path spends an approval exactly once.
    let t3 = request(ALICE, "s1", "bank.transfer", 3, &json!({"amount": 1}));
    let id = pending_id(approvals.check(&t3).await.unwrap());
    approvals.decide(&id, ALICE, true).await.unwrap();
    assert_eq!(
        approvals.check(&t3).await.unwrap(),
        Gate::Granted {
            approval_id: id.clone()
        }
    );
    let id = pending_id(approvals.check(&t3).await.unwrap());
    // Nobody decides: it times out.
    assert!(matches!(
        approvals.wait(&id).await,
        Err(ApprovalError::TimedOut)
    ));
    assert_eq!(approvals.get(&id).await.unwrap().unwrap().status, "expired");
    approvals.end_session("s1").await.unwrap();
    pending_id(approvals.check(&req).await.unwrap());
}
