//! The agent host's connections to the rest of the fabric, over the same
//! public interfaces an agent in another process would use:
//!
//! - [`GatewayClient`]: the MCP gateway at `/mcp` (Streamable HTTP, JSON-RPC
//!   `tools/list` and `tools/call`), presenting the agent's JWT-SVID (audience
//!   = the gateway's canonical URI) and the user's access token in
//!   `X-Keyless-Subject-Token`. The model never sees either.
//! - [`BrokerKey`]: the model provider's API key from the secrets broker
//!   (Vault API: JWT login with the agent host's JWT-SVID, then a KV v2
//!   read), held in memory only and re-read when the broker token's lease
//!   ends.
//!
//! Invariant: no token and no key is ever written to disk, logged, or put in
//! an event.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use keyless_agent::host::{GatewayError, ToolGateway, ToolOutcome};
use keyless_agent::model::{ApiKey, KeySource, ModelError, ToolSpec};
use keyless_demo::SvidSource;
use serde_json::{Value, json};
use tokio::sync::Mutex;

use crate::internal::InternalSvid;

/// The MCP protocol version the agent host speaks.
const PROTOCOL_VERSION: &str = "2025-06-18";
/// The gateway header carrying the user's access token.
const SUBJECT_TOKEN_HEADER: &str = "x-keyless-subject-token";
/// A `tools/call` may wait for a human approval (the gateway bounds that
/// wait); this bounds the whole call a little beyond it.
const CALL_TIMEOUT: Duration = Duration::from_secs(330);
const LIST_TIMEOUT: Duration = Duration::from_secs(30);
/// Pages of `tools/list` followed at most.
const MAX_TOOL_PAGES: usize = 20;

/// The agent's MCP client of the gateway.
pub struct GatewayClient {
    http: reqwest::Client,
    url: String,
    svid: InternalSvid,
    next_id: AtomicU64,
    /// The agent's JWT-SVID for the gateway, reused until half its life.
    cached: Mutex<Option<(String, Instant)>>,
    audit: Arc<dyn keyless_audit::EventSink>,
}

// === impl GatewayClient ===

impl GatewayClient {
    /// `url` is the gateway's canonical URI (`<base>/mcp`), also the
    /// audience of the agent's JWT-SVID.
    pub fn new(
        url: String,
        svid: InternalSvid,
        audit: Arc<dyn keyless_audit::EventSink>,
    ) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()?;
        Ok(Self {
            http,
            url,
            svid,
            next_id: AtomicU64::new(1),
            cached: Mutex::new(None),
            audit,
        })
    }

    /// The agent's JWT-SVID for the gateway: minted (`svid.issued`) when
    /// there is none or it passed half its life, else reused (`svid.cached`,
    /// duration 0), as a workload caching its SVID would.
    async fn agent_svid(&self, record_hit: bool) -> Result<String, GatewayError> {
        use keyless_audit::{Event, Outcome};
        let mut cached = self.cached.lock().await;
        if let Some((token, refresh_at)) = cached.as_ref()
            && Instant::now() < *refresh_at
        {
            if !record_hit {
                return Ok(token.clone());
            }
            let mut event = Event::new(keyless_audit::kinds::SVID_CACHED, Outcome::Success)
                .agent(self.svid.spiffe_id())
                .detail("kind", "jwt")
                .detail("audience", self.url.as_str());
            event.duration_ms = Some(0.0);
            if let Err(e) = self.audit.record_queued(event).await {
                tracing::warn!(error = %e, "cannot record svid.cached");
            }
            return Ok(token.clone());
        }
        let started = Instant::now();
        let svid = self
            .svid
            .mint_jwt(&self.url)
            .map_err(|e| GatewayError::Unavailable(format!("no JWT-SVID for the agent: {e}")))?;
        let life = svid
            .expires_at
            .duration_since(svid.issued_at)
            .unwrap_or_default();
        let left = svid
            .expires_at
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_default();
        let mut event = Event::new("svid.issued", Outcome::Success)
            .agent(self.svid.spiffe_id())
            .detail("kind", "jwt")
            .detail("audience", self.url.as_str())
            .detail("by", "agent host (in process)");
        event.token_expires_in = i64::try_from(left.as_secs()).ok();
        event.duration_ms = Some(started.elapsed().as_secs_f64() * 1000.0);
        // The SVID leaves this function only once its issuance is recorded.
        self.audit.record(event).await.map_err(|e| {
            GatewayError::Unavailable(format!("cannot record the SVID issuance: {e}"))
        })?;
        *cached = Some((svid.token.clone(), Instant::now() + life / 2));
        Ok(svid.token)
    }

    /// One JSON-RPC request; the `result`, or why there is none.
    async fn rpc(
        &self,
        user_token: &str,
        method: &str,
        params: Value,
        timeout: Duration,
    ) -> Result<Value, GatewayError> {
        // A cache hit is on the record for tool calls (what the panel shows
        // per call), not for every tool listing.
        let agent = self.agent_svid(method == "tools/call").await?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let resp = self
            .http
            .post(&self.url)
            .timeout(timeout)
            .bearer_auth(agent)
            .header(SUBJECT_TOKEN_HEADER, user_token)
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", PROTOCOL_VERSION)
            .json(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))
            .send()
            .await
            .map_err(|e| GatewayError::Unavailable(format!("the MCP gateway: {e}")))?;
        let status = resp.status();
        let content_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let body = resp
            .text()
            .await
            .map_err(|e| GatewayError::Unavailable(format!("the MCP gateway: {e}")))?;
        if !status.is_success() {
            return Err(refusal(status.as_u16(), &body));
        }
        let message = if content_type.starts_with("text/event-stream") {
            last_sse_message(&body)
        } else {
            serde_json::from_str::<Value>(&body).ok()
        }
        .ok_or_else(|| {
            GatewayError::Unavailable("the MCP gateway's answer is not JSON-RPC".into())
        })?;
        if let Some(err) = message.get("error") {
            let text = err
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("unknown error");
            return Err(GatewayError::Refused(format!(
                "the MCP gateway refused `{method}`: {text}"
            )));
        }
        message
            .get("result")
            .cloned()
            .ok_or_else(|| GatewayError::Unavailable("a JSON-RPC answer without result".into()))
    }
}

