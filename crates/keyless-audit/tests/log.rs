//! The running log: durability across reopen, group commit, checkpoints and
//! their consistency, key rotation, several writers on one database, the
//! bus, export and entry proofs. SQLite always, PostgreSQL when available.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::collections::BTreeSet;

use common::{backends, check_consistency, check_inclusion, event};
use keyless_audit::merkle::leaf_hash;
use keyless_audit::note::ParsedCheckpoint;
use keyless_audit::{
    AuditError, Event, EventSink, Outcome, export, kinds, prove_entry, verify, verify_with_keys,
};
use keyless_store::KeyManager;
use sqlx::Row;

#[tokio::test]
async fn appends_survive_reopen_and_the_next_checkpoint_extends_the_last() {
    for (backend, env) in backends("reopen").await {
        let log = env.open_log().await;
        for i in 0..25 {
            log.append(event(i)).await.unwrap();
        }
        let a = log.checkpoint_now().await.unwrap();
        let root = log.root();
        drop(log);

        let log = env.open_log().await;
        assert_eq!((log.size(), log.root()), (25, root), "{backend}");
        for i in 25..30 {
            assert_eq!(log.append(event(i)).await.unwrap(), i);
        }
        let b = log.checkpoint_now().await.unwrap();
        assert!(b.seq > a.seq && b.size == 30, "{backend}");
        let proof = log.consistency_proof(a.size, b.size).unwrap();
        assert!(
            check_consistency(a.size, b.size, a.root, b.root, &proof.hashes),
            "{backend}"
        );
        verify(&env.store).await.unwrap();
    }
}

#[tokio::test]
async fn concurrent_appends_are_group_committed_with_dense_indices() {
    for (backend, env) in backends("group_commit").await {
        let log = env.open_log().await;
        let tasks: Vec<_> = (0..500)
            .map(|i| {
                let log = log.clone();
                tokio::spawn(async move { log.append(event(i)).await.unwrap() })
            })
            .collect();
        let mut indices = BTreeSet::new();
        for t in tasks {
            indices.insert(t.await.unwrap());
        }
        assert_eq!(indices, (0..500).collect(), "{backend}");
        let seals: i64 = sqlx::query("SELECT COUNT(*) AS n FROM audit_seals")
            .fetch_one(env.store.pool())
            .await
            .unwrap()
            .try_get("n")
            .unwrap();
        assert!(
            seals < 500,
            "{backend}: {seals} transactions for 500 events: no grouping"
        );
        let report = verify(&env.store).await.unwrap();
        assert_eq!(report.size, 500);
    }
}

