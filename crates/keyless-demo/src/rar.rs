//! Checks of RFC 9396 `authorization_details` against the call being made.
//!
//! A call is covered when at least one detail of the required `type` allows
//! it completely; details are never combined (a `list` action from one and a
//! higher `limit` from another do not add up). The error string explains what
//! the closest detail lacks; callers prefix it with `forbidden: `.

use serde_json::{Map, Value};

/// One authorization detail object.
pub(crate) type Detail = Map<String, Value>;

/// Succeeds when some detail of type `kind` passes `check`.
pub(crate) fn require<F>(details: &[Value], kind: &str, check: F) -> Result<(), String>
where
    F: Fn(&Detail) -> Result<(), String>,
{
    let mut first_reason = None;
    for detail in details.iter().filter_map(Value::as_object) {
        if detail.get("type").and_then(Value::as_str) != Some(kind) {
            continue;
        }
        match check(detail) {
            Ok(()) => return Ok(()),
            Err(reason) => {
                first_reason.get_or_insert(reason);
            }
        }
    }
    Err(first_reason.unwrap_or_else(|| format!("the token grants no `{kind}` authorization")))
}

/// The detail's `actions` include every one of `needed`.
pub(crate) fn actions(detail: &Detail, needed: &[&str]) -> Result<(), String> {
    let granted: Vec<&str> = detail
        .get("actions")
        .and_then(Value::as_array)
        .map(|actions| actions.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    match needed.iter().find(|action| !granted.contains(action)) {
        Some(missing) => Err(format!(
            "the `{}` authorization does not allow action `{missing}`",
            kind(detail)
        )),
        None => Ok(()),
    }
}

/// If the detail names an `identifier`, it is `email` (case-insensitively).
pub(crate) fn identifier(detail: &Detail, email: &str) -> Result<(), String> {
    match detail.get("identifier") {
        None | Some(Value::Null) => Ok(()),
        Some(Value::String(granted)) if granted.trim().eq_ignore_ascii_case(email.trim()) => Ok(()),
        Some(Value::String(granted)) => Err(format!(
            "the `{}` authorization is for `{granted}`, not `{email}`",
            kind(detail)
        )),
        Some(_) => Err(format!(
            "the `{}` authorization has a malformed `identifier`",
            kind(detail)
        )),
    }
}

/// If the detail has a `limit`, `requested` does not exceed it.
pub(crate) fn limit(detail: &Detail, requested: u32) -> Result<(), String> {
    match detail.get("limit") {
        None | Some(Value::Null) => Ok(()),
        Some(granted) => match granted.as_u64() {
            Some(granted) if u64::from(requested) <= granted => Ok(()),
            Some(granted) => Err(format!(
                "the `{}` authorization allows at most {granted} results, {requested} were requested",
                kind(detail)
            )),
            None => Err(format!(
                "the `{}` authorization has a malformed `limit`",
                kind(detail)
            )),
        },
    }
}

/// The detail's `tool` names `tool`, bare or namespaced (`bank.get_balance`).
pub(crate) fn tool(detail: &Detail, tool: &str) -> Result<(), String> {
    let granted = detail
        .get("tool")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let matches = granted == tool
        || granted.strip_suffix(tool).is_some_and(|namespace| {
            namespace.ends_with(['.', '/', ':', '_']) && namespace.len() > 1
        });
    if matches {
        Ok(())
    } else {
        Err(format!(
            "the `tool_call` authorization is for `{granted}`, not `{tool}`"
        ))
    }
}

/// The detail's string field `field` equals `requested` exactly.
pub(crate) fn equals(detail: &Detail, field: &str, requested: &str) -> Result<(), String> {
    match detail.get(field).and_then(Value::as_str) {
        Some(granted) if granted == requested => Ok(()),
        Some(granted) => Err(format!(
            "the `{}` authorization is for {field} `{granted}`, not `{requested}`",
            kind(detail)
        )),
        None => Err(format!(
            "the `{}` authorization names no `{field}`",
            kind(detail)
        )),
    }
}

/// The detail's `amount` (a decimal number) is at least `requested_cents`.
pub(crate) fn amount_at_least(detail: &Detail, requested_cents: i64) -> Result<(), String> {
    let granted = detail
        .get("amount")
        .and_then(Value::as_f64)
        .and_then(to_cents)
        .ok_or_else(|| {
            format!(
                "the `{}` authorization names no valid `amount`",
                kind(detail)
            )
        })?;
    if requested_cents <= granted {
        Ok(())
    } else {
        Err(format!(
            "the `{}` authorization allows at most {}, {} was requested",
            kind(detail),
            format_cents(granted),
            format_cents(requested_cents)
        ))
    }
}

/// A non-negative decimal amount in cents; None when not finite, negative,
/// beyond 10^9 or finer than a cent.
pub(crate) fn to_cents(amount: f64) -> Option<i64> {
    if !amount.is_finite() || !(0.0..=1_000_000_000.0).contains(&amount) {
        return None;
    }
    let cents = (amount * 100.0).round();
    if (amount * 100.0 - cents).abs() > 1e-6 {
        return None;
    }
    Some(cents as i64)
}

/// `12345` → `"123.45"`.
pub(crate) fn format_cents(cents: i64) -> String {
    let sign = if cents < 0 { "-" } else { "" };
    let cents = cents.unsigned_abs();
    format!("{sign}{}.{:02}", cents / 100, cents % 100)
}

fn kind(detail: &Detail) -> &str {
    detail.get("type").and_then(Value::as_str).unwrap_or("?")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn details(value: Value) -> Vec<Value> {
        value.as_array().cloned().unwrap()
    }

    #[test]
    fn one_detail_must_cover_the_whole_call() {
        let granted = details(json!([
            {"type": "directory_read", "actions": ["list"], "limit": 10},
            {"type": "directory_read", "actions": ["read"]},
        ]));
        let list = |n| {
            require(&granted, "directory_read", |d| {
                actions(d, &["list"]).and(limit(d, n))
            })
        };
        assert!(list(10).is_ok());
        assert!(list(11).unwrap_err().contains("at most 10"));
        assert!(
            require(&granted, "directory_write", |_| Ok(()))
                .unwrap_err()
                .contains("no `directory_write`")
        );
    }

    #[test]
    fn identifier_and_tool_names() {
        let detail = json!({"type": "directory_read", "identifier": "Alice@example.com"});
        let detail = detail.as_object().unwrap();
        assert!(identifier(detail, "alice@example.com").is_ok());
        assert!(identifier(detail, "bob@example.com").is_err());
        for (granted, ok) in [
            ("get_balance", true),
            ("bank.get_balance", true),
            ("bank/get_balance", true),
            ("xget_balance", false),
            ("list_transactions", false),
        ] {
            let detail = json!({"type": "tool_call", "tool": granted});
            assert_eq!(
                tool(detail.as_object().unwrap(), "get_balance").is_ok(),
                ok,
                "{granted}"
            );
        }
    }

    #[test]
    fn amounts_compare_in_cents() {
        assert_eq!(to_cents(0.1 + 0.2), Some(30));
        assert_eq!(to_cents(100.005), None);
        assert_eq!(to_cents(-1.0), None);
        assert_eq!(to_cents(f64::NAN), None);
        let detail = json!({"type": "transfer_funds", "amount": 100});
        let detail = detail.as_object().unwrap();
        assert!(amount_at_least(detail, 10_000).is_ok());
        assert!(amount_at_least(detail, 10_001).is_err());
        assert_eq!(format_cents(-7550), "-75.50");
    }
}
