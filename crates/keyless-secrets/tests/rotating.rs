//! The rotating-credentials engine with a real hook: a small shell script
//! that records what it received (reason and secret) and can be told to
//! fail or hang. Reads go through the router (`GET /v1/rotating/creds/…`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::*;
use http_body_util::BodyExt;
use keyless_secrets::{ENGINE_ROTATING, RotatingCredential, SecretsError};
use serde_json::Value;
use tower::ServiceExt;

const HOOK: &str = r#"#!/bin/sh
# Test hook: records "<reason> <secret>" and obeys $1/mode (ok|fail|hang).
dir="$1"
IFS= read -r secret || true
mode=$(cat "$dir/mode" 2>/dev/null || echo ok)
case "$mode" in
  fail) echo "upstream refused $secret" >&2; exit 3 ;;
  hang) exec sleep 30 ;;
esac
printf '%s %s %s\n' "$KEYLESS_ROTATING_REASON" "$KEYLESS_ROTATING_NAME" "$secret" >> "$dir/log"
"#;

const POLICY: &str = r#"path "rotating/creds/*" { capabilities = ["read"] }"#;

struct Hook {
    dir: PathBuf,
}

impl Hook {
    fn new(f: &Fixture) -> Self {
        let dir = f.tmp.path().join("hook");
        std::fs::create_dir_all(&dir).unwrap();
        let script = dir.join("rotate.sh");
        std::fs::write(&script, HOOK).unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        Self { dir }
    }

    /// Run through `/bin/sh`: exec'ing a script this process just wrote can
    /// fail with ETXTBSY while a parallel test forks.
    fn argv(&self) -> Vec<String> {
        vec![
            "/bin/sh".to_owned(),
            self.dir.join("rotate.sh").to_str().unwrap().to_owned(),
            self.dir.to_str().unwrap().to_owned(),
        ]
    }

    fn set_mode(&self, mode: &str) {
        std::fs::write(self.dir.join("mode"), mode).unwrap();
    }

    /// `(reason, name, secret)` per successful hook run, in order.
    fn calls(&self) -> Vec<(String, String, String)> {
        let Ok(text) = std::fs::read_to_string(self.dir.join("log")) else {
            return Vec::new();
        };
        text.lines()
            .map(|l| {
                let mut it = l.splitn(3, ' ');
                (
                    it.next().unwrap().to_owned(),
                    it.next().unwrap().to_owned(),
                    it.next().unwrap().to_owned(),
                )
            })
            .collect()
    }
}

async fn setup(f: &Fixture, name: &str, ttl: u64, timeout: u64) -> (Hook, String) {
    let hook = Hook::new(f);
    let mut cred = RotatingCredential::new(name, hook.argv());
    cred.ttl = ttl;
    cred.hook_timeout = timeout;
    f.secrets.write_rotating(cred).await.unwrap();
    f.secrets
        .write_policy("rotating-reader", POLICY)
        .await
        .unwrap();
    let token = f.login("reader", &["rotating-reader"]).await.token;
    (hook, token)
}

