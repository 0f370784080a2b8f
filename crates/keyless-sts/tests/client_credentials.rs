//! The `client_credentials` grant for service scopes (SSF management) at
//! `/oauth2/token`, and `Sts::verify_service_token`: only the service
//! scope rules decide who gets which scope; only service tokens open a
//! service API; every outcome is an event.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;
mod jose;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use common::*;
use http_body_util::BodyExt;
use jose::{Key, jti, now};
use keyless_sts::{
    CLIENT_ASSERTION_TYPE_JWT_BEARER, CLIENT_ASSERTION_TYPE_JWT_SPIFFE, ClientCredentialsRequest,
    JwtClientRegistration, ServiceScopeRule, StsConfig, StsError,
};
use serde_json::{Value, json};
use tower::ServiceExt;

const SSF: &str = "spiffe://example.org/ssf";
const SSF_POLLER: &str = "spiffe://example.org/ssf/poller";
const PK_CLIENT: &str = "pk-ssf-reader";
const TOKEN_ENDPOINT: &str = "http://127.0.0.1:8180/oauth2/token";

struct Setup {
    f: Fixture,
    key: Key,
    _tmp: tempfile::TempDir,
}

async fn setup() -> Setup {
    let key = Key::es256();
    let mut config = StsConfig::new(ISSUER);
    config.service_scopes = vec![
        ServiceScopeRule::new(SSF, &["ssf.manage", "ssf.read"]),
        ServiceScopeRule::new(PK_CLIENT, &["ssf.read"]),
    ];
    config.jwt_clients.push(JwtClientRegistration {
        client_id: PK_CLIENT.into(),
        jwks: json!({"keys": [key.jwk()]}),
        uri: "http://127.0.0.1:9100/reader".into(),
    });
    let tmp = tempfile::tempdir().unwrap();
    let store = keyless_store::Store::open_sqlite(&tmp.path().join("k.db"))
        .await
        .unwrap();
    let f = open_with(store, &tmp.path().join("keys"), config).await;
    Setup { f, key, _tmp: tmp }
}

fn private_key_jwt(key: &Key) -> String {
    key.sign(
        &json!({"alg": key.alg(), "typ": "JWT"}),
        &json!({
            "iss": PK_CLIENT, "sub": PK_CLIENT, "aud": TOKEN_ENDPOINT,
            "exp": now() + 60, "iat": now(), "jti": jti(),
        }),
    )
}

async fn post_token(f: &Fixture, pairs: &[(&str, &str)]) -> (StatusCode, Value) {
    let body = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish();
    let req = Request::post("/oauth2/token")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(body))
        .unwrap();
    let resp = keyless_sts::http::router(f.sts.clone())
        .oneshot(req)
        .await
        .unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

async fn with_svid(f: &Fixture, assertion: &str, scope: &str) -> (StatusCode, Value) {
    post_token(
        f,
        &[
            ("grant_type", "client_credentials"),
            ("client_assertion_type", CLIENT_ASSERTION_TYPE_JWT_SPIFFE),
            ("client_assertion", assertion),
            ("scope", scope),
        ],
    )
    .await
}

fn request(kind: &str, assertion: &str, scope: &str) -> ClientCredentialsRequest {
    ClientCredentialsRequest {
        client_assertion_type: Some(kind.into()),
        client_assertion: Some(assertion.into()),
        scope: Some(scope.into()),
        ..ClientCredentialsRequest::default()
    }
}

