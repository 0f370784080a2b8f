//! ACL policies, Vault style: `path "GLOB" { capabilities = [...] }` rules,
//! parsed once when written and compiled once per distinct set of policies
//! (a token's policies), then matched per request without re-parsing.
//!
//! Matching follows Vault: a path without wildcard matches exactly; a
//! trailing `*` matches any path with that prefix; a `+` segment matches
//! exactly one path segment. When several rules match, the most specific
//! one decides (exact beats glob; fewer `+`, then a longer literal prefix);
//! rules of several policies for the same pattern add up, and `deny` in any
//! of them wins. The parser reads the HCL subset Vault policies use (string
//! keys, lists of strings, `#` and `//` comments) and the equivalent JSON,
//! and refuses anything else with a line number rather than guess.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::SecretsError;

/// The policy every token carries: enough to look after itself and its own
/// leases (ownership of a lease is checked separately), never to read a secret.
pub const DEFAULT_POLICY_NAME: &str = "default";
pub const DEFAULT_POLICY: &str = r#"
# Look up, renew and revoke the calling token itself.
path "auth/token/lookup-self" { capabilities = ["read", "update"] }
path "auth/token/renew-self"  { capabilities = ["update"] }
path "auth/token/revoke-self" { capabilities = ["update"] }
# Renew and look up leases; the broker only lets a token touch leases of its own identity.
path "sys/leases/renew"   { capabilities = ["update"] }
path "sys/leases/renew/*" { capabilities = ["update"] }
path "sys/leases/lookup"  { capabilities = ["update"] }
# Response wrapping of one's own data, and unwrapping what one was handed.
path "sys/wrapping/wrap"   { capabilities = ["update"] }
path "sys/wrapping/lookup" { capabilities = ["update"] }
path "sys/wrapping/unwrap" { capabilities = ["update"] }
"#;
/// The name Vault gives to the all-powerful policy; refused here so that no
/// stored policy can pose as it.
pub const ROOT_POLICY_NAME: &str = "root";

/// One capability of Vault's ACL model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Capability {
    Read,
    Create,
    Update,
    Patch,
    Delete,
    List,
    Sudo,
    Deny,
}

impl Capability {
    fn parse(s: &str) -> Result<Self, String> {
        Ok(match s {
            "read" => Self::Read,
            "create" => Self::Create,
            "update" => Self::Update,
            "patch" => Self::Patch,
            "delete" => Self::Delete,
            "list" => Self::List,
            "sudo" => Self::Sudo,
            "deny" => Self::Deny,
            other => return Err(format!("unknown capability `{other}`")),
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Create => "create",
            Self::Update => "update",
            Self::Patch => "patch",
            Self::Delete => "delete",
            Self::List => "list",
            Self::Sudo => "sudo",
            Self::Deny => "deny",
        }
    }
}

/// A parsed policy: path pattern → capabilities.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Policy {
    pub name: String,
    pub rules: BTreeMap<String, BTreeSet<Capability>>,
}

/// Checks a policy name: `[a-zA-Z0-9._-]`, at most 128 bytes, not `root`.
pub fn validate_policy_name(name: &str) -> Result<(), SecretsError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !ok {
        return Err(SecretsError::InvalidRequest(format!(
            "invalid policy name `{name}`: use [a-zA-Z0-9._-], at most 128 bytes"
        )));
    }
    if name == ROOT_POLICY_NAME {
        return Err(SecretsError::InvalidRequest(
            "the `root` policy cannot be written".into(),
        ));
    }
    Ok(())
}

impl Policy {
    /// Parses a policy in Vault's HCL form or its JSON equivalent
    /// (`{"path": {"GLOB": {"capabilities": [...]}}}`).
    pub fn parse(name: &str, text: &str) -> Result<Self, SecretsError> {
        let bad = |m: String| SecretsError::InvalidRequest(format!("invalid policy `{name}`: {m}"));
        let rules = if text.trim_start().starts_with('{') {
            parse_json(text).map_err(bad)?
        } else {
            parse_hcl(text).map_err(bad)?
        };
        for pattern in rules.keys() {
            check_pattern(pattern).map_err(bad)?;
        }
        Ok(Self {
            name: name.to_owned(),
            rules,
        })
    }
}

fn check_pattern(pattern: &str) -> Result<(), String> {
    if pattern.starts_with('/') {
        return Err(format!("path `{pattern}` must not start with `/`"));
    }
    if let Some(pos) = pattern.find('*')
        && pos + 1 != pattern.len()
    {
        return Err(format!("path `{pattern}`: `*` is only allowed at the end"));
    }
    Ok(())
}

