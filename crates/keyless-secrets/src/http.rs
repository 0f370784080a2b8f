//! The Vault-compatible HTTP surface of the broker, and the only module
//! that knows axum. Paths are relative to `/v1/`, as in Vault:
//!
//! - `GET /sys/health`; `GET /sys/internal/ui/mounts/{path}` (the mount
//!   preflight the `bao`/`vault` CLIs' `kv` commands make).
//! - `POST|PUT /auth/jwt/login {role, jwt}` (JWT-SVID login);
//!   `GET|POST /auth/token/lookup-self`, `POST|PUT /auth/token/renew-self`,
//!   `POST|PUT /auth/token/revoke-self` (204).
//! - KV v2 under `secret/`: `data/{path}` (GET `?version=`, POST|PUT
//!   `{data, options{cas}}`, DELETE), `metadata/{path}` (GET, `LIST` or
//!   `GET ?list=true`, POST|PUT, DELETE), `delete/`, `undelete/`,
//!   `destroy/{path}` (`{versions}`).
//! - `PUT|POST /sys/leases/{lookup,renew,revoke}` (`{lease_id}`; renew and
//!   revoke also with the id in the path), `/sys/leases/revoke-prefix/{prefix}`
//!   (204; needs `sudo`).
//! - `/sys/wrapping/{wrap,unwrap,lookup}`; any JSON answer is wrapped when
//!   the request carries `X-Vault-Wrap-TTL`.
//! - `GET /database/creds/{role}` (a PostgreSQL login with a lease).
//! - `POST|PUT /auth/cert/login {name?}` (X509-SVID login; only on the
//!   mTLS listener, which puts the verified `PeerSvid` in the request);
//!   `auth/cert/certs[/{name}]` (cert roles: read, write, delete, list).
//! - `GET /rotating/creds/{name}` (rotates a registered credential through
//!   its hook and returns the new secret under a short lease).
//! - With the OpenBao backend, `secret/data/*` reads and writes and
//!   `database/creds/*` are served by OpenBao (after Keyless's own token
//!   and ACL checks); the other KV v2 paths answer 400 there.
//! - `sys/policies/acl[/{name}]` and `auth/jwt/role[/{name}]` (read, write,
//!   delete, list), for tokens whose policies grant those paths; there is
//!   no root token, so the first such policy comes from the admin socket.
//!
//! Tokens come in `X-Vault-Token` (or `Authorization: Bearer`). Every
//! success body has Vault's envelope (`request_id, lease_id, renewable,
//! lease_duration, data, wrap_info, warnings, auth`, always present).
//! [`error_response`] is the one mapping of [`SecretsError`] to the wire:
//! `{"errors":[…]}`; 403 `permission denied` for any token or ACL failure
//! (a caller without rights learns nothing about what exists); 404
//! `{"errors":[]}` for a missing KV path; server-side failures are logged
//! and answered with a generic message.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::acl::Capability;
use crate::auth::{TokenInfo, TokenType, parse_duration};
use crate::lease::Lease;
use crate::service::rfc3339;
use crate::{Secrets, SecretsError};

type S = State<Arc<Secrets>>;

/// The broker's routes, to be merged into the binary's one listener.
pub fn router(secrets: Arc<Secrets>) -> Router {
    Router::new()
        .route("/v1/sys/health", get(health).head(health))
        .route("/v1/sys/internal/ui/mounts/{*path}", get(mount_info))
        .route("/v1/auth/jwt/login", any(login))
        .route("/v1/auth/token/lookup-self", any(lookup_self))
        .route("/v1/auth/token/renew-self", any(renew_self))
        .route("/v1/auth/token/revoke-self", any(revoke_self))
        .route("/v1/secret/data/{*path}", any(kv_data))
        .route("/v1/secret/metadata", any(kv_metadata_root))
        .route("/v1/secret/metadata/", any(kv_metadata_root))
        .route("/v1/secret/metadata/{*path}", any(kv_metadata))
        .route("/v1/secret/delete/{*path}", any(kv_delete_versions))
        .route("/v1/secret/undelete/{*path}", any(kv_undelete))
        .route("/v1/secret/destroy/{*path}", any(kv_destroy))
        .route("/v1/sys/leases/lookup", any(lease_lookup))
        .route("/v1/sys/leases/renew", any(lease_renew))
        .route("/v1/sys/leases/renew/{*id}", any(lease_renew_path))
        .route("/v1/sys/leases/revoke", any(lease_revoke))
        .route("/v1/sys/leases/revoke/{*id}", any(lease_revoke_path))
        .route(
            "/v1/sys/leases/revoke-prefix/{*prefix}",
            any(lease_revoke_prefix),
        )
        .route("/v1/sys/wrapping/wrap", any(wrap))
        .route("/v1/sys/wrapping/unwrap", any(unwrap))
        .route("/v1/sys/wrapping/lookup", any(wrap_lookup))
        .route("/v1/database/creds/{role}", get(db_creds))
        .route("/v1/sys/policies/acl", any(policy_list))
        .route("/v1/sys/policies/acl/{name}", any(policy_rw))
        .route("/v1/auth/jwt/role", any(role_list))
        .route("/v1/auth/jwt/role/{name}", any(role_rw))
        // --- cert auth (X509-SVID over mTLS) and rotating credentials ---
        .route("/v1/auth/cert/login", any(cert_login))
        .route("/v1/auth/cert/certs", any(cert_role_list))
        .route("/v1/auth/cert/certs/{name}", any(cert_role_rw))
        .route("/v1/rotating/creds/{name}", get(rotating_creds))
        // --- end cert auth and rotating credentials ---
        .with_state(secrets)
}

// === wire helpers ===