#[tokio::test]
async fn a_matching_spiffe_id_gets_a_short_service_token_and_it_verifies() {
    let s = setup().await;
    let svid = s.f.svid(SSF_POLLER, ISSUER).await;
    let (status, body) = with_svid(&s.f, &svid, "ssf.read ssf.manage").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["scope"], "ssf.manage ssf.read");
    assert_eq!(body["expires_in"], 300);
    assert!(body.get("refresh_token").is_none());
    assert!(body.get("id_token").is_none());
    let token = body["access_token"].as_str().unwrap();
    assert_eq!(jws_part(token, 0)["typ"], "at+jwt");
    assert_eq!(jws_part(token, 0)["alg"], "ES256");
    let claims = jws_part(token, 1);
    assert_eq!(claims["iss"], ISSUER);
    assert_eq!(claims["sub"], SSF_POLLER);
    // Not a registered client: its SPIFFE ID is its client id.
    assert_eq!(claims["client_id"], SSF_POLLER);
    assert_eq!(claims["aud"], ISSUER);
    assert_eq!(claims["scope"], "ssf.manage ssf.read");
    assert_eq!(claims["gty"], "client_credentials");
    let lifetime = claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap();
    assert!((1..=300).contains(&lifetime), "{lifetime}");
    assert!(!claims["jti"].as_str().unwrap().is_empty());
    for absent in ["sid", "act", "may_act", "email", "authorization_details"] {
        assert!(claims.get(absent).is_none(), "{absent} in {claims}");
    }

    let caller =
        s.f.sts
            .verify_service_token(token, "ssf.manage", ISSUER)
            .await
            .unwrap();
    assert_eq!(caller.subject, SSF_POLLER);
    assert_eq!(caller.client_id, SSF_POLLER);
    assert_eq!(caller.scopes, ["ssf.manage", "ssf.read"]);

    let issued =
        s.f.events
            .events()
            .into_iter()
            .find(|e| {
                e.kind == "token.issued"
                    && e.detail.get("grant_type") == Some(&json!("client_credentials"))
            })
            .unwrap();
    assert_eq!(issued.agent.as_deref(), Some(SSF_POLLER));
    assert_eq!(issued.detail["client_id"], SSF_POLLER);
    assert_eq!(issued.detail["scopes"], json!(["ssf.manage", "ssf.read"]));
    assert_eq!(issued.detail["jti"], claims["jti"]);

    // The prefix itself matches, and the token endpoint is an audience too.
    let svid = s.f.svid(SSF, TOKEN_ENDPOINT).await;
    let (status, body) = with_svid(&s.f, &svid, "ssf.read").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        jws_part(body["access_token"].as_str().unwrap(), 1)["sub"],
        SSF
    );

    // Advertised.
    let meta = keyless_sts::http::metadata_document(&s.f.sts);
    assert!(
        meta["grant_types_supported"]
            .as_array()
            .unwrap()
            .contains(&json!("client_credentials"))
    );
}

#[tokio::test]
async fn a_scope_not_allowed_is_invalid_scope_naming_it_and_recorded() {
    let s = setup().await;
    let svid = s.f.svid(SSF_POLLER, ISSUER).await;
    let (status, body) = with_svid(&s.f, &svid, "ssf.read admin.everything").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"], "invalid_scope");
    let description = body["error_description"].as_str().unwrap();
    assert!(description.contains("`admin.everything`"), "{description}");
    assert!(body.get("access_token").is_none());
    let denied =
        s.f.events
            .events()
            .into_iter()
            .find(|e| e.kind == "token.denied")
            .unwrap();
    assert_eq!(denied.detail["error"], "invalid_scope");
    assert_eq!(denied.detail["client_id"], SSF_POLLER);
    assert!(denied.reason.unwrap().contains("admin.everything"));
    assert!(!s.f.event_kinds().contains(&"token.issued".to_owned()));

    // A scope is required.
    let (status, body) = with_svid(&s.f, &svid, "").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_request");
}

#[tokio::test]
async fn an_svid_for_another_audience_is_refused() {
    let s = setup().await;
    let svid = s.f.svid(SSF_POLLER, "http://elsewhere.example").await;
    let (status, body) = with_svid(&s.f, &svid, "ssf.read").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["error"], "invalid_client");
    assert!(s.f.event_kinds().contains(&"token.denied".to_owned()));
}

#[tokio::test]
async fn spiffe_ids_no_rule_names_are_invalid_client() {
    let s = setup().await;
    for id in [
        "spiffe://example.org/ssfx",
        "spiffe://example.org/agent/helper",
        "spiffe://example.org/other/ssf",
    ] {
        let svid = s.f.svid(id, ISSUER).await;
        let (status, body) = with_svid(&s.f, &svid, "ssf.read").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{id}: {body}");
        assert_eq!(body["error"], "invalid_client", "{id}");
        assert!(
            body["error_description"].as_str().unwrap().contains(id),
            "{body}"
        );
    }
}

