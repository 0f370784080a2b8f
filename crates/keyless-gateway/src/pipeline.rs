//! The per-call pipeline, in order: authenticate agent and user (session
//! still live) → tool lookup and pin → safety limits → tier → approval →
//! token exchange at the STS with the call's RAR (tier 4 dies there with
//! the policy's reason) → the upstream call with the single-use OBO token or
//! an injected static credential → the result.
//!
//! Events: `tool.authorized` (authentication, pin, limits and approval,
//! with their durations), the STS's `token_exchange.*`, and `tool.called`
//! (the upstream call and its duration); a refusal at any step is one
//! `tool.denied` event naming the step. Approvals record their own
//! `approval.*` events.

use std::sync::Arc;
use std::time::Instant;

use keyless_audit::{Event, EventSink, Outcome};
use keyless_identity::Identity;
use keyless_sts::{
    AccessTokenClaims, AuthenticatedClient, ExchangeContext, Sts, TokenExchangeRequest,
};
use rmcp::model::{CallToolResult, ContentBlock, JsonObject, Tool};
use serde_json::{Value, json};

use crate::approvals::{ApprovalRequest, Approvals, Gate};
use crate::catalog::{Catalog, ToolStatus};
use crate::config::{self, GatewayConfig, UpstreamAuth};
use crate::limits::Limiter;
use crate::upstream::Upstreams;
use keyless_signals::ladder::{Ladder, Verdict};
use keyless_signals::risk::{Observation, ObservationKind};

/// The resource-server audience under which calls to upstreams that take
/// no OBO token are decided (register it at the STS).
pub const GATEWAY_AUDIENCE: &str = "keyless-gateway";

/// The header carrying the user's access token.
pub const SUBJECT_TOKEN_HEADER: &str = "x-keyless-subject-token";

/// Who is calling: the agent (by its JWT-SVID) on behalf of the user (by
/// their access token). Both tokens stay in the gateway: they go to the
/// STS as subject and actor, never upstream.
#[derive(Debug, Clone)]
pub struct Caller {
    pub agent: String,
    pub agent_token: String,
    pub user: Arc<AccessTokenClaims>,
    pub user_token: String,
    pub auth_ms: f64,
}

impl Caller {
    pub fn user_label(&self) -> String {
        self.user.user_label().to_owned()
    }
}

/// Why a caller was not let in (mapped to 401/403 by `http.rs`).
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("{0}")]
    MissingAgent(String),
    #[error("{0}")]
    InvalidAgent(String),
    #[error("{0}")]
    MissingUser(String),
    #[error("{0}")]
    InvalidUser(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Internal(String),
}

/// A call refused or failed before or at the upstream: the caller gets a
/// tool error result with this text; the upstream was not called unless
/// `step` is `upstream`.
#[derive(Debug)]
pub struct Refusal {
    pub step: &'static str,
    pub error: &'static str,
    pub reason: String,
}

/// Everything the pipeline needs.
#[derive(Debug)]
pub struct Gateway {
    pub(crate) config: GatewayConfig,
    canonical_uri: String,
    base_url: String,
    resource_metadata_url: String,
    sts: Arc<Sts>,
    identity: Arc<Identity>,
    events: Arc<dyn EventSink>,
    catalog: Arc<Catalog>,
    approvals: Arc<Approvals>,
    upstreams: Upstreams,
    limiter: Limiter,
    client: AuthenticatedClient,
    secrets: Option<Arc<keyless_secrets::Secrets>>,
    /// The risk ladder, when signals are wired (`keyless up` always does).
    ladder: std::sync::OnceLock<Arc<Ladder>>,
}

