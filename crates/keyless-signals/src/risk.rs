//! The W1–W5 risk ladder (DESIGN.md step 9).
//!
//! The gateway and the STS report every tool call as an [`Observation`].
//! Detectors compare it with what this user normally does (a baseline
//! learned from their own successful history) and with what happened to the
//! call (policy denial, loop breaker). Each firing detector adds its weight
//! to the session's score, which decays exponentially; the level is the
//! highest threshold the score reached:
//!
//! | level | name | effect (performed by the caller) |
//! |---|---|---|
//! | W1 | caution | an inline warning in the tool result |
//! | W2 | step-up | re-authentication, CAEP `credential-change` |
//! | W3 | high risk | CAEP `risk-level-change` to `HIGH` |
//! | W4 | restricted | the STS issues no new token for the subject; a review item is opened |
//! | W5 | kill switch | CAEP `session-revoked` to every receiver |
//!
//! The engine only decides; whoever calls it sends the events and revokes.
//!
//! Invariants: a session's level never goes down (it ratchets; a resolved
//! review lifts the subject's restriction, not the session's level), and a
//! session opens at most one review, the first time it reaches W4.
//!
//! Levels and open reviews are kept in memory so that
//! [`RiskEngine::session_level`] and [`RiskEngine::subject_restricted`] are
//! synchronous (the STS asks on every token); every change of a level, a
//! score or a review is written through to the store (`risk_sessions`,
//! `risk_reviews`) and reloaded by [`RiskEngine::open`]. A clean session is
//! remembered as clean after its first call, so clean calls read nothing.
//! What successful calls teach (`risk_baselines`) is gathered in memory and
//! written behind every [`BASELINE_FLUSH`] in one transaction, so a clean
//! call writes nothing either; reads add the pending part.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use keyless_store::sqlx::{self, Row};
use keyless_store::{Store, now_millis};
use serde::{Deserialize, Serialize};

/// W1: inline caution.
pub const W1_CAUTION: u8 = 1;
/// W2: step-up (re-authenticate, credential-change event).
pub const W2_STEP_UP: u8 = 2;
/// W3: high risk (risk-level-change `HIGH`).
pub const W3_HIGH_RISK: u8 = 3;
/// W4: restricted (no new token for the subject, review opened).
pub const W4_RESTRICTED: u8 = 4;
/// W5: kill switch (session revoked everywhere).
pub const W5_KILL_SWITCH: u8 = 5;

/// Two scores this close count as equal when compared with a threshold, so
/// that weights such as 0.1 + 0.2 reach a threshold of 0.3.
const EPSILON: f64 = 1e-9;

const KIND_AMOUNT: &str = "amount";
const KIND_DESTINATION: &str = "destination";
const KIND_TOOL: &str = "tool";

/// Errors of the risk engine.
#[derive(Debug, thiserror::Error)]
pub enum RiskError {
    /// The configuration is inconsistent (thresholds, weights, durations).
    #[error("invalid risk configuration: {0}")]
    InvalidConfig(String),
    /// No review with this id.
    #[error("risk review `{0}` not found")]
    NotFound(String),
    /// The review was resolved before.
    #[error("risk review `{0}` is already resolved")]
    AlreadyResolved(String),
    /// A stored row cannot be read back.
    #[error("corrupt risk row: {0}")]
    Corrupt(String),
    #[error("risk database error: {0}")]
    Database(#[from] sqlx::Error),
}

/// An anomaly detector; the names (snake case) are the keys of
/// [`RiskConfig::weights`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Detector {
    /// An amount far above the user's usual amount in that currency.
    AmountAboveBaseline,
    /// A payee or external destination the user never used.
    NewDestination,
    /// An admin tool the user never used.
    NewAdminTool,
    /// A call touching another user's data.
    OtherUsersData,
    /// The policy denied the call.
    PolicyDenied,
    /// The gateway's loop breaker tripped.
    LoopBreaker,
}

// === impl Detector ===

impl Detector {
    /// Every detector, in a stable order.
    pub const ALL: [Detector; 6] = [
        Detector::AmountAboveBaseline,
        Detector::NewDestination,
        Detector::NewAdminTool,
        Detector::OtherUsersData,
        Detector::PolicyDenied,
        Detector::LoopBreaker,
    ];

    /// The snake-case name used in configuration and events.
    pub fn as_str(self) -> &'static str {
        match self {
            Detector::AmountAboveBaseline => "amount_above_baseline",
            Detector::NewDestination => "new_destination",
            Detector::NewAdminTool => "new_admin_tool",
            Detector::OtherUsersData => "other_users_data",
            Detector::PolicyDenied => "policy_denied",
            Detector::LoopBreaker => "loop_breaker",
        }
    }
}

impl std::fmt::Display for Detector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the anomalies of one call add to the session's score.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Combine {
    /// The heaviest anomaly of the call.
    Max,
    /// Every anomaly of the call.
    Sum,
}

