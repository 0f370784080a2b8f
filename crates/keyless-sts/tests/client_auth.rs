//! `private_key_jwt` client authentication (RFC 7523 §2.2, OIDC Core §9)
//! at the token endpoint: a good assertion authenticates the registered
//! client (its id in the OBO token, its URI an acceptable actor-token
//! audience); every bad one is `401 invalid_client` with nothing issued;
//! registrations with unusable JWKS are refused at start.

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
    CLIENT_ASSERTION_TYPE_JWT_BEARER, GRANT_TYPE_TOKEN_EXCHANGE, JwtClientRegistration, StsConfig,
    TOKEN_TYPE_ACCESS_TOKEN, TOKEN_TYPE_JWT,
};
use serde_json::{Value, json};
use tower::ServiceExt;

const CLIENT: &str = "pk-gateway";
const CLIENT_URI: &str = "http://127.0.0.1:9000/mcp";
const TOKEN_ENDPOINT: &str = "http://127.0.0.1:8180/oauth2/token";

struct Setup {
    f: Fixture,
    es: Key,
    ed: Key,
    _tmp: tempfile::TempDir,
}

fn jwks(es: &Key, ed: &Key) -> Value {
    let mut k1 = es.jwk();
    k1["kid"] = json!("k1");
    k1["alg"] = json!("ES256");
    k1["use"] = json!("sig");
    let mut k2 = ed.jwk();
    k2["kid"] = json!("k2");
    json!({"keys": [k1, k2]})
}

async fn setup() -> Setup {
    let es = Key::es256();
    let ed = Key::ed25519();
    let mut config = StsConfig::new(ISSUER);
    config.jwt_clients.push(JwtClientRegistration {
        client_id: CLIENT.into(),
        jwks: jwks(&es, &ed),
        uri: CLIENT_URI.into(),
    });
    let tmp = tempfile::tempdir().unwrap();
    let store = keyless_store::Store::open_sqlite(&tmp.path().join("k.db"))
        .await
        .unwrap();
    let f = open_with(store, &tmp.path().join("keys"), config).await;
    f.consent(AGENT, &["directory_read"]).await;
    Setup {
        f,
        es,
        ed,
        _tmp: tmp,
    }
}

fn good_claims() -> Value {
    json!({
        "iss": CLIENT, "sub": CLIENT, "aud": TOKEN_ENDPOINT,
        "exp": now() + 60, "iat": now(), "jti": jti(),
    })
}

fn assertion(key: &Key, kid: &str, claims: &Value) -> String {
    key.sign(&json!({"alg": key.alg(), "kid": kid, "typ": "JWT"}), claims)
}

async fn token(
    f: &Fixture,
    assertion_type: &str,
    assertion: &str,
    actor_aud: &str,
) -> (StatusCode, Value) {
    let user = f.user_token(&[AGENT]).await;
    let actor = f.svid(AGENT, actor_aud).await;
    let form = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs([
            ("grant_type", GRANT_TYPE_TOKEN_EXCHANGE),
            ("subject_token", &user),
            ("subject_token_type", TOKEN_TYPE_ACCESS_TOKEN),
            ("actor_token", &actor),
            ("actor_token_type", TOKEN_TYPE_JWT),
            ("audience", "directory"),
            (
                "authorization_details",
                &json!([{"type": "directory_read", "actions": ["read"]}]).to_string(),
            ),
            ("client_assertion_type", assertion_type),
            ("client_assertion", assertion),
        ])
        .finish();
    let req = Request::post("/oauth2/token")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(form))
        .unwrap();
    let resp = keyless_sts::http::router(f.sts.clone())
        .oneshot(req)
        .await
        .unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

fn successes(f: &Fixture) -> usize {
    f.event_kinds()
        .iter()
        .filter(|k| *k == "token_exchange.success")
        .count()
}

/// `assertion` must be refused as `invalid_client` mentioning `why`, with
/// nothing issued.
async fn check_refused(s: &Setup, assertion: &str, why: &str) {
    check_refused_as(s, CLIENT_ASSERTION_TYPE_JWT_BEARER, assertion, why).await;
}

