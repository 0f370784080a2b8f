//! Glue between the broker and its engines: the audit events around KV v2
//! reads and writes, and the lease around every database credential (the
//! quota is checked before the login role exists, and a credential whose
//! lease cannot be recorded is revoked at once, so none lives unleased).
//! With the OpenBao backend (`openbao.rs`) the same calls are served by
//! OpenBao; the ACL check, the events and the Keyless lease stay here.

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
        let read = match self.openbao() {
            Some(bao) => bao.kv_read(path, version).await?,
            None => self.kv.get(path, version).await?,
        };
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
        let meta = match self.openbao() {
            Some(bao) => {
                crate::kv::validate_path(path)?;
                bao.kv_write(path, data, cas).await?
            }
            None => self.kv.put(path, data, cas).await?,
        };
        self.kv_event(caller, kinds::SECRET_WRITTEN, path).await?;
        Ok(meta)
    }

    /// Whether KV v2 `path` exists (in OpenBao when it is the backend):
    /// a write needs `create` for a new path, `update` for an existing one.
    pub async fn kv_exists(&self, path: &str) -> Result<bool, SecretsError> {
        match self.openbao() {
            Some(bao) => bao.kv_exists(path).await,
            None => Ok(self.kv.metadata(path).await?.is_some()),
        }
    }

    /// Refuses KV v2 operations the OpenBao backend does not forward yet
    /// (metadata, list, delete, undelete, destroy), rather than answering
    /// them from the unused local store.
    pub fn local_kv_only(&self, what: &str) -> Result<(), SecretsError> {
        if self.openbao().is_some() {
            return Err(SecretsError::InvalidRequest(format!(
                "{what} is not available with the openbao secrets backend (use openbao directly)"
            )));
        }
        Ok(())
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
        if let Some(bao) = self.openbao() {
            return self.issue_openbao_creds(bao.clone(), caller, role).await;
        }
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
    /// A database credential from OpenBao, under a Keyless lease whose
    /// internal state is OpenBao's `lease_id` (renew and revoke are
    /// forwarded by `OpenBaoLeases`). Keyless's lease quota applies first;
    /// a credential whose lease cannot be recorded is revoked in OpenBao.
    async fn issue_openbao_creds(
        &self,
        bao: std::sync::Arc<crate::openbao::OpenBaoClient>,
        caller: &TokenInfo,
        role: &str,
    ) -> Result<(Lease, String, String), SecretsError> {
        self.check_lease_quota(&caller.identity).await?;
        let cred = bao.db_creds(role).await?;
        let field = |k: &str| {
            cred.data
                .get(k)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| SecretsError::Backend(format!("openbao credential has no `{k}`")))
        };
        let fields = field("username").and_then(|u| Ok((u, field("password")?)));
        let ttl = if cred.lease_duration.is_zero() {
            Duration::from_secs(3600)
        } else {
            cred.lease_duration
        };
        let issued = match fields {
            Ok((username, password)) => self
                .issue_lease(NewLease {
                    engine: crate::openbao::ENGINE_OPENBAO.to_owned(),
                    path: format!("database/creds/{role}"),
                    internal: json!({ "lease_id": cred.lease_id }),
                    identity: caller.identity.clone(),
                    token_accessor: caller.accessor.clone(),
                    ttl,
                    // OpenBao enforces the role's max TTL itself (a renewal
                    // past it is capped there); Keyless's own bound is the
                    // longest token life.
                    max_ttl: self.config.max_token_ttl.max(ttl),
                    renewable: cred.renewable,
                })
                .await
                .map(|lease| (lease, username, password)),
            Err(e) => Err(e),
        };
        if issued.is_err() {
            // No credential may outlive an unrecorded lease.
            if let Err(revoke) = bao.revoke_lease(&cred.lease_id).await {
                tracing::error!(error = %revoke, "cannot revoke an unleased openbao credential (its openbao ttl still bounds it)");
            }
        }
        issued
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
