//! Which tools a caller may see: `tools/list` shows, per agent and user,
//! only the tools the STS's policy in force could allow, and a tool hidden
//! this way answers a `tools/call` exactly like an unknown tool, so an
//! agent learns nothing about tools it may not use.
//!
//! "Could allow" asks the Cedar policy set the STS decides with, with the
//! caller's agent as principal, each action of the tool's RAR detail
//! (rendered from its template with no arguments, read by the STS's RAR
//! registry: type, actions, tier) and the tool's audience as resource,
//! in an ordinary session: low risk, the tier's approvals collected, no
//! step-up, no amount or destination. So a policy naming the agent, the
//! user, the type or the action hides the tool; the facts of one call
//! (amount, destination, the session's risk level, step-up) are decided
//! at the call, with the policy's reason, as before.
//!
//! Tier-4 tools are hidden by tier, not by this check, and their calls
//! still go to the STS to die there with the policy's reason (DESIGN.md:
//! "a blocked call dies at the identity layer"). A tool whose RAR type
//! the STS does not know is hidden: no call of it could be authorized.
//!
//! Verdicts are cached per (agent, user, session) and policy set: an entry
//! is used only while the set it was computed with is still in force
//! (the same `Arc`), and for at most [`TTL`], so a policy on time or on
//! session age shows in listings within that. A full cache is cleared.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keyless_sts::policy::{DecisionInput, LoadedPolicies, PolicyDecision};

/// Longest a cached verdict is used.
pub const TTL: Duration = Duration::from_secs(30);
/// Most (agent, user, session) entries kept.
const MAX_ENTRIES: usize = 4096;

/// Whether a caller may see one tool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolVisibility {
    Visible,
    /// Tier 4: never listed; a call still goes to the STS.
    HiddenByTier,
    /// The policy in force could not allow it for this caller; a call is
    /// answered as for an unknown tool. `reason` is for the audit log only.
    HiddenByPolicy {
        policies: Vec<String>,
        reason: String,
    },
}

/// What is decided for one tool, without the caller.
#[derive(Debug, Clone)]
pub(crate) struct ToolQuestion {
    pub rar_type: String,
    pub actions: Vec<String>,
    pub tier: u8,
    /// The audience its exchanges target.
    pub audience: String,
}

/// Who is asking.
#[derive(Debug, Clone)]
pub(crate) struct Asker<'a> {
    pub agent: &'a str,
    pub user_sub: &'a str,
    pub user_label: &'a str,
    pub session: Option<&'a str>,
    pub session_age_secs: i64,
    pub now: i64,
}

type Key = (String, String, String);

#[derive(Debug)]
struct Entry {
    policies: Arc<LoadedPolicies>,
    computed_at: Instant,
    tools: HashMap<String, ToolVisibility>,
}

/// The per-caller verdict cache.
#[derive(Debug, Default)]
pub(crate) struct VisibilityCache {
    entries: Mutex<HashMap<Key, Entry>>,
}

// === impl VisibilityCache ===

impl VisibilityCache {
    /// The verdict on `tool` for `asker` under `policies`; `question` is
    /// asked (with Cedar) only when no current verdict is cached. `None`
    /// question: the tool's RAR type is not registered at the STS.
    pub(crate) fn verdict(
        &self,
        policies: &Arc<LoadedPolicies>,
        asker: &Asker<'_>,
        tool: &str,
        question: impl FnOnce() -> Option<ToolQuestion>,
    ) -> ToolVisibility {
        let key = (
            asker.agent.to_owned(),
            asker.user_sub.to_owned(),
            asker.session.unwrap_or_default().to_owned(),
        );
        if let Some(v) = self.cached(&key, policies, tool) {
            return v;
        }
        let verdict = match question() {
            Some(q) => decide(policies, asker, &q),
            None => ToolVisibility::HiddenByPolicy {
                policies: Vec::new(),
                reason: format!("tool `{tool}`: its authorization_details type is not registered"),
            },
        };
        let mut entries = match self.entries.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        if entries.len() >= MAX_ENTRIES && !entries.contains_key(&key) {
            entries.clear();
        }
        let entry = entries.entry(key).or_insert_with(|| Entry {
            policies: policies.clone(),
            computed_at: Instant::now(),
            tools: HashMap::new(),
        });
        if !Arc::ptr_eq(&entry.policies, policies) || entry.computed_at.elapsed() >= TTL {
            *entry = Entry {
                policies: policies.clone(),
                computed_at: Instant::now(),
                tools: HashMap::new(),
            };
        }
        entry.tools.insert(tool.to_owned(), verdict.clone());
        verdict
    }

