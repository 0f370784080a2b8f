//! JWT-SVID login and broker tokens: roles, `POST /v1/auth/jwt/login`,
//! token resolution, lookup-self, renew-self and revoke-self.
//!
//! A role binds what a JWT-SVID must carry (audiences, a subject exact or
//! glob, claims) to what the token gets (policies, TTL, max TTL, type).
//! With `single_use_jti` the JWT's `jti` is consumed by one atomic insert,
//! so a replayed JWT-SVID is refused on every replica (Vault's JWT auth has
//! no such check). Every login, success or refusal, is an audit event
//! recorded before the answer.

use std::time::Duration;

use keyless_audit::{Event, Outcome};
use keyless_store::now_millis;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use crate::service::{duration_ms, kinds};
use crate::token::{self, BATCH_PREFIX, BatchClaims};
use crate::{Secrets, SecretsError};

/// `service` tokens are stored and renewable; `batch` tokens are signed and stateless.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TokenType {
    #[default]
    Service,
    Batch,
}

impl TokenType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Service => "service",
            Self::Batch => "batch",
        }
    }
}

/// How `bound_claims` values are compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BoundClaimsType {
    #[default]
    String,
    Glob,
}

/// A JWT auth role (Vault's field names, so `vault write auth/jwt/role/x`
/// payloads carry over).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtRole {
    #[serde(default)]
    pub name: String,
    /// The JWT-SVID must carry one of these audiences (at least one required).
    #[serde(default, deserialize_with = "string_or_list")]
    pub bound_audiences: Vec<String>,
    /// Exact SPIFFE ID, or a glob with `*` (e.g. `spiffe://example.org/agent/*`); empty = any.
    #[serde(default)]
    pub bound_subject: String,
    /// Claim name → required value (a string or a list of allowed strings).
    #[serde(default)]
    pub bound_claims: Map<String, Value>,
    #[serde(default)]
    pub bound_claims_type: BoundClaimsType,
    /// The claim naming the token's display name (default `sub`).
    #[serde(default = "default_user_claim")]
    pub user_claim: String,
    #[serde(default, deserialize_with = "string_or_list")]
    pub token_policies: Vec<String>,
    /// Seconds (Vault accepts `3600`, `"3600"`, `"1h"`; so do we).
    #[serde(default = "default_ttl", deserialize_with = "duration_secs")]
    pub token_ttl: u64,
    /// 0 = the broker's maximum.
    #[serde(default, deserialize_with = "duration_secs")]
    pub token_max_ttl: u64,
    #[serde(default)]
    pub token_type: TokenType,
    /// Uses a token gets (0 = unlimited).
    #[serde(default)]
    pub token_num_uses: u64,
    /// Refuse a JWT-SVID whose `jti` was already used for a login.
    #[serde(default)]
    pub single_use_jti: bool,
}

fn default_user_claim() -> String {
    "sub".into()
}

fn default_ttl() -> u64 {
    3600
}

fn string_or_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Sl {
        S(String),
        L(Vec<String>),
    }
    Ok(match Sl::deserialize(d)? {
        Sl::S(s) => s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        Sl::L(l) => l,
    })
}

pub(crate) fn duration_secs<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Ds {
        N(u64),
        S(String),
    }
    match Ds::deserialize(d)? {
        Ds::N(n) => Ok(n),
        Ds::S(s) => parse_duration(&s)
            .map(|d| d.as_secs())
            .map_err(serde::de::Error::custom),
    }
}

/// Parses a Vault duration: `3600`, `3600s`, `90m`, `1h30m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(Duration::ZERO);
    }
    if let Ok(n) = s.parse::<u64>() {
        return Ok(Duration::from_secs(n));
    }
    humantime::parse_duration(s).map_err(|e| format!("invalid duration `{s}`: {e}"))
}

