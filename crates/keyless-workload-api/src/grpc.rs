//! The wire side of the Workload API: the tonic service over a Unix socket,
//! the streams, and the one mapping from [`WorkloadApiError`] to gRPC status.
//! Only this module knows tonic; decisions live in `workload.rs`.
//!
//! Streams (`FetchX509SVID`, `FetchX509Bundles`, `FetchJWTBundles`) send the
//! full state at once, then wait for a trigger: `Identity::changes()`
//! (entries, CA, bundle), the refresh deadline of the SVIDs (half their
//! life), or server shutdown. On a change the caller is attested again and
//! the state recomputed; it is sent only if what this caller would see
//! differs (so an entry created for someone else does not re-mint everyone's
//! SVIDs). A deadline always re-mints. A stream is a plain future chain, not
//! a spawned task: when the client goes away tonic drops it, and with it
//! everything it was waiting on.

use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::Stream;
use keyless_audit::EventSink;
use keyless_identity::Identity;
use tokio::sync::watch;
use tonic::transport::server::UdsConnectInfo;
use tonic::{Request, Response, Status};

use crate::WorkloadApiError;
use crate::attest::PeerCredentials;
use crate::h2fix::AuthorityFix;
use crate::proto;
use crate::proto::spiffe_workload_api_server::{SpiffeWorkloadApi, SpiffeWorkloadApiServer};
use crate::workload::{Caller, Workloads};

/// The metadata every Workload API request must carry (value `true`).
pub const SECURITY_HEADER: &str = "workload.spiffe.io";

/// A deadline never comes sooner than this after a send, so a broken clock
/// or an absurd TTL cannot turn a stream into a busy loop.
const MIN_REFRESH: Duration = Duration::from_millis(250);

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;
type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;
/// A message and when it must be rebuilt even if nothing changed.
type Built<T> = Result<(T, Option<SystemTime>), WorkloadApiError>;
type FingerprintFn<Fp> = Box<dyn Fn() -> BoxFuture<Result<Fp, WorkloadApiError>> + Send + Sync>;
type BuildFn<Fp, T> = Box<dyn Fn(Fp) -> BoxFuture<Built<T>> + Send + Sync>;

/// The SPIFFE Workload API server.
#[derive(Debug, Clone)]
pub struct WorkloadApi {
    workloads: Workloads,
    /// Flips to `true` at shutdown so open streams end and the graceful
    /// shutdown of the server does not wait on them forever.
    stop: watch::Receiver<bool>,
    stop_tx: Arc<watch::Sender<bool>>,
}

// === impl WorkloadApi ===

impl WorkloadApi {
    pub fn new(identity: Arc<Identity>, events: Arc<dyn EventSink>) -> Self {
        let (stop_tx, stop) = watch::channel(false);
        Self {
            workloads: Workloads::new(identity, events),
            stop,
            stop_tx: Arc::new(stop_tx),
        }
    }

    /// Serves the Workload API on `socket_path` until `shutdown` completes.
    ///
    /// The socket is world-connectable (mode 0666): anyone may ask, callers
    /// are attested, not trusted. A stale socket file is replaced; a live
    /// server on the same path, or a file that is not a socket, is an error.
    pub async fn serve(
        self,
        socket_path: &Path,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), WorkloadApiError> {
        let listener = bind(socket_path).await?;
        tracing::info!(socket = %socket_path.display(), "workload api listening");
        let stop_tx = Arc::clone(&self.stop_tx);
        let signal = async move {
            shutdown.await;
            stop_tx.send_replace(true);
        };
        // Every connection goes through `AuthorityFix`, so grpcio clients
        // (py-spiffe) whose `:authority` `h2` would refuse are served.
        let incoming = tokio_stream::StreamExt::map(
            tokio_stream::wrappers::UnixListenerStream::new(listener),
            |accepted| accepted.map(AuthorityFix::new),
        );
        let served = tonic::transport::Server::builder()
            .add_service(SpiffeWorkloadApiServer::new(self))
            .serve_with_incoming_shutdown(incoming, signal)
            .await;
        // Best effort: the next start replaces a leftover socket anyway.
        let _ = std::fs::remove_file(socket_path);
        served.map_err(WorkloadApiError::from)
    }

