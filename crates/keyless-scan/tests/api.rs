//! The library API: streaming redaction, baselines, allowlists, redaction
//! limits, fingerprints, dedup and ordering, report formats.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use keyless_scan::{Baseline, ScanOptions, Scanner, redact, report};

const GH: &str = "ghp_Zq8vR2mXk4T9wLp0Bn6Hy3Jd7Fs1Ce5Ga9Ku";
const AWS: &str = "AKIAJPJOMKEFOIUC5LGT";

fn tree() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("a.env"),
        format!("X=1\nGITHUB_TOKEN={GH}\nagain={GH}\n"),
    )
    .unwrap();
    std::fs::create_dir_all(dir.path().join("sub")).unwrap();
    std::fs::write(
        dir.path().join("sub/b.py"),
        format!("key = \"{AWS}\"\ntoken2 = \"{GH}\"\n"),
    )
    .unwrap();
    std::fs::create_dir_all(dir.path().join(".git")).unwrap();
    std::fs::write(dir.path().join(".git/config"), format!("{GH}\n")).unwrap();
    dir
}

#[test]
fn redact_stream_prints_no_secret() {
    let input = format!(
        "2026-01-01 INFO start\nauth with {GH} ok\nkey={AWS} and again {GH}\ncfg: {}\nbye\n",
        base64_of(&format!("GITHUB_TOKEN={GH} # ci")),
    );
    let mut out = Vec::new();
    let findings = Scanner::new()
        .redact_stream(input.as_bytes(), &mut out)
        .unwrap();
    let out = String::from_utf8(out).unwrap();
    assert!(!out.contains(GH) && !out.contains(AWS), "{out}");
    assert!(
        !out.contains(&base64_of(&format!("GITHUB_TOKEN={GH} # ci"))),
        "{out}"
    );
    assert!(
        !out.contains(&GH[..12]) && !out.contains(&AWS[..8]),
        "{out}"
    );
    assert_eq!(out.lines().count(), 5);
    assert!(
        out.starts_with("2026-01-01 INFO start\nauth with ghp_"),
        "{out}"
    );
    assert!(out.ends_with("bye\n"));
    assert!(findings.iter().all(|f| f.path == "<stdin>"));
    let lines: Vec<u64> = findings.iter().map(|f| f.line).collect();
    assert_eq!(lines, vec![2, 3, 3, 4], "{findings:#?}");
}

