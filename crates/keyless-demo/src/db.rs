//! Opening the SQLite file of a demo server and the helpers both stores share.

use std::{path::Path, time::Duration};

use sqlx::{
    SqlitePool,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions},
};

use crate::DemoError;

/// Opens (creating if needed) the SQLite file at `path` in WAL mode.
pub(crate) async fn open(path: &Path) -> Result<SqlitePool, DemoError> {
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .foreign_keys(true)
        .busy_timeout(Duration::from_secs(5));
    SqlitePoolOptions::new()
        .max_connections(4)
        .connect_with(options)
        .await
        .map_err(|source| DemoError::Open {
            path: path.to_path_buf(),
            source,
        })
}

/// Creates the table that records which demo data set was seeded.
pub(crate) async fn ensure_seed_table(pool: &SqlitePool) -> Result<(), sqlx::Error> {
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS demo_seed (
            name TEXT PRIMARY KEY,
            seeded_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now'))
        )",
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Claims the right to seed `name` inside `tx`; true exactly once per file, so
/// reopening a file never re-seeds (and never undoes changes made since).
pub(crate) async fn claim_seed(
    tx: &mut sqlx::SqliteConnection,
    name: &'static str,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("INSERT INTO demo_seed (name) VALUES (?) ON CONFLICT DO NOTHING")
        .bind(name)
        .execute(tx)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// Lower-cases and checks an email address; the message says what is wrong.
pub(crate) fn normalize_email(raw: &str) -> Result<String, String> {
    let email = raw.trim().to_ascii_lowercase();
    let valid = email.len() <= 254
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !domain.contains('@')
                && email
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "@.-_+".contains(c))
        });
    if valid {
        Ok(email)
    } else {
        Err(format!("`{raw}` is not a valid email address"))
    }
}

#[cfg(test)]
mod tests {
    use super::normalize_email;

    #[test]
    fn emails_are_normalized_or_refused() {
        assert_eq!(
            normalize_email(" Alice@Example.com ").as_deref(),
            Ok("alice@example.com")
        );
        for bad in [
            "",
            "alice",
            "@example.com",
            "a@b",
            "a@@b.com",
            "a b@c.com",
            "a@.com",
        ] {
            assert!(normalize_email(bad).is_err(), "{bad} accepted");
        }
    }
}
