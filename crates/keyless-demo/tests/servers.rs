//! End-to-end tests of the demo servers over real HTTP: MCP handshake and
//! tool listing, OBO token verification (every refusal path), RAR limits,
//! single use, bank transfers and persistence of the SQLite stores.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use common::{Harness, Mcp, TestKey};
use serde_json::{Value, json};

fn read_list(limit: Option<u32>) -> Value {
    match limit {
        Some(limit) => {
            json!([{"type": "directory_read", "actions": ["list"], "limit": limit, "tier": 1}])
        }
        None => json!([{"type": "directory_read", "actions": ["list"], "tier": 1}]),
    }
}

fn tool_call(tool: &str) -> Value {
    json!([{"type": "tool_call", "tool": tool, "actions": ["call"], "tier": 1}])
}

fn transfer_grant(amount: f64, destination: &str) -> Value {
    json!([{
        "type": "transfer_funds", "actions": ["transfer_funds"], "tier": 2,
        "amount": amount, "currency": "USD", "destination": destination,
    }])
}

async fn balance(h: &Harness, email: &str) -> f64 {
    let token = h.token(email, "bank", tool_call("bank.get_balance"));
    h.bank()
        .call("get_balance", json!({}), Some(&token))
        .await
        .ok()["balance"]
        .as_f64()
        .unwrap()
}

