//! The optional OpenBao/Vault backend: with it, KV v2 reads and writes and
//! database credentials come from a real OpenBao (or Vault) cluster, while
//! Keyless still authenticates every caller with its own tokens and ACL
//! policies, records the audit events and keeps its own lease for each
//! credential (mapped to OpenBao's `lease_id`, so renew and revoke are
//! forwarded).
//!
//! Keyless logs in to OpenBao's JWT auth (`POST /v1/auth/<mount>/login
//! {role, jwt}`) with a JWT-SVID it mints for itself
//! (`spiffe://<td>/keyless/secrets-broker`, from an in-memory entry that no
//! workload selector can ever match — see `Secrets::use_openbao`). The
//! OpenBao token lives only in this process's memory: it is never stored,
//! never logged (the [`Debug`] impl omits it), replaced by a fresh login
//! once two thirds of its life have passed, and after any 403 (OpenBao
//! restarted, token revoked) the request is retried once after a new login.
//!
//! Transport: HTTP/1.1 over plain TCP (hyper, one connection per request,
//! every request bounded by a timeout). `https://` addresses are refused
//! for now (not done: TLS with rustls + aws-lc-rs).

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Map, Value, json};
use tokio::sync::Mutex;

use crate::SecretsError;
use crate::kv::{ReadResult, VersionMeta};
use crate::lease::LeaseBackend;

/// The path of the SPIFFE ID Keyless logs in to OpenBao with.
pub const BROKER_ID_PATH: &str = "/keyless/secrets-broker";
/// Default audience of that JWT-SVID (what the OpenBao role binds).
pub const DEFAULT_AUDIENCE: &str = "openbao";
/// Lease engine name of credentials issued by OpenBao.
pub const ENGINE_OPENBAO: &str = "openbao";
/// Largest OpenBao answer read.
const MAX_BODY: usize = 4 * 1024 * 1024;

/// Where and how to reach OpenBao.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenBaoConfig {
    /// Base address, `http://host:port`.
    pub addr: String,
    /// The JWT auth role Keyless logs in with.
    pub role: String,
    /// Audience of Keyless's JWT-SVID (the role's `bound_audiences`).
    pub audience: String,
    /// Mount of the JWT auth method (`jwt`).
    pub auth_mount: String,
    /// Mount of the KV v2 engine (`secret`).
    pub kv_mount: String,
    /// Mount of the database engine (`database`).
    pub database_mount: String,
    /// Longest wait for one OpenBao request.
    pub timeout: Duration,
}

impl OpenBaoConfig {
    /// Defaults for everything but the address and the role.
    pub fn new(addr: impl Into<String>, role: impl Into<String>) -> Self {
        Self {
            addr: addr.into(),
            role: role.into(),
            audience: DEFAULT_AUDIENCE.to_owned(),
            auth_mount: "jwt".to_owned(),
            kv_mount: "secret".to_owned(),
            database_mount: "database".to_owned(),
            timeout: Duration::from_secs(15),
        }
    }
}

