//! The per-call pipeline, in order: authenticate agent (JWT-SVID bearer, or
//! the X509-SVID of the mTLS connection) and user (session still live) →
//! tool lookup (a tool the caller may not see is unknown: `visibility.rs`)
//! and pin → safety limits → tier → approval (`/api/approvals`, and MCP
//! elicitation when the client offers it) →
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

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures::future::BoxFuture;
use keyless_audit::{Event, EventSink, Outcome};
use keyless_identity::{Identity, PeerSvid};
use keyless_sts::{
    AccessTokenClaims, AuthenticatedClient, ExchangeContext, Sts, TokenExchangeRequest,
};
use rmcp::model::{CallToolResult, ContentBlock, JsonObject, Tool};
use serde_json::{Value, json};

use crate::approvals::{ApprovalError, ApprovalRequest, Approvals, Gate};
use crate::catalog::{Catalog, ToolStatus};
use crate::config::{self, GatewayConfig, UpstreamAuth};
use crate::limits::Limiter;
use crate::upstream::Upstreams;
use crate::visibility::{Asker, ToolQuestion, ToolVisibility, VisibilityCache};
use keyless_signals::ladder::{Ladder, Verdict};
use keyless_signals::risk::{Observation, ObservationKind};

/// The resource-server audience under which calls to upstreams that take
/// no OBO token are decided (register it at the STS).
pub const GATEWAY_AUDIENCE: &str = "keyless-gateway";

/// The header carrying the user's access token.
pub const SUBJECT_TOKEN_HEADER: &str = "x-keyless-subject-token";

/// How the agent proved who it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentCredential {
    /// `Authorization: Bearer <JWT-SVID>` for our canonical URI; relayed
    /// to the STS as the actor token.
    JwtSvid(String),
    /// The X509-SVID leaf (DER) the mTLS listener verified in the
    /// handshake; the STS gets it as an attested actor token (see
    /// `keyless_sts::TOKEN_TYPE_ATTESTED_X509_SVID`).
    X509Svid(Vec<u8>),
}

impl AgentCredential {
    /// The name events use.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::JwtSvid(_) => "jwt-svid",
            Self::X509Svid(_) => "x509-svid",
        }
    }

    /// The actor token and its type for the exchange.
    fn actor_token(&self) -> (String, &'static str) {
        match self {
            Self::JwtSvid(t) => (t.clone(), keyless_sts::TOKEN_TYPE_JWT),
            Self::X509Svid(der) => (
                URL_SAFE_NO_PAD.encode(der),
                keyless_sts::TOKEN_TYPE_ATTESTED_X509_SVID,
            ),
        }
    }
}

/// Who is calling: the agent (by its JWT-SVID or X509-SVID) on behalf of
/// the user (by their access token). The credentials stay in the gateway:
/// they go to the STS as subject and actor, never upstream.
#[derive(Debug, Clone)]
pub struct Caller {
    pub agent: String,
    pub credential: AgentCredential,
    pub user: Arc<AccessTokenClaims>,
    pub user_token: String,
    pub auth_ms: f64,
}

impl Caller {
    pub fn user_label(&self) -> String {
        self.user.user_label().to_owned()
    }
}

/// A call waiting for the user's approval, as the MCP client is asked.
#[derive(Debug, Clone)]
pub struct ApprovalQuestion {
    pub approval_id: String,
    pub tool: String,
    pub tier: u8,
    /// One human line (the RAR summary).
    pub summary: String,
    /// The call's canonical arguments.
    pub arguments: String,
}

/// Asks the user, through the MCP client, to decide a waiting call (MCP
/// elicitation, `mcp.rs`). `Some(true)` approves, `Some(false)` denies,
/// `None` is no answer (the client failed or gave up): the call keeps
/// waiting for `/api/approvals`.
pub trait ApprovalPrompt: Send + Sync {
    fn ask<'a>(&'a self, question: &'a ApprovalQuestion) -> BoxFuture<'a, Option<bool>>;
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
    visibility: VisibilityCache,
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
            visibility: VisibilityCache::default(),
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

