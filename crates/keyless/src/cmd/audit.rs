//! `keyless audit verify|proof|checkpoint|export` (wired once the audit API lands).
use crate::cli::AuditCommand;
use crate::CliResult;
pub async fn run(_c: AuditCommand) -> CliResult { Ok(()) }
