//! The Rust `spiffe` crate (rust-spiffe 0.19, the client Rust workloads use)
//! against a real `keyless up`: X509-SVID, JWT-SVID, both bundles, JWT
//! validation online (ValidateJWTSVID) and offline, "no identity issued",
//! streaming rotation; and, with a raw tonic client, the Workload API's
//! security-header rule, which no well-behaved client can break on purpose.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{Fabric, TRUST_DOMAIN, own_uid, own_uid_selector};
use futures::StreamExt;
use keyless_workload_api::proto::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use keyless_workload_api::proto::{JwtsvidRequest, X509svidRequest, X509svidResponse};
use spiffe::{JwtSvid, TrustDomain, WorkloadApiClient, WorkloadApiError};
use tonic::transport::{Channel, Endpoint};

const SPIFFE_ID: &str = "spiffe://example.org/test/rust";
const STEP: Duration = Duration::from_secs(10);

async fn client(fabric: &Fabric) -> WorkloadApiClient {
    tokio::time::timeout(STEP, WorkloadApiClient::connect_to(fabric.socket_uri()))
        .await
        .expect("connect timed out")
        .expect("connect to the Workload API")
}

async fn bounded<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(STEP, f)
        .await
        .unwrap_or_else(|_| panic!("{what} took longer than {STEP:?}"))
}

#[tokio::test]
async fn rust_spiffe_client_fetches_x509_svid_and_bundles() {
    let fabric = Fabric::start();
    fabric.create_entry(SPIFFE_ID, &[&own_uid_selector()], None);
    let client = client(&fabric).await;
    let td = TrustDomain::new(TRUST_DOMAIN).unwrap();

    let ctx = bounded("fetch_x509_context", client.fetch_x509_context())
        .await
        .unwrap_or_else(|e| panic!("fetch_x509_context: {e}\n{}", fabric.logs()));
    let svid = ctx.default_svid().expect("a default SVID");
    assert_eq!(svid.spiffe_id().to_string(), SPIFFE_ID);
    assert_eq!(ctx.svids().len(), 1);
    assert!(
        svid.cert_chain().len() >= 2,
        "leaf and intermediate expected"
    );
    let roots: Vec<Vec<u8>> = ctx
        .bundle_set()
        .get(&td)
        .expect("bundle for example.org in the X509-SVID response")
        .authorities()
        .iter()
        .map(|c| c.as_bytes().to_vec())
        .collect();
    assert!(!roots.is_empty());

    // The one-shot SVID fetch agrees, and FetchX509Bundles carries the same roots.
    let one = bounded("fetch_x509_svid", client.fetch_x509_svid())
        .await
        .unwrap();
    assert_eq!(one.spiffe_id().to_string(), SPIFFE_ID);
    let bundles = bounded("fetch_x509_bundles", client.fetch_x509_bundles())
        .await
        .unwrap();
    let mut from_bundles: Vec<Vec<u8>> = bundles
        .get(&td)
        .unwrap()
        .authorities()
        .iter()
        .map(|c| c.as_bytes().to_vec())
        .collect();
    let mut sorted_roots = roots.clone();
    from_bundles.sort();
    sorted_roots.sort();
    assert_eq!(from_bundles, sorted_roots);

    // The leaf is issued by the intermediate, which is issued by a root.
    let (_, leaf) = x509_parser::parse_x509_certificate(svid.leaf().as_bytes()).unwrap();
    let (_, inter) = x509_parser::parse_x509_certificate(svid.cert_chain()[1].as_bytes()).unwrap();
    assert_eq!(leaf.issuer(), inter.subject());
    let issued_by_root = roots.iter().any(|r| {
        let (_, root) = x509_parser::parse_x509_certificate(r).unwrap();
        root.subject() == inter.issuer()
    });
    assert!(
        issued_by_root,
        "the intermediate's issuer is not a bundle root"
    );
}

#[tokio::test]
async fn rust_spiffe_client_fetches_and_validates_jwt_svids() {
    let fabric = Fabric::start();
    fabric.create_entry(SPIFFE_ID, &[&own_uid_selector()], None);
    let client = client(&fabric).await;
    let td = TrustDomain::new(TRUST_DOMAIN).unwrap();

    let jwt = bounded("fetch_jwt_svid", client.fetch_jwt_svid(["rust-test"], None))
        .await
        .unwrap_or_else(|e| panic!("fetch_jwt_svid: {e}\n{}", fabric.logs()));
    assert_eq!(jwt.spiffe_id().to_string(), SPIFFE_ID);
    assert_eq!(jwt.audience(), ["rust-test".to_owned()]);
    assert!(!jwt.key_id().is_empty());

    // Online: the Workload API's ValidateJWTSVID (the client checks the response's claims too).
    let validated = bounded(
        "validate_jwt_token",
        client.validate_jwt_token("rust-test", jwt.token()),
    )
    .await
    .unwrap_or_else(|e| panic!("validate_jwt_token: {e}"));
    assert_eq!(validated.spiffe_id(), jwt.spiffe_id());
    let wrong = bounded(
        "validate_jwt_token",
        client.validate_jwt_token("someone-else", jwt.token()),
    )
    .await;
    assert!(
        wrong.is_err(),
        "a JWT-SVID validated for an audience it was not issued to"
    );

    // Offline: the JWT bundle verifies signature, kid, aud and exp (and rejects extra JOSE headers).
    let bundles = bounded("fetch_jwt_bundles", client.fetch_jwt_bundles())
        .await
        .unwrap();
    let bundle = bundles.get(&td).expect("JWT bundle for example.org");
    assert!(
        bundle.find_jwt_authority(jwt.key_id()).is_some(),
        "signing key not in the JWT bundle"
    );
    let offline = JwtSvid::parse_and_validate(jwt.token(), &bundles, &["rust-test"])
        .unwrap_or_else(|e| panic!("offline validation: {e}"));
    assert_eq!(offline.spiffe_id().to_string(), SPIFFE_ID);
    assert!(JwtSvid::parse_and_validate(jwt.token(), &bundles, &["someone-else"]).is_err());
}

