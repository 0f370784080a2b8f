//! The provider-neutral conversation model and the [`Model`] trait every LLM
//! provider implements.
//!
//! Why one shape for all providers: the host's tool loop (see `host.rs`) must
//! not care whether Anthropic, an OpenAI-compatible server or the offline
//! scripted model answers; each provider module translates this shape to and
//! from its own wire format and nothing else does.

use std::fmt;

use async_trait::async_trait;

/// Who said a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    User,
    Assistant,
}

/// One block of a message.
#[derive(Debug, Clone, PartialEq)]
pub enum Content {
    /// Plain text.
    Text(String),
    /// The model asks for a tool call (`name` is the provider-safe name the
    /// model was given).
    ToolUse {
        id: String,
        name: String,
        input: serde_json::Value,
    },
    /// The result of the tool call `tool_use_id`, sent back in a user message.
    ToolResult {
        tool_use_id: String,
        content: String,
        is_error: bool,
    },
}

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub role: Role,
    pub content: Vec<Content>,
}

/// A tool the model may call.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolSpec {
    pub name: String,
    pub description: String,
    pub input_schema: serde_json::Value,
}

/// Everything a model needs for one completion.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelRequest {
    pub system: String,
    pub messages: Vec<Message>,
    pub tools: Vec<ToolSpec>,
    pub max_tokens: u32,
}

/// Why the model stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    EndTurn,
    ToolUse,
    MaxTokens,
    Other(String),
}

/// A complete model answer.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelResponse {
    pub content: Vec<Content>,
    pub stop: StopReason,
}

/// Streamed while the model answers (text as it arrives).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelDelta {
    Text(String),
}

/// Why a completion failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    /// The provider answered with an error (HTTP status, provider error type and message).
    #[error("{}", provider_sentence(*status, kind, message))]
    Provider {
        status: Option<u16>,
        kind: String,
        message: String,
    },
    /// Network / timeout / stream cut before the end.
    #[error("the connection to the model provider failed: {0}")]
    Transport(String),
    /// The provider's answer does not parse (say what).
    #[error("the model provider's answer could not be read: {0}")]
    Protocol(String),
    /// No API key available (the KeySource's message, e.g. where to put the key).
    #[error("no API key for the model provider: {0}")]
    Key(String),
}

/// The user-facing sentence for a provider error, e.g. "the model provider
/// refused the request (HTTP 401 authentication_error): invalid x-api-key".
fn provider_sentence(status: Option<u16>, kind: &str, message: &str) -> String {
    let detail = match (status, kind.is_empty()) {
        (Some(status), false) => format!(" (HTTP {status} {kind})"),
        (Some(status), true) => format!(" (HTTP {status})"),
        (None, false) => format!(" ({kind})"),
        (None, true) => String::new(),
    };
    let verb = if status.is_some() {
        "refused the request"
    } else {
        "failed while answering"
    };
    if message.is_empty() {
        format!("the model provider {verb}{detail}")
    } else {
        format!("the model provider {verb}{detail}: {message}")
    }
}

/// Where a model streams its text while answering.
pub type DeltaSink<'a> = &'a mut (dyn FnMut(ModelDelta) + Send);

/// An LLM (or the scripted stand-in) that answers one request at a time.
#[async_trait]
pub trait Model: Send + Sync {
    /// e.g. "scripted", "anthropic:claude-sonnet-4-5", "openai:gpt-4o-mini"
    fn name(&self) -> String;

    /// Answers `req`, streaming text through `sink` as it arrives.
    async fn complete(
        &self,
        req: &ModelRequest,
        sink: DeltaSink<'_>,
    ) -> Result<ModelResponse, ModelError>;
}

/// An API key; Debug prints "ApiKey(***)"; the value only through `expose()`.
#[derive(Clone)]
pub struct ApiKey(String);

/// Where a provider gets its API key, asked once per request so a rotated
/// key is picked up without a restart.
#[async_trait]
pub trait KeySource: Send + Sync {
    async fn api_key(&self) -> Result<ApiKey, ModelError>;

    /// The provider refused the key (HTTP 401/403): forget any copy held,
    /// so the next request reads it afresh (a rotated key is picked up at
    /// once). By default there is nothing to forget.
    async fn refused(&self) {}
}

/// A fixed key, for tests and fixtures.
#[derive(Debug, Clone)]
pub struct StaticKey(pub ApiKey);

// === impl ModelError ===

impl ModelError {
    /// The provider refused the API key itself (HTTP 401 or 403).
    pub fn is_key_refused(&self) -> bool {
        matches!(
            self,
            ModelError::Provider {
                status: Some(401 | 403),
                ..
            }
        )
    }
}

// === impl Message ===

impl Message {
    /// A user message holding one text block.
    pub fn user_text(text: impl Into<String>) -> Self {
        Self {
            role: Role::User,
            content: vec![Content::Text(text.into())],
        }
    }

    /// An assistant message.
    pub fn assistant(content: Vec<Content>) -> Self {
        Self {
            role: Role::Assistant,
            content,
        }
    }

    /// The concatenated text blocks of this message.
    pub fn text(&self) -> String {
        self.content
            .iter()
            .filter_map(|c| match c {
                Content::Text(t) => Some(t.as_str()),
                _ => None,
            })
            .collect::<Vec<_>>()
            .join("")
    }

    /// Whether this message carries at least one tool result.
    pub fn has_tool_result(&self) -> bool {
        self.content
            .iter()
            .any(|c| matches!(c, Content::ToolResult { .. }))
    }
}

// === impl ApiKey ===

impl ApiKey {
    pub fn new(key: String) -> Self {
        Self(key)
    }

    /// The secret value; only provider modules call this, to set a header.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiKey {
    // The key must never reach a log line, even through `{:?}` of a config.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(***)")
    }
}

// === impl StaticKey ===

#[async_trait]
impl KeySource for StaticKey {
    async fn api_key(&self) -> Result<ApiKey, ModelError> {
        Ok(self.0.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_authentication_refusal_drops_the_key() {
        let provider = |status| ModelError::Provider {
            status: Some(status),
            kind: "x".into(),
            message: "y".into(),
        };
        assert!(provider(401).is_key_refused());
        assert!(provider(403).is_key_refused());
        assert!(!provider(429).is_key_refused());
        assert!(!provider(500).is_key_refused());
        assert!(!ModelError::Transport("cut".into()).is_key_refused());
        assert!(!ModelError::Key("missing".into()).is_key_refused());
    }

    #[test]
    fn api_key_debug_hides_the_value() {
        let key = ApiKey::new("sk-secret".into());
        assert_eq!(format!("{key:?}"), "ApiKey(***)");
        assert_eq!(key.expose(), "sk-secret");
    }

    #[test]
    fn provider_error_reads_as_a_sentence() {
        let err = ModelError::Provider {
            status: Some(401),
            kind: "authentication_error".into(),
            message: "invalid x-api-key".into(),
        };
        assert_eq!(
            err.to_string(),
            "the model provider refused the request (HTTP 401 authentication_error): invalid x-api-key"
        );
        let err = ModelError::Provider {
            status: None,
            kind: "overloaded_error".into(),
            message: "Overloaded".into(),
        };
        assert_eq!(
            err.to_string(),
            "the model provider failed while answering (overloaded_error): Overloaded"
        );
    }
}