/// The one mapping of broker errors to Vault's error shape.
pub fn error_response(e: SecretsError) -> Response {
    let (status, errors): (StatusCode, Vec<String>) = match &e {
        SecretsError::InvalidRequest(m) | SecretsError::Conflict(m) => {
            (StatusCode::BAD_REQUEST, vec![m.clone()])
        }
        SecretsError::NotFound(_) => (StatusCode::NOT_FOUND, Vec::new()),
        SecretsError::PermissionDenied => (StatusCode::FORBIDDEN, vec!["permission denied".into()]),
        SecretsError::QuotaExceeded(m) => (StatusCode::TOO_MANY_REQUESTS, vec![m.clone()]),
        SecretsError::RevocationFailed(m) => {
            tracing::error!(error = %m, "lease revocation failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                vec![
                    "lease revocation failed; the lease stays queued and is retried until it succeeds"
                        .into(),
                ],
            )
        }
        SecretsError::Backend(_) => {
            // OpenBao refused or failed Keyless itself: the caller learns
            // nothing of the backend's configuration.
            tracing::error!(error = %e, "secrets backend request failed");
            (
                StatusCode::BAD_GATEWAY,
                vec!["secrets backend unavailable (see the server log)".into()],
            )
        }
        SecretsError::Rotation(_) => {
            // The hook's details (program, exit status, stderr) stay in
            // the server log.
            tracing::error!(error = %e, "credential rotation failed");
            (
                StatusCode::BAD_GATEWAY,
                vec![
                    "credential rotation failed: nothing was issued and the previous credential stays valid (see the server log)"
                        .into(),
                ],
            )
        }
        SecretsError::Decrypt(_)
        | SecretsError::Database(_)
        | SecretsError::Store(_)
        | SecretsError::Audit(_) => {
            tracing::error!(error = %e, "secrets request failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                vec!["internal error (see the server log)".into()],
            )
        }
    };
    (status, axum::Json(json!({ "errors": errors }))).into_response()
}

fn bad(m: impl Into<String>) -> SecretsError {
    SecretsError::InvalidRequest(m.into())
}

fn unsupported() -> Response {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        axum::Json(json!({ "errors": ["unsupported operation"] })),
    )
        .into_response()
}

fn token_of(headers: &HeaderMap) -> Option<&str> {
    if let Some(t) = headers.get("x-vault-token").and_then(|v| v.to_str().ok()) {
        return Some(t.trim());
    }
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

fn wrap_ttl(headers: &HeaderMap) -> Result<Option<Duration>, SecretsError> {
    match headers.get("x-vault-wrap-ttl") {
        None => Ok(None),
        Some(v) => {
            let s = v
                .to_str()
                .map_err(|_| bad("invalid X-Vault-Wrap-TTL header"))?;
            parse_duration(s)
                .map(Some)
                .map_err(|e| bad(format!("invalid X-Vault-Wrap-TTL header: {e}")))
        }
    }
}

/// A JSON object body; empty (or `null`, which the `bao` CLI sends for
/// commands without data, e.g. `bao unwrap`) means `{}`.
fn body_object(body: &Bytes) -> Result<Map<String, Value>, SecretsError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(Value::Null) => Ok(Map::new()),
        Ok(_) => Err(bad("request body must be a JSON object")),
        Err(e) => Err(bad(format!("failed to parse JSON input: {e}"))),
    }
}

fn body_as<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, SecretsError> {
    let v = Value::Object(body_object(body)?);
    serde_json::from_value(v).map_err(|e| bad(format!("invalid request: {e}")))
}

/// Vault's response envelope.
#[derive(Debug, Default)]
struct Envelope {
    lease_id: String,
    renewable: bool,
    lease_duration: i64,
    data: Option<Value>,
    auth: Option<Value>,
    warnings: Vec<String>,
}

impl Envelope {
    fn data(data: Value) -> Self {
        Self {
            data: Some(data),
            ..Self::default()
        }
    }

    fn to_json(&self) -> Value {
        json!({
            "request_id": uuid::Uuid::new_v4().to_string(),
            "lease_id": self.lease_id,
            "renewable": self.renewable,
            "lease_duration": self.lease_duration,
            "data": self.data,
            "wrap_info": null,
            "warnings": if self.warnings.is_empty() { Value::Null } else { json!(self.warnings) },
            "auth": self.auth,
            "mount_type": "",
        })
    }
}

/// Sends `env` (200), or wraps it when the request asked for wrapping.
async fn finish(
    s: &Secrets,
    headers: &HeaderMap,
    identity: &str,
    creation_path: &str,
    env: Envelope,
) -> Response {
    finish_status(s, headers, identity, creation_path, env, StatusCode::OK).await
}

async fn finish_status(
    s: &Secrets,
    headers: &HeaderMap,
    identity: &str,
    creation_path: &str,
    env: Envelope,
    status: StatusCode,
) -> Response {
    let body = env.to_json();
    match wrap_ttl(headers) {
        Err(e) => error_response(e),
        Ok(None) => (status, axum::Json(body)).into_response(),
        Ok(Some(ttl)) => match s.wrap(identity, creation_path, &body, ttl).await {
            Ok(info) => {
                let mut wrapped = Envelope::default().to_json();
                if let Some(obj) = wrapped.as_object_mut() {
                    obj.insert("wrap_info".into(), json!(info));
                }
                (StatusCode::OK, axum::Json(wrapped)).into_response()
            }
            Err(e) => error_response(e),
        },
    }
}

/// Whole seconds, rounded up (a TTL just issued reads as what was asked).
fn secs(ms: i64) -> i64 {
    (ms.saturating_add(999) / 1000).max(0)
}

fn auth_object(client_token: &str, info: &TokenInfo) -> Value {
    let now = keyless_store::now_millis();
    let token_policies: Vec<&String> = info.policies.iter().collect();
    json!({
        "client_token": client_token,
        "accessor": info.accessor,
        "policies": info.policies,
        "token_policies": token_policies,
        "identity_policies": null,
        "metadata": info.meta,
        "lease_duration": secs(info.expires_at - now),
        "renewable": info.token_type == TokenType::Service,
        "entity_id": "",
        "token_type": info.token_type.as_str(),
        "orphan": true,
        "mfa_requirement": null,
        "num_uses": info.num_uses,
    })
}

