//! The receiver's view of transmitters: their SSF metadata and signing
//! keys, fetched over HTTP and cached per issuer.
//!
//! Keys are refetched when the cache is older than the TTL (5 minutes), or
//! when a SET names a `kid` the cache does not hold (the transmitter rotated
//! its key). That second kind of refresh is rate limited (once per 5 s per
//! issuer): otherwise anyone able to reach the push endpoint could make the
//! receiver hammer the transmitter by sending tokens with random `kid`s.
//! Responses are capped in size and time, and only `http`/`https` URLs are
//! followed.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;
use url::Url;

use crate::set::{PublicKey, SetError, parse_jwks};

/// Path segment of the SSF transmitter configuration (SSF 1.0 §7.2.1).
pub const SSF_WELL_KNOWN: &str = "/.well-known/ssf-configuration";
/// How long metadata and keys are used before being fetched again.
pub const CACHE_TTL: Duration = Duration::from_secs(5 * 60);
/// Minimum spacing of unknown-`kid` refreshes for one issuer.
pub const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(5);
/// Largest metadata or JWKS document accepted.
pub const MAX_BODY: usize = 256 * 1024;
/// Time allowed for one fetch.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a transmitter's metadata or keys could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    /// The issuer or a URL in the metadata is unusable.
    #[error("invalid URL `{url}`: {reason}")]
    Url { url: String, reason: String },
    /// A fetch failed (network, status, size, JSON).
    #[error("fetching the transmitter's {what} at {url}: {reason}")]
    Fetch {
        what: &'static str,
        url: String,
        reason: String,
    },
    /// The metadata names another issuer than the one asked for.
    #[error("the transmitter metadata at {url} names issuer `{got}`, expected `{expected}`")]
    IssuerMismatch {
        url: String,
        expected: String,
        got: String,
    },
    /// The metadata or JWKS content is unusable.
    #[error("the transmitter's {what} at {url} is unusable: {reason}")]
    Invalid {
        what: &'static str,
        url: String,
        reason: String,
    },
}

impl From<KeysError> for SetError {
    fn from(e: KeysError) -> Self {
        SetError::Keys(e.to_string())
    }
}

#[derive(Debug, Clone)]
struct Cached<T> {
    value: T,
    at: Instant,
}

#[derive(Debug, Default)]
struct Entry {
    metadata: Option<Cached<Value>>,
    keys: Option<Cached<Vec<PublicKey>>>,
    /// When the last unknown-`kid` refresh was started.
    last_forced: Option<Instant>,
}

/// Cache of transmitters' metadata and keys, keyed by issuer.
#[derive(Debug)]
pub struct TransmitterKeys {
    http: reqwest::Client,
    ttl: Duration,
    min_refresh: Duration,
    cache: Mutex<HashMap<String, Entry>>,
}

/// The SSF configuration URL of `issuer`: the well-known segment goes
/// between the host and the issuer's path (SSF 1.0 §7.2.1, as RFC 8414 does),
/// so `https://h/p` becomes `https://h/.well-known/ssf-configuration/p`.
pub fn configuration_url(issuer: &str) -> Result<Url, KeysError> {
    let mut url = http_url(issuer)?;
    let bad = |reason: &str| KeysError::Url {
        url: issuer.to_owned(),
        reason: reason.to_owned(),
    };
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("an issuer has no query or fragment"));
    }
    let path = url.path().trim_end_matches('/').to_owned();
    url.set_path(&format!("{SSF_WELL_KNOWN}{path}"));
    Ok(url)
}

fn http_url(s: &str) -> Result<Url, KeysError> {
    let url = Url::parse(s).map_err(|e| KeysError::Url {
        url: s.to_owned(),
        reason: e.to_string(),
    })?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(KeysError::Url {
            url: s.to_owned(),
            reason: "only http and https URLs with a host are fetched".to_owned(),
        });
    }
    Ok(url)
}

// === impl TransmitterKeys ===

