//! The rotating-credentials engine: for upstreams that still need a static
//! secret (an API key, a client secret), every read mints a new one.
//!
//! A credential is registered by the operator (`keyless secrets rotating
//! create NAME --hook PROGRAM …`) with a hook: a program (absolute path,
//! its argv stored as given, run without a shell) that applies a new
//! secret at the upstream. `GET /v1/rotating/creds/NAME`:
//!
//! 1. Keyless generates the secret (256 random bits, base64url);
//! 2. runs the hook with the secret on stdin (one line) and
//!    `KEYLESS_ROTATING_NAME` / `KEYLESS_ROTATING_REASON` (`read`,
//!    `revoke`, `unleased`) in its environment, bounded by a timeout;
//! 3. on exit status 0, returns the secret under a short, non-renewable
//!    lease. A non-zero exit, a timeout or a hook that cannot start is an
//!    error: nothing is returned, no lease exists, and the hook's contract
//!    is that the previous credential then stays valid.
//!
//! Revoking the lease (or its expiry) rotates again, so a leaked value dies
//! with its lease — but only while that value is still the live one: each
//! successful rotation bumps the credential's `generation`, the lease
//! remembers the generation it handed out, and a lease whose value was
//! already replaced by a later read revokes without touching the upstream
//! (rotating then would kill the later reader's value). A failed
//! revocation rotation stays queued and is retried with backoff by the
//! lease manager.
//!
//! Nothing secret is stored: the secret lives only in memory, in the
//! hook's stdin and in the answer. Rotations of one credential are
//! serialized within a process; two replicas reading the same credential at
//! the same instant may apply their secrets in the other order than their
//! generations (not handled yet: the losing reader's value is dead early).
//!
//! An OAuth client secret at Keyless's STS is not a kind here: the STS has
//! no client secrets by design (clients authenticate with their SVIDs).

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, SystemTime};

use keyless_audit::{Event, Outcome};
use keyless_store::{Store, now_millis};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use crate::auth::duration_secs;
use crate::lease::{Lease, LeaseBackend, NewLease};
use crate::service::kinds;
use crate::{Secrets, SecretsError, TokenInfo};

/// The lease engine of rotating credentials.
pub const ENGINE_ROTATING: &str = "rotating";
/// Longest lease a rotating credential may hand out.
pub const MAX_ROTATING_TTL: Duration = Duration::from_secs(24 * 3600);
/// Longest hook timeout.
pub const MAX_HOOK_TIMEOUT: Duration = Duration::from_secs(300);
/// Event types of the engine (reads are `secret.read`, leases `lease.*`).
pub const ROTATING_WRITTEN: &str = "secrets.rotating.written";
pub const ROTATING_DELETED: &str = "secrets.rotating.deleted";
pub const ROTATING_FAILED: &str = "secrets.rotating.failed";
/// Hook stderr kept for the server log.
const STDERR_LOG_LIMIT: usize = 2000;

/// A registered rotating credential (no secret in it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotatingCredential {
    #[serde(default)]
    pub name: String,
    /// The hook's argv: an absolute program path, then its arguments.
    pub hook: Vec<String>,
    /// Lease TTL of a read, in seconds (`"5m"` accepted).
    #[serde(default = "default_ttl", deserialize_with = "duration_secs")]
    pub ttl: u64,
    /// How long the hook may run, in seconds (`"30s"` accepted).
    #[serde(default = "default_timeout", deserialize_with = "duration_secs")]
    pub hook_timeout: u64,
}

fn default_ttl() -> u64 {
    300
}

fn default_timeout() -> u64 {
    30
}

// === impl RotatingCredential ===

impl RotatingCredential {
    /// A credential with the default TTL and timeout.
    pub fn new(name: &str, hook: Vec<String>) -> Self {
        Self {
            name: name.to_owned(),
            hook,
            ttl: default_ttl(),
            hook_timeout: default_timeout(),
        }
    }