// === handlers: sys ===

async fn health(State(s): S) -> Response {
    let _ = &s;
    let now = keyless_store::now_millis();
    axum::Json(json!({
        "initialized": true,
        "sealed": false,
        "standby": false,
        "performance_standby": false,
        "replication_performance_mode": "disabled",
        "replication_dr_mode": "disabled",
        "server_time_utc": now / 1000,
        "version": concat!("keyless-", env!("CARGO_PKG_VERSION")),
        "enterprise": false,
        "cluster_name": "keyless",
        "cluster_id": "keyless",
    }))
    .into_response()
}

/// The mount preflight of the `kv` CLI commands: `secret/` is KV v2.
async fn mount_info(State(s): S, Path(path): Path<String>, headers: HeaderMap) -> Response {
    if let Err(e) = s.resolve_token(token_of(&headers)).await {
        return error_response(e);
    }
    if !(path == "secret" || path.starts_with("secret/")) {
        return error_response(SecretsError::PermissionDenied);
    }
    axum::Json(
        Envelope::data(json!({
            "path": "secret/",
            "type": "kv",
            "description": "key/value secret storage",
            "options": { "version": "2" },
            "accessor": "kv_keyless",
            "local": false,
            "seal_wrap": false,
            "external_entropy_access": false,
            "config": { "default_lease_ttl": 0, "max_lease_ttl": 0, "force_no_cache": false },
        }))
        .to_json(),
    )
    .into_response()
}

// === handlers: auth ===

#[derive(Deserialize)]
struct LoginBody {
    #[serde(default)]
    role: String,
    #[serde(default)]
    jwt: String,
}

async fn login(State(s): S, method: Method, headers: HeaderMap, body: Bytes) -> Response {
    if method != Method::POST && method != Method::PUT {
        return unsupported();
    }
    let req: LoginBody = match body_as(&body) {
        Ok(r) => r,
        Err(e) => return error_response(e),
    };
    match s.login_jwt(&req.role, &req.jwt).await {
        Ok(login) => {
            let env = Envelope {
                auth: Some(auth_object(&login.client_token, &login.info)),
                ..Envelope::default()
            };
            finish(&s, &headers, &login.info.identity, "auth/jwt/login", env).await
        }
        Err(e) => error_response(e),
    }
}

fn lookup_data(info: &TokenInfo) -> Value {
    let now = keyless_store::now_millis();
    // Tokens from cert login say so in their meta; the rest are JWT logins.
    let method = info
        .meta
        .get("auth_method")
        .and_then(Value::as_str)
        .unwrap_or("jwt");
    json!({
        "accessor": info.accessor,
        "creation_time": info.created_at / 1000,
        "creation_ttl": secs(info.ttl_ms),
        "display_name": format!("{method}-{}", info.meta.get("display_name").and_then(Value::as_str).unwrap_or(&info.identity)),
        "entity_id": "",
        "expire_time": rfc3339(info.expires_at),
        "explicit_max_ttl": 0,
        "id": info.token,
        "issue_time": rfc3339(info.created_at),
        "meta": info.meta,
        "num_uses": info.num_uses,
        "orphan": true,
        "path": format!("auth/{method}/login"),
        "policies": info.policies,
        "renewable": info.token_type == TokenType::Service,
        "ttl": secs(info.expires_at - now),
        "type": info.token_type.as_str(),
    })
}

async fn lookup_self(State(s): S, method: Method, headers: HeaderMap) -> Response {
    if method != Method::GET && method != Method::POST && method != Method::PUT {
        return unsupported();
    }
    match s
        .authorize(
            token_of(&headers),
            "auth/token/lookup-self",
            &[Capability::Read, Capability::Update],
        )
        .await
    {
        Ok(info) => {
            finish(
                &s,
                &headers,
                &info.identity,
                "auth/token/lookup-self",
                Envelope::data(lookup_data(&info)),
            )
            .await
        }
        Err(e) => error_response(e),
    }
}

#[derive(Deserialize, Default)]
struct IncrementBody {
    #[serde(default)]
    increment: Option<Value>,
    #[serde(default)]
    lease_id: Option<String>,
}

fn increment_of(v: &Option<Value>) -> Result<Option<Duration>, SecretsError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_u64()
            .map(|n| Some(Duration::from_secs(n)))
            .ok_or_else(|| bad("increment must be a non-negative number of seconds")),
        Some(Value::String(s)) => parse_duration(s).map(Some).map_err(bad),
        Some(_) => Err(bad("increment must be a duration")),
    }
}

async fn renew_self(State(s): S, method: Method, headers: HeaderMap, body: Bytes) -> Response {
    if method != Method::POST && method != Method::PUT {
        return unsupported();
    }
    let run = async {
        let req: IncrementBody = body_as(&body)?;
        let increment = increment_of(&req.increment)?;
        let info = s
            .authorize(
                token_of(&headers),
                "auth/token/renew-self",
                &[Capability::Update],
            )
            .await?;
        s.renew_token(&info, increment).await
    };
    match run.await {
        Ok((info, warning)) => {
            let env = Envelope {
                auth: Some(auth_object(&info.token, &info)),
                warnings: warning.into_iter().collect(),
                ..Envelope::default()
            };
            finish(&s, &headers, &info.identity, "auth/token/renew-self", env).await
        }
        Err(e) => error_response(e),
    }
}

async fn revoke_self(State(s): S, method: Method, headers: HeaderMap) -> Response {
    if method != Method::POST && method != Method::PUT {
        return unsupported();
    }
    let run = async {
        let info = s
            .authorize(
                token_of(&headers),
                "auth/token/revoke-self",
                &[Capability::Update],
            )
            .await?;
        s.revoke_token(&info).await
    };
    match run.await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => error_response(e),
    }
}

// === handlers: KV v2 ===

