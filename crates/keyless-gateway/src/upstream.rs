//! Upstream MCP servers: one rmcp client session per server, over
//! Streamable HTTP or stdio, shared by every call (requests are
//! multiplexed). A server that fails to connect, or whose session or child
//! process dies, is reconnected in the background with backoff; calls to it
//! fail fast meanwhile and the other servers are unaffected.
//!
//! Tool lists are read at every connection, re-read every `refresh_tools`,
//! and re-read at once when the upstream sends
//! `notifications/tools/list_changed` (so a changed definition is pinned
//! against, and blocked, as soon as the server says so).
//!
//! HTTP upstreams may be `https`: rustls on aws-lc-rs (reqwest's `rustls`
//! feature, nothing else) with the platform verifier, i.e. the system
//! roots, plus the CA certificates of the upstream's `ca_file`. One client
//! per upstream is built at start, so a bad CA file refuses the start.
//!
//! Per-call credentials: the caller passes one header line (`Name: value`,
//! e.g. `Authorization: Bearer <OBO token>`) with each call. Over HTTP it
//! travels in the request's `_meta` under [`AUTHORIZATION_META`] as far as
//! our HTTP client, which moves it into that header (it never reaches the
//! upstream in the body). Over stdio it stays in `_meta`, the only channel
//! stdio has.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::stream::BoxStream;
use rmcp::ClientHandler;
use rmcp::model::{
    CallToolRequestParams, CallToolResult, ClientJsonRpcMessage, ClientRequest, JsonObject,
    JsonRpcMessage, RequestMetaObject,
};
use rmcp::service::{NotificationContext, Peer, RoleClient, RunningService, ServiceExt};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::{
    StreamableHttpClient, StreamableHttpClientTransportConfig, StreamableHttpError,
    StreamableHttpPostResponse, StreamableHttpResponseLimits,
};
use sse_stream::{Error as SseError, Sse};
use tokio::sync::Notify;

use crate::catalog::ToolDef;
use crate::config::UpstreamConfig;

/// `_meta` key carrying a call's upstream credential header line.
pub const AUTHORIZATION_META: &str = "io.keyless/authorization";

const RECONNECT_MIN: Duration = Duration::from_millis(200);
const RECONNECT_MAX: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream `{0}` is not connected")]
    Unavailable(String),
    #[error("upstream `{0}` did not answer within {1:?}")]
    Timeout(String, Duration),
    #[error("upstream `{0}`: {1}")]
    Call(String, String),
    #[error("no upstream named `{0}`")]
    Unknown(String),
    #[error("upstream `{0}`: {1}")]
    Config(String, String),
}

/// What a connected upstream offers.
#[derive(Debug, Clone)]
struct Connected {
    peer: Peer<RoleClient>,
    tools: Vec<ToolDef>,
}

#[derive(Debug)]
struct Slot {
    config: UpstreamConfig,
    state: RwLock<Option<Connected>>,
    /// The HTTP client of an HTTP upstream (its TLS roots), built once.
    http: Option<reqwest::Client>,
}

/// Our side of an upstream session: it only listens for
/// `notifications/tools/list_changed`, which wakes the supervisor.
#[derive(Debug, Clone)]
struct UpstreamClient {
    tools_changed: Arc<Notify>,
}

impl ClientHandler for UpstreamClient {
    async fn on_tool_list_changed(&self, _context: NotificationContext<RoleClient>) {
        // `notify_one` keeps one permit: a notification that arrives while
        // the supervisor is re-listing is not lost.
        self.tools_changed.notify_one();
    }
}

/// The HTTP client for an upstream `url`: rustls with the platform
/// verifier (system roots) plus the certificates of `ca_file`.
fn http_client(config: &UpstreamConfig) -> Result<reqwest::Client, UpstreamError> {
    let bad = |m: String| UpstreamError::Config(config.name.clone(), m);
    let mut builder = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .tls_backend_rustls();
    if let Some(path) = &config.ca_file {
        let pem = std::fs::read(path)
            .map_err(|e| bad(format!("cannot read `ca_file` `{}`: {e}", path.display())))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| bad(format!("`ca_file` `{}`: {e}", path.display())))?;
        if certs.is_empty() {
            return Err(bad(format!(
                "`ca_file` `{}` holds no certificate",
                path.display()
            )));
        }
        builder = builder.tls_certs_merge(certs);
    }
    builder.build().map_err(|e| bad(e.to_string()))
}

