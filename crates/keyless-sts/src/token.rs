//! The STS's access tokens: RFC 9068 JWTs signed ES256 with the STS's own
//! key from the key manager, and their strict verification.
//!
//! Like `keyless-identity`, tokens are built and checked here directly with
//! aws-lc-rs: the signer lives in the key manager (JOSE `r‖s` signatures),
//! and verification must be exactly the profile we issue — `alg` ES256 only,
//! `typ` exactly `at+jwt`, a `kid` we know, no `crit`, `iss` ours, `exp`
//! required, `nbf`/`iat` not in the future beyond the leeway, `aud` checked —
//! which is easiest to audit when every check is one line here.

use keyless_identity::memo::{SignatureMemo, TokenDigest};
use std::sync::Arc;

use aws_lc_rs::digest;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED, UnparsedPublicKey};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use keyless_store::Signer;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value, json};

use crate::StsError;

/// The JOSE `typ` of every token we issue (RFC 9068 §2.1).
pub const ACCESS_TOKEN_TYP: &str = "at+jwt";
/// Longest token accepted for verification.
const MAX_TOKEN_LEN: usize = 16 * 1024;

/// A list of strings that serializes as a bare string when it has exactly
/// one element (the common JWT convention for `aud` and `may_act.sub`) and
/// accepts both forms.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StringList(pub Vec<String>);

impl StringList {
    pub fn one(s: impl Into<String>) -> Self {
        Self(vec![s.into()])
    }
    pub fn contains(&self, s: &str) -> bool {
        self.0.iter().any(|x| x == s)
    }
    pub fn iter(&self) -> impl Iterator<Item = &String> {
        self.0.iter()
    }
}

impl Serialize for StringList {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0.as_slice() {
            [one] => s.serialize_str(one),
            many => many.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for StringList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            One(String),
            Many(Vec<String>),
        }
        Ok(match Form::deserialize(d)? {
            Form::One(s) => Self(vec![s]),
            Form::Many(v) => Self(v),
        })
    }
}

/// `may_act` (RFC 8693 §4.4): who may act for the subject. `sub` lists the
/// agents' SPIFFE IDs the user allowed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MayAct {
    pub sub: StringList,
}

/// `act` (RFC 8693 §4.1): the current actor; a nested `act` is the actor
/// before it (the delegation chain, outermost = current).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    pub sub: String,
    /// Set when the actor did not prove itself to the STS but was vouched
    /// for: the SPIFFE ID of the client (an actor attester, `actor.rs`)
    /// that authenticated it by its X509-SVID over mTLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attested_by: Option<String>,
    /// With `attested_by`: the thumbprint (RFC 8705 `x5t#S256`) of the
    /// X509-SVID the actor authenticated with.
    #[serde(rename = "x5t#S256", default, skip_serializing_if = "Option::is_none")]
    pub x5t_s256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<Box<Actor>>,
}

impl Actor {
    /// Number of actors in the chain, this one included.
    pub fn depth(&self) -> usize {
        1 + self.act.as_ref().map_or(0, |a| a.depth())
    }
}

/// The claims of a Keyless access token: a user access token (no `act`) or
/// an OBO token (with `act` and `authorization_details`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccessTokenClaims {
    pub iss: String,
    pub sub: String,
    pub aud: StringList,
    pub client_id: String,
    pub iat: i64,
    pub exp: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    pub jti: String,
    /// The user's session id (OIDC `sid`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// The user's email, so that events can name a person, not an opaque id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// When the user authenticated (Unix seconds), for the session age.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_time: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub may_act: Option<MayAct>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<Actor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization_details: Option<Vec<Value>>,
    /// The sender constraint (RFC 7800 `cnf`): the DPoP key (RFC 9449) or
    /// the client certificate (RFC 8705) a presenter must prove.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cnf: Option<Confirmation>,
    /// The grant that issued a service token: `client_credentials`
    /// ([`GTY_CLIENT_CREDENTIALS`]). Absent from user and OBO tokens, so a
    /// service token never passes for a user's, and the other way round.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gty: Option<String>,
}

/// `gty` of a token issued by the `client_credentials` grant.
pub const GTY_CLIENT_CREDENTIALS: &str = "client_credentials";

/// `cnf` of a sender-constrained token. A resource server must check every
/// member present: a token bound to both a DPoP key and a certificate needs
/// both proofs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confirmation {
    /// RFC 9449 §6.1: base64url RFC 7638 SHA-256 thumbprint of the DPoP key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jkt: Option<String>,
    /// RFC 8705 §3.1: base64url SHA-256 of the client certificate's DER.
    #[serde(rename = "x5t#S256", default, skip_serializing_if = "Option::is_none")]
    pub x5t_s256: Option<String>,
}

