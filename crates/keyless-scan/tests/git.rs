//! `scan_git`: every blob of the history once, secrets reported at the
//! commit and path where they first appeared.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::path::Path;
use std::process::Command;

use keyless_scan::{ScanError, ScanOptions, Scanner};

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args([
            "-c",
            "user.name=Test",
            "-c",
            "user.email=test@example.invalid",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

const TOKEN: &str = "ghp_Zq8vR2mXk4T9wLp0Bn6Hy3Jd7Fs1Ce5Ga9Ku";

#[test]
fn secret_added_then_removed_is_found_once_at_the_commit_that_added_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    git(d, &["init", "-q", "-b", "main"]);
    std::fs::write(d.join("README.md"), "# demo\n").unwrap();
    git(d, &["add", "."]);
    git(d, &["commit", "-q", "-m", "one"]);

    std::fs::create_dir_all(d.join("config")).unwrap();
    std::fs::write(
        d.join("config/ci.env"),
        format!("NAME=demo\nGITHUB_TOKEN={TOKEN}\n"),
    )
    .unwrap();
    git(d, &["add", "."]);
    git(d, &["commit", "-q", "-m", "two: add ci config"]);
    let second = git(d, &["rev-parse", "HEAD"]);

    // Commit 3 edits the file but keeps the secret (a new blob), commit 4
    // removes it: still one finding, at commit 2.
    std::fs::write(
        d.join("config/ci.env"),
        format!("NAME=demo2\nGITHUB_TOKEN={TOKEN}\n"),
    )
    .unwrap();
    git(d, &["commit", "-q", "-am", "three: rename"]);
    std::fs::write(d.join("config/ci.env"), "NAME=demo2\n").unwrap();
    git(d, &["commit", "-q", "-am", "four: remove token"]);

    let report = Scanner::new().scan_git(d, &ScanOptions::default()).unwrap();
    let found: Vec<_> = report
        .findings
        .iter()
        .filter(|f| f.rule_id == "github-pat")
        .collect();
    assert_eq!(found.len(), 1, "{:#?}", report.findings);
    let f = found[0];
    assert_eq!(f.commit.as_deref(), Some(second.as_str()));
    assert_eq!(f.path, "config/ci.env");
    assert_eq!(f.line, 2);
    assert_eq!(f.secret, TOKEN);
    // Blobs: README, and three versions of ci.env, each scanned once.
    assert_eq!(report.files_scanned, 4);
    // The working tree no longer holds the secret.
    let files = Scanner::new()
        .scan_paths(&[d.to_path_buf()], &ScanOptions::default())
        .unwrap();
    assert!(files.findings.is_empty(), "{:#?}", files.findings);
}

#[test]
fn not_a_repository_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = Scanner::new()
        .scan_git(dir.path(), &ScanOptions::default())
        .unwrap_err();
    assert!(matches!(err, ScanError::NotARepo(_)), "{err}");
    assert!(err.to_string().contains("is not a git repository"), "{err}");
}

#[test]
fn large_blobs_are_skipped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    git(d, &["init", "-q"]);
    std::fs::write(
        d.join("big.txt"),
        format!("{}\nGITHUB_TOKEN={TOKEN}\n", "a".repeat(5000)),
    )
    .unwrap();
    std::fs::write(d.join("small.txt"), "ok\n").unwrap();
    git(d, &["add", "."]);
    git(d, &["commit", "-q", "-m", "one"]);
    let opts = ScanOptions {
        max_file_size: 1000,
        ..ScanOptions::default()
    };
    let report = Scanner::new().scan_git(d, &opts).unwrap();
    assert_eq!(report.files_skipped, 1);
    assert_eq!(report.files_scanned, 1);
    assert!(report.findings.is_empty());
}
