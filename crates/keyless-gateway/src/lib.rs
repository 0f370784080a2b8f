//! The MCP security gateway: where every agent action is decided.
//!
//! Agents reach upstream MCP tool servers only through `/mcp`. Each
//! `tools/call` is authenticated (agent JWT-SVID + the user's access token
//! with a live session), checked against the pinned tool catalog and the
//! safety limits, approved by a human where its tier asks for it, turned
//! into a single-use on-behalf-of token by an RFC 8693 exchange with the
//! call's exact `authorization_details`, and only then sent upstream. The
//! tokens the agent presented never leave the gateway. With a risk ladder
//! wired (`Gateway::set_ladder`), every call is also an observation for it
//! before anyone approves it (a W1 caution is appended to the result), and
//! a refused exchange or a loop-breaker trip is one too.
//!
//! Modules: `config` (TOML: upstreams, tiers, RAR templates, limits),
//! `upstream` (rmcp clients over Streamable HTTP and stdio), `catalog`
//! (definition pinning), `approvals` + `approvals_http` (human in the
//! loop), `limits` (rate limits, loop breaker), `pipeline` (the per-call
//! steps), `mcp` (the downstream rmcp server), `http` (routes and
//! authentication).
//!
//! Not done yet:
//! - Agent authentication with an mTLS X509-SVID: the exchange needs the
//!   agent's JWT-SVID as actor token, so `/mcp` takes JWT-SVIDs only.
//! - Approval through MCP elicitation: `/mcp` is stateless (JSON answers),
//!   so approvals go through `/api/approvals` (the console's path) only.
//! - `tools/list` hides blocked and tier-4 tools; it does not evaluate Cedar
//!   per agent to hide what policy would refuse.
//! - Upstreams over `https`: the upstream HTTP client is built without TLS
//!   (a config naming an `https` upstream is refused at start).
//! - Upstream `notifications/tools/list_changed` is not listened to; tool
//!   lists are re-read every `refresh_tools` (30 s by default).

pub mod approvals;
pub mod approvals_http;
pub mod catalog;
pub mod config;
pub mod http;
pub mod limits;
pub mod mcp;
pub mod pipeline;
pub mod upstream;

use std::sync::Arc;
use std::time::Duration;

pub use approvals::{Approval, ApprovalError, ApprovalRequest, Approvals, Gate};
pub use catalog::{BlockReason, Catalog, CatalogError, PinnedTool, ToolDef, ToolStatus};
pub use config::{ConfigError, GatewayConfig};
pub use pipeline::{Caller, GATEWAY_AUDIENCE, Gateway, GatewayParts, SUBJECT_TOKEN_HEADER};
pub use upstream::Upstreams;

/// How long a tier-2 approval covers the session's writes.
pub const SESSION_GRANT_TTL: Duration = Duration::from_secs(30 * 60);

/// Everything [`start`] needs besides the config.
#[derive(Debug)]
pub struct StartParams {
    pub config: GatewayConfig,
    /// Public base URL of the listener (`http://ADDR`).
    pub base_url: String,
    pub store: keyless_store::Store,
    pub sts: Arc<keyless_sts::Sts>,
    pub identity: Arc<keyless_identity::Identity>,
    pub events: Arc<dyn keyless_audit::EventSink>,
    /// The gateway as the STS's confidential client.
    pub client: keyless_sts::AuthenticatedClient,
    pub secrets: Option<Arc<keyless_secrets::Secrets>>,
    pub shutdown: tokio::sync::watch::Receiver<bool>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Catalog(#[from] CatalogError),
}

/// Opens the catalog and approvals, connects the upstreams (their tools
/// are pinned or reconciled on every connection) and returns the gateway.
/// Upstreams connect in the background; [`Upstreams::wait_connected`]
/// waits for them.
pub async fn start(p: StartParams) -> Result<Arc<Gateway>, StartError> {
    let catalog = Arc::new(Catalog::open(p.store.clone(), p.events.clone()).await?);
    let approvals = Arc::new(Approvals::new(
        p.store.clone(),
        p.events.clone(),
        p.config.limits.approval_timeout(),
        SESSION_GRANT_TTL,
    ));
    let sync_catalog = catalog.clone();
    let on_tools: upstream::OnTools = Arc::new(move |server, tools| {
        let catalog = sync_catalog.clone();
        Box::pin(async move {
            if let Err(e) = catalog.sync(&server, &tools).await {
                tracing::error!(upstream = %server, error = %e, "cannot reconcile the tool catalog");
            }
        })
    });
    // Approvals made through another replica reach this one's in-memory
    // pins at the same pace as upstream changes.
    {
        let catalog = catalog.clone();
        let every = p.config.refresh_interval();
        let mut stop = p.shutdown.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(every) => {
                        if let Err(e) = catalog.reload().await {
                            tracing::warn!(error = %e, "cannot reload the tool catalog");
                        }
                    }
                    _ = stop.changed() => return,
                }
            }
        });
    }
    let upstreams = Upstreams::start(
        &p.config.upstreams,
        p.config.refresh_interval(),
        on_tools,
        p.shutdown,
    );
    let base = p.base_url.trim_end_matches('/').to_owned();
    Ok(Arc::new(Gateway::new(GatewayParts {
        config: p.config,
        canonical_uri: format!("{base}/mcp"),
        base_url: base,
        sts: p.sts,
        identity: p.identity,
        events: p.events,
        catalog,
        approvals,
        upstreams,
        client: p.client,
        secrets: p.secrets,
    })))
}
