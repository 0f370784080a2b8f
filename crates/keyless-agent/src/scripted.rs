//! The scripted model: a deterministic, offline stand-in for an LLM that
//! understands a fixed set of requests about the demo directory and bank.
//!
//! Why it exists: Keyless must demo (and be tested) end to end with no API
//! key and no network. It is stateless: every answer is decided from the
//! request's messages and tools alone — the last plain-text user message is
//! the request, the tool results after it say how far its plan got. Answers
//! are built only from tool results, never made up.

use async_trait::async_trait;
use serde_json::{Number, Value, json};

use crate::{
    host::safe_name,
    model::{
        Content, DeltaSink, Message, Model, ModelDelta, ModelError, ModelRequest, ModelResponse,
        Role, StopReason, ToolSpec,
    },
};

/// Longest rendering of a result we put in an answer.
const MAX_RENDER: usize = 2_000;

/// The requests it understands, as shown by `help`.
const EXAMPLES: &[&str] = &[
    "list users",
    "show user bob",
    "who is in the directory",
    "list applications",
    "create user dana in group finance",
    "add dana to group finance",
    "deactivate bob",
    "revoke sessions of bob",
    "sign out bob",
    "delete carol",
    "make bob admin",
    "what is my balance",
    "list transactions",
    "transfer 250 USD to ACC-2",
    "send 12.50 eur to landlord",
];

/// Words dropped anywhere in a request.
const FILLERS: &[&str] = &[
    "please", "pls", "kindly", "all", "the", "now", "me", "my", "a", "an", "just",
];

/// Words dropped at the start of a request ("could you …", "I'd like to …").
const LEADING: &[&str] = &[
    "can", "could", "would", "will", "you", "i", "i'd", "want", "like", "to", "hey", "hi", "ok",
    "okay", "so",
];

/// Words that are never a user's name.
const RESERVED: &[&str] = &["user", "users", "group", "to", "in", "of", "for"];

/// The offline model.
#[derive(Debug, Clone, Copy, Default)]
pub struct Scripted;

/// One tool call of a plan: the gateway's tool name and the arguments.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Step {
    pub(crate) tool: &'static str,
    pub(crate) args: Value,
}

/// What a request asks for.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Intent {
    /// Tool calls to make in order; a failed one ends the plan.
    Plan(Vec<Step>),
    /// The help answer; `understood` is false for an unknown request.
    Help { understood: bool },
}

// === impl Scripted ===

#[async_trait]
impl Model for Scripted {
    fn name(&self) -> String {
        "scripted".into()
    }

    async fn complete(
        &self,
        req: &ModelRequest,
        sink: DeltaSink<'_>,
    ) -> Result<ModelResponse, ModelError> {
        let response = respond(req);
        for content in &response.content {
            if let Content::Text(text) = content {
                // Word by word, like a real model's stream.
                for piece in text.split_inclusive(' ') {
                    sink(ModelDelta::Text(piece.to_owned()));
                }
            }
        }
        Ok(response)
    }
}

/// The scripted answer to `req`.
pub(crate) fn respond(req: &ModelRequest) -> ModelResponse {
    let Some(start) = req
        .messages
        .iter()
        .rposition(|m| m.role == Role::User && !m.text().trim().is_empty())
    else {
        return answer(help(true));
    };
    let request = req
        .messages
        .get(start)
        .map(Message::text)
        .unwrap_or_default();
    let plan = match parse(&request) {
        Intent::Help { understood } => return answer(help(understood)),
        Intent::Plan(plan) => plan,
    };
    let mut tool_names = Vec::with_capacity(plan.len());
    for step in &plan {
        match find_tool(&req.tools, step.tool) {
            Some(name) => tool_names.push(name),
            // Not offered to this caller (the gateway hides what it would
            // refuse): ask for it anyway, as a determined model would, and
            // let the gateway's refusal be the answer.
            None => tool_names.push(safe_name(step.tool)),
        }
    }
    let results = results_after(req.messages.get(start + 1..).unwrap_or_default());
    let failed = results.iter().any(|(_, is_error)| *is_error);
    let next = plan.get(results.len()).zip(tool_names.get(results.len()));
    match next {
        Some((step, name)) if !failed => {
            let used: usize = req
                .messages
                .iter()
                .flat_map(|m| &m.content)
                .filter(|c| matches!(c, Content::ToolUse { .. }))
                .count();
            ModelResponse {
                content: vec![Content::ToolUse {
                    id: format!("toolu_scripted_{used}"),
                    name: name.clone(),
                    input: step.args.clone(),
                }],
                stop: StopReason::ToolUse,
            }
        }
        _ => answer(report(&plan, &results)),
    }
}

