//! OpenAI-compatible chat completions (`POST {base_url}/chat/completions`,
//! streaming) as a [`Model`]: OpenAI itself and the local servers that speak
//! the same protocol (llama.cpp, vLLM).
//!
//! Why tolerant parsing: compatible servers differ in details (a usage-only
//! chunk with no choices, a `finish_reason` of `stop` after tool calls, an
//! `error` object inside the stream); the stream is accepted as long as it
//! ends with `data: [DONE]`, and tool calls are recognized by their content,
//! not by the finish reason. Only this module knows this wire format.

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

/// Where and what to ask.
#[derive(Debug, Clone)]
pub struct OpenAiConfig {
    /// Default "https://api.openai.com/v1".
    pub base_url: String,
    /// e.g. "gpt-4o-mini".
    pub model: String,
    /// Bound on each wait: connect, response headers, then each stream chunk.
    pub timeout: Duration,
}

/// An OpenAI-compatible model.
pub struct OpenAi {
    config: OpenAiConfig,
    key: Arc<dyn KeySource>,
    client: reqwest::Client,
    endpoint: url::Url,
}

/// A tool call being streamed.
#[derive(Default)]
struct PartialCall {
    id: String,
    name: String,
    arguments: String,
}

// === impl OpenAiConfig ===

impl Default for OpenAiConfig {
    fn default() -> Self {
        Self {
            base_url: "https://api.openai.com/v1".into(),
            model: "gpt-4o-mini".into(),
            timeout: Duration::from_secs(60),
        }
    }
}

// === impl OpenAi ===

impl OpenAi {
    pub fn new(config: OpenAiConfig, key: Arc<dyn KeySource>) -> Result<Self, ModelError> {
        let endpoint = transport::endpoint(&config.base_url, "chat/completions")?;
        let client = transport::client(config.timeout)?;
        Ok(Self {
            config,
            key,
            client,
            endpoint,
        })
    }

    fn body(&self, req: &ModelRequest) -> Value {
        let mut messages = Vec::with_capacity(req.messages.len() + 1);
        if !req.system.is_empty() {
            messages.push(json!({ "role": "system", "content": req.system }));
        }
        for m in &req.messages {
            push_message(&mut messages, m);
        }
        let mut body = serde_json::Map::new();
        body.insert("model".into(), json!(self.config.model));
        body.insert("messages".into(), Value::Array(messages));
        if !req.tools.is_empty() {
            let tools = req
                .tools
                .iter()
                .map(|t| {
                    json!({
                        "type": "function",
                        "function": {
                            "name": t.name,
                            "description": t.description,
                            "parameters": t.input_schema,
                        },
                    })
                })
                .collect();
            body.insert("tools".into(), tools);
        }
        body.insert("stream".into(), json!(true));
        body.insert("max_tokens".into(), json!(req.max_tokens));
        Value::Object(body)
    }
}

#[async_trait]
impl Model for OpenAi {
    fn name(&self) -> String {
        format!("openai:{}", self.config.model)
    }

    async fn complete(
        &self,
        req: &ModelRequest,
        sink: DeltaSink<'_>,
    ) -> Result<ModelResponse, ModelError> {
        let key = self.key.api_key().await?;
        let mut request = self
            .client
            .post(self.endpoint.clone())
            .header("content-type", "application/json")
            .header("accept", "text/event-stream")
            .body(self.body(req).to_string());
        // Local servers (llama.cpp, vLLM) run without a key.
        if !key.expose().is_empty() {
            request = request.header("authorization", format!("Bearer {}", key.expose()));
        }
        let stream = transport::send_keyed(request, self.config.timeout, self.key.as_ref()).await?;
        read_stream(stream, sink).await
    }
}

/// Appends `m` in OpenAI's shape: tool results become one `role: tool`
/// message each; an assistant's tool calls ride on its message.
fn push_message(out: &mut Vec<Value>, m: &Message) {
    let text = m.text();
    match m.role {
        Role::User => {
            for c in &m.content {
                if let Content::ToolResult {
                    tool_use_id,
                    content,
                    is_error,
                } = c
                {
                    let content = if *is_error {
                        format!("ERROR: {content}")
                    } else {
                        content.clone()
                    };
                    out.push(json!({
                        "role": "tool",
                        "tool_call_id": tool_use_id,
                        "content": content,
                    }));
                }
            }
            if !text.is_empty() || !m.has_tool_result() {
                out.push(json!({ "role": "user", "content": text }));
            }
        }
        Role::Assistant => {
            let calls: Vec<Value> = m
                .content
                .iter()
                .filter_map(|c| match c {
                    Content::ToolUse { id, name, input } => Some(json!({
                        "id": id,
                        "type": "function",
                        "function": { "name": name, "arguments": input.to_string() },
                    })),
                    _ => None,
                })
                .collect();
            let mut message = serde_json::Map::new();
            message.insert("role".into(), json!("assistant"));
            let content = if text.is_empty() {
                Value::Null
            } else {
                json!(text)
            };
            message.insert("content".into(), content);
            if !calls.is_empty() {
                message.insert("tool_calls".into(), Value::Array(calls));
            }
            out.push(Value::Object(message));
        }
    }
}