    /// Checks the security header and attests the peer of `request`.
    async fn caller<T>(&self, request: &Request<T>) -> Result<Caller, WorkloadApiError> {
        check_security_header(request)?;
        self.workloads.caller(peer_credentials(request)).await
    }
}

/// Binds the socket, replacing a stale one, and opens it to every local user.
async fn bind(path: &Path) -> Result<tokio::net::UnixListener, WorkloadApiError> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};

    let socket_err = |source| WorkloadApiError::Socket {
        path: path.to_owned(),
        source,
    };
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if tokio::net::UnixStream::connect(path).await.is_ok() {
                return Err(WorkloadApiError::InUse(path.to_owned()));
            }
            std::fs::remove_file(path).map_err(socket_err)?;
        }
        Ok(_) => return Err(WorkloadApiError::NotASocket(path.to_owned())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(socket_err(e)),
    }
    let listener = tokio::net::UnixListener::bind(path).map_err(socket_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666)).map_err(socket_err)?;
    Ok(listener)
}

/// The wrapped connection tells tonic exactly what the bare `UnixStream`
/// would (tonic's own impl), so attestation still gets the peer's
/// credentials.
impl tonic::transport::server::Connected for AuthorityFix<tokio::net::UnixStream> {
    type ConnectInfo = UdsConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        tonic::transport::server::Connected::connect_info(self.get_ref())
    }
}

fn check_security_header<T>(request: &Request<T>) -> Result<(), WorkloadApiError> {
    match request.metadata().get(SECURITY_HEADER) {
        Some(v) if v.as_bytes() == b"true" => Ok(()),
        _ => Err(WorkloadApiError::SecurityHeaderMissing),
    }
}

fn peer_credentials<T>(request: &Request<T>) -> Option<PeerCredentials> {
    let cred = request.extensions().get::<UdsConnectInfo>()?.peer_cred?;
    Some(PeerCredentials {
        uid: cred.uid(),
        gid: cred.gid(),
        pid: cred.pid(),
    })
}

/// The one mapping from errors to what the caller sees. Details that could
/// help an attacker (why attestation failed, internal errors) are logged
/// where they happen and replaced by a generic message here.
fn status(err: &WorkloadApiError) -> Status {
    match err {
        WorkloadApiError::SecurityHeaderMissing
        | WorkloadApiError::AudienceMissing
        | WorkloadApiError::SvidMissing
        | WorkloadApiError::InvalidSpiffeId(_)
        | WorkloadApiError::InvalidJwtSvid(_) => Status::invalid_argument(err.to_string()),
        WorkloadApiError::NoIdentity => Status::permission_denied(err.to_string()),
        WorkloadApiError::Attestation(_) => Status::unavailable("could not attest caller"),
        WorkloadApiError::Audit(_) => Status::unavailable("audit log unavailable"),
        WorkloadApiError::Identity(_)
        | WorkloadApiError::Internal(_)
        | WorkloadApiError::Socket { .. }
        | WorkloadApiError::NotASocket(_)
        | WorkloadApiError::InUse(_)
        | WorkloadApiError::InvalidEndpoint { .. }
        | WorkloadApiError::Transport(_) => Status::internal("internal error"),
    }
}

fn fail(err: WorkloadApiError) -> Status {
    if matches!(
        err,
        WorkloadApiError::Identity(_) | WorkloadApiError::Internal(_) | WorkloadApiError::Audit(_)
    ) {
        tracing::error!(error = %err, "workload api request failed");
    }
    status(&err)
}

// === streams ===

/// One step of a stream: what the caller would see now (`Fp`, cheap to
/// compute and compare), and how to turn it into a message (`build`, which
/// may mint SVIDs and record events).
struct Feed<Fp, T> {
    fingerprint: FingerprintFn<Fp>,
    build: BuildFn<Fp, T>,
}

struct FeedState<Fp, T> {
    feed: Feed<Fp, T>,
    changes: watch::Receiver<u64>,
    stop: watch::Receiver<bool>,
    /// The first message, built before the response started.
    first: Option<T>,
    last: Fp,
    refresh_at: Option<tokio::time::Instant>,
    done: bool,
}

