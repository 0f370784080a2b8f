//! Tampering with the stored log, by raw SQL as someone with database
//! access but no key would: each kind is caught by `verify`, which names the
//! right entry index (or checkpoint). Every scenario runs on SQLite and, when
//! a server answers, on PostgreSQL.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::sync::Arc;

use common::{Env, ORIGIN, backends, event};
use keyless_audit::merkle::{Hash, MerkleTree, leaf_hash};
use keyless_audit::note::{note_body, sign_note};
use keyless_audit::{AuditError, TamperKind, VerifyError, verify, verify_with_keys};
use keyless_store::{FileKeyManager, KeyAlgorithm, KeyManager, Store};
use sqlx::Row;

const N: u64 = 40;

/// A log of `N` entries appended one by one, with a checkpoint every 10.
async fn build(env: &Env) {
    let log = env.open_log().await;
    for i in 0..N {
        assert_eq!(log.append(event(i)).await.unwrap(), i);
        if (i + 1) % 10 == 0 {
            log.checkpoint_now().await.unwrap();
        }
    }
    log.shutdown().await;
}

async fn expect_tamper(store: &Store, backend: &str) -> VerifyError {
    match verify(store).await {
        Err(AuditError::Tampered(e)) => e,
        other => panic!("{backend}: expected tampering to be found, got {other:?}"),
    }
}

fn check(e: &VerifyError, backend: &str, kind: TamperKind, index: Option<u64>) {
    assert_eq!(
        (e.kind, e.first_bad_index),
        (kind, index),
        "{backend}: {e:?}"
    );
}

struct Row4 {
    leaf: Vec<u8>,
    root: Vec<u8>,
    event: String,
}

async fn row(store: &Store, idx: i64) -> Row4 {
    let r = sqlx::query("SELECT leaf_hash, root, event FROM audit_entries WHERE idx = $1")
        .bind(idx)
        .fetch_one(store.pool())
        .await
        .unwrap();
    Row4 {
        leaf: r.try_get("leaf_hash").unwrap(),
        root: r.try_get("root").unwrap(),
        event: r.try_get("event").unwrap(),
    }
}

async fn set_row(store: &Store, idx: i64, r: &Row4) {
    sqlx::query("UPDATE audit_entries SET leaf_hash = $1, root = $2, event = $3 WHERE idx = $4")
        .bind(r.leaf.clone())
        .bind(r.root.clone())
        .bind(r.event.clone())
        .bind(idx)
        .execute(store.pool())
        .await
        .unwrap();
}

async fn exec(store: &Store, sql: &'static str, arg: i64) {
    sqlx::query(sql)
        .bind(arg)
        .execute(store.pool())
        .await
        .unwrap();
}

/// Replaces entries from `from` on with `events`, recomputing every leaf
/// hash and running root, as a careful forger without the key would.
async fn rewrite_from(store: &Store, from: u64, events: Vec<String>) {
    let mut tree = MerkleTree::new();
    for i in 0..from {
        let r = row(store, i as i64).await;
        tree.push(leaf_hash(r.event.as_bytes()));
    }
    exec(
        store,
        "DELETE FROM audit_entries WHERE idx >= $1",
        from as i64,
    )
    .await;
    for (k, json) in events.into_iter().enumerate() {
        let leaf = leaf_hash(json.as_bytes());
        tree.push(leaf);
        sqlx::query(
            "INSERT INTO audit_entries (idx, leaf_hash, root, event) VALUES ($1, $2, $3, $4)",
        )
        .bind((from + k as u64) as i64)
        .bind(leaf.to_vec())
        .bind(tree.root().to_vec())
        .bind(json)
        .execute(store.pool())
        .await
        .unwrap();
    }
}

fn forged_event(i: u64) -> String {
    event(i)
        .user("mallory@example.com")
        .canonical_json()
        .unwrap()
}

async fn checkpoint_seq_at(store: &Store, size: i64) -> i64 {
    sqlx::query("SELECT seq FROM audit_checkpoints WHERE tree_size = $1 ORDER BY seq LIMIT 1")
        .bind(size)
        .fetch_one(store.pool())
        .await
        .unwrap()
        .try_get("seq")
        .unwrap()
}

#[tokio::test]
async fn untouched_log_verifies() {
    for (backend, env) in backends("untouched").await {
        let log = env.open_log().await;
        for i in 0..N {
            log.append(event(i)).await.unwrap();
        }
        let cp = log.checkpoint_now().await.unwrap();
        let root = log.root();
        drop(log);
        let report = verify(&env.store).await.unwrap();
        assert_eq!((report.size, report.root), (N, root), "{backend}");
        assert_eq!(report.latest_checkpoint.unwrap().root, cp.root);
        assert!(report.seals >= 1);
        let keys: &dyn KeyManager = env.keys.as_ref();
        verify_with_keys(&env.store, keys).await.unwrap();
    }
}

