//! Security Event Tokens (RFC 8417 as profiled by SSF 1.0): signing for the
//! transmitter and strict verification for the receiver.
//!
//! A SET is a compact ES256 JWS with header `typ: secevent+jwt`. Its claims
//! are `iss`, `jti`, `iat`, `aud`, optionally `txn`, a top-level `sub_id`,
//! and `events` holding exactly one event. It has no `sub` and no `exp`
//! (RFC 8417 §2.2, SSF 1.0 §4): a SET states that something happened and is
//! not an access token, so one that looks like an access token is refused
//! lest it be confused for one.
//!
//! Verification never trusts keys named by the token itself (`jku`, `jwk`,
//! `x5u` are ignored): keys come from the caller, who found them through the
//! transmitter's metadata (see [`crate::keys`]). Every refusal maps to an
//! RFC 8935 error code through [`SetError::code`].

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::digest;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED, UnparsedPublicKey};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use keyless_store::{KeyAlgorithm, Signer};
use serde_json::{Map, Value, json};

use crate::subject::validate_subject;

/// Largest SET accepted, in bytes of compact serialization. Events are
/// small; a bigger token is an attack on the parser, not an event.
pub const MAX_SET_LEN: usize = 64 * 1024;

/// The `typ` header value of a SET.
pub const SET_TYP: &str = "secevent+jwt";
/// The media type of a SET (RFC 8417 §2.3), also accepted as `typ`.
pub const SET_MEDIA_TYPE: &str = "application/secevent+jwt";

const ES256: &str = "ES256";
const P256_POINT_LEN: usize = 65;
const P256_COORD_LEN: usize = 32;
const ES256_SIG_LEN: usize = 64;

/// Why a SET could not be signed or was refused.
#[derive(Debug, thiserror::Error)]
pub enum SetError {
    /// Not a well-formed compact JWS with a SET header.
    #[error("malformed security event token: {0}")]
    Malformed(String),
    /// Well-formed and signed, but the claims (or the event) break RFC 8417,
    /// SSF 1.0 or CAEP 1.0.
    #[error("invalid security event token: {0}")]
    InvalidRequest(String),
    /// The header names an algorithm other than ES256 (including `none`).
    #[error("unsupported signing algorithm `{0}`: only ES256 is accepted")]
    Algorithm(String),
    /// No key of the transmitter matches the token's `kid`.
    #[error("no key of the transmitter has kid `{}`", .0.as_deref().unwrap_or("(none)"))]
    UnknownKey(Option<String>),
    /// The signature does not verify with the selected key.
    #[error("the signature does not verify with the transmitter's key")]
    BadSignature,
    /// The transmitter's metadata or keys could not be obtained or used.
    #[error("{0}")]
    Keys(String),
    /// `iss` is not the expected (or a trusted) transmitter.
    #[error("invalid issuer: {0}")]
    InvalidIssuer(String),
    /// `aud` does not contain the expected receiver.
    #[error("invalid audience: {0}")]
    InvalidAudience(String),
    /// The `jti` (held here for logs) was already received: the receiver's
    /// replay check.
    #[error("jti `{0}` already received")]
    Replay(String),
    /// The push request did not authenticate (RFC 8935 `authentication_failed`).
    #[error("authentication failed: {0}")]
    Authentication(String),
    /// The caller may not deliver to this receiver (RFC 8935 `access_denied`).
    #[error("access denied: {0}")]
    AccessDenied(String),
    /// The transmitter could not build or sign a SET (never sent on the wire).
    #[error("cannot sign security event token: {0}")]
    Signing(String),
    /// A failure on our side (storage, HTTP client), not the SET's fault.
    #[error("internal error: {0}")]
    Internal(String),
}

// === impl SetError ===

