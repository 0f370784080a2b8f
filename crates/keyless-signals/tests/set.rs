//! Security Event Tokens end to end: signing with a real P-256 key from the
//! key manager, strict verification and the RFC 8935 code of each refusal,
//! robustness against mangled tokens (the deterministic stand-in for the
//! `fuzz/` target), CAEP event round trips and subject validation.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use keyless_signals::caep::{self, CaepEvent, EventMeta, parse_event};
use keyless_signals::set::{
    self, MAX_SET_LEN, PublicKey, SetClaims, SetError, SetSigner, VerifiedSet, parse_jwks,
};
use keyless_signals::subject;
use keyless_store::{FileKeyManager, KeyAlgorithm, KeyManager, Signer};
use serde_json::{Value, json};

const ISS: &str = "https://tx.example.com";
const AUD: &str = "https://rx.example.com";

struct Fixture {
    _dir: tempfile::TempDir,
    signer: Arc<dyn Signer>,
    set_signer: SetSigner,
    other: SetSigner,
    keys: Vec<PublicKey>,
    km: FileKeyManager,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let km = FileKeyManager::open(&dir.path().join("keys")).unwrap();
    let signer = km
        .generate("ssf-signing", KeyAlgorithm::EcdsaP256)
        .await
        .unwrap();
    let other_key = km
        .generate("someone-else", KeyAlgorithm::EcdsaP256)
        .await
        .unwrap();
    let set_signer = SetSigner::new(signer.clone(), ISS).unwrap();
    let other = SetSigner::new(other_key, ISS).unwrap();
    let keys = parse_jwks(&json!({"keys": [set_signer.jwk()]})).unwrap();
    Fixture {
        _dir: dir,
        signer,
        set_signer,
        other,
        keys,
        km,
    }
}

fn claims() -> SetClaims {
    SetClaims::new(
        ISS,
        vec![AUD.to_owned()],
        subject::complex_user_session(
            subject::email("alice@example.com"),
            Some(subject::opaque("sess-1")),
        ),
        caep::SESSION_REVOKED,
        json!({"event_timestamp": 1_700_000_000, "initiating_entity": "policy"}),
    )
}

fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
}

/// Signs arbitrary header and payload JSON with `signer`: how an attacker
/// holding the key (or a buggy transmitter) would build a bad SET.
fn forge(signer: &dyn Signer, header: &Value, payload: &Value) -> String {
    forge_raw(signer, &b64(header), &b64(payload))
}

fn forge_raw(signer: &dyn Signer, header: &str, payload: &str) -> String {
    let input = format!("{header}.{payload}");
    let sig = signer.sign(input.as_bytes()).unwrap();
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
}

fn header(f: &Fixture) -> Value {
    json!({"alg": "ES256", "typ": "secevent+jwt", "kid": f.set_signer.kid()})
}

fn verify(f: &Fixture, token: &str) -> Result<VerifiedSet, SetError> {
    set::verify(token, &f.keys, ISS, AUD)
}

#[track_caller]
fn refused(result: Result<VerifiedSet, SetError>, code: &str, needle: &str) {
    match result {
        Ok(v) => panic!("accepted {v:?}, expected `{code}`"),
        Err(e) => {
            assert_eq!(e.code(), code, "{e}");
            assert!(
                e.description().contains(needle),
                "`{}` does not mention `{needle}`",
                e.description()
            );
        }
    }
}

/// Valid claims as JSON with one member changed (`Value::Null` removes it).
fn claims_with(name: &str, value: Value) -> Value {
    let mut c = claims().to_json();
    let obj = c.as_object_mut().unwrap();
    if value.is_null() {
        obj.remove(name);
    } else {
        obj.insert(name.to_owned(), value);
    }
    c
}

