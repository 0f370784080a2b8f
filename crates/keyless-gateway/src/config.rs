//! The gateway's configuration (TOML): upstream MCP servers, the tool
//! catalog's tiers and RAR templates, and the safety limits.
//!
//! ```toml
//! [[upstream]]
//! name = "directory"                 # tools become `directory.<tool>`
//! url = "http://127.0.0.1:8180/demo/directory/mcp"
//! auth = "oauth"                     # per-call OBO token for `audience`
//! audience = "directory"
//!
//! [[upstream]]
//! name = "crm"
//! url = "https://crm.internal/mcp"   # https: system roots, plus `ca_file`
//! ca_file = "/etc/keyless/crm-ca.pem"
//! auth = "oauth"
//! audience = "crm"
//!
//! [[upstream]]
//! name = "files"
//! command = ["mcp-server-files", "--root", "/srv"]   # stdio, restarted on crash
//!
//! [approvals]
//! elicitation = true                 # also ask in the MCP client (see http.rs)
//!
//! [tools."directory.list_users"]
//! tier = 1
//! rar = { type = "directory_read", actions = ["list"], limit = "{{limit}}" }
//! ```
//!
//! A RAR template is the `authorization_details` object for one call: a
//! string value `"{{arg}}"` is replaced by that argument's JSON value (the
//! key is dropped when the argument is absent), `"{{arg|default}}"` falls
//! back to the JSON literal `default`. The gateway adds `tier`. A tool
//! without a template gets a `tool_call` detail bound to its arguments'
//! SHA-256.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value};

/// Tier of a tool the catalog has no entry for: sensitive, so every call
/// waits for a human.
pub const DEFAULT_TIER: u8 = 3;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid gateway config: {0}")]
    Parse(String),
    #[error("invalid gateway config: {0}")]
    Invalid(String),
}

/// How the gateway authenticates to an upstream.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamAuth {
    /// A single-use on-behalf-of token per call, minted for `audience`.
    Oauth,
    /// A static credential from the secrets broker, injected by the
    /// gateway (the agent never sees it).
    Static,
    /// No credential (a local stdio tool).
    #[default]
    None,
}

/// A static credential: KV v2 `path` and `key` in the secrets broker,
/// sent in `header` with `prefix`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticCredential {
    pub path: String,
    pub key: String,
    #[serde(default = "default_header")]
    pub header: String,
    #[serde(default)]
    pub prefix: String,
}

fn default_header() -> String {
    "Authorization".into()
}

/// One upstream MCP server.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Namespace of its tools (`name.tool`): letters, digits, `_`, `-`.
    pub name: String,
    /// Streamable HTTP endpoint.
    #[serde(default)]
    pub url: Option<String>,
    /// Stdio server: program and arguments.
    #[serde(default)]
    pub command: Option<Vec<String>>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub auth: UpstreamAuth,
    /// Resource server audience of the OBO tokens (`auth = "oauth"`).
    #[serde(default)]
    pub audience: Option<String>,
    #[serde(default, rename = "credential")]
    pub static_credential: Option<StaticCredential>,
    /// Upstream call timeout (humantime), default 15 s.
    #[serde(default)]
    pub timeout: Option<String>,
    /// For an `https` url: a PEM file of CA certificates trusted for this
    /// upstream in addition to the system roots.
    #[serde(default)]
    pub ca_file: Option<std::path::PathBuf>,
}

/// Catalog entry of one tool.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolPolicy {
    pub tier: u8,
    /// RAR template (see the module docs).
    #[serde(default)]
    pub rar: Option<Map<String, Value>>,
}

/// Safety limits.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest `arguments` object, serialized, in bytes.
    pub max_argument_bytes: usize,
    /// Calls per minute per agent, and per user.
    pub agent_calls_per_minute: u32,
    pub user_calls_per_minute: u32,
    /// The same call (agent, user, tool, arguments) more than this many
    /// times within `loop_window` trips the loop breaker.
    pub loop_max_repeats: u32,
    pub loop_window: String,
    /// How long a call waits for a human approval.
    pub approval_timeout: String,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_argument_bytes: 64 * 1024,
            agent_calls_per_minute: 600_000,
            user_calls_per_minute: 600_000,
            loop_max_repeats: 20,
            loop_window: "60s".into(),
            approval_timeout: "120s".into(),
        }
    }
}

