//! End-to-end tests of the Workload API: a real `Identity` (temporary SQLite
//! store, file key manager, in-memory audit sink), the server on a temporary
//! Unix socket, and the generated tonic client. The caller attested is this
//! test process itself, so entries select its own uid or binary hash. The
//! client is the crate's own `client` module (tonic over the Unix socket).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use keyless_audit::{MemorySink, Outcome};
use keyless_identity::{
    Identity, IdentityConfig, NewEntry, RegistrationEntry, Selector, SpiffeId, TrustDomain,
};
use keyless_store::{FileKeyManager, Store};
use keyless_workload_api::client::{WorkloadApiClient, request as req};
use keyless_workload_api::proto::{
    JwtBundlesRequest, JwtsvidRequest, ValidateJwtsvidRequest, X509BundlesRequest, X509svidRequest,
    X509svidResponse,
};
use keyless_workload_api::{SECURITY_HEADER, WorkloadApi, WorkloadApiError};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::{Code, Request};

/// Bound on every wait for a stream message, so a broken stream fails the
/// test instead of hanging it.
const WAIT: Duration = Duration::from_secs(10);

struct Fabric {
    identity: Arc<Identity>,
    events: Arc<MemorySink>,
    socket: PathBuf,
    shutdown: Option<oneshot::Sender<()>>,
    server: JoinHandle<Result<(), WorkloadApiError>>,
    _dir: tempfile::TempDir,
}

impl Fabric {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_sqlite(&dir.path().join("keyless.db"))
            .await
            .unwrap();
        let keys = Arc::new(FileKeyManager::open(&dir.path().join("keys")).unwrap());
        let events = Arc::new(MemorySink::default());
        let config = IdentityConfig::new(
            TrustDomain::new("example.org").unwrap(),
            "http://127.0.0.1:8180".into(),
        );
        let identity = Identity::open(store, keys, events.clone(), config)
            .await
            .unwrap();
        let socket = dir.path().join("workload.sock");
        let (shutdown, stopped) = oneshot::channel::<()>();
        let api = WorkloadApi::new(identity.clone(), events.clone());
        let path = socket.clone();
        let server = tokio::spawn(async move {
            api.serve(&path, async {
                let _ = stopped.await;
            })
            .await
        });
        wait_for_socket(&socket).await;
        Self {
            identity,
            events,
            socket,
            shutdown: Some(shutdown),
            server,
            _dir: dir,
        }
    }

    async fn client(&self) -> WorkloadApiClient {
        client(&self.socket).await
    }

    async fn entry(&self, name: &str, selectors: Vec<Selector>) -> RegistrationEntry {
        self.entry_with(NewEntry::new(spiffe_id(name), selectors))
            .await
    }

    async fn entry_with(&self, new: NewEntry) -> RegistrationEntry {
        self.identity.create_entry(new).await.unwrap()
    }

    async fn stop(mut self) -> Result<(), WorkloadApiError> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        tokio::time::timeout(WAIT, self.server)
            .await
            .expect("server did not shut down")
            .unwrap()
    }
}

async fn wait_for_socket(path: &Path) {
    for _ in 0..200 {
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("workload api socket never came up");
}

async fn client(socket: &Path) -> WorkloadApiClient {
    keyless_workload_api::client::connect(socket).await.unwrap()
}

fn spiffe_id(name: &str) -> SpiffeId {
    SpiffeId::new(&format!("spiffe://example.org/{name}")).unwrap()
}

fn own_uid() -> u32 {
    std::fs::metadata("/proc/self").unwrap().uid()
}

fn own_uid_selector() -> Selector {
    Selector::unix_uid(own_uid())
}

fn own_binary_sha256() -> [u8; 32] {
    let bytes = std::fs::read("/proc/self/exe").unwrap();
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &bytes);
    digest.as_ref().try_into().unwrap()
}

async fn next<T>(stream: &mut tonic::Streaming<T>) -> Result<Option<T>, tonic::Status> {
    tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("no stream message in time")
}

/// Splits a concatenation of DER certificates.
fn split_der(mut der: &[u8]) -> Vec<x509_parser::certificate::X509Certificate<'_>> {
    let mut certs = Vec::new();
    while !der.is_empty() {
        let (rest, cert) = x509_parser::parse_x509_certificate(der).unwrap();
        certs.push(cert);
        der = rest;
    }
    certs
}