#[derive(Deserialize)]
struct JsonPolicy {
    #[serde(default)]
    path: BTreeMap<String, JsonRule>,
}

#[derive(Deserialize)]
struct JsonRule {
    #[serde(default)]
    capabilities: Vec<String>,
}

fn parse_json(text: &str) -> Result<BTreeMap<String, BTreeSet<Capability>>, String> {
    let p: JsonPolicy = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let mut rules = BTreeMap::new();
    for (path, rule) in p.path {
        let caps = rule
            .capabilities
            .iter()
            .map(|c| Capability::parse(c))
            .collect::<Result<BTreeSet<_>, _>>()?;
        rules.insert(path, caps);
    }
    Ok(rules)
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Punct(char),
}

fn tokenize(text: &str) -> Result<Vec<(Tok, usize)>, String> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    let mut line = 1usize;
    while let Some(c) = chars.next() {
        match c {
            '\n' => line += 1,
            c if c.is_whitespace() => {}
            '#' => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        line += 1;
                        break;
                    }
                }
            }
            '/' if chars.peek() == Some(&'/') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        line += 1;
                        break;
                    }
                }
            }
            '"' => {
                let mut s = String::new();
                loop {
                    match chars.next() {
                        None | Some('\n') => {
                            return Err(format!("line {line}: unterminated string"));
                        }
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some('"') => s.push('"'),
                            Some('\\') => s.push('\\'),
                            _ => return Err(format!("line {line}: unsupported escape in string")),
                        },
                        Some(c) => s.push(c),
                    }
                }
                out.push((Tok::Str(s), line));
            }
            '{' | '}' | '[' | ']' | '=' | ',' => out.push((Tok::Punct(c), line)),
            c if c.is_ascii_alphabetic() || c == '_' => {
                let mut s = String::from(c);
                while let Some(&n) = chars.peek() {
                    if n.is_ascii_alphanumeric() || n == '_' || n == '-' {
                        s.push(n);
                        chars.next();
                    } else {
                        break;
                    }
                }
                out.push((Tok::Ident(s), line));
            }
            other => return Err(format!("line {line}: unexpected `{other}`")),
        }
    }
    Ok(out)
}

fn parse_hcl(text: &str) -> Result<BTreeMap<String, BTreeSet<Capability>>, String> {
    let toks = tokenize(text)?;
    let mut it = toks.into_iter().peekable();
    let mut rules: BTreeMap<String, BTreeSet<Capability>> = BTreeMap::new();
    let mut last_line = 1;
    let mut next = |what: &str, last: &mut usize| -> Result<Tok, String> {
        match it.next() {
            Some((t, l)) => {
                *last = l;
                Ok(t)
            }
            None => Err(format!("line {last}: expected {what}, found end of policy")),
        }
    };
    while let Ok(t) = next("`path`", &mut last_line) {
        if t != Tok::Ident("path".into()) {
            return Err(format!("line {last_line}: expected `path`, found {t:?}"));
        }
        let Tok::Str(pattern) = next("a quoted path", &mut last_line)? else {
            return Err(format!("line {last_line}: expected a quoted path"));
        };
        if next("`{`", &mut last_line)? != Tok::Punct('{') {
            return Err(format!("line {last_line}: expected `{{` after the path"));
        }
        let caps = rules.entry(pattern).or_default();
        loop {
            match next("`capabilities` or `}`", &mut last_line)? {
                Tok::Punct('}') => break,
                Tok::Ident(key) if key == "capabilities" => {
                    if next("`=`", &mut last_line)? != Tok::Punct('=') {
                        return Err(format!("line {last_line}: expected `=`"));
                    }
                    if next("`[`", &mut last_line)? != Tok::Punct('[') {
                        return Err(format!("line {last_line}: expected `[`"));
                    }
                    loop {
                        match next("a capability or `]`", &mut last_line)? {
                            Tok::Punct(']') => break,
                            Tok::Punct(',') => {}
                            Tok::Str(c) => {
                                caps.insert(
                                    Capability::parse(&c)
                                        .map_err(|e| format!("line {last_line}: {e}"))?,
                                );
                            }
                            other => {
                                return Err(format!(
                                    "line {last_line}: expected a capability, found {other:?}"
                                ));
                            }
                        }
                    }
                }
                Tok::Ident(key) => {
                    return Err(format!(
                        "line {last_line}: unsupported key `{key}` (only `capabilities` is supported)"
                    ));
                }
                other => return Err(format!("line {last_line}: unexpected {other:?}")),
            }
        }
    }
    if rules.is_empty() {
        return Err("no `path` rule".into());
    }
    Ok(rules)
}

