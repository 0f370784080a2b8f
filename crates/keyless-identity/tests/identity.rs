//! Behaviour of the identity service through its public API: entries and
//! their persistence (SQLite and PostgreSQL), X509-SVID and JWT-SVID
//! profiles, validation failures, forced rotation and restarts.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::*;
use keyless_identity::{IdentityError, NewEntry, RegistrationEntry, Selector, SpiffeId};
use keyless_store::{KeyManager, Store};
use serde_json::{Value, json};
use x509_parser::prelude::*;

fn sel(s: &str) -> Selector {
    s.parse().unwrap()
}

// --- entries ---

async fn entries_persist_across_reopen(
    store: Store,
    reopen: impl AsyncFn() -> Store,
    keys_dir: &std::path::Path,
) {
    let f = open_with(store.clone(), keys_dir, config(TD))
        .await
        .unwrap();
    let a = f
        .identity
        .create_entry(new_entry(
            "spiffe://example.org/agent/a",
            &["unix:uid:1000"],
        ))
        .await
        .unwrap();
    let mut nb = new_entry(
        "spiffe://example.org/agent/b",
        &["unix:uid:1001", "unix:path:/usr/bin/b"],
    );
    nb.x509_ttl = Some(Duration::from_secs(600));
    nb.jwt_ttl = Some(Duration::from_secs(60));
    nb.hint = "internal".into();
    nb.admin = true;
    nb.parent_id = Some("spiffe://example.org/node/1".parse().unwrap());
    let b = f.identity.create_entry(nb).await.unwrap();
    let c = f
        .identity
        .create_entry(new_entry("spiffe://example.org/agent/c", &["unix:gid:5"]))
        .await
        .unwrap();
    f.identity.delete_entry(&c.id).await.unwrap();
    let before = f.identity.list_entries().await;
    assert_eq!(before, vec![a.clone(), b.clone()]);
    let roots = f.identity.x509_authorities();
    let jwt = f.identity.mint_jwt_svid(&b, &["vault".into()]).unwrap();
    let svid = f.identity.mint_x509_svid(&b).unwrap();
    drop(f);
    store.close().await;

    let f = open_with(reopen().await, keys_dir, config(TD))
        .await
        .unwrap();
    assert_eq!(f.identity.list_entries().await, before);
    assert_eq!(
        f.identity.x509_authorities(),
        roots,
        "the CA survives a restart"
    );
    let v = f.identity.validate_jwt_svid(&jwt.token, "vault").unwrap();
    assert_eq!(
        v.spiffe_id, b.spiffe_id,
        "JWT-SVIDs issued before a restart validate"
    );
    let after = f.identity.mint_x509_svid(&b).unwrap();
    assert_eq!(
        after.cert_chain[1], svid.cert_chain[1],
        "same intermediate after restart"
    );
    assert!(
        f.events.events().iter().all(|e| e.kind != "ca.prepared"),
        "no new CA on reopen"
    );
}

#[tokio::test]
async fn entries_and_authorities_persist_across_reopen_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("keyless.db");
    let store = Store::open_sqlite(&db).await.unwrap();
    entries_persist_across_reopen(
        store,
        async || Store::open_sqlite(&db).await.unwrap(),
        &dir.path().join("keys"),
    )
    .await;
}

#[tokio::test]
async fn entries_and_authorities_persist_across_reopen_on_postgres() {
    let Some(url) = keyless_store::testing::fresh_postgres_database("identity_reopen").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&url).await.unwrap();
    entries_persist_across_reopen(
        store,
        async || Store::open(&url).await.unwrap(),
        &dir.path().join("keys"),
    )
    .await;
}

