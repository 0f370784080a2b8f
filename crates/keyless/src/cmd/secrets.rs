//! `keyless secrets …`: operator commands for the secrets broker, over the
//! admin socket. Input is checked here first (exit 2 before anything
//! reaches the fabric); the server checks again.

use std::time::Duration;

use serde_json::{Map, Value, json};

use crate::cli::{
    SecretsCertCommand, SecretsCommand, SecretsDbCommand, SecretsDbRoleCommand, SecretsKvCommand,
    SecretsLeaseCommand, SecretsPolicyCommand, SecretsRoleCommand, SecretsRotatingCommand,
};
use crate::{CliError, CliResult, admin};

fn failed(reply: &admin::Reply) -> CliError {
    match reply.status {
        400 => CliError::Usage(reply.error_message()),
        _ => CliError::Failed(anyhow::anyhow!(reply.error_message())),
    }
}

fn duration(what: &str, s: &str) -> Result<Duration, CliError> {
    keyless_secrets::parse_duration(s).map_err(|e| CliError::Usage(format!("invalid {what}: {e}")))
}

fn read_file(path: &std::path::Path) -> Result<String, CliError> {
    std::fs::read_to_string(path)
        .map_err(|e| CliError::Usage(format!("cannot read `{}`: {e}", path.display())))
}

