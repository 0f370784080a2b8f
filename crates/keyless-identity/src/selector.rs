//! Selectors: the facts an attestor observes about a caller, and the facts a
//! registration entry requires before it hands out an identity.
//!
//! The textual form is `kind:key:value` (`unix:uid:1000`,
//! `unix:path:/usr/bin/agent`); the value may itself contain `:`. Only the
//! unix attestor exists, so only its keys are accepted, each with a value
//! checked for its shape: a typo in an entry must fail at creation rather
//! than silently never match.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::IdentityError;

/// One attested fact, `kind:key:value`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Selector {
    kind: String,
    key: String,
    value: String,
}

/// Longest accepted selector text; paths beyond this are not real paths.
const MAX_SELECTOR_LEN: usize = 4096;

// === impl Selector ===

impl Selector {
    /// Builds and validates a selector from its parts.
    pub fn new(kind: &str, key: &str, value: &str) -> Result<Self, IdentityError> {
        let err = |reason| IdentityError::Selector {
            input: format!("{kind}:{key}:{value}"),
            reason,
        };
        if kind != "unix" {
            return Err(err("unknown kind: only `unix` is supported"));
        }
        if kind.len() + key.len() + value.len() + 2 > MAX_SELECTOR_LEN {
            return Err(err("too long"));
        }
        match key {
            "uid" | "gid" => {
                // u32 and canonical decimal, so `0100` and `100` cannot name
                // the same user in two different ways.
                let canonical = value.parse::<u32>().map(|n| n.to_string());
                if canonical.as_deref() != Ok(value) {
                    return Err(err("uid and gid must be decimal numbers"));
                }
            }
            "path" => {
                if !value.starts_with('/') || value.contains('\0') {
                    return Err(err("path must be absolute"));
                }
            }
            "sha256" => {
                if value.len() != 64
                    || !value
                        .bytes()
                        .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
                {
                    return Err(err("sha256 must be 64 lowercase hex characters"));
                }
            }
            _ => return Err(err("unknown key: use uid, gid, path or sha256")),
        }
        Ok(Self {
            kind: kind.to_owned(),
            key: key.to_owned(),
            value: value.to_owned(),
        })
    }

    /// `unix:uid:<uid>`.
    pub fn unix_uid(uid: u32) -> Self {
        Self::known("uid", uid.to_string())
    }

    /// `unix:gid:<gid>`.
    pub fn unix_gid(gid: u32) -> Self {
        Self::known("gid", gid.to_string())
    }

    /// `unix:path:<path>`; fails unless `path` is absolute.
    pub fn unix_path(path: &str) -> Result<Self, IdentityError> {
        Self::new("unix", "path", path)
    }

    /// `unix:sha256:<hex>`; `digest` is the binary's SHA-256.
    pub fn unix_sha256(digest: &[u8; 32]) -> Self {
        Self::known("sha256", hex::encode(digest))
    }

    fn known(key: &str, value: String) -> Self {
        Self {
            kind: "unix".to_owned(),
            key: key.to_owned(),
            value,
        }
    }

    pub fn kind(&self) -> &str {
        &self.kind
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    pub fn value(&self) -> &str {
        &self.value
    }
}

impl FromStr for Selector {
    type Err = IdentityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| IdentityError::Selector {
            input: s.to_owned(),
            reason,
        };
        let (kind, rest) = s
            .split_once(':')
            .ok_or_else(|| err("expected kind:key:value"))?;
        let (key, value) = rest
            .split_once(':')
            .ok_or_else(|| err("expected kind:key:value"))?;
        Self::new(kind, key, value)
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.kind, self.key, self.value)
    }
}

impl fmt::Debug for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Selector({self})")
    }
}

impl Serialize for Selector {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Selector {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
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

    /// Parses `input`; `expected` is (kind, key, value) or `None` for an error.
    fn check(input: &str, expected: Option<(&str, &str, &str)>) {
        let got = input.parse::<Selector>();
        match (&got, expected) {
            (Ok(s), Some((kind, key, value))) => {
                assert_eq!(
                    (s.kind(), s.key(), s.value()),
                    (kind, key, value),
                    "{input}"
                );
                assert_eq!(s.to_string(), input);
            }
            (Err(IdentityError::Selector { .. }), None) => {}
            _ => panic!("`{input}`: got {got:?}, expected {expected:?}"),
        }
    }

    #[test]
    fn selector_table() {
        let digest = "0123456789abcdef".repeat(4);
        let cases: Vec<(String, Option<(&str, &str, &str)>)> = vec![
            ("unix:uid:1000".into(), Some(("unix", "uid", "1000"))),
            ("unix:uid:0".into(), Some(("unix", "uid", "0"))),
            (
                "unix:gid:4294967295".into(),
                Some(("unix", "gid", "4294967295")),
            ),
            (
                "unix:path:/usr/bin/agent".into(),
                Some(("unix", "path", "/usr/bin/agent")),
            ),
            (
                "unix:path:/opt/a:b/c".into(),
                Some(("unix", "path", "/opt/a:b/c")),
            ),
            (
                format!("unix:sha256:{digest}"),
                Some(("unix", "sha256", digest.as_str())),
            ),
            ("unix:uid:".into(), None),
            ("unix:uid:-1".into(), None),
            ("unix:uid:+1".into(), None),
            ("unix:uid:01000".into(), None),
            ("unix:uid:4294967296".into(), None),
            ("unix:uid:abc".into(), None),
            ("unix:gid:1.5".into(), None),
            ("unix:path:relative/bin".into(), None),
            ("unix:path:".into(), None),
            ("unix:path:/a\0b".into(), None),
            (format!("unix:sha256:{}", digest.to_uppercase()), None),
            (format!("unix:sha256:{}", &digest[1..]), None),
            (format!("unix:sha256:{digest}0"), None),
            ("unix:pid:12".into(), None),
            ("k8s:ns:default".into(), None),
            ("UNIX:uid:1".into(), None),
            ("unix:uid".into(), None),
            ("unix".into(), None),
            ("".into(), None),
        ];
        for (input, expected) in cases {
            check(&input, expected);
        }
    }

    #[test]
    fn constructors_agree_with_parsing() {
        assert_eq!(Selector::unix_uid(1000), "unix:uid:1000".parse().unwrap());
        assert_eq!(Selector::unix_gid(7), "unix:gid:7".parse().unwrap());
        assert_eq!(
            Selector::unix_path("/bin/x").unwrap(),
            "unix:path:/bin/x".parse().unwrap()
        );
        let s = Selector::unix_sha256(&[0xab; 32]);
        assert_eq!(s.value(), "ab".repeat(32));
        assert_eq!(s, s.to_string().parse().unwrap());
    }

    #[test]
    fn serde_is_the_string_form() {
        let s: Selector = serde_json::from_str("\"unix:uid:5\"").unwrap();
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"unix:uid:5\"");
        assert!(serde_json::from_str::<Selector>("\"unix:uid:x\"").is_err());
    }
}
