//! The audit tables (migration `0003_audit`), one function per statement.
//!
//! Queries are written once for both backends through sqlx's `Any` driver:
//! `$n` placeholders, BIGINT/TEXT/BLOB columns only. Indices and sizes are
//! `u64` in Rust and `BIGINT` in SQL; values beyond `i64::MAX` cannot occur
//! (a log would need 2^63 entries) and are refused rather than wrapped.

use futures::TryStreamExt;
use sqlx::{Any, AnyPool, Row, Transaction};

use crate::error::AuditError;
use crate::merkle::Hash;
use crate::note::{Checkpoint, ParsedCheckpoint};

/// Rows per multi-row INSERT. Statements of a few fixed shapes keep sqlx's
/// prepared-statement cache small; 4 bind parameters a row stays well under
/// SQLite's 32766 and PostgreSQL's 65535 parameter limits.
const INSERT_CHUNKS: [usize; 5] = [256, 64, 16, 4, 1];

pub(crate) fn to_i64(v: u64) -> Result<i64, AuditError> {
    i64::try_from(v).map_err(|_| AuditError::InvalidRange(format!("`{v}` is too large")))
}

pub(crate) fn to_u64(v: i64) -> Result<u64, AuditError> {
    u64::try_from(v).map_err(|_| AuditError::Inconsistent(format!("negative index `{v}` stored")))
}

pub(crate) fn to_hash(bytes: Vec<u8>, what: &str) -> Result<Hash, AuditError> {
    bytes
        .try_into()
        .map_err(|_| AuditError::Inconsistent(format!("stored {what} is not 32 bytes")))
}

pub(crate) fn is_unique_violation(e: &AuditError) -> bool {
    match e {
        AuditError::Database(e) => e
            .as_database_error()
            .is_some_and(|d| d.is_unique_violation()),
        _ => false,
    }
}

/// A row of `audit_entries`.
#[derive(Debug, Clone)]
pub(crate) struct EntryRow {
    pub index: u64,
    pub leaf_hash: Vec<u8>,
    pub root: Vec<u8>,
    pub event: String,
}

fn entry_row(r: &sqlx::any::AnyRow) -> Result<EntryRow, AuditError> {
    Ok(EntryRow {
        index: to_u64(r.try_get("idx")?)?,
        leaf_hash: r.try_get("leaf_hash")?,
        root: r.try_get("root")?,
        event: r.try_get("event")?,
    })
}