async fn check_refused_as(s: &Setup, kind: &str, assertion: &str, why: &str) {
    let before = successes(&s.f);
    let (status, body) = token(&s.f, kind, assertion, ISSUER).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{why}: {body}");
    assert_eq!(body["error"], "invalid_client", "{why}: {body}");
    assert!(body.get("access_token").is_none());
    let description = body["error_description"].as_str().unwrap();
    assert!(
        description.contains(why),
        "`{description}` should say `{why}`"
    );
    assert_eq!(successes(&s.f), before, "{why}: a token was issued");
    assert_eq!(
        s.f.event_kinds().last().map(String::as_str),
        Some("token_exchange.denied")
    );
}

#[tokio::test]
async fn a_private_key_jwt_authenticates_the_registered_client() {
    let s = setup().await;
    let (status, body) = token(
        &s.f,
        CLIENT_ASSERTION_TYPE_JWT_BEARER,
        &assertion(&s.es, "k1", &good_claims()),
        ISSUER,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        jws_part(body["access_token"].as_str().unwrap(), 1)["client_id"],
        CLIENT
    );
    // EdDSA key, `aud` = the issuer (as an array), and an actor token the
    // client relays with its own URI as audience.
    let mut c = good_claims();
    c["aud"] = json!([ISSUER]);
    let (status, body) = token(
        &s.f,
        CLIENT_ASSERTION_TYPE_JWT_BEARER,
        &assertion(&s.ed, "k2", &c),
        CLIENT_URI,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        jws_part(body["access_token"].as_str().unwrap(), 1)["client_id"],
        CLIENT
    );
    // The domain call, for other front ends.
    let client =
        s.f.sts
            .authenticate_client_assertion(
                CLIENT_ASSERTION_TYPE_JWT_BEARER,
                &assertion(&s.es, "k1", &good_claims()),
            )
            .await
            .unwrap();
    assert_eq!(client.client_id, CLIENT);
    assert_eq!(client.uri, CLIENT_URI);
    assert_eq!(client.spiffe_id, None);
}

#[tokio::test]
async fn bad_assertions_are_invalid_client_and_issue_nothing() {
    let s = setup().await;
    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = good_claims();
        f(&mut c);
        c
    };
    let signed_as =
        |alg: &str, kid: &str| s.es.sign(&json!({"alg": alg, "kid": kid}), &good_claims());

    check_refused(&s, &signed_as("none", "k1"), "unsupported algorithm `none`").await;
    check_refused(
        &s,
        &signed_as("HS256", "k1"),
        "unsupported algorithm `HS256`",
    )
    .await;
    check_refused(&s, &signed_as("ES256", "k9"), "unknown key id `k9`").await;
    // Key k2 is Ed25519: ES256 does not fit it.
    check_refused(&s, &signed_as("ES256", "k2"), "does not fit").await;
    check_refused(
        &s,
        &s.es.sign(&json!({"alg": "ES256"}), &good_claims()),
        "`kid` is required",
    )
    .await;
    // A key the client never registered, under a registered kid.
    check_refused(
        &s,
        &assertion(&Key::es256(), "k1", &good_claims()),
        "signature",
    )
    .await;
    check_refused(
        &s,
        &s.es.sign(
            &json!({"alg": "ES256", "kid": "k1", "typ": "at+jwt"}),
            &good_claims(),
        ),
        "`typ`",
    )
    .await;
    check_refused(
        &s,
        &assertion(
            &s.es,
            "k1",
            &with(&|c| c["aud"] = json!("http://elsewhere/token")),
        ),
        "`aud`",
    )
    .await;
    check_refused(
        &s,
        &assertion(
            &s.es,
            "k1",
            &with(&|c| {
                c["iss"] = json!("stranger");
                c["sub"] = json!("stranger");
            }),
        ),
        "not a registered client",
    )
    .await;
    check_refused(
        &s,
        &assertion(&s.es, "k1", &with(&|c| c["sub"] = json!("someone"))),
        "`sub` must equal `iss`",
    )
    .await;
    check_refused(
        &s,
        &assertion(&s.es, "k1", &with(&|c| c["exp"] = json!(now() - 120))),
        "expired",
    )
    .await;
    check_refused(
        &s,
        &assertion(&s.es, "k1", &with(&|c| c["exp"] = json!(now() + 3600))),
        "`exp` is more than",
    )
    .await;
    check_refused(
        &s,
        &assertion(
            &s.es,
            "k1",
            &with(&|c| {
                c.as_object_mut().unwrap().remove("exp");
            }),
        ),
        "`exp` is missing",
    )
    .await;
    check_refused(
        &s,
        &assertion(
            &s.es,
            "k1",
            &with(&|c| {
                c.as_object_mut().unwrap().remove("jti");
            }),
        ),
        "`jti`",
    )
    .await;
    check_refused(
        &s,
        &assertion(&s.es, "k1", &with(&|c| c["iat"] = json!(now() + 600))),
        "`iat` is in the future",
    )
    .await;
    check_refused_as(
        &s,
        "urn:example:unknown",
        &assertion(&s.es, "k1", &good_claims()),
        "unsupported client_assertion_type",
    )
    .await;
}

