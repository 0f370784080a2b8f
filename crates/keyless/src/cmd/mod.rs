//! Command dispatch: one module per command group.

mod audit;
mod doctor;
mod entry;
mod policy;
mod scan;
mod secrets;
mod signals;
mod svid;
mod tools;
mod user;

use crate::cli::{CaCommand, Cli, Command};
use crate::{CliError, CliResult, admin, up};

pub async fn run(cli: Cli) -> CliResult {
    match cli.command {
        Command::Up(args) => up::run(args).await,
        Command::Entry(c) => entry::run(c).await,
        Command::Svid(c) => svid::run(c).await,
        Command::Ca(CaCommand::Rotate { data_dir, jwt }) => {
            let path = if jwt {
                "/v1/ca/rotate?jwt=true"
            } else {
                "/v1/ca/rotate"
            };
            let reply = admin::call(&data_dir.data_dir, "POST", path, None).await?;
            if reply.status != 200 {
                return Err(CliError::Failed(anyhow::anyhow!(reply.error_message())));
            }
            println!(
                "rotated {}",
                if jwt { "JWT signing key" } else { "X.509 CA" }
            );
            Ok(())
        }
        Command::Audit(c) => audit::run(c).await,
        Command::Policy(c) => policy::run(c),
        Command::User(c) => user::run_user(c).await,
        Command::Consent(c) => user::run_consent(c).await,
        Command::Secrets(c) => secrets::run(c).await,
        Command::Tools(c) => tools::run(c).await,
        Command::Signals(c) => signals::run(c).await,
        Command::Scan(args) => scan::run(args).await,
        Command::Doctor(args) => doctor::run(args).await,
    }
}
