//! Human approvals of tool calls (DESIGN.md step 4).
//!
//! - Tier 1 (read) needs none.
//! - Tier 2 (write): the first write of a session waits for the user's
//!   approval, which then covers that session's writes for a while (30
//!   minutes by default, `gateway_session_grants`).
//! - Tier 3 (sensitive): a fresh approval on every call.
//! - Tier 4 (blocked) is never approvable: policy refuses it later.
//!
//! Invariant: an approval is spent at most once. It is bound to the user,
//! the session, the tool and the SHA-256 of the canonical arguments, and
//! every transition (`pending` → `approved`/`denied`/`expired`, `approved` →
//! `used`) is one conditional `UPDATE … WHERE status = …`, so two replicas
//! racing for the same approval cannot both win.

use std::sync::Arc;
use std::time::Duration;

use keyless_audit::{Event, EventSink, Outcome, SinkError};
use keyless_store::sqlx::{self, Row};
use keyless_store::{Store, now_millis};
use tokio::sync::watch;

/// Event: a call waits for the user's approval.
pub const APPROVAL_REQUIRED: &str = "approval.required";
/// Event: a tier-2 call is covered by its session's grant.
pub const APPROVAL_CACHED: &str = "approval.cached";
/// Event: the user approved.
pub const APPROVAL_GRANTED: &str = "approval.granted";
/// Event: the user denied, or the approval timed out.
pub const APPROVAL_DENIED: &str = "approval.denied";

/// How often a waiter re-reads the store (another replica may decide).
const POLL: Duration = Duration::from_millis(250);

const PENDING: &str = "pending";
const APPROVED: &str = "approved";
const DENIED: &str = "denied";
const EXPIRED: &str = "expired";
const USED: &str = "used";

/// Errors of the approvals service.
#[derive(Debug, thiserror::Error)]
pub enum ApprovalError {
    /// The request is malformed (empty binding, bad hash, unknown tier).
    #[error("invalid approval request: {0}")]
    InvalidRequest(String),
    /// Tier 4 tools are never approvable.
    #[error("tool `{0}` is blocked (tier 4) and cannot be approved")]
    Blocked(String),
    /// No such approval, or not the caller's.
    #[error("approval `{0}` not found")]
    NotFound(String),
    /// The approval was already decided.
    #[error("approval `{id}` is already {status}")]
    Conflict { id: String, status: String },
    /// The approval expired before it was decided.
    #[error("approval `{0}` expired")]
    Expired(String),
    /// The user denied the call.
    #[error("approval denied: {reason}")]
    Denied { reason: String },
    /// Nobody decided before the approval expired.
    #[error("approval timed out")]
    TimedOut,
    /// The approval was already spent by another call.
    #[error("approval `{0}` was already used")]
    AlreadyUsed(String),
    /// A stored row cannot be read back.
    #[error("corrupt approval row: {0}")]
    Corrupt(String),
    #[error("approvals database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Audit(#[from] SinkError),
}

/// A tool call that may need the user's approval.
#[derive(Debug, Clone)]
pub struct ApprovalRequest {
    pub user_sub: String,
    pub user_email: Option<String>,
    pub session_id: String,
    /// The agent's SPIFFE ID.
    pub agent: String,
    pub tool: String,
    /// Risk tier, 1 (read) to 4 (blocked).
    pub tier: u8,
    /// SHA-256 (hex) of the call's canonical arguments.
    pub args_sha256: String,
    /// The canonical arguments themselves (the text hashed into
    /// `args_sha256`), shown to the person deciding; checked against the hash.
    pub arguments: Option<String>,
    /// One human line describing the call (`rar_summary`).
    pub summary: String,
    pub correlation_id: Option<String>,
}

/// What [`Approvals::check`] decided for a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gate {
    /// Tier 1: no approval needed.
    NotNeeded,
    /// Tier 2 covered by the session's live grant.
    Cached,
    /// An approval of this exact call was approved and is now spent.
    Granted { approval_id: String },
    /// An approval was created; [`Approvals::wait`] for the decision.
    Pending { approval_id: String },
}

