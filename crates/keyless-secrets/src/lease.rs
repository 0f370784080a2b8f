//! Leases: every dynamic secret has one, and dies with it.
//!
//! - Issue checks a per-identity quota first, so a looping workload gets a
//!   clear refusal instead of a lease explosion.
//! - Renew sets expiry to now + increment, capped at the lease's max TTL
//!   with a warning; the engine renews first (e.g. `ALTER ROLE … VALID
//!   UNTIL`), the row second.
//! - Revoke marks the lease `revoking`, then asks its engine; success
//!   deletes the row, failure keeps it with an attempt count and a
//!   `next_attempt_at` (exponential backoff): a revocation is never
//!   dropped, and it is never reported as done when it is not.
//! - Revoke-prefix is set-based: one `UPDATE` marks every lease under the
//!   prefix, engines are called with bounded concurrency, and successes are
//!   deleted with one `DELETE … IN (…)` per batch.
//! - The expiry worker ([`Secrets::spawn_expiry_worker`]) marks every expired
//!   lease and every lease of an expired token in one statement each, then
//!   revokes what is due; its first pass at start-up revokes what expired
//!   while Keyless was down.
//! - One revoker per lease: a revoke, a revoke-prefix or a worker pass first
//!   claims its leases (`claimed_until`, in one statement whose condition
//!   is re-checked per row, so two replicas never both claim one) and
//!   works only on what its own claim holds; a lease held by another is
//!   awaited, not revoked twice (PostgreSQL role revocation is not safe to
//!   run twice at once). A dead holder's claim expires after two minutes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use keyless_audit::{Event, Outcome};
use keyless_store::now_millis;
use serde_json::Value;

use crate::database::Database;
use crate::service::{duration_ms, kinds, millis_to_time};
use crate::{Secrets, SecretsError, TokenInfo};

pub const ENGINE_DATABASE: &str = "database";
/// Leases revoked per batch (one `DELETE` each).
const BATCH: i64 = 500;
/// Engine calls in flight at once during a mass revocation.
const CONCURRENCY: usize = 16;
/// How long a revoker's claim on a lease lasts if it dies holding it.
const CLAIM_MS: i64 = 120_000;
/// How long a revoke waits for another revoker's outcome.
const AWAIT_STEPS: u32 = 200;
const AWAIT_STEP: Duration = Duration::from_millis(50);

/// A claim mark: when the claim expires, plus a random offset of up to a
/// minute so that two claims made in the same millisecond (almost surely)
/// differ and each revoker reads back only its own rows.
fn claim_mark(now: i64) -> i64 {
    let mut b = [0u8; 4];
    let jitter = match aws_lc_rs::rand::fill(&mut b) {
        Ok(()) => i64::from(u32::from_le_bytes(b) % 60_000),
        Err(_) => 0,
    };
    now.saturating_add(CLAIM_MS).saturating_add(jitter)
}

/// What an engine does when one of its leases is renewed or revoked. One
/// attempt per call: the lease manager owns retries.
#[async_trait::async_trait]
pub trait LeaseBackend: Send + Sync + std::fmt::Debug {
    async fn renew(&self, internal: &Value, valid_until: SystemTime) -> Result<(), SecretsError>;
    /// Must be idempotent: revoking what is already gone succeeds.
    async fn revoke(&self, internal: &Value) -> Result<(), SecretsError>;
}

/// Database leases carry `{connection, username}`.
#[derive(Debug)]
pub(crate) struct DatabaseBackend(pub Arc<Database>);

fn db_fields(internal: &Value) -> Result<(&str, &str), SecretsError> {
    let get = |k: &str| {
        internal
            .get(k)
            .and_then(Value::as_str)
            .ok_or_else(|| SecretsError::InvalidRequest(format!("database lease without `{k}`")))
    };
    Ok((get("connection")?, get("username")?))
}

