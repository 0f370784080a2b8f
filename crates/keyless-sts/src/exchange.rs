//! OAuth 2.0 Token Exchange (RFC 8693) for on-behalf-of tokens.
//!
//! One exchange = subject (a user access token we issued, or an OBO token
//! we issued, for delegation) + actor (the agent's JWT-SVID, or an
//! X509-SVID an actor attester vouches for: `actor.rs`) + one target +
//! `authorization_details`. It is routed by where the subject token came
//! from, and every check runs every time: an OBO subject never skips the
//! actor, `may_act`, consent or policy checks; it only adds the rule that
//! authority narrows (audience, details, scope, lifetime).
//!
//! Invariant: no OBO token is honoured unless the decision that issued it
//! is durably in the audit log. The success event (naming the `jti`) is
//! queued for the log's next group commit before the token leaves (a
//! failing log refuses the queueing, and the token is discarded), and
//! every consumption — by a resource server at `/oauth2/consume`, or by a
//! delegation spending its subject — first requires that event committed.
//! Refusals are recorded durably before the error is returned.

use std::collections::BTreeSet;
use std::time::Instant;

use keyless_audit::{Event, Outcome};
use serde::Serialize;
use serde_json::Value;

use crate::policy::{DecisionInput, PolicyDecision};
use crate::rar::{AuthorizationDetail, narrows};
use crate::service::{AuthenticatedClient, kinds, secs, unix_now};
use crate::token::{AccessTokenClaims, StringList, random_id};
use crate::{Sts, StsError};

pub const GRANT_TYPE_TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
pub const TOKEN_TYPE_ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";
pub const TOKEN_TYPE_JWT: &str = "urn:ietf:params:oauth:token-type:jwt";

/// The token request parameters of a token exchange, as sent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenExchangeRequest {
    pub grant_type: String,
    pub subject_token: Option<String>,
    pub subject_token_type: Option<String>,
    pub actor_token: Option<String>,
    pub actor_token_type: Option<String>,
    pub resource: Vec<String>,
    pub audience: Vec<String>,
    pub scope: Option<String>,
    pub requested_token_type: Option<String>,
    /// The `authorization_details` parameter: a JSON array, as a string.
    pub authorization_details: Option<String>,
}

/// Decision inputs the STS does not derive from the tokens themselves
/// (the caller's view of the session: risk, approvals, step-up).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExchangeContext {
    pub risk_level: String,
    pub approvals: u32,
    pub step_up: bool,
    /// Correlation id of the tool call, copied into the event.
    pub correlation_id: Option<String>,
    /// The sender constraint the HTTP layer established for this request
    /// (a verified DPoP proof's key, the mTLS client certificate): the
    /// issued token carries it as `cnf`, and is a `DPoP` token when a DPoP
    /// key is bound.
    pub sender: Option<crate::token::Confirmation>,
}

impl Default for ExchangeContext {
    fn default() -> Self {
        Self {
            risk_level: "low".into(),
            approvals: 0,
            step_up: false,
            correlation_id: None,
            sender: None,
        }
    }
}

/// The token response (RFC 8693 §2.2.1, RFC 9396 §7).
#[derive(Debug, Clone, Serialize)]
pub struct TokenExchangeResponse {
    pub access_token: String,
    pub issued_token_type: &'static str,
    pub token_type: &'static str,
    pub expires_in: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    pub authorization_details: Vec<Value>,
    /// The issued token's claims, for the caller's own use (not sent).
    #[serde(skip)]
    pub claims: AccessTokenClaims,
}

/// What the exchange learned so far, for its event whatever the outcome.
#[derive(Debug, Default)]
struct Trail {
    user: Option<String>,
    session: Option<String>,
    agent: Option<String>,
    tier: Option<u8>,
    rar_type: Option<String>,
    rar_summary: Option<String>,
    audience: Option<String>,
    policies: Vec<String>,
    /// The risk level the session's ladder level raised the caller's to.
    risk_level: Option<String>,
    /// Who vouched for an attested actor (`actor.rs`).
    attestation: Option<crate::actor::Attestation>,
}