    fn validate(&self) -> Result<(), SecretsError> {
        let bad = |m: String| SecretsError::InvalidRequest(m);
        let ok_name = !self.name.is_empty()
            && self.name.len() <= 128
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !ok_name {
            return Err(bad(format!(
                "invalid credential name `{}`: use [a-zA-Z0-9._-], at most 128 bytes",
                self.name
            )));
        }
        let Some(program) = self.hook.first() else {
            return Err(bad("a rotating credential needs a hook (`hook`)".into()));
        };
        // No PATH lookup: the operator names exactly what runs.
        if !std::path::Path::new(program).is_absolute() {
            return Err(bad(format!(
                "the hook program `{program}` must be an absolute path"
            )));
        }
        if self.hook.iter().any(|a| a.contains('\0')) {
            return Err(bad("hook arguments cannot contain NUL bytes".into()));
        }
        if self.ttl == 0 || self.ttl > MAX_ROTATING_TTL.as_secs() {
            return Err(bad(format!(
                "`ttl` must be between 1s and {}s",
                MAX_ROTATING_TTL.as_secs()
            )));
        }
        if self.hook_timeout == 0 || self.hook_timeout > MAX_HOOK_TIMEOUT.as_secs() {
            return Err(bad(format!(
                "`hook_timeout` must be between 1s and {}s",
                MAX_HOOK_TIMEOUT.as_secs()
            )));
        }
        Ok(())
    }
}

/// One async lock per credential name, process-wide: rotations of a
/// credential never overlap (the hook and the generation move together).
static LOCKS: LazyLock<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

fn lock_for(name: &str) -> Arc<tokio::sync::Mutex<()>> {
    match LOCKS.lock() {
        Ok(mut m) => m.entry(name.to_owned()).or_default().clone(),
        Err(poisoned) => poisoned
            .into_inner()
            .entry(name.to_owned())
            .or_default()
            .clone(),
    }
}

async fn load(
    store: &Store,
    name: &str,
) -> Result<Option<(RotatingCredential, i64)>, SecretsError> {
    let row: Option<(String, i64)> =
        sqlx::query_as("SELECT config, generation FROM secrets_rotating WHERE name = $1")
            .bind(name)
            .fetch_optional(store.pool())
            .await?;
    row.map(|(c, g)| {
        serde_json::from_str(&c)
            .map(|cred| (cred, g))
            .map_err(|e| SecretsError::InvalidRequest(format!("stored credential `{name}`: {e}")))
    })
    .transpose()
}

/// Rotates credential `name` once: a new secret, the hook, the generation.
/// With `only_if` set, rotates only when the live generation is that one
/// (and answers `None` otherwise, or when the credential is gone).
async fn rotate(
    store: &Store,
    name: &str,
    reason: &str,
    only_if: Option<i64>,
) -> Result<Option<(String, i64)>, SecretsError> {
    let lock = lock_for(name);
    let _held = lock.lock().await;
    let Some((cred, generation)) = load(store, name).await? else {
        return match only_if {
            Some(_) => Ok(None),
            None => Err(SecretsError::InvalidRequest(format!(
                "unknown rotating credential `{name}`"
            ))),
        };
    };
    if only_if.is_some_and(|g| g != generation) {
        return Ok(None);
    }
    let secret = crate::token::random_b64(32)?;
    run_hook(&cred, &secret, reason).await?;
    let next = generation.saturating_add(1);
    sqlx::query("UPDATE secrets_rotating SET generation = $1, rotated_at = $2 WHERE name = $3")
        .bind(next)
        .bind(now_millis())
        .bind(name)
        .execute(store.pool())
        .await?;
    Ok(Some((secret, next)))
}