enum Trigger {
    Changed,
    Refresh,
}

/// Turns a [`Feed`] into the response stream described in the module docs.
///
/// The first message is built before the stream is returned, so a caller
/// with no identity gets its error as the answer to the call itself (a
/// trailers-only response, as SPIRE gives) rather than after the headers.
async fn feed_stream<Fp, T>(
    feed: Feed<Fp, T>,
    changes: watch::Receiver<u64>,
    stop: watch::Receiver<bool>,
) -> Result<ResponseStream<T>, Status>
where
    Fp: PartialEq + Clone + Send + Sync + 'static,
    T: Send + 'static,
{
    let fp = (feed.fingerprint)().await.map_err(fail)?;
    let (first, refresh_at) = (feed.build)(fp.clone()).await.map_err(fail)?;
    let state = FeedState {
        feed,
        changes,
        stop,
        first: Some(first),
        last: fp,
        refresh_at: refresh_at.map(deadline),
        done: false,
    };
    Ok(Box::pin(futures::stream::unfold(
        state,
        |mut st| async move {
            if let Some(first) = st.first.take() {
                return Some((Ok(first), st));
            }
            if st.done {
                return None;
            }
            loop {
                let refresh_at = st.refresh_at;
                let refresh = async move {
                    match refresh_at {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                };
                let trigger = tokio::select! {
                    _ = st.stop.wait_for(|stopped| *stopped) => return None,
                    changed = st.changes.changed() => match changed {
                        Ok(()) => Trigger::Changed,
                        // The identity service is gone: nothing more to say.
                        Err(_) => return None,
                    },
                    () = refresh => Trigger::Refresh,
                };
                let fp = match (st.feed.fingerprint)().await {
                    Ok(fp) => fp,
                    Err(err) => {
                        st.done = true;
                        return Some((Err(fail(err)), st));
                    }
                };
                if matches!(trigger, Trigger::Changed) && st.last == fp {
                    continue;
                }
                match (st.feed.build)(fp.clone()).await {
                    Ok((message, refresh_at)) => {
                        st.last = fp;
                        st.refresh_at = refresh_at.map(deadline);
                        return Some((Ok(message), st));
                    }
                    Err(err) => {
                        st.done = true;
                        return Some((Err(fail(err)), st));
                    }
                }
            }
        },
    )))
}

/// The timer instant for a wall-clock refresh time, never sooner than
/// [`MIN_REFRESH`] from now.
fn deadline(at: SystemTime) -> tokio::time::Instant {
    let wait = at
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO)
        .max(MIN_REFRESH);
    tokio::time::Instant::now() + wait
}

// === impl SpiffeWorkloadApi for WorkloadApi ===

#[tonic::async_trait]
impl SpiffeWorkloadApi for WorkloadApi {
    type FetchX509SVIDStream = ResponseStream<proto::X509svidResponse>;
    type FetchX509BundlesStream = ResponseStream<proto::X509BundlesResponse>;
    type FetchJWTBundlesStream = ResponseStream<proto::JwtBundlesResponse>;

    async fn fetch_x509svid(
        &self,
        request: Request<proto::X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        // Subscribe before the first look, so no change slips in between.
        let changes = self.workloads.identity().changes();
        check_security_header(&request).map_err(fail)?;
        let peer = peer_credentials(&request);
        let workloads = self.workloads.clone();
        let fingerprint = {
            let workloads = workloads.clone();
            move || -> BoxFuture<_> {
                let workloads = workloads.clone();
                Box::pin(async move {
                    let caller = workloads.caller(peer).await?;
                    let bundle = workloads.x509_bundle();
                    Ok(X509Fingerprint { caller, bundle })
                })
            }
        };
        let build = move |fp: X509Fingerprint| -> BoxFuture<_> {
            let workloads = workloads.clone();
            Box::pin(async move {
                let set = workloads.x509_svids(&fp.caller).await?;
                let svids = set
                    .svids
                    .into_iter()
                    .map(|svid| proto::X509svid {
                        spiffe_id: svid.spiffe_id.to_string(),
                        x509_svid: svid.cert_chain.concat(),
                        x509_svid_key: svid.private_key_pkcs8,
                        bundle: fp.bundle.clone(),
                        hint: svid.hint,
                    })
                    .collect();
                let message = proto::X509svidResponse {
                    svids,
                    crl: Vec::new(),
                    federated_bundles: HashMap::new(),
                };
                Ok((message, Some(set.refresh_at)))
            })
        };
        let feed = Feed {
            fingerprint: Box::new(fingerprint),
            build: Box::new(build),
        };
        Ok(Response::new(
            feed_stream(feed, changes, self.stop.clone()).await?,
        ))
    }