#[tokio::test]
async fn reopening_with_another_trust_domain_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let f = open_in(dir.path(), config(TD)).await.unwrap();
    drop(f);
    let err = open_in(dir.path(), config("other.org")).await.unwrap_err();
    assert!(
        matches!(err, IdentityError::TrustDomainMismatch { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("example.org") && err.to_string().contains("other.org"));
}

#[tokio::test]
async fn invalid_entries_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let f = open_in(dir.path(), config(TD)).await.unwrap();
    let with = |edit: &dyn Fn(&mut NewEntry)| {
        let mut e = new_entry("spiffe://example.org/a", &["unix:uid:1"]);
        edit(&mut e);
        e
    };
    let cases: Vec<(&str, NewEntry)> = vec![
        (
            "other trust domain",
            new_entry("spiffe://other.org/a", &["unix:uid:1"]),
        ),
        (
            "no path",
            new_entry("spiffe://example.org", &["unix:uid:1"]),
        ),
        ("no selectors", new_entry("spiffe://example.org/a", &[])),
        (
            "zero x509 ttl",
            with(&|e| e.x509_ttl = Some(Duration::ZERO)),
        ),
        (
            "fractional ttl",
            with(&|e| e.jwt_ttl = Some(Duration::from_millis(1500))),
        ),
        (
            "x509 ttl over half the CA life",
            with(&|e| e.x509_ttl = Some(Duration::from_secs(12 * 3600 + 1))),
        ),
        (
            "jwt ttl over half the key life",
            with(&|e| e.jwt_ttl = Some(Duration::from_secs(12 * 3600 + 1))),
        ),
        (
            "over 30 days",
            with(&|e| e.x509_ttl = Some(Duration::from_secs(31 * 24 * 3600))),
        ),
        (
            "parent elsewhere",
            with(&|e| e.parent_id = Some("spiffe://other.org/node".parse().unwrap())),
        ),
        ("long hint", with(&|e| e.hint = "h".repeat(2000))),
    ];
    for (what, entry) in cases {
        let err = f.identity.create_entry(entry).await.unwrap_err();
        assert!(
            matches!(err, IdentityError::InvalidEntry(_)),
            "{what}: {err}"
        );
    }
    assert!(f.identity.list_entries().await.is_empty());
    assert!(event_types(&f.events).iter().all(|t| t != "entry.created"));

    // The limits themselves are accepted.
    let ok = with(&|e| {
        e.x509_ttl = Some(Duration::from_secs(12 * 3600));
        e.jwt_ttl = Some(Duration::from_secs(1));
    });
    f.identity.create_entry(ok).await.unwrap();
    // The same identity for the same selectors (in any order) is a conflict.
    let mut dup = new_entry("spiffe://example.org/a", &["unix:uid:1"]);
    dup.selectors.push(sel("unix:uid:1"));
    let err = f.identity.create_entry(dup).await.unwrap_err();
    assert!(matches!(err, IdentityError::Conflict(_)), "{err}");
}

#[tokio::test]
async fn entry_defaults_and_duplicate_selectors_are_folded() {
    let dir = tempfile::tempdir().unwrap();
    let f = open_in(dir.path(), config(TD)).await.unwrap();
    let e = f
        .identity
        .create_entry(new_entry(
            "spiffe://example.org/a",
            &["unix:uid:1", "unix:uid:1", "unix:gid:2"],
        ))
        .await
        .unwrap();
    assert_eq!(e.selectors, vec![sel("unix:uid:1"), sel("unix:gid:2")]);
    assert_eq!(e.x509_ttl, Duration::from_secs(3600));
    assert_eq!(e.jwt_ttl, Duration::from_secs(300));
    assert!(uuid_like(&e.id), "{}", e.id);
    let json = serde_json::to_value(&e).unwrap();
    assert_eq!(json["x509_ttl_secs"], 3600);
    assert_eq!(json["jwt_ttl_secs"], 300);
    assert_eq!(json["selectors"], json!(["unix:uid:1", "unix:gid:2"]));
    let back: RegistrationEntry = serde_json::from_value(json).unwrap();
    assert_eq!(back, e);
}

fn uuid_like(s: &str) -> bool {
    s.len() == 36 && s.chars().filter(|c| *c == '-').count() == 4
}

#[test]
fn new_entry_json_uses_seconds_and_rejects_unknown_fields() {
    let e: NewEntry = serde_json::from_value(json!({
        "spiffe_id": "spiffe://example.org/a",
        "selectors": ["unix:uid:1"],
        "x509_ttl_secs": 60,
    }))
    .unwrap();
    assert_eq!(e.x509_ttl, Some(Duration::from_secs(60)));
    assert_eq!(e.jwt_ttl, None);
    assert!(!e.admin);
    let unknown = serde_json::from_value::<NewEntry>(json!({
        "spiffe_id": "spiffe://example.org/a", "selectors": ["unix:uid:1"], "ttl": 5,
    }));
    assert!(unknown.is_err());
    let bad_selector = serde_json::from_value::<NewEntry>(json!({
        "spiffe_id": "spiffe://example.org/a", "selectors": ["unix:uid:one"],
    }));
    assert!(bad_selector.is_err());
}