impl JwtRole {
    fn validate(&self) -> Result<(), SecretsError> {
        let bad = |m: String| SecretsError::InvalidRequest(m);
        let ok_name = !self.name.is_empty()
            && self.name.len() <= 128
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !ok_name {
            return Err(bad(format!(
                "invalid role name `{}`: use [a-zA-Z0-9._-], at most 128 bytes",
                self.name
            )));
        }
        if self.bound_audiences.is_empty() || self.bound_audiences.iter().any(String::is_empty) {
            return Err(bad(
                "a role needs at least one bound audience (`bound_audiences`)".into(),
            ));
        }
        if self.token_ttl == 0 {
            return Err(bad("`token_ttl` must be positive".into()));
        }
        if self.token_max_ttl != 0 && self.token_max_ttl < self.token_ttl {
            return Err(bad("`token_ttl` cannot exceed `token_max_ttl`".into()));
        }
        for p in &self.token_policies {
            crate::acl::validate_policy_name(p)?;
        }
        for (k, v) in &self.bound_claims {
            let ok = match v {
                Value::String(_) => true,
                Value::Array(a) => a.iter().all(Value::is_string),
                _ => false,
            };
            if !ok {
                return Err(bad(format!(
                    "bound claim `{k}` must be a string or a list of strings"
                )));
            }
        }
        Ok(())
    }
}

/// `*` matches any run of characters (including `/`); everything else is literal.
pub fn glob_match(pattern: &str, value: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == value;
    }
    let mut rest = value;
    let last = parts.len() - 1;
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            match rest.strip_prefix(part) {
                Some(r) => rest = r,
                None => return false,
            }
        } else if i == last {
            return rest.ends_with(part);
        } else if let Some(pos) = rest.find(part) {
            rest = rest.get(pos + part.len()..).unwrap_or("");
        } else {
            return false;
        }
    }
    true
}

/// A resolved, valid broker token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenInfo {
    /// The token itself (lookup-self returns it as `id`, as Vault does).
    pub token: String,
    pub token_type: TokenType,
    /// Empty for batch tokens.
    pub accessor: String,
    pub policies: Vec<String>,
    pub meta: Map<String, Value>,
    /// SPIFFE ID of the workload that logged in.
    pub identity: String,
    pub role: String,
    /// Unix milliseconds.
    pub created_at: i64,
    pub expires_at: i64,
    pub max_expires_at: i64,
    pub ttl_ms: i64,
    /// Uses left after this one (0 = unlimited).
    pub num_uses: i64,
}

/// What a successful login hands out (the Vault `auth` object).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginResult {
    pub client_token: String,
    pub info: TokenInfo,
}

/// What a verified login grants, whatever proved the identity.
struct Grant<'a> {
    role: &'a str,
    /// SPIFFE ID of the workload.
    identity: String,
    display: String,
    /// `Some("cert")` for logins that are not JWT (kept in the token's meta).
    method: Option<&'static str>,
    token_policies: &'a [String],
    token_ttl: u64,
    token_max_ttl: u64,
    token_type: TokenType,
    token_num_uses: u64,
}

/// A cert auth role (Vault's `auth/cert/certs/NAME`, field names kept):
/// which X509-SVIDs, presented over the mTLS listener, may log in, and
/// what the token gets. The certificate itself is verified by the
/// listener against the trust bundle, so a role carries no CA.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertRole {
    #[serde(default)]
    pub name: String,
    /// SPIFFE IDs allowed, exact or glob with `*` (at least one).
    #[serde(default, deserialize_with = "string_or_list")]
    pub allowed_uri_sans: Vec<String>,
    #[serde(default, deserialize_with = "string_or_list")]
    pub token_policies: Vec<String>,
    #[serde(default = "default_ttl", deserialize_with = "duration_secs")]
    pub token_ttl: u64,
    /// 0 = the broker's maximum.
    #[serde(default, deserialize_with = "duration_secs")]
    pub token_max_ttl: u64,
    #[serde(default)]
    pub token_type: TokenType,
    #[serde(default)]
    pub token_num_uses: u64,
}

// === impl CertRole ===

