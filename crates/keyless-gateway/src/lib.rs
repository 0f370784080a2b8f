//! The MCP security gateway: where every agent action is decided.
//!
//! Agents reach upstream MCP tool servers only through `/mcp`. Each
//! `tools/call` is authenticated (the agent by a JWT-SVID bearer or, on the
//! mTLS listener, by its X509-SVID; the user by an access token with a
//! live session), checked against the pinned tool catalog and the safety
//! limits, approved by a human where its tier asks for it (through
//! `/api/approvals`, or MCP elicitation when the client declared it),
//! turned into a single-use on-behalf-of token by an RFC 8693 exchange with
//! the call's exact `authorization_details`, and only then sent upstream.
//! The credentials the agent presented never leave the gateway; an agent
//! that came by mTLS is vouched for at the STS by the gateway as an actor
//! attester (`keyless_sts::TOKEN_TYPE_ATTESTED_X509_SVID`). `tools/list`
//! shows each caller only what the policy in force could allow it, and a
//! tool hidden that way is unknown to a call. With a risk ladder wired
//! (`Gateway::set_ladder`), every call is also an observation for it
//! before anyone approves it (a W1 caution is appended to the result), and
//! a refused exchange or a loop-breaker trip is one too.
//!
//! Modules: `config` (TOML: upstreams, tiers, RAR templates, limits,
//! approvals), `upstream` (rmcp clients over Streamable HTTP, `https`
//! included, and stdio; `tools/list_changed` re-lists), `catalog`
//! (definition pinning), `visibility` (per-caller listing by policy),
//! `approvals` + `approvals_http` (human in the loop), `limits` (rate
//! limits, loop breaker), `pipeline` (the per-call steps), `mcp` (the
//! downstream rmcp server, elicitation), `http` (routes, authentication,
//! the stateless and the session service).
//!
//! Not done yet:
//! - Elicitation for clients of protocol `2026-07-28`: that revision
//!   forbids server-to-client requests and replaces them with
//!   multi-round-trip results (`InputRequiredResult` with `inputRequests`
//!   and a `requestState` the client echoes, SEP-2322), which rmcp 3.11
//!   has; the gateway does not return them yet, so such clients (always
//!   served statelessly) approve through `/api/approvals` only. Doing it
//!   means binding the echoed `requestState` to the approval id (an HMAC,
//!   rmcp's `request-state` feature) and re-running the call on the retry.
//! - Elicitation sessions live in one process's memory: behind a load
//!   balancer a session must stay on its replica (sticky routing on
//!   `Mcp-Session-Id`); rmcp's `SessionStore` could restore them, but the
//!   owner binding would have to move to the store too.
//! - An elicitation is answered by the MCP client, which holds the user's
//!   access token (the same authority `/api/approvals` accepts); an
//!   out-of-band approval that the client cannot answer itself (CIBA, or
//!   URL-mode elicitation pointing at the console) is not offered.
//! - The per-caller listing asks the policy about an ordinary session
//!   (low risk, no step-up, no amount): a tool a W3 session may not call is
//!   still listed and refused at the exchange with the reason; verdicts
//!   are cached for up to 30 s per (agent, user, session) and policy set,
//!   so a policy on time or session age shows in listings that late.
//! - Cedar cannot tell an attested (mTLS) actor from one that presented
//!   its own JWT-SVID: the decision input has no field for it yet (the
//!   token and the audit event do say it).
//! - `https` upstreams: no client certificate towards the upstream (the
//!   gateway does not present its own X509-SVID there) and no certificate
//!   pinning beyond `ca_file`.

pub mod approvals;
pub mod approvals_http;
pub mod catalog;
pub mod config;
pub mod http;
pub mod limits;
pub mod mcp;
pub mod pipeline;
pub mod upstream;
pub mod visibility;

use std::sync::Arc;
use std::time::Duration;

pub use approvals::{Approval, ApprovalError, ApprovalRequest, Approvals, Gate};
pub use catalog::{BlockReason, Catalog, CatalogError, PinnedTool, ToolDef, ToolStatus};
pub use config::{ConfigError, GatewayConfig};
pub use pipeline::{
    AgentCredential, ApprovalPrompt, ApprovalQuestion, Caller, GATEWAY_AUDIENCE, Gateway,
    GatewayParts, SUBJECT_TOKEN_HEADER,
};
pub use upstream::{UpstreamError, Upstreams};
pub use visibility::ToolVisibility;

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
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
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
    // Before anything is spawned: a bad upstream (its CA file) refuses
    // the start.
    let upstreams = Upstreams::start(
        &p.config.upstreams,
        p.config.refresh_interval(),
        on_tools,
        p.shutdown.clone(),
    )?;
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