impl OpenBaoConfig {
    /// Checks the settings; returns the `host:port` to connect to.
    pub fn validate(&self) -> Result<String, SecretsError> {
        let invalid = |why: &str| {
            SecretsError::InvalidRequest(format!("invalid openbao address `{}`: {why}", self.addr))
        };
        if self.role.trim().is_empty() {
            return Err(SecretsError::InvalidRequest(
                "an openbao role is required".into(),
            ));
        }
        if self.audience.trim().is_empty() {
            return Err(SecretsError::InvalidRequest(
                "the openbao audience must not be empty".into(),
            ));
        }
        let url = url::Url::parse(&self.addr).map_err(|e| invalid(&e.to_string()))?;
        if url.scheme() != "http" {
            return Err(invalid("only http:// is supported (https is not done yet)"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(invalid("credentials in the address are not allowed"));
        }
        if url.query().is_some() || url.fragment().is_some() || url.path() != "/" {
            return Err(invalid("use a base address such as http://127.0.0.1:8200"));
        }
        let host = url.host_str().ok_or_else(|| invalid("no host"))?;
        let port = url.port_or_known_default().unwrap_or(80);
        Ok(if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        })
    }
}

/// Where Keyless's JWT-SVID comes from (a fresh one per login).
pub type JwtSource = Arc<dyn Fn() -> Result<String, SecretsError> + Send + Sync>;

/// A logged-in OpenBao token (memory only).
struct BaoToken {
    token: String,
    refresh_at: Instant,
}

/// A database credential issued by OpenBao.
#[derive(Debug, Clone)]
pub struct BaoCredential {
    /// OpenBao's lease id (what renew and revoke are forwarded with).
    pub lease_id: String,
    pub lease_duration: Duration,
    pub renewable: bool,
    /// `username`, `password`, as OpenBao returned them.
    pub data: Map<String, Value>,
}

/// The OpenBao client.
pub struct OpenBaoClient {
    config: OpenBaoConfig,
    /// `host:port` to connect to, and the `Host` header.
    authority: String,
    jwt: JwtSource,
    token: Mutex<Option<BaoToken>>,
}

// Deliberately prints no token.
impl fmt::Debug for OpenBaoClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenBaoClient")
            .field("addr", &self.config.addr)
            .field("role", &self.config.role)
            .finish()
    }
}

fn backend(m: impl Into<String>) -> SecretsError {
    SecretsError::Backend(m.into())
}

/// Percent-encodes one path segment (RFC 3986 unreserved characters kept).
fn encode_segment(seg: &str) -> String {
    let mut out = String::with_capacity(seg.len());
    for b in seg.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn encode_path(path: &str) -> String {
    path.split('/')
        .map(encode_segment)
        .collect::<Vec<_>>()
        .join("/")
}

/// OpenBao's `errors` array, joined (for logs and 400 answers).
fn errors_of(body: &Value) -> String {
    body.get("errors")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join("; ")
        })
        .unwrap_or_default()
}

impl OpenBaoClient {
    /// A client for `config`; nothing is contacted until the first request
    /// (OpenBao may be configured to trust Keyless only after Keyless is up).
    pub fn new(config: OpenBaoConfig, jwt: JwtSource) -> Result<Self, SecretsError> {
        let authority = config.validate()?;
        Ok(Self {
            config,
            authority,
            jwt,
            token: Mutex::new(None),
        })
    }

    pub fn config(&self) -> &OpenBaoConfig {
        &self.config
    }