fn leaf_serial(response: &X509svidResponse) -> String {
    split_der(&response.svids[0].x509_svid)[0].raw_serial_as_string()
}

#[tokio::test]
async fn x509_stream_first_message_is_a_complete_svid() {
    let fabric = Fabric::start().await;
    let entry = fabric
        .entry_with(NewEntry {
            hint: "internal".into(),
            ..NewEntry::new(spiffe_id("agent"), vec![own_uid_selector()])
        })
        .await;
    let mut client = fabric.client().await;

    let mut stream = client
        .fetch_x509svid(req(X509svidRequest {}))
        .await
        .unwrap()
        .into_inner();
    let response = next(&mut stream).await.unwrap().unwrap();

    assert_eq!(response.svids.len(), 1);
    assert!(response.crl.is_empty());
    assert!(response.federated_bundles.is_empty());
    let svid = &response.svids[0];
    assert_eq!(svid.spiffe_id, "spiffe://example.org/agent");
    assert_eq!(svid.hint, "internal");

    // Chain: leaf then intermediate; exactly one URI SAN, the SPIFFE ID.
    let chain = split_der(&svid.x509_svid);
    assert_eq!(chain.len(), 2);
    let san = chain[0].subject_alternative_name().unwrap().unwrap();
    let uris: Vec<_> = san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::URI(u) => Some(*u),
            _ => None,
        })
        .collect();
    assert_eq!(uris, vec!["spiffe://example.org/agent"]);
    assert!(chain[1].is_ca());

    // The key is PKCS#8 and belongs to the leaf.
    let key = aws_lc_rs::signature::EcdsaKeyPair::from_pkcs8(
        &aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
        &svid.x509_svid_key,
    )
    .unwrap();
    use aws_lc_rs::signature::KeyPair as _;
    assert_eq!(
        key.public_key().as_ref(),
        chain[0].public_key().subject_public_key.data.as_ref()
    );

    // The bundle is the trust domain's roots, concatenated DER.
    assert_eq!(svid.bundle, fabric.identity.x509_authorities().concat());
    assert!(!split_der(&svid.bundle).is_empty());

    // The issuance was recorded before the SVID was sent.
    let issued: Vec<_> = fabric
        .events
        .events()
        .into_iter()
        .filter(|e| e.kind == "svid.issued")
        .collect();
    assert_eq!(issued.len(), 1);
    let event = &issued[0];
    assert_eq!(event.outcome, Outcome::Success);
    assert_eq!(event.agent.as_deref(), Some("spiffe://example.org/agent"));
    assert_eq!(event.detail["kind"], "x509");
    assert_eq!(
        event.detail["serial"].as_str().unwrap(),
        chain[0].raw_serial_as_string().replace(':', "")
    );
    assert_eq!(event.detail["pid"], i64::from(std::process::id() as i32));
    let selectors = event.detail["selectors"].as_array().unwrap();
    assert!(selectors.contains(&format!("unix:uid:{}", own_uid()).into()));
    assert!(event.token_expires_in.is_some());
    drop(entry);
    fabric.stop().await.unwrap();
}

