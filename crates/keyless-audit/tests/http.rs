//! The HTTP surface through `router(log)` and `oneshot`: checkpoints,
//! entries, proofs (checked with the independent verifier), and the
//! `/events` SSE stream (order, resumption, filters, slow subscribers).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use common::{Env, check_consistency, check_inclusion, event};
use http_body_util::BodyExt;
use keyless_audit::merkle::Hash;
use keyless_audit::note::ParsedCheckpoint;
use keyless_audit::{AuditLog, BUS_CAPACITY};
use keyless_store::KeyManager;
use serde_json::Value;
use tower::ServiceExt;

async fn get(log: &Arc<AuditLog>, uri: &str) -> (StatusCode, String, String) {
    let resp = keyless_audit::http::router(log.clone())
        .oneshot(Request::get(uri).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let ctype = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, ctype, String::from_utf8(body.to_vec()).unwrap())
}

fn hash(v: &Value) -> Hash {
    B64.decode(v.as_str().unwrap()).unwrap().try_into().unwrap()
}

async fn log_with(n: u64) -> (Env, Arc<AuditLog>) {
    let env = Env::sqlite().await;
    let log = env.open_log().await;
    for i in 0..n {
        log.append(event(i)).await.unwrap();
    }
    (env, log)
}

#[tokio::test]
async fn checkpoint_is_the_exact_signed_note() {
    let (env, log) = log_with(9).await;
    log.checkpoint_now().await.unwrap();
    let (status, ctype, note) = get(&log, "/audit/checkpoint").await;
    assert_eq!(status, StatusCode::OK);
    assert!(ctype.starts_with("text/plain"), "{ctype}");
    let parsed = ParsedCheckpoint::parse(&note).unwrap();
    assert_eq!(
        (parsed.origin.as_str(), parsed.size, parsed.root),
        (common::ORIGIN, 9, log.root())
    );
    let key = env.keys.load("audit-checkpoint-1").await.unwrap();
    parsed
        .verify("audit-checkpoint-1", key.public_key())
        .unwrap();
}

#[tokio::test]
async fn entries_are_served_by_range() {
    let (_env, log) = log_with(30).await;
    let (status, _, body) = get(&log, "/audit/entries?start=5&end=9").await;
    assert_eq!(status, StatusCode::OK);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["size"], 30);
    let entries = v["entries"].as_array().unwrap();
    assert_eq!(
        entries
            .iter()
            .map(|e| e["index"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        vec![5, 6, 7, 8]
    );
    assert_eq!(entries[0]["event"]["detail"]["n"], 5);
    // Past the end: what exists.
    let (_, _, body) = get(&log, "/audit/entries?start=28&end=100").await;
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["entries"].as_array().unwrap().len(), 2);
    for bad in [
        "/audit/entries?start=9&end=5",
        "/audit/entries?start=0&end=1001",
        "/audit/entries?start=x",
    ] {
        let (status, _, body) = get(&log, bad).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
        assert!(serde_json::from_str::<Value>(&body).unwrap()["error"].is_string());
    }
}

#[tokio::test]
async fn proofs_check_with_the_independent_verifier() {
    let (_env, log) = log_with(37).await;
    for (index, size) in [(0u64, 1u64), (5, 37), (36, 37), (16, 17), (3, 20)] {
        let (status, _, body) = get(
            &log,
            &format!("/audit/proof/inclusion?index={index}&size={size}"),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        let hashes: Vec<Hash> = v["hashes"].as_array().unwrap().iter().map(hash).collect();
        assert!(check_inclusion(
            index,
            size,
            hash(&v["leaf_hash"]),
            &hashes,
            hash(&v["root"])
        ));
    }
    // Without a size: against the latest checkpoint, issued on demand.
    let (_, _, body) = get(&log, "/audit/proof/inclusion?index=30").await;
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["size"], 37);
    assert_eq!(
        hash(&v["root"]),
        log.latest_checkpoint().await.unwrap().unwrap().root
    );

    for (from, to) in [(1u64, 37u64), (8, 37), (13, 20), (37, 37)] {
        let (status, _, body) = get(
            &log,
            &format!("/audit/proof/consistency?from={from}&to={to}"),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        let hashes: Vec<Hash> = v["hashes"].as_array().unwrap().iter().map(hash).collect();
        assert!(check_consistency(
            from,
            to,
            hash(&v["from_root"]),
            hash(&v["to_root"]),
            &hashes
        ));
    }
    for bad in [
        "/audit/proof/inclusion?index=37&size=37",
        "/audit/proof/inclusion?index=1&size=99",
        "/audit/proof/inclusion",
        "/audit/proof/consistency?from=9&to=3",
    ] {
        let (status, _, _) = get(&log, bad).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
    }
}

// === /events ===

/// Reads Server-Sent Events from a response body.
struct Sse {
    body: Body,
    buf: String,
}

impl Sse {
    async fn open(log: &Arc<AuditLog>, uri: &str, last_event_id: Option<u64>) -> Self {
        let mut req = Request::get(uri);
        if let Some(id) = last_event_id {
            req = req.header("Last-Event-ID", id.to_string());
        }
        let resp = keyless_audit::http::router(log.clone())
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert!(
            resp.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/event-stream")
        );
        Self {
            body: resp.into_body(),
            buf: String::new(),
        }
    }

    /// The next event as (id, data), None when the stream ended.
    async fn next(&mut self) -> Option<(u64, Value)> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut id = None;
                let mut data = None;
                for line in block.lines() {
                    if let Some(v) = line
                        .strip_prefix("id: ")
                        .or_else(|| line.strip_prefix("id:"))
                    {
                        id = Some(v.trim().parse().unwrap());
                    } else if let Some(v) = line
                        .strip_prefix("data: ")
                        .or_else(|| line.strip_prefix("data:"))
                    {
                        data = Some(serde_json::from_str(v).unwrap());
                    }
                }
                match (id, data) {
                    (Some(id), Some(data)) => return Some((id, data)),
                    _ => continue, // keep-alive comment
                }
            }
            let frame = tokio::time::timeout(Duration::from_secs(10), self.body.frame())
                .await
                .expect("no event within 10 s")?
                .unwrap();
            if let Ok(bytes) = frame.into_data() {
                self.buf.push_str(std::str::from_utf8(&bytes).unwrap());
            }
        }
    }

    async fn ids(&mut self, n: usize) -> Vec<u64> {
        let mut v = Vec::new();
        for _ in 0..n {
            let (id, data) = self.next().await.expect("stream ended early");
            assert_eq!(data["index"], id);
            v.push(id);
        }
        v
    }
}

