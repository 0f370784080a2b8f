//! The `client_credentials` grant (RFC 6749 §4.4) for service scopes, and
//! the verification of the service tokens it issues.
//!
//! Workloads that call fabric APIs as themselves (the Shared Signals
//! transmitter's stream management and poll: `ssf.manage`, `ssf.read`)
//! get a short RFC 9068 access token here. No client secret exists: the
//! client authenticates with a client assertion only, a JWT-SVID
//! (`…:jwt-spiffe`, audience the issuer or the token endpoint; its SPIFFE
//! ID need not be a registered client) or a registered client's
//! `private_key_jwt` (spent on use, like at the token exchange; a JWT-SVID
//! is a short-lived bearer credential and may authenticate more than once,
//! as everywhere else in the STS). What it may ask for is decided only by
//! [`crate::ServiceScopeRule`]s.
//!
//! A service token has `sub` = the SPIFFE ID (or the client id),
//! `client_id`, `scope`, `aud` (the issuer unless one registered resource
//! server is asked for), at most five minutes of life, and
//! `gty: client_credentials`; never `sid`, `act` or `may_act`, and no
//! refresh token. [`Sts::verify_service_token`] accepts only such tokens,
//! so neither a user's token nor an OBO token opens a service API, and the
//! exchange and userinfo refuse service tokens.
//!
//! Every outcome is an audit event: `token.issued` (grant, client, scopes)
//! or `token.denied` / `token.error`, recorded before the answer.

use std::collections::BTreeSet;
use std::time::Duration;

use keyless_audit::{Event, Outcome};

use crate::client_auth::CLIENT_ASSERTION_TYPE_JWT_BEARER;
use crate::oidc::TokenResponse;
use crate::service::{CLIENT_ASSERTION_TYPE_JWT_SPIFFE, kinds, secs, unix_now};
use crate::token::{AccessTokenClaims, GTY_CLIENT_CREDENTIALS, StringList, random_id};
use crate::{Sts, StsError};

/// `grant_type` of the client credentials grant.
pub const GRANT_TYPE_CLIENT_CREDENTIALS: &str = "client_credentials";
/// Longest lifetime of a service token (shorter when user access tokens
/// are configured shorter).
pub const MAX_SERVICE_TOKEN_TTL: Duration = Duration::from_secs(300);

/// A `client_credentials` token request, as sent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientCredentialsRequest {
    /// `…:jwt-spiffe` or `…:jwt-bearer` (`private_key_jwt`).
    pub client_assertion_type: Option<String>,
    pub client_assertion: Option<String>,
    /// Space-separated scopes; required.
    pub scope: Option<String>,
    /// Optional target: one registered resource server (or the issuer).
    pub resource: Vec<String>,
    pub audience: Vec<String>,
}

/// The verified caller of a service API ([`Sts::verify_service_token`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceCaller {
    /// The SPIFFE ID of the workload, or the `private_key_jwt` client id.
    pub subject: String,
    pub client_id: String,
    /// Every scope the token carries.
    pub scopes: Vec<String>,
}

/// Who authenticated for the grant, and what the rules let it have.
struct ServiceClient {
    subject: String,
    client_id: String,
    /// Set when it authenticated with a JWT-SVID.
    spiffe_id: Option<String>,
    allowed: BTreeSet<String>,
}

/// What the grant learned so far, for its event whatever the outcome.
#[derive(Default)]
struct Trail {
    client_id: Option<String>,
    spiffe_id: Option<String>,
    scopes: Vec<String>,
}

// === impl Sts ===

impl Sts {
    /// The `client_credentials` grant: authenticates the client by its
    /// assertion, checks every requested scope against the service scope
    /// rules and mints a service token. Recorded as `token.issued`, or
    /// `token.denied` with the reason, before this returns.
    pub async fn client_credentials(
        &self,
        req: &ClientCredentialsRequest,
    ) -> Result<TokenResponse, StsError> {
        let mut trail = Trail::default();
        let result = self.client_credentials_inner(req, &mut trail).await;
        let (kind, outcome) = match &result {
            Ok(_) => (kinds::TOKEN_ISSUED, Outcome::Success),
            Err(e) if e.is_client_error() => (kinds::TOKEN_DENIED, Outcome::Denied),
            Err(_) => (kinds::TOKEN_ERROR, Outcome::Error),
        };
        let mut event = Event::new(kind, outcome)
            .detail("grant_type", GRANT_TYPE_CLIENT_CREDENTIALS)
            .detail("scopes", trail.scopes);
        if let Some(id) = trail.spiffe_id {
            event = event.agent(id);
        }
        if let Some(id) = trail.client_id {
            event = event.detail("client_id", id);
        }
        match &result {
            Ok((resp, claims)) => {
                event.token_expires_in = Some(resp.expires_in);
                event = event
                    .detail("jti", claims.jti.clone())
                    .detail("audience", claims.aud.0.clone());
            }
            Err(e) => event = event.reason(e.to_string()).detail("error", e.oauth_code()),
        }
        self.events.record(event).await?;
        result.map(|(resp, _)| resp)
    }