/// Inserts entries `first..first+rows.len()` as (leaf hash, root after, canonical JSON).
/// Indexes the token ids events name (`detail.jti`), see migration 0009.
pub(crate) async fn insert_jtis(
    tx: &mut Transaction<'static, Any>,
    rows: &[JtiRow<'_>],
) -> Result<(), AuditError> {
    let mut done = 0usize;
    while done < rows.len() {
        let left = rows.len() - done;
        let n = INSERT_CHUNKS.into_iter().find(|c| *c <= left).unwrap_or(1);
        let mut sql = String::from("INSERT INTO audit_jtis (jti, kind, idx, at) VALUES ");
        for i in 0..n {
            let p = i * 4;
            if i > 0 {
                sql.push(',');
            }
            sql.push_str(&format!("(${},${},${},${})", p + 1, p + 2, p + 3, p + 4));
        }
        // Only placeholders are interpolated, never data.
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (jti, kind, idx, at) in rows.iter().skip(done).take(n) {
            q = q.bind(*jti).bind(*kind).bind(to_i64(*idx)?).bind(*at);
        }
        q.execute(&mut **tx).await?;
        done += n;
    }
    Ok(())
}

/// One batch as ONE statement string on SQLite: `BEGIN IMMEDIATE`, the
/// entries, their token ids, the seal, `COMMIT`. sqlx hands every
/// statement to the connection's worker thread and back; five round trips
/// per batch cost more than the work itself, one does not. `$n`
/// placeholders are numbered across the whole string (sqlx binds `$n` to
/// the n-th argument). On any error the transaction is rolled back on the
/// same connection before it goes back to the pool.
pub(crate) async fn commit_batch_sqlite(
    pool: &AnyPool,
    first: u64,
    rows: &[(Hash, Hash, &str)],
    jtis: &[JtiRow<'_>],
    seal: (u64, &Hash, &str, &[u8]),
) -> Result<(), AuditError> {
    use std::fmt::Write as _;
    let mut sql = String::with_capacity(64 + rows.len() * 24 + jtis.len() * 20);
    sql.push_str("BEGIN IMMEDIATE;");
    let mut n = 0usize;
    let mut next = |sql: &mut String| {
        n += 1;
        let _ = write!(sql, "${n}");
    };
    if !rows.is_empty() {
        sql.push_str("INSERT INTO audit_entries (idx, leaf_hash, root, event) VALUES ");
        for i in 0..rows.len() {
            sql.push_str(if i == 0 { "(" } else { ",(" });
            for c in 0..4 {
                if c > 0 {
                    sql.push(',');
                }
                next(&mut sql);
            }
            sql.push(')');
        }
        sql.push(';');
    }
    if !jtis.is_empty() {
        sql.push_str("INSERT INTO audit_jtis (jti, kind, idx, at) VALUES ");
        for i in 0..jtis.len() {
            sql.push_str(if i == 0 { "(" } else { ",(" });
            for c in 0..4 {
                if c > 0 {
                    sql.push(',');
                }
                next(&mut sql);
            }
            sql.push(')');
        }
        sql.push(';');
    }
    sql.push_str("INSERT INTO audit_seals (tree_size, root, key_name, signature) VALUES (");
    for c in 0..4 {
        if c > 0 {
            sql.push(',');
        }
        next(&mut sql);
    }
    sql.push_str(");COMMIT;");

    // Only placeholders are interpolated, never data. Kept prepared: under
    // a steady load a few batch shapes recur; sqlx's statement cache is a
    // bounded LRU, so rare shapes age out.
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
    for (k, (leaf, root, event)) in rows.iter().enumerate() {
        q = q
            .bind(to_i64(first + k as u64)?)
            .bind(leaf.to_vec())
            .bind(root.to_vec())
            .bind(*event);
    }
    for (jti, kind, idx, at) in jtis {
        q = q.bind(*jti).bind(*kind).bind(to_i64(*idx)?).bind(*at);
    }
    let (size, root, key_name, signature) = seal;
    q = q
        .bind(to_i64(size)?)
        .bind(root.to_vec())
        .bind(key_name)
        .bind(signature.to_vec());

    let mut conn = pool.acquire().await?;
    match q.execute(&mut *conn).await {
        Ok(_) => Ok(()),
        Err(e) => {
            // The string stopped at its first failing statement: end the
            // transaction it may have left open, or retire the connection.
            if sqlx::query("ROLLBACK").execute(&mut *conn).await.is_err() {
                conn.close_on_drop();
            }
            Err(e.into())
        }
    }
}

/// A token id named by an event: (jti, event kind, index, event time ms).
pub(crate) type JtiRow<'a> = (&'a str, &'a str, u64, i64);

/// Token ids named by committed events of `kind` at or after `since_ms`.
pub(crate) async fn jtis_since(
    pool: &AnyPool,
    kind: &str,
    since_ms: i64,
) -> Result<Vec<String>, AuditError> {
    let rows = sqlx::query("SELECT jti FROM audit_jtis WHERE kind = $1 AND at >= $2")
        .bind(kind)
        .bind(since_ms)
        .fetch_all(pool)
        .await?;
    rows.iter()
        .map(|r| r.try_get::<String, _>("jti").map_err(AuditError::from))
        .collect()
}

/// Whether an event of `kind` naming token `jti` is committed.
pub(crate) async fn has_jti(pool: &AnyPool, jti: &str, kind: &str) -> Result<bool, AuditError> {
    Ok(
        sqlx::query("SELECT idx FROM audit_jtis WHERE jti = $1 AND kind = $2")
            .bind(jti)
            .bind(kind)
            .fetch_optional(pool)
            .await?
            .is_some(),
    )
}

pub(crate) async fn insert_entries(
    tx: &mut Transaction<'static, Any>,
    first: u64,
    rows: &[(Hash, Hash, &str)],
) -> Result<(), AuditError> {
    let mut done = 0usize;
    while done < rows.len() {
        let left = rows.len() - done;
        let n = INSERT_CHUNKS.into_iter().find(|c| *c <= left).unwrap_or(1);
        let mut sql =
            String::from("INSERT INTO audit_entries (idx, leaf_hash, root, event) VALUES ");
        for i in 0..n {
            let p = i * 4;
            if i > 0 {
                sql.push(',');
            }
            sql.push_str(&format!("(${},${},${},${})", p + 1, p + 2, p + 3, p + 4));
        }
        // Only placeholders are interpolated, never data.
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (k, (leaf, root, event)) in rows.iter().skip(done).take(n).enumerate() {
            q = q
                .bind(to_i64(first + (done + k) as u64)?)
                .bind(leaf.to_vec())
                .bind(root.to_vec())
                .bind(*event);
        }
        q.execute(&mut **tx).await?;
        done += n;
    }
    Ok(())
}

pub(crate) async fn insert_seal(
    tx: &mut Transaction<'static, Any>,
    size: u64,
    root: &Hash,
    key_name: &str,
    signature: &[u8],
) -> Result<(), AuditError> {
    sqlx::query(
        "INSERT INTO audit_seals (tree_size, root, key_name, signature) VALUES ($1, $2, $3, $4)",
    )
    .bind(to_i64(size)?)
    .bind(root.to_vec())
    .bind(key_name)
    .bind(signature.to_vec())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Entries with `start <= idx < end`, in order.
pub(crate) async fn read_entries<'e, E>(
    exec: E,
    start: u64,
    end: u64,
) -> Result<Vec<EntryRow>, AuditError>
where
    E: sqlx::Executor<'e, Database = Any>,
{
    let rows = sqlx::query(
        "SELECT idx, leaf_hash, root, event FROM audit_entries WHERE idx >= $1 AND idx < $2 ORDER BY idx",
    )
    .bind(to_i64(start)?)
    .bind(to_i64(end.min(i64::MAX as u64))?)
    .fetch_all(exec)
    .await?;
    rows.iter().map(entry_row).collect()
}

/// Every entry from `start` on, streamed in order, handed to `f` in
/// chunks of `chunk` rows.
pub(crate) async fn for_each_chunk<'e, E, F, Fut>(
    exec: E,
    start: u64,
    chunk: usize,
    mut f: F,
) -> Result<(), AuditError>
where
    E: sqlx::Executor<'e, Database = Any>,
    F: FnMut(Vec<EntryRow>) -> Fut,
    Fut: std::future::Future<Output = Result<(), AuditError>>,
{
    let mut rows = sqlx::query(
        "SELECT idx, leaf_hash, root, event FROM audit_entries WHERE idx >= $1 ORDER BY idx",
    )
    .bind(to_i64(start)?)
    .fetch(exec);
    let mut buf = Vec::with_capacity(chunk);
    while let Some(r) = rows.try_next().await? {
        buf.push(entry_row(&r)?);
        if buf.len() >= chunk {
            f(std::mem::replace(&mut buf, Vec::with_capacity(chunk))).await?;
        }
    }
    if !buf.is_empty() {
        f(buf).await?;
    }
    Ok(())
}

/// Every stored leaf hash, in order, checked for contiguity.
pub(crate) async fn load_leaf_hashes(pool: &AnyPool) -> Result<Vec<Hash>, AuditError> {
    let mut rows = sqlx::query("SELECT idx, leaf_hash FROM audit_entries ORDER BY idx").fetch(pool);
    let mut out = Vec::new();
    while let Some(r) = rows.try_next().await? {
        let idx = to_u64(r.try_get("idx")?)?;
        if idx != out.len() as u64 {
            return Err(AuditError::Inconsistent(format!(
                "entry {} is missing",
                out.len()
            )));
        }
        out.push(to_hash(r.try_get("leaf_hash")?, "leaf hash")?);
    }
    Ok(out)
}

/// The stored root after the last entry.
pub(crate) async fn last_root(pool: &AnyPool) -> Result<Option<(u64, Vec<u8>)>, AuditError> {
    let row = sqlx::query("SELECT idx, root FROM audit_entries ORDER BY idx DESC LIMIT 1")
        .fetch_optional(pool)
        .await?;
    row.map(|r| Ok((to_u64(r.try_get("idx")?)?, r.try_get("root")?)))
        .transpose()
}

/// A row of `audit_seals`.
#[derive(Debug, Clone)]
pub(crate) struct SealRow {
    pub size: u64,
    pub root: Vec<u8>,
    pub key_name: String,
    pub signature: Vec<u8>,
}

pub(crate) async fn seals<'e, E>(exec: E) -> Result<Vec<SealRow>, AuditError>
where
    E: sqlx::Executor<'e, Database = Any>,
{
    let rows = sqlx::query(
        "SELECT tree_size, root, key_name, signature FROM audit_seals ORDER BY tree_size",
    )
    .fetch_all(exec)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(SealRow {
                size: to_u64(r.try_get("tree_size")?)?,
                root: r.try_get("root")?,
                key_name: r.try_get("key_name")?,
                signature: r.try_get("signature")?,
            })
        })
        .collect()
}

