//! Cedar policy at issuance: the schema, the policy set in force, and the
//! decision for one (agent, action, target, context).
//!
//! The set in force is an immutable snapshot behind an `Arc`, swapped
//! atomically: a request is decided entirely by one set, and a reload that
//! fails to parse or validate (strictly, against the schema) is refused
//! while the previous set stays in force. Every policy must carry a unique
//! `@id`, and every `forbid` a `@reason`: a denial must be explainable.
//!
//! Requests are not validated against the schema (an agent may name an
//! action no policy mentions: that is a default deny, not an error), so
//! [`DecisionInput`] always fills every context field the schema declares,
//! and any evaluation error denies (Cedar skips an erroring forbid, which
//! would otherwise fail open).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use cedar_policy::{
    Authorizer, Context, Decision, Effect, Entities, EntityId, EntityTypeName, EntityUid, PolicyId,
    PolicySet, Request, RestrictedExpression, Schema, ValidationMode, Validator,
};

use keyless_audit::{Event, EventSink, Outcome};

use crate::StsError;

/// The embedded default schema (`policies/schema.cedarschema`).
pub const DEFAULT_SCHEMA: &str = include_str!("../policies/schema.cedarschema");
/// The embedded default policies (`policies/default.cedar`).
pub const DEFAULT_POLICIES: &str = include_str!("../policies/default.cedar");
/// The schema file a policy directory may carry; without it the embedded
/// schema applies.
pub const SCHEMA_FILE: &str = "schema.cedarschema";
/// Event type of a policy set put in force by the watcher.
pub const POLICY_RELOADED: &str = "policy.reloaded";
/// Event type of a policy change refused (the previous set stays in force).
pub const POLICY_RELOAD_REFUSED: &str = "policy.reload_refused";

/// Everything a decision looks at.
#[derive(Debug, Clone, PartialEq)]
pub struct DecisionInput {
    /// The agent's SPIFFE ID.
    pub agent: String,
    pub action: String,
    /// The target resource server's audience.
    pub resource: String,
    pub user: String,
    pub session_age_secs: i64,
    pub tier: u8,
    pub rar_type: String,
    pub amount: Option<f64>,
    pub currency: Option<String>,
    pub destination: Option<String>,
    pub risk_level: String,
    pub approvals: u32,
    pub step_up: bool,
    /// Unix seconds.
    pub time: i64,
}

/// The outcome of a decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyDecision {
    /// `policies`: the permit policies that matched.
    Allow { policies: Vec<String> },
    /// `policies`: the forbid policies that matched (empty for a default
    /// deny); `reason`: "<id>: <@reason>" for each, or "no permit policy matched".
    Deny {
        policies: Vec<String>,
        reason: String,
    },
}

/// One parsed and validated policy set with its schema.
#[derive(Debug)]
pub struct LoadedPolicies {
    schema: Schema,
    policies: PolicySet,
    /// The policy ids, sorted, for diagnostics.
    pub ids: Vec<String>,
    /// Where it came from (`embedded` or the directory).
    pub source: String,
}

fn invalid(msg: impl Into<String>) -> StsError {
    StsError::InvalidPolicy(msg.into())
}

/// Amounts reach Cedar (which has no floats) as whole units rounded up, so
/// a limit `amount > 1000` catches 1000.01.
fn whole_units(amount: Option<f64>) -> i64 {
    match amount {
        Some(a) if a.is_finite() && a > 0.0 => {
            let up = a.ceil();
            if up >= 9.0e18 { i64::MAX } else { up as i64 }
        }
        _ => 0,
    }
}

// === impl LoadedPolicies ===

