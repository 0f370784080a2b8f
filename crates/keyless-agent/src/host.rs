//! The server-side tool loop: the model proposes tool calls, the host sends
//! each through the Keyless gateway ([`ToolGateway`]) and feeds the results
//! back, until the model ends its turn.
//!
//! Why the loop lives on the server: the gateway does identity, policy,
//! approval and token exchange per call, with the user's token; the model
//! only ever sees tool names, arguments and result text, never a token.
//! Invariants: every turn ends with exactly one [`ChatEvent::Done`]; the
//! history never holds a tool_use without its tool_result (providers reject
//! such a conversation); gateway tool names (`directory.list_users`) reach a
//! model only in their provider-safe form (`directory__list_users`).

use std::{collections::HashMap, sync::Arc};

use async_trait::async_trait;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::model::{
    Content, Message, Model, ModelDelta, ModelError, ModelRequest, ModelResponse, Role, ToolSpec,
};

/// Most messages kept in a conversation's history.
pub const MAX_HISTORY: usize = 100;

/// Longest tool name both providers accept (`^[a-zA-Z0-9_-]{1,64}$`).
const MAX_TOOL_NAME: usize = 64;

/// What a tool call returned.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolOutcome {
    pub is_error: bool,
    pub text: String,
    pub structured: Option<serde_json::Value>,
}

/// Why the gateway could not list or call tools.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    /// The user's session is over (revoked, expired, signed out): the user must sign in again.
    #[error("{0}")]
    SessionEnded(String),
    /// The agent or the request was refused (401/403/413 etc.) — message says why.
    #[error("the Keyless gateway refused the request: {0}")]
    Refused(String),
    /// The gateway could not be reached or failed.
    #[error("the Keyless gateway is unavailable: {0}")]
    Unavailable(String),
}

/// The Keyless MCP gateway as the host sees it, acting for one user.
#[async_trait]
pub trait ToolGateway: Send + Sync {
    async fn list_tools(&self, user_token: &str) -> Result<Vec<ToolSpec>, GatewayError>;
    async fn call_tool(
        &self,
        user_token: &str,
        name: &str,
        arguments: serde_json::Value,
    ) -> Result<ToolOutcome, GatewayError>;
}

/// What the user sees of a turn, in order.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ChatEvent {
    Text {
        delta: String,
    },
    ToolCall {
        id: String,
        tool: String,
        arguments: serde_json::Value,
    },
    ToolResult {
        id: String,
        tool: String,
        ok: bool,
        text: String,
        /// The gateway's structured `{error, step, reason}` when refused.
        refusal: Option<serde_json::Value>,
    },
    Warning {
        /// "W1".."W5"
        level: String,
        text: String,
    },
    SessionEnded {
        message: String,
    },
    Error {
        message: String,
    },
    Done {
        steps: u32,
    },
}

/// How the host runs turns.
#[derive(Debug, Clone)]
pub struct HostConfig {
    pub system_prompt: String,
    /// Most tool rounds (model answers asking for tools) in one turn; default 8.
    pub max_steps: u32,
    /// Default 1024.
    pub max_tokens: u32,
}

/// Runs user turns against one model and one gateway.
pub struct Host {
    model: Arc<dyn Model>,
    gateway: Arc<dyn ToolGateway>,
    config: HostConfig,
}

/// The receiver of the events is gone: the turn stops.
struct Gone;

/// How a tool call ended.
enum Call {
    /// A result to feed back to the model.
    Result(String, bool),
    /// The turn must end (session over, gateway refusal or down, or the
    /// receiver gone); the result to record for the history's sake.
    Stop(String),
}

/// Gateway names ⇄ provider-safe names, built per turn from the tool list.
#[derive(Debug, Default)]
struct ToolNames {
    to_safe: HashMap<String, String>,
    to_real: HashMap<String, String>,
}

// === impl HostConfig ===

impl Default for HostConfig {
    fn default() -> Self {
        Self {
            system_prompt: String::new(),
            max_steps: 8,
            max_tokens: 1024,
        }
    }
}

// === impl Host ===

impl Host {
    pub fn new(model: Arc<dyn Model>, gateway: Arc<dyn ToolGateway>, config: HostConfig) -> Self {
        Self {
            model,
            gateway,
            config,
        }
    }

    pub fn model_name(&self) -> String {
        self.model.name()
    }