    async fn fetch_x509_bundles(
        &self,
        request: Request<proto::X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        let changes = self.workloads.identity().changes();
        check_security_header(&request).map_err(fail)?;
        let peer = peer_credentials(&request);
        let workloads = self.workloads.clone();
        let fingerprint = move || -> BoxFuture<_> {
            let workloads = workloads.clone();
            Box::pin(async move {
                // Like SPIRE: bundles are for workloads with an identity.
                workloads.caller(peer).await?;
                Ok((workloads.trust_domain_name(), workloads.x509_bundle()))
            })
        };
        let build = |(td, bundle): (String, Vec<u8>)| -> BoxFuture<_> {
            Box::pin(async move {
                let message = proto::X509BundlesResponse {
                    crl: Vec::new(),
                    bundles: HashMap::from([(td, bundle)]),
                };
                Ok((message, None))
            })
        };
        let feed = Feed {
            fingerprint: Box::new(fingerprint),
            build: Box::new(build),
        };
        Ok(Response::new(
            feed_stream(feed, changes, self.stop.clone()).await?,
        ))
    }

    async fn fetch_jwtsvid(
        &self,
        request: Request<proto::JwtsvidRequest>,
    ) -> Result<Response<proto::JwtsvidResponse>, Status> {
        check_security_header(&request).map_err(fail)?;
        // Argument errors first: they need no attestation.
        let body = request.get_ref();
        if body.audience.is_empty() || body.audience.iter().any(String::is_empty) {
            return Err(fail(WorkloadApiError::AudienceMissing));
        }
        let caller = self.caller(&request).await.map_err(fail)?;
        let body = request.into_inner();
        let wanted = Some(body.spiffe_id.as_str()).filter(|s| !s.is_empty());
        let svids = self
            .workloads
            .jwt_svids(&caller, &body.audience, wanted)
            .await
            .map_err(fail)?
            .into_iter()
            .map(|svid| proto::Jwtsvid {
                spiffe_id: svid.spiffe_id.to_string(),
                svid: svid.token,
                hint: svid.hint,
            })
            .collect();
        Ok(Response::new(proto::JwtsvidResponse { svids }))
    }

    async fn fetch_jwt_bundles(
        &self,
        request: Request<proto::JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        let changes = self.workloads.identity().changes();
        check_security_header(&request).map_err(fail)?;
        let peer = peer_credentials(&request);
        let workloads = self.workloads.clone();
        let fingerprint = move || -> BoxFuture<_> {
            let workloads = workloads.clone();
            Box::pin(async move {
                workloads.caller(peer).await?;
                Ok((workloads.trust_domain_name(), workloads.jwt_bundle()?))
            })
        };
        let build = |(td, jwks): (String, Vec<u8>)| -> BoxFuture<_> {
            Box::pin(async move {
                let message = proto::JwtBundlesResponse {
                    bundles: HashMap::from([(td, jwks)]),
                };
                Ok((message, None))
            })
        };
        let feed = Feed {
            fingerprint: Box::new(fingerprint),
            build: Box::new(build),
        };
        Ok(Response::new(
            feed_stream(feed, changes, self.stop.clone()).await?,
        ))
    }

