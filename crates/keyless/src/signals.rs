//! Wiring of `keyless-signals` into the fabric: the STS authorizes SSF
//! calls, ends sessions for the ladder and for received CAEP events, and
//! asks the ladder about each session's risk.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use keyless_signals::caep::CaepEvent;
use keyless_signals::http::{AuthError, Authorizer};
use keyless_signals::ladder::SessionControl;
use keyless_signals::receiver::CaepHandler;
use keyless_signals::receiver::Receiver;
use keyless_signals::risk::RiskEngine;
use keyless_signals::set::VerifiedSet;
use keyless_signals::transmitter::{DELIVERY_PUSH, Owner, SsfError, Transmitter};
use keyless_sts::{Sts, StsError};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::admin::{self, AdminState};

/// Name of the transmitter's SET signing key in the key manager.
pub const SET_KEY_NAME: &str = "ssf-set-signing";
/// SPIFFE ID path under which workloads may obtain `ssf.manage` and
/// `ssf.read` tokens (client credentials with their JWT-SVID).
pub const SSF_CLIENTS_PATH: &str = "/ssf";

/// Bearer tokens of SSF calls: `client_credentials` tokens of our STS.
#[derive(Debug)]
pub struct StsAuthorizer {
    pub sts: Arc<Sts>,
}

#[async_trait::async_trait]
impl Authorizer for StsAuthorizer {
    async fn authorize(&self, bearer: &str, scope: &str) -> Result<String, AuthError> {
        let issuer = self.sts.issuer().to_owned();
        match self.sts.verify_service_token(bearer, scope, &issuer).await {
            Ok(caller) => Ok(caller.subject),
            Err(e @ StsError::InsufficientScope(_)) => {
                Err(AuthError::InsufficientScope(e.to_string()))
            }
            Err(e) => Err(AuthError::InvalidToken(e.to_string())),
        }
    }
}

/// Ends sessions at the STS.
#[derive(Debug)]
pub struct StsSessions {
    pub sts: Arc<Sts>,
}

#[async_trait::async_trait]
impl SessionControl for StsSessions {
    async fn revoke_user_sessions(&self, user_sub: &str, reason: &str) -> Result<u64, String> {
        self.sts
            .revoke_user_sessions(user_sub, reason)
            .await
            .map_err(|e| e.to_string())
    }
}

/// The ladder's levels, as the STS's risk gate.
#[derive(Debug)]
pub struct LadderGate {
    pub engine: Arc<RiskEngine>,
}

impl keyless_sts::RiskGate for LadderGate {
    fn session_level(&self, sid: &str) -> u8 {
        self.engine.session_level(sid)
    }
    fn subject_restricted(&self, user_sub: &str) -> bool {
        self.engine.subject_restricted(user_sub)
    }
}

/// Applies received CAEP events to this fabric's users.
#[derive(Debug)]
pub struct LocalCaep {
    pub sts: Arc<Sts>,
}

impl LocalCaep {
    /// The local user a subject identifier names: by email, or by issuer
    /// and subject when the issuer is us.
    async fn user_of(&self, subject: &Value) -> Option<(String, String)> {
        let simple = |v: &Value| -> Option<(String, String)> {
            let f = v.get("format")?.as_str()?;
            match f {
                "email" => Some(("email".into(), v.get("email")?.as_str()?.to_owned())),
                "iss_sub" if v.get("iss")?.as_str()? == self.sts.issuer() => {
                    Some(("sub".into(), v.get("sub")?.as_str()?.to_owned()))
                }
                _ => None,
            }
        };
        let (kind, value) = match subject.get("format").and_then(Value::as_str) {
            Some("complex") => subject.get("user").and_then(simple)?,
            _ => simple(subject)?,
        };
        let user = if kind == "email" {
            self.sts.find_user(&value).await.ok().flatten()?
        } else {
            self.sts.user_by_id(&value).await.ok().flatten()?
        };
        Some((user.id.clone(), user.email.clone()))
    }
}

