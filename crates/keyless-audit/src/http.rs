//! The audit log's HTTP surface: checkpoints, entries, proofs and the live
//! `/events` stream. The only module of the crate that knows axum.
//!
//! - `GET /audit/checkpoint`: the latest checkpoint, `text/plain`, the exact
//!   signed note (one is issued on the spot if none exists yet).
//! - `GET /audit/entries?start=A&end=B`: entries `A ≤ index < B` (at most
//!   1000), `{"size":N,"entries":[{"index","leaf_hash","event"}]}`.
//! - `GET /audit/proof/inclusion?index=N[&size=S]` and
//!   `GET /audit/proof/consistency?from=A[&to=B]`: RFC 9162 proofs. The size
//!   defaults to the latest checkpoint's (issuing one if it does not cover
//!   the request), so a proof can be checked against a signed root.
//! - `GET /events[?user=&agent=&type=a,b.*&since=N]`: Server-Sent Events,
//!   one per entry, `id:` = log index, data = the entry as in
//!   `/audit/entries`. `Last-Event-ID` (or `since`) replays from the store
//!   and then follows the live bus without gap or duplicate. A subscriber
//!   that falls behind the bus is disconnected (appends never wait for it)
//!   and resumes with `Last-Event-ID`.
//!
//! Hashes are base64 (standard alphabet, padded) everywhere, as in the
//! checkpoint notes. Errors are `{"error": "..."}`; internal details are
//! logged, not sent.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use futures::Stream;
use serde_json::json;
use tokio::sync::broadcast;

use crate::error::AuditError;
use crate::event::Event;
use crate::log::{AuditLog, LogEntry};
use crate::merkle::{Hash, TreeError};

/// Most entries one `/audit/entries` request returns.
pub const MAX_ENTRIES_PER_REQUEST: u64 = 1000;
/// Entries read from the store per page while replaying `/events`.
const REPLAY_PAGE: u64 = 256;

/// The audit routes, ready to merge into the fabric's router.
pub fn router(log: Arc<AuditLog>) -> Router {
    Router::new()
        .route("/audit/checkpoint", get(checkpoint))
        .route("/audit/entries", get(entries))
        .route("/audit/proof/inclusion", get(inclusion))
        .route("/audit/proof/consistency", get(consistency))
        .route("/events", get(events))
        .with_state(log)
}

/// An error on the wire.
#[derive(Debug)]
enum ApiError {
    BadRequest(String),
    Audit(AuditError),
}

impl From<AuditError> for ApiError {
    fn from(e: AuditError) -> Self {
        Self::Audit(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            Self::BadRequest(m) => (StatusCode::BAD_REQUEST, m),
            Self::Audit(e) => match &e {
                AuditError::InvalidRange(_) | AuditError::Tree(_) => {
                    (StatusCode::BAD_REQUEST, e.to_string())
                }
                AuditError::NoSuchEntry(_) | AuditError::NoCheckpoint => {
                    (StatusCode::NOT_FOUND, e.to_string())
                }
                AuditError::Closed
                | AuditError::WriteFailed(_)
                | AuditError::Database(_)
                | AuditError::Store(_) => {
                    tracing::error!(error = %e, "audit request failed");
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "audit log unavailable".to_owned(),
                    )
                }
                AuditError::Inconsistent(_)
                | AuditError::Tampered(_)
                | AuditError::OriginMismatch { .. }
                | AuditError::KeyMismatch(_)
                | AuditError::Serialize(_)
                | AuditError::Internal(_)
                | AuditError::Io(_) => {
                    tracing::error!(error = %e, "audit request failed");
                    (
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "audit log error".to_owned(),
                    )
                }
            },
        };
        (status, Json(json!({ "error": message }))).into_response()
    }
}

type Params = Query<HashMap<String, String>>;

fn param_u64(params: &HashMap<String, String>, name: &str) -> Result<Option<u64>, ApiError> {
    params
        .get(name)
        .map(|v| {
            v.parse::<u64>().map_err(|_| {
                ApiError::BadRequest(format!("`{name}` must be a non-negative integer"))
            })
        })
        .transpose()
}

fn b64(h: &Hash) -> String {
    B64.encode(h)
}

async fn checkpoint(State(log): State<Arc<AuditLog>>) -> Result<Response, ApiError> {
    let cp = match log.latest_checkpoint().await? {
        Some(cp) => cp,
        None => log.checkpoint_now().await?,
    };
    Ok((
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        cp.note,
    )
        .into_response())
}