/// A non-2xx answer: a dead user session ends the conversation, anything
/// else is a refusal with the gateway's own description.
fn refusal(status: u16, body: &str) -> GatewayError {
    let parsed: Option<Value> = serde_json::from_str(body).ok();
    let description = parsed
        .as_ref()
        .and_then(|v| v.get("error_description").and_then(Value::as_str))
        .unwrap_or(body)
        .chars()
        .take(300)
        .collect::<String>();
    if status == 401 && description.starts_with("subject token") {
        GatewayError::SessionEnded(
            "your session has ended (signed out, expired or revoked): sign in again".into(),
        )
    } else {
        GatewayError::Refused(format!("the MCP gateway answered {status}: {description}"))
    }
}

/// The last `data:` message of an SSE body that parses as JSON.
fn last_sse_message(body: &str) -> Option<Value> {
    body.split("\n\n")
        .filter_map(|event| {
            let data: Vec<&str> = event
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(|d| d.strip_prefix(' ').unwrap_or(d))
                .collect();
            (!data.is_empty())
                .then(|| serde_json::from_str::<Value>(&data.join("\n")).ok())
                .flatten()
        })
        .last()
}

#[async_trait]
impl ToolGateway for GatewayClient {
    async fn list_tools(&self, user_token: &str) -> Result<Vec<ToolSpec>, GatewayError> {
        let mut tools = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..MAX_TOOL_PAGES {
            let params = match &cursor {
                Some(c) => json!({ "cursor": c }),
                None => json!({}),
            };
            let result = self
                .rpc(user_token, "tools/list", params, LIST_TIMEOUT)
                .await?;
            for t in result
                .get("tools")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let Some(name) = t.get("name").and_then(Value::as_str) else {
                    continue;
                };
                tools.push(ToolSpec {
                    name: name.to_owned(),
                    description: t
                        .get("description")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_owned(),
                    input_schema: t
                        .get("inputSchema")
                        .cloned()
                        .unwrap_or_else(|| json!({"type": "object"})),
                });
            }
            cursor = result
                .get("nextCursor")
                .and_then(Value::as_str)
                .map(str::to_owned);
            if cursor.is_none() {
                break;
            }
        }
        Ok(tools)
    }

    async fn call_tool(
        &self,
        user_token: &str,
        name: &str,
        arguments: Value,
    ) -> Result<ToolOutcome, GatewayError> {
        let result = self
            .rpc(
                user_token,
                "tools/call",
                json!({ "name": name, "arguments": arguments }),
                CALL_TIMEOUT,
            )
            .await?;
        let text = result
            .get("content")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|c| c.get("type").and_then(Value::as_str) == Some("text"))
            .filter_map(|c| c.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n");
        Ok(ToolOutcome {
            is_error: result
                .get("isError")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            text,
            structured: result.get("structuredContent").cloned(),
        })
    }
}

