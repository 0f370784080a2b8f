//! DPoP (RFC 9449) at the token endpoint and at consumption: a good proof
//! binds the OBO token (`cnf.jkt`, `token_type: DPoP`, shown by
//! introspection); every bad proof is `400 invalid_dpop_proof` with no
//! token issued; the resource-side verifier checks `ath` and the key; the
//! consume endpoint checks the proof before it burns the token.

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
use keyless_sts::dpop::{self, DPOP_HEADER};
use keyless_sts::{GRANT_TYPE_TOKEN_EXCHANGE, TOKEN_TYPE_ACCESS_TOKEN, TOKEN_TYPE_JWT};
use serde_json::{Value, json};
use tower::ServiceExt;

const TOKEN_ENDPOINT: &str = "http://127.0.0.1:8180/oauth2/token";
const RS_URL: &str = "https://directory.example/users";
const RS_ID: &str = "spiffe://example.org/demo/directory";

async fn call(f: &Fixture, req: Request<Body>) -> (StatusCode, Value) {
    let resp = keyless_sts::http::router(f.sts.clone())
        .oneshot(req)
        .await
        .unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

fn details() -> Value {
    json!([{"type": "directory_read", "actions": ["read"], "datatypes": ["users"]}])
}

async fn ready() -> Fixture {
    let f = open().await;
    f.consent(AGENT, &["directory_read"]).await;
    f
}

async fn token_form(f: &Fixture) -> String {
    let user = f.user_token(&[AGENT]).await;
    let actor = f.svid(AGENT, ISSUER).await;
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs([
            ("grant_type", GRANT_TYPE_TOKEN_EXCHANGE),
            ("subject_token", &user),
            ("subject_token_type", TOKEN_TYPE_ACCESS_TOKEN),
            ("actor_token", &actor),
            ("actor_token_type", TOKEN_TYPE_JWT),
            ("audience", "directory"),
            ("authorization_details", &details().to_string()),
        ])
        .finish()
}

fn token_request(form: String, proofs: &[&str]) -> Request<Body> {
    let mut req = Request::post("/oauth2/token")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
    for p in proofs {
        req = req.header(DPOP_HEADER, *p);
    }
    req.body(Body::from(form)).unwrap()
}

fn header(key: &Key) -> Value {
    json!({"typ": "dpop+jwt", "alg": key.alg(), "jwk": key.jwk()})
}

fn claims(htm: &str, htu: &str) -> Value {
    json!({"jti": jti(), "htm": htm, "htu": htu, "iat": now()})
}

/// A good proof for the token endpoint.
fn proof(key: &Key) -> String {
    key.sign(&header(key), &claims("POST", TOKEN_ENDPOINT))
}

/// A good proof for the resource server's request carrying `token`.
fn rs_proof(key: &Key, token: &str) -> String {
    let mut c = claims("GET", RS_URL);
    c["ath"] = json!(dpop::access_token_hash(token));
    key.sign(&header(key), &c)
}

fn successes(f: &Fixture) -> usize {
    f.event_kinds()
        .iter()
        .filter(|k| *k == "token_exchange.success")
        .count()
}

/// A request with `proofs` must be refused as `invalid_dpop_proof`,
/// mentioning `why`, with no token issued.
async fn check_refused(f: &Fixture, proofs: &[&str], why: &str) {
    let before = successes(f);
    let (status, body) = call(f, token_request(token_form(f).await, proofs)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{why}: {body}");
    assert_eq!(body["error"], "invalid_dpop_proof", "{why}: {body}");
    assert!(body.get("access_token").is_none());
    let description = body["error_description"].as_str().unwrap();
    assert!(description.contains(why), "{description} should say {why}");
    assert_eq!(successes(f), before, "{why}: a token was issued");
    assert_eq!(
        f.event_kinds().last().map(String::as_str),
        Some("token_exchange.denied")
    );
}

#[tokio::test]
async fn a_good_proof_binds_the_obo_token_to_its_key() {
    let f = ready().await;
    for key in [Key::es256(), Key::ed25519()] {
        let (status, body) = call(&f, token_request(token_form(&f).await, &[&proof(&key)])).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["token_type"], "DPoP");
        let token = body["access_token"].as_str().unwrap();
        let claims = jws_part(token, 1);
        assert_eq!(claims["cnf"]["jkt"], key.thumbprint(), "{}", key.alg());
        assert!(claims["cnf"].get("x5t#S256").is_none());

        let introspection = f.sts.introspect(token).await.unwrap();
        assert_eq!(introspection["active"], true);
        assert_eq!(introspection["token_type"], "DPoP");
        assert_eq!(introspection["cnf"]["jkt"], key.thumbprint());
    }
    // Without a proof the same request still gets a plain bearer token.
    let (status, body) = call(&f, token_request(token_form(&f).await, &[])).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert!(jws_part(body["access_token"].as_str().unwrap(), 1)["cnf"].is_null());
    // The query of the URL is not part of `htu`.
    let key = Key::es256();
    let p = key.sign(
        &header(&key),
        &claims("POST", &format!("{TOKEN_ENDPOINT}?x=1#frag")),
    );
    let (status, body) = call(&f, token_request(token_form(&f).await, &[&p])).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn bad_proofs_are_invalid_dpop_proof_and_issue_nothing() {
    let f = ready().await;
    let key = Key::es256();
    let other = Key::es256();
    let good_claims = || claims("POST", TOKEN_ENDPOINT);

    check_refused(&f, &["not-a-jwt"], "not a compact jws").await;
    let mut h = header(&key);
    h["typ"] = json!("JWT");
    check_refused(&f, &[&key.sign(&h, &good_claims())], "typ").await;
    let mut h = header(&key);
    h["alg"] = json!("none");
    check_refused(
        &f,
        &[&key.sign(&h, &good_claims())],
        "unsupported algorithm `none`",
    )
    .await;
    let mut h = header(&key);
    h["alg"] = json!("HS256");
    check_refused(
        &f,
        &[&key.sign(&h, &good_claims())],
        "unsupported algorithm `HS256`",
    )
    .await;
    // An algorithm that does not fit the key type.
    let mut h = header(&key);
    h["alg"] = json!("EdDSA");
    check_refused(&f, &[&key.sign(&h, &good_claims())], "does not fit").await;
    let mut h = header(&key);
    h["jwk"]["d"] = json!("c2VjcmV0");
    check_refused(&f, &[&key.sign(&h, &good_claims())], "private member `d`").await;
    let mut h = header(&key);
    h.as_object_mut().unwrap().remove("jwk");
    check_refused(&f, &[&key.sign(&h, &good_claims())], "no `jwk`").await;
    // Signed by another key than the one in the header.
    check_refused(
        &f,
        &[&other.sign(&header(&key), &good_claims())],
        "signature",
    )
    .await;
    check_refused(
        &f,
        &[&key.sign(&header(&key), &claims("GET", TOKEN_ENDPOINT))],
        "`htm`",
    )
    .await;
    check_refused(
        &f,
        &[&key.sign(
            &header(&key),
            &claims("POST", "http://127.0.0.1:8180/oauth2/introspect"),
        )],
        "`htu`",
    )
    .await;
    let mut c = good_claims();
    c["iat"] = json!(now() - 600);
    check_refused(&f, &[&key.sign(&header(&key), &c)], "too old").await;
    let mut c = good_claims();
    c["iat"] = json!(now() + 600);
    check_refused(&f, &[&key.sign(&header(&key), &c)], "future").await;
    let mut c = good_claims();
    c["ath"] = json!("abc");
    check_refused(&f, &[&key.sign(&header(&key), &c)], "`ath`").await;
    let mut c = good_claims();
    c.as_object_mut().unwrap().remove("jti");
    check_refused(&f, &[&key.sign(&header(&key), &c)], "`jti`").await;
    // Two proofs on one request.
    check_refused(&f, &[&proof(&key), &proof(&key)], "more than one").await;
}

#[tokio::test]
async fn a_proof_is_single_use() {
    let f = ready().await;
    let key = Key::es256();
    let p = proof(&key);
    let (status, body) = call(&f, token_request(token_form(&f).await, &[&p])).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    check_refused(&f, &[&p], "already used").await;
    // The same jti from another key is another proof.
    let mut c = jws_part(&p, 1);
    c["iat"] = json!(now());
    let other = Key::es256();
    let (status, body) = call(
        &f,
        token_request(token_form(&f).await, &[&other.sign(&header(&other), &c)]),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[test]
fn the_resource_verifier_checks_ath_and_the_bound_key() {
    let key = Key::es256();
    let token = "header.payload.signature";
    let p = rs_proof(&key, token);
    let ok =
        dpop::verify_for_resource(&p, "GET", RS_URL, token, &key.thumbprint(), now(), 5).unwrap();
    assert_eq!(ok.jkt, key.thumbprint());
    assert_eq!(ok.htm, "GET");

    let err = |r: Result<dpop::DpopProof, keyless_sts::StsError>| {
        let e = r.unwrap_err();
        assert_eq!(e.oauth_code(), "invalid_dpop_proof");
        e.to_string()
    };
    // Another token than the one the proof hashes.
    assert!(
        err(dpop::verify_for_resource(
            &p,
            "GET",
            RS_URL,
            "other.token.here",
            &key.thumbprint(),
            now(),
            5
        ))
        .contains("`ath`")
    );
    // A token bound to another key.
    assert!(
        err(dpop::verify_for_resource(
            &p,
            "GET",
            RS_URL,
            token,
            &Key::es256().thumbprint(),
            now(),
            5
        ))
        .contains("bound")
    );
    // No `ath` at a resource.
    let bare = key.sign(&header(&key), &claims("GET", RS_URL));
    assert!(
        err(dpop::verify_for_resource(
            &bare,
            "GET",
            RS_URL,
            token,
            &key.thumbprint(),
            now(),
            5
        ))
        .contains("`ath` is missing")
    );
    // Another method or URL.
    assert!(
        err(dpop::verify_for_resource(
            &p,
            "POST",
            RS_URL,
            token,
            &key.thumbprint(),
            now(),
            5
        ))
        .contains("`htm`")
    );
    assert!(
        err(dpop::verify_for_resource(
            &p,
            "GET",
            "https://bank.example/users",
            token,
            &key.thumbprint(),
            now(),
            5
        ))
        .contains("`htu`")
    );
}

fn consume_request(rs: &str, token: &str, dpop: Option<(&str, &str, &str)>) -> Request<Body> {
    let mut pairs = vec![("token", token), ("audience", "directory")];
    if let Some((p, m, u)) = dpop {
        pairs.extend([("dpop_proof", p), ("dpop_htm", m), ("dpop_htu", u)]);
    }
    Request::post("/oauth2/consume")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(header::AUTHORIZATION, format!("Bearer {rs}"))
        .body(Body::from(
            url::form_urlencoded::Serializer::new(String::new())
                .extend_pairs(pairs)
                .finish(),
        ))
        .unwrap()
}

#[tokio::test]
async fn consume_checks_the_proof_before_burning_the_token() {
    let f = ready().await;
    let key = Key::es256();
    let (_, body) = call(&f, token_request(token_form(&f).await, &[&proof(&key)])).await;
    let token = body["access_token"].as_str().unwrap().to_owned();
    let rs = f.svid(RS_ID, ISSUER).await;

    // A proof by another key, and a proof for another token: refused, and
    // the token is still unspent.
    let thief = Key::es256();
    for (bad, why) in [
        (rs_proof(&thief, &token), "bound"),
        (rs_proof(&key, "another.access.token"), "`ath`"),
    ] {
        let (status, body) = call(
            &f,
            consume_request(&rs, &token, Some((&bad, "GET", RS_URL))),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(body["error"], "invalid_dpop_proof");
        assert!(
            body["error_description"].as_str().unwrap().contains(why),
            "{body}"
        );
    }
    // Incomplete dpop fields.
    let good = rs_proof(&key, &token);
    let req = Request::post("/oauth2/consume")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(header::AUTHORIZATION, format!("Bearer {rs}"))
        .body(Body::from(format!(
            "token={token}&audience=directory&dpop_proof={good}"
        )))
        .unwrap();
    let (status, body) = call(&f, req).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"], "invalid_request");

    let (status, body) = call(
        &f,
        consume_request(&rs, &token, Some((&good, "GET", RS_URL))),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["consumed"], true);
    assert_eq!(body["dpop_checked"], true);
    assert_eq!(body["cnf"]["jkt"], key.thumbprint());
}

#[tokio::test]
async fn consume_without_a_proof_reports_the_binding() {
    let f = ready().await;
    let key = Key::es256();
    let (_, body) = call(&f, token_request(token_form(&f).await, &[&proof(&key)])).await;
    let token = body["access_token"].as_str().unwrap().to_owned();
    let rs = f.svid(RS_ID, ISSUER).await;
    let (status, body) = call(&f, consume_request(&rs, &token, None)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["dpop_checked"], false);
    assert_eq!(body["cnf"]["jkt"], key.thumbprint());

    // A bearer token cannot be "checked" with a proof.
    let (_, body) = call(&f, token_request(token_form(&f).await, &[])).await;
    let bearer = body["access_token"].as_str().unwrap().to_owned();
    let p = rs_proof(&key, &bearer);
    let (status, body) = call(&f, consume_request(&rs, &bearer, Some((&p, "GET", RS_URL)))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"], "invalid_dpop_proof");
}

#[tokio::test]
async fn metadata_advertises_dpop_algorithms() {
    let f = open().await;
    let doc = keyless_sts::http::metadata_document(&f.sts);
    let algs: Vec<&str> = doc["dpop_signing_alg_values_supported"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(algs.contains(&"ES256") && algs.contains(&"EdDSA"));
    assert!(!algs.iter().any(|a| a.starts_with("HS") || *a == "none"));
    // No mTLS listener configured: nothing claims certificate binding.
    assert!(
        doc.get("tls_client_certificate_bound_access_tokens")
            .is_none()
    );
    assert!(doc.get("mtls_endpoint_aliases").is_none());
}

#[tokio::test]
async fn an_mtls_peer_svid_binds_the_certificate() {
    // What the binary's TLS listener inserts after verifying the chain.
    let peer = keyless_sts::PeerSvid {
        spiffe_id: AGENT.parse().unwrap(),
        leaf_der: b"leaf certificate der".to_vec(),
    };
    let f = ready().await;
    let key = Key::es256();
    let mut req = token_request(token_form(&f).await, &[&proof(&key)]);
    req.extensions_mut().insert(peer.clone());
    let (status, body) = call(&f, req).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let claims = jws_part(body["access_token"].as_str().unwrap(), 1);
    assert_eq!(claims["cnf"]["x5t#S256"], peer.x5t_s256());
    assert_eq!(claims["cnf"]["jkt"], key.thumbprint());
    // Independently: base64url(SHA-256(DER)).
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b"leaf certificate der");
    assert_eq!(peer.x5t_s256(), jose::b64(digest.as_ref()));

    // Certificate only: still a Bearer token (RFC 8705), but bound.
    let mut req = token_request(token_form(&f).await, &[]);
    req.extensions_mut().insert(peer.clone());
    let (status, body) = call(&f, req).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    let token = body["access_token"].as_str().unwrap();
    assert_eq!(jws_part(token, 1)["cnf"]["x5t#S256"], peer.x5t_s256());
    let introspection = f.sts.introspect(token).await.unwrap();
    assert_eq!(introspection["cnf"]["x5t#S256"], peer.x5t_s256());
}

#[tokio::test]
async fn metadata_advertises_the_mtls_aliases_when_configured() {
    let tmp = tempfile::tempdir().unwrap();
    let store = keyless_store::Store::open_sqlite(&tmp.path().join("k.db"))
        .await
        .unwrap();
    let mut config = keyless_sts::StsConfig::new(ISSUER);
    config.mtls_base_url = Some("https://127.0.0.1:8443".into());
    let f = open_with(store, &tmp.path().join("keys"), config).await;
    let doc = keyless_sts::http::metadata_document(&f.sts);
    assert_eq!(doc["tls_client_certificate_bound_access_tokens"], true);
    assert_eq!(
        doc["mtls_endpoint_aliases"]["token_endpoint"],
        "https://127.0.0.1:8443/oauth2/token"
    );
    // A proof for the mTLS alias of the token endpoint is accepted.
    f.consent(AGENT, &["directory_read"]).await;
    let key = Key::es256();
    let p = key.sign(
        &header(&key),
        &claims("POST", "https://127.0.0.1:8443/oauth2/token"),
    );
    let (status, body) = call(&f, token_request(token_form(&f).await, &[&p])).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // An mTLS alias that is not https is a configuration error.
    let mut bad = keyless_sts::StsConfig::new(ISSUER);
    bad.mtls_base_url = Some("http://127.0.0.1:8443".into());
    let tmp2 = tempfile::tempdir().unwrap();
    let store2 = keyless_store::Store::open_sqlite(&tmp2.path().join("k.db"))
        .await
        .unwrap();
    let keys = std::sync::Arc::new(
        keyless_store::FileKeyManager::open(&tmp2.path().join("keys")).unwrap(),
    );
    let err = keyless_sts::Sts::open(store2, keys, f.identity.clone(), f.events.clone(), bad)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("mtls_base_url"), "{err}");
}

#[tokio::test]
async fn a_proof_spent_on_one_replica_is_refused_on_another() {
    let Some(url) = keyless_store::testing::fresh_postgres_database("sts_dpop_replay").await else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    // Two pools on one database stand for two replicas.
    let a = open_with(
        keyless_store::Store::open(&url).await.unwrap(),
        &tmp.path().join("keys"),
        keyless_sts::StsConfig::new(ISSUER),
    )
    .await;
    let b = open_with(
        keyless_store::Store::open(&url).await.unwrap(),
        &tmp.path().join("keys"),
        keyless_sts::StsConfig::new(ISSUER),
    )
    .await;
    let key = Key::es256();
    let p = proof(&key);
    let spent = a.sts.verify_token_request_proof(&p).await.unwrap();
    assert_eq!(spent.jkt, key.thumbprint());
    let err = b.sts.verify_token_request_proof(&p).await.unwrap_err();
    assert_eq!(err.oauth_code(), "invalid_dpop_proof");
    assert!(err.to_string().contains("already used"), "{err}");
    // A fresh proof still works on either.
    b.sts
        .verify_token_request_proof(&proof(&key))
        .await
        .unwrap();
}
