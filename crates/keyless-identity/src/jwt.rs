//! JWT-SVID signing keys, minting and validation.
//!
//! Tokens are built and checked here directly with aws-lc-rs rather than
//! through a JWT library: the signing key lives in the key manager (which
//! returns JOSE `r‖s` signatures), and validation must apply the JWT-SVID
//! profile exactly (allowed `alg` family, `typ` absent/`JWT`/`JOSE`, `kid`
//! required, `exp` and `aud` required, `sub` a SPIFFE ID of this trust
//! domain), which is easiest to audit when every check is a line here.

use std::sync::Arc;

use aws_lc_rs::digest;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED, UnparsedPublicKey};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use keyless_store::Signer;
use serde_json::{Map, Value, json};

use crate::ca::AuthorityState;
use crate::memo::{SignatureMemo, TokenDigest};
use crate::{IdentityError, SpiffeId, TrustDomain, ValidatedJwtSvid};

/// Longest token accepted for validation; JWT-SVIDs are a few hundred bytes.
const MAX_TOKEN_LEN: usize = 16 * 1024;
/// Clock skew tolerated on `exp` and `nbf`, in seconds.
const LEEWAY_SECS: i64 = 5;
/// The algorithms the JWT-SVID profile allows at all; anything else (`none`,
/// `HS256`...) is rejected before any key is looked at.
const PROFILE_ALGS: [&str; 9] = [
    "RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512",
];

/// One JWT signing key, as stored plus its signer.
#[derive(Debug)]
pub(crate) struct JwtKey {
    pub generation: i64,
    pub kid: String,
    pub key_name: String,
    /// Uncompressed SEC1 P-256 point.
    pub public_key: Vec<u8>,
    pub state: AuthorityState,
    pub not_before: i64,
    pub not_after: i64,
    pub created_at: i64,
    pub activated_at: i64,
    /// `None` when the key manager could not load it: the key still
    /// validates, but cannot sign.
    pub signer: Option<Arc<dyn Signer>>,
}

/// The key manager name of JWT key generation `generation`.
pub(crate) fn key_name(generation: i64) -> String {
    format!("jwt-{generation}")
}

fn bad(msg: impl Into<String>) -> IdentityError {
    IdentityError::InvalidJwt(msg.into())
}

/// Base64url `x` and `y` of an uncompressed P-256 point.
pub(crate) fn ec_xy(public: &[u8]) -> Result<(String, String), IdentityError> {
    match public {
        [0x04, rest @ ..] if rest.len() == 64 => {
            let (x, y) = rest.split_at(32);
            Ok((URL_SAFE_NO_PAD.encode(x), URL_SAFE_NO_PAD.encode(y)))
        }
        _ => Err(IdentityError::Corrupt(
            "not an uncompressed p-256 point".into(),
        )),
    }
}

/// The RFC 7638 JWK thumbprint (SHA-256, base64url): a kid that every party
/// can recompute from the key itself.
pub(crate) fn thumbprint(public: &[u8]) -> Result<String, IdentityError> {
    let (x, y) = ec_xy(public)?;
    // Members in lexicographic order, no whitespace, as RFC 7638 requires.
    let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
    Ok(URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, canonical.as_bytes())))
}

// === impl JwtKey ===

impl JwtKey {
    /// The key as a JWK with `use` set to `use_` (`jwt-svid` in SPIFFE
    /// bundles, `sig` in OIDC discovery).
    pub(crate) fn jwk(&self, use_: &str) -> Result<Value, IdentityError> {
        let (x, y) = ec_xy(&self.public_key)?;
        Ok(json!({
            "kty": "EC",
            "crv": "P-256",
            "x": x,
            "y": y,
            "kid": self.kid,
            "use": use_,
            "alg": "ES256",
        }))
    }

    /// Signs `claims` as a compact ES256 JWS.
    pub(crate) fn sign(&self, claims: &Value) -> Result<String, IdentityError> {
        let signer = self
            .signer
            .as_ref()
            .ok_or(IdentityError::NoAuthority("jwt signing key"))?;
        let header = json!({"alg": "ES256", "kid": self.kid, "typ": "JWT"});
        let encode = |v: &Value| {
            serde_json::to_vec(v)
                .map(|b| URL_SAFE_NO_PAD.encode(b))
                .map_err(|e| IdentityError::Crypto(e.to_string()))
        };
        let mut token = encode(&header)?;
        token.push('.');
        token.push_str(&encode(claims)?);
        let signature = signer.sign(token.as_bytes())?;
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(signature));
        Ok(token)
    }
}

