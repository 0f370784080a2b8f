//! SPIFFE IDs and trust domains, parsed exactly as the SPIFFE ID standard
//! (and the stricter established clients) require.
//!
//! These strings arrive from untrusted places (entries typed by operators,
//! `sub` claims of presented tokens, URI SANs of presented certificates), so
//! the parser is byte-oriented, allocation-light, never panics, and is fuzzed
//! (`fuzz/fuzz_targets/spiffe_id.rs`). Rules:
//! `spiffe://<trust-domain><path>`; the scheme is lowercase `spiffe`; the trust
//! domain is non-empty, at most 255 bytes of `[a-z0-9._-]` (so no port,
//! userinfo, percent-encoding or uppercase); the path is empty or `/`-separated
//! segments of `[a-zA-Z0-9._-]` with no empty, `.` or `..` segment and no
//! trailing `/`; the whole ID is at most 2048 bytes; no query or fragment
//! (`?` and `#` are simply not allowed characters).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

const SCHEME_PREFIX: &str = "spiffe://";
/// Longest trust domain name, in bytes.
pub const MAX_TRUST_DOMAIN_LEN: usize = 255;
/// Longest SPIFFE ID, in bytes.
pub const MAX_SPIFFE_ID_LEN: usize = 2048;

/// Why a string is not a SPIFFE ID or trust domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    #[error("cannot be empty")]
    Empty,
    #[error("scheme is missing or invalid: it must start with `spiffe://`")]
    WrongScheme,
    #[error("trust domain is missing")]
    MissingTrustDomain,
    #[error(
        "trust domain characters are limited to lowercase letters, numbers, dots, dashes, and underscores"
    )]
    BadTrustDomainChar,
    #[error("trust domain is longer than 255 bytes")]
    TrustDomainTooLong,
    #[error("path cannot contain empty segments")]
    EmptySegment,
    #[error("path cannot contain dot segments")]
    DotSegment,
    #[error("path cannot have a trailing slash")]
    TrailingSlash,
    #[error(
        "path segment characters are limited to letters, numbers, dots, dashes, and underscores"
    )]
    BadPathChar,
    #[error("spiffe id is longer than 2048 bytes")]
    TooLong,
    #[error("a trust domain has no path")]
    TrustDomainWithPath,
}

fn is_td_char(b: u8) -> bool {
    matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-' | b'_')
}

fn is_path_char(b: u8) -> bool {
    matches!(b, b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'.' | b'-' | b'_')
}

fn validate_trust_domain(td: &str) -> Result<(), SpiffeIdError> {
    if td.is_empty() {
        return Err(SpiffeIdError::MissingTrustDomain);
    }
    if !td.bytes().all(is_td_char) {
        return Err(SpiffeIdError::BadTrustDomainChar);
    }
    if td.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(SpiffeIdError::TrustDomainTooLong);
    }
    Ok(())
}

/// Validates a path: empty, or `/seg(/seg)*`.
fn validate_path(path: &str) -> Result<(), SpiffeIdError> {
    if path.is_empty() {
        return Ok(());
    }
    // The caller split at the first `/`, so a non-empty path starts with it.
    let Some(rest) = path.strip_prefix('/') else {
        return Err(SpiffeIdError::BadPathChar);
    };
    let mut segments = rest.split('/').peekable();
    while let Some(segment) = segments.next() {
        if segment.is_empty() {
            // An empty last segment is a trailing slash (`spiffe://td/a/`,
            // `spiffe://td/`); anywhere else it is `//`.
            return Err(if segments.peek().is_none() {
                SpiffeIdError::TrailingSlash
            } else {
                SpiffeIdError::EmptySegment
            });
        }
        if segment == "." || segment == ".." {
            return Err(SpiffeIdError::DotSegment);
        }
        if !segment.bytes().all(is_path_char) {
            return Err(SpiffeIdError::BadPathChar);
        }
    }
    Ok(())
}

// === impl TrustDomain ===

/// A SPIFFE trust domain name, e.g. `example.org`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrustDomain {
    name: String,
}

impl TrustDomain {
    /// Parses a bare name (`example.org`) or a trust domain ID
    /// (`spiffe://example.org`, without a path).
    pub fn new(input: &str) -> Result<Self, SpiffeIdError> {
        if input.is_empty() {
            return Err(SpiffeIdError::Empty);
        }
        if input.starts_with(SCHEME_PREFIX) {
            let id = SpiffeId::new(input)?;
            if !id.path().is_empty() {
                return Err(SpiffeIdError::TrustDomainWithPath);
            }
            return Ok(id.trust_domain());
        }
        validate_trust_domain(input)?;
        Ok(Self {
            name: input.to_owned(),
        })
    }

    /// The bare name, `example.org`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The trust domain's own SPIFFE ID, `spiffe://example.org` (the URI SAN of its CAs).
    pub fn id(&self) -> SpiffeId {
        SpiffeId {
            td_len: self.name.len(),
            id: format!("{SCHEME_PREFIX}{}", self.name),
        }
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

impl fmt::Debug for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TrustDomain({})", self.name)
    }
}

