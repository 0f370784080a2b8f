//! The STS's typed configuration: issuer, token lifetimes, the registered
//! resource servers and confidential clients. The binary builds it (file →
//! env overrides); this crate only validates it.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::StsError;

/// The console's client id (a public client).
pub const CONSOLE_CLIENT_ID: &str = "keyless-console";
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

/// A confidential client that authenticates with `private_key_jwt`
/// (RFC 7523 §2.2, OIDC Core §9): a JWT it signs with a key of its
/// registered public JWKS. No secret is involved: the STS holds only the
/// public keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtClientRegistration {
    /// `iss` and `sub` of its assertions.
    pub client_id: String,
    /// Its public keys, a JWKS (`{"keys": [...]}`): EC P-256 (ES256),
    /// OKP Ed25519 (EdDSA) or RSA ≥ 2048 bits (RS256, PS256). Each key
    /// needs a unique `kid` when there is more than one; private members
    /// are refused.
    pub jwks: serde_json::Value,
    /// Its canonical URI: actor tokens it relays may carry this audience
    /// instead of the issuer (as for [`ClientRegistration::uri`]).
    pub uri: String,
}

/// A public client (no secret; PKCE S256 is its proof), e.g. the console.
/// Redirect URIs are compared exactly, never by prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicClient {
    pub client_id: String,
    pub redirect_uris: Vec<String>,
    /// Where `/oauth2/logout` may send the browser afterwards.
    pub post_logout_redirect_uris: Vec<String>,
}

/// Service scopes a workload or client may obtain with the
/// `client_credentials` grant (RFC 6749 §4.4), e.g. `ssf.manage`.
///
/// A caller authenticating with a JWT-SVID matches when its SPIFFE ID
/// equals `spiffe_id_prefix` or lies below it (`prefix` + `/…`); a
/// `private_key_jwt` client matches when its client id equals
/// `spiffe_id_prefix`. A caller may request the union of the scopes of
/// every rule it matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceScopeRule {
    /// A SPIFFE ID (`spiffe://td/ssf`, no trailing `/`) or a
    /// `private_key_jwt` client id.
    pub spiffe_id_prefix: String,
    /// The scopes it grants (no spaces inside a scope).
    pub scopes: Vec<String>,
}

// === impl ServiceScopeRule ===

