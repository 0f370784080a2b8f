//! The risk gate (the W1–W5 ladder as the STS sees it) with a fake gate:
//! a restricted subject gets no exchange, a high-risk session keeps reads
//! only until step-up, a step-up session cannot refresh, and signing in
//! again is never blocked.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::*;
use keyless_sts::{AuthorizeRequest, CodeGrant, ExchangeContext, RiskGate, StsError};
use serde_json::json;

#[derive(Debug, Default)]
struct FakeGate {
    levels: Mutex<BTreeMap<String, u8>>,
    restricted: Mutex<BTreeSet<String>>,
}

impl FakeGate {
    fn set_level(&self, sid: &str, level: u8) {
        self.levels.lock().unwrap().insert(sid.to_owned(), level);
    }
    fn restrict(&self, sub: &str, on: bool) {
        let mut r = self.restricted.lock().unwrap();
        if on {
            r.insert(sub.to_owned());
        } else {
            r.remove(sub);
        }
    }
}

impl RiskGate for FakeGate {
    fn session_level(&self, sid: &str) -> u8 {
        self.levels.lock().unwrap().get(sid).copied().unwrap_or(0)
    }
    fn subject_restricted(&self, user_sub: &str) -> bool {
        self.restricted.lock().unwrap().contains(user_sub)
    }
}

async fn gated() -> (Fixture, Arc<FakeGate>) {
    let f = open().await;
    let gate = Arc::new(FakeGate::default());
    f.sts.set_risk_gate(gate.clone());
    f.consent(AGENT, &["directory_read", "directory_write"])
        .await;
    (f, gate)
}

fn read() -> serde_json::Value {
    json!([{"type": "directory_read", "actions": ["read"]}])
}

fn write() -> serde_json::Value {
    json!([{"type": "directory_write", "actions": ["update"]}])
}

async fn exchange(
    f: &Fixture,
    subject: &str,
    details: &serde_json::Value,
    ctx: &ExchangeContext,
) -> Result<keyless_sts::TokenExchangeResponse, StsError> {
    let actor = f.svid(AGENT, ISSUER).await;
    f.sts
        .exchange(
            &exchange_request(subject, &actor, "directory", details),
            None,
            ctx,
        )
        .await
}

#[tokio::test]
async fn a_restricted_subject_gets_no_exchange_and_the_refusal_is_recorded() {
    let (f, gate) = gated().await;
    let subject = f.user_token(&[AGENT]).await;
    exchange(&f, &subject, &read(), &ExchangeContext::default())
        .await
        .unwrap();

    gate.restrict(ALICE, true);
    let err = exchange(&f, &subject, &read(), &ExchangeContext::default())
        .await
        .unwrap_err();
    assert_eq!(err.oauth_code(), "access_denied");
    assert_eq!(
        err.to_string(),
        "risk ladder W4: the subject is restricted pending human review"
    );
    let denied = f.events.events().into_iter().last().unwrap();
    assert_eq!(denied.kind, "token_exchange.denied");
    assert_eq!(
        denied.reason.as_deref(),
        Some("risk ladder W4: the subject is restricted pending human review")
    );
    assert_eq!(denied.user.as_deref(), Some(ALICE_EMAIL));

    // Another user is not affected; lifting the restriction lifts it.
    gate.restrict(ALICE, false);
    exchange(&f, &subject, &read(), &ExchangeContext::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn a_high_risk_session_keeps_reads_only_until_step_up() {
    let (f, gate) = gated().await;
    let (subject, sid) = f.user_token_with_sid(&[AGENT]).await;
    // Without the gate's word, writes pass.
    exchange(&f, &subject, &write(), &ExchangeContext::default())
        .await
        .unwrap();

    gate.set_level(&sid, 3);
    match exchange(&f, &subject, &write(), &ExchangeContext::default()).await {
        Err(StsError::AccessDenied { policy, reason }) => {
            assert_eq!(policy, ["high-risk-session"]);
            assert!(reason.contains("only reads are allowed"), "{reason}");
        }
        other => panic!("tier-2 at W3: {other:?}"),
    }
    let denied = f.events.events().into_iter().last().unwrap();
    assert_eq!(denied.kind, "token_exchange.denied");
    assert_eq!(denied.detail["risk_level"], "high");

    // Tier 1 stays allowed; a step-up lets the write through.
    exchange(&f, &subject, &read(), &ExchangeContext::default())
        .await
        .unwrap();
    let stepped_up = ExchangeContext {
        step_up: true,
        ..ExchangeContext::default()
    };
    exchange(&f, &subject, &write(), &stepped_up).await.unwrap();

    // W2 raises the level to medium only: writes pass; and the session's
    // level never lowers what the caller says.
    gate.set_level(&sid, 2);
    exchange(&f, &subject, &write(), &ExchangeContext::default())
        .await
        .unwrap();
    gate.set_level(&sid, 0);
    let caller_high = ExchangeContext {
        risk_level: "high".into(),
        ..ExchangeContext::default()
    };
    assert!(matches!(
        exchange(&f, &subject, &write(), &caller_high).await,
        Err(StsError::AccessDenied { .. })
    ));
}

fn challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        verifier.as_bytes(),
    ))
}