/// A row of `audit_checkpoints`, as stored (the note is the authority).
#[derive(Debug, Clone)]
pub(crate) struct CheckpointRow {
    pub seq: u64,
    pub size: u64,
    pub root: Vec<u8>,
    pub key_name: String,
    pub note: String,
    pub issued_at: i64,
}

fn checkpoint_row(r: &sqlx::any::AnyRow) -> Result<CheckpointRow, AuditError> {
    Ok(CheckpointRow {
        seq: to_u64(r.try_get("seq")?)?,
        size: to_u64(r.try_get("tree_size")?)?,
        root: r.try_get("root")?,
        key_name: r.try_get("key_name")?,
        note: r.try_get("note")?,
        issued_at: r.try_get("issued_at")?,
    })
}

pub(crate) async fn checkpoints<'e, E>(exec: E) -> Result<Vec<CheckpointRow>, AuditError>
where
    E: sqlx::Executor<'e, Database = Any>,
{
    let rows = sqlx::query("SELECT seq, tree_size, root, key_name, note, issued_at FROM audit_checkpoints ORDER BY seq")
        .fetch_all(exec)
        .await?;
    rows.iter().map(checkpoint_row).collect()
}

pub(crate) async fn latest_checkpoint_row(
    pool: &AnyPool,
) -> Result<Option<CheckpointRow>, AuditError> {
    let row = sqlx::query("SELECT seq, tree_size, root, key_name, note, issued_at FROM audit_checkpoints ORDER BY seq DESC LIMIT 1")
    .fetch_optional(pool)
    .await?;
    row.as_ref().map(checkpoint_row).transpose()
}