/// What a real model is told; the scripted model ignores it.
pub const SYSTEM_PROMPT: &str = "You are the Keyless demo assistant. You act for the signed-in user through the tools you are given: a company directory and a bank account. \
Every tool call is checked by Keyless (the agent's identity, the user's consent, policy, and for writes a human approval), so a call may wait or be refused: \
when it is refused, tell the user why in one sentence and do not retry it. Never invent data: answer only from tool results. Be brief.";

/// The secrets broker role the agent host logs in with.
pub const BROKER_ROLE: &str = "keyless-agent-host";
/// Its policy: read the provider keys, nothing else.
pub const BROKER_POLICY: &str = "keyless-agent-host";
/// KV v2 path (under `secret/`) of a provider's key, and the field.
pub fn key_path(provider: &str) -> String {
    format!("keyless/agent/{provider}")
}
pub const KEY_FIELD: &str = "api_key";

/// The policy text: read access to the provider keys only.
pub fn broker_policy() -> String {
    "# The agent host reads its model provider's API key, nothing else.\n\
     path \"secret/data/keyless/agent/*\" { capabilities = [\"read\"] }\n"
        .to_owned()
}

/// A provider key read from the secrets broker, cached in memory until the
/// broker token's lease ends.
pub struct BrokerKey {
    http: reqwest::Client,
    base_url: String,
    provider: String,
    svid: InternalSvid,
    cached: Mutex<Option<(ApiKey, Instant)>>,
}

// === impl BrokerKey ===

impl BrokerKey {
    pub fn new(base_url: String, provider: String, svid: InternalSvid) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .build()?;
        Ok(Self {
            http,
            base_url,
            provider,
            svid,
            cached: Mutex::new(None),
        })
    }

    /// The JWT-SVID audience the broker role is bound to.
    pub fn audience(base_url: &str) -> String {
        format!("{base_url}/v1/auth/jwt/login")
    }

    async fn fetch(&self) -> Result<(ApiKey, Instant), ModelError> {
        let key_err = |m: String| ModelError::Key(m);
        let jwt = self
            .svid
            .jwt_svid(&Self::audience(&self.base_url))
            .await
            .map_err(|e| key_err(format!("no JWT-SVID for the agent host: {e}")))?;
        let login: Value = self
            .http
            .post(format!("{}/v1/auth/jwt/login", self.base_url))
            .json(&json!({ "role": BROKER_ROLE, "jwt": jwt }))
            .send()
            .await
            .map_err(|e| key_err(format!("the secrets broker: {e}")))?
            .json()
            .await
            .map_err(|e| key_err(format!("the secrets broker's login answer: {e}")))?;
        let token = login
            .pointer("/auth/client_token")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                key_err(format!(
                    "the secrets broker refused the agent host's login: {}",
                    login.get("errors").cloned().unwrap_or(Value::Null)
                ))
            })?;
        let lease_secs = login
            .pointer("/auth/lease_duration")
            .and_then(Value::as_u64)
            .unwrap_or(300)
            .max(1);
        let path = key_path(&self.provider);
        let resp = self
            .http
            .get(format!("{}/v1/secret/data/{path}", self.base_url))
            .header("x-vault-token", token)
            .send()
            .await
            .map_err(|e| key_err(format!("the secrets broker: {e}")))?;
        let missing = || {
            key_err(format!(
                "the {} API key is not in the secrets broker: store it with `keyless secrets kv put {path} {KEY_FIELD}=…`",
                self.provider
            ))
        };
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Err(missing());
        }
        let read: Value = resp
            .json()
            .await
            .map_err(|e| key_err(format!("the secrets broker's read answer: {e}")))?;
        let key = read
            .pointer(&format!("/data/data/{KEY_FIELD}"))
            .and_then(Value::as_str)
            .filter(|k| !k.is_empty())
            .ok_or_else(missing)?;
        // A KV read carries no lease of its own (lease_duration 0): the key
        // lives as long as the broker token that read it.
        let kv_lease = read
            .get("lease_duration")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        let secs = if kv_lease > 0 {
            kv_lease.min(lease_secs)
        } else {
            lease_secs
        };
        Ok((
            ApiKey::new(key.to_owned()),
            Instant::now() + Duration::from_secs(secs),
        ))
    }
}

