//! CAEP 1.0 and SSF 1.0 event types: the URIs, a typed form of the events
//! Keyless acts on, and the conversion between that form and the JSON
//! object that sits under `events.<type>` in a Security Event Token.
//!
//! [`parse_event`] checks the members each event requires so the receiver
//! never acts on half an event (a `risk-level-change` without a level, a
//! `credential-change` with an invented `change_type`). Event types Keyless
//! does not know become [`CaepEvent::Other`]: an SSF receiver must accept
//! and may ignore them.

use serde_json::{Map, Value};

const CAEP_PREFIX: &str = "https://schemas.openid.net/secevent/caep/event-type/";

/// CAEP `session-revoked`: the subject's session has been revoked.
pub const SESSION_REVOKED: &str =
    "https://schemas.openid.net/secevent/caep/event-type/session-revoked";
/// CAEP `token-claims-change`: claims in tokens issued to the subject changed.
pub const TOKEN_CLAIMS_CHANGE: &str =
    "https://schemas.openid.net/secevent/caep/event-type/token-claims-change";
/// CAEP `credential-change`: a credential was created, revoked, updated or deleted.
pub const CREDENTIAL_CHANGE: &str =
    "https://schemas.openid.net/secevent/caep/event-type/credential-change";
/// CAEP `assurance-level-change`: the subject's authentication assurance changed.
pub const ASSURANCE_LEVEL_CHANGE: &str =
    "https://schemas.openid.net/secevent/caep/event-type/assurance-level-change";
/// CAEP `device-compliance-change`: a device became (non-)compliant.
pub const DEVICE_COMPLIANCE_CHANGE: &str =
    "https://schemas.openid.net/secevent/caep/event-type/device-compliance-change";
/// CAEP `session-established`: a session started.
pub const SESSION_ESTABLISHED: &str =
    "https://schemas.openid.net/secevent/caep/event-type/session-established";
/// CAEP `session-presented`: an existing session was presented to a relying party.
pub const SESSION_PRESENTED: &str =
    "https://schemas.openid.net/secevent/caep/event-type/session-presented";
/// CAEP `risk-level-change`: the risk attached to a principal changed.
pub const RISK_LEVEL_CHANGE: &str =
    "https://schemas.openid.net/secevent/caep/event-type/risk-level-change";
/// SSF verification event, sent in answer to a verification request.
pub const VERIFICATION: &str = "https://schemas.openid.net/secevent/ssf/event-type/verification";
/// SSF stream-updated event, sent when a stream's status changes.
pub const STREAM_UPDATED: &str =
    "https://schemas.openid.net/secevent/ssf/event-type/stream-updated";

/// The CAEP event types Keyless transmits and understands (what a stream's
/// `events_supported` lists). The SSF control events ([`VERIFICATION`],
/// [`STREAM_UPDATED`]) are always delivered and so are not listed.
pub const CAEP_EVENTS: &[&str] = &[
    SESSION_REVOKED,
    TOKEN_CLAIMS_CHANGE,
    CREDENTIAL_CHANGE,
    ASSURANCE_LEVEL_CHANGE,
    DEVICE_COMPLIANCE_CHANGE,
    SESSION_ESTABLISHED,
    SESSION_PRESENTED,
    RISK_LEVEL_CHANGE,
];

/// `change_type` values of `credential-change` (CAEP 1.0 §3.3).
pub const CHANGE_TYPES: &[&str] = &["create", "revoke", "update", "delete"];
/// `current_level` values of `risk-level-change` (CAEP 1.0 §3.8).
pub const RISK_LEVELS: &[&str] = &["LOW", "MEDIUM", "HIGH"];
/// `status` values of `device-compliance-change` (CAEP 1.0 §3.5).
pub const COMPLIANCE_STATUSES: &[&str] = &["compliant", "not-compliant"];
/// `status` values of SSF `stream-updated` (SSF 1.0 §8.1.5).
pub const STREAM_STATUSES: &[&str] = &["enabled", "paused", "disabled"];
/// `initiating_entity` values common to all CAEP events (CAEP 1.0 §2).
pub const INITIATING_ENTITIES: &[&str] = &["admin", "user", "policy", "system"];