/// Thresholds, decay and detector weights of the ladder. Deserializes from
/// TOML (every field optional, unknown fields refused), e.g.
///
/// ```toml
/// thresholds = [1, 2, 3, 4, 5]
/// half_life = "15m"
/// hold = "5m"
/// [weights]
/// new_destination = 0.5
/// loop_breaker = 0   # disabled
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RiskConfig {
    /// Score needed for W1..W5, strictly increasing; default `[1, 2, 3, 4, 5]`.
    pub thresholds: [f64; 5],
    /// Half-life of the score's exponential decay (humantime in TOML);
    /// default 15 min.
    #[serde(with = "duration_text")]
    pub half_life: Duration,
    /// How long after the last anomaly the score holds before it starts to
    /// decay (humantime in TOML); default 5 min. Without it, five anomalies
    /// seconds apart would add up to 4.99 and miss W5; with it, a burst counts
    /// in full while anomalies an hour apart still fade away.
    #[serde(with = "duration_text")]
    pub hold: Duration,
    /// Weight of each detector; a missing detector weighs 1.0 and 0 disables it.
    pub weights: BTreeMap<Detector, f64>,
    /// How the detectors that fire on one call combine: `max` (default: a
    /// call adds its heaviest anomaly, so each anomalous call is one step
    /// of the ladder) or `sum` (every anomaly of the call counts).
    pub combine: Combine,
    /// An amount is anomalous when above `amount_factor` × the user's mean
    /// amount in that currency; default 3.0.
    pub amount_factor: f64,
    /// How many amounts in a currency the user needs before the baseline
    /// applies; default 3.
    pub min_history: u64,
    /// Before that: amounts above this are anomalous; default 1000.
    pub first_amount_limit: f64,
    /// At most this many sessions are kept in memory (oldest evicted; they
    /// are reloaded from the store on their next assessment); default 100 000.
    pub max_sessions: usize,
}

impl Default for RiskConfig {
    fn default() -> Self {
        Self {
            thresholds: [1.0, 2.0, 3.0, 4.0, 5.0],
            half_life: Duration::from_secs(15 * 60),
            hold: Duration::from_secs(5 * 60),
            weights: Detector::ALL.iter().map(|d| (*d, 1.0)).collect(),
            combine: Combine::Max,
            amount_factor: 3.0,
            min_history: 3,
            first_amount_limit: 1000.0,
            max_sessions: 100_000,
        }
    }
}

// === impl RiskConfig ===

impl RiskConfig {
    /// The weight of `detector` (1.0 when not configured).
    pub fn weight(&self, detector: Detector) -> f64 {
        self.weights.get(&detector).copied().unwrap_or(1.0)
    }

    /// Checks that the configuration makes sense: thresholds positive and
    /// strictly increasing, weights finite and not negative, a non-zero
    /// half-life, a positive amount factor and session cap.
    pub fn validate(&self) -> Result<(), RiskError> {
        let invalid = |m: String| Err(RiskError::InvalidConfig(m));
        let mut previous = 0.0;
        for (i, t) in self.thresholds.iter().enumerate() {
            if !t.is_finite() || *t <= previous {
                return invalid(format!(
                    "thresholds must be positive and strictly increasing, W{} is `{t}`",
                    i.saturating_add(1)
                ));
            }
            previous = *t;
        }
        if self.half_life.is_zero() {
            return invalid("half_life must be greater than zero".into());
        }
        for (d, w) in &self.weights {
            if !w.is_finite() || *w < 0.0 {
                return invalid(format!("weight of `{d}` must be 0 or more, not `{w}`"));
            }
        }
        if !self.amount_factor.is_finite() || self.amount_factor <= 0.0 {
            return invalid(format!(
                "amount_factor must be positive, not `{}`",
                self.amount_factor
            ));
        }
        if !self.first_amount_limit.is_finite() || self.first_amount_limit < 0.0 {
            return invalid(format!(
                "first_amount_limit must be 0 or more, not `{}`",
                self.first_amount_limit
            ));
        }
        if self.max_sessions == 0 {
            return invalid("max_sessions must be at least 1".into());
        }
        Ok(())
    }

    /// The level (0..=5) a score reaches.
    fn level_for(&self, score: f64) -> u8 {
        let mut level = 0;
        for (t, l) in self.thresholds.iter().zip(1u8..) {
            if score + EPSILON >= *t {
                level = l;
            }
        }
        level
    }

    /// `score` as of `from`, decayed to `now` (both Unix ms).
    fn decay(&self, score: f64, from: i64, now: i64) -> f64 {
        let elapsed = now.saturating_sub(from).saturating_sub(millis(self.hold));
        if elapsed <= 0 {
            return score;
        }
        let half_life = self.half_life.as_secs_f64() * 1000.0;
        score * 0.5f64.powf(elapsed as f64 / half_life)
    }
}

/// What happened to a call, besides its content.
#[derive(Debug, Clone, PartialEq)]
pub enum ObservationKind {
    /// A call that went through (or is about to).
    Call,
    /// The policy refused the call.
    PolicyDenied { reason: String },
    /// The gateway's loop breaker stopped the call.
    LoopBreaker,
}

/// One tool call as the gateway or the STS saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    pub user_sub: String,
    pub user_email: Option<String>,
    pub session_id: String,
    pub tool: String,
    /// The tool or RAR is an admin action (e.g. `directory_admin`).
    pub admin: bool,
    /// `(amount, currency)` moved by the call, if any.
    pub amount: Option<(f64, String)>,
    /// Payee or external destination, if any.
    pub destination: Option<String>,
    /// Whose data (email) the call touches, if known.
    pub target_user: Option<String>,
    pub kind: ObservationKind,
}

// === impl Observation ===