    /// Whether waiting approvals are also offered to MCP clients by
    /// elicitation (`[approvals] elicitation`).
    pub fn elicitation_enabled(&self) -> bool {
        self.config.approvals.elicitation
    }

    pub fn max_argument_bytes(&self) -> usize {
        self.limiter.max_argument_bytes()
    }

    /// Authenticates the agent and the user (`X-Keyless-Subject-Token`, an
    /// access token of ours whose session is still live). The agent is
    /// `Authorization: Bearer <JWT-SVID>` for our canonical URI, or `peer`:
    /// the X509-SVID the mTLS listener verified for this connection (only
    /// that listener sets it). When both come they must name the same
    /// agent: one request speaks for one agent.
    pub async fn authenticate(
        &self,
        authorization: Option<&str>,
        subject_token: Option<&str>,
        peer: Option<&PeerSvid>,
    ) -> Result<Caller, AuthError> {
        let started = Instant::now();
        let bearer = authorization
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|t| !t.is_empty());
        let (agent, credential) = match (bearer, peer) {
            (Some(bearer), peer) => {
                let svid = self
                    .identity
                    .validate_jwt_svid(bearer, &self.canonical_uri)
                    .map_err(|e| AuthError::InvalidAgent(format!("agent JWT-SVID: {e}")))?;
                if let Some(p) = peer
                    && p.spiffe_id != svid.spiffe_id
                {
                    return Err(AuthError::InvalidAgent(format!(
                        "the JWT-SVID names `{}` but the TLS client certificate is `{}`",
                        svid.spiffe_id, p.spiffe_id
                    )));
                }
                (
                    svid.spiffe_id.to_string(),
                    AgentCredential::JwtSvid(bearer.to_owned()),
                )
            }
            (None, Some(p)) => (
                p.spiffe_id.to_string(),
                AgentCredential::X509Svid(p.leaf_der.clone()),
            ),
            (None, None) => {
                return Err(AuthError::MissingAgent(
                    "authenticate as an agent: Authorization: Bearer <JWT-SVID for this gateway>, \
                     or an X509-SVID client certificate on the mTLS listener"
                        .into(),
                ));
            }
        };
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
            agent,
            credential,
            user: Arc::new(claims),
            user_token: user_token.to_owned(),
            auth_ms: ms(started),
        })
    }

    /// Whether `caller` may see `tool` (namespaced, of a known upstream):
    /// see `visibility.rs`.
    pub fn visibility(&self, caller: &Caller, tool: &str) -> ToolVisibility {
        let tier = self.config.tier(tool);
        if tier >= 4 {
            return ToolVisibility::HiddenByTier;
        }
        let policies = self.sts.policies().current();
        let now = keyless_store::now_millis() / 1000;
        let user_label = caller.user_label();
        let asker = Asker {
            agent: &caller.agent,
            user_sub: &caller.user.sub,
            user_label: &user_label,
            session: caller.user.sid.as_deref(),
            session_age_secs: now
                .saturating_sub(caller.user.auth_time.unwrap_or(caller.user.iat))
                .max(0),
            now,
        };
        self.visibility.verdict(&policies, &asker, tool, || {
            let (server, bare) = tool.split_once('.')?;
            let upstream = self.upstreams.config(server)?;
            let rar = config::render_rar(
                self.config.tools.get(tool),
                tool,
                bare,
                tier,
                &JsonObject::new(),
                "",
            );
            let detail = self.sts.rar().preview(&rar)?;
            Some(ToolQuestion {
                rar_type: detail.rar_type,
                actions: detail.actions,
                tier: detail.tier,
                audience: exchange_audience(upstream),
            })
        })
    }

    /// The tools a caller may see: approved pins, not tier 4, and ones the
    /// policy in force could allow this agent and user (`visibility.rs`).
    pub fn visible_tools(&self, caller: &Caller) -> Vec<Tool> {
        self.upstreams
            .tools()
            .into_iter()
            .filter(|t| self.catalog.status(&t.name) == Some(ToolStatus::Approved))
            .filter(|t| self.visibility(caller, &t.name) == ToolVisibility::Visible)
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
    /// refusal or failure (already recorded as an event). `prompt`, when
    /// the MCP client can be asked, also offers a waiting approval to it.
    pub async fn call(
        &self,
        caller: &Caller,
        name: &str,
        arguments: JsonObject,
        prompt: Option<&dyn ApprovalPrompt>,
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
        // A tool the caller may not see answers like an unknown one (the
        // same step, error and text); only the audit log says why.
        if self.catalog.status(name).is_some()
            && let ToolVisibility::HiddenByPolicy { policies, reason } =
                self.visibility(caller, name)
        {
            let text = format!("unknown tool `{name}`");
            let mut e = base("tool.denied", Outcome::Denied)
                .reason(text.clone())
                .detail("step", "lookup")
                .detail("hidden_by_policy", policies)
                .detail("policy_reason", reason);
            e.duration_ms = Some(ms(started));
            let text = match self.events.record(e).await {
                Ok(_) => text,
                Err(err) => format!("{text} ({err})"),
            };
            return Err(Refusal {
                step: "lookup",
                error: "unknown_tool",
                reason: text,
            });
        }
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
                    let question = ApprovalQuestion {
                        approval_id: approval_id.clone(),
                        tool: name.to_owned(),
                        tier,
                        summary: req.summary.clone(),
                        arguments: args_text.clone(),
                    };
                    match self.wait_for_approval(caller, &question, prompt).await {
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
                .detail("agent_auth", caller.credential.kind())
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
        // The agent's JWT-SVID is relayed as is; an agent that came by
        // mTLS is vouched for by the gateway as an actor attester.
        let audience = exchange_audience(&upstream);
        let (actor_token, actor_token_type) = caller.credential.actor_token();
        let req = TokenExchangeRequest {
            grant_type: keyless_sts::GRANT_TYPE_TOKEN_EXCHANGE.into(),
            subject_token: Some(caller.user_token.clone()),
            subject_token_type: Some(keyless_sts::TOKEN_TYPE_ACCESS_TOKEN.into()),
            actor_token: Some(actor_token),
            actor_token_type: Some(actor_token_type.into()),
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

    /// Waits for the decision of a pending approval. With a `prompt`, the
    /// question also goes to the MCP client; its answer is recorded on the
    /// same approval record `/api/approvals` decides (by the same user),
    /// and whichever decision lands first is the one the call gets.
    async fn wait_for_approval(
        &self,
        caller: &Caller,
        question: &ApprovalQuestion,
        prompt: Option<&dyn ApprovalPrompt>,
    ) -> Result<(), ApprovalError> {
        let Some(prompt) = prompt else {
            return self.approvals.wait(&question.approval_id).await;
        };
        // The first wait is dropped as soon as the client answers: kept
        // suspended, it could hold a store connection mid-read while the
        // answer is written (with SQLite's one writer connection, a deadlock
        // until the pool's acquire timeout).
        let answer = tokio::select! {
            decided = self.approvals.wait(&question.approval_id) => return decided,
            answer = prompt.ask(question) => answer,
        };
        if let Some(approve) = answer
            && let Err(e) = self
                .approvals
                .decide_via(
                    &question.approval_id,
                    &caller.user.sub,
                    approve,
                    "elicitation",
                )
                .await
        {
            // Decided elsewhere first, or expired: the wait says which.
            tracing::debug!(approval = %question.approval_id, error = %e, "elicitation answer not recorded");
        }
        self.approvals.wait(&question.approval_id).await
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

/// The audience an exchange for a call to `upstream` targets: OAuth
/// upstreams get their token; the others' calls are decided under the
/// gateway's own audience.
fn exchange_audience(upstream: &config::UpstreamConfig) -> String {
    match upstream.auth {
        UpstreamAuth::Oauth => upstream.audience.clone().unwrap_or_default(),
        _ => GATEWAY_AUDIENCE.to_owned(),
    }
}

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

/// The first text content of a result (its error message).
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
