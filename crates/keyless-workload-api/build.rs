//! Generates the Workload API gRPC code (messages, server and client) from
//! `proto/workload.proto` at build time.
//!
//! `protox` parses the proto in pure Rust, so building Keyless never needs a
//! system `protoc`; its `FileDescriptorSet` is handed to `tonic-prost-build`.

use std::error::Error;

fn main() -> Result<(), Box<dyn Error>> {
    println!("cargo:rerun-if-changed=proto/workload.proto");
    let fds = protox::compile(["workload.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
