//! Users and browser sessions: Argon2id password hashes, the lockout of
//! password guessing (persisted per account, plus an in-memory per-IP token
//! bucket), and sessions whose liveness every token carrying their `sid`
//! depends on (a revoked session kills its tokens at the next exchange,
//! refresh, introspection or userinfo call).

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use keyless_audit::{Event, Outcome};
use keyless_store::now_millis;
use keyless_store::sqlx::{self, Row};
use serde::Serialize;

use crate::service::{kinds, unix_now};
use crate::token::{random_id, random_secret, secret_hash};
use crate::{PasswordHashCost, Sts, StsError};

/// Shortest password accepted.
pub const MIN_PASSWORD_LEN: usize = 12;
/// Longest password accepted (bounds the hashing work an attacker can ask for).
const MAX_PASSWORD_LEN: usize = 1024;
/// Most IP addresses tracked by the in-memory rate limiter; beyond, the
/// oldest-refilled buckets are dropped.
const MAX_TRACKED_IPS: usize = 10_000;

/// A user who can sign in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct User {
    /// The stable subject identifier (`sub`).
    pub id: String,
    /// Lowercased, unique.
    pub email: String,
    /// Unix milliseconds.
    pub created_at: i64,
    pub disabled: bool,
}

/// A browser session at the STS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The `sid` carried by tokens.
    pub sid: String,
    pub user_id: String,
    /// When the user authenticated (Unix seconds).
    pub auth_time: i64,
}

/// A new session and its cookie secret (shown once, stored hashed).
#[derive(Debug, Clone)]
pub struct NewSession {
    pub session: Session,
    pub cookie: String,
}

/// Per-IP token buckets (tokens left, last refill).
#[derive(Debug, Default)]
pub(crate) struct IpBuckets(HashMap<IpAddr, (f64, Instant)>);

fn normalize_email(email: &str) -> Result<String, StsError> {
    let e = email.trim().to_lowercase();
    let valid = e.len() <= 254
        && !e.chars().any(char::is_whitespace)
        && e.split_once('@')
            .is_some_and(|(l, d)| !l.is_empty() && !d.is_empty() && !d.contains('@'));
    if valid {
        Ok(e)
    } else {
        Err(StsError::WeakPassword(format!(
            "`{email}` is not an email address"
        )))
    }
}

fn argon2(cost: PasswordHashCost) -> Result<Argon2<'static>, StsError> {
    let params = Params::new(cost.memory_kib, cost.iterations, 1, None)
        .map_err(|e| StsError::InvalidConfig(format!("argon2 parameters: {e}")))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

fn hash_password(cost: PasswordHashCost, password: &str) -> Result<String, StsError> {
    let mut salt = [0u8; 16];
    aws_lc_rs::rand::fill(&mut salt).map_err(|_| StsError::Crypto("rng failure".into()))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| StsError::Crypto(e.to_string()))?;
    Ok(argon2(cost)?
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| StsError::Crypto(format!("argon2: {e}")))?
        .to_string())
}

/// Whether `password` matches the PHC string `phc` (the parameters are the
/// ones stored in it, so raising the cost keeps old hashes working).
fn check_password(cost: PasswordHashCost, phc: &str, password: &str) -> Result<bool, StsError> {
    let parsed =
        PasswordHash::new(phc).map_err(|e| StsError::Corrupt(format!("password hash: {e}")))?;
    Ok(argon2(cost)?
        .verify_password(password.as_bytes(), &parsed)
        .is_ok())
}

/// Runs Argon2 off the async runtime: it is deliberately slow.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StsError> + Send + 'static,
) -> Result<T, StsError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StsError::Crypto(format!("hashing task failed: {e}")))?
}

fn user_from_row(r: &sqlx::any::AnyRow) -> Result<User, StsError> {
    Ok(User {
        id: r.try_get("id")?,
        email: r.try_get("email")?,
        created_at: r.try_get("created_at")?,
        disabled: r.try_get::<i64, _>("disabled")? != 0,
    })
}

