//! The Keyless web console: the Svelte app under `console/`, built by this
//! crate's build script (npm + vite) and embedded in the binary, so
//! `keyless up` serves it from memory on the fabric's one listener.
//!
//! [`router`] answers the app's pages (`/`, `/callback`, `/chat`,
//! `/approvals`, `/consents`, `/audit`, `/identities`, `/leases`,
//! `/streams`) with `index.html`, and `/assets/{*path}` with the hashed
//! build files. It registers nothing else: `/api/*`, `/login`, `/consent`,
//! `/oauth2/*`, `/events` and `/audit/*` belong to other crates.
//!
//! Building needs Node.js (20.19+ or 22.12+) and npm; the first build runs
//! `npm ci` from `console/package-lock.json`. On a machine without Node, set
//! `KEYLESS_CONSOLE_SKIP_BUILD=1`: the binary then embeds a page saying the
//! console was not built and how to build it ([`built`] tells which).

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

mod generated {
    include!(concat!(env!("OUT_DIR"), "/assets.rs"));
}

/// The app's client-side routes; each serves `index.html`.
pub const APP_ROUTES: &[&str] = &[
    "/",
    "/callback",
    "/chat",
    "/approvals",
    "/consents",
    "/audit",
    "/identities",
    "/leases",
    "/streams",
];

/// The page's Content Security Policy: scripts only from this origin (the
/// build inlines none), no framing, no plugins, no foreign connections.
/// Inline styles stay allowed for Svelte transitions and Chart.js sizing.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; \
     frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// Hashed file names change with their content, so they may be cached for good.
const IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// Errors of the console crate.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("no console asset `{0}`")]
    NoSuchAsset(String),
}

/// One embedded file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Asset {
    /// URL path, e.g. `/index.html` or `/assets/index-3f2a1b.js`.
    pub path: &'static str,
    pub content_type: &'static str,
    pub body: &'static [u8],
}

/// The embedded file at URL `path`.
pub fn asset(path: &str) -> Result<Asset, ConsoleError> {
    generated::ASSETS
        .iter()
        .find(|(p, _, _)| *p == path)
        .map(|&(path, content_type, body)| Asset {
            path,
            content_type,
            body,
        })
        .ok_or_else(|| ConsoleError::NoSuchAsset(path.to_owned()))
}

/// Every embedded file, sorted by path.
pub fn assets() -> impl Iterator<Item = Asset> {
    generated::ASSETS
        .iter()
        .map(|&(path, content_type, body)| Asset {
            path,
            content_type,
            body,
        })
}

/// Whether the real console is embedded; false when the binary was built
/// with `KEYLESS_CONSOLE_SKIP_BUILD` and carries the placeholder page.
pub fn built() -> bool {
    generated::BUILT
}

/// The console's routes, ready to merge into the fabric's router.
pub fn router() -> Router {
    APP_ROUTES
        .iter()
        .fold(Router::new(), |router, path| router.route(path, get(index)))
        .route("/assets/{*path}", get(asset_file))
}

// === Handlers ===

async fn index() -> Response {
    let Ok(page) = asset("/index.html") else {
        // The build script fails rather than embed no index.html; this is
        // only reachable from a hand-edited table.
        return (StatusCode::INTERNAL_SERVER_ERROR, "console not embedded").into_response();
    };
    let mut response = page.body.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(page.content_type),
    );
    // The page is the app's entry point: always fetch it, so a new binary's
    // asset names are picked up at once.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

async fn asset_file(Path(path): Path<String>) -> Response {
    match asset(&format!("/assets/{path}")) {
        Ok(file) => (
            [
                (header::CONTENT_TYPE, file.content_type),
                (header::CACHE_CONTROL, IMMUTABLE),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            ],
            file.body,
        )
            .into_response(),
        Err(ConsoleError::NoSuchAsset(_)) => (
            StatusCode::NOT_FOUND,
            [
                (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            ],
            "not found",
        )
            .into_response(),
    }
}
