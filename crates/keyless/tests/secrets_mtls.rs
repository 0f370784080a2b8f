//! The secrets broker's cert login and rotating credentials through the
//! real binary: `keyless up --mtls-listen 127.0.0.1:0`, a cert role and a
//! rotating credential created with the admin CLI, an X509-SVID fetched
//! from the Workload API (rust-spiffe), `POST /v1/auth/cert/login` over
//! mTLS with and without that certificate, then a rotating read with the
//! token it returned, checked against what the hook received.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;
mod mtls_client;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::{MtlsFabric, own_uid_selector};
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SPIFFE_ID: &str = "spiffe://example.org/test/cert-login";
const HOOK: &str = r#"#!/bin/sh
IFS= read -r secret || true
printf '%s %s\n' "$KEYLESS_ROTATING_REASON" "$secret" >> "$1"
"#;

/// One HTTP/1.1 request over a fresh TLS connection: (status, JSON body).
async fn request(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, Value) {
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let connector = tokio_rustls::TlsConnector::from(config);
        let name = ServerName::try_from("keyless.test").unwrap();
        let mut tls = connector.connect(name, tcp).await.unwrap();
        let token = token
            .map(|t| format!("X-Vault-Token: {t}\r\n"))
            .unwrap_or_default();
        tls.write_all(
            format!(
                "{method} {path} HTTP/1.1\r\nHost: keyless.test\r\nConnection: close\r\n{token}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        let mut raw = Vec::new();
        tls.read_to_end(&mut raw).await.unwrap();
        let text = String::from_utf8_lossy(&raw).into_owned();
        let status = text.split(' ').nth(1).unwrap().parse().unwrap();
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
        (status, serde_json::from_str(body).unwrap_or(Value::Null))
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .unwrap()
}

fn hook_calls(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn cert_login_over_mtls_then_a_rotating_read() {
    let fabric = MtlsFabric::start();
    let work = fabric.dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let policy = work.join("reader.hcl");
    std::fs::write(
        &policy,
        r#"path "rotating/creds/*" { capabilities = ["read"] }"#,
    )
    .unwrap();
    let script = work.join("hook.sh");
    std::fs::write(&script, HOOK).unwrap();
    let log = work.join("hook.log");

    fabric.cli(&[
        "entry",
        "create",
        "--spiffe-id",
        SPIFFE_ID,
        "--selector",
        &own_uid_selector(),
    ]);
    fabric.cli(&[
        "secrets",
        "policy",
        "write",
        "reader",
        policy.to_str().unwrap(),
    ]);
    fabric.cli(&[
        "secrets",
        "cert",
        "create",
        "tests",
        "--allowed-spiffe-id",
        "spiffe://example.org/test/*",
        "--policy",
        "reader",
        "--token-ttl",
        "10m",
    ]);
    fabric.cli(&[
        "secrets",
        "rotating",
        "create",
        "upstream",
        "--hook",
        "/bin/sh",
        "--hook-arg",
        script.to_str().unwrap(),
        "--hook-arg",
        log.to_str().unwrap(),
        "--ttl",
        "1m",
    ]);

    let (roots, chain, key) = fabric.workload_x509().await;
    let with_svid = mtls_client::config(&roots, Some((chain, key)));
    let without = mtls_client::config(&roots, None);

    // No client certificate: Vault's 400, and no token.
    let (status, body) = request(
        fabric.mtls,
        without,
        "POST",
        "/v1/auth/cert/login",
        None,
        r#"{"name":"tests"}"#,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["errors"][0], "client certificate must be supplied");

    // With the X509-SVID: the JWT login's auth block.
    let (status, body) = request(
        fabric.mtls,
        with_svid.clone(),
        "POST",
        "/v1/auth/cert/login",
        None,
        r#"{"name":"tests"}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}\n{}", fabric.stdout.join("\n"));
    assert_eq!(body["auth"]["metadata"]["spiffe_id"], SPIFFE_ID);
    assert_eq!(
        body["auth"]["policies"],
        serde_json::json!(["default", "reader"])
    );
    assert_eq!(body["auth"]["lease_duration"], 600);
    let token = body["auth"]["client_token"].as_str().unwrap().to_owned();

    // The token reads the rotating credential: the hook got exactly the
    // returned secret.
    let (status, body) = request(
        fabric.mtls,
        with_svid,
        "GET",
        "/v1/rotating/creds/upstream",
        Some(&token),
        "",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let secret = body["data"]["secret"].as_str().unwrap();
    assert_eq!(hook_calls(&log), vec![format!("read {secret}")]);
    assert!(
        body["lease_id"]
            .as_str()
            .unwrap()
            .starts_with("rotating/creds/upstream/")
    );
    assert_eq!(body["renewable"], false);
}