/// How waiting calls reach the user besides `/api/approvals`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApprovalsConfig {
    /// Offer a pending approval to an MCP client that declared the
    /// elicitation capability as an `elicitation/create` request during
    /// the waiting `tools/call` (accept approves, decline or cancel denies).
    /// The client answers with the user's own access token on the same
    /// session, the authority `/api/approvals` also accepts; turn it off
    /// for clients you do not trust to show the question to the user.
    pub elicitation: bool,
}

impl Default for ApprovalsConfig {
    fn default() -> Self {
        Self { elicitation: true }
    }
}

/// The whole file.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    #[serde(default, rename = "upstream")]
    pub upstreams: Vec<UpstreamConfig>,
    #[serde(default)]
    pub tools: BTreeMap<String, ToolPolicy>,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub approvals: ApprovalsConfig,
    /// How often upstream tool lists are re-read to catch changed
    /// definitions (humantime), default 30 s.
    #[serde(default)]
    pub refresh_tools: Option<String>,
}

/// The demo catalog `keyless up` serves (`{base}` = its public URL).
pub const DEMO_CONFIG: &str = include_str!("../demo.toml");

impl GatewayConfig {
    /// Parses and validates a config file's text.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let config: Self = toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// The demo config with `{base}` replaced.
    pub fn demo(base_url: &str) -> Result<Self, ConfigError> {
        Self::parse(&DEMO_CONFIG.replace("{base}", base_url.trim_end_matches('/')))
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        let mut names = std::collections::BTreeSet::new();
        for u in &self.upstreams {
            if u.name.is_empty()
                || u.name.len() > 64
                || !u
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return invalid(format!(
                    "upstream name `{}`: use letters, digits, `_` or `-`",
                    u.name
                ));
            }
            if !names.insert(u.name.as_str()) {
                return invalid(format!("upstream `{}` is defined twice", u.name));
            }
            match (&u.url, &u.command) {
                (Some(url), None) => {
                    let parsed = url::Url::parse(url).map_err(|e| {
                        ConfigError::Invalid(format!("upstream `{}`: url: {e}", u.name))
                    })?;
                    if parsed.scheme() != "http" && parsed.scheme() != "https" {
                        return invalid(format!(
                            "upstream `{}`: url must be http or https",
                            u.name
                        ));
                    }
                    if u.ca_file.is_some() && parsed.scheme() != "https" {
                        return invalid(format!(
                            "upstream `{}`: `ca_file` applies to https urls only",
                            u.name
                        ));
                    }
                }
                (None, Some(cmd)) if !cmd.is_empty() => {
                    if u.ca_file.is_some() {
                        return invalid(format!(
                            "upstream `{}`: `ca_file` applies to https urls only",
                            u.name
                        ));
                    }
                }
                _ => {
                    return invalid(format!(
                        "upstream `{}`: give exactly one of `url` or `command`",
                        u.name
                    ));
                }
            }
            match u.auth {
                UpstreamAuth::Oauth if u.audience.as_deref().is_none_or(str::is_empty) => {
                    return invalid(format!(
                        "upstream `{}`: auth = \"oauth\" needs `audience`",
                        u.name
                    ));
                }
                UpstreamAuth::Static if u.static_credential.is_none() => {
                    return invalid(format!(
                        "upstream `{}`: auth = \"static\" needs a [credential]",
                        u.name
                    ));
                }
                _ => {}
            }
            if u.auth != UpstreamAuth::None && u.command.is_some() && u.auth == UpstreamAuth::Static
            {
                return invalid(format!(
                    "upstream `{}`: a static credential needs an http upstream",
                    u.name
                ));
            }
            if let Some(t) = &u.timeout {
                parse_duration(&format!("upstream `{}` timeout", u.name), t)?;
            }
        }
        for (name, t) in &self.tools {
            if !(1..=4).contains(&t.tier) {
                return invalid(format!("tool `{name}`: tier must be 1 to 4"));
            }
            if let Some(rar) = &t.rar
                && !rar.get("type").is_some_and(Value::is_string)
            {
                return invalid(format!("tool `{name}`: rar needs a string `type`"));
            }
        }
        if let Some(r) = &self.refresh_tools {
            parse_duration("refresh_tools", r)?;
        }
        parse_duration("limits.loop_window", &self.limits.loop_window)?;
        parse_duration("limits.approval_timeout", &self.limits.approval_timeout)?;
        Ok(())
    }

    pub fn upstream(&self, name: &str) -> Option<&UpstreamConfig> {
        self.upstreams.iter().find(|u| u.name == name)
    }

    pub fn refresh_interval(&self) -> Duration {
        self.refresh_tools
            .as_deref()
            .and_then(|t| humantime::parse_duration(t).ok())
            .filter(|d| !d.is_zero())
            .unwrap_or(Duration::from_secs(30))
    }

    /// The tier of `tool` (namespaced); unknown tools are sensitive.
    pub fn tier(&self, tool: &str) -> u8 {
        self.tools.get(tool).map_or(DEFAULT_TIER, |t| t.tier)
    }
}