/// A CAEP or SSF event, holding the members specific to its type. The
/// members every event may carry are in [`EventMeta`].
#[derive(Debug, Clone, PartialEq)]
pub enum CaepEvent {
    /// `session-revoked`.
    SessionRevoked,
    /// `credential-change`; `change_type` is one of [`CHANGE_TYPES`].
    CredentialChange {
        credential_type: String,
        change_type: String,
    },
    /// `token-claims-change`, with the claims' new values.
    TokenClaimsChange { claims: Map<String, Value> },
    /// `assurance-level-change`.
    AssuranceLevelChange {
        namespace: String,
        current_level: String,
    },
    /// `device-compliance-change`; both statuses are one of [`COMPLIANCE_STATUSES`].
    DeviceComplianceChange {
        previous_status: String,
        current_status: String,
    },
    /// `session-established`.
    SessionEstablished,
    /// `session-presented`.
    SessionPresented,
    /// `risk-level-change`; `current_level` is one of [`RISK_LEVELS`].
    RiskLevelChange {
        principal: String,
        current_level: String,
    },
    /// SSF verification, echoing the `state` the receiver sent, if any.
    Verification { state: Option<String> },
    /// SSF stream-updated; `status` is one of [`STREAM_STATUSES`].
    StreamUpdated {
        status: String,
        reason: Option<String>,
    },
    /// An event type Keyless does not interpret.
    Other { event_type: String },
}

/// Members every CAEP event may carry (CAEP 1.0 §2).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EventMeta {
    /// When the event happened, in seconds since the epoch.
    pub event_timestamp: Option<i64>,
    /// Who caused it: one of [`INITIATING_ENTITIES`].
    pub initiating_entity: Option<String>,
    /// Reason for administrators: an object of language tag → text (a bare
    /// string, which some transmitters send, is accepted too).
    pub reason_admin: Option<Value>,
    /// Reason for the end user, in the same form as `reason_admin`.
    pub reason_user: Option<Value>,
}

/// Reads the event `payload` found under `events.<event_type>` in a SET,
/// checking the members `event_type` requires.
pub fn parse_event(event_type: &str, payload: &Value) -> Result<(CaepEvent, EventMeta), String> {
    let obj = payload
        .as_object()
        .ok_or_else(|| format!("the `{}` event must be a JSON object", short(event_type)))?;
    let fields = Fields {
        obj,
        event: short(event_type),
    };
    let meta = parse_meta(&fields)?;
    let event = match event_type {
        SESSION_REVOKED => CaepEvent::SessionRevoked,
        SESSION_ESTABLISHED => CaepEvent::SessionEstablished,
        SESSION_PRESENTED => CaepEvent::SessionPresented,
        CREDENTIAL_CHANGE => CaepEvent::CredentialChange {
            credential_type: fields.required("credential_type")?,
            change_type: fields.one_of("change_type", CHANGE_TYPES)?,
        },
        TOKEN_CLAIMS_CHANGE => match obj.get("claims") {
            Some(Value::Object(claims)) => CaepEvent::TokenClaimsChange {
                claims: claims.clone(),
            },
            Some(_) => return Err(fields.wrong_type("claims", "an object")),
            None => return Err(fields.missing("claims")),
        },
        ASSURANCE_LEVEL_CHANGE => CaepEvent::AssuranceLevelChange {
            namespace: fields.required("namespace")?,
            current_level: fields.required("current_level")?,
        },
        DEVICE_COMPLIANCE_CHANGE => CaepEvent::DeviceComplianceChange {
            previous_status: fields.one_of("previous_status", COMPLIANCE_STATUSES)?,
            current_status: fields.one_of("current_status", COMPLIANCE_STATUSES)?,
        },
        RISK_LEVEL_CHANGE => CaepEvent::RiskLevelChange {
            principal: fields.required("principal")?,
            current_level: fields.one_of("current_level", RISK_LEVELS)?,
        },
        VERIFICATION => CaepEvent::Verification {
            state: fields.optional("state")?,
        },
        STREAM_UPDATED => CaepEvent::StreamUpdated {
            status: fields.one_of("status", STREAM_STATUSES)?,
            reason: fields.optional("reason")?,
        },
        other => CaepEvent::Other {
            event_type: other.to_owned(),
        },
    };
    Ok((event, meta))
}

fn parse_meta(fields: &Fields<'_>) -> Result<EventMeta, String> {
    let event_timestamp = match fields.obj.get("event_timestamp") {
        None => None,
        Some(v) => Some(
            v.as_i64()
                .ok_or_else(|| fields.wrong_type("event_timestamp", "an integer"))?,
        ),
    };
    let initiating_entity = match fields.obj.get("initiating_entity") {
        None => None,
        Some(_) => Some(fields.one_of("initiating_entity", INITIATING_ENTITIES)?),
    };
    let reason = |name: &str| match fields.obj.get(name) {
        None => Ok(None),
        Some(v @ (Value::Object(_) | Value::String(_))) => Ok(Some(v.clone())),
        Some(_) => Err(fields.wrong_type(name, "an object of language tag to text")),
    };
    Ok(EventMeta {
        event_timestamp,
        initiating_entity,
        reason_admin: reason("reason_admin")?,
        reason_user: reason("reason_user")?,
    })
}

