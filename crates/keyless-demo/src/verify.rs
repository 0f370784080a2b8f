//! Verification of the on-behalf-of tokens presented to a demo server.
//!
//! Every `tools/call` goes through [`Verifier::authorize`], which runs the
//! checks in a fixed order and stops at the first failure:
//! 1. a bearer token is present;
//! 2. its ES256 signature verifies against the STS JWKS (cached; an unknown
//!    `kid` triggers a refetch, at most once per [`REFETCH_INTERVAL`]);
//! 3. the header `typ` is `at+jwt` (RFC 9068; jsonwebtoken does not check it);
//! 4. `iss`, `aud`, `exp` and `nbf` (with [`LEEWAY_SECS`] of clock skew);
//! 5. `act.sub` is present — only on-behalf-of tokens are accepted;
//! 6. the caller's RAR check against `authorization_details`;
//! 7. the token is consumed at the STS (`/oauth2/consume`), so a replay fails.
//!
//! Consumption comes last on purpose: a token that fails any local check is
//! not burnt, and a token is never burnt for a call that will not run.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use axum::http::{header, request::Parts};
use jsonwebtoken::{
    Algorithm, DecodingKey, Validation,
    errors::ErrorKind,
    jwk::{AlgorithmParameters, EllipticCurve, Jwk},
};
use serde_json::{Map, Value};
use tokio::sync::Mutex;

use crate::{DemoError, SvidSource};

/// Clock skew tolerated on `exp` and `nbf`.
pub(crate) const LEEWAY_SECS: i64 = 30;
/// Minimum time between two JWKS refetches caused by an unknown `kid`.
pub(crate) const REFETCH_INTERVAL: Duration = Duration::from_secs(5);
/// Keys are refreshed when the cached set is older than this.
const MAX_CACHE_AGE: Duration = Duration::from_secs(300);
/// Bound on every call to the STS (JWKS, consume).
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a call is refused before its tool runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The token is missing, invalid, not an OBO token, or already used.
    Unauthorized(String),
    /// The token is valid but its `authorization_details` do not cover the call.
    Forbidden(String),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unauthorized(reason) => write!(f, "unauthorized: {reason}"),
            Self::Forbidden(reason) => write!(f, "forbidden: {reason}"),
        }
    }
}

fn unauthorized(reason: impl Into<String>) -> Refusal {
    Refusal::Unauthorized(reason.into())
}

/// Who a verified token speaks for.
#[derive(Debug, Clone)]
pub(crate) struct Principal {
    /// The `sub` claim (the user).
    pub(crate) subject: String,
    /// The `email` claim, when the STS put one in.
    pub(crate) email: Option<String>,
    /// `act.sub`: the agent acting for the user.
    pub(crate) actor: String,
    /// The token's `authorization_details` (RFC 9396).
    pub(crate) details: Vec<Value>,
}

impl Principal {
    /// The user the call acts for: `email` if present, else `sub`.
    pub(crate) fn user(&self) -> &str {
        self.email.as_deref().unwrap_or(&self.subject)
    }
}

/// Checks and consumes the OBO tokens of one resource server (one audience).
pub(crate) struct Verifier {
    issuer: String,
    audience: &'static str,
    http: reqwest::Client,
    svid: Arc<dyn SvidSource>,
    jwks: Mutex<JwksCache>,
}

#[derive(Default)]
struct JwksCache {
    keys: HashMap<String, DecodingKey>,
    fetched_at: Option<Instant>,
    last_refetch: Option<Instant>,
}

#[derive(serde::Deserialize)]
struct JwksDocument {
    keys: Vec<Value>,
}

// === impl Verifier ===

