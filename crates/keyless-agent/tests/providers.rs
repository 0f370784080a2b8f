//! The providers and the tool loop end to end: recorded provider responses
//! (tests/fixtures, in each provider's documented wire format) served by a
//! local HTTP server that records every request, a fake gateway that records
//! every call, and `Host::run_turn` in between.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::{
    collections::{HashMap, VecDeque},
    convert::Infallible,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use axum::{
    Router,
    body::{Body, Bytes},
    extract::State,
    http::{HeaderMap, StatusCode, Uri},
    response::Response,
};
use keyless_agent::{
    Anthropic, AnthropicConfig, ApiKey, ChatEvent, Content, DeltaSink, GatewayError, Host,
    HostConfig, KeySource, Message, Model, ModelError, ModelRequest, ModelResponse, OpenAi,
    OpenAiConfig, Role, Scripted, StaticKey, StopReason, ToolGateway, ToolOutcome, ToolSpec,
};
use serde_json::{Value, json};
use tokio::sync::mpsc;

// --- fixture server ---

/// What the fixture server answers to the next request.
#[derive(Clone)]
enum Reply {
    /// 200 with an event stream, sent in small chunks.
    Sse(&'static str),
    /// An error status with a JSON body.
    Json(u16, &'static str),
    /// Never answers.
    Hang,
}

/// One request as the server saw it.
#[derive(Debug, Clone)]
struct Recorded {
    path: String,
    headers: HashMap<String, String>,
    body: Value,
}

#[derive(Default)]
struct Fixtures {
    replies: Mutex<VecDeque<Reply>>,
    requests: Mutex<Vec<Recorded>>,
}

async fn serve_fixture(
    State(fixtures): State<Arc<Fixtures>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let headers = headers
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap().to_owned()))
        .collect();
    fixtures.requests.lock().unwrap().push(Recorded {
        path: uri.path().to_owned(),
        headers,
        body: serde_json::from_slice(&body).unwrap(),
    });
    let reply = fixtures.replies.lock().unwrap().pop_front();
    match reply.expect("the test queued no reply for this request") {
        Reply::Sse(text) => {
            // Small chunks: events and lines straddle chunk boundaries.
            let chunks: Vec<Result<Bytes, Infallible>> = text
                .as_bytes()
                .chunks(17)
                .map(|c| Ok(Bytes::copy_from_slice(c)))
                .collect();
            Response::builder()
                .header("content-type", "text/event-stream; charset=utf-8")
                .header("cache-control", "no-cache")
                .body(Body::from_stream(futures::stream::iter(chunks)))
                .unwrap()
        }
        Reply::Json(status, body) => Response::builder()
            .status(StatusCode::from_u16(status).unwrap())
            .header("content-type", "application/json")
            .body(Body::from(body))
            .unwrap(),
        Reply::Hang => std::future::pending().await,
    }
}

/// Starts a fixture server answering `replies` in order; returns its base URL.
async fn fixture_server(replies: Vec<Reply>) -> (String, Arc<Fixtures>) {
    let fixtures = Arc::new(Fixtures::default());
    fixtures.replies.lock().unwrap().extend(replies);
    let app = Router::new()
        .fallback(serve_fixture)
        .with_state(Arc::clone(&fixtures));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), fixtures)
}

fn requests(fixtures: &Fixtures) -> Vec<Recorded> {
    fixtures.requests.lock().unwrap().clone()
}

// --- fake gateway ---

type Outcome = Result<ToolOutcome, GatewayError>;

struct FakeGateway {
    tools: Vec<ToolSpec>,
    list_error: Option<GatewayError>,
    results: Mutex<HashMap<String, VecDeque<Outcome>>>,
    calls: Mutex<Vec<(String, String, Value)>>,
}