fn base64_of(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[test]
fn scan_paths_dedupes_sorts_and_skips_dot_git() {
    let dir = tree();
    let r = Scanner::new()
        .scan_paths(&[dir.path().to_path_buf()], &ScanOptions::default())
        .unwrap();
    let got: Vec<(String, u64, &str)> = r
        .findings
        .iter()
        .map(|f| {
            (
                f.path
                    .strip_prefix(&dir.path().display().to_string())
                    .unwrap()
                    .to_owned(),
                f.line,
                f.rule_id.as_str(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("/a.env".to_owned(), 2, "github-pat"),
            ("/sub/b.py".to_owned(), 1, "aws-access-key-id"),
            ("/sub/b.py".to_owned(), 2, "github-pat"),
        ]
    );
    assert_eq!(r.files_scanned, 2);
    // Same secret, two files: same fingerprint.
    assert_eq!(r.findings[0].fingerprint, r.findings[2].fingerprint);
    assert_eq!(
        r.findings[0].fingerprint,
        keyless_scan::fingerprint("github-pat", GH.as_bytes())
    );
}

#[test]
fn allowlist_drops_by_path_fingerprint_or_redacted_match() {
    let dir = tree();
    let s = Scanner::new();
    let paths = [dir.path().to_path_buf()];
    let all = s.scan_paths(&paths, &ScanOptions::default()).unwrap();
    let gh_fp = all.findings[0].fingerprint.clone();
    for (re, left) in [
        (r"sub/b\.py$".to_owned(), 1),
        (gh_fp, 1),
        (r"^AKIA\*".to_owned(), 3),
        ("^AK\\*".to_owned(), 2),
    ] {
        let opts = ScanOptions {
            allowlist: vec![regex::Regex::new(&re).unwrap()],
            ..ScanOptions::default()
        };
        let r = s.scan_paths(&paths, &opts).unwrap();
        assert_eq!(r.findings.len(), left, "allowlist {re}");
    }
}

#[test]
fn baseline_round_trip_filters_known_findings() {
    let dir = tree();
    let s = Scanner::new();
    let paths = [dir.path().to_path_buf()];
    let first = s.scan_paths(&paths, &ScanOptions::default()).unwrap();
    let file = dir.path().join("baseline.json");
    Baseline::from_report(&first).save(&file).unwrap();
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(!text.contains(GH) && !text.contains(AWS));
    let base = Baseline::load(&file).unwrap();
    assert_eq!(base, Baseline::from_report(&first));
    assert_eq!(base.len(), 2);
    // A new secret appears: only it survives the baseline.
    std::fs::write(
        dir.path().join("new.env"),
        "NPM_TOKEN=npm_Zq8vR2mXk4T9wLp0Bn6Hy3Jd7Fs1Ce5Ga9Ku\n",
    )
    .unwrap();
    let second = base.filter(s.scan_paths(&paths, &ScanOptions::default()).unwrap());
    let ids: Vec<_> = second.findings.iter().map(|f| f.rule_id.as_str()).collect();
    assert_eq!(ids, vec!["npm-token"]);
    std::fs::write(&file, "{\"version\": 7, \"findings\": []}").unwrap();
    let err = Baseline::load(&file).unwrap_err().to_string();
    assert!(
        err.contains("baseline.json") && err.contains("version 7"),
        "{err}"
    );
}

#[test]
fn redaction_never_reveals_more_than_a_quarter() {
    for n in 0..200 {
        let secret: String = (0..n).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
        let red = redact(&secret);
        let shown = red.chars().filter(|&c| c != '*').count();
        assert!(shown * 4 <= n, "{n}: {red}");
        assert!(shown <= 8, "{n}: {red}");
        assert!(red.contains('*'));
    }
    assert_eq!(redact(AWS), "AK****************GT");
    // Every rule's positive examples: the finding's redacted form holds
    // no more than a quarter of the secret, and serialization drops it.
    let s = Scanner::new();
    for rule in s.rules() {
        for p in rule.positive {
            for f in s.scan_bytes("x", p.as_bytes()) {
                let json = serde_json::to_string(&f).unwrap();
                assert!(!json.contains(&f.secret), "{}: secret serialized", rule.id);
                assert!(!json.contains("\"secret\""), "{}", rule.id);
                let quarter = f.secret.chars().count() / 4 + 1;
                let probe: String = f.secret.chars().take(quarter).collect();
                assert!(
                    !f.redacted.contains(&probe),
                    "{}: {} reveals {probe}",
                    rule.id,
                    f.redacted
                );
            }
        }
    }
}

#[test]
fn reports_carry_no_secret_and_sarif_has_the_required_shape() {
    let dir = tree();
    let s = Scanner::new();
    let r = s
        .scan_paths(&[dir.path().to_path_buf()], &ScanOptions::default())
        .unwrap();
    let text = report::text(&r);
    let json = report::json(&r).to_string();
    let sarif = report::sarif(&r, s.rules());
    for out in [&text, &json, &sarif.to_string()] {
        assert!(!out.contains(GH) && !out.contains(AWS), "{out}");
    }
    assert!(
        text.contains("github-pat") && text.contains("3 finding(s)"),
        "{text}"
    );
    assert_eq!(sarif["version"], "2.1.0");
    assert!(
        sarif["$schema"]
            .as_str()
            .unwrap()
            .contains("sarif-schema-2.1.0")
    );
    let run = &sarif["runs"][0];
    assert_eq!(run["tool"]["driver"]["name"], "keyless-scan");
    assert_eq!(
        run["tool"]["driver"]["rules"].as_array().unwrap().len(),
        s.rules().len()
    );
    let rule0 = &run["tool"]["driver"]["rules"][0];
    assert!(rule0["shortDescription"]["text"].is_string());
    assert_eq!(rule0["defaultConfiguration"]["level"], "error");
    let res = &run["results"][0];
    assert_eq!(res["ruleId"], "github-pat");
    assert_eq!(res["level"], "error");
    let loc = &res["locations"][0]["physicalLocation"];
    assert!(
        loc["artifactLocation"]["uri"]
            .as_str()
            .unwrap()
            .ends_with("a.env")
    );
    assert_eq!(loc["region"]["startLine"], 2);
    assert_eq!(loc["region"]["startColumn"], 14);
    assert_eq!(
        res["partialFingerprints"]["keyless/v1"],
        r.findings[0].fingerprint.as_str()
    );
}

#[test]
fn generic_rules_yield_to_specific_ones_even_with_many_hits() {
    let mut text = String::new();
    for i in 0..5000u32 {
        // Spread the digits: a run of zeros would (rightly) fail the entropy check.
        let i = (i + 1).wrapping_mul(2_654_435_761);
        text.push_str(&format!(
            "api_key = \"ghp_Zq8vR2mXk4T9wLp0Bn6Hy3JdAbCd{i:08x}\"\n"
        ));
        text.push_str(&format!("client_token = \"q8Zr2LmP0vX7tY4w{i:08x}\"\n"));
    }
    let found = Scanner::new().scan_bytes("many.env", text.as_bytes());
    let pats = found.iter().filter(|f| f.rule_id == "github-pat").count();
    let generic = found
        .iter()
        .filter(|f| f.rule_id == "generic-token")
        .count();
    let lines: std::collections::HashSet<u64> = found
        .iter()
        .filter(|f| f.rule_id == "generic-token")
        .map(|f| f.line)
        .collect();
    let missing: Vec<u64> = (1..=5000)
        .map(|i| 2 * i)
        .filter(|l| !lines.contains(l))
        .collect();
    assert_eq!(
        (pats, generic),
        (5000, 5000),
        "missing generic at lines {missing:?}"
    );
    assert!(
        found
            .iter()
            .all(|f| (f.rule_id == "github-pat") == (f.line % 2 == 1))
    );
}

#[test]
fn scanner_is_shareable_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Scanner>();
}

#[test]
fn missing_path_is_an_error_naming_it() {
    let err = Scanner::new()
        .scan_paths(
            &["/nonexistent/keyless-scan-test".into()],
            &ScanOptions::default(),
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("/nonexistent/keyless-scan-test"), "{err}");
}
