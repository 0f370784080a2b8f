//! Minting throughput: X509-SVIDs (fresh P-256 key + one ECDSA signature by
//! the intermediate) and JWT-SVIDs (one ES256 signature), the two operations
//! on the Workload API's hot path. Goal: >= 5,000 X509-SVIDs/s on 2 cores.
//!
//! Run: `cargo bench -p keyless-identity --bench mint -- --quick`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use keyless_audit::MemorySink;
use keyless_identity::{Identity, IdentityConfig, NewEntry, TrustDomain};
use keyless_store::{FileKeyManager, Store};

fn mint(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (identity, entry) = rt.block_on(async {
        let store = Store::open_sqlite(&dir.path().join("keyless.db"))
            .await
            .unwrap();
        let keys = Arc::new(FileKeyManager::open(&dir.path().join("keys")).unwrap());
        let config = IdentityConfig::new(
            TrustDomain::new("example.org").unwrap(),
            "http://127.0.0.1:8180".into(),
        );
        let identity = Identity::open(store, keys, Arc::new(MemorySink::default()), config)
            .await
            .unwrap();
        let entry = identity
            .create_entry(NewEntry::new(
                "spiffe://example.org/agent/bench".parse().unwrap(),
                vec!["unix:uid:1000".parse().unwrap()],
            ))
            .await
            .unwrap();
        (identity, entry)
    });
    let audience = vec!["http://127.0.0.1:8180/mcp".to_owned()];
    let token = identity.mint_jwt_svid(&entry, &audience).unwrap().token;

    let mut group = c.benchmark_group("svid");
    group.throughput(Throughput::Elements(1));
    group.bench_function("mint_x509_svid", |b| {
        b.iter(|| black_box(identity.mint_x509_svid(black_box(&entry)).unwrap()))
    });
    group.bench_function("mint_jwt_svid", |b| {
        b.iter(|| {
            black_box(
                identity
                    .mint_jwt_svid(black_box(&entry), &audience)
                    .unwrap(),
            )
        })
    });
    group.bench_function("validate_jwt_svid", |b| {
        b.iter(|| {
            black_box(
                identity
                    .validate_jwt_svid(black_box(&token), &audience[0])
                    .unwrap(),
            )
        })
    });
    group.finish();
}

criterion_group!(benches, mint);
criterion_main!(benches);
