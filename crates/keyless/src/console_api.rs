//! The console's JSON API (`/api/*`, next to the gateway's `/api/approvals`
//! and the STS's `/api/consents`):
//!
//! - `GET /api/config` (public): what the browser app needs to sign in.
//! - `POST /api/chat` `{"message", "conversation_id"?}` → `text/event-stream`:
//!   `conversation`, then the agent host's events (`text`, `tool_call`,
//!   `tool_result`, `warning`, `session_ended`, `error`) and one `done`.
//! - `GET /api/audit/verify`, `/api/identities`, `/api/leases`,
//!   `/api/streams`, `/api/timeline?minutes=N`: read-only views.
//!
//! Every route but `/api/config` takes the signed-in user's access token
//! (`Authorization: Bearer`); an agent's on-behalf-of token and a service's
//! token are refused (the console is the human's), and a token whose
//! session ended is a 401 so the app asks to sign in again. Conversations
//! live in memory, belong to the user who opened them, and are bounded.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use keyless_agent::host::{ChatEvent, Host};
use keyless_agent::model::Message;
use keyless_audit::AuditLog;
use keyless_identity::Identity;
use keyless_secrets::Secrets;
use keyless_signals::transmitter::{Owner, Transmitter};
use keyless_store::now_millis;
use keyless_sts::{AccessTokenClaims, Sts};
use serde::Deserialize;
use serde_json::{Value, json};

/// Longest chat message accepted, in characters.
const MAX_MESSAGE_CHARS: usize = 4000;
/// Largest `/api/chat` body.
const MAX_CHAT_BODY: usize = 16 * 1024;
/// Conversations kept per user and in all; the least recently used go first.
const MAX_CONVERSATIONS_PER_USER: usize = 20;
const MAX_CONVERSATIONS: usize = 2000;
/// Turns one user may have running at once (each may call a paid model).
const MAX_RUNNING_TURNS_PER_USER: usize = 4;
/// Audit entries scanned (newest first) for the timeline and SVID views.
const MAX_SCAN: u64 = 5000;

#[derive(Clone)]
pub struct ConsoleState {
    pub host: Arc<Host>,
    pub sts: Arc<Sts>,
    pub audit: Arc<AuditLog>,
    pub identity: Arc<Identity>,
    pub secrets: Arc<Secrets>,
    pub transmitter: Arc<Transmitter>,
    pub config: Arc<Value>,
    pub conversations: Arc<Mutex<Conversations>>,
}

/// The console's settings as `/api/config` answers them.
pub fn config_json(public_url: &str, agent: &str, model: &str) -> Value {
    json!({
        "issuer": public_url,
        "client_id": "keyless-console",
        "redirect_uri": format!("{public_url}/callback"),
        "scope": "openid email tools",
        "agent": agent,
        "rar_types": ["tool_call", "directory_read", "directory_write", "directory_admin", "transfer_funds"],
        "model": model,
    })
}

/// Why a conversation cannot take a turn now.
enum Checkout {
    NotFound,
    Busy,
    /// The user already has [`MAX_RUNNING_TURNS_PER_USER`] turns running.
    TooMany,
}

/// Conversations in memory.
#[derive(Default)]
pub struct Conversations {
    map: HashMap<String, Conversation>,
}

struct Conversation {
    owner: String,
    /// `None` while a turn runs (the history is with the turn).
    history: Option<Vec<Message>>,
    used: Instant,
}

// === impl Conversations ===

impl Conversations {
    /// Takes the history of `id` for a turn (a new conversation when `id` is
    /// `None`). Someone else's or an unknown conversation is "not found"
    /// alike; a conversation whose turn is still running is busy.
    fn checkout(
        &mut self,
        owner: &str,
        id: Option<&str>,
    ) -> Result<(String, Vec<Message>), Checkout> {
        let running = self
            .map
            .values()
            .filter(|c| c.owner == owner && c.history.is_none())
            .count();
        if running >= MAX_RUNNING_TURNS_PER_USER {
            return Err(Checkout::TooMany);
        }
        match id {
            Some(id) => {
                let c = self
                    .map
                    .get_mut(id)
                    .filter(|c| c.owner == owner)
                    .ok_or(Checkout::NotFound)?;
                let history = c.history.take().ok_or(Checkout::Busy)?;
                c.used = Instant::now();
                Ok((id.to_owned(), history))
            }
            None => {
                self.evict(owner);
                let id = uuid_like();
                self.map.insert(
                    id.clone(),
                    Conversation {
                        owner: owner.to_owned(),
                        history: None,
                        used: Instant::now(),
                    },
                );
                Ok((id, Vec::new()))
            }
        }
    }

