//! Keyless's secret scanner: finds the static credentials that should not
//! exist — in files, in every blob of a git history, in streamed logs — so
//! they can be revoked before a team goes secretless.
//!
//! The engine ([`Scanner`]) holds the compiled built-in rules (see
//! `rules.rs`). One case-insensitive aho-corasick pass over a buffer finds
//! the rules' keywords; a rule's regex then runs only on windows around its
//! keyword hits, so a file holding no keyword costs that single pass. Runs of
//! base64 are decoded once (depth 1) and scanned too. Findings carry a stable
//! fingerprint (SHA-256 of rule id and secret, not of the path) and a
//! redacted form; the raw secret stays in memory for `--revoke` and is never
//! serialized.
//!
//! Invariant: no output of this crate (text, JSON, SARIF, baseline, the
//! redacted stream) contains more than a quarter of a secret.
//!
//! Not done yet:
//! - `--stdin` works line by line: a multi-line PEM private key in a log
//!   stream is not seen (files and git blobs are scanned whole).
//! - `--git`: a blob that first appears only in a merge commit is reported
//!   without a commit; a secret is reported once per path, at its oldest
//!   commit.
//! - Base64 is decoded one level deep; other encodings (hex, URL-encoding,
//!   compressed archives) are not opened.

mod baseline;
mod engine;
mod git;
pub mod report;
mod rules;
mod walk;

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use baseline::Baseline;

/// How bad a leaked credential of a rule's kind is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Direct access to infrastructure, money or code: revoke now.
    High,
    /// Access to one service or to data.
    Medium,
    /// Probably a credential, limited reach.
    Low,
}

impl Severity {
    /// The lowercase name (`high`, `medium`, `low`).
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::High => "high",
            Severity::Medium => "medium",
            Severity::Low => "low",
        }
    }
}

/// One credential kind: how to find it, and examples proving it.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Stable identifier, e.g. `aws-access-key-id`.
    pub id: &'static str,
    /// Human name, e.g. `AWS access key ID`.
    pub name: &'static str,
    /// Default severity of a finding.
    pub severity: Severity,
    /// The regex (`regex` crate syntax); the secret is the `s` group when
    /// present, else the whole match.
    pub pattern: &'static str,
    /// Keywords (case-insensitive) of which one must occur within `window`
    /// bytes of a match: the prefilter.
    pub keywords: &'static [&'static str],
    /// Minimum Shannon entropy (bits per byte) of the secret; 0 = none.
    pub min_entropy: f64,
    /// Words of which one must occur within 256 bytes of the match (empty = none).
    pub context: &'static [&'static str],
    /// A generic rule (assignment of a high-entropy value): yields to any
    /// specific rule matching the same bytes, and needs letters and digits.
    pub generic: bool,
    /// Drop values that look like placeholders (`${VAR}`, `changeme`, `<your-key>`).
    pub reject_placeholders: bool,
    /// Bytes searched on each side of a keyword hit.
    pub window: usize,
    /// Inputs the rule must report.
    pub positive: &'static [&'static str],
    /// Inputs no rule may report.
    pub negative: &'static [&'static str],
}

/// Settings of one scan.
#[derive(Debug, Clone)]
pub struct ScanOptions {
    /// Worker threads; 0 = all cores.
    pub threads: usize,
    /// Larger files (and blobs) are skipped and counted in `files_skipped`.
    pub max_file_size: u64,
    /// Decode runs of ≥ 32 base64 characters and scan the result (depth 1).
    pub decode_base64: bool,
    /// A finding is dropped when its path, fingerprint or redacted match
    /// matches one of these.
    pub allowlist: Vec<regex::Regex>,
    /// Draw a progress bar on stderr (only when stderr is a terminal).
    pub progress: bool,
}

impl Default for ScanOptions {
    fn default() -> Self {
        Self {
            threads: 0,
            max_file_size: 64 * 1024 * 1024,
            decode_base64: true,
            allowlist: Vec::new(),
            progress: false,
        }
    }
}

/// One secret found at one place.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// The rule's id, e.g. `aws-access-key-id`.
    pub rule_id: String,
    /// The rule's human name.
    pub rule_name: String,
    /// The rule's severity.
    pub severity: Severity,
    /// Hex SHA-256 of `rule_id`, a NUL byte and the secret: the same secret
    /// has the same fingerprint wherever it is found.
    pub fingerprint: String,
    /// The file (or, with `--git`, the path in the tree; `<stdin>` for streams).
    pub path: String,
    /// 1-based line of the match (of the base64 run for decoded findings).
    pub line: u64,
    /// 1-based column, in characters.
    pub column: u64,
    /// With `--git`: the commit where the blob first appeared.
    pub commit: Option<String>,
    /// The match with the secret redacted (at most 4 leading and 4 trailing
    /// characters kept, never more than a quarter of the secret).
    pub redacted: String,
    /// `base64` when found inside a decoded base64 run.
    pub decoded: Option<String>,
    /// The raw secret, for revocation. Never serialized nor printed.
    #[serde(skip)]
    pub secret: String,
}

/// The outcome of a scan.
#[derive(Debug, Clone, Default)]
pub struct ScanReport {
    /// Deduplicated findings, sorted by path, line, column, rule.
    pub findings: Vec<Finding>,
    /// Files (or blobs) scanned.
    pub files_scanned: u64,
    /// Bytes scanned (before base64 decoding).
    pub bytes_scanned: u64,
    /// Files skipped: too large, unreadable.
    pub files_skipped: u64,
    /// Wall time of the scan.
    pub elapsed: Duration,
}

