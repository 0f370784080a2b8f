//! The SSF 1.0 transmitter: stream management, subjects, verification,
//! and delivery of signed SETs by push (RFC 8935) and poll (RFC 8936) from
//! a durable outbox.
//!
//! Invariants:
//! - A SET is written to `ssf_outbox` (one row per stream) before
//!   [`Transmitter::publish`] returns; delivery happens from there, so a
//!   restart loses nothing.
//! - Per stream, SETs are delivered in `seq` order: the push worker sends
//!   the oldest pending SET of a stream and nothing behind it until that
//!   one is accepted (or refused for good by the receiver); a poll answers
//!   the oldest pending SETs first.
//! - A push that fails (connection refused, timeout, 5xx, 429) is retried
//!   with exponential backoff for as long as the stream exists; a receiver
//!   that answers 4xx with an RFC 8935 error refused that SET for good: the
//!   error is kept in `set_err` and the next SET goes.
//! - Only the receiver that created a stream (its bearer token's subject)
//!   can see or change it; the local operator (admin socket) sees all.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keyless_audit::{Event, EventSink, Outcome};
use keyless_store::sqlx::{self, Row};
use keyless_store::{Store, now_millis};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tokio::sync::{Notify, watch};

use crate::caep;
use crate::set::{SetClaims, SetSigner};
use crate::subject;

/// `delivery.method` of push delivery (RFC 8935).
pub const DELIVERY_PUSH: &str = "urn:ietf:rfc:8935";
/// `delivery.method` of poll delivery (RFC 8936).
pub const DELIVERY_POLL: &str = "urn:ietf:rfc:8936";
/// Largest `maxEvents` a poll may ask for.
pub const MAX_POLL_EVENTS: usize = 1000;

/// A failed management, poll or publish call, by HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum SsfError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Internal(String),
}

impl From<sqlx::Error> for SsfError {
    fn from(e: sqlx::Error) -> Self {
        Self::Internal(format!("store: {e}"))
    }
}

impl From<serde_json::Error> for SsfError {
    fn from(e: serde_json::Error) -> Self {
        Self::Internal(format!("json: {e}"))
    }
}

/// Who is asking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// A receiver, by the subject of its `ssf.manage`/`ssf.read` token.
    Client(String),
    /// The local operator (admin socket): may see and change every stream.
    Admin,
}

impl Owner {
    fn name(&self) -> &str {
        match self {
            Self::Client(s) => s,
            Self::Admin => "@admin",
        }
    }
}

/// Transmitter settings.
#[derive(Debug, Clone)]
pub struct TransmitterConfig {
    /// Our issuer: the public base URL (`http://127.0.0.1:8180`).
    pub issuer: String,
    /// First retry delay of a failed push; doubles per attempt.
    pub backoff_base: Duration,
    /// Longest delay between push attempts.
    pub backoff_max: Duration,
    /// Timeout of one push request.
    pub push_timeout: Duration,
    /// Longest a long poll waits for an event.
    pub max_poll_wait: Duration,
    /// Streams one receiver may hold.
    pub max_streams_per_owner: usize,
}

impl TransmitterConfig {
    pub fn new(issuer: impl Into<String>) -> Self {
        Self {
            issuer: issuer.into().trim_end_matches('/').to_owned(),
            backoff_base: Duration::from_millis(250),
            backoff_max: Duration::from_secs(60),
            push_timeout: Duration::from_secs(5),
            max_poll_wait: Duration::from_secs(30),
            max_streams_per_owner: 16,
        }
    }
}

/// `delivery` of a stream configuration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Delivery {
    pub method: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_url: Option<String>,
    /// Receiver-supplied `Authorization` header value for pushes. Stored,
    /// never returned.
    #[serde(default, skip_serializing)]
    pub authorization_header: Option<String>,
}

/// A stream configuration (SSF 1.0 §8.1.1).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StreamConfig {
    pub stream_id: String,
    pub iss: String,
    pub aud: Vec<String>,
    pub events_supported: Vec<String>,
    pub events_requested: Vec<String>,
    pub events_delivered: Vec<String>,
    pub delivery: Delivery,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// Stored form: the public configuration plus the push credential, which
/// the public form never shows.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Stored {
    #[serde(flatten)]
    config: StreamConfig,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    push_authorization: Option<String>,
}

/// A stream as stored, with its status.
#[derive(Debug, Clone)]
pub struct Stream {
    pub config: StreamConfig,
    pub owner: String,
    pub status: String,
    pub reason: Option<String>,
    push_authorization: Option<String>,
}

