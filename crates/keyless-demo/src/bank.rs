//! The `bank` MCP server: balance, history and transfers on the account of
//! the user the OBO token speaks for (`email` claim, else `sub`).
//!
//! Reads need a `tool_call` authorization naming the tool; a transfer needs a
//! `transfer_funds` authorization whose amount, currency and destination
//! cover it — a valid token for 100 USD does not move 150.

use std::sync::Arc;

use rmcp::{
    ErrorData, RoleServer, ServerHandler,
    handler::server::{router::tool::ToolRouter, wrapper::Parameters},
    model::{CallToolResult, Implementation, ServerCapabilities, ServerConfig},
    service::RequestContext,
    tool, tool_handler, tool_router,
};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::json;
use sqlx::SqlitePool;

use crate::{
    bank_store::{self as store, Account, Transfer},
    mcp::{self, store_failure, success, tool_error},
    rar::{self, format_cents, to_cents},
    verify::{Principal, Verifier},
};

const DEFAULT_LIMIT: u32 = 20;
const MAX_LIMIT: u32 = 100;

/// Arguments of `list_transactions`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListTransactionsArgs {
    /// Maximum number of transactions to return, newest first, 1 to 100 (default 20).
    #[serde(default)]
    #[schemars(range(min = 1, max = 100))]
    pub(crate) limit: Option<u32>,
}

/// Arguments of `transfer_funds`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct TransferArgs {
    /// Amount to send, in units of the currency with at most two decimals, e.g. `75.5`.
    #[schemars(range(min = 0.01, max = 1000000000))]
    pub(crate) amount: f64,
    /// ISO 4217 currency code of the amount; must be the account's currency (`USD`).
    pub(crate) currency: String,
    /// Id of the payee to pay, e.g. `acme-supplies`, `landlord`, `utility-co` or `coffee-corner`.
    pub(crate) destination: String,
}

/// The bank server; cheap to clone (one per request in stateless mode).
#[derive(Clone)]
pub(crate) struct Bank {
    pool: SqlitePool,
    verifier: Arc<Verifier>,
    tool_router: ToolRouter<Self>,
}

impl Bank {
    /// A server over `pool` whose calls `verifier` authorizes.
    pub(crate) fn new(pool: SqlitePool, verifier: Arc<Verifier>) -> Self {
        Self {
            pool,
            verifier,
            tool_router: Self::tool_router(),
        }
    }

    async fn authorize_tool(
        &self,
        ctx: &RequestContext<RoleServer>,
        tool: &str,
    ) -> Result<Principal, ErrorData> {
        mcp::authorize(&self.verifier, ctx, tool, |details| {
            rar::require(details, "tool_call", |detail| rar::tool(detail, tool))
        })
        .await
    }

    /// The account of the token's user, or the tool error to return.
    async fn account(
        &self,
        principal: &Principal,
    ) -> Result<Result<Account, CallToolResult>, ErrorData> {
        let user = principal.user();
        Ok(store::account_of(&self.pool, user)
            .await
            .map_err(store_failure)?
            .ok_or_else(|| tool_error(format!("no bank account for `{user}`"))))
    }
}

