//! Test harness: a fake STS (JWKS + `/oauth2/consume`), the demo servers on
//! loopback, a minimal MCP client over real HTTP, and an OBO token minter.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    dead_code
)]

use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{SystemTime, UNIX_EPOCH},
};

use aws_lc_rs::{
    rand::SystemRandom,
    signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair},
};
use axum::{
    Form, Json, Router,
    extract::State,
    http::{HeaderMap, StatusCode},
    routing::{get, post},
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use keyless_demo::{DemoConfig, SvidSource, bank_router, directory_router};
use serde_json::{Value, json};

/// The SVID string the fake STS expects from the demo servers.
pub const SVID: &str = "demo-server-svid";
pub const AGENT: &str = "spiffe://keyless.test/agent/chat";

/// A P-256 signing key with its kid.
pub struct TestKey {
    pub kid: String,
    pkcs8: Vec<u8>,
    public: Vec<u8>,
}

impl TestKey {
    pub fn generate(kid: &str) -> Self {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
        Self {
            kid: kid.to_owned(),
            pkcs8: pkcs8.as_ref().to_vec(),
            public: pair.public_key().as_ref().to_vec(),
        }
    }

    pub fn jwk(&self) -> Value {
        // Uncompressed point: 0x04 || x || y.
        json!({
            "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": self.kid,
            "x": URL_SAFE_NO_PAD.encode(&self.public[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&self.public[33..65]),
        })
    }

    /// Signs `claims` with header `typ` and this key's kid (or `kid`).
    pub fn sign(&self, claims: &Value, typ: Option<&str>, kid: Option<&str>) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.typ = typ.map(str::to_owned);
        header.kid = Some(kid.unwrap_or(&self.kid).to_owned());
        jsonwebtoken::encode(&header, claims, &EncodingKey::from_ec_der(&self.pkcs8)).unwrap()
    }
}

/// What the fake STS serves and saw.
#[derive(Default)]
pub struct StsState {
    pub jwks: Mutex<Vec<Value>>,
    pub jwks_hits: AtomicUsize,
    pub consume_calls: AtomicUsize,
    pub used: Mutex<HashSet<String>>,
    pub consumed_audiences: Mutex<Vec<String>>,
}

async fn jwks(State(state): State<Arc<StsState>>) -> Json<Value> {
    state.jwks_hits.fetch_add(1, Ordering::SeqCst);
    Json(json!({ "keys": state.jwks.lock().unwrap().clone() }))
}

async fn consume(
    State(state): State<Arc<StsState>>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> (StatusCode, Json<Value>) {
    state.consume_calls.fetch_add(1, Ordering::SeqCst);
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if bearer != format!("Bearer {SVID}") {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "invalid_client", "error_description": "bad client SVID"})),
        );
    }
    let Some(token) = form.get("token") else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "invalid_request", "error_description": "token is required"})),
        );
    };
    let payload = token.split('.').nth(1).unwrap_or_default();
    let claims: Value = URL_SAFE_NO_PAD
        .decode(payload)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or(Value::Null);
    let jti = claims["jti"].as_str().unwrap_or_default().to_owned();
    state
        .consumed_audiences
        .lock()
        .unwrap()
        .push(form.get("audience").cloned().unwrap_or_default());
    if state.used.lock().unwrap().insert(jti) {
        (StatusCode::OK, Json(json!({"consumed": true})))
    } else {
        (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "invalid_grant", "error_description": "token already used"})),
        )
    }
}

/// An SVID source handing out the fixed test SVID, remembering audiences asked for.
#[derive(Debug, Default)]
pub struct FixedSvid {
    pub audiences: Mutex<Vec<String>>,
}

#[async_trait::async_trait]
impl SvidSource for FixedSvid {
    async fn jwt_svid(&self, audience: &str) -> Result<String, String> {
        self.audiences.lock().unwrap().push(audience.to_owned());
        Ok(SVID.to_owned())
    }
}

pub const DIRECTORY_PATH: &str = "/demo/directory/mcp";
pub const BANK_PATH: &str = "/demo/bank/mcp";

pub struct Harness {
    pub sts: Arc<StsState>,
    pub issuer: String,
    pub key: TestKey,
    pub svid: Arc<FixedSvid>,
    pub base: String,
    pub dir: tempfile::TempDir,
}

async fn serve(router: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, router).await.unwrap();
    });
    format!("http://{addr}")
}

impl Harness {
    pub async fn start() -> Self {
        let key = TestKey::generate("key-1");
        let sts = Arc::new(StsState::default());
        sts.jwks.lock().unwrap().push(key.jwk());
        let sts_router = Router::new()
            .route("/oauth2/jwks", get(jwks))
            .route("/oauth2/consume", post(consume))
            .with_state(sts.clone());
        let issuer = serve(sts_router).await;
        let dir = tempfile::tempdir().unwrap();
        let svid = Arc::new(FixedSvid::default());
        let mut harness = Self {
            sts,
            issuer,
            key,
            svid,
            base: String::new(),
            dir,
        };
        harness.base = harness
            .serve_demo(&harness.db("directory.db"), &harness.db("bank.db"))
            .await;
        harness
    }