impl Stream {
    /// The configuration as SSF answers it (`aud` a string when single).
    pub fn to_json(&self) -> Value {
        let mut v = serde_json::to_value(&self.config).unwrap_or(Value::Null);
        if let Some(obj) = v.as_object_mut()
            && self.config.aud.len() == 1
            && let Some(a) = self.config.aud.first()
        {
            obj.insert("aud".into(), Value::String(a.clone()));
        }
        v
    }

    fn status_json(&self) -> Value {
        let mut v = json!({"stream_id": self.config.stream_id, "status": self.status});
        if let (Some(r), Some(o)) = (&self.reason, v.as_object_mut()) {
            o.insert("reason".into(), Value::String(r.clone()));
        }
        v
    }
}

/// A poll request (RFC 8936 §2.4).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PollRequest {
    #[serde(rename = "maxEvents", default)]
    pub max_events: Option<usize>,
    #[serde(rename = "returnImmediately", default)]
    pub return_immediately: Option<bool>,
    #[serde(default)]
    pub ack: Vec<String>,
    #[serde(rename = "setErrs", default)]
    pub set_errs: Map<String, Value>,
}

/// A poll response (RFC 8936 §2.5).
#[derive(Debug, Clone, Serialize)]
pub struct PollResponse {
    pub sets: Map<String, Value>,
    #[serde(rename = "moreAvailable")]
    pub more_available: bool,
}

/// The transmitter.
#[derive(Debug)]
pub struct Transmitter {
    store: Store,
    events: Arc<dyn EventSink>,
    signer: SetSigner,
    config: TransmitterConfig,
    http: reqwest::Client,
    /// Wakes the push worker.
    wake: Arc<Notify>,
    /// Bumped on every enqueue: wakes long polls.
    enqueued: watch::Sender<u64>,
    /// Streams with a push in flight.
    in_flight: Mutex<HashSet<String>>,
}

/// A signed SET on its way into the outbox.
#[derive(Debug)]
struct Queued {
    stream_id: String,
    jti: String,
    event_type: String,
    jwt: String,
}