/// Construction parameters of [`Gateway::new`].
#[derive(Debug)]
pub struct GatewayParts {
    pub config: GatewayConfig,
    /// `http://ADDR/mcp`: the audience agents' JWT-SVIDs must carry.
    pub canonical_uri: String,
    /// Base URL of the listener (for the RFC 9728 metadata URL).
    pub base_url: String,
    pub sts: Arc<Sts>,
    pub identity: Arc<Identity>,
    pub events: Arc<dyn EventSink>,
    pub catalog: Arc<Catalog>,
    pub approvals: Arc<Approvals>,
    pub upstreams: Upstreams,
    /// The gateway as the STS's confidential client.
    pub client: AuthenticatedClient,
    /// For upstreams with a static credential.
    pub secrets: Option<Arc<keyless_secrets::Secrets>>,
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

impl Gateway {
    pub fn new(p: GatewayParts) -> Self {
        let limiter = Limiter::new(p.config.limits.clone());
        Self {
            limiter,
            resource_metadata_url: format!(
                "{}/.well-known/oauth-protected-resource/mcp",
                p.base_url.trim_end_matches('/')
            ),
            config: p.config,
            canonical_uri: p.canonical_uri,
            base_url: p.base_url.trim_end_matches('/').to_owned(),
            sts: p.sts,
            identity: p.identity,
            events: p.events,
            catalog: p.catalog,
            approvals: p.approvals,
            upstreams: p.upstreams,
            client: p.client,
            secrets: p.secrets,
            ladder: std::sync::OnceLock::new(),
        }
    }

    /// Feeds every call to the risk ladder from now on (set once).
    pub fn set_ladder(&self, ladder: Arc<Ladder>) {
        let _ = self.ladder.set(ladder);
    }

    /// Tells the ladder about one observation; `None` when no ladder is
    /// wired or it failed (a broken ladder is logged, it does not stop calls:
    /// the STS's own checks still hold).
    async fn observe(&self, obs: &Observation) -> Option<Verdict> {
        let ladder = self.ladder.get()?;
        match ladder.observe(obs).await {
            Ok(v) => Some(v),
            Err(e) => {
                tracing::error!(error = %e, "risk ladder: observing a call failed");
                None
            }
        }
    }

    pub fn canonical_uri(&self) -> &str {
        &self.canonical_uri
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    pub fn resource_metadata_url(&self) -> &str {
        &self.resource_metadata_url
    }

    pub fn sts(&self) -> &Arc<Sts> {
        &self.sts
    }

    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }

    pub fn approvals(&self) -> &Arc<Approvals> {
        &self.approvals
    }

    pub fn upstreams(&self) -> &Upstreams {
        &self.upstreams
    }

    /// The configured tier of `tool` (namespaced).
    pub fn tier(&self, tool: &str) -> u8 {
        self.config.tier(tool)
    }

    pub fn max_argument_bytes(&self) -> usize {
        self.limiter.max_argument_bytes()
    }

