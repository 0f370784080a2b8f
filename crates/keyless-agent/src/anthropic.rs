//! The Anthropic Messages API (`POST /v1/messages`, streaming) as a [`Model`].
//!
//! Why streaming: the user sees the answer as it is written; the same event
//! stream also carries tool_use blocks, whose input arrives as JSON pieces
//! (`input_json_delta`) joined and parsed at `content_block_stop`. Only this
//! module knows Anthropic's wire format.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use async_trait::async_trait;
use serde_json::{Value, json};

use crate::{
    model::{
        Content, DeltaSink, KeySource, Message, Model, ModelDelta, ModelError, ModelRequest,
        ModelResponse, Role, StopReason,
    },
    transport::{self, EventStream},
};

/// The API version this module speaks.
const API_VERSION: &str = "2023-06-01";

/// Where and what to ask.
#[derive(Debug, Clone)]
pub struct AnthropicConfig {
    /// Default "https://api.anthropic.com".
    pub base_url: String,
    /// e.g. "claude-sonnet-4-5".
    pub model: String,
    /// Bound on each wait: connect, response headers, then each stream chunk.
    pub timeout: Duration,
}

/// An Anthropic model.
pub struct Anthropic {
    config: AnthropicConfig,
    key: Arc<dyn KeySource>,
    client: reqwest::Client,
    endpoint: url::Url,
}

/// A content block being streamed.
enum Block {
    Text(String),
    ToolUse {
        id: String,
        name: String,
        json: String,
    },
    /// A block type we do not use (e.g. thinking): streamed and dropped.
    Other,
}

// === impl AnthropicConfig ===

impl Default for AnthropicConfig {
    fn default() -> Self {
        Self {
            base_url: "https://api.anthropic.com".into(),
            model: "claude-sonnet-4-5".into(),
            timeout: Duration::from_secs(60),
        }
    }
}

// === impl Anthropic ===

impl Anthropic {
    pub fn new(config: AnthropicConfig, key: Arc<dyn KeySource>) -> Result<Self, ModelError> {
        let endpoint = transport::endpoint(&config.base_url, "v1/messages")?;
        let client = transport::client(config.timeout)?;
        Ok(Self {
            config,
            key,
            client,
            endpoint,
        })
    }

    fn body(&self, req: &ModelRequest) -> Value {
        let mut body = serde_json::Map::new();
        body.insert("model".into(), json!(self.config.model));
        body.insert("max_tokens".into(), json!(req.max_tokens));
        if !req.system.is_empty() {
            body.insert("system".into(), json!(req.system));
        }
        body.insert(
            "messages".into(),
            req.messages.iter().map(message).collect(),
        );
        body.insert("stream".into(), json!(true));
        if !req.tools.is_empty() {
            let tools = req
                .tools
                .iter()
                .map(|t| {
                    json!({
                        "name": t.name,
                        "description": t.description,
                        "input_schema": t.input_schema,
                    })
                })
                .collect();
            body.insert("tools".into(), tools);
        }
        Value::Object(body)
    }
}

#[async_trait]
impl Model for Anthropic {
    fn name(&self) -> String {
        format!("anthropic:{}", self.config.model)
    }

    async fn complete(
        &self,
        req: &ModelRequest,
        sink: DeltaSink<'_>,
    ) -> Result<ModelResponse, ModelError> {
        let key = self.key.api_key().await?;
        let request = self
            .client
            .post(self.endpoint.clone())
            .header("x-api-key", key.expose())
            .header("anthropic-version", API_VERSION)
            .header("content-type", "application/json")
            .header("accept", "text/event-stream")
            .body(self.body(req).to_string());
        let stream = transport::send_keyed(request, self.config.timeout, self.key.as_ref()).await?;
        read_stream(stream, sink).await
    }
}

fn message(m: &Message) -> Value {
    let role = match m.role {
        Role::User => "user",
        Role::Assistant => "assistant",
    };
    let content: Vec<Value> = m
        .content
        .iter()
        .filter_map(|c| match c {
            // The API rejects empty text blocks.
            Content::Text(text) if text.is_empty() => None,
            Content::Text(text) => Some(json!({ "type": "text", "text": text })),
            Content::ToolUse { id, name, input } => Some(json!({
                "type": "tool_use", "id": id, "name": name, "input": input,
            })),
            Content::ToolResult {
                tool_use_id,
                content,
                is_error,
            } => Some(json!({
                "type": "tool_result",
                "tool_use_id": tool_use_id,
                "content": content,
                "is_error": is_error,
            })),
        })
        .collect();
    json!({ "role": role, "content": content })
}