impl CertRole {
    fn validate(&self) -> Result<(), SecretsError> {
        let bad = |m: String| SecretsError::InvalidRequest(m);
        validate_role_name(&self.name)?;
        if self.allowed_uri_sans.is_empty()
            || self
                .allowed_uri_sans
                .iter()
                .any(|p| !p.starts_with("spiffe://"))
        {
            return Err(bad(
                "a cert role needs at least one `spiffe://` pattern in `allowed_uri_sans`".into(),
            ));
        }
        if self.token_ttl == 0 {
            return Err(bad("`token_ttl` must be positive".into()));
        }
        if self.token_max_ttl != 0 && self.token_max_ttl < self.token_ttl {
            return Err(bad("`token_ttl` cannot exceed `token_max_ttl`".into()));
        }
        for p in &self.token_policies {
            crate::acl::validate_policy_name(p)?;
        }
        Ok(())
    }

    /// Whether `spiffe_id` is one this role admits.
    pub fn admits(&self, spiffe_id: &str) -> bool {
        self.allowed_uri_sans
            .iter()
            .any(|p| glob_match(p, spiffe_id))
    }
}

fn validate_role_name(name: &str) -> Result<(), SecretsError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(SecretsError::InvalidRequest(format!(
            "invalid role name `{name}`: use [a-zA-Z0-9._-], at most 128 bytes"
        )))
    }
}

type TokenRow = (
    String,
    String,
    String,
    String,
    String,
    i64,
    i64,
    i64,
    i64,
    i64,
);

impl Secrets {
    // --- roles ---

    /// A role's max TTL defaults to, and never exceeds, the broker's; its
    /// TTL never exceeds its max TTL.
    fn cap_role_ttls(&self, ttl: &mut u64, max_ttl: &mut u64) {
        let broker_max = self.config.max_token_ttl.as_secs();
        if *max_ttl == 0 || *max_ttl > broker_max {
            *max_ttl = broker_max;
        }
        *ttl = (*ttl).min(*max_ttl);
    }

    pub async fn write_role(&self, mut role: JwtRole) -> Result<JwtRole, SecretsError> {
        role.validate()?;
        self.cap_role_ttls(&mut role.token_ttl, &mut role.token_max_ttl);
        store_role(
            self,
            "INSERT INTO secrets_jwt_roles (name, config, updated_at) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET config = $2, updated_at = $3",
            &role.name,
            &role,
        )
        .await?;
        self.record(
            Event::new(kinds::ROLE_WRITTEN, Outcome::Success)
                .detail("role", role.name.clone())
                .detail("bound_subject", role.bound_subject.clone())
                .detail("policies", role.token_policies.clone()),
        )
        .await?;
        Ok(role)
    }

    pub async fn role(&self, name: &str) -> Result<Option<JwtRole>, SecretsError> {
        stored_role(
            self,
            "SELECT config FROM secrets_jwt_roles WHERE name = $1",
            name,
        )
        .await
    }

    pub async fn list_roles(&self) -> Result<Vec<String>, SecretsError> {
        role_names(self, "SELECT name FROM secrets_jwt_roles ORDER BY name").await
    }

    pub async fn delete_role(&self, name: &str) -> Result<(), SecretsError> {
        delete_stored_role(self, "DELETE FROM secrets_jwt_roles WHERE name = $1", name).await?;
        self.record(Event::new(kinds::ROLE_DELETED, Outcome::Success).detail("role", name))
            .await
    }

    // --- login ---

    /// `POST /v1/auth/jwt/login {role, jwt}`. Errors are `InvalidRequest`
    /// with Vault's wording (`role "x" could not be found`, `error
    /// validating token: …`, `error validating claims: …`), or
    /// `QuotaExceeded`.
    pub async fn login_jwt(&self, role_name: &str, jwt: &str) -> Result<LoginResult, SecretsError> {
        let result = self.login_inner(role_name, jwt).await;
        match &result {
            Ok(login) => {
                self.record(
                    Event::new(kinds::LOGIN_SUCCESS, Outcome::Success)
                        .agent(login.info.identity.clone())
                        .detail("role", role_name)
                        .detail("token_type", login.info.token_type.as_str())
                        .detail("accessor", login.info.accessor.clone())
                        .detail("policies", login.info.policies.clone()),
                )
                .await?;
            }
            Err(e) => {
                let mut event = Event::new(kinds::LOGIN_DENIED, Outcome::Denied)
                    .reason(e.to_string())
                    .detail("role", role_name);
                if let Some(sub) = unverified_sub(jwt) {
                    // Unverified: only a hint for the reader of the log.
                    event = event.detail("claimed_subject", sub);
                }
                self.record(event).await?;
            }
        }
        result
    }

