//! The downstream MCP server: the tools the caller may see, and every
//! `tools/call` through the pipeline. The caller was authenticated by the
//! HTTP layer (`http.rs`), which left a [`Caller`] in the request.
//!
//! A client on a session that declared the elicitation capability (form
//! mode) is also asked, by an `elicitation/create` request during the
//! waiting `tools/call`, to decide a pending approval; accept approves,
//! decline or cancel denies, on the same approval record as
//! `/api/approvals` (which keeps working: the first decision wins).

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::future::BoxFuture;
use rmcp::ErrorData as McpError;
use rmcp::handler::server::ServerHandler;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, ElicitRequestParams, ElicitationAction,
    ElicitationSchema, Implementation, ListToolsResult, PaginatedRequestParams, ServerCapabilities,
    ServerConfig,
};
use rmcp::service::{ElicitationMode, Peer, RequestContext, RoleServer};

use crate::pipeline::{ApprovalPrompt, ApprovalQuestion, Caller, Gateway, refusal_result};

/// Longest argument text shown in an elicitation message.
const MAX_SHOWN_ARGUMENTS: usize = 1000;

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

/// Asks the user through the client (MCP elicitation, form mode).
struct ElicitationPrompt {
    peer: Peer<RoleServer>,
}

impl ApprovalPrompt for ElicitationPrompt {
    fn ask<'a>(&'a self, q: &'a ApprovalQuestion) -> BoxFuture<'a, Option<bool>> {
        Box::pin(async move {
            let mut arguments: String = q.arguments.chars().take(MAX_SHOWN_ARGUMENTS).collect();
            if arguments.len() < q.arguments.len() {
                arguments.push('…');
            }
            let kind = if q.tier >= 3 { "sensitive" } else { "write" };
            let message = format!(
                "Keyless: approve this {kind} call? {} — {} (tier {}). Arguments: {arguments}. \
                 Accept to approve, decline to refuse.",
                q.tool, q.summary, q.tier
            );
            // No fields: the answer is the action itself.
            let params = ElicitRequestParams::FormElicitationParams {
                meta: None,
                message,
                requested_schema: ElicitationSchema::new(BTreeMap::new()),
            };
            match self.peer.create_elicitation(params).await {
                Ok(r) => Some(matches!(r.action, ElicitationAction::Accept)),
                Err(e) => {
                    tracing::debug!(approval = %q.approval_id, error = %e, "elicitation failed; waiting for /api/approvals");
                    None
                }
            }
        })
    }
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
        let prompt = (self.gateway.elicitation_enabled()
            && context
                .peer
                .supported_elicitation_modes()
                .contains(&ElicitationMode::Form))
        .then(|| ElicitationPrompt {
            peer: context.peer.clone(),
        });
        let prompt = prompt.as_ref().map(|p| p as &dyn ApprovalPrompt);
        match self
            .gateway
            .call(&caller, &request.name, arguments, prompt)
            .await
        {
            Ok(result) => Ok(result.into()),
            Err(refusal) => Ok(refusal_result(&refusal).into()),
        }
    }
}