impl FakeGateway {
    fn new(tools: &[&str]) -> Self {
        Self {
            tools: tools
                .iter()
                .map(|name| ToolSpec {
                    name: (*name).to_owned(),
                    description: format!("the {name} tool"),
                    input_schema: json!({"type": "object", "properties": {}}),
                })
                .collect(),
            list_error: None,
            results: Mutex::default(),
            calls: Mutex::default(),
        }
    }

    fn answer(self, tool: &str, outcome: Outcome) -> Self {
        self.results
            .lock()
            .unwrap()
            .entry(tool.to_owned())
            .or_default()
            .push_back(outcome);
        self
    }

    fn calls(&self) -> Vec<(String, String, Value)> {
        self.calls.lock().unwrap().clone()
    }
}

#[async_trait]
impl ToolGateway for FakeGateway {
    async fn list_tools(&self, _user_token: &str) -> Result<Vec<ToolSpec>, GatewayError> {
        match &self.list_error {
            Some(e) => Err(e.clone()),
            None => Ok(self.tools.clone()),
        }
    }

    async fn call_tool(&self, user_token: &str, name: &str, arguments: Value) -> Outcome {
        self.calls
            .lock()
            .unwrap()
            .push((user_token.to_owned(), name.to_owned(), arguments));
        let next = self
            .results
            .lock()
            .unwrap()
            .get_mut(name)
            .and_then(VecDeque::pop_front);
        next.unwrap_or_else(|| Ok(ok(&format!("{{\"tool\":\"{name}\"}}"))))
    }
}

fn ok(text: &str) -> ToolOutcome {
    ToolOutcome {
        is_error: false,
        text: text.to_owned(),
        structured: None,
    }
}

// --- helpers ---

const TOKEN: &str = "user-session-token";

fn config() -> HostConfig {
    HostConfig {
        system_prompt: "You are the Keyless demo assistant.".into(),
        ..HostConfig::default()
    }
}

fn anthropic(base_url: &str, key: Arc<dyn KeySource>, timeout: Duration) -> Arc<dyn Model> {
    Arc::new(
        Anthropic::new(
            AnthropicConfig {
                base_url: base_url.to_owned(),
                model: "claude-sonnet-4-5".into(),
                timeout,
            },
            key,
        )
        .unwrap(),
    )
}

fn openai(base_url: &str, key: &str, timeout: Duration) -> Arc<dyn Model> {
    Arc::new(
        OpenAi::new(
            OpenAiConfig {
                base_url: format!("{base_url}/v1"),
                model: "gpt-4o-mini".into(),
                timeout,
            },
            static_key(key),
        )
        .unwrap(),
    )
}

fn static_key(key: &str) -> Arc<dyn KeySource> {
    Arc::new(StaticKey(ApiKey::new(key.to_owned())))
}

/// Runs one turn and returns every event it sent.
async fn turn(host: &Host, history: &mut Vec<Message>, message: &str) -> Vec<ChatEvent> {
    let (tx, mut rx) = mpsc::channel(256);
    let run = host.run_turn(history, TOKEN, message, tx);
    // Bounded: a hang fails the test instead of blocking it.
    tokio::time::timeout(Duration::from_secs(20), run)
        .await
        .expect("the turn did not end");
    let mut events = Vec::new();
    while let Some(event) = rx.recv().await {
        events.push(event);
    }
    events
}

fn text(s: &str) -> ChatEvent {
    ChatEvent::Text { delta: s.into() }
}

/// All Text deltas joined.
fn answer(events: &[ChatEvent]) -> String {
    events
        .iter()
        .filter_map(|e| match e {
            ChatEvent::Text { delta } => Some(delta.as_str()),
            _ => None,
        })
        .collect()
}

/// Events without the Text deltas.
fn non_text(events: &[ChatEvent]) -> Vec<ChatEvent> {
    events
        .iter()
        .filter(|e| !matches!(e, ChatEvent::Text { .. }))
        .cloned()
        .collect()
}

// --- Anthropic ---