    async fn login_inner(&self, role_name: &str, jwt: &str) -> Result<LoginResult, SecretsError> {
        let bad = |m: String| SecretsError::InvalidRequest(m);
        if role_name.is_empty() {
            return Err(bad("missing role".into()));
        }
        if jwt.is_empty() {
            return Err(bad("missing token".into()));
        }
        let role = self
            .role(role_name)
            .await?
            .ok_or_else(|| bad(format!("role \"{role_name}\" could not be found")))?;
        // The identity service checks signature, expiry, trust domain and one
        // audience at a time; the role may bind several.
        let mut last_err = None;
        let mut validated = None;
        for aud in &role.bound_audiences {
            match self.identity.validate_jwt_svid(jwt, aud) {
                Ok(v) => {
                    validated = Some(v);
                    break;
                }
                Err(e) => last_err = Some(e),
            }
        }
        let Some(svid) = validated else {
            let why = last_err.map_or_else(|| "invalid token".to_owned(), |e| e.to_string());
            return Err(bad(format!("error validating token: {why}")));
        };
        let sub = svid.spiffe_id.to_string();
        if !role.bound_subject.is_empty() && !glob_match(&role.bound_subject, &sub) {
            return Err(bad(
                "error validating claims: sub claim does not match bound subject".into(),
            ));
        }
        for (claim, want) in &role.bound_claims {
            let got = svid.claims.get(claim);
            let allowed: Vec<&str> = match want {
                Value::String(s) => vec![s.as_str()],
                Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
                _ => Vec::new(),
            };
            let values: Vec<&str> = match got {
                Some(Value::String(s)) => vec![s.as_str()],
                Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
                _ => Vec::new(),
            };
            let ok = values.iter().any(|v| {
                allowed.iter().any(|a| match role.bound_claims_type {
                    BoundClaimsType::String => a == v,
                    BoundClaimsType::Glob => glob_match(a, v),
                })
            });
            if !ok {
                return Err(bad(format!(
                    "error validating claims: claim \"{claim}\" does not match any associated bound claim values"
                )));
            }
        }
        let display = svid
            .claims
            .get(&role.user_claim)
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| {
                bad(format!(
                    "error validating claims: claim \"{}\" not found in token",
                    role.user_claim
                ))
            })?;
        if role.single_use_jti {
            let jti = svid
                .claims
                .get("jti")
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    bad("error validating token: role requires a single-use jti and the token has none".into())
                })?;
            let exp_ms = svid
                .claims
                .get("exp")
                .and_then(Value::as_i64)
                .unwrap_or(0)
                .saturating_mul(1000);
            self.consume_jti(jti, exp_ms).await?;
        }

        self.issue_token(Grant {
            role: &role.name,
            identity: sub,
            display,
            method: None,
            token_policies: &role.token_policies,
            token_ttl: role.token_ttl,
            token_max_ttl: role.token_max_ttl,
            token_type: role.token_type,
            token_num_uses: role.token_num_uses,
        })
        .await
    }

    /// Mints the token of a successful login (service: stored and counted
    /// against the identity's quota; batch: signed, nothing stored).
    async fn issue_token(&self, grant: Grant<'_>) -> Result<LoginResult, SecretsError> {
        let now = now_millis();
        let max_ttl_ms = duration_ms(Duration::from_secs(grant.token_max_ttl));
        let ttl_ms = duration_ms(Duration::from_secs(grant.token_ttl)).min(max_ttl_ms);
        let mut policies = vec![crate::acl::DEFAULT_POLICY_NAME.to_owned()];
        for p in grant.token_policies {
            if !policies.contains(p) {
                policies.push(p.clone());
            }
        }
        let mut meta = Map::new();
        meta.insert("role".into(), Value::String(grant.role.to_owned()));
        meta.insert("spiffe_id".into(), Value::String(grant.identity.clone()));
        meta.insert("display_name".into(), Value::String(grant.display));
        if let Some(method) = grant.method {
            meta.insert("auth_method".into(), Value::String(method.to_owned()));
        }
        let mut info = TokenInfo {
            token: String::new(),
            token_type: grant.token_type,
            accessor: String::new(),
            policies,
            meta,
            identity: grant.identity,
            role: grant.role.to_owned(),
            created_at: now,
            expires_at: now.saturating_add(ttl_ms),
            max_expires_at: now.saturating_add(max_ttl_ms),
            ttl_ms,
            num_uses: i64::try_from(grant.token_num_uses).unwrap_or(i64::MAX),
        };
        match grant.token_type {
            TokenType::Batch => {
                // Batch tokens cannot outlive their first TTL (no renewal).
                info.max_expires_at = info.expires_at;
                info.num_uses = 0;
                let token = self.batch.mint(&BatchClaims {
                    sub: info.identity.clone(),
                    role: info.role.clone(),
                    policies: info.policies.clone(),
                    meta: info.meta.clone(),
                    iat: info.created_at,
                    exp: info.expires_at,
                    nonce: token::random_b64(9)?,
                })?;
                info.token = token.clone();
                Ok(LoginResult {
                    client_token: token,
                    info,
                })
            }
            TokenType::Service => {
                self.check_token_quota(&info.identity).await?;
                let token = token::new_service_token()?;
                info.accessor = token::new_accessor()?;
                info.token = token.clone();
                sqlx::query(
                    "INSERT INTO secrets_tokens (token_hash, accessor, policies, meta, identity, role, ttl_ms, created_at, expires_at, max_expires_at, num_uses) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                )
                .bind(token::hash_token(&token))
                .bind(&info.accessor)
                .bind(json_string(&info.policies))
                .bind(json_string(&info.meta))
                .bind(&info.identity)
                .bind(&info.role)
                .bind(info.ttl_ms)
                .bind(info.created_at)
                .bind(info.expires_at)
                .bind(info.max_expires_at)
                .bind(info.num_uses)
                .execute(self.store.pool())
                .await?;
                Ok(LoginResult {
                    client_token: token,
                    info,
                })
            }
        }
    }

    /// One atomic insert: the second use of a `jti` fails on every replica.
    async fn consume_jti(&self, jti: &str, expires_at: i64) -> Result<(), SecretsError> {
        let done = sqlx::query(
            "INSERT INTO secrets_used_jti (jti, expires_at) VALUES ($1, $2) ON CONFLICT (jti) DO NOTHING",
        )
        .bind(jti)
        .bind(expires_at)
        .execute(self.store.pool())
        .await?;
        if done.rows_affected() == 1 {
            Ok(())
        } else {
            Err(SecretsError::InvalidRequest(
                "error validating token: the token's jti was already used (single-use role)".into(),
            ))
        }
    }

    async fn check_token_quota(&self, identity: &str) -> Result<(), SecretsError> {
        let (n,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM secrets_tokens WHERE identity = $1 AND expires_at > $2",
        )
        .bind(identity)
        .bind(now_millis())
        .fetch_one(self.store.pool())
        .await?;
        let limit = self.config.max_tokens_per_identity;
        if u64::try_from(n).unwrap_or(0) >= limit {
            self.record(
                Event::new(kinds::LEASE_QUOTA_EXCEEDED, Outcome::Denied)
                    .agent(identity)
                    .reason(format!("token quota of {limit} reached")),
            )
            .await?;
            return Err(SecretsError::QuotaExceeded(format!(
                "token quota exceeded: `{identity}` already holds {n} live tokens (limit {limit}); revoke unused tokens or wait for them to expire"
            )));
        }
        Ok(())
    }

    // --- tokens ---

    /// The token behind `token`, or `PermissionDenied` (missing, unknown,
    /// expired, forged, or out of uses). A use is counted here.
    pub async fn resolve_token(&self, token: Option<&str>) -> Result<TokenInfo, SecretsError> {
        let token = token
            .filter(|t| !t.is_empty())
            .ok_or(SecretsError::PermissionDenied)?;
        let now = now_millis();
        if token.starts_with(BATCH_PREFIX) {
            let claims = self
                .batch
                .verify(token)
                .ok_or(SecretsError::PermissionDenied)?;
            if claims.exp <= now {
                return Err(SecretsError::PermissionDenied);
            }
            return Ok(TokenInfo {
                token: token.to_owned(),
                token_type: TokenType::Batch,
                accessor: String::new(),
                policies: claims.policies,
                meta: claims.meta,
                identity: claims.sub,
                role: claims.role,
                created_at: claims.iat,
                expires_at: claims.exp,
                max_expires_at: claims.exp,
                ttl_ms: claims.exp.saturating_sub(claims.iat),
                num_uses: 0,
            });
        }
        let hash = token::hash_token(token);
        let row: Option<TokenRow> = sqlx::query_as(
            "SELECT accessor, policies, meta, identity, role, ttl_ms, created_at, expires_at, max_expires_at, num_uses \
             FROM secrets_tokens WHERE token_hash = $1",
        )
        .bind(&hash)
        .fetch_optional(self.store.pool())
        .await?;
        let Some((
            accessor,
            policies,
            meta,
            identity,
            role,
            ttl_ms,
            created_at,
            expires_at,
            max_expires_at,
            mut num_uses,
        )) = row
        else {
            return Err(SecretsError::PermissionDenied);
        };
        if expires_at <= now {
            return Err(SecretsError::PermissionDenied);
        }
        if num_uses > 0 {
            // Spend one use atomically; the last use deletes the token.
            let spent = sqlx::query(
                "UPDATE secrets_tokens SET num_uses = num_uses - 1 WHERE token_hash = $1 AND num_uses > 1",
            )
            .bind(&hash)
            .execute(self.store.pool())
            .await?;
            if spent.rows_affected() == 0 {
                let last = sqlx::query(
                    "DELETE FROM secrets_tokens WHERE token_hash = $1 AND num_uses = 1",
                )
                .bind(&hash)
                .execute(self.store.pool())
                .await?;
                if last.rows_affected() == 0 {
                    return Err(SecretsError::PermissionDenied);
                }
            }
            num_uses -= 1;
        }
        Ok(TokenInfo {
            token: token.to_owned(),
            token_type: TokenType::Service,
            accessor,
            policies: serde_json::from_str(&policies).unwrap_or_default(),
            meta: serde_json::from_str(&meta).unwrap_or_default(),
            identity,
            role,
            created_at,
            expires_at,
            max_expires_at,
            ttl_ms,
            num_uses,
        })
    }

    /// Renews a service token: new expiry = now + increment (or its TTL),
    /// capped at its max TTL. Returns the token and a warning when capped.
    pub async fn renew_token(
        &self,
        info: &TokenInfo,
        increment: Option<Duration>,
    ) -> Result<(TokenInfo, Option<String>), SecretsError> {
        if info.token_type == TokenType::Batch {
            return Err(SecretsError::InvalidRequest(
                "batch tokens cannot be renewed".into(),
            ));
        }
        let now = now_millis();
        let wanted = increment
            .filter(|d| !d.is_zero())
            .map_or(info.ttl_ms, duration_ms);
        let mut expires = now.saturating_add(wanted);
        let mut warning = None;
        if expires > info.max_expires_at {
            expires = info.max_expires_at;
            warning = Some(format!(
                "TTL of \"{}s\" exceeded the effective max_ttl of \"{}s\"; TTL value is capped accordingly",
                wanted / 1000,
                (info.max_expires_at - now).max(0) / 1000
            ));
        }
        sqlx::query("UPDATE secrets_tokens SET expires_at = $1 WHERE token_hash = $2")
            .bind(expires)
            .bind(token::hash_token(&info.token))
            .execute(self.store.pool())
            .await?;
        self.record(
            Event::new(kinds::TOKEN_RENEWED, Outcome::Success)
                .agent(info.identity.clone())
                .detail("accessor", info.accessor.clone())
                .detail("expires_in_s", (expires - now) / 1000),
        )
        .await?;
        let mut renewed = info.clone();
        renewed.expires_at = expires;
        Ok((renewed, warning))
    }

    /// Revokes a service token and every lease it created.
    pub async fn revoke_token(&self, info: &TokenInfo) -> Result<(), SecretsError> {
        if info.token_type == TokenType::Batch {
            return Err(SecretsError::InvalidRequest(
                "batch tokens cannot be revoked".into(),
            ));
        }
        let mut tx = self.store.pool().begin().await?;
        sqlx::query("DELETE FROM secrets_tokens WHERE token_hash = $1")
            .bind(token::hash_token(&info.token))
            .execute(&mut *tx)
            .await?;
        let leases = sqlx::query(
            "UPDATE secrets_leases SET revoking = 1, next_attempt_at = 0 WHERE token_accessor = $1 AND revoking = 0",
        )
        .bind(&info.accessor)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.record(
            Event::new(kinds::TOKEN_REVOKED, Outcome::Success)
                .agent(info.identity.clone())
                .detail("accessor", info.accessor.clone())
                .detail("leases", leases.rows_affected()),
        )
        .await?;
        if leases.rows_affected() > 0 {
            // Best effort now; whatever fails stays queued for the worker.
            let _ = self.process_due_revocations().await;
        }
        Ok(())
    }
}