impl LoadedPolicies {
    /// Parses and strictly validates `policies` against `schema`; re-keys
    /// every policy by its `@id`.
    pub fn parse(schema_src: &str, policies_src: &str, source: &str) -> Result<Self, StsError> {
        let (schema, _warnings) = Schema::from_cedarschema_str(schema_src)
            .map_err(|e| invalid(format!("schema: {e}")))?;
        let parsed =
            PolicySet::from_str(policies_src).map_err(|e| invalid(format!("policies: {e}")))?;
        if parsed.templates().next().is_some() {
            return Err(invalid("templates are not supported"));
        }
        let mut policies = PolicySet::new();
        let mut ids = Vec::new();
        for p in parsed.policies() {
            let Some(id) = p.annotation("id") else {
                return Err(invalid(format!(
                    "a policy has no @id annotation: `{}`",
                    first_line(&p.to_string())
                )));
            };
            if id.is_empty() {
                return Err(invalid("a policy has an empty @id"));
            }
            if p.effect() == Effect::Forbid && p.annotation("reason").is_none_or(str::is_empty) {
                return Err(invalid(format!(
                    "forbid policy `{id}` has no @reason annotation"
                )));
            }
            policies
                .add(p.new_id(PolicyId::new(id)))
                .map_err(|_| invalid(format!("policy id `{id}` is used twice")))?;
            ids.push(id.to_owned());
        }
        if ids.is_empty() {
            return Err(invalid("the policy set is empty"));
        }
        let result = Validator::new(schema.clone()).validate(&policies, ValidationMode::Strict);
        if !result.validation_passed() {
            let errors: Vec<String> = result.validation_errors().map(|e| e.to_string()).collect();
            return Err(invalid(format!(
                "policies do not validate against the schema: {}",
                errors.join("; ")
            )));
        }
        ids.sort();
        Ok(Self {
            schema,
            policies,
            ids,
            source: source.to_owned(),
        })
    }

    /// The embedded defaults.
    pub fn defaults() -> Result<Self, StsError> {
        Self::parse(DEFAULT_SCHEMA, DEFAULT_POLICIES, "embedded")
    }

    /// Every `*.cedar` file of `dir` (sorted by name, concatenated) with the
    /// directory's `schema.cedarschema`, or the embedded schema if absent.
    pub fn from_dir(dir: &Path) -> Result<Self, StsError> {
        let io = |e: std::io::Error| invalid(format!("reading `{}`: {e}", dir.display()));
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(io)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "cedar"))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(invalid(format!("no .cedar files in `{}`", dir.display())));
        }
        let mut src = String::new();
        for f in &files {
            src.push_str(&std::fs::read_to_string(f).map_err(io)?);
            src.push('\n');
        }
        let schema_path = dir.join(SCHEMA_FILE);
        let schema = if schema_path.exists() {
            std::fs::read_to_string(&schema_path).map_err(io)?
        } else {
            DEFAULT_SCHEMA.to_owned()
        };
        Self::parse(&schema, &src, &dir.display().to_string())
    }

    /// Creates `dir` (and its parents) holding the embedded defaults,
    /// `default.cedar` and `schema.cedarschema`, so operators have files to
    /// edit. A directory that already exists is left alone (even if empty:
    /// loading it then says so). Returns whether it seeded.
    pub fn seed_dir(dir: &Path) -> Result<bool, StsError> {
        if dir.exists() {
            return Ok(false);
        }
        let io = |e: std::io::Error| invalid(format!("seeding `{}`: {e}", dir.display()));
        std::fs::create_dir_all(dir).map_err(io)?;
        std::fs::write(dir.join(SCHEMA_FILE), DEFAULT_SCHEMA).map_err(io)?;
        std::fs::write(dir.join("default.cedar"), DEFAULT_POLICIES).map_err(io)?;
        Ok(true)
    }

    /// The schema the set was validated against.
    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// Decides one request. Any construction or evaluation error denies.
    pub fn decide(&self, input: &DecisionInput) -> PolicyDecision {
        let deny = |reason: String| PolicyDecision::Deny {
            policies: Vec::new(),
            reason,
        };
        let request = match build_request(input) {
            Ok(r) => r,
            Err(e) => return deny(format!("the request cannot be evaluated: {e}")),
        };
        let response =
            Authorizer::new().is_authorized(&request, &self.policies, &Entities::empty());
        let diagnostics = response.diagnostics();
        let errors: Vec<String> = diagnostics.errors().map(|e| e.to_string()).collect();
        if !errors.is_empty() {
            return deny(format!("policy evaluation failed: {}", errors.join("; ")));
        }
        let mut matched: Vec<String> = diagnostics.reason().map(|id| id.to_string()).collect();
        matched.sort();
        match response.decision() {
            Decision::Allow => PolicyDecision::Allow { policies: matched },
            Decision::Deny if matched.is_empty() => deny("no permit policy matched".into()),
            Decision::Deny => {
                let reason = matched
                    .iter()
                    .map(|id| {
                        let why = self
                            .policies
                            .annotation(&PolicyId::new(id), "reason")
                            .unwrap_or("denied");
                        format!("{id}: {why}")
                    })
                    .collect::<Vec<_>>()
                    .join("; ");
                PolicyDecision::Deny {
                    policies: matched,
                    reason,
                }
            }
        }
    }
}

