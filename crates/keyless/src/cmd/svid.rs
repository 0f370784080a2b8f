//! `keyless svid fetch`: a Workload API client, like `spire-agent api fetch`.
//!
//! Writes `svid.pem` (leaf then intermediates), `svid.key` (PKCS#8, mode
//! 0600) and `bundle.pem`, or with `--audience` prints one JWT-SVID.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use keyless_workload_api::client::{self, request};
use keyless_workload_api::proto::{JwtsvidRequest, X509svidRequest};

use crate::cli::{SvidCommand, SvidFetchArgs};
use crate::{CliError, CliResult, pem};

pub async fn run(cmd: SvidCommand) -> CliResult {
    match cmd {
        SvidCommand::Fetch(args) => fetch(args).await,
    }
}

/// Resolves the socket path from `--socket`, `SPIFFE_ENDPOINT_SOCKET`, then the data dir.
fn socket_path(args: &SvidFetchArgs) -> CliResult<PathBuf> {
    let uri = args
        .socket
        .clone()
        .or_else(|| std::env::var("SPIFFE_ENDPOINT_SOCKET").ok());
    match uri {
        None => Ok(args.data_dir.data_dir.join("workload.sock")),
        Some(uri) => client::socket_path(&uri).map_err(|e| CliError::Usage(e.to_string())),
    }
}

fn status_error(status: tonic::Status) -> CliError {
    CliError::Failed(anyhow::anyhow!(
        "workload API refused: {:?}: {}",
        status.code(),
        status.message()
    ))
}

async fn fetch(args: SvidFetchArgs) -> CliResult {
    let path = socket_path(&args)?;
    let mut client = client::connect(&path)
        .await
        .with_context(|| format!("cannot connect to the Workload API at `{}`", path.display()))?;
    if !args.audience.is_empty() {
        let reply = client
            .fetch_jwtsvid(request(JwtsvidRequest {
                audience: args.audience.clone(),
                spiffe_id: args.spiffe_id.clone().unwrap_or_default(),
            }))
            .await
            .map_err(status_error)?
            .into_inner();
        let svid = reply
            .svids
            .into_iter()
            .next()
            .ok_or_else(|| anyhow::anyhow!("the Workload API returned no JWT-SVID"))?;
        println!("{}", svid.svid);
        return Ok(());
    }
    let mut stream = client
        .fetch_x509svid(request(X509svidRequest {}))
        .await
        .map_err(status_error)?
        .into_inner();
    let first = stream
        .message()
        .await
        .map_err(status_error)?
        .ok_or_else(|| anyhow::anyhow!("the Workload API closed the stream without an SVID"))?;
    let svid = first
        .svids
        .into_iter()
        .next()
        .ok_or_else(|| anyhow::anyhow!("the Workload API returned no X509-SVID"))?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create `{}`", args.out.display()))?;
    let certs = split_der_certificates(&svid.x509_svid)?;
    let chain: String = certs
        .iter()
        .map(|c| pem::encode("CERTIFICATE", c))
        .collect();
    let bundle: String = split_der_certificates(&svid.bundle)?
        .iter()
        .map(|c| pem::encode("CERTIFICATE", c))
        .collect();
    write_file(&args.out.join("svid.pem"), chain.as_bytes(), 0o644)?;
    write_file(
        &args.out.join("svid.key"),
        pem::encode("PRIVATE KEY", &svid.x509_svid_key).as_bytes(),
        0o600,
    )?;
    write_file(&args.out.join("bundle.pem"), bundle.as_bytes(), 0o644)?;
    println!("{}", svid.spiffe_id);
    Ok(())
}

fn write_file(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("cannot write `{}`", path.display()))?;
    f.write_all(bytes)
        .with_context(|| format!("cannot write `{}`", path.display()))
}

/// Splits concatenated DER certificates (the Workload API's chain and bundle
/// encoding) by reading each outer SEQUENCE header.
pub fn split_der_certificates(mut der: &[u8]) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    while !der.is_empty() {
        let len = der_element_len(der).context("malformed DER certificate list")?;
        let (cert, rest) = der
            .split_at_checked(len)
            .context("truncated DER certificate")?;
        out.push(cert.to_vec());
        der = rest;
    }
    Ok(out)
}

/// Total length (header + content) of the DER element at the start of `der`.
fn der_element_len(der: &[u8]) -> Option<usize> {
    if *der.first()? != 0x30 {
        return None;
    }
    let first = *der.get(1)?;
    if first < 0x80 {
        return Some(2 + usize::from(first));
    }
    let n = usize::from(first & 0x7f);
    if n == 0 || n > 4 {
        return None;
    }
    let mut len = 0usize;
    for i in 0..n {
        len = (len << 8) | usize::from(*der.get(2 + i)?);
    }
    Some(2 + n + len)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn der_lists_split_on_element_boundaries() {
        let short = [0x30, 0x02, 0x01, 0x02];
        let mut long = vec![0x30, 0x81, 0x80];
        long.extend(std::iter::repeat_n(0u8, 0x80));
        let both: Vec<u8> = short.iter().chain(long.iter()).copied().collect();
        let certs = split_der_certificates(&both).unwrap();
        assert_eq!(certs, vec![short.to_vec(), long]);
        assert!(split_der_certificates(&[0x30, 0x05, 0x00]).is_err());
        assert!(split_der_certificates(&[0x02, 0x01, 0x00]).is_err());
    }
}
