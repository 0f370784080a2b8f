//! Cedar policy at issuance: the default tiers, explainable denials, and
//! reloads that never leave the STS without a valid policy set.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::sync::Arc;
use std::time::Duration;

use keyless_sts::StsError;
use keyless_sts::policy::{
    DEFAULT_POLICIES, DEFAULT_SCHEMA, DecisionInput, LoadedPolicies, PolicyDecision, PolicyStore,
};

fn input(action: &str, tier: u8) -> DecisionInput {
    DecisionInput {
        agent: "spiffe://example.org/agent/helper".into(),
        action: action.into(),
        resource: "directory".into(),
        user: "alice@example.com".into(),
        session_age_secs: 60,
        tier,
        rar_type: "directory_read".into(),
        amount: None,
        currency: None,
        destination: None,
        risk_level: "low".into(),
        approvals: 0,
        step_up: false,
        time: 1_800_000_000,
    }
}

fn transfer(amount: f64, step_up: bool) -> DecisionInput {
    DecisionInput {
        resource: "bank".into(),
        rar_type: "transfer_funds".into(),
        amount: Some(amount),
        currency: Some("USD".into()),
        destination: Some("ACC-2".into()),
        step_up,
        ..input("transfer_funds", 3)
    }
}

fn denied(d: PolicyDecision) -> (Vec<String>, String) {
    match d {
        PolicyDecision::Deny { policies, reason } => (policies, reason),
        PolicyDecision::Allow { policies } => panic!("allowed by {policies:?}"),
    }
}

#[test]
fn default_tiers_permit_read_write_sensitive() {
    let p = LoadedPolicies::defaults().unwrap();
    for (action, tier, by) in [
        ("read", 1, "tier-1-read"),
        ("update", 2, "tier-2-write"),
        ("disable_user", 3, "tier-3-sensitive"),
    ] {
        assert_eq!(
            p.decide(&input(action, tier)),
            PolicyDecision::Allow {
                policies: vec![by.into()]
            }
        );
    }
    // An action no policy names is still decided by tier.
    assert!(matches!(
        p.decide(&input("some_tool", 1)),
        PolicyDecision::Allow { .. }
    ));
}

#[test]
fn tier_4_actions_are_denied_naming_the_policy_and_its_reason() {
    let p = LoadedPolicies::defaults().unwrap();
    let (ids, reason) = denied(p.decide(&input("delete_user", 4)));
    assert_eq!(ids, ["forbid-delete-user", "tier-4-blocked"]);
    assert!(
        reason.contains("forbid-delete-user: deleting users is never delegated to an agent"),
        "{reason}"
    );
    let (ids, reason) = denied(p.decide(&input("grant_admin_role", 4)));
    assert!(ids.contains(&"forbid-grant-admin-role".to_owned()));
    assert!(
        reason.contains("granting admin roles is never delegated"),
        "{reason}"
    );
    // Even at a lower claimed tier, the action itself is forbidden.
    let (ids, _) = denied(p.decide(&input("delete_user", 1)));
    assert_eq!(ids, ["forbid-delete-user"]);
    let (ids, reason) = denied(p.decide(&input("anything", 4)));
    assert_eq!(ids, ["tier-4-blocked"]);
    assert_eq!(
        reason,
        "tier-4-blocked: tier 4 actions are blocked for agents"
    );
}

#[test]
fn transfers_above_the_limit_need_step_up() {
    let p = LoadedPolicies::defaults().unwrap();
    assert!(matches!(
        p.decide(&transfer(1000.0, false)),
        PolicyDecision::Allow { .. }
    ));
    let (ids, reason) = denied(p.decide(&transfer(1000.01, false)));
    assert_eq!(ids, ["transfer-limit"]);
    assert!(reason.contains("need a step-up"), "{reason}");
    assert!(matches!(
        p.decide(&transfer(5000.0, true)),
        PolicyDecision::Allow { .. }
    ));
}

#[test]
fn high_risk_sessions_keep_reads_only_until_step_up_and_unknown_tiers_are_denied() {
    let p = LoadedPolicies::defaults().unwrap();
    let risky = |action: &str, tier: u8, step_up: bool| DecisionInput {
        risk_level: "high".into(),
        step_up,
        ..input(action, tier)
    };
    assert_eq!(
        p.decide(&risky("read", 1, false)),
        PolicyDecision::Allow {
            policies: vec!["tier-1-read".into()]
        }
    );
    for (action, tier) in [("update", 2), ("disable_user", 3)] {
        let (ids, reason) = denied(p.decide(&risky(action, tier, false)));
        assert_eq!(ids, ["high-risk-session"], "{action}");
        assert!(reason.contains("only reads are allowed"), "{reason}");
        assert!(
            matches!(
                p.decide(&risky(action, tier, true)),
                PolicyDecision::Allow { .. }
            ),
            "{action} after step-up"
        );
    }
    // Medium risk restricts nothing by itself.
    let mut medium = input("update", 2);
    medium.risk_level = "medium".into();
    assert!(matches!(p.decide(&medium), PolicyDecision::Allow { .. }));
    // No permit matches tier 0: default deny, said as such.
    let (ids, reason) = denied(p.decide(&input("read", 0)));
    assert!(ids.is_empty());
    assert_eq!(reason, "no permit policy matched");
}

