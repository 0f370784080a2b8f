//! The Vault wire format through the router (`oneshot`): envelope, error
//! shapes, token headers, KV v2 routes, leases, wrapping.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::*;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

struct Reply {
    status: StatusCode,
    body: Value,
}

async fn call(
    f: &Fixture,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> Reply {
    call_with(f, method, path, token, body, &[]).await
}

async fn call_with(
    f: &Fixture,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
    headers: &[(&str, &str)],
) -> Reply {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(t) = token {
        req = req.header("X-Vault-Token", t);
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let body = body
        .map(|b| Body::from(b.to_string()))
        .unwrap_or_else(Body::empty);
    let resp = keyless_secrets::http::router(f.secrets.clone())
        .oneshot(req.body(body).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or_else(|_| panic!("not JSON: {bytes:?}"))
    };
    Reply { status, body }
}

fn assert_envelope(v: &Value) {
    for k in [
        "request_id",
        "lease_id",
        "renewable",
        "lease_duration",
        "data",
        "wrap_info",
        "warnings",
        "auth",
    ] {
        assert!(v.get(k).is_some(), "envelope lacks `{k}`: {v}");
    }
}

const KV_POLICY: &str = r#"
path "secret/data/app/*" { capabilities = ["create", "read", "update", "delete"] }
path "secret/metadata/app/*" { capabilities = ["read", "list"] }
path "secret/metadata/" { capabilities = ["list"] }
"#;

async fn kv_token(f: &Fixture) -> String {
    f.secrets.write_policy("kv", KV_POLICY).await.unwrap();
    f.login("kv", &["kv"]).await.token
}

#[tokio::test]
async fn health_answers_like_vault() {
    let f = open().await;
    let r = call(&f, "GET", "/v1/sys/health", None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["initialized"], true);
    assert_eq!(r.body["sealed"], false);
}

#[tokio::test]
async fn jwt_login_returns_the_vault_auth_object() {
    let f = open().await;
    f.role("agents", "spiffe://example.org/agent/*", &["kv"])
        .await;
    let jwt = f.svid(AGENT, AUD).await;
    let r = call(
        &f,
        "POST",
        "/v1/auth/jwt/login",
        None,
        Some(json!({"role": "agents", "jwt": jwt})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_envelope(&r.body);
    let auth = &r.body["auth"];
    for k in [
        "client_token",
        "accessor",
        "policies",
        "token_policies",
        "metadata",
        "lease_duration",
        "renewable",
        "entity_id",
        "token_type",
        "orphan",
        "num_uses",
    ] {
        assert!(auth.get(k).is_some(), "auth lacks `{k}`: {auth}");
    }
    assert!(auth["client_token"].as_str().unwrap().starts_with("hvs."));
    assert_eq!(auth["policies"], json!(["default", "kv"]));
    assert_eq!(auth["token_type"], "service");
    assert_eq!(auth["lease_duration"], 3600);
    assert_eq!(auth["metadata"]["role"], "agents");

    // lookup-self with the token (also as a Bearer token).
    let token = auth["client_token"].as_str().unwrap().to_owned();
    let r = call(&f, "GET", "/v1/auth/token/lookup-self", Some(&token), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_envelope(&r.body);
    assert_eq!(r.body["data"]["id"], token.as_str());
    assert_eq!(r.body["data"]["type"], "service");
    assert_eq!(r.body["data"]["meta"]["spiffe_id"], AGENT);
    let r = call_with(
        &f,
        "GET",
        "/v1/auth/token/lookup-self",
        None,
        None,
        &[("Authorization", &format!("Bearer {token}"))],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);

    // renew-self with an increment, then revoke-self: the token is dead.
    let r = call(
        &f,
        "POST",
        "/v1/auth/token/renew-self",
        Some(&token),
        Some(json!({"increment": "10m"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["auth"]["lease_duration"], 600);
    let r = call(&f, "POST", "/v1/auth/token/revoke-self", Some(&token), None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = call(&f, "GET", "/v1/auth/token/lookup-self", Some(&token), None).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.body, json!({"errors": ["permission denied"]}));
}

#[tokio::test]
async fn login_refusals_are_400_with_a_reason() {
    let f = open().await;
    f.role("agents", AGENT, &[]).await;
    let jwt = f.svid(AGENT, AUD).await;
    let r = call(
        &f,
        "POST",
        "/v1/auth/jwt/login",
        None,
        Some(json!({"role": "nope", "jwt": jwt})),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        r.body,
        json!({"errors": ["role \"nope\" could not be found"]})
    );
    let r = call(
        &f,
        "POST",
        "/v1/auth/jwt/login",
        None,
        Some(json!({"role": "agents", "jwt": "x.y.z"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(
        r.body["errors"][0]
            .as_str()
            .unwrap()
            .starts_with("error validating token: ")
    );
    let r = call(
        &f,
        "POST",
        "/v1/auth/jwt/login",
        None,
        Some(json!(["not", "an", "object"])),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = call(&f, "GET", "/v1/auth/jwt/login", None, None).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn unknown_token_and_denied_path_are_403_permission_denied() {
    let f = open().await;
    let token = kv_token(&f).await;
    for t in [None, Some("hvs.unknown")] {
        let r = call(&f, "GET", "/v1/secret/data/app/x", t, None).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN);
        assert_eq!(r.body, json!({"errors": ["permission denied"]}));
    }
    let r = call(&f, "GET", "/v1/secret/data/other/x", Some(&token), None).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.body, json!({"errors": ["permission denied"]}));
}

#[tokio::test]
async fn kv_v2_put_get_versions_list_and_404() {
    let f = open().await;
    let token = kv_token(&f).await;
    let r = call(&f, "GET", "/v1/secret/data/app/missing", Some(&token), None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.body, json!({"errors": []}));

    let r = call(
        &f,
        "POST",
        "/v1/secret/data/app/db",
        Some(&token),
        Some(json!({"data": {"password": "one"}})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_envelope(&r.body);
    assert_eq!(r.body["data"]["version"], 1);
    let r = call(
        &f,
        "PUT",
        "/v1/secret/data/app/db",
        Some(&token),
        Some(json!({"data": {"password": "two"}, "options": {"cas": 1}})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["data"]["version"], 2);
    // A stale cas is refused and changes nothing.
    let r = call(
        &f,
        "PUT",
        "/v1/secret/data/app/db",
        Some(&token),
        Some(json!({"data": {"password": "x"}, "options": {"cas": 1}})),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);

    let r = call(&f, "GET", "/v1/secret/data/app/db", Some(&token), None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_envelope(&r.body);
    assert_eq!(r.body["data"]["data"], json!({"password": "two"}));
    assert_eq!(r.body["data"]["metadata"]["version"], 2);
    let r = call(
        &f,
        "GET",
        "/v1/secret/data/app/db?version=1",
        Some(&token),
        None,
    )
    .await;
    assert_eq!(r.body["data"]["data"], json!({"password": "one"}));

    let r = call(&f, "GET", "/v1/secret/metadata/app/db", Some(&token), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["data"]["current_version"], 2);

    for (method, path) in [
        ("LIST", "/v1/secret/metadata/app"),
        ("GET", "/v1/secret/metadata/app/?list=true"),
    ] {
        let r = call(&f, method, path, Some(&token), None).await;
        assert_eq!(r.status, StatusCode::OK, "{method} {path}: {}", r.body);
        assert_eq!(r.body["data"]["keys"], json!(["db"]));
    }
    let r = call(&f, "LIST", "/v1/secret/metadata/", Some(&token), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["data"]["keys"], json!(["app/"]));

    // Soft delete of the latest version: 404 with metadata, then undelete is denied by policy.
    let r = call(&f, "DELETE", "/v1/secret/data/app/db", Some(&token), None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = call(&f, "GET", "/v1/secret/data/app/db", Some(&token), None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.body["data"]["data"], Value::Null);
    let r = call(
        &f,
        "POST",
        "/v1/secret/undelete/app/db",
        Some(&token),
        Some(json!({"versions": [2]})),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);

    // Reads are audit events.
    assert!(f.event_kinds().contains(&"secret.read".to_owned()));
}

#[tokio::test]
async fn create_only_policy_cannot_overwrite() {
    let f = open().await;
    f.secrets
        .write_policy(
            "create-only",
            r#"path "secret/data/drop/*" { capabilities = ["create"] }"#,
        )
        .await
        .unwrap();
    let token = f.login("c", &["create-only"]).await.token;
    let r = call(
        &f,
        "POST",
        "/v1/secret/data/drop/a",
        Some(&token),
        Some(json!({"data": {"k": "v"}})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let r = call(
        &f,
        "POST",
        "/v1/secret/data/drop/a",
        Some(&token),
        Some(json!({"data": {"k": "w"}})),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn wrapping_via_header_and_sys_wrapping_is_single_use() {
    let f = open().await;
    let token = kv_token(&f).await;
    call(
        &f,
        "POST",
        "/v1/secret/data/app/w",
        Some(&token),
        Some(json!({"data": {"k": "v"}})),
    )
    .await;
    let r = call_with(
        &f,
        "GET",
        "/v1/secret/data/app/w",
        Some(&token),
        None,
        &[("X-Vault-Wrap-TTL", "60s")],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_envelope(&r.body);
    assert_eq!(r.body["data"], Value::Null);
    let wrap = r.body["wrap_info"].clone();
    assert_eq!(wrap["ttl"], 60);
    assert_eq!(wrap["creation_path"], "secret/data/app/w");
    let wt = wrap["token"].as_str().unwrap().to_owned();

    let r = call(
        &f,
        "POST",
        "/v1/sys/wrapping/lookup",
        Some(&token),
        Some(json!({"token": wt})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["data"]["creation_path"], "secret/data/app/w");

    // Unwrap with the wrapping token itself as the request token.
    let r = call(&f, "POST", "/v1/sys/wrapping/unwrap", Some(&wt), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["data"]["data"], json!({"k": "v"}));
    let r = call(
        &f,
        "POST",
        "/v1/sys/wrapping/unwrap",
        Some(&token),
        Some(json!({"token": wt})),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        r.body,
        json!({"errors": ["wrapping token is not valid or does not exist"]})
    );

    // sys/wrapping/wrap wraps arbitrary data.
    let r = call_with(
        &f,
        "POST",
        "/v1/sys/wrapping/wrap",
        Some(&token),
        Some(json!({"a": 1})),
        &[("X-Vault-Wrap-TTL", "5m")],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let wt = r.body["wrap_info"]["token"].as_str().unwrap().to_owned();
    let r = call(
        &f,
        "POST",
        "/v1/sys/wrapping/unwrap",
        Some(&token),
        Some(json!({"token": wt})),
    )
    .await;
    assert_eq!(r.body["data"], json!({"a": 1}));

    let r = call_with(
        &f,
        "GET",
        "/v1/auth/token/lookup-self",
        Some(&token),
        None,
        &[("X-Vault-Wrap-TTL", "forever")],
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn leases_over_http_are_scoped_to_their_identity() {
    let f = open().await;
    let engine = f.fake_engine();
    f.secrets
        .write_policy(
            "leases",
            r#"path "sys/leases/revoke" { capabilities = ["update"] }"#,
        )
        .await
        .unwrap();
    let mine = f.login("me", &["leases"]).await;
    let theirs = f.login_as("them", OTHER, &["leases"]).await;
    let lease = f
        .secrets
        .issue_lease(new_lease(
            AGENT,
            1,
            Duration::from_secs(60),
            Duration::from_secs(120),
        ))
        .await
        .unwrap();
    let id = lease.lease_id.clone();

    let r = call(
        &f,
        "PUT",
        "/v1/sys/leases/lookup",
        Some(&mine.token),
        Some(json!({"lease_id": id})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["data"]["id"], id.as_str());
    // Another identity learns nothing about it.
    let r = call(
        &f,
        "PUT",
        "/v1/sys/leases/lookup",
        Some(&theirs.token),
        Some(json!({"lease_id": id})),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.body, json!({"errors": ["invalid lease"]}));

    let r = call(
        &f,
        "PUT",
        "/v1/sys/leases/renew",
        Some(&mine.token),
        Some(json!({"lease_id": id, "increment": 3600})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_envelope(&r.body);
    assert_eq!(r.body["lease_id"], id.as_str());
    assert!(r.body["lease_duration"].as_i64().unwrap() <= 120);
    assert!(r.body["warnings"][0].as_str().unwrap().contains("capped"));

    let r = call(
        &f,
        "PUT",
        "/v1/sys/leases/revoke",
        Some(&theirs.token),
        Some(json!({"lease_id": id})),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = call(
        &f,
        "PUT",
        "/v1/sys/leases/revoke",
        Some(&mine.token),
        Some(json!({"lease_id": id})),
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    assert_eq!(engine.revoked.lock().unwrap().len(), 1);

    // revoke-prefix needs sudo.
    let r = call(
        &f,
        "PUT",
        "/v1/sys/leases/revoke-prefix/fake/",
        Some(&mine.token),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    f.secrets
        .write_policy(
            "sudo",
            r#"path "sys/leases/revoke-prefix/*" { capabilities = ["update", "sudo"] }"#,
        )
        .await
        .unwrap();
    let admin = f.login("admin", &["sudo"]).await;
    f.secrets
        .issue_lease(new_lease(
            OTHER,
            2,
            Duration::from_secs(60),
            Duration::from_secs(120),
        ))
        .await
        .unwrap();
    let r = call(
        &f,
        "PUT",
        "/v1/sys/leases/revoke-prefix/fake/",
        Some(&admin.token),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    assert_eq!(engine.revoked.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn mount_preflight_says_secret_is_kv_v2() {
    let f = open().await;
    let token = kv_token(&f).await;
    let r = call(
        &f,
        "GET",
        "/v1/sys/internal/ui/mounts/secret/app/x",
        Some(&token),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["data"]["path"], "secret/");
    assert_eq!(r.body["data"]["options"]["version"], "2");
    let r = call(
        &f,
        "GET",
        "/v1/sys/internal/ui/mounts/secret/app/x",
        None,
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn policies_and_roles_over_vaults_admin_paths() {
    let f = open().await;
    f.secrets
        .write_policy(
            "operator",
            r#"
            path "sys/policies/acl/*" { capabilities = ["create", "read", "update", "delete"] }
            path "sys/policies/acl"   { capabilities = ["list"] }
            path "auth/jwt/role/*"    { capabilities = ["create", "read", "update", "delete", "list"] }
            "#,
        )
        .await
        .unwrap();
    let op = f.login("op", &["operator"]).await.token;
    let plain = kv_token(&f).await;

    let policy = json!({"policy": "path \"secret/data/team/*\" { capabilities = [\"read\"] }"});
    let r = call(
        &f,
        "PUT",
        "/v1/sys/policies/acl/team",
        Some(&plain),
        Some(policy.clone()),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = call(
        &f,
        "PUT",
        "/v1/sys/policies/acl/team",
        Some(&op),
        Some(policy),
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    let r = call(&f, "GET", "/v1/sys/policies/acl/team", Some(&op), None).await;
    assert!(
        r.body["data"]["policy"]
            .as_str()
            .unwrap()
            .contains("secret/data/team/*")
    );
    let r = call(&f, "LIST", "/v1/sys/policies/acl", Some(&op), None).await;
    assert!(
        r.body["data"]["keys"]
            .as_array()
            .unwrap()
            .contains(&json!("team"))
    );
    let r = call(
        &f,
        "PUT",
        "/v1/sys/policies/acl/broken",
        Some(&op),
        Some(json!({"policy": "path"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);

    let role = json!({
        "role_type": "jwt",
        "bound_audiences": [AUD],
        "bound_subject": AGENT,
        "user_claim": "sub",
        "token_policies": ["team"],
        "token_ttl": "5m",
    });
    let r = call(&f, "POST", "/v1/auth/jwt/role/team", Some(&op), Some(role)).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    let r = call(&f, "GET", "/v1/auth/jwt/role/team", Some(&op), None).await;
    assert_eq!(r.body["data"]["token_ttl"], 300);
    let jwt = f.svid(AGENT, AUD).await;
    let r = call(
        &f,
        "POST",
        "/v1/auth/jwt/login",
        None,
        Some(json!({"role": "team", "jwt": jwt})),
    )
    .await;
    assert_eq!(r.body["auth"]["policies"], json!(["default", "team"]));
    let r = call(
        &f,
        "POST",
        "/v1/auth/jwt/role/bad",
        Some(&op),
        Some(json!({"bound_audiences": []})),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = call(&f, "DELETE", "/v1/auth/jwt/role/team", Some(&op), None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = call(&f, "GET", "/v1/auth/jwt/role/team", Some(&op), None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

/// What the `bao`/`vault` CLI actually sends: `-versions=1,2` as strings,
/// and `null` as the body of commands without data (`bao unwrap`).
#[tokio::test]
async fn cli_shaped_bodies_string_versions_and_null_are_accepted() {
    let f = open().await;
    f.secrets
        .write_policy(
            "kv-admin",
            r#"
path "secret/data/cli/*" { capabilities = ["create", "read", "update"] }
path "secret/delete/cli/*" { capabilities = ["update"] }
path "secret/undelete/cli/*" { capabilities = ["update"] }
path "secret/destroy/cli/*" { capabilities = ["update"] }
"#,
        )
        .await
        .unwrap();
    let token = f.login("kv-admin", &["kv-admin"]).await.token;
    for v in ["one", "two"] {
        let r = call(
            &f,
            "POST",
            "/v1/secret/data/cli/x",
            Some(&token),
            Some(json!({"data": {"v": v}})),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    }
    let r = call(
        &f,
        "POST",
        "/v1/secret/delete/cli/x",
        Some(&token),
        Some(json!({"versions": ["1", "2"]})),
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    let r = call(&f, "GET", "/v1/secret/data/cli/x", Some(&token), None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = call(
        &f,
        "POST",
        "/v1/secret/undelete/cli/x",
        Some(&token),
        Some(json!({"versions": ["2"]})),
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    let r = call(&f, "GET", "/v1/secret/data/cli/x", Some(&token), None).await;
    assert_eq!(r.body["data"]["data"], json!({"v": "two"}));
    // Not a number: refused, nothing destroyed.
    let r = call(
        &f,
        "POST",
        "/v1/secret/destroy/cli/x",
        Some(&token),
        Some(json!({"versions": ["two"]})),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    let r = call(&f, "GET", "/v1/secret/data/cli/x", Some(&token), None).await;
    assert_eq!(r.body["data"]["data"], json!({"v": "two"}));

    // A `null` body is an empty request, not an error.
    let r = call(
        &f,
        "POST",
        "/v1/auth/token/lookup-self",
        Some(&token),
        Some(Value::Null),
    )
    .await;
    assert_ne!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
}