impl SetError {
    /// The RFC 8935 §2.3 error code (`err`) for this refusal.
    ///
    /// [`SetError::Signing`] and [`SetError::Internal`] are not the SET's
    /// fault and have no RFC 8935 code; they report `invalid_request` only so
    /// the function is total. An HTTP layer should answer them with a 5xx
    /// (see [`SetError::is_internal`]) so the transmitter retries.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Malformed(_)
            | Self::InvalidRequest(_)
            | Self::Replay(_)
            | Self::Signing(_)
            | Self::Internal(_) => "invalid_request",
            Self::Algorithm(_) | Self::UnknownKey(_) | Self::BadSignature | Self::Keys(_) => {
                "invalid_key"
            }
            Self::InvalidIssuer(_) => "invalid_issuer",
            Self::InvalidAudience(_) => "invalid_audience",
            Self::Authentication(_) => "authentication_failed",
            Self::AccessDenied(_) => "access_denied",
        }
    }

    /// The human-readable `description` sent alongside [`SetError::code`].
    pub fn description(&self) -> String {
        self.to_string()
    }

    /// Whether the failure is ours rather than the SET's (a retry may succeed).
    pub fn is_internal(&self) -> bool {
        matches!(self, Self::Signing(_) | Self::Internal(_))
    }
}

fn malformed(msg: impl Into<String>) -> SetError {
    SetError::Malformed(msg.into())
}

fn invalid(msg: impl Into<String>) -> SetError {
    SetError::InvalidRequest(msg.into())
}

// === impl PublicKey ===

/// A transmitter's ES256 verification key, from its JWKS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    kid: Option<String>,
    /// Uncompressed SEC1 point: 0x04 ‖ x ‖ y.
    point: Vec<u8>,
}

impl PublicKey {
    /// Parses a public JWK. Only EC P-256 keys are accepted; a JWK holding
    /// the private scalar `d` is refused (a transmitter publishing it has
    /// leaked its key), as are keys marked for another `use` or `alg`.
    pub fn from_jwk(v: &Value) -> Result<Self, String> {
        let obj = v.as_object().ok_or("a jwk must be a JSON object")?;
        let text = |name: &str| obj.get(name).and_then(Value::as_str);
        if text("kty") != Some("EC") {
            return Err("jwk `kty` must be `EC`".to_owned());
        }
        if text("crv") != Some("P-256") {
            return Err("jwk `crv` must be `P-256`".to_owned());
        }
        if obj.contains_key("d") {
            return Err("jwk holds a private key (`d`); refusing it".to_owned());
        }
        if let Some(u) = obj.get("use")
            && u.as_str() != Some("sig")
        {
            return Err(format!("jwk `use` is {u}, not `sig`"));
        }
        if let Some(a) = obj.get("alg")
            && a.as_str() != Some(ES256)
        {
            return Err(format!("jwk `alg` is {a}, not `ES256`"));
        }
        let coord = |name: &str| -> Result<Vec<u8>, String> {
            let b64 = text(name).ok_or_else(|| format!("jwk `{name}` must be a string"))?;
            let bytes = URL_SAFE_NO_PAD
                .decode(b64)
                .map_err(|_| format!("jwk `{name}` is not base64url"))?;
            if bytes.len() == P256_COORD_LEN {
                Ok(bytes)
            } else {
                Err(format!(
                    "jwk `{name}` is {} bytes, a P-256 coordinate is {P256_COORD_LEN}",
                    bytes.len()
                ))
            }
        };
        let kid = match obj.get("kid") {
            None => None,
            Some(Value::String(k)) => Some(k.clone()),
            Some(_) => return Err("jwk `kid` must be a string".to_owned()),
        };
        let mut point = Vec::with_capacity(P256_POINT_LEN);
        point.push(0x04);
        point.extend(coord("x")?);
        point.extend(coord("y")?);
        Ok(Self { kid, point })
    }

    /// A key from an uncompressed SEC1 P-256 point (0x04 ‖ x ‖ y).
    pub fn from_sec1(kid: Option<String>, point: &[u8]) -> Result<Self, String> {
        match point {
            [0x04, rest @ ..] if rest.len() == 2 * P256_COORD_LEN => Ok(Self {
                kid,
                point: point.to_vec(),
            }),
            _ => Err("not an uncompressed P-256 point".to_owned()),
        }
    }

    /// The key's `kid`, if its JWK had one.
    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// The uncompressed SEC1 point.
    pub fn sec1(&self) -> &[u8] {
        &self.point
    }

    /// The public JWK (`kty`, `crv`, `x`, `y`, and `kid` when known).
    pub fn jwk(&self) -> Value {
        let (x, y) = self.xy();
        let mut jwk = json!({"kty": "EC", "crv": "P-256", "x": x, "y": y});
        if let (Some(kid), Some(obj)) = (&self.kid, jwk.as_object_mut()) {
            obj.insert("kid".to_owned(), Value::String(kid.clone()));
        }
        jwk
    }

