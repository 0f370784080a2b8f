//! The STS's HTTP surface through `router(state)` and `oneshot`: RFC 6749
//! error shapes, the token-exchange grant, JWKS, metadata and consume.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use common::*;
use http_body_util::BodyExt;
use keyless_sts::{GRANT_TYPE_TOKEN_EXCHANGE, TOKEN_TYPE_ACCESS_TOKEN, TOKEN_TYPE_JWT};
use serde_json::{Value, json};
use tower::ServiceExt;

fn form(pairs: &[(&str, &str)]) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

async fn call(f: &Fixture, req: Request<Body>) -> (StatusCode, Value, axum::http::HeaderMap) {
    let resp = keyless_sts::http::router(f.sts.clone())
        .oneshot(req)
        .await
        .unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&body).unwrap_or(Value::Null),
        headers,
    )
}

fn post(path: &str, body: String) -> Request<Body> {
    Request::post(path)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(body))
        .unwrap()
}

async fn exchange_form(f: &Fixture, audience: &str, details: &Value) -> Vec<(String, String)> {
    let user = f.user_token(&[AGENT]).await;
    let actor = f.svid(AGENT, ISSUER).await;
    vec![
        ("grant_type".into(), GRANT_TYPE_TOKEN_EXCHANGE.into()),
        ("subject_token".into(), user),
        ("subject_token_type".into(), TOKEN_TYPE_ACCESS_TOKEN.into()),
        ("actor_token".into(), actor),
        ("actor_token_type".into(), TOKEN_TYPE_JWT.into()),
        ("audience".into(), audience.into()),
        ("authorization_details".into(), details.to_string()),
    ]
}

fn encode(pairs: &[(String, String)]) -> String {
    let refs: Vec<(&str, &str)> = pairs
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    form(&refs)
}

