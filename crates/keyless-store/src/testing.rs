//! Helpers for tests that run against both backends.
//!
//! PostgreSQL tests use the server at `KEYLESS_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`). Each test gets a database of
//! its own, created here and named uniquely, so tests run in parallel and
//! leave the `test` database alone. When no server answers, the helper
//! returns `None` after printing why, and the caller skips its PostgreSQL half.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use sqlx::Connection;
use sqlx::postgres::PgConnection;

/// Environment variable naming the PostgreSQL admin URL used by tests.
pub const TEST_POSTGRES_URL_ENV: &str = "KEYLESS_TEST_POSTGRES_URL";
const DEFAULT_TEST_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Creates a fresh, empty PostgreSQL database and returns its URL, or `None`
/// (printing the reason) when no PostgreSQL is reachable.
pub async fn fresh_postgres_database(label: &str) -> Option<String> {
    let admin_url = std::env::var(TEST_POSTGRES_URL_ENV)
        .unwrap_or_else(|_| DEFAULT_TEST_POSTGRES_URL.to_owned());
    let connect = tokio::time::timeout(Duration::from_secs(5), PgConnection::connect(&admin_url));
    let mut conn = match connect.await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            eprintln!("SKIPPED PostgreSQL half of `{label}`: cannot connect to {admin_url}: {e}");
            return None;
        }
        Err(_) => {
            eprintln!("SKIPPED PostgreSQL half of `{label}`: {admin_url} did not answer in 5 s");
            return None;
        }
    };
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let safe: String = label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .take(30)
        .collect();
    let name = format!(
        "kl_{safe}_{}_{n}_{}",
        std::process::id(),
        crate::now_millis() % 100_000
    );
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS \"{name}\""
    )))
    .execute(&mut conn)
    .await
    .ok()?;
    if let Err(e) = sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
        .execute(&mut conn)
        .await
    {
        eprintln!("SKIPPED PostgreSQL half of `{label}`: cannot create a database: {e}");
        return None;
    }
    let base = admin_url
        .rsplit_once('/')
        .map_or(admin_url.as_str(), |(b, _)| b);
    Some(format!("{base}/{name}"))
}