#[tokio::test]
async fn sign_then_verify_round_trips() {
    let f = fixture().await;
    let mut c = claims();
    c.txn = Some("txn-42".to_owned());
    c.aud = vec![AUD.to_owned(), "https://other.example".to_owned()];
    let token = f.set_signer.sign(&c).unwrap();

    let (kid, iss) = set::peek(&token).unwrap();
    assert_eq!(kid.as_deref(), Some(f.set_signer.kid()));
    assert_eq!(iss, ISS);

    let v = verify(&f, &token).unwrap();
    assert_eq!(v.iss, ISS);
    assert_eq!(v.jti, c.jti);
    assert_eq!(v.iat, c.iat);
    assert_eq!(v.aud, c.aud);
    assert_eq!(v.txn.as_deref(), Some("txn-42"));
    assert_eq!(v.sub_id, c.sub_id);
    assert_eq!(v.event_type, caep::SESSION_REVOKED);
    assert_eq!(v.event, c.event);
    assert_eq!(v.kid.as_deref(), Some(f.set_signer.kid()));

    let (event, meta) = parse_event(&v.event_type, &v.event).unwrap();
    assert_eq!(event, CaepEvent::SessionRevoked);
    assert_eq!(meta.initiating_entity.as_deref(), Some("policy"));
}

#[tokio::test]
async fn header_and_claims_have_the_ssf_shape() {
    let f = fixture().await;
    let c = claims();
    let token = f.set_signer.sign(&c).unwrap();
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3);
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
    assert_eq!(
        header,
        json!({"alg": "ES256", "typ": "secevent+jwt", "kid": f.set_signer.kid()})
    );
    let payload: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    assert_eq!(payload["aud"], json!(AUD), "one audience is a string");
    assert!(payload.get("txn").is_none());
    assert!(payload.get("sub").is_none() && payload.get("exp").is_none());
    assert_eq!(payload["events"].as_object().unwrap().len(), 1);
    assert_eq!(c.jti.len(), 32, "uuid v4 simple form");
    assert!(c.iat > 1_700_000_000);
}

#[tokio::test]
async fn kid_is_the_rfc7638_thumbprint_and_jwk_is_public() {
    let f = fixture().await;
    let jwk = f.set_signer.jwk();
    assert_eq!(jwk["kty"], "EC");
    assert_eq!(jwk["crv"], "P-256");
    assert_eq!(jwk["use"], "sig");
    assert_eq!(jwk["alg"], "ES256");
    assert_eq!(jwk["kid"], f.set_signer.kid());
    assert!(jwk.get("d").is_none());
    // RFC 7638 §3.1 worked example is RSA; recompute for EC by hand instead.
    let canonical = format!(
        r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
        jwk["x"].as_str().unwrap(),
        jwk["y"].as_str().unwrap()
    );
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, canonical.as_bytes());
    assert_eq!(f.set_signer.kid(), URL_SAFE_NO_PAD.encode(digest));
    assert_eq!(f.set_signer.issuer(), ISS);
    assert_eq!(
        PublicKey::from_jwk(&jwk).unwrap().thumbprint(),
        f.set_signer.kid()
    );
}

#[tokio::test]
async fn signer_refuses_ed25519_keys_and_bad_claims() {
    let f = fixture().await;
    let ed = f.km.generate("ed", KeyAlgorithm::Ed25519).await.unwrap();
    assert!(SetSigner::new(ed, ISS).is_err());

    let mut c = claims();
    c.iss = "https://someone.else".to_owned();
    assert!(f.set_signer.sign(&c).is_err());
    let mut c = claims();
    c.aud.clear();
    assert!(f.set_signer.sign(&c).is_err());
    let mut c = claims();
    c.sub_id = json!({"format": "email"});
    assert!(f.set_signer.sign(&c).is_err());
    let mut c = claims();
    c.event = json!("not an object");
    assert!(f.set_signer.sign(&c).is_err());
}