#[async_trait::async_trait]
impl CaepHandler for LocalCaep {
    async fn apply(&self, set: &VerifiedSet, event: &CaepEvent) -> Result<String, String> {
        if set.iss == self.sts.issuer() {
            // Our own transmitter: the ladder applied it here before sending.
            return Ok(format!(
                "{}: our own event, applied at the source",
                event.event_type()
            ));
        }
        match event {
            CaepEvent::CredentialChange {
                credential_type,
                change_type,
            } if change_type != "create" => {
                // The credential the user signed in with changed elsewhere:
                // sessions established with it must sign in again.
                let Some((id, email)) = self.user_of(&set.sub_id).await else {
                    return Ok("credential-change: the subject is not a user here".into());
                };
                let n = self
                    .sts
                    .revoke_user_sessions(
                        &id,
                        &format!(
                            "CAEP credential-change ({credential_type} {change_type}) from {}",
                            set.iss
                        ),
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(format!(
                    "credential-change: {n} session(s) of {email} must sign in again"
                ))
            }
            CaepEvent::SessionRevoked => {
                let Some((id, email)) = self.user_of(&set.sub_id).await else {
                    return Ok(
                        "session-revoked: the subject is not a user here; nothing to revoke".into(),
                    );
                };
                let n = self
                    .sts
                    .revoke_user_sessions(&id, &format!("CAEP session-revoked from {}", set.iss))
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(format!(
                    "session-revoked: {n} session(s) of {email} revoked"
                ))
            }
            CaepEvent::Verification { state } => Ok(format!(
                "verification received (state {})",
                state.as_deref().unwrap_or("none")
            )),
            other => Ok(format!("{} recorded", other.event_type())),
        }
    }
}

// --- the self subscription ---

/// Makes Keyless receive from its own transmitter: trusts its own issuer
/// and keeps one push stream (owned by the operator) to its own
/// `/ssf/push`, asking for every CAEP event.
pub async fn subscribe_self(
    transmitter: &Arc<Transmitter>,
    receiver: &Arc<Receiver>,
    public_url: &str,
) -> anyhow::Result<()> {
    let push = format!("{public_url}/ssf/push");
    let existing = transmitter
        .streams(&Owner::Admin)
        .await
        .map_err(|e| anyhow::anyhow!("reading SSF streams: {e}"))?
        .into_iter()
        .find(|s| s.config.delivery.endpoint_url.as_deref() == Some(push.as_str()));
    let stream = match existing {
        Some(s) => s,
        None => transmitter
            .create_stream(
                &Owner::Admin,
                &json!({
                    "delivery": {"method": DELIVERY_PUSH, "endpoint_url": push},
                    "events_requested": keyless_signals::caep::CAEP_EVENTS,
                    "description": "Keyless receiving from itself",
                }),
                Some(receiver.audience().to_owned()),
            )
            .await
            .map_err(|e| anyhow::anyhow!("creating the self stream: {e}"))?,
    };
    receiver
        .subscribe(public_url, "push", Some(&stream.config.stream_id))
        .await
        .map_err(|e| anyhow::anyhow!("subscribing to our own transmitter: {e}"))?;
    Ok(())
}

// --- admin API (admin.sock) ---

fn ssf_error(e: SsfError) -> Response {
    let status = match &e {
        SsfError::BadRequest(_) => StatusCode::BAD_REQUEST,
        SsfError::NotFound(_) => StatusCode::NOT_FOUND,
        SsfError::Conflict(_) => StatusCode::CONFLICT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    admin::error(status, e)
}

pub async fn admin_list_streams(State(s): State<AdminState>) -> Response {
    match s.transmitter.streams(&Owner::Admin).await {
        Ok(list) => {
            let mut out = Vec::new();
            for st in list {
                let mut v = st.to_json();
                let pending = s
                    .transmitter
                    .pending(&Owner::Admin, &st.config.stream_id)
                    .await
                    .unwrap_or(-1);
                if let Some(o) = v.as_object_mut() {
                    o.insert("owner".into(), json!(st.owner));
                    o.insert("status".into(), json!(st.status));
                    o.insert("pending".into(), json!(pending));
                }
                out.push(v);
            }
            Json(out).into_response()
        }
        Err(e) => ssf_error(e),
    }
}

/// `{"config": <stream configuration>, "aud": "..."}`: a stream the
/// operator creates for a receiver that cannot create its own.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateStream {
    config: Value,
    aud: Option<String>,
}

pub async fn admin_create_stream(
    State(s): State<AdminState>,
    Json(req): Json<CreateStream>,
) -> Response {
    match s
        .transmitter
        .create_stream(&Owner::Admin, &req.config, req.aud)
        .await
    {
        Ok(st) => (StatusCode::CREATED, Json(st.to_json())).into_response(),
        Err(e) => ssf_error(e),
    }
}

pub async fn admin_list_subscriptions(State(s): State<AdminState>) -> Response {
    let list: Vec<Value> = s
        .receiver
        .subscriptions()
        .into_iter()
        .map(|x| json!({"issuer": x.issuer, "stream_id": x.stream_id, "delivery": x.delivery}))
        .collect();
    Json(json!({"audience": s.receiver.audience(), "push_endpoint": format!("{}/ssf/push", s.receiver.audience()), "subscriptions": list})).into_response()
}

/// `{"issuer", "delivery": "push"|"poll", "stream_id"?, "token"?}`. With a
/// token (an `ssf.manage` bearer of the transmitter's STS) a stream is
/// created there; a poll subscription also needs it to poll.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subscribe {
    issuer: String,
    #[serde(default = "push_default")]
    delivery: String,
    stream_id: Option<String>,
    token: Option<String>,
}

fn push_default() -> String {
    "push".into()
}