    /// One HTTP exchange; `(status, JSON body or null)`.
    async fn send(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Result<(StatusCode, Value), SecretsError> {
        let exchange = async {
            let stream = tokio::net::TcpStream::connect(&self.authority)
                .await
                .map_err(|e| backend(format!("cannot connect to openbao: {e}")))?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| backend(format!("openbao handshake: {e}")))?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "openbao connection ended");
                }
            });
            let mut req = Request::builder()
                .method(method)
                .uri(format!("/v1/{path}"))
                .header(HOST, &self.authority);
            if let Some(t) = token {
                req = req.header("x-vault-token", t);
            }
            let payload = match body {
                Some(b) => {
                    req = req.header(CONTENT_TYPE, "application/json");
                    Bytes::from(b.to_string())
                }
                None => Bytes::new(),
            };
            let req = req
                .body(Full::new(payload))
                .map_err(|e| backend(format!("openbao request: {e}")))?;
            let resp = sender
                .send_request(req)
                .await
                .map_err(|e| backend(format!("openbao request failed: {e}")))?;
            let status = resp.status();
            let bytes = Limited::new(resp.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| backend(format!("reading the openbao answer: {e}")))?
                .to_bytes();
            let value = if bytes.iter().all(u8::is_ascii_whitespace) {
                Value::Null
            } else {
                serde_json::from_slice(&bytes)
                    .map_err(|e| backend(format!("openbao answered non-json ({status}): {e}")))?
            };
            Ok((status, value))
        };
        tokio::time::timeout(self.config.timeout, exchange)
            .await
            .map_err(|_| backend("openbao did not answer in time"))?
    }

    /// Logs in with a fresh JWT-SVID; the token goes into memory only.
    async fn login(&self) -> Result<BaoToken, SecretsError> {
        let jwt = (self.jwt)()?;
        let path = format!("auth/{}/login", encode_path(&self.config.auth_mount));
        let body = json!({ "role": self.config.role, "jwt": jwt });
        let (status, answer) = self.send(Method::POST, &path, None, Some(&body)).await?;
        if !status.is_success() {
            return Err(backend(format!(
                "openbao refused keyless's login to role `{}` ({status}): {}",
                self.config.role,
                errors_of(&answer)
            )));
        }
        let auth = answer
            .get("auth")
            .ok_or_else(|| backend("openbao login answer has no `auth`"))?;
        let token = auth
            .get("client_token")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| backend("openbao login answer has no client token"))?
            .to_owned();
        let lease = auth
            .get("lease_duration")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        // 0 = no expiry (a root-like token); still re-login hourly.
        let life = if lease == 0 {
            Duration::from_secs(3600)
        } else {
            Duration::from_secs(lease)
        };
        tracing::info!(role = %self.config.role, ttl_secs = lease, "logged in to openbao");
        Ok(BaoToken {
            token,
            refresh_at: Instant::now() + life * 2 / 3,
        })
    }

    /// The current token, logging in first when there is none, it is past
    /// two thirds of its life, or it equals `stale` (just refused).
    async fn token(&self, stale: Option<&str>) -> Result<String, SecretsError> {
        let mut guard = self.token.lock().await;
        if let Some(t) = guard.as_ref()
            && Instant::now() < t.refresh_at
            && stale != Some(t.token.as_str())
        {
            return Ok(t.token.clone());
        }
        *guard = None;
        let fresh = self.login().await?;
        let token = fresh.token.clone();
        *guard = Some(fresh);
        Ok(token)
    }

    /// An authenticated request; a 403 triggers one fresh login and retry.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(StatusCode, Value), SecretsError> {
        let token = self.token(None).await?;
        let (status, answer) = self.send(method.clone(), path, Some(&token), body).await?;
        if status != StatusCode::FORBIDDEN {
            return Ok((status, answer));
        }
        let token = self.token(Some(&token)).await?;
        let (status, answer) = self.send(method, path, Some(&token), body).await?;
        if status == StatusCode::FORBIDDEN {
            // Keyless's own ACL allowed the caller; OpenBao's policy for the
            // broker's role does not: an operator's configuration error.
            return Err(backend(format!(
                "openbao denied keyless's role `{}` on `{path}`",
                self.config.role
            )));
        }
        Ok((status, answer))
    }

    /// Maps a non-success OpenBao answer to a broker error.
    fn failure(status: StatusCode, answer: &Value, what: &str) -> SecretsError {
        let msg = errors_of(answer);
        match status {
            StatusCode::BAD_REQUEST => SecretsError::InvalidRequest(if msg.is_empty() {
                format!("openbao refused the {what}")
            } else {
                msg
            }),
            StatusCode::NOT_FOUND => SecretsError::NotFound(what.to_owned()),
            _ => backend(format!("openbao {what} failed ({status}): {msg}")),
        }
    }

    fn kv_path(&self, kind: &str, path: &str) -> String {
        format!(
            "{}/{kind}/{}",
            encode_path(&self.config.kv_mount),
            encode_path(path)
        )
    }

    /// Reads KV v2 `path` (a version, or the latest). `None` when missing;
    /// a deleted or destroyed version has `data: None` and its metadata.
    pub async fn kv_read(
        &self,
        path: &str,
        version: Option<u64>,
    ) -> Result<Option<ReadResult>, SecretsError> {
        let mut p = self.kv_path("data", path);
        if let Some(v) = version {
            p.push_str(&format!("?version={v}"));
        }
        let (status, answer) = self.request(Method::GET, &p, None).await?;
        let data = answer.get("data").filter(|d| !d.is_null());
        match (status, data) {
            (s, Some(d)) if s.is_success() || s == StatusCode::NOT_FOUND => {
                let meta: VersionMeta = d
                    .get("metadata")
                    .cloned()
                    .map(serde_json::from_value)
                    .transpose()
                    .map_err(|e| backend(format!("openbao kv metadata: {e}")))?
                    .ok_or_else(|| backend("openbao kv answer has no metadata"))?;
                let value = match d.get("data") {
                    Some(Value::Object(m)) => Some(m.clone()),
                    _ => None,
                };
                Ok(Some(ReadResult { data: value, meta }))
            }
            (StatusCode::NOT_FOUND, None) => Ok(None),
            (s, _) => Err(Self::failure(s, &answer, "kv read")),
        }
    }

    /// Whether KV v2 `path` has metadata (decides `create` vs `update`).
    pub async fn kv_exists(&self, path: &str) -> Result<bool, SecretsError> {
        let p = self.kv_path("metadata", path);
        let (status, answer) = self.request(Method::GET, &p, None).await?;
        match status {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            s => Err(Self::failure(s, &answer, "kv metadata read")),
        }
    }

    /// Writes KV v2 `path`.
    pub async fn kv_write(
        &self,
        path: &str,
        data: Map<String, Value>,
        cas: Option<u64>,
    ) -> Result<VersionMeta, SecretsError> {
        let mut body = json!({ "data": data });
        if let (Some(c), Some(obj)) = (cas, body.as_object_mut()) {
            obj.insert("options".into(), json!({ "cas": c }));
        }
        let p = self.kv_path("data", path);
        let (status, answer) = self.request(Method::POST, &p, Some(&body)).await?;
        if !status.is_success() {
            return Err(Self::failure(status, &answer, "kv write"));
        }
        answer
            .get("data")
            .cloned()
            .map(serde_json::from_value)
            .transpose()
            .map_err(|e| backend(format!("openbao kv write answer: {e}")))?
            .ok_or_else(|| backend("openbao kv write answer has no data"))
    }

    /// Issues a database credential of OpenBao role `role`.
    pub async fn db_creds(&self, role: &str) -> Result<BaoCredential, SecretsError> {
        let p = format!(
            "{}/creds/{}",
            encode_path(&self.config.database_mount),
            encode_segment(role)
        );
        let (status, answer) = self.request(Method::GET, &p, None).await?;
        if !status.is_success() {
            return Err(Self::failure(status, &answer, "database credential"));
        }
        let lease_id = answer
            .get("lease_id")
            .and_then(Value::as_str)
            .filter(|l| !l.is_empty())
            .ok_or_else(|| backend("openbao credential has no lease"))?
            .to_owned();
        let data = match answer.get("data") {
            Some(Value::Object(m)) => m.clone(),
            _ => return Err(backend("openbao credential has no data")),
        };
        Ok(BaoCredential {
            lease_id,
            lease_duration: Duration::from_secs(
                answer
                    .get("lease_duration")
                    .and_then(Value::as_u64)
                    .unwrap_or(0),
            ),
            renewable: answer
                .get("renewable")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            data,
        })
    }

    /// Renews OpenBao lease `lease_id` by `increment`; returns OpenBao's
    /// granted duration (it may cap it).
    pub async fn renew_lease(
        &self,
        lease_id: &str,
        increment: Duration,
    ) -> Result<Duration, SecretsError> {
        let body = json!({ "lease_id": lease_id, "increment": increment.as_secs() });
        let (status, answer) = self
            .request(Method::PUT, "sys/leases/renew", Some(&body))
            .await?;
        if !status.is_success() {
            return Err(Self::failure(status, &answer, "lease renewal"));
        }
        Ok(Duration::from_secs(
            answer
                .get("lease_duration")
                .and_then(Value::as_u64)
                .unwrap_or(0),
        ))
    }

    /// Revokes OpenBao lease `lease_id`; idempotent (an unknown lease is
    /// already revoked).
    pub async fn revoke_lease(&self, lease_id: &str) -> Result<(), SecretsError> {
        let body = json!({ "lease_id": lease_id });
        let (status, answer) = self
            .request(Method::PUT, "sys/leases/revoke", Some(&body))
            .await?;
        if status.is_success() {
            return Ok(());
        }
        let msg = errors_of(&answer);
        if status == StatusCode::BAD_REQUEST && msg.contains("invalid lease") {
            return Ok(());
        }
        Err(backend(format!(
            "openbao lease revocation failed ({status}): {msg}"
        )))
    }
}

