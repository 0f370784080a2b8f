//! `keyless user add` and `keyless consent list|revoke`, over the admin socket.
//!
//! The password comes from standard input, never from an argument: argument
//! lists are visible to every local user and land in shell history.

use std::io::BufRead;

use serde_json::json;

use crate::cli::{ConsentCommand, UserCommand};
use crate::{CliError, CliResult, admin};

fn failed(reply: &admin::Reply) -> CliError {
    match reply.status {
        400 => CliError::Usage(reply.error_message()),
        _ => CliError::Failed(anyhow::anyhow!(reply.error_message())),
    }
}

pub async fn run_user(cmd: UserCommand) -> CliResult {
    match cmd {
        UserCommand::Add { data_dir, email } => {
            let mut password = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut password)
                .map_err(|e| {
                    CliError::Failed(anyhow::anyhow!("cannot read the password from stdin: {e}"))
                })?;
            let password = password.trim_end_matches(['\r', '\n']);
            if password.is_empty() {
                return Err(CliError::Usage(
                    "no password on standard input (e.g. `keyless user add EMAIL < password-file`)"
                        .into(),
                ));
            }
            let body = json!({ "email": email, "password": password });
            let reply = admin::call(&data_dir.data_dir, "POST", "/v1/users", Some(body)).await?;
            if reply.status != 201 {
                return Err(failed(&reply));
            }
            let id = reply
                .body
                .get("id")
                .and_then(|v| v.as_str())
                .unwrap_or_default();
            println!("added {email} (subject {id})");
            Ok(())
        }
    }
}

pub async fn run_consent(cmd: ConsentCommand) -> CliResult {
    match cmd {
        ConsentCommand::List { data_dir, user } => {
            let path = match &user {
                Some(u) => format!(
                    "/v1/consents?user={}",
                    url::form_urlencoded::byte_serialize(u.as_bytes()).collect::<String>()
                ),
                None => "/v1/consents".to_owned(),
            };
            let reply = admin::call(&data_dir.data_dir, "GET", &path, None).await?;
            if reply.status != 200 {
                return Err(failed(&reply));
            }
            println!(
                "{}",
                serde_json::to_string_pretty(&reply.body).unwrap_or_default()
            );
            Ok(())
        }
        ConsentCommand::Revoke { data_dir, id } => {
            let reply = admin::call(
                &data_dir.data_dir,
                "DELETE",
                &format!("/v1/consents/{id}"),
                None,
            )
            .await?;
            if reply.status != 200 {
                return Err(failed(&reply));
            }
            println!("revoked consent {id}");
            Ok(())
        }
    }
}