fn first_line(s: &str) -> String {
    s.lines()
        .next()
        .unwrap_or_default()
        .chars()
        .take(80)
        .collect()
}

fn uid(kind: &str, id: &str) -> Result<EntityUid, String> {
    let name = EntityTypeName::from_str(kind).map_err(|e| e.to_string())?;
    Ok(EntityUid::from_type_name_and_id(name, EntityId::new(id)))
}

fn build_request(input: &DecisionInput) -> Result<Request, String> {
    let s = |v: &str| RestrictedExpression::new_string(v.to_owned());
    let context = Context::from_pairs([
        ("user".to_owned(), s(&input.user)),
        (
            "session_age_secs".to_owned(),
            RestrictedExpression::new_long(input.session_age_secs),
        ),
        (
            "tier".to_owned(),
            RestrictedExpression::new_long(i64::from(input.tier)),
        ),
        ("rar_type".to_owned(), s(&input.rar_type)),
        (
            "amount".to_owned(),
            RestrictedExpression::new_long(whole_units(input.amount)),
        ),
        (
            "currency".to_owned(),
            s(input.currency.as_deref().unwrap_or_default()),
        ),
        (
            "destination".to_owned(),
            s(input.destination.as_deref().unwrap_or_default()),
        ),
        ("risk_level".to_owned(), s(&input.risk_level)),
        (
            "approvals".to_owned(),
            RestrictedExpression::new_long(i64::from(input.approvals)),
        ),
        (
            "step_up".to_owned(),
            RestrictedExpression::new_bool(input.step_up),
        ),
        (
            "time".to_owned(),
            RestrictedExpression::new_long(input.time),
        ),
    ])
    .map_err(|e| e.to_string())?;
    Request::new(
        uid("Agent", &input.agent)?,
        uid("Action", &input.action)?,
        uid("Resource", &input.resource)?,
        context,
        None,
    )
    .map_err(|e| e.to_string())
}

/// The policy set in force, swapped atomically on reload.
#[derive(Debug)]
pub struct PolicyStore {
    current: RwLock<Arc<LoadedPolicies>>,
}

// === impl PolicyStore ===

impl PolicyStore {
    pub fn new(initial: LoadedPolicies) -> Self {
        Self {
            current: RwLock::new(Arc::new(initial)),
        }
    }

    /// A store holding the embedded defaults.
    pub fn with_defaults() -> Result<Self, StsError> {
        Ok(Self::new(LoadedPolicies::defaults()?))
    }

