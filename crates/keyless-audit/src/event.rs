//! The security event: one decision, in the shape the audit log stores and
//! the live panel shows (DESIGN.md, "Security events").
//!
//! The schema is versioned (`v`) and serialized canonically by the log, so
//! the hash of an event never depends on field order or on whitespace.
//! Optional fields that are absent are omitted, never `null`.

use serde::{Deserialize, Serialize};

/// Current event schema version.
pub const EVENT_SCHEMA_VERSION: u32 = 1;

/// What came of a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Success,
    Denied,
    Pending,
    Error,
}

/// One security event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    /// Schema version, [`EVENT_SCHEMA_VERSION`] for events written by this build.
    pub v: u32,
    /// Event type, e.g. `svid.issued`, `token_exchange.denied`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Unix time in milliseconds; set by the log at append when zero.
    pub time: i64,
    pub outcome: Outcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The agent or workload, as a SPIFFE ID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rar_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rar_summary: Option<String>,
    /// Policy id and reason on denials; the error on failures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_expires_in: Option<i64>,
    /// Correlation id shared by every event of one tool call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// Type-specific details (selectors, serial numbers, key ids...). Never secrets.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub detail: serde_json::Map<String, serde_json::Value>,
}

// === impl Event ===

impl Event {
    /// A new event of `kind` with `outcome`, time filled at append.
    pub fn new(kind: impl Into<String>, outcome: Outcome) -> Self {
        Self {
            v: EVENT_SCHEMA_VERSION,
            kind: kind.into(),
            time: 0,
            outcome,
            user: None,
            agent: None,
            session: None,
            tool: None,
            tier: None,
            rar_type: None,
            rar_summary: None,
            reason: None,
            duration_ms: None,
            token_expires_in: None,
            correlation_id: None,
            detail: serde_json::Map::new(),
        }
    }

    pub fn agent(mut self, agent: impl Into<String>) -> Self {
        self.agent = Some(agent.into());
        self
    }

    pub fn user(mut self, user: impl Into<String>) -> Self {
        self.user = Some(user.into());
        self
    }

    pub fn reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self
    }

    pub fn session(mut self, session: impl Into<String>) -> Self {
        self.session = Some(session.into());
        self
    }

    pub fn tool(mut self, tool: impl Into<String>) -> Self {
        self.tool = Some(tool.into());
        self
    }

    pub fn correlation_id(mut self, id: impl Into<String>) -> Self {
        self.correlation_id = Some(id.into());
        self
    }

    /// Adds one detail field.
    pub fn detail(mut self, key: &str, value: impl Into<serde_json::Value>) -> Self {
        self.detail.insert(key.to_owned(), value.into());
        self
    }

    /// The canonical JSON of this event (see [`crate::canonical`]): the
    /// bytes whose leaf hash goes into the log.
    pub fn canonical_json(&self) -> Result<String, serde_json::Error> {
        crate::canonical::to_canonical_json(self)
    }

    /// Parses an event stored by the log.
    pub fn from_json(json: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(json)
    }

    /// Drops what canonical JSON cannot represent faithfully: a non-finite
    /// `duration_ms` would serialize as `null` and not read back the same.
    pub(crate) fn normalized(mut self) -> Self {
        self.duration_ms = self.duration_ms.filter(|d| d.is_finite());
        self
    }
}

/// Where components send their events. `record` returns only once the event
/// is durably stored: callers report success to their own callers after it.
#[async_trait::async_trait]
pub trait EventSink: Send + Sync + std::fmt::Debug {
    /// Stores `event` durably and returns its log index.
    async fn record(&self, event: Event) -> Result<u64, SinkError>;

    /// Queues `event` for durable storage without waiting for it; the
    /// caller's effect must not take hold before [`EventSink::has_jti`]
    /// finds it (see `AuditLog::append_queued`). By default: `record`.
    async fn record_queued(&self, event: Event) -> Result<(), SinkError> {
        self.record(event).await.map(|_| ())
    }

    /// Whether a durably stored event of `kind` has detail `jti` = `jti`.
    async fn has_jti(&self, jti: &str, kind: &str) -> Result<bool, SinkError>;

    /// Waits at most `timeout` for [`EventSink::has_jti`] to become true
    /// (an event queued a moment ago is committed by the next group
    /// commit). By default: polls every 5 ms.
    async fn wait_jti(
        &self,
        jti: &str,
        kind: &str,
        timeout: std::time::Duration,
    ) -> Result<bool, SinkError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.has_jti(jti, kind).await? {
                return Ok(true);
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    /// Token ids named by stored events of `kind` whose time is at or after
    /// `since_ms` (Unix ms). By default: none (a sink that forgets).
    async fn jtis_since(&self, _kind: &str, _since_ms: i64) -> Result<Vec<String>, SinkError> {
        Ok(Vec::new())
    }
}

/// The sink could not store an event; the action it describes must fail.
#[derive(Debug, thiserror::Error)]
#[error("audit log unavailable: {0}")]
pub struct SinkError(pub String);

/// A sink that keeps events in memory, for tests of other crates.
#[derive(Debug, Default)]
pub struct MemorySink {
    events: std::sync::Mutex<Vec<Event>>,
}

impl MemorySink {
    pub fn events(&self) -> Vec<Event> {
        self.events.lock().map(|e| e.clone()).unwrap_or_default()
    }
}

#[async_trait::async_trait]
impl EventSink for MemorySink {
    async fn record(&self, event: Event) -> Result<u64, SinkError> {
        let mut events = self
            .events
            .lock()
            .map_err(|_| SinkError("memory sink poisoned".into()))?;
        events.push(event);
        Ok(events.len() as u64 - 1)
    }

    async fn has_jti(&self, jti: &str, kind: &str) -> Result<bool, SinkError> {
        let events = self
            .events
            .lock()
            .map_err(|_| SinkError("memory sink poisoned".into()))?;
        Ok(events
            .iter()
            .any(|e| e.kind == kind && e.detail.get("jti").and_then(|v| v.as_str()) == Some(jti)))
    }
}

/// Event types recorded by Keyless components, as constants so that a typo
/// does not create a new type. DESIGN.md ("Security events") lists the
/// product's full set; components add theirs here as they land.
pub mod kinds {
    pub const SVID_ISSUED: &str = "svid.issued";
    pub const SVID_ROTATED: &str = "svid.rotated";
    pub const SVID_CACHED: &str = "svid.cached";
    pub const ATTESTATION_DENIED: &str = "attestation.denied";
    pub const ENTRY_CREATED: &str = "entry.created";
    pub const ENTRY_DELETED: &str = "entry.deleted";
    pub const CA_ROTATED: &str = "ca.rotated";
    pub const JWT_KEY_ROTATED: &str = "jwt_key.rotated";
    /// The audit log's own checkpoint key was replaced.
    pub const AUDIT_KEY_ROTATED: &str = "audit.checkpoint_key_rotated";
}
