//! DPoP (RFC 9449): proof-of-possession for OBO tokens.
//!
//! At the token endpoint, a token-exchange request with a `DPoP` header
//! carries a proof JWT; the STS verifies it ([`Sts::verify_token_request_proof`])
//! and binds the issued OBO token to the proof's key: `cnf.jkt` = the
//! key's RFC 7638 thumbprint, `token_type: DPoP`. A stolen DPoP-bound token
//! is useless without the private key.
//!
//! At a resource server, [`verify_for_resource`] checks the proof that
//! came with the token: same checks plus `ath` (the hash of the access
//! token) and the key matching `cnf.jkt`. It is a pure function: replay
//! protection needs a shared memory of seen `jti`s, which the resource
//! server keeps itself, or delegates to the STS by passing the proof to
//! `POST /oauth2/consume` ([`Sts::check_dpop_binding`], which records the
//! proof's `jti` with the same atomic single-use table as tokens, so a
//! replay is refused on every replica).
//!
//! Proof rules (RFC 9449 §4.2–4.3): `typ` exactly `dpop+jwt`; an asymmetric
//! `alg` fitting a public `jwk` in the header (no private members); claims
//! `jti` (single use), `htm` (the method), `htu` (the URL, compared without
//! query and fragment after RFC 3986 normalization), `iat` within
//! [`MAX_PROOF_AGE`] in the past and the configured leeway in the future;
//! `ath` absent at the token endpoint, required at a resource. Server
//! nonces (§8) are not used.

use std::time::Duration;

use aws_lc_rs::digest;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;

use crate::jwk::{Jws, PublicJwk, replay_key};
use crate::service::{secs, unix_now};
use crate::token::AccessTokenClaims;
use crate::{Sts, StsError};

/// The request header carrying a proof.
pub const DPOP_HEADER: &str = "DPoP";
/// The JOSE `typ` of a proof.
pub const DPOP_TYP: &str = "dpop+jwt";
/// `dpop_signing_alg_values_supported` (RFC 9449 §5.1).
pub const DPOP_SIGNING_ALGS: [&str; 4] = crate::jwk::ALGS;
/// How old a proof may be (by its `iat`).
pub const MAX_PROOF_AGE: Duration = Duration::from_secs(60);
/// Longest `jti` accepted in a proof.
const MAX_JTI_LEN: usize = 256;

/// A proof that passed verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DpopProof {
    /// RFC 7638 thumbprint of the proof's key (what `cnf.jkt` carries).
    pub jkt: String,
    pub jti: String,
    pub iat: i64,
    pub htm: String,
    pub htu: String,
}

fn bad(msg: impl Into<String>) -> StsError {
    StsError::InvalidDpopProof(msg.into())
}

/// `url` without query and fragment, normalized (scheme and host case,
/// default port, empty path → `/`); `None` unless http(s).
fn normalized_htu(url: &str) -> Option<String> {
    let mut u = url::Url::parse(url).ok()?;
    if !matches!(u.scheme(), "http" | "https") || !u.has_host() {
        return None;
    }
    u.set_query(None);
    u.set_fragment(None);
    Some(u.to_string())
}

/// base64url(SHA-256(access token)): the `ath` claim (RFC 9449 §4.2).
pub fn access_token_hash(access_token: &str) -> String {
    URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, access_token.as_bytes()))
}