impl ServiceScopeRule {
    /// A rule granting `scopes` to `spiffe_id_prefix` and below it.
    pub fn new(spiffe_id_prefix: impl Into<String>, scopes: &[&str]) -> Self {
        Self {
            spiffe_id_prefix: spiffe_id_prefix.into(),
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    /// Whether a caller authenticated by its JWT-SVID with `spiffe_id`
    /// matches: the ID itself, or one below it on a path boundary
    /// (`spiffe://td/ssf` matches `spiffe://td/ssf/poller`, never
    /// `spiffe://td/ssfx`).
    pub fn matches_spiffe_id(&self, spiffe_id: &str) -> bool {
        spiffe_id == self.spiffe_id_prefix
            || spiffe_id
                .strip_prefix(self.spiffe_id_prefix.as_str())
                .is_some_and(|rest| rest.starts_with('/'))
    }

    /// Whether a `private_key_jwt` client with `client_id` matches (exact).
    pub fn matches_client_id(&self, client_id: &str) -> bool {
        client_id == self.spiffe_id_prefix
    }
}

/// Argon2id cost. The default is OWASP's (19 MiB, 2 passes); tests lower it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PasswordHashCost {
    pub memory_kib: u32,
    pub iterations: u32,
}

impl Default for PasswordHashCost {
    fn default() -> Self {
        Self {
            memory_kib: 19 * 1024,
            iterations: 2,
        }
    }
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
    /// Confidential clients authenticating with `private_key_jwt`.
    pub jwt_clients: Vec<JwtClientRegistration>,
    /// Base URL of the mTLS listener (`https://…`), when one runs: the
    /// RFC 8705 `mtls_endpoint_aliases`; tokens requested there with a
    /// client X509-SVID are bound to it (`cnf.x5t#S256`).
    pub mtls_base_url: Option<String>,
    /// Public clients of the authorization-code flow; `keyless-console`
    /// (redirect `<issuer>/callback`) by default.
    pub public_clients: Vec<PublicClient>,
    pub password_hash_cost: PasswordHashCost,
    /// Failed sign-ins in a row after which an account is locked.
    pub lockout_threshold: u32,
    /// How long a locked account stays locked.
    pub lockout_duration: Duration,
    /// Sign-in attempts one IP address may burst, then one per
    /// `login_ip_refill` (in-memory token bucket, per process).
    pub login_ip_burst: u32,
    pub login_ip_refill: Duration,
    /// Absolute lifetime of a browser session.
    pub session_ttl: Duration,
    /// Lifetime of one refresh token (each use rotates it).
    pub refresh_token_ttl: Duration,
    /// How long a signing key signs before the maintenance task rotates it
    /// (measured from its creation in the store, so restarts and replicas
    /// agree). A retired key stays in the JWKS until every token it can
    /// have signed has expired ([`StsConfig::max_signed_token_lifetime`]).
    pub signing_key_lifetime: Duration,
    /// How often the maintenance task runs: purges of consumed ids and
    /// expired sign-in rows, and the rotation check.
    pub maintenance_interval: Duration,
    /// Who may obtain which service scopes with the `client_credentials`
    /// grant. Empty by default: nobody may.
    pub service_scopes: Vec<ServiceScopeRule>,
    /// Client ids of JWT-SVID clients ([`StsConfig::clients`]) allowed to
    /// attest an actor they authenticated by its X509-SVID (the gateway
    /// behind the mTLS listener; see `actor.rs`). Empty by default: no
    /// client may, and such an actor token is refused.
    pub actor_attesters: Vec<String>,
}

// === impl StsConfig ===

impl StsConfig {
    /// Defaults for `issuer`: 10-minute access tokens, OBO tokens of 60 s
    /// (tier 1), 30 s (tier 2) and 5 s (tier 3), the demo resource servers
    /// `directory` and `bank`, no confidential clients.
    pub fn new(issuer: impl Into<String>) -> Self {
        let issuer: String = issuer.into();
        Self {
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
            jwt_clients: Vec::new(),
            mtls_base_url: None,
            public_clients: vec![PublicClient {
                client_id: CONSOLE_CLIENT_ID.to_owned(),
                redirect_uris: vec![format!("{issuer}/callback")],
                post_logout_redirect_uris: vec![format!("{issuer}/")],
            }],
            password_hash_cost: PasswordHashCost::default(),
            lockout_threshold: 5,
            lockout_duration: Duration::from_secs(15 * 60),
            login_ip_burst: 20,
            login_ip_refill: Duration::from_secs(6),
            session_ttl: Duration::from_secs(12 * 3600),
            refresh_token_ttl: Duration::from_secs(8 * 3600),
            signing_key_lifetime: Duration::from_secs(24 * 3600),
            maintenance_interval: Duration::from_secs(60),
            service_scopes: Vec::new(),
            actor_attesters: Vec::new(),
            issuer,
        }
    }

