//! `keyless signals subscribe|list|push|reviews|resolve`.

use serde_json::{Value, json};

use crate::cli::SignalsCommand;
use crate::{CliError, CliResult, admin};

fn pretty(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

async fn call(
    dir: &std::path::Path,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> Result<Value, CliError> {
    let reply = admin::call(dir, method, path, body).await?;
    if !(200..300).contains(&reply.status) {
        return Err(CliError::Failed(anyhow::anyhow!(reply.error_message())));
    }
    Ok(reply.body)
}

pub async fn run(cmd: SignalsCommand) -> CliResult {
    match cmd {
        SignalsCommand::Subscribe {
            data_dir,
            url,
            delivery,
            stream_id,
            token,
        } => {
            if !matches!(delivery.as_str(), "push" | "poll") {
                return Err(CliError::Usage(format!(
                    "--delivery must be push or poll, not `{delivery}`"
                )));
            }
            let body = json!({"issuer": url, "delivery": delivery, "stream_id": stream_id, "token": token});
            let v = call(
                &data_dir.data_dir,
                "POST",
                "/v1/signals/subscriptions",
                Some(body),
            )
            .await?;
            let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
            println!("subscribed to {} by {}", s("issuer"), s("delivery"));
            if s("stream_id").is_empty() {
                println!(
                    "the transmitter's operator must create a push stream to {}/ssf/push with audience {}",
                    s("audience"),
                    s("audience")
                );
            } else {
                println!("stream {}", s("stream_id"));
            }
            Ok(())
        }
        SignalsCommand::List { data_dir } => {
            let streams = call(&data_dir.data_dir, "GET", "/v1/signals/streams", None).await?;
            let subs = call(&data_dir.data_dir, "GET", "/v1/signals/subscriptions", None).await?;
            pretty(&json!({"streams": streams, "receiver": subs}));
            Ok(())
        }
        SignalsCommand::Push {
            data_dir,
            endpoint_url,
            aud,
            events,
        } => {
            let events: Vec<String> = if events.is_empty() {
                keyless_signals::caep::CAEP_EVENTS
                    .iter()
                    .map(|s| (*s).to_owned())
                    .collect()
            } else {
                events
            };
            let body = json!({
                "config": {
                    "delivery": {"method": keyless_signals::transmitter::DELIVERY_PUSH, "endpoint_url": endpoint_url},
                    "events_requested": events,
                },
                "aud": aud,
            });
            let v = call(
                &data_dir.data_dir,
                "POST",
                "/v1/signals/streams",
                Some(body),
            )
            .await?;
            println!(
                "stream {}",
                v.get("stream_id").and_then(Value::as_str).unwrap_or("")
            );
            Ok(())
        }
        SignalsCommand::Reviews { data_dir } => {
            pretty(&call(&data_dir.data_dir, "GET", "/v1/signals/reviews", None).await?);
            Ok(())
        }
        SignalsCommand::Resolve { data_dir, id } => {
            let path = format!(
                "/v1/signals/reviews/{}/resolve",
                url::form_urlencoded::byte_serialize(id.as_bytes()).collect::<String>()
            );
            call(&data_dir.data_dir, "POST", &path, None).await?;
            println!("resolved {id}: the subject may get tokens again");
            Ok(())
        }
    }
}