async fn get(f: &Fixture, path: &str, token: Option<&str>) -> (StatusCode, Value) {
    let mut req = Request::builder().method("GET").uri(path);
    if let Some(t) = token {
        req = req.header("X-Vault-Token", t);
    }
    let resp = keyless_secrets::http::router(f.secrets.clone())
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

async fn rotating_leases(f: &Fixture) -> i64 {
    f.secrets
        .lease_counts()
        .await
        .unwrap()
        .get(ENGINE_ROTATING)
        .copied()
        .unwrap_or(0)
}

fn file_contains(path: &Path, needle: &str) -> bool {
    std::fs::read(path)
        .is_ok_and(|bytes| bytes.windows(needle.len()).any(|w| w == needle.as_bytes()))
}

#[tokio::test]
async fn each_read_rotates_and_the_hook_receives_exactly_the_returned_secret() {
    let f = open().await;
    let (hook, token) = setup(&f, "billing-api", 120, 10).await;

    let (s1, b1) = get(&f, "/v1/rotating/creds/billing-api", Some(&token)).await;
    assert_eq!(s1, StatusCode::OK, "{b1}");
    let (s2, b2) = get(&f, "/v1/rotating/creds/billing-api", Some(&token)).await;
    assert_eq!(s2, StatusCode::OK, "{b2}");

    let secret1 = b1["data"]["secret"].as_str().unwrap().to_owned();
    let secret2 = b2["data"]["secret"].as_str().unwrap().to_owned();
    assert_ne!(secret1, secret2, "each read must return a new secret");
    assert!(secret1.len() >= 43, "256 bits of randomness: {secret1}");
    assert_eq!(b1["data"]["generation"], 1);
    assert_eq!(b2["data"]["generation"], 2);
    assert_eq!(
        hook.calls(),
        vec![
            ("read".into(), "billing-api".into(), secret1.clone()),
            ("read".into(), "billing-api".into(), secret2.clone()),
        ]
    );
    // A short, non-renewable lease per read, under the credential's path.
    for b in [&b1, &b2] {
        let lease_id = b["lease_id"].as_str().unwrap();
        assert!(
            lease_id.starts_with("rotating/creds/billing-api/"),
            "{lease_id}"
        );
        assert_eq!(b["renewable"], false);
        let ttl = b["lease_duration"].as_i64().unwrap();
        assert!((119..=120).contains(&ttl), "{ttl}");
    }
    assert_eq!(rotating_leases(&f).await, 2);
    assert_eq!(
        f.event_kinds()
            .iter()
            .filter(|k| k.as_str() == "secret.read")
            .count(),
        2
    );
    // Nothing secret at rest: neither value is in the database files.
    for name in ["keyless.db", "keyless.db-wal"] {
        let path = f.tmp.path().join(name);
        assert!(!file_contains(&path, &secret1), "{name} holds a secret");
        assert!(!file_contains(&path, &secret2), "{name} holds a secret");
    }
}

#[tokio::test]
async fn failed_hook_is_an_error_and_issues_no_lease() {
    let f = open().await;
    let (hook, token) = setup(&f, "legacy", 60, 10).await;
    hook.set_mode("fail");

    let (status, body) = get(&f, "/v1/rotating/creds/legacy", Some(&token)).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    let msg = body["errors"][0].as_str().unwrap();
    assert!(msg.contains("previous credential stays valid"), "{msg}");
    assert!(
        body.get("data").is_none(),
        "nothing may be returned: {body}"
    );
    assert_eq!(rotating_leases(&f).await, 0);
    assert_eq!(
        f.secrets.rotating_generation("legacy").await.unwrap(),
        Some(0)
    );
    assert!(hook.calls().is_empty());
    assert!(
        f.event_kinds()
            .iter()
            .any(|k| k == "secrets.rotating.failed")
    );
    assert!(!f.event_kinds().iter().any(|k| k == "secret.read"));

    // The next read, once the upstream works again, succeeds.
    hook.set_mode("ok");
    let (status, body) = get(&f, "/v1/rotating/creds/legacy", Some(&token)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["generation"], 1);
}

#[tokio::test]
async fn hook_that_hangs_is_killed_at_the_timeout() {
    let f = open().await;
    let (hook, token) = setup(&f, "slow", 60, 1).await;
    hook.set_mode("hang");

    let started = Instant::now();
    let (status, body) = get(&f, "/v1/rotating/creds/slow", Some(&token)).await;
    let took = started.elapsed();
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert!(took >= Duration::from_secs(1), "{took:?}");
    assert!(
        took < Duration::from_secs(10),
        "the hook sleeps 30s: {took:?}"
    );
    assert_eq!(rotating_leases(&f).await, 0);
    assert_eq!(
        f.secrets.rotating_generation("slow").await.unwrap(),
        Some(0)
    );
}

#[tokio::test]
async fn revoking_the_lease_rotates_again() {
    let f = open().await;
    let (hook, token) = setup(&f, "api-key", 60, 10).await;
    let (_, body) = get(&f, "/v1/rotating/creds/api-key", Some(&token)).await;
    let given = body["data"]["secret"].as_str().unwrap().to_owned();
    let lease_id = body["lease_id"].as_str().unwrap().to_owned();

    f.secrets.revoke_lease(&lease_id).await.unwrap();

    let calls = hook.calls();
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert_eq!(calls[1].0, "revoke");
    assert_ne!(calls[1].2, given, "the leaked value must be replaced");
    assert_eq!(
        f.secrets.rotating_generation("api-key").await.unwrap(),
        Some(2)
    );
    assert_eq!(rotating_leases(&f).await, 0);
    assert!(f.secrets.lease(&lease_id).await.unwrap().is_none());
}

#[tokio::test]
async fn an_expired_lease_rotates_its_value_away() {
    let f = open().await;
    let (hook, token) = setup(&f, "short", 1, 10).await;
    let (_, body) = get(&f, "/v1/rotating/creds/short", Some(&token)).await;
    let given = body["data"]["secret"].as_str().unwrap().to_owned();
    assert_eq!(body["lease_duration"], 1);

    // The 1 s lease expires; the expiry pass revokes it, which rotates.
    let deadline = Instant::now() + Duration::from_secs(5);
    while hook.calls().len() < 2 {
        assert!(Instant::now() < deadline, "the expired lease never rotated");
        tokio::time::sleep(Duration::from_millis(50)).await;
        f.secrets.process_due_revocations().await.unwrap();
    }
    let calls = hook.calls();
    assert_eq!(calls[1].0, "revoke");
    assert_ne!(calls[1].2, given);
    assert_eq!(rotating_leases(&f).await, 0);
}

#[tokio::test]
async fn revoking_a_superseded_lease_leaves_the_live_secret_alone() {
    let f = open().await;
    let (hook, token) = setup(&f, "api-key", 60, 10).await;
    let (_, first) = get(&f, "/v1/rotating/creds/api-key", Some(&token)).await;
    let (_, second) = get(&f, "/v1/rotating/creds/api-key", Some(&token)).await;

    // The first value is already dead upstream; rotating now would kill
    // the second reader's value.
    f.secrets
        .revoke_lease(first["lease_id"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(hook.calls().len(), 2);
    assert_eq!(
        f.secrets.rotating_generation("api-key").await.unwrap(),
        Some(2)
    );

    f.secrets
        .revoke_lease(second["lease_id"].as_str().unwrap())
        .await
        .unwrap();
    let calls = hook.calls();
    assert_eq!(calls.len(), 3);
    assert_eq!(calls[2].0, "revoke");
}

#[tokio::test]
async fn failed_revocation_rotation_stays_queued_until_the_hook_succeeds() {
    let f = open().await;
    let (hook, token) = setup(&f, "api-key", 60, 10).await;
    let (_, body) = get(&f, "/v1/rotating/creds/api-key", Some(&token)).await;
    let lease_id = body["lease_id"].as_str().unwrap().to_owned();

    hook.set_mode("fail");
    let err = f.secrets.revoke_lease(&lease_id).await.unwrap_err();
    assert!(matches!(err, SecretsError::RevocationFailed(_)), "{err}");
    let pending = f.secrets.pending_revocations().await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].lease_id, lease_id);

    hook.set_mode("ok");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !f.secrets.pending_revocations().await.unwrap().is_empty() {
        assert!(
            Instant::now() < deadline,
            "the revocation was never retried"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        f.secrets.process_due_revocations().await.unwrap();
    }
    let calls = hook.calls();
    assert_eq!(calls.last().unwrap().0, "revoke");
    assert_eq!(
        f.secrets.rotating_generation("api-key").await.unwrap(),
        Some(2)
    );
}

#[tokio::test]
async fn unknown_credential_missing_token_and_denied_acl_run_no_hook() {
    let f = open().await;
    let (hook, token) = setup(&f, "api-key", 60, 10).await;

    let (status, body) = get(&f, "/v1/rotating/creds/nope", Some(&token)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body["errors"][0].as_str().unwrap().contains("`nope`"));

    let (status, _) = get(&f, "/v1/rotating/creds/api-key", None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    let other = f.login("no-rotating", &[]).await.token;
    let (status, _) = get(&f, "/v1/rotating/creds/api-key", Some(&other)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    assert!(hook.calls().is_empty());
    assert_eq!(
        f.secrets.rotating_generation("api-key").await.unwrap(),
        Some(0)
    );
    assert_eq!(rotating_leases(&f).await, 0);
}

#[tokio::test]
async fn bad_registrations_are_refused_and_change_nothing() {
    let f = open().await;
    let cases = [
        RotatingCredential::new("relative", vec!["rotate.sh".into()]),
        RotatingCredential::new("empty", Vec::new()),
        RotatingCredential::new("bad/name", vec!["/bin/true".into()]),
        RotatingCredential {
            ttl: 0,
            ..RotatingCredential::new("zero-ttl", vec!["/bin/true".into()])
        },
        RotatingCredential {
            hook_timeout: 3600,
            ..RotatingCredential::new("long-timeout", vec!["/bin/true".into()])
        },
    ];
    for cred in cases {
        let err = f.secrets.write_rotating(cred.clone()).await.unwrap_err();
        assert!(
            matches!(err, SecretsError::InvalidRequest(_)),
            "{cred:?}: {err}"
        );
    }
    assert!(f.secrets.list_rotating().await.unwrap().is_empty());

    // Unknown fields in a JSON registration are refused too.
    let parsed: Result<RotatingCredential, _> = serde_json::from_value(serde_json::json!({
        "name": "x", "hook": ["/bin/true"], "shell": true
    }));
    assert!(parsed.is_err());
}

#[tokio::test]
async fn hook_that_cannot_start_is_an_error() {
    let f = open().await;
    f.secrets
        .write_rotating(RotatingCredential::new(
            "missing",
            vec!["/nonexistent/keyless-hook".into()],
        ))
        .await
        .unwrap();
    f.secrets
        .write_policy("rotating-reader", POLICY)
        .await
        .unwrap();
    let token = f.login("reader", &["rotating-reader"]).await.token;
    let (status, _) = get(&f, "/v1/rotating/creds/missing", Some(&token)).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(rotating_leases(&f).await, 0);
}

#[tokio::test]
async fn registration_update_keeps_the_generation_and_delete_forgets() {
    let f = open().await;
    let (hook, token) = setup(&f, "api-key", 60, 10).await;
    let (_, body) = get(&f, "/v1/rotating/creds/api-key", Some(&token)).await;
    let lease_id = body["lease_id"].as_str().unwrap().to_owned();

    let mut cred = RotatingCredential::new("api-key", hook.argv());
    cred.ttl = 30;
    f.secrets.write_rotating(cred).await.unwrap();
    assert_eq!(
        f.secrets.rotating_generation("api-key").await.unwrap(),
        Some(1)
    );
    assert_eq!(f.secrets.list_rotating().await.unwrap(), vec!["api-key"]);

    f.secrets.delete_rotating("api-key").await.unwrap();
    assert!(f.secrets.rotating("api-key").await.unwrap().is_none());
    // With the registration gone the lease still revokes (nothing to run).
    f.secrets.revoke_lease(&lease_id).await.unwrap();
    assert_eq!(hook.calls().len(), 1);
    assert!(matches!(
        f.secrets.delete_rotating("api-key").await,
        Err(SecretsError::NotFound(_))
    ));
}

#[tokio::test]
async fn postgres_read_and_revoke_rotate() {
    let Some(f) = open_postgres("secrets_rotating").await else {
        return;
    };
    let (hook, token) = setup(&f, "pg-key", 60, 10).await;
    let (status, body) = get(&f, "/v1/rotating/creds/pg-key", Some(&token)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let given = body["data"]["secret"].as_str().unwrap().to_owned();
    f.secrets
        .revoke_lease(body["lease_id"].as_str().unwrap())
        .await
        .unwrap();
    let calls = hook.calls();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0].2, given);
    assert_eq!(calls[1].0, "revoke");
    assert_eq!(
        f.secrets.rotating_generation("pg-key").await.unwrap(),
        Some(2)
    );
}