    /// The registered public client `client_id`.
    pub fn public_client(&self, client_id: &str) -> Option<&PublicClient> {
        self.public_clients
            .iter()
            .find(|c| c.client_id == client_id)
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
        for c in &self.jwt_clients {
            if c.client_id.is_empty() || c.uri.is_empty() {
                return bad(format!("client `{}` is incomplete", c.client_id));
            }
            if self.clients.iter().any(|o| o.client_id == c.client_id)
                || self
                    .jwt_clients
                    .iter()
                    .filter(|o| o.client_id == c.client_id)
                    .count()
                    > 1
            {
                return bad(format!("client id `{}` is registered twice", c.client_id));
            }
            crate::client_auth::parse_jwks(&c.jwks)
                .map_err(|e| StsError::InvalidConfig(format!("client `{}`: {e}", c.client_id)))?;
        }
        if let Some(url) = &self.mtls_base_url
            && (!url.starts_with("https://") || url.ends_with('/') || url.contains(['?', '#']))
        {
            return bad(format!(
                "mtls_base_url `{url}` must be an https url without trailing slash, query or fragment"
            ));
        }
        for c in &self.public_clients {
            if c.client_id.is_empty() || c.redirect_uris.is_empty() {
                return bad(format!(
                    "public client `{}` needs a client_id and a redirect uri",
                    c.client_id
                ));
            }
        }
        for rule in &self.service_scopes {
            let prefix = &rule.spiffe_id_prefix;
            if prefix.is_empty() || prefix.ends_with('/') {
                return bad(format!(
                    "service scope rule `{prefix}` must name a spiffe id or client id without trailing `/`"
                ));
            }
            if rule.scopes.is_empty()
                || rule
                    .scopes
                    .iter()
                    .any(|s| s.is_empty() || s.contains(char::is_whitespace))
            {
                return bad(format!(
                    "service scope rule `{prefix}` needs at least one scope, each without spaces"
                ));
            }
        }
        for id in &self.actor_attesters {
            // Only a workload of the trust domain, authenticated by its own
            // SVID, may vouch for another workload's SVID.
            if !self.clients.iter().any(|c| &c.client_id == id) {
                return bad(format!(
                    "actor attester `{id}` is not a registered JWT-SVID client"
                ));
            }
        }
        if self.password_hash_cost.memory_kib < 8 || self.password_hash_cost.iterations < 1 {
            return bad("password_hash_cost is too low".into());
        }
        if self.lockout_threshold == 0 || self.login_ip_burst == 0 {
            return bad("lockout_threshold and login_ip_burst must be positive".into());
        }
        if self.maintenance_interval < Duration::from_millis(10)
            || self.maintenance_interval > Duration::from_secs(3600)
        {
            return bad("maintenance_interval must be between 10 ms and 1 h".into());
        }
        // Under a second the task would rotate on every pass; beyond 90
        // days a leaked key signs for too long.
        if self.signing_key_lifetime < Duration::from_secs(1)
            || self.signing_key_lifetime > Duration::from_secs(90 * 24 * 3600)
        {
            return bad("signing_key_lifetime must be between 1 s and 90 days".into());
        }
        Ok(())
    }

    /// The longest a token signed with one of our keys can stay valid
    /// (user access and ID tokens, OBO tokens), clock leeway included: how
    /// long a retired signing key must stay in the JWKS.
    pub fn max_signed_token_lifetime(&self) -> Duration {
        let obo = self
            .obo_ttl_by_tier
            .values()
            .max()
            .copied()
            .unwrap_or(MAX_OBO_TTL);
        self.access_token_ttl.max(obo) + self.leeway
    }

    /// The OBO lifetime for `tier`: the configured one, else the shortest.
    pub fn obo_ttl(&self, tier: u8) -> Duration {
        self.obo_ttl_by_tier
            .get(&tier)
            .copied()
            .or_else(|| self.obo_ttl_by_tier.values().min().copied())
            .unwrap_or(MIN_OBO_TTL)
    }

    /// The token endpoint URLs a request may have been sent to: ours, and
    /// its mTLS alias when one runs (what DPoP `htu` and client assertion
    /// `aud` may name).
    pub fn token_endpoints(&self) -> Vec<String> {
        let mut v = vec![format!("{}/oauth2/token", self.issuer)];
        if let Some(m) = &self.mtls_base_url {
            v.push(format!("{m}/oauth2/token"));
        }
        v
    }

    /// The resource server a `resource` URI or `audience` name designates.
    pub fn resource_server(&self, target: &str) -> Option<&ResourceServer> {
        self.resource_servers
            .iter()
            .find(|rs| rs.audience == target || rs.resource_uris.iter().any(|u| u == target))
    }
}