#[tokio::test]
async fn entry_changes_are_audited_and_notified() {
    let dir = tempfile::tempdir().unwrap();
    let f = open_in(dir.path(), config(TD)).await.unwrap();
    let mut changes = f.identity.changes();
    changes.borrow_and_update();
    let e = f
        .identity
        .create_entry(new_entry("spiffe://example.org/a", &["unix:uid:1"]))
        .await
        .unwrap();
    assert!(changes.has_changed().unwrap());
    changes.borrow_and_update();
    f.identity.delete_entry(&e.id).await.unwrap();
    assert!(changes.has_changed().unwrap());
    let err = f.identity.delete_entry(&e.id).await.unwrap_err();
    assert!(matches!(err, IdentityError::NotFound(_)), "{err}");

    let events = f.events.events();
    let created = events.iter().find(|e| e.kind == "entry.created").unwrap();
    assert_eq!(created.agent.as_deref(), Some("spiffe://example.org/a"));
    assert_eq!(created.detail["entry_id"], json!(e.id));
    assert_eq!(created.detail["selectors"], json!(["unix:uid:1"]));
    let deleted = events.iter().find(|e| e.kind == "entry.deleted").unwrap();
    assert_eq!(deleted.detail["entry_id"], json!(e.id));
}

#[tokio::test]
async fn an_entry_matches_when_all_its_selectors_are_presented() {
    let dir = tempfile::tempdir().unwrap();
    let f = open_in(dir.path(), config(TD)).await.unwrap();
    let by_uid = f
        .identity
        .create_entry(new_entry("spiffe://example.org/uid", &["unix:uid:1000"]))
        .await
        .unwrap();
    let by_uid_and_path = f
        .identity
        .create_entry(new_entry(
            "spiffe://example.org/both",
            &["unix:uid:1000", "unix:path:/bin/agent"],
        ))
        .await
        .unwrap();
    f.identity
        .create_entry(new_entry("spiffe://example.org/other", &["unix:uid:1001"]))
        .await
        .unwrap();

    let ids = |caller: &[&str]| {
        let caller: Vec<Selector> = caller.iter().map(|s| sel(s)).collect();
        f.identity
            .matching_entries(&caller)
            .into_iter()
            .map(|e| e.id)
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&["unix:uid:1000"]), vec![by_uid.id.clone()]);
    // List order is creation time, then id: two entries created in the same
    // millisecond are ordered by their (random) ids.
    let list_order: Vec<String> = f
        .identity
        .list_entries()
        .await
        .into_iter()
        .map(|e| e.id)
        .filter(|id| *id == by_uid.id || *id == by_uid_and_path.id)
        .collect();
    assert_eq!(list_order.len(), 2);
    assert_eq!(
        ids(&["unix:gid:0", "unix:path:/bin/agent", "unix:uid:1000"]),
        list_order,
        "extra caller facts are fine; order is list order"
    );
    assert!(ids(&["unix:path:/bin/agent"]).is_empty());
    assert!(ids(&[]).is_empty());
    assert!(ids(&["unix:uid:100"]).is_empty());
}

// --- X509-SVIDs ---

fn parse(der: &[u8]) -> X509Certificate<'_> {
    let (rest, cert) = X509Certificate::from_der(der).unwrap();
    assert!(rest.is_empty());
    cert
}

fn uri_sans(cert: &X509Certificate<'_>) -> Vec<String> {
    let san = cert.subject_alternative_name().unwrap().unwrap();
    san.value
        .general_names
        .iter()
        .map(|n| match n {
            GeneralName::URI(u) => u.to_string(),
            other => panic!("unexpected SAN {other:?}"),
        })
        .collect()
}