/// A stored approval.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Approval {
    pub id: String,
    pub user_sub: String,
    pub user_email: Option<String>,
    pub session_id: String,
    pub agent: String,
    pub tool: String,
    pub tier: u8,
    pub args_sha256: String,
    /// The call's arguments (absent on approvals stored before they were kept).
    pub arguments: Option<serde_json::Value>,
    pub summary: String,
    /// `pending`, `approved`, `denied`, `expired` or `used`.
    pub status: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub decided_at: Option<i64>,
}

/// The approvals service. Create with [`Approvals::new`].
#[derive(Debug)]
pub struct Approvals {
    store: Store,
    events: Arc<dyn EventSink>,
    timeout: Duration,
    session_grant_ttl: Duration,
    /// Bumped on every decision in this process, to wake waiters at once.
    decided: watch::Sender<u64>,
}

// === impl Approvals ===

impl Approvals {
    /// A service over `store`. `timeout`: how long an approval stays
    /// pending; `session_grant_ttl`: how long a tier-2 approval covers its
    /// session's writes (the binary uses 120 s and 30 min).
    pub fn new(
        store: Store,
        events: Arc<dyn EventSink>,
        timeout: Duration,
        session_grant_ttl: Duration,
    ) -> Self {
        Self {
            store,
            events,
            timeout,
            session_grant_ttl,
            decided: watch::Sender::new(0),
        }
    }