#[tokio::test]
async fn anthropic_tool_use_round_trip() {
    let (base, fixtures) = fixture_server(vec![
        Reply::Sse(include_str!("fixtures/anthropic_tool_use.sse")),
        Reply::Sse(include_str!("fixtures/anthropic_final.sse")),
    ])
    .await;
    let users = "{\"count\":2,\"users\":[]}\nKeyless caution (W1): first call at this hour. This session is being watched; further anomalies restrict it.";
    let gateway = Arc::new(
        FakeGateway::new(&["directory.list_users", "bank.get_balance"])
            .answer("directory.list_users", Ok(ok(users))),
    );
    let host = Host::new(
        anthropic(
            &base,
            static_key("test-anthropic-key"),
            Duration::from_secs(10),
        ),
        gateway.clone(),
        config(),
    );
    assert_eq!(host.model_name(), "anthropic:claude-sonnet-4-5");
    let mut history = Vec::new();
    let events = turn(&host, &mut history, "who is in the directory?").await;

    let tool_id = "toolu_01T1x1fJ34qAmk2tNTrN7Up6";
    assert_eq!(
        events,
        vec![
            text("Let me "),
            text("look that up."),
            ChatEvent::ToolCall {
                id: tool_id.into(),
                tool: "directory.list_users".into(),
                arguments: json!({"limit": 25}),
            },
            ChatEvent::ToolResult {
                id: tool_id.into(),
                tool: "directory.list_users".into(),
                ok: true,
                text: users.into(),
                refusal: None,
            },
            ChatEvent::Warning {
                level: "W1".into(),
                text: "Keyless caution (W1): first call at this hour. This session is being watched; further anomalies restrict it.".into(),
            },
            text("There are 2 users: "),
            text("alice and bob."),
            ChatEvent::Done { steps: 1 },
        ]
    );
    assert_eq!(
        gateway.calls(),
        vec![(
            TOKEN.to_owned(),
            "directory.list_users".to_owned(),
            json!({"limit": 25})
        )]
    );

    let requests = requests(&fixtures);
    assert_eq!(requests.len(), 2);
    for r in &requests {
        assert_eq!(r.path, "/v1/messages");
        assert_eq!(r.headers["x-api-key"], "test-anthropic-key");
        assert_eq!(r.headers["anthropic-version"], "2023-06-01");
        assert_eq!(r.headers["content-type"], "application/json");
        assert_eq!(r.body["model"], "claude-sonnet-4-5");
        assert_eq!(r.body["stream"], true);
        assert_eq!(r.body["max_tokens"], 1024);
        assert_eq!(r.body["system"], "You are the Keyless demo assistant.");
        let names: Vec<&str> = r.body["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["directory__list_users", "bank__get_balance"]);
        assert_eq!(
            r.body["tools"][0]["input_schema"],
            json!({"type": "object", "properties": {}})
        );
        assert!(!r.headers.contains_key("authorization"));
    }
    assert_eq!(
        requests[0].body["messages"],
        json!([{"role": "user", "content": [{"type": "text", "text": "who is in the directory?"}]}])
    );
    let second = &requests[1].body["messages"];
    assert_eq!(second.as_array().unwrap().len(), 3);
    assert_eq!(
        second[1],
        json!({"role": "assistant", "content": [
            {"type": "text", "text": "Let me look that up."},
            {"type": "tool_use", "id": tool_id, "name": "directory__list_users", "input": {"limit": 25}},
        ]})
    );
    assert_eq!(
        second[2],
        json!({"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": tool_id, "content": users, "is_error": false},
        ]})
    );

    // The history holds what the model saw, ready for the next turn.
    assert_eq!(history.len(), 4);
    assert_eq!(
        history[3],
        Message::assistant(vec![Content::Text(
            "There are 2 users: alice and bob.".into()
        )])
    );
}

// --- OpenAI ---

