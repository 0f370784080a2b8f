//! The mTLS listener of the real binary: `keyless up --mtls-listen
//! 127.0.0.1:0` prints its URL; a workload fetches its X509-SVID from the
//! Workload API (rust-spiffe) and connects with it; the server presents
//! `spiffe://<td>/keyless/server` chaining to the same bundle; the STS
//! metadata read over mTLS advertises certificate-bound tokens and the
//! aliases; a certificate from another CA is refused; and without the
//! flag there is no mTLS listener and the metadata claims nothing.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;
mod mtls_client;

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use common::{Fabric, MtlsFabric, TRUST_DOMAIN, keyless_bin, own_uid_selector};
use serde_json::Value;

const SPIFFE_ID: &str = "spiffe://example.org/test/mtls";

#[tokio::test]
async fn a_workload_connects_with_its_x509_svid() {
    let fabric = MtlsFabric::start();
    let out = Command::new(keyless_bin())
        .args(["entry", "create", "--spiffe-id", SPIFFE_ID])
        .args(["--selector", &own_uid_selector()])
        .arg("--data-dir")
        .arg(fabric.data_dir())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let (roots, chain, key) = fabric.workload_x509().await;

    let with_svid = mtls_client::config(&roots, Some((chain, key)));
    let a = mtls_client::get(fabric.mtls, with_svid.clone(), "/healthz")
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", fabric.stdout.join("\n")));
    assert_eq!((a.status, a.body.as_str()), (200, "ok"));
    assert_eq!(
        mtls_client::uri_sans(&a.server_leaf),
        vec![format!("spiffe://{TRUST_DOMAIN}/keyless/server")]
    );

    let a = mtls_client::get(
        fabric.mtls,
        with_svid,
        "/.well-known/oauth-authorization-server",
    )
    .await
    .unwrap();
    assert_eq!(a.status, 200);
    let doc: Value = serde_json::from_str(&a.body).unwrap();
    assert_eq!(doc["tls_client_certificate_bound_access_tokens"], true);
    assert_eq!(
        doc["mtls_endpoint_aliases"]["token_endpoint"],
        format!("https://{}/oauth2/token", fabric.mtls)
    );

    // A certificate for the same SPIFFE ID from another CA is refused.
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI(SPIFFE_ID.try_into().unwrap())];
    let forged = params.self_signed(&key).unwrap();
    let r = mtls_client::get(
        fabric.mtls,
        mtls_client::config(
            &roots,
            Some((vec![forged.der().to_vec()], key.serialize_der())),
        ),
        "/healthz",
    )
    .await;
    assert!(
        r.as_ref().map_or(true, |a| a.status != 200),
        "a forged certificate was accepted: {r:?}"
    );
}

#[tokio::test]
async fn without_the_flag_nothing_claims_certificate_binding() {
    let fabric = Fabric::start();
    let body = tokio::task::spawn_blocking({
        let url = format!("{}/.well-known/oauth-authorization-server", fabric.base_url);
        move || {
            let addr: SocketAddr = url
                .trim_start_matches("http://")
                .split('/')
                .next()
                .unwrap()
                .parse()
                .unwrap();
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            std::io::Write::write_all(
                &mut s,
                b"GET /.well-known/oauth-authorization-server HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            )
            .unwrap();
            let mut raw = String::new();
            std::io::Read::read_to_string(&mut s, &mut raw).unwrap();
            raw.split_once("\r\n\r\n").unwrap().1.to_owned()
        }
    })
    .await
    .unwrap();
    let doc: Value = serde_json::from_str(&body).unwrap();
    assert!(
        doc.get("tls_client_certificate_bound_access_tokens")
            .is_none()
    );
    assert!(doc.get("mtls_endpoint_aliases").is_none());
    assert!(
        !fabric.logs().contains("mTLS:"),
        "an mtls listener was announced"
    );
}
