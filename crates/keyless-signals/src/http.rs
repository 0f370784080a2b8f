//! The SSF HTTP surface: transmitter metadata and JWKS, stream management,
//! status, subjects, verification and poll (bearer tokens with `ssf.manage`
//! or `ssf.read`), and the receiver's push endpoint `/ssf/push`.
//!
//! Errors: management calls answer `{"error", "error_description"}` with
//! 400/401/403/404/409; a bearer problem also sets `WWW-Authenticate`
//! (RFC 6750). The push endpoint answers 202 with an empty body, or 400
//! `{"err", "description"}` with an RFC 8935 code.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::receiver::Receiver;
use crate::set::SetError;
use crate::transmitter::{Owner, PollRequest, SsfError, Transmitter};

/// Scope of stream management calls.
pub const SCOPE_MANAGE: &str = "ssf.manage";
/// Scope of poll calls (and reads).
pub const SCOPE_READ: &str = "ssf.read";
/// Largest request body accepted (a SET or a stream configuration).
pub const MAX_BODY: usize = 64 * 1024;

/// Why a bearer token was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No token, or not a valid one: 401 `invalid_token`.
    #[error("{0}")]
    InvalidToken(String),
    /// A valid token without the scope: 403 `insufficient_scope`.
    #[error("{0}")]
    InsufficientScope(String),
}

/// Checks the bearer tokens of management and poll calls.
#[async_trait::async_trait]
pub trait Authorizer: Send + Sync + std::fmt::Debug {
    /// Returns the caller's identity (the stream owner) when `bearer`
    /// grants `scope`.
    async fn authorize(&self, bearer: &str, scope: &str) -> Result<String, AuthError>;
}

#[derive(Debug, Clone)]
struct Ctx {
    transmitter: Arc<Transmitter>,
    authorizer: Arc<dyn Authorizer>,
}

/// The transmitter's routes.
pub fn transmitter_router(
    transmitter: Arc<Transmitter>,
    authorizer: Arc<dyn Authorizer>,
) -> Router {
    Router::new()
        .route("/.well-known/ssf-configuration", get(metadata))
        .route("/ssf/jwks", get(jwks))
        .route(
            "/ssf/stream",
            get(read_stream)
                .post(create_stream)
                .patch(update_stream)
                .put(replace_stream)
                .delete(delete_stream),
        )
        .route("/ssf/status", get(get_status).post(post_status))
        .route("/ssf/subjects/add", post(add_subject))
        .route("/ssf/subjects/remove", post(remove_subject))
        .route("/ssf/verify", post(verify))
        .route("/ssf/poll", post(poll))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(Ctx {
            transmitter,
            authorizer,
        })
}

/// The receiver's push endpoint.
pub fn receiver_router(receiver: Arc<Receiver>) -> Router {
    Router::new()
        .route("/ssf/push", post(push))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(receiver)
}

fn error(status: StatusCode, code: &str, description: impl Into<String>) -> Response {
    (
        status,
        axum::Json(json!({"error": code, "error_description": description.into()})),
    )
        .into_response()
}

impl IntoResponse for SsfError {
    fn into_response(self) -> Response {
        let (status, code) = match &self {
            Self::BadRequest(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
            Self::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "invalid_token"),
            Self::Forbidden(_) => (StatusCode::FORBIDDEN, "insufficient_scope"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Self::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "server_error"),
        };
        if matches!(self, Self::Internal(_)) {
            tracing::error!(error = %self, "SSF request failed");
        }
        let mut r = error(status, code, self.to_string());
        if let Self::Unauthorized(_) | Self::Forbidden(_) = self {
            let v = format!(
                "Bearer error=\"{code}\"{}",
                if status == StatusCode::FORBIDDEN {
                    format!(", scope=\"{SCOPE_MANAGE}\"")
                } else {
                    String::new()
                }
            );
            if let Ok(h) = HeaderValue::from_str(&v) {
                r.headers_mut().insert(header::WWW_AUTHENTICATE, h);
            }
        }
        r
    }
}

async fn authorize(ctx: &Ctx, headers: &HeaderMap, scope: &str) -> Result<Owner, SsfError> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            SsfError::Unauthorized("a bearer token from the Keyless STS is required".into())
        })?;
    match ctx.authorizer.authorize(bearer, scope).await {
        Ok(owner) => Ok(Owner::Client(owner)),
        Err(AuthError::InvalidToken(m)) => Err(SsfError::Unauthorized(m)),
        Err(AuthError::InsufficientScope(m)) => Err(SsfError::Forbidden(m)),
    }
}

fn json_body(body: &Bytes) -> Result<Value, SsfError> {
    if body.is_empty() {
        return Err(SsfError::BadRequest("a JSON body is required".into()));
    }
    serde_json::from_slice(body).map_err(|e| SsfError::BadRequest(format!("body: {e}")))
}

fn field<'a>(v: &'a Value, name: &str) -> Result<&'a str, SsfError> {
    v.get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| SsfError::BadRequest(format!("`{name}` is required")))
}

async fn metadata(State(ctx): State<Ctx>) -> Response {
    axum::Json(ctx.transmitter.metadata()).into_response()
}

async fn jwks(State(ctx): State<Ctx>) -> Response {
    axum::Json(ctx.transmitter.jwks()).into_response()
}

#[derive(Debug, Deserialize)]
struct StreamQuery {
    stream_id: Option<String>,
}

async fn read_stream(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    Query(q): Query<StreamQuery>,
) -> Result<Response, SsfError> {
    let owner = authorize(&ctx, &headers, SCOPE_READ).await?;
    Ok(match q.stream_id {
        Some(id) => {
            axum::Json(ctx.transmitter.stream(&owner, &id).await?.to_json()).into_response()
        }
        None => {
            let all: Vec<Value> = ctx
                .transmitter
                .streams(&owner)
                .await?
                .iter()
                .map(|s| s.to_json())
                .collect();
            axum::Json(Value::Array(all)).into_response()
        }
    })
}

