//! The transmitter and the receiver over real HTTP on loopback: stream
//! management, push with downtime and restart, poll with ack/setErrs and
//! long polling, verification, and the receiver's refusals (RFC 8935 codes).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use keyless_audit::MemorySink;
use keyless_signals::caep::{self, CaepEvent};
use keyless_signals::http::{AuthError, Authorizer, receiver_router, transmitter_router};
use keyless_signals::receiver::{CaepHandler, Receiver};
use keyless_signals::set::{SetSigner, VerifiedSet};
use keyless_signals::subject;
use keyless_signals::transmitter::{Owner, Transmitter, TransmitterConfig};
use keyless_store::{FileKeyManager, KeyAlgorithm, KeyManager, Signer, Store};
use serde_json::{Value, json};

const RECEIVER_AUD: &str = "https://receiver.example/ssf";

/// Bearer tokens of the test: `<owner>:<scope>[,<scope>]`.
#[derive(Debug)]
struct TestAuth;

#[async_trait::async_trait]
impl Authorizer for TestAuth {
    async fn authorize(&self, bearer: &str, scope: &str) -> Result<String, AuthError> {
        let (owner, scopes) = bearer
            .split_once(':')
            .ok_or_else(|| AuthError::InvalidToken("malformed test token".into()))?;
        if scopes.split(',').any(|s| s == scope) {
            Ok(owner.to_owned())
        } else {
            Err(AuthError::InsufficientScope(format!("needs {scope}")))
        }
    }
}

#[derive(Debug, Default)]
struct Recorder {
    seen: Mutex<Vec<(String, Value, Value)>>,
}

#[async_trait::async_trait]
impl CaepHandler for Recorder {
    async fn apply(&self, set: &VerifiedSet, event: &CaepEvent) -> Result<String, String> {
        self.seen.lock().unwrap().push((
            event.event_type().to_owned(),
            set.sub_id.clone(),
            set.event.clone(),
        ));
        Ok("recorded".into())
    }
}

impl Recorder {
    fn emails(&self) -> Vec<String> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter_map(|(_, s, _)| s.get("email").and_then(Value::as_str).map(str::to_owned))
            .collect()
    }
}

async fn serve(router: Router) -> (String, tokio::task::JoinHandle<()>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let h = tokio::spawn(async move {
        axum::serve(l, router).await.unwrap();
    });
    (url, h)
}

async fn bind() -> (tokio::net::TcpListener, String) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    (l, url)
}

struct World {
    _dir: tempfile::TempDir,
    store: Store,
    key: Arc<dyn Signer>,
    issuer: String,
    transmitter: Arc<Transmitter>,
    push_worker: tokio::task::JoinHandle<()>,
    events: Arc<MemorySink>,
    receiver: Arc<Receiver>,
    recorder: Arc<Recorder>,
    receiver_url: String,
    /// While false the receiver answers 503 (it is "down").
    receiver_up: Arc<AtomicBool>,
    http: reqwest::Client,
}

fn fast(issuer: &str) -> TransmitterConfig {
    let mut c = TransmitterConfig::new(issuer);
    c.backoff_base = Duration::from_millis(20);
    c.backoff_max = Duration::from_millis(100);
    c.max_poll_wait = Duration::from_secs(5);
    c
}

async fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_sqlite(&dir.path().join("t.db")).await.unwrap();
    let rstore = Store::open_sqlite(&dir.path().join("r.db")).await.unwrap();
    world_on(dir, store, rstore).await
}