#[tokio::test]
async fn each_refusal_has_its_rfc8935_code() {
    let f = fixture().await;
    let s = f.signer.as_ref();
    let good = claims().to_json();
    let h = header(&f);

    // Sanity: the forging helper makes tokens verify() accepts.
    verify(&f, &forge(s, &h, &good)).unwrap();

    // Signed by another key: its kid is unknown here; with our kid spliced
    // in, the signature does not verify.
    let other = f.other.sign(&claims()).unwrap();
    refused(set::verify(&other, &f.keys, ISS, AUD), "invalid_key", "");
    let (h64, p64, _) = split3(&f.set_signer.sign(&claims()).unwrap());
    let (_, _, other_sig) = split3(&other);
    refused(
        verify(&f, &format!("{h64}.{p64}.{other_sig}")),
        "invalid_key",
        "signature",
    );

    refused(
        set::verify(&forge(s, &h, &good), &f.keys, ISS, "https://not-me"),
        "invalid_audience",
        "https://not-me",
    );
    refused(
        set::verify(&forge(s, &h, &good), &f.keys, "https://tx.other", AUD),
        "invalid_issuer",
        "https://tx.other",
    );
    refused(
        verify(&f, &forge(s, &h, &claims_with("aud", json!(["a", "b"])))),
        "invalid_audience",
        "",
    );

    // Header.
    let mut typ_jwt = h.clone();
    typ_jwt["typ"] = json!("JWT");
    refused(
        verify(&f, &forge(s, &typ_jwt, &good)),
        "invalid_request",
        "typ",
    );
    let mut no_typ = h.clone();
    no_typ.as_object_mut().unwrap().remove("typ");
    refused(
        verify(&f, &forge(s, &no_typ, &good)),
        "invalid_request",
        "typ",
    );
    let mut media_type = h.clone();
    media_type["typ"] = json!("Application/SecEvent+JWT");
    verify(&f, &forge(s, &media_type, &good)).unwrap();

    let mut none = h.clone();
    none["alg"] = json!("none");
    let unsigned = format!("{}.{}.", b64(&none), b64(&good));
    refused(verify(&f, &unsigned), "invalid_key", "none");
    refused(verify(&f, &forge(s, &none, &good)), "invalid_key", "none");
    let mut hs = h.clone();
    hs["alg"] = json!("HS256");
    refused(verify(&f, &forge(s, &hs, &good)), "invalid_key", "HS256");
    let mut crit = h.clone();
    crit["crit"] = json!(["exp"]);
    refused(
        verify(&f, &forge(s, &crit, &good)),
        "invalid_request",
        "crit",
    );

    let mut unknown_kid = h.clone();
    unknown_kid["kid"] = json!("not-a-key");
    refused(
        verify(&f, &forge(s, &unknown_kid, &good)),
        "invalid_key",
        "not-a-key",
    );

    // Claims.
    let two_events = claims_with(
        "events",
        json!({caep::SESSION_REVOKED: {}, caep::CREDENTIAL_CHANGE: {"credential_type": "password", "change_type": "update"}}),
    );
    refused(
        verify(&f, &forge(s, &h, &two_events)),
        "invalid_request",
        "exactly one",
    );
    refused(
        verify(&f, &forge(s, &h, &claims_with("events", json!({})))),
        "invalid_request",
        "empty",
    );
    refused(
        verify(&f, &forge(s, &h, &claims_with("events", Value::Null))),
        "invalid_request",
        "events",
    );
    refused(
        verify(
            &f,
            &forge(
                s,
                &h,
                &claims_with("events", json!({caep::SESSION_REVOKED: "revoked"})),
            ),
        ),
        "invalid_request",
        "object",
    );
    refused(
        verify(&f, &forge(s, &h, &claims_with("sub", json!("alice")))),
        "invalid_request",
        "sub",
    );
    refused(
        verify(
            &f,
            &forge(s, &h, &claims_with("exp", json!(9_999_999_999_i64))),
        ),
        "invalid_request",
        "exp",
    );
    refused(
        verify(&f, &forge(s, &h, &claims_with("sub_id", Value::Null))),
        "invalid_request",
        "sub_id",
    );
    refused(
        verify(
            &f,
            &forge(
                s,
                &h,
                &claims_with("sub_id", json!({"format": "username", "username": "alice"})),
            ),
        ),
        "invalid_request",
        "username",
    );
    refused(
        verify(&f, &forge(s, &h, &claims_with("jti", Value::Null))),
        "invalid_request",
        "jti",
    );
    refused(
        verify(&f, &forge(s, &h, &claims_with("iat", Value::Null))),
        "invalid_request",
        "iat",
    );
    refused(
        verify(&f, &forge(s, &h, &claims_with("iss", Value::Null))),
        "invalid_request",
        "iss",
    );
    refused(
        verify(&f, &forge(s, &h, &claims_with("aud", Value::Null))),
        "invalid_request",
        "aud",
    );
    refused(
        verify(&f, &forge(s, &h, &claims_with("txn", json!(7)))),
        "invalid_request",
        "txn",
    );
}

