//! The crate's error type: what can go wrong while setting a demo server up.
//!
//! Errors during a tool call never surface here: they become MCP tool errors
//! or JSON-RPC refusals in `mcp.rs`.

use std::path::PathBuf;

/// Why a demo server could not be built.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The SQLite file could not be opened or created.
    #[error("cannot open demo database `{}`: {source}", path.display())]
    Open {
        /// The file that was asked for.
        path: PathBuf,
        /// What SQLite said.
        #[source]
        source: sqlx::Error,
    },
    /// Creating the tables or seeding the demo data failed.
    #[error("demo database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The endpoint path cannot be mounted.
    #[error(
        "invalid MCP endpoint path `{0}`: it must start with `/` and contain only letters, digits, `/`, `-`, `_` or `.`"
    )]
    InvalidPath(String),
    /// The issuer is not an http(s) URL.
    #[error("invalid issuer `{0}`: expected an http:// or https:// URL")]
    InvalidIssuer(String),
    /// The HTTP client for the JWKS and consume calls could not be built.
    #[error("cannot build the HTTP client: {0}")]
    HttpClient(#[source] reqwest::Error),
}