async fn call(
    data_dir: &std::path::Path,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> CliResult<admin::Reply> {
    let reply = admin::call(data_dir, method, path, body).await?;
    if reply.status >= 300 {
        return Err(failed(&reply));
    }
    Ok(reply)
}

fn segment(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

pub async fn run(cmd: SecretsCommand) -> CliResult {
    match cmd {
        SecretsCommand::Cert(c) => run_cert(c).await,
        SecretsCommand::Rotating(c) => run_rotating(c).await,
        SecretsCommand::Policy(SecretsPolicyCommand::Write {
            data_dir,
            name,
            file,
        }) => {
            let text = read_file(&file)?;
            // Parse locally so a typo exits 2 with the line number.
            keyless_secrets::Policy::parse(&name, &text)
                .map_err(|e| CliError::Usage(e.to_string()))?;
            call(
                &data_dir.data_dir,
                "PUT",
                &format!("/v1/secrets/policies/{}", segment(&name)),
                Some(json!({ "policy": text })),
            )
            .await?;
            println!("policy `{name}` written");
            Ok(())
        }
        SecretsCommand::Policy(SecretsPolicyCommand::List { data_dir }) => {
            let reply = call(&data_dir.data_dir, "GET", "/v1/secrets/policies", None).await?;
            for name in reply.body.as_array().into_iter().flatten() {
                println!("{}", name.as_str().unwrap_or_default());
            }
            Ok(())
        }
        SecretsCommand::Role(SecretsRoleCommand::Create(a)) => {
            if !matches!(a.token_type.as_str(), "service" | "batch") {
                return Err(CliError::Usage(format!(
                    "invalid token type `{}`: use service or batch",
                    a.token_type
                )));
            }
            let mut role = Map::new();
            role.insert("bound_audiences".into(), json!(a.bound_audiences));
            role.insert("bound_subject".into(), json!(a.bound_subject));
            role.insert("token_policies".into(), json!(a.policies));
            role.insert("token_type".into(), json!(a.token_type));
            role.insert("single_use_jti".into(), json!(a.single_use));
            if let Some(t) = &a.token_ttl {
                role.insert(
                    "token_ttl".into(),
                    json!(duration("--token-ttl", t)?.as_secs()),
                );
            }
            if let Some(t) = &a.token_max_ttl {
                role.insert(
                    "token_max_ttl".into(),
                    json!(duration("--token-max-ttl", t)?.as_secs()),
                );
            }
            let role = Value::Object(role);
            call(
                &a.data_dir.data_dir,
                "PUT",
                &format!("/v1/secrets/roles/{}", segment(&a.name)),
                Some(role),
            )
            .await?;
            println!("role `{}` written", a.name);
            Ok(())
        }
        SecretsCommand::Role(SecretsRoleCommand::List { data_dir }) => {
            let reply = call(&data_dir.data_dir, "GET", "/v1/secrets/roles", None).await?;
            for name in reply.body.as_array().into_iter().flatten() {
                println!("{}", name.as_str().unwrap_or_default());
            }
            Ok(())
        }
        SecretsCommand::Kv(SecretsKvCommand::Put {
            data_dir,
            path,
            pairs,
        }) => {
            let mut data = Map::new();
            for pair in &pairs {
                let Some((k, v)) = pair.split_once('=') else {
                    return Err(CliError::Usage(format!(
                        "invalid `{pair}`: expected KEY=VALUE"
                    )));
                };
                if k.is_empty() {
                    return Err(CliError::Usage(format!("invalid `{pair}`: empty key")));
                }
                data.insert(k.to_owned(), Value::String(v.to_owned()));
            }
            let path = path.trim_start_matches("secret/").trim_matches('/');
            if path.is_empty() {
                return Err(CliError::Usage("missing secret path".into()));
            }
            let encoded: Vec<String> = path.split('/').map(segment).collect();
            let reply = call(
                &data_dir.data_dir,
                "PUT",
                &format!("/v1/secrets/kv/{}", encoded.join("/")),
                Some(json!({ "data": data })),
            )
            .await?;
            let version = reply.body.get("version").cloned().unwrap_or(Value::Null);
            println!("secret/{path} version {version}");
            Ok(())
        }
        SecretsCommand::Db(SecretsDbCommand::Configure {
            data_dir,
            connection_url,
            name,
            allowed_roles,
        }) => {
            if !(connection_url.starts_with("postgres://")
                || connection_url.starts_with("postgresql://"))
            {
                return Err(CliError::Usage(
                    "the connection URL must be postgres://USER:PASSWORD@HOST:PORT/DB".into(),
                ));
            }
            let reply = call(
                &data_dir.data_dir,
                "PUT",
                &format!("/v1/secrets/db/config/{}", segment(&name)),
                Some(json!({ "connection_url": connection_url, "allowed_roles": allowed_roles })),
            )
            .await?;
            let user = reply
                .body
                .get("username")
                .and_then(Value::as_str)
                .unwrap_or_default();
            println!(
                "database `{name}` configured (the password of `{user}` was rotated: nobody knows it now)"
            );
            Ok(())
        }
        SecretsCommand::Db(SecretsDbCommand::Role(SecretsDbRoleCommand::Create {
            data_dir,
            name,
            creation_statements,
            default_ttl,
            max_ttl,
            db_name,
        })) => {
            let sql = read_file(&creation_statements)?;
            let statements: Vec<String> = sql
                .split(';')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect();
            if statements.is_empty() {
                return Err(CliError::Usage(format!(
                    "`{}` holds no SQL statement",
                    creation_statements.display()
                )));
            }
            let default_ttl = duration("--default-ttl", &default_ttl)?;
            let max_ttl = duration("--max-ttl", &max_ttl)?;
            if default_ttl > max_ttl {
                return Err(CliError::Usage(
                    "--default-ttl cannot exceed --max-ttl".into(),
                ));
            }
            call(
                &data_dir.data_dir,
                "PUT",
                &format!("/v1/secrets/db/roles/{}", segment(&name)),
                Some(json!({
                    "db_name": db_name,
                    "creation_statements": statements,
                    "default_ttl": default_ttl.as_secs(),
                    "max_ttl": max_ttl.as_secs(),
                })),
            )
            .await?;
            println!("database role `{name}` written");
            Ok(())
        }
        SecretsCommand::Lease(SecretsLeaseCommand::RevokePrefix { data_dir, prefix }) => {
            let reply = call(
                &data_dir.data_dir,
                "POST",
                "/v1/secrets/leases/revoke-prefix",
                Some(json!({ "prefix": prefix })),
            )
            .await?;
            let n = reply.body.get("revoked").cloned().unwrap_or(Value::Null);
            println!("revoked {n} leases under `{prefix}`");
            Ok(())
        }
        SecretsCommand::Lease(SecretsLeaseCommand::Pending { data_dir }) => {
            let reply = call(
                &data_dir.data_dir,
                "GET",
                "/v1/secrets/leases/pending",
                None,
            )
            .await?;
            println!(
                "{}",
                serde_json::to_string_pretty(&reply.body).unwrap_or_default()
            );
            Ok(())
        }
    }
}

// === cert auth roles and rotating credentials ===

async fn print_names(data_dir: &std::path::Path, path: &str) -> CliResult {
    let reply = call(data_dir, "GET", path, None).await?;
    for name in reply.body.as_array().into_iter().flatten() {
        println!("{}", name.as_str().unwrap_or_default());
    }
    Ok(())
}

async fn run_cert(cmd: SecretsCertCommand) -> CliResult {
    match cmd {
        SecretsCertCommand::Create {
            data_dir,
            name,
            allowed_spiffe_ids,
            policies,
            token_ttl,
            token_type,
        } => {
            if !matches!(token_type.as_str(), "service" | "batch") {
                return Err(CliError::Usage(format!(
                    "invalid token type `{token_type}`: use service or batch"
                )));
            }
            if let Some(bad) = allowed_spiffe_ids
                .iter()
                .find(|p| !p.starts_with("spiffe://"))
            {
                return Err(CliError::Usage(format!(
                    "invalid --allowed-spiffe-id `{bad}`: expected spiffe://…"
                )));
            }
            let mut role = Map::new();
            role.insert("allowed_uri_sans".into(), json!(allowed_spiffe_ids));
            role.insert("token_policies".into(), json!(policies));
            role.insert("token_type".into(), json!(token_type));
            if let Some(t) = &token_ttl {
                role.insert(
                    "token_ttl".into(),
                    json!(duration("--token-ttl", t)?.as_secs()),
                );
            }
            call(
                &data_dir.data_dir,
                "PUT",
                &format!("/v1/secrets/cert-roles/{}", segment(&name)),
                Some(Value::Object(role)),
            )
            .await?;
            println!("cert role `{name}` written");
            Ok(())
        }
        SecretsCertCommand::List { data_dir } => {
            print_names(&data_dir.data_dir, "/v1/secrets/cert-roles").await
        }
    }
}

async fn run_rotating(cmd: SecretsRotatingCommand) -> CliResult {
    match cmd {
        SecretsRotatingCommand::Create {
            data_dir,
            name,
            hook,
            hook_args,
            ttl,
            timeout,
        } => {
            if !std::path::Path::new(&hook).is_absolute() {
                return Err(CliError::Usage(format!(
                    "invalid --hook `{hook}`: the program must be an absolute path"
                )));
            }
            let mut argv = vec![hook];
            argv.extend(hook_args);
            let mut cred = Map::new();
            cred.insert("hook".into(), json!(argv));
            if let Some(t) = &ttl {
                cred.insert("ttl".into(), json!(duration("--ttl", t)?.as_secs()));
            }
            if let Some(t) = &timeout {
                cred.insert(
                    "hook_timeout".into(),
                    json!(duration("--timeout", t)?.as_secs()),
                );
            }
            call(
                &data_dir.data_dir,
                "PUT",
                &format!("/v1/secrets/rotating/{}", segment(&name)),
                Some(Value::Object(cred)),
            )
            .await?;
            println!("rotating credential `{name}` written: read it at rotating/creds/{name}");
            Ok(())
        }
        SecretsRotatingCommand::List { data_dir } => {
            print_names(&data_dir.data_dir, "/v1/secrets/rotating").await
        }
        SecretsRotatingCommand::Delete { data_dir, name } => {
            call(
                &data_dir.data_dir,
                "DELETE",
                &format!("/v1/secrets/rotating/{}", segment(&name)),
                None,
            )
            .await?;
            println!("rotating credential `{name}` deleted");
            Ok(())
        }
    }
}