    /// One user turn: appends the user message to `history`, loops model →
    /// tool calls → model until the model ends its turn, the step limit is
    /// hit (then an Error event "stopped after N tool steps" and the loop
    /// ends), the session ended, or an error. Every event goes to `events`
    /// (if the receiver is gone the turn stops early). Always ends with
    /// exactly one Done. `history` holds what the model saw (assistant
    /// tool_use + user tool_result messages) so a conversation can continue.
    pub async fn run_turn(
        &self,
        history: &mut Vec<Message>,
        user_token: &str,
        message: &str,
        events: mpsc::Sender<ChatEvent>,
    ) {
        push_user(history, vec![Content::Text(message.to_owned())]);
        trim_history(history);
        let mut steps = 0;
        // `Gone` only means nobody listens any more; Done is still attempted.
        let _ = self.turn(history, user_token, &events, &mut steps).await;
        trim_history(history);
        let _ = events.send(ChatEvent::Done { steps }).await;
    }

    async fn turn(
        &self,
        history: &mut Vec<Message>,
        user_token: &str,
        events: &mpsc::Sender<ChatEvent>,
        steps: &mut u32,
    ) -> Result<(), Gone> {
        let tools = match self.gateway.list_tools(user_token).await {
            Ok(tools) => tools,
            Err(e) => {
                emit(events, gateway_event(&e)).await?;
                return Ok(());
            }
        };
        let names = ToolNames::new(&tools);
        let specs: Vec<ToolSpec> = tools
            .iter()
            .map(|t| ToolSpec {
                name: names.safe(&t.name),
                description: t.description.clone(),
                input_schema: t.input_schema.clone(),
            })
            .collect();
        loop {
            let request = ModelRequest {
                system: self.config.system_prompt.clone(),
                messages: history.clone(),
                tools: specs.clone(),
                max_tokens: self.config.max_tokens,
            };
            let response = match self.ask(&request, events).await? {
                Ok(response) => response,
                Err(e) => {
                    tracing::warn!(model = %self.model.name(), error = %e, "model call failed");
                    emit(
                        events,
                        ChatEvent::Error {
                            message: e.to_string(),
                        },
                    )
                    .await?;
                    return Ok(());
                }
            };
            let uses: Vec<(String, String, serde_json::Value)> = response
                .content
                .iter()
                .filter_map(|c| match c {
                    Content::ToolUse { id, name, input } => {
                        Some((id.clone(), name.clone(), input.clone()))
                    }
                    _ => None,
                })
                .collect();
            if uses.is_empty() {
                if !response.content.is_empty() {
                    history.push(Message::assistant(response.content));
                }
                return Ok(());
            }
            if *steps >= self.config.max_steps {
                // The unanswered tool_use blocks stay out of the history.
                let text: Vec<Content> = response
                    .content
                    .into_iter()
                    .filter(|c| matches!(c, Content::Text(t) if !t.is_empty()))
                    .collect();
                if !text.is_empty() {
                    history.push(Message::assistant(text));
                }
                emit(
                    events,
                    ChatEvent::Error {
                        message: format!("stopped after {steps} tool steps"),
                    },
                )
                .await?;
                return Ok(());
            }
            history.push(Message::assistant(response.content));
            *steps += 1;
            let mut results = Vec::with_capacity(uses.len());
            let mut stopped = false;
            for (id, name, input) in uses {
                let (content, is_error) = if stopped {
                    ("the call was not made: the turn ended".to_owned(), true)
                } else {
                    match self
                        .call(&names, user_token, &id, &name, input, events)
                        .await
                    {
                        Call::Result(text, is_error) => (text, is_error),
                        Call::Stop(text) => {
                            stopped = true;
                            (text, true)
                        }
                    }
                };
                results.push(Content::ToolResult {
                    tool_use_id: id,
                    content,
                    is_error,
                });
            }
            push_user(history, results);
            if stopped {
                return Ok(());
            }
        }
    }

    /// One model call, its text streamed out as it arrives; `Err(Gone)` when
    /// the receiver went away meanwhile (the model call is dropped).
    async fn ask(
        &self,
        request: &ModelRequest,
        events: &mpsc::Sender<ChatEvent>,
    ) -> Result<Result<ModelResponse, ModelError>, Gone> {
        // The sink is synchronous; an unbounded local channel decouples it
        // from the (bounded, async) event channel.
        let (tx, mut rx) = mpsc::unbounded_channel::<String>();
        let model = Arc::clone(&self.model);
        let complete = async move {
            let mut sink = move |delta: ModelDelta| {
                let ModelDelta::Text(text) = delta;
                let _ = tx.send(text);
            };
            model.complete(request, &mut sink).await
        };
        tokio::pin!(complete);
        let result = loop {
            tokio::select! {
                biased;
                Some(delta) = rx.recv() => emit(events, ChatEvent::Text { delta }).await?,
                result = &mut complete => break result,
                _ = events.closed() => return Err(Gone),
            }
        };
        // Deltas sent just before the model returned.
        while let Ok(delta) = rx.try_recv() {
            emit(events, ChatEvent::Text { delta }).await?;
        }
        Ok(result)
    }