#[async_trait]
impl KeySource for BrokerKey {
    async fn api_key(&self) -> Result<ApiKey, ModelError> {
        let mut cached = self.cached.lock().await;
        if let Some((key, until)) = cached.as_ref()
            && Instant::now() < *until
        {
            return Ok(key.clone());
        }
        *cached = None;
        let (key, until) = self.fetch().await?;
        tracing::info!(provider = %self.provider, "read the model provider's API key from the secrets broker");
        *cached = Some((key.clone(), until));
        Ok(key)
    }

    /// The provider refused the key: it was probably rotated in the
    /// broker. Forget it; the next request logs in and reads it again.
    async fn refused(&self) {
        tracing::info!(provider = %self.provider, "the model provider refused its API key; it will be read again from the secrets broker");
        *self.cached.lock().await = None;
    }
}

/// Registers the broker policy and role the agent host logs in with
/// (idempotent: written at every start).
pub async fn register_broker_role(
    secrets: &keyless_secrets::Secrets,
    base_url: &str,
    agent_host_id: &str,
) -> anyhow::Result<()> {
    secrets
        .write_policy(BROKER_POLICY, &broker_policy())
        .await
        .map_err(|e| anyhow::anyhow!("the agent host's broker policy: {e}"))?;
    let role: keyless_secrets::JwtRole = serde_json::from_value(json!({
        "bound_audiences": [BrokerKey::audience(base_url)],
        "bound_subject": agent_host_id,
        "token_policies": [BROKER_POLICY],
        "token_ttl": "15m",
        "token_type": "service",
    }))?;
    let mut role = role;
    role.name = BROKER_ROLE.to_owned();
    secrets
        .write_role(role)
        .await
        .map_err(|e| anyhow::anyhow!("the agent host's broker role: {e}"))?;
    Ok(())
}

/// The model the agent host runs.
pub fn build_model(
    settings: &crate::config::ModelSettings,
    key: impl FnOnce(&str) -> anyhow::Result<Arc<dyn KeySource>>,
) -> anyhow::Result<Arc<dyn keyless_agent::model::Model>> {
    use crate::config::ModelSettings;
    Ok(match settings {
        ModelSettings::Scripted => Arc::new(keyless_agent::scripted::Scripted),
        ModelSettings::Provider {
            provider,
            name,
            url,
        } => {
            use keyless_agent::anthropic::{Anthropic, AnthropicConfig};
            use keyless_agent::openai::{OpenAi, OpenAiConfig};
            let key = key(provider)?;
            // A model's answer can take a while; each wait is bounded by this.
            let timeout = Duration::from_secs(120);
            if provider == "anthropic" {
                let defaults = AnthropicConfig::default();
                Arc::new(Anthropic::new(
                    AnthropicConfig {
                        base_url: url.clone().unwrap_or(defaults.base_url),
                        model: name.clone(),
                        timeout,
                    },
                    key,
                )?)
            } else {
                let defaults = OpenAiConfig::default();
                Arc::new(OpenAi::new(
                    OpenAiConfig {
                        base_url: url.clone().unwrap_or(defaults.base_url),
                        model: name.clone(),
                        timeout,
                    },
                    key,
                )?)
            }
        }
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn sse_answers_yield_their_last_json_message() {
        let body = "event: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}\n\n";
        assert_eq!(last_sse_message(body).unwrap()["id"], 1);
        assert!(last_sse_message("data: not json\n\n").is_none());
    }

    #[test]
    fn a_dead_user_session_ends_the_conversation_other_refusals_do_not() {
        let dead = r#"{"error":"invalid_token","error_description":"subject token: the user's session ended or the token was revoked"}"#;
        assert!(matches!(refusal(401, dead), GatewayError::SessionEnded(_)));
        let agent = r#"{"error":"invalid_token","error_description":"agent token: expired"}"#;
        assert!(
            matches!(refusal(401, agent), GatewayError::Refused(m) if m.contains("agent token: expired"))
        );
        assert!(matches!(refusal(413, "too big"), GatewayError::Refused(m) if m.contains("413")));
    }
}
