//! `keyless scan`: finds leaked credentials in files, git history or a log
//! stream (the engine is `keyless-scan`), prints them as text, JSON or
//! SARIF, and with `--revoke` asks the running fabric to revoke the ones it
//! issued.
//!
//! Exit codes: 0 nothing found (or `--write-baseline` accepted what was
//! found), 1 findings remain, 2 bad input. A secret is never printed: the
//! reports carry the scanner's redacted form and fingerprint; the secret
//! itself goes only to the fabric's admin socket (0600) for revocation.

use std::collections::HashSet;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use anyhow::Context;
use keyless_scan::{Baseline, Finding, ScanError, ScanOptions, ScanReport, Scanner};
use serde_json::json;

use crate::cli::{ScanArgs, ScanFormat};
use crate::{CliError, CliResult, admin};

pub async fn run(args: ScanArgs) -> CliResult {
    let opts = options(&args)?;
    let baseline = match &args.baseline {
        Some(path) => Some(Baseline::load(path).map_err(usage)?),
        None => None,
    };
    if args.stdin {
        return run_stdin(&args, &opts, baseline.as_ref()).await;
    }
    if let Some(missing) = args.paths.iter().find(|p| !p.exists()) {
        return Err(CliError::Usage(format!(
            "no such file or directory: `{}`",
            missing.display()
        )));
    }
    let paths = args.paths.clone();
    let git = args.git;
    let scan_opts = opts.clone();
    // The scan is CPU-bound and parallel on its own threads: keep it off
    // the async runtime.
    let scanner = std::sync::Arc::new(Scanner::new());
    let worker = scanner.clone();
    let report = tokio::task::spawn_blocking(move || scan(&worker, &paths, git, &scan_opts))
        .await
        .context("the scan stopped unexpectedly")?
        .map_err(scan_error)?;

    if let Some(path) = &args.write_baseline {
        Baseline::from_report(&report)
            .save(path)
            .map_err(|e| CliError::Failed(e.into()))?;
    }
    let report = match &baseline {
        Some(b) => b.filter(report),
        None => report,
    };
    print_report(&report, args.format, &scanner)?;
    if args.revoke {
        revoke_all(&args.data_dir.data_dir, &report.findings).await?;
    }
    if let Some(path) = &args.write_baseline {
        eprintln!(
            "wrote baseline `{}` ({} findings accepted)",
            path.display(),
            report.findings.len()
        );
        return Ok(());
    }
    exit_for(&report.findings)
}

/// The scanner's options from the flags; a bad `--allow` is a usage error.
fn options(args: &ScanArgs) -> CliResult<ScanOptions> {
    let allowlist = args
        .allow
        .iter()
        .map(|a| {
            regex::Regex::new(a).map_err(|e| {
                CliError::Usage(format!(
                    "invalid --allow pattern `{a}`: {}",
                    regex_reason(&e)
                ))
            })
        })
        .collect::<CliResult<Vec<_>>>()?;
    Ok(ScanOptions {
        threads: args.threads,
        allowlist,
        progress: !args.stdin && std::io::stderr().is_terminal(),
        ..ScanOptions::default()
    })
}

/// The regex crate's error is a multi-line drawing; keep its last line.
fn regex_reason(e: &regex::Error) -> String {
    let text = e.to_string();
    text.lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .unwrap_or("invalid regular expression")
        .trim_start_matches("error: ")
        .to_owned()
}

/// Scans `paths` as files and directories, or as repositories with `git`.
fn scan(
    scanner: &Scanner,
    paths: &[PathBuf],
    git: bool,
    opts: &ScanOptions,
) -> Result<ScanReport, ScanError> {
    if !git {
        return scanner.scan_paths(paths, opts);
    }
    let mut total = ScanReport::default();
    for repo in paths {
        let r = scanner.scan_git(repo, opts)?;
        total.findings.extend(r.findings);
        total.files_scanned += r.files_scanned;
        total.bytes_scanned += r.bytes_scanned;
        total.files_skipped += r.files_skipped;
        total.elapsed += r.elapsed;
    }
    Ok(total)
}

/// `--stdin`: the redacted stream on stdout, the summary on stderr.
async fn run_stdin(args: &ScanArgs, opts: &ScanOptions, baseline: Option<&Baseline>) -> CliResult {
    let allow = opts.allowlist.clone();
    let findings = tokio::task::spawn_blocking(move || {
        let stdin = std::io::stdin();
        let stdout = std::io::stdout();
        Scanner::new().redact_stream(stdin.lock(), std::io::BufWriter::new(stdout.lock()))
    })
    .await
    .context("the scan stopped unexpectedly")?
    .map_err(scan_error)?;
    // The stream is already redacted in full; the allowlist and the
    // baseline only decide what is reported (and revoked).
    let findings: Vec<Finding> = findings
        .into_iter()
        .filter(|f| !allow.iter().any(|re| allowed(re, f)))
        .filter(|f| baseline.is_none_or(|b| !b.contains(&f.fingerprint)))
        .collect();
    eprintln!("{}", stdin_summary(&findings));
    if args.revoke {
        revoke_all(&args.data_dir.data_dir, &findings).await?;
    }
    exit_for(&findings)
}