fn invalid_request(m: impl Into<String>) -> StsError {
    StsError::InvalidRequest(m.into())
}

fn scopes(s: Option<&str>) -> BTreeSet<&str> {
    s.map(|s| s.split(' ').filter(|x| !x.is_empty()).collect())
        .unwrap_or_default()
}

// === impl Sts ===

impl Sts {
    /// Performs a token exchange. `client`: the confidential client that
    /// authenticated, if any (its URI becomes an acceptable actor-token
    /// audience, its id the token's `client_id`). Every outcome is recorded
    /// as a `token_exchange.*` event before this returns.
    pub async fn exchange(
        &self,
        req: &TokenExchangeRequest,
        client: Option<&AuthenticatedClient>,
        ctx: &ExchangeContext,
    ) -> Result<TokenExchangeResponse, StsError> {
        let started = Instant::now();
        let mut trail = Trail::default();
        let result = self.exchange_inner(req, client, ctx, &mut trail).await;
        let (kind, outcome) = match &result {
            Ok(_) => (kinds::TOKEN_EXCHANGE_SUCCESS, Outcome::Success),
            Err(e) if e.is_client_error() => (kinds::TOKEN_EXCHANGE_DENIED, Outcome::Denied),
            Err(_) => (kinds::TOKEN_EXCHANGE_ERROR, Outcome::Error),
        };
        let mut event = Event::new(kind, outcome);
        event.user = trail.user;
        event.session = trail.session;
        event.agent = trail.agent;
        event.tier = trail.tier;
        event.rar_type = trail.rar_type;
        event.rar_summary = trail.rar_summary;
        event.correlation_id = ctx.correlation_id.clone();
        event.duration_ms = Some(started.elapsed().as_secs_f64() * 1000.0);
        if let Some(aud) = trail.audience {
            event = event.detail("audience", aud);
        }
        if let Some(c) = client {
            event = event.detail("client_id", c.client_id.clone());
        }
        if !trail.policies.is_empty() {
            event = event.detail("policies", trail.policies);
        }
        if let Some(risk) = trail.risk_level {
            event = event.detail("risk_level", risk);
        }
        if let Some(a) = trail.attestation {
            event = event
                .detail("actor_attested_by", a.attested_by)
                .detail("actor_x5t#S256", a.x5t_s256);
        }
        match &result {
            Ok(resp) => {
                event.token_expires_in = Some(resp.expires_in);
                event = event.detail("jti", resp.claims.jti.clone());
            }
            Err(e) => {
                event = event.reason(e.to_string()).detail("error", e.oauth_code());
            }
        }
        if result.is_ok() {
            // Queued, not awaited: the token is honoured only once this
            // event is committed (`consume_token` checks), which keeps the
            // fsync of the group commit off the exchange's latency.
            self.events.record_queued(event).await?;
        } else {
            self.events.record(event).await?;
        }
        result
    }

    /// Records a token request refused before the exchange could start
    /// (malformed form, failed client authentication) as
    /// `token_exchange.denied`.
    pub async fn record_refused(&self, error: &StsError) -> Result<(), StsError> {
        let event = Event::new(kinds::TOKEN_EXCHANGE_DENIED, Outcome::Denied)
            .reason(error.to_string())
            .detail("error", error.oauth_code());
        self.events.record(event).await?;
        Ok(())
    }