fn check_kv_path(path: &str) -> Result<String, SecretsError> {
    let p = path.trim_matches('/');
    if p.is_empty() {
        return Err(bad("missing secret path"));
    }
    if p.split('/')
        .any(|seg| seg.is_empty() || seg == "." || seg == "..")
    {
        return Err(bad(format!("invalid secret path `{p}`")));
    }
    Ok(p.to_owned())
}

#[derive(Deserialize, Default)]
struct VersionQuery {
    #[serde(default)]
    version: Option<u64>,
    #[serde(default)]
    list: Option<String>,
}

#[derive(Deserialize)]
struct KvWrite {
    data: Option<Map<String, Value>>,
    #[serde(default)]
    options: Map<String, Value>,
}

async fn kv_data(
    State(s): S,
    method: Method,
    Path(path): Path<String>,
    Query(q): Query<VersionQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = match check_kv_path(&path) {
        Ok(p) => p,
        Err(e) => return error_response(e),
    };
    let acl_path = format!("secret/data/{path}");
    let token = token_of(&headers);
    match method {
        Method::GET => {
            let info = match s.authorize(token, &acl_path, &[Capability::Read]).await {
                Ok(i) => i,
                Err(e) => return error_response(e),
            };
            match s.kv_read(&info, &path, q.version).await {
                Ok(Some(read)) => {
                    let deleted = read.data.is_none();
                    let env = Envelope::data(json!({ "data": read.data, "metadata": read.meta }));
                    if deleted {
                        // Vault answers 404 for a deleted or destroyed version,
                        // with its metadata so clients can tell why.
                        return (StatusCode::NOT_FOUND, axum::Json(env.to_json())).into_response();
                    }
                    finish(&s, &headers, &info.identity, &acl_path, env).await
                }
                Ok(None) => error_response(SecretsError::NotFound(path)),
                Err(e) => error_response(e),
            }
        }
        Method::POST | Method::PUT => {
            let run = async {
                let w: KvWrite = body_as(&body)?;
                let data = w.data.ok_or_else(|| bad("no data provided"))?;
                let cas = match w.options.get("cas") {
                    None | Some(Value::Null) => None,
                    Some(v) => Some(
                        v.as_u64()
                            .ok_or_else(|| bad("cas must be a non-negative integer"))?,
                    ),
                };
                // Vault: `create` for a new secret, `update` for an existing one.
                let exists = s.kv_exists(&path).await?;
                let cap = if exists {
                    Capability::Update
                } else {
                    Capability::Create
                };
                let info = s.authorize(token, &acl_path, &[cap]).await?;
                let meta = s.kv_write(&info, &path, data, cas).await?;
                Ok::<_, SecretsError>((info, meta))
            };
            match run.await {
                Ok((info, meta)) => {
                    let env = Envelope::data(serde_json::to_value(&meta).unwrap_or(Value::Null));
                    finish(&s, &headers, &info.identity, &acl_path, env).await
                }
                Err(e) => error_response(e),
            }
        }
        Method::DELETE => {
            let run = async {
                let info = s.authorize(token, &acl_path, &[Capability::Delete]).await?;
                s.local_kv_only("kv delete")?;
                s.kv.delete_latest(&path).await?;
                s.kv_event(&info, crate::service::kinds::SECRET_DELETED, &path)
                    .await
            };
            match run.await {
                Ok(()) => StatusCode::NO_CONTENT.into_response(),
                Err(e) => error_response(e),
            }
        }
        _ => unsupported(),
    }
}

async fn kv_metadata_root(
    State(s): S,
    method: Method,
    Query(q): Query<VersionQuery>,
    headers: HeaderMap,
) -> Response {
    let is_list = method.as_str() == "LIST"
        || (method == Method::GET && q.list.as_deref().is_some_and(|l| l == "true"));
    if !is_list {
        return unsupported();
    }
    kv_list(&s, &headers, "").await
}

async fn kv_list(s: &Secrets, headers: &HeaderMap, path: &str) -> Response {
    let acl_path = if path.is_empty() {
        "secret/metadata/".to_owned()
    } else {
        format!("secret/metadata/{path}/")
    };
    let run = async {
        let info = s
            .authorize(token_of(headers), &acl_path, &[Capability::List])
            .await?;
        let prefix = if path.is_empty() {
            String::new()
        } else {
            format!("{path}/")
        };
        s.local_kv_only("kv list")?;
        let keys = s.kv.list(&prefix).await?;
        Ok::<_, SecretsError>((info, keys))
    };
    match run.await {
        Ok((_, keys)) if keys.is_empty() => error_response(SecretsError::NotFound(path.into())),
        Ok((info, keys)) => {
            finish(
                s,
                headers,
                &info.identity,
                &acl_path,
                Envelope::data(json!({ "keys": keys })),
            )
            .await
        }
        Err(e) => error_response(e),
    }
}

