//! Audit log benchmarks (issue 3):
//! - durable appends/s with group commit on SQLite (256 concurrent appenders);
//! - inclusion and consistency proof generation and verification at
//!   1,000,000 entries (tree built in memory);
//! - `verify` over a stored log (100,000 entries by default; set
//!   `KEYLESS_BENCH_VERIFY_N=1000000` for a million), and bytes stored per event.
//!
//! Run: `cargo bench -p keyless-audit --bench log`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use keyless_audit::merkle::{MerkleTree, leaf_hash};
use keyless_audit::{AuditLog, Event, Outcome, verify_consistency, verify_inclusion};
use keyless_store::{FileKeyManager, KeyManager, Store};
use sqlx::Row;

fn event(i: u64) -> Event {
    Event::new("token_exchange.success", Outcome::Success)
        .user("alice@example.com")
        .agent("spiffe://example.org/agent/support-bot")
        .session("s-5f1c0a7e")
        .tool("directory.list_users")
        .correlation_id(format!("call-{i:012}"))
        .detail("audience", "directory")
        .detail("scope", "users:read")
}

struct Fixture {
    _dir: tempfile::TempDir,
    store: Store,
    log: Arc<AuditLog>,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_sqlite(&dir.path().join("keyless.db"))
        .await
        .unwrap();
    let keys: Arc<dyn KeyManager> =
        Arc::new(FileKeyManager::open(&dir.path().join("keys")).unwrap());
    let log = AuditLog::open(store.clone(), keys, "bench.example/keyless-audit".into())
        .await
        .unwrap();
    Fixture {
        _dir: dir,
        store,
        log,
    }
}

/// Appends `n` events from `writers` concurrent tasks; returns the elapsed time.
async fn burst(log: &Arc<AuditLog>, n: u64, writers: u64) -> Duration {
    let start = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let log = log.clone();
            tokio::spawn(async move {
                let mut i = w;
                while i < n {
                    log.append(event(i)).await.unwrap();
                    i += writers;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    start.elapsed()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn appends(c: &mut Criterion) {
    let rt = runtime();
    let fx = rt.block_on(fixture());
    let mut g = c.benchmark_group("append");
    g.throughput(Throughput::Elements(1));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(10));
    for writers in [1u64, 256, 1024] {
        g.bench_function(
            BenchmarkId::new("sqlite_durable_group_commit", format!("{writers}_writers")),
            |b| {
                b.iter_custom(|iters| rt.block_on(burst(&fx.log, iters, writers.min(iters.max(1)))))
            },
        );
    }
    g.finish();
    rt.block_on(fx.log.shutdown());
}

fn proofs(c: &mut Criterion) {
    const N: u64 = 1_000_000;
    let start = Instant::now();
    let tree = MerkleTree::from_leaves((0..N).map(|i| leaf_hash(&i.to_be_bytes())));
    eprintln!("built a {N}-leaf tree in {:?}", start.elapsed());
    let root = tree.root();
    let mut g = c.benchmark_group("proof_1m");
    let mut i = 0u64;
    g.bench_function("inclusion_generate", |b| {
        b.iter(|| {
            i = (i + 7919) % N;
            black_box(tree.inclusion_proof(i, N).unwrap())
        })
    });
    let index = 654_321;
    let proof = tree.inclusion_proof(index, N).unwrap();
    eprintln!("inclusion proof at {N}: {} hashes", proof.len());
    let leaf = *tree.leaf(index).unwrap();
    g.bench_function("inclusion_verify", |b| {
        b.iter(|| verify_inclusion(black_box(&leaf), index, N, black_box(&proof), &root).unwrap())
    });
    let m = 777_777;
    let old = tree.root_at(m).unwrap();
    g.bench_function("consistency_generate", |b| {
        b.iter(|| black_box(tree.consistency_proof(m, N).unwrap()))
    });
    let cproof = tree.consistency_proof(m, N).unwrap();
    g.bench_function("consistency_verify", |b| {
        b.iter(|| verify_consistency(m, N, black_box(&old), &root, black_box(&cproof)).unwrap())
    });
    g.finish();
}

fn verify_log(c: &mut Criterion) {
    let n: u64 = std::env::var("KEYLESS_BENCH_VERIFY_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let rt = runtime();
    let fx = rt.block_on(fixture());
    let took = rt.block_on(burst(&fx.log, n, 256));
    eprintln!(
        "appended {n} events in {took:?}: {:.0} appends/s",
        n as f64 / took.as_secs_f64()
    );
    rt.block_on(async {
        fx.log.checkpoint_now().await.unwrap();
        sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)").execute(fx.store.pool()).await.unwrap();
        let pool = fx.store.pool();
        let size = |sql: &'static str| async move {
            sqlx::query(sql)
                .fetch_one(pool)
                .await
                .unwrap()
                .try_get::<i64, _>(0)
                .unwrap()
        };
        let bytes = size("SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()").await;
        let json = size("SELECT SUM(LENGTH(event)) FROM audit_entries").await;
        let seals = size("SELECT COUNT(*) FROM audit_seals").await;
        eprintln!(
            "stored: {bytes} bytes for {n} events = {:.0} bytes/event (canonical JSON {:.0} bytes/event, {seals} seals)",
            bytes as f64 / n as f64,
            json as f64 / n as f64
        );
    });
    let mut g = c.benchmark_group("verify");
    g.sample_size(10);
    g.throughput(Throughput::Elements(n));
    g.bench_function(BenchmarkId::new("sqlite", n), |b| {
        b.iter(|| rt.block_on(keyless_audit::verify(&fx.store)).unwrap())
    });
    g.finish();
}

criterion_group!(benches, appends, proofs, verify_log);
criterion_main!(benches);
