//! Canonical JSON: the exact bytes the log hashes, so that a hash can be
//! recomputed from the stored entry by anyone, in any language.
//!
//! Rules: UTF-8; no insignificant whitespace; object members sorted by the
//! bytes of their UTF-8 keys (this differs from RFC 8785, which sorts by
//! UTF-16 code units, only for keys mixing characters above U+FFFF with
//! characters in U+E000–U+FFFF); strings escaped as serde_json escapes them
//! (`"` `\` and control characters only, `\u00XX` for those without a short
//! form); integers in decimal; floats in serde_json's shortest round-trip
//! form (`1.5`, `1.0`, `1e300`). Non-finite floats cannot be represented and
//! are removed from events before they are hashed.
//!
//! Sorting is done here, explicitly, rather than relying on serde_json's map
//! being a `BTreeMap`: any crate in the build enabling serde_json's
//! `preserve_order` feature would otherwise silently change every hash.

use serde::Serialize;
use serde_json::Value;

/// Serializes `value` to canonical JSON.
pub fn to_canonical_json<T: Serialize + ?Sized>(value: &T) -> Result<String, serde_json::Error> {
    let v = serde_json::to_value(value)?;
    let mut out = String::with_capacity(256);
    write_value(&v, &mut out)?;
    Ok(out)
}

fn write_value(v: &Value, out: &mut String) -> Result<(), serde_json::Error> {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Number(n) => out.push_str(&serde_json::to_string(n)?),
        Value::String(s) => out.push_str(&serde_json::to_string(s)?),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(item, out)?;
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut members: Vec<(&String, &Value)> = map.iter().collect();
            members.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push('{');
            for (i, (k, item)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&serde_json::to_string(k)?);
                out.push(':');
                write_value(item, out)?;
            }
            out.push('}');
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn check(input: Value, expected: &str) {
        assert_eq!(to_canonical_json(&input).unwrap(), expected);
    }

    #[test]
    fn canonical_forms() {
        check(
            json!({"b": 1, "a": [true, null, "x"]}),
            r#"{"a":[true,null,"x"],"b":1}"#,
        );
        check(json!({"z": {"y": 1, "x": 2}}), r#"{"z":{"x":2,"y":1}}"#);
        check(json!(1.5), "1.5");
        check(json!(1.0), "1.0");
        check(json!(-0.0), "-0.0");
        check(json!(12345678901234_i64), "12345678901234");
        check(json!("é\"\\\n\u{1}/"), "\"é\\\"\\\\\\n\\u0001/\"");
        // Byte order of UTF-8 keys: "B" < "a" < "é".
        check(json!({"é": 1, "a": 2, "B": 3}), r#"{"B":3,"a":2,"é":1}"#);
    }
}