#[tokio::test]
async fn openai_tool_calls_round_trip() {
    let (base, fixtures) = fixture_server(vec![
        Reply::Sse(include_str!("fixtures/openai_tool_calls.sse")),
        Reply::Sse(include_str!("fixtures/openai_final.sse")),
    ])
    .await;
    let bob = "{\"user\":{\"email\":\"bob@example.com\",\"groups\":[\"finance\"]}}";
    let refused =
        "Keyless refused this call (policy): `bank.get_balance` is not allowed for this agent";
    let refusal = json!({"error": "access_denied", "step": "policy", "reason": "`bank.get_balance` is not allowed for this agent"});
    let gateway = Arc::new(
        FakeGateway::new(&["directory.get_user", "bank.get_balance"])
            .answer("directory.get_user", Ok(ok(bob)))
            .answer(
                "bank.get_balance",
                Ok(ToolOutcome {
                    is_error: true,
                    text: refused.into(),
                    structured: Some(refusal.clone()),
                }),
            ),
    );
    let host = Host::new(
        openai(&base, "test-openai-key", Duration::from_secs(10)),
        gateway.clone(),
        config(),
    );
    assert_eq!(host.model_name(), "openai:gpt-4o-mini");
    let mut history = Vec::new();
    let events = turn(&host, &mut history, "Who is bob, and what is my balance?").await;

    let (a, b) = ("call_Xq1aB2cD3eF4gH5i", "call_Yr2bC3dE4fG5hI6j");
    assert_eq!(
        events,
        vec![
            ChatEvent::ToolCall {
                id: a.into(),
                tool: "directory.get_user".into(),
                arguments: json!({"email": "bob@example.com"}),
            },
            ChatEvent::ToolResult {
                id: a.into(),
                tool: "directory.get_user".into(),
                ok: true,
                text: bob.into(),
                refusal: None,
            },
            ChatEvent::ToolCall {
                id: b.into(),
                tool: "bank.get_balance".into(),
                arguments: json!({}),
            },
            ChatEvent::ToolResult {
                id: b.into(),
                tool: "bank.get_balance".into(),
                ok: false,
                text: refused.into(),
                refusal: Some(refusal),
            },
            text("Bob is in "),
            text("finance; the balance was refused."),
            ChatEvent::Done { steps: 1 },
        ]
    );
    let calls: Vec<String> = gateway.calls().into_iter().map(|c| c.1).collect();
    assert_eq!(calls, ["directory.get_user", "bank.get_balance"]);

    let requests = requests(&fixtures);
    assert_eq!(requests.len(), 2);
    for r in &requests {
        assert_eq!(r.path, "/v1/chat/completions");
        assert_eq!(r.headers["authorization"], "Bearer test-openai-key");
        assert_eq!(r.body["model"], "gpt-4o-mini");
        assert_eq!(r.body["stream"], true);
        assert_eq!(r.body["max_tokens"], 1024);
        assert_eq!(
            r.body["tools"][0],
            json!({"type": "function", "function": {
                "name": "directory__get_user",
                "description": "the directory.get_user tool",
                "parameters": {"type": "object", "properties": {}},
            }})
        );
        assert_eq!(r.body["tools"][1]["function"]["name"], "bank__get_balance");
    }
    assert_eq!(
        requests[0].body["messages"],
        json!([
            {"role": "system", "content": "You are the Keyless demo assistant."},
            {"role": "user", "content": "Who is bob, and what is my balance?"},
        ])
    );
    let second = requests[1].body["messages"].as_array().unwrap();
    assert_eq!(second.len(), 5);
    assert_eq!(
        second[2],
        json!({"role": "assistant", "content": null, "tool_calls": [
            {"id": a, "type": "function", "function": {"name": "directory__get_user", "arguments": "{\"email\":\"bob@example.com\"}"}},
            {"id": b, "type": "function", "function": {"name": "bank__get_balance", "arguments": "{}"}},
        ]})
    );
    assert_eq!(
        second[3],
        json!({"role": "tool", "tool_call_id": a, "content": bob})
    );
    assert_eq!(
        second[4],
        json!({"role": "tool", "tool_call_id": b, "content": format!("ERROR: {refused}")})
    );
}