/// Vault's answer when no cert role admits the presented certificate.
const NO_MATCHING_CERT_ROLE: &str =
    "no chain matching all constraints could be found for this login certificate";

impl Secrets {
    // --- cert auth (X509-SVID over mTLS) ---

    pub async fn write_cert_role(&self, mut role: CertRole) -> Result<CertRole, SecretsError> {
        role.validate()?;
        self.cap_role_ttls(&mut role.token_ttl, &mut role.token_max_ttl);
        store_role(
            self,
            "INSERT INTO secrets_cert_roles (name, config, updated_at) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET config = $2, updated_at = $3",
            &role.name,
            &role,
        )
        .await?;
        self.record(
            Event::new(kinds::ROLE_WRITTEN, Outcome::Success)
                .detail("auth", "cert")
                .detail("role", role.name.clone())
                .detail("allowed_uri_sans", role.allowed_uri_sans.clone())
                .detail("policies", role.token_policies.clone()),
        )
        .await?;
        Ok(role)
    }

    pub async fn cert_role(&self, name: &str) -> Result<Option<CertRole>, SecretsError> {
        stored_role(
            self,
            "SELECT config FROM secrets_cert_roles WHERE name = $1",
            name,
        )
        .await
    }

    pub async fn list_cert_roles(&self) -> Result<Vec<String>, SecretsError> {
        role_names(self, "SELECT name FROM secrets_cert_roles ORDER BY name").await
    }