async fn read_stream(
    mut stream: EventStream,
    sink: DeltaSink<'_>,
) -> Result<ModelResponse, ModelError> {
    let mut blocks: BTreeMap<u64, Block> = BTreeMap::new();
    let mut done: Vec<(u64, Content)> = Vec::new();
    let mut stop = None;
    loop {
        let Some(event) = stream.next().await? else {
            return Err(ModelError::Transport(
                "the stream ended before `message_stop`".into(),
            ));
        };
        let kind = event.event.as_str();
        if kind == "ping" || event.data.is_empty() {
            continue;
        }
        let data = transport::event_json(&event)?;
        // The `type` in the data is authoritative; the `event:` line repeats it.
        let kind = data.get("type").and_then(Value::as_str).unwrap_or(kind);
        let index = data.get("index").and_then(Value::as_u64).unwrap_or(0);
        match kind {
            "content_block_start" => {
                let block = data.get("content_block").unwrap_or(&Value::Null);
                let new = match block.get("type").and_then(Value::as_str) {
                    Some("text") => Block::Text(str_field(block, "text")),
                    Some("tool_use") => Block::ToolUse {
                        id: str_field(block, "id"),
                        name: str_field(block, "name"),
                        json: String::new(),
                    },
                    _ => Block::Other,
                };
                if let Block::Text(text) = &new
                    && !text.is_empty()
                {
                    sink(ModelDelta::Text(text.clone()));
                }
                blocks.insert(index, new);
            }
            "content_block_delta" => {
                let delta = data.get("delta").unwrap_or(&Value::Null);
                match (
                    delta.get("type").and_then(Value::as_str),
                    blocks.get_mut(&index),
                ) {
                    (Some("text_delta"), Some(Block::Text(text))) => {
                        let piece = str_field(delta, "text");
                        text.push_str(&piece);
                        sink(ModelDelta::Text(piece));
                    }
                    (Some("input_json_delta"), Some(Block::ToolUse { json, .. })) => {
                        json.push_str(&str_field(delta, "partial_json"));
                    }
                    (_, None) => {
                        return Err(ModelError::Protocol(format!(
                            "`content_block_delta` for block {index}, which was never started"
                        )));
                    }
                    _ => {} // deltas of block types we drop (thinking, signatures)
                }
            }
            "content_block_stop" => match blocks.remove(&index) {
                Some(Block::Text(text)) => done.push((index, Content::Text(text))),
                Some(Block::ToolUse { id, name, json }) => {
                    let input = transport::tool_arguments(&name, &json)?;
                    done.push((index, Content::ToolUse { id, name, input }));
                }
                Some(Block::Other) | None => {}
            },
            "message_delta" => {
                if let Some(reason) = data
                    .get("delta")
                    .and_then(|d| d.get("stop_reason"))
                    .and_then(Value::as_str)
                {
                    stop = Some(stop_reason(reason));
                }
            }
            "message_stop" => break,
            "error" => {
                return Err(transport::provider_error(None, &event.data));
            }
            _ => {} // message_start and event types added later
        }
    }
    done.sort_by_key(|(index, _)| *index);
    let content: Vec<Content> = done.into_iter().map(|(_, c)| c).collect();
    let stop = stop.unwrap_or_else(|| {
        if content.iter().any(|c| matches!(c, Content::ToolUse { .. })) {
            StopReason::ToolUse
        } else {
            StopReason::EndTurn
        }
    });
    Ok(ModelResponse { content, stop })
}

fn stop_reason(reason: &str) -> StopReason {
    match reason {
        "end_turn" | "stop_sequence" => StopReason::EndTurn,
        "tool_use" => StopReason::ToolUse,
        "max_tokens" => StopReason::MaxTokens,
        other => StopReason::Other(other.to_owned()),
    }
}

fn str_field(value: &Value, name: &str) -> String {
    value
        .get(name)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn endpoint_accepts_a_trailing_slash() {
        assert_eq!(
            transport::endpoint("https://api.anthropic.com/", "v1/messages")
                .unwrap()
                .as_str(),
            "https://api.anthropic.com/v1/messages"
        );
        assert!(transport::endpoint("not a url", "v1/messages").is_err());
    }

    #[test]
    fn tool_results_go_in_a_user_message() {
        let m = Message {
            role: Role::User,
            content: vec![Content::ToolResult {
                tool_use_id: "toolu_1".into(),
                content: "done".into(),
                is_error: true,
            }],
        };
        assert_eq!(
            message(&m),
            json!({"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "done", "is_error": true}]})
        );
    }
}
