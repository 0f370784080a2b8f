//! KV v2 secrets engine: versions, metadata, soft delete, undelete, destroy,
//! check-and-set, `max_versions` pruning and `delete_version_after`, with
//! the semantics and JSON shapes of Vault's KV v2 so its clients work as is.
//!
//! Envelope encryption at rest: each secret path has its own data key (DEK,
//! AES-256-GCM), stored wrapped by the key-encryption key [`KEK_NAME`] that
//! lives in the key manager (the KEK's name is stored beside the wrapped DEK,
//! so a newer KEK can be introduced without losing the older one). Each
//! version's value is sealed under the DEK with the path and the version
//! number as associated data, and the DEK itself is wrapped with the path as
//! associated data: a database dump holds no secret, and a ciphertext copied
//! to another path or version fails to decrypt ([`SecretsError::Decrypt`]).
//!
//! Why a DEK per path (not per version): a read then costs one unwrap per
//! path for the whole life of the process (the unwrapped DEKs are cached in
//! memory, so reads do no key-manager I/O), and `delete_metadata` shreds the
//! path's key together with all its versions; the version is still bound by
//! the associated data, so moving a ciphertext between versions fails too.
//!
//! Reads are one indexed query (metadata joined to the wanted version).
//! Writes are one transaction whose first statement takes the row (and
//! SQLite's write lock), so concurrent writers to one path serialize and
//! check-and-set is exact.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use aws_lc_rs::aead::{AES_256_GCM, Aad, NONCE_LEN, Nonce, RandomizedNonceKey};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use keyless_store::{KeyManager, Sealer, Store, now_millis};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};
use sqlx::Row;

use crate::SecretsError;

/// The key-encryption key that wraps new data keys.
pub const KEK_NAME: &str = "secrets-kek-1";
/// Versions kept per path when its `max_versions` is 0 (Vault's default).
pub const DEFAULT_MAX_VERSIONS: u64 = 10;
/// Longest accepted secret path, in bytes.
pub const MAX_PATH_LEN: usize = 512;
/// Largest accepted secret value (its JSON encoding), in bytes.
pub const MAX_VALUE_LEN: usize = 1024 * 1024;
/// Vault's limits on `custom_metadata`.
const MAX_CUSTOM_KEYS: usize = 64;
const MAX_CUSTOM_KEY_LEN: usize = 128;
const MAX_CUSTOM_VALUE_LEN: usize = 512;
/// Unwrapped data keys kept in memory; the cache is emptied when full.
const DEK_CACHE_LIMIT: usize = 65_536;
const DEK_LEN: usize = 32;
const TAG_LEN: usize = 16;

/// The `metadata` object of a KV v2 data read or write, as Vault sends it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionMeta {
    /// RFC 3339.
    pub created_time: String,
    /// The path's custom metadata (`null` when none was set).
    pub custom_metadata: Option<BTreeMap<String, String>>,
    /// `""` for a live version, else RFC 3339 (possibly in the future, when
    /// `delete_version_after` scheduled it).
    pub deletion_time: String,
    pub destroyed: bool,
    pub version: u64,
}

/// A read: `data` is `None` when the version is deleted or destroyed (Vault
/// then answers 404 with the metadata). Serializes as Vault's `data` object.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReadResult {
    pub data: Option<Map<String, Value>>,
    #[serde(rename = "metadata")]
    pub meta: VersionMeta,
}

/// One entry of [`Metadata::versions`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionSummary {
    pub created_time: String,
    pub deletion_time: String,
    pub destroyed: bool,
}

/// The `data` object of Vault's `GET /v1/secret/metadata/<path>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    pub cas_required: bool,
    pub created_time: String,
    pub current_version: u64,
    pub custom_metadata: Option<BTreeMap<String, String>>,
    /// A Go duration string, e.g. `"0s"`, `"1h30m0s"`.
    pub delete_version_after: String,
    /// 0 = the default ([`DEFAULT_MAX_VERSIONS`]).
    pub max_versions: u64,
    /// 0 until versions were pruned, then the oldest version kept.
    pub oldest_version: u64,
    pub updated_time: String,
    /// Keyed by version number (a string in JSON).
    pub versions: BTreeMap<u64, VersionSummary>,
}

