//! Shared fixtures for the identity integration tests: an identity service
//! on a fresh SQLite store (or a given URL) with a file key manager and an
//! in-memory audit sink.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;

use keyless_audit::MemorySink;
use keyless_identity::{Identity, IdentityConfig, IdentityError, NewEntry, TrustDomain};
use keyless_store::{FileKeyManager, Store};

pub const TD: &str = "example.org";
pub const PUBLIC_URL: &str = "http://127.0.0.1:8180";

pub fn config(td: &str) -> IdentityConfig {
    IdentityConfig::new(TrustDomain::new(td).unwrap(), PUBLIC_URL.to_owned())
}

#[derive(Debug)]
pub struct Fixture {
    pub identity: Arc<Identity>,
    pub events: Arc<MemorySink>,
    pub keys: Arc<FileKeyManager>,
    pub store: Store,
}

/// Opens an identity service on the SQLite file and key directory under `dir`.
pub async fn open_in(dir: &Path, config: IdentityConfig) -> Result<Fixture, IdentityError> {
    let store = Store::open_sqlite(&dir.join("keyless.db")).await?;
    open_with(store, &dir.join("keys"), config).await
}

pub async fn open_with(
    store: Store,
    keys_dir: &Path,
    config: IdentityConfig,
) -> Result<Fixture, IdentityError> {
    let keys = Arc::new(FileKeyManager::open(keys_dir)?);
    let events = Arc::new(MemorySink::default());
    let identity = Identity::open(store.clone(), keys.clone(), events.clone(), config).await?;
    Ok(Fixture {
        identity,
        events,
        keys,
        store,
    })
}

pub fn new_entry(id: &str, selectors: &[&str]) -> NewEntry {
    NewEntry::new(
        id.parse().unwrap(),
        selectors.iter().map(|s| s.parse().unwrap()).collect(),
    )
}

pub fn event_types(events: &MemorySink) -> Vec<String> {
    events.events().into_iter().map(|e| e.kind).collect()
}