    /// Decides whether `req` may proceed: tier 1 → `NotNeeded`; tier 2 with
    /// a live session grant for (session, user) → `Cached`; an approved,
    /// unused, unexpired approval of the same binding → spent → `Granted`
    /// (a client retrying after the user approved); else a new pending
    /// approval → `Pending`. Tier 4 → [`ApprovalError::Blocked`].
    pub async fn check(&self, req: &ApprovalRequest) -> Result<Gate, ApprovalError> {
        validate(req)?;
        match req.tier {
            1 => return Ok(Gate::NotNeeded),
            4 => return Err(ApprovalError::Blocked(req.tool.clone())),
            _ => {}
        }
        let now = now_millis();
        if req.tier == 2
            && let Some(approval_id) = self
                .session_grant(&req.session_id, &req.user_sub, now)
                .await?
        {
            let mut event = request_event(APPROVAL_CACHED, Outcome::Success, req)
                .detail("approval_id", approval_id);
            event.duration_ms = Some(0.0);
            self.events.record(event).await?;
            return Ok(Gate::Cached);
        }

        let candidates = sqlx::query(
            "SELECT id FROM gateway_approvals WHERE user_sub = $1 AND session_id = $2 \
             AND tool = $3 AND args_sha256 = $4 AND tier = $5 AND status = $6 AND expires_at > $7 \
             ORDER BY created_at",
        )
        .bind(&req.user_sub)
        .bind(&req.session_id)
        .bind(&req.tool)
        .bind(&req.args_sha256)
        .bind(i32::from(req.tier))
        .bind(APPROVED)
        .bind(now)
        .fetch_all(self.store.pool())
        .await?;
        for row in candidates {
            let id: String = row.try_get("id")?;
            if self
                .spend(&id, req.tier, &req.session_id, &req.user_sub)
                .await?
            {
                return Ok(Gate::Granted { approval_id: id });
            }
        }

        let id = uuid::Uuid::new_v4().to_string();
        let expires_at = now.saturating_add(millis(self.timeout));
        sqlx::query(
            "INSERT INTO gateway_approvals (id, user_sub, user_email, session_id, agent, tool, \
             tier, args_sha256, summary, status, created_at, expires_at, arguments) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        )
        .bind(&id)
        .bind(&req.user_sub)
        .bind(&req.user_email)
        .bind(&req.session_id)
        .bind(&req.agent)
        .bind(&req.tool)
        .bind(i32::from(req.tier))
        .bind(&req.args_sha256)
        .bind(&req.summary)
        .bind(PENDING)
        .bind(now)
        .bind(expires_at)
        .bind(&req.arguments)
        .execute(self.store.pool())
        .await?;
        let event = request_event(APPROVAL_REQUIRED, Outcome::Pending, req)
            .detail("approval_id", id.as_str())
            .detail("expires_at", expires_at);
        self.events.record(event).await?;
        Ok(Gate::Pending { approval_id: id })
    }

    /// Waits (bounded by the approval's expiry) for the decision. Approved →
    /// spent (and, for tier 2, the session grant set) → `Ok(())`; denied →
    /// [`ApprovalError::Denied`]; expiry → marked `expired`, event
    /// `approval.denied`, [`ApprovalError::TimedOut`]. Wakes at once on a
    /// decision in this process and re-reads the store every 250 ms.
    pub async fn wait(&self, approval_id: &str) -> Result<(), ApprovalError> {
        let mut decided = self.decided.subscribe();
        loop {
            // Mark seen before reading, so a decision after the read wakes us.
            decided.borrow_and_update();
            let approval = self
                .get(approval_id)
                .await?
                .ok_or_else(|| ApprovalError::NotFound(approval_id.to_owned()))?;
            let now = now_millis();
            match approval.status.as_str() {
                APPROVED => {
                    // Approved in time: the caller picking it up a moment
                    // after the deadline still gets it.
                    if self
                        .spend(
                            &approval.id,
                            approval.tier,
                            &approval.session_id,
                            &approval.user_sub,
                        )
                        .await?
                    {
                        return Ok(());
                    }
                    // Someone else spent it between our read and write.
                    return Err(ApprovalError::AlreadyUsed(approval.id));
                }
                USED => return Err(ApprovalError::AlreadyUsed(approval.id)),
                DENIED => {
                    return Err(ApprovalError::Denied {
                        reason: "denied by the user".into(),
                    });
                }
                EXPIRED => return Err(ApprovalError::TimedOut),
                PENDING if now >= approval.expires_at => {
                    if self.expire(&approval).await? {
                        return Err(ApprovalError::TimedOut);
                    }
                    // Decided just in time: read it again.
                }
                PENDING => {
                    let left = u64::try_from(approval.expires_at.saturating_sub(now)).unwrap_or(0);
                    let nap = POLL.min(Duration::from_millis(left));
                    tokio::select! {
                        _ = decided.changed() => {}
                        () = tokio::time::sleep(nap) => {}
                    }
                }
                other => return Err(ApprovalError::Corrupt(format!("unknown status `{other}`"))),
            }
        }
    }

    /// The bound user decides. Only a `pending`, unexpired approval can be
    /// decided; another user's approval is [`ApprovalError::NotFound`] (its
    /// existence is not revealed); a second decision is
    /// [`ApprovalError::Conflict`]. Events `approval.granted` / `approval.denied`.
    pub async fn decide(
        &self,
        approval_id: &str,
        user_sub: &str,
        approve: bool,
    ) -> Result<Approval, ApprovalError> {
        self.decide_via(approval_id, user_sub, approve, "api").await
    }

    /// [`Approvals::decide`], naming in the event the channel the user
    /// answered on (`api`: `/api/approvals`; `elicitation`: the MCP client).
    pub async fn decide_via(
        &self,
        approval_id: &str,
        user_sub: &str,
        approve: bool,
        via: &'static str,
    ) -> Result<Approval, ApprovalError> {
        let not_found = || ApprovalError::NotFound(approval_id.to_owned());
        // Another user's approval is "not found": its existence is not theirs to know.
        let approval = match self.get(approval_id).await? {
            Some(a) if a.user_sub == user_sub => a,
            _ => return Err(not_found()),
        };
        let now = now_millis();
        if approval.status == PENDING && now >= approval.expires_at {
            self.expire(&approval).await?;
            return Err(ApprovalError::Expired(approval.id));
        }
        let status = if approve { APPROVED } else { DENIED };
        let affected = sqlx::query(
            "UPDATE gateway_approvals SET status = $1, decided_at = $2 \
             WHERE id = $3 AND user_sub = $4 AND status = $5 AND expires_at > $6",
        )
        .bind(status)
        .bind(now)
        .bind(&approval.id)
        .bind(user_sub)
        .bind(PENDING)
        .bind(now)
        .execute(self.store.pool())
        .await?
        .rows_affected();
        if affected != 1 {
            let current = self.get(approval_id).await?.ok_or_else(not_found)?;
            return Err(if current.status == PENDING {
                ApprovalError::Expired(current.id)
            } else {
                ApprovalError::Conflict {
                    id: current.id,
                    status: current.status,
                }
            });
        }
        self.decided.send_modify(|n| *n = n.wrapping_add(1));
        let decided = Approval {
            status: status.to_owned(),
            decided_at: Some(now),
            ..approval
        };
        let event = if approve {
            approval_event(APPROVAL_GRANTED, Outcome::Success, &decided)
        } else {
            approval_event(APPROVAL_DENIED, Outcome::Denied, &decided).reason("denied by the user")
        }
        .detail("via", via);
        self.events.record(event).await?;
        Ok(decided)
    }

    /// The user's unexpired pending approvals, newest first.
    pub async fn pending(&self, user_sub: &str) -> Result<Vec<Approval>, ApprovalError> {
        let rows = sqlx::query(
            "SELECT id, user_sub, user_email, session_id, agent, tool, tier, args_sha256, \
             arguments, summary, status, created_at, expires_at, decided_at FROM gateway_approvals \
             WHERE user_sub = $1 AND status = $2 AND expires_at > $3 \
             ORDER BY created_at DESC, id DESC",
        )
        .bind(user_sub)
        .bind(PENDING)
        .bind(now_millis())
        .fetch_all(self.store.pool())
        .await?;
        rows.iter().map(from_row).collect()
    }

    /// One approval by id.
    pub async fn get(&self, approval_id: &str) -> Result<Option<Approval>, ApprovalError> {
        let row = sqlx::query(
            "SELECT id, user_sub, user_email, session_id, agent, tool, tier, args_sha256, \
             arguments, summary, status, created_at, expires_at, decided_at FROM gateway_approvals \
             WHERE id = $1",
        )
        .bind(approval_id)
        .fetch_optional(self.store.pool())
        .await?;
        row.as_ref().map(from_row).transpose()
    }

    /// Drops the grants of a session (when the session is revoked).
    pub async fn end_session(&self, session_id: &str) -> Result<(), ApprovalError> {
        sqlx::query("DELETE FROM gateway_session_grants WHERE session_id = $1")
            .bind(session_id)
            .execute(self.store.pool())
            .await?;
        Ok(())
    }

    /// The approval id of a live grant of `session_id` to `user_sub`.
    async fn session_grant(
        &self,
        session_id: &str,
        user_sub: &str,
        now: i64,
    ) -> Result<Option<String>, ApprovalError> {
        let row = sqlx::query(
            "SELECT approval_id FROM gateway_session_grants \
             WHERE session_id = $1 AND user_sub = $2 AND expires_at > $3",
        )
        .bind(session_id)
        .bind(user_sub)
        .bind(now)
        .fetch_optional(self.store.pool())
        .await?;
        Ok(row.map(|r| r.try_get("approval_id")).transpose()?)
    }

    /// Spends approved approval `id`; for tier 2 also grants its session.
    /// False when it was not `approved` any more (another call spent it).
    async fn spend(
        &self,
        id: &str,
        tier: u8,
        session_id: &str,
        user_sub: &str,
    ) -> Result<bool, ApprovalError> {
        let now = now_millis();
        let mut tx = self.store.pool().begin().await?;
        let affected = sqlx::query(
            "UPDATE gateway_approvals SET status = $1, used_at = $2 WHERE id = $3 AND status = $4",
        )
        .bind(USED)
        .bind(now)
        .bind(id)
        .bind(APPROVED)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if affected != 1 {
            return Ok(false);
        }
        if tier == 2 {
            sqlx::query(
                "INSERT INTO gateway_session_grants (session_id, user_sub, approval_id, expires_at) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (session_id) DO UPDATE SET \
                 user_sub = excluded.user_sub, approval_id = excluded.approval_id, \
                 expires_at = excluded.expires_at",
            )
            .bind(session_id)
            .bind(user_sub)
            .bind(id)
            .bind(now.saturating_add(millis(self.session_grant_ttl)))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Marks a pending approval past its deadline `expired` and records the
    /// denial. False when it was decided meanwhile.
    async fn expire(&self, approval: &Approval) -> Result<bool, ApprovalError> {
        let now = now_millis();
        let affected = sqlx::query(
            "UPDATE gateway_approvals SET status = $1, decided_at = $2 \
             WHERE id = $3 AND status = $4",
        )
        .bind(EXPIRED)
        .bind(now)
        .bind(&approval.id)
        .bind(PENDING)
        .execute(self.store.pool())
        .await?
        .rows_affected();
        if affected != 1 {
            return Ok(false);
        }
        self.decided.send_modify(|n| *n = n.wrapping_add(1));
        let event =
            approval_event(APPROVAL_DENIED, Outcome::Denied, approval).reason("approval timed out");
        self.events.record(event).await?;
        Ok(true)
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn validate(req: &ApprovalRequest) -> Result<(), ApprovalError> {
    let invalid = |m: &str| Err(ApprovalError::InvalidRequest(m.to_owned()));
    if !(1..=4).contains(&req.tier) {
        return Err(ApprovalError::InvalidRequest(format!(
            "unknown tier `{}`",
            req.tier
        )));
    }
    if req.user_sub.is_empty() {
        return invalid("empty user");
    }
    if req.session_id.is_empty() {
        return invalid("empty session");
    }
    if req.tool.is_empty() {
        return invalid("empty tool");
    }
    let hex_sha256 = req.args_sha256.len() == 64
        && req
            .args_sha256
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !hex_sha256 {
        return invalid("`args_sha256` is not a lowercase hex SHA-256");
    }
    // What the person sees must be what they approve.
    if let Some(args) = &req.arguments
        && hex::encode(aws_lc_rs::digest::digest(
            &aws_lc_rs::digest::SHA256,
            args.as_bytes(),
        )) != req.args_sha256
    {
        return invalid("the arguments do not match `args_sha256`");
    }
    Ok(())
}

/// An event about a call, before any approval row exists for it.
fn request_event(kind: &str, outcome: Outcome, req: &ApprovalRequest) -> Event {
    let mut event = Event::new(kind, outcome)
        .user(req.user_email.as_deref().unwrap_or(&req.user_sub))
        .agent(&req.agent)
        .session(&req.session_id)
        .tool(&req.tool)
        .detail("args_sha256", req.args_sha256.as_str());
    event.tier = Some(req.tier);
    event.rar_summary = Some(req.summary.clone());
    event.correlation_id = req.correlation_id.clone();
    event
}

/// An event about a stored approval.
fn approval_event(kind: &str, outcome: Outcome, a: &Approval) -> Event {
    let mut event = Event::new(kind, outcome)
        .user(a.user_email.as_deref().unwrap_or(&a.user_sub))
        .agent(&a.agent)
        .session(&a.session_id)
        .tool(&a.tool)
        .detail("approval_id", a.id.as_str())
        .detail("args_sha256", a.args_sha256.as_str());
    event.tier = Some(a.tier);
    event.rar_summary = Some(a.summary.clone());
    event
}

fn from_row(r: &sqlx::any::AnyRow) -> Result<Approval, ApprovalError> {
    let tier: i32 = r.try_get("tier")?;
    let tier = u8::try_from(tier).map_err(|_| ApprovalError::Corrupt(format!("tier `{tier}`")))?;
    Ok(Approval {
        id: r.try_get("id")?,
        user_sub: r.try_get("user_sub")?,
        user_email: r.try_get("user_email")?,
        session_id: r.try_get("session_id")?,
        agent: r.try_get("agent")?,
        tool: r.try_get("tool")?,
        tier,
        args_sha256: r.try_get("args_sha256")?,
        arguments: r
            .try_get::<Option<String>, _>("arguments")?
            .and_then(|t| serde_json::from_str(&t).ok()),
        summary: r.try_get("summary")?,
        status: r.try_get("status")?,
        created_at: r.try_get("created_at")?,
        expires_at: r.try_get("expires_at")?,
        decided_at: r.try_get("decided_at")?,
    })
}
