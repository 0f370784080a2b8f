//! Scanning files and directory trees in parallel.
//!
//! Threads: `std::thread::scope` with a bounded channel as the work queue
//! (the walker produces paths, N workers read and scan). No rayon: the
//! work is one flat queue of files, a scoped pool is a few lines, and the
//! build stays lighter. Each worker reuses one read buffer, so memory is
//! bounded by threads × the largest file scanned.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::mpsc;
use std::time::Instant;

use crate::engine::Engine;
use crate::{Finding, ScanError, ScanOptions, ScanReport, finish, progress_bar, thread_count};

/// What one worker collected.
#[derive(Default)]
struct Tally {
    findings: Vec<Finding>,
    files: u64,
    bytes: u64,
    skipped: u64,
}

pub(crate) fn scan_paths(
    engine: &Engine,
    paths: &[PathBuf],
    opts: &ScanOptions,
) -> Result<ScanReport, ScanError> {
    let started = Instant::now();
    for p in paths {
        std::fs::symlink_metadata(p).map_err(|source| ScanError::Io {
            path: p.display().to_string(),
            source,
        })?;
    }
    let threads = thread_count(opts);
    let bar = progress_bar(opts, None);
    let (tx, rx) = mpsc::sync_channel::<PathBuf>(threads * 64);
    let rx = Mutex::new(rx);
    let mut walk_skipped = 0u64;
    let tallies: Vec<Tally> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| scope.spawn(|| worker(engine, &rx, opts, bar.as_ref())))
            .collect();
        for root in paths {
            let walker = walkdir::WalkDir::new(root)
                .follow_links(false)
                .into_iter()
                .filter_entry(|e| !(e.file_type().is_dir() && e.file_name() == ".git"));
            for entry in walker {
                match entry {
                    Ok(e) if e.file_type().is_file() => {
                        if tx.send(e.into_path()).is_err() {
                            break;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => walk_skipped += 1,
                }
            }
        }
        drop(tx);
        workers
            .into_iter()
            .map(|w| w.join().unwrap_or_default())
            .collect()
    });
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let mut report = ScanReport {
        files_skipped: walk_skipped,
        ..ScanReport::default()
    };
    let mut all = Vec::new();
    for mut t in tallies {
        all.append(&mut t.findings);
        report.files_scanned += t.files;
        report.bytes_scanned += t.bytes;
        report.files_skipped += t.skipped;
    }
    report.findings = finish(all, opts);
    report.elapsed = started.elapsed();
    Ok(report)
}

fn worker(
    engine: &Engine,
    rx: &Mutex<mpsc::Receiver<PathBuf>>,
    opts: &ScanOptions,
    bar: Option<&indicatif::ProgressBar>,
) -> Tally {
    let mut tally = Tally::default();
    let mut buf = Vec::new();
    loop {
        let next = match rx.lock() {
            Ok(guard) => guard.recv(),
            Err(_) => break,
        };
        let Ok(path) = next else { break };
        match read_bounded(&path, opts.max_file_size, &mut buf) {
            Ok(true) => {
                let name = path.display().to_string();
                tally
                    .findings
                    .extend(engine.findings(&name, &buf, opts.decode_base64));
                tally.files += 1;
                tally.bytes += buf.len() as u64;
                if let Some(bar) = bar {
                    bar.inc(1);
                }
            }
            Ok(false) | Err(_) => tally.skipped += 1,
        }
    }
    tally
}

/// Reads `path` into `buf` unless it is larger than `max` (then `false`).
fn read_bounded(path: &Path, max: u64, buf: &mut Vec<u8>) -> std::io::Result<bool> {
    buf.clear();
    let file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    if len > max {
        return Ok(false);
    }
    // `take` guards against a file that grew since `metadata`.
    file.take(max.saturating_add(1)).read_to_end(buf)?;
    Ok(buf.len() as u64 <= max)
}