    fn checkin(&mut self, id: &str, history: Vec<Message>) {
        if let Some(c) = self.map.get_mut(id) {
            c.history = Some(history);
            c.used = Instant::now();
        }
    }

    /// Makes room for one more conversation of `owner`.
    fn evict(&mut self, owner: &str) {
        let oldest = |map: &HashMap<String, Conversation>, of: Option<&str>| {
            map.iter()
                .filter(|(_, c)| c.history.is_some() && of.is_none_or(|o| c.owner == o))
                .min_by_key(|(_, c)| c.used)
                .map(|(id, _)| id.clone())
        };
        let mine = self.map.values().filter(|c| c.owner == owner).count();
        if mine >= MAX_CONVERSATIONS_PER_USER
            && let Some(id) = oldest(&self.map, Some(owner))
        {
            self.map.remove(&id);
        }
        if self.map.len() >= MAX_CONVERSATIONS
            && let Some(id) = oldest(&self.map, None)
        {
            self.map.remove(&id);
        }
    }
}

/// A conversation id nobody can guess (they are also checked against
/// their owner).
fn uuid_like() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

pub fn router(state: ConsoleState) -> Router {
    Router::new()
        .route("/api/config", get(config))
        .route("/api/chat", post(chat))
        .route("/api/audit/verify", get(audit_verify))
        .route("/api/identities", get(identities))
        .route("/api/leases", get(leases))
        .route("/api/streams", get(streams))
        .route("/api/timeline", get(timeline))
        .layer(axum::middleware::map_response(no_store))
        .with_state(state)
}

async fn no_store(mut resp: Response) -> Response {
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn error(status: StatusCode, code: &str, description: &str) -> Response {
    (
        status,
        axum::Json(json!({"error": code, "error_description": description})),
    )
        .into_response()
}

fn unauthorized(description: &str) -> Response {
    let mut resp = error(StatusCode::UNAUTHORIZED, "invalid_token", description);
    if let Ok(v) = HeaderValue::from_str(&format!(
        "Bearer error=\"invalid_token\", error_description=\"{description}\""
    )) {
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    resp
}

/// The signed-in user's verified claims and raw token, or the refusal.
async fn authenticate(
    sts: &Sts,
    headers: &HeaderMap,
) -> Result<(AccessTokenClaims, String), Response> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, t)| scheme.eq_ignore_ascii_case("bearer") && !t.trim().is_empty())
        .map(|(_, t)| t.trim().to_owned())
        .ok_or_else(|| unauthorized("sign in: no access token"))?;
    let claims = sts
        .verify_access_token(&token, None)
        .await
        .map_err(|_| unauthorized("the access token is invalid or expired"))?;
    if claims.is_service() || claims.is_obo() {
        // The console is the human's: an agent's or a service's token
        // never speaks for a user here.
        return Err(error(
            StatusCode::FORBIDDEN,
            "access_denied",
            "the console takes a user's own access token",
        ));
    }
    match sts.token_live(&claims).await {
        Ok(true) => Ok((claims, token)),
        Ok(false) => Err(unauthorized("your session has ended: sign in again")),
        Err(e) => {
            tracing::error!(error = %e, "console api: session lookup failed");
            Err(error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "internal error",
            ))
        }
    }
}

