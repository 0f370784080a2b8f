//! The token-exchange negative matrix (issue 4), as one data-driven table
//! through the real token endpoint (`POST /oauth2/token` on the STS router
//! with `oneshot`): every row is refused with the right HTTP status, OAuth
//! `error` and `error_description`, nothing is issued (no `access_token`,
//! no new `token_exchange.success` event) and a `token_exchange.denied`
//! event is recorded. A control row must succeed, so the table can fail.
//!
//! Forged tokens that need a valid signature over a wrong claim are signed
//! with the real keys from the fixture's key manager (the STS's for subject
//! tokens, the identity's JWT key for actor JWT-SVIDs); `alg: none` and
//! HS256 keyed with the public key are built by hand.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use common::*;
use http_body_util::BodyExt;
use keyless_store::{KeyManager, Signer};
use keyless_sts::{
    ExchangeContext, GRANT_TYPE_TOKEN_EXCHANGE, TOKEN_TYPE_ACCESS_TOKEN, TOKEN_TYPE_JWT,
    UserTokenRequest,
};
use serde_json::{Value, json};
use tower::ServiceExt;

/// In may_act and consented: the delegate of the OBO rows.
const DELEGATE: &str = "spiffe://example.org/agent/delegate";
/// In may_act, never consented.
const UNCONSENTED: &str = "spiffe://example.org/agent/unconsented";
/// In may_act, consent granted then revoked.
const REVOKED: &str = "spiffe://example.org/agent/revoked";
/// Consented, but not in may_act.
const STRANGER: &str = "spiffe://example.org/agent/stranger";
const BOB: &str = "user-bob";

/// One row: a name, the form to post, and what must come back.
struct Case {
    name: &'static str,
    form: Vec<(String, String)>,
    status: StatusCode,
    error: &'static str,
    /// A fragment the `error_description` must contain.
    fragment: &'static str,
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn read_users() -> Value {
    json!([{"type": "directory_read", "actions": ["read"], "datatypes": ["users"], "limit": 50}])
}

fn transfer(amount: f64) -> Value {
    json!([{"type": "transfer_funds", "amount": amount, "currency": "USD", "destination": "ACC-2"}])
}

/// The form of an exchange of `subject` by `actor` for `audience`.
fn form(subject: &str, actor: &str, audience: &str, details: &Value) -> Vec<(String, String)> {
    vec![
        ("grant_type".into(), GRANT_TYPE_TOKEN_EXCHANGE.into()),
        ("subject_token".into(), subject.into()),
        ("subject_token_type".into(), TOKEN_TYPE_ACCESS_TOKEN.into()),
        ("actor_token".into(), actor.into()),
        ("actor_token_type".into(), TOKEN_TYPE_JWT.into()),
        ("audience".into(), audience.into()),
        ("authorization_details".into(), details.to_string()),
    ]
}

fn without(mut form: Vec<(String, String)>, name: &str) -> Vec<(String, String)> {
    form.retain(|(k, _)| k != name);
    form
}

/// A compact JWS over `header` and `claims`, signed by `signer` (JOSE r‖s).
fn sign(signer: &Arc<dyn Signer>, header: &Value, claims: &Value) -> String {
    let input = format!(
        "{}.{}",
        b64(&serde_json::to_vec(header).unwrap()),
        b64(&serde_json::to_vec(claims).unwrap())
    );
    let sig = signer.sign(input.as_bytes()).unwrap();
    format!("{input}.{}", b64(&sig))
}

/// `alg: none`: an empty signature.
fn unsigned(header: &Value, claims: &Value) -> String {
    format!(
        "{}.{}.",
        b64(&serde_json::to_vec(header).unwrap()),
        b64(&serde_json::to_vec(claims).unwrap())
    )
}

/// HS256 with the verifier's public key as the HMAC secret: the classic
/// algorithm-confusion forgery.
fn hs256_with_public_key(public_key: &[u8], header: &Value, claims: &Value) -> String {
    let input = format!(
        "{}.{}",
        b64(&serde_json::to_vec(header).unwrap()),
        b64(&serde_json::to_vec(claims).unwrap())
    );
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, public_key);
    let tag = aws_lc_rs::hmac::sign(&key, input.as_bytes());
    format!("{input}.{}", b64(tag.as_ref()))
}

/// The key-manager signer whose public key is the JWK `jwk` (P-256).
async fn signer_for(f: &Fixture, prefix: &str, jwk: &Value) -> Arc<dyn Signer> {
    for name in f.keys.list().await.unwrap() {
        if !name.starts_with(prefix) {
            continue;
        }
        let s = f.keys.load(&name).await.unwrap();
        let pk = s.public_key();
        if pk.len() == 65 && b64(&pk[1..33]) == jwk["x"].as_str().unwrap() {
            return s;
        }
    }
    panic!("no `{prefix}*` key for {jwk}");
}

