//! The risk gate: how the W1–W5 warning ladder (kept by the signals crate,
//! which the STS must not depend on) reaches issuance. The binary installs
//! an implementation with [`Sts::set_risk_gate`]; without one every
//! session is at level 0 and nobody is restricted.
//!
//! What each rung does here:
//! - W2 (level 2, step-up): the session's refresh tokens stop working, so
//!   the user signs in again; the exchange's `risk_level` is at least
//!   `medium`.
//! - W3 (level 3, high risk): the exchange's `risk_level` is `high`, which
//!   the default policy answers with "reads only unless stepped up".
//! - W4 (restricted subject): no token exchange and no refresh for the user
//!   at all. Signing in is never blocked: re-authenticating is the step-up.
//! - W5 (session revoked) needs nothing here: it ends the session through
//!   [`Sts::revoke_user_sessions`].

use std::sync::Arc;

use crate::Sts;

/// The risk ladder as the STS sees it. Implementations answer from memory
/// (the calls sit on the token path) and must not block.
pub trait RiskGate: Send + Sync + std::fmt::Debug {
    /// The ladder level (0 none, 1 W1 … 5 W5) of session `sid`.
    fn session_level(&self, sid: &str) -> u8;
    /// Whether the user `user_sub` (a subject id) is restricted (W4): no new
    /// tokens until a human has reviewed.
    fn subject_restricted(&self, user_sub: &str) -> bool;
}

/// Level from which a session's refresh tokens are refused (W2).
pub(crate) const STEP_UP_LEVEL: u8 = 2;
/// Level from which a session counts as high risk (W3).
pub(crate) const HIGH_RISK_LEVEL: u8 = 3;

/// The reason a restricted subject's exchange is refused with.
pub(crate) const RESTRICTED_REASON: &str =
    "risk ladder W4: the subject is restricted pending human review";

/// The Cedar `risk_level` a ladder level implies, if any.
fn level_label(level: u8) -> Option<&'static str> {
    match level {
        l if l >= HIGH_RISK_LEVEL => Some("high"),
        STEP_UP_LEVEL => Some("medium"),
        _ => None,
    }
}

fn rank(label: &str) -> u8 {
    match label {
        "high" => 2,
        "medium" => 1,
        _ => 0,
    }
}

/// The higher of the caller's `risk_level` and the one the session's
/// ladder level implies.
pub(crate) fn effective_risk_level(caller: &str, session_level: u8) -> String {
    match level_label(session_level) {
        Some(label) if rank(label) > rank(caller) => label.to_owned(),
        _ => caller.to_owned(),
    }
}

// === impl Sts ===

impl Sts {
    /// Installs (or replaces) the risk gate consulted by the token exchange
    /// and the refresh grant.
    pub fn set_risk_gate(&self, gate: Arc<dyn RiskGate>) {
        match self.risk_gate.write() {
            Ok(mut g) => *g = Some(gate),
            Err(poisoned) => *poisoned.into_inner() = Some(gate),
        }
    }

    fn risk_gate(&self) -> Option<Arc<dyn RiskGate>> {
        match self.risk_gate.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The ladder level of session `sid` (0 without a gate or a session).
    pub(crate) fn session_risk_level(&self, sid: Option<&str>) -> u8 {
        match (self.risk_gate(), sid) {
            (Some(gate), Some(sid)) => gate.session_level(sid),
            _ => 0,
        }
    }

    /// Whether user `user_sub` is restricted (W4).
    pub(crate) fn subject_restricted(&self, user_sub: &str) -> bool {
        self.risk_gate()
            .is_some_and(|gate| gate.subject_restricted(user_sub))
    }
}

#[cfg(test)]
mod tests {
    use super::effective_risk_level;

    #[test]
    fn the_session_level_only_ever_raises_the_callers_risk() {
        for (caller, level, want) in [
            ("low", 0, "low"),
            ("low", 1, "low"),
            ("low", 2, "medium"),
            ("low", 3, "high"),
            ("low", 5, "high"),
            ("medium", 2, "medium"),
            ("high", 2, "high"),
            ("high", 0, "high"),
            ("medium", 4, "high"),
        ] {
            assert_eq!(
                effective_risk_level(caller, level),
                want,
                "{caller} {level}"
            );
        }
    }
}
