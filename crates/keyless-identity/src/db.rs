//! Rows of the identity tables (migration `0002_identity`), one function
//! per statement, portable between SQLite and PostgreSQL through sqlx `Any`.
//!
//! The database is the source of truth; the service keeps a cache of it and
//! reloads after every change, which is also how replicas sharing one
//! PostgreSQL converge.

use std::time::Duration;

use keyless_store::Store;
use keyless_store::sqlx::{self, Row, any::AnyRow};

use crate::ca::{AuthorityState, CaGeneration};
use crate::jwt::JwtKey;
use crate::{IdentityError, RegistrationEntry, Selector, SpiffeId};

fn corrupt(what: &str, e: impl std::fmt::Display) -> IdentityError {
    IdentityError::Corrupt(format!("{what}: {e}"))
}

fn secs(v: i64) -> Duration {
    Duration::from_secs(u64::try_from(v).unwrap_or(0))
}

fn secs_i64(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

// --- entries ---

fn entry_from_row(row: &AnyRow) -> Result<RegistrationEntry, IdentityError> {
    let id: String = row.try_get("id")?;
    let spiffe_id = SpiffeId::new(&row.try_get::<String, _>("spiffe_id")?)
        .map_err(|e| corrupt(&format!("entry `{id}` spiffe_id"), e))?;
    let parent: String = row.try_get("parent_id")?;
    let parent_id = if parent.is_empty() {
        None
    } else {
        Some(SpiffeId::new(&parent).map_err(|e| corrupt(&format!("entry `{id}` parent_id"), e))?)
    };
    let selectors_json: String = row.try_get("selectors")?;
    let selectors: Vec<String> = serde_json::from_str(&selectors_json)
        .map_err(|e| corrupt(&format!("entry `{id}` selectors"), e))?;
    let selectors = selectors
        .iter()
        .map(|s| s.parse::<Selector>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| corrupt(&format!("entry `{id}` selectors"), e))?;
    Ok(RegistrationEntry {
        spiffe_id,
        parent_id,
        selectors,
        x509_ttl: secs(row.try_get("x509_ttl_secs")?),
        jwt_ttl: secs(row.try_get("jwt_ttl_secs")?),
        hint: row.try_get("hint")?,
        admin: row.try_get::<i64, _>("admin")? != 0,
        created_at: row.try_get("created_at")?,
        id,
    })
}

pub(crate) async fn load_entries(store: &Store) -> Result<Vec<RegistrationEntry>, IdentityError> {
    let rows = sqlx::query(
        "SELECT id, spiffe_id, parent_id, selectors, x509_ttl_secs, jwt_ttl_secs, hint, admin, \
         created_at FROM identity_entries ORDER BY created_at, id",
    )
    .fetch_all(store.pool())
    .await?;
    rows.iter().map(entry_from_row).collect()
}

pub(crate) async fn insert_entry(
    store: &Store,
    e: &RegistrationEntry,
) -> Result<(), IdentityError> {
    let selectors: Vec<String> = e.selectors.iter().map(ToString::to_string).collect();
    let selectors =
        serde_json::to_string(&selectors).map_err(|e| IdentityError::Corrupt(e.to_string()))?;
    sqlx::query(
        "INSERT INTO identity_entries (id, spiffe_id, parent_id, selectors, x509_ttl_secs, \
         jwt_ttl_secs, hint, admin, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(e.id.clone())
    .bind(e.spiffe_id.to_string())
    .bind(
        e.parent_id
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
    )
    .bind(selectors)
    .bind(secs_i64(e.x509_ttl))
    .bind(secs_i64(e.jwt_ttl))
    .bind(e.hint.clone())
    .bind(i64::from(e.admin))
    .bind(e.created_at)
    .execute(store.pool())
    .await?;
    Ok(())
}

/// Deletes an entry; false when there was none.
pub(crate) async fn delete_entry(store: &Store, id: &str) -> Result<bool, IdentityError> {
    let done = sqlx::query("DELETE FROM identity_entries WHERE id = $1")
        .bind(id.to_owned())
        .execute(store.pool())
        .await?;
    Ok(done.rows_affected() > 0)
}

// --- CA generations ---

pub(crate) async fn load_cas(store: &Store) -> Result<Vec<CaGeneration>, IdentityError> {
    let rows = sqlx::query(
        "SELECT generation, state, root_der, intermediate_der, root_key, intermediate_key, \
         not_before, not_after, created_at, activated_at FROM identity_x509_cas ORDER BY generation",
    )
    .fetch_all(store.pool())
    .await?;
    rows.iter()
        .map(|row| {
            let root_der: Vec<u8> = row.try_get("root_der")?;
            Ok(CaGeneration {
                generation: row.try_get("generation")?,
                state: AuthorityState::parse(&row.try_get::<String, _>("state")?)?,
                root_public: crate::ca::cert_public_key(&root_der)?,
                root_der,
                intermediate_der: row.try_get("intermediate_der")?,
                root_key: row.try_get("root_key")?,
                intermediate_key: row.try_get("intermediate_key")?,
                not_before: row.try_get("not_before")?,
                not_after: row.try_get("not_after")?,
                created_at: row.try_get("created_at")?,
                activated_at: row.try_get("activated_at")?,
                issuer: None,
            })
        })
        .collect()
}

pub(crate) async fn insert_ca(store: &Store, ca: &CaGeneration) -> Result<(), IdentityError> {
    sqlx::query(
        "INSERT INTO identity_x509_cas (generation, state, root_der, intermediate_der, root_key, \
         intermediate_key, not_before, not_after, created_at, activated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(ca.generation)
    .bind(ca.state.as_str())
    .bind(ca.root_der.clone())
    .bind(ca.intermediate_der.clone())
    .bind(ca.root_key.clone())
    .bind(ca.intermediate_key.clone())
    .bind(ca.not_before)
    .bind(ca.not_after)
    .bind(ca.created_at)
    .bind(ca.activated_at)
    .execute(store.pool())
    .await?;
    Ok(())
}

/// Which of the two authority tables a statement is about.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Kind {
    X509Ca,
    JwtKey,
}

impl Kind {
    /// A fixed table name: the only text ever spliced into these statements,
    /// which is why they may be built with `format!` (`AssertSqlSafe`).
    fn table(self) -> &'static str {
        match self {
            Self::X509Ca => "identity_x509_cas",
            Self::JwtKey => "identity_jwt_keys",
        }
    }
}

pub(crate) async fn next_generation(store: &Store, kind: Kind) -> Result<i64, IdentityError> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT COALESCE(MAX(generation), 0) AS g FROM {}",
        kind.table()
    )))
    .fetch_one(store.pool())
    .await?;
    Ok(row.try_get::<i64, _>("g")?.saturating_add(1))
}

