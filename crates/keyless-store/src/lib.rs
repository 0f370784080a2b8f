//! Persistence for Keyless.
//!
//! One [`Store`] hides whether the data lives in the embedded SQLite file
//! (`DIR/keyless.db`, WAL mode) or in a shared PostgreSQL. Both speak through
//! sqlx's `Any` driver so domain crates write each query once, with `$1`-style
//! placeholders and only portable column types (`BIGINT`, `TEXT`, `BLOB`/`BYTEA`);
//! booleans are `BIGINT` 0/1 (the `Any` driver cannot read SQLite's `BOOLEAN`)
//! and timestamps are Unix milliseconds in `BIGINT` columns.
//!
//! The schema is owned here ([`migrate`]), one migration list per dialect with
//! the same versions, so every process on a shared database agrees on it.
//! Keys are not rows: they live behind the [`keys::KeyManager`] trait.

pub mod keys;
mod migrate;
pub mod testing;

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, ConnectOptions, Executor};

pub use keys::{FileKeyManager, KeyAlgorithm, KeyManager, SEAL_OVERHEAD, Sealer, Signer};
pub use sqlx;

/// Read-only connections beside the SQLite writer.
const READERS: u32 = 4;

/// Errors of the store and the key manager.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("unsupported database url `{0}`: use sqlite://PATH or postgres://…")]
    UnsupportedUrl(String),
    #[error("migration {version} (`{name}`) failed: {source}")]
    Migration {
        version: i64,
        name: &'static str,
        source: sqlx::Error,
    },
    #[error(
        "database schema version {found} is newer than this build knows ({known}); upgrade keyless"
    )]
    SchemaTooNew { found: i64, known: i64 },
    #[error("key `{0}` not found")]
    KeyNotFound(String),
    #[error("key `{0}` already exists")]
    KeyExists(String),
    #[error("invalid key name `{0}`: use [a-zA-Z0-9._-], at most 128 bytes")]
    InvalidKeyName(String),
    #[error("key material for `{0}` is invalid")]
    InvalidKey(String),
    #[error("signing with key `{0}` failed")]
    Signing(String),
    #[error("sealing with key `{0}` failed")]
    Seal(String),
    #[error(
        "ciphertext did not authenticate under key `{0}` (altered, moved, or sealed by another key)"
    )]
    Unseal(String),
    #[error("key store i/o error on `{path}`: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("key store directory `{path}` is not private: mode {mode:o}, expected 700")]
    LoosePermissions { path: String, mode: u32 },
}

/// Which SQL dialect a [`Store`] talks to, for the few statements that differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// A handle on the database; cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    /// Writes (and reads that go with them); one connection on SQLite.
    pool: AnyPool,
    /// Read-only connections on SQLite; the same pool on PostgreSQL.
    readers: AnyPool,
    dialect: Dialect,
    /// Kept for LISTEN connections (PostgreSQL); never printed.
    url: SecretUrl,
}

/// A database URL that may hold a password: `Debug` shows it redacted.
#[derive(Clone)]
struct SecretUrl(std::sync::Arc<str>);

impl std::fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&redact_url(&self.0))
    }
}

// === impl Store ===

impl Store {
    /// Opens (creating if needed) the embedded SQLite database at `path` and
    /// brings its schema up to date.
    pub async fn open_sqlite(path: &Path) -> Result<Self, StoreError> {
        let url = format!("sqlite://{}?mode=rwc", path.display());
        Self::open(&url).await
    }