async fn config(State(s): State<ConsoleState>) -> Response {
    axum::Json(s.config.as_ref().clone()).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChatRequest {
    message: String,
    #[serde(default)]
    conversation_id: Option<String>,
}

async fn chat(State(s): State<ConsoleState>, headers: HeaderMap, body: Bytes) -> Response {
    let (claims, token) = match authenticate(&s.sts, &headers).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    if body.len() > MAX_CHAT_BODY {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request_too_large",
            &format!("the request body exceeds {MAX_CHAT_BODY} bytes"),
        );
    }
    let req: ChatRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                &format!(
                    "the body must be {{\"message\": \"…\", \"conversation_id\"?: \"…\"}}: {e}"
                ),
            );
        }
    };
    let message = req.message.trim().to_owned();
    if message.is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "the message is empty",
        );
    }
    if message.chars().count() > MAX_MESSAGE_CHARS {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request_too_large",
            &format!("a message has at most {MAX_MESSAGE_CHARS} characters"),
        );
    }
    let checked_out = match s.conversations.lock() {
        Ok(mut c) => c.checkout(&claims.sub, req.conversation_id.as_deref()),
        Err(_) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "internal error",
            );
        }
    };
    let (id, mut history) = match checked_out {
        Ok(c) => c,
        // Someone else's conversation is "not found", like an unknown one.
        Err(Checkout::NotFound) => {
            return error(StatusCode::NOT_FOUND, "not_found", "no such conversation");
        }
        Err(Checkout::Busy) => {
            return error(
                StatusCode::CONFLICT,
                "busy",
                "this conversation is still answering the previous message",
            );
        }
        Err(Checkout::TooMany) => {
            return error(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_requests",
                &format!(
                    "you already have {MAX_RUNNING_TURNS_PER_USER} answers running; wait for one to finish"
                ),
            );
        }
    };
    // One outgoing stream: the host's events, and, while the turn runs, the
    // approvals this session's calls wait for (the gateway holds the call
    // silently until the human decides; the browser learns why from here).
    let (out_tx, out_rx) = tokio::sync::mpsc::channel::<(String, Value)>(64);
    let (tx, rx) = tokio::sync::mpsc::channel::<ChatEvent>(64);
    let host = s.host.clone();
    let conversations = s.conversations.clone();
    let turn_id = id.clone();
    tokio::spawn(async move {
        host.run_turn(&mut history, &token, &message, tx).await;
        if let Ok(mut c) = conversations.lock() {
            c.checkin(&turn_id, history);
        }
    });
    let watch = s.audit.subscribe();
    let session = claims.sid.clone();
    tokio::spawn(forward_turn(out_tx, rx, watch, session));
    let first = futures::stream::once(async move {
        Ok::<_, Infallible>(
            SseEvent::default()
                .event("conversation")
                .data(json!({ "conversation_id": id }).to_string()),
        )
    });
    let events = futures::stream::unfold(out_rx, |mut rx| async move {
        let (kind, data) = rx.recv().await?;
        Some((
            Ok::<_, Infallible>(SseEvent::default().event(kind).data(data.to_string())),
            rx,
        ))
    });
    use futures::StreamExt;
    Sse::new(first.chain(events))
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// Moves a turn's events to the browser, adding an `approval_required`
/// event for each approval the session's calls wait for, until the turn's
/// `done` (or the browser leaves).
async fn forward_turn(
    out: tokio::sync::mpsc::Sender<(String, Value)>,
    mut turn: tokio::sync::mpsc::Receiver<ChatEvent>,
    mut audit: tokio::sync::broadcast::Receiver<Arc<keyless_audit::LogEntry>>,
    session: Option<String>,
) {
    // Without a session there is nothing to match approvals with.
    let mut watching = session.is_some();
    loop {
        tokio::select! {
            event = turn.recv() => {
                let Some(event) = event else { return };
                let data = serde_json::to_value(&event).unwrap_or(Value::Null);
                let kind = data
                    .get("type")
                    .and_then(Value::as_str)
                    .unwrap_or("message")
                    .to_owned();
                let done = kind == "done";
                if out.send((kind, data)).await.is_err() || done {
                    return;
                }
            }
            entry = audit.recv(), if watching => {
                let entry = match entry {
                    Ok(e) => e,
                    // Missing one is harmless: the console also polls.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                        watching = false;
                        continue;
                    }
                };
                let e = &entry.event;
                if e.kind != "approval.required" || e.session != session {
                    continue;
                }
                let data = json!({
                    "type": "approval_required",
                    "approval_id": e.detail.get("approval_id"),
                    "tool": e.tool,
                    "tier": e.tier,
                    "summary": e.rar_summary,
                    "expires_at": e.detail.get("expires_at"),
                });
                if out.send(("approval_required".to_owned(), data)).await.is_err() {
                    return;
                }
            }
        }
    }
}

async fn audit_verify(State(s): State<ConsoleState>, headers: HeaderMap) -> Response {
    if let Err(r) = authenticate(&s.sts, &headers).await {
        return r;
    }
    use base64::Engine;
    let b64 = |h: &[u8]| base64::engine::general_purpose::STANDARD.encode(h);
    match keyless_audit::verify(s.audit.store()).await {
        Ok(report) => axum::Json(json!({
            "ok": true,
            "size": report.size,
            "root": b64(&report.root),
            "checkpoints": report.checkpoints,
            "checkpoint_size": report.latest_checkpoint.as_ref().map(|c| c.size),
            "message": format!("{} entries and {} checkpoints verified", report.size, report.checkpoints),
        }))
        .into_response(),
        Err(e) => axum::Json(json!({
            "ok": false,
            "message": e.to_string(),
        }))
        .into_response(),
    }
}

