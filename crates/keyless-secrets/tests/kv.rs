//! KV v2 engine tests against both backends (SQLite always, PostgreSQL when
//! one answers): Vault semantics (versions, check-and-set, soft delete,
//! undelete, destroy, pruning, metadata and list shapes) and the at-rest
//! guarantees (a database dump holds no secret, a moved or altered
//! ciphertext fails to decrypt, a lost KEK is reported clearly, data
//! survives a restart).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use keyless_secrets::SecretsError;
use keyless_secrets::kv::{Kv, MetadataUpdate};
use keyless_store::sqlx::{self, Row};
use keyless_store::{Dialect, FileKeyManager, Store};
use serde_json::{Map, Value, json};

struct Env {
    name: &'static str,
    url: String,
    key_dir: PathBuf,
    store: Store,
    kv: Arc<Kv>,
    _tmp: tempfile::TempDir,
}

impl Env {
    async fn open(name: &'static str, url: String, tmp: tempfile::TempDir) -> Env {
        let key_dir = tmp.path().join("keys");
        let store = Store::open(&url).await.unwrap();
        let keys = Arc::new(FileKeyManager::open(&key_dir).unwrap());
        let kv = Kv::open(store.clone(), keys).await.unwrap();
        Env {
            name,
            url,
            key_dir,
            store,
            kv,
            _tmp: tmp,
        }
    }

    /// Closes everything and opens it again from disk (a restart).
    async fn reopen(self) -> Env {
        self.store.close().await;
        let Env {
            name, url, _tmp, ..
        } = self;
        Env::open(name, url, _tmp).await
    }
}

/// SQLite always; PostgreSQL too when a server answers (else a SKIPPED line).
async fn envs(label: &str) -> Vec<Env> {
    let tmp = tempfile::tempdir().unwrap();
    let url = format!(
        "sqlite://{}?mode=rwc",
        tmp.path().join("keyless.db").display()
    );
    let mut out = vec![Env::open("sqlite", url, tmp).await];
    if let Some(url) = keyless_store::testing::fresh_postgres_database(label).await {
        out.push(Env::open("postgres", url, tempfile::tempdir().unwrap()).await);
    }
    out
}

fn obj(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        other => panic!("not an object: {other}"),
    }
}

fn keys_of(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
    k.sort();
    k
}

#[tokio::test]
async fn versions_start_at_one_and_each_is_readable() {
    for env in envs("kv_versions").await {
        let kv = &env.kv;
        assert!(kv.get("app/db", None).await.unwrap().is_none());
        assert!(!kv.exists("app/db").await.unwrap());
        let m1 = kv
            .put("app/db", obj(json!({"password": "one"})), None)
            .await
            .unwrap();
        let m2 = kv
            .put("app/db", obj(json!({"password": "two"})), None)
            .await
            .unwrap();
        assert_eq!((m1.version, m2.version), (1, 2), "{}", env.name);
        assert_eq!(m2.deletion_time, "");
        assert!(!m2.destroyed);

        assert!(kv.exists("app/db").await.unwrap());
        assert!(!kv.exists("app").await.unwrap());
        assert!(matches!(
            kv.exists("app/").await,
            Err(SecretsError::InvalidRequest(_))
        ));
        let latest = kv.get("app/db", None).await.unwrap().unwrap();
        assert_eq!(latest.data.unwrap()["password"], "two");
        assert_eq!(latest.meta, m2);
        let zero = kv.get("app/db", Some(0)).await.unwrap().unwrap();
        assert_eq!(zero.meta.version, 2, "version 0 means the latest");
        let first = kv.get("app/db", Some(1)).await.unwrap().unwrap();
        assert_eq!(first.data.unwrap()["password"], "one");
        assert!(kv.get("app/db", Some(3)).await.unwrap().is_none());
        assert!(kv.get("app/db", Some(u64::MAX)).await.unwrap().is_none());
        assert!(kv.get("app", None).await.unwrap().is_none());

        let meta = kv.metadata("app/db").await.unwrap().unwrap();
        assert_eq!(meta.current_version, 2);
        assert_eq!(
            meta.versions.keys().copied().collect::<Vec<_>>(),
            vec![1, 2]
        );
    }
}

