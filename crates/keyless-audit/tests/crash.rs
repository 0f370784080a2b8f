//! SIGKILL during a burst of appends loses no acknowledged event: the test
//! re-runs its own binary as a child that appends from many tasks and prints
//! `ACK <index>` after each `append` returns (and `CP <seq> <size>` after
//! each checkpoint), kills it mid-burst, then checks the store: every
//! acknowledged index is there, the log verifies, and the next checkpoint
//! is consistent with the last one issued before the crash.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{ORIGIN, check_consistency, event};
use keyless_audit::{AuditLog, verify};
use keyless_store::{FileKeyManager, KeyManager, Store};
use sqlx::Row;

const CHILD_ENV: &str = "KEYLESS_AUDIT_CRASH_CHILD_DIR";

async fn open(dir: &Path) -> (Store, Arc<dyn KeyManager>) {
    let store = Store::open_sqlite(&dir.join("keyless.db")).await.unwrap();
    let keys: Arc<dyn KeyManager> = Arc::new(FileKeyManager::open(&dir.join("keys")).unwrap());
    (store, keys)
}

/// The child's body; a no-op when run as an ordinary test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_child_appender() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (store, keys) = open(Path::new(&dir)).await;
    let log = AuditLog::open(store, keys, ORIGIN.into()).await.unwrap();
    {
        let log = log.clone();
        tokio::spawn(async move {
            loop {
                let cp = log.checkpoint_now().await.unwrap();
                println!("CP {} {}", cp.seq, cp.size);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
    }
    for t in 0..32u64 {
        let log = log.clone();
        tokio::spawn(async move {
            for k in 0.. {
                let i = log.append(event(t * 1_000_000 + k)).await.unwrap();
                println!("ACK {i}");
            }
        });
    }
    // Bounded: the parent kills us long before.
    tokio::time::sleep(Duration::from_secs(60)).await;
}

#[test]
fn sigkill_during_a_burst_loses_no_acknowledged_event() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "crash_child_appender",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut acked = Vec::new();
    let mut checkpoints = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    let parse = |line: &str, acked: &mut Vec<u64>, checkpoints: &mut u32| {
        if let Some(p) = line.find("ACK ") {
            acked.push(line[p + 4..].trim().parse().unwrap());
        } else if line.contains("CP ") {
            *checkpoints += 1;
        }
    };
    while acked.len() < 3000 || checkpoints < 3 {
        assert!(
            Instant::now() < deadline,
            "child too slow: {} acks",
            acked.len()
        );
        let Some(line) = lines.next() else {
            panic!("child exited early")
        };
        parse(&line.unwrap(), &mut acked, &mut checkpoints);
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    // Lines already in the pipe were acknowledged before the kill, too.
    for line in lines.map_while(Result::ok) {
        parse(&line, &mut acked, &mut checkpoints);
    }

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (store, keys) = open(dir.path()).await;
        let stored: Vec<i64> = sqlx::query("SELECT idx FROM audit_entries ORDER BY idx")
            .fetch_all(store.pool())
            .await
            .unwrap()
            .iter()
            .map(|r| r.try_get("idx").unwrap())
            .collect();
        let stored: std::collections::HashSet<u64> = stored.into_iter().map(|i| i as u64).collect();
        let lost: Vec<_> = acked.iter().filter(|i| !stored.contains(i)).collect();
        assert!(lost.is_empty(), "acknowledged but lost: {lost:?}");
        let report = verify(&store).await.unwrap();
        assert!(report.size as usize >= acked.len());
        let before = report.latest_checkpoint.unwrap();

        let log = AuditLog::open(store.clone(), keys, ORIGIN.into())
            .await
            .unwrap();
        log.append(event(7)).await.unwrap();
        let after = log.checkpoint_now().await.unwrap();
        assert_eq!(after.seq, before.seq + 1);
        let proof = log.consistency_proof(before.size, after.size).unwrap();
        assert!(check_consistency(
            before.size,
            after.size,
            before.root,
            after.root,
            &proof.hashes
        ));
        verify(&store).await.unwrap();
        eprintln!(
            "crash test: {} acknowledged, {} stored, last checkpoint before the crash at size {}",
            acked.len(),
            report.size,
            before.size
        );
    });
}