    async fn call(
        &self,
        names: &ToolNames,
        user_token: &str,
        id: &str,
        name: &str,
        arguments: serde_json::Value,
        events: &mpsc::Sender<ChatEvent>,
    ) -> Call {
        let gone = || Call::Stop("the call was not made: the user left".to_owned());
        // A name we did not offer still goes to the gateway, in its dotted
        // form: the gateway, not the host, is the decision point. It refuses
        // an unknown tool, and a tool it hides from this caller (tier 4)
        // dies at policy with its reason, on the record.
        let tool = names
            .real(name)
            .map(str::to_owned)
            .unwrap_or_else(|| name.replace("__", "."));
        let call_event = ChatEvent::ToolCall {
            id: id.to_owned(),
            tool: tool.clone(),
            arguments: arguments.clone(),
        };
        if emit(events, call_event).await.is_err() {
            return gone();
        }
        let real = tool.as_str();
        let outcome = match self.gateway.call_tool(user_token, real, arguments).await {
            Ok(outcome) => outcome,
            Err(e) => {
                let text = format!("the call was not made: {e}");
                if emit(events, gateway_event(&e)).await.is_err() {
                    return gone();
                }
                return Call::Stop(text);
            }
        };
        // Only the gateway's own refusal (`{error, step, reason}`) is one; a
        // failing upstream tool may carry other structured content.
        let refusal = outcome
            .structured
            .clone()
            .filter(|s| outcome.is_error && s.get("error").is_some());
        let event = ChatEvent::ToolResult {
            id: id.to_owned(),
            tool,
            ok: !outcome.is_error,
            text: outcome.text.clone(),
            refusal,
        };
        if emit(events, event).await.is_err() {
            return gone();
        }
        for (level, line) in cautions(&outcome.text) {
            if emit(events, ChatEvent::Warning { level, text: line })
                .await
                .is_err()
            {
                return gone();
            }
        }
        // The model reads text; a result with only structured content is
        // shown to it as JSON.
        let text = match (&outcome.structured, outcome.text.is_empty()) {
            (Some(structured), true) => structured.to_string(),
            _ => outcome.text,
        };
        Call::Result(text, outcome.is_error)
    }
}

async fn emit(events: &mpsc::Sender<ChatEvent>, event: ChatEvent) -> Result<(), Gone> {
    events.send(event).await.map_err(|_| Gone)
}

/// The event that ends a turn on a gateway failure.
fn gateway_event(e: &GatewayError) -> ChatEvent {
    match e {
        GatewayError::SessionEnded(message) => ChatEvent::SessionEnded {
            message: message.clone(),
        },
        GatewayError::Refused(_) | GatewayError::Unavailable(_) => ChatEvent::Error {
            message: e.to_string(),
        },
    }
}

/// Appends user content, merged into a trailing user message: a turn that
/// ended early leaves one (tool results), and providers want roles to
/// alternate.
fn push_user(history: &mut Vec<Message>, content: Vec<Content>) {
    match history.last_mut() {
        Some(last) if last.role == Role::User => last.content.extend(content),
        _ => history.push(Message {
            role: Role::User,
            content,
        }),
    }
}

/// Drops the oldest whole exchanges while the history is too long. An
/// exchange starts at a user message without tool results, so the history
/// never starts with a tool_result whose tool_use was dropped; the current
/// exchange is always kept whole.
pub(crate) fn trim_history(history: &mut Vec<Message>) {
    while history.len() > MAX_HISTORY {
        let next_start = history
            .iter()
            .enumerate()
            .skip(1)
            .find(|(_, m)| m.role == Role::User && !m.has_tool_result())
            .map(|(i, _)| i);
        match next_start {
            Some(i) => {
                history.drain(..i);
            }
            None => break,
        }
    }
}

/// The Keyless risk cautions in a tool result: `(level, line)` for each line
/// naming one ("Keyless caution (W1): …" or "… risk ladder W2 …").
pub(crate) fn cautions(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|line| {
            let level = line
                .find("Keyless caution")
                .and_then(|at| line.get(at..))
                .and_then(|rest| {
                    rest.match_indices("(W").find_map(|(i, _)| {
                        let after = rest.get(i + 2..)?;
                        let digit = after.chars().next()?;
                        (('1'..='5').contains(&digit) && after.get(1..2) == Some(")"))
                            .then_some(digit)
                    })
                })
                .or_else(|| {
                    line.match_indices("risk ladder W").find_map(|(i, m)| {
                        let digit = line.get(i + m.len()..)?.chars().next()?;
                        ('1'..='5').contains(&digit).then_some(digit)
                    })
                })?;
            Some((format!("W{level}"), line.trim().to_owned()))
        })
        .collect()
}

