//! The directory's SQL store: users, groups, memberships, applications and
//! per-user session counts, created idempotently and seeded once per file.

use serde::Serialize;
use sqlx::{Row, SqlitePool, sqlite::SqliteRow};

use crate::db;

const SCHEMA: [&str; 4] = [
    "CREATE TABLE IF NOT EXISTS directory_users (
        email TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        active INTEGER NOT NULL DEFAULT 1,
        admin INTEGER NOT NULL DEFAULT 0,
        sessions INTEGER NOT NULL DEFAULT 0,
        created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now'))
    )",
    "CREATE TABLE IF NOT EXISTS directory_groups (
        name TEXT PRIMARY KEY,
        description TEXT NOT NULL
    )",
    "CREATE TABLE IF NOT EXISTS directory_memberships (
        group_name TEXT NOT NULL REFERENCES directory_groups(name) ON DELETE CASCADE,
        email TEXT NOT NULL REFERENCES directory_users(email) ON DELETE CASCADE,
        PRIMARY KEY (group_name, email)
    )",
    "CREATE TABLE IF NOT EXISTS directory_applications (
        name TEXT PRIMARY KEY,
        description TEXT NOT NULL,
        owner_group TEXT NOT NULL REFERENCES directory_groups(name)
    )",
];

/// One seeded user.
struct SeedUser {
    email: &'static str,
    name: &'static str,
    active: bool,
    admin: bool,
    sessions: i64,
    groups: &'static [&'static str],
}

const USERS: [SeedUser; 4] = [
    SeedUser {
        email: "alice@example.com",
        name: "Alice Anderson",
        active: true,
        admin: true,
        sessions: 2,
        groups: &["admins", "engineering"],
    },
    SeedUser {
        email: "bob@example.com",
        name: "Bob Brown",
        active: true,
        admin: false,
        sessions: 1,
        groups: &["finance"],
    },
    SeedUser {
        email: "carol@example.com",
        name: "Carol Chen",
        active: true,
        admin: false,
        sessions: 3,
        groups: &["engineering", "finance"],
    },
    SeedUser {
        email: "dave@example.com",
        name: "Dave Davis",
        active: false,
        admin: false,
        sessions: 0,
        groups: &["engineering"],
    },
];

const GROUPS: [(&str, &str); 3] = [
    ("engineering", "Software engineering"),
    ("finance", "Finance and accounting"),
    ("admins", "Directory administrators"),
];

const APPLICATIONS: [(&str, &str, &str); 3] = [
    ("payroll", "Payroll and payslips", "finance"),
    ("crm", "Customer relationship management", "finance"),
    ("wiki", "Internal documentation wiki", "engineering"),
];

/// A user as the tools show it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct User {
    pub(crate) email: String,
    pub(crate) name: String,
    pub(crate) active: bool,
    pub(crate) admin: bool,
    pub(crate) sessions: i64,
    pub(crate) groups: Vec<String>,
    pub(crate) created_at: String,
}

/// An application registered in the directory.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Application {
    pub(crate) name: String,
    pub(crate) description: String,
    pub(crate) owner_group: String,
}

/// Creates the tables if missing and seeds the demo data on first open.
pub(crate) async fn prepare(pool: &SqlitePool) -> Result<(), sqlx::Error> {
    db::ensure_seed_table(pool).await?;
    for statement in SCHEMA {
        sqlx::query(statement).execute(pool).await?;
    }
    let mut tx = pool.begin().await?;
    if db::claim_seed(&mut tx, "directory").await? {
        for (name, description) in GROUPS {
            sqlx::query("INSERT INTO directory_groups (name, description) VALUES (?, ?)")
                .bind(name)
                .bind(description)
                .execute(&mut *tx)
                .await?;
        }
        for user in USERS {
            sqlx::query(
                "INSERT INTO directory_users (email, name, active, admin, sessions) VALUES (?, ?, ?, ?, ?)",
            )
            .bind(user.email)
            .bind(user.name)
            .bind(user.active)
            .bind(user.admin)
            .bind(user.sessions)
            .execute(&mut *tx)
            .await?;
            for group in user.groups {
                add_membership(&mut tx, user.email, group).await?;
            }
        }
        for (name, description, owner) in APPLICATIONS {
            sqlx::query(
                "INSERT INTO directory_applications (name, description, owner_group) VALUES (?, ?, ?)",
            )
            .bind(name)
            .bind(description)
            .bind(owner)
            .execute(&mut *tx)
            .await?;
        }
    }
    tx.commit().await
}

/// The user columns plus their groups (comma-joined), then `$tail`.
macro_rules! user_query {
    ($tail:literal) => {
        concat!(
            "SELECT u.email, u.name, u.active, u.admin, u.sessions, u.created_at,
                COALESCE((SELECT group_concat(group_name, ',') FROM
                    (SELECT group_name FROM directory_memberships m
                     WHERE m.email = u.email ORDER BY group_name)), '') AS groups
             FROM directory_users u",
            $tail
        )
    };
}