impl Confirmation {
    /// Whether nothing is bound (such a `cnf` is never put in a token).
    pub fn is_empty(&self) -> bool {
        self.jkt.is_none() && self.x5t_s256.is_none()
    }
}

impl AccessTokenClaims {
    /// Whether this token came out of a token exchange.
    pub fn is_obo(&self) -> bool {
        self.act.is_some()
    }
    /// Whether this is a service token of the `client_credentials` grant
    /// (a workload's own token: no user, no session, no actor).
    pub fn is_service(&self) -> bool {
        self.gty.as_deref() == Some(GTY_CLIENT_CREDENTIALS)
    }
    /// Who the user is for events: the email when known, else the subject.
    pub fn user_label(&self) -> &str {
        self.email.as_deref().unwrap_or(&self.sub)
    }
}

/// The claims of an OIDC ID token (`typ: JWT`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdTokenClaims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub iat: i64,
    pub exp: i64,
    pub auth_time: i64,
    pub sid: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
}

/// Whether a signing key still signs or only verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    Active,
    Retired,
}

impl KeyState {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Retired => "retired",
        }
    }
    pub(crate) fn parse(s: &str) -> Result<Self, StsError> {
        match s {
            "active" => Ok(Self::Active),
            "retired" => Ok(Self::Retired),
            other => Err(StsError::Corrupt(format!("unknown key state `{other}`"))),
        }
    }
}

/// One STS signing key generation.
#[derive(Debug)]
pub(crate) struct SigningKey {
    pub generation: i64,
    pub kid: String,
    /// Uncompressed SEC1 P-256 point.
    pub public_key: Vec<u8>,
    pub state: KeyState,
    /// `None` when the key manager could not load it: it still verifies.
    pub signer: Option<Arc<dyn Signer>>,
}

/// The key manager name of generation `generation`.
pub(crate) fn key_name(generation: i64) -> String {
    format!("sts-signing-{generation}")
}

/// Base64url `x` and `y` of an uncompressed P-256 point.
fn ec_xy(public: &[u8]) -> Result<(String, String), StsError> {
    match public {
        [0x04, rest @ ..] if rest.len() == 64 => {
            let (x, y) = rest.split_at(32);
            Ok((URL_SAFE_NO_PAD.encode(x), URL_SAFE_NO_PAD.encode(y)))
        }
        _ => Err(StsError::Corrupt("not an uncompressed p-256 point".into())),
    }
}

/// RFC 7638 JWK thumbprint: a kid any party can recompute from the key.
pub(crate) fn thumbprint(public: &[u8]) -> Result<String, StsError> {
    let (x, y) = ec_xy(public)?;
    let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
    Ok(URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, canonical.as_bytes())))
}

// === impl SigningKey ===

impl SigningKey {
    pub(crate) fn jwk(&self) -> Result<Value, StsError> {
        let (x, y) = ec_xy(&self.public_key)?;
        Ok(json!({
            "kty": "EC", "crv": "P-256", "x": x, "y": y,
            "kid": self.kid, "use": "sig", "alg": "ES256",
        }))
    }

    /// Signs `claims` as a compact JWS with header `{alg: ES256, typ, kid}`
    /// (`at+jwt` for access tokens, `JWT` for ID tokens: the different
    /// `typ` keeps an ID token from ever passing as an access token).
    pub(crate) fn sign(&self, claims: &impl Serialize, typ: &str) -> Result<String, StsError> {
        let signer = self
            .signer
            .as_ref()
            .ok_or_else(|| StsError::Crypto("signing key is not loaded".into()))?;
        let header = json!({"alg": "ES256", "typ": typ, "kid": self.kid});
        let encode = |v: &[u8]| URL_SAFE_NO_PAD.encode(v);
        let json = |e: serde_json::Error| StsError::Crypto(e.to_string());
        let mut token = encode(&serde_json::to_vec(&header).map_err(json)?);
        token.push('.');
        token.push_str(&encode(&serde_json::to_vec(claims).map_err(json)?));
        let signature = signer.sign(token.as_bytes())?;
        token.push('.');
        token.push_str(&encode(&signature));
        Ok(token)
    }
}

/// What a verified token must satisfy beyond signature and profile.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Expect<'a> {
    pub issuer: &'a str,
    /// `Some(aud)`: `aud` must contain it. `None`: any audience (the caller
    /// checks it itself, e.g. an OBO subject token's audience is narrowed).
    pub audience: Option<&'a str>,
    pub leeway_secs: i64,
    pub now: i64,
}

