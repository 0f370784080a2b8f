//! The SSF receiver: accepts SETs pushed to `/ssf/push` (RFC 8935) or
//! polled from a remote transmitter (RFC 8936), verifies them against the
//! transmitter's keys, refuses replays, and applies CAEP events through a
//! [`CaepHandler`].
//!
//! A SET is accepted only from a transmitter this receiver subscribed to
//! (`ssf_subscriptions`), only with our audience, and only once per
//! `jti` (`ssf_received`, written before the event is applied). Every
//! accepted event is recorded as `caep.received`.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use keyless_audit::{Event, EventSink, Outcome};
use keyless_store::sqlx::{self, Row};
use keyless_store::{Store, now_millis};
use serde_json::{Value, json};

use crate::caep::{self, CaepEvent, EventMeta};
use crate::keys::TransmitterKeys;
use crate::set::{self, SetError, VerifiedSet};

/// Applies a verified CAEP event to the systems this receiver protects.
#[async_trait::async_trait]
pub trait CaepHandler: Send + Sync + std::fmt::Debug {
    /// Applies `event`; returns one line saying what changed (for the
    /// audit log), or why nothing could be done.
    async fn apply(&self, set: &VerifiedSet, event: &CaepEvent) -> Result<String, String>;
}

/// A transmitter this receiver listens to.
#[derive(Debug, Clone)]
pub struct Subscription {
    pub issuer: String,
    /// The transmitter's metadata as fetched when subscribing.
    pub metadata: Value,
    /// The stream at the transmitter, when known.
    pub stream_id: String,
    /// `push` or `poll`.
    pub delivery: String,
}

/// What came of one received SET.
#[derive(Debug, Clone)]
pub struct Received {
    pub jti: String,
    pub event_type: String,
    /// What the handler did.
    pub applied: String,
}

/// The receiver.
#[derive(Debug)]
pub struct Receiver {
    store: Store,
    events: Arc<dyn EventSink>,
    handler: Arc<dyn CaepHandler>,
    keys: TransmitterKeys,
    /// The audience SETs must carry for us.
    audience: String,
    subscriptions: RwLock<HashMap<String, Subscription>>,
}