async fn post_token(f: &Fixture, form: &[(String, String)]) -> (StatusCode, Value) {
    let body = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form)
        .finish();
    let resp = keyless_sts::http::router(f.sts.clone())
        .oneshot(
            Request::post("/oauth2/token")
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(Body::from(body))
                .unwrap(),
        )
        .await
        .unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn count(f: &Fixture, kind: &str) -> usize {
    f.event_kinds().iter().filter(|k| *k == kind).count()
}

/// Posts the row and checks everything it promises.
async fn check(f: &Fixture, case: &Case) {
    let successes = count(f, "token_exchange.success");
    let denials = count(f, "token_exchange.denied");
    let (status, body) = post_token(f, &case.form).await;
    let name = case.name;
    assert_eq!(status, case.status, "[{name}] status: {body}");
    if case.status == StatusCode::OK {
        assert!(body["access_token"].is_string(), "[{name}] {body}");
        assert_eq!(
            count(f, "token_exchange.success"),
            successes + 1,
            "[{name}]"
        );
        return;
    }
    assert_eq!(body["error"], case.error, "[{name}] error: {body}");
    let description = body["error_description"].as_str().unwrap_or_default();
    assert!(
        description.contains(case.fragment),
        "[{name}] `{description}` does not contain `{}`",
        case.fragment
    );
    assert!(
        body.get("access_token").is_none(),
        "[{name}] issued: {body}"
    );
    assert_eq!(
        count(f, "token_exchange.success"),
        successes,
        "[{name}] a success event was recorded"
    );
    assert_eq!(
        count(f, "token_exchange.denied"),
        denials + 1,
        "[{name}] no denial event was recorded"
    );
    let last = f.events.events().pop().unwrap();
    assert_eq!(last.kind, "token_exchange.denied", "[{name}]");
    assert!(
        last.reason
            .as_deref()
            .is_some_and(|r| r.contains(case.fragment)),
        "[{name}] event reason {:?}",
        last.reason
    );
}