// === impl ToolNames ===

impl ToolNames {
    fn new(tools: &[ToolSpec]) -> Self {
        let mut names = Self::default();
        for tool in tools {
            let base = safe_name(&tool.name);
            let mut safe = base.clone();
            let mut n = 2;
            while names.to_real.contains_key(&safe) {
                // Two gateway names that map alike (`a.b` and `a__b`) stay apart.
                let suffix = format!("_{n}");
                let keep = MAX_TOOL_NAME.saturating_sub(suffix.len());
                safe = format!("{}{suffix}", base.get(..keep.min(base.len())).unwrap_or(""));
                n += 1;
            }
            names.to_real.insert(safe.clone(), tool.name.clone());
            names.to_safe.insert(tool.name.clone(), safe);
        }
        names
    }

    fn safe(&self, real: &str) -> String {
        self.to_safe
            .get(real)
            .cloned()
            .unwrap_or_else(|| safe_name(real))
    }

    fn real(&self, safe: &str) -> Option<&str> {
        self.to_real.get(safe).map(String::as_str)
    }
}

/// A gateway tool name in the form providers accept: `.` → `__`, any other
/// character outside `[a-zA-Z0-9_-]` → `_`, at most 64 characters (ASCII, so
/// the byte cut is a character cut).
pub fn safe_name(real: &str) -> String {
    let mut out = String::with_capacity(real.len() + 4);
    for c in real.chars() {
        match c {
            '.' => out.push_str("__"),
            c if c.is_ascii_alphanumeric() || c == '_' || c == '-' => out.push(c),
            _ => out.push('_'),
        }
    }
    out.truncate(MAX_TOOL_NAME);
    if out.is_empty() {
        out.push('_');
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    fn spec(name: &str) -> ToolSpec {
        ToolSpec {
            name: name.into(),
            description: String::new(),
            input_schema: serde_json::json!({"type": "object"}),
        }
    }

    #[test]
    fn tool_names_map_to_provider_safe_names_and_back() {
        let names = ToolNames::new(&[
            spec("directory.list_users"),
            spec("directory__list_users"),
            spec("bank.transfer funds"),
        ]);
        assert_eq!(names.safe("directory.list_users"), "directory__list_users");
        assert_eq!(
            names.safe("directory__list_users"),
            "directory__list_users_2"
        );
        assert_eq!(names.safe("bank.transfer funds"), "bank__transfer_funds");
        assert_eq!(
            names.real("directory__list_users"),
            Some("directory.list_users")
        );
        assert_eq!(names.real("directory.list_users"), None);
        assert_eq!(safe_name(&"x".repeat(80)).len(), 64);
    }

    #[test]
    fn cautions_are_found_with_their_level() {
        let text = "{\"ok\":true}\nKeyless caution (W1): unusual hour. This session is being watched.\nplain line (W2)\nthe risk ladder W3 restricts this session";
        assert_eq!(
            cautions(text),
            vec![
                (
                    "W1".to_owned(),
                    "Keyless caution (W1): unusual hour. This session is being watched.".to_owned()
                ),
                (
                    "W3".to_owned(),
                    "the risk ladder W3 restricts this session".to_owned()
                ),
            ]
        );
        assert!(cautions("Keyless caution (W9): no").is_empty());
    }

    #[test]
    fn trimming_never_leaves_a_tool_result_first() {
        let mut history = Vec::new();
        for i in 0..40 {
            history.push(Message::user_text(format!("q{i}")));
            history.push(Message::assistant(vec![Content::ToolUse {
                id: format!("t{i}"),
                name: "x".into(),
                input: serde_json::json!({}),
            }]));
            history.push(Message {
                role: Role::User,
                content: vec![Content::ToolResult {
                    tool_use_id: format!("t{i}"),
                    content: "r".into(),
                    is_error: false,
                }],
            });
            history.push(Message::assistant(vec![Content::Text("a".into())]));
        }
        trim_history(&mut history);
        assert!(history.len() <= MAX_HISTORY);
        assert_eq!(history[0], Message::user_text("q15"));
    }

    #[test]
    fn chat_events_serialize_with_a_type_tag() {
        let json = serde_json::to_value(ChatEvent::Warning {
            level: "W1".into(),
            text: "careful".into(),
        })
        .unwrap();
        assert_eq!(
            json,
            serde_json::json!({"type": "warning", "level": "W1", "text": "careful"})
        );
        let json = serde_json::to_value(ChatEvent::Done { steps: 2 }).unwrap();
        assert_eq!(json, serde_json::json!({"type": "done", "steps": 2}));
    }
}