// === impl Acl ===

#[derive(Debug, Clone)]
struct Rule {
    /// The pattern without a trailing `*`, split on `/`.
    segments: Vec<String>,
    prefix: bool,
    plus_count: usize,
    literal_len: usize,
    caps: BTreeSet<Capability>,
}

impl Rule {
    fn new(pattern: &str, caps: BTreeSet<Capability>) -> Self {
        let (body, prefix) = match pattern.strip_suffix('*') {
            Some(b) => (b, true),
            None => (pattern, false),
        };
        let segments: Vec<String> = body.split('/').map(str::to_owned).collect();
        let plus_count = segments.iter().filter(|s| *s == "+").count();
        let literal_len = body.len();
        Self {
            segments,
            prefix,
            plus_count,
            literal_len,
            caps,
        }
    }

    fn matches(&self, path: &str) -> bool {
        let parts: Vec<&str> = path.split('/').collect();
        let n = self.segments.len();
        if self.prefix {
            if parts.len() < n {
                return false;
            }
        } else if parts.len() != n {
            return false;
        }
        for (i, (seg, part)) in self.segments.iter().zip(parts.iter()).enumerate() {
            let last = i + 1 == n;
            if seg == "+" {
                if part.is_empty() && !(self.prefix && last) {
                    return false;
                }
                continue;
            }
            if last && self.prefix {
                if !part.starts_with(seg.as_str()) {
                    return false;
                }
            } else if seg != part {
                return false;
            }
        }
        true
    }

    /// Higher is more specific.
    fn priority(&self) -> (bool, std::cmp::Reverse<usize>, usize) {
        (
            !self.prefix,
            std::cmp::Reverse(self.plus_count),
            self.literal_len,
        )
    }
}

/// The compiled union of a token's policies.
#[derive(Debug, Clone)]
pub struct Acl {
    rules: Vec<Rule>,
    root: bool,
}

impl Acl {
    /// Compiles `policies` (rules for the same pattern are merged).
    pub fn compile(policies: &[Policy]) -> Self {
        let mut merged: BTreeMap<&str, BTreeSet<Capability>> = BTreeMap::new();
        for p in policies {
            for (pattern, caps) in &p.rules {
                merged
                    .entry(pattern.as_str())
                    .or_default()
                    .extend(caps.iter().copied());
            }
        }
        let mut rules: Vec<Rule> = merged
            .into_iter()
            .map(|(pattern, caps)| Rule::new(pattern, caps))
            .collect();
        // Most specific first, so the first match decides.
        rules.sort_by_key(|r| std::cmp::Reverse(r.priority()));
        Self { rules, root: false }
    }

    /// An ACL that allows everything (used for the admin API's own calls).
    pub fn root() -> Self {
        Self {
            rules: Vec::new(),
            root: true,
        }
    }

    /// The capabilities granted on `path` (relative to `/v1/`).
    pub fn capabilities(&self, path: &str) -> BTreeSet<Capability> {
        if self.root {
            return [
                Capability::Read,
                Capability::Create,
                Capability::Update,
                Capability::Patch,
                Capability::Delete,
                Capability::List,
                Capability::Sudo,
            ]
            .into_iter()
            .collect();
        }
        let Some(rule) = self.rules.iter().find(|r| r.matches(path)) else {
            return BTreeSet::new();
        };
        if rule.caps.contains(&Capability::Deny) {
            return [Capability::Deny].into_iter().collect();
        }
        rule.caps.clone()
    }

    /// Whether `cap` is granted on `path`.
    pub fn allows(&self, path: &str, cap: Capability) -> bool {
        let caps = self.capabilities(path);
        !caps.contains(&Capability::Deny) && caps.contains(&cap)
    }

    /// Whether any of `caps` is granted on `path`.
    pub fn allows_any(&self, path: &str, caps: &[Capability]) -> bool {
        caps.iter().any(|c| self.allows(path, *c))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn default_policy_parses() {
        let p = Policy::parse(DEFAULT_POLICY_NAME, DEFAULT_POLICY).unwrap();
        let acl = Acl::compile(&[p]);
        assert!(acl.allows("auth/token/lookup-self", Capability::Read));
        assert!(!acl.allows("secret/data/x", Capability::Read));
    }
}