#[tokio::test]
async fn every_forged_or_unauthorized_exchange_is_refused_and_nothing_is_issued() {
    let f = open().await;
    f.consent(
        AGENT,
        &["directory_read", "transfer_funds", "directory_admin"],
    )
    .await;
    f.consent(DELEGATE, &["transfer_funds"]).await;
    f.consent(STRANGER, &["directory_read"]).await;
    let revoked = f.consent(REVOKED, &["directory_read"]).await;
    f.sts.revoke_consent(&revoked.id).await.unwrap();

    let user = f.user_token(&[AGENT, DELEGATE, UNCONSENTED, REVOKED]).await;
    let actor = f.svid(AGENT, ISSUER).await;
    let n = now();

    // --- forging material: the real keys, their kids ---
    let sts_jwk = f.sts.jwks()["keys"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    let sts_kid = sts_jwk["kid"].as_str().unwrap().to_owned();
    let sts_key = signer_for(&f, "sts-signing-", &sts_jwk).await;
    let svid_jwk = f.identity.jwt_authorities()["keys"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    let svid_kid = svid_jwk["kid"].as_str().unwrap().to_owned();
    let svid_key = signer_for(&f, "jwt-", &svid_jwk).await;

    // A subject token exactly like the real one, re-signed with changes.
    let user_claims = jws_part(&user, 1);
    let at_header = json!({"alg": "ES256", "typ": "at+jwt", "kid": sts_kid});
    let subject = |header: &Value, change: &dyn Fn(&mut Value)| {
        let mut c = user_claims.clone();
        change(&mut c);
        sign(&sts_key, header, &c)
    };
    let same = |_: &mut Value| {};
    // Sanity: re-signing without a change yields a token the STS accepts
    // (checked by the control row below), so each forged row differs from
    // a good token by exactly its one defect.
    let resigned_user = subject(&at_header, &same);

    let actor_claims = jws_part(&actor, 1);
    let svid_header = json!({"alg": "ES256", "typ": "JWT", "kid": svid_kid});
    let forged_actor = |header: &Value, change: &dyn Fn(&mut Value)| {
        let mut c = actor_claims.clone();
        change(&mut c);
        sign(&svid_key, header, &c)
    };
    let resigned_actor = forged_actor(&svid_header, &same);

    // --- OBO tokens for the delegation rows ---
    let obo = |amount: f64| {
        let f = &f;
        let user = user.clone();
        let actor = actor.clone();
        async move {
            f.sts
                .exchange(
                    &exchange_request(&user, &actor, "bank", &transfer(amount)),
                    None,
                    &ExchangeContext::default(),
                )
                .await
                .unwrap()
                .access_token
        }
    };
    let obo_to_widen = obo(250.0).await;
    let obo_consumed = obo(10.0).await;
    f.sts
        .consume_token(&obo_consumed, "bank", None)
        .await
        .unwrap();
    let delegate = f.svid(DELEGATE, ISSUER).await;

    // --- a session that is revoked (CAEP-style, all of Bob's sessions) ---
    let bob_sid = f.sts.start_session(BOB).await.unwrap().session.sid;
    let bob = f
        .sts
        .mint_access_token(&UserTokenRequest {
            subject: BOB.into(),
            email: Some("bob@example.com".into()),
            client_id: "keyless-console".into(),
            session_id: Some(bob_sid),
            scope: Some("openid tools".into()),
            audience: vec![],
            may_act: vec![AGENT.into()],
            auth_time: None,
        })
        .await
        .unwrap()
        .token;
    f.sts
        .grant_consent(BOB, AGENT, &["directory_read".into()], &[])
        .await
        .unwrap();
    assert_eq!(f.sts.revoke_user_sessions(BOB, "caep").await.unwrap(), 1);

    let ok = |s: &str, a: &str| form(s, a, "directory", &read_users());
    let bad = StatusCode::BAD_REQUEST;
    let cases = vec![
        Case {
            name: "control: a re-signed real subject and actor token succeed",
            form: ok(&resigned_user, &resigned_actor),
            status: StatusCode::OK,
            error: "",
            fragment: "",
        },
        // --- the subject token ---
        Case {
            name: "subject alg none",
            form: ok(
                &unsigned(
                    &json!({"alg": "none", "typ": "at+jwt", "kid": sts_kid}),
                    &user_claims,
                ),
                &actor,
            ),
            status: bad,
            error: "invalid_request",
            fragment: "unsupported algorithm `none`",
        },
        Case {
            name: "subject HS256 keyed with the sts public key",
            form: ok(
                &hs256_with_public_key(
                    sts_key.public_key(),
                    &json!({"alg": "HS256", "typ": "at+jwt", "kid": sts_kid}),
                    &user_claims,
                ),
                &actor,
            ),
            status: bad,
            error: "invalid_request",
            fragment: "unsupported algorithm `HS256`",
        },
        Case {
            name: "subject unknown kid",
            form: ok(
                &subject(
                    &json!({"alg": "ES256", "typ": "at+jwt", "kid": "not-a-key"}),
                    &same,
                ),
                &actor,
            ),
            status: bad,
            error: "invalid_request",
            fragment: "unknown key id `not-a-key`",
        },
        Case {
            name: "subject expired",
            form: ok(
                &subject(&at_header, &|c| {
                    c["iat"] = json!(n - 4000);
                    c["exp"] = json!(n - 3600);
                }),
                &actor,
            ),
            status: bad,
            error: "invalid_request",
            fragment: "token has expired",
        },
        Case {
            name: "subject nbf in the future",
            form: ok(
                &subject(&at_header, &|c| c["nbf"] = json!(n + 3600)),
                &actor,
            ),
            status: bad,
            error: "invalid_request",
            fragment: "not yet valid",
        },
        Case {
            name: "subject wrong aud",
            form: ok(
                &subject(&at_header, &|c| c["aud"] = json!("directory")),
                &actor,
            ),
            status: bad,
            error: "invalid_request",
            fragment: "not an access token for this sts",
        },
        Case {
            name: "subject wrong iss",
            form: ok(
                &subject(&at_header, &|c| c["iss"] = json!("https://evil.example")),
                &actor,
            ),
            status: bad,
            error: "invalid_request",
            fragment: "issuer `https://evil.example` is not this sts",
        },
        Case {
            name: "subject wrong typ (JWT, as an id token)",
            form: ok(
                &subject(
                    &json!({"alg": "ES256", "typ": "JWT", "kid": sts_kid}),
                    &same,
                ),
                &actor,
            ),
            status: bad,
            error: "invalid_request",
            fragment: "`typ` is not `at+jwt`",
        },
        // --- the actor token (JWT-SVID) ---
        Case {
            name: "actor alg none",
            form: ok(
                &user,
                &unsigned(&json!({"alg": "none", "kid": svid_kid}), &actor_claims),
            ),
            status: bad,
            error: "invalid_request",
            fragment: "unsupported algorithm `none`",
        },
        Case {
            name: "actor HS256 keyed with the jwt-svid public key",
            form: ok(
                &user,
                &hs256_with_public_key(
                    svid_key.public_key(),
                    &json!({"alg": "HS256", "typ": "JWT", "kid": svid_kid}),
                    &actor_claims,
                ),
            ),
            status: bad,
            error: "invalid_request",
            fragment: "unsupported algorithm `HS256`",
        },
        Case {
            name: "actor unknown kid",
            form: ok(
                &user,
                &forged_actor(
                    &json!({"alg": "ES256", "typ": "JWT", "kid": "not-a-key"}),
                    &same,
                ),
            ),
            status: bad,
            error: "invalid_request",
            fragment: "unknown key id `not-a-key`",
        },
        Case {
            name: "actor expired",
            form: ok(
                &user,
                &forged_actor(&svid_header, &|c| {
                    c["iat"] = json!(n - 4000);
                    c["exp"] = json!(n - 3600);
                }),
            ),
            status: bad,
            error: "invalid_request",
            fragment: "token has expired",
        },
        Case {
            name: "actor nbf in the future",
            form: ok(
                &user,
                &forged_actor(&svid_header, &|c| c["nbf"] = json!(n + 3600)),
            ),
            status: bad,
            error: "invalid_request",
            fragment: "not yet valid",
        },
        Case {
            name: "actor wrong aud",
            form: ok(
                &user,
                &forged_actor(&svid_header, &|c| c["aud"] = json!(["https://elsewhere"])),
            ),
            status: bad,
            error: "invalid_request",
            fragment: "audience does not contain",
        },
        Case {
            // A JWT-SVID's issuer is its trust domain (SPIFFE names no
            // `iss` requirement): the actor-side "wrong issuer".
            name: "actor of another trust domain",
            form: ok(
                &user,
                &forged_actor(&svid_header, &|c| {
                    c["sub"] = json!("spiffe://evil.example/agent/helper");
                }),
            ),
            status: bad,
            error: "invalid_request",
            fragment: "is not in trust domain",
        },
        Case {
            name: "actor wrong typ (at+jwt)",
            form: ok(
                &user,
                &forged_actor(
                    &json!({"alg": "ES256", "typ": "at+jwt", "kid": svid_kid}),
                    &same,
                ),
            ),
            status: bad,
            error: "invalid_request",
            fragment: "unsupported `typ`",
        },
        Case {
            name: "actor_token without actor_token_type",
            form: without(ok(&user, &actor), "actor_token_type"),
            status: bad,
            error: "invalid_request",
            fragment: "actor_token_type is required",
        },
        Case {
            name: "actor not in may_act",
            form: ok(&user, &f.svid(STRANGER, ISSUER).await),
            status: bad,
            error: "invalid_request",
            fragment: "not in may_act",
        },
        // --- consent, RAR, policy ---
        Case {
            name: "no consent",
            form: ok(&user, &f.svid(UNCONSENTED, ISSUER).await),
            status: bad,
            error: "access_denied",
            fragment: "no live consent",
        },
        Case {
            name: "revoked consent",
            form: ok(&user, &f.svid(REVOKED, ISSUER).await),
            status: bad,
            error: "access_denied",
            fragment: "no live consent",
        },
        Case {
            name: "RAR of an unknown type",
            form: form(
                &user,
                &actor,
                "directory",
                &json!([{"type": "launch_missiles"}]),
            ),
            status: bad,
            error: "invalid_authorization_details",
            fragment: "unknown type `launch_missiles`",
        },
        Case {
            name: "RAR violating its schema",
            form: form(
                &user,
                &actor,
                "bank",
                &json!([{"type": "transfer_funds", "amount": -1, "currency": "USD", "destination": "A"}]),
            ),
            status: bad,
            error: "invalid_authorization_details",
            fragment: "/amount",
        },
        Case {
            name: "tier-4 action",
            form: form(
                &user,
                &actor,
                "directory",
                &json!([{"type": "directory_admin", "actions": ["delete_user"], "identifier": "u-1"}]),
            ),
            status: bad,
            error: "access_denied",
            fragment: "tier-4-blocked",
        },
        Case {
            name: "amount over the limit",
            form: form(&user, &actor, "bank", &transfer(5000.0)),
            status: bad,
            error: "access_denied",
            fragment: "transfer-limit",
        },
        // --- OBO tokens, single use, sessions ---
        Case {
            name: "an OBO token used as subject to widen authority",
            form: form(&obo_to_widen, &delegate, "bank", &transfer(251.0)),
            status: bad,
            error: "invalid_authorization_details",
            fragment: "cannot widen",
        },
        Case {
            name: "a consumed jti presented again",
            form: form(&obo_consumed, &delegate, "bank", &transfer(10.0)),
            status: bad,
            error: "invalid_request",
            fragment: "already used",
        },
        Case {
            name: "a token of a revoked session",
            form: ok(&bob, &actor),
            status: bad,
            error: "invalid_request",
            fragment: "no longer active",
        },
    ];
    for case in &cases {
        check(&f, case).await;
    }
    // The refusals did not spend what they were refused for: the widening
    // row's OBO still narrows (and only then is spent).
    let (status, body) = post_token(
        &f,
        &form(&obo_to_widen, &delegate, "bank", &transfer(100.0)),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}
