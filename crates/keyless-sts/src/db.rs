//! The STS's rows (migration `0004_sts`): signing key generations,
//! consents and consumed token ids. Queries are written once for both
//! backends (`$1` placeholders, portable types).

use keyless_store::sqlx::{self, Row};
use keyless_store::{Store, now_millis};
use serde::Serialize;

use crate::StsError;
use crate::token::KeyState;

/// A stored signing key generation (the key itself is in the key manager).
#[derive(Debug, Clone)]
pub(crate) struct KeyRow {
    pub generation: i64,
    pub kid: String,
    pub key_name: String,
    pub public_key: Vec<u8>,
    pub state: KeyState,
}

pub(crate) async fn load_keys(store: &Store) -> Result<Vec<KeyRow>, StsError> {
    let rows = sqlx::query(
        "SELECT generation, kid, key_name, public_key, state FROM sts_signing_keys ORDER BY generation",
    )
    .fetch_all(store.pool())
    .await?;
    rows.iter()
        .map(|r| {
            Ok(KeyRow {
                generation: r.try_get("generation")?,
                kid: r.try_get("kid")?,
                key_name: r.try_get("key_name")?,
                public_key: r.try_get("public_key")?,
                state: KeyState::parse(&r.try_get::<String, _>("state")?)?,
            })
        })
        .collect()
}

/// Records a new active generation and retires the others, in one
/// transaction. Returns false when another process took that generation
/// first (the caller reloads and uses theirs).
pub(crate) async fn insert_active_key(store: &Store, row: &KeyRow) -> Result<bool, StsError> {
    let mut tx = store.pool().begin().await?;
    let inserted = sqlx::query(
        "INSERT INTO sts_signing_keys (generation, kid, key_name, public_key, state, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (generation) DO NOTHING",
    )
    .bind(row.generation)
    .bind(&row.kid)
    .bind(&row.key_name)
    .bind(&row.public_key)
    .bind(KeyState::Active.as_str())
    .bind(now_millis())
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if !inserted {
        return Ok(false);
    }
    sqlx::query("UPDATE sts_signing_keys SET state = $1 WHERE generation <> $2")
        .bind(KeyState::Retired.as_str())
        .bind(row.generation)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(true)
}

/// A user's durable consent for an agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Consent {
    pub id: String,
    /// The user's subject identifier.
    pub user: String,
    /// The agent's SPIFFE ID.
    pub agent: String,
    /// The RAR types the agent may request for the user.
    pub rar_types: Vec<String>,
    /// The scopes the agent may request for the user.
    pub scopes: Vec<String>,
    /// Unix milliseconds.
    pub granted_at: i64,
    /// Unix milliseconds; `None` while live.
    pub revoked_at: Option<i64>,
}

fn consent_from_row(r: &sqlx::any::AnyRow) -> Result<Consent, StsError> {
    let list = |col: &str| -> Result<Vec<String>, StsError> {
        let raw: String = r.try_get(col)?;
        serde_json::from_str(&raw).map_err(|e| StsError::Corrupt(format!("consent {col}: {e}")))
    };
    let revoked: i64 = r.try_get("revoked_at")?;
    Ok(Consent {
        id: r.try_get("id")?,
        user: r.try_get("user_sub")?,
        agent: r.try_get("agent")?,
        rar_types: list("rar_types")?,
        scopes: list("scopes")?,
        granted_at: r.try_get("granted_at")?,
        revoked_at: (revoked != 0).then_some(revoked),
    })
}

pub(crate) async fn insert_consent(store: &Store, c: &Consent) -> Result<(), StsError> {
    let json =
        |v: &Vec<String>| serde_json::to_string(v).map_err(|e| StsError::Corrupt(e.to_string()));
    sqlx::query(
        "INSERT INTO sts_consents (id, user_sub, agent, rar_types, scopes, granted_at, revoked_at) \
         VALUES ($1, $2, $3, $4, $5, $6, 0)",
    )
    .bind(&c.id)
    .bind(&c.user)
    .bind(&c.agent)
    .bind(json(&c.rar_types)?)
    .bind(json(&c.scopes)?)
    .bind(c.granted_at)
    .execute(store.pool())
    .await?;
    Ok(())
}

/// The consent `id`, live or revoked.
pub(crate) async fn get_consent(store: &Store, id: &str) -> Result<Option<Consent>, StsError> {
    let row = sqlx::query("SELECT * FROM sts_consents WHERE id = $1")
        .bind(id)
        .fetch_optional(store.pool())
        .await?;
    row.as_ref().map(consent_from_row).transpose()
}

