//! Safety limits on the per-call path: per-agent and per-user rate limits
//! (fixed one-minute windows) and the loop breaker (the same call repeated
//! too often within a window). In memory, per gateway process.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::Limits;

/// Which limit tripped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trip {
    AgentRate { limit: u32 },
    UserRate { limit: u32 },
    Loop { repeats: u32, window: Duration },
}

impl std::fmt::Display for Trip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Trip::AgentRate { limit } => {
                write!(f, "agent rate limit: more than {limit} calls per minute")
            }
            Trip::UserRate { limit } => {
                write!(f, "user rate limit: more than {limit} calls per minute")
            }
            Trip::Loop { repeats, window } => write!(
                f,
                "loop breaker: the same call more than {repeats} times within {}s",
                window.as_secs()
            ),
        }
    }
}

impl Trip {
    /// Short name for events and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Trip::AgentRate { .. } => "agent_rate",
            Trip::UserRate { .. } => "user_rate",
            Trip::Loop { .. } => "loop",
        }
    }
}

#[derive(Debug)]
struct Window {
    start: Instant,
    count: u32,
}

/// Counters, pruned as windows pass.
#[derive(Debug)]
pub struct Limiter {
    limits: Limits,
    loop_window: Duration,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    agents: HashMap<String, Window>,
    users: HashMap<String, Window>,
    calls: HashMap<String, Window>,
    last_prune: Option<Instant>,
}

const RATE_WINDOW: Duration = Duration::from_secs(60);

fn hit(map: &mut HashMap<String, Window>, key: &str, window: Duration, now: Instant) -> u32 {
    match map.get_mut(key) {
        Some(w) if now.duration_since(w.start) < window => {
            w.count = w.count.saturating_add(1);
            w.count
        }
        Some(w) => {
            w.start = now;
            w.count = 1;
            1
        }
        None => {
            map.insert(
                key.to_owned(),
                Window {
                    start: now,
                    count: 1,
                },
            );
            1
        }
    }
}

impl Limiter {
    pub fn new(limits: Limits) -> Self {
        let loop_window = limits.loop_window();
        Self {
            limits,
            loop_window,
            state: Mutex::new(State::default()),
        }
    }

    pub fn max_argument_bytes(&self) -> usize {
        self.limits.max_argument_bytes
    }

    /// Counts one call; `call_key` identifies the exact call (agent, user,
    /// tool, arguments hash).
    pub fn check(&self, agent: &str, user: &str, call_key: &str) -> Result<(), Trip> {
        let now = Instant::now();
        let Ok(mut s) = self.state.lock() else {
            return Ok(());
        };
        if s.last_prune
            .is_none_or(|t| now.duration_since(t) > RATE_WINDOW)
        {
            let keep = |w: &Window, d: Duration| now.duration_since(w.start) < d;
            s.agents.retain(|_, w| keep(w, RATE_WINDOW));
            s.users.retain(|_, w| keep(w, RATE_WINDOW));
            let lw = self.loop_window;
            s.calls.retain(|_, w| keep(w, lw));
            s.last_prune = Some(now);
        }
        if hit(&mut s.agents, agent, RATE_WINDOW, now) > self.limits.agent_calls_per_minute {
            return Err(Trip::AgentRate {
                limit: self.limits.agent_calls_per_minute,
            });
        }
        if hit(&mut s.users, user, RATE_WINDOW, now) > self.limits.user_calls_per_minute {
            return Err(Trip::UserRate {
                limit: self.limits.user_calls_per_minute,
            });
        }
        let window = self.loop_window;
        if hit(&mut s.calls, call_key, window, now) > self.limits.loop_max_repeats {
            return Err(Trip::Loop {
                repeats: self.limits.loop_max_repeats,
                window,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(agent: u32, user: u32, repeats: u32) -> Limits {
        Limits {
            agent_calls_per_minute: agent,
            user_calls_per_minute: user,
            loop_max_repeats: repeats,
            ..Limits::default()
        }
    }

    #[test]
    fn the_loop_breaker_trips_on_the_repeat_after_the_limit_only_for_that_call() {
        let l = Limiter::new(limits(100, 100, 3));
        for _ in 0..3 {
            assert_eq!(l.check("a", "u", "k1"), Ok(()));
        }
        assert!(matches!(
            l.check("a", "u", "k1"),
            Err(Trip::Loop { repeats: 3, .. })
        ));
        assert_eq!(l.check("a", "u", "k2"), Ok(()));
    }

    #[test]
    fn rate_limits_count_per_agent_and_per_user() {
        let l = Limiter::new(limits(2, 3, 100));
        assert_eq!(l.check("a1", "u", "x1"), Ok(()));
        assert_eq!(l.check("a1", "u", "x2"), Ok(()));
        assert_eq!(l.check("a1", "u", "x3"), Err(Trip::AgentRate { limit: 2 }));
        // A call the agent limit refused does not count for the user: a2's
        // first call is the user's third, its second trips the user limit.
        assert_eq!(l.check("a2", "u", "x4"), Ok(()));
        assert_eq!(l.check("a2", "u", "x5"), Err(Trip::UserRate { limit: 3 }));
        assert_eq!(l.check("a3", "v", "x6"), Ok(()));
    }
}