async fn kv_metadata(
    State(s): S,
    method: Method,
    Path(raw): Path<String>,
    Query(q): Query<VersionQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let is_list = method.as_str() == "LIST"
        || (method == Method::GET && q.list.as_deref().is_some_and(|l| l == "true"));
    if is_list {
        let trimmed = raw.trim_matches('/');
        if trimmed.is_empty() {
            return kv_list(&s, &headers, "").await;
        }
        return match check_kv_path(trimmed) {
            Ok(p) => kv_list(&s, &headers, &p).await,
            Err(e) => error_response(e),
        };
    }
    let path = match check_kv_path(&raw) {
        Ok(p) => p,
        Err(e) => return error_response(e),
    };
    let acl_path = format!("secret/metadata/{path}");
    let token = token_of(&headers);
    match method {
        Method::GET => {
            let run = async {
                let info = s.authorize(token, &acl_path, &[Capability::Read]).await?;
                s.local_kv_only("kv metadata")?;
                let meta = s.kv.metadata(&path).await?;
                Ok::<_, SecretsError>((info, meta))
            };
            match run.await {
                Ok((info, Some(meta))) => {
                    let env = Envelope::data(serde_json::to_value(&meta).unwrap_or(Value::Null));
                    finish(&s, &headers, &info.identity, &acl_path, env).await
                }
                Ok((_, None)) => error_response(SecretsError::NotFound(path)),
                Err(e) => error_response(e),
            }
        }
        Method::POST | Method::PUT => {
            let run = async {
                let update: crate::kv::MetadataUpdate = body_as(&body)?;
                let exists = s.kv_exists(&path).await?;
                let cap = if exists {
                    Capability::Update
                } else {
                    Capability::Create
                };
                let info = s.authorize(token, &acl_path, &[cap]).await?;
                s.local_kv_only("kv metadata")?;
                s.kv.update_metadata(&path, update).await?;
                s.kv_event(&info, crate::service::kinds::SECRET_WRITTEN, &path)
                    .await
            };
            match run.await {
                Ok(()) => StatusCode::NO_CONTENT.into_response(),
                Err(e) => error_response(e),
            }
        }
        Method::DELETE => {
            let run = async {
                let info = s.authorize(token, &acl_path, &[Capability::Delete]).await?;
                s.local_kv_only("kv metadata")?;
                s.kv.delete_metadata(&path).await?;
                s.kv_event(&info, crate::service::kinds::SECRET_DELETED, &path)
                    .await
            };
            match run.await {
                Ok(()) => StatusCode::NO_CONTENT.into_response(),
                Err(e) => error_response(e),
            }
        }
        _ => unsupported(),
    }
}

#[derive(Deserialize)]
struct Versions {
    /// Numbers or numeric strings: the `bao`/`vault` CLI sends
    /// `-versions=1,2` as `["1","2"]`.
    #[serde(default, deserialize_with = "versions_list")]
    versions: Vec<u64>,
}

fn versions_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum One {
        N(u64),
        S(String),
    }
    Vec::<One>::deserialize(d)?
        .into_iter()
        .map(|v| match v {
            One::N(n) => Ok(n),
            One::S(s) => s
                .trim()
                .parse()
                .map_err(|_| serde::de::Error::custom(format!("invalid version `{s}`"))),
        })
        .collect()
}

#[derive(Clone, Copy)]
enum VersionOp {
    Delete,
    Undelete,
    Destroy,
}

async fn kv_versions_op(
    s: &Secrets,
    method: &Method,
    raw: &str,
    headers: &HeaderMap,
    body: &Bytes,
    op: VersionOp,
) -> Response {
    if *method != Method::POST && *method != Method::PUT {
        return unsupported();
    }
    let run = async {
        let path = check_kv_path(raw)?;
        let v: Versions = body_as(body)?;
        if v.versions.is_empty() {
            return Err(bad("no versions provided"));
        }
        let verb = match op {
            VersionOp::Delete => "delete",
            VersionOp::Undelete => "undelete",
            VersionOp::Destroy => "destroy",
        };
        let acl_path = format!("secret/{verb}/{path}");
        let info = s
            .authorize(token_of(headers), &acl_path, &[Capability::Update])
            .await?;
        s.local_kv_only(&format!("kv {verb}"))?;
        match op {
            VersionOp::Delete => s.kv.delete_versions(&path, &v.versions).await?,
            VersionOp::Undelete => s.kv.undelete(&path, &v.versions).await?,
            VersionOp::Destroy => s.kv.destroy(&path, &v.versions).await?,
        }
        s.kv_event(&info, crate::service::kinds::SECRET_DELETED, &path)
            .await
    };
    match run.await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => error_response(e),
    }
}

async fn kv_delete_versions(
    State(s): S,
    method: Method,
    Path(raw): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    kv_versions_op(&s, &method, &raw, &headers, &body, VersionOp::Delete).await
}

async fn kv_undelete(
    State(s): S,
    method: Method,
    Path(raw): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    kv_versions_op(&s, &method, &raw, &headers, &body, VersionOp::Undelete).await
}

async fn kv_destroy(
    State(s): S,
    method: Method,
    Path(raw): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    kv_versions_op(&s, &method, &raw, &headers, &body, VersionOp::Destroy).await
}

// === handlers: leases ===

fn lease_data(l: &Lease) -> Value {
    json!({
        "id": l.lease_id,
        "issue_time": rfc3339(l.issued_at),
        "expire_time": rfc3339(l.expires_at),
        "last_renewal": null,
        "renewable": l.renewable,
        "ttl": l.ttl_secs(),
    })
}

/// Whether the token may act on leases of other identities.
async fn lease_privileged(s: &Secrets, info: &TokenInfo, path: &str) -> Result<bool, SecretsError> {
    Ok(s.acl_for(&info.policies)
        .await?
        .allows(path, Capability::Sudo))
}

async fn lease_lookup(State(s): S, method: Method, headers: HeaderMap, body: Bytes) -> Response {
    if method != Method::POST && method != Method::PUT {
        return unsupported();
    }
    let run = async {
        let req: IncrementBody = body_as(&body)?;
        let id = req
            .lease_id
            .filter(|l| !l.is_empty())
            .ok_or_else(|| bad("missing lease_id"))?;
        let info = s
            .authorize(
                token_of(&headers),
                "sys/leases/lookup",
                &[Capability::Update],
            )
            .await?;
        let privileged = lease_privileged(&s, &info, "sys/leases/lookup").await?;
        let lease = s.lease_for(&info, privileged, &id).await?;
        Ok::<_, SecretsError>((info, lease))
    };
    match run.await {
        Ok((info, lease)) => {
            finish(
                &s,
                &headers,
                &info.identity,
                "sys/leases/lookup",
                Envelope::data(lease_data(&lease)),
            )
            .await
        }
        Err(e) => error_response(e),
    }
}