#[tokio::test]
async fn check_and_set_conflicts_change_nothing() {
    for env in envs("kv_cas").await {
        let kv = &env.kv;
        // cas on a path that does not exist creates nothing.
        let e = kv
            .put("c", obj(json!({"k": "v"})), Some(3))
            .await
            .unwrap_err();
        assert!(
            matches!(e, SecretsError::Conflict(ref m) if m.contains("did not match")),
            "{e}"
        );
        assert!(kv.metadata("c").await.unwrap().is_none(), "{}", env.name);
        assert!(kv.list("").await.unwrap().is_empty());

        assert_eq!(
            kv.put("c", obj(json!({"k": 1})), Some(0))
                .await
                .unwrap()
                .version,
            1
        );
        let e = kv
            .put("c", obj(json!({"k": 2})), Some(0))
            .await
            .unwrap_err();
        assert!(matches!(e, SecretsError::Conflict(_)), "{e}");
        assert_eq!(
            kv.put("c", obj(json!({"k": 2})), Some(1))
                .await
                .unwrap()
                .version,
            2
        );
        let e = kv
            .put("c", obj(json!({"k": 3})), Some(1))
            .await
            .unwrap_err();
        assert!(matches!(e, SecretsError::Conflict(_)), "{e}");

        kv.update_metadata(
            "c",
            MetadataUpdate {
                cas_required: Some(true),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        let e = kv.put("c", obj(json!({"k": 3})), None).await.unwrap_err();
        assert!(
            matches!(e, SecretsError::InvalidRequest(ref m) if m == "check-and-set parameter required for this call"),
            "{e}"
        );
        assert_eq!(
            kv.put("c", obj(json!({"k": 3})), Some(2))
                .await
                .unwrap()
                .version,
            3
        );
        let meta = kv.metadata("c").await.unwrap().unwrap();
        assert_eq!(meta.current_version, 3);
        assert_eq!(meta.versions.len(), 3);
        assert_eq!(
            kv.get("c", None).await.unwrap().unwrap().data.unwrap()["k"],
            3
        );
    }
}

#[tokio::test]
async fn concurrent_writers_get_distinct_versions() {
    for env in envs("kv_concurrent").await {
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let kv = env.kv.clone();
                tokio::spawn(async move { kv.put("hot", obj(json!({"i": i})), None).await })
            })
            .collect();
        let mut versions = Vec::new();
        for t in tasks {
            versions.push(t.await.unwrap().unwrap().version);
        }
        versions.sort_unstable();
        assert_eq!(versions, (1..=8).collect::<Vec<_>>(), "{}", env.name);
    }
}