fn answer(text: String) -> ModelResponse {
    ModelResponse {
        content: vec![Content::Text(text)],
        stop: StopReason::EndTurn,
    }
}

fn help(understood: bool) -> String {
    let mut text = if understood {
        String::new()
    } else {
        "I did not understand that. ".to_owned()
    };
    text.push_str("I am the offline scripted model; I understand requests like these:");
    for example in EXAMPLES {
        text.push('\n');
        text.push_str(example);
    }
    text
}

/// The provider-safe name, among `tools`, of the gateway tool `real`: the
/// exact safe name, else a tool whose name ends with `__<bare name>`.
fn find_tool(tools: &[ToolSpec], real: &str) -> Option<String> {
    let full = safe_name(real);
    let bare = real.rsplit('.').next().unwrap_or(real);
    let suffix = format!("__{bare}");
    tools
        .iter()
        .find(|t| t.name == full)
        .or_else(|| tools.iter().find(|t| t.name.ends_with(&suffix)))
        .or_else(|| tools.iter().find(|t| t.name == bare))
        .map(|t| t.name.clone())
}

/// The results (text, is_error) of this request's tool calls, in order.
fn results_after(messages: &[Message]) -> Vec<(String, bool)> {
    let asked: Vec<&str> = messages
        .iter()
        .filter(|m| m.role == Role::Assistant)
        .flat_map(|m| &m.content)
        .filter_map(|c| match c {
            Content::ToolUse { id, .. } => Some(id.as_str()),
            _ => None,
        })
        .collect();
    messages
        .iter()
        .filter(|m| m.role == Role::User)
        .flat_map(|m| &m.content)
        .filter_map(|c| match c {
            Content::ToolResult {
                tool_use_id,
                content,
                is_error,
            } if asked.contains(&tool_use_id.as_str()) => Some((content.clone(), *is_error)),
            _ => None,
        })
        .collect()
}

/// The final answer: each step's result, up to the first failure.
fn report(plan: &[Step], results: &[(String, bool)]) -> String {
    let mut parts = Vec::new();
    for (i, (step, (text, is_error))) in plan.iter().zip(results).enumerate() {
        if *is_error {
            parts.push(format!(
                "The call to `{}` was refused: {}",
                step.tool,
                text.trim()
            ));
            if i + 1 < plan.len() {
                parts.push("I stopped there: the remaining steps were not run.".to_owned());
            }
            break;
        }
        parts.push(render_success(step.tool, text));
    }
    parts.join("\n")
}

// --- parsing ---

/// The plan for a request, or help.
pub(crate) fn parse(input: &str) -> Intent {
    let words: Vec<(String, &str)> = input
        .split_whitespace()
        .map(|w| w.trim_matches(|c: char| "?!.,;:\"'()".contains(c)))
        .filter(|w| !w.is_empty())
        .map(|w| (w.to_lowercase(), w))
        .filter(|(lower, _)| !FILLERS.contains(&lower.as_str()))
        .collect();
    let lead = words
        .iter()
        .take_while(|(lower, _)| LEADING.contains(&lower.as_str()))
        .count();
    let words = words.get(lead..).unwrap_or_default();
    let lower: Vec<&str> = words.iter().map(|(l, _)| l.as_str()).collect();
    let original: Vec<&str> = words.iter().map(|(_, o)| *o).collect();
    match plan(&lower, &original) {
        Some(steps) => Intent::Plan(steps),
        None => Intent::Help {
            understood: matches!(lower.as_slice(), [] | ["help"]),
        },
    }
}