/// Keyless leases around OpenBao credentials carry `{lease_id}`.
#[derive(Debug)]
pub(crate) struct OpenBaoLeases(pub Arc<OpenBaoClient>);

fn bao_lease_id(internal: &Value) -> Result<&str, SecretsError> {
    internal
        .get("lease_id")
        .and_then(Value::as_str)
        .ok_or_else(|| SecretsError::InvalidRequest("openbao lease without `lease_id`".into()))
}

#[async_trait::async_trait]
impl LeaseBackend for OpenBaoLeases {
    async fn renew(&self, internal: &Value, valid_until: SystemTime) -> Result<(), SecretsError> {
        let increment = valid_until
            .duration_since(SystemTime::now())
            .unwrap_or_default()
            .max(Duration::from_secs(1));
        let granted = self
            .0
            .renew_lease(bao_lease_id(internal)?, increment)
            .await?;
        if granted + Duration::from_secs(1) < increment {
            tracing::warn!(
                granted_secs = granted.as_secs(),
                asked_secs = increment.as_secs(),
                "openbao granted a shorter renewal than keyless's lease"
            );
        }
        Ok(())
    }

    async fn revoke(&self, internal: &Value) -> Result<(), SecretsError> {
        self.0.revoke_lease(bao_lease_id(internal)?).await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::Router;
    use axum::extract::State;
    use axum::http::HeaderMap;
    use axum::routing::{any, post};

    use super::*;

    fn jwt_source() -> JwtSource {
        Arc::new(|| Ok("header.payload.sig".to_owned()))
    }

    #[test]
    fn bad_addresses_and_roles_are_refused() {
        for (addr, why) in [
            ("https://127.0.0.1:8200", "only http://"),
            ("not a url", "invalid openbao address"),
            ("http://user:pw@127.0.0.1:8200", "credentials"),
            ("http://127.0.0.1:8200/v1", "base address"),
        ] {
            let err = OpenBaoClient::new(OpenBaoConfig::new(addr, "r"), jwt_source()).unwrap_err();
            assert!(err.to_string().contains(why), "{addr}: {err}");
        }
        let err = OpenBaoClient::new(OpenBaoConfig::new("http://127.0.0.1:1", " "), jwt_source())
            .unwrap_err();
        assert!(err.to_string().contains("role is required"), "{err}");
        let ok = OpenBaoClient::new(
            OpenBaoConfig::new("http://127.0.0.1:8200", "r"),
            jwt_source(),
        )
        .unwrap();
        assert_eq!(ok.authority, "127.0.0.1:8200");
    }

    #[test]
    fn paths_are_percent_encoded_per_segment() {
        assert_eq!(encode_path("a/b c/d?e"), "a/b%20c/d%3Fe");
        assert_eq!(encode_segment("x/y"), "x%2Fy");
    }

    /// A fake OpenBao: logins hand out `tok-N`; KV answers 403 to any token
    /// but the newest, so a stale token must cause exactly one re-login.
    #[derive(Default)]
    struct Fake {
        logins: AtomicUsize,
        kv_calls: AtomicUsize,
    }

    async fn fake_login(State(f): State<Arc<Fake>>, body: axum::body::Bytes) -> axum::Json<Value> {
        let b: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(b["role"], "broker");
        assert_eq!(b["jwt"], "header.payload.sig");
        let n = f.logins.fetch_add(1, Ordering::SeqCst) + 1;
        axum::Json(json!({ "auth": { "client_token": format!("tok-{n}"), "lease_duration": 300 } }))
    }

    async fn fake_kv(
        State(f): State<Arc<Fake>>,
        headers: HeaderMap,
    ) -> (axum::http::StatusCode, axum::Json<Value>) {
        f.kv_calls.fetch_add(1, Ordering::SeqCst);
        let want = format!("tok-{}", f.logins.load(Ordering::SeqCst));
        let got = headers
            .get("x-vault-token")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        // The first token is "revoked" behind Keyless's back.
        if got != want || got == "tok-1" {
            return (
                axum::http::StatusCode::FORBIDDEN,
                axum::Json(json!({ "errors": ["permission denied"] })),
            );
        }
        (
            axum::http::StatusCode::OK,
            axum::Json(json!({ "data": {
                "data": { "k": "v" },
                "metadata": { "created_time": "2026-01-01T00:00:00Z", "custom_metadata": null,
                              "deletion_time": "", "destroyed": false, "version": 3 }
            }})),
        )
    }

    async fn fake(state: Arc<Fake>, always_deny: bool) -> String {
        let kv = if always_deny {
            any(|| async {
                (
                    axum::http::StatusCode::FORBIDDEN,
                    axum::Json(json!({ "errors": ["permission denied"] })),
                )
            })
            .with_state(state.clone())
        } else {
            any(fake_kv).with_state(state.clone())
        };
        let app = Router::new()
            .route("/v1/auth/jwt/login", post(fake_login))
            .route("/v1/secret/data/{*p}", kv)
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}")
    }

