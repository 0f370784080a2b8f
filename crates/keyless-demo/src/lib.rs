//! Demo MCP tool servers that verify on-behalf-of (OBO) tokens themselves.
//!
//! Two resource servers stand in for the "real upstreams" of the Keyless
//! flow: `directory` (an identity-admin API: users, groups, applications,
//! sessions) and `bank` (accounts, balances, transfers). Each is an MCP server
//! over Streamable HTTP backed by its own SQLite file, and each treats every
//! `tools/call` as untrusted: the OBO token minted by the STS is checked here
//! (signature against the STS JWKS, `typ`, issuer, audience, expiry, actor,
//! the RAR `authorization_details` covering this exact call) and consumed at
//! the STS so it cannot be replayed. Only then does the tool run.
//!
//! Invariant: no tool body runs unless `verify::Verifier::authorize`
//! returned a principal for that call.
//!
//! Only `mcp.rs` knows rmcp's HTTP transport; the stores know nothing of MCP.

mod bank;
mod bank_store;
mod db;
mod directory;
mod directory_store;
mod error;
mod mcp;
mod rar;
mod verify;

use std::{path::PathBuf, sync::Arc};

pub use error::DemoError;

/// Audience of the OBO tokens the directory server accepts.
pub const DIRECTORY_AUDIENCE: &str = "directory";
/// Audience of the OBO tokens the bank server accepts.
pub const BANK_AUDIENCE: &str = "bank";

/// Where a demo server gets its own JWT-SVID (to authenticate to `/oauth2/consume`).
#[async_trait::async_trait]
pub trait SvidSource: Send + Sync + std::fmt::Debug {
    /// A JWT-SVID of this server for `audience` (the STS issuer URL).
    async fn jwt_svid(&self, audience: &str) -> Result<String, String>;
}

/// What a demo server needs to run.
#[derive(Debug, Clone)]
pub struct DemoConfig {
    /// STS issuer and base URL, e.g. `http://127.0.0.1:8180` (no trailing slash).
    pub issuer: String,
    /// SQLite file of this server (created and seeded on first open).
    pub database: PathBuf,
    /// The server's own workload identity, used to consume tokens at the STS.
    pub svid: Arc<dyn SvidSource>,
}

/// The directory server's MCP endpoint served at `path` (e.g. `/demo/directory/mcp`);
/// audience `directory`.
pub async fn directory_router(config: DemoConfig, path: &str) -> Result<axum::Router, DemoError> {
    mcp::check_path(path)?;
    let pool = db::open(&config.database).await?;
    directory_store::prepare(&pool).await?;
    let verifier = verify::Verifier::new(&config.issuer, DIRECTORY_AUDIENCE, config.svid)?;
    let server = directory::Directory::new(pool, Arc::new(verifier));
    Ok(mcp::router(server, path))
}

/// The bank server's MCP endpoint served at `path` (e.g. `/demo/bank/mcp`); audience `bank`.
pub async fn bank_router(config: DemoConfig, path: &str) -> Result<axum::Router, DemoError> {
    mcp::check_path(path)?;
    let pool = db::open(&config.database).await?;
    bank_store::prepare(&pool).await?;
    let verifier = verify::Verifier::new(&config.issuer, BANK_AUDIENCE, config.svid)?;
    let server = bank::Bank::new(pool, Arc::new(verifier));
    Ok(mcp::router(server, path))
}
