//! `keyless tools list|approve`: the gateway's pinned tool definitions.

use crate::cli::ToolsCommand;
use crate::{CliError, CliResult, admin};

pub async fn run(cmd: ToolsCommand) -> CliResult {
    match cmd {
        ToolsCommand::List { data_dir, json } => {
            let reply = admin::call(&data_dir.data_dir, "GET", "/v1/tools", None).await?;
            if reply.status != 200 {
                return Err(CliError::Failed(anyhow::anyhow!(reply.error_message())));
            }
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&reply.body).unwrap_or_default()
                );
                return Ok(());
            }
            let tools = reply.body.as_array().cloned().unwrap_or_default();
            println!("{:<40} {:<5} {:<20} HASH", "TOOL", "TIER", "STATUS");
            for t in tools {
                let s = |k: &str| t.get(k).and_then(|v| v.as_str()).unwrap_or("");
                let status = match (s("status"), s("reason")) {
                    ("blocked", r) => format!("blocked ({r})"),
                    (st, _) => st.to_owned(),
                };
                let hash = t
                    .get("seen_hash")
                    .and_then(|v| v.as_str())
                    .or_else(|| t.get("pinned_hash").and_then(|v| v.as_str()))
                    .unwrap_or("");
                println!(
                    "{:<40} {:<5} {:<20} {}",
                    s("name"),
                    t.get("tier").and_then(|v| v.as_u64()).unwrap_or(0),
                    status,
                    hash.get(..16).unwrap_or(hash)
                );
            }
            Ok(())
        }
        ToolsCommand::Approve { data_dir, name } => {
            let path = format!(
                "/v1/tools/{}/approve",
                url::form_urlencoded::byte_serialize(name.as_bytes()).collect::<String>()
            );
            let reply = admin::call(&data_dir.data_dir, "POST", &path, None).await?;
            if reply.status != 200 {
                return Err(CliError::Failed(anyhow::anyhow!(reply.error_message())));
            }
            println!("approved {name}");
            Ok(())
        }
    }
}
