//! Glue between the broker and its engines: the audit events around KV v2
//! reads and writes, and the lease around every database credential (the
//! quota is checked before the login role exists, and a credential whose
//! lease cannot be recorded is revoked at once, so none lives unleased).

use std::time::Duration;

use keyless_audit::{Event, Outcome};
use serde_json::{Map, Value, json};

use crate::kv::{ReadResult, VersionMeta};
use crate::lease::{ENGINE_DATABASE, Lease, NewLease};
use crate::service::kinds;
use crate::{Secrets, SecretsError, TokenInfo};

impl Secrets {
    /// Reads a KV v2 secret for `caller` (ACL already checked); a
    /// successful read is a `secret.read` event recorded before the answer.
    pub async fn kv_read(
        &self,
        caller: &TokenInfo,
        path: &str,
        version: Option<u64>,
    ) -> Result<Option<ReadResult>, SecretsError> {
        let read = self.kv.get(path, version).await?;
        if let Some(r) = &read
            && r.data.is_some()
        {
            self.kv_event(caller, kinds::SECRET_READ, path).await?;
        }
        Ok(read)
    }

    /// Writes a KV v2 secret for `caller` (ACL already checked).
    pub async fn kv_write(
        &self,
        caller: &TokenInfo,
        path: &str,
        data: Map<String, Value>,
        cas: Option<u64>,
    ) -> Result<VersionMeta, SecretsError> {
        let meta = self.kv.put(path, data, cas).await?;
        self.kv_event(caller, kinds::SECRET_WRITTEN, path).await?;
        Ok(meta)
    }

    pub(crate) async fn kv_event(
        &self,
        caller: &TokenInfo,
        kind: &str,
        path: &str,
    ) -> Result<(), SecretsError> {
        self.record(
            Event::new(kind, Outcome::Success)
                .agent(caller.identity.clone())
                .detail("path", format!("secret/{path}"))
                .detail("accessor", caller.accessor.clone()),
        )
        .await
    }

    /// Issues a PostgreSQL login for database role `role` under a lease
    /// (default TTL of the role, renewable up to its max TTL). Returns the
    /// lease, the username and the password.
    pub async fn issue_db_creds(
        &self,
        caller: &TokenInfo,
        role: &str,
    ) -> Result<(Lease, String, String), SecretsError> {
        let db_role = self
            .database
            .role(role)
            .await?
            .ok_or_else(|| SecretsError::InvalidRequest(format!("unknown role: {role}")))?;
        self.check_lease_quota(&caller.identity).await?;
        let ttl = if db_role.default_ttl.is_zero() {
            Duration::from_secs(3600)
        } else {
            db_role.default_ttl
        };
        let max_ttl = if db_role.max_ttl.is_zero() {
            ttl.max(Duration::from_secs(24 * 3600))
        } else {
            db_role.max_ttl
        };
        let ttl = ttl.min(max_ttl);
        let cred = self.database.issue(role, ttl).await?;
        let internal = json!({ "connection": cred.connection, "username": cred.username });
        let lease = self
            .issue_lease(NewLease {
                engine: ENGINE_DATABASE.to_owned(),
                path: format!("database/creds/{role}"),
                internal: internal.clone(),
                identity: caller.identity.clone(),
                token_accessor: caller.accessor.clone(),
                ttl,
                max_ttl,
                renewable: true,
            })
            .await;
        match lease {
            Ok(lease) => Ok((lease, cred.username, cred.password)),
            Err(e) => {
                // No credential may outlive an unrecorded lease.
                if let Err(revoke) = self.database.revoke(&cred.connection, &cred.username).await {
                    tracing::error!(username = %cred.username, error = %revoke, "cannot revoke an unleased credential (VALID UNTIL still bounds it)");
                }
                Err(e)
            }
        }
    }
}

impl Secrets {
    /// Writes a KV v2 secret from the operator's admin socket (no token:
    /// the socket's file mode is the authentication); recorded as an event.
    pub async fn admin_kv_put(
        &self,
        path: &str,
        data: Map<String, Value>,
    ) -> Result<VersionMeta, SecretsError> {
        let path = path.trim_matches('/');
        let meta = self.kv.put(path, data, None).await?;
        self.record(
            Event::new(kinds::SECRET_WRITTEN, Outcome::Success)
                .user("admin")
                .detail("path", format!("secret/{path}"))
                .detail("via", "admin socket"),
        )
        .await?;
        Ok(meta)
    }
}