    fn cached(
        &self,
        key: &Key,
        policies: &Arc<LoadedPolicies>,
        tool: &str,
    ) -> Option<ToolVisibility> {
        let entries = match self.entries.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let entry = entries.get(key)?;
        // Holding the Arc keeps the old set alive, so pointer equality
        // cannot be fooled by a new set reusing its address.
        if !Arc::ptr_eq(&entry.policies, policies) || entry.computed_at.elapsed() >= TTL {
            return None;
        }
        entry.tools.get(tool).cloned()
    }
}

/// Asks Cedar about every action of the tool, in an ordinary session.
fn decide(policies: &LoadedPolicies, asker: &Asker<'_>, q: &ToolQuestion) -> ToolVisibility {
    for action in &q.actions {
        let input = DecisionInput {
            agent: asker.agent.to_owned(),
            action: action.clone(),
            resource: q.audience.clone(),
            user: asker.user_label.to_owned(),
            session_age_secs: asker.session_age_secs,
            tier: q.tier,
            rar_type: q.rar_type.clone(),
            amount: None,
            currency: None,
            destination: None,
            risk_level: "low".into(),
            // What the gateway collects before it asks the STS.
            approvals: u32::from((2..=3).contains(&q.tier)),
            step_up: false,
            time: asker.now,
        };
        if let PolicyDecision::Deny { policies, reason } = policies.decide(&input) {
            return ToolVisibility::HiddenByPolicy { policies, reason };
        }
    }
    ToolVisibility::Visible
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn policies(extra: &str) -> Arc<LoadedPolicies> {
        Arc::new(
            LoadedPolicies::parse(
                keyless_sts::policy::DEFAULT_SCHEMA,
                &format!("{}\n{extra}", keyless_sts::policy::DEFAULT_POLICIES),
                "test",
            )
            .unwrap(),
        )
    }

    fn asker(agent: &str) -> Asker<'_> {
        Asker {
            agent,
            user_sub: "u",
            user_label: "alice@example.com",
            session: Some("s"),
            session_age_secs: 10,
            now: 1_700_000_000,
        }
    }

    fn question(action: &str, tier: u8) -> ToolQuestion {
        ToolQuestion {
            rar_type: "directory_write".into(),
            actions: vec![action.into()],
            tier,
            audience: "directory".into(),
        }
    }

    #[test]
    fn a_policy_naming_the_agent_hides_the_tool_for_that_agent_only() {
        let p = policies(
            "@id(\"no-writes-for-bots\")\n@reason(\"bots do not write\")\n\
             forbid (principal == Agent::\"spiffe://td/agent/bot\", action, resource)\n\
             when { context.tier >= 2 };",
        );
        let v = VisibilityCache::default();
        let hidden = v.verdict(&p, &asker("spiffe://td/agent/bot"), "d.create", || {
            Some(question("create", 2))
        });
        assert!(
            matches!(&hidden, ToolVisibility::HiddenByPolicy { policies, .. } if policies == &["no-writes-for-bots"]),
            "{hidden:?}"
        );
        let shown = v.verdict(&p, &asker("spiffe://td/agent/helper"), "d.create", || {
            Some(question("create", 2))
        });
        assert_eq!(shown, ToolVisibility::Visible);
        // A forbidden action (delete_user) is hidden for everyone.
        let v2 = v.verdict(&p, &asker("spiffe://td/agent/helper"), "d.delete", || {
            Some(question("delete_user", 3))
        });
        assert!(
            matches!(v2, ToolVisibility::HiddenByPolicy { .. }),
            "{v2:?}"
        );
    }

    #[test]
    fn verdicts_are_cached_per_policy_set_and_recomputed_after_a_swap() {
        let p1 = policies("");
        let v = VisibilityCache::default();
        let mut asked = 0;
        for _ in 0..3 {
            v.verdict(&p1, &asker("a"), "t", || {
                asked += 1;
                Some(question("create", 2))
            });
        }
        assert_eq!(asked, 1, "the verdict is cached");
        // Another policy set in force: asked again, and its answer holds.
        let p2 =
            policies("@id(\"freeze\")\n@reason(\"frozen\")\nforbid (principal, action, resource);");
        let verdict = v.verdict(&p2, &asker("a"), "t", || {
            asked += 1;
            Some(question("create", 2))
        });
        assert_eq!(asked, 2);
        assert!(matches!(verdict, ToolVisibility::HiddenByPolicy { .. }));
        // An unregistered type is hidden.
        let unknown = v.verdict(&p1, &asker("a"), "u", || None);
        assert!(matches!(unknown, ToolVisibility::HiddenByPolicy { .. }));
    }
}