fn names(tools: &[Value]) -> Vec<String> {
    let mut names: Vec<String> = tools
        .iter()
        .map(|tool| tool["name"].as_str().unwrap().to_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn tools_list_names_and_schemas_without_a_token() {
    let h = Harness::start().await;

    let mut directory = h.directory();
    let info = directory.initialize().await;
    assert_eq!(info["serverInfo"]["name"], "keyless-demo-directory");
    assert!(info["capabilities"]["tools"].is_object());
    let tools = directory.list_tools().await;
    assert_eq!(
        names(&tools),
        [
            "add_user_to_group",
            "create_user",
            "deactivate_user",
            "delete_user",
            "get_user",
            "grant_admin_role",
            "list_applications",
            "list_users",
            "revoke_user_sessions",
        ]
    );
    for tool in &tools {
        assert!(tool["description"].as_str().unwrap().len() > 30, "{tool}");
        assert_eq!(tool["inputSchema"]["type"], "object", "{tool}");
    }
    let get_user = tools.iter().find(|t| t["name"] == "get_user").unwrap();
    assert_eq!(get_user["inputSchema"]["required"], json!(["email"]));
    assert!(get_user["inputSchema"]["properties"]["email"]["description"].is_string());
    let create = tools.iter().find(|t| t["name"] == "create_user").unwrap();
    let mut required: Vec<&str> = create["inputSchema"]["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    required.sort();
    assert_eq!(required, ["email", "name"]);

    let mut bank = h.bank();
    assert_eq!(
        bank.initialize().await["serverInfo"]["name"],
        "keyless-demo-bank"
    );
    let tools = bank.list_tools().await;
    assert_eq!(
        names(&tools),
        ["get_balance", "list_transactions", "transfer_funds"]
    );
    let transfer = tools
        .iter()
        .find(|t| t["name"] == "transfer_funds")
        .unwrap();
    let props = &transfer["inputSchema"]["properties"];
    assert!(props["amount"]["type"] == "number", "{props}");
    assert!(
        props["destination"]["description"]
            .as_str()
            .unwrap()
            .contains("acme-supplies")
    );
    assert_eq!(transfer["annotations"]["destructiveHint"], true);

    // Nothing here needed a token, so nothing was consumed.
    assert_eq!(h.consume_calls(), 0);
}

#[tokio::test]
async fn good_token_runs_the_tool_once_then_replay_is_refused() {
    let h = Harness::start().await;
    let mut directory = h.directory();
    directory.initialize().await;
    let token = h.token("alice@example.com", "directory", read_list(Some(50)));

    let result = directory
        .call("list_users", json!({}), Some(&token))
        .await
        .ok();
    let emails: Vec<&str> = result["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["email"].as_str().unwrap())
        .collect();
    assert_eq!(
        emails,
        [
            "alice@example.com",
            "bob@example.com",
            "carol@example.com",
            "dave@example.com"
        ]
    );
    let alice = &result["users"][0];
    assert_eq!(alice["admin"], true);
    assert_eq!(alice["groups"], json!(["admins", "engineering"]));
    assert_eq!(result["users"][3]["active"], false);

    // The server authenticated to the STS with its own SVID for the issuer.
    assert_eq!(*h.svid.audiences.lock().unwrap(), vec![h.issuer.clone()]);
    assert_eq!(
        h.sts.consumed_audiences.lock().unwrap().as_slice(),
        ["directory"]
    );

    let message = directory
        .call("list_users", json!({}), Some(&token))
        .await
        .refused();
    assert_eq!(message, "unauthorized: token already used");
    assert_eq!(h.consume_calls(), 2);
}

#[tokio::test]
async fn missing_or_malformed_token_is_unauthorized() {
    let h = Harness::start().await;
    let mut directory = h.directory();

    let message = directory
        .call("list_users", json!({}), None)
        .await
        .refused();
    assert_eq!(message, "unauthorized: missing bearer token");
    let message = directory
        .call("list_users", json!({}), Some("not-a-jwt"))
        .await
        .refused();
    assert!(
        message.starts_with("unauthorized: malformed token"),
        "{message}"
    );
    assert_eq!(h.consume_calls(), 0);
}

#[tokio::test]
async fn token_checks_refuse_before_consuming() {
    let h = Harness::start().await;
    let mut directory = h.directory();
    let claims = || h.claims("alice@example.com", "directory", read_list(None));

    // Wrong `typ` (e.g. a plain JWT or a JWT-SVID signed by the same keys).
    let token = h.key.sign(&claims(), Some("JWT"), None);
    let message = directory
        .call("list_users", json!({}), Some(&token))
        .await
        .refused();
    assert_eq!(
        message,
        "unauthorized: token `typ` is `JWT`, expected `at+jwt`"
    );

    // Token minted for another resource server.
    let token = h.token("alice@example.com", "bank", read_list(None));
    let message = directory
        .call("list_users", json!({}), Some(&token))
        .await
        .refused();
    assert_eq!(
        message,
        "unauthorized: token audience does not include `directory`"
    );

    // An audience array that includes this server is fine.
    let mut array_aud = claims();
    array_aud["aud"] = json!(["bank", "directory"]);
    let token = h.key.sign(&array_aud, Some("at+jwt"), None);
    directory
        .call("list_users", json!({}), Some(&token))
        .await
        .ok();

    // Expired beyond the 30 s leeway.
    let mut expired = claims();
    expired["exp"] = json!(common::now() - 120);
    let token = h.key.sign(&expired, Some("at+jwt"), None);
    let message = directory
        .call("list_users", json!({}), Some(&token))
        .await
        .refused();
    assert_eq!(message, "unauthorized: token expired");

    // Not yet valid.
    let mut early = claims();
    early["nbf"] = json!(common::now() + 600);
    let token = h.key.sign(&early, Some("at+jwt"), None);
    let message = directory
        .call("list_users", json!({}), Some(&token))
        .await
        .refused();
    assert_eq!(message, "unauthorized: token not yet valid");

    // Another issuer.
    let mut foreign = claims();
    foreign["iss"] = json!("http://127.0.0.1:1");
    let token = h.key.sign(&foreign, Some("at+jwt"), None);
    let message = directory
        .call("list_users", json!({}), Some(&token))
        .await
        .refused();
    assert!(
        message.starts_with("unauthorized: token issuer"),
        "{message}"
    );

    // Signed by a key the STS never published, under the published kid.
    let other = TestKey::generate("key-1");
    let token = other.sign(&claims(), Some("at+jwt"), None);
    let message = directory
        .call("list_users", json!({}), Some(&token))
        .await
        .refused();
    assert_eq!(message, "unauthorized: bad token signature");

    // A user token, not an on-behalf-of token: no `act`.
    let mut direct = claims();
    direct.as_object_mut().unwrap().remove("act");
    let token = h.key.sign(&direct, Some("at+jwt"), None);
    let message = directory
        .call("list_users", json!({}), Some(&token))
        .await
        .refused();
    assert_eq!(
        message,
        "unauthorized: not an on-behalf-of token: `act.sub` is missing"
    );

    // Only the one good call reached the STS.
    assert_eq!(h.consume_calls(), 1);
}

#[tokio::test]
async fn unknown_kid_refetches_the_jwks_at_most_once_per_interval() {
    let mut h = Harness::start().await;
    let mut directory = h.directory();
    let token = h.token("alice@example.com", "directory", read_list(None));
    directory
        .call("list_users", json!({}), Some(&token))
        .await
        .ok();
    assert_eq!(h.jwks_hits(), 1);

    // The STS rotates to a new key: the cached set does not know its kid.
    let rotated = TestKey::generate("key-2");
    *h.sts.jwks.lock().unwrap() = vec![rotated.jwk()];
    h.key = rotated;
    let token = h.token("alice@example.com", "directory", read_list(None));
    directory
        .call("list_users", json!({}), Some(&token))
        .await
        .ok();
    assert_eq!(h.jwks_hits(), 2);

    // Junk kids right after a refetch do not hammer the STS.
    let token = h.key.sign(
        &h.claims("alice@example.com", "directory", read_list(None)),
        Some("at+jwt"),
        Some("key-unknown"),
    );
    let message = directory
        .call("list_users", json!({}), Some(&token))
        .await
        .refused();
    assert!(
        message.starts_with("unauthorized: unknown signing key `key-unknown`"),
        "{message}"
    );
    assert_eq!(h.jwks_hits(), 2);
}

#[tokio::test]
async fn rar_must_cover_the_call() {
    let h = Harness::start().await;
    let mut directory = h.directory();

    // Right token, wrong RAR type.
    let token = h.token(
        "alice@example.com",
        "directory",
        json!([{"type": "directory_write", "actions": ["create"]}]),
    );
    let message = directory
        .call("list_users", json!({}), Some(&token))
        .await
        .refused();
    assert_eq!(
        message,
        "forbidden: the token grants no `directory_read` authorization"
    );

    // Action missing.
    let token = h.token(
        "alice@example.com",
        "directory",
        json!([{"type": "directory_read", "actions": ["read"]}]),
    );
    let message = directory
        .call("list_users", json!({}), Some(&token))
        .await
        .refused();
    assert_eq!(
        message,
        "forbidden: the `directory_read` authorization does not allow action `list`"
    );

    // More results than granted (the default limit is 50).
    let token = h.token("alice@example.com", "directory", read_list(Some(10)));
    let message = directory
        .call("list_users", json!({}), Some(&token))
        .await
        .refused();
    assert!(
        message.starts_with("forbidden: ") && message.contains("at most 10"),
        "{message}"
    );

    // get_user bound to another identifier.
    let token = h.token(
        "alice@example.com",
        "directory",
        json!([{"type": "directory_read", "actions": ["read"], "identifier": "bob@example.com"}]),
    );
    let message = directory
        .call(
            "get_user",
            json!({"email": "alice@example.com"}),
            Some(&token),
        )
        .await
        .refused();
    assert_eq!(
        message,
        "forbidden: the `directory_read` authorization is for `bob@example.com`, not `alice@example.com`"
    );

    // A refused call burns nothing.
    assert_eq!(h.consume_calls(), 0);

    // The matching identifier works and returns the seeded user.
    let token = h.token(
        "alice@example.com",
        "directory",
        json!([{"type": "directory_read", "actions": ["read"], "identifier": "carol@example.com"}]),
    );
    let user = directory
        .call(
            "get_user",
            json!({"email": "carol@example.com"}),
            Some(&token),
        )
        .await
        .ok();
    assert_eq!(user["user"]["name"], "Carol Chen");
    assert_eq!(user["user"]["groups"], json!(["engineering", "finance"]));
    assert_eq!(user["user"]["sessions"], 3);

    // A tier-1 token does not open a tier-4 tool.
    let token = h.token("alice@example.com", "directory", read_list(None));
    let message = directory
        .call(
            "delete_user",
            json!({"email": "bob@example.com"}),
            Some(&token),
        )
        .await
        .refused();
    assert!(message.starts_with("forbidden: "), "{message}");

    // Bank reads need a tool_call detail naming that tool.
    let mut bank = h.bank();
    let token = h.token(
        "alice@example.com",
        "bank",
        tool_call("bank.list_transactions"),
    );
    let message = bank
        .call("get_balance", json!({}), Some(&token))
        .await
        .refused();
    assert!(message.starts_with("forbidden: "), "{message}");
}

#[tokio::test]
async fn transfer_above_the_grant_is_refused_and_moves_nothing() {
    let h = Harness::start().await;
    let before = balance(&h, "alice@example.com").await;
    assert_eq!(before, 5230.0);

    let mut bank = h.bank();
    let token = h.token(
        "alice@example.com",
        "bank",
        transfer_grant(100.0, "acme-supplies"),
    );
    let message = bank
        .call(
            "transfer_funds",
            json!({"amount": 150, "currency": "USD", "destination": "acme-supplies"}),
            Some(&token),
        )
        .await
        .refused();
    assert_eq!(
        message,
        "forbidden: the `transfer_funds` authorization allows at most 100.00, 150.00 was requested"
    );

    // Same amount, another destination or currency: also refused.
    for (destination, currency) in [("landlord", "USD"), ("acme-supplies", "EUR")] {
        let message = bank
            .call(
                "transfer_funds",
                json!({"amount": 50, "currency": currency, "destination": destination}),
                Some(&token),
            )
            .await
            .refused();
        assert!(message.starts_with("forbidden: "), "{message}");
    }

    assert_eq!(balance(&h, "alice@example.com").await, before);
}

#[tokio::test]
async fn transfer_within_the_grant_moves_money_once() {
    let h = Harness::start().await;
    let mut bank = h.bank();
    bank.initialize().await;
    let token = h.token(
        "alice@example.com",
        "bank",
        transfer_grant(100.0, "acme-supplies"),
    );
    let done = bank
        .call(
            "transfer_funds",
            json!({"amount": 75.5, "currency": "USD", "destination": "acme-supplies"}),
            Some(&token),
        )
        .await
        .ok();
    assert_eq!(done["transferred"], 75.5);
    assert_eq!(done["balance"], 5154.5);
    assert_eq!(balance(&h, "alice@example.com").await, 5154.5);

    let token = h.token("alice@example.com", "bank", tool_call("list_transactions"));
    let history = bank
        .call("list_transactions", json!({"limit": 2}), Some(&token))
        .await
        .ok();
    let latest = &history["transactions"][0];
    assert_eq!(latest["counterparty"], "acme-supplies");
    assert_eq!(latest["amount"], -75.5);
    assert_eq!(history["transactions"].as_array().unwrap().len(), 2);

    // Replaying the transfer token moves nothing.
    let transfer_token = h.token(
        "alice@example.com",
        "bank",
        transfer_grant(100.0, "acme-supplies"),
    );
    let args = json!({"amount": 10, "currency": "USD", "destination": "acme-supplies"});
    bank.call("transfer_funds", args.clone(), Some(&transfer_token))
        .await
        .ok();
    let message = bank
        .call("transfer_funds", args, Some(&transfer_token))
        .await
        .refused();
    assert_eq!(message, "unauthorized: token already used");
    assert_eq!(balance(&h, "alice@example.com").await, 5144.5);
}

#[tokio::test]
async fn transfer_beyond_the_balance_is_a_tool_error() {
    let h = Harness::start().await;
    let mut bank = h.bank();
    let token = h.token(
        "dave@example.com",
        "bank",
        transfer_grant(1000.0, "landlord"),
    );
    let message = bank
        .call(
            "transfer_funds",
            json!({"amount": 500, "currency": "USD", "destination": "landlord"}),
            Some(&token),
        )
        .await
        .tool_error();
    assert_eq!(
        message,
        "insufficient funds: the balance is 310.25 USD, the transfer needs 500.00 USD"
    );
    assert_eq!(balance(&h, "dave@example.com").await, 310.25);

    // A user without an account gets a clear tool error.
    let token = h.token("zoe@example.com", "bank", tool_call("get_balance"));
    let message = bank
        .call("get_balance", json!({}), Some(&token))
        .await
        .tool_error();
    assert_eq!(message, "no bank account for `zoe@example.com`");

    // An amount finer than a cent is bad input, refused before the token is used.
    let consumed = h.consume_calls();
    let token = h.token(
        "dave@example.com",
        "bank",
        transfer_grant(1000.0, "landlord"),
    );
    let reply = bank
        .call(
            "transfer_funds",
            json!({"amount": 1.005, "currency": "USD", "destination": "landlord"}),
            Some(&token),
        )
        .await;
    assert!(matches!(reply, common::Call::Error(-32602, _)), "{reply:?}");
    assert_eq!(h.consume_calls(), consumed);
}

#[tokio::test]
async fn directory_writes_persist_across_reopen_and_seed_runs_once() {
    let h = Harness::start().await;
    let mut directory = h.directory();

    let token = h.token(
        "alice@example.com",
        "directory",
        json!([{"type": "directory_write", "actions": ["create"], "identifier": "erin@example.com"}]),
    );
    let created = directory
        .call(
            "create_user",
            json!({"email": "Erin@Example.com", "name": "Erin Evans"}),
            Some(&token),
        )
        .await
        .ok();
    assert_eq!(created["user"]["email"], "erin@example.com");
    assert_eq!(created["user"]["active"], true);

    let token = h.token(
        "alice@example.com",
        "directory",
        json!([{"type": "directory_write", "actions": ["add_member"], "identifier": "erin@example.com"}]),
    );
    let added = directory
        .call(
            "add_user_to_group",
            json!({"email": "erin@example.com", "group": "finance"}),
            Some(&token),
        )
        .await
        .ok();
    assert_eq!(added["added"], true);

    let token = h.token(
        "alice@example.com",
        "directory",
        json!([{"type": "directory_admin", "actions": ["disable_user"], "identifier": "bob@example.com"}]),
    );
    let deactivated = directory
        .call(
            "deactivate_user",
            json!({"email": "bob@example.com"}),
            Some(&token),
        )
        .await
        .ok();
    assert_eq!(deactivated["was_active"], true);
    assert_eq!(deactivated["sessions_ended"], 1);

    // Creating the same user again is a tool error and changes nothing.
    let token = h.token(
        "alice@example.com",
        "directory",
        json!([{"type": "directory_write", "actions": ["create"]}]),
    );
    let message = directory
        .call(
            "create_user",
            json!({"email": "erin@example.com", "name": "Someone Else"}),
            Some(&token),
        )
        .await
        .tool_error();
    assert_eq!(message, "user `erin@example.com` already exists");

    // Reopen the same files behind a new listener.
    let base = h.serve_demo(&h.db("directory.db"), &h.db("bank.db")).await;
    let mut reopened = Mcp::new(format!("{base}{}", common::DIRECTORY_PATH));
    let token = h.token("alice@example.com", "directory", read_list(None));
    let users = reopened
        .call("list_users", json!({}), Some(&token))
        .await
        .ok();
    assert_eq!(users["count"], 5);
    let users = users["users"].as_array().unwrap();
    let erin = users
        .iter()
        .find(|u| u["email"] == "erin@example.com")
        .unwrap();
    assert_eq!(erin["name"], "Erin Evans");
    assert_eq!(erin["groups"], json!(["finance"]));
    // The seed did not run again: bob stays deactivated.
    let bob = users
        .iter()
        .find(|u| u["email"] == "bob@example.com")
        .unwrap();
    assert_eq!(bob["active"], false);
    assert_eq!(bob["sessions"], 0);
}

#[tokio::test]
async fn bank_balance_persists_across_reopen() {
    let h = Harness::start().await;
    let token = h.token(
        "bob@example.com",
        "bank",
        transfer_grant(20.0, "coffee-corner"),
    );
    h.bank()
        .call(
            "transfer_funds",
            json!({"amount": 20, "currency": "USD", "destination": "coffee-corner"}),
            Some(&token),
        )
        .await
        .ok();
    let base = h.serve_demo(&h.db("directory.db"), &h.db("bank.db")).await;
    let mut reopened = Mcp::new(format!("{base}{}", common::BANK_PATH));
    let token = h.token("bob@example.com", "bank", tool_call("get_balance"));
    let balance = reopened
        .call("get_balance", json!({}), Some(&token))
        .await
        .ok();
    assert_eq!(balance["balance"], 1180.5);
}

#[tokio::test]
async fn bad_endpoint_path_is_a_clear_error() {
    let h = Harness::start().await;
    let err = keyless_demo::directory_router(h.config(&h.db("x.db")), "no-slash")
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid MCP endpoint path `no-slash`: it must start with `/` and contain only letters, digits, `/`, `-`, `_` or `.`"
    );
    assert!(!h.db("x.db").exists());
}