    /// The RFC 7638 thumbprint: base64url SHA-256 of the canonical JWK.
    pub fn thumbprint(&self) -> String {
        let (x, y) = self.xy();
        // Required members only, in lexicographic order, no whitespace (RFC 7638 §3).
        let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
        URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, canonical.as_bytes()))
    }

    fn xy(&self) -> (String, String) {
        let coords = self.point.get(1..).unwrap_or_default();
        let (x, y) = coords.split_at(coords.len() / 2);
        (URL_SAFE_NO_PAD.encode(x), URL_SAFE_NO_PAD.encode(y))
    }

    fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &self.point)
            .verify(message, signature)
            .is_ok()
    }
}

/// Reads the usable keys of a JWKS (`{"keys": [...]}`). Keys of another
/// type, curve, use or algorithm are skipped, since a transmitter may
/// publish keys for other purposes; it is an error when none is left, or
/// when a key publishes its private part.
pub fn parse_jwks(v: &Value) -> Result<Vec<PublicKey>, String> {
    let keys = v
        .get("keys")
        .and_then(Value::as_array)
        .ok_or("a jwks must be an object with a `keys` array")?;
    let mut usable = Vec::new();
    for key in keys {
        match PublicKey::from_jwk(key) {
            Ok(k) => usable.push(k),
            Err(e) if key.get("d").is_some() => return Err(e),
            Err(_) => {}
        }
    }
    if usable.is_empty() {
        return Err(format!(
            "the jwks has no usable key (EC P-256 for ES256 signatures) among its {}",
            keys.len()
        ));
    }
    Ok(usable)
}

// === impl SetClaims ===

/// The claims of a SET to sign.
#[derive(Debug, Clone, PartialEq)]
pub struct SetClaims {
    /// The transmitter.
    pub iss: String,
    /// Unique id of this SET (the receiver's replay and acknowledgement key).
    pub jti: String,
    /// Issued-at, seconds since the epoch.
    pub iat: i64,
    /// Receivers; one is serialized as a string, several as an array.
    pub aud: Vec<String>,
    /// Transaction id tying several SETs to one underlying change.
    pub txn: Option<String>,
    /// The subject (RFC 9493 / SSF `complex`).
    pub sub_id: Value,
    /// The single event's type URI.
    pub event_type: String,
    /// The single event's payload object.
    pub event: Value,
}

impl SetClaims {
    /// Claims for one event, with a fresh random `jti` and `iat` now.
    pub fn new(
        iss: impl Into<String>,
        aud: Vec<String>,
        sub_id: Value,
        event_type: impl Into<String>,
        event: Value,
    ) -> Self {
        Self {
            iss: iss.into(),
            jti: uuid::Uuid::new_v4().simple().to_string(),
            iat: now_secs(),
            aud,
            txn: None,
            sub_id,
            event_type: event_type.into(),
            event,
        }
    }

    /// The JSON claims set: `{iss, jti, iat, aud, txn?, sub_id, events: {<type>: <event>}}`.
    pub fn to_json(&self) -> Value {
        let aud = match self.aud.as_slice() {
            [one] => Value::String(one.clone()),
            many => Value::from(many.to_vec()),
        };
        let mut events = Map::new();
        events.insert(self.event_type.clone(), self.event.clone());
        let mut claims = Map::new();
        claims.insert("iss".to_owned(), Value::String(self.iss.clone()));
        claims.insert("jti".to_owned(), Value::String(self.jti.clone()));
        claims.insert("iat".to_owned(), Value::from(self.iat));
        claims.insert("aud".to_owned(), aud);
        if let Some(txn) = &self.txn {
            claims.insert("txn".to_owned(), Value::String(txn.clone()));
        }
        claims.insert("sub_id".to_owned(), self.sub_id.clone());
        claims.insert("events".to_owned(), Value::Object(events));
        Value::Object(claims)
    }
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

// === impl SetSigner ===

/// Signs SETs with the transmitter's ES256 key.
#[derive(Debug, Clone)]
pub struct SetSigner {
    signer: Arc<dyn Signer>,
    issuer: String,
    public: PublicKey,
    kid: String,
}

impl SetSigner {
    /// A signer for `issuer`; the key must be ECDSA P-256. Its `kid` is the
    /// key's RFC 7638 thumbprint, so receivers can recompute it.
    pub fn new(signer: Arc<dyn Signer>, issuer: impl Into<String>) -> Result<Self, SetError> {
        if signer.algorithm() != KeyAlgorithm::EcdsaP256 {
            return Err(SetError::Signing(format!(
                "key `{}` is not an ECDSA P-256 key; SETs are signed with ES256",
                signer.name()
            )));
        }
        let bare = PublicKey::from_sec1(None, signer.public_key())
            .map_err(|e| SetError::Signing(format!("key `{}`: {e}", signer.name())))?;
        let kid = bare.thumbprint();
        let public = PublicKey {
            kid: Some(kid.clone()),
            point: bare.point,
        };
        Ok(Self {
            signer,
            issuer: issuer.into(),
            public,
            kid,
        })
    }

