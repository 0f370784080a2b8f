//! The schema, as ordered migrations with one script per dialect.
//!
//! A tiny runner instead of `sqlx::migrate!`: it avoids the macro stack at
//! build time and keeps both dialects' scripts side by side under one version
//! number. Each migration runs in its own transaction together with the row
//! that records it, so a failed migration leaves nothing half-applied.

use sqlx::Row;

use crate::{Dialect, Store, StoreError};

struct Migration {
    version: i64,
    name: &'static str,
    sqlite: &'static str,
    postgres: &'static str,
}

macro_rules! migration {
    ($version:literal, $name:literal) => {
        Migration {
            version: $version,
            name: $name,
            sqlite: include_str!(concat!("../migrations/sqlite/", $name, ".sql")),
            postgres: include_str!(concat!("../migrations/postgres/", $name, ".sql")),
        }
    };
}

/// Every migration, in order. Append only: a shipped migration never changes.
const MIGRATIONS: &[Migration] = &[
    migration!(1, "0001_meta"),
    migration!(2, "0002_identity"),
    migration!(3, "0003_audit"),
    migration!(4, "0004_sts"),
    migration!(5, "0005_sts_users"),
    migration!(6, "0006_secrets"),
    migration!(7, "0007_secrets_database"),
    migration!(8, "0008_secrets_rotating"),
    migration!(9, "0009_audit_jtis"),
    migration!(10, "0010_gateway"),
    migration!(11, "0011_signals"),
    migration!(12, "0012_approval_arguments"),
    migration!(13, "0013_audit_jti_time"),
];

pub(crate) async fn current_version(store: &Store) -> Result<i64, StoreError> {
    let row = sqlx::query("SELECT COALESCE(MAX(version), 0) AS v FROM keyless_migrations")
        .fetch_one(store.pool())
        .await?;
    Ok(row.try_get::<i64, _>("v")?)
}

pub(crate) async fn run(store: &Store) -> Result<(), StoreError> {
    let pool = store.pool();
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS keyless_migrations (\
         version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)",
    )
    .execute(pool)
    .await?;

    // Several replicas may start at once against one PostgreSQL: serialize
    // them on an advisory lock held by one connection for the whole run.
    let mut conn = pool.acquire().await?;
    if store.dialect() == Dialect::Postgres {
        sqlx::query("SELECT pg_advisory_lock(7420431)")
            .execute(&mut *conn)
            .await?;
    }
    let result = apply_pending(store, &mut conn).await;
    if store.dialect() == Dialect::Postgres {
        sqlx::query("SELECT pg_advisory_unlock(7420431)")
            .execute(&mut *conn)
            .await?;
    }
    result
}

async fn apply_pending(
    store: &Store,
    conn: &mut sqlx::pool::PoolConnection<sqlx::Any>,
) -> Result<(), StoreError> {
    let applied = sqlx::query("SELECT COALESCE(MAX(version), 0) AS v FROM keyless_migrations")
        .fetch_one(&mut **conn)
        .await?
        .try_get::<i64, _>("v")?;
    let known = MIGRATIONS.last().map_or(0, |m| m.version);
    if applied > known {
        return Err(StoreError::SchemaTooNew {
            found: applied,
            known,
        });
    }
    for m in MIGRATIONS.iter().filter(|m| m.version > applied) {
        let script = match store.dialect() {
            Dialect::Sqlite => m.sqlite,
            Dialect::Postgres => m.postgres,
        };
        let wrap = |source| StoreError::Migration {
            version: m.version,
            name: m.name,
            source,
        };
        let mut tx = sqlx::Connection::begin(&mut **conn).await.map_err(wrap)?;
        sqlx::raw_sql(script)
            .execute(&mut *tx)
            .await
            .map_err(wrap)?;
        sqlx::query(
            "INSERT INTO keyless_migrations (version, name, applied_at) VALUES ($1, $2, $3)",
        )
        .bind(m.version)
        .bind(m.name)
        .bind(crate::now_millis())
        .execute(&mut *tx)
        .await
        .map_err(wrap)?;
        tx.commit().await.map_err(wrap)?;
        tracing::info!(version = m.version, name = m.name, "applied migration");
    }
    Ok(())
}
