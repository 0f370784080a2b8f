//! The admin API on `DIR/admin.sock`: JSON over HTTP/1.1 on a Unix socket.
//!
//! The socket's file mode (0600, owner = the user running Keyless) is the
//! whole authentication: no admin token exists anywhere to leak. The CLI's
//! admin commands are thin clients of this API.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use keyless_identity::{Identity, IdentityError, NewEntry};
use keyless_sts::{Sts, StsError};
use serde::Deserialize;
use serde_json::json;

/// What the admin API can reach.
#[derive(Clone)]
pub struct AdminState {
    pub identity: Arc<Identity>,
    pub sts: Arc<Sts>,
}

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/v1/entries", get(list_entries).post(create_entry))
        .route("/v1/entries/{id}", delete(delete_entry))
        .route("/v1/ca/rotate", post(rotate))
        .route("/v1/users", post(add_user))
        .route("/v1/consents", get(list_consents))
        .route("/v1/consents/{id}", delete(revoke_consent))
        .with_state(state)
}

/// Binds the admin socket with mode 0600 before anyone can connect.
pub fn bind(path: &Path) -> anyhow::Result<tokio::net::UnixListener> {
    if path.exists() {
        std::fs::remove_file(path)
            .with_context(|| format!("cannot remove stale socket `{}`", path.display()))?;
    }
    let listener = tokio::net::UnixListener::bind(path)
        .with_context(|| format!("cannot bind admin socket `{}`", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot restrict admin socket `{}`", path.display()))?;
    Ok(listener)
}

fn error(status: StatusCode, message: impl std::fmt::Display) -> Response {
    (status, Json(json!({ "error": message.to_string() }))).into_response()
}

async fn list_entries(State(s): State<AdminState>) -> Response {
    Json(s.identity.list_entries().await).into_response()
}

async fn create_entry(State(s): State<AdminState>, body: axum::body::Bytes) -> Response {
    let new: NewEntry = match serde_json::from_slice(&body) {
        Ok(n) => n,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("invalid entry: {e}")),
    };
    match s.identity.create_entry(new).await {
        Ok(entry) => (StatusCode::CREATED, Json(entry)).into_response(),
        Err(e) => identity_error(e),
    }
}

async fn delete_entry(State(s): State<AdminState>, UrlPath(id): UrlPath<String>) -> Response {
    match s.identity.delete_entry(&id).await {
        Ok(entry) => Json(entry).into_response(),
        Err(e) => identity_error(e),
    }
}

#[derive(Deserialize)]
struct RotateQuery {
    #[serde(default)]
    jwt: bool,
}

async fn rotate(State(s): State<AdminState>, Query(q): Query<RotateQuery>) -> Response {
    let result = if q.jwt {
        s.identity.rotate_jwt_key().await
    } else {
        s.identity.rotate_x509_ca().await
    };
    match result {
        Ok(()) => Json(json!({ "rotated": if q.jwt { "jwt" } else { "x509" } })).into_response(),
        Err(e) => identity_error(e),
    }
}

/// The one place identity errors become admin API statuses. Input errors
/// say what was wrong; internal ones are logged in full and summarized.
fn identity_error(e: IdentityError) -> Response {
    let status = match &e {
        IdentityError::SpiffeId(_)
        | IdentityError::Selector { .. }
        | IdentityError::InvalidEntry(_)
        | IdentityError::InvalidRequest(_)
        | IdentityError::InvalidJwt(_) => StatusCode::BAD_REQUEST,
        IdentityError::Conflict(_) => StatusCode::CONFLICT,
        IdentityError::NotFound(_) => StatusCode::NOT_FOUND,
        IdentityError::TrustDomainMismatch { .. }
        | IdentityError::InvalidConfig(_)
        | IdentityError::NoAuthority(_)
        | IdentityError::Certificate(_)
        | IdentityError::Corrupt(_)
        | IdentityError::Crypto(_)
        | IdentityError::Store(_)
        | IdentityError::Database(_)
        | IdentityError::Audit(_) => {
            tracing::error!(error = %e, "admin request failed");
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal error (see the server log)",
            );
        }
    };
    error(status, e)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewUser {
    email: String,
    password: String,
}

async fn add_user(State(s): State<AdminState>, body: axum::body::Bytes) -> Response {
    let new: NewUser = match serde_json::from_slice(&body) {
        Ok(n) => n,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("invalid user: {e}")),
    };
    match s.sts.add_user(&new.email, &new.password).await {
        Ok(user) => (StatusCode::CREATED, Json(user)).into_response(),
        Err(e) => sts_error(e),
    }
}

#[derive(Deserialize)]
struct ConsentQuery {
    user: Option<String>,
}

async fn list_consents(State(s): State<AdminState>, Query(q): Query<ConsentQuery>) -> Response {
    match s.sts.list_consents(q.user.as_deref()).await {
        Ok(list) => Json(list).into_response(),
        Err(e) => sts_error(e),
    }
}

async fn revoke_consent(State(s): State<AdminState>, UrlPath(id): UrlPath<String>) -> Response {
    match s.sts.revoke_consent(&id).await {
        Ok(consent) => Json(consent).into_response(),
        Err(e) => sts_error(e),
    }
}

/// STS errors on the admin API: the client's own mistakes say what was
/// wrong; the rest is logged and summarized.
fn sts_error(e: StsError) -> Response {
    match &e {
        StsError::UserExists(_) => error(StatusCode::CONFLICT, e),
        StsError::ConsentNotFound(_) | StsError::UserNotFound(_) => error(StatusCode::NOT_FOUND, e),
        _ if e.is_client_error() => error(StatusCode::BAD_REQUEST, e),
        _ => {
            tracing::error!(error = %e, "admin request failed");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal error (see the server log)",
            )
        }
    }
}

// === client ===

/// A reply from the admin API.
pub struct Reply {
    pub status: u16,
    pub body: serde_json::Value,
}

impl Reply {
    /// The server's `error` message, or the status.
    pub fn error_message(&self) -> String {
        self.body.get("error").and_then(|e| e.as_str()).map_or_else(
            || format!("admin API answered {}", self.status),
            str::to_owned,
        )
    }
}

/// Sends one request to the admin socket under `data_dir`.
pub async fn call(
    data_dir: &Path,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> anyhow::Result<Reply> {
    let socket = data_dir.join("admin.sock");
    let stream = tokio::net::UnixStream::connect(&socket)
        .await
        .with_context(|| {
            format!(
                "cannot reach the fabric at `{}` (is `keyless up --data-dir {}` running?)",
                socket.display(),
                data_dir.display()
            )
        })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("admin socket handshake failed")?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let payload = body.map(|b| b.to_string()).unwrap_or_default();
    let request = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "keyless-admin")
        .header("content-type", "application/json")
        .body(Full::new(bytes::Bytes::from(payload)))
        .context("building admin request")?;
    let response = sender
        .send_request(request)
        .await
        .context("admin request failed")?;
    let status = response.status().as_u16();
    let bytes = response
        .into_body()
        .collect()
        .await
        .context("reading admin reply")?
        .to_bytes();
    let body = if bytes.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(&bytes).context("admin reply is not JSON")?
    };
    Ok(Reply { status, body })
}