/// Makes `generation` the one active authority of its kind, retiring any
/// other active one, in one transaction so there is never zero or two.
pub(crate) async fn activate(
    store: &Store,
    kind: Kind,
    generation: i64,
    now: i64,
) -> Result<(), IdentityError> {
    let table = kind.table();
    let mut tx = store.pool().begin().await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE {table} SET state = 'retired' WHERE state = 'active' AND generation <> $1"
    )))
    .bind(generation)
    .execute(&mut *tx)
    .await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE {table} SET state = 'active', activated_at = $2 WHERE generation = $1"
    )))
    .bind(generation)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

pub(crate) async fn delete_generation(
    store: &Store,
    kind: Kind,
    generation: i64,
) -> Result<(), IdentityError> {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DELETE FROM {} WHERE generation = $1",
        kind.table()
    )))
    .bind(generation)
    .execute(store.pool())
    .await?;
    Ok(())
}

// --- JWT keys ---

pub(crate) async fn load_jwt_keys(store: &Store) -> Result<Vec<JwtKey>, IdentityError> {
    let rows = sqlx::query(
        "SELECT generation, kid, key_name, public_key, state, not_before, not_after, created_at, \
         activated_at FROM identity_jwt_keys ORDER BY generation",
    )
    .fetch_all(store.pool())
    .await?;
    rows.iter()
        .map(|row| {
            Ok(JwtKey {
                generation: row.try_get("generation")?,
                kid: row.try_get("kid")?,
                key_name: row.try_get("key_name")?,
                public_key: row.try_get("public_key")?,
                state: AuthorityState::parse(&row.try_get::<String, _>("state")?)?,
                not_before: row.try_get("not_before")?,
                not_after: row.try_get("not_after")?,
                created_at: row.try_get("created_at")?,
                activated_at: row.try_get("activated_at")?,
                signer: None,
            })
        })
        .collect()
}

pub(crate) async fn insert_jwt_key(store: &Store, k: &JwtKey) -> Result<(), IdentityError> {
    sqlx::query(
        "INSERT INTO identity_jwt_keys (generation, kid, key_name, public_key, state, not_before, \
         not_after, created_at, activated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(k.generation)
    .bind(k.kid.clone())
    .bind(k.key_name.clone())
    .bind(k.public_key.clone())
    .bind(k.state.as_str())
    .bind(k.not_before)
    .bind(k.not_after)
    .bind(k.created_at)
    .bind(k.activated_at)
    .execute(store.pool())
    .await?;
    Ok(())
}

// --- bundle sequence ---

pub(crate) async fn load_sequence(store: &Store) -> Result<i64, IdentityError> {
    let row = sqlx::query("SELECT sequence FROM identity_bundle WHERE id = 1")
        .fetch_optional(store.pool())
        .await?;
    Ok(match row {
        Some(r) => r.try_get("sequence")?,
        None => 0,
    })
}

/// Increments `spiffe_sequence`: the bundle's trusted keys changed.
pub(crate) async fn bump_sequence(store: &Store) -> Result<(), IdentityError> {
    sqlx::query("UPDATE identity_bundle SET sequence = sequence + 1 WHERE id = 1")
        .execute(store.pool())
        .await?;
    Ok(())
}