    #[tokio::test]
    async fn a_refused_token_is_replaced_by_one_fresh_login() {
        let state = Arc::new(Fake::default());
        let addr = fake(state.clone(), false).await;
        let client = OpenBaoClient::new(OpenBaoConfig::new(addr, "broker"), jwt_source()).unwrap();
        let read = client.kv_read("app/db", None).await.unwrap().unwrap();
        assert_eq!(read.data.unwrap()["k"], "v");
        assert_eq!(read.meta.version, 3);
        assert_eq!(
            state.logins.load(Ordering::SeqCst),
            2,
            "one re-login after the 403"
        );
        assert_eq!(state.kv_calls.load(Ordering::SeqCst), 2);
        // The token is reused afterwards: no login per request.
        client.kv_read("app/db", None).await.unwrap().unwrap();
        assert_eq!(state.logins.load(Ordering::SeqCst), 2);
        // Two thirds into its life, the token is replaced before use.
        if let Some(t) = client.token.lock().await.as_mut() {
            t.refresh_at = Instant::now();
        }
        client.kv_read("app/db", None).await.unwrap().unwrap();
        assert_eq!(
            state.logins.load(Ordering::SeqCst),
            3,
            "re-login before expiry"
        );
        // And it never shows in Debug output.
        let dbg = format!("{client:?}");
        assert!(!dbg.contains("tok-"), "{dbg}");
    }