/// Body of Vault's `POST /v1/secret/metadata/<path>`: only the fields given
/// change. `delete_version_after` accepts seconds or a duration string
/// (`"3h25m19s"`); `custom_metadata` replaces the whole map.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct MetadataUpdate {
    #[serde(default)]
    pub max_versions: Option<u64>,
    #[serde(default)]
    pub cas_required: Option<bool>,
    #[serde(default, deserialize_with = "de_duration")]
    pub delete_version_after: Option<Duration>,
    #[serde(default)]
    pub custom_metadata: Option<BTreeMap<String, String>>,
}

/// The KV v2 engine.
pub struct Kv {
    store: Store,
    keys: Arc<dyn KeyManager>,
    keks: Mutex<HashMap<String, Arc<dyn Sealer>>>,
    deks: Mutex<HashMap<String, CachedDek>>,
}

struct CachedDek {
    /// The wrapped form it came from: a path deleted and recreated (here or
    /// by another replica) has a new DEK, which must not be confused with
    /// the cached one.
    wrapped: Vec<u8>,
    key: Arc<DataKey>,
}

// Deliberately prints no key material.
impl std::fmt::Debug for Kv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kv").field("kek", &KEK_NAME).finish()
    }
}

// === impl Kv ===

impl Kv {
    /// Opens the engine. A missing KEK that existing secrets depend on is
    /// logged here and reported by every operation that needs it, rather
    /// than failing the whole server: metadata, list and delete still work.
    pub async fn open(store: Store, keys: Arc<dyn KeyManager>) -> Result<Arc<Kv>, SecretsError> {
        let kv = Kv {
            store,
            keys,
            keks: Mutex::new(HashMap::new()),
            deks: Mutex::new(HashMap::new()),
        };
        match kv.kek(KEK_NAME).await {
            Ok(_) => {}
            Err(e @ SecretsError::Decrypt(_)) => tracing::error!(error = %e, "kv v2"),
            Err(e) => return Err(e),
        }
        Ok(Arc::new(kv))
    }

