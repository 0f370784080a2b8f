//! The OpenID Connect / OAuth 2.0 sign-in flow on top of sessions:
//! `/oauth2/authorize` validation and single-use authorization codes bound
//! to PKCE S256 (RFC 7636), the `authorization_code` and `refresh_token`
//! grants (rotation, reuse revokes the family), ID tokens, userinfo,
//! introspection (RFC 7662) and revocation (RFC 7009).
//!
//! A refresh-token family is one sign-in of one client; every access token
//! it issues is recorded by `jti`, so revoking the family (logout, refresh
//! reuse, code replay, RFC 7009) revokes them too.

use std::collections::BTreeSet;

use keyless_audit::{Event, Outcome};
use keyless_store::now_millis;
use keyless_store::sqlx::{self, Row};
use serde::Serialize;
use serde_json::{Value, json};

use crate::db;
use crate::service::{IssuedToken, UserTokenRequest, kinds, secs, unix_now};
use crate::token::{
    AccessTokenClaims, IdTokenClaims, ct_eq, pkce_s256, random_id, random_secret, secret_hash,
};
use crate::{Sts, StsError};

/// Lifetime of an authorization code.
const CODE_TTL_MS: i64 = 60_000;
/// The scopes a client may ask for at `/oauth2/authorize`.
pub(crate) const SCOPES_SUPPORTED: &[&str] = &["openid", "email", "tools"];

/// The query of `/oauth2/authorize` (every parameter as sent).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthorizeRequest {
    pub response_type: Option<String>,
    pub client_id: Option<String>,
    pub redirect_uri: Option<String>,
    pub scope: Option<String>,
    pub state: Option<String>,
    pub nonce: Option<String>,
    pub code_challenge: Option<String>,
    pub code_challenge_method: Option<String>,
    pub authorization_details: Option<String>,
}

/// The `authorization_code` grant of a public client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeGrant {
    pub code: String,
    pub client_id: String,
    pub redirect_uri: String,
    pub code_verifier: String,
}

/// A token response (RFC 6749 §5.1 + OIDC `id_token`).
#[derive(Debug, Clone, Serialize)]
pub struct TokenResponse {
    pub access_token: String,
    pub token_type: &'static str,
    pub expires_in: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id_token: Option<String>,
    pub scope: String,
}

fn grant(msg: impl Into<String>) -> StsError {
    StsError::InvalidGrant(msg.into())
}

