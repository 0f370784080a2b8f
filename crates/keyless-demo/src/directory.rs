//! The `directory` MCP server: an identity-admin API over the directory store.
//!
//! Each tool first authorizes the call (see `verify.rs`) against the RAR its
//! tier requires, then does its work. Tiers: 1 read (`directory_read`),
//! 2 write (`directory_write`), 3 sensitive and 4 blocked (`directory_admin`;
//! Keyless policy never issues tier-4 tokens, the checks stay here anyway).

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
    db::normalize_email,
    directory_store as store,
    mcp::{self, store_failure, success, tool_error},
    rar,
    verify::Verifier,
};

const DEFAULT_LIMIT: u32 = 50;
const MAX_LIMIT: u32 = 1000;
const MAX_NAME_LEN: usize = 128;

/// Arguments of `list_users`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListUsersArgs {
    /// Maximum number of users to return, 1 to 1000 (default 50). Users are sorted by email.
    #[serde(default)]
    #[schemars(range(min = 1, max = 1000))]
    pub(crate) limit: Option<u32>,
}

/// A user picked by email address.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct UserArgs {
    /// Email address of the user, e.g. `alice@example.com`.
    pub(crate) email: String,
}

/// Arguments of `create_user`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateUserArgs {
    /// Email address of the new user (must not exist yet), e.g. `erin@example.com`.
    pub(crate) email: String,
    /// Full display name of the new user, e.g. `Erin Evans`.
    pub(crate) name: String,
}

/// Arguments of `add_user_to_group`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct GroupMemberArgs {
    /// Email address of an existing user.
    pub(crate) email: String,
    /// Name of an existing group: `engineering`, `finance` or `admins`.
    pub(crate) group: String,
}

/// The directory server; cheap to clone (one per request in stateless mode).
#[derive(Clone)]
pub(crate) struct Directory {
    pool: SqlitePool,
    verifier: Arc<Verifier>,
    tool_router: ToolRouter<Self>,
}

impl Directory {
    /// A server over `pool` whose calls `verifier` authorizes.
    pub(crate) fn new(pool: SqlitePool, verifier: Arc<Verifier>) -> Self {
        Self {
            pool,
            verifier,
            tool_router: Self::tool_router(),
        }
    }

    /// Authorizes a call needing `action` on `kind`, bound to `email` when the
    /// grant names an identifier.
    /// Authorizes a call about one user (the token's RAR must name `kind`,
    /// `action` and, if it has one, this user as identifier), then
    /// normalizes the email: `Ok(Err(result))` is the tool error for an
    /// invalid email.
    async fn authorized_user(
        &self,
        ctx: &RequestContext<RoleServer>,
        tool: &str,
        kind: &str,
        action: &str,
        email: &str,
    ) -> Result<Result<String, CallToolResult>, ErrorData> {
        mcp::authorize(&self.verifier, ctx, tool, |details| {
            rar::require(details, kind, |detail| {
                rar::actions(detail, &[action])?;
                rar::identifier(detail, email)
            })
        })
        .await?;
        Ok(normalize_email(email).map_err(tool_error))
    }
}

