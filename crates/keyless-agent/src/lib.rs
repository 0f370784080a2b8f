//! Keyless agent host: LLM providers behind one [`Model`] trait (Anthropic,
//! OpenAI-compatible servers, and the offline [`Scripted`] model that is the
//! embedded default) and the server-side tool loop ([`Host`]) that sends
//! every tool call the model proposes through the Keyless gateway.
//!
//! Why here and not in the browser: the gateway acts with the user's token
//! per call (identity, policy, approval, token exchange); running the loop
//! on the server keeps every token away from the model and the page. Only
//! `anthropic.rs` and `openai.rs` know a provider's wire format; the HTTP
//! chat API, the gateway client and the key source belong to the caller.
//!
//! Not yet: conversations live in the host's memory only (a restart starts
//! them afresh); no token-usage accounting or per-user model budgets; MCP
//! sampling and elicitation requests from tools are not relayed to the user.

pub mod anthropic;
pub mod host;
pub mod model;
pub mod openai;
pub mod scripted;
mod sse;
mod transport;

pub use anthropic::{Anthropic, AnthropicConfig};
pub use host::{ChatEvent, GatewayError, Host, HostConfig, ToolGateway, ToolOutcome};
pub use model::{
    ApiKey, Content, DeltaSink, KeySource, Message, Model, ModelDelta, ModelError, ModelRequest,
    ModelResponse, Role, StaticKey, StopReason, ToolSpec,
};
pub use openai::{OpenAi, OpenAiConfig};
pub use scripted::Scripted;