/// A callback told about every (re)connection with the tools offered, so
/// the catalog can pin and reconcile them.
pub type OnTools =
    Arc<dyn Fn(String, Vec<ToolDef>) -> futures::future::BoxFuture<'static, ()> + Send + Sync>;

/// Every configured upstream.
#[derive(Clone)]
pub struct Upstreams {
    slots: Arc<HashMap<String, Arc<Slot>>>,
}

impl std::fmt::Debug for Upstreams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstreams")
            .field("servers", &self.slots.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Upstreams {
    /// Starts a supervisor per upstream (connect, list tools, report them
    /// through `on_tools`, reconnect on loss) and returns at once; use
    /// [`Upstreams::wait_connected`] to wait for the first connections.
    /// Fails, starting nothing, when an upstream's HTTP client cannot be
    /// built (an unreadable or empty `ca_file`).
    pub fn start(
        configs: &[UpstreamConfig],
        refresh: Duration,
        on_tools: OnTools,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Result<Self, UpstreamError> {
        let mut slots = HashMap::new();
        for c in configs {
            let http = match &c.url {
                Some(_) => Some(http_client(c)?),
                None => None,
            };
            slots.insert(
                c.name.clone(),
                Arc::new(Slot {
                    config: c.clone(),
                    state: RwLock::new(None),
                    http,
                }),
            );
        }
        for slot in slots.values() {
            tokio::spawn(supervise(
                slot.clone(),
                refresh,
                on_tools.clone(),
                shutdown.clone(),
            ));
        }
        Ok(Self {
            slots: Arc::new(slots),
        })
    }

    /// Waits (at most `timeout`) until every upstream connected once;
    /// returns the names of those that did not.
    pub async fn wait_connected(&self, timeout: Duration) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let missing: Vec<String> = self
                .slots
                .iter()
                .filter(|(_, s)| s.state.read().map(|g| g.is_none()).unwrap_or(true))
                .map(|(n, _)| n.clone())
                .collect();
            if missing.is_empty() || tokio::time::Instant::now() >= deadline {
                return missing;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub fn config(&self, server: &str) -> Option<&UpstreamConfig> {
        self.slots.get(server).map(|s| &s.config)
    }

    /// Tools every connected upstream offers now.
    pub fn tools(&self) -> Vec<ToolDef> {
        let mut out = Vec::new();
        for slot in self.slots.values() {
            if let Ok(g) = slot.state.read()
                && let Some(c) = g.as_ref()
            {
                out.extend(c.tools.iter().cloned());
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Whether `server` is connected.
    pub fn connected(&self, server: &str) -> bool {
        self.peer(server).is_some()
    }

    fn peer(&self, server: &str) -> Option<Peer<RoleClient>> {
        let slot = self.slots.get(server)?;
        let g = slot.state.read().ok()?;
        g.as_ref().map(|c| c.peer.clone())
    }

    /// Calls `tool` (its name upstream) on `server` with `credential` (one
    /// header line, `Name: value`) within the upstream's timeout.
    pub async fn call(
        &self,
        server: &str,
        tool: &str,
        arguments: JsonObject,
        credential: Option<String>,
    ) -> Result<CallToolResult, UpstreamError> {
        let slot = self
            .slots
            .get(server)
            .ok_or_else(|| UpstreamError::Unknown(server.to_owned()))?;
        let peer = self
            .peer(server)
            .ok_or_else(|| UpstreamError::Unavailable(server.to_owned()))?;
        let mut params = CallToolRequestParams::new(tool.to_owned()).with_arguments(arguments);
        if let Some(a) = credential {
            let mut meta = RequestMetaObject::new();
            meta.0.0.insert(AUTHORIZATION_META.into(), a.into());
            params.meta = Some(meta);
        }
        let timeout = slot.config.call_timeout();
        match tokio::time::timeout(timeout, peer.call_tool(params)).await {
            Err(_) => Err(UpstreamError::Timeout(server.to_owned(), timeout)),
            Ok(Err(e)) => {
                if peer.is_transport_closed()
                    && let Ok(mut g) = slot.state.write()
                {
                    *g = None;
                }
                Err(UpstreamError::Call(server.to_owned(), e.to_string()))
            }
            Ok(Ok(r)) => Ok(r),
        }
    }
}

/// Connects `slot`, keeps it connected, reconnects with backoff.
async fn supervise(
    slot: Arc<Slot>,
    refresh: Duration,
    on_tools: OnTools,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut backoff = RECONNECT_MIN;
    let tools_changed = Arc::new(Notify::new());
    loop {
        if *shutdown.borrow() {
            return;
        }
        let handler = UpstreamClient {
            tools_changed: tools_changed.clone(),
        };
        match connect(&slot, handler).await {
            Ok(service) => {
                backoff = RECONNECT_MIN;
                let peer = service.peer().clone();
                match list_tools(&slot.config.name, &peer).await {
                    Ok(tools) => {
                        on_tools(slot.config.name.clone(), tools.clone()).await;
                        if let Ok(mut g) = slot.state.write() {
                            *g = Some(Connected { peer, tools });
                        }
                        tracing::info!(upstream = %slot.config.name, "upstream connected");
                        // Wait for the session to end (child exit, transport
                        // loss, or a failed call marking it closed).
                        let token = service.cancellation_token();
                        let mut check = tokio::time::interval(Duration::from_millis(250));
                        let mut relist = tokio::time::interval(refresh);
                        relist.tick().await;
                        loop {
                            // Definitions can change under a live session:
                            // re-list and let the catalog reconcile, at the
                            // server's word or periodically.
                            tokio::select! {
                                _ = check.tick() => {
                                    let closed = service.is_transport_closed()
                                        || slot.state.read().map(|g| g.is_none()).unwrap_or(true);
                                    if closed { break; }
                                    continue;
                                }
                                _ = relist.tick() => {}
                                () = tools_changed.notified() => {
                                    tracing::debug!(upstream = %slot.config.name, "upstream says its tools changed");
                                }
                                _ = shutdown.changed() => {
                                    token.cancel();
                                    return;
                                }
                            }
                            let peer = service.peer().clone();
                            match list_tools(&slot.config.name, &peer).await {
                                Ok(tools) => {
                                    let changed = slot
                                        .state
                                        .read()
                                        .map(|g| g.as_ref().is_none_or(|c| c.tools != tools))
                                        .unwrap_or(true);
                                    if changed {
                                        on_tools(slot.config.name.clone(), tools.clone()).await;
                                        if let Ok(mut g) = slot.state.write() {
                                            *g = Some(Connected { peer, tools });
                                        }
                                    }
                                }
                                Err(e) => {
                                    tracing::warn!(upstream = %slot.config.name, error = %e, "re-listing upstream tools failed");
                                    break;
                                }
                            }
                        }
                        if let Ok(mut g) = slot.state.write() {
                            *g = None;
                        }
                        tracing::warn!(upstream = %slot.config.name, "upstream session ended; reconnecting");
                        drop(service);
                    }
                    Err(e) => {
                        tracing::warn!(upstream = %slot.config.name, error = %e, "listing upstream tools failed");
                    }
                }
            }
            Err(e) => {
                tracing::warn!(upstream = %slot.config.name, error = %e, retry_in = ?backoff, "cannot connect upstream");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.changed() => return,
        }
        backoff = (backoff * 2).min(RECONNECT_MAX);
    }
}

async fn list_tools(server: &str, peer: &Peer<RoleClient>) -> Result<Vec<ToolDef>, String> {
    let tools = tokio::time::timeout(Duration::from_secs(10), peer.list_all_tools())
        .await
        .map_err(|_| "tools/list timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    Ok(tools
        .into_iter()
        .map(|t| ToolDef {
            name: format!("{server}.{}", t.name),
            server: server.to_owned(),
            description: t.description.map(|d| d.to_string()).unwrap_or_default(),
            input_schema: serde_json::Value::Object((*t.input_schema).clone()),
        })
        .collect())
}

async fn connect(
    slot: &Slot,
    handler: UpstreamClient,
) -> Result<RunningService<RoleClient, UpstreamClient>, String> {
    let config = &slot.config;
    if let (Some(url), Some(http)) = (&config.url, &slot.http) {
        let client = OboHttpClient(http.clone());
        let transport = StreamableHttpClientTransport::with_client(
            client,
            StreamableHttpClientTransportConfig::with_uri(url.clone()).max_concurrent_requests(256),
        );
        return tokio::time::timeout(Duration::from_secs(10), handler.serve(transport))
            .await
            .map_err(|_| "initialize timed out".to_owned())?
            .map_err(|e| e.to_string());
    }
    let Some((program, args)) = config.command.as_ref().and_then(|c| c.split_first()) else {
        return Err("no url and no command".into());
    };
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args).envs(&config.env).kill_on_drop(true);
    let transport = rmcp::transport::TokioChildProcess::new(cmd).map_err(|e| e.to_string())?;
    tokio::time::timeout(Duration::from_secs(10), handler.serve(transport))
        .await
        .map_err(|_| "initialize timed out".to_owned())?
        .map_err(|e| e.to_string())
}

/// reqwest, with the per-call `Authorization` taken out of `_meta`.
#[derive(Clone)]
struct OboHttpClient(reqwest::Client);

/// Removes [`AUTHORIZATION_META`] from a `tools/call` and returns it.
fn take_authorization(message: &mut ClientJsonRpcMessage) -> Option<String> {
    let JsonRpcMessage::Request(req) = message else {
        return None;
    };
    let ClientRequest::CallToolRequest(call) = &mut req.request else {
        return None;
    };
    let meta = call.params.meta.as_mut()?;
    let value = meta.0.0.remove(AUTHORIZATION_META)?;
    if meta.0.0.is_empty() {
        call.params.meta = None;
    }
    value.as_str().map(str::to_owned)
}

type Headers = HashMap<http::HeaderName, http::HeaderValue>;

/// Moves a call's credential line into the request: `Authorization: Bearer
/// T` becomes the bearer (rmcp's client adds the `Bearer ` itself), any
/// other header a custom header.
fn apply_credential(
    message: &mut ClientJsonRpcMessage,
    auth_header: Option<String>,
    mut headers: Headers,
) -> Result<(Option<String>, Headers), StreamableHttpError<reqwest::Error>> {
    let Some(line) = take_authorization(message) else {
        return Ok((auth_header, headers));
    };
    let bad =
        || StreamableHttpError::UnexpectedServerResponse("invalid upstream credential".into());
    let (name, value) = line.split_once(':').ok_or_else(bad)?;
    let value = value.trim();
    if name.trim().eq_ignore_ascii_case("authorization")
        && let Some(token) = value.strip_prefix("Bearer ")
    {
        return Ok((Some(token.trim().to_owned()), headers));
    }
    let name = http::HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| bad())?;
    let value = http::HeaderValue::from_str(value).map_err(|_| bad())?;
    headers.insert(name, value);
    Ok((auth_header, headers))
}

impl StreamableHttpClient for OboHttpClient {
    type Error = reqwest::Error;

    async fn post_message(
        &self,
        uri: Arc<str>,
        mut message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        auth_header: Option<String>,
        custom_headers: HashMap<http::HeaderName, http::HeaderValue>,
    ) -> Result<StreamableHttpPostResponse, StreamableHttpError<Self::Error>> {
        let (auth, headers) = apply_credential(&mut message, auth_header, custom_headers)?;
        self.0
            .post_message(uri, message, session_id, auth, headers)
            .await
    }

    async fn post_message_with_response_limits(
        &self,
        uri: Arc<str>,
        mut message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        auth_header: Option<String>,
        custom_headers: HashMap<http::HeaderName, http::HeaderValue>,
        limits: StreamableHttpResponseLimits,
    ) -> Result<StreamableHttpPostResponse, StreamableHttpError<Self::Error>> {
        let (auth, headers) = apply_credential(&mut message, auth_header, custom_headers)?;
        self.0
            .post_message_with_response_limits(uri, message, session_id, auth, headers, limits)
            .await
    }

    async fn delete_session(
        &self,
        uri: Arc<str>,
        session_id: Arc<str>,
        auth_header: Option<String>,
        custom_headers: HashMap<http::HeaderName, http::HeaderValue>,
    ) -> Result<(), StreamableHttpError<Self::Error>> {
        self.0
            .delete_session(uri, session_id, auth_header, custom_headers)
            .await
    }

    async fn get_stream(
        &self,
        uri: Arc<str>,
        session_id: Option<Arc<str>>,
        last_event_id: Option<String>,
        auth_header: Option<String>,
        custom_headers: HashMap<http::HeaderName, http::HeaderValue>,
    ) -> Result<BoxStream<'static, Result<Sse, SseError>>, StreamableHttpError<Self::Error>> {
        self.0
            .get_stream(uri, session_id, last_event_id, auth_header, custom_headers)
            .await
    }

    async fn get_stream_with_max_sse_event_size(
        &self,
        uri: Arc<str>,
        session_id: Option<Arc<str>>,
        last_event_id: Option<String>,
        auth_header: Option<String>,
        custom_headers: HashMap<http::HeaderName, http::HeaderValue>,
        max_sse_event_size: usize,
    ) -> Result<BoxStream<'static, Result<Sse, SseError>>, StreamableHttpError<Self::Error>> {
        self.0
            .get_stream_with_max_sse_event_size(
                uri,
                session_id,
                last_event_id,
                auth_header,
                custom_headers,
                max_sse_event_size,
            )
            .await
    }
}
