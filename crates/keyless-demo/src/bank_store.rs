//! The bank's SQL store: one checking account per demo user, payees
//! (external destinations) and transactions, created idempotently and seeded
//! once per file. Money is kept in integer cents.

use serde::Serialize;
use sqlx::{Row, SqlitePool};

use crate::{db, rar::format_cents};

const SCHEMA: [&str; 3] = [
    "CREATE TABLE IF NOT EXISTS bank_accounts (
        id TEXT PRIMARY KEY,
        owner TEXT NOT NULL UNIQUE,
        currency TEXT NOT NULL,
        balance_cents INTEGER NOT NULL CHECK (balance_cents >= 0)
    )",
    "CREATE TABLE IF NOT EXISTS bank_payees (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL
    )",
    "CREATE TABLE IF NOT EXISTS bank_transactions (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        account_id TEXT NOT NULL REFERENCES bank_accounts(id),
        amount_cents INTEGER NOT NULL,
        counterparty TEXT NOT NULL,
        description TEXT NOT NULL,
        created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now'))
    )",
];

/// (account id, owner email, balance in cents)
const ACCOUNTS: [(&str, &str, i64); 4] = [
    ("chk-alice", "alice@example.com", 523_000),
    ("chk-bob", "bob@example.com", 120_050),
    ("chk-carol", "carol@example.com", 890_000),
    ("chk-dave", "dave@example.com", 31_025),
];

const PAYEES: [(&str, &str); 4] = [
    ("acme-supplies", "Acme Supplies Ltd"),
    ("landlord", "City Apartments (rent)"),
    ("utility-co", "Metro Power & Water"),
    ("coffee-corner", "Coffee Corner"),
];

/// (account, cents, counterparty, description, time) — history consistent with the balances.
const TRANSACTIONS: [(&str, i64, &str, &str, &str); 10] = [
    (
        "chk-alice",
        650_000,
        "employer",
        "Salary",
        "2025-01-31T09:00:00Z",
    ),
    (
        "chk-alice",
        -120_000,
        "landlord",
        "Rent February",
        "2025-02-01T08:00:00Z",
    ),
    (
        "chk-alice",
        -7_000,
        "utility-co",
        "Electricity",
        "2025-02-03T10:15:00Z",
    ),
    (
        "chk-bob",
        180_000,
        "employer",
        "Salary",
        "2025-01-31T09:00:00Z",
    ),
    (
        "chk-bob",
        -55_000,
        "landlord",
        "Rent February",
        "2025-02-01T08:00:00Z",
    ),
    (
        "chk-bob",
        -4_950,
        "coffee-corner",
        "Coffee beans",
        "2025-02-04T16:40:00Z",
    ),
    (
        "chk-carol",
        900_000,
        "employer",
        "Salary",
        "2025-01-31T09:00:00Z",
    ),
    (
        "chk-carol",
        -10_000,
        "acme-supplies",
        "Office chair",
        "2025-02-02T11:30:00Z",
    ),
    (
        "chk-dave",
        40_000,
        "employer",
        "Part-time salary",
        "2025-01-31T09:00:00Z",
    ),
    (
        "chk-dave",
        -8_975,
        "utility-co",
        "Water and power",
        "2025-02-03T10:20:00Z",
    ),
];

/// The currency of every demo account.
pub(crate) const CURRENCY: &str = "USD";

/// An account as the tools show it.
#[derive(Debug, Clone)]
pub(crate) struct Account {
    pub(crate) id: String,
    pub(crate) owner: String,
    pub(crate) currency: String,
    pub(crate) balance_cents: i64,
}

/// A transaction as the tools show it (amounts as decimal strings and numbers).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Transaction {
    pub(crate) id: i64,
    pub(crate) amount: f64,
    pub(crate) amount_display: String,
    pub(crate) counterparty: String,
    pub(crate) description: String,
    pub(crate) created_at: String,
}

/// Outcome of a transfer attempt that reached the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Transfer {
    /// Money moved; the new balance and the transaction id.
    Done {
        balance_cents: i64,
        transaction_id: i64,
    },
    /// The balance does not cover the amount; nothing changed.
    InsufficientFunds { balance_cents: i64 },
}