#[tokio::test]
async fn caller_matching_no_entry_gets_no_identity_issued() {
    let fabric = Fabric::start();
    let other_uid = format!("unix:uid:{}", own_uid() + 4242);
    fabric.create_entry("spiffe://example.org/test/other", &[&other_uid], None);
    let client = client(&fabric).await;

    let err = bounded("fetch_x509_svid", client.fetch_x509_svid())
        .await
        .unwrap_err();
    assert!(
        matches!(err, WorkloadApiError::NoIdentityIssued),
        "got {err:?}"
    );
    let err = bounded("fetch_jwt_svid", client.fetch_jwt_svid(["rust-test"], None))
        .await
        .unwrap_err();
    assert!(
        matches!(err, WorkloadApiError::NoIdentityIssued),
        "got {err:?}"
    );
}

#[tokio::test]
async fn stream_delivers_a_fresh_svid_before_the_old_one_expires() {
    let fabric = Fabric::start();
    fabric.create_entry(SPIFFE_ID, &[&own_uid_selector()], Some("10s"));
    let client = client(&fabric).await;
    let mut stream = bounded("stream_x509_svids", client.stream_x509_svids())
        .await
        .unwrap();

    let first = bounded("first stream message", stream.next())
        .await
        .expect("stream ended")
        .unwrap();
    let (_, first_leaf) = x509_parser::parse_x509_certificate(first.leaf().as_bytes()).unwrap();
    let first_serial = first_leaf.raw_serial().to_vec();
    let first_expiry = first_leaf.validity().not_after.timestamp();

    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let (second_serial, received_at) = loop {
        let next = tokio::time::timeout_at(deadline, stream.next())
            .await
            .expect("no fresh SVID on the stream within 20 s")
            .expect("stream ended")
            .unwrap();
        let (_, leaf) = x509_parser::parse_x509_certificate(next.leaf().as_bytes()).unwrap();
        if leaf.raw_serial() != first_serial.as_slice() {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs() as i64;
            break (leaf.raw_serial().to_vec(), now);
        }
    };
    assert_ne!(second_serial, first_serial);
    assert!(
        received_at < first_expiry,
        "the fresh SVID arrived {} s after the old one expired",
        received_at - first_expiry
    );
}

// --- the security header, with a raw gRPC client ---

async fn raw_client(fabric: &Fabric) -> SpiffeWorkloadApiClient<Channel> {
    let path = fabric.socket_path();
    // The URI is a placeholder: the connector dials the Unix socket.
    let channel = Endpoint::try_from("http://workload.api")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
        .unwrap();
    SpiffeWorkloadApiClient::new(channel)
}

fn request<T>(message: T, with_header: bool) -> tonic::Request<T> {
    let mut req = tonic::Request::new(message);
    if with_header {
        req.metadata_mut().insert(
            "workload.spiffe.io",
            tonic::metadata::MetadataValue::from_static("true"),
        );
    }
    req
}

async fn first_x509(
    client: &mut SpiffeWorkloadApiClient<Channel>,
    with_header: bool,
) -> Result<X509svidResponse, tonic::Status> {
    // A stream's error may come as the call's status or as its first message.
    let mut stream = client
        .fetch_x509svid(request(X509svidRequest {}, with_header))
        .await?
        .into_inner();
    stream
        .message()
        .await?
        .ok_or_else(|| tonic::Status::unknown("stream closed without a message"))
}

#[tokio::test]
async fn request_without_security_header_is_invalid_argument() {
    let fabric = Fabric::start();
    fabric.create_entry(SPIFFE_ID, &[&own_uid_selector()], None);
    let mut raw = raw_client(&fabric).await;

    let status = bounded("FetchX509SVID", first_x509(&mut raw, false))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("security header"), "{status:?}");

    let jwt_request = JwtsvidRequest {
        audience: vec!["rust-test".to_owned()],
        spiffe_id: String::new(),
    };
    let status = bounded(
        "FetchJWTSVID",
        raw.fetch_jwtsvid(request(jwt_request.clone(), false)),
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");

    // The same requests with the header succeed: the header was the only difference.
    let ok = bounded("FetchX509SVID", first_x509(&mut raw, true))
        .await
        .unwrap();
    assert_eq!(ok.svids[0].spiffe_id, SPIFFE_ID);
    let ok = bounded(
        "FetchJWTSVID",
        raw.fetch_jwtsvid(request(jwt_request, true)),
    )
    .await
    .unwrap();
    assert_eq!(ok.into_inner().svids[0].spiffe_id, SPIFFE_ID);

    // No audience: InvalidArgument as well.
    let no_aud = JwtsvidRequest {
        audience: vec![],
        spiffe_id: String::new(),
    };
    let status = bounded("FetchJWTSVID", raw.fetch_jwtsvid(request(no_aud, true)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
}
