//! `private_key_jwt` client authentication (RFC 7523 §2.2 and §3, OIDC
//! Core §9): `client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer`,
//! a JWT the client signs with a key of the public JWKS it registered
//! ([`crate::JwtClientRegistration`]). No client secret exists anywhere:
//! the STS only ever holds public keys.
//!
//! An assertion must have `iss` = `sub` = a registered client id, an `aud`
//! naming our issuer or token endpoint (or its mTLS alias), an `exp` no
//! further than [`MAX_ASSERTION_LIFETIME`] ahead, and a `jti` that is spent
//! here (the store's atomic single-use table, so a replay is refused on
//! every replica). The key is chosen by `kid` (optional only when the
//! client registered one key); the algorithm must be asymmetric and fit
//! the key (`none` and `HS*` never get as far as a key lookup).
//!
//! [`Sts::authenticate_client_assertion`] dispatches on the assertion type
//! (this or the JWT-SVID of `service.rs`).

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::Value;

use crate::jwk::{Jws, PublicJwk, replay_key};
use crate::service::{AuthenticatedClient, CLIENT_ASSERTION_TYPE_JWT_SPIFFE, secs, unix_now};
use crate::{Sts, StsError};

/// `client_assertion_type` of RFC 7523 (`private_key_jwt`).
pub const CLIENT_ASSERTION_TYPE_JWT_BEARER: &str =
    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// Longest lifetime an assertion may claim (its `exp` from now).
pub const MAX_ASSERTION_LIFETIME: Duration = Duration::from_secs(300);
/// Longest `jti` accepted.
const MAX_JTI_LEN: usize = 256;

/// One key of a client's registered JWKS.
#[derive(Debug, Clone)]
pub(crate) struct ClientKey {
    pub kid: Option<String>,
    /// The `alg` the key is registered for, if it says.
    pub alg: Option<String>,
    pub key: PublicJwk,
}

/// Parses a registered JWKS: at least one public signing key, unique
/// `kid`s, and a `kid` on every key when there are several.
pub(crate) fn parse_jwks(jwks: &Value) -> Result<Vec<ClientKey>, String> {
    let keys = jwks
        .get("keys")
        .and_then(Value::as_array)
        .ok_or("the jwks has no `keys` array")?;
    if keys.is_empty() {
        return Err("the jwks has no key".into());
    }
    let mut kids = BTreeSet::new();
    let mut out = Vec::with_capacity(keys.len());
    for (i, k) in keys.iter().enumerate() {
        let Value::Object(map) = k else {
            return Err(format!("key {i} is not an object"));
        };
        let key = PublicJwk::parse(map).map_err(|e| format!("key {i}: {e}"))?;
        if map.get("use").is_some_and(|u| u != "sig") {
            return Err(format!("key {i} is not a signing key"));
        }
        let alg = map.get("alg").and_then(Value::as_str).map(str::to_owned);
        if let Some(a) = &alg
            && !key.fits(a)
        {
            return Err(format!("key {i}: algorithm `{a}` does not fit the key"));
        }
        let kid = map.get("kid").and_then(Value::as_str).map(str::to_owned);
        match &kid {
            Some(kid) if !kids.insert(kid.clone()) => {
                return Err(format!("key id `{kid}` is repeated"));
            }
            None if keys.len() > 1 => {
                return Err(format!("key {i} has no `kid` (required with several keys)"));
            }
            _ => {}
        }
        out.push(ClientKey { kid, alg, key });
    }
    Ok(out)
}

fn refused(msg: impl Into<String>) -> StsError {
    StsError::InvalidClient(format!("client assertion: {}", msg.into()))
}

// === impl Sts ===

impl Sts {
    /// Authenticates a confidential client by its assertion: a JWT-SVID
    /// (`…:jwt-spiffe`) or a `private_key_jwt` (`…:jwt-bearer`). A
    /// `private_key_jwt` assertion is spent: it authenticates once.
    pub async fn authenticate_client_assertion(
        &self,
        assertion_type: &str,
        assertion: &str,
    ) -> Result<AuthenticatedClient, StsError> {
        match assertion_type {
            CLIENT_ASSERTION_TYPE_JWT_SPIFFE => self.authenticate_client(assertion_type, assertion),
            CLIENT_ASSERTION_TYPE_JWT_BEARER => self.authenticate_private_key_jwt(assertion).await,
            other => Err(StsError::InvalidClient(format!(
                "unsupported client_assertion_type `{other}`"
            ))),
        }
    }