/// Turns a stored checkpoint into a [`Checkpoint`], taking size and root
/// from the signed note, never from the side columns.
pub(crate) fn checkpoint_from_row(
    row: CheckpointRow,
) -> Result<(Checkpoint, ParsedCheckpoint), AuditError> {
    let parsed = ParsedCheckpoint::parse(&row.note).map_err(|e| {
        AuditError::Inconsistent(format!("checkpoint {} cannot be read: {e}", row.seq))
    })?;
    let cp = Checkpoint {
        seq: row.seq,
        origin: parsed.origin.clone(),
        size: parsed.size,
        root: parsed.root,
        key_name: row.key_name,
        note: row.note,
        issued_at: row.issued_at,
    };
    Ok((cp, parsed))
}

pub(crate) async fn insert_checkpoint(pool: &AnyPool, cp: &Checkpoint) -> Result<(), AuditError> {
    sqlx::query(
        "INSERT INTO audit_checkpoints (seq, tree_size, root, key_name, note, issued_at) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(to_i64(cp.seq)?)
    .bind(to_i64(cp.size)?)
    .bind(cp.root.to_vec())
    .bind(cp.key_name.as_str())
    .bind(cp.note.as_str())
    .bind(cp.issued_at)
    .execute(pool)
    .await?;
    Ok(())
}

/// A row of `audit_keys`.
#[derive(Debug, Clone)]
pub(crate) struct KeyRow {
    pub seq: u64,
    pub name: String,
    pub public_key: Vec<u8>,
}

pub(crate) async fn keys<'e, E>(exec: E) -> Result<Vec<KeyRow>, AuditError>
where
    E: sqlx::Executor<'e, Database = Any>,
{
    let rows = sqlx::query("SELECT seq, name, public_key FROM audit_keys ORDER BY seq")
        .fetch_all(exec)
        .await?;
    rows.iter()
        .map(|r| {
            Ok(KeyRow {
                seq: to_u64(r.try_get("seq")?)?,
                name: r.try_get("name")?,
                public_key: r.try_get("public_key")?,
            })
        })
        .collect()
}

pub(crate) async fn insert_key(
    pool: &AnyPool,
    seq: u64,
    name: &str,
    public_key: &[u8],
) -> Result<(), AuditError> {
    sqlx::query(
        "INSERT INTO audit_keys (seq, name, public_key, created_at) VALUES ($1, $2, $3, $4)",
    )
    .bind(to_i64(seq)?)
    .bind(name)
    .bind(public_key.to_vec())
    .bind(keyless_store::now_millis())
    .execute(pool)
    .await?;
    Ok(())
}