impl Observation {
    /// A plain [`ObservationKind::Call`] of `tool` with nothing else known;
    /// fill in the other fields as needed.
    pub fn call(
        user_sub: impl Into<String>,
        session_id: impl Into<String>,
        tool: impl Into<String>,
    ) -> Self {
        Self {
            user_sub: user_sub.into(),
            user_email: None,
            session_id: session_id.into(),
            tool: tool.into(),
            admin: false,
            amount: None,
            destination: None,
            target_user: None,
            kind: ObservationKind::Call,
        }
    }

    /// How the user is named in anomaly details: their email, else their sub.
    fn who(&self) -> &str {
        self.user_email.as_deref().unwrap_or(&self.user_sub)
    }
}

/// A detector that fired.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Anomaly {
    pub detector: Detector,
    /// One human line, e.g. "amount 9500 USD is 38× alice@example.com's usual 250 USD".
    pub detail: String,
}

/// The PostgreSQL channel on which replicas announce level and restriction
/// changes to each other.
pub const CHANNEL: &str = "keyless_risk_changes";

/// A human review item: the ladder restricted a subject (W4) and someone
/// must look at it. The subject stays restricted while it is open.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Review {
    pub id: String,
    pub user_sub: String,
    pub session_id: String,
    /// The level the session had reached (4 or 5).
    pub level: u8,
    /// The anomalies that crossed the threshold, one per line.
    pub reason: String,
    /// Unix ms.
    pub created_at: i64,
    /// Unix ms; `None` while open.
    pub resolved_at: Option<i64>,
}

/// The outcome of [`RiskEngine::assess`].
#[derive(Debug, Clone, PartialEq)]
pub struct Assessment {
    /// The detectors that fired on this call.
    pub anomalies: Vec<Anomaly>,
    /// The session's decayed score after this call.
    pub score: f64,
    /// The session's level after this call (0 = none, 1..=5 = W1..W5).
    pub level: u8,
    /// The session's level before this call.
    pub previous_level: u8,
    /// The review this call opened (the session reached W4 for the first time).
    pub review: Option<Review>,
}

// === impl Assessment ===

impl Assessment {
    /// The call raised the session's level: the caller performs the effects
    /// of every level in `previous_level + 1 ..= level`.
    pub fn escalated(&self) -> bool {
        self.level > self.previous_level
    }
}

/// A session's ladder state. `score` is as of `updated_at` (Unix ms), the
/// time of the last anomaly.
#[derive(Debug, Clone)]
struct SessionState {
    user_sub: String,
    score: f64,
    level: u8,
    updated_at: i64,
    /// Last assessment (memory only): eviction drops the least recently used.
    touched: i64,
}

#[derive(Debug, Default)]
struct State {
    sessions: HashMap<String, SessionState>,
    /// Subject → ids of its open reviews.
    restricted: HashMap<String, BTreeSet<String>>,
}

/// The risk ladder. Create with [`RiskEngine::open`]; share the `Arc`.
#[derive(Debug)]
pub struct RiskEngine {
    store: Store,
    config: RiskConfig,
    state: Mutex<State>,
    /// What successful calls taught since the last write to
    /// `risk_baselines`: (user, kind, item) → increment. Written behind
    /// (`flush_baselines`, every [`BASELINE_FLUSH`]) so that a clean call
    /// costs no write; reads add it to what is stored.
    pending: Mutex<HashMap<BaselineKey, BaselineDelta>>,
}