/// A PKCE verifier: 43–128 characters of the RFC 7636 §4.1 alphabet.
fn valid_verifier(v: &str) -> bool {
    (43..=128).contains(&v.len())
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

/// What a family row says about who it is for.
struct Family {
    client_id: String,
    user_id: String,
    sid: String,
    scope: String,
    revoked: bool,
}

// === impl Sts ===

impl Sts {
    /// Checks `client_id` and `redirect_uri` of an authorization request.
    /// An error here must be shown to the user, never redirected: the
    /// redirect URI is not trusted yet (RFC 6749 §4.1.2.1).
    pub fn authorize_redirect_uri(&self, req: &AuthorizeRequest) -> Result<String, StsError> {
        let client_id = req
            .client_id
            .as_deref()
            .ok_or_else(|| StsError::InvalidRequest("client_id is required".into()))?;
        let client = self.config.public_client(client_id).ok_or_else(|| {
            StsError::InvalidClient(format!("`{client_id}` is not a registered client"))
        })?;
        match req.redirect_uri.as_deref() {
            Some(uri) if client.redirect_uris.iter().any(|r| r == uri) => Ok(uri.to_owned()),
            Some(uri) => Err(StsError::InvalidRequest(format!(
                "redirect_uri `{uri}` is not registered for `{client_id}`"
            ))),
            // One registered URI may be implied (RFC 6749 §3.1.2.3).
            None => match client.redirect_uris.as_slice() {
                [only] => Ok(only.clone()),
                _ => Err(StsError::InvalidRequest("redirect_uri is required".into())),
            },
        }
    }

    /// Checks the rest of an authorization request; errors go back to the
    /// (already validated) redirect URI.
    pub fn check_authorize(&self, req: &AuthorizeRequest) -> Result<(), StsError> {
        match req.response_type.as_deref() {
            Some("code") => {}
            Some(other) => {
                return Err(StsError::UnsupportedResponseType(other.to_owned()));
            }
            None => return Err(StsError::InvalidRequest("response_type is required".into())),
        }
        match req.code_challenge_method.as_deref() {
            Some("S256") => {}
            _ => {
                return Err(StsError::InvalidRequest(
                    "pkce is required with code_challenge_method=S256".into(),
                ));
            }
        }
        // base64url of a SHA-256: exactly 43 characters.
        match req.code_challenge.as_deref() {
            Some(c) if c.len() == 43 && valid_verifier(&format!("{c}{c}")) => {}
            _ => {
                return Err(StsError::InvalidRequest(
                    "code_challenge must be a base64url sha-256".into(),
                ));
            }
        }
        let scope = req.scope.as_deref().unwrap_or("openid");
        if let Some(bad) = scope
            .split_ascii_whitespace()
            .find(|s| !SCOPES_SUPPORTED.contains(s))
        {
            return Err(StsError::InvalidScope(format!("unknown scope `{bad}`")));
        }
        if let Some(details) = &req.authorization_details {
            self.rar.parse(details)?;
        }
        if req.state.as_ref().is_some_and(|s| s.len() > 1024)
            || req.nonce.as_ref().is_some_and(|s| s.len() > 1024)
        {
            return Err(StsError::InvalidRequest(
                "state or nonce is too long".into(),
            ));
        }
        Ok(())
    }

    /// Issues a single-use authorization code (60 s) for a checked request
    /// and a live session; only its hash is stored.
    pub async fn issue_code(
        &self,
        req: &AuthorizeRequest,
        session: &crate::Session,
    ) -> Result<String, StsError> {
        self.check_authorize(req)?;
        let redirect_uri = self.authorize_redirect_uri(req)?;
        let code = random_secret()?;
        let client_id = req.client_id.clone().unwrap_or_default();
        sqlx::query(
            "INSERT INTO sts_auth_codes (code_hash, client_id, redirect_uri, code_challenge, user_id, sid, \
             nonce, scope, authorization_details, expires_at, used_at, family) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 0, '')",
        )
        .bind(secret_hash(&code))
        .bind(&client_id)
        .bind(&redirect_uri)
        .bind(req.code_challenge.clone().unwrap_or_default())
        .bind(&session.user_id)
        .bind(&session.sid)
        .bind(req.nonce.clone().unwrap_or_default())
        .bind(req.scope.clone().unwrap_or_else(|| "openid".into()))
        .bind(req.authorization_details.clone().unwrap_or_default())
        .bind(now_millis().saturating_add(CODE_TTL_MS))
        .execute(self.store.pool())
        .await?;
        self.events
            .record(
                Event::new(kinds::CODE_ISSUED, Outcome::Success)
                    .user(session.user_id.clone())
                    .session(session.sid.clone())
                    .detail("client_id", client_id),
            )
            .await?;
        Ok(code)
    }

    /// Redeems an authorization code (public client + PKCE). A second
    /// redemption fails and revokes what the first one issued.
    pub async fn redeem_code(&self, g: &CodeGrant) -> Result<TokenResponse, StsError> {
        let hash = secret_hash(&g.code);
        let now = now_millis();
        let first = sqlx::query(
            "UPDATE sts_auth_codes SET used_at = $1 WHERE code_hash = $2 AND used_at = 0",
        )
        .bind(now)
        .bind(&hash)
        .execute(self.store.pool())
        .await?
        .rows_affected()
            == 1;
        let row = sqlx::query("SELECT * FROM sts_auth_codes WHERE code_hash = $1")
            .bind(&hash)
            .fetch_optional(self.store.pool())
            .await?
            .ok_or_else(|| grant("unknown authorization code"))?;
        let family: String = row.try_get("family")?;
        let user_id: String = row.try_get("user_id")?;
        let sid: String = row.try_get("sid")?;
        if !first {
            if !family.is_empty() {
                self.revoke_family(&family).await?;
            }
            self.events
                .record(
                    Event::new(kinds::CODE_REUSE_DETECTED, Outcome::Denied)
                        .user(user_id)
                        .session(sid)
                        .reason("authorization code presented twice; its tokens are revoked"),
                )
                .await?;
            return Err(grant("authorization code was already used"));
        }
        let expires_at: i64 = row.try_get("expires_at")?;
        let client_id: String = row.try_get("client_id")?;
        let redirect_uri: String = row.try_get("redirect_uri")?;
        let challenge: String = row.try_get("code_challenge")?;
        if expires_at <= now {
            return Err(grant("authorization code has expired"));
        }
        if client_id != g.client_id {
            return Err(grant("authorization code was issued to another client"));
        }
        if redirect_uri != g.redirect_uri {
            return Err(grant(
                "redirect_uri does not match the authorization request",
            ));
        }
        if !valid_verifier(&g.code_verifier) || !ct_eq(&pkce_s256(&g.code_verifier), &challenge) {
            return Err(grant("code_verifier does not match the code_challenge"));
        }
        if !self.session_live(&sid).await? {
            return Err(grant("the session has ended"));
        }
        let scope: String = row.try_get("scope")?;
        let nonce: String = row.try_get("nonce")?;
        let details: String = row.try_get("authorization_details")?;
        let family = random_id()?;
        sqlx::query(
            "INSERT INTO sts_token_families (family, client_id, user_id, sid, scope, created_at, revoked_at) \
             VALUES ($1, $2, $3, $4, $5, $6, 0)",
        )
        .bind(&family)
        .bind(&client_id)
        .bind(&user_id)
        .bind(&sid)
        .bind(&scope)
        .bind(now)
        .execute(self.store.pool())
        .await?;
        sqlx::query("UPDATE sts_auth_codes SET family = $1 WHERE code_hash = $2")
            .bind(&family)
            .bind(&hash)
            .execute(self.store.pool())
            .await?;
        let f = Family {
            client_id,
            user_id,
            sid,
            scope,
            revoked: false,
        };
        let details = if details.is_empty() {
            None
        } else {
            Some(
                serde_json::from_str::<Vec<Value>>(&details)
                    .map_err(|e| StsError::Corrupt(format!("code details: {e}")))?,
            )
        };
        self.issue_for_family(
            &family,
            &f,
            Some(nonce).filter(|n| !n.is_empty()),
            details,
            true,
        )
        .await
    }

    /// The `refresh_token` grant: rotates the token. Presenting a rotated
    /// token again is reuse: the family and its session are revoked.
    pub async fn refresh(
        &self,
        refresh_token: &str,
        client_id: &str,
    ) -> Result<TokenResponse, StsError> {
        let hash = secret_hash(refresh_token);
        let now = now_millis();
        let row = sqlx::query(
            "SELECT family, expires_at, used_at FROM sts_refresh_tokens WHERE token_hash = $1",
        )
        .bind(&hash)
        .fetch_optional(self.store.pool())
        .await?
        .ok_or_else(|| grant("unknown refresh token"))?;
        let family_id: String = row.try_get("family")?;
        let expires_at: i64 = row.try_get("expires_at")?;
        let f = self
            .family(&family_id)
            .await?
            .ok_or_else(|| StsError::Corrupt("refresh token without family".into()))?;
        if f.client_id != client_id {
            return Err(grant("refresh token was issued to another client"));
        }
        // The risk ladder, checked before rotation so that a refused
        // refresh does not spend the token (a retry is not reuse); a token
        // already rotated goes on to reuse detection instead.
        let used_at: i64 = row.try_get("used_at")?;
        if used_at == 0 {
            self.refresh_risk_check(&f).await?;
        }
        let rotated = sqlx::query(
            "UPDATE sts_refresh_tokens SET used_at = $1 WHERE token_hash = $2 AND used_at = 0",
        )
        .bind(now)
        .bind(&hash)
        .execute(self.store.pool())
        .await?
        .rows_affected()
            == 1;
        if !rotated {
            self.revoke_family(&family_id).await?;
            self.logout(&f.sid).await?;
            self.events
                .record(
                    Event::new(kinds::REFRESH_REUSE_DETECTED, Outcome::Denied)
                        .user(f.user_id.clone())
                        .session(f.sid.clone())
                        .detail("family", family_id.clone())
                        .reason("a rotated refresh token was presented again; the family and session are revoked"),
                )
                .await?;
            return Err(grant("refresh token was already used"));
        }
        if f.revoked {
            return Err(grant("refresh token was revoked"));
        }
        if expires_at <= now {
            return Err(grant("refresh token has expired"));
        }
        if !self.session_live(&f.sid).await? {
            return Err(grant("the session has ended"));
        }
        self.issue_for_family(&family_id, &f, None, None, false)
            .await
    }

    /// Refuses a refresh when the session is at W2 or above (the user must
    /// sign in again: that is the step-up) or the user is restricted (W4);
    /// either refusal is a `token.denied` event.
    async fn refresh_risk_check(&self, f: &Family) -> Result<(), StsError> {
        let reason = if self.subject_restricted(&f.user_id) {
            crate::risk::RESTRICTED_REASON
        } else if self.session_risk_level(Some(&f.sid)) >= crate::risk::STEP_UP_LEVEL {
            "step-up required: sign in again (risk ladder W2)"
        } else {
            return Ok(());
        };
        self.events
            .record(
                Event::new(kinds::TOKEN_DENIED, Outcome::Denied)
                    .user(f.user_id.clone())
                    .session(f.sid.clone())
                    .reason(reason)
                    .detail("grant_type", "refresh_token")
                    .detail("client_id", f.client_id.clone())
                    .detail("error", "invalid_grant"),
            )
            .await?;
        Err(grant(reason))
    }

    async fn family(&self, family: &str) -> Result<Option<Family>, StsError> {
        let row = sqlx::query("SELECT * FROM sts_token_families WHERE family = $1")
            .bind(family)
            .fetch_optional(self.store.pool())
            .await?;
        let Some(r) = row else { return Ok(None) };
        Ok(Some(Family {
            client_id: r.try_get("client_id")?,
            user_id: r.try_get("user_id")?,
            sid: r.try_get("sid")?,
            scope: r.try_get("scope")?,
            revoked: r.try_get::<i64, _>("revoked_at")? != 0,
        }))
    }

    /// Revokes a family: its refresh tokens and the access tokens it issued.
    pub(crate) async fn revoke_family(&self, family: &str) -> Result<(), StsError> {
        sqlx::query(
            "UPDATE sts_token_families SET revoked_at = $1 WHERE family = $2 AND revoked_at = 0",
        )
        .bind(now_millis().max(1))
        .bind(family)
        .execute(self.store.pool())
        .await?;
        self.changed().await;
        Ok(())
    }

    /// Mints access (+ ID) + refresh token for a family. `may_act` is
    /// derived from the user's live consents at this moment.
    async fn issue_for_family(
        &self,
        family: &str,
        f: &Family,
        nonce: Option<String>,
        details: Option<Vec<Value>>,
        with_id_token: bool,
    ) -> Result<TokenResponse, StsError> {
        let user = self
            .user_by_id(&f.user_id)
            .await?
            .filter(|u| !u.disabled)
            .ok_or_else(|| grant("the user is unknown or disabled"))?;
        let auth_time: i64 = sqlx::query("SELECT auth_time FROM sts_sessions WHERE sid = $1")
            .bind(&f.sid)
            .fetch_one(self.store.pool())
            .await?
            .try_get("auth_time")?;
        let agents: BTreeSet<String> = db::list_consents(&self.store, Some(&user.id), true)
            .await?
            .into_iter()
            .map(|c| c.agent)
            .collect();
        let issued = self
            .mint_user_token(
                &UserTokenRequest {
                    subject: user.id.clone(),
                    email: Some(user.email.clone()),
                    client_id: f.client_id.clone(),
                    session_id: Some(f.sid.clone()),
                    scope: Some(f.scope.clone()),
                    audience: Vec::new(),
                    may_act: agents.into_iter().collect(),
                    auth_time: Some(auth_time),
                },
                details,
            )
            .await?;
        self.track_access_token(&issued, family).await?;
        let id_token = if with_id_token && f.scope.split_ascii_whitespace().any(|s| s == "openid") {
            let now = unix_now();
            Some(self.sign_id_token(&IdTokenClaims {
                iss: self.config.issuer.clone(),
                sub: user.id.clone(),
                aud: f.client_id.clone(),
                iat: now,
                exp: now.saturating_add(secs(self.config.access_token_ttl)),
                auth_time,
                sid: f.sid.clone(),
                nonce,
                email: Some(user.email.clone()),
            })?)
        } else {
            None
        };
        let refresh = random_secret()?;
        let now = now_millis();
        sqlx::query(
            "INSERT INTO sts_refresh_tokens (token_hash, family, created_at, expires_at, used_at) \
             VALUES ($1, $2, $3, $4, 0)",
        )
        .bind(secret_hash(&refresh))
        .bind(family)
        .bind(now)
        .bind(now.saturating_add(
            i64::try_from(self.config.refresh_token_ttl.as_millis()).unwrap_or(i64::MAX),
        ))
        .execute(self.store.pool())
        .await?;
        Ok(TokenResponse {
            access_token: issued.token,
            token_type: "Bearer",
            expires_in: issued.expires_in,
            refresh_token: Some(refresh),
            id_token,
            scope: f.scope.clone(),
        })
    }

    async fn track_access_token(&self, t: &IssuedToken, family: &str) -> Result<(), StsError> {
        sqlx::query(
            "INSERT INTO sts_access_tokens (jti, family, expires_at, revoked_at) VALUES ($1, $2, $3, 0)",
        )
        .bind(&t.claims.jti)
        .bind(family)
        .bind(t.claims.exp)
        .execute(self.store.pool())
        .await?;
        Ok(())
    }

    /// Whether a verified token is still good: its session (if any) is
    /// live, and neither it nor its family was revoked.
    pub async fn token_live(&self, claims: &AccessTokenClaims) -> Result<bool, StsError> {
        // Generation first, store second (see `live.rs`).
        let generation = self.live.begin();
        if let Some(sid) = &claims.sid {
            let created = match generation.and_then(|g| self.live.session(sid, g)) {
                Some(created) => Some(created),
                None => {
                    let created = self.session_created_at(sid).await?;
                    if let (Some(g), Some(c)) = (generation, created) {
                        self.live.put_session(sid, g, c);
                    }
                    created
                }
            };
            if created.is_none_or(|c| c <= self.session_cutoff()) {
                return Ok(false);
            }
        }
        if generation.is_some_and(|g| self.live.token(&claims.jti, g)) {
            return Ok(true);
        }
        // An OBO token has no row unless it was revoked, and on SQLite every
        // revocation is known in memory: no query per consumption.
        if claims.is_obo()
            && let Some(revoked) = &self.revoked
        {
            return Ok(!revoked
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .contains_key(&claims.jti));
        }
        let row = sqlx::query(
            "SELECT a.revoked_at AS a_rev, COALESCE(f.revoked_at, 0) AS f_rev \
             FROM sts_access_tokens a LEFT JOIN sts_token_families f ON a.family = f.family \
             WHERE a.jti = $1",
        )
        .bind(&claims.jti)
        .fetch_optional(self.store.pool())
        .await?;
        let live = match row {
            None => true,
            Some(r) => r.try_get::<i64, _>("a_rev")? == 0 && r.try_get::<i64, _>("f_rev")? == 0,
        };
        if let (true, Some(g)) = (live, generation) {
            self.live.put_token(&claims.jti, g);
        }
        Ok(live)
    }

    /// `/oauth2/userinfo`: the claims about the user a live user access
    /// token names.
    pub async fn userinfo(&self, access_token: &str) -> Result<Value, StsError> {
        let claims = self
            .verify_access_token(access_token, Some(&self.config.issuer))
            .await?;
        if claims.is_obo() || claims.is_service() || !self.token_live(&claims).await? {
            return Err(StsError::InvalidToken("the token is not active".into()));
        }
        let mut out = serde_json::Map::new();
        out.insert("sub".into(), Value::String(claims.sub));
        if let Some(email) = claims.email {
            out.insert("email".into(), Value::String(email));
        }
        Ok(Value::Object(out))
    }

    /// Authenticates the caller of introspection: a JWT-SVID (audience
    /// the issuer) of a registered resource server or client.
    pub fn authenticate_introspector(&self, bearer: &str) -> Result<String, StsError> {
        let svid = self
            .identity
            .validate_jwt_svid(bearer, &self.config.issuer)
            .map_err(|e| StsError::InvalidClient(format!("caller: {e}")))?;
        let id = svid.spiffe_id.as_str();
        let known = self
            .config
            .resource_servers
            .iter()
            .any(|rs| rs.spiffe_id.as_deref() == Some(id))
            || self.config.clients.iter().any(|c| c.spiffe_id == id);
        if known {
            Ok(id.to_owned())
        } else {
            Err(StsError::InvalidClient(format!(
                "`{id}` is not a registered resource server or client"
            )))
        }
    }

    /// RFC 7662: `{"active": false}` and nothing else for any token that
    /// is not ours, expired, revoked, consumed or of a dead session.
    pub async fn introspect(&self, token: &str) -> Result<Value, StsError> {
        let inactive = json!({ "active": false });
        let Ok(claims) = self.verify_access_token(token, None).await else {
            return Ok(inactive);
        };
        if !self.token_live(&claims).await? {
            return Ok(inactive);
        }
        if claims.is_obo() && self.is_spent(&claims.jti).await? {
            return Ok(inactive);
        }
        let Value::Object(mut out) = json!({
            "active": true,
            "iss": claims.iss,
            "sub": claims.sub,
            "aud": claims.aud,
            "client_id": claims.client_id,
            "exp": claims.exp,
            "iat": claims.iat,
            "jti": claims.jti,
            "token_type": if claims.cnf.as_ref().is_some_and(|c| c.jkt.is_some()) {
                "DPoP"
            } else {
                "Bearer"
            },
        }) else {
            return Ok(inactive);
        };
        let extra = [
            ("scope", serde_json::to_value(&claims.scope)),
            ("sid", serde_json::to_value(&claims.sid)),
            ("email", serde_json::to_value(&claims.email)),
            ("act", serde_json::to_value(&claims.act)),
            ("may_act", serde_json::to_value(&claims.may_act)),
            (
                "authorization_details",
                serde_json::to_value(&claims.authorization_details),
            ),
            // RFC 9449 §6.2, RFC 8705 §3.2: the binding, for the resource
            // server to check.
            ("cnf", serde_json::to_value(&claims.cnf)),
        ];
        for (k, v) in extra {
            let v = v.map_err(|e| StsError::Crypto(e.to_string()))?;
            if !v.is_null() {
                out.insert(k.into(), v);
            }
        }
        // The risk ladder's flag on tokens that are still valid: a resource
        // server introspecting sees that the user is restricted (W4) or
        // that the session is at risk, and can act on it.
        let level = self.session_risk_level(claims.sid.as_deref());
        let restricted = self.subject_restricted(&claims.sub);
        if restricted || level > 0 {
            out.insert(
                "keyless_risk".into(),
                json!({ "level": format!("W{level}"), "restricted": restricted }),
            );
        }
        Ok(Value::Object(out))
    }

    /// Drops sign-in rows that can no longer matter: authorization codes
    /// and refresh tokens past their expiry, access-token records whose
    /// token expired (a minute of margin for clock skew). Families and
    /// sessions are kept (they are small and name who signed in when).
    pub async fn purge_expired_signin(&self) -> Result<u64, StsError> {
        let now_ms = now_millis().saturating_sub(60_000);
        let now_s = unix_now().saturating_sub(60);
        let mut n = 0;
        n += sqlx::query("DELETE FROM sts_auth_codes WHERE expires_at < $1")
            .bind(now_ms)
            .execute(self.store.pool())
            .await?
            .rows_affected();
        n += sqlx::query("DELETE FROM sts_refresh_tokens WHERE expires_at < $1")
            .bind(now_ms)
            .execute(self.store.pool())
            .await?
            .rows_affected();
        n += sqlx::query("DELETE FROM sts_access_tokens WHERE expires_at < $1")
            .bind(now_s)
            .execute(self.store.pool())
            .await?
            .rows_affected();
        Ok(n)
    }

    /// RFC 7009: revokes an access token (by `jti`) or a refresh token (its
    /// whole family, access tokens included). Unknown tokens, and tokens of
    /// another client, are silently ignored (the caller learns nothing).
    pub async fn revoke_token(&self, token: &str, client_id: Option<&str>) -> Result<(), StsError> {
        if token.contains('.') {
            let Ok(claims) = self.verify_access_token(token, None).await else {
                return Ok(());
            };
            if client_id.is_some_and(|c| c != claims.client_id) && !claims.is_obo() {
                return Ok(());
            }
            sqlx::query(
                "INSERT INTO sts_access_tokens (jti, family, expires_at, revoked_at) VALUES ($1, '', $2, $3) \
                 ON CONFLICT (jti) DO UPDATE SET revoked_at = $3",
            )
            .bind(&claims.jti)
            .bind(claims.exp)
            .bind(now_millis().max(1))
            .execute(self.store.pool())
            .await?;
            if let Some(revoked) = &self.revoked {
                revoked
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(claims.jti.clone(), claims.exp);
            }
            self.changed().await;
            self.events
                .record(
                    Event::new(kinds::TOKEN_REVOKED, Outcome::Success)
                        .user(claims.user_label())
                        .detail("jti", claims.jti.clone()),
                )
                .await?;
            return Ok(());
        }
        let row = sqlx::query("SELECT family FROM sts_refresh_tokens WHERE token_hash = $1")
            .bind(secret_hash(token))
            .fetch_optional(self.store.pool())
            .await?;
        let Some(row) = row else { return Ok(()) };
        let family: String = row.try_get("family")?;
        let Some(f) = self.family(&family).await? else {
            return Ok(());
        };
        if client_id.is_some_and(|c| c != f.client_id) {
            return Ok(());
        }
        self.revoke_family(&family).await?;
        self.events
            .record(
                Event::new(kinds::TOKEN_REVOKED, Outcome::Success)
                    .user(f.user_id)
                    .session(f.sid)
                    .detail("family", family),
            )
            .await?;
        Ok(())
    }
}