async fn entries(State(log): State<Arc<AuditLog>>, Query(p): Params) -> Result<Response, ApiError> {
    let start = param_u64(&p, "start")?.unwrap_or(0);
    let end = param_u64(&p, "end")?.unwrap_or(start.saturating_add(100));
    if end < start {
        return Err(ApiError::BadRequest("`end` is before `start`".into()));
    }
    if end - start > MAX_ENTRIES_PER_REQUEST {
        return Err(ApiError::BadRequest(format!(
            "at most {MAX_ENTRIES_PER_REQUEST} entries per request"
        )));
    }
    let size = log.size();
    let list = log.entries(start, end.min(size)).await?;
    // The entries are embedded as stored (canonical JSON), not re-serialized.
    let body = format!(
        "{{\"size\":{size},\"entries\":[{}]}}",
        list.iter()
            .map(LogEntry::to_json_line)
            .collect::<Vec<_>>()
            .join(",")
    );
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// The latest checkpoint's size, issuing a checkpoint if none covers `at_least`.
async fn signed_size(log: &AuditLog, at_least: u64) -> Result<u64, ApiError> {
    match log.latest_checkpoint().await? {
        Some(cp) if cp.size >= at_least => Ok(cp.size),
        _ => Ok(log.checkpoint_now().await?.size),
    }
}

async fn inclusion(
    State(log): State<Arc<AuditLog>>,
    Query(p): Params,
) -> Result<Response, ApiError> {
    let index = param_u64(&p, "index")?
        .ok_or_else(|| ApiError::BadRequest("`index` is required".into()))?;
    let size = match param_u64(&p, "size")? {
        Some(s) => s,
        None => signed_size(&log, index.saturating_add(1)).await?,
    };
    let proof = log.inclusion_proof(index, size)?;
    Ok(Json(json!({
        "index": proof.index,
        "size": proof.size,
        "leaf_hash": b64(&proof.leaf_hash),
        "root": b64(&proof.root),
        "hashes": proof.hashes.iter().map(b64).collect::<Vec<_>>(),
    }))
    .into_response())
}

async fn consistency(
    State(log): State<Arc<AuditLog>>,
    Query(p): Params,
) -> Result<Response, ApiError> {
    let from =
        param_u64(&p, "from")?.ok_or_else(|| ApiError::BadRequest("`from` is required".into()))?;
    let to = match param_u64(&p, "to")? {
        Some(t) => t,
        None => signed_size(&log, from).await?,
    };
    if from > to {
        return Err(AuditError::Tree(TreeError::Shrinking { from, to }).into());
    }
    let proof = log.consistency_proof(from, to)?;
    Ok(Json(json!({
        "from": proof.from,
        "to": proof.to,
        "from_root": b64(&proof.from_root),
        "to_root": b64(&proof.to_root),
        "hashes": proof.hashes.iter().map(b64).collect::<Vec<_>>(),
    }))
    .into_response())
}

/// Which events a subscriber wants.
#[derive(Debug, Clone, Default)]
struct Filter {
    user: Option<String>,
    agent: Option<String>,
    /// Exact types, or prefixes written `svid.*`.
    types: Vec<String>,
}

impl Filter {
    fn matches(&self, e: &Event) -> bool {
        let user_ok = self
            .user
            .as_ref()
            .is_none_or(|u| e.user.as_ref() == Some(u));
        let agent_ok = self
            .agent
            .as_ref()
            .is_none_or(|a| e.agent.as_ref() == Some(a));
        let type_ok = self.types.is_empty()
            || self.types.iter().any(|t| match t.strip_suffix('*') {
                Some(prefix) => e.kind.starts_with(prefix),
                None => &e.kind == t,
            });
        user_ok && agent_ok && type_ok
    }
}

enum Phase {
    /// Reading the store from `next` on.
    Replay,
    /// Following the bus.
    Live,
}

struct Subscription {
    log: Arc<AuditLog>,
    rx: broadcast::Receiver<Arc<LogEntry>>,
    /// Next index to deliver (or skip, if filtered out).
    next: u64,
    filter: Filter,
    phase: Phase,
    ready: VecDeque<Arc<LogEntry>>,
}

impl Subscription {
    /// The next matching entry, or `None` when the stream must end.
    async fn next_entry(&mut self) -> Option<Arc<LogEntry>> {
        loop {
            if let Some(e) = self.ready.pop_front() {
                if self.filter.matches(&e.event) {
                    return Some(e);
                }
                continue;
            }
            match self.phase {
                Phase::Replay => {
                    let page = match self
                        .log
                        .entries(self.next, self.next.saturating_add(REPLAY_PAGE))
                        .await
                    {
                        Ok(p) => p,
                        Err(e) => {
                            tracing::error!(error = %e, "event stream replay failed");
                            return None;
                        }
                    };
                    match page.last() {
                        Some(last) => self.next = last.index + 1,
                        None => self.phase = Phase::Live,
                    }
                    self.ready.extend(page.into_iter().map(Arc::new));
                }
                Phase::Live => match self.rx.recv().await {
                    Ok(e) if e.index < self.next => {}
                    Ok(e) if e.index == self.next => {
                        self.next += 1;
                        self.ready.push_back(e);
                    }
                    // A gap (entries committed by another process, or
                    // published before we caught up): the store has them.
                    Ok(_) => self.phase = Phase::Replay,
                    // Too slow for the bus: drop the subscriber rather than
                    // hold appends back; it resumes with Last-Event-ID.
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::info!(missed = n, "dropping a slow /events subscriber");
                        return None;
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
            }
        }
    }
}

async fn events(
    State(log): State<Arc<AuditLog>>,
    headers: HeaderMap,
    Query(p): Params,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let last_event_id = headers
        .get("last-event-id")
        .map(|v| {
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(|| ApiError::BadRequest("`Last-Event-ID` must be a log index".into()))
        })
        .transpose()?;
    let since = param_u64(&p, "since")?;
    let filter = Filter {
        user: p.get("user").cloned(),
        agent: p.get("agent").cloned(),
        types: p
            .get("type")
            .map(|t| {
                t.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default(),
    };
    // Subscribe before deciding where to start: every entry committed from
    // now on is on the bus, every one before is in the store.
    let rx = log.subscribe();
    let (next, phase) = match (last_event_id, since) {
        (Some(id), _) => (id.saturating_add(1), Phase::Replay),
        (None, Some(s)) => (s, Phase::Replay),
        (None, None) => (log.size(), Phase::Live),
    };
    let sub = Subscription {
        log,
        rx,
        next,
        filter,
        phase,
        ready: VecDeque::new(),
    };
    let stream = futures::stream::unfold(sub, |mut sub| async move {
        let e = sub.next_entry().await?;
        let event = SseEvent::default()
            .id(e.index.to_string())
            .data(e.to_json_line());
        Some((Ok(event), sub))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}