// === impl Sts ===

impl Sts {
    /// Creates a user. Refuses a duplicate email (case-insensitive) and a
    /// password shorter than [`MIN_PASSWORD_LEN`] or equal to the email.
    pub async fn add_user(&self, email: &str, password: &str) -> Result<User, StsError> {
        let email = normalize_email(email)?;
        if password.chars().count() < MIN_PASSWORD_LEN {
            return Err(StsError::WeakPassword(format!(
                "the password must have at least {MIN_PASSWORD_LEN} characters"
            )));
        }
        if password.len() > MAX_PASSWORD_LEN {
            return Err(StsError::WeakPassword("the password is too long".into()));
        }
        if password.trim().to_lowercase() == email {
            return Err(StsError::WeakPassword(
                "the password may not be the email address".into(),
            ));
        }
        if self.find_user(&email).await?.is_some() {
            return Err(StsError::UserExists(email));
        }
        let cost = self.config.password_hash_cost;
        let pw = password.to_owned();
        let phc = blocking(move || hash_password(cost, &pw)).await?;
        let user = User {
            id: format!("u-{}", random_id()?),
            email: email.clone(),
            created_at: now_millis(),
            disabled: false,
        };
        let inserted = sqlx::query(
            "INSERT INTO sts_users (id, email, password_hash, created_at, disabled, failed_attempts, locked_until) \
             VALUES ($1, $2, $3, $4, 0, 0, 0) ON CONFLICT (email) DO NOTHING",
        )
        .bind(&user.id)
        .bind(&user.email)
        .bind(&phc)
        .bind(user.created_at)
        .execute(self.store.pool())
        .await?
        .rows_affected();
        if inserted == 0 {
            return Err(StsError::UserExists(email));
        }
        self.events
            .record(Event::new(kinds::USER_CREATED, Outcome::Success).user(email))
            .await?;
        Ok(user)
    }

    /// Sets a new password for an existing user (same rules as
    /// [`Sts::add_user`]), clears any lockout and ends the user's sessions:
    /// whoever held the old password is signed out.
    pub async fn reset_password(&self, email: &str, password: &str) -> Result<User, StsError> {
        let email = normalize_email(email)?;
        if password.chars().count() < MIN_PASSWORD_LEN {
            return Err(StsError::WeakPassword(format!(
                "the password must have at least {MIN_PASSWORD_LEN} characters"
            )));
        }
        if password.len() > MAX_PASSWORD_LEN {
            return Err(StsError::WeakPassword("the password is too long".into()));
        }
        if password.trim().to_lowercase() == email {
            return Err(StsError::WeakPassword(
                "the password may not be the email address".into(),
            ));
        }
        let user = self
            .find_user(&email)
            .await?
            .ok_or_else(|| StsError::UserNotFound(email.clone()))?;
        let cost = self.config.password_hash_cost;
        let pw = password.to_owned();
        let phc = blocking(move || hash_password(cost, &pw)).await?;
        sqlx::query(
            "UPDATE sts_users SET password_hash = $1, failed_attempts = 0, locked_until = 0 WHERE id = $2",
        )
        .bind(&phc)
        .bind(&user.id)
        .execute(self.store.pool())
        .await?;
        self.revoke_user_sessions(&user.id, "password reset")
            .await?;
        self.events
            .record(Event::new(kinds::USER_PASSWORD_RESET, Outcome::Success).user(email))
            .await?;
        Ok(user)
    }