    /// Writes a new version. `cas`: `Some(n)` writes only if the current
    /// version is `n` (0 = the path must not exist); required when the path
    /// has `cas_required`.
    pub async fn put(
        &self,
        path: &str,
        data: Map<String, Value>,
        cas: Option<u64>,
    ) -> Result<VersionMeta, SecretsError> {
        validate_path(path)?;
        let mut plaintext = serde_json::to_vec(&data)
            .map_err(|e| SecretsError::InvalidRequest(format!("secret data: {e}")))?;
        if plaintext.len() > MAX_VALUE_LEN {
            return Err(SecretsError::InvalidRequest(format!(
                "secret data is {} bytes, more than the {MAX_VALUE_LEN} allowed",
                plaintext.len()
            )));
        }
        let kek = self.kek(KEK_NAME).await?;
        let candidate = new_wrapped_dek(kek.as_ref(), path)?;
        let now = now_millis();

        let mut tx = self.store.pool().begin().await?;
        insert_metadata_if_absent(&mut tx, path, now, kek.name(), &candidate).await?;
        let row = sqlx::query(
            "UPDATE kv_metadata SET current_version = current_version + 1, updated_at = $2 \
             WHERE path = $1 RETURNING current_version, oldest_version, max_versions, \
             cas_required, delete_version_after_ms, custom_metadata, kek_name, wrapped_dek",
        )
        .bind(path)
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
        let version = to_u64(row.try_get("current_version")?);
        let current = version.saturating_sub(1);
        let cas_required = row.try_get::<i64, _>("cas_required")? != 0;
        match cas {
            None if cas_required => {
                return Err(SecretsError::InvalidRequest(
                    "check-and-set parameter required for this call".into(),
                ));
            }
            Some(c) if c != current => {
                return Err(SecretsError::Conflict(
                    "check-and-set parameter did not match the current version".into(),
                ));
            }
            _ => {}
        }
        let kek_name: String = row.try_get("kek_name")?;
        let wrapped: Vec<u8> = row.try_get("wrapped_dek")?;
        let custom = parse_custom(row.try_get("custom_metadata")?)?;
        let oldest = to_u64(row.try_get("oldest_version")?);
        let max_versions = match to_u64(row.try_get("max_versions")?) {
            0 => DEFAULT_MAX_VERSIONS,
            n => n,
        };
        let dva: i64 = row.try_get("delete_version_after_ms")?;

        let dek = self.dek(path, &kek_name, &wrapped).await?;
        let sealed = dek.seal(&plaintext, &value_aad(path, version));
        wipe(&mut plaintext);
        let sealed = sealed?;
        let deletion = if dva > 0 { now.saturating_add(dva) } else { 0 };
        sqlx::query(
            "INSERT INTO kv_versions (path, version, created_at, deletion_time, destroyed, ciphertext) \
             VALUES ($1, $2, $3, $4, 0, $5)",
        )
        .bind(path)
        .bind(to_i64(version))
        .bind(now)
        .bind(deletion)
        .bind(sealed)
        .execute(&mut *tx)
        .await?;
        // Vault's rule: once more than `max_versions` are held, everything
        // up to `current - max_versions` goes, and `oldest_version` moves on.
        if version.saturating_sub(oldest) >= max_versions {
            let last_dropped = version.saturating_sub(max_versions);
            sqlx::query("DELETE FROM kv_versions WHERE path = $1 AND version <= $2")
                .bind(path)
                .bind(to_i64(last_dropped))
                .execute(&mut *tx)
                .await?;
            sqlx::query("UPDATE kv_metadata SET oldest_version = $2 WHERE path = $1")
                .bind(path)
                .bind(to_i64(last_dropped.saturating_add(1)))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(VersionMeta {
            created_time: rfc3339(now),
            custom_metadata: custom,
            deletion_time: optional_time(deletion),
            destroyed: false,
            version,
        })
    }

    /// Reads a version (`None` or `Some(0)`: the current one). `Ok(None)`
    /// when the path or the version does not exist (or was pruned).
    pub async fn get(
        &self,
        path: &str,
        version: Option<u64>,
    ) -> Result<Option<ReadResult>, SecretsError> {
        validate_path(path)?;
        let wanted = match version {
            None | Some(0) => 0,
            Some(v) => match i64::try_from(v) {
                Ok(v) => v,
                Err(_) => return Ok(None),
            },
        };
        let row = sqlx::query(
            "SELECT m.kek_name, m.wrapped_dek, m.custom_metadata, v.version, v.created_at, \
             v.deletion_time, v.destroyed, v.ciphertext \
             FROM kv_metadata m LEFT JOIN kv_versions v ON v.path = m.path \
             AND v.version = (CASE WHEN $2 > 0 THEN $2 ELSE m.current_version END) \
             WHERE m.path = $1",
        )
        .bind(path)
        .bind(wanted)
        .fetch_optional(self.store.pool())
        .await?;
        let Some(row) = row else { return Ok(None) };
        let Some(version) = row.try_get::<Option<i64>, _>("version")? else {
            return Ok(None);
        };
        let version = to_u64(version);
        let deletion: i64 = row.try_get("deletion_time")?;
        let destroyed = row.try_get::<i64, _>("destroyed")? != 0;
        let meta = VersionMeta {
            created_time: rfc3339(row.try_get("created_at")?),
            custom_metadata: parse_custom(row.try_get("custom_metadata")?)?,
            deletion_time: optional_time(deletion),
            destroyed,
            version,
        };
        let ciphertext: Option<Vec<u8>> = row.try_get("ciphertext")?;
        let ciphertext = match ciphertext {
            Some(c) if !destroyed && !is_deleted(deletion, now_millis()) => c,
            _ => return Ok(Some(ReadResult { data: None, meta })),
        };
        let kek_name: String = row.try_get("kek_name")?;
        let wrapped: Vec<u8> = row.try_get("wrapped_dek")?;
        let dek = self.dek(path, &kek_name, &wrapped).await?;
        let mut plaintext = dek
            .open(&ciphertext, &value_aad(path, version))
            .map_err(|()| {
                SecretsError::Decrypt(format!(
                    "version {version} of `{path}` did not authenticate (altered or moved)"
                ))
            })?;
        let data = serde_json::from_slice::<Map<String, Value>>(&plaintext);
        wipe(&mut plaintext);
        let data = data.map_err(|_| {
            SecretsError::Decrypt(format!(
                "version {version} of `{path}` is not a json object"
            ))
        })?;
        Ok(Some(ReadResult {
            data: Some(data),
            meta,
        }))
    }

    /// Whether the path exists (has metadata), for callers that must tell
    /// Vault's `create` from `update` capability before a write.
    pub async fn exists(&self, path: &str) -> Result<bool, SecretsError> {
        validate_path(path)?;
        Ok(
            sqlx::query("SELECT 1 AS one FROM kv_metadata WHERE path = $1")
                .bind(path)
                .fetch_optional(self.store.pool())
                .await?
                .is_some(),
        )
    }

    /// The path's metadata and the state of every version it holds.
    pub async fn metadata(&self, path: &str) -> Result<Option<Metadata>, SecretsError> {
        validate_path(path)?;
        let pool = self.store.pool();
        let Some(row) = sqlx::query(
            "SELECT current_version, oldest_version, max_versions, cas_required, \
             delete_version_after_ms, custom_metadata, created_at, updated_at \
             FROM kv_metadata WHERE path = $1",
        )
        .bind(path)
        .fetch_optional(pool)
        .await?
        else {
            return Ok(None);
        };
        let rows = sqlx::query(
            "SELECT version, created_at, deletion_time, destroyed FROM kv_versions \
             WHERE path = $1 ORDER BY version",
        )
        .bind(path)
        .fetch_all(pool)
        .await?;
        let mut versions = BTreeMap::new();
        for r in rows {
            versions.insert(
                to_u64(r.try_get("version")?),
                VersionSummary {
                    created_time: rfc3339(r.try_get("created_at")?),
                    deletion_time: optional_time(r.try_get("deletion_time")?),
                    destroyed: r.try_get::<i64, _>("destroyed")? != 0,
                },
            );
        }
        Ok(Some(Metadata {
            cas_required: row.try_get::<i64, _>("cas_required")? != 0,
            created_time: rfc3339(row.try_get("created_at")?),
            current_version: to_u64(row.try_get("current_version")?),
            custom_metadata: parse_custom(row.try_get("custom_metadata")?)?,
            delete_version_after: go_duration(to_u64(row.try_get("delete_version_after_ms")?)),
            max_versions: to_u64(row.try_get("max_versions")?),
            oldest_version: to_u64(row.try_get("oldest_version")?),
            updated_time: rfc3339(row.try_get("updated_at")?),
            versions,
        }))
    }

    /// Vault list semantics: the direct children of `prefix` (`""` for the
    /// root; a trailing `/` is optional), sorted, folders ending in `/`.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, SecretsError> {
        let folder = prefix.strip_suffix('/').unwrap_or(prefix);
        let prefix = if folder.is_empty() {
            String::new()
        } else {
            validate_path(folder)?;
            format!("{folder}/")
        };
        let chars = i64::try_from(prefix.chars().count()).unwrap_or(i64::MAX);
        // substr rather than LIKE: SQLite's LIKE ignores ASCII case, and
        // a path may hold `%` or `_`.
        let rows = sqlx::query(
            "SELECT path FROM kv_metadata WHERE substr(path, 1, CAST($2 AS INTEGER)) = $1",
        )
        .bind(&prefix)
        .bind(chars)
        .fetch_all(self.store.pool())
        .await?;
        let mut children = BTreeSet::new();
        for row in rows {
            let path: String = row.try_get("path")?;
            let Some(rest) = path.strip_prefix(&prefix) else {
                continue;
            };
            match rest.split_once('/') {
                Some((dir, _)) => children.insert(format!("{dir}/")),
                None => children.insert(rest.to_owned()),
            };
        }
        Ok(children.into_iter().collect())
    }

