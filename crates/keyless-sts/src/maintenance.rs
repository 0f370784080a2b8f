//! Scheduled upkeep of the STS, run by one background task per process:
//! signing-key rotation when the active key reaches
//! [`StsConfig::signing_key_lifetime`](crate::StsConfig), removal of
//! retired keys once every token they can have signed has expired, and the
//! purges of consumed token ids and expired sign-in rows.
//!
//! Every decision reads the store, not the process's memory: a key's age is
//! its `created_at` row, and a retired key's retirement time is its
//! successor's `created_at`. So restarts do not reset the schedule, and
//! replicas sharing a database agree (two replicas racing to rotate insert
//! the same generation once; deleting an already deleted key is a no-op).
//! A failing step is logged and the others still run: a store hiccup must
//! not stop the purges for good.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use keyless_audit::{Event, Outcome};
use keyless_store::now_millis;
use keyless_store::sqlx::{self, Row};

use crate::token::KeyState;
use crate::{Sts, StsError};

/// Event type of a retired signing key leaving the JWKS.
pub const STS_KEY_REMOVED: &str = "sts_key.removed";
/// Margin (ms) kept beyond the longest token lifetime before a retired key
/// is removed, for tokens minted while the rotation committed.
const REMOVAL_MARGIN_MS: i64 = 60_000;

/// What one maintenance pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MaintenanceReport {
    /// Whether a new signing key generation was made active.
    pub rotated: bool,
    /// Generations of retired keys removed from the JWKS and key manager.
    pub removed_keys: Vec<i64>,
    /// Consumed token ids purged.
    pub purged_consumed: u64,
    /// Expired codes, refresh tokens and access-token records purged.
    pub purged_signin: u64,
    /// Errors of steps that failed (the other steps still ran).
    pub errors: Vec<String>,
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

// === impl Sts ===

impl Sts {
    /// Runs [`Sts::run_maintenance`] every `maintenance_interval` until
    /// `shutdown` resolves. The first pass runs at once (a key that aged
    /// past its lifetime while the fabric was down rotates at start).
    pub fn spawn_maintenance(
        self: &Arc<Self>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> tokio::task::JoinHandle<()> {
        let sts = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(sts.config.maintenance_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tokio::pin!(shutdown);
            loop {
                tokio::select! {
                    () = &mut shutdown => break,
                    _ = tick.tick() => {}
                }
                // A pass is short; finishing it at shutdown is cheaper than
                // reasoning about a half-done rotation.
                let report = sts.run_maintenance().await;
                for e in &report.errors {
                    tracing::error!(error = %e, "sts maintenance step failed");
                }
                if report.rotated || !report.removed_keys.is_empty() {
                    tracing::info!(
                        rotated = report.rotated,
                        removed = ?report.removed_keys,
                        "sts signing keys maintained"
                    );
                }
                if report.purged_consumed + report.purged_signin > 0 {
                    tracing::debug!(
                        consumed = report.purged_consumed,
                        signin = report.purged_signin,
                        "sts purges"
                    );
                }
            }
        })
    }

    /// One maintenance pass now.
    pub async fn run_maintenance(&self) -> MaintenanceReport {
        self.run_maintenance_at(now_millis()).await
    }

    /// One maintenance pass as if the time were `now_ms` (Unix ms) for the
    /// key schedule (the purges always use the real clock). Lets tests and
    /// operators check the schedule without waiting a day.
    pub async fn run_maintenance_at(&self, now_ms: i64) -> MaintenanceReport {
        let mut report = MaintenanceReport::default();
        match self.rotate_if_due(now_ms).await {
            Ok(rotated) => report.rotated = rotated,
            Err(e) => report.errors.push(format!("signing key rotation: {e}")),
        }
        // A key retired by this very pass is never removable yet; the
        // others wait for the next pass (and `now_ms` need not agree with
        // the `created_at` the rotation just stored).
        if !report.rotated {
            match self.remove_expired_keys(now_ms).await {
                Ok(removed) => report.removed_keys = removed,
                Err(e) => report.errors.push(format!("retired key removal: {e}")),
            }
        }
        match self.purge_consumed().await {
            Ok(n) => report.purged_consumed = n,
            Err(e) => report.errors.push(format!("purging consumed ids: {e}")),
        }
        match self.purge_expired_signin().await {
            Ok(n) => report.purged_signin = n,
            Err(e) => report.errors.push(format!("purging sign-in rows: {e}")),
        }
        report
    }

    /// Rotates when the newest active key is older than its lifetime (or
    /// when there is none).
    async fn rotate_if_due(&self, now_ms: i64) -> Result<bool, StsError> {
        let row = sqlx::query(
            "SELECT created_at FROM sts_signing_keys WHERE state = $1 \
             ORDER BY generation DESC LIMIT 1",
        )
        .bind(KeyState::Active.as_str())
        .fetch_optional(self.store.pool())
        .await?;
        let created: Option<i64> = row.map(|r| r.try_get("created_at")).transpose()?;
        let due = match created {
            None => true,
            Some(c) => now_ms.saturating_sub(c) >= millis(self.config.signing_key_lifetime),
        };
        if due {
            self.rotate_signing_key().await?;
        }
        Ok(due)
    }

    /// Removes retired keys whose successor has been active longer than
    /// any token lives: nothing they signed can still verify.
    async fn remove_expired_keys(&self, now_ms: i64) -> Result<Vec<i64>, StsError> {
        let rows = sqlx::query(
            "SELECT generation, key_name, state, created_at FROM sts_signing_keys ORDER BY generation",
        )
        .fetch_all(self.store.pool())
        .await?;
        let mut keys = Vec::with_capacity(rows.len());
        for r in &rows {
            keys.push((
                r.try_get::<i64, _>("generation")?,
                r.try_get::<String, _>("key_name")?,
                r.try_get::<String, _>("state")?,
                r.try_get::<i64, _>("created_at")?,
            ));
        }
        let keep_ms =
            millis(self.config.max_signed_token_lifetime()).saturating_add(REMOVAL_MARGIN_MS);
        let mut removed = Vec::new();
        for (i, (generation, key_name, state, _)) in keys.iter().enumerate() {
            if state != KeyState::Retired.as_str() {
                continue;
            }
            // Retired when the next generation was created; a retired key
            // without a successor (should not happen) is kept.
            let Some((_, _, _, retired_at)) = keys.get(i + 1) else {
                continue;
            };
            if now_ms.saturating_sub(*retired_at) < keep_ms {
                continue;
            }
            let deleted =
                sqlx::query("DELETE FROM sts_signing_keys WHERE generation = $1 AND state = $2")
                    .bind(*generation)
                    .bind(KeyState::Retired.as_str())
                    .execute(self.store.pool())
                    .await?
                    .rows_affected();
            // The row goes first: a key manager entry without a row is
            // inert, a row without its key would still be published.
            self.keys.delete(key_name).await?;
            if deleted == 1 {
                self.events
                    .record(
                        Event::new(STS_KEY_REMOVED, Outcome::Success)
                            .detail("generation", *generation)
                            .detail("reason", "every token it signed has expired"),
                    )
                    .await?;
                removed.push(*generation);
            }
        }
        if !removed.is_empty() {
            self.reload_keys().await?;
        }
        Ok(removed)
    }
}