/// The transmitter on `store`, the receiver on `rstore`.
async fn world_on(dir: tempfile::TempDir, store: Store, rstore: Store) -> World {
    let keys = FileKeyManager::open(&dir.path().join("keys")).unwrap();
    let key = keys.generate("set", KeyAlgorithm::EcdsaP256).await.unwrap();
    let events = Arc::new(MemorySink::default());
    let (l, issuer) = bind().await;
    let transmitter = Transmitter::new(
        store.clone(),
        events.clone(),
        SetSigner::new(key.clone(), issuer.clone()).unwrap(),
        fast(&issuer),
    )
    .unwrap();
    let push_worker = transmitter.spawn_push_worker();
    let router = transmitter_router(transmitter.clone(), Arc::new(TestAuth));
    tokio::spawn(async move {
        axum::serve(l, router).await.unwrap();
    });

    let recorder = Arc::new(Recorder::default());
    let receiver = Receiver::open(rstore, events.clone(), recorder.clone(), RECEIVER_AUD)
        .await
        .unwrap();
    let up = Arc::new(AtomicBool::new(true));
    let flag = up.clone();
    let router = receiver_router(receiver.clone()).layer(axum::middleware::from_fn(
        move |req: axum::extract::Request, next: axum::middleware::Next| {
            let flag = flag.clone();
            async move {
                if flag.load(Ordering::SeqCst) {
                    next.run(req).await
                } else {
                    axum::response::IntoResponse::into_response(
                        axum::http::StatusCode::SERVICE_UNAVAILABLE,
                    )
                }
            }
        },
    ));
    let (receiver_url, _) = serve(router).await;
    receiver.subscribe(&issuer, "push", None).await.unwrap();
    World {
        _dir: dir,
        store,
        key,
        issuer,
        transmitter,
        push_worker,
        events,
        receiver,
        recorder,
        receiver_url,
        receiver_up: up,
        http: reqwest::Client::new(),
    }
}

impl World {
    async fn push_stream(&self) -> String {
        let s = self
            .transmitter
            .create_stream(
                &Owner::Admin,
                &json!({
                    "delivery": {"method": "urn:ietf:rfc:8935", "endpoint_url": format!("{}/ssf/push", self.receiver_url)},
                    "events_requested": caep::CAEP_EVENTS,
                }),
                Some(RECEIVER_AUD.into()),
            )
            .await
            .unwrap();
        s.config.stream_id
    }

    async fn revoke(&self, email: &str) {
        self.transmitter
            .publish(
                &subject::email(email),
                caep::SESSION_REVOKED,
                json!({"event_timestamp": 1}),
                None,
            )
            .await
            .unwrap();
    }

