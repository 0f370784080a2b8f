//! The MCP surface shared by both demo servers: the Streamable HTTP mount,
//! the mapping of refusals and failures to the wire, and result helpers.
//!
//! Wire mapping (one place):
//! - a refused call (token or RAR) → JSON-RPC error `-32001` whose message
//!   starts with `unauthorized: ` or `forbidden: `; the tool never runs;
//! - a tool that ran and could not do its job (unknown user, insufficient
//!   balance) → a tool result with `isError: true` the model can read;
//! - a store failure → JSON-RPC internal error, details only in the log.

use std::sync::Arc;

use axum::{Router, http::request::Parts};
use rmcp::{
    ErrorData, RoleServer, ServerHandler,
    model::{CallToolResult, ContentBlock, ErrorCode},
    service::RequestContext,
    transport::streamable_http_server::{
        StreamableHttpServerConfig, StreamableHttpService, session::local::LocalSessionManager,
    },
};
use serde_json::Value;

use crate::{
    DemoError,
    verify::{Principal, Refusal, Verifier},
};

/// JSON-RPC error code of a refused tool call.
pub(crate) const REFUSED: ErrorCode = ErrorCode(-32001);

impl From<Refusal> for ErrorData {
    fn from(refusal: Refusal) -> Self {
        ErrorData::new(REFUSED, refusal.to_string(), None)
    }
}

/// Rejects paths axum would panic on or that make no sense as an endpoint.
pub(crate) fn check_path(path: &str) -> Result<(), DemoError> {
    let valid = path.starts_with('/')
        && !path.contains("//")
        && path
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/-_.".contains(c));
    if valid {
        Ok(())
    } else {
        Err(DemoError::InvalidPath(path.to_owned()))
    }
}

/// Stateless Streamable HTTP with JSON responses; `Host` must be a loopback
/// name (any port) — rmcp matches a host without a port against every port,
/// which keeps DNS-rebinding protection while the listener port is dynamic.
fn http_config() -> StreamableHttpServerConfig {
    StreamableHttpServerConfig::default()
        .with_legacy_session_mode(false)
        .with_json_response(true)
        .with_sse_keep_alive(None)
        .with_allowed_hosts(["127.0.0.1", "localhost", "[::1]"])
}

/// Mounts `server` at exactly `path` (checked with [`check_path`] beforehand).
pub(crate) fn router<S>(server: S, path: &str) -> Router
where
    S: ServerHandler + Clone + Send + Sync + 'static,
{
    let service = StreamableHttpService::new(
        move || Ok(server.clone()),
        Arc::new(LocalSessionManager::default()),
        http_config(),
    );
    Router::new().route_service(path, service)
}

/// Authorizes one tool call; a refusal is logged and becomes the JSON-RPC error.
pub(crate) async fn authorize<F>(
    verifier: &Verifier,
    ctx: &RequestContext<RoleServer>,
    tool: &str,
    rar: F,
) -> Result<Principal, ErrorData>
where
    F: FnOnce(&[Value]) -> Result<(), String>,
{
    match verifier.authorize(ctx.extensions.get::<Parts>(), rar).await {
        Ok(principal) => {
            // Every call is in the audit log (`token.consumed`); the process
            // log keeps refusals.
            tracing::debug!(tool, user = principal.user(), actor = %principal.actor, "tool call authorized");
            Ok(principal)
        }
        Err(refusal) => {
            tracing::warn!(tool, %refusal, "tool call refused");
            Err(refusal.into())
        }
    }
}

/// A successful result carrying `value` as structured content (and as text).
pub(crate) fn success(value: Value) -> CallToolResult {
    CallToolResult::structured(value)
}

/// A tool-level failure the caller (and the model) can read.
pub(crate) fn tool_error(message: impl Into<String>) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(message.into())])
}

/// A store failure: logged in full, opaque on the wire.
pub(crate) fn store_failure(err: sqlx::Error) -> ErrorData {
    tracing::error!(error = %err, "demo store failure");
    ErrorData::internal_error("the demo server's store failed", None)
}
