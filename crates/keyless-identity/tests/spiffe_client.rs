//! What the Rust `spiffe` client (0.19) makes of our output: it must accept
//! our X509-SVIDs, X.509 bundles, JWT bundles and JWT-SVIDs, and agree with
//! our SPIFFE ID parser on what is an ID.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use common::*;

#[tokio::test]
async fn rust_spiffe_client_accepts_our_svids_and_bundles() {
    let dir = tempfile::tempdir().unwrap();
    let f = open_in(dir.path(), config(TD)).await.unwrap();
    let entry = f
        .identity
        .create_entry(new_entry(
            "spiffe://example.org/agent/planner",
            &["unix:uid:1"],
        ))
        .await
        .unwrap();
    // Two generations in the bundle, as after a rotation.
    f.identity.rotate_x509_ca().await.unwrap();
    let td = spiffe::TrustDomain::new(TD).unwrap();

    let svid = f.identity.mint_x509_svid(&entry).unwrap();
    let parsed =
        spiffe::X509Svid::parse_from_der(&svid.cert_chain.concat(), &svid.private_key_pkcs8)
            .unwrap();
    assert_eq!(
        parsed.spiffe_id().to_string(),
        "spiffe://example.org/agent/planner"
    );
    assert_eq!(parsed.cert_chain().len(), 2);

    let bundle =
        spiffe::X509Bundle::parse_from_der(td.clone(), &f.identity.x509_authorities().concat())
            .unwrap();
    assert_eq!(bundle.authorities().len(), 2);

    let jwks = serde_json::to_vec(&f.identity.jwt_authorities()).unwrap();
    let jwt_bundle = spiffe::JwtBundle::from_jwt_authorities(td, &jwks).unwrap();
    let mut set = spiffe::JwtBundleSet::new();
    set.add_bundle(jwt_bundle);
    let token = f
        .identity
        .mint_jwt_svid(&entry, &["aud-1".into(), "aud-2".into()])
        .unwrap()
        .token;
    let jwt = spiffe::JwtSvid::parse_and_validate(&token, &set, &["aud-2"]).unwrap();
    assert_eq!(
        jwt.spiffe_id().to_string(),
        "spiffe://example.org/agent/planner"
    );
    assert!(spiffe::JwtSvid::parse_and_validate(&token, &set, &["other"]).is_err());
}

#[test]
fn spiffe_id_parsers_agree() {
    let inputs = [
        "spiffe://example.org",
        "spiffe://example.org/a/b",
        "spiffe://example.org/a-b_c.d/E",
        "spiffe://td/.../x",
        "spiffe://",
        "spiffe:///a",
        "spiffe://example.org:8080/a",
        "spiffe://u@example.org/a",
        "spiffe://ex%41mple.org/a",
        "spiffe://example.org/",
        "spiffe://example.org//a",
        "spiffe://example.org/./a",
        "spiffe://example.org/a/..",
        "spiffe://example.org/a?b",
        "spiffe://example.org/a#b",
        "spiffe://example.org/a b",
        "http://example.org/a",
        "",
    ];
    for input in inputs {
        assert_eq!(
            keyless_identity::SpiffeId::new(input).is_ok(),
            spiffe::SpiffeId::new(input).is_ok(),
            "{input}"
        );
    }
    // The one deliberate difference: the client lowercases an uppercase
    // trust domain (or scheme); the SPIFFE ID standard says the trust domain
    // is lowercase, and an ID that two parties could spell differently must
    // not become an identity, so we reject it.
    for input in ["spiffe://Example.org/a", "SPIFFE://example.org/a"] {
        assert!(keyless_identity::SpiffeId::new(input).is_err(), "{input}");
        if let Ok(id) = spiffe::SpiffeId::new(input) {
            assert_eq!(id.to_string(), "spiffe://example.org/a");
        }
    }
}
