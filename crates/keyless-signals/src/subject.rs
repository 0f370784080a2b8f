//! Subject identifiers (RFC 9493) and the SSF 1.0 `complex` format: how a
//! Security Event Token names the user, session or device it is about.
//!
//! Validation is strict on purpose: a receiver acts on `sub_id` (revokes
//! sessions, raises risk), so a subject in an unknown format, with a missing
//! member, or with members the format does not define is refused rather than
//! guessed at. Extra members are refused because two identifiers that differ
//! only in an ignored member would otherwise compare unequal in
//! [`matches`] and silently miss a stream's subject filter.

use serde_json::{Map, Value, json};

/// Members a `complex` subject may carry (SSF 1.0 §3.2), each a simple subject.
pub const COMPLEX_MEMBERS: &[&str] = &[
    "user",
    "device",
    "session",
    "application",
    "tenant",
    "org_unit",
    "group",
];

/// Checks that `v` is a subject identifier in a format Keyless understands:
/// `email`, `iss_sub`, `opaque`, `account`, `phone_number`, `did`, `uri`,
/// `aliases` (RFC 9493) or `complex` (SSF 1.0).
pub fn validate_subject(v: &Value) -> Result<(), String> {
    let obj = as_subject_object(v)?;
    if format_of(obj)? == "complex" {
        validate_complex(obj)
    } else {
        validate_simple(obj)
    }
}

fn as_subject_object(v: &Value) -> Result<&Map<String, Value>, String> {
    v.as_object()
        .ok_or_else(|| "a subject identifier must be a JSON object".to_owned())
}

fn format_of(obj: &Map<String, Value>) -> Result<&str, String> {
    match obj.get("format") {
        Some(Value::String(f)) => Ok(f),
        Some(_) => Err("subject member `format` must be a string".to_owned()),
        None => Err("subject identifier has no `format` member".to_owned()),
    }
}

/// Validates a subject in any RFC 9493 format (not `complex`).
fn validate_simple(obj: &Map<String, Value>) -> Result<(), String> {
    let format = format_of(obj)?;
    let members: &[&str] = match format {
        "email" => &["email"],
        "iss_sub" => &["iss", "sub"],
        "opaque" => &["id"],
        "account" => &["uri"],
        "phone_number" => &["phone_number"],
        "did" => &["url"],
        "uri" => &["uri"],
        "aliases" => &["identifiers"],
        "complex" => {
            return Err("a `complex` subject cannot be nested in another subject".to_owned());
        }
        other => return Err(format!("unsupported subject format `{other}`")),
    };
    reject_unknown_members(obj, format, members)?;
    if format == "aliases" {
        return validate_aliases(obj);
    }
    for &name in members {
        let value = required_string(obj, format, name)?;
        check_member_syntax(format, name, value)?;
    }
    Ok(())
}

fn reject_unknown_members(
    obj: &Map<String, Value>,
    format: &str,
    allowed: &[&str],
) -> Result<(), String> {
    match obj
        .keys()
        .find(|k| k.as_str() != "format" && !allowed.contains(&k.as_str()))
    {
        Some(extra) => Err(format!(
            "subject format `{format}` does not define member `{extra}`"
        )),
        None => Ok(()),
    }
}

fn required_string<'a>(
    obj: &'a Map<String, Value>,
    format: &str,
    name: &str,
) -> Result<&'a str, String> {
    match obj.get(name) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s),
        Some(Value::String(_)) => Err(format!(
            "member `{name}` of a `{format}` subject must not be empty"
        )),
        Some(_) => Err(format!(
            "member `{name}` of a `{format}` subject must be a string"
        )),
        None => Err(format!("a `{format}` subject needs member `{name}`")),
    }
}

fn check_member_syntax(format: &str, name: &str, value: &str) -> Result<(), String> {
    let ok = match format {
        // RFC 9493 §3.2.1 defers to RFC 5322 addr-spec; a full parser would
        // reject addresses real directories hold, so only the shape is checked.
        "email" => value
            .rsplit_once('@')
            .is_some_and(|(local, domain)| !local.is_empty() && !domain.is_empty()),
        "account" => value.len() > "acct:".len() && value.starts_with("acct:"),
        // E.164: a plus sign and at most 15 digits.
        "phone_number" => value.strip_prefix('+').is_some_and(|digits| {
            (1..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit())
        }),
        "did" => value.len() > "did:".len() && value.starts_with("did:"),
        "uri" => url::Url::parse(value).is_ok(),
        _ => true,
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "member `{name}` of a `{format}` subject is not valid: `{value}`"
        ))
    }
}