    async fn validate_jwtsvid(
        &self,
        request: Request<proto::ValidateJwtsvidRequest>,
    ) -> Result<Response<proto::ValidateJwtsvidResponse>, Status> {
        check_security_header(&request).map_err(fail)?;
        let body = request.get_ref();
        if body.audience.is_empty() {
            return Err(fail(WorkloadApiError::AudienceMissing));
        }
        if body.svid.is_empty() {
            return Err(fail(WorkloadApiError::SvidMissing));
        }
        // Like SPIRE: validation is a service for workloads with an identity.
        let caller = self.caller(&request).await.map_err(fail)?;
        let body = request.into_inner();
        let validated = self
            .workloads
            .validate(&body.svid, &body.audience)
            .map_err(|err| {
                tracing::info!(pid = caller.attestation.pid, error = %err, "jwt-svid rejected");
                fail(err)
            })?;
        Ok(Response::new(proto::ValidateJwtsvidResponse {
            spiffe_id: validated.spiffe_id.to_string(),
            claims: Some(to_struct(validated.claims)),
        }))
    }
}

/// What an X509-SVID stream compares between changes: the caller's entries
/// (with their TTLs and hints) and the bundle.
#[derive(Clone)]
struct X509Fingerprint {
    caller: Caller,
    bundle: Vec<u8>,
}

impl PartialEq for X509Fingerprint {
    fn eq(&self, other: &Self) -> bool {
        self.caller.entries == other.caller.entries && self.bundle == other.bundle
    }
}

// === JSON → protobuf Struct ===

fn to_struct(map: serde_json::Map<String, serde_json::Value>) -> prost_types::Struct {
    prost_types::Struct {
        fields: map.into_iter().map(|(k, v)| (k, to_value(v))).collect(),
    }
}

fn to_value(value: serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    use serde_json::Value;
    let kind = match value {
        Value::Null => Kind::NullValue(prost_types::NullValue::NullValue.into()),
        Value::Bool(b) => Kind::BoolValue(b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(f64::NAN)),
        Value::String(s) => Kind::StringValue(s),
        Value::Array(items) => Kind::ListValue(prost_types::ListValue {
            values: items.into_iter().map(to_value).collect(),
        }),
        Value::Object(map) => Kind::StructValue(to_struct(map)),
    };
    prost_types::Value { kind: Some(kind) }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;

    #[test]
    fn claims_convert_to_a_protobuf_struct() {
        use prost_types::value::Kind;
        let claims = serde_json::json!({
            "sub": "spiffe://example.org/a", "aud": ["x", "y"], "exp": 1700000000,
            "nested": {"ok": true, "none": null}
        });
        let serde_json::Value::Object(map) = claims else {
            unreachable!()
        };
        let s = to_struct(map);
        assert_eq!(
            s.fields["sub"].kind,
            Some(Kind::StringValue("spiffe://example.org/a".into()))
        );
        assert_eq!(
            s.fields["exp"].kind,
            Some(Kind::NumberValue(1_700_000_000.0))
        );
        let Some(Kind::ListValue(aud)) = &s.fields["aud"].kind else {
            unreachable!()
        };
        assert_eq!(aud.values.len(), 2);
        let Some(Kind::StructValue(nested)) = &s.fields["nested"].kind else {
            unreachable!()
        };
        assert_eq!(nested.fields["ok"].kind, Some(Kind::BoolValue(true)));
        assert_eq!(nested.fields["none"].kind, Some(Kind::NullValue(0)));
    }

    #[test]
    fn every_request_error_maps_to_the_spiffe_status() {
        let check = |err: WorkloadApiError, code: tonic::Code, message: &str| {
            let s = status(&err);
            assert_eq!((s.code(), s.message()), (code, message), "{err:?}");
        };
        check(
            WorkloadApiError::SecurityHeaderMissing,
            tonic::Code::InvalidArgument,
            "security header missing from request",
        );
        check(
            WorkloadApiError::NoIdentity,
            tonic::Code::PermissionDenied,
            "no identity issued",
        );
        check(
            WorkloadApiError::AudienceMissing,
            tonic::Code::InvalidArgument,
            "audience must be specified",
        );
        check(
            WorkloadApiError::Attestation(crate::attest::AttestError::NoPid),
            tonic::Code::Unavailable,
            "could not attest caller",
        );
    }
}
