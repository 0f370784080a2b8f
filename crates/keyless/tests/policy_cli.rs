//! `keyless policy test` through the real binary: allow, deny with the policy
//! id and reason, and an invalid policy set refused with exit 2.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

fn policy_test(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_keyless"))
        .args(["policy", "test", "--agent", "spiffe://keyless.local/agent"])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn tier_one_read_is_allowed() {
    let (code, out, _) = policy_test(&[
        "--action",
        "list_users",
        "--resource",
        "directory",
        "--rar-type",
        "directory_read",
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("allow"), "{out}");
}

#[test]
fn delete_user_is_denied_with_the_policy_id_and_reason() {
    let (code, out, _) = policy_test(&[
        "--action",
        "delete_user",
        "--resource",
        "directory",
        "--rar-type",
        "directory_admin",
        "--tier",
        "4",
    ]);
    assert_eq!(code, 1);
    assert!(out.starts_with("deny: "), "{out}");
    assert!(out.contains("forbid-delete-user"), "{out}");
}

#[test]
fn transfer_over_the_limit_needs_step_up() {
    let base = [
        "--action",
        "transfer_funds",
        "--resource",
        "bank",
        "--rar-type",
        "transfer_funds",
        "--tier",
        "2",
        "--amount",
        "5000",
        "--currency",
        "USD",
        "--destination",
        "ACC-2",
    ];
    let (code, out, _) = policy_test(&base);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("transfer-limit"), "{out}");
    let mut with_step_up = base.to_vec();
    with_step_up.push("--step-up");
    let (code, out, _) = policy_test(&with_step_up);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn invalid_policy_set_is_refused_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.cedar"),
        "permit(principal, action, resource) when { nonsense",
    )
    .unwrap();
    let (code, _, err) = policy_test(&[
        "--policies",
        dir.path().to_str().unwrap(),
        "--action",
        "list_users",
        "--resource",
        "directory",
    ]);
    assert_eq!(code, 2);
    assert!(err.starts_with("error: invalid policy set"), "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
}