#[tool_router]
impl Bank {
    #[tool(
        description = "Get the current balance of the signed-in user's checking account (account id, currency, balance). Read-only.",
        annotations(title = "Get balance", read_only_hint = true, open_world_hint = false)
    )]
    async fn get_balance(
        &self,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let principal = self.authorize_tool(&ctx, "get_balance").await?;
        let account = match self.account(&principal).await? {
            Ok(account) => account,
            Err(result) => return Ok(result),
        };
        Ok(success(json!({
            "account": account.id,
            "owner": account.owner,
            "currency": account.currency,
            "balance": account.balance_cents as f64 / 100.0,
            "balance_display": format!("{} {}", format_cents(account.balance_cents), account.currency),
        })))
    }

    #[tool(
        description = "List the most recent transactions of the signed-in user's checking account, newest first. Negative amounts are money leaving the account. Read-only.",
        annotations(
            title = "List transactions",
            read_only_hint = true,
            open_world_hint = false
        )
    )]
    async fn list_transactions(
        &self,
        Parameters(args): Parameters<ListTransactionsArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let principal = self.authorize_tool(&ctx, "list_transactions").await?;
        let limit = args.limit.unwrap_or(DEFAULT_LIMIT);
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Ok(tool_error(format!(
                "`limit` must be between 1 and {MAX_LIMIT}, got {limit}"
            )));
        }
        let account = match self.account(&principal).await? {
            Ok(account) => account,
            Err(result) => return Ok(result),
        };
        let transactions = store::transactions(&self.pool, &account.id, limit)
            .await
            .map_err(store_failure)?;
        Ok(success(json!({
            "account": account.id,
            "currency": account.currency,
            "transactions": transactions,
        })))
    }

    #[tool(
        description = "Send money from the signed-in user's checking account to a known payee. Needs a human approval; the authorization fixes the maximum amount, the currency and the destination.",
        annotations(
            title = "Transfer funds",
            read_only_hint = false,
            destructive_hint = true,
            idempotent_hint = false,
            open_world_hint = true
        )
    )]
    async fn transfer_funds(
        &self,
        Parameters(args): Parameters<TransferArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        // A malformed amount cannot be compared with any grant: refuse it
        // before the token is looked at (and so before it is consumed).
        let Some(cents) = to_cents(args.amount).filter(|cents| *cents > 0) else {
            return Err(ErrorData::invalid_params(
                format!(
                    "`amount` must be a positive number with at most two decimals, got {}",
                    args.amount
                ),
                None,
            ));
        };
        let principal = mcp::authorize(&self.verifier, &ctx, "transfer_funds", |details| {
            rar::require(details, "transfer_funds", |detail| {
                rar::amount_at_least(detail, cents)?;
                rar::equals(detail, "currency", &args.currency)?;
                rar::equals(detail, "destination", &args.destination)
            })
        })
        .await?;
        let account = match self.account(&principal).await? {
            Ok(account) => account,
            Err(result) => return Ok(result),
        };
        if args.currency != account.currency {
            return Ok(tool_error(format!(
                "account `{}` holds {}, not `{}`",
                account.id, account.currency, args.currency
            )));
        }
        let Some(payee) = store::payee(&self.pool, &args.destination)
            .await
            .map_err(store_failure)?
        else {
            return Ok(tool_error(format!("unknown payee `{}`", args.destination)));
        };
        let description = format!("Transfer to {payee}");
        match store::transfer(
            &self.pool,
            &account.id,
            cents,
            &args.destination,
            &description,
        )
        .await
        .map_err(store_failure)?
        {
            Transfer::Done {
                balance_cents,
                transaction_id,
            } => Ok(success(json!({
                "transferred": cents as f64 / 100.0,
                "currency": account.currency,
                "destination": args.destination,
                "transaction_id": transaction_id,
                "balance": balance_cents as f64 / 100.0,
                "balance_display": format!("{} {}", format_cents(balance_cents), account.currency),
            }))),
            Transfer::InsufficientFunds { balance_cents } => Ok(tool_error(format!(
                "insufficient funds: the balance is {} {}, the transfer needs {} {}",
                format_cents(balance_cents),
                account.currency,
                format_cents(cents),
                account.currency
            ))),
        }
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for Bank {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(
                Implementation::new("keyless-demo-bank", env!("CARGO_PKG_VERSION"))
                    .with_title("Keyless demo bank"),
            )
            .with_instructions(
                "Retail bank: balance, transactions and transfers on the signed-in user's \
                 checking account. Every tool call must carry a single-use on-behalf-of token \
                 whose authorization_details cover exactly that call.",
            )
    }
}