fn plan(l: &[&str], original: &[&str]) -> Option<Vec<Step>> {
    let one = |tool: &'static str, args: Value| Some(vec![Step { tool, args }]);
    let user = |tool: &'static str, who: &str| {
        let email = email(who)?;
        one(tool, json!({ "email": email }))
    };
    match l {
        ["list" | "show" | "get", "users"]
        | ["list" | "show", "directory", "users"]
        | ["users"]
        | ["who", "is", "in", "directory"] => one("directory.list_users", json!({})),
        ["list" | "show" | "get", "applications" | "apps"] | ["applications" | "apps"] => {
            one("directory.list_applications", json!({}))
        }
        ["show" | "get" | "find", "user", who]
        | ["look", "up", who]
        | ["look", "up", "user", who]
        | ["who", "is", who] => user("directory.get_user", who),
        ["create" | "new", "user", who, "in" | "to", "group", group]
        | ["create" | "new", "user", who, "in" | "to", group] => {
            let email = email(who)?;
            let group = word(group)?;
            Some(vec![
                Step {
                    tool: "directory.create_user",
                    args: json!({ "email": email, "name": display_name(&email) }),
                },
                Step {
                    tool: "directory.add_user_to_group",
                    args: json!({ "email": email, "group": group }),
                },
            ])
        }
        ["create" | "new", "user", who] => {
            let email = email(who)?;
            one(
                "directory.create_user",
                json!({ "email": email, "name": display_name(&email) }),
            )
        }
        ["add", who, "to", "group", group]
        | ["add", who, "to", group]
        | ["add", "user", who, "to", "group", group]
        | ["add", "user", who, "to", group] => {
            let email = email(who)?;
            let group = word(group)?;
            one(
                "directory.add_user_to_group",
                json!({ "email": email, "group": group }),
            )
        }
        ["deactivate" | "disable" | "suspend", who]
        | ["deactivate" | "disable" | "suspend", "user", who] => {
            user("directory.deactivate_user", who)
        }
        ["revoke", "sessions" | "session", "of" | "for", who]
        | ["revoke", "sessions" | "session", "of" | "for", "user", who]
        | ["sign" | "log", "out", who]
        | ["sign" | "log", "out", "user", who]
        | ["sign" | "log", who, "out"] => user("directory.revoke_user_sessions", who),
        ["delete" | "remove", who] | ["delete" | "remove", "user", who] => {
            user("directory.delete_user", who)
        }
        ["make", who, "admin" | "administrator"]
        | ["grant", "admin" | "administrator", "to", who]
        | ["grant", "admin" | "administrator", "role", "to", who]
        | ["grant", who, "admin" | "administrator"]
        | ["grant", who, "admin" | "administrator", "role"] => {
            user("directory.grant_admin_role", who)
        }
        ["balance"]
        | ["what", "is", "balance"]
        | ["what's", "balance"]
        | ["show" | "get" | "check", "balance"] => one("bank.get_balance", json!({})),
        ["list" | "show" | "get", "transactions"]
        | ["list" | "show" | "get", "recent" | "latest", "transactions"]
        | ["recent" | "latest", "transactions"]
        | ["transactions"] => one("bank.list_transactions", json!({})),
        ["transfer" | "send" | "pay", amount, currency, "to", _] => {
            let amount = parse_amount(amount)?;
            let currency = parse_currency(currency)?;
            // As typed: payee ids are case-sensitive on the bank's side.
            let destination = word(original.get(4)?)?;
            one(
                "bank.transfer_funds",
                json!({ "amount": amount, "currency": currency, "destination": destination }),
            )
        }
        _ => None,
    }
}

/// A bare name becomes `<name>@example.com`; a full email stays (lower-case).
fn email(who: &str) -> Option<String> {
    let who = who.to_lowercase();
    if RESERVED.contains(&who.as_str()) {
        return None;
    }
    let ok = |part: &str| {
        !part.is_empty()
            && part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-+".contains(c))
    };
    match who.split_once('@') {
        Some((local, domain)) if ok(local) && ok(domain) && domain.contains('.') => Some(who),
        Some(_) => None,
        None if ok(&who) => Some(format!("{who}@example.com")),
        None => None,
    }
}

