//! `keyless entry create|list|delete`.
//!
//! Input is validated here first, so a malformed SPIFFE ID, selector or TTL
//! exits 2 with one line before anything reaches the fabric; the server
//! validates again (it trusts no client).

use keyless_identity::{Selector, SpiffeId};
use serde_json::json;

use crate::cli::EntryCommand;
use crate::config::parse_duration;
use crate::{CliError, CliResult, admin};

pub async fn run(cmd: EntryCommand) -> CliResult {
    match cmd {
        EntryCommand::Create(a) => {
            let spiffe_id: SpiffeId = a.spiffe_id.parse().map_err(|e| {
                CliError::Usage(format!("invalid SPIFFE ID `{}`: {e}", a.spiffe_id))
            })?;
            let parent_id: Option<SpiffeId> = a
                .parent_id
                .as_deref()
                .map(|p| {
                    p.parse().map_err(|e| {
                        CliError::Usage(format!("invalid parent SPIFFE ID `{p}`: {e}"))
                    })
                })
                .transpose()?;
            let selectors = a
                .selectors
                .iter()
                .map(|s| {
                    s.parse::<Selector>()
                        .map_err(|e| CliError::Usage(format!("invalid selector `{s}`: {e}")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let ttl = |what: &str, v: &Option<String>| {
                v.as_deref()
                    .map(|s| {
                        let d = parse_duration(what, s).map_err(CliError::Usage)?;
                        if d.subsec_nanos() != 0 {
                            return Err(CliError::Usage(format!(
                                "invalid {what} `{s}`: use whole seconds"
                            )));
                        }
                        Ok(d.as_secs())
                    })
                    .transpose()
            };
            let x509_ttl = ttl("x509 ttl", &a.x509_ttl)?;
            let jwt_ttl = ttl("jwt ttl", &a.jwt_ttl)?;
            let body = json!({
                "spiffe_id": spiffe_id.to_string(),
                "parent_id": parent_id.map(|p| p.to_string()),
                "selectors": selectors.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "x509_ttl_secs": x509_ttl,
                "jwt_ttl_secs": jwt_ttl,
                "hint": a.hint,
                "admin": a.admin,
            });
            let reply =
                admin::call(&a.data_dir.data_dir, "POST", "/v1/entries", Some(body)).await?;
            match reply.status {
                201 => {
                    let id = reply
                        .body
                        .get("id")
                        .and_then(|v| v.as_str())
                        .unwrap_or_default();
                    println!("{id}");
                    Ok(())
                }
                400 => Err(CliError::Usage(reply.error_message())),
                _ => Err(CliError::Failed(anyhow::anyhow!(reply.error_message()))),
            }
        }
        EntryCommand::List { data_dir, json } => {
            let reply = admin::call(&data_dir.data_dir, "GET", "/v1/entries", None).await?;
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
            let entries = reply.body.as_array().cloned().unwrap_or_default();
            println!("{:<36}  {:<48}  SELECTORS", "ID", "SPIFFE ID");
            for e in entries {
                let field = |k: &str| {
                    e.get(k)
                        .and_then(|v| v.as_str())
                        .unwrap_or_default()
                        .to_owned()
                };
                let selectors = e
                    .get("selectors")
                    .and_then(|v| v.as_array())
                    .map(|a| {
                        a.iter()
                            .filter_map(|s| s.as_str())
                            .collect::<Vec<_>>()
                            .join(" ")
                    })
                    .unwrap_or_default();
                println!(
                    "{:<36}  {:<48}  {selectors}",
                    field("id"),
                    field("spiffe_id")
                );
            }
            Ok(())
        }
        EntryCommand::Delete { data_dir, id } => {
            let reply = admin::call(
                &data_dir.data_dir,
                "DELETE",
                &format!("/v1/entries/{id}"),
                None,
            )
            .await?;
            match reply.status {
                200 => {
                    println!("deleted {id}");
                    Ok(())
                }
                404 => Err(CliError::Failed(anyhow::anyhow!("no entry with id `{id}`"))),
                400 => Err(CliError::Usage(reply.error_message())),
                _ => Err(CliError::Failed(anyhow::anyhow!(reply.error_message()))),
            }
        }
    }
}