    /// Opens `sqlite://…` or `postgres://…` and brings the schema up to date.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let dialect = if url.starts_with("sqlite:") {
            Dialect::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Dialect::Postgres
        } else {
            return Err(StoreError::UnsupportedUrl(redact_url(url)));
        };
        let options = AnyConnectOptions::from_str(url)?.disable_statement_logging();
        let (pool, readers) = match dialect {
            Dialect::Sqlite => {
                // One writer connection: SQLite takes one writer at a time
                // anyway, and writers on separate connections that collide
                // are put to sleep by SQLite's busy handler (1, 2, 5, 10 …
                // 100 ms), the stalls of hundreds of ms seen at p99 under
                // load. Queued in the pool instead, a write waits only for
                // the one before it.
                let writer = AnyPoolOptions::new()
                    .max_connections(1)
                    .min_connections(1)
                    .acquire_timeout(Duration::from_secs(10))
                    .after_connect(|conn, _meta| {
                        Box::pin(async move {
                            // FULL: a commit is on disk when it returns, so an
                            // acknowledged audit event survives a crash.
                            conn.execute(
                                "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; \
                                 PRAGMA busy_timeout=10000; PRAGMA foreign_keys=ON;",
                            )
                            .await?;
                            Ok(())
                        })
                    })
                    .connect_with(options.clone())
                    .await?;
                // Readers beside it (WAL lets them run during a commit),
                // refused any write so that no write slips past the queue.
                let readers = AnyPoolOptions::new()
                    .max_connections(READERS)
                    .min_connections(1)
                    .acquire_timeout(Duration::from_secs(10))
                    .after_connect(|conn, _meta| {
                        Box::pin(async move {
                            conn.execute(
                                "PRAGMA busy_timeout=10000; PRAGMA foreign_keys=ON; \
                                 PRAGMA query_only=1;",
                            )
                            .await?;
                            Ok(())
                        })
                    })
                    .connect_with(options)
                    .await?;
                (writer, readers)
            }
            Dialect::Postgres => {
                let pool = AnyPoolOptions::new()
                    .max_connections(16)
                    .acquire_timeout(Duration::from_secs(10))
                    .connect_with(options)
                    .await?;
                (pool.clone(), pool)
            }
        };
        let store = Self {
            pool,
            readers,
            dialect,
            url: SecretUrl(url.into()),
        };
        migrate::run(&store).await?;
        Ok(store)
    }

    /// The connection pool for writes and for reads that must see the
    /// writes before them. On SQLite it holds the one writer connection:
    /// never hold a transaction of it while waiting for another query of
    /// this pool (that query would wait for the transaction's end).
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// A pool for reads only (statements that write fail on SQLite). Long
    /// reads (verification, export) and reads on hot paths go here, so
    /// that they neither wait behind a commit nor hold up the writer. A
    /// read here sees every commit that returned before it started. On
    /// PostgreSQL this is the same pool as [`Store::pool`].
    pub fn reader(&self) -> &AnyPool {
        &self.readers
    }

    /// A dedicated connection LISTENing on `channel` (PostgreSQL), so that
    /// replicas sharing the database learn of each other's changes (e.g.
    /// revocations that must bite everywhere at once). `None` on SQLite,
    /// where one process owns the database.
    pub async fn listen(
        &self,
        channel: &str,
    ) -> Result<Option<sqlx::postgres::PgListener>, StoreError> {
        if self.dialect != Dialect::Postgres {
            return Ok(None);
        }
        let mut listener = sqlx::postgres::PgListener::connect(&self.url.0).await?;
        listener.listen(channel).await?;
        Ok(Some(listener))
    }

    /// Sends a notification on `channel` to every listener (PostgreSQL;
    /// nothing to do on SQLite).
    pub async fn notify(&self, channel: &str, payload: &str) -> Result<(), StoreError> {
        if self.dialect == Dialect::Postgres {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(channel)
                .bind(payload)
                .execute(&self.pool)
                .await?;
        }
        Ok(())
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// The schema version this database is at.
    pub async fn schema_version(&self) -> Result<i64, StoreError> {
        migrate::current_version(self).await
    }

    /// Reads a deployment fact from `keyless_meta`.
    pub async fn get_meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        let row = sqlx::query("SELECT value FROM keyless_meta WHERE key = $1")
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row
            .map(|r| sqlx::Row::try_get::<String, _>(&r, "value"))
            .transpose()?)
    }

    /// Records a deployment fact in `keyless_meta` only if it is not set yet,
    /// and returns the value in force (the existing one if there was one).
    pub async fn init_meta(&self, key: &str, value: &str) -> Result<String, StoreError> {
        sqlx::query(
            "INSERT INTO keyless_meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
        )
        .bind(key)
        .bind(value)
        .execute(&self.pool)
        .await?;
        Ok(self
            .get_meta(key)
            .await?
            .unwrap_or_else(|| value.to_owned()))
    }

    pub async fn close(&self) {
        self.readers.close().await;
        self.pool.close().await;
    }
}

/// Current time as Unix milliseconds, the store's timestamp unit.
pub fn now_millis() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(now.as_millis()).unwrap_or(i64::MAX)
}

/// A database URL with any password replaced, safe to print.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let creds = url.get(scheme_end + 3..at).unwrap_or_default();
            match creds.split_once(':') {
                Some((user, _)) => format!(
                    "{}{user}:***{}",
                    url.get(..scheme_end + 3).unwrap_or_default(),
                    url.get(at..).unwrap_or_default()
                ),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_url_hides_password_only() {
        assert_eq!(
            redact_url("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact_url("sqlite://x.db"), "sqlite://x.db");
    }
}
