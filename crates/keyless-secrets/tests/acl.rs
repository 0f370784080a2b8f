//! ACL policies: parsing (HCL subset and JSON, clear errors), Vault's
//! matching rules, and policy storage (a bad policy changes nothing).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::*;
use keyless_secrets::{Acl, Capability, Policy, SecretsError};

fn acl(text: &str) -> Acl {
    Acl::compile(&[Policy::parse("p", text).unwrap()])
}

/// (path, capability, expected) against one policy.
fn check(policy: &str, cases: &[(&str, Capability, bool)]) {
    let acl = acl(policy);
    for (path, cap, want) in cases {
        assert_eq!(acl.allows(path, *cap), *want, "{cap:?} on `{path}`");
    }
}

#[test]
fn exact_prefix_and_plus_segments_match_like_vault() {
    check(
        r#"
        path "secret/data/app/config" { capabilities = ["read"] }
        path "secret/data/team/*"     { capabilities = ["read", "list"] }
        path "secret/data/+/shared"   { capabilities = ["update"] }
        "#,
        &[
            ("secret/data/app/config", Capability::Read, true),
            ("secret/data/app/config2", Capability::Read, false),
            ("secret/data/app", Capability::Read, false),
            ("secret/data/team/a/b", Capability::Read, true),
            ("secret/data/team/", Capability::List, true),
            ("secret/data/team", Capability::Read, false),
            ("secret/data/x/shared", Capability::Update, true),
            ("secret/data/x/y/shared", Capability::Update, false),
            ("secret/data/team/a", Capability::Delete, false),
        ],
    );
}

#[test]
fn the_most_specific_rule_decides_and_deny_wins() {
    check(
        r#"
        path "secret/*"              { capabilities = ["read"] }
        path "secret/data/private/*" { capabilities = ["deny"] }
        path "secret/data/open"      { capabilities = ["read", "update"] }
        "#,
        &[
            ("secret/data/anything", Capability::Read, true),
            ("secret/data/private/key", Capability::Read, false),
            ("secret/data/open", Capability::Update, true),
        ],
    );
    // Rules of two policies for the same path add up; a deny in either wins.
    let a = Policy::parse("a", r#"path "kv/x" { capabilities = ["read"] }"#).unwrap();
    let b = Policy::parse("b", r#"path "kv/x" { capabilities = ["update"] }"#).unwrap();
    let c = Policy::parse("c", r#"path "kv/x" { capabilities = ["deny"] }"#).unwrap();
    let ab = Acl::compile(&[a.clone(), b.clone()]);
    assert!(ab.allows("kv/x", Capability::Read) && ab.allows("kv/x", Capability::Update));
    let abc = Acl::compile(&[a, b, c]);
    assert!(!abc.allows("kv/x", Capability::Read));
}

#[test]
fn json_policies_are_equivalent() {
    let acl = acl(r#"{"path": {"secret/data/a/*": {"capabilities": ["read"]}}}"#);
    assert!(acl.allows("secret/data/a/b", Capability::Read));
    assert!(!acl.allows("secret/data/a/b", Capability::Update));
}

#[test]
fn invalid_policies_are_refused_with_a_reason() {
    for (text, needle) in [
        ("", "no `path` rule"),
        (
            r#"path "a" { capabilities = ["fly"] }"#,
            "unknown capability `fly`",
        ),
        (r#"path "a" { capabilities = ["read"]"#, "end of policy"),
        ("path a { }", "line 1: expected a quoted path"),
        (
            "\n\npath \"a\" { policy = \"read\" }",
            "line 3: unsupported key `policy`",
        ),
        (
            r#"path "a/*/b" { capabilities = ["read"] }"#,
            "only allowed at the end",
        ),
        (
            r#"path "/a" { capabilities = ["read"] }"#,
            "must not start with `/`",
        ),
        (
            r#"path "a" { capabilities = ["read"] } $"#,
            "unexpected `$`",
        ),
        (
            r#"{"path": {"a": {"capabilities": "read"}}}"#,
            "invalid type",
        ),
    ] {
        match Policy::parse("p", text) {
            Err(SecretsError::InvalidRequest(m)) => {
                assert!(m.contains(needle), "`{text}`: `{m}` lacks `{needle}`")
            }
            other => panic!("`{text}` should be refused, got {other:?}"),
        }
    }
}

#[test]
fn comments_are_ignored() {
    let acl =
        acl("# comment\n// another\npath \"a\" { # trailing\n capabilities = [\"read\",] }\n");
    assert!(acl.allows("a", Capability::Read));
}

#[tokio::test]
async fn a_bad_policy_write_changes_nothing() {
    let f = open().await;
    f.secrets
        .write_policy("app", r#"path "secret/data/a" { capabilities = ["read"] }"#)
        .await
        .unwrap();
    assert!(f.secrets.write_policy("app", "path oops").await.is_err());
    assert!(
        f.secrets
            .write_policy("bad name", r#"path "a" { capabilities = ["read"] }"#)
            .await
            .is_err()
    );
    assert!(
        f.secrets
            .write_policy("root", r#"path "*" { capabilities = ["sudo"] }"#)
            .await
            .is_err()
    );
    assert!(
        f.secrets
            .write_policy("default", r#"path "*" { capabilities = ["sudo"] }"#)
            .await
            .is_err()
    );
    let text = f.secrets.read_policy("app").await.unwrap().unwrap();
    assert!(text.contains("secret/data/a"));
    assert_eq!(
        f.secrets.list_policies().await.unwrap(),
        vec!["default", "app"]
    );
}

#[tokio::test]
async fn a_policy_change_applies_to_existing_tokens() {
    let f = open().await;
    f.secrets
        .write_policy("p", r#"path "secret/data/a" { capabilities = ["read"] }"#)
        .await
        .unwrap();
    let token = f.login("r", &["p"]).await.token;
    assert!(
        f.secrets
            .authorize(Some(&token), "secret/data/a", &[Capability::Read])
            .await
            .is_ok()
    );
    f.secrets
        .write_policy("p", r#"path "secret/data/b" { capabilities = ["read"] }"#)
        .await
        .unwrap();
    assert!(matches!(
        f.secrets
            .authorize(Some(&token), "secret/data/a", &[Capability::Read])
            .await,
        Err(SecretsError::PermissionDenied)
    ));
    // The default policy lets a token look itself up, nothing more.
    assert!(
        f.secrets
            .authorize(Some(&token), "auth/token/lookup-self", &[Capability::Read])
            .await
            .is_ok()
    );
    assert!(
        f.secrets
            .authorize(
                Some(&token),
                "sys/leases/revoke-prefix/x",
                &[Capability::Sudo]
            )
            .await
            .is_err()
    );
}