#[tokio::test]
async fn kid_may_be_absent_only_with_a_single_key() {
    let f = fixture().await;
    let mut h = header(&f);
    h.as_object_mut().unwrap().remove("kid");
    let token = forge(f.signer.as_ref(), &h, &claims().to_json());
    let v = verify(&f, &token).unwrap();
    assert_eq!(
        v.kid.as_deref(),
        Some(f.set_signer.kid()),
        "the key that verified"
    );
    assert_eq!(set::peek(&token).unwrap().0, None);

    let two = [f.keys[0].clone(), f.other.public_key().clone()];
    refused(set::verify(&token, &two, ISS, AUD), "invalid_key", "");
    // With a kid, the right key is picked among several.
    let token = f.set_signer.sign(&claims()).unwrap();
    set::verify(&token, &two, ISS, AUD).unwrap();
    refused(set::verify(&token, &[], ISS, AUD), "invalid_key", "");
}

#[test]
fn error_codes_cover_the_receiver_variants() {
    assert_eq!(SetError::Replay("j".into()).code(), "invalid_request");
    assert_eq!(
        SetError::Replay("j".into()).description(),
        "jti `j` already received"
    );
    assert_eq!(
        SetError::Authentication("x".into()).code(),
        "authentication_failed"
    );
    assert_eq!(SetError::AccessDenied("x".into()).code(), "access_denied");
    assert!(SetError::Internal("db".into()).is_internal());
    assert!(!SetError::BadSignature.is_internal());
}

#[test]
fn jwks_parsing_skips_foreign_keys_and_refuses_private_ones() {
    let gx = "axfR8uEsQkf4vOblY6RA8ncDfYEt6zOg9KE5RdiYwpY";
    let gy = "T-NC4v4af5uO5-tKfA-eFivOM1drMV7Oy7ZAaDe_UfU";
    let ec = json!({"kty": "EC", "crv": "P-256", "x": gx, "y": gy, "kid": "ec"});
    let rsa = json!({"kty": "RSA", "n": "AQAB", "e": "AQAB", "kid": "rsa"});
    let p384 = json!({"kty": "EC", "crv": "P-384", "x": gx, "y": gy, "kid": "p384"});
    let enc = json!({"kty": "EC", "crv": "P-256", "x": gx, "y": gy, "kid": "enc", "use": "enc"});
    let keys = parse_jwks(&json!({"keys": [rsa, p384, enc, ec]})).unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].kid(), Some("ec"));
    assert_eq!(keys[0].sec1().len(), 65);

    assert!(parse_jwks(&json!({"keys": [rsa]})).is_err());
    assert!(parse_jwks(&json!({"keys": []})).is_err());
    assert!(parse_jwks(&json!([ec])).is_err());
    let private = json!({"kty": "EC", "crv": "P-256", "x": gx, "y": gy, "d": gx});
    assert!(
        PublicKey::from_jwk(&private)
            .unwrap_err()
            .contains("private")
    );
    assert!(parse_jwks(&json!({"keys": [ec, private]})).is_err());
    let short = json!({"kty": "EC", "crv": "P-256", "x": "AAAA", "y": gy});
    assert!(PublicKey::from_jwk(&short).is_err());
    let kid_number = json!({"kty": "EC", "crv": "P-256", "x": gx, "y": gy, "kid": 3});
    assert!(PublicKey::from_jwk(&kid_number).is_err());
}

fn split3(token: &str) -> (String, String, String) {
    let mut p = token.split('.').map(str::to_owned);
    (p.next().unwrap(), p.next().unwrap(), p.next().unwrap())
}

/// xorshift64*: a fixed-seed generator so every run mangles tokens the same way.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Feeds `bytes` (as a token, when UTF-8) to the parser and verifier; both
/// must return (not panic) and the verifier must refuse.
#[track_caller]
fn must_refuse(f: &Fixture, bytes: &[u8]) {
    let token = String::from_utf8_lossy(bytes);
    let _ = set::peek(&token);
    assert!(
        verify(f, &token).is_err(),
        "accepted a mangled token: {token}"
    );
}

