//! The store's behaviour on both backends: migrations, metadata, placeholders.
#![allow(clippy::unwrap_used)]

use keyless_store::{Dialect, Store, testing};

async fn check_store(store: &Store) {
    assert_eq!(store.schema_version().await.unwrap(), 13);
    assert_eq!(store.get_meta("trust_domain").await.unwrap(), None);
    assert_eq!(
        store.init_meta("trust_domain", "a.test").await.unwrap(),
        "a.test"
    );
    // A second init keeps the first value: the trust domain never drifts.
    assert_eq!(
        store.init_meta("trust_domain", "b.test").await.unwrap(),
        "a.test"
    );
    assert_eq!(
        store.get_meta("trust_domain").await.unwrap().as_deref(),
        Some("a.test")
    );
}

#[tokio::test]
async fn sqlite_store_migrates_and_keeps_data_across_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("keyless.db");
    let store = Store::open_sqlite(&path).await.unwrap();
    assert_eq!(store.dialect(), Dialect::Sqlite);
    check_store(&store).await;
    store.close().await;
    let again = Store::open_sqlite(&path).await.unwrap();
    assert_eq!(
        again.get_meta("trust_domain").await.unwrap().as_deref(),
        Some("a.test")
    );
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(again.pool())
        .await
        .unwrap();
    assert_eq!(mode, "wal");
}

#[tokio::test]
async fn postgres_store_migrates_and_keeps_data_across_reopen() {
    let Some(url) = testing::fresh_postgres_database("store_backends").await else {
        return;
    };
    let store = Store::open(&url).await.unwrap();
    assert_eq!(store.dialect(), Dialect::Postgres);
    check_store(&store).await;
    store.close().await;
    // Reopening runs no migration twice.
    let again = Store::open(&url).await.unwrap();
    assert_eq!(again.schema_version().await.unwrap(), 13);
}

#[tokio::test]
async fn unknown_url_scheme_is_refused() {
    let err = Store::open("mysql://root@localhost/x").await.unwrap_err();
    assert!(
        err.to_string().contains("unsupported database url"),
        "{err}"
    );
}