#[tokio::test]
async fn changed_field_is_named() {
    for (backend, env) in backends("changed_field").await {
        build(&env).await;
        let mut r = row(&env.store, 17).await;
        r.event = r.event.replace("bob@example.com", "mallory@example.com");
        set_row(&env.store, 17, &r).await;
        let e = expect_tamper(&env.store, backend).await;
        check(&e, backend, TamperKind::Modified, Some(17));
        assert!(e.reason.contains("entry 17"), "{}", e.reason);
    }
}

#[tokio::test]
async fn changed_field_with_recomputed_hashes_is_named() {
    for (backend, env) in backends("changed_rehashed").await {
        build(&env).await;
        // The forger recomputes the leaf hash and every later running root:
        // only the signed seals and checkpoints can tell.
        let mut events = Vec::new();
        for i in 23..N {
            let r = row(&env.store, i as i64).await;
            events.push(if i == 23 { forged_event(i) } else { r.event });
        }
        rewrite_from(&env.store, 23, events).await;
        let e = expect_tamper(&env.store, backend).await;
        check(&e, backend, TamperKind::Rewritten, Some(23));
    }
}

#[tokio::test]
async fn deleted_entry_is_named() {
    for (backend, env) in backends("deleted_entry").await {
        build(&env).await;
        exec(&env.store, "DELETE FROM audit_entries WHERE idx = $1", 12).await;
        let e = expect_tamper(&env.store, backend).await;
        check(&e, backend, TamperKind::Removed, Some(12));
    }
}

#[tokio::test]
async fn deleted_tail_is_named_and_the_log_refuses_to_open() {
    for (backend, env) in backends("deleted_tail").await {
        build(&env).await;
        exec(&env.store, "DELETE FROM audit_entries WHERE idx >= $1", 33).await;
        let e = expect_tamper(&env.store, backend).await;
        check(&e, backend, TamperKind::Removed, Some(33));
        // Checkpoint 40 covers entries the store no longer has: the fabric
        // must not go on recording on top of that.
        let keys: Arc<dyn KeyManager> = env.keys.clone();
        let opened = keyless_audit::AuditLog::open(env.store.clone(), keys, ORIGIN.into()).await;
        assert!(
            matches!(opened, Err(AuditError::Inconsistent(_))),
            "{backend}: {opened:?}"
        );
    }
}

#[tokio::test]
async fn swapped_entries_are_named() {
    for (backend, env) in backends("swapped_entries").await {
        build(&env).await;
        // Content and leaf hash moved, the chain left in place.
        let (a, b) = (row(&env.store, 3).await, row(&env.store, 9).await);
        let swapped_a = Row4 {
            leaf: b.leaf.clone(),
            root: a.root.clone(),
            event: b.event.clone(),
        };
        let swapped_b = Row4 {
            leaf: a.leaf,
            root: b.root,
            event: a.event,
        };
        set_row(&env.store, 3, &swapped_a).await;
        set_row(&env.store, 9, &swapped_b).await;
        let e = expect_tamper(&env.store, backend).await;
        check(&e, backend, TamperKind::Reordered, Some(3));
        assert!(e.reason.contains("index 9"), "{}", e.reason);
    }
}

#[tokio::test]
async fn swapped_rows_are_named() {
    for (backend, env) in backends("swapped_rows").await {
        build(&env).await;
        // Whole rows, running roots included.
        let (a, b) = (row(&env.store, 3).await, row(&env.store, 9).await);
        set_row(&env.store, 3, &b).await;
        set_row(&env.store, 9, &a).await;
        let e = expect_tamper(&env.store, backend).await;
        check(&e, backend, TamperKind::Reordered, Some(3));
        assert!(e.reason.contains("index 9"), "{}", e.reason);
    }
}

#[tokio::test]
async fn truncated_and_reappended_entries_are_named() {
    for (backend, env) in backends("truncate_reappend").await {
        build(&env).await;
        // Truncate at 26, append different entries past the old end, all
        // hashes and roots recomputed; seals and checkpoints left alone.
        rewrite_from(&env.store, 26, (26..N + 5).map(forged_event).collect()).await;
        let e = expect_tamper(&env.store, backend).await;
        check(&e, backend, TamperKind::Rewritten, Some(26));
    }
}