/// Why a scan failed.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// A file or directory could not be read.
    #[error("cannot read `{path}`: {source}")]
    Io {
        /// The path.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// Writing the redacted stream failed.
    #[error("cannot write the redacted output: {0}")]
    Output(std::io::Error),
    /// The `git` program could not be started.
    #[error("cannot run `git` (is it installed and on PATH?): {0}")]
    GitMissing(std::io::Error),
    /// The path given to `--git` is not inside a git repository.
    #[error("`{0}` is not a git repository")]
    NotARepo(String),
    /// A git command failed or printed something unexpected.
    #[error("git failed in `{repo}`: {message}")]
    Git {
        /// The repository.
        repo: String,
        /// What went wrong.
        message: String,
    },
    /// A baseline file is not valid.
    #[error("invalid baseline `{path}`: {reason}")]
    Baseline {
        /// The baseline file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// The compiled rule set. `Send + Sync`: share one across threads.
#[derive(Debug)]
pub struct Scanner {
    engine: engine::Engine,
}

impl Default for Scanner {
    fn default() -> Self {
        Self::new()
    }
}

// === impl Scanner ===

impl Scanner {
    /// A scanner with the built-in rules.
    pub fn new() -> Self {
        Self {
            engine: engine::Engine::new(rules::builtin()),
        }
    }

    /// The rules in use.
    pub fn rules(&self) -> &[Rule] {
        self.engine.rules()
    }

    /// Scans one buffer (base64 runs decoded), reporting under `path`.
    pub fn scan_bytes(&self, path: &str, data: &[u8]) -> Vec<Finding> {
        self.engine.findings(path, data, true)
    }

    /// Scans files and directories (recursively; `.git` directories skipped,
    /// symlinks not followed), in parallel.
    pub fn scan_paths(
        &self,
        paths: &[PathBuf],
        opts: &ScanOptions,
    ) -> Result<ScanReport, ScanError> {
        walk::scan_paths(&self.engine, paths, opts)
    }

    /// Scans every blob of a repository's history once, reporting each
    /// secret at the commit and path where it first appeared.
    pub fn scan_git(&self, repo: &Path, opts: &ScanOptions) -> Result<ScanReport, ScanError> {
        git::scan_git(&self.engine, repo, opts)
    }

    /// Copies `input` to `output` line by line with every secret redacted,
    /// returning the findings (path `<stdin>`). Secrets spanning several
    /// lines (PEM private keys) are not seen in this mode.
    pub fn redact_stream<R: BufRead, W: Write>(
        &self,
        mut input: R,
        mut output: W,
    ) -> Result<Vec<Finding>, ScanError> {
        let mut line = Vec::with_capacity(4096);
        let mut number = 0u64;
        let mut findings = Vec::new();
        loop {
            line.clear();
            let n = input
                .read_until(b'\n', &mut line)
                .map_err(|source| ScanError::Io {
                    path: "<stdin>".into(),
                    source,
                })?;
            if n == 0 {
                break;
            }
            number += 1;
            let (redacted, mut found) = self.engine.redact_line(&line);
            for f in &mut found {
                f.line = number;
            }
            findings.append(&mut found);
            output.write_all(&redacted).map_err(ScanError::Output)?;
        }
        output.flush().map_err(ScanError::Output)?;
        Ok(findings)
    }
}

/// Redacts a secret: keeps at most 4 leading and 4 trailing characters and
/// never more than a quarter of it (an eighth on each side); the middle
/// becomes `*` (at most 32 of them, so length says little either).
pub fn redact(secret: &str) -> String {
    let chars: Vec<char> = secret.chars().collect();
    let n = chars.len();
    let keep = (n / 8).min(4);
    let stars = n.saturating_sub(2 * keep).clamp(1, 32);
    let head: String = chars.iter().take(keep).collect();
    let tail: String = chars.iter().skip(n.saturating_sub(keep)).collect();
    format!("{head}{}{tail}", "*".repeat(stars))
}

/// The stable fingerprint of a secret found by a rule.
pub fn fingerprint(rule_id: &str, secret: &[u8]) -> String {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    ctx.update(rule_id.as_bytes());
    ctx.update(b"\0");
    ctx.update(secret);
    hex::encode(ctx.finish().as_ref())
}

/// Applies the allowlist, deduplicates on (fingerprint, path, commit) and
/// sorts by path, line, column, rule: the last step of every scan.
pub(crate) fn finish(mut findings: Vec<Finding>, opts: &ScanOptions) -> Vec<Finding> {
    findings.retain(|f| {
        !opts.allowlist.iter().any(|re| {
            re.is_match(&f.path) || re.is_match(&f.fingerprint) || re.is_match(&f.redacted)
        })
    });
    findings.sort_by(|a, b| {
        (&a.path, a.line, a.column, &a.rule_id, &a.commit)
            .cmp(&(&b.path, b.line, b.column, &b.rule_id, &b.commit))
    });
    let mut seen = std::collections::HashSet::new();
    findings.retain(|f| seen.insert((f.fingerprint.clone(), f.path.clone(), f.commit.clone())));
    findings
}

/// Worker threads for `opts.threads` (0 = all cores).
pub(crate) fn thread_count(opts: &ScanOptions) -> usize {
    if opts.threads > 0 {
        opts.threads
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }
}

/// A progress bar on stderr when asked for and stderr is a terminal.
pub(crate) fn progress_bar(
    opts: &ScanOptions,
    total: Option<u64>,
) -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal;
    if !opts.progress || !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = match total {
        Some(n) => indicatif::ProgressBar::new(n),
        None => indicatif::ProgressBar::new_spinner(),
    };
    let template = if total.is_some() {
        "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} blobs {msg}"
    } else {
        "{spinner} [{elapsed_precise}] {pos} files {msg}"
    };
    if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar.set_draw_target(indicatif::ProgressDrawTarget::stderr_with_hz(4));
    Some(bar)
}