#[async_trait::async_trait]
impl LeaseBackend for DatabaseBackend {
    async fn renew(&self, internal: &Value, valid_until: SystemTime) -> Result<(), SecretsError> {
        let (c, u) = db_fields(internal)?;
        self.0.renew(c, u, valid_until).await
    }

    async fn revoke(&self, internal: &Value) -> Result<(), SecretsError> {
        let (c, u) = db_fields(internal)?;
        self.0.revoke(c, u).await
    }
}

/// A lease to create.
#[derive(Debug, Clone)]
pub struct NewLease {
    pub engine: String,
    /// Where it was issued, e.g. `database/creds/readonly`; the lease id is
    /// `<path>/<random>`, so revoke-prefix works per path.
    pub path: String,
    pub internal: Value,
    pub identity: String,
    /// Accessor of the service token that asked (empty for batch tokens):
    /// revoking that token revokes the lease.
    pub token_accessor: String,
    pub ttl: Duration,
    pub max_ttl: Duration,
    pub renewable: bool,
}

/// A lease as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Lease {
    pub lease_id: String,
    pub engine: String,
    pub internal: Value,
    pub identity: String,
    pub token_accessor: String,
    pub issued_at: i64,
    /// The TTL it was issued with: what a renewal without increment asks for.
    pub ttl_ms: i64,
    pub expires_at: i64,
    pub max_expires_at: i64,
    pub renewable: bool,
    pub revoking: bool,
    pub attempts: i64,
    pub last_error: String,
}

impl Lease {
    /// Seconds left (0 once expired).
    pub fn ttl_secs(&self) -> i64 {
        ((self.expires_at - now_millis()).saturating_add(999) / 1000).max(0)
    }
}

type LeaseRow = (
    String,
    String,
    String,
    String,
    String,
    i64,
    i64,
    i64,
    i64,
    i64,
    i64,
    i64,
    String,
);

const LEASE_COLUMNS: &str = "lease_id, engine, internal, identity, token_accessor, issued_at, ttl_ms, expires_at, max_expires_at, renewable, revoking, attempts, last_error";

fn from_row(r: LeaseRow) -> Lease {
    Lease {
        lease_id: r.0,
        engine: r.1,
        internal: serde_json::from_str(&r.2).unwrap_or(Value::Null),
        identity: r.3,
        token_accessor: r.4,
        issued_at: r.5,
        ttl_ms: r.6,
        expires_at: r.7,
        max_expires_at: r.8,
        renewable: r.9 != 0,
        revoking: r.10 != 0,
        attempts: r.11,
        last_error: r.12,
    }
}

/// `LIKE` pattern matching every id that starts with `prefix` literally.
fn like_prefix(prefix: &str) -> String {
    let mut out = String::with_capacity(prefix.len() + 1);
    for c in prefix.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('%');
    out
}

impl Secrets {
    /// Adds (or replaces) the engine behind leases of `engine`.
    pub fn register_backend(&self, engine: &str, backend: Arc<dyn LeaseBackend>) {
        if let Ok(mut b) = self.backends.write() {
            b.insert(engine.to_owned(), backend);
        }
    }

    fn backend(&self, engine: &str) -> Option<Arc<dyn LeaseBackend>> {
        self.backends.read().ok()?.get(engine).cloned()
    }