    /// The set in force.
    pub fn current(&self) -> Arc<LoadedPolicies> {
        match self.current.read() {
            Ok(c) => c.clone(),
            // A writer only swaps an Arc; the last value is consistent.
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Puts `next` in force.
    pub fn replace(&self, next: LoadedPolicies) {
        let next = Arc::new(next);
        match self.current.write() {
            Ok(mut c) => *c = next,
            Err(poisoned) => *poisoned.into_inner() = next,
        }
    }

    /// Loads `dir` and puts it in force; on any error the previous set
    /// stays in force and the error is returned.
    pub fn reload_from_dir(&self, dir: &Path) -> Result<Arc<LoadedPolicies>, StsError> {
        let loaded = LoadedPolicies::from_dir(dir)?;
        self.replace(loaded);
        Ok(self.current())
    }

    /// Decides with the set in force.
    pub fn decide(&self, input: &DecisionInput) -> PolicyDecision {
        self.current().decide(input)
    }

    /// Watches `dir` by polling every `interval` and reloads when the set
    /// of files, a size, a modification time or a content hash changes.
    /// Failures are logged and leave the previous set in force; the next
    /// change retries.
    pub fn spawn_watch(
        self: &Arc<Self>,
        dir: PathBuf,
        interval: Duration,
    ) -> tokio::task::JoinHandle<()> {
        self.spawn_watch_recording(dir, interval, None)
    }

    /// [`PolicyStore::spawn_watch`], also recording every reload as a
    /// `policy.reloaded` event and every refused one as
    /// `policy.reload_refused` (with the error as reason) in `events`.
    ///
    /// Polling, not inotify (`notify`): the directory holds a handful of
    /// small files, so hashing them once a second costs nothing; it works
    /// the same on every filesystem (bind mounts, network and container
    /// volumes, Kubernetes ConfigMaps swapped by symlink, where inotify
    /// misses or duplicates events); the content hash catches an edit
    /// that keeps size and a coarse mtime; and a file read half-written is
    /// refused, then reloaded on the next tick once its hash changes again.
    pub fn spawn_watch_recording(
        self: &Arc<Self>,
        dir: PathBuf,
        interval: Duration,
        events: Option<Arc<dyn EventSink>>,
    ) -> tokio::task::JoinHandle<()> {
        let store = Arc::clone(self);
        // Taken now, not in the task: an edit made right after this call
        // (the set was just loaded) must count as a change.
        let mut seen = fingerprint(&dir);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let now = fingerprint(&dir);
                if now == seen {
                    continue;
                }
                seen = now;
                let event = match store.reload_from_dir(&dir) {
                    Ok(p) => {
                        tracing::info!(dir = %dir.display(), policies = p.ids.len(), "policies reloaded");
                        Event::new(POLICY_RELOADED, Outcome::Success)
                            .detail("dir", dir.display().to_string())
                            .detail("policies", p.ids.clone())
                    }
                    Err(e) => {
                        tracing::error!(dir = %dir.display(), error = %e, "policy reload refused; the previous set stays in force");
                        Event::new(POLICY_RELOAD_REFUSED, Outcome::Error)
                            .reason(e.to_string())
                            .detail("dir", dir.display().to_string())
                            .detail("in_force", store.current().ids.clone())
                    }
                };
                if let Some(sink) = &events
                    && let Err(e) = sink.record(event).await
                {
                    tracing::error!(error = %e, "cannot record the policy reload event");
                }
            }
        })
    }
}

/// One policy file as the watcher sees it.
type FileStamp = (PathBuf, u64, Option<SystemTime>, Option<Vec<u8>>);

/// The names, sizes, modification times and SHA-256 of a directory's
/// policy files (`*.cedar`, `*.cedarschema`).
fn fingerprint(dir: &Path) -> BTreeSet<FileStamp> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| {
                    let p = e.path();
                    p.extension()
                        .is_some_and(|x| x == "cedar" || x == "cedarschema")
                })
                .map(|e| {
                    let path = e.path();
                    let meta = std::fs::metadata(&path).ok();
                    let hash = std::fs::read(&path).ok().map(|bytes| {
                        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &bytes)
                            .as_ref()
                            .to_vec()
                    });
                    (
                        path,
                        meta.as_ref().map_or(0, std::fs::Metadata::len),
                        meta.and_then(|m| m.modified().ok()),
                        hash,
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}
