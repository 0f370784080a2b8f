//! The SPIFFE Workload API for Keyless: gRPC over a Unix socket, with caller
//! attestation from the socket peer and streaming rotation.
//!
//! A workload connects to the (world-connectable) socket and asks for its
//! SVIDs. It never presents a credential: the kernel says which process is
//! calling (uid, gid, pid), [`attest`] turns that into selectors (uid, gid,
//! binary path, binary sha256), and the registration entries of
//! `keyless-identity` whose selectors it all has decide which SPIFFE IDs it
//! gets. X509-SVIDs and bundles are streamed and re-sent before expiry and on
//! every change, so a workload never holds a long-lived secret.
//!
//! Layout: [`attest`] (domain: `/proc` → selectors), `workload` (domain:
//! entries, minting, audit events), `grpc` (the server: the only module that
//! maps decisions to the wire), [`client`] (connect + security header, for
//! `keyless svid fetch` and the agent host), [`proto`] (generated from
//! `proto/workload.proto`, client and server), `h2fix` (a connection wrapper
//! so grpcio clients' percent-encoded `:authority` is not refused by `h2`).

pub mod attest;
pub mod client;
mod error;
mod grpc;
mod h2fix;
mod workload;

/// Generated Workload API messages, client and server. The proto has no
/// package (method paths are `/SpiffeWorkloadAPI/<Rpc>`), hence `_`.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod proto {
    tonic::include_proto!("_");
}

pub use attest::{AttestError, Attestation, Attestor, PeerCredentials};
pub use error::WorkloadApiError;
pub use grpc::{SECURITY_HEADER, WorkloadApi};