    /// Soft-deletes the current version (a no-op if it is already deleted
    /// or destroyed, or the path does not exist).
    pub async fn delete_latest(&self, path: &str) -> Result<(), SecretsError> {
        validate_path(path)?;
        sqlx::query(
            "UPDATE kv_versions SET deletion_time = $2 WHERE path = $1 AND destroyed = 0 \
             AND (deletion_time = 0 OR deletion_time > $2) \
             AND version = (SELECT current_version FROM kv_metadata WHERE path = $1)",
        )
        .bind(path)
        .bind(now_millis())
        .execute(self.store.pool())
        .await?;
        Ok(())
    }

    /// Soft-deletes the given versions; unknown, deleted or destroyed ones
    /// are skipped, as Vault does.
    pub async fn delete_versions(&self, path: &str, versions: &[u64]) -> Result<(), SecretsError> {
        self.for_versions(
            path,
            versions,
            "UPDATE kv_versions SET deletion_time = $3 WHERE path = $1 AND version = $2 \
             AND destroyed = 0 AND (deletion_time = 0 OR deletion_time > $3)",
            true,
        )
        .await
    }

    /// Restores soft-deleted versions (destroyed ones stay destroyed).
    pub async fn undelete(&self, path: &str, versions: &[u64]) -> Result<(), SecretsError> {
        self.for_versions(
            path,
            versions,
            "UPDATE kv_versions SET deletion_time = 0 WHERE path = $1 AND version = $2 \
             AND destroyed = 0",
            false,
        )
        .await
    }