impl UpstreamConfig {
    pub fn call_timeout(&self) -> Duration {
        self.timeout
            .as_deref()
            .and_then(|t| humantime::parse_duration(t).ok())
            .unwrap_or(Duration::from_secs(15))
    }
}

impl Limits {
    pub fn loop_window(&self) -> Duration {
        humantime::parse_duration(&self.loop_window).unwrap_or(Duration::from_secs(60))
    }
    pub fn approval_timeout(&self) -> Duration {
        humantime::parse_duration(&self.approval_timeout).unwrap_or(Duration::from_secs(120))
    }
}

fn parse_duration(what: &str, s: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(s).map_err(|e| ConfigError::Invalid(format!("{what}: `{s}`: {e}")))
}

/// Renders the `authorization_details` entry for one call of `tool`
/// (`bare` = its name upstream) with `arguments`.
pub fn render_rar(
    policy: Option<&ToolPolicy>,
    tool: &str,
    bare: &str,
    tier: u8,
    arguments: &Map<String, Value>,
    args_sha256: &str,
) -> Value {
    let mut out = Map::new();
    match policy.and_then(|p| p.rar.as_ref()) {
        Some(template) => {
            for (k, v) in template {
                if let Some(v) = substitute(v, arguments) {
                    out.insert(k.clone(), v);
                }
            }
        }
        None => {
            out.insert("type".into(), Value::from("tool_call"));
            out.insert("tool".into(), Value::from(tool));
            let action: String = bare
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() {
                        c.to_ascii_lowercase()
                    } else {
                        '_'
                    }
                })
                .take(64)
                .collect();
            if action.starts_with(|c: char| c.is_ascii_lowercase()) {
                out.insert("actions".into(), Value::from(vec![action]));
            }
            out.insert("arguments_sha256".into(), Value::from(args_sha256));
        }
    }
    out.insert("tier".into(), Value::from(tier));
    Value::Object(out)
}