    pub fn db(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn config(&self, database: &Path) -> DemoConfig {
        DemoConfig {
            issuer: self.issuer.clone(),
            database: database.to_path_buf(),
            svid: self.svid.clone(),
        }
    }

    /// Serves both demo servers on a new loopback listener; returns its base URL.
    pub async fn serve_demo(&self, directory_db: &Path, bank_db: &Path) -> String {
        let directory = directory_router(self.config(directory_db), DIRECTORY_PATH)
            .await
            .unwrap();
        let bank = bank_router(self.config(bank_db), BANK_PATH).await.unwrap();
        serve(directory.merge(bank)).await
    }

    pub fn directory(&self) -> Mcp {
        Mcp::new(format!("{}{DIRECTORY_PATH}", self.base))
    }

    pub fn bank(&self) -> Mcp {
        Mcp::new(format!("{}{BANK_PATH}", self.base))
    }

    /// Standard OBO claims for `email` at `aud` carrying `details`.
    pub fn claims(&self, email: &str, aud: &str, details: Value) -> Value {
        let now = now();
        json!({
            "iss": self.issuer,
            "sub": format!("user-{}", email.split('@').next().unwrap()),
            "email": email,
            "aud": aud,
            "iat": now,
            "nbf": now,
            "exp": now + 120,
            "jti": uuid::Uuid::new_v4().to_string(),
            "client_id": "keyless-gateway",
            "act": {"sub": AGENT},
            "authorization_details": details,
        })
    }

    /// A valid OBO token.
    pub fn token(&self, email: &str, aud: &str, details: Value) -> String {
        self.key
            .sign(&self.claims(email, aud, details), Some("at+jwt"), None)
    }

    pub fn consume_calls(&self) -> usize {
        self.sts.consume_calls.load(Ordering::SeqCst)
    }

    pub fn jwks_hits(&self) -> usize {
        self.sts.jwks_hits.load(Ordering::SeqCst)
    }
}

pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Outcome of a `tools/call`.
#[derive(Debug)]
pub enum Call {
    /// The tool ran: its result object (`isError` may be true).
    Result(Value),
    /// A JSON-RPC error: code and message.
    Error(i64, String),
}

impl Call {
    pub fn ok(self) -> Value {
        match self {
            Call::Result(result) => {
                assert_ne!(result["isError"], json!(true), "tool error: {result}");
                result["structuredContent"].clone()
            }
            Call::Error(code, message) => panic!("expected success, got {code} {message}"),
        }
    }

    pub fn tool_error(self) -> String {
        match self {
            Call::Result(result) => {
                assert_eq!(
                    result["isError"],
                    json!(true),
                    "expected tool error: {result}"
                );
                result["content"][0]["text"].as_str().unwrap().to_owned()
            }
            Call::Error(code, message) => panic!("expected tool error, got {code} {message}"),
        }
    }

    /// The refusal message (asserting code -32001).
    pub fn refused(self) -> String {
        match self {
            Call::Error(code, message) => {
                assert_eq!(code, -32001, "{message}");
                message
            }
            Call::Result(result) => panic!("expected refusal, got result {result}"),
        }
    }
}

/// A minimal Streamable HTTP MCP client.
pub struct Mcp {
    http: reqwest::Client,
    url: String,
    session: Option<String>,
    next_id: i64,
}

impl Mcp {
    pub fn new(url: String) -> Self {
        Self {
            http: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(10))
                .build()
                .unwrap(),
            url,
            session: None,
            next_id: 1,
        }
    }

    /// POSTs one JSON-RPC message; returns the status and the JSON-RPC reply, if any.
    pub async fn post(&mut self, body: Value, token: Option<&str>) -> (u16, Option<Value>) {
        let mut request = self
            .http
            .post(&self.url)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2025-06-18");
        if let Some(session) = &self.session {
            request = request.header("mcp-session-id", session);
        }
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.json(&body).send().await.unwrap();
        let status = response.status().as_u16();
        if let Some(session) = response.headers().get("mcp-session-id") {
            self.session = Some(session.to_str().unwrap().to_owned());
        }
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let text = response.text().await.unwrap();
        if text.trim().is_empty() {
            return (status, None);
        }
        let reply = if content_type.starts_with("text/event-stream") {
            text.lines()
                .filter_map(|line| line.strip_prefix("data:"))
                .filter_map(|data| serde_json::from_str::<Value>(data.trim()).ok())
                .find(|message| message.get("id").is_some())
        } else {
            serde_json::from_str(&text).ok()
        };
        (status, reply)
    }

    pub async fn request(&mut self, method: &str, params: Value, token: Option<&str>) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let (status, reply) = self
            .post(
                json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}),
                token,
            )
            .await;
        let reply = reply.unwrap_or_else(|| panic!("no reply to {method} (HTTP {status})"));
        assert_eq!(reply["id"], json!(id), "{reply}");
        reply
    }

    pub async fn initialize(&mut self) -> Value {
        let reply = self
            .request(
                "initialize",
                json!({
                    "protocolVersion": "2025-06-18",
                    "capabilities": {},
                    "clientInfo": {"name": "keyless-demo-test", "version": "0"},
                }),
                None,
            )
            .await;
        let (status, _) = self
            .post(
                json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
                None,
            )
            .await;
        assert!(status == 202 || status == 200, "initialized: HTTP {status}");
        reply["result"].clone()
    }

    pub async fn list_tools(&mut self) -> Vec<Value> {
        let reply = self.request("tools/list", json!({}), None).await;
        reply["result"]["tools"].as_array().unwrap().clone()
    }

    pub async fn call(&mut self, name: &str, arguments: Value, token: Option<&str>) -> Call {
        let reply = self
            .request(
                "tools/call",
                json!({"name": name, "arguments": arguments}),
                token,
            )
            .await;
        if let Some(error) = reply.get("error") {
            return Call::Error(
                error["code"].as_i64().unwrap(),
                error["message"].as_str().unwrap().to_owned(),
            );
        }
        Call::Result(reply["result"].clone())
    }
}
