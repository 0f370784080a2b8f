//! `keyless policy test`: one Cedar decision from the command line, with the
//! same evaluation the STS runs at issuance, so an operator can try a policy
//! change before the running fabric reloads it.

use keyless_sts::policy::{DecisionInput, LoadedPolicies, PolicyDecision};

use crate::cli::PolicyCommand;
use crate::{CliError, CliResult};

pub fn run(cmd: PolicyCommand) -> CliResult {
    let PolicyCommand::Test(a) = cmd;
    // The same set the running fabric decides with: its policies dir when
    // there is one, else the embedded defaults it would seed.
    let dir = a.policies.clone().or_else(|| {
        let d = a.data_dir.data_dir.join("policies");
        d.is_dir().then_some(d)
    });
    let policies = match &dir {
        Some(dir) => LoadedPolicies::from_dir(dir),
        None => LoadedPolicies::defaults(),
    }
    .map_err(|e| CliError::Usage(format!("invalid policy set: {e}")))?;
    let time = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or_default();
    let input = DecisionInput {
        agent: a.agent,
        action: a.action,
        resource: a.resource,
        user: a.user,
        session_age_secs: a.session_age_secs,
        tier: a.tier,
        rar_type: a.rar_type,
        amount: a.amount,
        currency: a.currency,
        destination: a.destination,
        risk_level: a.risk_level,
        approvals: a.approvals,
        step_up: a.step_up,
        time,
    };
    match policies.decide(&input) {
        PolicyDecision::Allow { policies } => {
            println!("allow (by {})", policies.join(", "));
            Ok(())
        }
        PolicyDecision::Deny { reason, .. } => {
            println!("deny: {reason}");
            Err(CliError::Exit(1))
        }
    }
}
