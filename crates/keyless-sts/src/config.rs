//! The STS's typed configuration: issuer, token lifetimes, the registered
//! resource servers and confidential clients. The binary builds it (file →
//! env overrides); this crate only validates it.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::StsError;

/// Shortest OBO lifetime a tier may be configured with.
pub const MIN_OBO_TTL: Duration = Duration::from_secs(5);
/// Longest OBO lifetime: OBO tokens are for one call, never for a session.
pub const MAX_OBO_TTL: Duration = Duration::from_secs(600);

/// A resource server tokens may be issued for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceServer {
    /// The logical audience (`directory`, `bank`): what `audience=` names
    /// and what the OBO token's `aud` carries.
    pub audience: String,
    /// Absolute URIs that `resource=` may name for this server.
    pub resource_uris: Vec<String>,
    /// The server's SPIFFE ID, when known: only it may consume tokens
    /// issued for this audience.
    pub spiffe_id: Option<String>,
}

impl ResourceServer {
    pub fn new(audience: &str) -> Self {
        Self {
            audience: audience.to_owned(),
            resource_uris: Vec::new(),
            spiffe_id: None,
        }
    }
}

/// A confidential client that authenticates with its JWT-SVID
/// (`client_assertion_type=…:jwt-spiffe`), e.g. the MCP gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientRegistration {
    pub client_id: String,
    /// The SPIFFE ID its client assertion must carry as `sub`.
    pub spiffe_id: String,
    /// Its canonical URI (`http://ADDR/mcp` for the gateway): actor tokens
    /// it relays may carry this audience instead of the issuer.
    pub uri: String,
}

/// Configuration of the STS.
#[derive(Debug, Clone)]
pub struct StsConfig {
    /// The public base URL (`http://127.0.0.1:8180`): `iss` of every token,
    /// and the audience actor tokens and client assertions must carry.
    pub issuer: String,
    /// Lifetime of user access tokens (minutes).
    pub access_token_ttl: Duration,
    /// OBO token lifetime per tier (1 read … 3 sensitive). A tier missing
    /// here gets the shortest configured lifetime.
    pub obo_ttl_by_tier: BTreeMap<u8, Duration>,
    /// Clock skew tolerated on `exp`/`nbf`/`iat` of our own tokens.
    pub leeway: Duration,
    /// Longest `act` chain a delegated token may carry.
    pub max_delegation_depth: usize,
    pub resource_servers: Vec<ResourceServer>,
    pub clients: Vec<ClientRegistration>,
}

// === impl StsConfig ===

impl StsConfig {
    /// Defaults for `issuer`: 10-minute access tokens, OBO tokens of 60 s
    /// (tier 1), 30 s (tier 2) and 5 s (tier 3), the demo resource servers
    /// `directory` and `bank`, no confidential clients.
    pub fn new(issuer: impl Into<String>) -> Self {
        Self {
            issuer: issuer.into(),
            access_token_ttl: Duration::from_secs(600),
            obo_ttl_by_tier: BTreeMap::from([
                (1, Duration::from_secs(60)),
                (2, Duration::from_secs(30)),
                (3, Duration::from_secs(5)),
            ]),
            leeway: Duration::from_secs(5),
            max_delegation_depth: 4,
            resource_servers: vec![
                ResourceServer::new("directory"),
                ResourceServer::new("bank"),
            ],
            clients: Vec::new(),
        }
    }

    pub(crate) fn validate(&self) -> Result<(), StsError> {
        let bad = |m: String| Err(StsError::InvalidConfig(m));
        let issuer = &self.issuer;
        if !(issuer.starts_with("https://") || issuer.starts_with("http://"))
            || issuer.ends_with('/')
            || issuer.contains(['?', '#'])
        {
            return bad(format!(
                "issuer `{issuer}` must be an http(s) url without trailing slash, query or fragment"
            ));
        }
        if self.access_token_ttl < Duration::from_secs(30)
            || self.access_token_ttl > Duration::from_secs(3600)
        {
            return bad("access_token_ttl must be between 30 s and 1 h".into());
        }
        if self.obo_ttl_by_tier.is_empty() {
            return bad("obo_ttl_by_tier must name at least one tier".into());
        }
        for (tier, ttl) in &self.obo_ttl_by_tier {
            if !(1..=3).contains(tier) || *ttl < MIN_OBO_TTL || *ttl > MAX_OBO_TTL {
                return bad(format!(
                    "obo ttl for tier {tier} must be within 5 s..600 s, tiers 1..3"
                ));
            }
        }
        if self.leeway > Duration::from_secs(60) {
            return bad("leeway must be at most 60 s".into());
        }
        let mut seen = std::collections::BTreeSet::new();
        for rs in &self.resource_servers {
            if rs.audience.is_empty() || !seen.insert(rs.audience.as_str()) {
                return bad(format!(
                    "resource server audience `{}` is empty or repeated",
                    rs.audience
                ));
            }
        }
        for c in &self.clients {
            if c.client_id.is_empty() || c.uri.is_empty() || c.spiffe_id.is_empty() {
                return bad(format!("client `{}` is incomplete", c.client_id));
            }
        }
        Ok(())
    }

    /// The OBO lifetime for `tier`: the configured one, else the shortest.
    pub fn obo_ttl(&self, tier: u8) -> Duration {
        self.obo_ttl_by_tier
            .get(&tier)
            .copied()
            .or_else(|| self.obo_ttl_by_tier.values().min().copied())
            .unwrap_or(MIN_OBO_TTL)
    }

    /// The resource server a `resource` URI or `audience` name designates.
    pub fn resource_server(&self, target: &str) -> Option<&ResourceServer> {
        self.resource_servers
            .iter()
            .find(|rs| rs.audience == target || rs.resource_uris.iter().any(|u| u == target))
    }
}
