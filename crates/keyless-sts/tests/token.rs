//! RFC 9068 access tokens: what we mint, and the strict verification of
//! everything that is not exactly what we mint.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use common::*;
use keyless_store::KeyManager;
use keyless_sts::StsError;
use serde_json::{Value, json};

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Signs `header`.`claims` with the STS's real key.
async fn forge(f: &Fixture, header: &Value, claims: &Value) -> String {
    let signer = f.keys.load("sts-signing-1").await.unwrap();
    let input = format!(
        "{}.{}",
        b64(&serde_json::to_vec(header).unwrap()),
        b64(&serde_json::to_vec(claims).unwrap())
    );
    let sig = signer.sign(input.as_bytes()).unwrap();
    format!("{input}.{}", b64(&sig))
}

fn kid(f: &Fixture) -> String {
    f.sts.jwks()["keys"][0]["kid"].as_str().unwrap().to_owned()
}

fn good_claims() -> Value {
    json!({
        "iss": ISSUER, "sub": ALICE, "aud": ISSUER, "client_id": "keyless-console",
        "iat": now(), "exp": now() + 300, "jti": "j1",
    })
}

#[tokio::test]
async fn minted_access_token_has_the_rfc9068_shape_and_verifies() {
    let f = open().await;
    let token = f.user_token(&[AGENT, OTHER_AGENT]).await;
    let header = jws_part(&token, 0);
    assert_eq!(header["alg"], "ES256");
    assert_eq!(header["typ"], "at+jwt");
    assert_eq!(header["kid"], kid(&f));
    let claims = jws_part(&token, 1);
    for c in [
        "iss",
        "sub",
        "aud",
        "client_id",
        "iat",
        "exp",
        "jti",
        "sid",
        "scope",
    ] {
        assert!(claims.get(c).is_some(), "missing {c}");
    }
    assert_eq!(claims["iss"], ISSUER);
    assert_eq!(claims["aud"], ISSUER);
    assert_eq!(claims["may_act"]["sub"], json!([AGENT, OTHER_AGENT]));
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        600
    );

    let verified = f
        .sts
        .verify_access_token(&token, Some(ISSUER))
        .await
        .unwrap();
    assert_eq!(verified.sub, ALICE);
    assert!(!verified.is_obo());
    assert!(f.event_kinds().contains(&"token.issued".to_owned()));

    // The JWKS carries the public key the kid names.
    let jwk = &f.sts.jwks()["keys"][0];
    assert_eq!(jwk["kty"], "EC");
    assert_eq!(jwk["crv"], "P-256");
    assert_eq!(jwk["alg"], "ES256");
    assert!(jwk.get("d").is_none());
}

