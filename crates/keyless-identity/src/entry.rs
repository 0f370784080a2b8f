//! Registration entries: "a caller whose attested selectors include all of
//! these gets this SPIFFE ID, with these TTLs".
//!
//! On the wire (admin API, CLI output) TTLs are whole seconds in
//! `x509_ttl_secs` / `jwt_ttl_secs`, so a JSON client never has to guess a
//! duration format.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{Selector, SpiffeId};

/// A stored registration entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistrationEntry {
    /// A UUID (v4), assigned at creation.
    pub id: String,
    pub spiffe_id: SpiffeId,
    #[serde(default)]
    pub parent_id: Option<SpiffeId>,
    /// The caller must present every one of these.
    pub selectors: Vec<Selector>,
    #[serde(rename = "x509_ttl_secs", with = "secs")]
    pub x509_ttl: Duration,
    #[serde(rename = "jwt_ttl_secs", with = "secs")]
    pub jwt_ttl: Duration,
    /// Passed to the workload with its SVIDs, to tell several identities apart.
    #[serde(default)]
    pub hint: String,
    /// Whether this workload may use admin functions of other components.
    #[serde(default)]
    pub admin: bool,
    /// Unix milliseconds.
    pub created_at: i64,
}

/// What an operator asks for when creating an entry; TTLs default from the
/// [`crate::IdentityConfig`] when absent.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewEntry {
    pub spiffe_id: SpiffeId,
    #[serde(default)]
    pub parent_id: Option<SpiffeId>,
    pub selectors: Vec<Selector>,
    #[serde(default, rename = "x509_ttl_secs", with = "opt_secs")]
    pub x509_ttl: Option<Duration>,
    #[serde(default, rename = "jwt_ttl_secs", with = "opt_secs")]
    pub jwt_ttl: Option<Duration>,
    #[serde(default)]
    pub hint: String,
    #[serde(default)]
    pub admin: bool,
}

// === impl NewEntry ===

impl NewEntry {
    /// An entry for `spiffe_id` with `selectors` and every option at its default.
    pub fn new(spiffe_id: SpiffeId, selectors: Vec<Selector>) -> Self {
        Self {
            spiffe_id,
            parent_id: None,
            selectors,
            x509_ttl: None,
            jwt_ttl: None,
            hint: String::new(),
            admin: false,
        }
    }
}

// === impl RegistrationEntry ===

impl RegistrationEntry {
    /// Whether a caller presenting `caller` selectors gets this entry: every
    /// selector of the entry must be among them (extra caller facts are fine).
    pub fn matches(&self, caller: &[Selector]) -> bool {
        !self.selectors.is_empty() && self.selectors.iter().all(|s| caller.contains(s))
    }
}

mod secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_secs)
    }
}

mod opt_secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<u64>::deserialize(d)?.map(Duration::from_secs))
    }
}
