//! The gateway's HTTP surface: `/mcp` (Streamable HTTP, behind agent and
//! user authentication), its RFC 9728 protected-resource metadata, and the
//! approvals API.
//!
//! Authentication happens here, before any MCP message is read: no agent
//! identity (a JWT-SVID bearer, or the X509-SVID of the mTLS connection)
//! → 401 with `WWW-Authenticate: Bearer … resource_metadata`; no live user
//! session → 401 `invalid_token`; a body above the limit → 413.
//!
//! Two MCP services sit behind `/mcp`:
//! - stateless (the default, and every client that does not ask for more):
//!   each POST carries its own credentials, is authorized on its own, and
//!   is answered with JSON; no session to pin a caller to;
//! - a session, for a client whose `initialize` declares the elicitation
//!   capability (form mode), so that a waiting `tools/call` can ask it to
//!   decide the approval (`elicitation/create` on the call's SSE stream,
//!   the answer POSTed back on the session). Every request of a session is
//!   still authenticated on its own, and must come from the agent, user
//!   and user session that opened it: anyone else is told the session does
//!   not exist (404), so no other caller can answer, or even see, another's
//!   approval question. Sessions live in this process's memory
//!   (rmcp's `LocalSessionManager`, closed after 5 minutes idle); with
//!   several replicas a load balancer must keep a session on one replica
//!   (the approval itself is in the store, so `/api/approvals` works on
//!   any). Beyond [`MAX_SESSIONS`] new clients are served statelessly.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use keyless_identity::PeerSvid;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::session::never::NeverSessionManager;
use rmcp::transport::{StreamableHttpServerConfig, StreamableHttpService};
use serde::Deserialize;
use serde_json::json;

use crate::mcp::GatewayHandler;
use crate::pipeline::{AuthError, Caller, Gateway, SUBJECT_TOKEN_HEADER};

/// Room for the JSON-RPC envelope around the arguments.
const ENVELOPE_BYTES: usize = 16 * 1024;
/// The MCP session header.
const SESSION_HEADER: &str = "mcp-session-id";
/// Most MCP sessions kept at once.
pub const MAX_SESSIONS: usize = 1024;
/// How often forgotten sessions' owners are pruned, at most.
const PRUNE_EVERY: Duration = Duration::from_secs(30);

/// Who opened a session: every later request must be them.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Owner {
    agent: String,
    user_sub: String,
    session: Option<String>,
}

impl Owner {
    fn of(caller: &Caller) -> Self {
        Self {
            agent: caller.agent.clone(),
            user_sub: caller.user.sub.clone(),
            session: caller.user.sid.clone(),
        }
    }
}

#[derive(Debug)]
struct Owners {
    by_session: HashMap<String, Owner>,
    pruned_at: Instant,
}

struct Mcp {
    gateway: Arc<Gateway>,
    stateless: StreamableHttpService<GatewayHandler, NeverSessionManager>,
    stateful: StreamableHttpService<GatewayHandler, LocalSessionManager>,
    sessions: Arc<LocalSessionManager>,
    owners: Mutex<Owners>,
    body_limit: usize,
}

/// The gateway's routes, to merge into the fabric's listener.
pub fn router(gateway: Arc<Gateway>) -> Router {
    let body_limit = gateway.max_argument_bytes() + ENVELOPE_BYTES;
    let mut config = StreamableHttpServerConfig::default();
    config.max_request_body_bytes = body_limit;
    // Bearer tokens and client certificates, not cookies, authenticate
    // every request, so Host checks add nothing; browsers' requests must
    // come from our origin.
    config.allowed_hosts = Vec::new();
    config.allowed_origins = vec![gateway.base_url().to_owned()];
    let handler = {
        let gateway = gateway.clone();
        move || {
            Ok(GatewayHandler {
                gateway: gateway.clone(),
            })
        }
    };
    let mut stateless_config = config.clone();
    stateless_config.legacy_session_mode = false;
    stateless_config.json_response = true;
    let stateless = StreamableHttpService::new(
        handler.clone(),
        Arc::new(NeverSessionManager::default()),
        stateless_config,
    );
    let mut stateful_config = config;
    stateful_config.legacy_session_mode = true;
    stateful_config.json_response = false;
    let sessions = Arc::new(LocalSessionManager::default());
    let stateful = StreamableHttpService::new(handler, sessions.clone(), stateful_config);
    let mcp = Arc::new(Mcp {
        gateway: gateway.clone(),
        stateless,
        stateful,
        sessions,
        owners: Mutex::new(Owners {
            by_session: HashMap::new(),
            pruned_at: Instant::now(),
        }),
        body_limit,
    });
    Router::new()
        .route(
            "/.well-known/oauth-protected-resource/mcp",
            get(protected_resource_metadata),
        )
        .with_state(gateway.clone())
        .merge(Router::new().route("/mcp", any(serve_mcp)).with_state(mcp))
        .merge(crate::approvals_http::router(
            gateway.approvals().clone(),
            gateway.sts().clone(),
        ))
}

