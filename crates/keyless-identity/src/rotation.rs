//! When to prepare, activate and prune authorities: a pure function of the
//! current authorities and the clock, shared by the X.509 CA and the JWT keys
//! and unit-tested without waiting.
//!
//! The schedule (SPIRE's, which SPIFFE clients are tuned for): the next
//! authority is *prepared* at half the active one's life and published in the
//! bundle at once, so relying parties learn it well before it signs anything;
//! it is *activated* when one sixth of the active one's life remains; the old
//! one is *retired* and stays in the bundle until its `not_after`, because
//! every SVID it signed was capped at that instant, and is then *pruned*
//! (row and keys deleted).

use crate::ca::AuthorityState;

/// What the planner needs to know about one authority.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Lifecycle {
    pub generation: i64,
    pub state: AuthorityState,
    /// Unix ms.
    pub not_before: i64,
    pub not_after: i64,
}

/// Which authority to activate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Target {
    Existing(i64),
    /// The one this plan prepares.
    New,
}

/// Why an authority is being activated (recorded in the event).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    /// There was no usable active authority (first start, or it expired).
    Bootstrap,
    Scheduled,
    Forced,
}

impl Reason {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Bootstrap => "bootstrap",
            Self::Scheduled => "scheduled",
            Self::Forced => "forced",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Plan {
    /// Create a new authority in the prepared state.
    pub prepare: bool,
    pub activate: Option<(Target, Reason)>,
    /// Generations to delete with their keys.
    pub prune: Vec<i64>,
    /// Unix ms when the planner next has something to do, if ever.
    pub wake_at: Option<i64>,
}

// === impl Plan ===

impl Plan {
    /// Nothing to prepare, activate or prune.
    pub(crate) fn is_noop(&self) -> bool {
        !self.prepare && self.activate.is_none() && self.prune.is_empty()
    }
}

fn life(a: &Lifecycle) -> i64 {
    a.not_after.saturating_sub(a.not_before).max(0)
}

/// Plans the next step at `now` (Unix ms). `force` rotates immediately: a
/// new authority is prepared and activated now, and any prepared-but-unused
/// one is dropped (it never signed anything).
pub(crate) fn plan(authorities: &[Lifecycle], now: i64, force: bool) -> Plan {
    let live = |s: AuthorityState| {
        authorities
            .iter()
            .filter(move |a| a.state == s && a.not_after > now)
            .max_by_key(|a| a.generation)
    };
    let active = live(AuthorityState::Active);
    let prepared = live(AuthorityState::Prepared);

    let mut plan = Plan::default();
    for a in authorities {
        let expired = a.not_after <= now;
        let unused_prepared = force && a.state == AuthorityState::Prepared;
        if (expired && a.state != AuthorityState::Active) || unused_prepared {
            plan.prune.push(a.generation);
        }
    }

    let mut wake = Vec::new();
    if force {
        plan.prepare = true;
        plan.activate = Some((Target::New, Reason::Forced));
    } else {
        match (active, prepared) {
            (None, Some(p)) => {
                plan.activate = Some((Target::Existing(p.generation), Reason::Bootstrap))
            }
            (None, None) => {
                plan.prepare = true;
                plan.activate = Some((Target::New, Reason::Bootstrap));
            }
            (Some(a), p) => {
                let half = a.not_before.saturating_add(life(a) / 2);
                let activate_at = a.not_after.saturating_sub(life(a) / 6);
                if p.is_none() {
                    if now >= half {
                        plan.prepare = true;
                    } else {
                        wake.push(half);
                    }
                }
                if now >= activate_at {
                    let target = match p {
                        Some(p) => Target::Existing(p.generation),
                        // Missed the half-life window (process was down):
                        // prepare and activate at once.
                        None => Target::New,
                    };
                    plan.prepare = plan.prepare || p.is_none();
                    plan.activate = Some((target, Reason::Scheduled));
                } else {
                    wake.push(activate_at);
                }
            }
        }
    }
    // Retired (and expired active) authorities are pruned once expired.
    for a in authorities {
        if a.not_after > now && a.state != AuthorityState::Prepared {
            wake.push(a.not_after);
        }
    }
    plan.wake_at = wake.into_iter().min();
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use AuthorityState::*;

    fn a(generation: i64, state: AuthorityState, nb: i64, na: i64) -> Lifecycle {
        Lifecycle {
            generation,
            state,
            not_before: nb,
            not_after: na,
        }
    }

    #[test]
    fn first_start_prepares_and_activates() {
        let p = plan(&[], 0, false);
        assert!(p.prepare);
        assert_eq!(p.activate, Some((Target::New, Reason::Bootstrap)));
    }

    #[test]
    fn young_authority_sleeps_until_half_life() {
        let p = plan(&[a(1, Active, 0, 600)], 100, false);
        assert!(!p.prepare);
        assert_eq!(p.activate, None);
        assert_eq!(p.wake_at, Some(300));
    }

    #[test]
    fn next_is_prepared_at_half_life_and_activated_at_one_sixth_remaining() {
        let p = plan(&[a(1, Active, 0, 600)], 300, false);
        assert!(p.prepare);
        assert_eq!(p.activate, None);
        assert_eq!(p.wake_at, Some(500));

        let both = [a(1, Active, 0, 600), a(2, Prepared, 300, 900)];
        let p = plan(&both, 499, false);
        assert!(!p.prepare);
        assert_eq!(p.activate, None);
        let p = plan(&both, 500, false);
        assert!(!p.prepare);
        assert_eq!(p.activate, Some((Target::Existing(2), Reason::Scheduled)));
    }

    #[test]
    fn retired_authority_is_pruned_only_after_expiry() {
        let s = [a(1, Retired, 0, 600), a(2, Active, 300, 900)];
        let p = plan(&s, 599, false);
        assert!(p.prune.is_empty());
        assert_eq!(p.wake_at, Some(600));
        let p = plan(&s, 600, false);
        assert_eq!(p.prune, vec![1]);
    }

    #[test]
    fn missed_half_life_window_prepares_and_activates_at_once() {
        let p = plan(&[a(1, Active, 0, 600)], 550, false);
        assert!(p.prepare);
        assert_eq!(p.activate, Some((Target::New, Reason::Scheduled)));
    }

    #[test]
    fn expired_active_is_replaced() {
        let p = plan(&[a(1, Active, 0, 600)], 700, false);
        assert!(p.prepare);
        assert_eq!(p.activate, Some((Target::New, Reason::Bootstrap)));
        // The expired active one is retired by the activation, pruned next time.
        assert!(p.prune.is_empty());
    }

    #[test]
    fn forced_rotation_drops_unused_prepared() {
        let s = [a(1, Active, 0, 600), a(2, Prepared, 300, 900)];
        let p = plan(&s, 400, true);
        assert!(p.prepare);
        assert_eq!(p.activate, Some((Target::New, Reason::Forced)));
        assert_eq!(p.prune, vec![2]);
    }
}