#[tokio::test]
async fn events_replay_then_follow_live_in_order() {
    let (_env, log) = log_with(10).await;
    let mut sse = Sse::open(&log, "/events?since=0", None).await;
    assert_eq!(sse.ids(10).await, (0..10).collect::<Vec<_>>());
    for i in 10..15 {
        log.append(event(i)).await.unwrap();
    }
    assert_eq!(sse.ids(5).await, (10..15).collect::<Vec<_>>());

    // Without since or Last-Event-ID: live only.
    let mut live = Sse::open(&log, "/events", None).await;
    log.append(event(15)).await.unwrap();
    assert_eq!(live.ids(1).await, vec![15]);
}

#[tokio::test]
async fn events_resume_from_last_event_id_without_gaps_or_duplicates() {
    let (_env, log) = log_with(20).await;
    let mut sse = Sse::open(&log, "/events", Some(6)).await;
    // Appends race the replay-to-live switch.
    let writer = {
        let log = log.clone();
        tokio::spawn(async move {
            let tasks: Vec<_> = (20..220)
                .map(|i| {
                    let log = log.clone();
                    tokio::spawn(async move { log.append(event(i)).await.unwrap() })
                })
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
        })
    };
    assert_eq!(sse.ids(213).await, (7..220).collect::<Vec<_>>());
    writer.await.unwrap();
    // A second resume, from the middle.
    let mut again = Sse::open(&log, "/events", Some(150)).await;
    assert_eq!(again.ids(69).await, (151..220).collect::<Vec<_>>());
}

#[tokio::test]
async fn events_are_filtered_by_user_agent_and_type() {
    let (_env, log) = log_with(24).await;
    let mut by_user = Sse::open(&log, "/events?since=0&user=alice@example.com", None).await;
    let ids = by_user.ids(12).await;
    assert_eq!(ids, (0..24).filter(|i| i % 2 == 0).collect::<Vec<_>>());

    let agent = "spiffe://example.org/agent/b";
    let mut by_agent = Sse::open(&log, &format!("/events?since=0&agent={agent}"), None).await;
    assert_eq!(
        by_agent.ids(8).await,
        (0..24).filter(|i| i % 3 == 1).collect::<Vec<_>>()
    );

    let mut by_type = Sse::open(&log, "/events?since=0&type=svid.*,attestation.denied", None).await;
    assert_eq!(
        by_type.ids(12).await,
        (0..24)
            .filter(|i| i % 4 == 0 || i % 4 == 2)
            .collect::<Vec<_>>()
    );

    // Combined, then live, then resumed with Last-Event-ID.
    let mut both = Sse::open(
        &log,
        "/events?since=0&user=bob@example.com&type=tool.called",
        None,
    )
    .await;
    assert_eq!(both.ids(6).await, vec![3, 7, 11, 15, 19, 23]);
    for i in 24..32 {
        log.append(event(i)).await.unwrap();
    }
    assert_eq!(both.ids(2).await, vec![27, 31]);
    let mut resumed = Sse::open(
        &log,
        "/events?user=bob@example.com&type=tool.called",
        Some(19),
    )
    .await;
    assert_eq!(resumed.ids(3).await, vec![23, 27, 31]);
}

#[tokio::test]
async fn a_slow_subscriber_is_dropped_and_never_blocks_appends() {
    let (_env, log) = log_with(1).await;
    let mut slow = Sse::open(&log, "/events", None).await;
    // Nobody reads `slow` while more than the bus holds is appended: the
    // appends all complete.
    let n = BUS_CAPACITY as u64 + 200;
    let tasks: Vec<_> = (0..64u64)
        .map(|t| {
            let log = log.clone();
            tokio::spawn(async move {
                let mut i = t;
                while i < n {
                    log.append(event(i)).await.unwrap();
                    i += 64;
                }
            })
        })
        .collect();
    tokio::time::timeout(Duration::from_secs(60), async {
        for t in tasks {
            t.await.unwrap();
        }
    })
    .await
    .expect("appends blocked behind a slow subscriber");
    // The subscriber's stream ends (it lagged); it would resume with Last-Event-ID.
    let mut delivered = 0;
    while slow.next().await.is_some() {
        delivered += 1;
    }
    assert!(
        delivered < n as usize,
        "a lagging subscriber must be cut off"
    );
}