/// The newest audit entries (at most [`MAX_SCAN`]) whose time is at least
/// `since_ms`, newest first.
async fn recent_entries(
    audit: &AuditLog,
    since_ms: i64,
) -> Result<Vec<keyless_audit::LogEntry>, keyless_audit::AuditError> {
    let floor = audit.size().saturating_sub(MAX_SCAN);
    let mut out = Vec::new();
    let mut end = audit.size();
    while end > floor {
        let start = end.saturating_sub(500).max(floor);
        let page = audit.entries(start, end).await?;
        for e in page.into_iter().rev() {
            if e.event.time < since_ms {
                return Ok(out);
            }
            out.push(e);
        }
        end = start;
    }
    Ok(out)
}

async fn identities(State(s): State<ConsoleState>, headers: HeaderMap) -> Response {
    if let Err(r) = authenticate(&s.sts, &headers).await {
        return r;
    }
    let entries = s.identity.list_entries().await;
    let svids = match recent_entries(&s.audit, 0).await {
        Ok(e) => e
            .into_iter()
            .filter(|e| e.event.kind == "svid.issued")
            .take(50)
            .map(|e| serde_json::to_value(&e.event).unwrap_or(Value::Null))
            .collect::<Vec<_>>(),
        Err(e) => {
            tracing::error!(error = %e, "console api: reading the audit log");
            Vec::new()
        }
    };
    axum::Json(json!({ "entries": entries, "svids": svids })).into_response()
}

async fn leases(State(s): State<ConsoleState>, headers: HeaderMap) -> Response {
    if let Err(r) = authenticate(&s.sts, &headers).await {
        return r;
    }
    match s.secrets.recent_leases(200).await {
        // `internal` (engine bookkeeping) stays out of the view.
        Ok(leases) => axum::Json(json!({
            "leases": leases.iter().map(|l| json!({
                "lease_id": l.lease_id,
                "engine": l.engine,
                "identity": l.identity,
                "issued_at": l.issued_at,
                "expires_at": l.expires_at,
                "max_expires_at": l.max_expires_at,
                "renewable": l.renewable,
                "revoking": l.revoking,
                "attempts": l.attempts,
                "last_error": l.last_error,
            })).collect::<Vec<_>>()
        }))
        .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "console api: listing leases");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "internal error",
            )
        }
    }
}

async fn streams(State(s): State<ConsoleState>, headers: HeaderMap) -> Response {
    if let Err(r) = authenticate(&s.sts, &headers).await {
        return r;
    }
    match s.transmitter.streams(&Owner::Admin).await {
        Ok(streams) => axum::Json(json!({
            "streams": streams.iter().map(|st| {
                let mut v = st.to_json();
                if let Some(o) = v.as_object_mut() {
                    o.insert("status".into(), json!(st.status));
                    o.insert("owner".into(), json!(st.owner));
                    if let Some(r) = &st.reason {
                        o.insert("reason".into(), json!(r));
                    }
                }
                v
            }).collect::<Vec<_>>()
        }))
        .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "console api: listing streams");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "internal error",
            )
        }
    }
}

/// Event types that are decisions (what the timeline counts).
fn is_decision(kind: &str) -> bool {
    [
        "token_exchange.",
        "approval.",
        "tool.",
        "attestation.",
        "risk.",
        "session.",
        "consent.",
    ]
    .iter()
    .any(|p| kind.starts_with(p))
}