impl Verifier {
    /// A verifier for tokens issued by `issuer` to `audience`.
    pub(crate) fn new(
        issuer: &str,
        audience: &'static str,
        svid: Arc<dyn SvidSource>,
    ) -> Result<Self, DemoError> {
        let issuer = issuer.trim_end_matches('/');
        if !(issuer.starts_with("http://") || issuer.starts_with("https://")) {
            return Err(DemoError::InvalidIssuer(issuer.to_owned()));
        }
        let http = reqwest::Client::builder()
            .timeout(HTTP_TIMEOUT)
            .build()
            .map_err(DemoError::HttpClient)?;
        Ok(Self {
            issuer: issuer.to_owned(),
            audience,
            http,
            svid,
            jwks: Mutex::new(JwksCache::default()),
        })
    }

    /// Runs every check on the request's bearer token, `rar` on its
    /// `authorization_details`, then consumes the token.
    pub(crate) async fn authorize<F>(
        &self,
        parts: Option<&Parts>,
        rar: F,
    ) -> Result<Principal, Refusal>
    where
        F: FnOnce(&[Value]) -> Result<(), String>,
    {
        let token = bearer_token(parts)?;
        let principal = self.verify(token).await?;
        rar(&principal.details).map_err(Refusal::Forbidden)?;
        self.consume(token).await?;
        Ok(principal)
    }

