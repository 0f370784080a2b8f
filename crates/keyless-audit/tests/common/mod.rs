//! Shared helpers of the integration tests: a log on a fresh store (SQLite
//! in a temp dir, or PostgreSQL when one answers), sample events, and an
//! RFC 9162 verifier written for the tests only.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::sync::Arc;

use keyless_audit::merkle::{Hash, node_hash};
use keyless_audit::{AuditLog, Event, Outcome};
use keyless_store::{FileKeyManager, KeyManager, Store};

pub const ORIGIN: &str = "example.org/keyless-audit";

/// Everything a test needs, kept alive together.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub url: String,
    pub store: Store,
    pub keys: Arc<FileKeyManager>,
}

impl Env {
    pub async fn sqlite() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let url = format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("keyless.db").display()
        );
        Self::at(dir, url).await
    }

    /// PostgreSQL, or `None` (skipped) when no server answers.
    pub async fn postgres(label: &str) -> Option<Self> {
        let url = keyless_store::testing::fresh_postgres_database(label).await?;
        Some(Self::at(tempfile::tempdir().unwrap(), url).await)
    }

    async fn at(dir: tempfile::TempDir, url: String) -> Self {
        let store = Store::open(&url).await.unwrap();
        let keys = Arc::new(FileKeyManager::open(&dir.path().join("keys")).unwrap());
        Self {
            dir,
            url,
            store,
            keys,
        }
    }

    pub async fn open_log(&self) -> Arc<AuditLog> {
        let keys: Arc<dyn KeyManager> = self.keys.clone();
        AuditLog::open(self.store.clone(), keys, ORIGIN.to_owned())
            .await
            .unwrap()
    }

    /// A second, independent connection pool on the same database.
    pub async fn reopen_store(&self) -> Store {
        Store::open(&self.url).await.unwrap()
    }
}

/// Backends to run a scenario on: SQLite always, PostgreSQL when available.
pub async fn backends(label: &str) -> Vec<(&'static str, Env)> {
    let mut v = vec![("sqlite", Env::sqlite().await)];
    if let Some(pg) = Env::postgres(label).await {
        v.push(("postgres", pg));
    }
    v
}

/// The i-th sample event: users, agents and types vary so filters matter.
pub fn event(i: u64) -> Event {
    let kinds = [
        "svid.issued",
        "token_exchange.success",
        "attestation.denied",
        "tool.called",
    ];
    let users = ["alice@example.com", "bob@example.com"];
    let agents = [
        "spiffe://example.org/agent/a",
        "spiffe://example.org/agent/b",
        "spiffe://example.org/agent/c",
    ];
    let outcome = if i % 4 == 2 {
        Outcome::Denied
    } else {
        Outcome::Success
    };
    let mut e = Event::new(kinds[(i % 4) as usize], outcome)
        .user(users[(i % 2) as usize])
        .agent(agents[(i % 3) as usize])
        .detail("n", i)
        .detail("note", format!("event number {i}"));
    e.duration_ms = Some(i as f64 / 3.0);
    e
}

// === An RFC 9162 verifier written for the tests ===
//
// Independent of the crate's prover (iterative, offsets) and of its
// verifier (the RFC's bit-walking loop): these rebuild the roots
// recursively from the tree's shape, straight from RFC 9162 §2.1.

fn split(n: u64) -> u64 {
    let mut k = 1;
    while k * 2 < n {
        k *= 2;
    }
    k
}

/// The root implied by an inclusion proof, or None if the proof has the wrong shape.
pub fn root_from_inclusion(index: u64, size: u64, leaf: Hash, proof: &[Hash]) -> Option<Hash> {
    if index >= size {
        return None;
    }
    if size == 1 {
        return proof.is_empty().then_some(leaf);
    }
    let (last, rest) = proof.split_last()?;
    let k = split(size);
    if index < k {
        Some(node_hash(&root_from_inclusion(index, k, leaf, rest)?, last))
    } else {
        Some(node_hash(
            last,
            &root_from_inclusion(index - k, size - k, leaf, rest)?,
        ))
    }
}

pub fn check_inclusion(index: u64, size: u64, leaf: Hash, proof: &[Hash], root: Hash) -> bool {
    root_from_inclusion(index, size, leaf, proof) == Some(root)
}

/// Both roots implied by a consistency proof from `m` to `n` leaves:
/// SUBPROOF(m, D[n], b) consumed from its end, rebuilding (old, new).
fn consistency_roots(
    m: u64,
    n: u64,
    proof: &[Hash],
    b: bool,
    old_root: Hash,
) -> Option<(Hash, Hash, usize)> {
    // Returns (old subtree root, new subtree root, hashes consumed from the end).
    if m == n {
        if b {
            return Some((old_root, old_root, 0));
        }
        let h = *proof.last()?;
        return Some((h, h, 1));
    }
    let k = split(n);
    let (last, rest) = proof.split_last()?;
    if m <= k {
        let (o, nw, used) = consistency_roots(m, k, rest, b, old_root)?;
        // The old tree lies entirely in the left part.
        Some((o, node_hash(&nw, last), used + 1))
    } else {
        let (o, nw, used) = consistency_roots(m - k, n - k, rest, false, old_root)?;
        Some((node_hash(last, &o), node_hash(last, &nw), used + 1))
    }
}

pub fn check_consistency(m: u64, n: u64, old: Hash, new: Hash, proof: &[Hash]) -> bool {
    if m == 0 || m == n {
        return proof.is_empty() && (m == 0 || old == new);
    }
    if m > n {
        return false;
    }
    match consistency_roots(m, n, proof, true, old) {
        Some((o, nw, used)) => used == proof.len() && o == old && nw == new,
        None => false,
    }
}
