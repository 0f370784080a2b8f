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
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use keyless_identity::{Identity, IdentityError, NewEntry};
use keyless_secrets::{Secrets, SecretsError};
use keyless_sts::{Sts, StsError};
use serde::Deserialize;
use serde_json::json;

/// What the admin API can reach.
#[derive(Clone)]
pub struct AdminState {
    pub identity: Arc<Identity>,
    pub sts: Arc<Sts>,
    pub secrets: Arc<Secrets>,
    pub gateway: Arc<keyless_gateway::Gateway>,
    pub transmitter: Arc<keyless_signals::transmitter::Transmitter>,
    pub receiver: Arc<keyless_signals::receiver::Receiver>,
    pub risk: Arc<keyless_signals::risk::RiskEngine>,
    /// Where the admin API records its own decisions (`credential.revoked`).
    pub audit: Arc<dyn keyless_audit::EventSink>,
}

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/v1/entries", get(list_entries).post(create_entry))
        .route("/v1/entries/{id}", delete(delete_entry))
        .route("/v1/ca/rotate", post(rotate))
        .route("/v1/users", post(add_user))
        .route("/v1/tools", get(list_tools))
        .route("/v1/tools/{name}/approve", post(approve_tool))
        .route(
            "/v1/signals/streams",
            get(crate::signals::admin_list_streams).post(crate::signals::admin_create_stream),
        )
        .route(
            "/v1/signals/subscriptions",
            get(crate::signals::admin_list_subscriptions).post(crate::signals::admin_subscribe),
        )
        .route("/v1/signals/reviews", get(crate::signals::admin_reviews))
        .route(
            "/v1/signals/reviews/{id}/resolve",
            post(crate::signals::admin_resolve_review),
        )
        .route("/v1/consents", get(list_consents))
        .route("/v1/revoke", post(revoke_credential))
        .route("/v1/consents/{id}", delete(revoke_consent))
        .route("/v1/secrets/policies", get(secrets_list_policies))
        .route("/v1/secrets/policies/{name}", put(secrets_write_policy))
        .route("/v1/secrets/roles", get(secrets_list_roles))
        .route("/v1/secrets/roles/{name}", put(secrets_write_role))
        .route("/v1/secrets/kv/{*path}", put(secrets_kv_put))
        .route("/v1/secrets/db/config/{name}", put(secrets_db_configure))
        .route("/v1/secrets/db/roles/{name}", put(secrets_db_role))
        .route(
            "/v1/secrets/leases/revoke-prefix",
            post(secrets_revoke_prefix),
        )
        .route("/v1/secrets/leases/pending", get(secrets_pending))
        // Cert auth roles and rotating credentials.
        .route("/v1/secrets/cert-roles", get(secrets_list_cert_roles))
        .route(
            "/v1/secrets/cert-roles/{name}",
            put(secrets_write_cert_role),
        )
        .route("/v1/secrets/rotating", get(secrets_list_rotating))
        .route(
            "/v1/secrets/rotating/{name}",
            put(secrets_write_rotating).delete(secrets_delete_rotating),
        )
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