fn validate_aliases(obj: &Map<String, Value>) -> Result<(), String> {
    let ids = match obj.get("identifiers") {
        Some(Value::Array(ids)) if !ids.is_empty() => ids,
        Some(Value::Array(_)) => {
            return Err("an `aliases` subject needs at least one identifier".to_owned());
        }
        Some(_) => {
            return Err("member `identifiers` of an `aliases` subject must be an array".to_owned());
        }
        None => return Err("an `aliases` subject needs member `identifiers`".to_owned()),
    };
    for id in ids {
        let inner = as_subject_object(id)?;
        if format_of(inner)? == "aliases" {
            return Err("an `aliases` subject cannot contain another `aliases` subject".to_owned());
        }
        validate_simple(inner)?;
    }
    Ok(())
}

fn validate_complex(obj: &Map<String, Value>) -> Result<(), String> {
    reject_unknown_members(obj, "complex", COMPLEX_MEMBERS)?;
    let mut present = 0usize;
    for &name in COMPLEX_MEMBERS {
        if let Some(member) = obj.get(name) {
            let inner = as_subject_object(member)
                .map_err(|e| format!("member `{name}` of a `complex` subject: {e}"))?;
            validate_simple(inner)
                .map_err(|e| format!("member `{name}` of a `complex` subject: {e}"))?;
            present += 1;
        }
    }
    if present == 0 {
        return Err(format!(
            "a `complex` subject needs at least one of {}",
            COMPLEX_MEMBERS.join(", ")
        ));
    }
    Ok(())
}

// === builders ===

/// An `email` subject.
pub fn email(e: &str) -> Value {
    json!({"format": "email", "email": e})
}

/// An `iss_sub` subject: the subject `sub` as named by issuer `iss`.
pub fn iss_sub(iss: &str, sub: &str) -> Value {
    json!({"format": "iss_sub", "iss": iss, "sub": sub})
}

/// An `opaque` subject: an identifier only the two parties understand.
pub fn opaque(id: &str) -> Value {
    json!({"format": "opaque", "id": id})
}

/// A `complex` subject naming a user and, when known, one of their sessions
/// (what CAEP `session-revoked` usually carries).
pub fn complex_user_session(user: Value, session: Option<Value>) -> Value {
    let mut obj = Map::new();
    obj.insert("format".to_owned(), Value::String("complex".to_owned()));
    obj.insert("user".to_owned(), user);
    if let Some(session) = session {
        obj.insert("session".to_owned(), session);
    }
    Value::Object(obj)
}

// === canonical form and matching ===

/// A stable string form of a subject (object keys sorted, no whitespace),
/// usable as a database key: two equal subjects give the same string however
/// their members were ordered on the wire.
pub fn canonical(v: &Value) -> String {
    let mut out = String::new();
    write_canonical(v, &mut out);
    out
}

fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                if let Some(inner) = map.get(key) {
                    write_canonical(inner, out);
                }
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        // Scalars have a single serde_json rendering.
        other => out.push_str(&other.to_string()),
    }
}

fn same(a: &Value, b: &Value) -> bool {
    canonical(a) == canonical(b)
}

fn is_format(v: &Value, format: &str) -> bool {
    v.get("format").and_then(Value::as_str) == Some(format)
}

/// Whether a stream subject `filter` (as added through add-subject) covers an
/// event whose `sub_id` is `subject`. True when:
///
/// - the two are equal (member order does not matter);
/// - `subject` is `complex` and one of its members equals `filter` (a stream
///   subscribed to a user sees events about that user's sessions);
/// - both are `complex` and every member of `filter` is in `subject` with the
///   same value (the filter is a subset of the event's subject);
/// - either side is `aliases` and one of its identifiers matches the other side.
pub fn matches(filter: &Value, subject: &Value) -> bool {
    if same(filter, subject) {
        return true;
    }
    if is_format(subject, "aliases") {
        return aliases_of(subject).any(|id| matches(filter, id));
    }
    if is_format(filter, "aliases") {
        return aliases_of(filter).any(|id| matches(id, subject));
    }
    let Some(event) = subject
        .as_object()
        .filter(|_| is_format(subject, "complex"))
    else {
        return false;
    };
    if let Some(wanted) = filter.as_object().filter(|_| is_format(filter, "complex")) {
        let mut members = COMPLEX_MEMBERS
            .iter()
            .filter_map(|&name| wanted.get(name).map(|v| (name, v)))
            .peekable();
        return members.peek().is_some()
            && members.all(|(name, v)| event.get(name).is_some_and(|e| same(v, e)));
    }
    COMPLEX_MEMBERS
        .iter()
        .filter_map(|&name| event.get(name))
        .any(|member| same(filter, member))
}