#[tokio::test]
async fn soft_delete_undelete_and_destroy_follow_vault() {
    for env in envs("kv_delete").await {
        let kv = &env.kv;
        for i in 1..=3 {
            kv.put("s", obj(json!({"v": i})), None).await.unwrap();
        }
        // Delete latest: version 3 unreadable but its metadata says why.
        kv.delete_latest("s").await.unwrap();
        let r = kv.get("s", None).await.unwrap().unwrap();
        assert!(r.data.is_none(), "{}", env.name);
        assert_eq!(r.meta.version, 3);
        assert_ne!(r.meta.deletion_time, "");
        assert!(!r.meta.destroyed);
        let first_deletion = r.meta.deletion_time.clone();
        // Deleting again keeps the first deletion time.
        kv.delete_latest("s").await.unwrap();
        assert_eq!(
            kv.get("s", None).await.unwrap().unwrap().meta.deletion_time,
            first_deletion
        );
        assert_eq!(
            kv.get("s", Some(2)).await.unwrap().unwrap().data.unwrap()["v"],
            2
        );

        kv.undelete("s", &[3]).await.unwrap();
        let r = kv.get("s", None).await.unwrap().unwrap();
        assert_eq!(r.data.unwrap()["v"], 3);
        assert_eq!(r.meta.deletion_time, "");

        kv.delete_versions("s", &[1, 2, 99]).await.unwrap();
        assert!(kv.get("s", Some(1)).await.unwrap().unwrap().data.is_none());
        assert!(kv.get("s", Some(2)).await.unwrap().unwrap().data.is_none());

        kv.destroy("s", &[2]).await.unwrap();
        let r = kv.get("s", Some(2)).await.unwrap().unwrap();
        assert!(r.data.is_none());
        assert!(r.meta.destroyed);
        // Destroyed is forever: undelete does not bring it back, and the
        // ciphertext is gone from the database.
        kv.undelete("s", &[1, 2]).await.unwrap();
        assert!(kv.get("s", Some(2)).await.unwrap().unwrap().data.is_none());
        assert_eq!(
            kv.get("s", Some(1)).await.unwrap().unwrap().data.unwrap()["v"],
            1
        );
        let row =
            sqlx::query("SELECT ciphertext FROM kv_versions WHERE path = 's' AND version = 2")
                .fetch_one(env.store.pool())
                .await
                .unwrap();
        assert!(
            row.try_get::<Option<Vec<u8>>, _>("ciphertext")
                .unwrap()
                .is_none()
        );
        let meta = kv.metadata("s").await.unwrap().unwrap();
        assert!(meta.versions[&2].destroyed);
        assert!(!meta.versions[&1].destroyed);
        // Deleting or undeleting a destroyed version leaves it as it is.
        let before = kv.metadata("s").await.unwrap().unwrap().versions[&2].clone();
        kv.delete_versions("s", &[2]).await.unwrap();
        kv.undelete("s", &[2]).await.unwrap();
        assert_eq!(
            kv.metadata("s").await.unwrap().unwrap().versions[&2],
            before
        );

        for op in ["delete", "undelete", "destroy"] {
            let r = match op {
                "delete" => kv.delete_versions("s", &[]).await,
                "undelete" => kv.undelete("s", &[]).await,
                _ => kv.destroy("s", &[]).await,
            };
            assert!(matches!(r, Err(SecretsError::InvalidRequest(_))), "{op}");
        }
        // Operations on a path that does not exist are no-ops, as in Vault.
        kv.delete_latest("nope").await.unwrap();
        kv.destroy("nope", &[1]).await.unwrap();
        assert!(kv.metadata("nope").await.unwrap().is_none());

        kv.delete_metadata("s").await.unwrap();
        assert!(kv.metadata("s").await.unwrap().is_none());
        assert!(kv.get("s", Some(1)).await.unwrap().is_none());
        let count: i64 = sqlx::query("SELECT COUNT(*) AS n FROM kv_versions WHERE path = 's'")
            .fetch_one(env.store.pool())
            .await
            .unwrap()
            .try_get("n")
            .unwrap();
        assert_eq!(count, 0);
        // A recreated path starts again at version 1 with a new data key.
        assert_eq!(
            kv.put("s", obj(json!({"v": "new"})), Some(0))
                .await
                .unwrap()
                .version,
            1
        );
        assert_eq!(
            kv.get("s", None).await.unwrap().unwrap().data.unwrap()["v"],
            "new"
        );
    }
}

