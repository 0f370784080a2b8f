//! A minimal Workload API client: connect to the socket named by a
//! `SPIFFE_ENDPOINT_SOCKET`-style address and attach the security header.
//! Used by `keyless svid fetch`, the agent host and the tests, so none of
//! them re-implements the Unix-socket connector.

use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use tonic::Request;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::WorkloadApiError;
use crate::grpc::SECURITY_HEADER;
use crate::proto::spiffe_workload_api_client::SpiffeWorkloadApiClient;

/// The generated client over a Unix-socket channel.
pub type WorkloadApiClient = SpiffeWorkloadApiClient<Channel>;

/// The socket path of a Workload API address: `unix:///abs/path` (the
/// `SPIFFE_ENDPOINT_SOCKET` form) or a bare absolute path. Keyless serves
/// only Unix sockets, so `tcp://` is refused.
pub fn socket_path(address: &str) -> Result<PathBuf, WorkloadApiError> {
    let invalid = |reason: &'static str| WorkloadApiError::InvalidEndpoint {
        address: address.to_owned(),
        reason,
    };
    let path = match address.split_once("://") {
        Some(("unix", rest)) => rest,
        Some(_) => return Err(invalid("only unix:// addresses are supported")),
        None => address,
    };
    if !path.starts_with('/') {
        return Err(invalid("the socket path must be absolute"));
    }
    if path.contains(['?', '#']) {
        return Err(invalid("query and fragment are not allowed"));
    }
    Ok(PathBuf::from(path))
}

/// Connects to the Workload API listening on `socket`.
pub async fn connect(socket: &Path) -> Result<WorkloadApiClient, WorkloadApiError> {
    let path = socket.to_owned();
    // The URI is never dialled: the connector always opens the socket.
    let channel = Endpoint::from_static("http://workload-api.invalid")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }))
        .await?;
    Ok(SpiffeWorkloadApiClient::new(channel))
}

/// Wraps a request message with the `workload.spiffe.io: true` metadata the
/// server requires.
pub fn request<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        SECURITY_HEADER,
        tonic::metadata::MetadataValue::from_static("true"),
    );
    request
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn addresses_parse_like_spiffe_endpoint_socket() {
        let ok = |a: &str, p: &str| assert_eq!(socket_path(a).unwrap(), PathBuf::from(p));
        ok(
            "unix:///run/keyless/workload.sock",
            "/run/keyless/workload.sock",
        );
        ok("/tmp/workload.sock", "/tmp/workload.sock");
        for bad in [
            "tcp://127.0.0.1:8081",
            "unix://relative.sock",
            "relative.sock",
            "unix:///tmp/a.sock?x=1",
        ] {
            assert!(
                matches!(
                    socket_path(bad),
                    Err(WorkloadApiError::InvalidEndpoint { .. })
                ),
                "{bad}"
            );
        }
    }
}