impl Receiver {
    /// Opens the receiver with the subscriptions stored in `store`.
    pub async fn open(
        store: Store,
        events: Arc<dyn EventSink>,
        handler: Arc<dyn CaepHandler>,
        audience: impl Into<String>,
    ) -> Result<Arc<Self>, SetError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| SetError::Internal(format!("http client: {e}")))?;
        let r = Arc::new(Self {
            store,
            events,
            handler,
            keys: TransmitterKeys::new(http),
            audience: audience.into(),
            subscriptions: RwLock::default(),
        });
        r.reload().await?;
        Ok(r)
    }

    pub fn audience(&self) -> &str {
        &self.audience
    }

    async fn reload(&self) -> Result<(), SetError> {
        let rows =
            sqlx::query("SELECT issuer, metadata, stream_id, delivery FROM ssf_subscriptions")
                .fetch_all(self.store.pool())
                .await
                .map_err(internal)?;
        let mut map = HashMap::new();
        for r in rows {
            let issuer: String = r.try_get("issuer").map_err(internal)?;
            let metadata: String = r.try_get("metadata").map_err(internal)?;
            map.insert(
                issuer.clone(),
                Subscription {
                    issuer,
                    metadata: serde_json::from_str(&metadata).unwrap_or(Value::Null),
                    stream_id: r.try_get("stream_id").map_err(internal)?,
                    delivery: r.try_get("delivery").map_err(internal)?,
                },
            );
        }
        if let Ok(mut s) = self.subscriptions.write() {
            *s = map;
        }
        Ok(())
    }

    /// Subscribes to the transmitter at `issuer`: fetches and checks its
    /// metadata and keys, and from then on accepts its SETs. `stream_id`:
    /// the stream created for us there, if known.
    pub async fn subscribe(
        &self,
        issuer: &str,
        delivery: &str,
        stream_id: Option<&str>,
    ) -> Result<Subscription, SetError> {
        let issuer = issuer.trim_end_matches('/');
        if !matches!(delivery, "push" | "poll") {
            return Err(SetError::InvalidRequest(format!(
                "delivery must be push or poll, not `{delivery}`"
            )));
        }
        let metadata = self.keys.metadata(issuer).await?;
        self.keys.keys(issuer, None).await?;
        let sub = Subscription {
            issuer: issuer.to_owned(),
            metadata: metadata.clone(),
            stream_id: stream_id.unwrap_or_default().to_owned(),
            delivery: delivery.to_owned(),
        };
        sqlx::query(
            "INSERT INTO ssf_subscriptions (issuer, metadata, stream_id, delivery, created_at) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (issuer) DO UPDATE SET metadata = $2, stream_id = $3, delivery = $4",
        )
        .bind(&sub.issuer)
        .bind(metadata.to_string())
        .bind(&sub.stream_id)
        .bind(&sub.delivery)
        .bind(now_millis())
        .execute(self.store.pool())
        .await
        .map_err(internal)?;
        if let Ok(mut s) = self.subscriptions.write() {
            s.insert(sub.issuer.clone(), sub.clone());
        }
        let _ = self
            .events
            .record(
                Event::new("ssf.subscribed", Outcome::Success)
                    .reason(format!("receiving SETs from {issuer} by {delivery}"))
                    .detail("issuer", issuer)
                    .detail("stream_id", sub.stream_id.clone()),
            )
            .await;
        Ok(sub)
    }

    /// Every subscription.
    pub fn subscriptions(&self) -> Vec<Subscription> {
        self.subscriptions
            .read()
            .map(|s| s.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Verifies, de-duplicates and applies one SET.
    pub async fn receive(&self, token: &str) -> Result<Received, SetError> {
        let (kid, iss) = set::peek(token)?;
        let trusted = self
            .subscriptions
            .read()
            .map(|s| s.contains_key(&iss))
            .unwrap_or(false);
        if !trusted {
            self.refused(&iss, "invalid_issuer").await;
            return Err(SetError::InvalidIssuer(format!(
                "`{iss}` is not a transmitter this receiver subscribed to"
            )));
        }
        let keys = self.keys.keys(&iss, kid.as_deref()).await?;
        let verified = match set::verify(token, &keys, &iss, &self.audience) {
            Ok(v) => v,
            Err(e) => {
                self.refused(&iss, e.code()).await;
                return Err(e);
            }
        };
        let (event, meta) = caep::parse_event(&verified.event_type, &verified.event)
            .map_err(|e| SetError::InvalidRequest(format!("event: {e}")))?;
        let fresh = sqlx::query(
            "INSERT INTO ssf_received (iss, jti, event_type, received_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (iss, jti) DO NOTHING",
        )
        .bind(&verified.iss)
        .bind(&verified.jti)
        .bind(&verified.event_type)
        .bind(now_millis())
        .execute(self.store.pool())
        .await
        .map_err(internal)?
        .rows_affected();
        if fresh == 0 {
            self.refused(&iss, "replay").await;
            return Err(SetError::Replay(verified.jti.clone()));
        }
        let applied = match self.handler.apply(&verified, &event).await {
            Ok(s) => s,
            Err(e) => format!("not applied: {e}"),
        };
        self.record_received(&verified, &meta, &applied).await;
        Ok(Received {
            jti: verified.jti,
            event_type: verified.event_type,
            applied,
        })
    }

    async fn record_received(&self, v: &VerifiedSet, meta: &EventMeta, applied: &str) {
        let mut e = Event::new("caep.received", Outcome::Success)
            .reason(applied.to_owned())
            .detail("event_type", v.event_type.clone())
            .detail("iss", v.iss.clone())
            .detail("jti", v.jti.clone())
            .detail("subject", v.sub_id.clone());
        if let Some(t) = meta.event_timestamp {
            e = e.detail("event_timestamp", t);
        }
        if let Err(err) = self.events.record(e).await {
            tracing::warn!(error = %err, "recording caep.received failed");
        }
    }

    async fn refused(&self, iss: &str, code: &str) {
        let e = Event::new("caep.refused", Outcome::Denied)
            .reason(format!("SET from `{iss}` refused: {code}"))
            .detail("iss", iss.to_owned());
        let _ = self.events.record_queued(e).await;
    }

    /// Polls a transmitter's poll endpoint (RFC 8936) with `bearer` until
    /// the receiver is dropped: acknowledges what it accepted, reports
    /// what it refused in `setErrs`.
    pub fn spawn_poller(
        self: &Arc<Self>,
        endpoint: String,
        bearer: String,
    ) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let http = match reqwest::Client::builder()
                .timeout(Duration::from_secs(40))
                .build()
            {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(error = %e, "SSF poller: no http client");
                    return;
                }
            };
            let mut ack: Vec<String> = Vec::new();
            let mut errs = serde_json::Map::new();
            let mut backoff = Duration::from_millis(250);
            loop {
                if weak.strong_count() == 0 {
                    return;
                }
                let body = json!({"maxEvents": 100, "returnImmediately": false, "ack": ack, "setErrs": errs});
                let resp = http
                    .post(&endpoint)
                    .bearer_auth(&bearer)
                    .json(&body)
                    .send()
                    .await;
                let sets = match resp {
                    Ok(r) if r.status().is_success() => match r.json::<Value>().await {
                        Ok(v) => v.get("sets").and_then(Value::as_object).cloned(),
                        Err(_) => None,
                    },
                    Ok(r) => {
                        tracing::warn!(status = %r.status(), %endpoint, "SSF poll refused");
                        None
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, %endpoint, "SSF poll failed");
                        None
                    }
                };
                let Some(sets) = sets else {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    continue;
                };
                backoff = Duration::from_millis(250);
                ack.clear();
                errs.clear();
                let Some(this) = weak.upgrade() else { return };
                for (jti, token) in sets {
                    let Some(token) = token.as_str() else {
                        continue;
                    };
                    match this.receive(token).await {
                        Ok(_) => ack.push(jti),
                        Err(SetError::Replay(_)) => ack.push(jti),
                        Err(e) => {
                            errs.insert(
                                jti,
                                json!({"err": e.code(), "description": e.description()}),
                            );
                        }
                    }
                }
            }
        })
    }
}

fn internal(e: sqlx::Error) -> SetError {
    SetError::Internal(format!("store: {e}"))
}