/// Replaces `"{{arg}}"` / `"{{arg|default}}"` strings, recursively.
fn substitute(v: &Value, args: &Map<String, Value>) -> Option<Value> {
    match v {
        Value::String(s) => {
            let Some(inner) = s.strip_prefix("{{").and_then(|s| s.strip_suffix("}}")) else {
                return Some(v.clone());
            };
            let (name, default) = match inner.split_once('|') {
                Some((n, d)) => (n.trim(), Some(d.trim())),
                None => (inner.trim(), None),
            };
            match args.get(name) {
                Some(Value::Null) | None => default
                    .map(|d| serde_json::from_str(d).unwrap_or_else(|_| Value::from(d.to_owned()))),
                Some(a) => Some(a.clone()),
            }
        }
        Value::Array(items) => Some(Value::Array(
            items.iter().filter_map(|i| substitute(i, args)).collect(),
        )),
        Value::Object(m) => Some(Value::Object(
            m.iter()
                .filter_map(|(k, v)| substitute(v, args).map(|v| (k.clone(), v)))
                .collect(),
        )),
        other => Some(other.clone()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use serde_json::json;

    #[test]
    fn the_demo_config_parses() {
        let c = GatewayConfig::demo("http://127.0.0.1:8180").unwrap();
        assert!(c.upstream("directory").is_some());
        assert_eq!(c.tier("directory.list_users"), 1);
        assert_eq!(c.tier("bank.transfer_funds"), 2);
        assert_eq!(c.tier("nowhere.unknown"), DEFAULT_TIER);
    }

    #[test]
    fn bad_configs_are_refused_with_the_reason() {
        for (text, needle) in [
            (
                "[[upstream]]\nname = \"a b\"\nurl = \"http://x\"",
                "upstream name",
            ),
            ("[[upstream]]\nname = \"a\"", "exactly one of"),
            (
                "[[upstream]]\nname = \"a\"\nurl = \"ftp://x\"",
                "must be http or https",
            ),
            (
                "[[upstream]]\nname = \"a\"\nurl = \"http://x\"\nca_file = \"/ca.pem\"",
                "https urls only",
            ),
            ("[approvals]\nelicitation = \"yes\"", "invalid type"),
            (
                "[[upstream]]\nname = \"a\"\nurl = \"http://x\"\nauth = \"oauth\"",
                "audience",
            ),
            ("[tools.\"a.b\"]\ntier = 5", "tier must be"),
            (
                "[tools.\"a.b\"]\ntier = 1\nrar = { actions = [] }",
                "string `type`",
            ),
            ("[limits]\nloop_window = \"soon\"", "loop_window"),
            (
                "[[upstream]]\nname = \"a\"\nurl = \"http://x\"\nbogus = 1",
                "unknown field",
            ),
        ] {
            let e = GatewayConfig::parse(text).unwrap_err().to_string();
            assert!(e.contains(needle), "{text}: {e}");
        }
    }

    #[test]
    fn an_https_upstream_with_a_ca_file_parses() {
        let c = GatewayConfig::parse(
            "[[upstream]]\nname = \"a\"\nurl = \"https://x/mcp\"\nca_file = \"/etc/ca.pem\"",
        )
        .unwrap();
        assert_eq!(
            c.upstream("a").unwrap().ca_file.as_deref(),
            Some(std::path::Path::new("/etc/ca.pem"))
        );
        assert!(c.approvals.elicitation, "elicitation is on by default");
    }

    #[test]
    fn rar_templates_substitute_arguments_and_drop_absent_ones() {
        let p = ToolPolicy {
            tier: 2,
            rar: Some(
                json!({"type": "transfer_funds", "actions": ["transfer_funds"], "amount": "{{amount}}",
                       "currency": "{{currency|\"EUR\"}}", "destination": "{{destination}}", "source": "{{from}}"})
                .as_object()
                .unwrap()
                .clone(),
            ),
        };
        let args = json!({"amount": 250, "destination": "landlord"});
        let r = render_rar(
            Some(&p),
            "bank.transfer_funds",
            "transfer_funds",
            2,
            args.as_object().unwrap(),
            "00",
        );
        assert_eq!(
            r,
            json!({"type": "transfer_funds", "actions": ["transfer_funds"], "amount": 250,
                   "currency": "EUR", "destination": "landlord", "tier": 2})
        );
    }

    #[test]
    fn tools_without_a_template_get_a_hash_bound_tool_call() {
        let r = render_rar(None, "files.Read-File", "Read-File", 3, &Map::new(), "ab");
        assert_eq!(
            r,
            json!({"type": "tool_call", "tool": "files.Read-File", "actions": ["read_file"],
                   "arguments_sha256": "ab", "tier": 3})
        );
    }
}