    /// Creates a lease, after the identity's quota check.
    pub async fn issue_lease(&self, new: NewLease) -> Result<Lease, SecretsError> {
        self.check_lease_quota(&new.identity).await?;
        let now = now_millis();
        let lease_id = format!(
            "{}/{}",
            new.path.trim_end_matches('/'),
            crate::token::random_b64(18)?
        );
        let max_expires_at = now.saturating_add(duration_ms(new.max_ttl));
        let expires_at = now.saturating_add(duration_ms(new.ttl)).min(max_expires_at);
        let internal = serde_json::to_string(&new.internal).unwrap_or_else(|_| "null".into());
        sqlx::query(
            "INSERT INTO secrets_leases (lease_id, engine, internal, identity, token_accessor, issued_at, ttl_ms, expires_at, max_expires_at, renewable, revoking, attempts, next_attempt_at, last_error) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 0, 0, 0, '')",
        )
        .bind(&lease_id)
        .bind(&new.engine)
        .bind(&internal)
        .bind(&new.identity)
        .bind(&new.token_accessor)
        .bind(now)
        .bind(expires_at - now)
        .bind(expires_at)
        .bind(max_expires_at)
        .bind(i64::from(new.renewable))
        .execute(self.store.pool())
        .await?;
        self.record(
            Event::new(kinds::LEASE_ISSUED, Outcome::Success)
                .agent(new.identity.clone())
                .detail("lease_id", lease_id.clone())
                .detail("engine", new.engine.clone())
                .detail("ttl_s", (expires_at - now) / 1000),
        )
        .await?;
        Ok(Lease {
            lease_id,
            engine: new.engine,
            internal: new.internal,
            identity: new.identity,
            token_accessor: new.token_accessor,
            issued_at: now,
            ttl_ms: expires_at - now,
            expires_at,
            max_expires_at,
            renewable: new.renewable,
            revoking: false,
            attempts: 0,
            last_error: String::new(),
        })
    }

    pub(crate) async fn check_lease_quota(&self, identity: &str) -> Result<(), SecretsError> {
        let (n,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM secrets_leases WHERE identity = $1 AND revoking = 0",
        )
        .bind(identity)
        .fetch_one(self.store.pool())
        .await?;
        let limit = self.config.max_leases_per_identity;
        if u64::try_from(n).unwrap_or(0) >= limit {
            self.record(
                Event::new(kinds::LEASE_QUOTA_EXCEEDED, Outcome::Denied)
                    .agent(identity)
                    .reason(format!("lease quota of {limit} reached")),
            )
            .await?;
            return Err(SecretsError::QuotaExceeded(format!(
                "lease quota exceeded: `{identity}` already holds {n} leases (limit {limit}); revoke unused leases or let them expire"
            )));
        }
        Ok(())
    }

    /// A lease by id, revoking or not.
    pub async fn lease(&self, lease_id: &str) -> Result<Option<Lease>, SecretsError> {
        let sql = format!("SELECT {LEASE_COLUMNS} FROM secrets_leases WHERE lease_id = $1");
        let row: Option<LeaseRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(lease_id)
            .fetch_optional(self.store.pool())
            .await?;
        Ok(row.map(from_row))
    }

    /// The live lease `lease_id` if `caller` may touch it: its own
    /// identity's leases, or any with `privileged` (sudo). Anything else is
    /// "invalid lease", whether it exists or not (an unauthorized caller
    /// learns nothing about other workloads' leases).
    pub async fn lease_for(
        &self,
        caller: &TokenInfo,
        privileged: bool,
        lease_id: &str,
    ) -> Result<Lease, SecretsError> {
        let invalid = || SecretsError::InvalidRequest("invalid lease".into());
        let lease = self.lease(lease_id).await?.ok_or_else(invalid)?;
        if !privileged && lease.identity != caller.identity {
            return Err(invalid());
        }
        if lease.revoking || lease.expires_at <= now_millis() {
            return Err(invalid());
        }
        Ok(lease)
    }