/// Verifies `proof` for a request `method url`. `access_token`: `None` at
/// the token endpoint (`ath` must then be absent), `Some` at a resource
/// (`ath` must be its hash). `now` in Unix seconds; `leeway_secs` is how
/// far in the future `iat` may be. Replay (`jti`) is the caller's to check.
pub fn verify_proof(
    proof: &str,
    method: &str,
    url: &str,
    access_token: Option<&str>,
    now: i64,
    leeway_secs: i64,
) -> Result<DpopProof, StsError> {
    let jws = Jws::parse(proof).map_err(bad)?;
    if jws.header_str("typ") != Some(DPOP_TYP) {
        return Err(bad(format!("`typ` is not `{DPOP_TYP}`")));
    }
    let jwk = match jws.header.get("jwk") {
        Some(Value::Object(jwk)) => PublicJwk::parse(jwk).map_err(bad)?,
        _ => return Err(bad("the header has no `jwk` object")),
    };
    jws.verify_with(&jwk).map_err(bad)?;

    let jti = jws
        .claim_str("jti")
        .filter(|j| !j.is_empty() && j.len() <= MAX_JTI_LEN)
        .ok_or_else(|| bad("`jti` is missing or invalid"))?;
    let htm = jws
        .claim_str("htm")
        .ok_or_else(|| bad("`htm` is missing"))?;
    if htm != method {
        return Err(bad(format!("`htm` is not `{method}`")));
    }
    let htu = jws
        .claim_str("htu")
        .ok_or_else(|| bad("`htu` is missing"))?;
    let expected = normalized_htu(url).ok_or_else(|| bad(format!("bad request url `{url}`")))?;
    if normalized_htu(htu).as_deref() != Some(expected.as_str()) {
        return Err(bad(format!("`htu` is not `{expected}`")));
    }
    let iat = jws
        .claim_time("iat")
        .ok_or_else(|| bad("`iat` is missing"))?;
    if iat > now.saturating_add(leeway_secs) {
        return Err(bad("`iat` is in the future"));
    }
    if iat < now.saturating_sub(secs(MAX_PROOF_AGE)) {
        return Err(bad("the proof is too old"));
    }
    match (access_token, jws.claim_str("ath")) {
        (None, None) => {}
        (None, Some(_)) => return Err(bad("`ath` is not expected at the token endpoint")),
        (Some(_), None) => return Err(bad("`ath` is missing")),
        (Some(token), Some(ath)) => {
            if !crate::token::ct_eq(ath, &access_token_hash(token)) {
                return Err(bad("`ath` does not match the access token"));
            }
        }
    }
    Ok(DpopProof {
        jkt: jwk.thumbprint(),
        jti: jti.to_owned(),
        iat,
        htm: htm.to_owned(),
        htu: htu.to_owned(),
    })
}

/// The resource-server check: `proof` came with `access_token` on request
/// `method url`, and the token is bound to `expected_jkt` (its
/// `cnf.jkt`). The caller must still refuse a `jti` it has seen (or pass
/// the proof to the STS's `/oauth2/consume`, which does).
pub fn verify_for_resource(
    proof: &str,
    method: &str,
    url: &str,
    access_token: &str,
    expected_jkt: &str,
    now: i64,
    leeway_secs: i64,
) -> Result<DpopProof, StsError> {
    let verified = verify_proof(proof, method, url, Some(access_token), now, leeway_secs)?;
    if !crate::token::ct_eq(&verified.jkt, expected_jkt) {
        return Err(bad("the proof's key is not the one the token is bound to"));
    }
    Ok(verified)
}

// === impl Sts ===

impl Sts {
    /// Verifies the DPoP proof of a token request (`htm` POST, `htu` our
    /// token endpoint or its mTLS alias, no `ath`) and spends its `jti`;
    /// returns the key thumbprint to bind.
    pub async fn verify_token_request_proof(&self, proof: &str) -> Result<DpopProof, StsError> {
        let leeway = secs(self.config.leeway);
        let now = unix_now();
        let mut last = None;
        for endpoint in self.config.token_endpoints() {
            match verify_proof(proof, "POST", &endpoint, None, now, leeway) {
                Ok(p) => {
                    self.spend_proof(&p).await?;
                    return Ok(p);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| bad("no token endpoint")))
    }

    /// For `/oauth2/consume`: checks that `proof`, received by the resource
    /// server with `token` on `method url`, proves the key `claims.cnf.jkt`
    /// names, and spends the proof's `jti`. A token without `cnf.jkt`
    /// cannot be checked this way.
    pub async fn check_dpop_binding(
        &self,
        claims: &AccessTokenClaims,
        token: &str,
        proof: &str,
        method: &str,
        url: &str,
    ) -> Result<DpopProof, StsError> {
        let jkt = claims
            .cnf
            .as_ref()
            .and_then(|c| c.jkt.as_deref())
            .ok_or_else(|| bad("the token is not bound to a dpop key"))?;
        let p = verify_for_resource(
            proof,
            method,
            url,
            token,
            jkt,
            unix_now(),
            secs(self.config.leeway),
        )?;
        self.spend_proof(&p).await?;
        Ok(p)
    }

    /// Single use, across replicas: the same table as token ids, keyed by
    /// a hash of (key, jti) so proofs of different keys never collide.
    async fn spend_proof(&self, p: &DpopProof) -> Result<(), StsError> {
        let key = replay_key("dpop", &[&p.jkt, &p.jti]);
        let expires = p
            .iat
            .saturating_add(secs(MAX_PROOF_AGE))
            .saturating_add(secs(self.config.leeway));
        match self.consume(&key, expires).await {
            Ok(()) => Ok(()),
            Err(StsError::AlreadyConsumed(_)) => Err(bad("the proof was already used")),
            Err(e) => Err(e),
        }
    }
}