    #[tokio::test]
    async fn a_persistent_403_is_a_backend_error_after_one_retry() {
        let state = Arc::new(Fake::default());
        let addr = fake(state.clone(), true).await;
        let client = OpenBaoClient::new(OpenBaoConfig::new(addr, "broker"), jwt_source()).unwrap();
        let err = client.kv_read("app/db", None).await.unwrap_err();
        assert!(matches!(err, SecretsError::Backend(_)), "{err:?}");
        assert!(
            err.to_string().contains("denied keyless's role `broker`"),
            "{err}"
        );
        assert_eq!(state.logins.load(Ordering::SeqCst), 2, "exactly one retry");
    }

    #[tokio::test]
    async fn a_refused_login_and_an_unreachable_server_are_clear_errors() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new().route(
            "/v1/auth/jwt/login",
            post(|| async {
                (
                    axum::http::StatusCode::BAD_REQUEST,
                    axum::Json(json!({ "errors": ["error validating token: invalid audience (aud) claim"] })),
                )
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        let client = OpenBaoClient::new(
            OpenBaoConfig::new(format!("http://{addr}"), "broker"),
            jwt_source(),
        )
        .unwrap();
        let err = client.kv_read("x", None).await.unwrap_err();
        assert!(err.to_string().contains("refused keyless's login"), "{err}");
        assert!(err.to_string().contains("invalid audience"), "{err}");

        // A port nobody listens on.
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dead = closed.local_addr().unwrap();
        drop(closed);
        let client = OpenBaoClient::new(
            OpenBaoConfig::new(format!("http://{dead}"), "broker"),
            jwt_source(),
        )
        .unwrap();
        let err = client.kv_read("x", None).await.unwrap_err();
        assert!(
            err.to_string().contains("cannot connect to openbao"),
            "{err}"
        );
    }
}