    /// `private_key_jwt` (see the module docs for every rule).
    pub async fn authenticate_private_key_jwt(
        &self,
        assertion: &str,
    ) -> Result<AuthenticatedClient, StsError> {
        let jws = Jws::parse(assertion).map_err(refused)?;
        // Another kind of JWT (an access token, a DPoP proof) is never a
        // client assertion, even when the client signed it.
        match jws.header_str("typ") {
            None | Some("JWT" | "jwt" | "client-authentication+jwt") => {}
            Some(other) => return Err(refused(format!("unexpected `typ` `{other}`"))),
        }
        let iss = jws
            .claim_str("iss")
            .ok_or_else(|| refused("`iss` is missing"))?;
        if jws.claim_str("sub") != Some(iss) {
            return Err(refused("`sub` must equal `iss` (the client id)"));
        }
        let client = self
            .config
            .jwt_clients
            .iter()
            .find(|c| c.client_id == iss)
            .ok_or_else(|| refused(format!("`{iss}` is not a registered client")))?;
        let keys = parse_jwks(&client.jwks).map_err(refused)?;
        let key = match (jws.header_str("kid"), keys.as_slice()) {
            (Some(kid), keys) => keys
                .iter()
                .find(|k| k.kid.as_deref() == Some(kid))
                .ok_or_else(|| refused(format!("unknown key id `{kid}`")))?,
            (None, [only]) => only,
            (None, _) => return Err(refused("`kid` is required: the client has several keys")),
        };
        if key.alg.as_deref().is_some_and(|a| a != jws.alg) {
            return Err(refused(format!(
                "algorithm `{}` is not the key's registered one",
                jws.alg
            )));
        }
        jws.verify_with(&key.key).map_err(refused)?;

        let audiences: Vec<&str> = match jws.claims.get("aud") {
            Some(Value::String(a)) => vec![a.as_str()],
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
            _ => return Err(refused("`aud` is missing")),
        };
        let mut acceptable = self.config.token_endpoints();
        acceptable.push(self.config.issuer.clone());
        if !audiences.iter().any(|a| acceptable.iter().any(|x| x == a)) {
            return Err(refused(
                "`aud` is neither this issuer nor its token endpoint",
            ));
        }
        let now = unix_now();
        let leeway = secs(self.config.leeway);
        let exp = jws
            .claim_time("exp")
            .ok_or_else(|| refused("`exp` is missing"))?;
        if now >= exp.saturating_add(leeway) {
            return Err(refused("the assertion has expired"));
        }
        if exp
            > now
                .saturating_add(secs(MAX_ASSERTION_LIFETIME))
                .saturating_add(leeway)
        {
            return Err(refused(format!(
                "`exp` is more than {} s ahead",
                MAX_ASSERTION_LIFETIME.as_secs()
            )));
        }
        for claim in ["nbf", "iat"] {
            if jws
                .claim_time(claim)
                .is_some_and(|t| t > now.saturating_add(leeway))
            {
                return Err(refused(format!("`{claim}` is in the future")));
            }
        }
        let jti = jws
            .claim_str("jti")
            .filter(|j| !j.is_empty() && j.len() <= MAX_JTI_LEN)
            .ok_or_else(|| refused("`jti` is missing or invalid"))?;
        let spent = replay_key("client-assertion", &[&client.client_id, jti]);
        match self.consume(&spent, exp.saturating_add(leeway)).await {
            Ok(()) => {}
            Err(StsError::AlreadyConsumed(_)) => {
                return Err(refused("the assertion was already used"));
            }
            Err(e) => return Err(e),
        }
        Ok(AuthenticatedClient {
            client_id: client.client_id.clone(),
            spiffe_id: None,
            uri: client.uri.clone(),
        })
    }
}