/// "dana.smith@example.com" → "Dana Smith".
fn display_name(email: &str) -> String {
    let local = email.split('@').next().unwrap_or(email);
    local
        .split(['.', '_', '-', '+'])
        .filter(|p| !p.is_empty())
        .map(|p| {
            let mut chars = p.chars();
            chars
                .next()
                .map(|c| c.to_uppercase().chain(chars).collect::<String>())
                .unwrap_or_default()
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A group name or payee id: letters, digits, `-`, `_`, `.`.
fn word(w: &str) -> Option<String> {
    (!w.is_empty()
        && w.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)))
    .then(|| w.to_owned())
}

/// A positive amount as a JSON number (`250` stays an integer).
fn parse_amount(s: &str) -> Option<Number> {
    if let Ok(n) = s.parse::<u64>() {
        return (n > 0).then(|| Number::from(n));
    }
    let f: f64 = s.parse().ok()?;
    if !(f.is_finite() && f > 0.0) {
        return None;
    }
    Number::from_f64(f)
}

fn parse_currency(s: &str) -> Option<String> {
    (s.len() == 3 && s.chars().all(|c| c.is_ascii_alphabetic())).then(|| s.to_ascii_uppercase())
}

// --- rendering ---

/// A successful result as a readable answer, cautions kept at the end.
fn render_success(tool: &str, text: &str) -> String {
    let (body, notes): (Vec<&str>, Vec<&str>) = text
        .lines()
        .partition(|l| !(l.contains("Keyless caution") || l.contains("risk ladder")));
    let body = body.join("\n");
    let body = body.trim();
    let mut out = match serde_json::from_str::<Value>(body) {
        Ok(value) => render_json(tool, &value).unwrap_or_else(|| {
            let pretty = serde_json::to_string_pretty(&value).unwrap_or_default();
            format!("The call to `{tool}` succeeded:\n{}", truncate(&pretty))
        }),
        Err(_) if body.is_empty() => format!("The call to `{tool}` succeeded."),
        Err(_) => format!("The call to `{tool}` succeeded: {}", truncate(body)),
    };
    for note in notes {
        out.push('\n');
        out.push_str(note.trim());
    }
    out
}

fn truncate(text: &str) -> String {
    match text.char_indices().nth(MAX_RENDER) {
        Some((at, _)) => format!("{}\n… (truncated)", text.get(..at).unwrap_or(text)),
        None => text.to_owned(),
    }
}

fn s<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

fn n(v: &Value, key: &str) -> Option<String> {
    v.get(key).filter(|x| x.is_number()).map(Value::to_string)
}

/// The demo servers' result shapes (see `keyless-demo`), rendered; `None`
/// when the shape is not the expected one (the caller pretty-prints).
fn render_json(tool: &str, v: &Value) -> Option<String> {
    let bare = tool.rsplit('.').next().unwrap_or(tool);
    match bare {
        "list_users" => {
            let users = v.get("users")?.as_array()?;
            let mut out = format!("There are {} users in the directory:", users.len());
            for u in users {
                out.push('\n');
                out.push_str(&user_line(u)?);
            }
            Some(out)
        }
        "get_user" => {
            let u = v.get("user")?;
            let active = if u.get("active")?.as_bool()? {
                "active"
            } else {
                "inactive"
            };
            let admin = if u.get("admin").and_then(Value::as_bool) == Some(true) {
                ", administrator"
            } else {
                ""
            };
            Some(format!(
                "{}\n{active}{admin}, {} live sessions, created {}.",
                user_line(u)?,
                n(u, "sessions")?,
                s(u, "created_at").unwrap_or("at an unknown time")
            ))
        }
        "list_applications" => {
            let apps = v.get("applications")?.as_array()?;
            let mut out = format!("There are {} applications:", apps.len());
            for a in apps {
                out.push_str(&format!(
                    "\n{} — {} (owned by {})",
                    s(a, "name")?,
                    s(a, "description")?,
                    s(a, "owner_group")?
                ));
            }
            Some(out)
        }
        "create_user" => {
            let u = v.get("user")?;
            Some(format!(
                "Created user {} ({}).",
                s(u, "email")?,
                s(u, "name")?
            ))
        }
        "add_user_to_group" => {
            let email = s(v.get("user")?, "email")?;
            let group = s(v, "group")?;
            Some(if v.get("added")?.as_bool()? {
                format!("Added {email} to group {group}.")
            } else {
                format!("{email} was already in group {group}.")
            })
        }
        "deactivate_user" => Some(format!(
            "Deactivated {}; {} live sessions ended.",
            s(v, "email")?,
            n(v, "sessions_ended")?
        )),
        "revoke_user_sessions" => Some(format!(
            "Ended {} sessions of {}.",
            n(v, "revoked_sessions")?,
            s(v, "email")?
        )),
        "delete_user" => Some(format!("Deleted user {}.", s(v, "email")?)),
        "grant_admin_role" => Some(format!("{} is now an administrator.", s(v, "email")?)),
        "get_balance" => Some(format!(
            "Your balance is {} (account {}).",
            s(v, "balance_display")?,
            s(v, "account")?
        )),
        "list_transactions" => {
            let account = s(v, "account")?;
            let txs = v.get("transactions")?.as_array()?;
            if txs.is_empty() {
                return Some(format!("No transactions on account {account}."));
            }
            let mut out = format!("Recent transactions on account {account}:");
            for t in txs {
                out.push_str(&format!(
                    "\n{}  {}  {} ({})",
                    s(t, "created_at")?,
                    s(t, "amount_display")?,
                    s(t, "description")?,
                    s(t, "counterparty")?
                ));
            }
            Some(out)
        }
        "transfer_funds" => {
            let amount = v.get("transferred")?.as_f64()?;
            Some(format!(
                "Sent {amount:.2} {} to {} (transaction {}). Your balance is now {}.",
                s(v, "currency")?,
                s(v, "destination")?,
                n(v, "transaction_id")?,
                s(v, "balance_display")?
            ))
        }
        _ => None,
    }
}

/// "email — name (groups…)", flagged when inactive or admin.
fn user_line(u: &Value) -> Option<String> {
    let groups: Vec<&str> = u
        .get("groups")
        .and_then(Value::as_array)
        .map(|g| g.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let groups = if groups.is_empty() {
        "no groups".to_owned()
    } else {
        groups.join(", ")
    };
    let mut line = format!("{} — {} ({groups})", s(u, "email")?, s(u, "name")?);
    if u.get("active").and_then(Value::as_bool) == Some(false) {
        line.push_str(" [inactive]");
    }
    if u.get("admin").and_then(Value::as_bool) == Some(true) {
        line.push_str(" [admin]");
    }
    Some(line)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
    use super::*;

    /// `expected` empty means the help answer.
    #[track_caller]
    fn check(input: &str, expected: &[(&str, Value)]) {
        let got = parse(input);
        match got {
            Intent::Plan(steps) => {
                let got: Vec<(&str, Value)> =
                    steps.iter().map(|s| (s.tool, s.args.clone())).collect();
                assert_eq!(got, expected, "input `{input}`");
            }
            Intent::Help { .. } => assert!(expected.is_empty(), "input `{input}` not understood"),
        }
    }

    #[test]
    fn requests_map_to_tool_calls() {
        let none = json!({});
        check("list users", &[("directory.list_users", none.clone())]);
        check("Show users", &[("directory.list_users", none.clone())]);
        check(
            "please list all the users!",
            &[("directory.list_users", none.clone())],
        );
        check(
            "Who is in the directory?",
            &[("directory.list_users", none.clone())],
        );
        check(
            "show user bob",
            &[("directory.get_user", json!({"email": "bob@example.com"}))],
        );
        check(
            "get user Bob@Example.com",
            &[("directory.get_user", json!({"email": "bob@example.com"}))],
        );
        check(
            "who is bob?",
            &[("directory.get_user", json!({"email": "bob@example.com"}))],
        );
        check(
            "list applications",
            &[("directory.list_applications", none.clone())],
        );
        check(
            "list apps",
            &[("directory.list_applications", none.clone())],
        );
        check(
            "create user dana in group finance",
            &[
                (
                    "directory.create_user",
                    json!({"email": "dana@example.com", "name": "Dana"}),
                ),
                (
                    "directory.add_user_to_group",
                    json!({"email": "dana@example.com", "group": "finance"}),
                ),
            ],
        );
        check(
            "create user dana",
            &[(
                "directory.create_user",
                json!({"email": "dana@example.com", "name": "Dana"}),
            )],
        );
        check(
            "create user erin.evans@example.com",
            &[(
                "directory.create_user",
                json!({"email": "erin.evans@example.com", "name": "Erin Evans"}),
            )],
        );
        let add = json!({"email": "dana@example.com", "group": "finance"});
        check(
            "add dana to group finance",
            &[("directory.add_user_to_group", add.clone())],
        );
        check(
            "please add dana to finance",
            &[("directory.add_user_to_group", add.clone())],
        );
        let bob = json!({"email": "bob@example.com"});
        check(
            "deactivate bob",
            &[("directory.deactivate_user", bob.clone())],
        );
        check(
            "revoke sessions of bob",
            &[("directory.revoke_user_sessions", bob.clone())],
        );
        check(
            "sign out bob",
            &[("directory.revoke_user_sessions", bob.clone())],
        );
        check(
            "delete carol",
            &[(
                "directory.delete_user",
                json!({"email": "carol@example.com"}),
            )],
        );
        check(
            "delete user carol",
            &[(
                "directory.delete_user",
                json!({"email": "carol@example.com"}),
            )],
        );
        check(
            "make bob admin",
            &[("directory.grant_admin_role", bob.clone())],
        );
        check(
            "grant admin to bob",
            &[("directory.grant_admin_role", bob.clone())],
        );
        check("what is my balance?", &[("bank.get_balance", none.clone())]);
        check("balance", &[("bank.get_balance", none.clone())]);
        check(
            "list transactions",
            &[("bank.list_transactions", none.clone())],
        );
        check(
            "recent transactions",
            &[("bank.list_transactions", none.clone())],
        );
        check(
            "show my transactions",
            &[("bank.list_transactions", none.clone())],
        );
        check(
            "transfer 250 USD to ACC-2",
            &[(
                "bank.transfer_funds",
                json!({"amount": 250, "currency": "USD", "destination": "ACC-2"}),
            )],
        );
        check(
            "send 12.50 eur to landlord",
            &[(
                "bank.transfer_funds",
                json!({"amount": 12.5, "currency": "EUR", "destination": "landlord"}),
            )],
        );
        check(
            "could you pay 40 usd to coffee-corner please",
            &[(
                "bank.transfer_funds",
                json!({"amount": 40, "currency": "USD", "destination": "coffee-corner"}),
            )],
        );
    }

    #[test]
    fn unknown_requests_get_help() {
        check("help", &[]);
        check("", &[]);
        check("what is the weather", &[]);
        check("list users and delete bob", &[]);
        check("delete", &[]);
        check("delete user", &[]);
        check("show user bob carol", &[]);
        check("transfer -5 USD to ACC-2", &[]);
        check("transfer 0 USD to ACC-2", &[]);
        check("transfer 10 dollars to ACC-2", &[]);
        check("transfer ten USD to ACC-2", &[]);
        check("deactivate bob@", &[]);
        check("add dana to group fin/ance", &[]);
        assert_eq!(parse("help"), Intent::Help { understood: true });
        assert_eq!(parse("sing a song"), Intent::Help { understood: false });
    }

    fn tools(names: &[&str]) -> Vec<ToolSpec> {
        names
            .iter()
            .map(|n| ToolSpec {
                name: (*n).to_owned(),
                description: String::new(),
                input_schema: json!({"type": "object"}),
            })
            .collect()
    }

    fn request(messages: Vec<Message>) -> ModelRequest {
        ModelRequest {
            system: String::new(),
            messages,
            tools: tools(&[
                "directory__create_user",
                "directory__add_user_to_group",
                "directory__list_users",
                "bank__get_balance",
            ]),
            max_tokens: 1024,
        }
    }

    fn tool_use(response: &ModelResponse) -> (String, String, Value) {
        match &response.content[..] {
            [Content::ToolUse { id, name, input }] => (id.clone(), name.clone(), input.clone()),
            other => panic!("expected one tool use, got {other:?}"),
        }
    }

    fn text(response: &ModelResponse) -> String {
        match &response.content[..] {
            [Content::Text(t)] => t.clone(),
            other => panic!("expected text, got {other:?}"),
        }
    }

    fn after(messages: &mut Vec<Message>, response: &ModelResponse, result: &str, is_error: bool) {
        let (id, _, _) = tool_use(response);
        messages.push(Message::assistant(response.content.clone()));
        messages.push(Message {
            role: Role::User,
            content: vec![Content::ToolResult {
                tool_use_id: id,
                content: result.into(),
                is_error,
            }],
        });
    }

    #[test]
    fn create_in_group_runs_two_steps_then_answers() {
        let mut messages = vec![Message::user_text("create user dana in group finance")];
        let first = respond(&request(messages.clone()));
        let (id, name, input) = tool_use(&first);
        assert_eq!(id, "toolu_scripted_0");
        assert_eq!(name, "directory__create_user");
        assert_eq!(input, json!({"email": "dana@example.com", "name": "Dana"}));
        after(
            &mut messages,
            &first,
            r#"{"created":true,"user":{"email":"dana@example.com","name":"Dana","active":true,"admin":false,"sessions":0,"groups":[],"created_at":"2026-01-01"}}"#,
            false,
        );
        let second = respond(&request(messages.clone()));
        let (id, name, input) = tool_use(&second);
        assert_eq!(id, "toolu_scripted_1");
        assert_eq!(name, "directory__add_user_to_group");
        assert_eq!(
            input,
            json!({"email": "dana@example.com", "group": "finance"})
        );
        after(
            &mut messages,
            &second,
            "{\"added\":true,\"group\":\"finance\",\"user\":{\"email\":\"dana@example.com\",\"name\":\"Dana\"}}\nKeyless caution (W1): unusual activity.",
            false,
        );
        let last = respond(&request(messages));
        assert_eq!(last.stop, StopReason::EndTurn);
        assert_eq!(
            text(&last),
            "Created user dana@example.com (Dana).\nAdded dana@example.com to group finance.\nKeyless caution (W1): unusual activity."
        );
    }

    #[test]
    fn a_failed_step_ends_the_plan() {
        let mut messages = vec![Message::user_text("create user dana in group finance")];
        let first = respond(&request(messages.clone()));
        after(
            &mut messages,
            &first,
            "user `dana@example.com` already exists",
            true,
        );
        let last = respond(&request(messages));
        assert_eq!(
            text(&last),
            "The call to `directory.create_user` was refused: user `dana@example.com` already exists\nI stopped there: the remaining steps were not run."
        );
    }

    #[test]
    fn a_tool_not_offered_is_asked_for_anyway_so_the_gateway_decides() {
        let last = respond(&request(vec![Message::user_text("delete carol")]));
        assert!(
            matches!(
                last.content.first(),
                Some(Content::ToolUse { name, input, .. })
                    if name == "directory__delete_user" && input["email"] == "carol@example.com"
            ),
            "{last:?}"
        );
    }

    #[test]
    fn results_are_rendered_readably() {
        let mut messages = vec![Message::user_text("what is my balance")];
        let first = respond(&request(messages.clone()));
        after(
            &mut messages,
            &first,
            r#"{"account":"chk-alice","owner":"alice@example.com","currency":"USD","balance":5230.0,"balance_display":"5,230.00 USD"}"#,
            false,
        );
        assert_eq!(
            text(&respond(&request(messages))),
            "Your balance is 5,230.00 USD (account chk-alice)."
        );

        let mut messages = vec![Message::user_text("list users")];
        let first = respond(&request(messages.clone()));
        after(
            &mut messages,
            &first,
            r#"{"count":2,"users":[{"email":"alice@example.com","name":"Alice","active":true,"admin":true,"sessions":1,"groups":["admins","engineering"]},{"email":"bob@example.com","name":"Bob","active":false,"admin":false,"sessions":0,"groups":[]}]}"#,
            false,
        );
        assert_eq!(
            text(&respond(&request(messages))),
            "There are 2 users in the directory:\nalice@example.com — Alice (admins, engineering) [admin]\nbob@example.com — Bob (no groups) [inactive]"
        );

        // An unknown shape is pretty-printed, long text truncated.
        let rendered = render_success("x.y", &format!("{{\"k\":\"{}\"}}", "v".repeat(5000)));
        assert!(rendered.starts_with("The call to `x.y` succeeded:\n{\n  \"k\""));
        assert!(rendered.ends_with("… (truncated)"));
    }

    #[test]
    fn a_new_request_starts_a_new_plan() {
        let mut messages = vec![Message::user_text("balance")];
        let first = respond(&request(messages.clone()));
        after(&mut messages, &first, "{}", false);
        messages.push(Message::assistant(vec![Content::Text("ok".into())]));
        messages.push(Message::user_text("list users"));
        let (id, name, _) = tool_use(&respond(&request(messages)));
        assert_eq!(id, "toolu_scripted_1");
        assert_eq!(name, "directory__list_users");
    }
}