    /// The transmitter's issuer identifier.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The key id put in every SET header.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The verification key as a [`PublicKey`].
    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }

    /// The public JWK to publish at `jwks_uri` (with `kid`, `use: sig`, `alg: ES256`).
    pub fn jwk(&self) -> Value {
        let mut jwk = self.public.jwk();
        if let Some(obj) = jwk.as_object_mut() {
            obj.insert("use".to_owned(), Value::String("sig".to_owned()));
            obj.insert("alg".to_owned(), Value::String(ES256.to_owned()));
        }
        jwk
    }

    /// Signs `claims` as a compact JWS. Refuses claims a conforming receiver
    /// would refuse: an `iss` other than this signer's, no audience, an
    /// empty `jti`, an invalid `sub_id` or a non-object event.
    pub fn sign(&self, claims: &SetClaims) -> Result<String, SetError> {
        let refuse = |msg: String| Err(SetError::Signing(msg));
        if claims.iss != self.issuer {
            return refuse(format!(
                "claims `iss` `{}` differs from the signer's issuer `{}`",
                claims.iss, self.issuer
            ));
        }
        if claims.aud.is_empty() {
            return refuse("a SET needs at least one audience".to_owned());
        }
        if claims.jti.is_empty() {
            return refuse("a SET needs a non-empty `jti`".to_owned());
        }
        if claims.event_type.is_empty() || !claims.event.is_object() {
            return refuse("the event needs a type and an object payload".to_owned());
        }
        validate_subject(&claims.sub_id).map_err(|e| SetError::Signing(format!("sub_id: {e}")))?;
        let header = json!({"alg": ES256, "typ": SET_TYP, "kid": self.kid});
        let encode = |v: &Value| {
            serde_json::to_vec(v)
                .map(|b| URL_SAFE_NO_PAD.encode(b))
                .map_err(|e| SetError::Signing(e.to_string()))
        };
        let signing_input = format!("{}.{}", encode(&header)?, encode(&claims.to_json())?);
        let signature = self
            .signer
            .sign(signing_input.as_bytes())
            .map_err(|e| SetError::Signing(e.to_string()))?;
        Ok(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature)
        ))
    }
}

// === verification ===

/// A SET whose signature and claims were checked by [`verify`].
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedSet {
    /// The transmitter (equal to the expected issuer).
    pub iss: String,
    /// The SET's unique id: the key for replay detection and acknowledgement.
    pub jti: String,
    /// Issued-at, seconds since the epoch (a fractional NumericDate is truncated).
    pub iat: i64,
    /// Every audience the SET names (the expected one among them).
    pub aud: Vec<String>,
    /// Transaction id, when the transmitter sent one.
    pub txn: Option<String>,
    /// The subject, valid per [`crate::subject::validate_subject`].
    pub sub_id: Value,
    /// The single event's type URI.
    pub event_type: String,
    /// The single event's payload object.
    pub event: Value,
    /// The `kid` of the key that verified the signature, if it has one.
    pub kid: Option<String>,
}

/// The three parts of a compact JWS, decoded but not verified.
struct Parts<'a> {
    header: Map<String, Value>,
    claims: Map<String, Value>,
    signing_input: &'a str,
    signature: Vec<u8>,
}