    /// Checks 2–5: signature, `typ`, registered claims, actor.
    async fn verify(&self, token: &str) -> Result<Principal, Refusal> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| unauthorized("malformed token: not a compact JWS"))?;
        if header.alg != Algorithm::ES256 {
            return Err(unauthorized(format!(
                "token signed with {:?}, only ES256 is accepted",
                header.alg
            )));
        }
        let kid = header
            .kid
            .as_deref()
            .ok_or_else(|| unauthorized("token header has no `kid`"))?;
        let key = self.key_for(kid).await?;

        // Signature only here: the claims are checked below, after `typ`, so
        // each failure gets its own message in the documented order.
        let mut validation = Validation::new(Algorithm::ES256);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key, &validation).map_err(
            |err| match err.kind() {
                ErrorKind::InvalidSignature => unauthorized("bad token signature"),
                _ => unauthorized(format!("invalid token: {err}")),
            },
        )?;

        check_typ(header.typ.as_deref())?;
        self.check_claims(&data.claims)?;
        principal_from(&data.claims)
    }

    fn check_claims(&self, claims: &Map<String, Value>) -> Result<(), Refusal> {
        match claims.get("iss").and_then(Value::as_str) {
            None => return Err(unauthorized("token has no `iss`")),
            Some(iss) if iss != self.issuer => {
                return Err(unauthorized(format!(
                    "token issuer `{iss}` is not `{}`",
                    self.issuer
                )));
            }
            Some(_) => {}
        }

        let audience_ok = match claims.get("aud") {
            Some(Value::String(aud)) => aud == self.audience,
            Some(Value::Array(auds)) => auds.iter().any(|aud| aud.as_str() == Some(self.audience)),
            _ => return Err(unauthorized("token has no `aud`")),
        };
        if !audience_ok {
            return Err(unauthorized(format!(
                "token audience does not include `{}`",
                self.audience
            )));
        }

        let now = now_secs();
        let exp = claims
            .get("exp")
            .and_then(Value::as_f64)
            .ok_or_else(|| unauthorized("token has no `exp`"))?;
        if now > exp + LEEWAY_SECS as f64 {
            return Err(unauthorized("token expired"));
        }
        if let Some(nbf) = claims.get("nbf") {
            let nbf = nbf
                .as_f64()
                .ok_or_else(|| unauthorized("token `nbf` is not a number"))?;
            if nbf > now + LEEWAY_SECS as f64 {
                return Err(unauthorized("token not yet valid"));
            }
        }
        Ok(())
    }

    /// The decoding key for `kid`, fetching or refetching the JWKS as needed.
    async fn key_for(&self, kid: &str) -> Result<DecodingKey, Refusal> {
        let mut cache = self.jwks.lock().await;
        let stale = cache
            .fetched_at
            .is_none_or(|at| at.elapsed() >= MAX_CACHE_AGE);
        let mut fetch_error = None;
        if stale {
            match self.fetch_jwks().await {
                Ok(keys) => {
                    cache.keys = keys;
                    cache.fetched_at = Some(Instant::now());
                }
                Err(err) => fetch_error = Some(err),
            }
        }
        if let Some(key) = cache.keys.get(kid) {
            return Ok(key.clone());
        }
        if let Some(err) = fetch_error {
            return Err(unauthorized(err));
        }
        // A fresh set that lacks the kid: the STS may have rotated. Refetch,
        // but rate-limited so junk kids cannot turn us into a JWKS flooder.
        let may_refetch = !stale
            && cache
                .last_refetch
                .is_none_or(|at| at.elapsed() >= REFETCH_INTERVAL);
        if may_refetch {
            cache.last_refetch = Some(Instant::now());
            let keys = self.fetch_jwks().await.map_err(unauthorized)?;
            cache.keys = keys;
            cache.fetched_at = Some(Instant::now());
            if let Some(key) = cache.keys.get(kid) {
                return Ok(key.clone());
            }
        }
        Err(unauthorized(format!(
            "unknown signing key `{kid}` (not in the issuer's JWKS)"
        )))
    }

    async fn fetch_jwks(&self) -> Result<HashMap<String, DecodingKey>, String> {
        let url = format!("{}/oauth2/jwks", self.issuer);
        let response = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|err| format!("cannot fetch the issuer's keys from `{url}`: {err}"))?;
        if !response.status().is_success() {
            return Err(format!(
                "cannot fetch the issuer's keys: `{url}` answered HTTP {}",
                response.status().as_u16()
            ));
        }
        let document: JwksDocument = response
            .json()
            .await
            .map_err(|err| format!("the issuer's JWKS at `{url}` is malformed: {err}"))?;
        let mut keys = HashMap::new();
        // One odd key (another curve, RSA, a future type) must not hide the rest.
        for raw in document.keys {
            let Ok(jwk) = serde_json::from_value::<Jwk>(raw) else {
                continue;
            };
            let Some(kid) = jwk.common.key_id.clone() else {
                continue;
            };
            let AlgorithmParameters::EllipticCurve(params) = &jwk.algorithm else {
                continue;
            };
            if params.curve != EllipticCurve::P256 {
                continue;
            }
            if let Ok(key) = DecodingKey::from_jwk(&jwk) {
                keys.insert(kid, key);
            }
        }
        tracing::debug!(issuer = %self.issuer, keys = keys.len(), "fetched STS JWKS");
        Ok(keys)
    }

    /// Check 7: single use, enforced by the STS.
    async fn consume(&self, token: &str) -> Result<(), Refusal> {
        let svid = self.svid.jwt_svid(&self.issuer).await.map_err(|err| {
            unauthorized(format!(
                "cannot confirm single use: no SVID for this server: {err}"
            ))
        })?;
        let body = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("token", token)
            .append_pair("audience", self.audience)
            .finish();
        let url = format!("{}/oauth2/consume", self.issuer);
        let response = self
            .http
            .post(&url)
            .bearer_auth(svid)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .map_err(|err| {
                unauthorized(format!("cannot confirm single use of the token: {err}"))
            })?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let description = response
            .json::<Value>()
            .await
            .ok()
            .and_then(|body| {
                body.get("error_description")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            })
            .filter(|text| !text.is_empty());
        Err(match description {
            Some(text) if status.is_client_error() => unauthorized(text),
            _ => unauthorized(format!(
                "the issuer refused to consume the token (HTTP {})",
                status.as_u16()
            )),
        })
    }
}

