//! X509-SVID login (`POST /v1/auth/cert/login`) through the router, with
//! the `PeerSvid` request extension the mTLS listener would insert, and
//! the cert roles (`auth/cert/certs/NAME`) that bind SPIFFE IDs.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::*;
use http_body_util::BodyExt;
use keyless_identity::PeerSvid;
use keyless_secrets::{CertRole, SecretsError};
use serde_json::{Value, json};
use tower::ServiceExt;

const NO_MATCH: &str =
    "no chain matching all constraints could be found for this login certificate";

fn peer(id: &str) -> PeerSvid {
    PeerSvid {
        spiffe_id: id.parse().unwrap(),
        leaf_der: vec![0x30, 0x03, 0x02, 0x01, 0x01],
    }
}

async fn call(
    f: &Fixture,
    method: &str,
    path: &str,
    token: Option<&str>,
    peer: Option<PeerSvid>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(t) = token {
        req = req.header("X-Vault-Token", t);
    }
    let body = body.map_or_else(Body::empty, |b| Body::from(b.to_string()));
    let mut req = req.body(body).unwrap();
    if let Some(p) = peer {
        req.extensions_mut().insert(p);
    }
    let resp = keyless_secrets::http::router(f.secrets.clone())
        .oneshot(req)
        .await
        .unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn cert_role(name: &str, allowed: &[&str], policies: &[&str]) -> CertRole {
    serde_json::from_value(json!({
        "name": name,
        "allowed_uri_sans": allowed,
        "token_policies": policies,
        "token_ttl": "30m",
    }))
    .unwrap()
}

async fn login(f: &Fixture, peer: Option<PeerSvid>, body: Option<Value>) -> (StatusCode, Value) {
    call(f, "POST", "/v1/auth/cert/login", None, peer, body).await
}

fn error_of(body: &Value) -> &str {
    body["errors"][0].as_str().unwrap_or("")
}

#[tokio::test]
async fn named_role_login_returns_the_jwt_login_auth_block() {
    let f = open().await;
    f.secrets
        .write_policy(
            "reader",
            r#"path "secret/data/app/*" { capabilities = ["read"] }"#,
        )
        .await
        .unwrap();
    f.secrets
        .write_cert_role(cert_role(
            "agents",
            &["spiffe://example.org/agent/*"],
            &["reader"],
        ))
        .await
        .unwrap();

    let (status, body) = login(&f, Some(peer(AGENT)), Some(json!({ "name": "agents" }))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let auth = &body["auth"];
    let token = auth["client_token"].as_str().unwrap().to_owned();
    assert!(token.starts_with("hvs."), "{token}");
    assert_eq!(auth["policies"], json!(["default", "reader"]));
    assert_eq!(auth["token_policies"], json!(["default", "reader"]));
    assert_eq!(auth["metadata"]["role"], "agents");
    assert_eq!(auth["metadata"]["spiffe_id"], AGENT);
    assert_eq!(auth["token_type"], "service");
    assert_eq!(auth["renewable"], true);
    assert_eq!(auth["lease_duration"], 1800);
    for k in ["accessor", "entity_id", "orphan", "num_uses", "metadata"] {
        assert!(auth.get(k).is_some(), "auth lacks `{k}`: {auth}");
    }

    // The token is a real broker token: lookup-self says how it was made,
    // and its policies are enforced.
    let (status, me) = call(
        &f,
        "GET",
        "/v1/auth/token/lookup-self",
        Some(&token),
        None,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{me}");
    assert_eq!(me["data"]["path"], "auth/cert/login");
    assert_eq!(me["data"]["display_name"], format!("cert-{AGENT}"));
    let info = f.secrets.resolve_token(Some(&token)).await.unwrap();
    assert_eq!(info.identity, AGENT);
    let acl = f.secrets.acl_for(&info.policies).await.unwrap();
    assert!(acl.allows("secret/data/app/db", keyless_secrets::Capability::Read));
    assert!(!acl.allows("secret/data/other", keyless_secrets::Capability::Read));

    assert!(
        f.events
            .events()
            .iter()
            .any(|e| e.kind == "secrets.login.success" && e.agent.as_deref() == Some(AGENT))
    );
}

#[tokio::test]
async fn login_without_a_name_uses_the_first_role_that_admits_the_svid() {
    let f = open().await;
    f.secrets
        .write_cert_role(cert_role("a-others", &[OTHER], &["p-other"]))
        .await
        .unwrap();
    f.secrets
        .write_cert_role(cert_role("b-helper", &[AGENT], &["p-helper"]))
        .await
        .unwrap();
    f.secrets
        .write_cert_role(cert_role("c-all", &["spiffe://example.org/*"], &["p-all"]))
        .await
        .unwrap();

    let (status, body) = login(&f, Some(peer(AGENT)), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["auth"]["metadata"]["role"], "b-helper");

    let (status, body) = login(&f, Some(peer(OTHER)), Some(json!({}))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["auth"]["metadata"]["role"], "a-others");
}

#[tokio::test]
async fn no_client_certificate_is_a_400_and_issues_nothing() {
    let f = open().await;
    f.secrets
        .write_cert_role(cert_role("agents", &["spiffe://example.org/*"], &[]))
        .await
        .unwrap();
    let (status, body) = login(&f, None, Some(json!({ "name": "agents" }))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(error_of(&body), "client certificate must be supplied");
    assert!(
        f.events
            .events()
            .iter()
            .any(|e| e.kind == "secrets.login.denied")
    );
    assert!(
        !f.events
            .events()
            .iter()
            .any(|e| e.kind == "secrets.login.success")
    );
}

#[tokio::test]
async fn roles_bind_the_spiffe_id() {
    let f = open().await;
    f.secrets
        .write_cert_role(cert_role("helper-only", &[AGENT], &[]))
        .await
        .unwrap();
    // Exact binding: another workload, even of the same trust domain, is refused.
    let (status, body) = login(
        &f,
        Some(peer(OTHER)),
        Some(json!({ "name": "helper-only" })),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(error_of(&body), NO_MATCH);
    // So is one of a different trust domain, and any workload without a role.
    let foreign = "spiffe://evil.example/agent/helper";
    let (status, body) = login(&f, Some(peer(foreign)), None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(error_of(&body), NO_MATCH);
    let (status, body) = login(&f, Some(peer(OTHER)), None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(error_of(&body), NO_MATCH);
    // An unknown role is named as such, as in JWT login.
    let (status, body) = login(&f, Some(peer(AGENT)), Some(json!({ "name": "nope" }))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(error_of(&body), "role \"nope\" could not be found");
    // Bad bodies are refused before anything else.
    let (status, _) = login(&f, Some(peer(AGENT)), Some(json!(["x"]))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = call(
        &f,
        "GET",
        "/v1/auth/cert/login",
        None,
        Some(peer(AGENT)),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn batch_cert_role_mints_a_batch_token() {
    let f = open().await;
    let mut role = cert_role("batch", &[AGENT], &[]);
    role.token_type = keyless_secrets::TokenType::Batch;
    f.secrets.write_cert_role(role).await.unwrap();
    let (status, body) = login(&f, Some(peer(AGENT)), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let token = body["auth"]["client_token"].as_str().unwrap();
    assert!(token.starts_with("hvb."), "{token}");
    let info = f.secrets.resolve_token(Some(token)).await.unwrap();
    assert_eq!(info.identity, AGENT);
}

#[tokio::test]
async fn bad_cert_roles_are_refused_and_change_nothing() {
    let f = open().await;
    let cases = [
        json!({ "name": "none", "token_policies": ["p"] }),
        json!({ "name": "not-spiffe", "allowed_uri_sans": ["https://example.org/x"] }),
        json!({ "name": "bad/name", "allowed_uri_sans": [AGENT] }),
        json!({ "name": "ttl", "allowed_uri_sans": [AGENT], "token_ttl": "2h", "token_max_ttl": "1h" }),
        json!({ "name": "zero", "allowed_uri_sans": [AGENT], "token_ttl": 0 }),
    ];
    for case in cases {
        let role: CertRole = serde_json::from_value(case.clone()).unwrap();
        let err = f.secrets.write_cert_role(role).await.unwrap_err();
        assert!(
            matches!(err, SecretsError::InvalidRequest(_)),
            "{case}: {err}"
        );
    }
    // Vault's CA field has no meaning here (the trust bundle is the CA).
    assert!(
        serde_json::from_value::<CertRole>(json!({
            "name": "ca", "allowed_uri_sans": [AGENT], "certificate": "-----BEGIN CERTIFICATE-----"
        }))
        .is_err()
    );
    assert!(f.secrets.list_cert_roles().await.unwrap().is_empty());
}

#[tokio::test]
async fn cert_roles_over_the_vault_paths() {
    let f = open().await;
    f.secrets
        .write_policy(
            "cert-admin",
            r#"path "auth/cert/certs/*" { capabilities = ["create", "read", "update", "delete", "list"] }"#,
        )
        .await
        .unwrap();
    let admin = f.login("admin", &["cert-admin"]).await.token;
    let plain = f.login("plain", &[]).await.token;

    let role = json!({ "allowed_uri_sans": "spiffe://example.org/agent/*", "token_policies": "a,b", "token_ttl": "10m" });
    let (status, body) = call(
        &f,
        "PUT",
        "/v1/auth/cert/certs/web",
        Some(&plain),
        None,
        Some(role.clone()),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(f.secrets.cert_role("web").await.unwrap().is_none());

    let (status, body) = call(
        &f,
        "PUT",
        "/v1/auth/cert/certs/web",
        Some(&admin),
        None,
        Some(role),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let (status, body) = call(
        &f,
        "GET",
        "/v1/auth/cert/certs/web",
        Some(&admin),
        None,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["data"]["allowed_uri_sans"],
        json!(["spiffe://example.org/agent/*"])
    );
    assert_eq!(body["data"]["token_policies"], json!(["a", "b"]));
    assert_eq!(body["data"]["token_ttl"], 600);
    let (status, body) = call(&f, "LIST", "/v1/auth/cert/certs", Some(&admin), None, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["keys"], json!(["web"]));

    let (status, _) = login(&f, Some(peer(AGENT)), Some(json!({ "name": "web" }))).await;
    assert_eq!(status, StatusCode::OK);

    let (status, _) = call(
        &f,
        "DELETE",
        "/v1/auth/cert/certs/web",
        Some(&admin),
        None,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = login(&f, Some(peer(AGENT)), Some(json!({ "name": "web" }))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}
