//! The downstream MCP server: the tools the caller may see, and every
//! `tools/call` through the pipeline. The caller was authenticated by the
//! HTTP layer (`http.rs`), which left a [`Caller`] in the request.

use std::sync::Arc;

use rmcp::ErrorData as McpError;
use rmcp::handler::server::ServerHandler;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, Implementation, ListToolsResult,
    PaginatedRequestParams, ServerCapabilities, ServerConfig,
};
use rmcp::service::{RequestContext, RoleServer};

use crate::pipeline::{Caller, Gateway, refusal_result};

/// One handler per MCP request (stateless) or session.
#[derive(Debug, Clone)]
pub struct GatewayHandler {
    pub gateway: Arc<Gateway>,
}

fn caller(context: &RequestContext<RoleServer>) -> Result<Caller, McpError> {
    context
        .extensions
        .get::<axum::http::request::Parts>()
        .and_then(|p| p.extensions.get::<Caller>())
        .cloned()
        .ok_or_else(|| McpError::invalid_request("the caller is not authenticated", None))
}

impl ServerHandler for GatewayHandler {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new(
                "keyless-gateway",
                env!("CARGO_PKG_VERSION"),
            ))
            .with_instructions(
                "Keyless MCP gateway: every tool call is authorized on behalf of the signed-in \
                 user. Writes may wait for the user's approval; some actions are never allowed.",
            )
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        let caller = caller(&context)?;
        Ok(ListToolsResult::with_all_items(
            self.gateway.visible_tools(&caller),
        ))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let caller = caller(&context)?;
        let arguments = request.arguments.unwrap_or_default();
        match self.gateway.call(&caller, &request.name, arguments).await {
            Ok(result) => Ok(result.into()),
            Err(refusal) => Ok(refusal_result(&refusal).into()),
        }
    }
}