fn split(token: &str) -> Result<Parts<'_>, SetError> {
    if token.len() > MAX_SET_LEN {
        return Err(malformed(format!(
            "token is {} bytes, the limit is {MAX_SET_LEN}",
            token.len()
        )));
    }
    let mut pieces = token.split('.');
    let (Some(h), Some(c), Some(s), None) =
        (pieces.next(), pieces.next(), pieces.next(), pieces.next())
    else {
        return Err(malformed("not a compact JWS of three dot-separated parts"));
    };
    let signing_input = token
        .get(..h.len() + 1 + c.len())
        .ok_or_else(|| malformed("not a compact JWS"))?;
    let decode = |part: &str, what: &str| {
        URL_SAFE_NO_PAD
            .decode(part)
            .map_err(|_| malformed(format!("the {what} is not base64url without padding")))
    };
    let object = |bytes: Vec<u8>, what: &str| match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(malformed(format!("the {what} is not a JSON object"))),
        Err(e) => Err(malformed(format!("the {what} is not JSON: {e}"))),
    };
    Ok(Parts {
        header: object(decode(h, "header")?, "header")?,
        claims: object(decode(c, "payload")?, "payload")?,
        signing_input,
        signature: decode(s, "signature")?,
    })
}

/// Looks, without verifying anything, at the header's `kid` and the `iss`
/// claim, so a receiver knows whose keys to fetch before calling [`verify`].
pub fn peek(token: &str) -> Result<(Option<String>, String), SetError> {
    let parts = split(token)?;
    let kid = header_kid(&parts.header)?;
    let iss = match parts.claims.get("iss") {
        Some(Value::String(iss)) => iss.clone(),
        Some(_) => return Err(invalid("`iss` must be a string")),
        None => return Err(invalid("`iss` is missing")),
    };
    Ok((kid, iss))
}

fn header_kid(header: &Map<String, Value>) -> Result<Option<String>, SetError> {
    match header.get("kid") {
        None => Ok(None),
        Some(Value::String(kid)) => Ok(Some(kid.clone())),
        Some(_) => Err(malformed("header `kid` must be a string")),
    }
}

/// Checks the JOSE header: `typ` is `secevent+jwt` or
/// `application/secevent+jwt` (media types compare case-insensitively,
/// RFC 7515 §4.1.9), `alg` is exactly `ES256`, and there is no `crit`
/// (Keyless implements no header extension, and RFC 7515 §4.1.11 requires
/// refusing any it does not understand).
fn check_header(header: &Map<String, Value>) -> Result<(), SetError> {
    match header.get("typ") {
        Some(Value::String(typ))
            if typ.eq_ignore_ascii_case(SET_TYP) || typ.eq_ignore_ascii_case(SET_MEDIA_TYPE) => {}
        Some(Value::String(typ)) => {
            return Err(malformed(format!(
                "header `typ` is `{typ}`, a SET has `{SET_TYP}`"
            )));
        }
        Some(_) => return Err(malformed("header `typ` must be a string")),
        None => {
            return Err(malformed(format!(
                "header `typ` is missing, a SET has `{SET_TYP}`"
            )));
        }
    }
    match header.get("alg") {
        Some(Value::String(alg)) if alg == ES256 => {}
        Some(Value::String(alg)) => return Err(SetError::Algorithm(alg.clone())),
        Some(other) => return Err(SetError::Algorithm(other.to_string())),
        None => return Err(malformed("header `alg` is missing")),
    }
    if header.contains_key("crit") {
        return Err(malformed(
            "header `crit` names extensions Keyless does not implement",
        ));
    }
    Ok(())
}

/// Picks the key named by `kid`; with no `kid`, the only key if there is
/// exactly one (several unnamed candidates would make the choice a guess).
fn select_key<'k>(keys: &'k [PublicKey], kid: Option<&str>) -> Result<&'k PublicKey, SetError> {
    match kid {
        Some(kid) => keys.iter().find(|k| k.kid() == Some(kid)),
        None => match keys {
            [only] => Some(only),
            _ => None,
        },
    }
    .ok_or_else(|| SetError::UnknownKey(kid.map(str::to_owned)))
}

