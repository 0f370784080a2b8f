//! RFC 9396 authorization details: the built-in types' schemas accept what
//! they should and refuse everything else with a clear description.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use keyless_sts::StsError;
use keyless_sts::rar::{RarRegistry, narrows};
use serde_json::{Value, json};

/// Validates `details` (a JSON array) and returns the summaries, or the
/// error description.
fn check(details: Value) -> Result<Vec<String>, String> {
    let registry = RarRegistry::builtin().unwrap();
    match registry.parse(&details.to_string()) {
        Ok(d) => Ok(d.into_iter().map(|d| d.summary).collect()),
        Err(StsError::InvalidAuthorizationDetails(msg)) => Err(msg),
        Err(other) => panic!("unexpected error {other:?}"),
    }
}

#[test]
fn valid_details_of_every_type_pass_with_a_human_summary() {
    let cases = [
        (
            json!({"type": "directory_read", "actions": ["read"], "datatypes": ["users"], "limit": 50}),
            "Read users, limit=50",
        ),
        (
            json!({"type": "directory_write", "actions": ["update"], "datatypes": ["users"], "identifier": "u-42"}),
            "Update users u-42",
        ),
        (
            json!({"type": "directory_admin", "actions": ["delete_user"], "identifier": "u-42"}),
            "Delete user u-42",
        ),
        (
            json!({"type": "transfer_funds", "amount": 250, "currency": "USD", "destination": "ACC-2"}),
            "Transfer 250 USD to ACC-2",
        ),
        (
            json!({"type": "transfer_funds", "amount": 12.5, "currency": "EUR", "destination": "ACC-9", "actions": ["transfer_funds"], "locations": ["bank"], "tier": 3}),
            "Transfer 12.5 EUR to ACC-9",
        ),
        (
            json!({"type": "tool_call", "tool": "github.create_issue", "arguments_sha256": "a".repeat(64)}),
            "Call tool github.create_issue",
        ),
    ];
    for (detail, summary) in cases {
        assert_eq!(
            check(json!([detail])).unwrap(),
            vec![summary.to_owned()],
            "{detail}"
        );
    }
}

#[test]
fn tiers_come_from_the_type_the_actions_and_the_detail() {
    let registry = RarRegistry::builtin().unwrap();
    let tier = |d: Value| registry.validate(&[d]).unwrap()[0].tier;
    assert_eq!(
        tier(json!({"type": "directory_read", "actions": ["read"]})),
        1
    );
    assert_eq!(
        tier(json!({"type": "directory_write", "actions": ["create"]})),
        2
    );
    assert_eq!(
        tier(json!({"type": "directory_admin", "actions": ["disable_user"]})),
        3
    );
    assert_eq!(
        tier(json!({"type": "directory_admin", "actions": ["grant_admin_role"]})),
        4
    );
    assert_eq!(
        tier(json!({"type": "transfer_funds", "amount": 1, "currency": "USD", "destination": "A"})),
        3
    );
    // A detail may raise its tier, never lower it.
    assert_eq!(
        tier(json!({"type": "directory_read", "actions": ["read"], "tier": 3})),
        3
    );
    assert_eq!(
        tier(
            json!({"type": "transfer_funds", "amount": 1, "currency": "USD", "destination": "A", "tier": 1})
        ),
        3
    );
    let d = &registry
        .validate(&[json!({"type": "directory_read", "actions": ["read", "list"]})])
        .unwrap()[0];
    assert_eq!(d.actions, ["read", "list"]);
    let d = &registry
        .validate(&[json!({"type": "tool_call", "tool": "x"})])
        .unwrap()[0];
    assert_eq!(
        d.actions,
        ["tool_call"],
        "no actions: the type is the action"
    );
}