pub(crate) fn error(status: StatusCode, message: impl std::fmt::Display) -> Response {
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

/// A pin as the CLI shows it: flat status and reason, and the tool's tier.
fn tool_json(gw: &keyless_gateway::Gateway, t: &keyless_gateway::PinnedTool) -> serde_json::Value {
    let (status, reason) = match &t.status {
        keyless_gateway::ToolStatus::Approved => ("approved", None),
        keyless_gateway::ToolStatus::Blocked { reason } => ("blocked", Some(*reason)),
    };
    json!({
        "name": t.name,
        "server": t.server,
        "tier": gw.tier(&t.name),
        "status": status,
        "reason": reason,
        "pinned_hash": t.pinned_hash,
        "seen_hash": t.seen_hash,
        "definition": t.definition,
        "first_seen": t.first_seen,
        "updated_at": t.updated_at,
        "approved_at": t.approved_at,
    })
}

async fn list_tools(State(s): State<AdminState>) -> Response {
    match s.gateway.catalog().list().await {
        Ok(list) => Json(
            list.iter()
                .map(|t| tool_json(&s.gateway, t))
                .collect::<Vec<_>>(),
        )
        .into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

async fn approve_tool(State(s): State<AdminState>, UrlPath(name): UrlPath<String>) -> Response {
    match s.gateway.catalog().approve(&name).await {
        Ok(t) => Json(tool_json(&s.gateway, &t)).into_response(),
        Err(e @ keyless_gateway::CatalogError::NotFound(_)) => error(StatusCode::NOT_FOUND, e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
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

// === secrets broker ===

/// Broker errors on the admin API: input mistakes say what was wrong; the
/// rest is logged and summarized.
fn secrets_error(e: SecretsError) -> Response {
    let status = match &e {
        SecretsError::InvalidRequest(_) | SecretsError::Conflict(_) => StatusCode::BAD_REQUEST,
        SecretsError::NotFound(_) => StatusCode::NOT_FOUND,
        SecretsError::PermissionDenied => StatusCode::FORBIDDEN,
        SecretsError::QuotaExceeded(_) => StatusCode::TOO_MANY_REQUESTS,
        SecretsError::Database(_) => StatusCode::BAD_GATEWAY,
        // The OpenBao backend refused or failed Keyless itself.
        SecretsError::Backend(_) => StatusCode::BAD_GATEWAY,
        // A rotating credential's hook failed (nothing was issued).
        SecretsError::Rotation(_) => StatusCode::BAD_GATEWAY,
        SecretsError::RevocationFailed(_)
        | SecretsError::Decrypt(_)
        | SecretsError::Store(_)
        | SecretsError::Audit(_) => {
            tracing::error!(error = %e, "admin request failed");
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                match e {
                    SecretsError::RevocationFailed(m) => m,
                    _ => "internal error (see the server log)".into(),
                },
            );
        }
    };
    error(status, e)
}

fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8], what: &str) -> Result<T, Box<Response>> {
    serde_json::from_slice(body).map_err(|e| {
        Box::new(error(
            StatusCode::BAD_REQUEST,
            format!("invalid {what}: {e}"),
        ))
    })
}

async fn secrets_list_policies(State(s): State<AdminState>) -> Response {
    match s.secrets.list_policies().await {
        Ok(list) => Json(list).into_response(),
        Err(e) => secrets_error(e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyBody {
    policy: String,
}

async fn secrets_write_policy(
    State(s): State<AdminState>,
    UrlPath(name): UrlPath<String>,
    body: axum::body::Bytes,
) -> Response {
    let b: PolicyBody = match parse_body(&body, "policy") {
        Ok(b) => b,
        Err(r) => return *r,
    };
    match s.secrets.write_policy(&name, &b.policy).await {
        Ok(p) => Json(json!({ "name": p.name, "paths": p.rules.len() })).into_response(),
        Err(e) => secrets_error(e),
    }
}

// --- cert auth roles and rotating credentials ---

async fn secrets_list_cert_roles(State(s): State<AdminState>) -> Response {
    match s.secrets.list_cert_roles().await {
        Ok(list) => Json(list).into_response(),
        Err(e) => secrets_error(e),
    }
}

async fn secrets_write_cert_role(
    State(s): State<AdminState>,
    UrlPath(name): UrlPath<String>,
    body: axum::body::Bytes,
) -> Response {
    let mut role: keyless_secrets::CertRole = match parse_body(&body, "cert role") {
        Ok(r) => r,
        Err(r) => return *r,
    };
    role.name = name;
    match s.secrets.write_cert_role(role).await {
        Ok(r) => Json(r).into_response(),
        Err(e) => secrets_error(e),
    }
}

async fn secrets_list_rotating(State(s): State<AdminState>) -> Response {
    match s.secrets.list_rotating().await {
        Ok(list) => Json(list).into_response(),
        Err(e) => secrets_error(e),
    }
}

async fn secrets_write_rotating(
    State(s): State<AdminState>,
    UrlPath(name): UrlPath<String>,
    body: axum::body::Bytes,
) -> Response {
    let mut cred: keyless_secrets::RotatingCredential =
        match parse_body(&body, "rotating credential") {
            Ok(c) => c,
            Err(r) => return *r,
        };
    cred.name = name;
    match s.secrets.write_rotating(cred).await {
        Ok(c) => Json(c).into_response(),
        Err(e) => secrets_error(e),
    }
}

async fn secrets_delete_rotating(
    State(s): State<AdminState>,
    UrlPath(name): UrlPath<String>,
) -> Response {
    match s.secrets.delete_rotating(&name).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => secrets_error(e),
    }
}

async fn secrets_list_roles(State(s): State<AdminState>) -> Response {
    match s.secrets.list_roles().await {
        Ok(list) => Json(list).into_response(),
        Err(e) => secrets_error(e),
    }
}

async fn secrets_write_role(
    State(s): State<AdminState>,
    UrlPath(name): UrlPath<String>,
    body: axum::body::Bytes,
) -> Response {
    let mut role: keyless_secrets::JwtRole = match parse_body(&body, "role") {
        Ok(r) => r,
        Err(r) => return *r,
    };
    role.name = name;
    match s.secrets.write_role(role).await {
        Ok(r) => Json(r).into_response(),
        Err(e) => secrets_error(e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KvBody {
    data: serde_json::Map<String, serde_json::Value>,
}

async fn secrets_kv_put(
    State(s): State<AdminState>,
    UrlPath(path): UrlPath<String>,
    body: axum::body::Bytes,
) -> Response {
    let b: KvBody = match parse_body(&body, "secret") {
        Ok(b) => b,
        Err(r) => return *r,
    };
    match s.secrets.admin_kv_put(&path, b.data).await {
        Ok(meta) => Json(meta).into_response(),
        Err(e) => secrets_error(e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DbConfigBody {
    connection_url: String,
    #[serde(default)]
    allowed_roles: Vec<String>,
}

async fn secrets_db_configure(
    State(s): State<AdminState>,
    UrlPath(name): UrlPath<String>,
    body: axum::body::Bytes,
) -> Response {
    let b: DbConfigBody = match parse_body(&body, "database configuration") {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let allowed = if b.allowed_roles.is_empty() {
        vec!["*".to_owned()]
    } else {
        b.allowed_roles
    };
    match s
        .secrets
        .database()
        .configure(&name, &b.connection_url, allowed)
        .await
    {
        Ok(info) => Json(json!({
            "name": info.name,
            "username": info.username,
            "allowed_roles": info.allowed_roles,
        }))
        .into_response(),
        Err(e) => secrets_error(e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DbRoleBody {
    db_name: String,
    creation_statements: Vec<String>,
    #[serde(default)]
    revocation_statements: Vec<String>,
    #[serde(default)]
    renew_statements: Vec<String>,
    default_ttl: u64,
    max_ttl: u64,
}

async fn secrets_db_role(
    State(s): State<AdminState>,
    UrlPath(name): UrlPath<String>,
    body: axum::body::Bytes,
) -> Response {
    let b: DbRoleBody = match parse_body(&body, "database role") {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let role = keyless_secrets::database::DbRole {
        name: name.clone(),
        db_name: b.db_name,
        creation_statements: b.creation_statements,
        revocation_statements: b.revocation_statements,
        renew_statements: b.renew_statements,
        default_ttl: std::time::Duration::from_secs(b.default_ttl),
        max_ttl: std::time::Duration::from_secs(b.max_ttl),
    };
    match s.secrets.database().write_role(role).await {
        Ok(()) => Json(json!({ "name": name })).into_response(),
        Err(e) => secrets_error(e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PrefixBody {
    prefix: String,
}

async fn secrets_revoke_prefix(State(s): State<AdminState>, body: axum::body::Bytes) -> Response {
    let b: PrefixBody = match parse_body(&body, "request") {
        Ok(b) => b,
        Err(r) => return *r,
    };
    match s.secrets.revoke_prefix(&b.prefix).await {
        Ok(n) => Json(json!({ "revoked": n })).into_response(),
        Err(e) => secrets_error(e),
    }
}

async fn secrets_pending(State(s): State<AdminState>) -> Response {
    match s.secrets.pending_revocations().await {
        Ok(list) => Json(
            list.into_iter()
                .map(|l| {
                    json!({
                        "lease_id": l.lease_id,
                        "engine": l.engine,
                        "identity": l.identity,
                        "attempts": l.attempts,
                        "last_error": l.last_error,
                    })
                })
                .collect::<Vec<_>>(),
        )
        .into_response(),
        Err(e) => secrets_error(e),
    }
}

// === revocation of leaked credentials (`keyless scan --revoke`) ===

/// Kind of the `credential.revoked` audit event.
const CREDENTIAL_REVOKED: &str = "credential.revoked";
/// Longest credential the endpoint looks at (a JWT is far shorter).
const MAX_CREDENTIAL_LEN: usize = 16 * 1024;
/// Longest rule id or fingerprint accepted.
const MAX_LABEL_LEN: usize = 256;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeBody {
    /// The secret itself. Never logged, never echoed, never recorded.
    credential: String,
    /// The scanner rule that found it.
    #[serde(default)]
    rule_id: String,
    /// The scanner's stable fingerprint of the finding (no secret in it).
    #[serde(default)]
    fingerprint: String,
}

/// What a found credential looks like, before asking the services.
#[derive(Debug, Clone, PartialEq, Eq)]
enum CredentialShape {
    /// `hvs.`: a broker service token or a response-wrapping token.
    BrokerToken,
    /// `hvb.`: a stateless batch token.
    BatchToken,
    /// A JWT whose `iss` is this fabric's STS.
    AccessToken,
    /// A JWT whose `iss` is this fabric's SPIFFE issuer.
    JwtSvid,
    /// `ENGINE/creds/ROLE/ID`: maybe a lease id.
    MaybeLease,
    /// Nothing this fabric issues.
    Foreign,
}

/// The `iss` of a compact JWS, read without verifying anything (only to
/// route the credential; the owning service verifies it).
fn unverified_issuer(token: &str) -> Option<String> {
    use base64::Engine;
    let mut parts = token.split('.');
    let (_header, payload, _sig) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    claims.get("iss")?.as_str().map(str::to_owned)
}

/// Routes `credential` to the service that may have issued it.
fn credential_shape(credential: &str, sts_issuer: &str, spiffe_issuer: &str) -> CredentialShape {
    if credential.starts_with(keyless_secrets::SERVICE_PREFIX) {
        return CredentialShape::BrokerToken;
    }
    if credential.starts_with(keyless_secrets::BATCH_PREFIX) {
        return CredentialShape::BatchToken;
    }
    if let Some(iss) = unverified_issuer(credential) {
        let iss = iss.trim_end_matches('/');
        if iss == sts_issuer.trim_end_matches('/') {
            return CredentialShape::AccessToken;
        }
        if iss == spiffe_issuer.trim_end_matches('/') {
            return CredentialShape::JwtSvid;
        }
        return CredentialShape::Foreign;
    }
    // Lease ids are `ENGINE/creds/ROLE/RANDOM`; anything else with a slash
    // (an AWS secret key, a path) is not sent to the broker.
    if credential.contains("/creds/")
        && !credential.starts_with('/')
        && credential
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/-_.".contains(&b))
    {
        return CredentialShape::MaybeLease;
    }
    CredentialShape::Foreign
}

/// Whether `credential` could be one this fabric issues (a client-side
/// filter, so `keyless scan --revoke` sends no third-party secret here).
pub(crate) fn may_be_keyless(credential: &str) -> bool {
    let c = credential.trim();
    c.starts_with(keyless_secrets::SERVICE_PREFIX)
        || c.starts_with(keyless_secrets::BATCH_PREFIX)
        || unverified_issuer(c).is_some()
        || credential_shape(c, "", "") == CredentialShape::MaybeLease
}

/// What `/v1/revoke` did with one credential.
struct RevokeOutcome {
    /// `revoked`, `already_invalid`, `not_revocable` or `not_keyless`.
    outcome: &'static str,
    /// `service_token`, `wrap_token`, `batch_token`, `access_token`,
    /// `jwt_svid`, `lease` or `unknown`.
    kind: &'static str,
    /// One human sentence, without the secret.
    message: String,
    /// A non-secret handle for the audit event (accessor, jti, lease id).
    handle: Option<(&'static str, String)>,
}

impl RevokeOutcome {
    fn new(outcome: &'static str, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            outcome,
            kind,
            message: message.into(),
            handle: None,
        }
    }
}

/// `POST /v1/revoke`: revokes a leaked credential if this fabric issued it.
/// Answers what happened; every answer about a Keyless credential is
/// recorded as a `credential.revoked` event (rule id and fingerprint, never
/// the secret) before it is given.
async fn revoke_credential(State(s): State<AdminState>, body: axum::body::Bytes) -> Response {
    let b: RevokeBody = match parse_body(&body, "revocation request") {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let credential = b.credential.trim();
    if credential.is_empty() || credential.len() > MAX_CREDENTIAL_LEN {
        return error(
            StatusCode::BAD_REQUEST,
            format!("credential must be 1 to {MAX_CREDENTIAL_LEN} bytes"),
        );
    }
    for (name, v) in [("rule_id", &b.rule_id), ("fingerprint", &b.fingerprint)] {
        if v.len() > MAX_LABEL_LEN || v.chars().any(char::is_control) {
            return error(
                StatusCode::BAD_REQUEST,
                format!("{name} must be at most {MAX_LABEL_LEN} printable characters"),
            );
        }
    }
    let outcome = match revoke_one(&s, credential).await {
        Ok(o) => o,
        Err(resp) => return resp,
    };
    if outcome.outcome != "not_keyless" {
        let mut event = keyless_audit::Event::new(
            CREDENTIAL_REVOKED,
            if outcome.outcome == "revoked" {
                keyless_audit::Outcome::Success
            } else {
                keyless_audit::Outcome::Error
            },
        )
        .agent("keyless-scan")
        .detail("rule_id", b.rule_id.clone())
        .detail("fingerprint", b.fingerprint.clone())
        .detail("credential_kind", outcome.kind)
        .detail("result", outcome.outcome);
        if outcome.outcome != "revoked" {
            event = event.reason(outcome.message.clone());
        }
        if let Some((key, value)) = &outcome.handle {
            event = event.detail(key, value.clone());
        }
        if let Err(e) = s.audit.record(event).await {
            tracing::error!(error = %e, "cannot record credential.revoked");
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot record the audit event (see the server log)",
            );
        }
    }
    Json(json!({
        "outcome": outcome.outcome,
        "kind": outcome.kind,
        "message": outcome.message,
        "rule_id": b.rule_id,
        "fingerprint": b.fingerprint,
    }))
    .into_response()
}

/// Asks the owning service to revoke `credential`.
async fn revoke_one(s: &AdminState, credential: &str) -> Result<RevokeOutcome, Response> {
    let shape = credential_shape(credential, s.sts.issuer(), &s.identity.issuer());
    Ok(match shape {
        CredentialShape::BrokerToken => {
            // A wrapping token first: looking it up does not spend it.
            if s.secrets.wrap_lookup(credential).await.is_ok() {
                return match s.secrets.unwrap("keyless-scan", credential).await {
                    Ok(_) => Ok(RevokeOutcome::new(
                        "revoked",
                        "wrap_token",
                        "response-wrapping token destroyed (its wrapped response is gone)",
                    )),
                    Err(SecretsError::InvalidRequest(_)) => Ok(RevokeOutcome::new(
                        "already_invalid",
                        "wrap_token",
                        "response-wrapping token was already unwrapped or expired",
                    )),
                    Err(e) => Err(secrets_error(e)),
                };
            }
            match s.secrets.resolve_token(Some(credential)).await {
                Ok(info) => {
                    let accessor = info.accessor.clone();
                    s.secrets.revoke_token(&info).await.map_err(secrets_error)?;
                    RevokeOutcome {
                        handle: Some(("accessor", accessor)),
                        ..RevokeOutcome::new(
                            "revoked",
                            "service_token",
                            format!(
                                "secrets-broker token of `{}` revoked with its leases",
                                info.identity
                            ),
                        )
                    }
                }
                // Only hashes are stored and revoked tokens are deleted, so
                // an unknown `hvs.` token may be expired, revoked, or
                // Vault's own (which uses the same prefix).
                Err(SecretsError::PermissionDenied) => RevokeOutcome::new(
                    "already_invalid",
                    "service_token",
                    "no live token of this fabric matches (expired, revoked, or issued elsewhere, e.g. by Vault)",
                ),
                Err(e) => return Err(secrets_error(e)),
            }
        }
        CredentialShape::BatchToken => match s.secrets.resolve_token(Some(credential)).await {
            Ok(info) => RevokeOutcome::new(
                "not_revocable",
                "batch_token",
                format!(
                    "batch token of `{}` is stateless and cannot be revoked; it expires in {} s",
                    info.identity,
                    (info.expires_at - keyless_store::now_millis()).max(0) / 1000
                ),
            ),
            Err(SecretsError::PermissionDenied) => RevokeOutcome::new(
                "already_invalid",
                "batch_token",
                "batch token is expired or was not signed by this fabric",
            ),
            Err(e) => return Err(secrets_error(e)),
        },
        CredentialShape::AccessToken => {
            let claims = match s.sts.verify_access_token(credential, None).await {
                Ok(c) => c,
                Err(_) => {
                    return Ok(RevokeOutcome::new(
                        "already_invalid",
                        "access_token",
                        "access token names this fabric's issuer but is expired or its signature does not verify",
                    ));
                }
            };
            let live = s.sts.token_live(&claims).await.map_err(sts_error)?;
            if !live {
                RevokeOutcome {
                    handle: Some(("jti", claims.jti.clone())),
                    ..RevokeOutcome::new(
                        "already_invalid",
                        "access_token",
                        "access token was already revoked (or its session ended)",
                    )
                }
            } else {
                s.sts
                    .revoke_token(credential, None)
                    .await
                    .map_err(sts_error)?;
                RevokeOutcome {
                    handle: Some(("jti", claims.jti.clone())),
                    ..RevokeOutcome::new(
                        "revoked",
                        "access_token",
                        format!("access token of `{}` revoked", claims.sub),
                    )
                }
            }
        }
        CredentialShape::JwtSvid => RevokeOutcome::new(
            "not_revocable",
            "jwt_svid",
            "JWT-SVIDs cannot be revoked; it expires on its own (rotate the JWT key with `keyless ca rotate --jwt` to cut it short)",
        ),
        CredentialShape::MaybeLease => match s.secrets.lease(credential).await {
            Ok(Some(_)) => {
                s.secrets
                    .revoke_lease(credential)
                    .await
                    .map_err(secrets_error)?;
                RevokeOutcome {
                    handle: Some(("lease_id", credential.to_owned())),
                    ..RevokeOutcome::new("revoked", "lease", "lease revoked")
                }
            }
            Ok(None) => RevokeOutcome::new(
                "not_keyless",
                "unknown",
                "not a credential issued by this fabric",
            ),
            Err(e) => return Err(secrets_error(e)),
        },
        CredentialShape::Foreign => RevokeOutcome::new(
            "not_keyless",
            "unknown",
            "not a credential issued by this fabric",
        ),
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(iss: &str) -> String {
        use base64::Engine;
        let enc = |v: serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
        };
        format!(
            "{}.{}.c2ln",
            enc(json!({"alg": "ES256"})),
            enc(json!({"iss": iss, "sub": "x"}))
        )
    }

    #[test]
    fn credentials_are_routed_to_the_service_that_issues_them() {
        let sts = "http://127.0.0.1:8180";
        let spiffe = "http://127.0.0.1:8180/spiffe";
        let check = |cred: &str, want: CredentialShape| {
            assert_eq!(credential_shape(cred, sts, spiffe), want, "{cred}");
        };
        check(
            "hvs.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            CredentialShape::BrokerToken,
        );
        check("hvb.eyJzdWIiOiJ4In0.c2ln", CredentialShape::BatchToken);
        check(&jwt(sts), CredentialShape::AccessToken);
        check(&jwt("http://127.0.0.1:8180/"), CredentialShape::AccessToken);
        check(&jwt(spiffe), CredentialShape::JwtSvid);
        check(
            &jwt("https://accounts.google.com"),
            CredentialShape::Foreign,
        );
        check("database/creds/ro/AbC-12_x", CredentialShape::MaybeLease);
        check("AKIAIOSFODNN7EXAMPLE", CredentialShape::Foreign);
        check(
            "ghp_0123456789abcdefghijklmnopqrstuvwxyz",
            CredentialShape::Foreign,
        );
        check("/etc/passwd", CredentialShape::Foreign);
        check(
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            CredentialShape::Foreign,
        );
        check("postgres://u:p@h/db", CredentialShape::Foreign);
    }

    #[test]
    fn only_credentials_keyless_could_have_issued_leave_the_scanner() {
        assert!(may_be_keyless("hvs.AAAA"));
        assert!(may_be_keyless("hvb.AAAA.BBBB"));
        assert!(may_be_keyless(&jwt("https://anyone.example")));
        assert!(may_be_keyless("rotating/creds/app/xyz"));
        assert!(!may_be_keyless("AKIAIOSFODNN7EXAMPLE"));
        assert!(!may_be_keyless("sk-proj-abcdefghijklmnop"));
        // A PEM header (assembled: this source holds no key block).
        assert!(!may_be_keyless(concat!(
            "-----BEGIN",
            " PRIVATE",
            " KEY-----"
        )));
    }
}