#[tokio::test]
async fn an_assertion_is_single_use() {
    let s = setup().await;
    let a = assertion(&s.es, "k1", &good_claims());
    let (status, body) = token(&s.f, CLIENT_ASSERTION_TYPE_JWT_BEARER, &a, ISSUER).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    check_refused(&s, &a, "already used").await;
    // The refusal did not consume anything else: a fresh one works.
    let (status, body) = token(
        &s.f,
        CLIENT_ASSERTION_TYPE_JWT_BEARER,
        &assertion(&s.es, "k1", &good_claims()),
        ISSUER,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn registrations_with_unusable_keys_are_refused_at_start() {
    let ok = Key::es256();
    let mut private = ok.jwk();
    private["d"] = json!("c2VjcmV0");
    let mut hs = json!({"kty": "oct", "k": "c2VjcmV0"});
    hs["kid"] = json!("h");
    let cases = [
        (json!({"keys": [private]}), "private member `d`"),
        (json!({"keys": [hs]}), "private member `k`"),
        (json!({"keys": []}), "no key"),
        (json!({"nokeys": 1}), "no `keys`"),
        (json!({"keys": [ok.jwk(), Key::ed25519().jwk()]}), "`kid`"),
        (
            json!({"keys": [{"kty": "EC", "crv": "P-384", "x": "AA", "y": "AA"}]}),
            "p-256",
        ),
    ];
    for (jwks, why) in cases {
        let mut config = StsConfig::new(ISSUER);
        config.jwt_clients.push(JwtClientRegistration {
            client_id: CLIENT.into(),
            jwks,
            uri: CLIENT_URI.into(),
        });
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
        let err = keyless_sts::Sts::open(store, keys, identity, events, config)
            .await
            .unwrap_err();
        assert_eq!(err.oauth_code(), "server_error");
        assert!(err.to_string().contains(why), "`{err}` should say `{why}`");
    }
}

#[tokio::test]
async fn metadata_advertises_private_key_jwt() {
    let s = setup().await;
    let doc = keyless_sts::http::metadata_document(&s.f.sts);
    let methods = doc["token_endpoint_auth_methods_supported"].to_string();
    assert!(methods.contains("private_key_jwt"), "{methods}");
    let types = doc["client_assertion_types_supported"].to_string();
    assert!(types.contains(CLIENT_ASSERTION_TYPE_JWT_BEARER), "{types}");
}

#[tokio::test]
async fn an_assertion_spent_on_one_replica_is_refused_on_another() {
    let Some(url) = keyless_store::testing::fresh_postgres_database("sts_client_assertion").await
    else {
        return;
    };
    let es = Key::es256();
    let ed = Key::ed25519();
    let config = || {
        let mut c = StsConfig::new(ISSUER);
        c.jwt_clients.push(JwtClientRegistration {
            client_id: CLIENT.into(),
            jwks: jwks(&es, &ed),
            uri: CLIENT_URI.into(),
        });
        c
    };
    let tmp = tempfile::tempdir().unwrap();
    let a = open_with(
        keyless_store::Store::open(&url).await.unwrap(),
        &tmp.path().join("keys"),
        config(),
    )
    .await;
    let b = open_with(
        keyless_store::Store::open(&url).await.unwrap(),
        &tmp.path().join("keys"),
        config(),
    )
    .await;
    let one = assertion(&es, "k1", &good_claims());
    a.sts
        .authenticate_client_assertion(CLIENT_ASSERTION_TYPE_JWT_BEARER, &one)
        .await
        .unwrap();
    let err = b
        .sts
        .authenticate_client_assertion(CLIENT_ASSERTION_TYPE_JWT_BEARER, &one)
        .await
        .unwrap_err();
    assert_eq!(err.oauth_code(), "invalid_client");
    assert!(err.to_string().contains("already used"), "{err}");
}