#[tokio::test]
async fn x509_svid_follows_the_spiffe_profile_and_chains_to_the_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let f = open_in(dir.path(), config(TD)).await.unwrap();
    let entry = f
        .identity
        .create_entry(new_entry(
            "spiffe://example.org/agent/planner",
            &["unix:uid:1000"],
        ))
        .await
        .unwrap();
    let svid = f.identity.mint_x509_svid(&entry).unwrap();
    assert_eq!(svid.spiffe_id, entry.spiffe_id);
    assert_eq!(svid.cert_chain.len(), 2);
    let roots = f.identity.x509_authorities();
    assert_eq!(roots.len(), 1);
    let leaf = parse(&svid.cert_chain[0]);
    let intermediate = parse(&svid.cert_chain[1]);
    let root = parse(&roots[0]);

    // Leaf profile.
    assert_eq!(
        uri_sans(&leaf),
        vec!["spiffe://example.org/agent/planner".to_owned()]
    );
    let bc = leaf
        .basic_constraints()
        .unwrap()
        .expect("basicConstraints present");
    assert!(!bc.value.ca);
    let ku = leaf.key_usage().unwrap().expect("key usage present");
    assert!(ku.critical);
    assert!(ku.value.digital_signature());
    assert!(!ku.value.key_cert_sign() && !ku.value.crl_sign());
    let eku = leaf.extended_key_usage().unwrap().expect("eku present");
    assert!(eku.value.server_auth && eku.value.client_auth);
    assert_eq!(hex::encode(leaf.raw_serial()), svid.serial_hex);
    assert_eq!(leaf.validity().not_after.timestamp(), secs(svid.not_after));
    assert_eq!(
        leaf.validity().not_before.timestamp(),
        secs(svid.not_before)
    );
    assert!(
        secs(svid.not_before) <= now_secs() - 5,
        "notBefore is backdated"
    );
    assert_eq!(leaf.issuer().as_raw(), intermediate.subject().as_raw());

    // Intermediate and root profiles.
    for (ca, path_len) in [(&intermediate, Some(0)), (&root, None)] {
        let bc = ca.basic_constraints().unwrap().unwrap();
        assert!(bc.critical && bc.value.ca);
        assert_eq!(bc.value.path_len_constraint, path_len);
        let ku = ca.key_usage().unwrap().unwrap();
        assert!(ku.value.key_cert_sign() && ku.value.crl_sign());
        assert_eq!(uri_sans(ca), vec!["spiffe://example.org".to_owned()]);
    }

    // Signatures: leaf <- intermediate <- root (self-signed).
    leaf.verify_signature(Some(intermediate.public_key()))
        .unwrap();
    intermediate
        .verify_signature(Some(root.public_key()))
        .unwrap();
    root.verify_signature(None).unwrap();
    assert!(leaf.verify_signature(Some(root.public_key())).is_err());

    // The private key is the leaf's, PKCS#8, and fresh for every SVID.
    let pair = aws_lc_rs::signature::EcdsaKeyPair::from_pkcs8(
        &aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
        &svid.private_key_pkcs8,
    )
    .unwrap();
    use aws_lc_rs::signature::KeyPair;
    assert_eq!(
        pair.public_key().as_ref(),
        leaf.public_key().subject_public_key.data.as_ref()
    );
    let again = f.identity.mint_x509_svid(&entry).unwrap();
    assert_ne!(again.private_key_pkcs8, svid.private_key_pkcs8);
    assert_ne!(again.serial_hex, svid.serial_hex);
    let debug = format!("{svid:?}");
    assert!(
        !debug.contains("private_key") && debug.len() < 400,
        "{debug}"
    );
}