    pub async fn delete_cert_role(&self, name: &str) -> Result<(), SecretsError> {
        delete_stored_role(self, "DELETE FROM secrets_cert_roles WHERE name = $1", name).await?;
        self.record(
            Event::new(kinds::ROLE_DELETED, Outcome::Success)
                .detail("auth", "cert")
                .detail("role", name),
        )
        .await
    }

    /// `POST /v1/auth/cert/login {name?}` on a connection that presented
    /// `peer` (verified by the mTLS listener). With a role name, that role
    /// must admit the SVID's SPIFFE ID; without one, the first role (by
    /// name) that does is used, as in Vault. Errors are `InvalidRequest`
    /// with Vault's wording; every attempt is an audit event.
    pub async fn login_cert(
        &self,
        role_name: Option<&str>,
        peer: Option<&keyless_identity::PeerSvid>,
    ) -> Result<LoginResult, SecretsError> {
        let role_name = role_name.filter(|n| !n.is_empty());
        let result = self.login_cert_inner(role_name, peer).await;
        match &result {
            Ok(login) => {
                self.record(
                    Event::new(kinds::LOGIN_SUCCESS, Outcome::Success)
                        .agent(login.info.identity.clone())
                        .detail("auth", "cert")
                        .detail("role", login.info.role.clone())
                        .detail("token_type", login.info.token_type.as_str())
                        .detail("accessor", login.info.accessor.clone())
                        .detail("policies", login.info.policies.clone()),
                )
                .await?;
            }
            Err(e) => {
                let mut event = Event::new(kinds::LOGIN_DENIED, Outcome::Denied)
                    .reason(e.to_string())
                    .detail("auth", "cert")
                    .detail("role", role_name.unwrap_or(""));
                if let Some(p) = peer {
                    // Verified by the TLS handshake, so a real agent.
                    event = event.agent(p.spiffe_id.to_string());
                }
                self.record(event).await?;
            }
        }
        result
    }