/// Whether an allowlist pattern covers a finding (as the engine decides
/// for files: path, fingerprint or redacted form).
fn allowed(re: &regex::Regex, f: &Finding) -> bool {
    re.is_match(&f.path) || re.is_match(&f.fingerprint) || re.is_match(&f.redacted)
}

/// One line: how many secrets were redacted, by rule.
fn stdin_summary(findings: &[Finding]) -> String {
    if findings.is_empty() {
        return "keyless scan: no secret found in the stream".to_owned();
    }
    let mut by_rule: Vec<(String, usize)> = Vec::new();
    for f in findings {
        match by_rule.iter_mut().find(|(r, _)| *r == f.rule_id) {
            Some((_, n)) => *n += 1,
            None => by_rule.push((f.rule_id.clone(), 1)),
        }
    }
    let rules: Vec<String> = by_rule.iter().map(|(r, n)| format!("{r} ×{n}")).collect();
    format!(
        "keyless scan: {} secret{} redacted in the stream ({})",
        findings.len(),
        if findings.len() == 1 { "" } else { "s" },
        rules.join(", ")
    )
}

fn print_report(report: &ScanReport, format: ScanFormat, scanner: &Scanner) -> CliResult {
    let text = match format {
        ScanFormat::Text => keyless_scan::report::text(report),
        ScanFormat::Json => pretty(&keyless_scan::report::json(report))?,
        ScanFormat::Sarif => pretty(&keyless_scan::report::sarif(report, scanner.rules()))?,
    };
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| {
            if text.ends_with('\n') {
                Ok(())
            } else {
                out.write_all(b"\n")
            }
        })
        .and_then(|()| out.flush())
        .context("cannot write the report")?;
    Ok(())
}

fn pretty(v: &serde_json::Value) -> CliResult<String> {
    serde_json::to_string_pretty(v)
        .context("cannot serialize the report")
        .map_err(CliError::Failed)
}

fn exit_for(findings: &[Finding]) -> CliResult {
    if findings.is_empty() {
        Ok(())
    } else {
        Err(CliError::Exit(1))
    }
}

/// Input errors (a missing path, not a repository, a bad baseline) are
/// usage errors; the rest are failures.
fn scan_error(e: ScanError) -> CliError {
    match e {
        ScanError::Io { .. } | ScanError::NotARepo(_) | ScanError::Baseline { .. } => usage(e),
        ScanError::Output(_) | ScanError::GitMissing(_) | ScanError::Git { .. } => {
            CliError::Failed(e.into())
        }
    }
}

fn usage(e: ScanError) -> CliError {
    CliError::Usage(e.to_string())
}

// === --revoke ===

/// What to print for one credential the fabric answered about.
fn revoke_line(f: &Finding, outcome: &str, message: &str) -> String {
    let verdict = match outcome {
        "revoked" => "revoked",
        "already_invalid" => "already invalid",
        "not_revocable" => "not revocable",
        _ => "not a Keyless credential",
    };
    let place = match &f.commit {
        Some(c) => format!("{}:{} @ {}", f.path, f.line, c),
        None => format!("{}:{}", f.path, f.line),
    };
    format!(
        "{verdict}: {} {} at {place} (fingerprint {}): {message}",
        f.rule_id,
        f.redacted,
        short(&f.fingerprint)
    )
}

fn short(fingerprint: &str) -> &str {
    fingerprint.get(..16).unwrap_or(fingerprint)
}