    /// Records a `client_credentials` request refused before it reached
    /// [`Sts::client_credentials`] (e.g. one sending a client secret).
    pub(crate) async fn record_client_credentials_refused(
        &self,
        error: &StsError,
    ) -> Result<(), StsError> {
        let event = Event::new(kinds::TOKEN_DENIED, Outcome::Denied)
            .detail("grant_type", GRANT_TYPE_CLIENT_CREDENTIALS)
            .reason(error.to_string())
            .detail("error", error.oauth_code());
        self.events.record(event).await?;
        Ok(())
    }

    async fn client_credentials_inner(
        &self,
        req: &ClientCredentialsRequest,
        trail: &mut Trail,
    ) -> Result<(TokenResponse, AccessTokenClaims), StsError> {
        let requested: BTreeSet<&str> = req
            .scope
            .as_deref()
            .unwrap_or_default()
            .split(' ')
            .filter(|s| !s.is_empty())
            .collect();
        trail.scopes = requested.iter().map(|s| (*s).to_owned()).collect();
        let client = match (
            req.client_assertion_type.as_deref(),
            req.client_assertion.as_deref(),
        ) {
            (Some(kind), Some(assertion)) => {
                self.authenticate_service_client(kind, assertion).await
            }
            _ => Err(StsError::InvalidClient(
                "the client_credentials grant requires client_assertion_type and client_assertion"
                    .into(),
            )),
        };
        let client = client?;
        trail.client_id = Some(client.client_id.clone());
        trail.spiffe_id = client.spiffe_id.clone();
        if client.allowed.is_empty() {
            return Err(StsError::InvalidClient(format!(
                "`{}` may not use the client_credentials grant: no service scope rule names it",
                client.subject
            )));
        }
        if requested.is_empty() {
            return Err(StsError::InvalidRequest(
                "scope is required for the client_credentials grant".into(),
            ));
        }
        if let Some(s) = requested.iter().find(|s| !client.allowed.contains(**s)) {
            return Err(StsError::InvalidScope(format!(
                "scope `{s}` is not allowed for `{}`",
                client.subject
            )));
        }
        let audience = self.service_audience(req)?;
        let now = unix_now();
        let ttl = secs(self.config.access_token_ttl.min(MAX_SERVICE_TOKEN_TTL));
        let scope = requested.iter().copied().collect::<Vec<_>>().join(" ");
        let claims = AccessTokenClaims {
            iss: self.config.issuer.clone(),
            sub: client.subject,
            aud: StringList::one(audience),
            client_id: client.client_id,
            iat: now,
            exp: now.saturating_add(ttl),
            nbf: None,
            jti: random_id()?,
            sid: None,
            scope: Some(scope.clone()),
            email: None,
            auth_time: None,
            may_act: None,
            act: None,
            authorization_details: None,
            cnf: None,
            gty: Some(GTY_CLIENT_CREDENTIALS.to_owned()),
        };
        let access_token = self.sign(&claims)?;
        Ok((
            TokenResponse {
                access_token,
                token_type: "Bearer",
                expires_in: ttl,
                refresh_token: None,
                id_token: None,
                scope,
            },
            claims,
        ))
    }