async fn do_renew(s: &Secrets, headers: &HeaderMap, id: Option<String>, body: &Bytes) -> Response {
    let run = async {
        let req: IncrementBody = body_as(body)?;
        let increment = increment_of(&req.increment)?;
        let id = id
            .or(req.lease_id)
            .filter(|l| !l.is_empty())
            .ok_or_else(|| bad("missing lease_id"))?;
        let info = s
            .authorize(token_of(headers), "sys/leases/renew", &[Capability::Update])
            .await?;
        let privileged = lease_privileged(s, &info, "sys/leases/renew").await?;
        let lease = s.lease_for(&info, privileged, &id).await?;
        let (renewed, warning) = s.renew_lease(&lease, increment).await?;
        Ok::<_, SecretsError>((info, renewed, warning))
    };
    match run.await {
        Ok((info, lease, warning)) => {
            let env = Envelope {
                lease_id: lease.lease_id.clone(),
                renewable: lease.renewable,
                lease_duration: lease.ttl_secs(),
                warnings: warning.into_iter().collect(),
                ..Envelope::default()
            };
            finish(s, headers, &info.identity, "sys/leases/renew", env).await
        }
        Err(e) => error_response(e),
    }
}

async fn lease_renew(State(s): S, method: Method, headers: HeaderMap, body: Bytes) -> Response {
    if method != Method::POST && method != Method::PUT {
        return unsupported();
    }
    do_renew(&s, &headers, None, &body).await
}

async fn lease_renew_path(
    State(s): S,
    method: Method,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if method != Method::POST && method != Method::PUT {
        return unsupported();
    }
    do_renew(&s, &headers, Some(id), &body).await
}

async fn do_revoke(s: &Secrets, headers: &HeaderMap, id: Option<String>, body: &Bytes) -> Response {
    let run = async {
        let req: IncrementBody = body_as(body)?;
        let id = id
            .or(req.lease_id)
            .filter(|l| !l.is_empty())
            .ok_or_else(|| bad("missing lease_id"))?;
        let info = s
            .authorize(
                token_of(headers),
                "sys/leases/revoke",
                &[Capability::Update],
            )
            .await?;
        let privileged = lease_privileged(s, &info, "sys/leases/revoke").await?;
        let lease = s.lease_for(&info, privileged, &id).await?;
        s.revoke_lease(&lease.lease_id).await
    };
    match run.await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => error_response(e),
    }
}

async fn lease_revoke(State(s): S, method: Method, headers: HeaderMap, body: Bytes) -> Response {
    if method != Method::POST && method != Method::PUT {
        return unsupported();
    }
    do_revoke(&s, &headers, None, &body).await
}

async fn lease_revoke_path(
    State(s): S,
    method: Method,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if method != Method::POST && method != Method::PUT {
        return unsupported();
    }
    do_revoke(&s, &headers, Some(id), &body).await
}

async fn lease_revoke_prefix(
    State(s): S,
    method: Method,
    Path(prefix): Path<String>,
    headers: HeaderMap,
) -> Response {
    if method != Method::POST && method != Method::PUT {
        return unsupported();
    }
    let run = async {
        let acl_path = format!("sys/leases/revoke-prefix/{prefix}");
        // Vault requires sudo here: it reaches every identity's leases.
        s.authorize(token_of(&headers), &acl_path, &[Capability::Sudo])
            .await?;
        s.revoke_prefix(&prefix).await
    };
    match run.await {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => error_response(e),
    }
}

// === handlers: wrapping ===

async fn wrap(State(s): S, method: Method, headers: HeaderMap, body: Bytes) -> Response {
    if method != Method::POST && method != Method::PUT {
        return unsupported();
    }
    let run = async {
        let data = body_object(&body)?;
        let info = s
            .authorize(
                token_of(&headers),
                "sys/wrapping/wrap",
                &[Capability::Update],
            )
            .await?;
        let ttl = wrap_ttl(&headers)?.unwrap_or(Duration::from_secs(300));
        let inner = Envelope::data(Value::Object(data)).to_json();
        s.wrap(&info.identity, "sys/wrapping/wrap", &inner, ttl)
            .await
    };
    match run.await {
        Ok(info) => {
            let mut env = Envelope::default().to_json();
            if let Some(obj) = env.as_object_mut() {
                obj.insert("wrap_info".into(), json!(info));
            }
            (StatusCode::OK, axum::Json(env)).into_response()
        }
        Err(e) => error_response(e),
    }
}

#[derive(Deserialize, Default)]
struct TokenBody {
    #[serde(default)]
    token: Option<String>,
}