    async fn wait_seen(&self, n: usize) -> Vec<String> {
        for _ in 0..300 {
            let e = self.recorder.emails();
            if e.len() >= n {
                return e;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("only {:?} arrived, wanted {n}", self.recorder.emails());
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut r = self
            .http
            .request(method, format!("{}{path}", self.issuer))
            .bearer_auth(token);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// A SET signed with the transmitter's key, with any header and claims.
    fn forge(&self, header: Value, claims: Value) -> String {
        let input = format!(
            "{}.{}",
            B64.encode(header.to_string()),
            B64.encode(claims.to_string())
        );
        let sig = self.key.sign(input.as_bytes()).unwrap();
        format!("{input}.{}", B64.encode(sig))
    }

    fn kid(&self) -> String {
        SetSigner::new(self.key.clone(), self.issuer.clone())
            .unwrap()
            .kid()
            .to_owned()
    }

    async fn push_raw(&self, body: &str) -> (u16, Value) {
        let resp = self
            .http
            .post(format!("{}/ssf/push", self.receiver_url))
            .header("content-type", "application/secevent+jwt")
            .body(body.to_owned())
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }
}

#[tokio::test]
async fn stream_management_follows_ssf() {
    let w = world().await;
    let meta: Value = w
        .http
        .get(format!("{}/.well-known/ssf-configuration", w.issuer))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(meta["spec_version"], "1_0");
    assert_eq!(meta["issuer"], w.issuer);
    assert_eq!(
        meta["configuration_endpoint"],
        format!("{}/ssf/stream", w.issuer)
    );
    let jwks: Value = w
        .http
        .get(meta["jwks_uri"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(jwks["keys"][0]["kid"], w.kid());

    // No token, a token without the scope.
    let resp = w
        .http
        .post(format!("{}/ssf/stream", w.issuer))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert!(
        resp.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer")
    );
    let (s, body) = w
        .call(
            reqwest::Method::POST,
            "/ssf/stream",
            "a:ssf.read",
            Some(json!({})),
        )
        .await;
    assert_eq!(s, 403, "{body}");

    // Create (no delivery: poll), read, the transmitter-supplied fields.
    let (s, created) = w
        .call(reqwest::Method::POST, "/ssf/stream", "a:ssf.manage,ssf.read",
              Some(json!({"events_requested": [caep::SESSION_REVOKED, "urn:example:unknown"], "description": "t"})))
        .await;
    assert_eq!(s, 201, "{created}");
    let id = created["stream_id"].as_str().unwrap().to_owned();
    assert_eq!(created["iss"], w.issuer);
    assert_eq!(created["aud"], "a");
    assert_eq!(created["delivery"]["method"], "urn:ietf:rfc:8936");
    assert_eq!(
        created["delivery"]["endpoint_url"],
        format!("{}/ssf/poll?stream_id={id}", w.issuer)
    );
    assert_eq!(created["events_delivered"], json!([caep::SESSION_REVOKED]));
    let (s, read) = w
        .call(
            reqwest::Method::GET,
            &format!("/ssf/stream?stream_id={id}"),
            "a:ssf.read",
            None,
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(read, created);

    // Another receiver cannot see or touch it.
    let (s, _) = w
        .call(
            reqwest::Method::GET,
            &format!("/ssf/stream?stream_id={id}"),
            "b:ssf.read",
            None,
        )
        .await;
    assert_eq!(s, 404);
    let (s, all) = w
        .call(reqwest::Method::GET, "/ssf/stream", "b:ssf.read", None)
        .await;
    assert_eq!((s, all), (200, json!([])));

    // Bad input changes nothing.
    for bad in [
        json!({"stream_id": id, "iss": "https://evil.example"}),
        json!({"stream_id": id, "events_delivered": []}),
        json!({"stream_id": id, "frobnicate": true}),
        json!({"stream_id": id, "delivery": {"method": "urn:ietf:rfc:8935"}}),
        json!({"stream_id": id, "delivery": {"method": "urn:ietf:rfc:8935", "endpoint_url": "file:///etc/passwd"}}),
        json!({"stream_id": id, "delivery": {"method": "carrier-pigeon"}}),
    ] {
        let (s, body) = w
            .call(
                reqwest::Method::PATCH,
                "/ssf/stream",
                "a:ssf.manage",
                Some(bad.clone()),
            )
            .await;
        assert_eq!(s, 400, "{bad} → {body}");
        assert_eq!(body["error"], "invalid_request");
    }
    let (_, unchanged) = w
        .call(
            reqwest::Method::GET,
            &format!("/ssf/stream?stream_id={id}"),
            "a:ssf.read",
            None,
        )
        .await;
    assert_eq!(unchanged, created);
    let (s, _) = w
        .call(
            reqwest::Method::POST,
            "/ssf/stream",
            "a:ssf.manage",
            Some(json!({"stream_id": "x"})),
        )
        .await;
    assert_eq!(s, 400);

    // Update keeps what it does not name; replace resets it. Repeating a
    // transmitter-supplied field unchanged is fine.
    let (s, patched) = w
        .call(
            reqwest::Method::PATCH,
            "/ssf/stream",
            "a:ssf.manage",
            Some(json!({"stream_id": id, "iss": w.issuer, "events_requested": caep::CAEP_EVENTS})),
        )
        .await;
    assert_eq!(s, 200, "{patched}");
    assert_eq!(patched["description"], "t");
    assert_eq!(
        patched["events_delivered"].as_array().unwrap().len(),
        caep::CAEP_EVENTS.len()
    );
    let (s, replaced) = w
        .call(
            reqwest::Method::PUT,
            "/ssf/stream",
            "a:ssf.manage",
            Some(json!({"stream_id": id, "events_requested": [caep::CREDENTIAL_CHANGE]})),
        )
        .await;
    assert_eq!(s, 200);
    assert!(replaced.get("description").is_none(), "{replaced}");
    assert_eq!(
        replaced["events_delivered"],
        json!([caep::CREDENTIAL_CHANGE])
    );

    // Status.
    let (s, st) = w
        .call(
            reqwest::Method::GET,
            &format!("/ssf/status?stream_id={id}"),
            "a:ssf.read",
            None,
        )
        .await;
    assert_eq!((s, st["status"].clone()), (200, json!("enabled")));
    let (s, st) = w
        .call(
            reqwest::Method::POST,
            "/ssf/status",
            "a:ssf.manage",
            Some(json!({"stream_id": id, "status": "paused", "reason": "maintenance"})),
        )
        .await;
    assert_eq!(
        (s, st["status"].clone(), st["reason"].clone()),
        (200, json!("paused"), json!("maintenance"))
    );
    let (s, _) = w
        .call(
            reqwest::Method::POST,
            "/ssf/status",
            "a:ssf.manage",
            Some(json!({"stream_id": id, "status": "sleepy"})),
        )
        .await;
    assert_eq!(s, 400);

    // Subjects.
    let (s, _) = w
        .call(
            reqwest::Method::POST,
            "/ssf/subjects/add",
            "a:ssf.manage",
            Some(json!({"stream_id": id, "subject": subject::email("x@example.com")})),
        )
        .await;
    assert_eq!(s, 200);
    let (s, _) = w
        .call(
            reqwest::Method::POST,
            "/ssf/subjects/remove",
            "a:ssf.manage",
            Some(json!({"stream_id": id, "subject": subject::email("x@example.com")})),
        )
        .await;
    assert_eq!(s, 204);
    let (s, _) = w
        .call(
            reqwest::Method::POST,
            "/ssf/subjects/add",
            "a:ssf.manage",
            Some(json!({"stream_id": id, "subject": {"format": "email"}})),
        )
        .await;
    assert_eq!(s, 400);

    // Oversized body.
    let big = json!({"stream_id": id, "description": "x".repeat(100_000)});
    let (s, _) = w
        .call(
            reqwest::Method::PATCH,
            "/ssf/stream",
            "a:ssf.manage",
            Some(big),
        )
        .await;
    assert_eq!(s, 413);

    // Delete.
    let resp = w
        .http
        .delete(format!("{}/ssf/stream?stream_id={id}", w.issuer))
        .bearer_auth("a:ssf.manage")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let (s, _) = w
        .call(
            reqwest::Method::GET,
            &format!("/ssf/stream?stream_id={id}"),
            "a:ssf.read",
            None,
        )
        .await;
    assert_eq!(s, 404);
}

#[tokio::test]
async fn push_survives_receiver_downtime_and_transmitter_restart_in_order() {
    let w = world().await;
    let id = w.push_stream().await;

    // Up: delivered.
    w.revoke("u0@example.com").await;
    assert_eq!(w.wait_seen(1).await, ["u0@example.com"]);

    // Down for a while: retried with backoff, then all arrive in order.
    w.receiver_up.store(false, Ordering::SeqCst);
    for i in 1..=3 {
        w.revoke(&format!("u{i}@example.com")).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(w.recorder.emails().len(), 1);
    assert_eq!(w.transmitter.pending(&Owner::Admin, &id).await.unwrap(), 3);
    w.receiver_up.store(true, Ordering::SeqCst);
    assert_eq!(
        w.wait_seen(4).await,
        [
            "u0@example.com",
            "u1@example.com",
            "u2@example.com",
            "u3@example.com"
        ]
    );

    // The transmitter restarts with SETs queued: nothing is lost.
    w.receiver_up.store(false, Ordering::SeqCst);
    w.revoke("u4@example.com").await;
    w.revoke("u5@example.com").await;
    w.push_worker.abort();
    let again = Transmitter::new(
        w.store.clone(),
        w.events.clone(),
        SetSigner::new(w.key.clone(), w.issuer.clone()).unwrap(),
        fast(&w.issuer),
    )
    .unwrap();
    assert_eq!(again.pending(&Owner::Admin, &id).await.unwrap(), 2);
    w.receiver_up.store(true, Ordering::SeqCst);
    again.spawn_push_worker();
    let seen = w.wait_seen(6).await;
    assert_eq!(&seen[4..], ["u4@example.com", "u5@example.com"]);
    // Each exactly once.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(w.recorder.emails().len(), 6);
    assert!(w.events.events().iter().any(|e| e.kind == "caep.sent"));
    assert!(w.events.events().iter().any(|e| e.kind == "caep.received"));
}

#[tokio::test]
async fn removed_subjects_and_unrequested_events_are_not_delivered() {
    let w = world().await;
    let id = w.push_stream().await;
    w.transmitter
        .set_subject(
            &Owner::Admin,
            &id,
            &subject::email("quiet@example.com"),
            false,
        )
        .await
        .unwrap();
    w.revoke("quiet@example.com").await;
    w.revoke("loud@example.com").await;
    assert_eq!(w.wait_seen(1).await, ["loud@example.com"]);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(w.recorder.emails(), ["loud@example.com"]);
}

#[tokio::test]
async fn poll_returns_acks_and_redelivers_unacknowledged() {
    let w = world().await;
    let (s, created) = w
        .call(
            reqwest::Method::POST,
            "/ssf/stream",
            "a:ssf.manage,ssf.read",
            Some(json!({"events_requested": caep::CAEP_EVENTS})),
        )
        .await;
    assert_eq!(s, 201);
    let id = created["stream_id"].as_str().unwrap().to_owned();
    for i in 0..3 {
        w.revoke(&format!("p{i}@example.com")).await;
    }
    let path = format!("/ssf/poll?stream_id={id}");
    let (s, first) = w
        .call(
            reqwest::Method::POST,
            &path,
            "a:ssf.read",
            Some(json!({"returnImmediately": true, "maxEvents": 2})),
        )
        .await;
    assert_eq!(s, 200, "{first}");
    let sets = first["sets"].as_object().unwrap();
    assert_eq!(sets.len(), 2);
    assert_eq!(first["moreAvailable"], true);
    let jtis: Vec<String> = sets.keys().cloned().collect();
    // Not acknowledged: the same come back.
    let (_, again) = w
        .call(
            reqwest::Method::POST,
            &path,
            "a:ssf.read",
            Some(json!({"returnImmediately": true, "maxEvents": 2})),
        )
        .await;
    assert_eq!(
        again["sets"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect::<Vec<_>>(),
        jtis
    );
    // Ack one, report an error on the other: the third comes.
    let (_, third) = w
        .call(
            reqwest::Method::POST,
            &path,
            "a:ssf.read",
            Some(json!({
                "returnImmediately": true,
                "ack": [jtis[0]],
                "setErrs": {jtis[1].clone(): {"err": "invalid_key", "description": "unknown kid"}},
            })),
        )
        .await;
    let third_sets = third["sets"].as_object().unwrap();
    assert_eq!(third_sets.len(), 1, "{third}");
    assert!(!jtis.contains(third_sets.keys().next().unwrap()));
    assert_eq!(third["moreAvailable"], false);
    assert!(
        w.events
            .events()
            .iter()
            .any(|e| e.kind == "caep.delivery_failed"
                && e.reason.as_deref().unwrap_or("").contains("invalid_key")),
        "the setErr is on record"
    );
    let last = third_sets.keys().next().unwrap().clone();
    let (_, empty) = w
        .call(
            reqwest::Method::POST,
            &path,
            "a:ssf.read",
            Some(json!({"returnImmediately": true, "ack": [last]})),
        )
        .await;
    assert_eq!(empty["sets"], json!({}));

    // The SETs verify with the transmitter's keys (what a poll receiver does).
    let token = sets.values().next().unwrap().as_str().unwrap();
    let keys = keyless_signals::set::parse_jwks(&w.transmitter.jwks()).unwrap();
    let v = keyless_signals::set::verify(token, &keys, &w.issuer, "a").unwrap();
    assert_eq!(v.event_type, caep::SESSION_REVOKED);

    // Long poll: waits until an event is published.
    let poller = {
        let http = w.http.clone();
        let url = format!("{}{path}", w.issuer);
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let v: Value = http
                .post(url)
                .bearer_auth("a:ssf.read")
                .json(&json!({}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            (v, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    w.revoke("late@example.com").await;
    let (v, waited) = tokio::time::timeout(Duration::from_secs(5), poller)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(v["sets"].as_object().unwrap().len(), 1, "{v}");
    assert!(
        waited >= Duration::from_millis(150),
        "it waited for the event: {waited:?}"
    );

    // A poll of a stream one does not own, or of a push stream.
    let (s, _) = w
        .call(reqwest::Method::POST, &path, "b:ssf.read", Some(json!({})))
        .await;
    assert_eq!(s, 404);
    let push = w.push_stream().await;
    let (s, _) = w
        .call(
            reqwest::Method::POST,
            &format!("/ssf/poll?stream_id={push}"),
            "admin:ssf.read",
            Some(json!({})),
        )
        .await;
    assert_eq!(s, 404, "the operator's stream is not a client's");
    let (s, body) = w
        .call(
            reqwest::Method::POST,
            &path,
            "a:ssf.read",
            Some(json!({"maxEvents": "ten"})),
        )
        .await;
    assert_eq!(s, 400, "{body}");
}

#[tokio::test]
async fn verification_echoes_state() {
    let w = world().await;
    let id = w.push_stream().await;
    w.transmitter
        .verify(&Owner::Admin, &id, Some("st-42"))
        .await
        .unwrap();
    for _ in 0..300 {
        if !w.recorder.seen.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let seen = w.recorder.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].0, caep::VERIFICATION);
    assert_eq!(seen[0].2["state"], "st-42");
}

#[tokio::test]
async fn receiver_refuses_bad_sets_with_rfc8935_codes() {
    let w = world().await;
    let now = 1_700_000_000;
    let header = json!({"alg": "ES256", "typ": "secevent+jwt", "kid": w.kid()});
    let good = json!({
        "iss": w.issuer, "jti": "j-1", "iat": now, "aud": RECEIVER_AUD,
        "sub_id": subject::email("alice@example.com"),
        "events": {caep::SESSION_REVOKED: {}},
    });
    let with = |k: &str, v: Value| {
        let mut c = good.clone();
        c[k] = v;
        c
    };
    let without = |k: &str| {
        let mut c = good.clone();
        c.as_object_mut().unwrap().remove(k);
        c
    };
    let other_key = {
        let dir = tempfile::tempdir().unwrap();
        let keys = FileKeyManager::open(&dir.path().join("k")).unwrap();
        keys.generate("other", KeyAlgorithm::EcdsaP256)
            .await
            .unwrap()
    };
    let wrong_sig = {
        let input = format!(
            "{}.{}",
            B64.encode(header.to_string()),
            B64.encode(with("jti", json!("j-sig")).to_string())
        );
        format!(
            "{input}.{}",
            B64.encode(other_key.sign(input.as_bytes()).unwrap())
        )
    };
    let cases: Vec<(&str, String, &str)> = vec![
        ("wrong signature", wrong_sig, "invalid_key"),
        ("wrong aud", w.forge(header.clone(), with("aud", json!("https://other.example"))), "invalid_audience"),
        ("wrong iss", w.forge(header.clone(), with("iss", json!("https://evil.example"))), "invalid_issuer"),
        ("wrong typ", w.forge(json!({"alg": "ES256", "typ": "JWT", "kid": w.kid()}), good.clone()), "invalid_request"),
        ("two events", w.forge(header.clone(), with("events", json!({caep::SESSION_REVOKED: {}, caep::CREDENTIAL_CHANGE: {"credential_type": "password", "change_type": "update"}}))), "invalid_request"),
        ("sub present", w.forge(header.clone(), with("sub", json!("alice"))), "invalid_request"),
        ("exp present", w.forge(header.clone(), with("exp", json!(now + 60))), "invalid_request"),
        ("no sub_id", w.forge(header.clone(), without("sub_id")), "invalid_request"),
        ("alg none", format!("{}.{}.", B64.encode(json!({"alg": "none", "typ": "secevent+jwt"}).to_string()), B64.encode(good.to_string())), "invalid_key"),
        ("garbage", "not-a-jwt".into(), "invalid_request"),
    ];
    for (what, token, code) in &cases {
        let (s, body) = w.push_raw(token).await;
        assert_eq!(s, 400, "{what}: {body}");
        assert_eq!(body["err"], *code, "{what}: {body}");
        assert!(
            body["description"].as_str().is_some_and(|d| !d.is_empty()),
            "{what}: {body}"
        );
    }
    assert!(
        w.recorder.seen.lock().unwrap().is_empty(),
        "nothing bad was applied"
    );

    // The good one once; its replay is refused.
    let token = w.forge(header.clone(), good.clone());
    let (s, body) = w.push_raw(&token).await;
    assert_eq!(s, 202, "{body}");
    let (s, body) = w.push_raw(&token).await;
    assert_eq!(s, 400);
    assert_eq!(body["err"], "invalid_request");
    assert!(
        body["description"].as_str().unwrap().contains("j-1"),
        "{body}"
    );
    assert_eq!(w.recorder.seen.lock().unwrap().len(), 1);

    // Wrong content type.
    let resp = w
        .http
        .post(format!("{}/ssf/push", w.receiver_url))
        .header("content-type", "application/json")
        .body(token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let _ = &w.receiver;
}

#[tokio::test]
async fn push_poll_and_replay_work_on_postgres() {
    let (Some(t), Some(r)) = (
        keyless_store::testing::fresh_postgres_database("ssf_transmitter").await,
        keyless_store::testing::fresh_postgres_database("ssf_receiver").await,
    ) else {
        return;
    };
    let w = world_on(
        tempfile::tempdir().unwrap(),
        Store::open(&t).await.unwrap(),
        Store::open(&r).await.unwrap(),
    )
    .await;
    let id = w.push_stream().await;
    w.receiver_up.store(false, Ordering::SeqCst);
    for i in 0..3 {
        w.revoke(&format!("pg{i}@example.com")).await;
    }
    assert_eq!(w.transmitter.pending(&Owner::Admin, &id).await.unwrap(), 3);
    w.receiver_up.store(true, Ordering::SeqCst);
    assert_eq!(
        w.wait_seen(3).await,
        ["pg0@example.com", "pg1@example.com", "pg2@example.com"]
    );
    w.transmitter
        .set_subject(
            &Owner::Admin,
            &id,
            &subject::email("pg0@example.com"),
            false,
        )
        .await
        .unwrap();

    let (s, created) = w
        .call(
            reqwest::Method::POST,
            "/ssf/stream",
            "a:ssf.manage",
            Some(json!({"events_requested": caep::CAEP_EVENTS})),
        )
        .await;
    assert_eq!(s, 201, "{created}");
    let path = format!(
        "/ssf/poll?stream_id={}",
        created["stream_id"].as_str().unwrap()
    );
    w.revoke("pg3@example.com").await;
    let (_, polled) = w
        .call(
            reqwest::Method::POST,
            &path,
            "a:ssf.read",
            Some(json!({"returnImmediately": true})),
        )
        .await;
    let jtis: Vec<String> = polled["sets"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    assert_eq!(jtis.len(), 1, "{polled}");
    let (_, empty) = w
        .call(
            reqwest::Method::POST,
            &path,
            "a:ssf.read",
            Some(json!({"returnImmediately": true, "ack": jtis})),
        )
        .await;
    assert_eq!(empty["sets"], json!({}));

    let header = json!({"alg": "ES256", "typ": "secevent+jwt", "kid": w.kid()});
    let token = w.forge(
        header,
        json!({
            "iss": w.issuer, "jti": "pg-replay", "iat": 1, "aud": RECEIVER_AUD,
            "sub_id": subject::email("x@example.com"), "events": {caep::SESSION_REVOKED: {}},
        }),
    );
    assert_eq!(w.push_raw(&token).await.0, 202);
    assert_eq!(w.push_raw(&token).await.0, 400);
}