#[tokio::test]
async fn truncated_and_reappended_entries_are_named_even_without_their_seals() {
    for (backend, env) in backends("truncate_reappend_unsealed").await {
        build(&env).await;
        rewrite_from(&env.store, 26, (26..N).map(forged_event).collect()).await;
        // The forger also removes every signed head above the cut.
        exec(
            &env.store,
            "DELETE FROM audit_seals WHERE tree_size > $1",
            26,
        )
        .await;
        exec(
            &env.store,
            "DELETE FROM audit_checkpoints WHERE tree_size > $1",
            26,
        )
        .await;
        let e = expect_tamper(&env.store, backend).await;
        check(&e, backend, TamperKind::Rewritten, Some(26));
    }
}

#[tokio::test]
async fn replaced_checkpoint_is_named() {
    for (backend, env) in backends("replaced_checkpoint").await {
        build(&env).await;
        let seq = checkpoint_seq_at(&env.store, 20).await;
        let note: String = sqlx::query("SELECT note FROM audit_checkpoints WHERE seq = $1")
            .bind(seq)
            .fetch_one(env.store.pool())
            .await
            .unwrap()
            .try_get("note")
            .unwrap();

        // 1. The note's size edited, signature kept.
        let edited = note.replacen("\n20\n", "\n19\n", 1);
        sqlx::query("UPDATE audit_checkpoints SET note = $1 WHERE seq = $2")
            .bind(edited)
            .bind(seq)
            .execute(env.store.pool())
            .await
            .unwrap();
        let e = expect_tamper(&env.store, backend).await;
        assert_eq!(
            (e.kind, e.checkpoint, e.first_bad_index),
            (TamperKind::Checkpoint, Some(seq as u64), None)
        );

        // 2. A note for another root, signed by a key of the forger's.
        let forger_dir = tempfile::tempdir().unwrap();
        let forger_km = FileKeyManager::open(&forger_dir.path().join("k")).unwrap();
        let forger = forger_km
            .generate("audit-checkpoint-9", KeyAlgorithm::Ed25519)
            .await
            .unwrap();
        let fake_root: Hash = [9u8; 32];
        let fake = sign_note(forger.as_ref(), &note_body(ORIGIN, 20, &fake_root)).unwrap();
        sqlx::query(
            "UPDATE audit_checkpoints SET note = $1, root = $2, key_name = $3 WHERE seq = $4",
        )
        .bind(fake)
        .bind(fake_root.to_vec())
        .bind("audit-checkpoint-9")
        .bind(seq)
        .execute(env.store.pool())
        .await
        .unwrap();
        let e = expect_tamper(&env.store, backend).await;
        assert_eq!(
            (e.kind, e.checkpoint),
            (TamperKind::Checkpoint, Some(seq as u64)),
            "{backend}: {e:?}"
        );

        // 3. ... and the forger's public key slipped into the key table: the
        // forged checkpoint contradicts the later, genuine seals; and the
        // key manager never held that key.
        sqlx::query(
            "INSERT INTO audit_keys (seq, name, public_key, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(99i64)
        .bind("audit-checkpoint-9")
        .bind(forger.public_key().to_vec())
        .bind(0i64)
        .execute(env.store.pool())
        .await
        .unwrap();
        let e = expect_tamper(&env.store, backend).await;
        assert_eq!(
            (e.kind, e.checkpoint),
            (TamperKind::Checkpoint, Some(seq as u64)),
            "{backend}: {e:?}"
        );
        let keys: &dyn KeyManager = env.keys.as_ref();
        match verify_with_keys(&env.store, keys).await {
            Err(AuditError::Tampered(e)) => assert_eq!(e.kind, TamperKind::Key, "{backend}: {e:?}"),
            other => panic!("{backend}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn deleted_checkpoint_is_named() {
    for (backend, env) in backends("deleted_checkpoint").await {
        build(&env).await;
        let seq = checkpoint_seq_at(&env.store, 20).await;
        exec(
            &env.store,
            "DELETE FROM audit_checkpoints WHERE seq = $1",
            seq,
        )
        .await;
        let e = expect_tamper(&env.store, backend).await;
        assert_eq!(
            (e.kind, e.checkpoint),
            (TamperKind::Checkpoint, Some(seq as u64)),
            "{backend}: {e:?}"
        );
    }
}

#[tokio::test]
async fn non_canonical_rewrite_of_an_entry_is_named() {
    for (backend, env) in backends("non_canonical").await {
        build(&env).await;
        // Same meaning, different bytes (whitespace), hash recomputed: the
        // stored bytes are no longer what canonicalization produces.
        let mut r = row(&env.store, 5).await;
        r.event = r.event.replacen(',', ", ", 1);
        r.leaf = leaf_hash(r.event.as_bytes()).to_vec();
        set_row(&env.store, 5, &r).await;
        let e = expect_tamper(&env.store, backend).await;
        check(&e, backend, TamperKind::Modified, Some(5));
    }
}