impl FromStr for TrustDomain {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl Serialize for TrustDomain {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.name)
    }
}

impl<'de> Deserialize<'de> for TrustDomain {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::new(&s).map_err(serde::de::Error::custom)
    }
}

// === impl SpiffeId ===

/// A valid SPIFFE ID, e.g. `spiffe://example.org/agent/planner`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    id: String,
    /// Length of the trust domain name, which starts right after the scheme.
    td_len: usize,
}

impl SpiffeId {
    /// Parses and validates a SPIFFE ID.
    pub fn new(input: &str) -> Result<Self, SpiffeIdError> {
        if input.is_empty() {
            return Err(SpiffeIdError::Empty);
        }
        let rest = input
            .strip_prefix(SCHEME_PREFIX)
            .ok_or(SpiffeIdError::WrongScheme)?;
        let (td, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        validate_trust_domain(td)?;
        validate_path(path)?;
        if input.len() > MAX_SPIFFE_ID_LEN {
            return Err(SpiffeIdError::TooLong);
        }
        Ok(Self {
            id: input.to_owned(),
            td_len: td.len(),
        })
    }

    /// Builds `spiffe://<td><path>` from parts; `path` is empty or starts with `/`.
    pub fn from_parts(td: &TrustDomain, path: &str) -> Result<Self, SpiffeIdError> {
        Self::new(&format!("{SCHEME_PREFIX}{}{path}", td.name()))
    }

    /// The trust domain this ID belongs to.
    pub fn trust_domain(&self) -> TrustDomain {
        TrustDomain {
            name: self.trust_domain_name().to_owned(),
        }
    }

    /// The trust domain name, without allocating.
    pub fn trust_domain_name(&self) -> &str {
        self.id
            .get(SCHEME_PREFIX.len()..SCHEME_PREFIX.len() + self.td_len)
            .unwrap_or_default()
    }

    /// The path, empty or starting with `/`.
    pub fn path(&self) -> &str {
        self.id
            .get(SCHEME_PREFIX.len() + self.td_len..)
            .unwrap_or_default()
    }

    /// Whether this ID belongs to `td`.
    pub fn is_member_of(&self, td: &TrustDomain) -> bool {
        self.trust_domain_name() == td.name()
    }

    pub fn as_str(&self) -> &str {
        &self.id
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id)
    }
}

impl fmt::Debug for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpiffeId({})", self.id)
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl AsRef<str> for SpiffeId {
    fn as_ref(&self) -> &str {
        &self.id
    }
}

impl Serialize for SpiffeId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.id)
    }
}