    /// Renews a lease: expiry = now + increment (default: its original
    /// TTL), capped at its max TTL with a warning.
    pub async fn renew_lease(
        &self,
        lease: &Lease,
        increment: Option<Duration>,
    ) -> Result<(Lease, Option<String>), SecretsError> {
        if !lease.renewable {
            return Err(SecretsError::InvalidRequest(
                "lease is not renewable".into(),
            ));
        }
        let now = now_millis();
        let wanted = increment
            .filter(|d| !d.is_zero())
            .map_or(lease.ttl_ms, duration_ms);
        let mut expires = now.saturating_add(wanted);
        let mut warning = None;
        if expires > lease.max_expires_at {
            expires = lease.max_expires_at;
            warning = Some(format!(
                "TTL of \"{}s\" exceeded the effective max_ttl of \"{}s\"; TTL value is capped accordingly",
                wanted / 1000,
                (lease.max_expires_at - now).max(0) / 1000
            ));
        }
        if let Some(backend) = self.backend(&lease.engine) {
            backend
                .renew(&lease.internal, millis_to_time(expires))
                .await?;
        }
        let done = sqlx::query(
            "UPDATE secrets_leases SET expires_at = $1 WHERE lease_id = $2 AND revoking = 0",
        )
        .bind(expires)
        .bind(&lease.lease_id)
        .execute(self.store.pool())
        .await?;
        if done.rows_affected() == 0 {
            return Err(SecretsError::InvalidRequest("invalid lease".into()));
        }
        self.record(
            Event::new(kinds::LEASE_RENEWED, Outcome::Success)
                .agent(lease.identity.clone())
                .detail("lease_id", lease.lease_id.clone())
                .detail("ttl_s", (expires - now) / 1000)
                .detail("capped", warning.is_some()),
        )
        .await?;
        let mut renewed = lease.clone();
        renewed.expires_at = expires;
        Ok((renewed, warning))
    }

    /// Revokes one lease now. `Ok` only once the engine confirmed; on
    /// failure the lease stays queued (retried with backoff) and the error
    /// says so.
    pub async fn revoke_lease(&self, lease_id: &str) -> Result<(), SecretsError> {
        let now = now_millis();
        let claim = claim_mark(now);
        let marked = sqlx::query(
            "UPDATE secrets_leases SET revoking = 1, claimed_until = $1 \
             WHERE lease_id = $2 AND claimed_until <= $3",
        )
        .bind(claim)
        .bind(lease_id)
        .bind(now)
        .execute(self.store.pool())
        .await?;
        if marked.rows_affected() == 0 {
            if self.lease(lease_id).await?.is_none() {
                return Err(SecretsError::InvalidRequest("invalid lease".into()));
            }
            // Another revoker (the expiry worker, a revoke-prefix, a
            // replica) holds it: wait for its outcome.
            return self.await_revoked(&[lease_id.to_owned()]).await;
        }
        let Some(lease) = self.lease(lease_id).await? else {
            // Another replica finished it meanwhile.
            return Ok(());
        };
        let failures = self.revoke_batch(vec![lease]).await?;
        match failures.into_iter().next() {
            None => Ok(()),
            Some((_, e)) => Err(SecretsError::RevocationFailed(format!(
                "revocation of lease `{lease_id}` failed ({e}); it stays queued and is retried until it succeeds"
            ))),
        }
    }

    /// Waits (bounded) until the leases `ids`, held by another revoker,
    /// are gone (revoked) or have failed (rescheduled with an error).
    async fn await_revoked(&self, ids: &[String]) -> Result<(), SecretsError> {
        for _ in 0..AWAIT_STEPS {
            let mut pending = false;
            for id in ids {
                if let Some(l) = self.lease(id).await? {
                    if l.attempts > 0 {
                        return Err(SecretsError::RevocationFailed(format!(
                            "revocation of lease `{id}` failed; it stays queued and is retried until it succeeds"
                        )));
                    }
                    pending = true;
                }
            }
            if !pending {
                return Ok(());
            }
            tokio::time::sleep(AWAIT_STEP).await;
        }
        Err(SecretsError::RevocationFailed(
            "another revoker is still working on these leases; they stay queued until revoked"
                .into(),
        ))
    }