#[tokio::test]
async fn verification_refuses_everything_we_did_not_mint() {
    let f = open().await;
    let kid = kid(&f);
    let header = json!({"alg": "ES256", "typ": "at+jwt", "kid": kid});

    // The baseline forgery is accepted: each case below changes one thing.
    let ok = forge(&f, &header, &good_claims()).await;
    f.sts.verify_access_token(&ok, Some(ISSUER)).await.unwrap();

    let mut cases: Vec<(&str, String, Option<&str>, &str)> = Vec::new();
    let with = |k: &str, v: Value| {
        let mut c = good_claims();
        c[k] = v;
        c
    };

    // alg none, unsigned.
    let none = format!(
        "{}.{}.",
        b64(&serde_json::to_vec(&json!({"alg": "none", "typ": "at+jwt", "kid": kid})).unwrap()),
        b64(&serde_json::to_vec(&good_claims()).unwrap())
    );
    cases.push((
        "alg none",
        none,
        Some(ISSUER),
        "unsupported algorithm `none`",
    ));

    // HS256 keyed with our public key (the classic algorithm confusion).
    let public = f
        .keys
        .load("sts-signing-1")
        .await
        .unwrap()
        .public_key()
        .to_vec();
    let h = json!({"alg": "HS256", "typ": "at+jwt", "kid": kid});
    let input = format!(
        "{}.{}",
        b64(&serde_json::to_vec(&h).unwrap()),
        b64(&serde_json::to_vec(&good_claims()).unwrap())
    );
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &public);
    let mac = aws_lc_rs::hmac::sign(&key, input.as_bytes());
    cases.push((
        "hs256 with the public key",
        format!("{input}.{}", b64(mac.as_ref())),
        Some(ISSUER),
        "unsupported algorithm `HS256`",
    ));

    let unknown_kid = forge(
        &f,
        &json!({"alg": "ES256", "typ": "at+jwt", "kid": "nope"}),
        &good_claims(),
    )
    .await;
    cases.push(("unknown kid", unknown_kid, Some(ISSUER), "unknown key id"));
    let no_kid = forge(
        &f,
        &json!({"alg": "ES256", "typ": "at+jwt"}),
        &good_claims(),
    )
    .await;
    cases.push(("no kid", no_kid, Some(ISSUER), "missing `kid`"));
    for typ in [
        json!("JWT"),
        json!("application/at+jwt"),
        json!("AT+JWT"),
        Value::Null,
    ] {
        let mut h = header.clone();
        if typ.is_null() {
            h.as_object_mut().unwrap().remove("typ");
        } else {
            h["typ"] = typ;
        }
        cases.push((
            "wrong typ",
            forge(&f, &h, &good_claims()).await,
            Some(ISSUER),
            "`typ` is not `at+jwt`",
        ));
    }
    let mut crit = header.clone();
    crit["crit"] = json!(["exp"]);
    cases.push((
        "crit",
        forge(&f, &crit, &good_claims()).await,
        Some(ISSUER),
        "critical",
    ));

    cases.push((
        "expired",
        forge(&f, &header, &with("exp", json!(now() - 60))).await,
        Some(ISSUER),
        "expired",
    ));
    cases.push((
        "nbf in the future",
        forge(&f, &header, &with("nbf", json!(now() + 300))).await,
        Some(ISSUER),
        "not yet valid",
    ));
    cases.push((
        "iat in the future",
        forge(&f, &header, &with("iat", json!(now() + 300))).await,
        Some(ISSUER),
        "in the future",
    ));
    cases.push((
        "wrong iss",
        forge(&f, &header, &with("iss", json!("http://evil.example"))).await,
        Some(ISSUER),
        "issuer",
    ));
    cases.push((
        "wrong aud",
        ok.clone(),
        Some("bank"),
        "audience does not contain `bank`",
    ));
    let mut no_exp = good_claims();
    no_exp.as_object_mut().unwrap().remove("exp");
    cases.push((
        "no exp",
        forge(&f, &header, &no_exp).await,
        Some(ISSUER),
        "profile",
    ));

    // A valid signature over other claims.
    let parts: Vec<&str> = ok.split('.').collect();
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        b64(&serde_json::to_vec(&with("sub", json!("mallory"))).unwrap()),
        parts[2]
    );
    cases.push((
        "tampered claims",
        tampered,
        Some(ISSUER),
        "signature verification failed",
    ));
    cases.push(("garbage", "a.b".into(), Some(ISSUER), "not a compact jws"));

    // A JWT-SVID is not an access token, even from the same deployment.
    let svid = f.svid(AGENT, ISSUER).await;
    cases.push(("jwt-svid", svid, Some(ISSUER), "`typ` is not `at+jwt`"));

    for (name, token, aud, expected) in cases {
        match f.sts.verify_access_token(&token, aud).await {
            Err(StsError::InvalidToken(msg)) => {
                assert!(
                    msg.contains(expected),
                    "{name}: `{msg}` does not mention `{expected}`"
                );
            }
            other => panic!("{name}: expected InvalidToken, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn rotation_keeps_old_tokens_valid_and_signs_with_the_new_key() {
    let f = open().await;
    let old = f.user_token(&[AGENT]).await;
    let old_kid = jws_part(&old, 0)["kid"].clone();
    f.sts.rotate_signing_key().await.unwrap();
    let new = f.user_token(&[AGENT]).await;
    assert_ne!(jws_part(&new, 0)["kid"], old_kid);
    assert_eq!(f.sts.jwks()["keys"].as_array().unwrap().len(), 2);
    f.sts.verify_access_token(&old, Some(ISSUER)).await.unwrap();
    f.sts.verify_access_token(&new, Some(ISSUER)).await.unwrap();
    assert!(
        f.keys
            .list()
            .await
            .unwrap()
            .contains(&"sts-signing-2".to_owned())
    );
}

#[tokio::test]
async fn a_second_sts_on_the_same_store_verifies_the_first_ones_tokens() {
    let tmp = tempfile::tempdir().unwrap();
    let store = keyless_store::Store::open_sqlite(&tmp.path().join("k.db"))
        .await
        .unwrap();
    let a = open_with(
        store.clone(),
        &tmp.path().join("keys"),
        keyless_sts::StsConfig::new(ISSUER),
    )
    .await;
    let b = open_with(
        store,
        &tmp.path().join("keys"),
        keyless_sts::StsConfig::new(ISSUER),
    )
    .await;
    assert_eq!(a.sts.jwks(), b.sts.jwks(), "one key, not one per process");
    // A rotates; B learns the new key on first sight of its kid.
    a.sts.rotate_signing_key().await.unwrap();
    let token = a.user_token(&[AGENT]).await;
    b.sts
        .verify_access_token(&token, Some(ISSUER))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_replica_with_another_key_manager_refuses_to_start() {
    let tmp = tempfile::tempdir().unwrap();
    let store = keyless_store::Store::open_sqlite(&tmp.path().join("k.db"))
        .await
        .unwrap();
    let a = open_with(
        store.clone(),
        &tmp.path().join("keys"),
        keyless_sts::StsConfig::new(ISSUER),
    )
    .await;
    // A different key directory that happens to hold a key of the same name.
    let other_dir = tmp.path().join("other-keys");
    let other = keyless_store::FileKeyManager::open(&other_dir).unwrap();
    other
        .generate("sts-signing-1", keyless_store::KeyAlgorithm::EcdsaP256)
        .await
        .unwrap();
    let result = keyless_sts::Sts::open(
        store,
        std::sync::Arc::new(other),
        a.identity.clone(),
        a.events.clone(),
        keyless_sts::StsConfig::new(ISSUER),
    )
    .await;
    match result {
        Err(StsError::InvalidConfig(msg)) => {
            assert!(msg.contains("share the key manager"), "{msg}")
        }
        other => panic!("expected InvalidConfig, got {other:?}"),
    }
    // The first replica is unaffected.
    let token = a.user_token(&[AGENT]).await;
    a.sts
        .verify_access_token(&token, Some(ISSUER))
        .await
        .unwrap();
}