    async fn exchange_inner(
        &self,
        req: &TokenExchangeRequest,
        client: Option<&AuthenticatedClient>,
        ctx: &ExchangeContext,
        trail: &mut Trail,
    ) -> Result<TokenExchangeResponse, StsError> {
        // --- request shape (RFC 8693 §2.1) ---
        if req.grant_type != GRANT_TYPE_TOKEN_EXCHANGE {
            return Err(StsError::UnsupportedGrantType(req.grant_type.clone()));
        }
        let subject_token = req
            .subject_token
            .as_deref()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| invalid_request("subject_token is required"))?;
        match req.subject_token_type.as_deref() {
            Some(TOKEN_TYPE_ACCESS_TOKEN | TOKEN_TYPE_JWT) => {}
            Some(other) => {
                return Err(invalid_request(format!(
                    "unsupported subject_token_type `{other}`"
                )));
            }
            None => return Err(invalid_request("subject_token_type is required")),
        }
        let actor_token = match (req.actor_token.as_deref(), req.actor_token_type.as_deref()) {
            (Some(t), Some(ty)) if !t.is_empty() && crate::actor::supported(ty) => t,
            (Some(_), Some(other)) => {
                return Err(invalid_request(format!(
                    "unsupported actor_token_type `{other}`: a JWT-SVID is `{TOKEN_TYPE_JWT}`"
                )));
            }
            (Some(_), None) => {
                return Err(invalid_request(
                    "actor_token_type is required with actor_token",
                ));
            }
            (None, Some(_)) => {
                return Err(invalid_request(
                    "actor_token_type must not be sent without actor_token",
                ));
            }
            (None, None) => {
                // Keyless issues on-behalf-of tokens only; impersonation
                // (a token for the user with no actor) is not offered.
                return Err(invalid_request("actor_token is required"));
            }
        };
        match req.requested_token_type.as_deref() {
            None | Some(TOKEN_TYPE_ACCESS_TOKEN | TOKEN_TYPE_JWT) => {}
            Some(other) => {
                return Err(invalid_request(format!(
                    "unsupported requested_token_type `{other}`"
                )));
            }
        }

        // --- subject: routed by where it came from ---
        let subject = self
            .verify_access_token(subject_token, None)
            .await
            .map_err(|e| invalid_request(format!("subject_token is not valid: {e}")))?;
        trail.user = Some(subject.user_label().to_owned());
        trail.session = subject.sid.clone();
        // A signed-out or CAEP-revoked session, or a revoked token, ends
        // here even though the token has not expired.
        if !self.token_live(&subject).await? {
            return Err(invalid_request(
                "subject_token is no longer active (session ended or token revoked)",
            ));
        }
        if subject.is_service() {
            return Err(invalid_request(
                "subject_token is a service token: it acts for no user",
            ));
        }
        // The risk ladder (W4): a restricted user gets no new tokens, from
        // any agent, until a human has reviewed.
        if self.subject_restricted(&subject.sub) {
            return Err(StsError::AccessDenied {
                policy: Vec::new(),
                reason: crate::risk::RESTRICTED_REASON.to_owned(),
            });
        }
        let now = unix_now();
        match &subject.act {
            None => {
                if !subject.aud.contains(&self.config.issuer) {
                    return Err(invalid_request(
                        "subject_token is not an access token for this sts",
                    ));
                }
            }
            Some(act) => {
                if act.depth() >= self.config.max_delegation_depth {
                    return Err(invalid_request("the delegation chain is too long"));
                }
                if self.is_spent(&subject.jti).await? {
                    return Err(invalid_request("subject_token was already used"));
                }
            }
        }

        // --- actor: a JWT-SVID of our trust domain, for us or the client,
        // or an X509-SVID an actor attester vouches for (`actor.rs`) ---
        let actor = self.validate_actor(req.actor_token_type.as_deref(), actor_token, client)?;
        let agent = actor.spiffe_id.clone();
        trail.agent = Some(agent.clone());
        trail.attestation = actor.attestation.clone();
        let allowed = subject
            .may_act
            .as_ref()
            .is_some_and(|m| m.sub.contains(&agent));
        if !allowed {
            return Err(invalid_request(format!(
                "`{agent}` may not act for the subject (not in may_act)"
            )));
        }