fn aliases_of(v: &Value) -> impl Iterator<Item = &Value> {
    v.get("identifiers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn check(v: Value, ok: bool) {
        let got = validate_subject(&v);
        assert_eq!(got.is_ok(), ok, "{v} gave {got:?}");
    }

    #[test]
    fn simple_formats() {
        check(email("a@example.com"), true);
        check(json!({"format": "email", "email": "nope"}), false);
        check(json!({"format": "email"}), false);
        check(json!({"format": "email", "email": 5}), false);
        check(
            json!({"format": "email", "email": "a@b", "extra": 1}),
            false,
        );
        check(iss_sub("https://i", "s"), true);
        check(json!({"format": "iss_sub", "iss": "https://i"}), false);
        check(opaque("x"), true);
        check(json!({"format": "opaque", "id": ""}), false);
        check(json!({"format": "account", "uri": "acct:a@b"}), true);
        check(json!({"format": "account", "uri": "mailto:a@b"}), false);
        check(
            json!({"format": "phone_number", "phone_number": "+12065550100"}),
            true,
        );
        check(
            json!({"format": "phone_number", "phone_number": "12065550100"}),
            false,
        );
        check(
            json!({"format": "phone_number", "phone_number": "+1-206"}),
            false,
        );
        check(json!({"format": "did", "url": "did:example:123"}), true);
        check(json!({"format": "did", "url": "https://x"}), false);
        check(
            json!({"format": "uri", "uri": "https://example.com/u/1"}),
            true,
        );
        check(json!({"format": "uri", "uri": "not a uri"}), false);
        check(json!({"format": "unknown", "id": "x"}), false);
        check(json!({"email": "a@b"}), false);
        check(json!({"format": 1}), false);
        check(json!("a@b"), false);
    }

    #[test]
    fn aliases_and_complex() {
        check(
            json!({"format": "aliases", "identifiers": [email("a@b"), opaque("1")]}),
            true,
        );
        check(json!({"format": "aliases", "identifiers": []}), false);
        check(
            json!({"format": "aliases", "identifiers": email("a@b")}),
            false,
        );
        check(
            json!({"format": "aliases", "identifiers": [{"format": "aliases", "identifiers": [email("a@b")]}]}),
            false,
        );
        check(complex_user_session(email("a@b"), Some(opaque("s1"))), true);
        check(json!({"format": "complex"}), false);
        check(json!({"format": "complex", "user": "a@b"}), false);
        check(json!({"format": "complex", "user": email("nope")}), false);
        check(
            json!({"format": "complex", "user": email("a@b"), "colour": opaque("x")}),
            false,
        );
        check(
            json!({"format": "complex", "user": complex_user_session(email("a@b"), None)}),
            false,
        );
        check(
            json!({"format": "aliases", "identifiers": [complex_user_session(email("a@b"), None)]}),
            false,
        );
    }

    #[test]
    fn canonical_sorts_keys() {
        let a: Value = serde_json::from_str(r#"{"iss":"i","format":"iss_sub","sub":"s"}"#).unwrap();
        assert_eq!(canonical(&a), r#"{"format":"iss_sub","iss":"i","sub":"s"}"#);
        assert_eq!(canonical(&a), canonical(&iss_sub("i", "s")));
        let nested = complex_user_session(email("a\"b@c"), Some(opaque("s")));
        assert_eq!(
            canonical(&nested),
            r#"{"format":"complex","session":{"format":"opaque","id":"s"},"user":{"email":"a\"b@c","format":"email"}}"#
        );
    }

    #[test]
    fn matching() {
        let user = email("a@b");
        let event = complex_user_session(user.clone(), Some(opaque("s1")));
        assert!(matches(&user, &user));
        assert!(matches(&user, &event));
        assert!(!matches(&email("c@d"), &event));
        assert!(matches(&complex_user_session(user.clone(), None), &event));
        assert!(!matches(
            &complex_user_session(user.clone(), Some(opaque("s2"))),
            &event
        ));
        assert!(
            !matches(&event, &user),
            "a narrower filter does not match a broader event"
        );
        let alias = json!({"format": "aliases", "identifiers": [opaque("9"), user.clone()]});
        assert!(matches(&user, &alias));
        assert!(matches(&alias, &event));
        assert!(!matches(&opaque("8"), &alias));
        assert!(!matches(&json!({"format": "complex"}), &event));
    }
}
