//! `keyless scan --revoke` and `keyless doctor` through the real binary
//! against a real `keyless up`: credentials that only look like Keyless's
//! (a forged access token naming the fabric's issuer, a forged batch
//! token) are answered "already invalid" and audited without the secret;
//! a JWT from another issuer never leaves the scanner; doctor passes on
//! the fresh data dir and fails once it is world-writable.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::Fabric;
use serde_json::{Value, json};

fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(v.to_string())
}

/// A well-formed but unsigned-by-anyone ES256 JWT with issuer `iss`.
fn forged_jwt(iss: &str) -> String {
    let header = json!({"alg": "ES256", "typ": "at+jwt", "kid": "forged-kid"});
    let claims = json!({
        "iss": iss,
        "sub": "alice@example.com",
        "aud": "bank",
        "exp": 4_102_444_800u64,
        "iat": 1_700_000_000u64,
        "jti": "forged-jti-0001",
        "client_id": "agent",
    });
    let sig = URL_SAFE_NO_PAD.encode([7u8; 64]);
    format!("{}.{}.{sig}", b64(&header), b64(&claims))
}

fn run(args: &[&str], fabric: &Fabric) -> (i32, String, String) {
    let out = Command::new(common::keyless_bin())
        .args(args)
        .arg("--data-dir")
        .arg(&fabric.data_dir)
        .current_dir(fabric.temp_path())
        .env_remove("KEYLESS_CONFIG")
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn audit_events(fabric: &Fabric) -> Vec<Value> {
    let url = format!("{}/audit/entries?start=0&end=1000", fabric.base_url);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let body: Value = rt.block_on(async { reqwest::get(url).await.unwrap().json().await.unwrap() });
    body["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].clone())
        .collect()
}

#[test]
fn look_alike_credentials_are_answered_and_audited_without_the_secret() {
    let fabric = Fabric::start();
    let ours = forged_jwt(&fabric.base_url);
    let theirs = forged_jwt("https://accounts.example.com");
    let batch = format!(
        "hvb.{}.{}",
        b64(&json!({"sub": "spiffe://example.org/x", "exp": 4_102_444_800_000u64})),
        URL_SAFE_NO_PAD.encode([9u8; 64])
    );
    let leak = fabric.temp_path().join("leak");
    std::fs::create_dir(&leak).unwrap();
    std::fs::write(
        leak.join("app.env"),
        format!("ACCESS_TOKEN={ours}\nOTHER_TOKEN={theirs}\nVAULT_TOKEN={batch}\n"),
    )
    .unwrap();

    let (code, stdout, stderr) = run(&["scan", leak.to_str().unwrap(), "--revoke"], &fabric);
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    for secret in [&ours, &theirs, &batch] {
        assert!(!stdout.contains(secret.as_str()) && !stderr.contains(secret.as_str()));
    }
    let lines: Vec<&str> = stderr.lines().collect();
    let line_for = |n: usize| {
        lines
            .iter()
            .find(|l| l.contains(&format!("app.env:{n} ")))
            .unwrap_or_else(|| panic!("no revocation line for line {n}: {stderr}"))
            .to_string()
    };
    assert!(line_for(1).starts_with("already invalid: "), "{stderr}");
    assert!(
        line_for(1).contains("signature does not verify"),
        "{stderr}"
    );
    assert!(
        line_for(2).starts_with("not a Keyless credential: "),
        "{stderr}"
    );
    assert!(line_for(3).starts_with("already invalid: "), "{stderr}");
    assert!(!stderr.contains("\nrevoked: "), "{stderr}");

    let events = audit_events(&fabric);
    let recorded: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "credential.revoked")
        .collect();
    // The two look-alikes of ours are recorded (as not revoked); the
    // foreign JWT never reached the fabric.
    assert_eq!(recorded.len(), 2, "{recorded:?}");
    let kinds: Vec<&str> = recorded
        .iter()
        .map(|e| e["detail"]["credential_kind"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"access_token") && kinds.contains(&"batch_token"),
        "{kinds:?}"
    );
    for e in &recorded {
        assert_eq!(e["outcome"], "error");
        assert_eq!(e["detail"]["result"], "already_invalid");
        assert_eq!(e["detail"]["fingerprint"].as_str().unwrap().len(), 64);
    }
    let dump = serde_json::to_string(&events).unwrap();
    assert!(!dump.contains(&ours) && !dump.contains(&batch) && !dump.contains(&theirs));
}

#[test]
fn doctor_passes_on_a_fresh_data_dir_and_fails_when_it_is_world_writable() {
    let fabric = Fabric::start();
    let (code, stdout, _) = run(&["doctor"], &fabric);
    assert_eq!(code, 0, "{stdout}");
    assert!(!stdout.contains("FAIL"), "{stdout}");
    assert!(stdout.contains("PASS  audit log: "), "{stdout}");
    assert!(stdout.contains("WARN  keys at rest: "), "{stdout}");

    let mode = |m| std::fs::Permissions::from_mode(m);
    std::fs::set_permissions(&fabric.data_dir, mode(0o777)).unwrap();
    let (code, stdout, _) = run(&["doctor"], &fabric);
    std::fs::set_permissions(&fabric.data_dir, mode(0o755)).unwrap();
    assert_eq!(code, 1, "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("FAIL  data dir: ") && l.contains("0777")),
        "{stdout}"
    );
}