/// Consents of `user` (all, or only live ones), oldest first.
pub(crate) async fn list_consents(
    store: &Store,
    user: Option<&str>,
    live_only: bool,
) -> Result<Vec<Consent>, StsError> {
    let rows = match user {
        Some(u) => {
            sqlx::query("SELECT * FROM sts_consents WHERE user_sub = $1 ORDER BY granted_at, id")
                .bind(u)
                .fetch_all(store.pool())
                .await?
        }
        None => {
            sqlx::query("SELECT * FROM sts_consents ORDER BY granted_at, id")
                .fetch_all(store.pool())
                .await?
        }
    };
    let all = rows
        .iter()
        .map(consent_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(all
        .into_iter()
        .filter(|c| !live_only || c.revoked_at.is_none())
        .collect())
}

/// The live consents of `user` for `agent`, read at the moment of the call
/// (never cached: a revocation must bite on the very next exchange).
pub(crate) async fn live_consents(
    store: &Store,
    user: &str,
    agent: &str,
) -> Result<Vec<Consent>, StsError> {
    let rows = sqlx::query(
        "SELECT * FROM sts_consents WHERE user_sub = $1 AND agent = $2 AND revoked_at = 0",
    )
    .bind(user)
    .bind(agent)
    .fetch_all(store.pool())
    .await?;
    rows.iter().map(consent_from_row).collect()
}

/// Revokes a live consent; returns it, or `None` if unknown or already revoked.
pub(crate) async fn revoke_consent(store: &Store, id: &str) -> Result<Option<Consent>, StsError> {
    let done =
        sqlx::query("UPDATE sts_consents SET revoked_at = $1 WHERE id = $2 AND revoked_at = 0")
            .bind(now_millis().max(1))
            .bind(id)
            .execute(store.pool())
            .await?
            .rows_affected();
    if done == 0 {
        return Ok(None);
    }
    let row = sqlx::query("SELECT * FROM sts_consents WHERE id = $1")
        .bind(id)
        .fetch_optional(store.pool())
        .await?;
    row.as_ref().map(consent_from_row).transpose()
}

/// Consumes `jti` once. The primary key makes this atomic across
/// connections and processes: exactly one caller gets `true`.
pub(crate) async fn consume_jti(
    store: &Store,
    jti: &str,
    expires_at: i64,
) -> Result<bool, StsError> {
    let n = sqlx::query(
        "INSERT INTO sts_consumed_jtis (jti, consumed_at, expires_at) VALUES ($1, $2, $3) \
         ON CONFLICT (jti) DO NOTHING",
    )
    .bind(jti)
    .bind(now_millis())
    .bind(expires_at)
    .execute(store.pool())
    .await?
    .rows_affected();
    Ok(n == 1)
}

pub(crate) async fn is_consumed(store: &Store, jti: &str) -> Result<bool, StsError> {
    Ok(
        sqlx::query("SELECT jti FROM sts_consumed_jtis WHERE jti = $1")
            .bind(jti)
            .fetch_optional(store.pool())
            .await?
            .is_some(),
    )
}

/// Consumed ids whose token expires at or after `after_secs`, with that expiry.
pub(crate) async fn unexpired_consumed(
    store: &Store,
    after_secs: i64,
) -> Result<Vec<(String, i64)>, StsError> {
    let rows = sqlx::query("SELECT jti, expires_at FROM sts_consumed_jtis WHERE expires_at >= $1")
        .bind(after_secs)
        .fetch_all(store.pool())
        .await?;
    rows.iter()
        .map(|r| Ok((r.try_get("jti")?, r.try_get("expires_at")?)))
        .collect()
}

/// Revoked access tokens that expire at or after `after_secs`, with that expiry.
pub(crate) async fn unexpired_revoked(
    store: &Store,
    after_secs: i64,
) -> Result<Vec<(String, i64)>, StsError> {
    let rows = sqlx::query(
        "SELECT jti, expires_at FROM sts_access_tokens WHERE revoked_at > 0 AND expires_at >= $1",
    )
    .bind(after_secs)
    .fetch_all(store.pool())
    .await?;
    rows.iter()
        .map(|r| Ok((r.try_get("jti")?, r.try_get("expires_at")?)))
        .collect()
}

/// Deletes consumed ids whose token expired before `now_secs` (minus a
/// margin for clock skew): such a token fails verification anyway.
pub(crate) async fn purge_consumed(store: &Store, before_secs: i64) -> Result<u64, StsError> {
    Ok(
        sqlx::query("DELETE FROM sts_consumed_jtis WHERE expires_at < $1")
            .bind(before_secs)
            .execute(store.pool())
            .await?
            .rows_affected(),
    )
}
