//! Rich Authorization Requests (RFC 9396): the registry of
//! `authorization_details` types, each described by a JSON Schema, and the
//! validation every request goes through.
//!
//! Schemas are JSON Schema 2020-12 documents (`rar/*.json`, embedded), run
//! by the `jsonschema` crate: the same document is what we validate with
//! and what we can publish, so the two cannot drift. Every schema closes
//! its object (`additionalProperties: false`): a field the STS does not
//! understand could carry authority it never checked.
//!
//! After validation, each detail is read into an [`AuthorizationDetail`]:
//! the Cedar actions it names, its tier, the money fields policy looks at,
//! and a one-line human summary for events.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::StsError;

/// Most details one request may carry.
pub const MAX_DETAILS: usize = 8;
/// Longest `authorization_details` parameter accepted, in bytes.
pub const MAX_DETAILS_LEN: usize = 16 * 1024;

/// Actions whose tier is higher than their type's default: administrative
/// operations that must never be delegated (tier 4 = blocked).
const ACTION_TIERS: &[(&str, u8)] = &[("delete_user", 4), ("grant_admin_role", 4)];

/// One registered type.
#[derive(Debug)]
pub struct RarType {
    pub name: String,
    /// The JSON Schema document.
    pub schema: Value,
    /// The tier of a detail of this type unless its actions or its own
    /// `tier` field say higher.
    pub default_tier: u8,
    validator: jsonschema::Validator,
}

/// A validated authorization detail and what the STS reads from it.
#[derive(Debug, Clone, PartialEq)]
pub struct AuthorizationDetail {
    /// The detail exactly as requested (and as granted: it is copied into
    /// the token and the response unchanged).
    pub value: Value,
    pub rar_type: String,
    /// The Cedar actions: each entry of `actions`, or the type name when
    /// the detail lists none.
    pub actions: Vec<String>,
    /// 1 read, 2 write, 3 sensitive, 4 blocked: the highest of the type's
    /// default, its actions' tiers and the detail's own `tier`.
    pub tier: u8,
    /// `amount`, when the type carries money.
    pub amount: Option<f64>,
    pub currency: Option<String>,
    pub destination: Option<String>,
    /// One human line, e.g. "Read users, limit=50".
    pub summary: String,
}

/// The registered `authorization_details` types.
#[derive(Debug)]
pub struct RarRegistry {
    types: BTreeMap<String, RarType>,
}

/// The built-in types: (name, schema, default tier).
const BUILTIN: &[(&str, &str, u8)] = &[
    ("tool_call", include_str!("../rar/tool_call.json"), 2),
    (
        "directory_read",
        include_str!("../rar/directory_read.json"),
        1,
    ),
    (
        "directory_write",
        include_str!("../rar/directory_write.json"),
        2,
    ),
    (
        "directory_admin",
        include_str!("../rar/directory_admin.json"),
        3,
    ),
    (
        "transfer_funds",
        include_str!("../rar/transfer_funds.json"),
        3,
    ),
];

fn invalid(msg: impl Into<String>) -> StsError {
    StsError::InvalidAuthorizationDetails(msg.into())
}

// === impl RarRegistry ===

impl RarRegistry {
    /// An empty registry.
    pub fn empty() -> Self {
        Self {
            types: BTreeMap::new(),
        }
    }

    /// The five built-in types: `tool_call`, `directory_read`,
    /// `directory_write`, `directory_admin`, `transfer_funds`.
    pub fn builtin() -> Result<Self, StsError> {
        let mut registry = Self::empty();
        for (name, schema, tier) in BUILTIN {
            let schema: Value = serde_json::from_str(schema)
                .map_err(|e| StsError::InvalidConfig(format!("rar schema `{name}`: {e}")))?;
            registry.register(name, schema, *tier)?;
        }
        Ok(registry)
    }