/// RFC 9728 metadata of the `/mcp` resource.
async fn protected_resource_metadata(State(gw): State<Arc<Gateway>>) -> Response {
    let body = json!({
        "resource": gw.canonical_uri(),
        "authorization_servers": [gw.sts().issuer()],
        "bearer_methods_supported": ["header"],
        "resource_name": "Keyless MCP gateway",
        "resource_documentation": "Authenticate as an agent with a JWT-SVID whose audience is `resource` (or with an X509-SVID client certificate on the mTLS listener); send the user's access token in X-Keyless-Subject-Token.",
    });
    (
        [(
            header::CACHE_CONTROL,
            HeaderValue::from_static("max-age=300"),
        )],
        axum::Json(body),
    )
        .into_response()
}

fn challenge(gw: &Gateway, status: StatusCode, error: &str, description: &str) -> Response {
    let www = format!(
        "Bearer resource_metadata=\"{}\", error=\"{error}\", error_description=\"{}\"",
        gw.resource_metadata_url(),
        description.replace(['"', '\\'], "'")
    );
    let mut resp = (
        status,
        axum::Json(json!({"error": error, "error_description": description})),
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&www) {
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    resp
}

/// The caller, or the response refusing them. `peer`: the request's
/// [`PeerSvid`] extension, which only the mTLS listener inserts (nothing a
/// client sends can).
async fn authenticate(
    gw: &Gateway,
    headers: &HeaderMap,
    peer: Option<&PeerSvid>,
) -> Result<Caller, Response> {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let subject = headers
        .get(SUBJECT_TOKEN_HEADER)
        .and_then(|v| v.to_str().ok());
    match gw.authenticate(authorization, subject, peer).await {
        Ok(c) => Ok(c),
        Err(e) => {
            let (status, error) = match &e {
                AuthError::MissingAgent(_) | AuthError::MissingUser(_) => {
                    (StatusCode::UNAUTHORIZED, "invalid_request")
                }
                AuthError::InvalidAgent(_) | AuthError::InvalidUser(_) => {
                    (StatusCode::UNAUTHORIZED, "invalid_token")
                }
                AuthError::Forbidden(_) => (StatusCode::FORBIDDEN, "insufficient_scope"),
                AuthError::Internal(_) => {
                    return Err((StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response());
                }
            };
            let mut resp = challenge(gw, status, error, &e.to_string());
            if matches!(e, AuthError::MissingAgent(_)) {
                // RFC 6750 §3.1: no error code when no credentials came.
                if let Ok(v) = HeaderValue::from_str(&format!(
                    "Bearer resource_metadata=\"{}\"",
                    gw.resource_metadata_url()
                )) {
                    resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
                }
            }
            Err(resp)
        }
    }
}

/// Just enough of an `initialize` request to see whether the client can
/// be asked questions (MCP elicitation, form mode).
#[derive(Deserialize)]
struct InitializeProbe {
    method: Option<String>,
    params: Option<ProbeParams>,
}

#[derive(Deserialize)]
struct ProbeParams {
    capabilities: Option<ProbeCapabilities>,
}

#[derive(Deserialize)]
struct ProbeCapabilities {
    elicitation: Option<serde_json::Map<String, serde_json::Value>>,
}

/// Whether `body` is an `initialize` whose client declares form-mode
/// elicitation (an empty capability object means form, per the spec).
fn wants_elicitation(body: &[u8]) -> bool {
    let Ok(probe) = serde_json::from_slice::<InitializeProbe>(body) else {
        return false;
    };
    let Some(elicitation) = probe
        .params
        .and_then(|p| p.capabilities)
        .and_then(|c| c.elicitation)
    else {
        return false;
    };
    probe.method.as_deref() == Some("initialize")
        && (elicitation.contains_key("form") || !elicitation.contains_key("url"))
}

fn session_not_found() -> Response {
    (StatusCode::NOT_FOUND, "Not Found: Session not found").into_response()
}

async fn serve_mcp(State(mcp): State<Arc<Mcp>>, req: Request) -> Response {
    let gw = &mcp.gateway;
    let (mut parts, body) = req.into_parts();
    let peer = parts.extensions.get::<PeerSvid>().cloned();
    let caller = match authenticate(gw, &parts.headers, peer.as_ref()).await {
        Ok(c) => c,
        Err(resp) => return resp,
    };
    let limit = mcp.body_limit;
    let too_large = || {
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            axum::Json(json!({
                "error": "request_too_large",
                "error_description": format!("the request body exceeds {limit} bytes"),
            })),
        )
            .into_response()
    };
    if parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .is_some_and(|n| n > limit)
    {
        return too_large();
    }
    let bytes = match axum::body::to_bytes(body, limit).await {
        Ok(b) => b,
        Err(_) => return too_large(),
    };
    let owner = Owner::of(&caller);
    let session = parts
        .headers
        .get(SESSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let method = parts.method.clone();
    parts.extensions.insert(caller);

    if let Some(id) = session {
        // Someone else's session, or one this process does not know, is
        // "not found" alike: its existence is not the caller's to know.
        let known = mcp
            .lock_owners()
            .by_session
            .get(&id)
            .is_some_and(|o| *o == owner);
        if !known {
            return session_not_found();
        }
        let req = Request::from_parts(parts, Body::from(bytes));
        let resp = mcp.stateful.handle(req).await.map(Body::new);
        if method == Method::DELETE && resp.status().is_success() {
            mcp.lock_owners().by_session.remove(&id);
        }
        return resp;
    }

    let stateful = gw.elicitation_enabled()
        && method == Method::POST
        && wants_elicitation(&bytes)
        && mcp.room_for_a_session().await;
    let req = Request::from_parts(parts, Body::from(bytes));
    if !stateful {
        return mcp.stateless.handle(req).await.map(Body::new);
    }
    let resp = mcp.stateful.handle(req).await.map(Body::new);
    if let Some(id) = resp
        .headers()
        .get(SESSION_HEADER)
        .and_then(|v| v.to_str().ok())
    {
        mcp.lock_owners().by_session.insert(id.to_owned(), owner);
    }
    resp
}

// === impl Mcp ===

impl Mcp {
    fn lock_owners(&self) -> std::sync::MutexGuard<'_, Owners> {
        match self.owners.lock() {
            Ok(g) => g,
            // A holder never panics mid-update (plain map operations).
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Whether one more session fits, after forgetting the owners of
    /// sessions rmcp has closed (idle, deleted).
    async fn room_for_a_session(&self) -> bool {
        let due = {
            let owners = self.lock_owners();
            owners.pruned_at.elapsed() >= PRUNE_EVERY || owners.by_session.len() >= MAX_SESSIONS
        };
        if due {
            let live: std::collections::HashSet<String> = self
                .sessions
                .sessions
                .read()
                .await
                .keys()
                .map(|k| k.to_string())
                .collect();
            let mut owners = self.lock_owners();
            owners.by_session.retain(|id, _| live.contains(id));
            owners.pruned_at = Instant::now();
        }
        self.lock_owners().by_session.len() < MAX_SESSIONS
    }
}

#[cfg(test)]
mod tests {
    use super::wants_elicitation;

    #[test]
    fn only_an_initialize_declaring_form_elicitation_opens_a_session() {
        for (body, expected) in [
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"capabilities":{"elicitation":{}}}}"#,
                true,
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"capabilities":{"elicitation":{"form":{}}}}}"#,
                true,
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"capabilities":{"elicitation":{"url":{}}}}}"#,
                false,
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"capabilities":{}}}"#,
                false,
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"capabilities":{"elicitation":{}}}}"#,
                false,
            ),
            (r#"[{"jsonrpc":"2.0","id":1,"method":"initialize"}]"#, false),
            ("not json", false),
        ] {
            assert_eq!(wants_elicitation(body.as_bytes()), expected, "{body}");
        }
    }
}