fn decode_part(part: &str, what: &str) -> Result<Vec<u8>, IdentityError> {
    URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| bad(format!("{what} is not base64url")))
}

fn decode_json(part: &str, what: &str) -> Result<Map<String, Value>, IdentityError> {
    match serde_json::from_slice(&decode_part(part, what)?) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(bad(format!("{what} is not a json object"))),
    }
}

/// A NumericDate claim as whole seconds (fractions are truncated).
fn numeric_date(claims: &Map<String, Value>, name: &str) -> Result<Option<i64>, IdentityError> {
    match claims.get(name) {
        None => Ok(None),
        Some(v) => v
            .as_i64()
            .or_else(|| v.as_f64().filter(|f| f.is_finite()).map(|f| f as i64))
            .map(Some)
            .ok_or_else(|| bad(format!("`{name}` is not a number"))),
    }
}

/// Validates `token` as a JWT-SVID for `audience`, signed by one of `keys`,
/// whose subject belongs to `td`, at Unix time `now` (seconds).
pub(crate) fn validate(
    keys: &[Arc<JwtKey>],
    memo: &SignatureMemo,
    token: &str,
    audience: &str,
    td: &TrustDomain,
    now: i64,
) -> Result<ValidatedJwtSvid, IdentityError> {
    if audience.is_empty() {
        return Err(IdentityError::InvalidRequest(
            "audience must be specified".into(),
        ));
    }
    if token.len() > MAX_TOKEN_LEN {
        return Err(bad("token too long"));
    }
    let mut parts = token.split('.');
    let (Some(header_b64), Some(claims_b64), Some(sig_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("not a compact jws"));
    };

    let header = decode_json(header_b64, "header")?;
    let alg = header
        .get("alg")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if !PROFILE_ALGS.contains(&alg) {
        return Err(bad(format!("unsupported algorithm `{alg}`")));
    }
    match header.get("typ") {
        None => {}
        Some(Value::String(t)) if t == "JWT" || t == "JOSE" => {}
        Some(_) => return Err(bad("unsupported `typ`")),
    }
    if header.contains_key("crit") {
        return Err(bad("unsupported critical header"));
    }
    let kid = header
        .get("kid")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("missing `kid`"))?;
    let key = keys
        .iter()
        .find(|k| k.kid == kid)
        .ok_or_else(|| bad(format!("unknown key id `{kid}`")))?;
    // Every key of this trust domain is P-256: any other alg is a downgrade
    // or confusion attempt, not a token we issued.
    if alg != "ES256" {
        return Err(bad(format!("algorithm `{alg}` does not match the key")));
    }
    let digest = TokenDigest::of(token);
    if !memo.contains(digest, &key.public_key) {
        let signature = decode_part(sig_b64, "signature")?;
        let signing_input_len = header_b64.len() + 1 + claims_b64.len();
        let signing_input = token.get(..signing_input_len).unwrap_or_default();
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &key.public_key)
            .verify(signing_input.as_bytes(), &signature)
            .map_err(|_| bad("signature verification failed"))?;
        memo.insert(digest, &key.public_key);
    }

    let claims = decode_json(claims_b64, "payload")?;
    let exp = numeric_date(&claims, "exp")?.ok_or_else(|| bad("missing `exp`"))?;
    if now >= exp.saturating_add(LEEWAY_SECS) {
        return Err(bad("token has expired"));
    }
    if let Some(nbf) = numeric_date(&claims, "nbf")?
        && now.saturating_add(LEEWAY_SECS) < nbf
    {
        return Err(bad("token is not yet valid"));
    }
    let audience_ok = match claims.get("aud") {
        Some(Value::String(a)) => a == audience,
        Some(Value::Array(list)) => list.iter().any(|a| a.as_str() == Some(audience)),
        _ => return Err(bad("missing `aud`")),
    };
    if !audience_ok {
        return Err(bad(format!("audience does not contain `{audience}`")));
    }
    let sub = claims
        .get("sub")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("missing `sub`"))?;
    let spiffe_id =
        SpiffeId::new(sub).map_err(|e| bad(format!("`sub` is not a spiffe id: {e}")))?;
    if !spiffe_id.is_member_of(td) {
        return Err(bad(format!("`sub` is not in trust domain `{td}`")));
    }
    Ok(ValidatedJwtSvid { spiffe_id, claims })
}