        // --- target: exactly one registered resource server ---
        let mut targets = BTreeSet::new();
        for t in req.resource.iter().chain(&req.audience) {
            let rs = self.config.resource_server(t).ok_or_else(|| {
                StsError::InvalidTarget(format!("`{t}` is not a registered resource server"))
            })?;
            targets.insert(rs.audience.clone());
        }
        let target = match targets.len() {
            0 => {
                return Err(StsError::InvalidTarget(
                    "a resource or audience is required".into(),
                ));
            }
            1 => targets.into_iter().next().unwrap_or_default(),
            _ => {
                return Err(StsError::InvalidTarget(
                    "one token serves exactly one resource server".into(),
                ));
            }
        };
        trail.audience = Some(target.clone());
        if subject.is_obo() && !subject.aud.contains(&target) {
            return Err(StsError::InvalidTarget(format!(
                "delegation cannot widen the audience to `{target}`"
            )));
        }

        // --- authorization details ---
        let details = self.rar.parse(
            req.authorization_details
                .as_deref()
                .ok_or_else(|| invalid_request("authorization_details is required"))?,
        )?;
        trail.rar_type = Some(
            details
                .iter()
                .map(|d| d.rar_type.as_str())
                .collect::<Vec<_>>()
                .join(","),
        );
        trail.rar_summary = Some(
            details
                .iter()
                .map(|d| d.summary.as_str())
                .collect::<Vec<_>>()
                .join("; "),
        );
        let tier = details.iter().map(|d| d.tier).max().unwrap_or(4);
        trail.tier = Some(tier);
        if subject.is_obo() {
            let granted = subject.authorization_details.as_deref().unwrap_or_default();
            for (i, d) in details.iter().enumerate() {
                if !granted.iter().any(|g| narrows(&d.value, g)) {
                    return Err(StsError::InvalidAuthorizationDetails(format!(
                        "delegation cannot widen authority: authorization_details[{i}] is not within the subject token's"
                    )));
                }
            }
        }

        // --- scope: never more than the subject holds ---
        let requested_scopes = scopes(req.scope.as_deref());
        let held = scopes(subject.scope.as_deref());
        if let Some(s) = requested_scopes.iter().find(|s| !held.contains(*s)) {
            return Err(StsError::InvalidScope(format!(
                "scope `{s}` is not held by the subject token"
            )));
        }

        // --- consent: as of the last change (a revocation bites at once) ---
        let consents = self.live_consents(&subject.sub, &agent).await?;
        let consented_types: BTreeSet<&str> = consents
            .iter()
            .flat_map(|c| c.rar_types.iter().map(String::as_str))
            .collect();
        let consented_scopes: BTreeSet<&str> = consents
            .iter()
            .flat_map(|c| c.scopes.iter().map(String::as_str))
            .collect();
        if let Some(d) = details
            .iter()
            .find(|d| !consented_types.contains(d.rar_type.as_str()))
        {
            return Err(StsError::AccessDenied {
                policy: Vec::new(),
                reason: format!(
                    "no live consent from the user for `{agent}` to use `{}`",
                    d.rar_type
                ),
            });
        }
        if let Some(s) = requested_scopes
            .iter()
            .find(|s| !consented_scopes.contains(*s))
        {
            return Err(StsError::AccessDenied {
                policy: Vec::new(),
                reason: format!("no live consent from the user for `{agent}` to use scope `{s}`"),
            });
        }

