//! The approvals API the console uses: the signed-in user lists the calls
//! waiting for them and approves or denies each.
//!
//! - `GET /api/approvals` → `{"approvals": [...]}` (the caller's pending ones)
//! - `POST /api/approvals/{id}/approve`, `POST /api/approvals/{id}/deny` →
//!   the updated approval
//!
//! Authentication is the user's own access token (`Authorization: Bearer`).
//! Invariant: an agent never approves its own calls, so a token carrying
//! `act` (an on-behalf-of token an agent holds) is refused with 403.
//! Only this module knows axum; every response is `Cache-Control: no-store`.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use keyless_sts::{AccessTokenClaims, Sts};
use serde_json::json;

use crate::approvals::{ApprovalError, Approvals};

#[derive(Debug, Clone)]
struct AppState {
    approvals: Arc<Approvals>,
    sts: Arc<Sts>,
}

/// The approvals API routes.
pub fn router(approvals: Arc<Approvals>, sts: Arc<Sts>) -> Router {
    Router::new()
        .route("/api/approvals", get(list))
        .route("/api/approvals/{id}/approve", post(approve))
        .route("/api/approvals/{id}/deny", post(deny))
        .layer(axum::middleware::map_response(no_store))
        .with_state(AppState { approvals, sts })
}

async fn no_store(mut resp: Response) -> Response {
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

async fn list(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let claims = match authenticate(&state.sts, &headers).await {
        Ok(c) => c,
        Err(resp) => return resp,
    };
    match state.approvals.pending(&claims.sub).await {
        Ok(approvals) => (
            StatusCode::OK,
            axum::Json(json!({ "approvals": approvals })),
        )
            .into_response(),
        Err(e) => error_response(&e),
    }
}

async fn approve(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    decide(&state, &id, &headers, true).await
}

async fn deny(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    decide(&state, &id, &headers, false).await
}

async fn decide(state: &AppState, id: &str, headers: &HeaderMap, approve: bool) -> Response {
    let claims = match authenticate(&state.sts, headers).await {
        Ok(c) => c,
        Err(resp) => return resp,
    };
    match state.approvals.decide(id, &claims.sub, approve).await {
        Ok(approval) => (StatusCode::OK, axum::Json(approval)).into_response(),
        Err(e) => error_response(&e),
    }
}

/// The caller's verified claims, or the response refusing them.
async fn authenticate(sts: &Sts, headers: &HeaderMap) -> Result<AccessTokenClaims, Response> {
    let Some(token) = bearer(headers) else {
        return Err(unauthorized(None));
    };
    let claims = match sts.verify_access_token(token, None).await {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(error = %e, "approvals api: access token refused");
            return Err(unauthorized(Some("the access token is invalid or expired")));
        }
    };
    if claims.is_service() {
        return Err(json_error(
            StatusCode::FORBIDDEN,
            "access_denied",
            "a service's client-credentials token is not a user's",
        ));
    }
    if claims.is_obo() {
        // An agent holding an on-behalf-of token must never approve its
        // own calls: approvals are the human's.
        return Err(json_error(
            StatusCode::FORBIDDEN,
            "access_denied",
            "an agent's on-behalf-of token cannot decide approvals",
        ));
    }
    if let Some(sid) = &claims.sid {
        match sts.session_live(sid).await {
            Ok(true) => {}
            Ok(false) => return Err(unauthorized(Some("the session has ended"))),
            Err(e) => {
                tracing::error!(error = %e, "approvals api: session lookup failed");
                return Err(json_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "server_error",
                    "internal error",
                ));
            }
        }
    }
    Ok(claims)
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// 401 with `WWW-Authenticate: Bearer` (and `error="invalid_token"` when a
/// token was presented but refused, RFC 6750 §3).
fn unauthorized(invalid: Option<&str>) -> Response {
    let (challenge, description) = match invalid {
        Some(d) => ("Bearer error=\"invalid_token\"", d),
        None => ("Bearer", "an access token is required"),
    };
    let mut resp = json_error(
        StatusCode::UNAUTHORIZED,
        if invalid.is_some() {
            "invalid_token"
        } else {
            "unauthorized"
        },
        description,
    );
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(challenge),
    );
    resp
}

fn json_error(status: StatusCode, error: &str, description: &str) -> Response {
    (
        status,
        axum::Json(json!({ "error": error, "error_description": description })),
    )
        .into_response()
}

/// The one place approval errors meet the wire; internal details are
/// logged, not sent.
fn error_response(e: &ApprovalError) -> Response {
    let described = |status, code| json_error(status, code, &e.to_string());
    match e {
        ApprovalError::InvalidRequest(_) => described(StatusCode::BAD_REQUEST, "invalid_request"),
        ApprovalError::NotFound(_) => described(StatusCode::NOT_FOUND, "not_found"),
        ApprovalError::Conflict { .. } | ApprovalError::Expired(_) => {
            described(StatusCode::CONFLICT, "conflict")
        }
        ApprovalError::AlreadyUsed(_) => described(StatusCode::CONFLICT, "conflict"),
        ApprovalError::Blocked(_) | ApprovalError::Denied { .. } | ApprovalError::TimedOut => {
            described(StatusCode::FORBIDDEN, "access_denied")
        }
        ApprovalError::Corrupt(_) | ApprovalError::Database(_) | ApprovalError::Audit(_) => {
            tracing::error!(error = %e, "approvals api failed");
            json_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "internal error",
            )
        }
    }
}