/// The last path segment of an event type, for readable messages.
fn short(event_type: &str) -> &str {
    event_type.rsplit('/').next().unwrap_or(event_type)
}

struct Fields<'a> {
    obj: &'a Map<String, Value>,
    event: &'a str,
}

impl Fields<'_> {
    fn missing(&self, name: &str) -> String {
        format!("the `{}` event needs member `{name}`", self.event)
    }

    fn wrong_type(&self, name: &str, what: &str) -> String {
        format!(
            "member `{name}` of the `{}` event must be {what}",
            self.event
        )
    }

    fn optional(&self, name: &str) -> Result<Option<String>, String> {
        match self.obj.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(self.wrong_type(name, "a string")),
        }
    }

    fn required(&self, name: &str) -> Result<String, String> {
        match self.optional(name)? {
            Some(s) if !s.is_empty() => Ok(s),
            Some(_) => Err(self.wrong_type(name, "a non-empty string")),
            None => Err(self.missing(name)),
        }
    }

    fn one_of(&self, name: &str, allowed: &[&str]) -> Result<String, String> {
        let value = self.required(name)?;
        if allowed.contains(&value.as_str()) {
            Ok(value)
        } else {
            Err(format!(
                "member `{name}` of the `{}` event is `{value}`, expected one of {}",
                self.event,
                allowed.join(", ")
            ))
        }
    }
}

// === impl CaepEvent ===

impl CaepEvent {
    /// The event type URI (the key under `events` in a SET).
    pub fn event_type(&self) -> &str {
        match self {
            Self::SessionRevoked => SESSION_REVOKED,
            Self::CredentialChange { .. } => CREDENTIAL_CHANGE,
            Self::TokenClaimsChange { .. } => TOKEN_CLAIMS_CHANGE,
            Self::AssuranceLevelChange { .. } => ASSURANCE_LEVEL_CHANGE,
            Self::DeviceComplianceChange { .. } => DEVICE_COMPLIANCE_CHANGE,
            Self::SessionEstablished => SESSION_ESTABLISHED,
            Self::SessionPresented => SESSION_PRESENTED,
            Self::RiskLevelChange { .. } => RISK_LEVEL_CHANGE,
            Self::Verification { .. } => VERIFICATION,
            Self::StreamUpdated { .. } => STREAM_UPDATED,
            Self::Other { event_type } => event_type,
        }
    }

    /// Whether this is a CAEP event (as opposed to an SSF control event or
    /// an unknown type).
    pub fn is_caep(&self) -> bool {
        self.event_type().starts_with(CAEP_PREFIX)
    }

    /// The JSON object to place under `events.<event_type>`: the inverse of
    /// [`parse_event`]. [`CaepEvent::Other`] carries only `meta`.
    pub fn to_payload(&self, meta: &EventMeta) -> Value {
        let mut obj = Map::new();
        let mut put = |name: &str, value: Value| {
            obj.insert(name.to_owned(), value);
        };
        let text = |s: &str| Value::String(s.to_owned());
        match self {
            Self::SessionRevoked
            | Self::SessionEstablished
            | Self::SessionPresented
            | Self::Other { .. } => {}
            Self::CredentialChange {
                credential_type,
                change_type,
            } => {
                put("credential_type", text(credential_type));
                put("change_type", text(change_type));
            }
            Self::TokenClaimsChange { claims } => put("claims", Value::Object(claims.clone())),
            Self::AssuranceLevelChange {
                namespace,
                current_level,
            } => {
                put("namespace", text(namespace));
                put("current_level", text(current_level));
            }
            Self::DeviceComplianceChange {
                previous_status,
                current_status,
            } => {
                put("previous_status", text(previous_status));
                put("current_status", text(current_status));
            }
            Self::RiskLevelChange {
                principal,
                current_level,
            } => {
                put("principal", text(principal));
                put("current_level", text(current_level));
            }
            Self::Verification { state } => {
                if let Some(state) = state {
                    put("state", text(state));
                }
            }
            Self::StreamUpdated { status, reason } => {
                put("status", text(status));
                if let Some(reason) = reason {
                    put("reason", text(reason));
                }
            }
        }
        if let Some(ts) = meta.event_timestamp {
            put("event_timestamp", Value::from(ts));
        }
        if let Some(entity) = &meta.initiating_entity {
            put("initiating_entity", text(entity));
        }
        if let Some(reason) = &meta.reason_admin {
            put("reason_admin", reason.clone());
        }
        if let Some(reason) = &meta.reason_user {
            put("reason_user", reason.clone());
        }
        Value::Object(obj)
    }
}
