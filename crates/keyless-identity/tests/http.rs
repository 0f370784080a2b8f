//! The SPIFFE HTTP surface through `router(...)` with `oneshot`: federation
//! bundle, OIDC discovery and its JWKS, checked the way OpenBao's JWT auth
//! and SPIFFE federation consumers read them.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use common::*;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;
use x509_parser::prelude::*;

async fn get(
    identity: &std::sync::Arc<keyless_identity::Identity>,
    path: &str,
) -> (StatusCode, Option<String>, Value) {
    let response = keyless_identity::http::router(identity.clone())
        .oneshot(Request::get(path).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_owned());
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        content_type,
        serde_json::from_slice(&body).unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn federation_bundle_is_a_spiffe_jwks() {
    let dir = tempfile::tempdir().unwrap();
    let f = open_in(dir.path(), config(TD)).await.unwrap();
    let (status, content_type, body) = get(&f.identity, "/spiffe/bundle").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(content_type.as_deref(), Some("application/json"));
    assert!(body["spiffe_refresh_hint"].as_u64().unwrap() > 0);
    let seq = body["spiffe_sequence"].as_u64().unwrap();
    assert!(seq >= 1);

    let keys = body["keys"].as_array().unwrap();
    let x509: Vec<&Value> = keys.iter().filter(|k| k["use"] == "x509-svid").collect();
    let jwt: Vec<&Value> = keys.iter().filter(|k| k["use"] == "jwt-svid").collect();
    assert_eq!((x509.len(), jwt.len(), keys.len()), (1, 1, 2));

    let k = x509[0];
    assert!(k.get("kid").is_none(), "x509-svid keys carry no kid");
    assert_eq!(
        (k["kty"].as_str(), k["crv"].as_str()),
        (Some("EC"), Some("P-256"))
    );
    let x5c = k["x5c"].as_array().unwrap();
    assert_eq!(x5c.len(), 1);
    let root_der = STANDARD.decode(x5c[0].as_str().unwrap()).unwrap();
    assert_eq!(root_der, f.identity.x509_authorities()[0]);
    // x and y are the root certificate's key.
    let (_, root) = X509Certificate::from_der(&root_der).unwrap();
    let point = root.public_key().subject_public_key.data.to_vec();
    let b64u = |s: &Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(s.as_str().unwrap())
            .unwrap()
    };
    assert_eq!([vec![4u8], b64u(&k["x"]), b64u(&k["y"])].concat(), point);

    assert!(jwt[0]["kid"].as_str().is_some_and(|s| !s.is_empty()));

    // The sequence moves on every change of the trusted keys.
    f.identity.rotate_jwt_key().await.unwrap();
    let (_, _, after) = get(&f.identity, "/spiffe/bundle").await;
    assert!(after["spiffe_sequence"].as_u64().unwrap() > seq);
    assert_eq!(after["keys"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn oidc_discovery_document_points_at_the_keys() {
    let dir = tempfile::tempdir().unwrap();
    let f = open_in(dir.path(), config(TD)).await.unwrap();
    let (status, content_type, body) =
        get(&f.identity, "/spiffe/.well-known/openid-configuration").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(content_type.as_deref(), Some("application/json"));
    assert_eq!(
        body,
        json!({
            "issuer": "http://127.0.0.1:8180/spiffe",
            "jwks_uri": "http://127.0.0.1:8180/spiffe/keys",
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["ES256"],
        })
    );
    assert_eq!(body["issuer"], f.identity.issuer());
}

#[tokio::test]
async fn jwks_verifies_jwt_svids_with_an_independent_library() {
    let dir = tempfile::tempdir().unwrap();
    let f = open_in(dir.path(), config(TD)).await.unwrap();
    let (status, _, jwks) = get(&f.identity, "/spiffe/keys").await;
    assert_eq!(status, StatusCode::OK);
    let keys = jwks["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0]["use"], "sig");
    assert_eq!(keys[0]["alg"], "ES256");

    let entry = f
        .identity
        .create_entry(new_entry("spiffe://example.org/agent", &["unix:uid:1"]))
        .await
        .unwrap();
    let svid = f.identity.mint_jwt_svid(&entry, &["vault".into()]).unwrap();

    // What OpenBao does: find the key by kid in jwks_uri, check iss and aud.
    let set: jsonwebtoken::jwk::JwkSet = serde_json::from_value(jwks).unwrap();
    let header = jsonwebtoken::decode_header(&svid.token).unwrap();
    let jwk = set.find(header.kid.as_deref().unwrap()).unwrap();
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    validation.set_audience(&["vault"]);
    validation.set_issuer(&[f.identity.issuer()]);
    let data = jsonwebtoken::decode::<Value>(&svid.token, &key, &validation).unwrap();
    assert_eq!(data.claims["sub"], "spiffe://example.org/agent");
}

#[tokio::test]
async fn unknown_spiffe_paths_are_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let f = open_in(dir.path(), config(TD)).await.unwrap();
    let (status, _, _) = get(&f.identity, "/spiffe/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn errors_map_to_statuses_without_leaking_internals() {
    use keyless_identity::IdentityError;
    use keyless_identity::http::{error_response, error_status};
    assert_eq!(
        error_status(&IdentityError::NotFound("x".into())),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        error_status(&IdentityError::Conflict("x".into())),
        StatusCode::CONFLICT
    );
    assert_eq!(
        error_status(&IdentityError::InvalidEntry("x".into())),
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        error_status(&IdentityError::InvalidJwt("x".into())),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        error_status(&IdentityError::NoAuthority("x509 ca")),
        StatusCode::SERVICE_UNAVAILABLE
    );

    let client = error_response(&IdentityError::NotFound("abc".into()));
    let body = client.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap(),
        json!({"error": "registration entry `abc` not found"})
    );
    let server = error_response(&IdentityError::Corrupt(
        "table identity_x509_cas row 7".into(),
    ));
    assert_eq!(server.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let body = server.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap(),
        json!({"error": "internal error"})
    );
}