fn secs(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

fn now_secs() -> i64 {
    secs(SystemTime::now())
}

#[tokio::test]
async fn x509_svid_ttl_is_honoured_and_capped_by_the_ca() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(TD);
    cfg.ca_ttl = Duration::from_secs(600);
    let f = open_in(dir.path(), cfg).await.unwrap();
    let mut short = new_entry("spiffe://example.org/short", &["unix:uid:1"]);
    short.x509_ttl = Some(Duration::from_secs(120));
    let short = f.identity.create_entry(short).await.unwrap();
    let svid = f.identity.mint_x509_svid(&short).unwrap();
    let life = secs(svid.not_after) - now_secs();
    assert!((118..=120).contains(&life), "{life}");

    // The default TTL (1 h) is longer than the CA's remaining 10 minutes.
    let long = f
        .identity
        .create_entry(new_entry("spiffe://example.org/long", &["unix:uid:2"]))
        .await
        .unwrap();
    assert_eq!(long.x509_ttl, Duration::from_secs(3600));
    let svid = f.identity.mint_x509_svid(&long).unwrap();
    let intermediate = parse(&svid.cert_chain[1]);
    assert_eq!(
        secs(svid.not_after),
        intermediate.validity().not_after.timestamp()
    );
    assert_eq!(Some(svid.not_after), f.identity.active_ca_not_after());
}