fn bad(msg: impl Into<String>) -> StsError {
    StsError::InvalidToken(msg.into())
}

fn decode_json(part: &str, what: &str) -> Result<Map<String, Value>, StsError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| bad(format!("{what} is not base64url")))?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(bad(format!("{what} is not a json object"))),
    }
}

/// The `kid` of a compact JWS header, without verifying anything (to decide
/// whether the key ring needs a refresh).
pub(crate) fn peek_kid(token: &str) -> Option<String> {
    let header = token.split('.').next()?;
    decode_json(header, "header")
        .ok()?
        .get("kid")?
        .as_str()
        .map(str::to_owned)
}

/// Verifies `token` as an access token we issued with one of `keys`.
pub(crate) fn verify(
    keys: &[Arc<SigningKey>],
    memo: &SignatureMemo,
    token: &str,
    expect: Expect<'_>,
) -> Result<AccessTokenClaims, StsError> {
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
    // Checked before any key is looked at: `none`, `HS256` with our public
    // key as the secret, or any other algorithm is not a token we issued.
    match header.get("alg").and_then(Value::as_str) {
        Some("ES256") => {}
        Some(other) => return Err(bad(format!("unsupported algorithm `{other}`"))),
        None => return Err(bad("missing `alg`")),
    }
    match header.get("typ").and_then(Value::as_str) {
        Some(ACCESS_TOKEN_TYP) => {}
        _ => return Err(bad("`typ` is not `at+jwt`")),
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
    // Only the P-256 verification is memoized; every other check below
    // runs on every use.
    let digest = TokenDigest::of(token);
    if !memo.contains(digest, &key.public_key) {
        let signature = URL_SAFE_NO_PAD
            .decode(sig_b64)
            .map_err(|_| bad("signature is not base64url"))?;
        let signing_input = token
            .get(..header_b64.len() + 1 + claims_b64.len())
            .unwrap_or_default();
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &key.public_key)
            .verify(signing_input.as_bytes(), &signature)
            .map_err(|_| bad("signature verification failed"))?;
        memo.insert(digest, &key.public_key);
    }

    let raw = decode_json(claims_b64, "payload")?;
    let claims: AccessTokenClaims = serde_json::from_value(Value::Object(raw))
        .map_err(|e| bad(format!("claims do not match the access token profile: {e}")))?;
    if claims.iss != expect.issuer {
        return Err(bad(format!("issuer `{}` is not this sts", claims.iss)));
    }
    let leeway = expect.leeway_secs;
    if expect.now >= claims.exp.saturating_add(leeway) {
        return Err(bad("token has expired"));
    }
    if let Some(nbf) = claims.nbf
        && expect.now.saturating_add(leeway) < nbf
    {
        return Err(bad("token is not yet valid"));
    }
    if expect.now.saturating_add(leeway) < claims.iat {
        return Err(bad("token was issued in the future"));
    }
    if let Some(aud) = expect.audience
        && !claims.aud.contains(aud)
    {
        return Err(bad(format!("audience does not contain `{aud}`")));
    }
    if claims.sub.is_empty() || claims.jti.is_empty() {
        return Err(bad("empty `sub` or `jti`"));
    }
    Ok(claims)
}

/// A random, URL-safe identifier (128 bits).
pub(crate) fn random_id() -> Result<String, StsError> {
    let mut b = [0u8; 16];
    aws_lc_rs::rand::fill(&mut b).map_err(|_| StsError::Crypto("rng failure".into()))?;
    Ok(URL_SAFE_NO_PAD.encode(b))
}

/// A random, URL-safe secret (256 bits): codes, refresh tokens, cookies.
pub(crate) fn random_secret() -> Result<String, StsError> {
    let mut b = [0u8; 32];
    aws_lc_rs::rand::fill(&mut b).map_err(|_| StsError::Crypto("rng failure".into()))?;
    Ok(URL_SAFE_NO_PAD.encode(b))
}

/// The stored form of a secret: base64url SHA-256. Secrets are 256-bit
/// random, so a plain hash is enough (no salt, no stretching needed).
pub(crate) fn secret_hash(secret: &str) -> String {
    URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, secret.as_bytes()))
}

/// PKCE S256 (RFC 7636 §4.2): base64url(SHA-256(verifier)).
pub(crate) fn pkce_s256(verifier: &str) -> String {
    secret_hash(verifier)
}

/// Constant-time equality of two strings (CSRF tokens, PKCE challenges).
pub(crate) fn ct_eq(a: &str, b: &str) -> bool {
    aws_lc_rs::constant_time::verify_slices_are_equal(a.as_bytes(), b.as_bytes()).is_ok()
}