        // --- policy: every action of every detail must be permitted ---
        // The session's place on the risk ladder can only raise the
        // caller's risk level (W2 → medium, W3 and above → high).
        let session_level = self.session_risk_level(subject.sid.as_deref());
        let risk_level = crate::risk::effective_risk_level(&ctx.risk_level, session_level);
        if risk_level != ctx.risk_level {
            trail.risk_level = Some(risk_level.clone());
        }
        let ctx = &ExchangeContext {
            risk_level,
            ..ctx.clone()
        };
        let session_age = now
            .saturating_sub(subject.auth_time.unwrap_or(subject.iat))
            .max(0);
        let policies = self.policies.current();
        for d in &details {
            for action in &d.actions {
                let input =
                    decision_input(d, action, &agent, &target, &subject, session_age, ctx, now);
                match policies.decide(&input) {
                    PolicyDecision::Allow { policies } => trail.policies.extend(policies),
                    PolicyDecision::Deny { policies, reason } => {
                        trail.policies.extend(policies.iter().cloned());
                        return Err(StsError::AccessDenied {
                            policy: policies,
                            reason,
                        });
                    }
                }
            }
        }
        trail.policies.sort();
        trail.policies.dedup();

        // --- mint ---
        let ttl = secs(self.config.obo_ttl(tier));
        let exp = now.saturating_add(ttl).min(subject.exp);
        if exp <= now {
            return Err(invalid_request("subject_token expires too soon"));
        }
        if subject.is_obo() {
            // Delegation spends the subject token: it cannot be both used
            // at its resource server and handed on, nor handed on twice.
            self.ensure_issuance_recorded(&subject.jti).await?;
            self.spend_delegated(&subject.jti, subject.exp)
                .await
                .map_err(|e| match e {
                    StsError::AlreadyConsumed(_) => {
                        invalid_request("subject_token was already used")
                    }
                    other => other,
                })?;
        }
        let granted: Vec<Value> = details.iter().map(|d| d.value.clone()).collect();
        let scope = (!requested_scopes.is_empty()).then(|| {
            requested_scopes
                .iter()
                .copied()
                .collect::<Vec<_>>()
                .join(" ")
        });
        let claims = AccessTokenClaims {
            iss: self.config.issuer.clone(),
            sub: subject.sub.clone(),
            aud: StringList::one(target),
            client_id: client.map_or_else(|| agent.clone(), |c| c.client_id.clone()),
            iat: now,
            exp,
            nbf: None,
            jti: random_id()?,
            sid: subject.sid.clone(),
            scope: scope.clone(),
            email: subject.email.clone(),
            auth_time: subject.auth_time,
            // Carried so that a further delegation is still bound to the
            // agents the user allowed.
            may_act: subject.may_act.clone(),
            act: Some(actor.into_actor(subject.act.clone())),
            authorization_details: Some(granted.clone()),
            cnf: ctx.sender.clone().filter(|c| !c.is_empty()),
            gty: None,
        };
        let access_token = self.sign(&claims)?;
        Ok(TokenExchangeResponse {
            access_token,
            issued_token_type: TOKEN_TYPE_ACCESS_TOKEN,
            // RFC 9449 §5: a DPoP-bound token is a `DPoP` token; an
            // mTLS-bound one stays `Bearer` (RFC 8705 §3).
            token_type: if claims.cnf.as_ref().is_some_and(|c| c.jkt.is_some()) {
                "DPoP"
            } else {
                "Bearer"
            },
            expires_in: exp - now,
            scope,
            authorization_details: granted,
            claims,
        })
    }
}

#[expect(
    clippy::too_many_arguments,
    reason = "one flat constructor of the decision input"
)]
fn decision_input(
    d: &AuthorizationDetail,
    action: &str,
    agent: &str,
    target: &str,
    subject: &AccessTokenClaims,
    session_age_secs: i64,
    ctx: &ExchangeContext,
    now: i64,
) -> DecisionInput {
    DecisionInput {
        agent: agent.to_owned(),
        action: action.to_owned(),
        resource: target.to_owned(),
        user: subject.user_label().to_owned(),
        session_age_secs,
        tier: d.tier,
        rar_type: d.rar_type.clone(),
        amount: d.amount,
        currency: d.currency.clone(),
        destination: d.destination.clone(),
        risk_level: ctx.risk_level.clone(),
        approvals: ctx.approvals,
        step_up: ctx.step_up,
        time: now,
    }
}