/// The wrapping token is either in the body (the caller then needs a valid
/// token of its own) or is the request's token itself.
async fn wrap_token_of(
    s: &Secrets,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<(String, String), SecretsError> {
    let req: TokenBody = body_as(body)?;
    match req.token.filter(|t| !t.is_empty()) {
        Some(t) => {
            let info = s
                .authorize(
                    token_of(headers),
                    "sys/wrapping/unwrap",
                    &[Capability::Update],
                )
                .await?;
            Ok((t, info.identity))
        }
        None => {
            let t = token_of(headers)
                .filter(|t| !t.is_empty())
                .ok_or(SecretsError::PermissionDenied)?;
            Ok((t.to_owned(), String::new()))
        }
    }
}

async fn unwrap(State(s): S, method: Method, headers: HeaderMap, body: Bytes) -> Response {
    if method != Method::POST && method != Method::PUT {
        return unsupported();
    }
    let run = async {
        let (token, identity) = wrap_token_of(&s, &headers, &body).await?;
        s.unwrap(&identity, &token).await
    };
    match run.await {
        Ok(original) => (StatusCode::OK, axum::Json(original)).into_response(),
        Err(e) => error_response(e),
    }
}

async fn wrap_lookup(State(s): S, method: Method, headers: HeaderMap, body: Bytes) -> Response {
    if method != Method::POST && method != Method::PUT && method != Method::GET {
        return unsupported();
    }
    let run = async {
        let (token, _) = wrap_token_of(&s, &headers, &body).await?;
        s.wrap_lookup(&token).await
    };
    match run.await {
        Ok(info) => (
            StatusCode::OK,
            axum::Json(Envelope::data(json!(info)).to_json()),
        )
            .into_response(),
        Err(e) => error_response(e),
    }
}

/// Runs `f` to completion even if the client goes away: an engine that
/// creates a credential and then records its lease must never be dropped
/// between the two (a dropped handler would leave a credential without a
/// lease, alive until its own expiry).
async fn detached<T, F, Fut>(
    s: &Arc<Secrets>,
    info: &TokenInfo,
    arg: String,
    f: F,
) -> Result<T, SecretsError>
where
    T: Send + 'static,
    F: FnOnce(Arc<Secrets>, TokenInfo, String) -> Fut,
    Fut: std::future::Future<Output = Result<T, SecretsError>> + Send + 'static,
{
    tokio::spawn(f(s.clone(), info.clone(), arg))
        .await
        .map_err(|e| SecretsError::Database(format!("credential task failed: {e}")))?
}

// === handlers: database ===

async fn db_creds(State(s): S, Path(role): Path<String>, headers: HeaderMap) -> Response {
    let acl_path = format!("database/creds/{role}");
    let run = async {
        let info = s
            .authorize(token_of(&headers), &acl_path, &[Capability::Read])
            .await?;
        let (lease, username, password) =
            detached(&s, &info, role.clone(), |s, info, role| async move {
                s.issue_db_creds(&info, &role).await
            })
            .await?;
        Ok::<_, SecretsError>((info, lease, username, password))
    };
    match run.await {
        Ok((info, lease, username, password)) => {
            let env = Envelope {
                lease_id: lease.lease_id.clone(),
                renewable: lease.renewable,
                lease_duration: lease.ttl_secs(),
                data: Some(json!({ "username": username, "password": password })),
                ..Envelope::default()
            };
            finish(&s, &headers, &info.identity, &acl_path, env).await
        }
        Err(e) => error_response(e),
    }
}

// === handlers: policies and roles (Vault's admin paths) ===

fn is_list(method: &Method, q: &VersionQuery) -> bool {
    method.as_str() == "LIST"
        || (*method == Method::GET && q.list.as_deref().is_some_and(|l| l == "true"))
}

async fn policy_list(
    State(s): S,
    method: Method,
    Query(q): Query<VersionQuery>,
    headers: HeaderMap,
) -> Response {
    if !is_list(&method, &q) {
        return unsupported();
    }
    let run = async {
        let info = s
            .authorize(token_of(&headers), "sys/policies/acl", &[Capability::List])
            .await?;
        Ok::<_, SecretsError>((info, s.list_policies().await?))
    };
    match run.await {
        Ok((info, keys)) => {
            let env = Envelope::data(json!({ "keys": keys, "policies": keys }));
            finish(&s, &headers, &info.identity, "sys/policies/acl", env).await
        }
        Err(e) => error_response(e),
    }
}

#[derive(Deserialize)]
struct PolicyBody {
    policy: String,
}

async fn policy_rw(
    State(s): State<Arc<Secrets>>,
    method: Method,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let acl_path = format!("sys/policies/acl/{name}");
    let token = token_of(&headers);
    match method {
        Method::GET => {
            let run = async {
                let info = s.authorize(token, &acl_path, &[Capability::Read]).await?;
                let text = s
                    .read_policy(&name)
                    .await?
                    .ok_or_else(|| SecretsError::NotFound(name.clone()))?;
                Ok::<_, SecretsError>((info, text))
            };
            match run.await {
                Ok((info, text)) => {
                    let env = Envelope::data(json!({ "name": name, "policy": text }));
                    finish(&s, &headers, &info.identity, &acl_path, env).await
                }
                Err(e) => error_response(e),
            }
        }
        Method::POST | Method::PUT => {
            let run = async {
                let b: PolicyBody = body_as(&body)?;
                s.authorize(token, &acl_path, &[Capability::Create, Capability::Update])
                    .await?;
                s.write_policy(&name, &b.policy).await
            };
            match run.await {
                Ok(_) => StatusCode::NO_CONTENT.into_response(),
                Err(e) => error_response(e),
            }
        }
        Method::DELETE => {
            let run = async {
                s.authorize(token, &acl_path, &[Capability::Delete]).await?;
                s.delete_policy(&name).await
            };
            match run.await {
                Ok(()) => StatusCode::NO_CONTENT.into_response(),
                Err(e) => error_response(e),
            }
        }
        _ => unsupported(),
    }
}

/// A Vault `LIST` of names under `acl_path` (404 when there are none).
async fn list_response<F, Fut>(
    s: &Arc<Secrets>,
    headers: &HeaderMap,
    acl_path: &str,
    names: F,
) -> Response
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<Vec<String>, SecretsError>>,
{
    let run = async {
        let info = s
            .authorize(token_of(headers), acl_path, &[Capability::List])
            .await?;
        Ok::<_, SecretsError>((info, names().await?))
    };
    match run.await {
        Ok((_, keys)) if keys.is_empty() => error_response(SecretsError::NotFound(String::new())),
        Ok((info, keys)) => {
            let env = Envelope::data(json!({ "keys": keys }));
            finish(s, headers, &info.identity, acl_path, env).await
        }
        Err(e) => error_response(e),
    }
}

/// A Vault read of one stored object at `acl_path`, after the ACL check.
async fn read_response<T, F, Fut>(
    s: &Arc<Secrets>,
    headers: &HeaderMap,
    acl_path: &str,
    read: F,
) -> Response
where
    T: serde::Serialize,
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<T, SecretsError>>,
{
    let run = async {
        let info = s
            .authorize(token_of(headers), acl_path, &[Capability::Read])
            .await?;
        Ok::<_, SecretsError>((info, read().await?))
    };
    match run.await {
        Ok((info, value)) => {
            let env = Envelope::data(serde_json::to_value(&value).unwrap_or(Value::Null));
            finish(s, headers, &info.identity, acl_path, env).await
        }
        Err(e) => error_response(e),
    }
}

async fn role_list(
    State(s): S,
    method: Method,
    Query(q): Query<VersionQuery>,
    headers: HeaderMap,
) -> Response {
    if !is_list(&method, &q) {
        return unsupported();
    }
    list_response(&s, &headers, "auth/jwt/role/", || s.list_roles()).await
}

async fn role_rw(
    State(s): State<Arc<Secrets>>,
    method: Method,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let acl_path = format!("auth/jwt/role/{name}");
    let token = token_of(&headers);
    match method {
        Method::GET => {
            read_response(&s, &headers, &acl_path, || async {
                s.role(&name)
                    .await?
                    .ok_or_else(|| SecretsError::NotFound(name.clone()))
            })
            .await
        }
        Method::POST | Method::PUT => {
            let run = async {
                let mut fields = body_object(&body)?;
                // Vault's role_type is always `jwt` here.
                if let Some(t) = fields.remove("role_type")
                    && t.as_str() != Some("jwt")
                {
                    return Err(bad("only role_type `jwt` is supported"));
                }
                fields.insert("name".into(), Value::String(name.clone()));
                let role: crate::JwtRole = serde_json::from_value(Value::Object(fields))
                    .map_err(|e| bad(format!("invalid role: {e}")))?;
                s.authorize(token, &acl_path, &[Capability::Create, Capability::Update])
                    .await?;
                s.write_role(role).await
            };
            match run.await {
                Ok(_) => StatusCode::NO_CONTENT.into_response(),
                Err(e) => error_response(e),
            }
        }
        Method::DELETE => {
            let run = async {
                s.authorize(token, &acl_path, &[Capability::Delete]).await?;
                s.delete_role(&name).await
            };
            match run.await {
                Ok(()) => StatusCode::NO_CONTENT.into_response(),
                Err(e) => error_response(e),
            }
        }
        _ => unsupported(),
    }
}

// === handlers: cert auth (X509-SVID over mTLS) ===

#[derive(Deserialize)]
struct CertLoginBody {
    #[serde(default)]
    name: String,
}

/// `POST /v1/auth/cert/login {name?}`. Only the mTLS listener inserts a
/// [`keyless_identity::PeerSvid`], so on the plain listener (or without a
/// client certificate) this is 400 `client certificate must be supplied`.
async fn cert_login(
    State(s): S,
    method: Method,
    peer: Option<axum::Extension<keyless_identity::PeerSvid>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if method != Method::POST && method != Method::PUT {
        return unsupported();
    }
    let req: CertLoginBody = match body_as(&body) {
        Ok(r) => r,
        Err(e) => return error_response(e),
    };
    let peer = peer.map(|axum::Extension(p)| p);
    match s.login_cert(Some(req.name.as_str()), peer.as_ref()).await {
        Ok(login) => {
            let env = Envelope {
                auth: Some(auth_object(&login.client_token, &login.info)),
                ..Envelope::default()
            };
            finish(&s, &headers, &login.info.identity, "auth/cert/login", env).await
        }
        Err(e) => error_response(e),
    }
}

async fn cert_role_list(
    State(s): S,
    method: Method,
    Query(q): Query<VersionQuery>,
    headers: HeaderMap,
) -> Response {
    if !is_list(&method, &q) {
        return unsupported();
    }
    list_response(&s, &headers, "auth/cert/certs/", || s.list_cert_roles()).await
}

async fn cert_role_rw(
    State(s): State<Arc<Secrets>>,
    method: Method,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let acl_path = format!("auth/cert/certs/{name}");
    let token = token_of(&headers);
    match method {
        Method::GET => {
            read_response(&s, &headers, &acl_path, || async {
                s.cert_role(&name)
                    .await?
                    .ok_or_else(|| SecretsError::NotFound(name.clone()))
            })
            .await
        }
        Method::POST | Method::PUT => {
            let run = async {
                let mut fields = body_object(&body)?;
                fields.insert("name".into(), Value::String(name.clone()));
                let role: crate::CertRole = serde_json::from_value(Value::Object(fields))
                    .map_err(|e| bad(format!("invalid role: {e}")))?;
                s.authorize(token, &acl_path, &[Capability::Create, Capability::Update])
                    .await?;
                s.write_cert_role(role).await
            };
            match run.await {
                Ok(_) => StatusCode::NO_CONTENT.into_response(),
                Err(e) => error_response(e),
            }
        }
        Method::DELETE => {
            let run = async {
                s.authorize(token, &acl_path, &[Capability::Delete]).await?;
                s.delete_cert_role(&name).await
            };
            match run.await {
                Ok(()) => StatusCode::NO_CONTENT.into_response(),
                Err(e) => error_response(e),
            }
        }
        _ => unsupported(),
    }
}

// === handlers: rotating credentials ===

/// `GET /v1/rotating/creds/{name}`: rotates the credential and returns the
/// new secret under a short lease (`data{name, secret, generation}`).
async fn rotating_creds(State(s): S, Path(name): Path<String>, headers: HeaderMap) -> Response {
    let acl_path = format!("rotating/creds/{name}");
    let run = async {
        let info = s
            .authorize(token_of(&headers), &acl_path, &[Capability::Read])
            .await?;
        let rotated = detached(&s, &info, name.clone(), |s, info, name| async move {
            s.read_rotating(&info, &name).await
        })
        .await?;
        Ok::<_, SecretsError>((info, rotated))
    };
    match run.await {
        Ok((info, rotated)) => {
            let env = Envelope {
                lease_id: rotated.lease.lease_id.clone(),
                renewable: rotated.lease.renewable,
                lease_duration: rotated.lease.ttl_secs(),
                data: Some(json!({
                    "name": rotated.name,
                    "secret": rotated.secret,
                    "generation": rotated.generation,
                })),
                ..Envelope::default()
            };
            finish(&s, &headers, &info.identity, &acl_path, env).await
        }
        Err(e) => error_response(e),
    }
}