    /// Revokes every lease whose id starts with `prefix`. Returns how many
    /// were revoked; failures stay queued and make this an error.
    pub async fn revoke_prefix(&self, prefix: &str) -> Result<u64, SecretsError> {
        if prefix.is_empty() {
            return Err(SecretsError::InvalidRequest(
                "revoke-prefix needs a non-empty prefix".into(),
            ));
        }
        let pattern = like_prefix(prefix);
        let now = now_millis();
        let claim = claim_mark(now);
        // Leases another revoker holds right now are left to it (and
        // awaited below): two revokers of one credential would race in the
        // engine (e.g. two sessions dropping one PostgreSQL role).
        let marked = sqlx::query(
            "UPDATE secrets_leases SET revoking = 1, claimed_until = $1 \
             WHERE lease_id LIKE $2 ESCAPE '\\' AND claimed_until <= $3",
        )
        .bind(claim)
        .bind(&pattern)
        .bind(now)
        .execute(self.store.pool())
        .await?;
        let mut revoked = 0u64;
        let mut failed = 0u64;
        let mut seen = std::collections::HashSet::new();
        loop {
            let sql = format!(
                "SELECT {LEASE_COLUMNS} FROM secrets_leases WHERE lease_id LIKE $1 ESCAPE '\\' AND claimed_until = $2 ORDER BY lease_id LIMIT {BATCH}"
            );
            let rows: Vec<LeaseRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(&pattern)
                .bind(claim)
                .fetch_all(self.store.pool())
                .await?;
            let batch: Vec<Lease> = rows
                .into_iter()
                .map(from_row)
                .filter(|l| seen.insert(l.lease_id.clone()))
                .collect();
            if batch.is_empty() {
                break;
            }
            let n = batch.len() as u64;
            let failures = self.revoke_batch(batch).await?;
            failed += failures.len() as u64;
            revoked += n - failures.len() as u64;
        }
        // What other revokers held when we started: wait for their outcome.
        let others: Vec<String> = sqlx::query_as::<_, (String,)>(
            "SELECT lease_id FROM secrets_leases WHERE lease_id LIKE $1 ESCAPE '\\' AND claimed_until > $2 AND claimed_until <> $3",
        )
        .bind(&pattern)
        .bind(now_millis())
        .bind(claim)
        .fetch_all(self.store.pool())
        .await?
        .into_iter()
        .map(|(id,)| id)
        .filter(|id| !seen.contains(id))
        .collect();
        if !others.is_empty() {
            match self.await_revoked(&others).await {
                Ok(()) => revoked += others.len() as u64,
                Err(_) => failed += 1,
            }
        }
        tracing::info!(
            prefix,
            marked = marked.rows_affected(),
            revoked,
            failed,
            "revoke-prefix"
        );
        if failed > 0 {
            return Err(SecretsError::RevocationFailed(format!(
                "{failed} of {} leases under `{prefix}` could not be revoked yet; they stay queued and are retried until they succeed",
                revoked + failed
            )));
        }
        Ok(revoked)
    }