    /// A random password for a generated (demo) user: 144 bits, base64url.
    pub fn generate_password() -> Result<String, StsError> {
        let mut b = [0u8; 18];
        aws_lc_rs::rand::fill(&mut b).map_err(|_| StsError::Crypto("rng failure".into()))?;
        Ok(base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            b,
        ))
    }

    /// The user with `email` (case-insensitive).
    pub async fn find_user(&self, email: &str) -> Result<Option<User>, StsError> {
        let email = email.trim().to_lowercase();
        let row = sqlx::query("SELECT * FROM sts_users WHERE email = $1")
            .bind(&email)
            .fetch_optional(self.store.pool())
            .await?;
        row.as_ref().map(user_from_row).transpose()
    }

    /// The user with subject `id`.
    pub async fn user_by_id(&self, id: &str) -> Result<Option<User>, StsError> {
        let row = sqlx::query("SELECT * FROM sts_users WHERE id = $1")
            .bind(id)
            .fetch_optional(self.store.pool())
            .await?;
        row.as_ref().map(user_from_row).transpose()
    }

    /// Disables or re-enables a user; disabling revokes their sessions.
    pub async fn set_user_disabled(&self, email: &str, disabled: bool) -> Result<User, StsError> {
        let user = self
            .find_user(email)
            .await?
            .ok_or_else(|| StsError::UserNotFound(email.to_owned()))?;
        sqlx::query("UPDATE sts_users SET disabled = $1 WHERE id = $2")
            .bind(i64::from(disabled))
            .bind(&user.id)
            .execute(self.store.pool())
            .await?;
        if disabled {
            self.revoke_user_sessions(&user.id, "user disabled").await?;
        }
        Ok(User { disabled, ..user })
    }

    /// Takes one token from `ip`'s bucket; false when it is empty.
    fn ip_allowed(&self, ip: IpAddr) -> bool {
        let burst = f64::from(self.config.login_ip_burst);
        let refill = self.config.login_ip_refill.as_secs_f64().max(0.001);
        let Ok(mut buckets) = self.ip_buckets.lock() else {
            return false;
        };
        let now = Instant::now();
        if buckets.0.len() >= MAX_TRACKED_IPS && !buckets.0.contains_key(&ip) {
            // Full buckets hold no information: drop them first.
            buckets.0.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() / refill < burst
            });
            if buckets.0.len() >= MAX_TRACKED_IPS {
                return false;
            }
        }
        let (tokens, at) = buckets.0.entry(ip).or_insert((burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() / refill).min(burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Checks a sign-in. Unknown users cost the same Argon2 work as known
    /// ones (a dummy hash is checked), so timing does not tell them apart.
    /// Each failure counts against the account; after
    /// `lockout_threshold` failures in a row it is locked for
    /// `lockout_duration`, even for the right password. Every outcome is an
    /// audit event (`login.success`, `login.failure`, `login.locked`).
    pub async fn verify_password(
        &self,
        email: &str,
        password: &str,
        ip: Option<IpAddr>,
    ) -> Result<User, StsError> {
        // Bounded: the typed name is attacker input and lands in the log.
        let label: String = email.trim().to_lowercase().chars().take(254).collect();
        let result = self.verify_password_inner(&label, password, ip).await;
        let event = match &result {
            Ok(u) => Event::new(kinds::LOGIN_SUCCESS, Outcome::Success).user(u.email.clone()),
            Err(e @ StsError::AccountLocked(_)) => Event::new(kinds::LOGIN_LOCKED, Outcome::Denied)
                .user(label)
                .reason(e.to_string()),
            Err(e) => Event::new(kinds::LOGIN_FAILURE, Outcome::Denied)
                .user(label)
                .reason(e.to_string()),
        };
        let event = match ip {
            Some(ip) => event.detail("ip", ip.to_string()),
            None => event,
        };
        self.events.record(event).await?;
        result
    }

    async fn verify_password_inner(
        &self,
        email: &str,
        password: &str,
        ip: Option<IpAddr>,
    ) -> Result<User, StsError> {
        if let Some(ip) = ip
            && !self.ip_allowed(ip)
        {
            return Err(StsError::RateLimited);
        }
        if password.len() > MAX_PASSWORD_LEN {
            return Err(StsError::InvalidCredentials);
        }
        let row = sqlx::query("SELECT * FROM sts_users WHERE email = $1")
            .bind(email)
            .fetch_optional(self.store.pool())
            .await?;
        let cost = self.config.password_hash_cost;
        let pw = password.to_owned();
        let Some(row) = row else {
            let dummy = self.dummy_hash().await?;
            blocking(move || check_password(cost, &dummy, &pw)).await?;
            return Err(StsError::InvalidCredentials);
        };
        let user = user_from_row(&row)?;
        let phc: String = row.try_get("password_hash")?;
        let locked_until: i64 = row.try_get("locked_until")?;
        let now = now_millis();
        if locked_until > now {
            return Err(StsError::AccountLocked(user.email));
        }
        let ok = blocking(move || check_password(cost, &phc, &pw)).await?;
        if ok && !user.disabled {
            sqlx::query("UPDATE sts_users SET failed_attempts = 0, locked_until = 0 WHERE id = $1")
                .bind(&user.id)
                .execute(self.store.pool())
                .await?;
            return Ok(user);
        }
        // Counted in SQL, so concurrent guesses on replicas all count.
        let lock_until = now.saturating_add(
            i64::try_from(self.config.lockout_duration.as_millis()).unwrap_or(i64::MAX),
        );
        sqlx::query(
            "UPDATE sts_users SET failed_attempts = failed_attempts + 1, \
             locked_until = CASE WHEN failed_attempts + 1 >= $1 THEN $2 ELSE locked_until END \
             WHERE id = $3",
        )
        .bind(i64::from(self.config.lockout_threshold))
        .bind(lock_until)
        .bind(&user.id)
        .execute(self.store.pool())
        .await?;
        let locked: i64 = sqlx::query("SELECT locked_until FROM sts_users WHERE id = $1")
            .bind(&user.id)
            .fetch_one(self.store.pool())
            .await?
            .try_get("locked_until")?;
        if locked > now {
            // Reset the count so that the next window starts fresh.
            sqlx::query("UPDATE sts_users SET failed_attempts = 0 WHERE id = $1")
                .bind(&user.id)
                .execute(self.store.pool())
                .await?;
            return Err(StsError::AccountLocked(user.email));
        }
        Err(StsError::InvalidCredentials)
    }

    async fn dummy_hash(&self) -> Result<String, StsError> {
        if let Some(h) = self.dummy_hash.get() {
            return Ok(h.clone());
        }
        let cost = self.config.password_hash_cost;
        let h = blocking(move || hash_password(cost, "keyless-dummy-password")).await?;
        Ok(self.dummy_hash.get_or_init(|| h).clone())
    }

    // --- sessions ---

    /// Starts a session for `user_id` who just authenticated.
    pub async fn start_session(&self, user_id: &str) -> Result<NewSession, StsError> {
        let session = Session {
            sid: random_id()?,
            user_id: user_id.to_owned(),
            auth_time: unix_now(),
        };
        let cookie = random_secret()?;
        let now = now_millis();
        sqlx::query(
            "INSERT INTO sts_sessions (sid, cookie_hash, user_id, created_at, last_seen, auth_time, revoked_at) \
             VALUES ($1, $2, $3, $4, $4, $5, 0)",
        )
        .bind(&session.sid)
        .bind(secret_hash(&cookie))
        .bind(&session.user_id)
        .bind(now)
        .bind(session.auth_time)
        .execute(self.store.pool())
        .await?;
        self.events
            .record(
                Event::new(kinds::SESSION_STARTED, Outcome::Success)
                    .user(user_id)
                    .session(session.sid.clone()),
            )
            .await?;
        Ok(NewSession { session, cookie })
    }

    pub(crate) fn session_cutoff(&self) -> i64 {
        now_millis()
            .saturating_sub(i64::try_from(self.config.session_ttl.as_millis()).unwrap_or(i64::MAX))
    }

    /// Whether session `sid` is live: known, not revoked, not too old.
    pub async fn session_live(&self, sid: &str) -> Result<bool, StsError> {
        Ok(sqlx::query(
            "SELECT sid FROM sts_sessions WHERE sid = $1 AND revoked_at = 0 AND created_at > $2",
        )
        .bind(sid)
        .bind(self.session_cutoff())
        .fetch_optional(self.store.pool())
        .await?
        .is_some())
    }

    /// When session `sid` was created, if it exists and was not revoked
    /// (its age is the caller's to check).
    pub(crate) async fn session_created_at(&self, sid: &str) -> Result<Option<i64>, StsError> {
        let row =
            sqlx::query("SELECT created_at FROM sts_sessions WHERE sid = $1 AND revoked_at = 0")
                .bind(sid)
                .fetch_optional(self.store.pool())
                .await?;
        Ok(match row {
            Some(r) => Some(r.try_get::<i64, _>("created_at")?),
            None => None,
        })
    }

    /// The live session a cookie secret designates (and touches it).
    pub async fn session_by_cookie(&self, cookie: &str) -> Result<Option<Session>, StsError> {
        let row = sqlx::query(
            "SELECT sid, user_id, auth_time FROM sts_sessions \
             WHERE cookie_hash = $1 AND revoked_at = 0 AND created_at > $2",
        )
        .bind(secret_hash(cookie))
        .bind(self.session_cutoff())
        .fetch_optional(self.store.pool())
        .await?;
        let Some(r) = row else { return Ok(None) };
        let session = Session {
            sid: r.try_get("sid")?,
            user_id: r.try_get("user_id")?,
            auth_time: r.try_get("auth_time")?,
        };
        sqlx::query("UPDATE sts_sessions SET last_seen = $1 WHERE sid = $2")
            .bind(now_millis())
            .bind(&session.sid)
            .execute(self.store.pool())
            .await?;
        Ok(Some(session))
    }

    /// Signs session `sid` out: the session and every token family it
    /// started die. Returns whether it was live.
    pub async fn logout(&self, sid: &str) -> Result<bool, StsError> {
        let revoked = self.revoke_sessions_where("sid", sid).await?;
        if revoked > 0 {
            self.events
                .record(
                    Event::new(kinds::SESSION_REVOKED, Outcome::Success)
                        .session(sid)
                        .reason("logout"),
                )
                .await?;
        }
        Ok(revoked > 0)
    }

    /// Revokes every live session of user `user_id` (CAEP `session-revoked`,
    /// a disabled user) and their token families. Returns how many died.
    pub async fn revoke_user_sessions(&self, user_id: &str, reason: &str) -> Result<u64, StsError> {
        let revoked = self.revoke_sessions_where("user_id", user_id).await?;
        self.events
            .record(
                Event::new(kinds::SESSION_REVOKED, Outcome::Success)
                    .user(user_id)
                    .reason(reason.to_owned())
                    .detail("sessions", revoked),
            )
            .await?;
        Ok(revoked)
    }

    async fn revoke_sessions_where(&self, column: &str, value: &str) -> Result<u64, StsError> {
        let now = now_millis().max(1);
        // `column` is one of two literals above, never input.
        let (sessions, families) = match column {
            "sid" => (
                "UPDATE sts_sessions SET revoked_at = $1 WHERE sid = $2 AND revoked_at = 0",
                "UPDATE sts_token_families SET revoked_at = $1 WHERE sid = $2 AND revoked_at = 0",
            ),
            _ => (
                "UPDATE sts_sessions SET revoked_at = $1 WHERE user_id = $2 AND revoked_at = 0",
                "UPDATE sts_token_families SET revoked_at = $1 WHERE user_id = $2 AND revoked_at = 0",
            ),
        };
        let n = sqlx::query(sessions)
            .bind(now)
            .bind(value)
            .execute(self.store.pool())
            .await?
            .rows_affected();
        sqlx::query(families)
            .bind(now)
            .bind(value)
            .execute(self.store.pool())
            .await?;
        self.changed().await;
        Ok(n)
    }
}