impl<'de> Deserialize<'de> for SpiffeId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::new(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::panic,
        clippy::indexing_slicing,
        clippy::type_complexity
    )]

    use super::*;
    use SpiffeIdError::*;

    /// Parses `input` and compares with `expected` = (trust domain, path)
    /// or the error; valid IDs must also print back unchanged.
    fn check(input: &str, expected: Result<(&str, &str), SpiffeIdError>) {
        let got = SpiffeId::new(input);
        match (&got, expected) {
            (Ok(id), Ok((td, path))) => {
                assert_eq!(id.trust_domain_name(), td, "{input}");
                assert_eq!(id.trust_domain().name(), td, "{input}");
                assert_eq!(id.path(), path, "{input}");
                assert_eq!(id.to_string(), input);
                assert_eq!(input.parse::<SpiffeId>().as_ref(), Ok(id));
            }
            (Err(e), Err(want)) => assert_eq!(*e, want, "{input}"),
            _ => panic!("`{input}`: got {got:?}, expected {expected:?}"),
        }
    }

    #[test]
    fn spiffe_id_table() {
        let all_td_chars = "abcdefghijklmnopqrstuvwxyz0123456789.-_";
        let all_path_chars = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_";
        let longest_td = "a".repeat(255);
        // 9 (`spiffe://`) + 2 (`td`) + 2037 = 2048 bytes.
        let longest_path = format!("/{}", "a".repeat(2036));
        let cases: Vec<(String, Result<(&str, &str), SpiffeIdError>)> = vec![
            // valid
            ("spiffe://trustdomain".into(), Ok(("trustdomain", ""))),
            (
                "spiffe://trustdomain/path".into(),
                Ok(("trustdomain", "/path")),
            ),
            (
                "spiffe://trustdomain/path1/path2".into(),
                Ok(("trustdomain", "/path1/path2")),
            ),
            (
                "spiffe://example.org/ns/prod/sa/agent".into(),
                Ok(("example.org", "/ns/prod/sa/agent")),
            ),
            (format!("spiffe://{all_td_chars}"), Ok((all_td_chars, ""))),
            (
                format!("spiffe://td/{all_path_chars}"),
                Ok((
                    "td",
                    "/abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_",
                )),
            ),
            ("spiffe://td/.../..a/a..".into(), Ok(("td", "/.../..a/a.."))),
            ("spiffe://td/.hidden".into(), Ok(("td", "/.hidden"))),
            ("spiffe://td/-/_".into(), Ok(("td", "/-/_"))),
            // scheme
            ("".into(), Err(Empty)),
            ("http://trustdomain/path".into(), Err(WrongScheme)),
            ("SPIFFE://trustdomain/path".into(), Err(WrongScheme)),
            ("spiffe:/trustdomain/path".into(), Err(WrongScheme)),
            ("spiffe:trustdomain".into(), Err(WrongScheme)),
            ("//trustdomain/path".into(), Err(WrongScheme)),
            (" spiffe://trustdomain".into(), Err(WrongScheme)),
            // trust domain
            ("spiffe://".into(), Err(MissingTrustDomain)),
            ("spiffe:///path".into(), Err(MissingTrustDomain)),
            ("spiffe://Trustdomain/path".into(), Err(BadTrustDomainChar)),
            (
                "spiffe://trustdomain:8080/path".into(),
                Err(BadTrustDomainChar),
            ),
            (
                "spiffe://user@trustdomain/path".into(),
                Err(BadTrustDomainChar),
            ),
            (
                "spiffe://user:pass@trustdomain".into(),
                Err(BadTrustDomainChar),
            ),
            (
                "spiffe://trust%64omain/path".into(),
                Err(BadTrustDomainChar),
            ),
            ("spiffe://trustdomain?query".into(), Err(BadTrustDomainChar)),
            (
                "spiffe://trustdomain#fragment".into(),
                Err(BadTrustDomainChar),
            ),
            ("spiffe://trust domain".into(), Err(BadTrustDomainChar)),
            ("spiffe://tr\u{fc}st".into(), Err(BadTrustDomainChar)),
            ("spiffe://[::1]/path".into(), Err(BadTrustDomainChar)),
            (
                format!("spiffe://{longest_td}"),
                Ok((longest_td.as_str(), "")),
            ),
            (
                format!("spiffe://{}", "a".repeat(256)),
                Err(TrustDomainTooLong),
            ),
            // path
            ("spiffe://trustdomain/".into(), Err(TrailingSlash)),
            ("spiffe://trustdomain/path/".into(), Err(TrailingSlash)),
            ("spiffe://trustdomain//path".into(), Err(EmptySegment)),
            ("spiffe://trustdomain/path//other".into(), Err(EmptySegment)),
            ("spiffe://trustdomain/./path".into(), Err(DotSegment)),
            ("spiffe://trustdomain/path/.".into(), Err(DotSegment)),
            ("spiffe://trustdomain/../path".into(), Err(DotSegment)),
            ("spiffe://trustdomain/path/..".into(), Err(DotSegment)),
            ("spiffe://trustdomain/pa%20th".into(), Err(BadPathChar)),
            ("spiffe://trustdomain/path?query=1".into(), Err(BadPathChar)),
            (
                "spiffe://trustdomain/path#fragment".into(),
                Err(BadPathChar),
            ),
            ("spiffe://trustdomain/pa th".into(), Err(BadPathChar)),
            ("spiffe://trustdomain/p\u{e4}th".into(), Err(BadPathChar)),
            ("spiffe://trustdomain/a:b".into(), Err(BadPathChar)),
            ("spiffe://trustdomain/a\\b".into(), Err(BadPathChar)),
            (
                format!("spiffe://td{longest_path}"),
                Ok(("td", longest_path.as_str())),
            ),
            (format!("spiffe://td{longest_path}a"), Err(TooLong)),
        ];
        for (input, expected) in cases {
            check(&input, expected);
        }
    }

    #[test]
    fn trust_domain_table() {
        let ok = |input: &str, name: &str| {
            let td = TrustDomain::new(input).unwrap();
            assert_eq!(td.name(), name, "{input}");
            assert_eq!(td.id().to_string(), format!("spiffe://{name}"));
        };
        let err = |input: &str, want: SpiffeIdError| {
            assert_eq!(TrustDomain::new(input), Err(want), "{input}");
        };
        ok("example.org", "example.org");
        ok("spiffe://example.org", "example.org");
        ok("my_td-1.local", "my_td-1.local");
        err("", Empty);
        err("Example.org", BadTrustDomainChar);
        err("example.org:8080", BadTrustDomainChar);
        err("spiffe://example.org/path", TrustDomainWithPath);
        err("spiffe://example.org/", TrailingSlash);
        err("http://example.org", BadTrustDomainChar);
        err(&"a".repeat(256), TrustDomainTooLong);
    }

    #[test]
    fn serde_is_the_string_form_and_validates() {
        let id: SpiffeId = serde_json::from_str("\"spiffe://td/a\"").unwrap();
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"spiffe://td/a\"");
        assert!(serde_json::from_str::<SpiffeId>("\"spiffe://td/a/\"").is_err());
        let td: TrustDomain = serde_json::from_str("\"td\"").unwrap();
        assert_eq!(serde_json::to_string(&td).unwrap(), "\"td\"");
    }

    #[test]
    fn membership() {
        let id = SpiffeId::new("spiffe://example.org/x").unwrap();
        assert!(id.is_member_of(&TrustDomain::new("example.org").unwrap()));
        assert!(!id.is_member_of(&TrustDomain::new("example.org.evil").unwrap()));
        assert!(!id.is_member_of(&TrustDomain::new("example.or").unwrap()));
    }
}
