//! The gateway's HTTP surface: `/mcp` (Streamable HTTP, behind agent and
//! user authentication), its RFC 9728 protected-resource metadata, and the
//! approvals API.
//!
//! Authentication happens here, before any MCP message is read: no valid
//! agent JWT-SVID → 401 with `WWW-Authenticate: Bearer … resource_metadata`;
//! no live user session → 401 `invalid_token`; a body above the limit → 413.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use rmcp::transport::streamable_http_server::session::never::NeverSessionManager;
use rmcp::transport::{StreamableHttpServerConfig, StreamableHttpService};
use serde_json::json;

use crate::mcp::GatewayHandler;
use crate::pipeline::{AuthError, Gateway, SUBJECT_TOKEN_HEADER};

/// Room for the JSON-RPC envelope around the arguments.
const ENVELOPE_BYTES: usize = 16 * 1024;

/// The gateway's routes, to merge into the fabric's listener.
pub fn router(gateway: Arc<Gateway>) -> Router {
    let mut config = StreamableHttpServerConfig::default();
    // Stateless, JSON answers: every POST carries its own credentials and
    // is authorized on its own; no session state to pin a caller to.
    config.legacy_session_mode = false;
    config.json_response = true;
    config.max_request_body_bytes = gateway.max_argument_bytes() + ENVELOPE_BYTES;
    // Bearer tokens, not cookies, authenticate every request, so Host
    // checks add nothing; browsers' requests must come from our origin.
    config.allowed_hosts = Vec::new();
    config.allowed_origins = vec![gateway.base_url().to_owned()];
    let handler_gateway = gateway.clone();
    let mcp = StreamableHttpService::new(
        move || {
            Ok(GatewayHandler {
                gateway: handler_gateway.clone(),
            })
        },
        Arc::new(NeverSessionManager::default()),
        config,
    );
    let body_limit = gateway.max_argument_bytes() + ENVELOPE_BYTES;
    let mcp = Router::new()
        .route_service("/mcp", mcp)
        .layer(axum::middleware::from_fn_with_state(
            (gateway.clone(), body_limit),
            authenticate,
        ));
    Router::new()
        .route(
            "/.well-known/oauth-protected-resource/mcp",
            get(protected_resource_metadata),
        )
        .with_state(gateway.clone())
        .merge(mcp)
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
        "resource_documentation": "Authenticate as an agent with a JWT-SVID whose audience is `resource`; send the user's access token in X-Keyless-Subject-Token.",
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

async fn authenticate(
    State((gw, limit)): State<(Arc<Gateway>, usize)>,
    req: Request,
    next: Next,
) -> Response {
    let headers = req.headers();
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let subject = headers
        .get(SUBJECT_TOKEN_HEADER)
        .and_then(|v| v.to_str().ok());
    let caller = match gw.authenticate(authorization, subject).await {
        Ok(c) => c,
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
                    return (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response();
                }
            };
            let mut resp = challenge(&gw, status, error, &e.to_string());
            if matches!(e, AuthError::MissingAgent(_)) {
                // RFC 6750 §3.1: no error code when no credentials came.
                if let Ok(v) = HeaderValue::from_str(&format!(
                    "Bearer resource_metadata=\"{}\"",
                    gw.resource_metadata_url()
                )) {
                    resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
                }
            }
            return resp;
        }
    };
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
    if req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .is_some_and(|n| n > limit)
    {
        return too_large();
    }
    let (mut parts, body) = req.into_parts();
    let bytes = match axum::body::to_bytes(body, limit).await {
        Ok(b) => b,
        Err(_) => return too_large(),
    };
    parts.extensions.insert(caller);
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}