#[tokio::test]
async fn max_versions_prunes_the_oldest() {
    for env in envs("kv_prune").await {
        let kv = &env.kv;
        // The default keeps 10.
        for i in 1..=12 {
            kv.put("d", obj(json!({"i": i})), None).await.unwrap();
        }
        let meta = kv.metadata("d").await.unwrap().unwrap();
        assert_eq!(
            meta.versions.keys().copied().collect::<Vec<_>>(),
            (3..=12).collect::<Vec<_>>()
        );
        assert_eq!(
            (meta.oldest_version, meta.max_versions),
            (3, 0),
            "{}",
            env.name
        );
        assert!(kv.get("d", Some(2)).await.unwrap().is_none());
        assert_eq!(
            kv.get("d", Some(3)).await.unwrap().unwrap().data.unwrap()["i"],
            3
        );

        // Before any pruning, oldest_version is 0 (Vault's shape).
        kv.update_metadata(
            "p",
            MetadataUpdate {
                max_versions: Some(3),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        kv.put("p", obj(json!({"i": 1})), None).await.unwrap();
        assert_eq!(kv.metadata("p").await.unwrap().unwrap().oldest_version, 0);
        for i in 2..=5 {
            kv.put("p", obj(json!({"i": i})), None).await.unwrap();
        }
        let meta = kv.metadata("p").await.unwrap().unwrap();
        assert_eq!(
            meta.versions.keys().copied().collect::<Vec<_>>(),
            vec![3, 4, 5]
        );
        assert_eq!(
            (meta.oldest_version, meta.max_versions, meta.current_version),
            (3, 3, 5)
        );

        // Lowering max_versions prunes at the next write.
        kv.update_metadata(
            "d",
            MetadataUpdate {
                max_versions: Some(2),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        kv.put("d", obj(json!({"i": 13})), None).await.unwrap();
        let meta = kv.metadata("d").await.unwrap().unwrap();
        assert_eq!(
            meta.versions.keys().copied().collect::<Vec<_>>(),
            vec![12, 13]
        );
        assert_eq!(meta.oldest_version, 12);
    }
}

#[tokio::test]
async fn metadata_and_reads_serialize_as_vault_does() {
    for env in envs("kv_shape").await {
        let kv = &env.kv;
        let written = kv.put("shape", obj(json!({"a": "b"})), None).await.unwrap();
        let w = serde_json::to_value(&written).unwrap();
        assert_eq!(
            keys_of(&w),
            [
                "created_time",
                "custom_metadata",
                "deletion_time",
                "destroyed",
                "version"
            ]
        );
        assert_eq!(w["custom_metadata"], Value::Null);
        assert_eq!(w["deletion_time"], "");
        assert_eq!(w["destroyed"], false);
        assert_eq!(w["version"], 1);
        let created = w["created_time"].as_str().unwrap();
        assert!(
            created.len() >= 20 && created.ends_with('Z') && created.contains('T'),
            "{created}"
        );

        let read = serde_json::to_value(kv.get("shape", None).await.unwrap().unwrap()).unwrap();
        assert_eq!(keys_of(&read), ["data", "metadata"]);
        assert_eq!(read["data"], json!({"a": "b"}));
        assert_eq!(read["metadata"], w);

        let m = serde_json::to_value(kv.metadata("shape").await.unwrap().unwrap()).unwrap();
        assert_eq!(
            keys_of(&m),
            [
                "cas_required",
                "created_time",
                "current_version",
                "custom_metadata",
                "delete_version_after",
                "max_versions",
                "oldest_version",
                "updated_time",
                "versions"
            ],
            "{}",
            env.name
        );
        assert_eq!(m["cas_required"], false);
        assert_eq!(m["current_version"], 1);
        assert_eq!(m["delete_version_after"], "0s");
        assert_eq!(m["max_versions"], 0);
        assert_eq!(m["oldest_version"], 0);
        assert_eq!(m["custom_metadata"], Value::Null);
        assert_eq!(keys_of(&m["versions"]), ["1"]);
        assert_eq!(
            m["versions"]["1"],
            json!({"created_time": created, "deletion_time": "", "destroyed": false})
        );

        let update: MetadataUpdate = serde_json::from_value(json!({
            "custom_metadata": {"owner": "team-a"},
            "delete_version_after": "1h",
            "cas_required": true
        }))
        .unwrap();
        kv.update_metadata("shape", update).await.unwrap();
        let m = serde_json::to_value(kv.metadata("shape").await.unwrap().unwrap()).unwrap();
        assert_eq!(m["custom_metadata"], json!({"owner": "team-a"}));
        assert_eq!(m["delete_version_after"], "1h0m0s");
        assert_eq!(m["cas_required"], true);
        assert_eq!(m["max_versions"], 0, "fields not given are left alone");
        // The path's custom metadata rides along in every data read.
        let r = kv.get("shape", None).await.unwrap().unwrap();
        assert_eq!(r.meta.custom_metadata.unwrap()["owner"], "team-a");

        // Metadata may be written before any data, as in Vault.
        kv.update_metadata("empty", MetadataUpdate::default())
            .await
            .unwrap();
        let m = kv.metadata("empty").await.unwrap().unwrap();
        assert_eq!((m.current_version, m.versions.len()), (0, 0));
        assert!(kv.get("empty", None).await.unwrap().is_none());
    }
}

#[tokio::test]
async fn delete_version_after_schedules_deletion() {
    for env in envs("kv_dva").await {
        let kv = &env.kv;
        kv.update_metadata(
            "later",
            MetadataUpdate {
                delete_version_after: Some(Duration::from_secs(3600)),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        let w = kv.put("later", obj(json!({"x": 1})), None).await.unwrap();
        assert_ne!(w.deletion_time, "", "a scheduled deletion time is shown");
        assert!(kv.get("later", None).await.unwrap().unwrap().data.is_some());

        kv.update_metadata(
            "soon",
            MetadataUpdate {
                delete_version_after: Some(Duration::from_millis(1)),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        kv.put("soon", obj(json!({"x": 1})), None).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            kv.get("soon", None).await.unwrap().unwrap().data.is_none(),
            "{}",
            env.name
        );
        kv.undelete("soon", &[1]).await.unwrap();
        assert!(kv.get("soon", None).await.unwrap().unwrap().data.is_some());
    }
}

#[tokio::test]
async fn list_returns_direct_children_with_folders() {
    for env in envs("kv_list").await {
        let kv = &env.kv;
        for p in ["a", "b/c", "b/d/e", "b/d/f", "bb", "p%/x", "pq/y"] {
            kv.put(p, obj(json!({"k": "v"})), None).await.unwrap();
        }
        assert_eq!(
            kv.list("").await.unwrap(),
            ["a", "b/", "bb", "p%/", "pq/"],
            "{}",
            env.name
        );
        assert_eq!(kv.list("b").await.unwrap(), ["c", "d/"]);
        assert_eq!(kv.list("b/").await.unwrap(), ["c", "d/"]);
        assert_eq!(kv.list("b/d/").await.unwrap(), ["e", "f"]);
        assert_eq!(kv.list("p%/").await.unwrap(), ["x"], "no LIKE wildcards");
        assert!(kv.list("B/").await.unwrap().is_empty(), "case-sensitive");
        assert!(kv.list("zzz/").await.unwrap().is_empty());
        assert!(
            kv.list("a/").await.unwrap().is_empty(),
            "a secret is not a folder"
        );
        for bad in ["../", "b//", "/b/"] {
            assert!(
                matches!(kv.list(bad).await, Err(SecretsError::InvalidRequest(_))),
                "{bad}"
            );
        }
        // Soft-deleted and destroyed secrets are still listed; removed metadata is not.
        kv.delete_latest("a").await.unwrap();
        kv.delete_metadata("bb").await.unwrap();
        assert_eq!(kv.list("").await.unwrap(), ["a", "b/", "p%/", "pq/"]);
    }
}

#[tokio::test]
async fn bad_input_is_refused_and_changes_nothing() {
    for env in envs("kv_bad_input").await {
        let kv = &env.kv;
        kv.put("ok", obj(json!({"k": "v"})), None).await.unwrap();
        for bad in ["", "/ok", "ok/", "a//b", "a/../ok", "a\0b", "./ok"] {
            let e = kv.put(bad, obj(json!({"k": "v"})), None).await.unwrap_err();
            assert!(matches!(e, SecretsError::InvalidRequest(_)), "{bad:?}: {e}");
            assert!(matches!(
                kv.get(bad, None).await,
                Err(SecretsError::InvalidRequest(_))
            ));
            assert!(matches!(
                kv.delete_metadata(bad).await,
                Err(SecretsError::InvalidRequest(_))
            ));
        }
        let long = "x".repeat(513);
        assert!(matches!(
            kv.put(&long, Map::new(), None).await,
            Err(SecretsError::InvalidRequest(_))
        ));
        let huge = obj(json!({"blob": "z".repeat(1024 * 1024 + 1)}));
        let e = kv.put("big", huge, None).await.unwrap_err();
        assert!(
            matches!(e, SecretsError::InvalidRequest(ref m) if m.contains("bytes")),
            "{e}"
        );
        assert!(kv.metadata("big").await.unwrap().is_none());

        let too_many: std::collections::BTreeMap<String, String> =
            (0..65).map(|i| (format!("k{i}"), "v".to_owned())).collect();
        for custom in [
            too_many,
            [(String::new(), "v".to_owned())].into(),
            [("k".to_owned(), "v".repeat(513))].into(),
        ] {
            let e = kv
                .update_metadata(
                    "ok",
                    MetadataUpdate {
                        custom_metadata: Some(custom),
                        max_versions: Some(1),
                        ..Default::default()
                    },
                )
                .await
                .unwrap_err();
            assert!(matches!(e, SecretsError::InvalidRequest(_)), "{e}");
        }
        let m = kv.metadata("ok").await.unwrap().unwrap();
        assert_eq!(
            (m.max_versions, m.custom_metadata),
            (0, None),
            "{}",
            env.name
        );
        assert_eq!(kv.list("").await.unwrap(), ["ok"]);
    }
}

/// Every row of every table as text (PostgreSQL renders BYTEA as `\x` hex),
/// or the raw bytes of the SQLite files.
async fn dump(env: &Env) -> Vec<u8> {
    match env.store.dialect() {
        Dialect::Sqlite => {
            // Make sure everything written is in the files, then read them raw.
            sqlx::query("PRAGMA wal_checkpoint(FULL)")
                .execute(env.store.pool())
                .await
                .unwrap();
            let dir = env._tmp.path();
            let mut all = Vec::new();
            for e in std::fs::read_dir(dir).unwrap() {
                let p = e.unwrap().path();
                if p.is_file() {
                    all.extend(std::fs::read(&p).unwrap());
                }
            }
            all
        }
        Dialect::Postgres => {
            let tables = sqlx::query(
                "SELECT CAST(table_name AS TEXT) AS table_name FROM information_schema.tables \
                 WHERE table_schema = 'public' AND table_type = 'BASE TABLE'",
            )
            .fetch_all(env.store.pool())
            .await
            .unwrap();
            assert!(tables.len() > 5);
            let mut all = Vec::new();
            for t in tables {
                let name: String = t.try_get("table_name").unwrap();
                let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT CAST(t AS TEXT) AS r FROM \"{name}\" t"
                )))
                .fetch_all(env.store.pool())
                .await
                .unwrap();
                for r in rows {
                    all.extend(r.try_get::<String, _>("r").unwrap().into_bytes());
                    all.push(b'\n');
                }
            }
            all
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn a_database_dump_reveals_no_secret() {
    for env in envs("kv_dump").await {
        let secret = "kl-canary-5e1f0c9a7d-do-not-leak";
        let kv = &env.kv;
        kv.put("prod/api", obj(json!({"token": secret})), None)
            .await
            .unwrap();
        kv.put("prod/api", obj(json!({"token": secret, "v": 2})), None)
            .await
            .unwrap();
        kv.delete_latest("prod/api").await.unwrap();
        // Custom metadata is not secret (like Vault's): it doubles as a
        // positive control that the dump does see the tables' contents.
        kv.update_metadata(
            "prod/api",
            MetadataUpdate {
                custom_metadata: Some(
                    [("marker".to_owned(), "visible-marker-31337".to_owned())].into(),
                ),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        assert_eq!(
            kv.get("prod/api", Some(1))
                .await
                .unwrap()
                .unwrap()
                .data
                .unwrap()["token"],
            secret
        );

        let bytes = dump(&env).await;
        assert!(
            contains(&bytes, b"visible-marker-31337"),
            "{}: the dump sees the data",
            env.name
        );
        assert!(
            !contains(&bytes, secret.as_bytes()),
            "{}: plaintext secret in the dump",
            env.name
        );
        assert!(
            !contains(&bytes, hex::encode(secret).as_bytes()),
            "{}: hex secret in the dump",
            env.name
        );
        // Nor is the key-encryption key in the database.
        let kek = std::fs::read(env.key_dir.join("secrets-kek-1.aes256gcm.key")).unwrap();
        assert_eq!(kek.len(), 32);
        assert!(!contains(&bytes, &kek));
        assert!(!contains(&bytes, hex::encode(&kek).as_bytes()));
    }
}

async fn ciphertext(env: &Env, path: &str, version: i64) -> Vec<u8> {
    sqlx::query("SELECT ciphertext FROM kv_versions WHERE path = $1 AND version = $2")
        .bind(path)
        .bind(version)
        .fetch_one(env.store.pool())
        .await
        .unwrap()
        .try_get("ciphertext")
        .unwrap()
}

async fn set_ciphertext(env: &Env, path: &str, version: i64, c: Vec<u8>) {
    let done =
        sqlx::query("UPDATE kv_versions SET ciphertext = $3 WHERE path = $1 AND version = $2")
            .bind(path)
            .bind(version)
            .bind(c)
            .execute(env.store.pool())
            .await
            .unwrap();
    assert_eq!(done.rows_affected(), 1);
}

#[tokio::test]
async fn a_moved_or_altered_ciphertext_fails_to_decrypt() {
    for env in envs("kv_moved").await {
        let kv = &env.kv;
        kv.put("a", obj(json!({"v": "a1"})), None).await.unwrap();
        kv.put("a", obj(json!({"v": "a2"})), None).await.unwrap();
        kv.put("b", obj(json!({"v": "b1"})), None).await.unwrap();
        let a1 = ciphertext(&env, "a", 1).await;

        // Another version of the same path (same data key): the aad differs.
        set_ciphertext(&env, "a", 2, a1.clone()).await;
        let e = kv.get("a", Some(2)).await.unwrap_err();
        assert!(
            matches!(e, SecretsError::Decrypt(ref m) if m.contains("version 2 of `a`")),
            "{}: {e}",
            env.name
        );
        // Another path (another data key and aad).
        set_ciphertext(&env, "b", 1, a1.clone()).await;
        assert!(matches!(
            kv.get("b", None).await,
            Err(SecretsError::Decrypt(_))
        ));
        // One flipped bit.
        let mut flipped = a1.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0x01;
        set_ciphertext(&env, "a", 1, flipped).await;
        assert!(matches!(
            kv.get("a", Some(1)).await,
            Err(SecretsError::Decrypt(_))
        ));
        // The original bytes in place read fine again.
        set_ciphertext(&env, "a", 1, a1.clone()).await;
        assert_eq!(
            kv.get("a", Some(1)).await.unwrap().unwrap().data.unwrap()["v"],
            "a1"
        );

        // A whole secret moved: data key and ciphertext copied from `a` to
        // `c` — the data key is bound to its path.
        kv.put("c", obj(json!({"v": "c1"})), None).await.unwrap();
        let a_dek: Vec<u8> = sqlx::query("SELECT wrapped_dek FROM kv_metadata WHERE path = 'a'")
            .fetch_one(env.store.pool())
            .await
            .unwrap()
            .try_get("wrapped_dek")
            .unwrap();
        sqlx::query("UPDATE kv_metadata SET wrapped_dek = $1 WHERE path = 'c'")
            .bind(a_dek)
            .execute(env.store.pool())
            .await
            .unwrap();
        set_ciphertext(&env, "c", 1, a1).await;
        let e = kv.get("c", None).await.unwrap_err();
        assert!(
            matches!(e, SecretsError::Decrypt(ref m) if m.contains("data key")),
            "{e}"
        );
    }
}

#[tokio::test]
async fn a_deleted_kek_file_is_a_clear_error() {
    for env in envs("kv_lost_kek").await {
        env.kv
            .put("x/y", obj(json!({"k": "v"})), None)
            .await
            .unwrap();
        let kek_file = env.key_dir.join("secrets-kek-1.aes256gcm.key");
        std::fs::remove_file(&kek_file).unwrap();
        let env = env.reopen().await;
        for e in [
            env.kv.get("x/y", None).await.unwrap_err(),
            env.kv
                .put("other", obj(json!({"k": "v"})), None)
                .await
                .unwrap_err(),
        ] {
            let msg = e.to_string();
            assert!(matches!(e, SecretsError::Decrypt(_)), "{msg}");
            assert!(
                msg.contains("`secrets-kek-1` is missing"),
                "{}: {msg}",
                env.name
            );
        }
        assert!(
            !kek_file.exists(),
            "a lost KEK must not be silently replaced"
        );
        // What needs no key still works, so an operator can clean up.
        assert_eq!(env.kv.list("").await.unwrap(), ["x/"]);
        assert_eq!(
            env.kv
                .metadata("x/y")
                .await
                .unwrap()
                .unwrap()
                .current_version,
            1
        );
        env.kv.delete_metadata("x/y").await.unwrap();
    }
}

#[tokio::test]
async fn data_survives_a_restart() {
    for env in envs("kv_restart").await {
        env.kv
            .put("keep", obj(json!({"n": [1, 2, {"deep": true}]})), None)
            .await
            .unwrap();
        env.kv
            .put("keep", obj(json!({"n": 2})), None)
            .await
            .unwrap();
        let env = env.reopen().await;
        let r = env.kv.get("keep", Some(1)).await.unwrap().unwrap();
        assert_eq!(
            Value::Object(r.data.unwrap()),
            json!({"n": [1, 2, {"deep": true}]}),
            "{}",
            env.name
        );
        assert_eq!(
            env.kv
                .get("keep", None)
                .await
                .unwrap()
                .unwrap()
                .meta
                .version,
            2
        );
        assert_eq!(
            env.kv
                .put("keep", obj(json!({"n": 3})), Some(2))
                .await
                .unwrap()
                .version,
            3
        );
    }
}

#[tokio::test]
async fn each_data_key_is_unwrapped_by_the_kek_named_beside_it() {
    for env in envs("kv_kek_name").await {
        env.kv
            .put("old", obj(json!({"k": "v"})), None)
            .await
            .unwrap();
        // Pretend `old` was written before a KEK rotation: its DEK is
        // wrapped by `secrets-kek-0` (same key material, other name).
        std::fs::copy(
            env.key_dir.join("secrets-kek-1.aes256gcm.key"),
            env.key_dir.join("secrets-kek-0.aes256gcm.key"),
        )
        .unwrap();
        sqlx::query("UPDATE kv_metadata SET kek_name = 'secrets-kek-0' WHERE path = 'old'")
            .execute(env.store.pool())
            .await
            .unwrap();
        let env = env.reopen().await;
        assert_eq!(
            env.kv
                .get("old", None)
                .await
                .unwrap()
                .unwrap()
                .data
                .unwrap()["k"],
            "v"
        );
        // New versions of that path keep its DEK; new paths use the current KEK.
        env.kv
            .put("old", obj(json!({"k": "v2"})), None)
            .await
            .unwrap();
        env.kv
            .put("new", obj(json!({"k": "n"})), None)
            .await
            .unwrap();
        let kek_of = |p: &'static str| {
            let pool = env.store.pool().clone();
            async move {
                sqlx::query("SELECT kek_name FROM kv_metadata WHERE path = $1")
                    .bind(p)
                    .fetch_one(&pool)
                    .await
                    .unwrap()
                    .try_get::<String, _>("kek_name")
                    .unwrap()
            }
        };
        assert_eq!(kek_of("old").await, "secrets-kek-0", "{}", env.name);
        assert_eq!(kek_of("new").await, "secrets-kek-1");

        // Losing the old KEK breaks only what it protects, with its name.
        std::fs::remove_file(env.key_dir.join("secrets-kek-0.aes256gcm.key")).unwrap();
        let env = env.reopen().await;
        let e = env.kv.get("old", None).await.unwrap_err().to_string();
        assert!(e.contains("`secrets-kek-0` is missing"), "{e}");
        assert_eq!(
            env.kv
                .get("new", None)
                .await
                .unwrap()
                .unwrap()
                .data
                .unwrap()["k"],
            "n"
        );
    }
}