async fn timeline(
    State(s): State<ConsoleState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Err(r) = authenticate(&s.sts, &headers).await {
        return r;
    }
    let minutes = match q.get("minutes").map(|m| m.parse::<i64>()) {
        None => 30,
        Some(Ok(m)) if (1..=1440).contains(&m) => m,
        Some(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "`minutes` must be a whole number from 1 to 1440",
            );
        }
    };
    let now = now_millis();
    let first_minute = (now / 60_000 - (minutes - 1)) * 60_000;
    let entries = match recent_entries(&s.audit, first_minute).await {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(error = %e, "console api: reading the audit log");
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "internal error",
            );
        }
    };
    let mut buckets: Vec<[u64; 4]> = vec![[0; 4]; usize::try_from(minutes).unwrap_or(30)];
    for e in entries.iter().filter(|e| is_decision(&e.event.kind)) {
        let slot = usize::try_from((e.event.time - first_minute) / 60_000).ok();
        let outcome = match e.event.outcome {
            keyless_audit::Outcome::Success => 0,
            keyless_audit::Outcome::Denied => 1,
            keyless_audit::Outcome::Pending => 2,
            keyless_audit::Outcome::Error => 3,
        };
        if let Some(b) = slot.and_then(|i| buckets.get_mut(i))
            && let Some(n) = b.get_mut(outcome)
        {
            *n += 1;
        }
    }
    let buckets: Vec<Value> = buckets
        .iter()
        .enumerate()
        .map(|(i, [ok, denied, pending, err])| {
            json!({
                "minute": first_minute + (i as i64) * 60_000,
                "success": ok, "denied": denied, "pending": pending, "error": err,
            })
        })
        .collect();
    axum::Json(json!({ "buckets": buckets })).into_response()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn checkout(
        c: &mut Conversations,
        owner: &str,
        id: Option<&str>,
    ) -> Result<String, &'static str> {
        c.checkout(owner, id)
            .map(|(id, _)| id)
            .map_err(|e| match e {
                Checkout::NotFound => "not found",
                Checkout::Busy => "busy",
                Checkout::TooMany => "too many",
            })
    }

    #[test]
    fn a_conversation_is_its_owners_and_takes_one_turn_at_a_time() {
        let mut c = Conversations::default();
        let id = checkout(&mut c, "alice", None).unwrap();
        // While the turn runs, its history is out: a second turn waits.
        assert_eq!(checkout(&mut c, "alice", Some(&id)), Err("busy"));
        c.checkin(&id, vec![Message::user_text("list users")]);
        // Someone else's conversation is "not found", like an unknown one.
        assert_eq!(checkout(&mut c, "bob", Some(&id)), Err("not found"));
        assert_eq!(checkout(&mut c, "alice", Some("nope")), Err("not found"));
        let (again, history) = c.checkout("alice", Some(&id)).ok().unwrap();
        assert_eq!(again, id);
        assert_eq!(history.len(), 1);
    }

    #[test]
    fn a_user_runs_a_bounded_number_of_turns_at_once() {
        let mut c = Conversations::default();
        for _ in 0..MAX_RUNNING_TURNS_PER_USER {
            checkout(&mut c, "alice", None).unwrap();
        }
        assert_eq!(checkout(&mut c, "alice", None), Err("too many"));
        // Another user is not held back by alice's turns.
        let bobs = checkout(&mut c, "bob", None).unwrap();
        // A finished turn makes room again.
        let running: Vec<String> = c
            .map
            .iter()
            .filter(|(_, v)| v.owner == "alice")
            .map(|(k, _)| k.clone())
            .collect();
        c.checkin(&running[0], Vec::new());
        assert!(checkout(&mut c, "alice", None).is_ok());
        assert!(c.map.contains_key(&bobs));
    }

    #[test]
    fn a_user_keeps_a_bounded_number_of_conversations() {
        let mut c = Conversations::default();
        let first = checkout(&mut c, "alice", None).unwrap();
        c.checkin(&first, Vec::new());
        // Used a while ago (no tie with the ones opened below).
        let entry = c.map.get_mut(&first).unwrap();
        entry.used = entry
            .used
            .checked_sub(std::time::Duration::from_secs(60))
            .unwrap_or(entry.used);
        for _ in 0..MAX_CONVERSATIONS_PER_USER {
            let id = checkout(&mut c, "alice", None).unwrap();
            c.checkin(&id, Vec::new());
        }
        let mine = c.map.values().filter(|v| v.owner == "alice").count();
        assert_eq!(mine, MAX_CONVERSATIONS_PER_USER);
        // The least recently used went first.
        assert!(!c.map.contains_key(&first));
        // Others are untouched by alice's churn.
        let bobs = checkout(&mut c, "bob", None).unwrap();
        assert!(c.map.contains_key(&bobs));
    }

    #[test]
    fn only_decisions_count_on_the_timeline() {
        assert!(is_decision("token_exchange.denied"));
        assert!(is_decision("approval.cached"));
        assert!(is_decision("tool.called"));
        assert!(!is_decision("svid.cached"));
        assert!(!is_decision("audit.checkpoint"));
    }
}