#[tokio::test]
async fn openssl_verifies_the_chain() {
    if std::process::Command::new("openssl")
        .arg("version")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED: no openssl binary");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let f = open_in(dir.path(), config(TD)).await.unwrap();
    let entry = f
        .identity
        .create_entry(new_entry("spiffe://example.org/agent", &["unix:uid:1"]))
        .await
        .unwrap();
    // Verify against a bundle that holds two generations, as after a rotation.
    let old = f.identity.mint_x509_svid(&entry).unwrap();
    f.identity.rotate_x509_ca().await.unwrap();
    let new = f.identity.mint_x509_svid(&entry).unwrap();
    let pem = |der: &[u8]| {
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        let lines: Vec<&str> = b64
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            lines.join("\n")
        )
    };
    let bundle: String = f
        .identity
        .x509_authorities()
        .iter()
        .map(|d| pem(d))
        .collect();
    std::fs::write(dir.path().join("bundle.pem"), bundle).unwrap();
    for (name, svid) in [("old", &old), ("new", &new)] {
        std::fs::write(
            dir.path().join(format!("{name}-int.pem")),
            pem(&svid.cert_chain[1]),
        )
        .unwrap();
        std::fs::write(
            dir.path().join(format!("{name}-leaf.pem")),
            pem(&svid.cert_chain[0]),
        )
        .unwrap();
        for purpose in ["sslclient", "sslserver"] {
            let out = std::process::Command::new("openssl")
                .current_dir(dir.path())
                .args([
                    "verify",
                    "-x509_strict",
                    "-purpose",
                    purpose,
                    "-CAfile",
                    "bundle.pem",
                    "-untrusted",
                ])
                .arg(format!("{name}-int.pem"))
                .arg(format!("{name}-leaf.pem"))
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{name} {purpose}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

// --- JWT-SVIDs ---

fn b64json(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
}

fn decode(part: &str) -> Value {
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

#[tokio::test]
async fn jwt_svid_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let f = open_in(dir.path(), config(TD)).await.unwrap();
    let mut e = new_entry("spiffe://example.org/agent", &["unix:uid:1"]);
    e.jwt_ttl = Some(Duration::from_secs(90));
    e.hint = "primary".into();
    let entry = f.identity.create_entry(e).await.unwrap();
    let svid = f
        .identity
        .mint_jwt_svid(
            &entry,
            &["http://127.0.0.1:8180/mcp".into(), "vault".into()],
        )
        .unwrap();
    assert_eq!(svid.hint, "primary");
    assert_eq!(secs(svid.expires_at) - secs(svid.issued_at), 90);
    assert!(!format!("{svid:?}").contains(&svid.token));

    let parts: Vec<&str> = svid.token.split('.').collect();
    let header = decode(parts[0]);
    assert_eq!(header["alg"], "ES256");
    assert_eq!(header["typ"], "JWT");
    let kid = header["kid"].as_str().unwrap();
    assert_eq!(f.identity.jwt_authorities()["keys"][0]["kid"], kid);
    let claims = decode(parts[1]);
    assert_eq!(claims["sub"], "spiffe://example.org/agent");
    assert_eq!(claims["aud"], json!(["http://127.0.0.1:8180/mcp", "vault"]));
    assert_eq!(claims["iss"], "http://127.0.0.1:8180/spiffe");
    assert_eq!(claims["exp"], secs(svid.expires_at));
    assert_eq!(claims["iat"], secs(svid.issued_at));
    assert!(claims["jti"].as_str().unwrap().len() >= 16);

    for aud in ["vault", "http://127.0.0.1:8180/mcp"] {
        let v = f.identity.validate_jwt_svid(&svid.token, aud).unwrap();
        assert_eq!(v.spiffe_id, entry.spiffe_id);
        assert_eq!(Value::Object(v.claims), claims);
    }
    let other = f.identity.mint_jwt_svid(&entry, &["vault".into()]).unwrap();
    assert_ne!(
        decode(other.token.split('.').nth(1).unwrap())["jti"],
        claims["jti"]
    );

    assert!(matches!(
        f.identity.mint_jwt_svid(&entry, &[]),
        Err(IdentityError::InvalidRequest(_))
    ));
    assert!(f.identity.mint_jwt_svid(&entry, &[String::new()]).is_err());
}

#[tokio::test]
async fn jwt_svid_validation_rejects_what_the_profile_forbids() {
    let dir = tempfile::tempdir().unwrap();
    let f = open_in(dir.path(), config(TD)).await.unwrap();
    let entry = f
        .identity
        .create_entry(new_entry("spiffe://example.org/agent", &["unix:uid:1"]))
        .await
        .unwrap();
    let good = f
        .identity
        .mint_jwt_svid(&entry, &["aud".into()])
        .unwrap()
        .token;
    let kid = f.identity.jwt_authorities()["keys"][0]["kid"]
        .as_str()
        .unwrap()
        .to_owned();
    // The active key, straight from the key manager (generation 1 on a fresh store),
    // to forge tokens that are correctly signed but otherwise wrong.
    let signer = f.keys.load("jwt-1").await.unwrap();
    let sign = |header: Value, claims: Value| {
        let input = format!("{}.{}", b64json(&header), b64json(&claims));
        let sig = signer.sign(input.as_bytes()).unwrap();
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
    };
    let now = now_secs();
    let header = json!({"alg": "ES256", "kid": kid, "typ": "JWT"});
    let claims =
        json!({"sub": "spiffe://example.org/agent", "aud": ["aud"], "exp": now + 60, "iat": now});
    let with_claims = |edit: &dyn Fn(&mut Value)| {
        let mut c = claims.clone();
        edit(&mut c);
        sign(header.clone(), c)
    };
    let with_header = |edit: &dyn Fn(&mut Value)| {
        let mut h = header.clone();
        edit(&mut h);
        sign(h, claims.clone())
    };
    // Sanity: the forging machinery produces valid tokens.
    f.identity
        .validate_jwt_svid(&sign(header.clone(), claims.clone()), "aud")
        .unwrap();
    f.identity
        .validate_jwt_svid(&with_claims(&|c| c["aud"] = json!("aud")), "aud")
        .unwrap();
    f.identity
        .validate_jwt_svid(&with_header(&|h| h["typ"] = json!("JOSE")), "aud")
        .unwrap();
    f.identity
        .validate_jwt_svid(
            &with_header(&|h| {
                h.as_object_mut().unwrap().remove("typ");
            }),
            "aud",
        )
        .unwrap();

    let parts: Vec<&str> = good.split('.').collect();
    let mut tampered_claims = decode(parts[1]);
    tampered_claims["sub"] = json!("spiffe://example.org/admin");
    let tampered = format!("{}.{}.{}", parts[0], b64json(&tampered_claims), parts[2]);
    let none_alg = format!(
        "{}.{}.",
        b64json(&json!({"alg": "none", "kid": kid})),
        parts[1]
    );
    let mut bad_sig = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
    bad_sig[10] ^= 1;
    let bad_sig = format!(
        "{}.{}.{}",
        parts[0],
        parts[1],
        URL_SAFE_NO_PAD.encode(bad_sig)
    );

    let cases: Vec<(&str, String, &str)> = vec![
        ("wrong audience", good.clone(), "other"),
        ("empty audience", good.clone(), ""),
        (
            "expired",
            with_claims(&|c| c["exp"] = json!(now - 60)),
            "aud",
        ),
        (
            "not yet valid",
            with_claims(&|c| c["nbf"] = json!(now + 600)),
            "aud",
        ),
        (
            "missing exp",
            with_claims(&|c| {
                c.as_object_mut().unwrap().remove("exp");
            }),
            "aud",
        ),
        (
            "missing aud",
            with_claims(&|c| {
                c.as_object_mut().unwrap().remove("aud");
            }),
            "aud",
        ),
        (
            "aud not a string",
            with_claims(&|c| c["aud"] = json!(5)),
            "aud",
        ),
        (
            "missing sub",
            with_claims(&|c| {
                c.as_object_mut().unwrap().remove("sub");
            }),
            "aud",
        ),
        (
            "sub not a spiffe id",
            with_claims(&|c| c["sub"] = json!("alice")),
            "aud",
        ),
        (
            "sub in another trust domain",
            with_claims(&|c| c["sub"] = json!("spiffe://other.org/agent")),
            "aud",
        ),
        ("alg none", none_alg, "aud"),
        (
            "alg HS256",
            with_header(&|h| h["alg"] = json!("HS256")),
            "aud",
        ),
        (
            "alg ES384 on a P-256 key",
            with_header(&|h| h["alg"] = json!("ES384")),
            "aud",
        ),
        (
            "unknown kid",
            with_header(&|h| h["kid"] = json!("nope")),
            "aud",
        ),
        (
            "missing kid",
            with_header(&|h| {
                h.as_object_mut().unwrap().remove("kid");
            }),
            "aud",
        ),
        (
            "typ at+jwt",
            with_header(&|h| h["typ"] = json!("at+jwt")),
            "aud",
        ),
        (
            "crit header",
            with_header(&|h| h["crit"] = json!(["exp"])),
            "aud",
        ),
        ("tampered payload", tampered, "aud"),
        ("bad signature", bad_sig, "aud"),
        ("two parts", format!("{}.{}", parts[0], parts[1]), "aud"),
        ("four parts", format!("{good}.x"), "aud"),
        ("garbage", "not a token".into(), "aud"),
        (
            "padded base64",
            format!("{}=.{}.{}", parts[0], parts[1], parts[2]),
            "aud",
        ),
    ];
    for (what, token, aud) in cases {
        match f.identity.validate_jwt_svid(&token, aud) {
            Err(IdentityError::InvalidJwt(_) | IdentityError::InvalidRequest(_)) => {}
            other => panic!("{what}: expected rejection, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn jwt_svid_from_another_identity_service_is_rejected() {
    let dir_a = tempfile::tempdir().unwrap();
    let dir_b = tempfile::tempdir().unwrap();
    let a = open_in(dir_a.path(), config(TD)).await.unwrap();
    let b = open_in(dir_b.path(), config(TD)).await.unwrap();
    let entry = b
        .identity
        .create_entry(new_entry("spiffe://example.org/agent", &["unix:uid:1"]))
        .await
        .unwrap();
    let token = b
        .identity
        .mint_jwt_svid(&entry, &["aud".into()])
        .unwrap()
        .token;
    assert!(matches!(
        a.identity.validate_jwt_svid(&token, "aud"),
        Err(IdentityError::InvalidJwt(_))
    ));
}

// --- rotation ---

#[tokio::test]
async fn forced_ca_rotation_keeps_old_roots_and_signs_with_the_new_intermediate() {
    let dir = tempfile::tempdir().unwrap();
    let f = open_in(dir.path(), config(TD)).await.unwrap();
    let entry = f
        .identity
        .create_entry(new_entry("spiffe://example.org/agent", &["unix:uid:1"]))
        .await
        .unwrap();
    let old = f.identity.mint_x509_svid(&entry).unwrap();
    let old_roots = f.identity.x509_authorities();
    let seq_before = f.identity.federation_bundle()["spiffe_sequence"]
        .as_i64()
        .unwrap();
    let mut changes = f.identity.changes();
    changes.borrow_and_update();

    f.identity.rotate_x509_ca().await.unwrap();

    assert!(changes.has_changed().unwrap());
    let roots = f.identity.x509_authorities();
    assert_eq!(roots.len(), 2);
    assert_eq!(
        roots[0], old_roots[0],
        "the old root stays until its SVIDs expire"
    );
    let new = f.identity.mint_x509_svid(&entry).unwrap();
    assert_ne!(new.cert_chain[1], old.cert_chain[1]);
    let new_int = parse(&new.cert_chain[1]);
    parse(&new.cert_chain[0])
        .verify_signature(Some(new_int.public_key()))
        .unwrap();
    new_int
        .verify_signature(Some(parse(&roots[1]).public_key()))
        .unwrap();
    assert!(
        new_int
            .verify_signature(Some(parse(&roots[0]).public_key()))
            .is_err()
    );
    // SVIDs from before still chain to a root in the bundle.
    parse(&old.cert_chain[1])
        .verify_signature(Some(parse(&roots[0]).public_key()))
        .unwrap();

    let bundle = f.identity.federation_bundle();
    assert!(bundle["spiffe_sequence"].as_i64().unwrap() > seq_before);
    let x509_keys = bundle["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["use"] == "x509-svid")
        .count();
    assert_eq!(x509_keys, 2);

    let events = f.events.events();
    let rotated = events
        .iter()
        .find(|e| e.kind == "ca.rotated" && e.detail["reason"] == "forced")
        .unwrap();
    assert_eq!(rotated.detail["from_generation"], 1);
    assert_eq!(rotated.detail["to_generation"], 2);
    assert!(
        events
            .iter()
            .any(|e| e.kind == "ca.prepared" && e.detail["generation"] == 2)
    );
    // Root keys never outlive the signing of their intermediate.
    let names = f.keys.list().await.unwrap();
    assert!(names.iter().all(|n| !n.ends_with("-root")), "{names:?}");
    assert!(
        names.contains(&"x509-ca-2-intermediate".to_owned()),
        "{names:?}"
    );

    // A restart keeps both generations and the new one active.
    drop(f);
    let f = open_in(dir.path(), config(TD)).await.unwrap();
    assert_eq!(f.identity.x509_authorities(), roots);
    assert_eq!(
        f.identity.mint_x509_svid(&entry).unwrap().cert_chain[1],
        new.cert_chain[1]
    );
}

#[tokio::test]
async fn forced_jwt_rotation_keeps_old_tokens_valid() {
    let dir = tempfile::tempdir().unwrap();
    let f = open_in(dir.path(), config(TD)).await.unwrap();
    let entry = f
        .identity
        .create_entry(new_entry("spiffe://example.org/agent", &["unix:uid:1"]))
        .await
        .unwrap();
    let old = f.identity.mint_jwt_svid(&entry, &["aud".into()]).unwrap();
    f.identity.rotate_jwt_key().await.unwrap();
    let new = f.identity.mint_jwt_svid(&entry, &["aud".into()]).unwrap();
    let kid = |t: &str| decode(t.split('.').next().unwrap())["kid"].clone();
    assert_ne!(kid(&old.token), kid(&new.token));
    f.identity.validate_jwt_svid(&old.token, "aud").unwrap();
    f.identity.validate_jwt_svid(&new.token, "aud").unwrap();
    let keys = f.identity.jwt_authorities()["keys"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(keys.len(), 2);
    for k in &keys {
        assert_eq!(k["use"], "jwt-svid");
        assert_eq!(k["kty"], "EC");
        assert_eq!(k["crv"], "P-256");
        assert_eq!(k["alg"], "ES256");
    }
    let rotated = f
        .events
        .events()
        .into_iter()
        .find(|e| e.kind == "jwt_key.rotated" && e.detail["reason"] == "forced")
        .unwrap();
    assert_eq!(rotated.detail["to_kid"], kid(&new.token));
    assert_eq!(rotated.detail["from_kid"], kid(&old.token));
}

#[tokio::test]
async fn spiffe_id_of_minted_svids_must_be_ours() {
    let dir = tempfile::tempdir().unwrap();
    let f = open_in(dir.path(), config(TD)).await.unwrap();
    let mut entry = f
        .identity
        .create_entry(new_entry("spiffe://example.org/agent", &["unix:uid:1"]))
        .await
        .unwrap();
    entry.spiffe_id = SpiffeId::new("spiffe://other.org/agent").unwrap();
    assert!(f.identity.mint_x509_svid(&entry).is_err());
    assert!(f.identity.mint_jwt_svid(&entry, &["a".into()]).is_err());
}