async fn read_stream(
    mut stream: EventStream,
    sink: DeltaSink<'_>,
) -> Result<ModelResponse, ModelError> {
    let mut text = String::new();
    let mut calls: BTreeMap<u64, PartialCall> = BTreeMap::new();
    let mut finish: Option<String> = None;
    loop {
        let Some(event) = stream.next().await? else {
            return Err(ModelError::Transport(
                "the stream ended before `data: [DONE]`".into(),
            ));
        };
        let data = event.data.trim();
        if data == "[DONE]" {
            break;
        }
        if data.is_empty() {
            continue;
        }
        let chunk = transport::event_json(&event)?;
        if chunk.get("error").is_some() {
            return Err(transport::provider_error(None, data));
        }
        let Some(choice) = chunk
            .get("choices")
            .and_then(Value::as_array)
            .and_then(|c| c.first())
        else {
            continue; // e.g. the usage chunk
        };
        let delta = choice.get("delta").unwrap_or(&Value::Null);
        if let Some(piece) = delta.get("content").and_then(Value::as_str)
            && !piece.is_empty()
        {
            text.push_str(piece);
            sink(ModelDelta::Text(piece.to_owned()));
        }
        for call in delta
            .get("tool_calls")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let index = call.get("index").and_then(Value::as_u64).unwrap_or(0);
            let entry = calls.entry(index).or_default();
            if let Some(id) = call.get("id").and_then(Value::as_str) {
                entry.id = id.to_owned();
            }
            let function = call.get("function").unwrap_or(&Value::Null);
            // OpenAI sends the name once; some compatible servers repeat it
            // in every piece.
            if let Some(name) = function.get("name").and_then(Value::as_str)
                && entry.name != name
            {
                entry.name.push_str(name);
            }
            if let Some(arguments) = function.get("arguments").and_then(Value::as_str) {
                entry.arguments.push_str(arguments);
            }
        }
        if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
            finish = Some(reason.to_owned());
        }
    }
    let mut content = Vec::with_capacity(calls.len() + 1);
    if !text.is_empty() {
        content.push(Content::Text(text));
    }
    for (index, call) in calls {
        let input = transport::tool_arguments(&call.name, &call.arguments)?;
        let id = if call.id.is_empty() {
            format!("call_{index}") // some local servers omit ids
        } else {
            call.id
        };
        content.push(Content::ToolUse {
            id,
            name: call.name,
            input,
        });
    }
    let has_calls = content.iter().any(|c| matches!(c, Content::ToolUse { .. }));
    let stop = match finish.as_deref() {
        Some("tool_calls") | Some("function_call") => StopReason::ToolUse,
        Some("length") => StopReason::MaxTokens,
        _ if has_calls => StopReason::ToolUse,
        Some("stop") | None => StopReason::EndTurn,
        Some(other) => StopReason::Other(other.to_owned()),
    };
    Ok(ModelResponse { content, stop })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_results_become_tool_messages_with_an_error_prefix() {
        let mut out = Vec::new();
        push_message(
            &mut out,
            &Message {
                role: Role::User,
                content: vec![Content::ToolResult {
                    tool_use_id: "call_1".into(),
                    content: "refused".into(),
                    is_error: true,
                }],
            },
        );
        assert_eq!(
            out,
            vec![json!({"role": "tool", "tool_call_id": "call_1", "content": "ERROR: refused"})]
        );
    }

    #[test]
    fn assistant_tool_calls_carry_arguments_as_a_string() {
        let mut out = Vec::new();
        push_message(
            &mut out,
            &Message::assistant(vec![Content::ToolUse {
                id: "call_1".into(),
                name: "bank__get_balance".into(),
                input: json!({}),
            }]),
        );
        assert_eq!(
            out,
            vec![json!({"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "bank__get_balance", "arguments": "{}"}}
            ]})]
        );
    }
}