/// Creates the tables if missing and seeds the demo data on first open.
pub(crate) async fn prepare(pool: &SqlitePool) -> Result<(), sqlx::Error> {
    db::ensure_seed_table(pool).await?;
    for statement in SCHEMA {
        sqlx::query(statement).execute(pool).await?;
    }
    let mut tx = pool.begin().await?;
    if db::claim_seed(&mut tx, "bank").await? {
        for (id, owner, balance) in ACCOUNTS {
            sqlx::query("INSERT INTO bank_accounts (id, owner, currency, balance_cents) VALUES (?, ?, ?, ?)")
                .bind(id)
                .bind(owner)
                .bind(CURRENCY)
                .bind(balance)
                .execute(&mut *tx)
                .await?;
        }
        for (id, name) in PAYEES {
            sqlx::query("INSERT INTO bank_payees (id, name) VALUES (?, ?)")
                .bind(id)
                .bind(name)
                .execute(&mut *tx)
                .await?;
        }
        for (account, cents, counterparty, description, at) in TRANSACTIONS {
            sqlx::query(
                "INSERT INTO bank_transactions (account_id, amount_cents, counterparty, description, created_at)
                 VALUES (?, ?, ?, ?, ?)",
            )
            .bind(account)
            .bind(cents)
            .bind(counterparty)
            .bind(description)
            .bind(at)
            .execute(&mut *tx)
            .await?;
        }
    }
    tx.commit().await
}

/// The account owned by `owner` (an email or subject), if any.
pub(crate) async fn account_of(
    pool: &SqlitePool,
    owner: &str,
) -> Result<Option<Account>, sqlx::Error> {
    let row =
        sqlx::query("SELECT id, owner, currency, balance_cents FROM bank_accounts WHERE owner = ?")
            .bind(owner.trim().to_ascii_lowercase())
            .fetch_optional(pool)
            .await?;
    row.map(|row| {
        Ok(Account {
            id: row.try_get("id")?,
            owner: row.try_get("owner")?,
            currency: row.try_get("currency")?,
            balance_cents: row.try_get("balance_cents")?,
        })
    })
    .transpose()
}

/// The display name of payee `id`, if it exists.
pub(crate) async fn payee(pool: &SqlitePool, id: &str) -> Result<Option<String>, sqlx::Error> {
    let row = sqlx::query("SELECT name FROM bank_payees WHERE id = ?")
        .bind(id)
        .fetch_optional(pool)
        .await?;
    row.map(|row| row.try_get("name")).transpose()
}

/// The newest `limit` transactions of `account`, newest first.
pub(crate) async fn transactions(
    pool: &SqlitePool,
    account: &str,
    limit: u32,
) -> Result<Vec<Transaction>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT id, amount_cents, counterparty, description, created_at FROM bank_transactions
         WHERE account_id = ? ORDER BY created_at DESC, id DESC LIMIT ?",
    )
    .bind(account)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|row| {
            let cents: i64 = row.try_get("amount_cents")?;
            Ok(Transaction {
                id: row.try_get("id")?,
                amount: cents as f64 / 100.0,
                amount_display: format_cents(cents),
                counterparty: row.try_get("counterparty")?,
                description: row.try_get("description")?,
                created_at: row.try_get("created_at")?,
            })
        })
        .collect()
}

/// Debits `cents` from `account` to `destination` atomically, if the balance covers it.
pub(crate) async fn transfer(
    pool: &SqlitePool,
    account: &str,
    cents: i64,
    destination: &str,
    description: &str,
) -> Result<Transfer, sqlx::Error> {
    let mut tx = pool.begin().await?;
    // The guard in the WHERE clause makes check-and-debit one statement, so
    // two concurrent transfers cannot both pass a stale balance check.
    let debited = sqlx::query(
        "UPDATE bank_accounts SET balance_cents = balance_cents - ?1
         WHERE id = ?2 AND balance_cents >= ?1",
    )
    .bind(cents)
    .bind(account)
    .execute(&mut *tx)
    .await?;
    let balance: i64 = sqlx::query("SELECT balance_cents FROM bank_accounts WHERE id = ?")
        .bind(account)
        .fetch_one(&mut *tx)
        .await?
        .try_get("balance_cents")?;
    if debited.rows_affected() != 1 {
        return Ok(Transfer::InsufficientFunds {
            balance_cents: balance,
        });
    }
    let inserted = sqlx::query(
        "INSERT INTO bank_transactions (account_id, amount_cents, counterparty, description)
         VALUES (?, ?, ?, ?)",
    )
    .bind(account)
    .bind(-cents)
    .bind(destination)
    .bind(description)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Transfer::Done {
        balance_cents: balance,
        transaction_id: inserted.last_insert_rowid(),
    })
}