/// Runs the hook with `secret` on stdin. `Ok` only on exit status 0 within
/// the timeout; a hook still running at the timeout is killed.
async fn run_hook(
    cred: &RotatingCredential,
    secret: &str,
    reason: &str,
) -> Result<(), SecretsError> {
    let fail = |m: String| SecretsError::Rotation(format!("credential `{}`: {m}", cred.name));
    let Some((program, args)) = cred.hook.split_first() else {
        return Err(fail("no hook configured".into()));
    };
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .env("KEYLESS_ROTATING_NAME", &cred.name)
        .env("KEYLESS_ROTATING_REASON", reason)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| fail(format!("cannot start hook `{program}`: {e}")))?;
    let stdin = child.stdin.take();
    let run = async move {
        if let Some(mut stdin) = stdin {
            // A hook that exits without reading closes the pipe: its exit
            // status decides, not the write.
            let _ = stdin.write_all(format!("{secret}\n").as_bytes()).await;
            let _ = stdin.shutdown().await;
        }
        child.wait_with_output().await
    };
    let timeout = Duration::from_secs(cred.hook_timeout);
    match tokio::time::timeout(timeout, run).await {
        // Dropping the future drops the child, which kills it.
        Err(_) => Err(fail(format!(
            "hook timed out after {}s and was killed",
            cred.hook_timeout
        ))),
        Ok(Err(e)) => Err(fail(format!("hook `{program}`: {e}"))),
        Ok(Ok(out)) if out.status.success() => Ok(()),
        Ok(Ok(out)) => {
            // The hook may echo what it got: never log the secret.
            let stderr = String::from_utf8_lossy(&out.stderr).replace(secret, "[redacted]");
            let stderr: String = stderr.chars().take(STDERR_LOG_LIMIT).collect();
            tracing::warn!(credential = %cred.name, status = %out.status, stderr = %stderr.trim(), "rotation hook failed");
            Err(fail(format!("hook {}", out.status)))
        }
    }
}

/// Leases of rotating credentials carry `{name, generation}`; revoking one
/// rotates the credential again if that generation is still live.
#[derive(Debug)]
pub(crate) struct RotatingBackend(pub Store);

#[async_trait::async_trait]
impl LeaseBackend for RotatingBackend {
    async fn renew(&self, _internal: &Value, _valid_until: SystemTime) -> Result<(), SecretsError> {
        // Leases are issued non-renewable; the lease manager refuses first.
        Err(SecretsError::InvalidRequest(
            "lease is not renewable".into(),
        ))
    }

    async fn revoke(&self, internal: &Value) -> Result<(), SecretsError> {
        let name = internal
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| SecretsError::InvalidRequest("rotating lease without `name`".into()))?;
        let generation = internal
            .get("generation")
            .and_then(Value::as_i64)
            .ok_or_else(|| {
                SecretsError::InvalidRequest("rotating lease without `generation`".into())
            })?;
        rotate(&self.0, name, "revoke", Some(generation))
            .await
            .map(|_| ())
    }
}

/// What a read hands out.
#[derive(Debug, Clone, PartialEq)]
pub struct RotatedSecret {
    pub lease: Lease,
    pub name: String,
    pub secret: String,
    /// Rotations of this credential so far, this one included.
    pub generation: i64,
}

impl Secrets {
    // --- registration (admin socket) ---

    /// Registers (or replaces the hook, TTL and timeout of) a rotating
    /// credential. Nothing runs until the first read.
    pub async fn write_rotating(
        &self,
        cred: RotatingCredential,
    ) -> Result<RotatingCredential, SecretsError> {
        cred.validate()?;
        let config = serde_json::to_string(&cred)
            .map_err(|e| SecretsError::InvalidRequest(format!("credential: {e}")))?;
        let now = now_millis();
        sqlx::query(
            "INSERT INTO secrets_rotating (name, config, generation, rotated_at, updated_at) VALUES ($1, $2, 0, 0, $3) \
             ON CONFLICT (name) DO UPDATE SET config = $2, updated_at = $3",
        )
        .bind(&cred.name)
        .bind(&config)
        .bind(now)
        .execute(self.store.pool())
        .await?;
        self.record(
            Event::new(ROTATING_WRITTEN, Outcome::Success)
                .detail("credential", cred.name.clone())
                .detail("hook", cred.hook.first().cloned().unwrap_or_default())
                .detail("ttl_s", cred.ttl),
        )
        .await?;
        Ok(cred)
    }

    pub async fn rotating(&self, name: &str) -> Result<Option<RotatingCredential>, SecretsError> {
        Ok(load(&self.store, name).await?.map(|(c, _)| c))
    }

    pub async fn list_rotating(&self) -> Result<Vec<String>, SecretsError> {
        let rows: Vec<(String,)> =
            sqlx::query_as("SELECT name FROM secrets_rotating ORDER BY name")
                .fetch_all(self.store.pool())
                .await?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }

    /// Forgets a credential. Its live leases then revoke without a
    /// rotation (there is no hook left to run).
    pub async fn delete_rotating(&self, name: &str) -> Result<(), SecretsError> {
        let lock = lock_for(name);
        let _held = lock.lock().await;
        let done = sqlx::query("DELETE FROM secrets_rotating WHERE name = $1")
            .bind(name)
            .execute(self.store.pool())
            .await?;
        if done.rows_affected() == 0 {
            return Err(SecretsError::NotFound(format!(
                "no rotating credential `{name}`"
            )));
        }
        self.record(Event::new(ROTATING_DELETED, Outcome::Success).detail("credential", name))
            .await
    }

    // --- reads ---

    /// `GET /v1/rotating/creds/NAME` for `caller` (ACL already checked):
    /// rotates the credential and returns the new secret under a lease.
    /// A failed rotation returns nothing and leaves no lease.
    pub async fn read_rotating(
        &self,
        caller: &TokenInfo,
        name: &str,
    ) -> Result<RotatedSecret, SecretsError> {
        let Some(cred) = self.rotating(name).await? else {
            return Err(SecretsError::InvalidRequest(format!(
                "unknown rotating credential `{name}`"
            )));
        };
        self.check_lease_quota(&caller.identity).await?;
        let path = format!("rotating/creds/{name}");
        let (secret, generation) = match rotate(&self.store, name, "read", None).await {
            Ok(Some(done)) => done,
            Ok(None) => {
                return Err(SecretsError::InvalidRequest(format!(
                    "unknown rotating credential `{name}`"
                )));
            }
            Err(e) => {
                self.record(
                    Event::new(ROTATING_FAILED, Outcome::Error)
                        .agent(caller.identity.clone())
                        .reason(e.to_string())
                        .detail("path", path.clone()),
                )
                .await?;
                return Err(e);
            }
        };
        let ttl = Duration::from_secs(cred.ttl);
        let lease = self
            .issue_lease(NewLease {
                engine: ENGINE_ROTATING.to_owned(),
                path: path.clone(),
                internal: json!({ "name": name, "generation": generation }),
                identity: caller.identity.clone(),
                token_accessor: caller.accessor.clone(),
                ttl,
                max_ttl: ttl,
                renewable: false,
            })
            .await;
        let lease = match lease {
            Ok(lease) => lease,
            Err(e) => {
                // No value may outlive an unrecorded lease: rotate it away.
                if let Err(again) = rotate(&self.store, name, "unleased", Some(generation)).await {
                    tracing::error!(credential = %name, error = %again, "cannot rotate away an unleased credential");
                }
                return Err(e);
            }
        };
        self.record(
            Event::new(kinds::SECRET_READ, Outcome::Success)
                .agent(caller.identity.clone())
                .detail("path", path)
                .detail("lease_id", lease.lease_id.clone())
                .detail("generation", generation)
                .detail("accessor", caller.accessor.clone()),
        )
        .await?;
        Ok(RotatedSecret {
            lease,
            name: name.to_owned(),
            secret,
            generation,
        })
    }

    /// The live generation of credential `name` (rotations so far).
    pub async fn rotating_generation(&self, name: &str) -> Result<Option<i64>, SecretsError> {
        Ok(load(&self.store, name).await?.map(|(_, g)| g))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_validated() {
        let ok = RotatingCredential::new("api-key", vec!["/bin/true".into()]);
        assert!(ok.validate().is_ok());
        let relative = RotatingCredential::new("api-key", vec!["rotate.sh".into()]);
        assert!(relative.validate().is_err());
        let empty = RotatingCredential::new("api-key", Vec::new());
        assert!(empty.validate().is_err());
        let bad_name = RotatingCredential::new("a/b", vec!["/bin/true".into()]);
        assert!(bad_name.validate().is_err());
        let mut long = ok.clone();
        long.ttl = MAX_ROTATING_TTL.as_secs() + 1;
        assert!(long.validate().is_err());
        let mut no_timeout = ok;
        no_timeout.hook_timeout = 0;
        assert!(no_timeout.validate().is_err());
    }
}