#[tokio::test]
async fn openai_without_a_key_sends_no_authorization_header() {
    let (base, fixtures) =
        fixture_server(vec![Reply::Sse(include_str!("fixtures/openai_final.sse"))]).await;
    let host = Host::new(
        openai(&base, "", Duration::from_secs(10)),
        Arc::new(FakeGateway::new(&[])),
        config(),
    );
    let events = turn(&host, &mut Vec::new(), "hello").await;
    assert_eq!(
        answer(&events),
        "Bob is in finance; the balance was refused."
    );
    let requests = requests(&fixtures);
    assert!(!requests[0].headers.contains_key("authorization"));
    // No tools offered: no `tools` member (some local servers reject `[]`).
    assert!(requests[0].body.get("tools").is_none());
}

// --- errors reach the user, never a hang ---

struct FailingKey;

#[async_trait]
impl KeySource for FailingKey {
    async fn api_key(&self) -> Result<ApiKey, ModelError> {
        Err(ModelError::Key(
            "put the Anthropic API key in the secret store at `kv/agent/anthropic`".into(),
        ))
    }
}

#[tokio::test]
async fn provider_errors_end_the_turn_with_a_message() {
    struct Case {
        provider: &'static str,
        reply: Option<Reply>,
        key: Option<Arc<dyn KeySource>>,
        expect: &'static [&'static str],
    }
    let cases = vec![
        Case {
            provider: "anthropic",
            reply: Some(Reply::Json(
                401,
                include_str!("fixtures/anthropic_401.json"),
            )),
            key: None,
            expect: &[
                "the model provider refused the request (HTTP 401 authentication_error): invalid x-api-key",
            ],
        },
        Case {
            provider: "openai",
            reply: Some(Reply::Json(429, include_str!("fixtures/openai_429.json"))),
            key: None,
            expect: &["HTTP 429 requests", "Rate limit reached for gpt-4o-mini"],
        },
        Case {
            provider: "anthropic",
            reply: Some(Reply::Sse(include_str!(
                "fixtures/anthropic_overloaded.sse"
            ))),
            key: None,
            expect: &["overloaded_error", "Overloaded"],
        },
        Case {
            provider: "anthropic",
            reply: Some(Reply::Sse(include_str!("fixtures/anthropic_cut.sse"))),
            key: None,
            expect: &["the stream ended before `message_stop`"],
        },
        Case {
            provider: "openai",
            reply: Some(Reply::Sse(include_str!("fixtures/openai_cut.sse"))),
            key: None,
            expect: &["the stream ended before `data: [DONE]`"],
        },
        Case {
            provider: "anthropic",
            reply: Some(Reply::Hang),
            key: None,
            expect: &["no answer within 300 ms"],
        },
        Case {
            provider: "openai",
            reply: Some(Reply::Hang),
            key: None,
            expect: &["no answer within 300 ms"],
        },
        Case {
            provider: "anthropic",
            reply: None,
            key: Some(Arc::new(FailingKey)),
            expect: &["put the Anthropic API key in the secret store at `kv/agent/anthropic`"],
        },
    ];
    for case in cases {
        let no_reply = case.reply.is_none();
        let (base, fixtures) = fixture_server(case.reply.into_iter().collect()).await;
        // A bound on each wait, not a timing assertion.
        let timeout = Duration::from_millis(300);
        let model = match case.provider {
            "anthropic" => anthropic(&base, case.key.unwrap_or_else(|| static_key("k")), timeout),
            _ => openai(&base, "k", timeout),
        };
        let gateway = Arc::new(FakeGateway::new(&["directory.list_users"]));
        let host = Host::new(model, gateway.clone(), config());
        let mut history = Vec::new();
        let events = turn(&host, &mut history, "list users").await;
        let non_text = non_text(&events);
        let [ChatEvent::Error { message }, ChatEvent::Done { steps: 0 }] = non_text.as_slice()
        else {
            panic!("{}: unexpected events {events:?}", case.expect[0]);
        };
        for part in case.expect {
            assert!(message.contains(part), "`{message}` lacks `{part}`");
        }
        assert!(gateway.calls().is_empty());
        if no_reply {
            assert!(requests(&fixtures).is_empty(), "no key, no request");
        }
        // The user's message stays; the failed answer adds nothing.
        assert_eq!(history, vec![Message::user_text("list users")]);
    }
}