type BaselineKey = (String, &'static str, String);

/// An increment of one baseline row.
#[derive(Debug, Clone, Copy, Default)]
struct BaselineDelta {
    count: i64,
    total: f64,
    largest: f64,
    updated_at: i64,
}

impl BaselineDelta {
    fn add(&mut self, other: &BaselineDelta) {
        self.count += other.count;
        self.total += other.total;
        self.largest = self.largest.max(other.largest);
        self.updated_at = self.updated_at.max(other.updated_at);
    }
}

/// How often learned baselines are written to the store. A crash loses at
/// most this much learning: the baseline then knows a little less of the
/// user, which makes detectors fire more, not less.
pub const BASELINE_FLUSH: Duration = Duration::from_millis(500);
/// Pending baseline rows that make a learning call write at once.
const MAX_PENDING_BASELINES: usize = 4096;

// === impl RiskEngine ===

impl RiskEngine {
    /// Validates `config` and loads the sessions' levels (the newest
    /// `max_sessions`) and the open reviews from `store`.
    pub async fn open(store: Store, config: RiskConfig) -> Result<Arc<Self>, RiskError> {
        config.validate()?;
        let mut state = State::default();
        let limit = i64::try_from(config.max_sessions).unwrap_or(i64::MAX);
        let rows = sqlx::query(
            "SELECT session_id, user_sub, score, level, updated_at FROM risk_sessions \
             ORDER BY updated_at DESC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(store.pool())
        .await?;
        for row in &rows {
            let id: String = row.try_get("session_id")?;
            state.sessions.insert(id, session_from_row(row)?);
        }
        let rows = sqlx::query(
            "SELECT id, user_sub FROM risk_reviews WHERE resolved_at = 0 AND level >= $1",
        )
        .bind(i32::from(W4_RESTRICTED))
        .fetch_all(store.pool())
        .await?;
        for row in &rows {
            let id: String = row.try_get("id")?;
            let user_sub: String = row.try_get("user_sub")?;
            state.restricted.entry(user_sub).or_default().insert(id);
        }
        let engine = Arc::new(Self {
            store,
            config,
            state: Mutex::new(state),
            pending: Mutex::default(),
        });
        tokio::spawn(write_behind(Arc::downgrade(&engine)));
        Ok(engine)
    }

    /// Writes the baselines learned since the last write, in one
    /// transaction. On failure they stay pending for the next try. Called
    /// every [`BASELINE_FLUSH`] and at shutdown.
    pub async fn flush_baselines(&self) -> Result<(), RiskError> {
        let batch = std::mem::take(&mut *self.pending_lock());
        if batch.is_empty() {
            return Ok(());
        }
        let result = self.write_baselines(&batch).await;
        if result.is_err() {
            let mut pending = self.pending_lock();
            for (k, d) in batch {
                pending.entry(k).or_default().add(&d);
            }
        }
        result
    }

    async fn write_baselines(
        &self,
        batch: &HashMap<BaselineKey, BaselineDelta>,
    ) -> Result<(), RiskError> {
        let mut tx = self.store.pool().begin().await?;
        for ((user_sub, kind, item), d) in batch {
            sqlx::query(
                "INSERT INTO risk_baselines (user_sub, kind, item, count, total, largest, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) \
                 ON CONFLICT (user_sub, kind, item) DO UPDATE SET \
                 count = risk_baselines.count + excluded.count, \
                 total = risk_baselines.total + excluded.total, \
                 largest = CASE WHEN excluded.largest > risk_baselines.largest \
                 THEN excluded.largest ELSE risk_baselines.largest END, \
                 updated_at = excluded.updated_at",
            )
            .bind(user_sub)
            .bind(*kind)
            .bind(item)
            .bind(d.count)
            .bind(d.total)
            .bind(d.largest)
            .bind(d.updated_at)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    fn pending_lock(&self) -> MutexGuard<'_, HashMap<BaselineKey, BaselineDelta>> {
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The configuration in force.
    pub fn config(&self) -> &RiskConfig {
        &self.config
    }

    /// Assesses one call now; see [`RiskEngine::assess_at`].
    pub async fn assess(&self, obs: &Observation) -> Result<Assessment, RiskError> {
        self.assess_at(obs, now_millis()).await
    }

    /// Assesses one call at `now_ms` (Unix ms; tests and replays pass their
    /// own clock). Runs the detectors against the baseline as it is before
    /// this call, adds the weights of those that fired (their sum or their
    /// maximum, [`RiskConfig::combine`]) to the session's
    /// decayed score, ratchets the level up to the highest threshold reached
    /// and writes the session through to the store. The first time a session
    /// reaches W4, a review is opened and the subject is restricted.
    pub async fn assess_at(&self, obs: &Observation, now_ms: i64) -> Result<Assessment, RiskError> {
        let anomalies = self.detect(obs).await?;
        let weights = anomalies.iter().map(|a| self.config.weight(a.detector));
        let added: f64 = match self.config.combine {
            Combine::Sum => weights.sum(),
            Combine::Max => weights.fold(0.0, f64::max),
        };

        // Another replica, or an eviction, may have left the session only in
        // the store.
        let known = self.lock().sessions.contains_key(&obs.session_id);
        let stored = if known {
            None
        } else {
            self.load_session(&obs.session_id).await?
        };

        let (assessment, persist) = {
            let mut state = self.lock();
            let config = &self.config;
            let session = match state.sessions.entry(obs.session_id.clone()) {
                Entry::Occupied(e) => e.into_mut(),
                Entry::Vacant(e) => match stored {
                    Some(s) => e.insert(s),
                    // A clean call of a clean session: remembered as clean,
                    // so its next calls need no read of the store.
                    None if anomalies.is_empty() => {
                        e.insert(SessionState {
                            user_sub: obs.user_sub.clone(),
                            score: 0.0,
                            level: 0,
                            updated_at: now_ms,
                            touched: now_ms,
                        });
                        evict(&mut state.sessions, config.max_sessions);
                        return Ok(Assessment {
                            anomalies,
                            score: 0.0,
                            level: 0,
                            previous_level: 0,
                            review: None,
                        });
                    }
                    None => e.insert(SessionState {
                        user_sub: obs.user_sub.clone(),
                        score: 0.0,
                        level: 0,
                        updated_at: now_ms,
                        touched: now_ms,
                    }),
                },
            };
            session.touched = session.touched.max(now_ms);
            let previous_level = session.level;
            let mut score = config.decay(session.score, session.updated_at, now_ms);
            let persist = if anomalies.is_empty() {
                None
            } else {
                score += added;
                session.score = score;
                session.updated_at = now_ms.max(session.updated_at);
                session.level = session.level.max(config.level_for(score));
                Some(session.clone())
            };
            let level = session.level;
            let user_sub = session.user_sub.clone();
            let review =
                (previous_level < W4_RESTRICTED && level >= W4_RESTRICTED).then(|| Review {
                    id: uuid::Uuid::new_v4().to_string(),
                    user_sub,
                    session_id: obs.session_id.clone(),
                    level,
                    reason: anomalies
                        .iter()
                        .map(|a| a.detail.as_str())
                        .collect::<Vec<_>>()
                        .join("\n"),
                    created_at: now_ms,
                    resolved_at: None,
                });
            if let Some(r) = &review {
                state
                    .restricted
                    .entry(r.user_sub.clone())
                    .or_default()
                    .insert(r.id.clone());
            }
            evict(&mut state.sessions, config.max_sessions);
            let assessment = Assessment {
                anomalies,
                score,
                level,
                previous_level,
                review,
            };
            (assessment, persist)
        };

        if let Some(session) = persist {
            self.save_session(&obs.session_id, &session).await?;
            if assessment.escalated() {
                self.announce(&serde_json::json!({ "session": obs.session_id }))
                    .await;
            }
        }
        if let Some(review) = &assessment.review {
            self.insert_review(review).await?;
            self.announce(&serde_json::json!({ "user": review.user_sub }))
                .await;
        } else if assessment.level == W5_KILL_SWITCH && assessment.escalated() {
            // The review opened at W4 should show how far the session went.
            sqlx::query(
                "UPDATE risk_reviews SET level = $1 \
                 WHERE session_id = $2 AND resolved_at = 0 AND level < $1",
            )
            .bind(i32::from(W5_KILL_SWITCH))
            .bind(&obs.session_id)
            .execute(self.store.pool())
            .await?;
        }
        Ok(assessment)
    }

    /// Learns from a call that succeeded now; see [`RiskEngine::learn_at`].
    pub async fn learn(&self, obs: &Observation) -> Result<(), RiskError> {
        self.learn_at(obs, now_millis()).await
    }

    /// Learns from a call that succeeded at `now_ms`: its amount (count,
    /// total and largest per currency), destination and tool join the user's
    /// baseline. Only [`ObservationKind::Call`] teaches anything: a denied
    /// call is not what the user normally does.
    pub async fn learn_at(&self, obs: &Observation, now_ms: i64) -> Result<(), RiskError> {
        if obs.kind != ObservationKind::Call {
            return Ok(());
        }
        if let Some((amount, currency)) = &obs.amount
            && amount.is_finite()
        {
            self.add_baseline(
                &obs.user_sub,
                KIND_AMOUNT,
                &currency_key(currency),
                *amount,
                now_ms,
            )
            .await?;
        }
        if let Some(destination) = &obs.destination {
            self.add_baseline(
                &obs.user_sub,
                KIND_DESTINATION,
                &destination_key(destination),
                0.0,
                now_ms,
            )
            .await?;
        }
        self.add_baseline(&obs.user_sub, KIND_TOOL, &obs.tool, 0.0, now_ms)
            .await
    }

    /// The session's level from memory (0 when unknown): the STS's hot path.
    pub fn session_level(&self, session_id: &str) -> u8 {
        self.lock().sessions.get(session_id).map_or(0, |s| s.level)
    }

    /// Whether the subject has an open review at W4 or above: the STS then
    /// issues no new token for it.
    pub fn subject_restricted(&self, user_sub: &str) -> bool {
        self.lock()
            .restricted
            .get(user_sub)
            .is_some_and(|ids| !ids.is_empty())
    }

    /// Review items, newest first; only the open ones with `open_only`.
    pub async fn reviews(&self, open_only: bool) -> Result<Vec<Review>, RiskError> {
        let sql = if open_only {
            "SELECT id, user_sub, session_id, level, reason, created_at, resolved_at \
             FROM risk_reviews WHERE resolved_at = 0 ORDER BY created_at DESC, id"
        } else {
            "SELECT id, user_sub, session_id, level, reason, created_at, resolved_at \
             FROM risk_reviews ORDER BY created_at DESC, id"
        };
        let rows = sqlx::query(sql).fetch_all(self.store.pool()).await?;
        rows.iter().map(review_from_row).collect()
    }

    /// Resolves an open review: the subject's restriction is lifted (unless
    /// another review of it is open); the session keeps its level.
    pub async fn resolve_review(&self, id: &str) -> Result<Review, RiskError> {
        let now = now_millis();
        let affected = sqlx::query(
            "UPDATE risk_reviews SET resolved_at = $1 WHERE id = $2 AND resolved_at = 0",
        )
        .bind(now)
        .bind(id)
        .execute(self.store.pool())
        .await?
        .rows_affected();
        let review = self
            .review(id)
            .await?
            .ok_or_else(|| RiskError::NotFound(id.to_owned()))?;
        if affected != 1 {
            return Err(RiskError::AlreadyResolved(id.to_owned()));
        }
        {
            let mut state = self.lock();
            if let Some(ids) = state.restricted.get_mut(&review.user_sub) {
                ids.remove(id);
                if ids.is_empty() {
                    state.restricted.remove(&review.user_sub);
                }
            }
        }
        self.announce(&serde_json::json!({ "user": review.user_sub }))
            .await;
        Ok(review)
    }

    // --- replicas (PostgreSQL) ---

    /// Tells the other replicas sharing the database that a session's level
    /// or a subject's restriction changed; they reload it from the store
    /// (the payload names it, it is never trusted as data). Nothing on
    /// SQLite; a failed notification is logged (the others catch up when
    /// they next assess the session, or at restart).
    async fn announce(&self, what: &serde_json::Value) {
        if let Err(e) = self.store.notify(CHANNEL, &what.to_string()).await {
            tracing::warn!(error = %e, "risk: notifying the other replicas failed");
        }
    }

    /// Follows the other replicas' changes (PostgreSQL): each notification
    /// reloads the named session or subject from the store, so a W2/W3
    /// level or a W4 restriction bites on every replica at once. Returns
    /// `None` on SQLite. Ends when the engine is dropped.
    pub fn spawn_listener(self: &Arc<Self>) -> Option<tokio::task::JoinHandle<()>> {
        if self.store.dialect() != keyless_store::Dialect::Postgres {
            return None;
        }
        let weak = Arc::downgrade(self);
        Some(tokio::spawn(async move {
            let mut backoff = std::time::Duration::from_millis(100);
            loop {
                let Some(store) = weak.upgrade().map(|e| e.store.clone()) else {
                    return;
                };
                match store.listen(CHANNEL).await {
                    Ok(Some(mut listener)) => {
                        backoff = std::time::Duration::from_millis(100);
                        // Changes missed while disconnected: reload everything.
                        if let Some(e) = weak.upgrade()
                            && let Err(err) = e.reload_all().await
                        {
                            tracing::warn!(error = %err, "risk: reloading after reconnect failed");
                        }
                        loop {
                            let next = tokio::time::timeout(
                                std::time::Duration::from_secs(5),
                                listener.recv(),
                            )
                            .await;
                            match next {
                                Ok(Ok(n)) => {
                                    let Some(e) = weak.upgrade() else { return };
                                    if let Err(err) = e.reload_named(n.payload()).await {
                                        tracing::warn!(error = %err, "risk: applying a replica's change failed");
                                    }
                                }
                                Ok(Err(err)) => {
                                    tracing::warn!(error = %err, "risk listener lost its connection");
                                    break;
                                }
                                Err(_) => {
                                    if weak.strong_count() == 0 {
                                        return;
                                    }
                                }
                            }
                        }
                    }
                    Ok(None) => return,
                    Err(err) => tracing::warn!(error = %err, "risk listener cannot connect"),
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(std::time::Duration::from_secs(10));
            }
        }))
    }

    async fn reload_named(&self, payload: &str) -> Result<(), RiskError> {
        let v: serde_json::Value = serde_json::from_str(payload).unwrap_or_default();
        if let Some(sid) = v.get("session").and_then(serde_json::Value::as_str) {
            let row = sqlx::query(
                "SELECT session_id, user_sub, score, level, updated_at FROM risk_sessions \
                 WHERE session_id = $1",
            )
            .bind(sid)
            .fetch_optional(self.store.pool())
            .await?;
            if let Some(row) = row {
                let fresh = session_from_row(&row)?;
                let mut state = self.lock();
                let max = self.config.max_sessions;
                match state.sessions.get_mut(sid) {
                    Some(s) => {
                        s.level = s.level.max(fresh.level);
                        if fresh.updated_at > s.updated_at {
                            s.score = fresh.score;
                            s.updated_at = fresh.updated_at;
                        }
                    }
                    None => {
                        state.sessions.insert(sid.to_owned(), fresh);
                        evict(&mut state.sessions, max);
                    }
                }
            }
        }
        if let Some(user) = v.get("user").and_then(serde_json::Value::as_str) {
            let rows = sqlx::query(
                "SELECT id FROM risk_reviews WHERE user_sub = $1 AND resolved_at = 0 AND level >= $2",
            )
            .bind(user)
            .bind(i32::from(W4_RESTRICTED))
            .fetch_all(self.store.pool())
            .await?;
            let ids: BTreeSet<String> = rows
                .iter()
                .map(|r| r.try_get::<String, _>("id"))
                .collect::<Result<_, _>>()?;
            let mut state = self.lock();
            if ids.is_empty() {
                state.restricted.remove(user);
            } else {
                state.restricted.insert(user.to_owned(), ids);
            }
        }
        Ok(())
    }

    /// Reloads the sessions' levels and every open review's restriction
    /// (after a listener (re)connect: changes may have been missed).
    async fn reload_all(&self) -> Result<(), RiskError> {
        let limit = i64::try_from(self.config.max_sessions).unwrap_or(i64::MAX);
        let rows = sqlx::query(
            "SELECT session_id, user_sub, score, level, updated_at FROM risk_sessions \
             WHERE level > 0 ORDER BY updated_at DESC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(self.store.pool())
        .await?;
        {
            let mut state = self.lock();
            for row in &rows {
                let sid: String = row.try_get("session_id")?;
                let fresh = session_from_row(row)?;
                match state.sessions.get_mut(&sid) {
                    Some(s) => s.level = s.level.max(fresh.level),
                    None => {
                        state.sessions.insert(sid, fresh);
                    }
                }
            }
            let max = self.config.max_sessions;
            evict(&mut state.sessions, max);
        }
        let rows = sqlx::query(
            "SELECT id, user_sub FROM risk_reviews WHERE resolved_at = 0 AND level >= $1",
        )
        .bind(i32::from(W4_RESTRICTED))
        .fetch_all(self.store.pool())
        .await?;
        let mut restricted: HashMap<String, BTreeSet<String>> = HashMap::new();
        for row in &rows {
            restricted
                .entry(row.try_get("user_sub")?)
                .or_default()
                .insert(row.try_get("id")?);
        }
        self.lock().restricted = restricted;
        Ok(())
    }

    /// Runs every enabled detector against the baseline as it is now.
    async fn detect(&self, obs: &Observation) -> Result<Vec<Anomaly>, RiskError> {
        let enabled = |d: Detector| self.config.weight(d) > 0.0;
        let mut anomalies = Vec::new();
        let mut fire = |detector, detail| anomalies.push(Anomaly { detector, detail });

        if enabled(Detector::AmountAboveBaseline)
            && let Some((amount, currency)) = &obs.amount
            && amount.is_finite()
        {
            let currency = currency_key(currency);
            let (count, total) = self
                .baseline(&obs.user_sub, KIND_AMOUNT, &currency)
                .await?
                .unwrap_or((0, 0.0));
            let count = u64::try_from(count).unwrap_or(0);
            if count >= self.config.min_history && count > 0 {
                let mean = total / count as f64;
                if *amount > self.config.amount_factor * mean {
                    let ratio = if mean > 0.0 {
                        format!("{}×", number(amount / mean))
                    } else {
                        "far above".to_owned()
                    };
                    fire(
                        Detector::AmountAboveBaseline,
                        format!(
                            "amount {} {currency} is {ratio} {}'s usual {} {currency}",
                            number(*amount),
                            obs.who(),
                            number(mean),
                        ),
                    );
                }
            } else if *amount > self.config.first_amount_limit {
                fire(
                    Detector::AmountAboveBaseline,
                    format!(
                        "amount {} {currency} is above {} {currency}, the limit while {} has \
                         fewer than {} {currency} amounts on record",
                        number(*amount),
                        number(self.config.first_amount_limit),
                        obs.who(),
                        self.config.min_history,
                    ),
                );
            }
        }

        if enabled(Detector::NewDestination)
            && let Some(destination) = &obs.destination
            && self
                .baseline(
                    &obs.user_sub,
                    KIND_DESTINATION,
                    &destination_key(destination),
                )
                .await?
                .is_none()
        {
            fire(
                Detector::NewDestination,
                format!(
                    "new destination `{destination}`: {} never sent anything there",
                    obs.who()
                ),
            );
        }

        if enabled(Detector::NewAdminTool)
            && obs.admin
            && self
                .baseline(&obs.user_sub, KIND_TOOL, &obs.tool)
                .await?
                .is_none()
        {
            fire(
                Detector::NewAdminTool,
                format!(
                    "admin tool `{}` never used by {} before",
                    obs.tool,
                    obs.who()
                ),
            );
        }

        // Without a known email, the sub is the best name of the caller.
        if enabled(Detector::OtherUsersData)
            && let Some(target) = &obs.target_user
            && !target.trim().eq_ignore_ascii_case(obs.who().trim())
        {
            fire(
                Detector::OtherUsersData,
                format!(
                    "`{}` touches {target}'s data on behalf of {}",
                    obs.tool,
                    obs.who()
                ),
            );
        }

        match &obs.kind {
            ObservationKind::Call => {}
            ObservationKind::PolicyDenied { reason } => {
                if enabled(Detector::PolicyDenied) {
                    fire(
                        Detector::PolicyDenied,
                        format!("policy denied `{}`: {reason}", obs.tool),
                    );
                }
            }
            ObservationKind::LoopBreaker => {
                if enabled(Detector::LoopBreaker) {
                    fire(
                        Detector::LoopBreaker,
                        format!("loop breaker stopped repeated calls of `{}`", obs.tool),
                    );
                }
            }
        }
        Ok(anomalies)
    }

    /// `(count, total)` of a baseline item, if the user has one.
    async fn baseline(
        &self,
        user_sub: &str,
        kind: &'static str,
        item: &str,
    ) -> Result<Option<(i64, f64)>, RiskError> {
        let row = sqlx::query(
            "SELECT count, total FROM risk_baselines WHERE user_sub = $1 AND kind = $2 AND item = $3",
        )
        .bind(user_sub)
        .bind(kind)
        .bind(item)
        .fetch_optional(self.store.reader())
        .await?;
        let stored: Option<(i64, f64)> = row
            .map(|r| Ok::<_, RiskError>((r.try_get("count")?, r.try_get("total")?)))
            .transpose()?;
        // Pending is read after the row, so an increment is never counted
        // twice. One being written by a flush at this very moment is in
        // neither for this call: a detector may fire once more, the safe side.
        let pending = self
            .pending_lock()
            .get(&(user_sub.to_owned(), kind, item.to_owned()))
            .copied();
        Ok(match (stored, pending) {
            (None, None) => None,
            (s, p) => {
                let (c, t) = s.unwrap_or((0, 0.0));
                let p = p.unwrap_or_default();
                Some((c + p.count, t + p.total))
            }
        })
    }

    async fn add_baseline(
        &self,
        user_sub: &str,
        kind: &'static str,
        item: &str,
        value: f64,
        now_ms: i64,
    ) -> Result<(), RiskError> {
        let full = {
            let mut pending = self.pending_lock();
            pending
                .entry((user_sub.to_owned(), kind, item.to_owned()))
                .or_default()
                .add(&BaselineDelta {
                    count: 1,
                    total: value,
                    largest: value,
                    updated_at: now_ms,
                });
            pending.len() >= MAX_PENDING_BASELINES
        };
        if full {
            self.flush_baselines().await?;
        }
        Ok(())
    }

    async fn load_session(&self, session_id: &str) -> Result<Option<SessionState>, RiskError> {
        let row = sqlx::query(
            "SELECT user_sub, score, level, updated_at FROM risk_sessions WHERE session_id = $1",
        )
        .bind(session_id)
        .fetch_optional(self.store.pool())
        .await?;
        row.as_ref().map(session_from_row).transpose()
    }

    /// Writes a session through. Two assessments of one session may finish
    /// out of order: the newer score wins and the level only goes up.
    async fn save_session(&self, session_id: &str, s: &SessionState) -> Result<(), RiskError> {
        sqlx::query(
            "INSERT INTO risk_sessions (session_id, user_sub, score, level, updated_at) \
             VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (session_id) DO UPDATE SET \
             score = CASE WHEN excluded.updated_at >= risk_sessions.updated_at \
             THEN excluded.score ELSE risk_sessions.score END, \
             level = CASE WHEN excluded.level > risk_sessions.level \
             THEN excluded.level ELSE risk_sessions.level END, \
             updated_at = CASE WHEN excluded.updated_at > risk_sessions.updated_at \
             THEN excluded.updated_at ELSE risk_sessions.updated_at END",
        )
        .bind(session_id)
        .bind(&s.user_sub)
        .bind(s.score)
        .bind(i32::from(s.level))
        .bind(s.updated_at)
        .execute(self.store.pool())
        .await?;
        Ok(())
    }

    async fn insert_review(&self, r: &Review) -> Result<(), RiskError> {
        sqlx::query(
            "INSERT INTO risk_reviews (id, user_sub, session_id, level, reason, created_at, \
             resolved_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&r.id)
        .bind(&r.user_sub)
        .bind(&r.session_id)
        .bind(i32::from(r.level))
        .bind(&r.reason)
        .bind(r.created_at)
        .bind(0_i64)
        .execute(self.store.pool())
        .await?;
        Ok(())
    }

    async fn review(&self, id: &str) -> Result<Option<Review>, RiskError> {
        let row = sqlx::query(
            "SELECT id, user_sub, session_id, level, reason, created_at, resolved_at \
             FROM risk_reviews WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(self.store.pool())
        .await?;
        row.as_ref().map(review_from_row).transpose()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent even if a holder panicked: every
        // critical section only inserts or removes whole entries.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Writes learned baselines every [`BASELINE_FLUSH`] while the engine
/// lives.
async fn write_behind(engine: std::sync::Weak<RiskEngine>) {
    loop {
        tokio::time::sleep(BASELINE_FLUSH).await;
        let Some(e) = engine.upgrade() else { return };
        if let Err(err) = e.flush_baselines().await {
            tracing::warn!(error = %err, "risk: writing learned baselines failed; retrying");
        }
    }
}

/// Drops the least recently assessed sessions once there are more than
/// `max`, a tenth of `max` at a time so the sort is paid rarely.
fn evict(sessions: &mut HashMap<String, SessionState>, max: usize) {
    if sessions.len() <= max {
        return;
    }
    let keep = max.saturating_sub(max / 10).max(1);
    let mut by_age: Vec<(i64, String)> = sessions
        .iter()
        .map(|(id, s)| (s.touched, id.clone()))
        .collect();
    by_age.sort_unstable();
    let drop = sessions.len().saturating_sub(keep);
    for (_, id) in by_age.into_iter().take(drop) {
        sessions.remove(&id);
    }
}

fn session_from_row(r: &sqlx::any::AnyRow) -> Result<SessionState, RiskError> {
    let updated_at = r.try_get("updated_at")?;
    Ok(SessionState {
        user_sub: r.try_get("user_sub")?,
        score: r.try_get("score")?,
        level: level_from_row(r)?,
        updated_at,
        touched: updated_at,
    })
}

fn review_from_row(r: &sqlx::any::AnyRow) -> Result<Review, RiskError> {
    let resolved_at: i64 = r.try_get("resolved_at")?;
    Ok(Review {
        id: r.try_get("id")?,
        user_sub: r.try_get("user_sub")?,
        session_id: r.try_get("session_id")?,
        level: level_from_row(r)?,
        reason: r.try_get("reason")?,
        created_at: r.try_get("created_at")?,
        resolved_at: (resolved_at != 0).then_some(resolved_at),
    })
}

fn level_from_row(r: &sqlx::any::AnyRow) -> Result<u8, RiskError> {
    let level: i32 = r.try_get("level")?;
    u8::try_from(level)
        .ok()
        .filter(|l| *l <= W5_KILL_SWITCH)
        .ok_or_else(|| RiskError::Corrupt(format!("level `{level}`")))
}

/// Currencies compare case-insensitively (`usd` is `USD`).
fn currency_key(currency: &str) -> String {
    currency.trim().to_ascii_uppercase()
}

/// Destinations (accounts, emails, hosts) compare case-insensitively.
fn destination_key(destination: &str) -> String {
    destination.trim().to_lowercase()
}

/// A number for humans: at most two decimals, none when whole.
fn number(x: f64) -> String {
    let rounded = (x * 100.0).round() / 100.0;
    format!("{rounded}")
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Durations as humantime text (`"15m"`) in configuration files.
mod duration_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(text.trim()).map_err(|e| {
            D::Error::custom(format!(
                "invalid duration `{text}`: {e} (use e.g. 30s, 15m, 1h)"
            ))
        })
    }
}
