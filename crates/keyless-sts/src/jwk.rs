//! Public JWKs and compact JWS signed by *other* parties: DPoP proofs
//! (RFC 9449) and `private_key_jwt` client assertions (RFC 7523). Our own
//! tokens are checked in `token.rs` against our own keys; here the key
//! comes from the caller (a DPoP `jwk` header) or from a client's
//! registered JWKS, so the rules are the ones both specifications share:
//! asymmetric algorithms only (`none` and `HS*` are refused before any key
//! is looked at), the algorithm must fit the key type, a JWK must be public
//! (any private member is refused), RSA keys are at least 2048 bits.
//!
//! Built on aws-lc-rs like the rest of the crate: ES256, EdDSA (Ed25519),
//! RS256 and PS256 are each one line of verification.

use aws_lc_rs::digest;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED, ED25519, RSA_PKCS1_2048_8192_SHA256, RSA_PSS_2048_8192_SHA256,
    RsaPublicKeyComponents, UnparsedPublicKey,
};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};

/// The signature algorithms accepted from other parties.
pub(crate) const ALGS: [&str; 4] = ["ES256", "EdDSA", "RS256", "PS256"];
/// Longest compact JWS accepted from a caller.
const MAX_JWS_LEN: usize = 8 * 1024;
/// JWK members that only a private (or symmetric) key has.
const PRIVATE_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

/// A public key from a JWK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PublicJwk {
    /// P-256: base64url `x`, `y` (32 bytes each).
    P256 { x: String, y: String },
    /// Ed25519 (`kty: OKP`, `crv: Ed25519`): base64url `x`.
    Ed25519 { x: String },
    /// RSA: base64url `n`, `e`.
    Rsa { n: String, e: String },
}

fn b64(what: &str, v: &str) -> Result<Vec<u8>, String> {
    URL_SAFE_NO_PAD
        .decode(v)
        .map_err(|_| format!("`{what}` is not base64url"))
}

fn member<'a>(jwk: &'a Map<String, Value>, name: &str) -> Result<&'a str, String> {
    jwk.get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("the jwk has no `{name}`"))
}

// === impl PublicJwk ===

impl PublicJwk {
    /// Parses a public JWK; a private or symmetric key, an unsupported key
    /// type or curve, or a malformed coordinate is refused.
    pub(crate) fn parse(jwk: &Map<String, Value>) -> Result<Self, String> {
        if let Some(m) = PRIVATE_MEMBERS.iter().find(|m| jwk.contains_key(**m)) {
            return Err(format!("the jwk has the private member `{m}`"));
        }
        match member(jwk, "kty")? {
            "EC" => {
                if member(jwk, "crv")? != "P-256" {
                    return Err("only the p-256 curve is supported".into());
                }
                let x = member(jwk, "x")?;
                let y = member(jwk, "y")?;
                if b64("x", x)?.len() != 32 || b64("y", y)?.len() != 32 {
                    return Err("p-256 coordinates must be 32 bytes".into());
                }
                Ok(Self::P256 {
                    x: x.to_owned(),
                    y: y.to_owned(),
                })
            }
            "OKP" => {
                if member(jwk, "crv")? != "Ed25519" {
                    return Err("only the ed25519 curve is supported for okp keys".into());
                }
                let x = member(jwk, "x")?;
                if b64("x", x)?.len() != 32 {
                    return Err("an ed25519 key is 32 bytes".into());
                }
                Ok(Self::Ed25519 { x: x.to_owned() })
            }
            "RSA" => {
                let n = member(jwk, "n")?;
                let e = member(jwk, "e")?;
                let modulus = b64("n", n)?;
                b64("e", e)?;
                if modulus.len() < 256 {
                    return Err("rsa keys must have at least 2048 bits".into());
                }
                Ok(Self::Rsa {
                    n: n.to_owned(),
                    e: e.to_owned(),
                })
            }
            other => Err(format!("unsupported key type `{other}`")),
        }
    }

    /// Whether `alg` is meant for this key type.
    pub(crate) fn fits(&self, alg: &str) -> bool {
        matches!(
            (self, alg),
            (Self::P256 { .. }, "ES256")
                | (Self::Ed25519 { .. }, "EdDSA")
                | (Self::Rsa { .. }, "RS256" | "PS256")
        )
    }