/// Check 1: `Authorization: Bearer <token>`.
fn bearer_token(parts: Option<&Parts>) -> Result<&str, Refusal> {
    let value = parts
        .and_then(|parts| parts.headers.get(header::AUTHORIZATION))
        .ok_or_else(|| unauthorized("missing bearer token"))?;
    let value = value
        .to_str()
        .map_err(|_| unauthorized("malformed `Authorization` header"))?;
    let (scheme, token) = value
        .trim()
        .split_once(' ')
        .ok_or_else(|| unauthorized("`Authorization` header is not `Bearer <token>`"))?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(unauthorized(
            "`Authorization` header is not `Bearer <token>`",
        ));
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(unauthorized("missing bearer token"));
    }
    Ok(token)
}

/// Check 3: RFC 9068 access tokens, nothing else (an ID token or a JWT-SVID
/// signed by the same keys must not pass as an OBO token).
fn check_typ(typ: Option<&str>) -> Result<(), Refusal> {
    match typ {
        Some(typ)
            if typ.eq_ignore_ascii_case("at+jwt")
                || typ.eq_ignore_ascii_case("application/at+jwt") =>
        {
            Ok(())
        }
        Some(typ) => Err(unauthorized(format!(
            "token `typ` is `{typ}`, expected `at+jwt`"
        ))),
        None => Err(unauthorized("token has no `typ`, expected `at+jwt`")),
    }
}

/// Check 5 and extraction of what the tools need.
fn principal_from(claims: &Map<String, Value>) -> Result<Principal, Refusal> {
    let subject = claims
        .get("sub")
        .and_then(Value::as_str)
        .filter(|sub| !sub.is_empty())
        .ok_or_else(|| unauthorized("token has no `sub`"))?;
    // `act` may nest (the chain of actors); the outermost is the current one.
    let actor = claims
        .get("act")
        .and_then(|act| act.get("sub"))
        .and_then(Value::as_str)
        .filter(|sub| !sub.is_empty())
        .ok_or_else(|| unauthorized("not an on-behalf-of token: `act.sub` is missing"))?;
    let email = claims
        .get("email")
        .and_then(Value::as_str)
        .filter(|email| !email.is_empty())
        .map(str::to_owned);
    let details = match claims.get("authorization_details") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(details)) => details.clone(),
        Some(_) => return Err(unauthorized("`authorization_details` is not an array")),
    };
    Ok(Principal {
        subject: subject.to_owned(),
        email,
        actor: actor.to_owned(),
        details,
    })
}

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs_f64())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn typ_must_be_at_jwt() {
        assert!(check_typ(Some("at+jwt")).is_ok());
        assert!(check_typ(Some("application/AT+JWT")).is_ok());
        assert!(check_typ(Some("JWT")).is_err());
        assert!(check_typ(None).is_err());
    }

    #[test]
    fn actor_is_required_and_may_nest() {
        let claims: Map<String, Value> = serde_json::from_value(serde_json::json!({
            "sub": "u1",
            "act": {"sub": "spiffe://td/agent", "act": {"sub": "spiffe://td/gateway"}},
        }))
        .unwrap();
        assert_eq!(principal_from(&claims).unwrap().actor, "spiffe://td/agent");

        let claims: Map<String, Value> =
            serde_json::from_value(serde_json::json!({"sub": "u1", "act": {}})).unwrap();
        assert!(matches!(
            principal_from(&claims),
            Err(Refusal::Unauthorized(reason)) if reason.contains("act.sub")
        ));
    }

    #[test]
    fn bearer_scheme_is_required() {
        let parts = |value: &str| {
            let (parts, ()) = axum::http::Request::builder()
                .header("authorization", value)
                .body(())
                .unwrap()
                .into_parts();
            parts
        };
        assert_eq!(bearer_token(Some(&parts("Bearer abc"))), Ok("abc"));
        assert_eq!(bearer_token(Some(&parts("bearer  abc "))), Ok("abc"));
        assert!(bearer_token(Some(&parts("Basic abc"))).is_err());
        assert!(bearer_token(Some(&parts("Bearer "))).is_err());
        assert!(bearer_token(None).is_err());
    }
}