fn user_from(row: &SqliteRow) -> Result<User, sqlx::Error> {
    let groups: String = row.try_get("groups")?;
    Ok(User {
        email: row.try_get("email")?,
        name: row.try_get("name")?,
        active: row.try_get::<i64, _>("active")? != 0,
        admin: row.try_get::<i64, _>("admin")? != 0,
        sessions: row.try_get("sessions")?,
        groups: groups
            .split(',')
            .filter(|group| !group.is_empty())
            .map(str::to_owned)
            .collect(),
        created_at: row.try_get("created_at")?,
    })
}

/// Users sorted by email, at most `limit`.
pub(crate) async fn list_users(pool: &SqlitePool, limit: u32) -> Result<Vec<User>, sqlx::Error> {
    const QUERY: &str = user_query!(" ORDER BY u.email LIMIT ?");
    let rows = sqlx::query(QUERY).bind(limit).fetch_all(pool).await?;
    rows.iter().map(user_from).collect()
}

/// The user with `email`, if any.
pub(crate) async fn get_user(pool: &SqlitePool, email: &str) -> Result<Option<User>, sqlx::Error> {
    const QUERY: &str = user_query!(" WHERE u.email = ?");
    let row = sqlx::query(QUERY).bind(email).fetch_optional(pool).await?;
    row.as_ref().map(user_from).transpose()
}

/// All applications, by name.
pub(crate) async fn list_applications(pool: &SqlitePool) -> Result<Vec<Application>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT name, description, owner_group FROM directory_applications ORDER BY name",
    )
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|row| {
            Ok(Application {
                name: row.try_get("name")?,
                description: row.try_get("description")?,
                owner_group: row.try_get("owner_group")?,
            })
        })
        .collect()
}

/// Creates an active user with no group; false when the email is taken.
pub(crate) async fn create_user(
    pool: &SqlitePool,
    email: &str,
    name: &str,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "INSERT INTO directory_users (email, name) VALUES (?, ?) ON CONFLICT DO NOTHING",
    )
    .bind(email)
    .bind(name)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Whether the group exists.
pub(crate) async fn group_exists(pool: &SqlitePool, group: &str) -> Result<bool, sqlx::Error> {
    let row = sqlx::query("SELECT 1 FROM directory_groups WHERE name = ?")
        .bind(group)
        .fetch_optional(pool)
        .await?;
    Ok(row.is_some())
}

/// Adds `email` to `group`; false when already a member.
pub(crate) async fn add_to_group(
    pool: &SqlitePool,
    email: &str,
    group: &str,
) -> Result<bool, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    add_membership(&mut conn, email, group).await
}

async fn add_membership(
    conn: &mut sqlx::SqliteConnection,
    email: &str,
    group: &str,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "INSERT INTO directory_memberships (group_name, email) VALUES (?, ?) ON CONFLICT DO NOTHING",
    )
    .bind(group)
    .bind(email)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Deactivates the user and ends their sessions; the user's state before, if found.
pub(crate) async fn deactivate(
    pool: &SqlitePool,
    email: &str,
) -> Result<Option<User>, sqlx::Error> {
    let Some(before) = get_user(pool, email).await? else {
        return Ok(None);
    };
    sqlx::query("UPDATE directory_users SET active = 0, sessions = 0 WHERE email = ?")
        .bind(email)
        .execute(pool)
        .await?;
    Ok(Some(before))
}

/// Ends the user's sessions; how many were live, if the user exists.
pub(crate) async fn revoke_sessions(
    pool: &SqlitePool,
    email: &str,
) -> Result<Option<i64>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let row = sqlx::query("SELECT sessions FROM directory_users WHERE email = ?")
        .bind(email)
        .fetch_optional(&mut *tx)
        .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let sessions: i64 = row.try_get("sessions")?;
    sqlx::query("UPDATE directory_users SET sessions = 0 WHERE email = ?")
        .bind(email)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(Some(sessions))
}

/// Deletes the user and their memberships; false when not found.
pub(crate) async fn delete_user(pool: &SqlitePool, email: &str) -> Result<bool, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("DELETE FROM directory_memberships WHERE email = ?")
        .bind(email)
        .execute(&mut *tx)
        .await?;
    let done = sqlx::query("DELETE FROM directory_users WHERE email = ?")
        .bind(email)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(done.rows_affected() == 1)
}

/// Makes the user an administrator (flag and `admins` group); false when not found.
pub(crate) async fn grant_admin(pool: &SqlitePool, email: &str) -> Result<bool, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let done = sqlx::query("UPDATE directory_users SET admin = 1 WHERE email = ?")
        .bind(email)
        .execute(&mut *tx)
        .await?;
    if done.rows_affected() != 1 {
        return Ok(false);
    }
    add_membership(&mut tx, email, "admins").await?;
    tx.commit().await?;
    Ok(true)
}