// --- the scripted model through the host ---

#[tokio::test]
async fn scripted_create_in_group_calls_both_tools_in_order() {
    let gateway = Arc::new(
        FakeGateway::new(&[
            "directory.list_users",
            "directory.create_user",
            "directory.add_user_to_group",
        ])
        .answer(
            "directory.create_user",
            Ok(ok(r#"{"created":true,"user":{"email":"dana@example.com","name":"Dana","active":true,"admin":false,"sessions":0,"groups":[],"created_at":"2026-12-02T00:00:00Z"}}"#)),
        )
        .answer(
            "directory.add_user_to_group",
            Ok(ok(r#"{"added":true,"group":"finance","user":{"email":"dana@example.com","name":"Dana","active":true,"admin":false,"sessions":0,"groups":["finance"],"created_at":"2026-12-02T00:00:00Z"}}"#)),
        ),
    );
    let host = Host::new(Arc::new(Scripted), gateway.clone(), config());
    assert_eq!(host.model_name(), "scripted");
    let mut history = Vec::new();
    let events = turn(
        &host,
        &mut history,
        "Please create user dana in group finance",
    )
    .await;

    assert_eq!(
        gateway.calls(),
        vec![
            (
                TOKEN.to_owned(),
                "directory.create_user".to_owned(),
                json!({"email": "dana@example.com", "name": "Dana"})
            ),
            (
                TOKEN.to_owned(),
                "directory.add_user_to_group".to_owned(),
                json!({"email": "dana@example.com", "group": "finance"})
            ),
        ]
    );
    let kinds: Vec<&str> = non_text(&events)
        .iter()
        .map(|e| match e {
            ChatEvent::ToolCall { .. } => "call",
            ChatEvent::ToolResult { ok: true, .. } => "ok",
            ChatEvent::Done { steps: 2 } => "done",
            _ => "other",
        })
        .collect();
    assert_eq!(kinds, ["call", "ok", "call", "ok", "done"]);
    assert_eq!(
        answer(&events),
        "Created user dana@example.com (Dana).\nAdded dana@example.com to group finance."
    );
    // user, (assistant tool_use, user tool_result) × 2, assistant answer
    assert_eq!(history.len(), 6);
}

#[tokio::test]
async fn scripted_reports_a_refusal_with_its_text() {
    let refused = "Keyless refused this call (policy): tier 4 tool `directory.delete_user` is blocked for agents";
    let gateway = Arc::new(FakeGateway::new(&["directory.delete_user"]).answer(
        "directory.delete_user",
        Ok(ToolOutcome {
            is_error: true,
            text: refused.into(),
            structured: Some(
                json!({"error": "access_denied", "step": "policy", "reason": "blocked"}),
            ),
        }),
    ));
    let host = Host::new(Arc::new(Scripted), gateway, config());
    let events = turn(&host, &mut Vec::new(), "delete carol").await;
    assert!(matches!(
        &events[1],
        ChatEvent::ToolResult { ok: false, refusal: Some(r), .. } if r["step"] == "policy"
    ));
    assert_eq!(
        answer(&events),
        format!("The call to `directory.delete_user` was refused: {refused}")
    );
    assert_eq!(events.last(), Some(&ChatEvent::Done { steps: 1 }));
}

#[tokio::test]
async fn scripted_conversation_continues_over_turns() {
    let gateway = Arc::new(FakeGateway::new(&[
        "bank.get_balance",
        "bank.list_transactions",
    ]));
    let host = Host::new(Arc::new(Scripted), gateway.clone(), config());
    let mut history = Vec::new();
    turn(&host, &mut history, "what is my balance").await;
    let events = turn(&host, &mut history, "recent transactions").await;
    assert!(matches!(
        &events[0],
        ChatEvent::ToolCall { id, tool, .. } if id == "toolu_scripted_1" && tool == "bank.list_transactions"
    ));
    let calls: Vec<String> = gateway.calls().into_iter().map(|c| c.1).collect();
    assert_eq!(calls, ["bank.get_balance", "bank.list_transactions"]);
}

// --- loop limits and gateway failures ---

/// A model that asks for `tool` on every call and counts its calls.
struct Insistent {
    tool: &'static str,
    calls: AtomicUsize,
}

#[async_trait]
impl Model for Insistent {
    fn name(&self) -> String {
        "insistent".into()
    }

    async fn complete(
        &self,
        _req: &ModelRequest,
        _sink: DeltaSink<'_>,
    ) -> Result<ModelResponse, ModelError> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        Ok(ModelResponse {
            content: vec![Content::ToolUse {
                id: format!("toolu_{n}"),
                name: self.tool.into(),
                input: json!({}),
            }],
            stop: StopReason::ToolUse,
        })
    }
}

#[tokio::test]
async fn the_step_limit_stops_a_model_that_never_ends() {
    let model = Arc::new(Insistent {
        tool: "bank__get_balance",
        calls: AtomicUsize::new(0),
    });
    let gateway = Arc::new(FakeGateway::new(&["bank.get_balance"]));
    let host = Host::new(
        model.clone(),
        gateway.clone(),
        HostConfig {
            max_steps: 3,
            ..config()
        },
    );
    let mut history = Vec::new();
    let events = turn(&host, &mut history, "balance").await;
    assert_eq!(gateway.calls().len(), 3);
    assert_eq!(model.calls.load(Ordering::SeqCst), 4);
    let tail = &events[events.len() - 2..];
    assert_eq!(
        tail,
        [
            ChatEvent::Error {
                message: "stopped after 3 tool steps".into()
            },
            ChatEvent::Done { steps: 3 },
        ]
    );
    // Every tool_use in the history has its tool_result.
    assert_eq!(history.len(), 7);
    assert_eq!(history.last().unwrap().role, Role::User);
    assert!(history.last().unwrap().has_tool_result());
}

#[tokio::test]
async fn a_tool_name_not_offered_goes_to_the_gateway_which_decides() {
    let model = Arc::new(Insistent {
        tool: "shell__rm_rf",
        calls: AtomicUsize::new(0),
    });
    let refused = ToolOutcome {
        is_error: true,
        text: "Keyless refused this call (tool): unknown tool `shell.rm_rf`".into(),
        structured: Some(
            json!({"error": "unknown_tool", "step": "tool", "reason": "unknown tool `shell.rm_rf`"}),
        ),
    };
    let gateway =
        Arc::new(FakeGateway::new(&["bank.get_balance"]).answer("shell.rm_rf", Ok(refused)));
    let host = Host::new(
        model,
        gateway.clone(),
        HostConfig {
            max_steps: 1,
            ..config()
        },
    );
    let events = turn(&host, &mut Vec::new(), "balance").await;
    // The host does not filter: the gateway got the call, in dotted form.
    let calls = gateway.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].1, "shell.rm_rf");
    assert_eq!(
        events[1],
        ChatEvent::ToolResult {
            id: "toolu_0".into(),
            tool: "shell.rm_rf".into(),
            ok: false,
            text: "Keyless refused this call (tool): unknown tool `shell.rm_rf`".into(),
            refusal: Some(
                json!({"error": "unknown_tool", "step": "tool", "reason": "unknown tool `shell.rm_rf`"})
            ),
        }
    );
}

#[tokio::test]
async fn a_session_ended_by_the_gateway_ends_the_turn() {
    let model = Arc::new(Insistent {
        tool: "directory__list_users",
        calls: AtomicUsize::new(0),
    });
    let gateway = Arc::new(FakeGateway::new(&["directory.list_users"]).answer(
        "directory.list_users",
        Err(GatewayError::SessionEnded(
            "your session was revoked: sign in again".into(),
        )),
    ));
    let host = Host::new(model.clone(), gateway.clone(), config());
    let mut history = Vec::new();
    let events = turn(&host, &mut history, "list users").await;
    assert_eq!(
        events,
        vec![
            ChatEvent::ToolCall {
                id: "toolu_0".into(),
                tool: "directory.list_users".into(),
                arguments: json!({}),
            },
            ChatEvent::SessionEnded {
                message: "your session was revoked: sign in again".into()
            },
            ChatEvent::Done { steps: 1 },
        ]
    );
    assert_eq!(
        model.calls.load(Ordering::SeqCst),
        1,
        "no further model call"
    );
    // The tool_use still gets a result, so the conversation stays valid.
    assert!(history.last().unwrap().has_tool_result());
}

#[tokio::test]
async fn gateway_failures_when_listing_tools_end_the_turn() {
    for (error, expected) in [
        (
            GatewayError::SessionEnded("session expired".into()),
            ChatEvent::SessionEnded {
                message: "session expired".into(),
            },
        ),
        (
            GatewayError::Refused("agent `demo` is disabled".into()),
            ChatEvent::Error {
                message: "the Keyless gateway refused the request: agent `demo` is disabled".into(),
            },
        ),
        (
            GatewayError::Unavailable("connection refused".into()),
            ChatEvent::Error {
                message: "the Keyless gateway is unavailable: connection refused".into(),
            },
        ),
    ] {
        let model = Arc::new(Insistent {
            tool: "x",
            calls: AtomicUsize::new(0),
        });
        let mut gateway = FakeGateway::new(&[]);
        gateway.list_error = Some(error);
        let host = Host::new(model.clone(), Arc::new(gateway), config());
        let events = turn(&host, &mut Vec::new(), "list users").await;
        assert_eq!(events, vec![expected, ChatEvent::Done { steps: 0 }]);
        assert_eq!(model.calls.load(Ordering::SeqCst), 0);
    }
}

#[tokio::test]
async fn a_refused_call_ends_the_turn_with_an_error() {
    let model = Arc::new(Insistent {
        tool: "bank__get_balance",
        calls: AtomicUsize::new(0),
    });
    let gateway = Arc::new(FakeGateway::new(&["bank.get_balance"]).answer(
        "bank.get_balance",
        Err(GatewayError::Refused("HTTP 413: request too large".into())),
    ));
    let host = Host::new(model.clone(), gateway, config());
    let events = turn(&host, &mut Vec::new(), "balance").await;
    assert_eq!(
        &events[1..],
        [
            ChatEvent::Error {
                message: "the Keyless gateway refused the request: HTTP 413: request too large"
                    .into()
            },
            ChatEvent::Done { steps: 1 },
        ]
    );
    assert_eq!(model.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_gone_receiver_stops_the_turn() {
    let model = Arc::new(Insistent {
        tool: "bank__get_balance",
        calls: AtomicUsize::new(0),
    });
    let gateway = Arc::new(FakeGateway::new(&["bank.get_balance"]));
    let host = Host::new(model.clone(), gateway.clone(), config());
    let (tx, rx) = mpsc::channel(8);
    drop(rx);
    let mut history = Vec::new();
    tokio::time::timeout(
        Duration::from_secs(20),
        host.run_turn(&mut history, TOKEN, "balance", tx),
    )
    .await
    .unwrap();
    assert!(gateway.calls().is_empty());
}