    async fn login_cert_inner(
        &self,
        role_name: Option<&str>,
        peer: Option<&keyless_identity::PeerSvid>,
    ) -> Result<LoginResult, SecretsError> {
        let bad = |m: String| SecretsError::InvalidRequest(m);
        let peer = peer.ok_or_else(|| bad("client certificate must be supplied".into()))?;
        // The listener already checks this; a second look costs nothing.
        if !peer.spiffe_id.is_member_of(self.identity.trust_domain()) {
            return Err(bad(NO_MATCHING_CERT_ROLE.into()));
        }
        let id = peer.spiffe_id.to_string();
        let role = match role_name {
            Some(name) => {
                let role = self
                    .cert_role(name)
                    .await?
                    .ok_or_else(|| bad(format!("role \"{name}\" could not be found")))?;
                if !role.admits(&id) {
                    return Err(bad(NO_MATCHING_CERT_ROLE.into()));
                }
                role
            }
            None => {
                let mut found = None;
                for name in self.list_cert_roles().await? {
                    if let Some(role) = self.cert_role(&name).await?
                        && role.admits(&id)
                    {
                        found = Some(role);
                        break;
                    }
                }
                found.ok_or_else(|| bad(NO_MATCHING_CERT_ROLE.into()))?
            }
        };
        self.issue_token(Grant {
            role: &role.name,
            identity: id.clone(),
            display: id,
            method: Some("cert"),
            token_policies: &role.token_policies,
            token_ttl: role.token_ttl,
            token_max_ttl: role.token_max_ttl,
            token_type: role.token_type,
            token_num_uses: role.token_num_uses,
        })
        .await
    }
}