    /// Authenticates the agent (`Authorization: Bearer <JWT-SVID>` for our
    /// canonical URI) and the user (`X-Keyless-Subject-Token`, an access
    /// token of ours whose session is still live).
    pub async fn authenticate(
        &self,
        authorization: Option<&str>,
        subject_token: Option<&str>,
    ) -> Result<Caller, AuthError> {
        let started = Instant::now();
        let bearer = authorization
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                AuthError::MissingAgent(
                    "authenticate as an agent: Authorization: Bearer <JWT-SVID for this gateway>"
                        .into(),
                )
            })?;
        let svid = self
            .identity
            .validate_jwt_svid(bearer, &self.canonical_uri)
            .map_err(|e| AuthError::InvalidAgent(format!("agent JWT-SVID: {e}")))?;
        let user_token = subject_token
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                AuthError::MissingUser(format!(
                    "the user's access token is required in {SUBJECT_TOKEN_HEADER}"
                ))
            })?;
        let claims = self
            .sts
            .verify_access_token(user_token, None)
            .await
            .map_err(|e| AuthError::InvalidUser(format!("subject token: {e}")))?;
        if claims.is_service() {
            return Err(AuthError::InvalidUser(
                "subject token: a service's client-credentials token does not speak for a user"
                    .into(),
            ));
        }
        let live = self
            .sts
            .token_live(&claims)
            .await
            .map_err(|e| AuthError::Internal(e.to_string()))?;
        if !live {
            return Err(AuthError::InvalidUser(
                "subject token: the user's session ended or the token was revoked".into(),
            ));
        }
        Ok(Caller {
            agent: svid.spiffe_id.to_string(),
            agent_token: bearer.to_owned(),
            user: Arc::new(claims),
            user_token: user_token.to_owned(),
            auth_ms: ms(started),
        })
    }

    /// The tools a caller may see: approved pins, not blocked by tier.
    pub fn visible_tools(&self, _caller: &Caller) -> Vec<Tool> {
        self.upstreams
            .tools()
            .into_iter()
            .filter(|t| self.catalog.status(&t.name) == Some(ToolStatus::Approved))
            .filter(|t| self.config.tier(&t.name) < 4)
            .map(|t| {
                let schema = match t.input_schema {
                    Value::Object(m) => m,
                    _ => JsonObject::new(),
                };
                Tool::new(t.name, t.description, Arc::new(schema))
            })
            .collect()
    }

    /// Runs one `tools/call`. `Ok` is the upstream's result; `Err` a
    /// refusal or failure (already recorded as an event).
    pub async fn call(
        &self,
        caller: &Caller,
        name: &str,
        arguments: JsonObject,
    ) -> Result<CallToolResult, Refusal> {
        let started = Instant::now();
        let correlation = uuid::Uuid::new_v4().to_string();
        let tier = self.config.tier(name);
        let base = |kind: &str, outcome: Outcome| {
            let mut e = Event::new(kind, outcome)
                .user(caller.user_label())
                .agent(caller.agent.clone())
                .tool(name.to_owned());
            e.tier = Some(tier);
            e.session = caller.user.sid.clone();
            e.correlation_id = Some(correlation.clone());
            e
        };
        let refuse = |step: &'static str, error: &'static str, reason: String| async move {
            let mut e = base("tool.denied", Outcome::Denied)
                .reason(reason.clone())
                .detail("step", step);
            e.duration_ms = Some(ms(started));
            // The refusal must be on record; if it cannot be, say so.
            let reason = match self.events.record(e).await {
                Ok(_) => reason,
                Err(err) => format!("{reason} ({err})"),
            };
            Refusal {
                step,
                error,
                reason,
            }
        };

        // Tool lookup and pin. Unknown and unapproved tools answer alike.
        let Some((server, bare)) = name.split_once('.') else {
            return Err(refuse("lookup", "unknown_tool", format!("unknown tool `{name}`")).await);
        };
        let Some(upstream) = self.upstreams.config(server).cloned() else {
            return Err(refuse("lookup", "unknown_tool", format!("unknown tool `{name}`")).await);
        };
        match self.catalog.status(name) {
            Some(ToolStatus::Approved) => {}
            Some(ToolStatus::Blocked { reason }) => {
                let why = format!(
                    "tool `{name}` is blocked: its definition is {} since it was pinned; an operator must approve it (`keyless tools approve {name}`)",
                    match reason {
                        crate::catalog::BlockReason::New => "new",
                        crate::catalog::BlockReason::Changed => "changed",
                        crate::catalog::BlockReason::Vanished => "gone",
                    }
                );
                return Err(refuse("pin", "tool_blocked", why).await);
            }
            None => {
                return Err(
                    refuse("lookup", "unknown_tool", format!("unknown tool `{name}`")).await,
                );
            }
        }

        // Safety limits.
        let args_value = Value::Object(arguments);
        // The log's own canonical form: key order never changes the hash.
        let Ok(args_text) = keyless_audit::canonical::to_canonical_json(&args_value) else {
            return Err(refuse(
                "lookup",
                "invalid_arguments",
                "arguments are not representable as JSON".into(),
            )
            .await);
        };
        if args_text.len() > self.limiter.max_argument_bytes() {
            return Err(refuse(
                "limits",
                "arguments_too_large",
                format!(
                    "arguments of {} bytes exceed the limit of {}",
                    args_text.len(),
                    self.limiter.max_argument_bytes()
                ),
            )
            .await);
        }
        let args_sha256 = hex::encode(aws_lc_rs::digest::digest(
            &aws_lc_rs::digest::SHA256,
            args_text.as_bytes(),
        ));
        let call_key = format!(
            "{}\n{}\n{name}\n{args_sha256}",
            caller.agent, caller.user.sub
        );
        if let Err(trip) = self
            .limiter
            .check(&caller.agent, &caller.user.sub, &call_key)
        {
            let mut e = base("risk.signal", Outcome::Denied)
                .reason(trip.to_string())
                .detail("signal", trip.kind());
            e.duration_ms = Some(0.0);
            let _ = self.events.record_queued(e).await;
            if trip.kind() == "loop" {
                let mut obs = observation(caller, name, None);
                obs.kind = ObservationKind::LoopBreaker;
                self.observe(&obs).await;
            }
            return Err(refuse("limits", "limit_exceeded", trip.to_string()).await);
        }
        let Value::Object(arguments) = args_value else {
            return Err(refuse(
                "lookup",
                "invalid_arguments",
                "arguments must be an object".into(),
            )
            .await);
        };

        // The RAR of this exact call.
        let rar = config::render_rar(
            self.config.tools.get(name),
            name,
            bare,
            tier,
            &arguments,
            &args_sha256,
        );
        // Checked against the registered types before anyone is asked to
        // approve it: a call the STS would refuse never bothers a human.
        let rar_summary = match self.sts.rar().validate(std::slice::from_ref(&rar)) {
            Ok(details) => details.first().map(|d| d.summary.clone()),
            Err(e) => {
                return Err(refuse("rar", "invalid_authorization_details", e.to_string()).await);
            }
        };

        // The risk ladder sees the call before anyone approves it.
        let obs = observation(caller, name, Some(&rar));
        let verdict = self.observe(&obs).await;

        // Human approval (tier 2: once per session; tier 3: every call).
        let approval_started = Instant::now();
        let mut approvals = 0u32;
        if (2..=3).contains(&tier) {
            let Some(session) = caller.user.sid.clone() else {
                return Err(refuse(
                    "approval",
                    "approval_required",
                    "writes need a user session to approve them; the subject token has no `sid`"
                        .into(),
                )
                .await);
            };
            let req = ApprovalRequest {
                user_sub: caller.user.sub.clone(),
                user_email: caller.user.email.clone(),
                session_id: session,
                agent: caller.agent.clone(),
                tool: name.to_owned(),
                tier,
                args_sha256: args_sha256.clone(),
                arguments: Some(args_text.clone()),
                summary: rar_summary
                    .clone()
                    .unwrap_or_else(|| format!("Call {name}")),
                correlation_id: Some(correlation.clone()),
            };
            match self.approvals.check(&req).await {
                Ok(Gate::NotNeeded) => {}
                Ok(Gate::Cached) | Ok(Gate::Granted { .. }) => approvals = 1,
                Ok(Gate::Pending { approval_id }) => {
                    match self.approvals.wait(&approval_id).await {
                        Ok(()) => approvals = 1,
                        Err(e) => {
                            return Err(refuse("approval", "approval_denied", e.to_string()).await);
                        }
                    }
                }
                Err(e) => return Err(refuse("approval", "approval_error", e.to_string()).await),
            }
        }
        let approval_ms = ms(approval_started);
        {
            let mut e = base("tool.authorized", Outcome::Success)
                .detail("auth_ms", caller.auth_ms)
                .detail("approval_ms", approval_ms);
            e.rar_type = rar.get("type").and_then(Value::as_str).map(str::to_owned);
            e.rar_summary = rar_summary.clone();
            e.duration_ms = Some(ms(started) + caller.auth_ms);
            if self.events.record_queued(e).await.is_err() {
                return Err(Refusal {
                    step: "audit",
                    error: "audit_unavailable",
                    reason: "the audit log is unavailable; no call is made without a record".into(),
                });
            }
        }

        // The decision: an RFC 8693 exchange for every call, whatever the
        // upstream takes as credential, so Cedar, consent and `may_act`
        // decide every call (tier 4 dies here). OAuth upstreams get the
        // single-use token; the others' calls are decided under the
        // gateway's own audience and the token is not used.
        let audience = match upstream.auth {
            UpstreamAuth::Oauth => upstream.audience.clone().unwrap_or_default(),
            _ => GATEWAY_AUDIENCE.to_owned(),
        };
        let req = TokenExchangeRequest {
            grant_type: keyless_sts::GRANT_TYPE_TOKEN_EXCHANGE.into(),
            subject_token: Some(caller.user_token.clone()),
            subject_token_type: Some(keyless_sts::TOKEN_TYPE_ACCESS_TOKEN.into()),
            actor_token: Some(caller.agent_token.clone()),
            actor_token_type: Some(keyless_sts::TOKEN_TYPE_JWT.into()),
            audience: vec![audience],
            authorization_details: Some(json!([rar]).to_string()),
            ..TokenExchangeRequest::default()
        };
        let ctx = ExchangeContext {
            approvals,
            correlation_id: Some(correlation.clone()),
            ..ExchangeContext::default()
        };
        let token = match self.sts.exchange(&req, Some(&self.client), &ctx).await {
            Ok(resp) => resp.access_token,
            Err(e) => {
                // A refusal because the ladder restricted the subject (W4)
                // is the ladder's own effect, not a new anomaly.
                // So is a refusal of a call the ladder already counted: one
                // anomalous call is one observation.
                let counted = verdict
                    .as_ref()
                    .is_some_and(|v| v.assessment.level >= 4 || !v.assessment.anomalies.is_empty());
                if e.oauth_code() == "access_denied" && !counted {
                    let mut denied = obs.clone();
                    denied.kind = ObservationKind::PolicyDenied {
                        reason: e.to_string(),
                    };
                    self.observe(&denied).await;
                }
                return Err(refuse("token_exchange", e.oauth_code(), e.to_string()).await);
            }
        };
        let credential = match upstream.auth {
            UpstreamAuth::Oauth => Some(format!("Authorization: Bearer {token}")),
            UpstreamAuth::Static => match self.static_credential(&upstream).await {
                Ok(v) => Some(v),
                Err(reason) => {
                    return Err(refuse("credential", "credential_unavailable", reason).await);
                }
            },
            UpstreamAuth::None => None,
        };

        // The upstream call.
        let upstream_started = Instant::now();
        let result = self
            .upstreams
            .call(server, bare, arguments, credential)
            .await;
        let upstream_ms = ms(upstream_started);
        let (outcome, reason) = match &result {
            Ok(r) if r.is_error == Some(true) => (Outcome::Error, Some(first_text(r))),
            Ok(_) => (Outcome::Success, None),
            Err(e) => (Outcome::Error, Some(e.to_string())),
        };
        let mut e = base("tool.called", outcome).detail("upstream_ms", upstream_ms);
        if let Some(r) = &reason {
            e = e.reason(r.clone());
        }
        e.rar_summary = rar_summary;
        e.duration_ms = Some(ms(started) + caller.auth_ms);
        let _ = self.events.record_queued(e).await;
        if outcome == Outcome::Success
            && let Some(ladder) = self.ladder.get()
            && let Err(e) = ladder.learn(&obs).await
        {
            tracing::warn!(error = %e, "risk ladder: learning from a call failed");
        }
        let caution = verdict.and_then(|v| v.caution);
        let result = result.map(|mut r| {
            if let Some(c) = caution {
                r.content.push(ContentBlock::text(c));
            }
            r
        });
        result.map_err(|e| Refusal {
            step: "upstream",
            error: "upstream_error",
            reason: e.to_string(),
        })
    }

    async fn static_credential(&self, upstream: &config::UpstreamConfig) -> Result<String, String> {
        let (Some(secrets), Some(cred)) = (&self.secrets, &upstream.static_credential) else {
            return Err(format!(
                "upstream `{}` has no credential source",
                upstream.name
            ));
        };
        // The gateway reads as itself: the read is a `secret.read` event
        // naming the gateway's SPIFFE ID.
        let now = keyless_store::now_millis();
        let reader = keyless_secrets::TokenInfo {
            token: String::new(),
            token_type: keyless_secrets::TokenType::Batch,
            accessor: String::new(),
            policies: Vec::new(),
            meta: serde_json::Map::new(),
            identity: self.client.spiffe_id.clone().unwrap_or_default(),
            role: "keyless-gateway".into(),
            created_at: now,
            expires_at: now,
            max_expires_at: now,
            ttl_ms: 0,
            num_uses: 0,
        };
        let read = secrets
            .kv_read(&reader, &cred.path, None)
            .await
            .map_err(|e| format!("credential for `{}`: {e}", upstream.name))?;
        let value = read
            .and_then(|r| r.data)
            .and_then(|d| d.get(&cred.key).and_then(Value::as_str).map(str::to_owned))
            .ok_or_else(|| {
                format!(
                    "credential for `{}`: no key `{}` at `{}`",
                    upstream.name, cred.key, cred.path
                )
            })?;
        Ok(format!("{}: {}{}", cred.header, cred.prefix, value))
    }
}

