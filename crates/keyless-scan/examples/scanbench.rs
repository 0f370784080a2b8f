//! Throughput of the scanner, for `bench/scan.sh`: scans a tree or a git
//! history with N threads and prints one line of JSON (bytes, seconds,
//! MB/s, findings). Secrets are never printed.
//!
//!     scanbench tree DIR [THREADS]
//!     scanbench git REPO [THREADS]
//!
//! `KEYLESS_SCANBENCH_NO_BASE64=1` turns base64 decoding off (to measure its
//! cost); `KEYLESS_SCANBENCH_SHOW=1` prints the (redacted) findings to stderr;
//! `KEYLESS_SCANBENCH_SARIF=FILE` writes them as SARIF.

use std::path::PathBuf;
use std::process::ExitCode;

use keyless_scan::{ScanOptions, Scanner};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(mode), Some(path)) = (args.first(), args.get(1)) else {
        eprintln!("usage: scanbench tree|git PATH [THREADS]");
        return ExitCode::from(2);
    };
    let threads = args.get(2).and_then(|t| t.parse().ok()).unwrap_or(0);
    let opts = ScanOptions {
        threads,
        progress: true,
        decode_base64: std::env::var_os("KEYLESS_SCANBENCH_NO_BASE64").is_none(),
        ..ScanOptions::default()
    };
    let scanner = Scanner::new();
    let path = PathBuf::from(path);
    let result = match mode.as_str() {
        "tree" => scanner.scan_paths(&[path], &opts),
        "git" => scanner.scan_git(&path, &opts),
        other => {
            eprintln!("unknown mode `{other}`: tree or git");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(r) => {
            if std::env::var_os("KEYLESS_SCANBENCH_SHOW").is_some() {
                eprint!("{}", keyless_scan::report::text(&r));
            }
            if let Some(file) = std::env::var_os("KEYLESS_SCANBENCH_SARIF") {
                let sarif = keyless_scan::report::sarif(&r, scanner.rules());
                if let Err(e) = std::fs::write(&file, sarif.to_string()) {
                    eprintln!("scanbench: cannot write SARIF: {e}");
                    return ExitCode::FAILURE;
                }
            }
            let secs = r.elapsed.as_secs_f64();
            let mbps = r.bytes_scanned as f64 / 1e6 / secs.max(1e-9);
            println!(
                "{{\"mode\":\"{mode}\",\"threads\":{threads},\"files\":{},\"bytes\":{},\"skipped\":{},\"seconds\":{secs:.3},\"mb_per_s\":{mbps:.1},\"findings\":{}}}",
                r.files_scanned,
                r.bytes_scanned,
                r.files_skipped,
                r.findings.len()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("scanbench: {e}");
            ExitCode::FAILURE
        }
    }
}