#[tokio::test]
async fn token_endpoint_exchanges_and_maps_every_error() {
    let f = open().await;
    f.consent(AGENT, &["directory_read", "directory_admin"])
        .await;
    let details = json!([{"type": "directory_read", "actions": ["read"], "datatypes": ["users"]}]);
    let pairs = exchange_form(&f, "directory", &details).await;

    let (status, body, headers) = call(&f, post("/oauth2/token", encode(&pairs))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(headers[header::CACHE_CONTROL], "no-store");
    assert_eq!(body["issued_token_type"], TOKEN_TYPE_ACCESS_TOKEN);
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 60);
    assert_eq!(body["authorization_details"], details);
    assert!(body.get("refresh_token").is_none());
    assert_eq!(
        jws_part(body["access_token"].as_str().unwrap(), 1)["act"]["sub"],
        AGENT
    );

    let with = |k: &str, v: Option<&str>| {
        let mut p: Vec<(String, String)> = pairs.iter().filter(|(n, _)| n != k).cloned().collect();
        if let Some(v) = v {
            p.push((k.into(), v.into()));
        }
        encode(&p)
    };
    let cases = [
        (
            with("actor_token_type", None),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            with("audience", Some("payroll")),
            StatusCode::BAD_REQUEST,
            "invalid_target",
        ),
        (
            with("authorization_details", Some(r#"[{"type":"nope"}]"#)),
            StatusCode::BAD_REQUEST,
            "invalid_authorization_details",
        ),
        (
            with(
                "authorization_details",
                Some(r#"[{"type":"directory_admin","actions":["delete_user"]}]"#),
            ),
            StatusCode::BAD_REQUEST,
            "access_denied",
        ),
        (
            with("grant_type", Some("password")),
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
        ),
        (
            with("client_secret", Some("s3cret")),
            StatusCode::UNAUTHORIZED,
            "invalid_client",
        ),
        (
            with("client_assertion", Some("x")),
            StatusCode::UNAUTHORIZED,
            "invalid_client",
        ),
        (
            format!("{}&subject_token=again", encode(&pairs)),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
    ];
    for (body, status, code) in cases {
        let (got, json, headers) = call(&f, post("/oauth2/token", body.clone())).await;
        assert_eq!(
            (got, json["error"].as_str().unwrap()),
            (status, code),
            "{json}"
        );
        assert!(
            json["error_description"]
                .as_str()
                .is_some_and(|d| !d.is_empty())
        );
        assert_eq!(headers[header::CACHE_CONTROL], "no-store");
    }
    let (_, json, _) = call(
        &f,
        post(
            "/oauth2/token",
            with(
                "authorization_details",
                Some(r#"[{"type":"directory_admin","actions":["delete_user"]}]"#),
            ),
        ),
    )
    .await;
    assert!(
        json["error_description"]
            .as_str()
            .unwrap()
            .contains("forbid-delete-user")
    );

    // Refusals before the exchange starts are recorded too.
    let last = f.events.events().pop().unwrap();
    assert_eq!(last.kind, "token_exchange.denied");
    let (_, _, _) = call(
        &f,
        post("/oauth2/token", with("client_secret", Some("s3cret"))),
    )
    .await;
    let last = f.events.events().pop().unwrap();
    assert_eq!(
        (last.kind.as_str(), last.detail["error"].as_str()),
        ("token_exchange.denied", Some("invalid_client"))
    );

    // Not a form.
    let req = Request::post("/oauth2/token")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from("{}"))
        .unwrap();
    let (status, json, _) = call(&f, req).await;
    assert_eq!(
        (status, json["error"].as_str().unwrap()),
        (StatusCode::BAD_REQUEST, "invalid_request")
    );
}

#[tokio::test]
async fn metadata_and_jwks_describe_the_issuer() {
    let f = open().await;
    let (status, meta, _) = call(
        &f,
        Request::get("/.well-known/oauth-authorization-server")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(meta["issuer"], ISSUER);
    assert_eq!(meta["token_endpoint"], format!("{ISSUER}/oauth2/token"));
    assert_eq!(meta["jwks_uri"], format!("{ISSUER}/oauth2/jwks"));
    assert!(
        meta["grant_types_supported"]
            .as_array()
            .unwrap()
            .contains(&json!(GRANT_TYPE_TOKEN_EXCHANGE))
    );
    assert_eq!(
        meta["authorization_details_types_supported"]
            .as_array()
            .unwrap()
            .len(),
        5
    );
    assert!(meta["token_endpoint_auth_methods_supported"].is_array());

    let (status, jwks, _) = call(
        &f,
        Request::get("/oauth2/jwks").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(jwks, f.sts.jwks());
}

#[tokio::test]
async fn consume_endpoint_is_authenticated_and_single_use() {
    let f = open().await;
    f.consent(AGENT, &["directory_read"]).await;
    let details = json!([{"type": "directory_read", "actions": ["read"]}]);
    let (_, body, _) = call(
        &f,
        post(
            "/oauth2/token",
            encode(&exchange_form(&f, "directory", &details).await),
        ),
    )
    .await;
    let obo = body["access_token"].as_str().unwrap().to_owned();
    let rs = f.svid("spiffe://example.org/demo/directory", ISSUER).await;
    let consume = |auth: Option<String>| {
        let mut req = Request::post("/oauth2/consume")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        if let Some(a) = auth {
            req = req.header(header::AUTHORIZATION, a);
        }
        req.body(Body::from(form(&[
            ("token", &obo),
            ("audience", "directory"),
        ])))
        .unwrap()
    };

    let (status, json, _) = call(&f, consume(None)).await;
    assert_eq!(
        (status, json["error"].as_str().unwrap()),
        (StatusCode::UNAUTHORIZED, "invalid_client")
    );
    let (status, _, _) = call(&f, consume(Some("Bearer not-a-jwt".into()))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let (status, json, _) = call(&f, consume(Some(format!("Bearer {rs}")))).await;
    assert_eq!(status, StatusCode::OK, "{json}");
    assert_eq!(json["consumed"], true);
    assert_eq!(json["act"]["sub"], AGENT);
    let (status, json, _) = call(&f, consume(Some(format!("Bearer {rs}")))).await;
    assert_eq!(
        (status, json["error"].as_str().unwrap()),
        (StatusCode::CONFLICT, "invalid_request")
    );
    assert!(
        json["error_description"]
            .as_str()
            .unwrap()
            .contains("already used")
    );
}