/// Verifies a SET strictly: structure and size, header, signature with
/// one of `keys`, then the claims (`iss` == `expected_iss`, `aud` includes
/// `expected_aud`, `jti`, `iat`, a valid top-level `sub_id`, no `sub` or
/// `exp`, exactly one event whose payload is an object, `txn` a string).
///
/// Replay (`jti` seen before) is the caller's check: it needs storage.
pub fn verify(
    token: &str,
    keys: &[PublicKey],
    expected_iss: &str,
    expected_aud: &str,
) -> Result<VerifiedSet, SetError> {
    let parts = split(token)?;
    check_header(&parts.header)?;
    let kid = header_kid(&parts.header)?;
    let key = select_key(keys, kid.as_deref())?;
    // r‖s of 32 bytes each; any other length cannot be a valid ES256 signature.
    if parts.signature.len() != ES256_SIG_LEN
        || !key.verifies(parts.signing_input.as_bytes(), &parts.signature)
    {
        return Err(SetError::BadSignature);
    }
    let mut set = check_claims(&parts.claims, expected_iss, expected_aud)?;
    set.kid = key.kid.clone();
    Ok(set)
}

fn check_claims(
    claims: &Map<String, Value>,
    expected_iss: &str,
    expected_aud: &str,
) -> Result<VerifiedSet, SetError> {
    let iss = match claims.get("iss") {
        Some(Value::String(iss)) => iss.clone(),
        Some(_) => return Err(invalid("`iss` must be a string")),
        None => return Err(invalid("`iss` is missing")),
    };
    if iss != expected_iss {
        return Err(SetError::InvalidIssuer(format!(
            "`{iss}` is not the expected `{expected_iss}`"
        )));
    }
    let aud = match claims.get("aud") {
        Some(Value::String(a)) => vec![a.clone()],
        Some(Value::Array(items)) if !items.is_empty() => items
            .iter()
            .map(|a| a.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| invalid("`aud` must hold only strings"))?,
        Some(_) => {
            return Err(invalid(
                "`aud` must be a string or a non-empty array of strings",
            ));
        }
        None => return Err(invalid("`aud` is missing")),
    };
    if !aud.iter().any(|a| a == expected_aud) {
        return Err(SetError::InvalidAudience(format!(
            "{} does not include `{expected_aud}`",
            Value::from(aud)
        )));
    }
    let jti = match claims.get("jti") {
        Some(Value::String(jti)) if !jti.is_empty() => jti.clone(),
        Some(_) => return Err(invalid("`jti` must be a non-empty string")),
        None => return Err(invalid("`jti` is missing")),
    };
    let iat = match claims.get("iat") {
        Some(Value::Number(n)) => n
            .as_i64()
            // NumericDate may carry a fraction (RFC 7519 §2); seconds are enough.
            .or_else(|| n.as_f64().filter(|f| f.is_finite()).map(|f| f as i64))
            .ok_or_else(|| invalid("`iat` is not a usable number"))?,
        Some(_) => return Err(invalid("`iat` must be a number")),
        None => return Err(invalid("`iat` is missing")),
    };
    if claims.contains_key("sub") {
        return Err(invalid(
            "a SET must not carry `sub`; SSF puts the subject in `sub_id`",
        ));
    }
    if claims.contains_key("exp") {
        return Err(invalid("a SET must not carry `exp`"));
    }
    let sub_id = claims
        .get("sub_id")
        .ok_or_else(|| invalid("`sub_id` is missing; SSF requires a top-level subject"))?;
    validate_subject(sub_id).map_err(|e| invalid(format!("`sub_id`: {e}")))?;
    let txn = match claims.get("txn") {
        None => None,
        Some(Value::String(txn)) => Some(txn.clone()),
        Some(_) => return Err(invalid("`txn` must be a string")),
    };
    let events = match claims.get("events") {
        Some(Value::Object(events)) => events,
        Some(_) => return Err(invalid("`events` must be an object")),
        None => return Err(invalid("`events` is missing")),
    };
    let mut entries = events.iter();
    let (event_type, event) = match (entries.next(), entries.next()) {
        (Some(one), None) => one,
        (None, _) => return Err(invalid("`events` is empty; a SET carries one event")),
        (Some(_), Some(_)) => {
            return Err(invalid(format!(
                "`events` holds {} events; SSF allows exactly one per SET",
                events.len()
            )));
        }
    };
    if !event.is_object() {
        return Err(invalid(format!(
            "the `{event_type}` event must be an object"
        )));
    }
    Ok(VerifiedSet {
        iss,
        jti,
        iat,
        aud,
        txn,
        sub_id: sub_id.clone(),
        event_type: event_type.clone(),
        event: event.clone(),
        kid: None,
    })
}