fn json_string<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".into())
}

/// The `sub` claim of a JWT without verifying anything (audit hints only).
fn unverified_sub(jwt: &str) -> Option<String> {
    use base64::Engine;
    let payload = jwt.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    let sub = v.get("sub")?.as_str()?;
    Some(sub.chars().take(256).collect())
}

// --- role storage shared by JWT and cert roles (a JSON config per name) ---

async fn stored_role<T: serde::de::DeserializeOwned>(
    s: &Secrets,
    sql: &'static str,
    name: &str,
) -> Result<Option<T>, SecretsError> {
    let row: Option<(String,)> = sqlx::query_as(sql)
        .bind(name)
        .fetch_optional(s.store.pool())
        .await?;
    row.map(|(c,)| {
        serde_json::from_str(&c)
            .map_err(|e| SecretsError::InvalidRequest(format!("stored role `{name}`: {e}")))
    })
    .transpose()
}

async fn store_role<T: Serialize>(
    s: &Secrets,
    sql: &'static str,
    name: &str,
    role: &T,
) -> Result<(), SecretsError> {
    let config = serde_json::to_string(role)
        .map_err(|e| SecretsError::InvalidRequest(format!("role: {e}")))?;
    sqlx::query(sql)
        .bind(name)
        .bind(config)
        .bind(now_millis())
        .execute(s.store.pool())
        .await?;
    Ok(())
}

async fn role_names(s: &Secrets, sql: &'static str) -> Result<Vec<String>, SecretsError> {
    let rows: Vec<(String,)> = sqlx::query_as(sql).fetch_all(s.store.pool()).await?;
    Ok(rows.into_iter().map(|r| r.0).collect())
}

async fn delete_stored_role(
    s: &Secrets,
    sql: &'static str,
    name: &str,
) -> Result<(), SecretsError> {
    let done = sqlx::query(sql).bind(name).execute(s.store.pool()).await?;
    if done.rows_affected() == 0 {
        return Err(SecretsError::NotFound(format!(
            "role \"{name}\" could not be found"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("spiffe://a/*", "spiffe://a/b/c"));
        assert!(glob_match("spiffe://a/x", "spiffe://a/x"));
        assert!(!glob_match("spiffe://a/x", "spiffe://a/xy"));
        assert!(glob_match("*mid*", "amidb"));
        assert!(!glob_match("a*b", "ac"));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("soon").is_err());
    }
}