    /// Calls the engines for `leases` (bounded concurrency), deletes the
    /// revoked ones in one statement, and schedules retries for the rest.
    /// Returns the failures.
    async fn revoke_batch(&self, leases: Vec<Lease>) -> Result<Vec<(Lease, String)>, SecretsError> {
        let mut ok: Vec<Lease> = Vec::new();
        let mut failed: Vec<(Lease, String)> = Vec::new();
        let mut pending = leases.into_iter();
        let mut set = tokio::task::JoinSet::new();
        loop {
            while set.len() < CONCURRENCY {
                let Some(lease) = pending.next() else { break };
                let backend = self.backend(&lease.engine);
                set.spawn(async move {
                    let result = match backend {
                        Some(b) => b.revoke(&lease.internal).await,
                        None => Ok(()),
                    };
                    (lease, result)
                });
            }
            let Some(joined) = set.join_next().await else {
                break;
            };
            match joined {
                Ok((lease, Ok(()))) => ok.push(lease),
                Ok((lease, Err(e))) => failed.push((lease, e.to_string())),
                Err(e) => tracing::error!(error = %e, "lease revocation task failed"),
            }
        }
        if !ok.is_empty() {
            let placeholders: Vec<String> = (1..=ok.len()).map(|i| format!("${i}")).collect();
            let sql = format!(
                "DELETE FROM secrets_leases WHERE lease_id IN ({})",
                placeholders.join(", ")
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for l in &ok {
                q = q.bind(&l.lease_id);
            }
            q.execute(self.store.pool()).await?;
            // Recorded concurrently so the audit log commits them in a few
            // grouped transactions instead of one commit per lease.
            let mut events = tokio::task::JoinSet::new();
            for l in &ok {
                let audit = self.audit.clone();
                let event = Event::new(kinds::LEASE_REVOKED, Outcome::Success)
                    .agent(l.identity.clone())
                    .detail("lease_id", l.lease_id.clone())
                    .detail("engine", l.engine.clone());
                events.spawn(async move { audit.record(event).await });
            }
            let mut audit_error = None;
            while let Some(joined) = events.join_next().await {
                match joined {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => audit_error = Some(SecretsError::Audit(e.to_string())),
                    Err(e) => audit_error = Some(SecretsError::Audit(e.to_string())),
                }
            }
            if let Some(e) = audit_error {
                return Err(e);
            }
        }
        let now = now_millis();
        for (l, e) in &failed {
            let attempts = l.attempts.saturating_add(1);
            let backoff = self.backoff(attempts);
            sqlx::query(
                "UPDATE secrets_leases SET attempts = $1, next_attempt_at = $2, last_error = $3, claimed_until = 0 WHERE lease_id = $4",
            )
            .bind(attempts)
            .bind(now.saturating_add(duration_ms(backoff)))
            .bind(e.chars().take(500).collect::<String>())
            .bind(&l.lease_id)
            .execute(self.store.pool())
            .await?;
            tracing::warn!(lease_id = %l.lease_id, attempts, error = %e, "lease revocation failed; retrying later");
            self.record(
                Event::new(kinds::LEASE_REVOKE_FAILED, Outcome::Error)
                    .agent(l.identity.clone())
                    .reason(e.clone())
                    .detail("lease_id", l.lease_id.clone())
                    .detail("attempts", attempts)
                    .detail("retry_in_ms", duration_ms(backoff)),
            )
            .await?;
        }
        Ok(failed)
    }

    fn backoff(&self, attempts: i64) -> Duration {
        let shift = u32::try_from(attempts.saturating_sub(1).clamp(0, 20)).unwrap_or(20);
        self.config
            .retry_backoff
            .saturating_mul(1u32 << shift)
            .min(self.config.max_retry_backoff)
    }

    /// One pass of the expiry worker: marks expired leases and leases of
    /// expired tokens (one statement each), revokes what is due, and purges
    /// expired tokens, used `jti`s and wrapping tokens. Returns how many
    /// leases were revoked.
    pub async fn process_due_revocations(&self) -> Result<u64, SecretsError> {
        let now = now_millis();
        sqlx::query(
            "UPDATE secrets_leases SET revoking = 1 WHERE revoking = 0 AND (expires_at <= $1 \
             OR token_accessor IN (SELECT accessor FROM secrets_tokens WHERE expires_at <= $1))",
        )
        .bind(now)
        .execute(self.store.pool())
        .await?;
        sqlx::query("DELETE FROM secrets_tokens WHERE expires_at <= $1")
            .bind(now)
            .execute(self.store.pool())
            .await?;
        sqlx::query("DELETE FROM secrets_used_jti WHERE expires_at <= $1")
            .bind(now)
            .execute(self.store.pool())
            .await?;
        sqlx::query("DELETE FROM secrets_wrapping WHERE expires_at <= $1")
            .bind(now)
            .execute(self.store.pool())
            .await?;
        let mut revoked = 0u64;
        let mut seen = std::collections::HashSet::new();
        loop {
            // Claim a batch in one statement (the outer condition is
            // re-checked on the row, so two replicas never both claim a
            // lease), then read what this claim holds.
            let claim = claim_mark(now);
            let sql = format!(
                "UPDATE secrets_leases SET claimed_until = $1 \
                 WHERE revoking = 1 AND next_attempt_at <= $2 AND claimed_until <= $2 \
                 AND lease_id IN (SELECT lease_id FROM secrets_leases \
                 WHERE revoking = 1 AND next_attempt_at <= $2 AND claimed_until <= $2 \
                 ORDER BY next_attempt_at, lease_id LIMIT {BATCH})"
            );
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(claim)
                .bind(now)
                .execute(self.store.pool())
                .await?;
            let sql = format!(
                "SELECT {LEASE_COLUMNS} FROM secrets_leases WHERE claimed_until = $1 ORDER BY lease_id"
            );
            let rows: Vec<LeaseRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(claim)
                .fetch_all(self.store.pool())
                .await?;
            let batch: Vec<Lease> = rows
                .into_iter()
                .map(from_row)
                .filter(|l| seen.insert(l.lease_id.clone()))
                .collect();
            if batch.is_empty() {
                break;
            }
            let n = batch.len() as u64;
            let failures = self.revoke_batch(batch).await?;
            revoked += n - failures.len() as u64;
        }
        Ok(revoked)
    }

    /// Runs [`Secrets::process_due_revocations`] now and then every
    /// `expiry_interval` until `stop` resolves.
    pub fn spawn_expiry_worker<F>(self: &Arc<Self>, stop: F) -> tokio::task::JoinHandle<()>
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let this = self.clone();
        tokio::spawn(async move {
            tokio::pin!(stop);
            let mut tick = tokio::time::interval(this.config.expiry_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = &mut stop => break,
                    _ = tick.tick() => {
                        if let Err(e) = this.process_due_revocations().await {
                            tracing::error!(error = %e, "lease expiry pass failed");
                        }
                    }
                }
            }
        })
    }

    /// Leases still queued for revocation, with their attempts and last
    /// error (for operators: nothing is silently dropped).
    pub async fn pending_revocations(&self) -> Result<Vec<Lease>, SecretsError> {
        let sql = format!(
            "SELECT {LEASE_COLUMNS} FROM secrets_leases WHERE revoking = 1 ORDER BY lease_id"
        );
        let rows: Vec<LeaseRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .fetch_all(self.store.pool())
            .await?;
        Ok(rows.into_iter().map(from_row).collect())
    }

    /// Leases waiting for (or retrying) revocation, for metrics and alerts.
    pub async fn revocation_backlog(&self) -> Result<i64, SecretsError> {
        let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM secrets_leases WHERE revoking = 1")
            .fetch_one(self.store.pool())
            .await?;
        Ok(n)
    }

    /// The newest leases, live or being revoked, newest first (at most
    /// `limit`), for the console's read-only view. Callers must not show
    /// `internal` (engine bookkeeping such as database role names).
    pub async fn recent_leases(&self, limit: u32) -> Result<Vec<Lease>, SecretsError> {
        let sql =
            format!("SELECT {LEASE_COLUMNS} FROM secrets_leases ORDER BY issued_at DESC LIMIT $1");
        let rows: Vec<LeaseRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(i64::from(limit))
            .fetch_all(self.store.pool())
            .await?;
        Ok(rows.into_iter().map(from_row).collect())
    }

    /// Live leases per engine (for metrics).
    pub async fn lease_counts(&self) -> Result<HashMap<String, i64>, SecretsError> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT engine, COUNT(*) FROM secrets_leases WHERE revoking = 0 GROUP BY engine",
        )
        .fetch_all(self.store.pool())
        .await?;
        Ok(rows.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_prefix_escapes_wildcards() {
        assert_eq!(like_prefix("a_b%c"), "a\\_b\\%c%");
        assert_eq!(like_prefix("database/creds/"), "database/creds/%");
    }
}