/// The first text content of a result (its error message).
/// What the risk ladder needs to know of a call: who, which session, and
/// from its RAR detail the amount, destination and whose data it touches.
fn observation(caller: &Caller, tool: &str, rar: Option<&Value>) -> Observation {
    let get = |k: &str| rar.and_then(|r| r.get(k));
    let text = |k: &str| get(k).and_then(Value::as_str).map(str::to_owned);
    let rar_type = text("type").unwrap_or_default();
    let amount = get("amount")
        .and_then(|a| match a {
            Value::Number(n) => n.as_f64(),
            Value::String(s) => s.parse::<f64>().ok(),
            _ => None,
        })
        .map(|a| (a, text("currency").unwrap_or_else(|| "USD".into())));
    // Reading or administering another user is touching their data;
    // creating a user or adding one to a group is not.
    let target_user = matches!(rar_type.as_str(), "directory_read" | "directory_admin")
        .then(|| text("identifier"))
        .flatten()
        .filter(|s| s.contains('@'));
    Observation {
        user_sub: caller.user.sub.clone(),
        user_email: caller.user.email.clone(),
        session_id: caller
            .user
            .sid
            .clone()
            .unwrap_or_else(|| format!("token:{}", caller.user.jti)),
        tool: tool.to_owned(),
        admin: rar_type == "directory_admin",
        amount,
        destination: text("destination"),
        target_user,
        kind: ObservationKind::Call,
    }
}

fn first_text(r: &CallToolResult) -> String {
    r.content
        .iter()
        .find_map(|c| c.as_text().map(|t| t.text.clone()))
        .unwrap_or_else(|| "tool error".into())
}

/// A refusal as the tool result the caller (often an LLM) reads.
pub fn refusal_result(r: &Refusal) -> CallToolResult {
    let mut result = CallToolResult::error(vec![ContentBlock::text(format!(
        "Keyless refused this call ({}): {}",
        r.step, r.reason
    ))]);
    result.structured_content = Some(json!({
        "error": r.error,
        "step": r.step,
        "reason": r.reason,
    }));
    result
}