#[test]
fn invalid_policy_sets_are_refused() {
    let cases = [
        ("permit(principal, action, resource", "policies:"),
        ("permit(principal, action, resource);", "no @id"),
        (
            "@id(\"a\") forbid(principal, action, resource);",
            "no @reason",
        ),
        (
            "@id(\"a\") permit(principal, action, resource);\n@id(\"a\") permit(principal, action, resource);",
            "used twice",
        ),
        // Type error against the schema: tier is a Long.
        (
            "@id(\"a\") permit(principal, action, resource) when { context.tier == \"1\" };",
            "validate",
        ),
        (
            "@id(\"a\") permit(principal, action, resource) when { context.nonexistent };",
            "validate",
        ),
        (
            "@id(\"a\") permit(principal, action == Action::\"undeclared\", resource);",
            "validate",
        ),
        ("", "empty"),
    ];
    for (src, expected) in cases {
        match LoadedPolicies::parse(DEFAULT_SCHEMA, src, "test") {
            Err(StsError::InvalidPolicy(msg)) => assert!(msg.contains(expected), "{src}: {msg}"),
            other => panic!("{src}: {other:?}"),
        }
    }
    assert!(LoadedPolicies::parse("entity", DEFAULT_POLICIES, "test").is_err());
}

#[tokio::test]
async fn reload_from_a_directory_swaps_atomically_and_keeps_the_old_set_on_error() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(dir.join("default.cedar"), DEFAULT_POLICIES).unwrap();
    let store = Arc::new(PolicyStore::new(LoadedPolicies::from_dir(dir).unwrap()));
    assert!(matches!(
        store.decide(&input("update", 2)),
        PolicyDecision::Allow { .. }
    ));

    // A stricter set: writes now need an approval.
    let stricter = DEFAULT_POLICIES.replace(
        "when { context.tier == 2 };",
        "when { context.tier == 2 && context.approvals > 0 };",
    );
    std::fs::write(dir.join("default.cedar"), &stricter).unwrap();
    store.reload_from_dir(dir).unwrap();
    assert!(matches!(
        store.decide(&input("update", 2)),
        PolicyDecision::Deny { .. }
    ));

    // A broken file is refused; the stricter set stays in force.
    std::fs::write(dir.join("zz-broken.cedar"), "permit(principal").unwrap();
    assert!(matches!(
        store.reload_from_dir(dir),
        Err(StsError::InvalidPolicy(_))
    ));
    assert!(matches!(
        store.decide(&input("update", 2)),
        PolicyDecision::Deny { .. }
    ));
    assert!(matches!(
        store.decide(&input("read", 1)),
        PolicyDecision::Allow { .. }
    ));
}

#[tokio::test]
async fn the_watcher_reloads_on_change_and_ignores_invalid_edits() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    std::fs::write(dir.join("default.cedar"), DEFAULT_POLICIES).unwrap();
    let store = Arc::new(PolicyStore::new(LoadedPolicies::from_dir(&dir).unwrap()));
    let watch = store.spawn_watch(dir.clone(), Duration::from_millis(20));

    // Invalid edit: nothing changes.
    std::fs::write(
        dir.join("extra.cedar"),
        "@id(\"x\") forbid(principal, action, resource);",
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(matches!(
        store.decide(&input("read", 1)),
        PolicyDecision::Allow { .. }
    ));

    // Valid edit: a forbid-everything policy with a reason takes effect.
    std::fs::write(
        dir.join("extra.cedar"),
        "@id(\"freeze\") @reason(\"maintenance\") forbid(principal, action, resource);",
    )
    .unwrap();
    let mut frozen = false;
    for _ in 0..100 {
        if let PolicyDecision::Deny { policies, .. } = store.decide(&input("read", 1)) {
            assert_eq!(policies, ["freeze"]);
            frozen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    watch.abort();
    assert!(frozen, "the watcher did not pick up the valid edit");
    assert_eq!(store.current().ids.len(), 9);
}