    /// The audience of a service token: the issuer, unless `resource` /
    /// `audience` name one registered resource server.
    fn service_audience(&self, req: &ClientCredentialsRequest) -> Result<String, StsError> {
        let mut targets = BTreeSet::new();
        for t in req.resource.iter().chain(&req.audience) {
            if *t == self.config.issuer {
                targets.insert(t.clone());
                continue;
            }
            let rs = self.config.resource_server(t).ok_or_else(|| {
                StsError::InvalidTarget(format!("`{t}` is not a registered resource server"))
            })?;
            targets.insert(rs.audience.clone());
        }
        let mut targets = targets.into_iter();
        match (targets.next(), targets.next()) {
            (None, _) => Ok(self.config.issuer.clone()),
            (Some(one), None) => Ok(one),
            (Some(_), Some(_)) => Err(StsError::InvalidTarget(
                "one token serves exactly one audience".into(),
            )),
        }
    }

    /// Authenticates the client of the grant. A JWT-SVID's SPIFFE ID is
    /// authorized by the rules alone (it need not be a registered client;
    /// when it is, the token's `client_id` is the registered id); a
    /// `private_key_jwt` client must be registered, and is matched by its
    /// client id.
    async fn authenticate_service_client(
        &self,
        assertion_type: &str,
        assertion: &str,
    ) -> Result<ServiceClient, StsError> {
        let rules = &self.config.service_scopes;
        match assertion_type {
            CLIENT_ASSERTION_TYPE_JWT_SPIFFE => {
                let svid = self
                    .identity
                    .validate_jwt_svid(assertion, &self.config.issuer)
                    .or_else(|e| {
                        self.config
                            .token_endpoints()
                            .iter()
                            .find_map(|aud| self.identity.validate_jwt_svid(assertion, aud).ok())
                            .ok_or(e)
                    })
                    .map_err(|e| StsError::InvalidClient(format!("client assertion: {e}")))?;
                let spiffe_id = svid.spiffe_id.as_str().to_owned();
                let client_id = self
                    .config
                    .clients
                    .iter()
                    .find(|c| c.spiffe_id == spiffe_id)
                    .map_or_else(|| spiffe_id.clone(), |c| c.client_id.clone());
                let allowed = rules
                    .iter()
                    .filter(|r| r.matches_spiffe_id(&spiffe_id))
                    .flat_map(|r| r.scopes.iter().cloned())
                    .collect();
                Ok(ServiceClient {
                    subject: spiffe_id.clone(),
                    client_id,
                    spiffe_id: Some(spiffe_id),
                    allowed,
                })
            }
            CLIENT_ASSERTION_TYPE_JWT_BEARER => {
                let client = self.authenticate_private_key_jwt(assertion).await?;
                let allowed = rules
                    .iter()
                    .filter(|r| r.matches_client_id(&client.client_id))
                    .flat_map(|r| r.scopes.iter().cloned())
                    .collect();
                Ok(ServiceClient {
                    subject: client.client_id.clone(),
                    client_id: client.client_id,
                    spiffe_id: None,
                    allowed,
                })
            }
            other => Err(StsError::InvalidClient(format!(
                "unsupported client_assertion_type `{other}`"
            ))),
        }
    }

    /// Verifies a service token presented to a service API: signature,
    /// `typ`, expiry, `aud` containing `audience` (e.g. the issuer), issued
    /// by the `client_credentials` grant (a user's or an OBO token is
    /// refused), not revoked, and carrying `required_scope`.
    ///
    /// Errors: [`StsError::InvalidToken`] for a token that does not verify
    /// or is no service token (answer 401), [`StsError::InsufficientScope`]
    /// for a good token without the scope (answer 403).
    pub async fn verify_service_token(
        &self,
        token: &str,
        required_scope: &str,
        audience: &str,
    ) -> Result<ServiceCaller, StsError> {
        let claims = self.verify_access_token(token, Some(audience)).await?;
        if !claims.is_service()
            || claims.sid.is_some()
            || claims.act.is_some()
            || claims.may_act.is_some()
        {
            return Err(StsError::InvalidToken(
                "not a service token: it was not issued by the client_credentials grant".into(),
            ));
        }
        if !self.token_live(&claims).await? {
            return Err(StsError::InvalidToken("the token was revoked".into()));
        }
        let scopes: Vec<String> = claims
            .scope
            .as_deref()
            .unwrap_or_default()
            .split(' ')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        if !scopes.iter().any(|s| s == required_scope) {
            return Err(StsError::InsufficientScope(format!(
                "the token does not carry scope `{required_scope}`"
            )));
        }
        Ok(ServiceCaller {
            subject: claims.sub,
            client_id: claims.client_id,
            scopes,
        })
    }
}