/// Asks the fabric about each distinct credential among `findings`; one
/// line per credential on stderr (stdout stays the report). Credentials
/// that cannot be Keyless's are answered locally: third-party secrets
/// never leave this process.
async fn revoke_all(data_dir: &std::path::Path, findings: &[Finding]) -> CliResult {
    let mut seen = HashSet::new();
    let mut counts = [0usize; 4];
    for f in findings {
        if !seen.insert(f.secret.as_str()) {
            continue;
        }
        let (outcome, message) = if admin::may_be_keyless(&f.secret) {
            let reply = admin::call(
                data_dir,
                "POST",
                "/v1/revoke",
                Some(json!({
                    "credential": f.secret,
                    "rule_id": f.rule_id,
                    "fingerprint": f.fingerprint,
                })),
            )
            .await?;
            if reply.status != 200 {
                return Err(CliError::Failed(anyhow::anyhow!(
                    "revocation of {} at {}:{} failed: {}",
                    f.rule_id,
                    f.path,
                    f.line,
                    reply.error_message()
                )));
            }
            let field = |k: &str| {
                reply
                    .body
                    .get(k)
                    .and_then(|v| v.as_str())
                    .unwrap_or_default()
                    .to_owned()
            };
            (field("outcome"), field("message"))
        } else {
            (
                "not_keyless".to_owned(),
                "not a credential Keyless issues".to_owned(),
            )
        };
        let slot = match outcome.as_str() {
            "revoked" => 0,
            "already_invalid" => 1,
            "not_revocable" => 2,
            _ => 3,
        };
        if let Some(n) = counts.get_mut(slot) {
            *n += 1;
        }
        eprintln!("{}", revoke_line(f, &outcome, &message));
    }
    let [revoked, invalid, not_revocable, foreign] = counts;
    eprintln!(
        "revocation: {revoked} revoked, {invalid} already invalid, {not_revocable} not revocable, {foreign} not Keyless credentials"
    );
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;
    use keyless_scan::Severity;

    fn finding(rule: &str, secret: &str, commit: Option<&str>) -> Finding {
        Finding {
            rule_id: rule.into(),
            rule_name: rule.into(),
            severity: Severity::High,
            fingerprint: keyless_scan::fingerprint(rule, secret.as_bytes()),
            path: "app/.env".into(),
            line: 3,
            column: 7,
            commit: commit.map(str::to_owned),
            redacted: keyless_scan::redact(secret),
            decoded: None,
            secret: secret.into(),
        }
    }

    #[test]
    fn revoke_lines_say_what_happened_and_never_the_secret() {
        let secret = "hvs.CAESIJlWNnU2Y3Rk0123456789abcdefghijklmnopq";
        let f = finding("keyless-broker-token", secret, None);
        let line = revoke_line(&f, "revoked", "secrets-broker token revoked");
        assert!(line.starts_with("revoked: keyless-broker-token "), "{line}");
        assert!(line.contains("app/.env:3"), "{line}");
        assert!(line.contains(&f.fingerprint[..16]), "{line}");
        assert!(!line.contains(secret), "secret leaked: {line}");

        let git = finding("aws-access-key", "AKIAIOSFODNN7EXAMPL3", Some("abc123"));
        let line = revoke_line(&git, "not_keyless", "not a credential Keyless issues");
        assert!(line.starts_with("not a Keyless credential: "), "{line}");
        assert!(line.contains("app/.env:3 @ abc123"), "{line}");
        assert!(!line.contains("AKIAIOSFODNN7EXAMPL3"), "{line}");
        let line = revoke_line(&f, "already_invalid", "gone");
        assert!(line.starts_with("already invalid: "), "{line}");
    }

    #[test]
    fn stdin_summary_counts_by_rule() {
        assert_eq!(
            stdin_summary(&[]),
            "keyless scan: no secret found in the stream"
        );
        let a = finding("a", "s1", None);
        let b = finding("b", "s2", None);
        let summary = stdin_summary(&[a.clone(), b, a]);
        assert_eq!(
            summary,
            "keyless scan: 3 secrets redacted in the stream (a ×2, b ×1)"
        );
    }

    #[test]
    fn a_bad_allow_pattern_is_a_usage_error() {
        use clap::Parser;
        let cli = crate::cli::Cli::try_parse_from(["keyless", "scan", ".", "--allow", "(unclosed"])
            .unwrap();
        let crate::cli::Command::Scan(args) = cli.command else {
            panic!("not a scan command");
        };
        match options(&args) {
            Err(CliError::Usage(m)) => {
                assert_eq!(m, "invalid --allow pattern `(unclosed`: unclosed group");
            }
            other => panic!("expected a usage error, got {other:?}"),
        }
    }

    #[test]
    fn scan_needs_paths_or_stdin_but_not_both() {
        use clap::Parser;
        assert!(crate::cli::Cli::try_parse_from(["keyless", "scan"]).is_err());
        assert!(crate::cli::Cli::try_parse_from(["keyless", "scan", "--stdin", "x"]).is_err());
        assert!(crate::cli::Cli::try_parse_from(["keyless", "scan", "--stdin"]).is_ok());
        assert!(crate::cli::Cli::try_parse_from(["keyless", "scan", "--stdin", "--git"]).is_err());
    }

    #[test]
    fn an_allowlist_pattern_matches_path_fingerprint_or_redacted_form() {
        let f = finding("r", "hvs.secretsecretsecretsecret", None);
        assert!(allowed(&regex::Regex::new(r"\.env$").unwrap(), &f));
        assert!(allowed(
            &regex::Regex::new(&f.fingerprint[..12]).unwrap(),
            &f
        ));
        assert!(!allowed(&regex::Regex::new("^src/").unwrap(), &f));
    }
}