    /// Destroys versions: their ciphertext is gone for good.
    pub async fn destroy(&self, path: &str, versions: &[u64]) -> Result<(), SecretsError> {
        self.for_versions(
            path,
            versions,
            "UPDATE kv_versions SET destroyed = 1, ciphertext = NULL \
             WHERE path = $1 AND version = $2",
            false,
        )
        .await
    }

    /// Removes the path: every version, its metadata and its data key.
    pub async fn delete_metadata(&self, path: &str) -> Result<(), SecretsError> {
        validate_path(path)?;
        let mut tx = self.store.pool().begin().await?;
        sqlx::query("DELETE FROM kv_versions WHERE path = $1")
            .bind(path)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM kv_metadata WHERE path = $1")
            .bind(path)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        if let Ok(mut deks) = self.deks.lock() {
            deks.remove(path);
        }
        Ok(())
    }

    /// Changes the fields given (creating the path's metadata, with no
    /// version, if it does not exist yet). Lowering `max_versions` prunes at
    /// the next write, as in Vault.
    pub async fn update_metadata(
        &self,
        path: &str,
        update: MetadataUpdate,
    ) -> Result<(), SecretsError> {
        validate_path(path)?;
        let bad = SecretsError::InvalidRequest;
        let max_versions = update
            .max_versions
            .map(|n| i64::try_from(n).map_err(|_| bad(format!("max_versions `{n}` is too large"))))
            .transpose()?;
        let dva = update
            .delete_version_after
            .map(|d| {
                i64::try_from(d.as_millis())
                    .map_err(|_| bad("delete_version_after is too large".into()))
            })
            .transpose()?;
        let custom = match &update.custom_metadata {
            Some(map) => {
                validate_custom(map)?;
                Some(serde_json::to_string(map).map_err(|e| bad(format!("custom_metadata: {e}")))?)
            }
            None => None,
        };
        let kek = self.kek(KEK_NAME).await?;
        let candidate = new_wrapped_dek(kek.as_ref(), path)?;
        let now = now_millis();
        let mut tx = self.store.pool().begin().await?;
        insert_metadata_if_absent(&mut tx, path, now, kek.name(), &candidate).await?;
        sqlx::query(
            "UPDATE kv_metadata SET max_versions = COALESCE($2, max_versions), \
             cas_required = COALESCE($3, cas_required), \
             delete_version_after_ms = COALESCE($4, delete_version_after_ms), \
             custom_metadata = CASE WHEN $5 = 1 THEN $6 ELSE custom_metadata END, \
             updated_at = $7 WHERE path = $1",
        )
        .bind(path)
        .bind(max_versions)
        .bind(update.cas_required.map(i64::from))
        .bind(dva)
        .bind(i64::from(custom.is_some()))
        .bind(custom)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Runs `sql` (`$1` path, `$2` version, `$3` now if `with_now`) once
    /// per version, in one transaction.
    async fn for_versions(
        &self,
        path: &str,
        versions: &[u64],
        sql: &'static str,
        with_now: bool,
    ) -> Result<(), SecretsError> {
        validate_path(path)?;
        if versions.is_empty() {
            return Err(SecretsError::InvalidRequest(
                "no version number provided".into(),
            ));
        }
        let now = now_millis();
        let mut tx = self.store.pool().begin().await?;
        for &v in versions {
            // A version beyond i64 cannot exist: nothing to do.
            let Ok(v) = i64::try_from(v) else { continue };
            let q = sqlx::query(sql).bind(path).bind(v);
            let q = if with_now { q.bind(now) } else { q };
            q.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The named KEK. One that existing secrets depend on must already be in
    /// the key manager: creating a fresh key under the same name would turn
    /// a lost key file into silent "decryption failed" errors forever.
    async fn kek(&self, name: &str) -> Result<Arc<dyn Sealer>, SecretsError> {
        if let Some(s) = self.keks.lock().ok().and_then(|k| k.get(name).cloned()) {
            return Ok(s);
        }
        let in_use = sqlx::query("SELECT 1 AS one FROM kv_metadata WHERE kek_name = $1 LIMIT 1")
            .bind(name)
            .fetch_optional(self.store.reader())
            .await?
            .is_some();
        if in_use && !self.keys.list().await?.iter().any(|k| k == name) {
            return Err(SecretsError::Decrypt(format!(
                "key-encryption key `{name}` is missing from the key manager ({}): \
                 the secrets it protects cannot be decrypted",
                self.keys.describe()
            )));
        }
        let sealer = self.keys.sealer(name).await?;
        if let Ok(mut keks) = self.keks.lock() {
            keks.insert(name.to_owned(), sealer.clone());
        }
        Ok(sealer)
    }

    /// The path's unwrapped data key, from the cache when the wrapped form
    /// still matches.
    async fn dek(
        &self,
        path: &str,
        kek_name: &str,
        wrapped: &[u8],
    ) -> Result<Arc<DataKey>, SecretsError> {
        if let Some(key) = self.deks.lock().ok().and_then(|d| {
            d.get(path)
                .filter(|c| c.wrapped == wrapped)
                .map(|c| c.key.clone())
        }) {
            return Ok(key);
        }
        let kek = self.kek(kek_name).await?;
        let mut raw = kek.open(wrapped, &dek_aad(path)).map_err(|e| {
            SecretsError::Decrypt(format!("the data key of `{path}` did not unwrap: {e}"))
        })?;
        let key = DataKey::new(&raw);
        wipe(&mut raw);
        let key = Arc::new(key.ok_or_else(|| {
            SecretsError::Decrypt(format!("the data key of `{path}` is malformed"))
        })?);
        if let Ok(mut deks) = self.deks.lock() {
            if deks.len() >= DEK_CACHE_LIMIT {
                deks.clear();
            }
            deks.insert(
                path.to_owned(),
                CachedDek {
                    wrapped: wrapped.to_vec(),
                    key: key.clone(),
                },
            );
        }
        Ok(key)
    }
}

async fn insert_metadata_if_absent(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    path: &str,
    now: i64,
    kek_name: &str,
    wrapped_dek: &[u8],
) -> Result<(), SecretsError> {
    // First statement of the transaction and a write: it takes SQLite's
    // write lock up front (waiting on busy_timeout), so no read-to-write
    // upgrade can fail with SQLITE_BUSY later in the transaction.
    sqlx::query(
        "INSERT INTO kv_metadata (path, current_version, oldest_version, max_versions, \
         cas_required, delete_version_after_ms, custom_metadata, created_at, updated_at, \
         kek_name, wrapped_dek) VALUES ($1, 0, 0, 0, 0, 0, NULL, $2, $2, $3, $4) \
         ON CONFLICT (path) DO NOTHING",
    )
    .bind(path)
    .bind(now)
    .bind(kek_name)
    .bind(wrapped_dek)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

// === impl DataKey ===

/// An unwrapped per-path data key. aws-lc holds the key schedule in memory
/// that it cleanses when the key is dropped; the raw bytes are zeroed as
/// soon as the key is built.
struct DataKey(RandomizedNonceKey);

impl DataKey {
    fn new(raw: &[u8]) -> Option<Self> {
        if raw.len() != DEK_LEN {
            return None;
        }
        RandomizedNonceKey::new(&AES_256_GCM, raw).ok().map(Self)
    }

    /// nonce ‖ ciphertext ‖ tag.
    fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, SecretsError> {
        let mut body = Vec::with_capacity(plaintext.len() + TAG_LEN);
        body.extend_from_slice(plaintext);
        let nonce = self
            .0
            .seal_in_place_append_tag(Aad::from(aad), &mut body)
            .map_err(|_| SecretsError::Decrypt("sealing a secret failed".into()))?;
        let mut out = Vec::with_capacity(NONCE_LEN + body.len());
        out.extend_from_slice(nonce.as_ref());
        out.extend_from_slice(&body);
        Ok(out)
    }

    fn open(&self, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, ()> {
        let (nonce, body) = sealed.split_at_checked(NONCE_LEN).ok_or(())?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| ())?;
        let mut buf = body.to_vec();
        let len = self
            .0
            .open_in_place(nonce, Aad::from(aad), &mut buf)
            .map_err(|_| ())?
            .len();
        buf.truncate(len);
        Ok(buf)
    }
}

fn new_wrapped_dek(kek: &dyn Sealer, path: &str) -> Result<Vec<u8>, SecretsError> {
    let mut raw = [0u8; DEK_LEN];
    SystemRandom::new()
        .fill(&mut raw)
        .map_err(|_| SecretsError::Decrypt("no randomness for a data key".into()))?;
    let wrapped = kek.seal(&raw, &dek_aad(path));
    wipe(&mut raw);
    Ok(wrapped?)
}

/// Associated data of a wrapped DEK: binds it to its path.
fn dek_aad(path: &str) -> Vec<u8> {
    let mut aad = b"keyless/kv-v2/dek\0".to_vec();
    aad.extend_from_slice(path.as_bytes());
    aad
}

/// Associated data of a sealed value: binds it to its path and version (a
/// path holds no NUL, so the encoding is unambiguous).
fn value_aad(path: &str, version: u64) -> Vec<u8> {
    let mut aad = b"keyless/kv-v2/value\0".to_vec();
    aad.extend_from_slice(path.as_bytes());
    aad.push(0);
    aad.extend_from_slice(&version.to_be_bytes());
    aad
}

/// Checks a secret path: not empty, at most [`MAX_PATH_LEN`] bytes, no
/// empty, `.` or `..` segment (so no leading, trailing or doubled `/`), no
/// control character (NUL included).
pub fn validate_path(path: &str) -> Result<(), SecretsError> {
    let bad = |why: &str| {
        SecretsError::InvalidRequest(format!(
            "invalid secret path `{}`: {why}",
            path.escape_debug()
        ))
    };
    if path.is_empty() {
        return Err(SecretsError::InvalidRequest("secret path is empty".into()));
    }
    if path.len() > MAX_PATH_LEN {
        return Err(SecretsError::InvalidRequest(format!(
            "secret path is {} bytes long, more than {MAX_PATH_LEN}",
            path.len()
        )));
    }
    if path.chars().any(char::is_control) {
        return Err(bad("control characters are not allowed"));
    }
    for segment in path.split('/') {
        match segment {
            "" => return Err(bad("empty segment (leading, trailing or doubled `/`)")),
            "." | ".." => return Err(bad("`.` and `..` segments are not allowed")),
            _ => {}
        }
    }
    Ok(())
}

fn validate_custom(map: &BTreeMap<String, String>) -> Result<(), SecretsError> {
    let bad = SecretsError::InvalidRequest;
    if map.len() > MAX_CUSTOM_KEYS {
        return Err(bad(format!(
            "custom_metadata has {} keys, at most {MAX_CUSTOM_KEYS} are allowed",
            map.len()
        )));
    }
    for (k, v) in map {
        if k.is_empty() || k.len() > MAX_CUSTOM_KEY_LEN {
            return Err(bad(format!(
                "custom_metadata key `{k}` must be 1 to {MAX_CUSTOM_KEY_LEN} bytes"
            )));
        }
        if v.len() > MAX_CUSTOM_VALUE_LEN {
            return Err(bad(format!(
                "custom_metadata value of `{k}` is longer than {MAX_CUSTOM_VALUE_LEN} bytes"
            )));
        }
        if k.chars().chain(v.chars()).any(char::is_control) {
            return Err(bad(format!(
                "custom_metadata `{}` holds a control character",
                k.escape_debug()
            )));
        }
    }
    Ok(())
}

fn parse_custom(raw: Option<String>) -> Result<Option<BTreeMap<String, String>>, SecretsError> {
    raw.map(|s| {
        serde_json::from_str(&s).map_err(|e| {
            SecretsError::Store(keyless_store::StoreError::Database(sqlx::Error::Decode(
                Box::new(e),
            )))
        })
    })
    .transpose()
}

/// Overwrites secret bytes before they are freed; `black_box` keeps the
/// compiler from removing the writes as dead stores (best effort, no `unsafe`).
fn wipe(buf: &mut [u8]) {
    buf.fill(0);
    std::hint::black_box(buf);
}

fn is_deleted(deletion_time: i64, now: i64) -> bool {
    deletion_time != 0 && deletion_time <= now
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// RFC 3339 with the fraction trimmed as Go's `RFC3339Nano` does
/// (`2026-01-02T03:04:05.12Z`, or no fraction at a whole second).
pub fn rfc3339(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(to_u64(ms));
    let s = humantime::format_rfc3339_millis(t).to_string();
    match s.strip_suffix('Z').and_then(|b| b.split_once('.')) {
        Some((whole, frac)) => {
            let frac = frac.trim_end_matches('0');
            if frac.is_empty() {
                format!("{whole}Z")
            } else {
                format!("{whole}.{frac}Z")
            }
        }
        None => s,
    }
}

fn optional_time(ms: i64) -> String {
    if ms == 0 { String::new() } else { rfc3339(ms) }
}

/// A duration as Go's `time.Duration.String` prints it (`0s`, `500ms`,
/// `1m30s`, `1h0m0s`, `1.5s`), which is what Vault returns.
fn go_duration(ms: u64) -> String {
    if ms == 0 {
        return "0s".into();
    }
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let (h, m, s, frac) = (ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000);
    let secs = if frac == 0 {
        format!("{s}s")
    } else {
        format!("{s}.{}s", format!("{frac:03}").trim_end_matches('0'))
    };
    match (h, m) {
        (0, 0) => secs,
        (0, m) => format!("{m}m{secs}"),
        (h, m) => format!("{h}h{m}m{secs}"),
    }
}

/// Seconds as a JSON number, or a duration string (`"90"`, `"1h30m"`).
fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Secs(u64),
        Text(String),
    }
    match Option::<Raw>::deserialize(d)? {
        None => Ok(None),
        Some(Raw::Secs(s)) => Ok(Some(Duration::from_secs(s))),
        Some(Raw::Text(t)) => crate::parse_duration(&t)
            .map(Some)
            .map_err(serde::de::Error::custom),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_validated_with_clear_errors() {
        for ok in ["a", "a/b", "team-1/db.password", "x/y/z_%"] {
            assert!(validate_path(ok).is_ok(), "{ok}");
        }
        let long = "a".repeat(MAX_PATH_LEN + 1);
        for (bad, why) in [
            ("", "empty"),
            ("/a", "empty segment"),
            ("a/", "empty segment"),
            ("a//b", "empty segment"),
            ("a/../b", "`..`"),
            ("./a", "`..`"),
            ("a\0b", "control"),
            ("a\nb", "control"),
            (long.as_str(), "more than 512"),
        ] {
            let e = validate_path(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
    }

    #[test]
    fn times_and_durations_print_like_go() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_521_685_446_945), "2018-03-22T02:24:06.945Z");
        assert_eq!(rfc3339(1_521_685_446_900), "2018-03-22T02:24:06.9Z");
        assert_eq!(go_duration(0), "0s");
        assert_eq!(go_duration(500), "500ms");
        assert_eq!(go_duration(1_500), "1.5s");
        assert_eq!(go_duration(90_000), "1m30s");
        assert_eq!(go_duration(3_600_000), "1h0m0s");
        assert_eq!(go_duration(12_319_000), "3h25m19s");
    }

    #[test]
    fn metadata_update_parses_vault_bodies() {
        let u: MetadataUpdate = serde_json::from_str(
            r#"{"max_versions":5,"cas_required":true,"delete_version_after":"3h25m19s","custom_metadata":{"a":"b"}}"#,
        )
        .unwrap();
        assert_eq!(u.max_versions, Some(5));
        assert_eq!(u.cas_required, Some(true));
        assert_eq!(u.delete_version_after, Some(Duration::from_secs(12_319)));
        let u: MetadataUpdate = serde_json::from_str(r#"{"delete_version_after":60}"#).unwrap();
        assert_eq!(u.delete_version_after, Some(Duration::from_secs(60)));
        assert_eq!(u.max_versions, None);
        assert!(
            serde_json::from_str::<MetadataUpdate>(r#"{"delete_version_after":"soon"}"#).is_err()
        );
    }

    #[test]
    fn data_keys_bind_their_associated_data() {
        let k = DataKey::new(&[7u8; DEK_LEN]).unwrap();
        let sealed = k.seal(b"hello", b"p\0v1").unwrap();
        assert_eq!(k.open(&sealed, b"p\0v1").unwrap(), b"hello");
        assert!(k.open(&sealed, b"p\0v2").is_err());
        assert!(k.open(&sealed[..5], b"p\0v1").is_err());
        assert!(DataKey::new(&[1u8; 16]).is_none());
    }
}