    /// Registers (or replaces) a type. The schema must compile, describe an
    /// object that requires `type`, and close it with
    /// `additionalProperties: false`.
    pub fn register(
        &mut self,
        name: &str,
        schema: Value,
        default_tier: u8,
    ) -> Result<(), StsError> {
        let bad = |m: &str| Err(StsError::InvalidConfig(format!("rar type `{name}`: {m}")));
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return bad("the name must be [a-z0-9_]+");
        }
        if !(1..=4).contains(&default_tier) {
            return bad("the default tier must be 1..4");
        }
        let requires_type = schema
            .get("required")
            .and_then(Value::as_array)
            .is_some_and(|r| r.iter().any(|v| v == "type"));
        if schema.get("type") != Some(&Value::from("object"))
            || !requires_type
            || schema.get("additionalProperties") != Some(&Value::Bool(false))
        {
            return bad("the schema must be a closed object that requires `type`");
        }
        let validator = jsonschema::validator_for(&schema)
            .map_err(|e| StsError::InvalidConfig(format!("rar type `{name}`: {e}")))?;
        self.types.insert(
            name.to_owned(),
            RarType {
                name: name.to_owned(),
                schema,
                default_tier,
                validator,
            },
        );
        Ok(())
    }

    /// The registered type names, sorted (metadata's
    /// `authorization_details_types_supported`).
    pub fn types_supported(&self) -> Vec<String> {
        self.types.keys().cloned().collect()
    }

    pub fn get(&self, name: &str) -> Option<&RarType> {
        self.types.get(name)
    }

    /// Parses the `authorization_details` request parameter (a JSON array)
    /// and validates every element.
    pub fn parse(&self, param: &str) -> Result<Vec<AuthorizationDetail>, StsError> {
        if param.len() > MAX_DETAILS_LEN {
            return Err(invalid("authorization_details is too long"));
        }
        let value: Value = serde_json::from_str(param)
            .map_err(|e| invalid(format!("authorization_details is not valid json: {e}")))?;
        let Value::Array(items) = value else {
            return Err(invalid("authorization_details must be a json array"));
        };
        self.validate(&items)
    }

    /// What a detail of this shape would be decided as (its type, Cedar
    /// actions and tier), without checking it against its schema: for
    /// showing what could be allowed (the gateway's tool listing), never
    /// for issuance. `None` for an unregistered type.
    pub fn preview(&self, item: &Value) -> Option<AuthorizationDetail> {
        let Value::Object(obj) = item else {
            return None;
        };
        let rar_type = self.types.get(obj.get("type")?.as_str()?)?;
        Some(describe(rar_type, obj, item))
    }

    /// Validates details already parsed from JSON.
    pub fn validate(&self, items: &[Value]) -> Result<Vec<AuthorizationDetail>, StsError> {
        if items.is_empty() {
            return Err(invalid("authorization_details must not be empty"));
        }
        if items.len() > MAX_DETAILS {
            return Err(invalid(format!(
                "authorization_details has more than {MAX_DETAILS} entries"
            )));
        }
        items
            .iter()
            .enumerate()
            .map(|(i, item)| self.validate_one(i, item))
            .collect()
    }

    fn validate_one(&self, index: usize, item: &Value) -> Result<AuthorizationDetail, StsError> {
        let Value::Object(obj) = item else {
            return Err(invalid(format!(
                "authorization_details[{index}] is not a json object"
            )));
        };
        let name = match obj.get("type") {
            Some(Value::String(t)) => t.as_str(),
            Some(_) => {
                return Err(invalid(format!(
                    "authorization_details[{index}].type is not a string"
                )));
            }
            None => {
                return Err(invalid(format!(
                    "authorization_details[{index}] has no `type`"
                )));
            }
        };
        let rar_type = self.types.get(name).ok_or_else(|| {
            invalid(format!(
                "authorization_details[{index}]: unknown type `{}`",
                truncate(name, 64)
            ))
        })?;
        // Report every violation, not only the first, so one round trip
        // tells the caller everything; capped to keep the message bounded.
        let errors: Vec<String> = rar_type
            .validator
            .iter_errors(item)
            .take(5)
            .map(|e| {
                let path = e.instance_path().to_string();
                let at = if path.is_empty() {
                    "/".to_owned()
                } else {
                    path
                };
                format!("at `{at}`: {e}")
            })
            .collect();
        if !errors.is_empty() {
            return Err(invalid(format!(
                "authorization_details[{index}] (type `{name}`) violates its schema: {}",
                errors.join("; ")
            )));
        }
        Ok(describe(rar_type, obj, item))
    }
}

fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", s.get(..i).unwrap_or_default()),
        None => s.to_owned(),
    }
}

fn strings(obj: &Map<String, Value>, key: &str) -> Vec<String> {
    obj.get(key)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

fn string(obj: &Map<String, Value>, key: &str) -> Option<String> {
    obj.get(key).and_then(Value::as_str).map(str::to_owned)
}

/// Reads what the STS needs from a detail that passed its schema.
fn describe(rar_type: &RarType, obj: &Map<String, Value>, item: &Value) -> AuthorizationDetail {
    let listed = strings(obj, "actions");
    let actions = if listed.is_empty() {
        vec![rar_type.name.clone()]
    } else {
        listed.clone()
    };
    let action_tier = actions
        .iter()
        .filter_map(|a| ACTION_TIERS.iter().find(|(n, _)| n == a).map(|(_, t)| *t))
        .max()
        .unwrap_or(0);
    let own_tier = obj
        .get("tier")
        .and_then(Value::as_u64)
        .and_then(|t| u8::try_from(t).ok())
        .unwrap_or(0);
    let tier = rar_type.default_tier.max(action_tier).max(own_tier);
    let amount = obj.get("amount").and_then(Value::as_f64);
    let currency = string(obj, "currency");
    let destination = string(obj, "destination");
    let summary = summarize(&rar_type.name, obj, &listed, amount);
    AuthorizationDetail {
        value: item.clone(),
        rar_type: rar_type.name.clone(),
        actions,
        tier,
        amount,
        currency,
        destination,
        summary,
    }
}

fn capitalize(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// A number as people write it: `250`, not `250.0`.
fn format_amount(amount: f64) -> String {
    if amount.fract() == 0.0 && amount.abs() < 1e15 {
        format!("{amount:.0}")
    } else {
        format!("{amount}")
    }
}

/// The one-line human summary of a detail, for events' `rar_summary`.
fn summarize(
    name: &str,
    obj: &Map<String, Value>,
    actions: &[String],
    amount: Option<f64>,
) -> String {
    let identifier = string(obj, "identifier");
    let datatypes = strings(obj, "datatypes");
    let what = if datatypes.is_empty() {
        "directory entries".to_owned()
    } else {
        datatypes.join(", ")
    };
    let verb = capitalize(&actions.join("/").replace('_', " "));
    let mut line = match name {
        "transfer_funds" => format!(
            "Transfer {} {} to {}",
            amount.map(format_amount).unwrap_or_default(),
            string(obj, "currency").unwrap_or_default(),
            string(obj, "destination").unwrap_or_default()
        ),
        "tool_call" => format!("Call tool {}", string(obj, "tool").unwrap_or_default()),
        "directory_admin" => verb,
        _ => format!("{verb} {what}"),
    };
    if name != "transfer_funds"
        && let Some(id) = identifier
    {
        line.push(' ');
        line.push_str(&id);
    }
    if let Some(limit) = obj.get("limit").and_then(Value::as_u64) {
        line.push_str(&format!(", limit={limit}"));
    }
    line
}

/// Whether `requested` asks for no more than `granted` (delegation only
/// narrows authority): objects need the same keys with each value
/// narrowing; arrays need every requested element to narrow some granted
/// element; numbers may only shrink (amounts, limits); anything else must be
/// equal. A missing key would mean "unconstrained", hence the same keys.
pub fn narrows(requested: &Value, granted: &Value) -> bool {
    match (requested, granted) {
        (Value::Object(r), Value::Object(g)) => {
            r.len() == g.len()
                && r.iter().all(|(k, rv)| {
                    g.get(k).is_some_and(|gv| {
                        if k == "tier" {
                            // A higher tier is the stricter one.
                            narrows(gv, rv)
                        } else {
                            narrows(rv, gv)
                        }
                    })
                })
        }
        (Value::Array(r), Value::Array(g)) => r.iter().all(|rv| g.iter().any(|gv| narrows(rv, gv))),
        (Value::Number(r), Value::Number(g)) => match (r.as_f64(), g.as_f64()) {
            (Some(r), Some(g)) => r <= g,
            _ => false,
        },
        (r, g) => r == g,
    }
}