impl TransmitterKeys {
    /// An empty cache fetching with `http` (each request also gets a 5 s timeout).
    pub fn new(http: reqwest::Client) -> Self {
        Self {
            http,
            ttl: CACHE_TTL,
            min_refresh: MIN_REFRESH_INTERVAL,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Changes the cache TTL and the unknown-`kid` refresh interval (tests
    /// use short ones).
    pub fn with_limits(mut self, ttl: Duration, min_refresh: Duration) -> Self {
        self.ttl = ttl;
        self.min_refresh = min_refresh;
        self
    }

    /// The transmitter's SSF configuration, cached; its `issuer` must equal
    /// `issuer` exactly and its `jwks_uri` must be an http(s) URL.
    pub async fn metadata(&self, issuer: &str) -> Result<Value, KeysError> {
        let fresh = self.with_entry(issuer, |e| {
            e.metadata
                .as_ref()
                .filter(|m| m.at.elapsed() < self.ttl)
                .map(|m| m.value.clone())
        });
        if let Some(metadata) = fresh {
            return Ok(metadata);
        }
        let url = configuration_url(issuer)?;
        let metadata = self.fetch_json("metadata", &url).await?;
        let invalid = |reason: &str| KeysError::Invalid {
            what: "metadata",
            url: url.to_string(),
            reason: reason.to_owned(),
        };
        if !metadata.is_object() {
            return Err(invalid("not a JSON object"));
        }
        match metadata.get("issuer").and_then(Value::as_str) {
            Some(got) if got == issuer => {}
            Some(got) => {
                return Err(KeysError::IssuerMismatch {
                    url: url.to_string(),
                    expected: issuer.to_owned(),
                    got: got.to_owned(),
                });
            }
            None => return Err(invalid("`issuer` is missing or not a string")),
        }
        let jwks_uri = metadata
            .get("jwks_uri")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid("`jwks_uri` is missing or not a string"))?;
        http_url(jwks_uri)?;
        self.with_entry(issuer, |e| {
            e.metadata = Some(Cached {
                value: metadata.clone(),
                at: Instant::now(),
            });
        });
        Ok(metadata)
    }

    /// The transmitter's usable ES256 keys. Cached keys are returned while
    /// fresh and, when `kid` is given, while they include it. An unknown
    /// `kid` triggers a refetch of `jwks_uri` at most once per refresh
    /// interval; within it the cached keys are returned as they are (so
    /// verification then fails with an unknown key).
    pub async fn keys(&self, issuer: &str, kid: Option<&str>) -> Result<Vec<PublicKey>, KeysError> {
        let now = Instant::now();
        let cached = self.with_entry(issuer, |e| {
            let fresh = e
                .keys
                .as_ref()
                .filter(|k| now.duration_since(k.at) < self.ttl)
                .map(|k| k.value.clone())?;
            let known = kid.is_none_or(|kid| fresh.iter().any(|k| k.kid() == Some(kid)));
            let limited = e
                .last_forced
                .is_some_and(|t| now.duration_since(t) < self.min_refresh);
            if known || limited {
                return Some(fresh);
            }
            // Claim the refresh now so concurrent callers do not all fetch.
            e.last_forced = Some(now);
            None
        });
        if let Some(keys) = cached {
            return Ok(keys);
        }
        let metadata = self.metadata(issuer).await?;
        let jwks_uri = metadata
            .get("jwks_uri")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let url = http_url(jwks_uri)?;
        let jwks = self.fetch_json("JWKS", &url).await?;
        let keys = parse_jwks(&jwks).map_err(|reason| KeysError::Invalid {
            what: "JWKS",
            url: url.to_string(),
            reason,
        })?;
        self.with_entry(issuer, |e| {
            e.keys = Some(Cached {
                value: keys.clone(),
                at: Instant::now(),
            });
        });
        Ok(keys)
    }

    /// Forgets everything cached for `issuer` (after unsubscribing).
    pub fn forget(&self, issuer: &str) {
        if let Ok(mut cache) = self.cache.lock() {
            cache.remove(issuer);
        }
    }

    fn with_entry<R>(&self, issuer: &str, f: impl FnOnce(&mut Entry) -> R) -> R {
        match self.cache.lock() {
            Ok(mut cache) => f(cache.entry(issuer.to_owned()).or_default()),
            // A poisoned lock only means another caller panicked mid-update;
            // work uncached rather than fail.
            Err(_) => f(&mut Entry::default()),
        }
    }

    async fn fetch_json(&self, what: &'static str, url: &Url) -> Result<Value, KeysError> {
        let fail = |reason: String| KeysError::Fetch {
            what,
            url: url.to_string(),
            reason,
        };
        let fetch = async {
            let mut resp = self
                .http
                .get(url.clone())
                .header(reqwest::header::ACCEPT, "application/json")
                .timeout(FETCH_TIMEOUT)
                .send()
                .await
                .map_err(|e| fail(e.to_string()))?;
            let status = resp.status();
            if !status.is_success() {
                return Err(fail(format!("HTTP status {status}")));
            }
            if resp.content_length().is_some_and(|n| n > MAX_BODY as u64) {
                return Err(fail(format!("the body is larger than {MAX_BODY} bytes")));
            }
            let mut body = Vec::new();
            while let Some(chunk) = resp.chunk().await.map_err(|e| fail(e.to_string()))? {
                if body.len() + chunk.len() > MAX_BODY {
                    return Err(fail(format!("the body is larger than {MAX_BODY} bytes")));
                }
                body.extend_from_slice(&chunk);
            }
            serde_json::from_slice::<Value>(&body).map_err(|e| fail(format!("not JSON: {e}")))
        };
        // The request timeout covers the body too, but bound the whole
        // exchange in case the client was built without one.
        tokio::time::timeout(FETCH_TIMEOUT, fetch)
            .await
            .map_err(|_| fail(format!("no answer within {FETCH_TIMEOUT:?}")))?
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::Router;
    use axum::extract::State;
    use axum::routing::get;
    use serde_json::json;

    use super::*;

    /// One point on P-256 (the generator), usable as any number of test keys.
    const GX: &str = "axfR8uEsQkf4vOblY6RA8ncDfYEt6zOg9KE5RdiYwpY";
    const GY: &str = "T-NC4v4af5uO5-tKfA-eFivOM1drMV7Oy7ZAaDe_UfU";

    #[derive(Default)]
    struct Server {
        metadata_hits: AtomicUsize,
        jwks_hits: AtomicUsize,
        kids: Mutex<Vec<String>>,
        issuer_override: Mutex<Option<String>>,
        base: Mutex<String>,
    }

    fn jwk(kid: &str) -> Value {
        json!({"kty": "EC", "crv": "P-256", "x": GX, "y": GY, "kid": kid, "use": "sig", "alg": "ES256"})
    }

    async fn start() -> (Arc<Server>, String) {
        let state = Arc::new(Server::default());
        *state.kids.lock().unwrap() = vec!["k1".to_owned()];
        let app = Router::new()
            .route(
                "/.well-known/ssf-configuration/tx",
                get(|State(s): State<Arc<Server>>| async move {
                    s.metadata_hits.fetch_add(1, Ordering::SeqCst);
                    let base = s.base.lock().unwrap().clone();
                    let issuer = s
                        .issuer_override
                        .lock()
                        .unwrap()
                        .clone()
                        .unwrap_or_else(|| format!("{base}/tx"));
                    axum::Json(json!({
                        "spec_version": "1_0",
                        "issuer": issuer,
                        "jwks_uri": format!("{base}/tx/jwks"),
                    }))
                }),
            )
            .route(
                "/tx/jwks",
                get(|State(s): State<Arc<Server>>| async move {
                    s.jwks_hits.fetch_add(1, Ordering::SeqCst);
                    let kids = s.kids.lock().unwrap().clone();
                    axum::Json(json!({"keys": kids.iter().map(|k| jwk(k)).collect::<Vec<_>>()}))
                }),
            )
            .route(
                "/.well-known/ssf-configuration/big",
                get(|| async { "x".repeat(MAX_BODY + 1) }),
            )
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        *state.base.lock().unwrap() = base.clone();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (state, base)
    }

    fn kids(keys: &[PublicKey]) -> Vec<&str> {
        keys.iter().filter_map(PublicKey::kid).collect()
    }

    #[test]
    fn well_known_goes_between_host_and_path() {
        let u = |s: &str| configuration_url(s).map(|u| u.to_string());
        assert_eq!(
            u("https://h").unwrap(),
            "https://h/.well-known/ssf-configuration"
        );
        assert_eq!(
            u("https://h/").unwrap(),
            "https://h/.well-known/ssf-configuration"
        );
        assert_eq!(
            u("https://h:8443/a/b").unwrap(),
            "https://h:8443/.well-known/ssf-configuration/a/b"
        );
        assert!(u("ftp://h/p").is_err());
        assert!(u("file:///etc/passwd").is_err());
        assert!(u("https://h/p?x=1").is_err());
        assert!(u("not a url").is_err());
    }

    #[tokio::test]
    async fn caches_refreshes_on_unknown_kid_and_rate_limits() {
        let (server, base) = start().await;
        let issuer = format!("{base}/tx");
        let tk = TransmitterKeys::new(reqwest::Client::new())
            .with_limits(Duration::from_secs(300), Duration::from_millis(300));

        let keys = tk.keys(&issuer, Some("k1")).await.unwrap();
        assert_eq!(kids(&keys), ["k1"]);
        assert_eq!(server.metadata_hits.load(Ordering::SeqCst), 1);
        assert_eq!(server.jwks_hits.load(Ordering::SeqCst), 1);

        // Cached: known kid and no kid at all fetch nothing.
        tk.keys(&issuer, Some("k1")).await.unwrap();
        tk.keys(&issuer, None).await.unwrap();
        tk.metadata(&issuer).await.unwrap();
        assert_eq!(server.metadata_hits.load(Ordering::SeqCst), 1);
        assert_eq!(server.jwks_hits.load(Ordering::SeqCst), 1);

        // The transmitter rotates: an unknown kid refetches the JWKS (not the metadata).
        server.kids.lock().unwrap().push("k2".to_owned());
        let keys = tk.keys(&issuer, Some("k2")).await.unwrap();
        assert_eq!(kids(&keys), ["k1", "k2"]);
        assert_eq!(server.jwks_hits.load(Ordering::SeqCst), 2);
        assert_eq!(server.metadata_hits.load(Ordering::SeqCst), 1);

        // Another unknown kid right away is rate limited: cached keys, no fetch.
        server.kids.lock().unwrap().push("k3".to_owned());
        let keys = tk.keys(&issuer, Some("k3")).await.unwrap();
        assert_eq!(kids(&keys), ["k1", "k2"]);
        assert_eq!(server.jwks_hits.load(Ordering::SeqCst), 2);

        // Once the interval has passed, the refresh happens.
        tokio::time::sleep(Duration::from_millis(350)).await;
        let keys = tk.keys(&issuer, Some("k3")).await.unwrap();
        assert_eq!(kids(&keys), ["k1", "k2", "k3"]);
        assert_eq!(server.jwks_hits.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn expired_cache_is_refetched() {
        let (server, base) = start().await;
        let issuer = format!("{base}/tx");
        let tk = TransmitterKeys::new(reqwest::Client::new())
            .with_limits(Duration::from_millis(1), Duration::from_secs(300));
        tk.keys(&issuer, None).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        tk.keys(&issuer, None).await.unwrap();
        assert_eq!(server.jwks_hits.load(Ordering::SeqCst), 2);
        assert_eq!(server.metadata_hits.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn issuer_mismatch_is_refused() {
        let (server, base) = start().await;
        *server.issuer_override.lock().unwrap() = Some("https://evil.example/tx".to_owned());
        let tk = TransmitterKeys::new(reqwest::Client::new());
        let err = tk.keys(&format!("{base}/tx"), None).await.unwrap_err();
        assert!(matches!(err, KeysError::IssuerMismatch { .. }), "{err}");
        assert!(err.to_string().contains("https://evil.example/tx"), "{err}");
        assert_eq!(server.jwks_hits.load(Ordering::SeqCst), 0);
        // Nothing was cached: the same answer the next time.
        assert!(tk.metadata(&format!("{base}/tx")).await.is_err());
        assert_eq!(server.metadata_hits.load(Ordering::SeqCst), 2);
        let set_err: SetError = err.into();
        assert_eq!(set_err.code(), "invalid_key");
    }

    #[tokio::test]
    async fn fetch_failures_are_readable() {
        let (_server, base) = start().await;
        let tk = TransmitterKeys::new(reqwest::Client::new());
        let err = tk.metadata(&format!("{base}/missing")).await.unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with("fetching the transmitter's metadata at ")
                && msg.contains("/.well-known/ssf-configuration/missing")
                && msg.contains("404"),
            "{msg}"
        );
        let err = tk.metadata(&format!("{base}/big")).await.unwrap_err();
        assert!(err.to_string().contains("larger than"), "{err}");
        assert!(tk.metadata("ftp://example.com/tx").await.is_err());
    }
}