#[tokio::test]
async fn jwt_svid_fetch_and_validate_round_trip() {
    let fabric = Fabric::start().await;
    fabric.entry("agent", vec![own_uid_selector()]).await;
    let mut client = fabric.client().await;

    let response = client
        .fetch_jwtsvid(req(JwtsvidRequest {
            audience: vec!["bank".into()],
            spiffe_id: String::new(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.svids.len(), 1);
    let svid = &response.svids[0];
    assert_eq!(svid.spiffe_id, "spiffe://example.org/agent");
    assert_eq!(svid.svid.split('.').count(), 3);

    let validated = client
        .validate_jwtsvid(req(ValidateJwtsvidRequest {
            audience: "bank".into(),
            svid: svid.svid.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(validated.spiffe_id, "spiffe://example.org/agent");
    let claims = validated.claims.unwrap().fields;
    assert_eq!(
        claims["sub"].kind,
        Some(prost_types::value::Kind::StringValue(
            "spiffe://example.org/agent".into()
        ))
    );
    assert!(claims.contains_key("exp"));
    assert!(claims.contains_key("aud"));

    // Another audience: rejected, with the reason.
    let err = client
        .validate_jwtsvid(req(ValidateJwtsvidRequest {
            audience: "directory".into(),
            svid: svid.svid.clone(),
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(!err.message().is_empty());

    // Empty arguments.
    for (audience, token, message) in [
        ("", svid.svid.as_str(), "audience must be specified"),
        ("bank", "", "svid must be specified"),
    ] {
        let err = client
            .validate_jwtsvid(req(ValidateJwtsvidRequest {
                audience: audience.into(),
                svid: token.into(),
            }))
            .await
            .unwrap_err();
        assert_eq!(
            (err.code(), err.message()),
            (Code::InvalidArgument, message)
        );
    }

    let issued = fabric
        .events
        .events()
        .into_iter()
        .find(|e| e.kind == "svid.issued")
        .unwrap();
    assert_eq!(issued.detail["kind"], "jwt");
    assert_eq!(issued.detail["audience"], serde_json::json!(["bank"]));
    assert!(issued.detail["jti"].is_string());
    fabric.stop().await.unwrap();
}

#[tokio::test]
async fn missing_security_header_is_invalid_argument() {
    let fabric = Fabric::start().await;
    fabric.entry("agent", vec![own_uid_selector()]).await;
    let mut client = fabric.client().await;
    let expected = (
        Code::InvalidArgument,
        "security header missing from request",
    );

    let err = client
        .fetch_x509svid(Request::new(X509svidRequest {}))
        .await
        .unwrap_err();
    assert_eq!((err.code(), err.message()), expected);

    let err = client
        .fetch_jwtsvid(Request::new(JwtsvidRequest {
            audience: vec!["bank".into()],
            spiffe_id: String::new(),
        }))
        .await
        .unwrap_err();
    assert_eq!((err.code(), err.message()), expected);

    // A wrong value is as good as none.
    let mut request = Request::new(X509BundlesRequest {});
    request
        .metadata_mut()
        .insert(SECURITY_HEADER, "yes".parse().unwrap());
    let err = client.fetch_x509_bundles(request).await.unwrap_err();
    assert_eq!((err.code(), err.message()), expected);
    fabric.stop().await.unwrap();
}

#[tokio::test]
async fn caller_without_entry_gets_permission_denied() {
    let fabric = Fabric::start().await;
    // An entry for someone else.
    fabric
        .entry("other", vec![Selector::unix_uid(own_uid().wrapping_add(1))])
        .await;
    let mut client = fabric.client().await;
    let expected = (Code::PermissionDenied, "no identity issued");

    let err = client
        .fetch_x509svid(req(X509svidRequest {}))
        .await
        .unwrap_err();
    assert_eq!((err.code(), err.message()), expected);
    let err = client
        .fetch_jwtsvid(req(JwtsvidRequest {
            audience: vec!["bank".into()],
            spiffe_id: String::new(),
        }))
        .await
        .unwrap_err();
    assert_eq!((err.code(), err.message()), expected);
    let err = client
        .fetch_jwt_bundles(req(JwtBundlesRequest {}))
        .await
        .unwrap_err();
    assert_eq!((err.code(), err.message()), expected);

    let denied: Vec<_> = fabric
        .events
        .events()
        .into_iter()
        .filter(|e| e.kind == "attestation.denied")
        .collect();
    assert_eq!(denied.len(), 3);
    assert_eq!(denied[0].outcome, Outcome::Denied);
    assert_eq!(denied[0].reason.as_deref(), Some("no identity issued"));
    let selectors = denied[0].detail["selectors"].as_array().unwrap();
    assert!(selectors.contains(&format!("unix:uid:{}", own_uid()).into()));
    assert!(
        selectors
            .iter()
            .any(|s| s.as_str().unwrap().starts_with("unix:sha256:"))
    );
    assert!(
        !fabric
            .events
            .events()
            .iter()
            .any(|e| e.kind == "svid.issued"),
        "no svid may be issued"
    );
    fabric.stop().await.unwrap();
}

#[tokio::test]
async fn jwt_svid_without_audience_is_invalid_argument() {
    let fabric = Fabric::start().await;
    fabric.entry("agent", vec![own_uid_selector()]).await;
    let mut client = fabric.client().await;
    for audience in [vec![], vec![String::new()]] {
        let err = client
            .fetch_jwtsvid(req(JwtsvidRequest {
                audience,
                spiffe_id: String::new(),
            }))
            .await
            .unwrap_err();
        assert_eq!(
            (err.code(), err.message()),
            (Code::InvalidArgument, "audience must be specified")
        );
    }
    fabric.stop().await.unwrap();
}

#[tokio::test]
async fn requested_spiffe_id_selects_among_the_callers_identities() {
    let fabric = Fabric::start().await;
    fabric.entry("first", vec![own_uid_selector()]).await;
    fabric.entry("second", vec![own_uid_selector()]).await;
    fabric
        .entry(
            "stranger",
            vec![Selector::unix_uid(own_uid().wrapping_add(1))],
        )
        .await;
    let mut client = fabric.client().await;
    let fetch = |spiffe_id: &str| {
        req(JwtsvidRequest {
            audience: vec!["bank".into()],
            spiffe_id: spiffe_id.into(),
        })
    };

    let all = client.fetch_jwtsvid(fetch("")).await.unwrap().into_inner();
    let ids: Vec<_> = all.svids.iter().map(|s| s.spiffe_id.as_str()).collect();
    assert_eq!(
        ids,
        vec!["spiffe://example.org/first", "spiffe://example.org/second"]
    );

    let one = client
        .fetch_jwtsvid(fetch("spiffe://example.org/second"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(one.svids.len(), 1);
    assert_eq!(one.svids[0].spiffe_id, "spiffe://example.org/second");

    let err = client
        .fetch_jwtsvid(fetch("spiffe://example.org/stranger"))
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (Code::PermissionDenied, "no identity issued")
    );
    let err = client
        .fetch_jwtsvid(fetch("not a spiffe id"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    // The X.509 stream gives both, the first created being the default.
    let mut stream = client
        .fetch_x509svid(req(X509svidRequest {}))
        .await
        .unwrap()
        .into_inner();
    let response = next(&mut stream).await.unwrap().unwrap();
    let ids: Vec<_> = response
        .svids
        .iter()
        .map(|s| s.spiffe_id.as_str())
        .collect();
    assert_eq!(
        ids,
        vec!["spiffe://example.org/first", "spiffe://example.org/second"]
    );
    fabric.stop().await.unwrap();
}

#[tokio::test]
async fn sha256_selector_must_match_the_binary() {
    let fabric = Fabric::start().await;
    let right = own_binary_sha256();
    let mut wrong = right;
    wrong[0] ^= 0xff;
    fabric
        .entry("wrong-binary", vec![Selector::unix_sha256(&wrong)])
        .await;
    fabric
        .entry(
            "right-binary",
            vec![own_uid_selector(), Selector::unix_sha256(&right)],
        )
        .await;
    let mut client = fabric.client().await;

    let mut stream = client
        .fetch_x509svid(req(X509svidRequest {}))
        .await
        .unwrap()
        .into_inner();
    let response = next(&mut stream).await.unwrap().unwrap();
    let ids: Vec<_> = response
        .svids
        .iter()
        .map(|s| s.spiffe_id.as_str())
        .collect();
    assert_eq!(ids, vec!["spiffe://example.org/right-binary"]);

    let err = client
        .fetch_jwtsvid(req(JwtsvidRequest {
            audience: vec!["bank".into()],
            spiffe_id: "spiffe://example.org/wrong-binary".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);

    // A path selector for this binary works too.
    let exe = std::fs::read_link("/proc/self/exe").unwrap();
    fabric
        .entry(
            "by-path",
            vec![Selector::unix_path(exe.to_str().unwrap()).unwrap()],
        )
        .await;
    let response = next(&mut stream).await.unwrap().unwrap();
    let ids: Vec<_> = response
        .svids
        .iter()
        .map(|s| s.spiffe_id.as_str())
        .collect();
    assert_eq!(
        ids,
        vec![
            "spiffe://example.org/right-binary",
            "spiffe://example.org/by-path"
        ]
    );
    fabric.stop().await.unwrap();
}

#[tokio::test]
async fn x509_stream_delivers_a_fresh_svid_before_the_old_one_expires() {
    let fabric = Fabric::start().await;
    fabric
        .entry_with(NewEntry {
            x509_ttl: Some(Duration::from_secs(4)),
            ..NewEntry::new(spiffe_id("short"), vec![own_uid_selector()])
        })
        .await;
    let mut client = fabric.client().await;
    let mut stream = client
        .fetch_x509svid(req(X509svidRequest {}))
        .await
        .unwrap()
        .into_inner();

    let first = next(&mut stream).await.unwrap().unwrap();
    let first_leaf = split_der(&first.svids[0].x509_svid)[0].validity().not_after;
    let first_expiry = SystemTime::UNIX_EPOCH
        + Duration::from_secs(u64::try_from(first_leaf.timestamp()).unwrap());

    let second = next(&mut stream).await.unwrap().unwrap();
    assert!(
        SystemTime::now() < first_expiry,
        "the fresh svid came after the old one expired"
    );
    assert_ne!(leaf_serial(&first), leaf_serial(&second));
    assert_eq!(second.svids[0].spiffe_id, "spiffe://example.org/short");
    fabric.stop().await.unwrap();
}

#[tokio::test]
async fn bundle_streams_follow_rotation() {
    let fabric = Fabric::start().await;
    fabric.entry("agent", vec![own_uid_selector()]).await;
    let mut client = fabric.client().await;
    let mut x509_bundles = client
        .fetch_x509_bundles(req(X509BundlesRequest {}))
        .await
        .unwrap()
        .into_inner();
    let mut jwt_bundles = client
        .fetch_jwt_bundles(req(JwtBundlesRequest {}))
        .await
        .unwrap()
        .into_inner();
    let mut svids = client
        .fetch_x509svid(req(X509svidRequest {}))
        .await
        .unwrap()
        .into_inner();

    let first = next(&mut x509_bundles).await.unwrap().unwrap();
    assert_eq!(first.bundles.len(), 1);
    assert_eq!(split_der(&first.bundles["example.org"]).len(), 1);
    let jwks = next(&mut jwt_bundles).await.unwrap().unwrap();
    let keys: serde_json::Value = serde_json::from_slice(&jwks.bundles["example.org"]).unwrap();
    assert_eq!(keys["keys"].as_array().unwrap().len(), 1);
    assert!(keys["keys"][0]["kid"].is_string());
    let first_svids = next(&mut svids).await.unwrap().unwrap();

    fabric.identity.rotate_x509_ca().await.unwrap();
    let rotated = next(&mut x509_bundles).await.unwrap().unwrap();
    let roots = split_der(&rotated.bundles["example.org"]);
    assert_eq!(roots.len(), 2, "old and new roots are both trusted");
    assert_eq!(
        rotated.bundles["example.org"],
        fabric.identity.x509_authorities().concat()
    );
    // The SVID stream re-mints with the new CA at once.
    let rotated_svids = next(&mut svids).await.unwrap().unwrap();
    assert_eq!(
        rotated_svids.svids[0].bundle,
        rotated.bundles["example.org"]
    );
    assert_ne!(
        split_der(&first_svids.svids[0].x509_svid)[1]
            .subject_pki
            .raw,
        split_der(&rotated_svids.svids[0].x509_svid)[1]
            .subject_pki
            .raw,
        "new intermediate"
    );

    fabric.identity.rotate_jwt_key().await.unwrap();
    let jwks = next(&mut jwt_bundles).await.unwrap().unwrap();
    let keys: serde_json::Value = serde_json::from_slice(&jwks.bundles["example.org"]).unwrap();
    assert_eq!(keys["keys"].as_array().unwrap().len(), 2);
    fabric.stop().await.unwrap();
}

#[tokio::test]
async fn unrelated_changes_do_not_resend() {
    let fabric = Fabric::start().await;
    fabric.entry("agent", vec![own_uid_selector()]).await;
    let mut client = fabric.client().await;
    let mut svids = client
        .fetch_x509svid(req(X509svidRequest {}))
        .await
        .unwrap()
        .into_inner();
    next(&mut svids).await.unwrap().unwrap();

    // Someone else's entry: nothing for this caller to see.
    fabric
        .entry("other", vec![Selector::unix_uid(own_uid().wrapping_add(1))])
        .await;
    let quiet = tokio::time::timeout(Duration::from_millis(500), svids.message()).await;
    assert!(quiet.is_err(), "stream resent for an unrelated change");
    let issued = fabric
        .events
        .events()
        .iter()
        .filter(|e| e.kind == "svid.issued")
        .count();
    assert_eq!(issued, 1);
    fabric.stop().await.unwrap();
}

#[tokio::test]
async fn stream_ends_with_permission_denied_when_the_identity_is_withdrawn() {
    let fabric = Fabric::start().await;
    let entry = fabric.entry("agent", vec![own_uid_selector()]).await;
    let mut client = fabric.client().await;
    let mut svids = client
        .fetch_x509svid(req(X509svidRequest {}))
        .await
        .unwrap()
        .into_inner();
    next(&mut svids).await.unwrap().unwrap();

    fabric.identity.delete_entry(&entry.id).await.unwrap();
    let err = next(&mut svids).await.unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (Code::PermissionDenied, "no identity issued")
    );
    fabric.stop().await.unwrap();
}

#[tokio::test]
async fn shutdown_ends_open_streams_and_removes_the_socket() {
    let fabric = Fabric::start().await;
    fabric.entry("agent", vec![own_uid_selector()]).await;
    let mode = std::fs::metadata(&fabric.socket)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o666, "callers are attested, not trusted");

    let mut client = fabric.client().await;
    let mut svids = client
        .fetch_x509svid(req(X509svidRequest {}))
        .await
        .unwrap()
        .into_inner();
    next(&mut svids).await.unwrap().unwrap();

    let socket = fabric.socket.clone();
    fabric.stop().await.unwrap();
    assert!(matches!(next(&mut svids).await, Ok(None) | Err(_)));
    assert!(!socket.exists());
}

#[tokio::test]
async fn stale_socket_is_replaced_and_a_live_one_is_not() {
    let fabric = Fabric::start().await;
    fabric.entry("agent", vec![own_uid_selector()]).await;

    // A second server on the live socket refuses to steal it.
    let api = WorkloadApi::new(fabric.identity.clone(), fabric.events.clone());
    let err = api.serve(&fabric.socket, async {}).await.unwrap_err();
    assert!(matches!(err, WorkloadApiError::InUse(_)), "{err}");

    // A socket file nobody listens on is stale: replaced.
    let stale = fabric.socket.with_file_name("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    assert!(stale.exists());
    let (stop, stopped) = oneshot::channel::<()>();
    let api = WorkloadApi::new(fabric.identity.clone(), fabric.events.clone());
    let path = stale.clone();
    let server = tokio::spawn(async move {
        api.serve(&path, async {
            let _ = stopped.await;
        })
        .await
    });
    wait_for_socket(&stale).await;
    let mut client = client(&stale).await;
    let response = client
        .fetch_jwtsvid(req(JwtsvidRequest {
            audience: vec!["bank".into()],
            spiffe_id: String::new(),
        }))
        .await
        .unwrap();
    assert_eq!(response.into_inner().svids.len(), 1);
    stop.send(()).unwrap();
    tokio::time::timeout(WAIT, server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();

    // A regular file is never deleted.
    let file = fabric.socket.with_file_name("not-a-socket");
    std::fs::write(&file, b"data").unwrap();
    let api = WorkloadApi::new(fabric.identity.clone(), fabric.events.clone());
    let err = api.serve(&file, async {}).await.unwrap_err();
    assert!(matches!(err, WorkloadApiError::NotASocket(_)), "{err}");
    assert_eq!(std::fs::read(&file).unwrap(), b"data");
    fabric.stop().await.unwrap();
}

#[tokio::test]
async fn a_disconnected_stream_stops_minting() {
    let fabric = Fabric::start().await;
    fabric.entry("agent", vec![own_uid_selector()]).await;
    let mut client = fabric.client().await;
    let mut svids = client
        .fetch_x509svid(req(X509svidRequest {}))
        .await
        .unwrap()
        .into_inner();
    next(&mut svids).await.unwrap().unwrap();
    drop(svids);
    drop(client);
    // Give the server a moment to see the connection close.
    tokio::time::sleep(Duration::from_millis(200)).await;

    // A change that a live stream would answer with fresh SVIDs.
    fabric.identity.rotate_x509_ca().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let issued = fabric
        .events
        .events()
        .iter()
        .filter(|e| e.kind == "svid.issued")
        .count();
    assert_eq!(issued, 1, "a stream outlived its client");
    fabric.stop().await.unwrap();
}