#[test]
fn schema_violations_are_refused_with_a_clear_description() {
    let cases: &[(Value, &str)] = &[
        (
            json!({"type": "transfer_funds", "amount": 0, "currency": "USD", "destination": "A"}),
            "/amount",
        ),
        (
            json!({"type": "transfer_funds", "amount": -5, "currency": "USD", "destination": "A"}),
            "/amount",
        ),
        (
            json!({"type": "transfer_funds", "amount": "250", "currency": "USD", "destination": "A"}),
            "/amount",
        ),
        (
            json!({"type": "transfer_funds", "amount": 5, "currency": "usd", "destination": "A"}),
            "/currency",
        ),
        (
            json!({"type": "transfer_funds", "amount": 5, "currency": "USDT", "destination": "A"}),
            "/currency",
        ),
        (
            json!({"type": "transfer_funds", "amount": 5, "currency": "USD", "destination": "../x"}),
            "/destination",
        ),
        (
            json!({"type": "transfer_funds", "amount": 5, "currency": "USD"}),
            "destination",
        ),
        (
            json!({"type": "transfer_funds", "amount": 5, "currency": "USD", "destination": "A", "memo": "hi"}),
            "memo",
        ),
        (
            json!({"type": "directory_read", "actions": ["delete"]}),
            "/actions/0",
        ),
        (json!({"type": "directory_read", "actions": []}), "/actions"),
        (
            json!({"type": "directory_read", "actions": ["read"], "limit": 5000}),
            "/limit",
        ),
        (
            json!({"type": "directory_read", "actions": ["read"], "tier": 0}),
            "/tier",
        ),
        (json!({"type": "directory_admin"}), "actions"),
        (
            json!({"type": "tool_call", "tool": "x", "arguments_sha256": "XYZ"}),
            "/arguments_sha256",
        ),
    ];
    for (detail, path) in cases {
        let msg = check(json!([detail])).unwrap_err();
        assert!(msg.contains("violates its schema"), "{detail}: {msg}");
        assert!(
            msg.contains(path),
            "{detail}: `{msg}` does not point at {path}"
        );
        assert!(msg.starts_with("authorization_details[0] (type `"), "{msg}");
    }
}

#[test]
fn malformed_parameters_and_unknown_types_are_refused() {
    let registry = RarRegistry::builtin().unwrap();
    let err = |s: &str| match registry.parse(s) {
        Err(StsError::InvalidAuthorizationDetails(m)) => m,
        other => panic!("{s}: {other:?}"),
    };
    assert!(err("not json").contains("not valid json"));
    assert!(err("{}").contains("must be a json array"));
    assert!(err("[]").contains("must not be empty"));
    assert!(err("[1]").contains("not a json object"));
    assert!(err(r#"[{"actions":["read"]}]"#).contains("has no `type`"));
    assert!(err(r#"[{"type":7}]"#).contains("not a string"));
    assert!(err(r#"[{"type":"launch_missiles"}]"#).contains("unknown type `launch_missiles`"));
    let many = serde_json::to_string(&vec![json!({"type": "tool_call", "tool": "x"}); 9]).unwrap();
    assert!(err(&many).contains("more than 8"));
    assert!(err(&"x".repeat(20_000)).contains("too long"));
    // The second detail's problem is reported with its index.
    let two = json!([{"type": "tool_call", "tool": "x"}, {"type": "nope"}]).to_string();
    assert!(err(&two).starts_with("authorization_details[1]"));
}

#[test]
fn registry_lists_types_and_refuses_open_schemas() {
    let mut registry = RarRegistry::builtin().unwrap();
    assert_eq!(
        registry.types_supported(),
        [
            "directory_admin",
            "directory_read",
            "directory_write",
            "tool_call",
            "transfer_funds"
        ]
    );
    let open = json!({"type": "object", "required": ["type"]});
    assert!(registry.register("open_type", open, 1).is_err());
    let closed = json!({"type": "object", "required": ["type"], "additionalProperties": false,
                        "properties": {"type": {"const": "ping"}}});
    registry.register("ping", closed, 1).unwrap();
    assert!(registry.types_supported().contains(&"ping".to_owned()));
}

#[test]
fn narrowing_allows_only_less_authority() {
    let granted = json!({"type": "transfer_funds", "amount": 250, "currency": "USD", "destination": "ACC-2", "actions": ["transfer_funds"]});
    assert!(narrows(&granted, &granted));
    let mut less = granted.clone();
    less["amount"] = json!(100);
    assert!(narrows(&less, &granted));
    let mut more = granted.clone();
    more["amount"] = json!(251);
    assert!(!narrows(&more, &granted));
    let mut elsewhere = granted.clone();
    elsewhere["destination"] = json!("ACC-3");
    assert!(!narrows(&elsewhere, &granted));
    // Dropping a constraint widens.
    let mut unconstrained = granted.clone();
    unconstrained.as_object_mut().unwrap().remove("destination");
    assert!(!narrows(&unconstrained, &granted));
    let read = json!({"type": "directory_read", "actions": ["read", "list"], "limit": 50});
    assert!(narrows(
        &json!({"type": "directory_read", "actions": ["read"], "limit": 10}),
        &read
    ));
    assert!(!narrows(
        &json!({"type": "directory_read", "actions": ["search"], "limit": 10}),
        &read
    ));
    // Lowering a tier loosens the approval regime.
    let t3 = json!({"type": "tool_call", "tool": "x", "tier": 3});
    assert!(!narrows(
        &json!({"type": "tool_call", "tool": "x", "tier": 2}),
        &t3
    ));
    assert!(narrows(
        &json!({"type": "tool_call", "tool": "x", "tier": 4}),
        &t3
    ));
}