#[tool_router]
impl Directory {
    #[tool(
        description = "List the users of the company directory (email, name, active flag, admin flag, groups, live session count), sorted by email. Read-only.",
        annotations(title = "List users", read_only_hint = true, open_world_hint = false)
    )]
    async fn list_users(
        &self,
        Parameters(args): Parameters<ListUsersArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let limit = args.limit.unwrap_or(DEFAULT_LIMIT);
        mcp::authorize(&self.verifier, &ctx, "list_users", |details| {
            rar::require(details, "directory_read", |detail| {
                rar::actions(detail, &["list"])?;
                rar::limit(detail, limit)
            })
        })
        .await?;
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Ok(tool_error(format!(
                "`limit` must be between 1 and {MAX_LIMIT}, got {limit}"
            )));
        }
        let users = store::list_users(&self.pool, limit)
            .await
            .map_err(store_failure)?;
        Ok(success(json!({ "count": users.len(), "users": users })))
    }

    #[tool(
        description = "Look up one directory user by email address: name, active flag, admin flag, groups, live session count and creation time. Read-only.",
        annotations(title = "Get user", read_only_hint = true, open_world_hint = false)
    )]
    async fn get_user(
        &self,
        Parameters(args): Parameters<UserArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let email = match self
            .authorized_user(&ctx, "get_user", "directory_read", "read", &args.email)
            .await?
        {
            Ok(email) => email,
            Err(refusal) => return Ok(refusal),
        };
        match store::get_user(&self.pool, &email)
            .await
            .map_err(store_failure)?
        {
            Some(user) => Ok(success(json!({ "user": user }))),
            None => Ok(tool_error(format!("no user `{email}` in the directory"))),
        }
    }

    #[tool(
        description = "List the applications registered in the directory (name, description, owning group). Read-only.",
        annotations(
            title = "List applications",
            read_only_hint = true,
            open_world_hint = false
        )
    )]
    async fn list_applications(
        &self,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        mcp::authorize(&self.verifier, &ctx, "list_applications", |details| {
            rar::require(details, "directory_read", |detail| {
                rar::actions(detail, &["list"])
            })
        })
        .await?;
        let applications = store::list_applications(&self.pool)
            .await
            .map_err(store_failure)?;
        Ok(success(json!({ "applications": applications })))
    }

    #[tool(
        description = "Create a new, active directory user with the given email address and display name, in no group. Fails if the email is already taken.",
        annotations(
            title = "Create user",
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = false,
            open_world_hint = false
        )
    )]
    async fn create_user(
        &self,
        Parameters(args): Parameters<CreateUserArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let email = match self
            .authorized_user(
                &ctx,
                "create_user",
                "directory_write",
                "create",
                &args.email,
            )
            .await?
        {
            Ok(email) => email,
            Err(refusal) => return Ok(refusal),
        };
        let name = args.name.trim();
        if name.is_empty()
            || name.chars().count() > MAX_NAME_LEN
            || name.chars().any(char::is_control)
        {
            return Ok(tool_error(format!(
                "`name` must be 1 to {MAX_NAME_LEN} printable characters"
            )));
        }
        if !store::create_user(&self.pool, &email, name)
            .await
            .map_err(store_failure)?
        {
            return Ok(tool_error(format!("user `{email}` already exists")));
        }
        let user = store::get_user(&self.pool, &email)
            .await
            .map_err(store_failure)?;
        Ok(success(json!({ "created": true, "user": user })))
    }

    #[tool(
        description = "Add an existing directory user to an existing group (engineering, finance or admins). Adding a user to a group they are already in changes nothing.",
        annotations(
            title = "Add user to group",
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn add_user_to_group(
        &self,
        Parameters(args): Parameters<GroupMemberArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let email = match self
            .authorized_user(
                &ctx,
                "add_user_to_group",
                "directory_write",
                "add_member",
                &args.email,
            )
            .await?
        {
            Ok(email) => email,
            Err(refusal) => return Ok(refusal),
        };
        let group = args.group.trim().to_ascii_lowercase();
        if store::get_user(&self.pool, &email)
            .await
            .map_err(store_failure)?
            .is_none()
        {
            return Ok(tool_error(format!("no user `{email}` in the directory")));
        }
        if !store::group_exists(&self.pool, &group)
            .await
            .map_err(store_failure)?
        {
            return Ok(tool_error(format!("no group `{group}` in the directory")));
        }
        let added = store::add_to_group(&self.pool, &email, &group)
            .await
            .map_err(store_failure)?;
        let user = store::get_user(&self.pool, &email)
            .await
            .map_err(store_failure)?;
        Ok(success(
            json!({ "added": added, "group": group, "user": user }),
        ))
    }

    #[tool(
        description = "Deactivate a directory user: they can no longer sign in and their live sessions end. Sensitive: needs a fresh human approval.",
        annotations(
            title = "Deactivate user",
            read_only_hint = false,
            destructive_hint = true,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn deactivate_user(
        &self,
        Parameters(args): Parameters<UserArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let email = match self
            .authorized_user(
                &ctx,
                "deactivate_user",
                "directory_admin",
                "disable_user",
                &args.email,
            )
            .await?
        {
            Ok(email) => email,
            Err(refusal) => return Ok(refusal),
        };
        match store::deactivate(&self.pool, &email)
            .await
            .map_err(store_failure)?
        {
            Some(before) => Ok(success(json!({
                "email": email,
                "active": false,
                "was_active": before.active,
                "sessions_ended": before.sessions,
            }))),
            None => Ok(tool_error(format!("no user `{email}` in the directory"))),
        }
    }

    #[tool(
        description = "End every live session of a directory user (they must sign in again). Sensitive: needs a fresh human approval.",
        annotations(
            title = "Revoke user sessions",
            read_only_hint = false,
            destructive_hint = true,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn revoke_user_sessions(
        &self,
        Parameters(args): Parameters<UserArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let email = match self
            .authorized_user(
                &ctx,
                "revoke_user_sessions",
                "directory_admin",
                "revoke_sessions",
                &args.email,
            )
            .await?
        {
            Ok(email) => email,
            Err(refusal) => return Ok(refusal),
        };
        match store::revoke_sessions(&self.pool, &email)
            .await
            .map_err(store_failure)?
        {
            Some(revoked) => Ok(success(
                json!({ "email": email, "revoked_sessions": revoked }),
            )),
            None => Ok(tool_error(format!("no user `{email}` in the directory"))),
        }
    }

    #[tool(
        description = "Permanently delete a directory user and their group memberships. Irreversible; Keyless policy blocks this tool for agents.",
        annotations(
            title = "Delete user",
            read_only_hint = false,
            destructive_hint = true,
            idempotent_hint = false,
            open_world_hint = false
        )
    )]
    async fn delete_user(
        &self,
        Parameters(args): Parameters<UserArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let email = match self
            .authorized_user(
                &ctx,
                "delete_user",
                "directory_admin",
                "delete_user",
                &args.email,
            )
            .await?
        {
            Ok(email) => email,
            Err(refusal) => return Ok(refusal),
        };
        if store::delete_user(&self.pool, &email)
            .await
            .map_err(store_failure)?
        {
            Ok(success(json!({ "email": email, "deleted": true })))
        } else {
            Ok(tool_error(format!("no user `{email}` in the directory")))
        }
    }

    #[tool(
        description = "Make a directory user an administrator (admin flag and membership of the admins group). Keyless policy blocks this tool for agents.",
        annotations(
            title = "Grant admin role",
            read_only_hint = false,
            destructive_hint = true,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn grant_admin_role(
        &self,
        Parameters(args): Parameters<UserArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let email = match self
            .authorized_user(
                &ctx,
                "grant_admin_role",
                "directory_admin",
                "grant_admin_role",
                &args.email,
            )
            .await?
        {
            Ok(email) => email,
            Err(refusal) => return Ok(refusal),
        };
        if store::grant_admin(&self.pool, &email)
            .await
            .map_err(store_failure)?
        {
            Ok(success(json!({ "email": email, "admin": true })))
        } else {
            Ok(tool_error(format!("no user `{email}` in the directory")))
        }
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for Directory {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(
                Implementation::new("keyless-demo-directory", env!("CARGO_PKG_VERSION"))
                    .with_title("Keyless demo directory"),
            )
            .with_instructions(
                "Company identity directory: users, groups and applications. Every tool call \
                 must carry a single-use on-behalf-of token whose authorization_details cover \
                 exactly that call.",
            )
    }
}