async fn create_stream(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, SsfError> {
    let owner = authorize(&ctx, &headers, SCOPE_MANAGE).await?;
    let v = json_body(&body)?;
    let s = ctx.transmitter.create_stream(&owner, &v, None).await?;
    Ok((StatusCode::CREATED, axum::Json(s.to_json())).into_response())
}

async fn update_stream(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, SsfError> {
    let owner = authorize(&ctx, &headers, SCOPE_MANAGE).await?;
    let v = json_body(&body)?;
    Ok(axum::Json(
        ctx.transmitter
            .update_stream(&owner, &v, false)
            .await?
            .to_json(),
    )
    .into_response())
}

async fn replace_stream(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, SsfError> {
    let owner = authorize(&ctx, &headers, SCOPE_MANAGE).await?;
    let v = json_body(&body)?;
    Ok(axum::Json(
        ctx.transmitter
            .update_stream(&owner, &v, true)
            .await?
            .to_json(),
    )
    .into_response())
}

async fn delete_stream(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    Query(q): Query<StreamQuery>,
) -> Result<Response, SsfError> {
    let owner = authorize(&ctx, &headers, SCOPE_MANAGE).await?;
    let id = q
        .stream_id
        .ok_or_else(|| SsfError::BadRequest("`stream_id` is required".into()))?;
    ctx.transmitter.delete_stream(&owner, &id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn get_status(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    Query(q): Query<StreamQuery>,
) -> Result<Response, SsfError> {
    let owner = authorize(&ctx, &headers, SCOPE_READ).await?;
    let id = q
        .stream_id
        .ok_or_else(|| SsfError::BadRequest("`stream_id` is required".into()))?;
    Ok(axum::Json(ctx.transmitter.status(&owner, &id).await?).into_response())
}

async fn post_status(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, SsfError> {
    let owner = authorize(&ctx, &headers, SCOPE_MANAGE).await?;
    let v = json_body(&body)?;
    let reason = v.get("reason").and_then(Value::as_str);
    let status = ctx
        .transmitter
        .set_status(
            &owner,
            field(&v, "stream_id")?,
            field(&v, "status")?,
            reason,
        )
        .await?;
    Ok(axum::Json(status).into_response())
}

async fn add_subject(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, SsfError> {
    let owner = authorize(&ctx, &headers, SCOPE_MANAGE).await?;
    let v = json_body(&body)?;
    let subject = v
        .get("subject")
        .ok_or_else(|| SsfError::BadRequest("`subject` is required".into()))?;
    ctx.transmitter
        .set_subject(&owner, field(&v, "stream_id")?, subject, true)
        .await?;
    Ok(StatusCode::OK.into_response())
}

async fn remove_subject(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, SsfError> {
    let owner = authorize(&ctx, &headers, SCOPE_MANAGE).await?;
    let v = json_body(&body)?;
    let subject = v
        .get("subject")
        .ok_or_else(|| SsfError::BadRequest("`subject` is required".into()))?;
    ctx.transmitter
        .set_subject(&owner, field(&v, "stream_id")?, subject, false)
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn verify(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, SsfError> {
    let owner = authorize(&ctx, &headers, SCOPE_MANAGE).await?;
    let v = json_body(&body)?;
    let state = v.get("state").and_then(Value::as_str);
    ctx.transmitter
        .verify(&owner, field(&v, "stream_id")?, state)
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn poll(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    Query(q): Query<StreamQuery>,
    body: Bytes,
) -> Result<Response, SsfError> {
    let owner = authorize(&ctx, &headers, SCOPE_READ).await?;
    let req: PollRequest = if body.is_empty() {
        PollRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| SsfError::BadRequest(format!("poll request: {e}")))?
    };
    let id = match q.stream_id {
        Some(id) => id,
        None => {
            // A receiver with a single poll stream may leave it out.
            let polls: Vec<_> = ctx
                .transmitter
                .streams(&owner)
                .await?
                .into_iter()
                .filter(|s| s.config.delivery.method == crate::transmitter::DELIVERY_POLL)
                .collect();
            match polls.as_slice() {
                [one] => one.config.stream_id.clone(),
                _ => {
                    return Err(SsfError::BadRequest(
                        "`stream_id` is required (query parameter)".into(),
                    ));
                }
            }
        }
    };
    Ok(axum::Json(ctx.transmitter.poll(&owner, &id, &req).await?).into_response())
}

async fn push(State(receiver): State<Arc<Receiver>>, headers: HeaderMap, body: Bytes) -> Response {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let refuse = |e: SetError| {
        (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"err": e.code(), "description": e.description()})),
        )
            .into_response()
    };
    if !ct
        .split(';')
        .next()
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/secevent+jwt"))
    {
        return refuse(SetError::InvalidRequest(
            "Content-Type must be application/secevent+jwt".into(),
        ));
    }
    let Ok(token) = std::str::from_utf8(&body) else {
        return refuse(SetError::InvalidRequest("the body is not UTF-8".into()));
    };
    match receiver.receive(token.trim()).await {
        Ok(_) => StatusCode::ACCEPTED.into_response(),
        Err(e) if e.is_internal() => {
            tracing::error!(error = %e, "receiving a SET failed");
            (StatusCode::INTERNAL_SERVER_ERROR, axum::Json(json!({"err": "server_error", "description": "the receiver could not store the SET; retry"}))).into_response()
        }
        Err(e) => refuse(e),
    }
}