    /// RFC 7638 thumbprint: base64url SHA-256 of the required members in
    /// lexicographic order, no whitespace.
    pub(crate) fn thumbprint(&self) -> String {
        let canonical = match self {
            Self::P256 { x, y } => format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#),
            Self::Ed25519 { x } => format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#),
            Self::Rsa { n, e } => format!(r#"{{"e":"{e}","kty":"RSA","n":"{n}"}}"#),
        };
        URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, canonical.as_bytes()))
    }

    /// Verifies `signature` over `input` with `alg`.
    fn verify(&self, alg: &str, input: &[u8], signature: &[u8]) -> Result<(), String> {
        if !self.fits(alg) {
            return Err(format!("algorithm `{alg}` does not fit the key"));
        }
        let failed = |_| "signature verification failed".to_owned();
        match self {
            Self::P256 { x, y } => {
                let mut point = vec![0x04];
                point.extend(b64("x", x)?);
                point.extend(b64("y", y)?);
                UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point)
                    .verify(input, signature)
                    .map_err(failed)
            }
            Self::Ed25519 { x } => UnparsedPublicKey::new(&ED25519, b64("x", x)?)
                .verify(input, signature)
                .map_err(failed),
            Self::Rsa { n, e } => {
                let params = if alg == "PS256" {
                    &RSA_PSS_2048_8192_SHA256
                } else {
                    &RSA_PKCS1_2048_8192_SHA256
                };
                RsaPublicKeyComponents {
                    n: b64("n", n)?,
                    e: b64("e", e)?,
                }
                .verify(params, input, signature)
                .map_err(failed)
            }
        }
    }
}

/// A compact JWS split and decoded, signature not yet checked.
#[derive(Debug)]
pub(crate) struct Jws<'a> {
    pub header: Map<String, Value>,
    pub claims: Map<String, Value>,
    /// `alg`, already known to be one of [`ALGS`].
    pub alg: String,
    signing_input: &'a str,
    signature: Vec<u8>,
}

fn decode_object(part: &str, what: &str) -> Result<Map<String, Value>, String> {
    let bytes = b64(what, part)?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(format!("the {what} is not a json object")),
    }
}

// === impl Jws ===

impl<'a> Jws<'a> {
    /// Splits and decodes `token`. Refuses, before anything else, an
    /// algorithm outside [`ALGS`] (`none`, `HS256`…) and `crit`.
    pub(crate) fn parse(token: &'a str) -> Result<Self, String> {
        if token.len() > MAX_JWS_LEN {
            return Err("the jwt is too long".into());
        }
        let mut parts = token.split('.');
        let (Some(h), Some(c), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err("not a compact jws".into());
        };
        let header = decode_object(h, "header")?;
        let alg = match header.get("alg").and_then(Value::as_str) {
            Some(a) if ALGS.contains(&a) => a.to_owned(),
            Some(a) => return Err(format!("unsupported algorithm `{a}`")),
            None => return Err("missing `alg`".into()),
        };
        if header.contains_key("crit") {
            return Err("unsupported critical header".into());
        }
        let claims = decode_object(c, "payload")?;
        let signature = b64("signature", s)?;
        let signing_input = token.get(..h.len() + 1 + c.len()).unwrap_or_default();
        Ok(Self {
            header,
            claims,
            alg,
            signing_input,
            signature,
        })
    }

    /// Checks the signature with `key`.
    pub(crate) fn verify_with(&self, key: &PublicJwk) -> Result<(), String> {
        key.verify(&self.alg, self.signing_input.as_bytes(), &self.signature)
    }

    pub(crate) fn header_str(&self, name: &str) -> Option<&str> {
        self.header.get(name).and_then(Value::as_str)
    }

    pub(crate) fn claim_str(&self, name: &str) -> Option<&str> {
        self.claims.get(name).and_then(Value::as_str)
    }

    /// A NumericDate claim (whole seconds; a fraction is truncated).
    pub(crate) fn claim_time(&self, name: &str) -> Option<i64> {
        let v = self.claims.get(name)?;
        v.as_i64().or_else(|| {
            v.as_f64()
                .filter(|f| f.is_finite() && f.abs() < 1e15)
                .map(|f| f as i64)
        })
    }
}

/// A short, fixed-length id for a replay-cache entry: `prefix` + base64url
/// SHA-256 of the parts (NUL-separated), so that caller-chosen ids cannot
/// collide with our own token ids nor grow the table's key.
pub(crate) fn replay_key(prefix: &str, parts: &[&str]) -> String {
    let mut ctx = digest::Context::new(&digest::SHA256);
    for p in parts {
        ctx.update(p.as_bytes());
        ctx.update(&[0]);
    }
    format!("{prefix}:{}", URL_SAFE_NO_PAD.encode(ctx.finish()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The example of RFC 7638 §3.1.
    #[test]
    fn thumbprint_matches_rfc_7638_example() {
        let jwk = serde_json::json!({
            "kty": "RSA",
            "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
            "e": "AQAB",
            "alg": "RS256",
            "kid": "2011-04-29"
        });
        let key = PublicJwk::parse(jwk.as_object().unwrap()).unwrap();
        assert_eq!(
            key.thumbprint(),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
        assert!(key.fits("RS256") && key.fits("PS256") && !key.fits("ES256"));
    }

    #[test]
    fn short_rsa_keys_and_symmetric_keys_are_refused() {
        let short = serde_json::json!({"kty": "RSA", "n": "AQAB", "e": "AQAB"});
        assert!(PublicJwk::parse(short.as_object().unwrap()).is_err());
        let oct = serde_json::json!({"kty": "oct", "k": "c2VjcmV0"});
        assert!(PublicJwk::parse(oct.as_object().unwrap()).is_err());
    }
}