pub async fn admin_subscribe(State(s): State<AdminState>, Json(req): Json<Subscribe>) -> Response {
    let issuer = req.issuer.trim_end_matches('/').to_owned();
    let mut stream_id = req.stream_id.clone();
    let mut poll_endpoint = None;
    if let (Some(token), None) = (&req.token, &stream_id) {
        // Create our stream at the transmitter with its management API.
        let delivery = if req.delivery == "poll" {
            json!({"method": keyless_signals::transmitter::DELIVERY_POLL})
        } else {
            json!({"method": DELIVERY_PUSH, "endpoint_url": format!("{}/ssf/push", s.receiver.audience())})
        };
        let body =
            json!({"delivery": delivery, "events_requested": keyless_signals::caep::CAEP_EVENTS});
        let created = reqwest::Client::new()
            .post(format!("{issuer}/ssf/stream"))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await;
        match created {
            Ok(r) if r.status() == reqwest::StatusCode::CREATED => {
                let v: Value = r.json().await.unwrap_or(Value::Null);
                stream_id = v
                    .get("stream_id")
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                poll_endpoint = v
                    .pointer("/delivery/endpoint_url")
                    .and_then(Value::as_str)
                    .map(str::to_owned);
            }
            Ok(r) => {
                let status = r.status();
                let text = r.text().await.unwrap_or_default();
                return admin::error(
                    StatusCode::BAD_GATEWAY,
                    format!("the transmitter refused the stream: HTTP {status}: {text}"),
                );
            }
            Err(e) => {
                return admin::error(
                    StatusCode::BAD_GATEWAY,
                    format!("cannot reach the transmitter at {issuer}: {e}"),
                );
            }
        }
    }
    if req.delivery == "poll" && req.token.is_none() {
        return admin::error(
            StatusCode::BAD_REQUEST,
            "a poll subscription needs --token (an ssf.read bearer of the transmitter's STS)",
        );
    }
    match s
        .receiver
        .subscribe(&issuer, &req.delivery, stream_id.as_deref())
        .await
    {
        Ok(sub) => {
            if req.delivery == "poll"
                && let Some(token) = &req.token
            {
                let endpoint = poll_endpoint
                    .unwrap_or_else(|| format!("{issuer}/ssf/poll?stream_id={}", sub.stream_id));
                s.receiver.spawn_poller(endpoint, token.clone());
            }
            Json(json!({"issuer": sub.issuer, "stream_id": sub.stream_id, "delivery": sub.delivery, "audience": s.receiver.audience()})).into_response()
        }
        Err(e) => admin::error(StatusCode::BAD_REQUEST, e),
    }
}

pub async fn admin_reviews(State(s): State<AdminState>) -> Response {
    match s.risk.reviews(false).await {
        Ok(list) => Json(list).into_response(),
        Err(e) => admin::error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

pub async fn admin_resolve_review(
    State(s): State<AdminState>,
    UrlPath(id): UrlPath<String>,
) -> Response {
    match s.risk.resolve_review(&id).await {
        Ok(r) => Json(r).into_response(),
        Err(e) => admin::error(StatusCode::NOT_FOUND, e),
    }
}

// --- STS anomalies ---

/// Feeds the ladder the STS's own policy denials: an agent calling
/// `/oauth2/token` itself and being refused is an anomaly like a refused
/// call through the gateway (which reports its own). Read from the audit
/// log's live bus, so the STS does not depend on the ladder.
pub fn spawn_sts_feed(
    audit: Arc<keyless_audit::AuditLog>,
    ladder: Arc<keyless_signals::ladder::Ladder>,
    sts: Arc<Sts>,
    gateway_client_id: &'static str,
) -> tokio::task::JoinHandle<()> {
    let mut bus = audit.subscribe();
    tokio::spawn(async move {
        loop {
            let entry = match bus.recv().await {
                Ok(e) => e,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "risk feed: the audit bus ran ahead");
                    continue;
                }
                Err(_) => return,
            };
            let e = &entry.event;
            let detail = |k: &str| e.detail.get(k).and_then(Value::as_str);
            if e.kind != keyless_sts::kinds::TOKEN_EXCHANGE_DENIED
                || detail("error") != Some("access_denied")
                || detail("client_id") == Some(gateway_client_id)
                || e.reason
                    .as_deref()
                    .is_some_and(|r| r.starts_with("risk ladder"))
            {
                continue;
            }
            let (Some(label), Some(sid)) = (&e.user, &e.session) else {
                continue;
            };
            let user = match sts.find_user(label).await {
                Ok(Some(u)) => u,
                _ => match sts.user_by_id(label).await {
                    Ok(Some(u)) => u,
                    _ => continue,
                },
            };
            let mut obs = keyless_signals::risk::Observation::call(
                user.id.clone(),
                sid.clone(),
                e.tool.clone().unwrap_or_else(|| "oauth2/token".into()),
            );
            obs.user_email = Some(user.email.clone());
            obs.kind = keyless_signals::risk::ObservationKind::PolicyDenied {
                reason: e.reason.clone().unwrap_or_default(),
            };
            if let Err(err) = ladder.observe(&obs).await {
                tracing::error!(error = %err, "risk feed: observing an STS denial failed");
            }
        }
    })
}