#[tokio::test]
async fn svids_may_authenticate_again_but_private_key_jwts_are_spent() {
    let s = setup().await;
    // A JWT-SVID is a short-lived bearer credential, reusable as at the
    // token exchange.
    let svid = s.f.svid(SSF_POLLER, ISSUER).await;
    for _ in 0..2 {
        let (status, body) = with_svid(&s.f, &svid, "ssf.read").await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    // A private_key_jwt authenticates once, and its client gets only what
    // its rule (matched on the client id) allows.
    let assertion = private_key_jwt(&s.key);
    let first =
        s.f.sts
            .client_credentials(&request(
                CLIENT_ASSERTION_TYPE_JWT_BEARER,
                &assertion,
                "ssf.read",
            ))
            .await
            .unwrap();
    let claims = jws_part(&first.access_token, 1);
    assert_eq!(claims["sub"], PK_CLIENT);
    assert_eq!(claims["client_id"], PK_CLIENT);
    let again =
        s.f.sts
            .client_credentials(&request(
                CLIENT_ASSERTION_TYPE_JWT_BEARER,
                &assertion,
                "ssf.read",
            ))
            .await;
    match again {
        Err(StsError::InvalidClient(m)) => assert!(m.contains("already used"), "{m}"),
        other => panic!("replayed assertion: {other:?}"),
    }
    let wider =
        s.f.sts
            .client_credentials(&request(
                CLIENT_ASSERTION_TYPE_JWT_BEARER,
                &private_key_jwt(&s.key),
                "ssf.manage",
            ))
            .await;
    assert!(matches!(wider, Err(StsError::InvalidScope(_))), "{wider:?}");
}

#[tokio::test]
async fn client_authentication_and_target_rules() {
    let s = setup().await;
    let svid = s.f.svid(SSF_POLLER, ISSUER).await;
    let base = [
        ("grant_type", "client_credentials"),
        ("client_assertion_type", CLIENT_ASSERTION_TYPE_JWT_SPIFFE),
        ("client_assertion", svid.as_str()),
        ("scope", "ssf.read"),
    ];
    let with = |extra: &[(&'static str, &'static str)]| {
        let mut v: Vec<(&str, &str)> = base.to_vec();
        v.extend_from_slice(extra);
        v
    };
    // No client assertion at all.
    let (status, body) = post_token(
        &s.f,
        &[("grant_type", "client_credentials"), ("scope", "ssf.read")],
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"], "invalid_client");
    // A secret is refused rather than ignored.
    let (status, body) = post_token(&s.f, &with(&[("client_secret", "s3cret")])).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"], "invalid_client");
    // One registered resource server, or the issuer.
    let (status, body) = post_token(&s.f, &with(&[("audience", "bank")])).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        jws_part(body["access_token"].as_str().unwrap(), 1)["aud"],
        "bank"
    );
    let (status, _) = post_token(&s.f, &with(&[("resource", ISSUER)])).await;
    assert_eq!(status, StatusCode::OK);
    for extra in [
        [("audience", "payroll"), ("scope2", "")],
        [("audience", "bank"), ("audience", "directory")],
    ] {
        let (status, body) = post_token(&s.f, &with(&extra)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{extra:?}");
        assert_eq!(body["error"], "invalid_target", "{extra:?}");
    }
}

#[tokio::test]
async fn verify_service_token_accepts_only_service_tokens_with_the_scope() {
    let s = setup().await;
    let svid = s.f.svid(SSF_POLLER, ISSUER).await;
    let read_only =
        s.f.sts
            .client_credentials(&request(
                CLIENT_ASSERTION_TYPE_JWT_SPIFFE,
                &svid,
                "ssf.read",
            ))
            .await
            .unwrap()
            .access_token;
    match s
        .f
        .sts
        .verify_service_token(&read_only, "ssf.manage", ISSUER)
        .await
    {
        Err(e @ StsError::InsufficientScope(_)) => {
            assert_eq!(e.oauth_code(), "insufficient_scope");
            assert_eq!(keyless_sts::http::error_status(&e), StatusCode::FORBIDDEN);
            assert!(e.to_string().contains("ssf.manage"), "{e}");
        }
        other => panic!("missing scope: {other:?}"),
    }
    // Wrong audience.
    assert!(matches!(
        s.f.sts
            .verify_service_token(&read_only, "ssf.read", "directory")
            .await,
        Err(StsError::InvalidToken(_))
    ));
    // A user's access token (audience the issuer, even with a scope of the
    // same name) is never a service token.
    let user =
        s.f.sts
            .mint_access_token(&keyless_sts::UserTokenRequest {
                subject: ALICE.into(),
                email: Some(ALICE_EMAIL.into()),
                client_id: "keyless-console".into(),
                session_id: None,
                scope: Some("ssf.read".into()),
                audience: vec![],
                may_act: vec![],
                auth_time: None,
            })
            .await
            .unwrap()
            .token;
    match s
        .f
        .sts
        .verify_service_token(&user, "ssf.read", ISSUER)
        .await
    {
        Err(StsError::InvalidToken(m)) => assert!(m.contains("not a service token"), "{m}"),
        other => panic!("user token: {other:?}"),
    }
    // Garbage.
    assert!(matches!(
        s.f.sts
            .verify_service_token("a.b.c", "ssf.read", ISSUER)
            .await,
        Err(StsError::InvalidToken(_))
    ));
    // A revoked service token stops verifying.
    s.f.sts.revoke_token(&read_only, None).await.unwrap();
    assert!(matches!(
        s.f.sts
            .verify_service_token(&read_only, "ssf.read", ISSUER)
            .await,
        Err(StsError::InvalidToken(_))
    ));
}

#[tokio::test]
async fn a_service_token_is_no_user_token() {
    let s = setup().await;
    let svid = s.f.svid(SSF_POLLER, ISSUER).await;
    let service =
        s.f.sts
            .client_credentials(&request(
                CLIENT_ASSERTION_TYPE_JWT_SPIFFE,
                &svid,
                "ssf.read",
            ))
            .await
            .unwrap()
            .access_token;
    assert!(s.f.sts.userinfo(&service).await.is_err());
    let actor = s.f.svid(AGENT, ISSUER).await;
    let details = json!([{"type": "directory_read", "actions": ["read"]}]);
    let err =
        s.f.sts
            .exchange(
                &exchange_request(&service, &actor, "directory", &details),
                None,
                &keyless_sts::ExchangeContext::default(),
            )
            .await
            .unwrap_err();
    assert!(err.to_string().contains("service token"), "{err}");
}

#[tokio::test]
async fn service_scope_rules_are_validated_and_nobody_is_allowed_by_default() {
    assert!(StsConfig::new(ISSUER).service_scopes.is_empty());
    let rule = ServiceScopeRule::new(SSF, &["ssf.read"]);
    assert!(rule.matches_spiffe_id(SSF));
    assert!(rule.matches_spiffe_id(SSF_POLLER));
    assert!(!rule.matches_spiffe_id("spiffe://example.org/ssfx"));
    assert!(!rule.matches_spiffe_id("spiffe://example.org"));
    assert!(!rule.matches_client_id(SSF_POLLER));

    for bad in [
        ServiceScopeRule::new("spiffe://example.org/ssf/", &["ssf.read"]),
        ServiceScopeRule::new("", &["ssf.read"]),
        ServiceScopeRule::new(SSF, &[]),
        ServiceScopeRule::new(SSF, &["ssf.read ssf.manage"]),
    ] {
        let mut config = StsConfig::new(ISSUER);
        config.service_scopes = vec![bad.clone()];
        let tmp = tempfile::tempdir().unwrap();
        let store = keyless_store::Store::open_sqlite(&tmp.path().join("k.db"))
            .await
            .unwrap();
        let keys = std::sync::Arc::new(
            keyless_store::FileKeyManager::open(&tmp.path().join("keys")).unwrap(),
        );
        let events = std::sync::Arc::new(keyless_audit::MemorySink::default());
        let identity = keyless_identity::Identity::open(
            store.clone(),
            keys.clone(),
            events.clone(),
            keyless_identity::IdentityConfig::new(
                keyless_identity::TrustDomain::new(TD).unwrap(),
                ISSUER.to_owned(),
            ),
        )
        .await
        .unwrap();
        let opened = keyless_sts::Sts::open(store, keys, identity, events, config).await;
        assert!(
            matches!(opened, Err(StsError::InvalidConfig(_))),
            "{bad:?} accepted"
        );
    }

    // With no rule, even a valid SVID gets nothing.
    let f = open().await;
    let svid = f.svid(SSF, ISSUER).await;
    let (status, body) = with_svid(&f, &svid, "ssf.read").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["error"], "invalid_client");
}