#[tokio::test]
async fn events_are_stored_canonically_with_their_time() {
    let env = common::Env::sqlite().await;
    let log = env.open_log().await;
    let mut e = Event::new(kinds::SVID_ISSUED, Outcome::Success).agent("spiffe://example.org/a");
    e.duration_ms = Some(f64::NAN);
    let before = keyless_store::now_millis();
    let i = log.record(e).await.unwrap();
    let stored = log.entries(i, i + 1).await.unwrap().remove(0);
    assert!(stored.event.time >= before);
    // A non-finite float cannot round-trip through JSON: it is dropped.
    assert_eq!(stored.event.duration_ms, None);
    assert_eq!(stored.json, stored.event.canonical_json().unwrap());
    assert_eq!(stored.leaf_hash, leaf_hash(stored.json.as_bytes()));
    assert!(
        stored
            .json
            .starts_with(r#"{"agent":"spiffe://example.org/a","outcome":"success","time":"#)
    );
    // A set time is kept.
    let mut e = event(1);
    e.time = 1234;
    let i = log.append(e).await.unwrap();
    assert_eq!(log.entries(i, i + 1).await.unwrap()[0].event.time, 1234);
}

#[tokio::test]
async fn rotated_key_signs_new_checkpoints_and_old_ones_still_verify() {
    for (backend, env) in backends("rotation").await {
        let log = env.open_log().await;
        for i in 0..5 {
            log.append(event(i)).await.unwrap();
        }
        let old = log.checkpoint_now().await.unwrap();
        assert_eq!(old.key_name, "audit-checkpoint-1");
        let name = log.rotate_checkpoint_key().await.unwrap();
        assert_eq!(name, "audit-checkpoint-2");
        let new = log.latest_checkpoint().await.unwrap().unwrap();
        assert_eq!(
            (new.key_name.as_str(), new.size),
            ("audit-checkpoint-2", 6),
            "{backend}"
        );
        let rotation = log.entries(5, 6).await.unwrap().remove(0);
        assert_eq!(rotation.event.kind, kinds::AUDIT_KEY_ROTATED);
        // The new note verifies with the new key only.
        let parsed = ParsedCheckpoint::parse(&new.note).unwrap();
        let k2 = env.keys.load("audit-checkpoint-2").await.unwrap();
        let k1 = env.keys.load("audit-checkpoint-1").await.unwrap();
        parsed
            .verify("audit-checkpoint-2", k2.public_key())
            .unwrap();
        assert!(
            parsed
                .verify("audit-checkpoint-2", k1.public_key())
                .is_err()
        );
        log.append(event(7)).await.unwrap();
        drop(log);
        // Reopening keeps the rotated key.
        let log = env.open_log().await;
        assert_eq!(
            log.checkpoint_now().await.unwrap().key_name,
            "audit-checkpoint-2"
        );
        let report = verify(&env.store).await.unwrap();
        assert!(report.checkpoints >= 3, "{backend}");
        let keys: &dyn KeyManager = env.keys.as_ref();
        verify_with_keys(&env.store, keys).await.unwrap();
    }
}

#[tokio::test]
async fn two_writers_on_one_database_interleave_without_losing_entries() {
    for (backend, env) in backends("two_writers").await {
        let a = env.open_log().await;
        let other_store = env.reopen_store().await;
        let b = keyless_audit::AuditLog::open(other_store, env.keys.clone(), common::ORIGIN.into())
            .await
            .unwrap();
        let mut indices = BTreeSet::new();
        for i in 0..30u64 {
            let log = if i % 3 == 0 { &b } else { &a };
            assert!(
                indices.insert(log.append(event(i)).await.unwrap()),
                "{backend}"
            );
        }
        let tasks: Vec<_> = (30..130u64)
            .map(|i| {
                let log = if i % 2 == 0 { a.clone() } else { b.clone() };
                tokio::spawn(async move { log.append(event(i)).await.unwrap() })
            })
            .collect();
        for t in tasks {
            assert!(
                indices.insert(t.await.unwrap()),
                "{backend}: duplicate index"
            );
        }
        assert_eq!(indices, (0..130).collect(), "{backend}");
        a.checkpoint_now().await.unwrap();
        b.checkpoint_now().await.unwrap();
        a.checkpoint_now().await.unwrap();
        assert_eq!(verify(&env.store).await.unwrap().size, 130, "{backend}");
    }
}

#[tokio::test]
async fn no_checkpoint_is_signed_over_a_tampered_previous_checkpoint() {
    let env = common::Env::sqlite().await;
    let log = env.open_log().await;
    for i in 0..4 {
        log.append(event(i)).await.unwrap();
    }
    let cp = log.checkpoint_now().await.unwrap();
    let forged = cp.note.replacen("\n4\n", "\n3\n", 1);
    sqlx::query("UPDATE audit_checkpoints SET note = $1 WHERE seq = $2")
        .bind(forged)
        .bind(cp.seq as i64)
        .execute(env.store.pool())
        .await
        .unwrap();
    log.append(event(4)).await.unwrap();
    let err = log.checkpoint_now().await.unwrap_err();
    assert!(matches!(err, AuditError::Inconsistent(_)), "{err:?}");
    let count: i64 = sqlx::query("SELECT COUNT(*) AS n FROM audit_checkpoints WHERE seq > $1")
        .bind(cp.seq as i64)
        .fetch_one(env.store.pool())
        .await
        .unwrap()
        .try_get("n")
        .unwrap();
    assert_eq!(count, 0);
}

#[tokio::test]
async fn the_bus_delivers_committed_entries_in_order() {
    let env = common::Env::sqlite().await;
    let log = env.open_log().await;
    let mut rx = log.subscribe();
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let log = log.clone();
            tokio::spawn(async move { log.append(event(i)).await.unwrap() })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    for i in 0..50 {
        let e = rx.recv().await.unwrap();
        assert_eq!(e.index, i);
        assert_eq!(e.leaf_hash, leaf_hash(e.json.as_bytes()));
    }
}

#[tokio::test]
async fn export_lines_rehash_to_their_leaves_and_entry_proofs_check() {
    for (backend, env) in backends("export").await {
        let log = env.open_log().await;
        for i in 0..12 {
            log.append(event(i)).await.unwrap();
        }
        let cp = log.checkpoint_now().await.unwrap();
        let mut out = Vec::new();
        assert_eq!(
            export(&env.store, 4, &mut out).await.unwrap(),
            8,
            "{backend}"
        );
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 8);
        for (k, line) in lines.iter().enumerate() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(v["index"], 4 + k as u64);
            // The event member is the exact canonical bytes.
            let start = line.find("\"event\":").unwrap() + 8;
            let event_json = &line[start..line.len() - 1];
            use base64::Engine;
            let leaf = base64::engine::general_purpose::STANDARD
                .decode(v["leaf_hash"].as_str().unwrap())
                .unwrap();
            assert_eq!(leaf, leaf_hash(event_json.as_bytes()).to_vec());
        }
        let p = prove_entry(&env.store, 7).await.unwrap();
        p.check().unwrap();
        assert_eq!(p.checkpoint.seq, cp.seq);
        assert!(check_inclusion(
            7,
            p.checkpoint.size,
            p.proof.leaf_hash,
            &p.proof.hashes,
            p.checkpoint.root
        ));
        assert!(
            prove_entry(&env.store, 12).await.is_err(),
            "{backend}: not yet checkpointed"
        );
    }
}

/// Queued appends are committed by the next group commit (with the token
/// ids they name indexed), are part of the verified log, and `has_jti`
/// answers only for committed events of the asked kind.
#[tokio::test]
async fn queued_appends_are_committed_and_their_jtis_indexed() {
    for (backend, env) in backends("queued").await {
        let log = env.open_log().await;
        assert!(!log.has_jti("j-1", "token_exchange.success").await.unwrap());
        let e = Event::new("token_exchange.success", Outcome::Success).detail("jti", "j-1");
        log.append_queued(e).await.unwrap();
        let mut found = false;
        for _ in 0..200 {
            if log.has_jti("j-1", "token_exchange.success").await.unwrap() {
                found = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert!(found, "{backend}: queued event never committed");
        assert!(
            !log.has_jti("j-1", "token.consumed").await.unwrap(),
            "{backend}"
        );
        assert!(
            !log.has_jti("j-2", "token_exchange.success").await.unwrap(),
            "{backend}"
        );
        // A durable append after it: both are in the log, in order.
        let i = log
            .append(Event::new("token.consumed", Outcome::Success).detail("jti", "j-1"))
            .await
            .unwrap();
        assert_eq!(i, 1, "{backend}");
        assert!(
            log.has_jti("j-1", "token.consumed").await.unwrap(),
            "{backend}"
        );
        assert_eq!(log.size(), 2, "{backend}");
    }
}