/// Signs a user in and redeems a code: (user id, sid, refresh token).
async fn signed_in(f: &Fixture) -> (String, String, String) {
    let user = f
        .sts
        .add_user("dave@example.com", "correct horse battery")
        .await
        .unwrap();
    let session = f.sts.start_session(&user.id).await.unwrap().session;
    let verifier = "a-verifier-that-is-long-enough-for-pkce-0123456789";
    let callback = format!("{ISSUER}/callback");
    let code = f
        .sts
        .issue_code(
            &AuthorizeRequest {
                response_type: Some("code".into()),
                client_id: Some("keyless-console".into()),
                redirect_uri: Some(callback.clone()),
                scope: Some("openid".into()),
                code_challenge: Some(challenge(verifier)),
                code_challenge_method: Some("S256".into()),
                ..AuthorizeRequest::default()
            },
            &session,
        )
        .await
        .unwrap();
    let tokens = f
        .sts
        .redeem_code(&CodeGrant {
            code,
            client_id: "keyless-console".into(),
            redirect_uri: callback,
            code_verifier: verifier.into(),
        })
        .await
        .unwrap();
    (user.id, session.sid, tokens.refresh_token.unwrap())
}

#[tokio::test]
async fn refresh_needs_a_new_sign_in_at_w2_and_is_refused_to_a_restricted_user() {
    let (f, gate) = gated().await;
    let (user, sid, refresh) = signed_in(&f).await;

    gate.set_level(&sid, 2);
    match f.sts.refresh(&refresh, "keyless-console").await {
        Err(e @ StsError::InvalidGrant(_)) => {
            assert_eq!(
                e.to_string(),
                "step-up required: sign in again (risk ladder W2)"
            );
        }
        other => panic!("refresh at W2: {other:?}"),
    }
    let denied = f.events.events().into_iter().last().unwrap();
    assert_eq!(denied.kind, "token.denied");
    assert_eq!(denied.session.as_deref(), Some(sid.as_str()));
    // W1 does not stop a refresh, and the refused attempt did not spend
    // the token (a retry is not reuse).
    gate.set_level(&sid, 1);
    let next = f
        .sts
        .refresh(&refresh, "keyless-console")
        .await
        .unwrap()
        .refresh_token
        .unwrap();

    gate.restrict(&user, true);
    assert!(matches!(
        f.sts.refresh(&next, "keyless-console").await,
        Err(StsError::InvalidGrant(m)) if m.contains("restricted")
    ));
    // Signing in again is never blocked: that is the step-up.
    let again = f.sts.start_session(&user).await;
    assert!(again.is_ok());
}

#[tokio::test]
async fn introspection_flags_the_tokens_of_a_restricted_user_or_risky_session() {
    let (f, gate) = gated().await;
    let (user, sid, refresh) = signed_in(&f).await;
    let access = f
        .sts
        .refresh(&refresh, "keyless-console")
        .await
        .unwrap()
        .access_token;
    let clean = f.sts.introspect(&access).await.unwrap();
    assert_eq!(clean["active"], true);
    assert!(clean.get("keyless_risk").is_none(), "{clean}");

    gate.set_level(&sid, 3);
    let risky = f.sts.introspect(&access).await.unwrap();
    assert_eq!(
        risky["keyless_risk"],
        json!({"level": "W3", "restricted": false})
    );

    gate.set_level(&sid, 4);
    gate.restrict(&user, true);
    let flagged = f.sts.introspect(&access).await.unwrap();
    assert_eq!(flagged["active"], true, "still valid, but flagged");
    assert_eq!(
        flagged["keyless_risk"],
        json!({"level": "W4", "restricted": true})
    );
}