async fn insert_outbox(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    q: &Queued,
) -> Result<(), SsfError> {
    let now = now_millis();
    sqlx::query(
        "INSERT INTO ssf_outbox (stream_id, jti, event_type, set_jwt, created_at, attempts, next_attempt_at, last_error, delivered_at, set_err) \
         VALUES ($1, $2, $3, $4, $5, 0, $5, NULL, 0, NULL)",
    )
    .bind(&q.stream_id)
    .bind(&q.jti)
    .bind(&q.event_type)
    .bind(&q.jwt)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

fn bad(m: impl Into<String>) -> SsfError {
    SsfError::BadRequest(m.into())
}

/// Fields the transmitter supplies: a receiver may repeat them unchanged
/// in an update, never set them.
const TRANSMITTER_SUPPLIED: [&str; 5] = [
    "stream_id",
    "iss",
    "aud",
    "events_supported",
    "events_delivered",
];

fn check_url(url: &str) -> Result<(), SsfError> {
    let u = url::Url::parse(url).map_err(|e| bad(format!("endpoint_url `{url}`: {e}")))?;
    if !matches!(u.scheme(), "http" | "https") || u.host_str().is_none() {
        return Err(bad(format!(
            "endpoint_url `{url}` must be an http or https URL with a host"
        )));
    }
    Ok(())
}

fn string_list(v: &Value, name: &str) -> Result<Vec<String>, SsfError> {
    let arr = v
        .as_array()
        .ok_or_else(|| bad(format!("`{name}` must be an array of strings")))?;
    arr.iter()
        .map(|x| {
            x.as_str()
                .map(str::to_owned)
                .ok_or_else(|| bad(format!("`{name}` must be an array of strings")))
        })
        .collect()
}

impl Transmitter {
    /// A transmitter signing with `signer`. Call [`Transmitter::spawn_push_worker`]
    /// to deliver pushes.
    pub fn new(
        store: Store,
        events: Arc<dyn EventSink>,
        signer: SetSigner,
        config: TransmitterConfig,
    ) -> Result<Arc<Self>, SsfError> {
        let http = reqwest::Client::builder()
            .timeout(config.push_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| SsfError::Internal(format!("http client: {e}")))?;
        Ok(Arc::new(Self {
            store,
            events,
            signer,
            config,
            http,
            wake: Arc::new(Notify::new()),
            enqueued: watch::channel(0).0,
            in_flight: Mutex::default(),
        }))
    }

    pub fn issuer(&self) -> &str {
        &self.config.issuer
    }

    /// `/.well-known/ssf-configuration` (SSF 1.0 §7.1).
    pub fn metadata(&self) -> Value {
        let b = &self.config.issuer;
        json!({
            "spec_version": "1_0",
            "issuer": b,
            "jwks_uri": format!("{b}/ssf/jwks"),
            "delivery_methods_supported": [DELIVERY_PUSH, DELIVERY_POLL],
            "configuration_endpoint": format!("{b}/ssf/stream"),
            "status_endpoint": format!("{b}/ssf/status"),
            "add_subject_endpoint": format!("{b}/ssf/subjects/add"),
            "remove_subject_endpoint": format!("{b}/ssf/subjects/remove"),
            "verification_endpoint": format!("{b}/ssf/verify"),
            "authorization_schemes": [{"spec_urn": "urn:ietf:rfc:6749"}],
            "default_subjects": "ALL",
        })
    }

    /// The public keys SETs are signed with.
    pub fn jwks(&self) -> Value {
        json!({"keys": [self.signer.jwk()]})
    }

    fn poll_url(&self, stream_id: &str) -> String {
        format!("{}/ssf/poll?stream_id={stream_id}", self.config.issuer)
    }

    // --- streams ---

    /// Creates a stream (SSF 1.0 §8.1.1.1). `aud` is the audience of its
    /// SETs: the receiver's identity unless the operator names another.
    pub async fn create_stream(
        &self,
        owner: &Owner,
        body: &Value,
        aud: Option<String>,
    ) -> Result<Stream, SsfError> {
        let obj = body
            .as_object()
            .ok_or_else(|| bad("the stream configuration must be a JSON object"))?;
        for k in obj.keys() {
            if TRANSMITTER_SUPPLIED.contains(&k.as_str()) {
                return Err(bad(format!("`{k}` is supplied by the transmitter")));
            }
        }
        if let Owner::Client(_) = owner {
            let n: i64 = sqlx::query("SELECT COUNT(*) AS n FROM ssf_streams WHERE owner = $1")
                .bind(owner.name())
                .fetch_one(self.store.pool())
                .await?
                .try_get("n")?;
            if n as usize >= self.config.max_streams_per_owner {
                return Err(SsfError::Conflict(format!(
                    "a receiver may hold at most {} streams",
                    self.config.max_streams_per_owner
                )));
            }
        }
        let stream_id = uuid::Uuid::new_v4().simple().to_string();
        let aud = aud.unwrap_or_else(|| owner.name().to_owned());
        let mut stored = Stored {
            config: StreamConfig {
                stream_id: stream_id.clone(),
                iss: self.config.issuer.clone(),
                aud: vec![aud],
                events_supported: caep::CAEP_EVENTS.iter().map(|s| (*s).to_owned()).collect(),
                events_requested: Vec::new(),
                events_delivered: Vec::new(),
                delivery: Delivery {
                    method: DELIVERY_POLL.into(),
                    endpoint_url: None,
                    authorization_header: None,
                },
                description: None,
            },
            push_authorization: None,
        };
        self.apply_receiver_fields(&mut stored, obj, true)?;
        let now = now_millis();
        sqlx::query(
            "INSERT INTO ssf_streams (stream_id, owner, config, status, reason, created_at, updated_at) \
             VALUES ($1, $2, $3, 'enabled', NULL, $4, $4)",
        )
        .bind(&stream_id)
        .bind(owner.name())
        .bind(serde_json::to_string(&stored)?)
        .bind(now)
        .execute(self.store.pool())
        .await?;
        let stream = self.stream(owner, &stream_id).await?;
        self.record(
            Event::new("ssf.stream_created", Outcome::Success)
                .agent(owner.name().to_owned())
                .detail("stream_id", stream_id)
                .detail("method", stream.config.delivery.method.clone()),
        )
        .await;
        Ok(stream)
    }

    /// Sets the receiver-supplied fields from `obj`; `replace`: fields
    /// absent from `obj` go back to their defaults.
    fn apply_receiver_fields(
        &self,
        stored: &mut Stored,
        obj: &Map<String, Value>,
        replace: bool,
    ) -> Result<(), SsfError> {
        let c = &mut stored.config;
        for (k, v) in obj {
            match k.as_str() {
                "events_requested" => c.events_requested = string_list(v, k)?,
                "description" => {
                    c.description = match v {
                        Value::Null => None,
                        Value::String(s) if s.len() <= 1024 => Some(s.clone()),
                        _ => {
                            return Err(bad(
                                "`description` must be a string of at most 1024 bytes",
                            ));
                        }
                    }
                }
                "delivery" => {
                    let d: Delivery = serde_json::from_value(v.clone())
                        .map_err(|e| bad(format!("`delivery`: {e}")))?;
                    match d.method.as_str() {
                        DELIVERY_PUSH => {
                            let url = d.endpoint_url.as_deref().ok_or_else(|| {
                                bad("push delivery needs `delivery.endpoint_url`")
                            })?;
                            check_url(url)?;
                            c.delivery = Delivery {
                                method: DELIVERY_PUSH.into(),
                                endpoint_url: Some(url.to_owned()),
                                authorization_header: None,
                            };
                            stored.push_authorization = d.authorization_header;
                        }
                        DELIVERY_POLL => {
                            if d.endpoint_url.is_some() {
                                return Err(bad(
                                    "poll delivery's `endpoint_url` is supplied by the transmitter",
                                ));
                            }
                            c.delivery = Delivery {
                                method: DELIVERY_POLL.into(),
                                endpoint_url: None,
                                authorization_header: None,
                            };
                            stored.push_authorization = None;
                        }
                        m => return Err(bad(format!("unsupported delivery method `{m}`"))),
                    }
                }
                k if TRANSMITTER_SUPPLIED.contains(&k) => {
                    let current = serde_json::to_value(&*c)?;
                    let same = match (k, v) {
                        ("aud", Value::String(s)) => c.aud.len() == 1 && c.aud.first() == Some(s),
                        _ => current.get(k) == Some(v),
                    };
                    if !same {
                        return Err(bad(format!(
                            "`{k}` is supplied by the transmitter and cannot be changed"
                        )));
                    }
                }
                "min_verification_interval" | "inactivity_timeout" => {}
                other => return Err(bad(format!("unknown stream configuration field `{other}`"))),
            }
        }
        if replace {
            if !obj.contains_key("events_requested") {
                c.events_requested = Vec::new();
            }
            if !obj.contains_key("description") {
                c.description = None;
            }
            if !obj.contains_key("delivery") {
                c.delivery = Delivery {
                    method: DELIVERY_POLL.into(),
                    endpoint_url: None,
                    authorization_header: None,
                };
                stored.push_authorization = None;
            }
        }
        if c.delivery.method == DELIVERY_POLL {
            c.delivery.endpoint_url = Some(self.poll_url(&c.stream_id));
        }
        c.events_delivered = c
            .events_requested
            .iter()
            .filter(|e| c.events_supported.contains(e))
            .cloned()
            .collect();
        Ok(())
    }

    async fn load(&self, stream_id: &str) -> Result<Option<(Stored, Stream)>, SsfError> {
        let row = sqlx::query(
            "SELECT owner, config, status, reason FROM ssf_streams WHERE stream_id = $1",
        )
        .bind(stream_id)
        .fetch_optional(self.store.pool())
        .await?;
        let Some(row) = row else { return Ok(None) };
        let stored: Stored = serde_json::from_str(&row.try_get::<String, _>("config")?)?;
        let stream = Stream {
            config: stored.config.clone(),
            owner: row.try_get("owner")?,
            status: row.try_get("status")?,
            reason: row.try_get("reason")?,
            push_authorization: stored.push_authorization.clone(),
        };
        Ok(Some((stored, stream)))
    }

    /// One stream, if `owner` may see it (others' streams are "not found").
    pub async fn stream(&self, owner: &Owner, stream_id: &str) -> Result<Stream, SsfError> {
        match self.load(stream_id).await? {
            Some((_, s)) if *owner == Owner::Admin || s.owner == owner.name() => Ok(s),
            _ => Err(SsfError::NotFound(format!("no stream `{stream_id}`"))),
        }
    }

    /// Every stream `owner` may see.
    pub async fn streams(&self, owner: &Owner) -> Result<Vec<Stream>, SsfError> {
        let rows = sqlx::query("SELECT stream_id FROM ssf_streams ORDER BY created_at")
            .fetch_all(self.store.pool())
            .await?;
        let mut out = Vec::new();
        for r in rows {
            let id: String = r.try_get("stream_id")?;
            if let Ok(s) = self.stream(owner, &id).await {
                out.push(s);
            }
        }
        Ok(out)
    }

    /// Updates (PATCH, `replace` false) or replaces (PUT) a stream's
    /// receiver-supplied configuration.
    pub async fn update_stream(
        &self,
        owner: &Owner,
        body: &Value,
        replace: bool,
    ) -> Result<Stream, SsfError> {
        let obj = body
            .as_object()
            .ok_or_else(|| bad("the stream configuration must be a JSON object"))?;
        let id = obj
            .get("stream_id")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("`stream_id` is required"))?;
        self.stream(owner, id).await?;
        let Some((mut stored, _)) = self.load(id).await? else {
            return Err(SsfError::NotFound(format!("no stream `{id}`")));
        };
        self.apply_receiver_fields(&mut stored, obj, replace)?;
        sqlx::query("UPDATE ssf_streams SET config = $1, updated_at = $2 WHERE stream_id = $3")
            .bind(serde_json::to_string(&stored)?)
            .bind(now_millis())
            .bind(id)
            .execute(self.store.pool())
            .await?;
        self.wake.notify_one();
        self.stream(owner, id).await
    }

    /// Deletes a stream and everything queued for it.
    pub async fn delete_stream(&self, owner: &Owner, stream_id: &str) -> Result<(), SsfError> {
        self.stream(owner, stream_id).await?;
        let mut tx = self.store.pool().begin().await?;
        for q in [
            "DELETE FROM ssf_outbox WHERE stream_id = $1",
            "DELETE FROM ssf_stream_subjects WHERE stream_id = $1",
            "DELETE FROM ssf_streams WHERE stream_id = $1",
        ] {
            sqlx::query(q).bind(stream_id).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        self.record(
            Event::new("ssf.stream_deleted", Outcome::Success)
                .agent(owner.name().to_owned())
                .detail("stream_id", stream_id),
        )
        .await;
        Ok(())
    }

    /// A stream's status (SSF 1.0 §8.1.2.1).
    pub async fn status(&self, owner: &Owner, stream_id: &str) -> Result<Value, SsfError> {
        Ok(self.stream(owner, stream_id).await?.status_json())
    }

    /// Sets a stream's status: `enabled` (deliver), `paused` (keep queueing,
    /// deliver later), `disabled` (neither).
    pub async fn set_status(
        &self,
        owner: &Owner,
        stream_id: &str,
        status: &str,
        reason: Option<&str>,
    ) -> Result<Value, SsfError> {
        if !matches!(status, "enabled" | "paused" | "disabled") {
            return Err(bad(format!(
                "status must be enabled, paused or disabled, not `{status}`"
            )));
        }
        self.stream(owner, stream_id).await?;
        sqlx::query(
            "UPDATE ssf_streams SET status = $1, reason = $2, updated_at = $3 WHERE stream_id = $4",
        )
        .bind(status)
        .bind(reason.map(str::to_owned))
        .bind(now_millis())
        .bind(stream_id)
        .execute(self.store.pool())
        .await?;
        self.wake.notify_one();
        self.enqueued.send_modify(|n| *n += 1);
        self.status(owner, stream_id).await
    }

    /// Adds (`included`) or removes a subject (SSF 1.0 §8.1.3). Streams
    /// receive every subject by default (`default_subjects: ALL`); a removed
    /// subject is not delivered until added again.
    pub async fn set_subject(
        &self,
        owner: &Owner,
        stream_id: &str,
        subject_id: &Value,
        included: bool,
    ) -> Result<(), SsfError> {
        subject::validate_subject(subject_id).map_err(|e| bad(format!("subject: {e}")))?;
        self.stream(owner, stream_id).await?;
        sqlx::query(
            "INSERT INTO ssf_stream_subjects (stream_id, subject, included, updated_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (stream_id, subject) DO UPDATE SET included = $3, updated_at = $4",
        )
        .bind(stream_id)
        .bind(subject::canonical(subject_id))
        .bind(i64::from(included))
        .bind(now_millis())
        .execute(self.store.pool())
        .await?;
        Ok(())
    }

    /// Queues a verification event echoing `state` (SSF 1.0 §8.1.4).
    pub async fn verify(
        &self,
        owner: &Owner,
        stream_id: &str,
        state: Option<&str>,
    ) -> Result<(), SsfError> {
        let stream = self.stream(owner, stream_id).await?;
        if stream.status == "disabled" {
            return Err(SsfError::Conflict(format!(
                "stream `{stream_id}` is disabled"
            )));
        }
        let mut ev = Map::new();
        if let Some(s) = state {
            ev.insert("state".into(), Value::String(s.to_owned()));
        }
        let sub_id = json!({"format": "opaque", "id": stream_id});
        self.enqueue(
            &stream,
            &sub_id,
            caep::VERIFICATION,
            Value::Object(ev),
            None,
        )
        .await?;
        self.after_enqueue();
        Ok(())
    }

    // --- publishing ---

    /// Signs and queues one event for every enabled or paused stream that
    /// asked for its type and did not remove its subject. Returns how many
    /// streams it was queued for. Records `caep.sent`.
    pub async fn publish(
        &self,
        sub_id: &Value,
        event_type: &str,
        event: Value,
        txn: Option<&str>,
    ) -> Result<usize, SsfError> {
        subject::validate_subject(sub_id).map_err(|e| bad(format!("subject: {e}")))?;
        let rows =
            sqlx::query("SELECT stream_id, config FROM ssf_streams WHERE status <> 'disabled'")
                .fetch_all(self.store.pool())
                .await?;
        let removed: Vec<(String, String)> =
            sqlx::query("SELECT stream_id, subject FROM ssf_stream_subjects WHERE included = 0")
                .fetch_all(self.store.pool())
                .await?
                .iter()
                .filter_map(|r| Some((r.try_get("stream_id").ok()?, r.try_get("subject").ok()?)))
                .collect();
        let mut queued = Vec::new();
        for r in rows {
            let id: String = r.try_get("stream_id")?;
            let stored: Stored = serde_json::from_str(&r.try_get::<String, _>("config")?)?;
            if !stored
                .config
                .events_delivered
                .iter()
                .any(|e| e == event_type)
            {
                continue;
            }
            let excluded = removed.iter().any(|(sid, subj)| {
                *sid == id
                    && serde_json::from_str::<Value>(subj)
                        .map(|f| subject::matches(&f, sub_id))
                        .unwrap_or(false)
            });
            if excluded {
                continue;
            }
            queued.push(self.sign_for(&stored.config, sub_id, event_type, event.clone(), txn)?);
        }
        // One transaction (one commit) for every stream's copy.
        let mut tx = self.store.pool().begin().await?;
        for q in &queued {
            insert_outbox(&mut tx, q).await?;
        }
        tx.commit().await?;
        let n = queued.len();
        self.after_enqueue();
        self.record(
            Event::new("caep.sent", Outcome::Success)
                .reason(event_type.to_owned())
                .detail("event_type", event_type)
                .detail("subject", sub_id.clone())
                .detail("streams", n as u64),
        )
        .await;
        Ok(n)
    }

    fn after_enqueue(&self) {
        self.wake.notify_one();
        self.enqueued.send_modify(|n| *n += 1);
    }

    /// Signs one SET for `stream`.
    fn sign_for(
        &self,
        stream: &StreamConfig,
        sub_id: &Value,
        event_type: &str,
        event: Value,
        txn: Option<&str>,
    ) -> Result<Queued, SsfError> {
        let mut claims = SetClaims::new(
            self.config.issuer.clone(),
            stream.aud.clone(),
            sub_id.clone(),
            event_type.to_owned(),
            event,
        );
        claims.txn = txn.map(str::to_owned);
        let jwt = self
            .signer
            .sign(&claims)
            .map_err(|e| SsfError::Internal(format!("signing the SET: {e}")))?;
        Ok(Queued {
            stream_id: stream.stream_id.clone(),
            jti: claims.jti,
            event_type: event_type.to_owned(),
            jwt,
        })
    }

    async fn enqueue(
        &self,
        stream: &Stream,
        sub_id: &Value,
        event_type: &str,
        event: Value,
        txn: Option<&str>,
    ) -> Result<(), SsfError> {
        let q = self.sign_for(&stream.config, sub_id, event_type, event, txn)?;
        let mut tx = self.store.pool().begin().await?;
        insert_outbox(&mut tx, &q).await?;
        tx.commit().await?;
        Ok(())
    }

    // --- poll (RFC 8936) ---

    /// Answers a poll: applies `ack` and `setErrs`, then returns up to
    /// `maxEvents` pending SETs, oldest first, waiting up to the long-poll
    /// limit for one unless `returnImmediately`.
    pub async fn poll(
        &self,
        owner: &Owner,
        stream_id: &str,
        req: &PollRequest,
    ) -> Result<PollResponse, SsfError> {
        let stream = self.stream(owner, stream_id).await?;
        if stream.config.delivery.method != DELIVERY_POLL {
            return Err(bad(format!("stream `{stream_id}` is not a poll stream")));
        }
        let now = now_millis();
        for jti in &req.ack {
            sqlx::query(
                "UPDATE ssf_outbox SET delivered_at = $1 WHERE stream_id = $2 AND jti = $3 AND delivered_at = 0",
            )
            .bind(now)
            .bind(stream_id)
            .bind(jti)
            .execute(self.store.pool())
            .await?;
        }
        for (jti, err) in &req.set_errs {
            let code = err
                .get("err")
                .and_then(Value::as_str)
                .ok_or_else(|| bad(format!("setErrs[{jti}] needs an `err` string")))?;
            let text = serde_json::to_string(err)?;
            let done = sqlx::query(
                "UPDATE ssf_outbox SET delivered_at = $1, set_err = $2 WHERE stream_id = $3 AND jti = $4 AND delivered_at = 0",
            )
            .bind(now)
            .bind(&text)
            .bind(stream_id)
            .bind(jti)
            .execute(self.store.pool())
            .await?
            .rows_affected();
            if done > 0 {
                self.record(
                    Event::new("caep.delivery_failed", Outcome::Error)
                        .reason(format!("receiver refused SET {jti}: {code}"))
                        .detail("stream_id", stream_id)
                        .detail("jti", jti.clone())
                        .detail("err", err.clone()),
                )
                .await;
            }
        }
        let max = req.max_events.unwrap_or(100).min(MAX_POLL_EVENTS);
        if max == 0 {
            return Ok(PollResponse {
                sets: Map::new(),
                more_available: self.pending_count(stream_id).await? > 0,
            });
        }
        let mut rx = self.enqueued.subscribe();
        let deadline = tokio::time::Instant::now() + self.config.max_poll_wait;
        loop {
            rx.borrow_and_update();
            let live = self.stream(owner, stream_id).await?;
            if live.status == "enabled" {
                let rows = sqlx::query(
                    "SELECT jti, set_jwt FROM ssf_outbox WHERE stream_id = $1 AND delivered_at = 0 ORDER BY seq LIMIT $2",
                )
                .bind(stream_id)
                .bind(max as i64 + 1)
                .fetch_all(self.store.pool())
                .await?;
                if !rows.is_empty() || req.return_immediately.unwrap_or(false) {
                    let more = rows.len() > max;
                    let mut sets = Map::new();
                    for r in rows.iter().take(max) {
                        sets.insert(r.try_get("jti")?, Value::String(r.try_get("set_jwt")?));
                    }
                    return Ok(PollResponse {
                        sets,
                        more_available: more,
                    });
                }
            } else if req.return_immediately.unwrap_or(false) {
                return Ok(PollResponse {
                    sets: Map::new(),
                    more_available: false,
                });
            }
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                return Ok(PollResponse {
                    sets: Map::new(),
                    more_available: false,
                });
            }
        }
    }

    async fn pending_count(&self, stream_id: &str) -> Result<i64, SsfError> {
        Ok(sqlx::query(
            "SELECT COUNT(*) AS n FROM ssf_outbox WHERE stream_id = $1 AND delivered_at = 0",
        )
        .bind(stream_id)
        .fetch_one(self.store.pool())
        .await?
        .try_get("n")?)
    }

    /// What is queued for a stream and not delivered (for operators and tests).
    pub async fn pending(&self, owner: &Owner, stream_id: &str) -> Result<i64, SsfError> {
        self.stream(owner, stream_id).await?;
        self.pending_count(stream_id).await
    }

    // --- push (RFC 8935) ---

    /// Starts the push worker: it delivers due SETs, per stream in order,
    /// until the transmitter is dropped.
    pub fn spawn_push_worker(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(t) = weak.upgrade() else { return };
                let next = match t.push_round().await {
                    Ok(next) => next,
                    Err(e) => {
                        tracing::warn!(error = %e, "SSF push round failed");
                        Some(Duration::from_secs(1))
                    }
                };
                let wait = next.unwrap_or(Duration::from_secs(30));
                let wake = t.wake.clone();
                drop(t);
                // A notification sent meanwhile left a permit: no wake-up is lost.
                let notified = wake.notified();
                let _ = tokio::time::timeout(wait, notified).await;
            }
        })
    }

    /// Starts a delivery task for each push stream whose oldest pending SET
    /// is due; returns how long until the next one is due.
    async fn push_round(self: &Arc<Self>) -> Result<Option<Duration>, SsfError> {
        // Each enabled stream's oldest pending SET, with the stream: one query.
        let rows = sqlx::query(
            "SELECT s.stream_id AS stream_id, s.owner AS owner, s.config AS config, s.status AS status, \
                    s.reason AS reason, o.next_attempt_at AS due \
             FROM ssf_streams s JOIN ssf_outbox o ON o.stream_id = s.stream_id \
             WHERE s.status = 'enabled' AND o.delivered_at = 0 AND o.seq = \
               (SELECT MIN(h.seq) FROM ssf_outbox h WHERE h.stream_id = s.stream_id AND h.delivered_at = 0)",
        )
        .fetch_all(self.store.pool())
        .await?;
        let now = now_millis();
        let mut next: Option<i64> = None;
        for r in rows {
            let stream_id: String = r.try_get("stream_id")?;
            let stored: Stored = serde_json::from_str(&r.try_get::<String, _>("config")?)?;
            if stored.config.delivery.method != DELIVERY_PUSH {
                continue;
            }
            let stream = Stream {
                config: stored.config,
                owner: r.try_get("owner")?,
                status: r.try_get("status")?,
                reason: r.try_get("reason")?,
                push_authorization: stored.push_authorization,
            };
            let due: i64 = r.try_get("due")?;
            if due > now {
                next = Some(next.map_or(due, |n| n.min(due)));
                continue;
            }
            let fresh = match self.in_flight.lock() {
                Ok(mut f) => f.insert(stream_id.clone()),
                Err(_) => false,
            };
            if fresh {
                let t = Arc::clone(self);
                tokio::spawn(async move {
                    if let Err(e) = t.drain(&stream).await {
                        tracing::warn!(stream = %stream.config.stream_id, error = %e, "SSF push failed");
                    }
                    if let Ok(mut f) = t.in_flight.lock() {
                        f.remove(&stream.config.stream_id);
                    }
                    t.wake.notify_one();
                });
            }
        }
        Ok(next.map(|due| Duration::from_millis(due.saturating_sub(now).max(0) as u64)))
    }

    /// Pushes a stream's pending SETs in order until one fails or none is left.
    async fn drain(&self, stream: &Stream) -> Result<(), SsfError> {
        let id = &stream.config.stream_id;
        let Some(url) = stream.config.delivery.endpoint_url.clone() else {
            return Ok(());
        };
        loop {
            let row = sqlx::query(
                "SELECT seq, jti, set_jwt, attempts, next_attempt_at FROM ssf_outbox \
                 WHERE stream_id = $1 AND delivered_at = 0 ORDER BY seq LIMIT 1",
            )
            .bind(id)
            .fetch_optional(self.store.pool())
            .await?;
            let Some(row) = row else { return Ok(()) };
            let seq: i64 = row.try_get("seq")?;
            let jti: String = row.try_get("jti")?;
            let attempts: i64 = row.try_get("attempts")?;
            if row.try_get::<i64, _>("next_attempt_at")? > now_millis() {
                return Ok(());
            }
            let jwt: String = row.try_get("set_jwt")?;
            let mut req = self
                .http
                .post(&url)
                .header("content-type", "application/secevent+jwt")
                .header("accept", "application/json")
                .body(jwt);
            if let Some(h) = &stream.push_authorization {
                req = req.header("authorization", h);
            }
            let outcome = match req.send().await {
                Ok(resp) => {
                    let status = resp.status();
                    if status.is_success() {
                        Ok(())
                    } else if status.is_client_error()
                        && status != reqwest::StatusCode::TOO_MANY_REQUESTS
                        && status != reqwest::StatusCode::REQUEST_TIMEOUT
                    {
                        let body = resp.text().await.unwrap_or_default();
                        Err((
                            false,
                            format!(
                                "HTTP {status}: {}",
                                body.chars().take(512).collect::<String>()
                            ),
                        ))
                    } else {
                        Err((true, format!("HTTP {status}")))
                    }
                }
                Err(e) => Err((true, format!("{e}"))),
            };
            let now = now_millis();
            match outcome {
                Ok(()) => {
                    sqlx::query(
                        "UPDATE ssf_outbox SET delivered_at = $1, attempts = $2 WHERE seq = $3",
                    )
                    .bind(now)
                    .bind(attempts + 1)
                    .bind(seq)
                    .execute(self.store.pool())
                    .await?;
                }
                Err((false, error)) => {
                    // Refused for good (RFC 8935 §2.3): keep the error, go on.
                    sqlx::query(
                        "UPDATE ssf_outbox SET delivered_at = $1, attempts = $2, last_error = $3, set_err = $3 WHERE seq = $4",
                    )
                    .bind(now)
                    .bind(attempts + 1)
                    .bind(&error)
                    .bind(seq)
                    .execute(self.store.pool())
                    .await?;
                    self.record(
                        Event::new("caep.delivery_failed", Outcome::Error)
                            .reason(format!("{url} refused SET {jti}: {error}"))
                            .detail("stream_id", id.clone())
                            .detail("jti", jti),
                    )
                    .await;
                }
                Err((true, error)) => {
                    let shift = u32::try_from(attempts.clamp(0, 20)).unwrap_or(20);
                    let delay = self
                        .config
                        .backoff_base
                        .saturating_mul(1u32 << shift)
                        .min(self.config.backoff_max);
                    sqlx::query(
                        "UPDATE ssf_outbox SET attempts = $1, next_attempt_at = $2, last_error = $3 WHERE seq = $4",
                    )
                    .bind(attempts + 1)
                    .bind(now + delay.as_millis() as i64)
                    .bind(&error)
                    .bind(seq)
                    .execute(self.store.pool())
                    .await?;
                    tracing::debug!(stream = %id, %error, retry_in = ?delay, "SSF push will be retried");
                    return Ok(());
                }
            }
        }
    }

    async fn record(&self, e: Event) {
        if let Err(err) = self.events.record_queued(e).await {
            tracing::warn!(error = %err, "recording an SSF event failed");
        }
    }
}