#[tokio::test]
async fn mangled_tokens_are_refused_without_panicking() {
    let f = fixture().await;
    let token = f.set_signer.sign(&claims()).unwrap();
    let bytes = token.as_bytes();

    // Every strict prefix, and every prefix with junk appended.
    for n in 0..bytes.len() {
        must_refuse(&f, &bytes[..n]);
        must_refuse(&f, &[&bytes[..n], b".x"].concat());
    }

    // Random byte flips, insertions and deletions with a fixed seed.
    let mut rng = Rng(0x5EC_E7E7_0D0C_u64);
    let alphabet = b"ABCxyz019-_.=+/ {}\"\\\x00\xff";
    for _ in 0..3000 {
        let mut m = bytes.to_vec();
        for _ in 0..=rng.below(3) {
            let at = rng.below(m.len());
            match rng.below(4) {
                0 => m[at] ^= 1 << rng.below(8),
                1 => m[at] = alphabet[rng.below(alphabet.len())],
                2 => m.insert(at, alphabet[rng.below(alphabet.len())]),
                _ => {
                    m.remove(at);
                }
            }
        }
        if m != bytes {
            must_refuse(&f, &m);
        }
    }

    // Pure garbage of assorted lengths.
    for len in [0, 1, 2, 3, 10, 100, 1000] {
        let junk: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        must_refuse(&f, &junk);
        let dotted: Vec<u8> = (0..len)
            .map(|i| {
                if i % 7 == 3 {
                    b'.'
                } else {
                    b'A' + (rng.below(26) as u8)
                }
            })
            .collect();
        must_refuse(&f, &dotted);
    }
    for t in [
        "..",
        "...",
        "a.b.c",
        "e30.e30.",
        "e30.e30.e30",
        ".e30.",
        "\u{1F600}.\u{1F600}.x",
    ] {
        must_refuse(&f, t.as_bytes());
    }

    // Oversized tokens are refused before any decoding.
    let big = format!("{}.{}.{}", "A".repeat(MAX_SET_LEN), "A", "A");
    match verify(&f, &big) {
        Err(SetError::Malformed(m)) => assert!(m.contains("limit"), "{m}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn json_type_confusion_is_refused_even_when_signed() {
    let f = fixture().await;
    let s = f.signer.as_ref();
    let h = header(&f);
    let good = claims().to_json();

    let headers = [
        json!({"alg": "ES256", "typ": 1, "kid": f.set_signer.kid()}),
        json!({"alg": ["ES256"], "typ": "secevent+jwt", "kid": f.set_signer.kid()}),
        json!({"alg": null, "typ": "secevent+jwt"}),
        json!({"alg": "ES256", "typ": "secevent+jwt", "kid": {"k": 1}}),
        json!({"alg": "ES256", "typ": "secevent+jwt", "kid": null}),
        json!({"typ": "secevent+jwt", "kid": f.set_signer.kid()}),
        json!(["ES256"]),
        json!("ES256"),
        json!(null),
    ];
    for bad in &headers {
        let r = verify(&f, &forge(s, bad, &good));
        assert!(r.is_err(), "accepted header {bad}");
    }

    let claim_cases = [
        ("iss", json!(5)),
        ("iss", json!([ISS])),
        ("aud", json!({})),
        ("aud", json!([])),
        ("aud", json!([1])),
        ("aud", json!([AUD, 1])),
        ("jti", json!("")),
        ("jti", json!(3)),
        ("iat", json!("now")),
        ("iat", json!(null)),
        ("iat", json!({})),
        ("sub_id", json!("alice@example.com")),
        ("sub_id", json!({"format": ["email"], "email": "a@b"})),
        ("sub_id", json!({"format": "email", "email": ["a@b"]})),
        (
            "sub_id",
            json!({"format": "complex", "user": {"format": "complex", "user": subject::email("a@b")}}),
        ),
        ("events", json!([])),
        ("events", json!("session-revoked")),
        ("events", json!({caep::SESSION_REVOKED: null})),
        ("events", json!({caep::SESSION_REVOKED: [1]})),
        ("txn", json!({})),
    ];
    for (name, value) in claim_cases {
        let mut c = good.clone();
        c[name] = value.clone();
        let r = verify(&f, &forge(s, &h, &c));
        assert_eq!(
            r.as_ref().err().map(SetError::code),
            Some("invalid_request"),
            "`{name}: {value}` gave {r:?}"
        );
    }

    for payload in [
        json!([good.clone()]),
        json!("claims"),
        json!(null),
        json!(42),
    ] {
        assert!(
            verify(&f, &forge(s, &h, &payload)).is_err(),
            "accepted payload {payload}"
        );
    }

    // Not JSON at all, and JSON nested past serde_json's recursion limit.
    let deep = URL_SAFE_NO_PAD.encode("[".repeat(10_000));
    let not_json = URL_SAFE_NO_PAD.encode("{\"iss\": ");
    for p in [deep, not_json] {
        let token = forge_raw(s, &b64(&h), &p);
        refused(verify(&f, &token), "invalid_request", "JSON");
        assert!(set::peek(&token).is_err());
    }
    // Padding and the standard alphabet are not base64url.
    let padded = format!("{}=", b64(&h));
    assert!(verify(&f, &forge_raw(s, &padded, &b64(&good))).is_err());
}

// === CAEP events ===

fn round_trip(event: CaepEvent, meta: EventMeta) {
    let payload = event.to_payload(&meta);
    let (back, back_meta) = parse_event(event.event_type(), &payload).unwrap();
    assert_eq!(back, event, "{payload}");
    assert_eq!(back_meta, meta, "{payload}");
}

#[test]
fn caep_events_round_trip() {
    let meta = EventMeta {
        event_timestamp: Some(1_615_304_991),
        initiating_entity: Some("admin".to_owned()),
        reason_admin: Some(json!({"en": "Landspeed Policy Violation: C076E82F"})),
        reason_user: Some(
            json!({"en": "Access attempt from multiple regions.", "es-410": "Intento de acceso desde varias regiones."}),
        ),
    };
    let claims = json!({"role": "ro-admin"}).as_object().unwrap().clone();
    let events = [
        CaepEvent::SessionRevoked,
        CaepEvent::CredentialChange {
            credential_type: "fido2-roaming".into(),
            change_type: "create".into(),
        },
        CaepEvent::TokenClaimsChange { claims },
        CaepEvent::AssuranceLevelChange {
            namespace: "NIST-AAL".into(),
            current_level: "nist-aal2".into(),
        },
        CaepEvent::DeviceComplianceChange {
            previous_status: "compliant".into(),
            current_status: "not-compliant".into(),
        },
        CaepEvent::SessionEstablished,
        CaepEvent::SessionPresented,
        CaepEvent::RiskLevelChange {
            principal: "USER".into(),
            current_level: "HIGH".into(),
        },
        CaepEvent::Verification {
            state: Some("VGhpcyBpcyBhbiBleGFtcGxl".into()),
        },
        CaepEvent::Verification { state: None },
        CaepEvent::StreamUpdated {
            status: "paused".into(),
            reason: Some("maintenance".into()),
        },
        CaepEvent::Other {
            event_type: "https://schemas.openid.net/secevent/risc/event-type/account-disabled"
                .into(),
        },
    ];
    for event in events {
        round_trip(event.clone(), meta.clone());
        round_trip(event, EventMeta::default());
    }
    for t in caep::CAEP_EVENTS {
        assert!(
            t.starts_with("https://schemas.openid.net/secevent/caep/event-type/"),
            "{t}"
        );
    }
    assert_eq!(
        caep::VERIFICATION,
        "https://schemas.openid.net/secevent/ssf/event-type/verification"
    );
    assert_eq!(
        caep::STREAM_UPDATED,
        "https://schemas.openid.net/secevent/ssf/event-type/stream-updated"
    );
    assert!(CaepEvent::SessionRevoked.is_caep());
    assert!(!CaepEvent::Verification { state: None }.is_caep());
}

#[test]
fn caep_events_missing_required_members_are_refused() {
    let cases = [
        (
            caep::CREDENTIAL_CHANGE,
            json!({"change_type": "create"}),
            "credential_type",
        ),
        (
            caep::CREDENTIAL_CHANGE,
            json!({"credential_type": "password"}),
            "change_type",
        ),
        (
            caep::CREDENTIAL_CHANGE,
            json!({"credential_type": "password", "change_type": "rotate"}),
            "rotate",
        ),
        (
            caep::CREDENTIAL_CHANGE,
            json!({"credential_type": 1, "change_type": "create"}),
            "credential_type",
        ),
        (
            caep::RISK_LEVEL_CHANGE,
            json!({"principal": "USER", "current_level": "low"}),
            "current_level",
        ),
        (
            caep::RISK_LEVEL_CHANGE,
            json!({"current_level": "LOW"}),
            "principal",
        ),
        (
            caep::RISK_LEVEL_CHANGE,
            json!({"principal": "USER"}),
            "current_level",
        ),
        (
            caep::ASSURANCE_LEVEL_CHANGE,
            json!({"current_level": "nist-aal2"}),
            "namespace",
        ),
        (
            caep::ASSURANCE_LEVEL_CHANGE,
            json!({"namespace": "NIST-AAL"}),
            "current_level",
        ),
        (caep::TOKEN_CLAIMS_CHANGE, json!({}), "claims"),
        (
            caep::TOKEN_CLAIMS_CHANGE,
            json!({"claims": ["role"]}),
            "claims",
        ),
        (
            caep::DEVICE_COMPLIANCE_CHANGE,
            json!({"previous_status": "compliant", "current_status": "broken"}),
            "current_status",
        ),
        (caep::STREAM_UPDATED, json!({"status": "on"}), "status"),
        (caep::VERIFICATION, json!({"state": 5}), "state"),
        (
            caep::SESSION_REVOKED,
            json!({"initiating_entity": "robot"}),
            "initiating_entity",
        ),
        (
            caep::SESSION_REVOKED,
            json!({"event_timestamp": "yesterday"}),
            "event_timestamp",
        ),
        (
            caep::SESSION_REVOKED,
            json!({"reason_admin": 5}),
            "reason_admin",
        ),
        (caep::SESSION_REVOKED, json!("revoked"), "object"),
    ];
    for (event_type, payload, needle) in cases {
        match parse_event(event_type, &payload) {
            Ok(e) => panic!("{payload} accepted as {e:?}"),
            Err(msg) => assert!(msg.contains(needle), "`{msg}` does not mention `{needle}`"),
        }
    }
}

// === subjects ===

#[test]
fn subject_validation() {
    let check = |v: Value, ok: bool| {
        let r = subject::validate_subject(&v);
        assert_eq!(r.is_ok(), ok, "{v}: {r:?}");
    };
    check(subject::email("a@example.com"), true);
    check(subject::iss_sub("https://idp", "u1"), true);
    check(subject::opaque("o1"), true);
    check(
        json!({"format": "account", "uri": "acct:a@example.com"}),
        true,
    );
    check(
        json!({"format": "phone_number", "phone_number": "+15551234567"}),
        true,
    );
    check(json!({"format": "did", "url": "did:web:example.com"}), true);
    check(
        json!({"format": "uri", "uri": "urn:uuid:4e851e98-83c4-4743-a5da-150ecb53042f"}),
        true,
    );
    check(
        json!({"format": "aliases", "identifiers": [subject::email("a@b.c"), subject::opaque("1")]}),
        true,
    );
    check(
        subject::complex_user_session(
            subject::iss_sub("https://idp", "u1"),
            Some(subject::opaque("s")),
        ),
        true,
    );
    check(
        json!({"format": "complex", "device": subject::opaque("d"), "tenant": subject::opaque("t")}),
        true,
    );

    check(json!({"format": "email", "email": ""}), false);
    check(
        json!({"format": "iss_sub", "iss": "https://idp", "sub": 1}),
        false,
    );
    check(json!({"format": "account", "uri": "a@example.com"}), false);
    check(
        json!({"format": "phone_number", "phone_number": "+1 555 123"}),
        false,
    );
    check(json!({"format": "did", "url": "web:example.com"}), false);
    check(json!({"format": "aliases", "identifiers": []}), false);
    check(json!({"format": "complex", "session": "s"}), false);
    check(json!({"format": "complex"}), false);
    check(json!({"format": "jwt_id", "iss": "i", "jti": "j"}), false);
    check(json!(null), false);
}

#[test]
fn subject_canonical_form_and_matching() {
    let a: Value =
        serde_json::from_str(r#"{"sub":"u1","iss":"https://idp","format":"iss_sub"}"#).unwrap();
    assert_eq!(
        subject::canonical(&a),
        subject::canonical(&subject::iss_sub("https://idp", "u1"))
    );
    let user = subject::iss_sub("https://idp", "u1");
    let event = subject::complex_user_session(user.clone(), Some(subject::opaque("s1")));
    assert!(subject::matches(&a, &event));
    assert!(!subject::matches(
        &subject::iss_sub("https://idp", "u2"),
        &event
    ));
}
