//! Rendering a [`ScanReport`]: text for people, JSON for scripts, SARIF
//! 2.1.0 for code-scanning dashboards. None of them carries a raw secret.

use serde_json::{Value, json};

use crate::{Rule, ScanReport, Severity};

/// Where SARIF consumers learn about the tool.
const INFORMATION_URI: &str = "https://example.invalid/keyless/scan";

/// One line per finding, then a summary line.
pub fn text(r: &ScanReport) -> String {
    let mut out = String::new();
    for f in &r.findings {
        out.push_str(&format!(
            "{}:{}:{}: [{}] {} ({}) {}",
            f.path,
            f.line,
            f.column,
            f.severity.as_str(),
            f.rule_name,
            f.rule_id,
            f.redacted
        ));
        if let Some(c) = &f.commit {
            out.push_str(&format!(" commit {c}"));
        }
        if let Some(d) = &f.decoded {
            out.push_str(&format!(" (decoded {d})"));
        }
        out.push('\n');
    }
    let secs = r.elapsed.as_secs_f64();
    let mbps = if secs > 0.0 {
        r.bytes_scanned as f64 / 1e6 / secs
    } else {
        0.0
    };
    out.push_str(&format!(
        "{} finding(s); {} file(s), {} byte(s) scanned, {} skipped, in {:.2}s ({:.0} MB/s)\n",
        r.findings.len(),
        r.files_scanned,
        r.bytes_scanned,
        r.files_skipped,
        secs,
        mbps
    ));
    out
}

/// `{"findings": [...], "files_scanned", "bytes_scanned", "files_skipped", "elapsed_ms"}`.
pub fn json(r: &ScanReport) -> Value {
    json!({
        "findings": r.findings,
        "files_scanned": r.files_scanned,
        "bytes_scanned": r.bytes_scanned,
        "files_skipped": r.files_skipped,
        "elapsed_ms": u64::try_from(r.elapsed.as_millis()).unwrap_or(u64::MAX),
    })
}

fn level(s: Severity) -> &'static str {
    match s {
        Severity::High => "error",
        Severity::Medium => "warning",
        Severity::Low => "note",
    }
}

/// A SARIF 2.1.0 log with one run.
pub fn sarif(r: &ScanReport, rules: &[Rule]) -> Value {
    let driver_rules: Vec<Value> = rules
        .iter()
        .map(|rule| {
            json!({
                "id": rule.id,
                "name": rule.name,
                "shortDescription": { "text": rule.name },
                "defaultConfiguration": { "level": level(rule.severity) },
            })
        })
        .collect();
    let results: Vec<Value> = r
        .findings
        .iter()
        .map(|f| {
            let mut message = format!("{} found: {}", f.rule_name, f.redacted);
            if let Some(c) = &f.commit {
                message.push_str(&format!(" (commit {c})"));
            }
            if let Some(d) = &f.decoded {
                message.push_str(&format!(" (inside {d})"));
            }
            let mut result = json!({
                "ruleId": f.rule_id,
                "level": level(f.severity),
                "message": { "text": message },
                "locations": [{
                    "physicalLocation": {
                        "artifactLocation": { "uri": uri(&f.path) },
                        "region": { "startLine": f.line, "startColumn": f.column },
                    }
                }],
                "partialFingerprints": { "keyless/v1": f.fingerprint },
            });
            if let (Some(c), Some(obj)) = (&f.commit, result.as_object_mut()) {
                obj.insert("properties".into(), json!({ "commit": c }));
            }
            if let Some(i) = rules.iter().position(|x| x.id == f.rule_id)
                && let Some(obj) = result.as_object_mut()
            {
                obj.insert("ruleIndex".into(), json!(i));
            }
            result
        })
        .collect();
    json!({
        "$schema": "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": {
                "driver": {
                    "name": "keyless-scan",
                    "informationUri": INFORMATION_URI,
                    "version": env!("CARGO_PKG_VERSION"),
                    "rules": driver_rules,
                }
            },
            "results": results,
        }]
    })
}

/// A relative URI reference for a path: forward slashes, no leading `./`,
/// spaces and `%` percent-encoded.
fn uri(path: &str) -> String {
    let p = path.replace('\\', "/");
    let p = p.strip_prefix("./").unwrap_or(&p);
    let mut out = String::with_capacity(p.len());
    for c in p.chars() {
        match c {
            ' ' => out.push_str("%20"),
            '%' => out.push_str("%25"),
            '#' => out.push_str("%23"),
            '?' => out.push_str("%3F"),
            _ => out.push(c),
        }
    }
    out
}
