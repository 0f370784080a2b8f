//! Scanning a git history: every blob once, each secret reported at the
//! commit and path where it first appeared.
//!
//! Three `git` processes, no `git log -p`:
//! 1. `git log --all --reverse --raw --no-abbrev` maps each blob id to the
//!    first (oldest) commit and path that introduced it;
//! 2. `git rev-list --all --objects` piped into `git cat-file --batch-check`
//!    lists the reachable blobs and their sizes (and a path for blobs the
//!    log did not show, e.g. ones introduced by merges);
//! 3. `git cat-file --batch` streams their contents to the scanning threads
//!    through a bounded channel, so memory stays at threads × largest blob.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::mpsc;
use std::time::Instant;

use crate::engine::Engine;
use crate::{Finding, ScanError, ScanOptions, ScanReport, finish, progress_bar, thread_count};

type Oid = [u8; 20];

/// Findings with the index of their commit (`u32::MAX` = unknown), blobs and bytes read.
type Collected = (Vec<(Finding, u32)>, u64, u64);

/// Where blobs first appeared: interned commits and paths.
#[derive(Default)]
struct Origins {
    commits: Vec<String>,
    paths: Vec<String>,
    path_ids: HashMap<String, u32>,
    blobs: HashMap<Oid, (u32, u32)>,
}

/// A blob to scan.
struct Blob {
    oid: Oid,
    /// A path from `rev-list` for blobs `Origins` lacks.
    fallback_path: Option<String>,
}

pub(crate) fn scan_git(
    engine: &Engine,
    repo: &Path,
    opts: &ScanOptions,
) -> Result<ScanReport, ScanError> {
    let started = Instant::now();
    check_repo(repo)?;
    let origins = origins(repo)?;
    let (blobs, skipped) = list_blobs(repo, opts.max_file_size, &origins)?;
    let threads = thread_count(opts);
    let bar = progress_bar(opts, Some(blobs.len() as u64));

    let mut cat = spawn(repo, &["cat-file", "--batch"], Stdio::piped())?;
    let mut stdin = cat
        .stdin
        .take()
        .ok_or_else(|| git_err(repo, "no stdin for cat-file"))?;
    let stdout = cat
        .stdout
        .take()
        .ok_or_else(|| git_err(repo, "no stdout for cat-file"))?;
    let (tx, rx) = mpsc::sync_channel::<(usize, Vec<u8>)>(threads * 2);
    let rx = Mutex::new(rx);

    let result: Result<Collected, ScanError> = std::thread::scope(|scope| {
        let blobs_ref = &blobs;
        let feeder = scope.spawn(move || -> std::io::Result<()> {
            let mut w = std::io::BufWriter::new(&mut stdin);
            for b in blobs_ref {
                writeln!(w, "{}", hex::encode(b.oid))?;
            }
            w.flush()?;
            drop(w);
            drop(stdin);
            Ok(())
        });
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                let (rx, origins, blobs, bar) = (&rx, &origins, blobs_ref, bar.as_ref());
                scope.spawn(move || {
                    let mut found = Vec::new();
                    loop {
                        let next = match rx.lock() {
                            Ok(g) => g.recv(),
                            Err(_) => break,
                        };
                        let Ok((i, data)) = next else { break };
                        let Some(blob) = blobs.get(i) else { continue };
                        let (commit_idx, commit, path) = match origins.blobs.get(&blob.oid) {
                            Some(&(c, p)) => (
                                c,
                                origins.commits.get(c as usize).cloned(),
                                origins.paths.get(p as usize).cloned().unwrap_or_default(),
                            ),
                            None => (
                                u32::MAX,
                                None,
                                blob.fallback_path
                                    .clone()
                                    .unwrap_or_else(|| hex::encode(blob.oid)),
                            ),
                        };
                        for mut f in engine.findings(&path, &data, opts.decode_base64) {
                            f.commit.clone_from(&commit);
                            found.push((f, commit_idx));
                        }
                        if let Some(bar) = bar {
                            bar.inc(1);
                        }
                    }
                    found
                })
            })
            .collect();

        // Read the batch output here, handing blobs to the workers.
        let mut reader = BufReader::with_capacity(1 << 20, stdout);
        let mut header = String::new();
        let mut files = 0u64;
        let mut bytes = 0u64;
        let mut read_result = Ok(());
        for i in 0..blobs.len() {
            header.clear();
            match reader.read_line(&mut header) {
                Ok(0) => {
                    read_result = Err(git_err(repo, "cat-file --batch ended early"));
                    break;
                }
                Ok(_) => {}
                Err(e) => {
                    read_result = Err(git_err(repo, &format!("reading cat-file output: {e}")));
                    break;
                }
            }
            let mut parts = header.split_whitespace();
            let (_, kind, size) = (parts.next(), parts.next(), parts.next());
            let Some(size) = size.and_then(|s| s.parse::<u64>().ok()) else {
                if kind == Some("missing") {
                    continue;
                }
                read_result = Err(git_err(
                    repo,
                    &format!("unexpected cat-file header `{}`", header.trim()),
                ));
                break;
            };
            let mut data = Vec::new();
            // Contents, then one newline.
            if let Err(e) = (&mut reader).take(size + 1).read_to_end(&mut data) {
                read_result = Err(git_err(repo, &format!("reading blob: {e}")));
                break;
            }
            data.pop();
            files += 1;
            bytes += data.len() as u64;
            if tx.send((i, data)).is_err() {
                break;
            }
        }
        drop(tx);
        if read_result.is_err() {
            // Unblock the feeder: it may be stuck writing to a cat-file
            // that is itself stuck writing output nobody reads.
            let _ = cat.kill();
        }
        let mut found = Vec::new();
        for w in workers {
            found.extend(w.join().unwrap_or_default());
        }
        let fed = feeder.join();
        read_result?;
        match fed {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(git_err(repo, &format!("writing to cat-file: {e}"))),
            Err(_) => return Err(git_err(repo, "cat-file feeder thread failed")),
        }
        Ok((found, files, bytes))
    });
    let _ = cat.kill();
    let _ = cat.wait();
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let (found, files, bytes) = result?;

    // A secret kept across several versions of a file is reported once,
    // at the oldest commit that introduced it on that path.
    let mut first: HashMap<(String, String), (u32, Finding)> = HashMap::new();
    for (f, c) in found {
        let key = (f.fingerprint.clone(), f.path.clone());
        match first.get(&key) {
            Some((old, _)) if *old <= c => {}
            _ => {
                first.insert(key, (c, f));
            }
        }
    }
    let findings = finish(first.into_values().map(|(_, f)| f).collect(), opts);
    Ok(ScanReport {
        findings,
        files_scanned: files,
        bytes_scanned: bytes,
        files_skipped: skipped,
        elapsed: started.elapsed(),
    })
}

fn git_err(repo: &Path, message: &str) -> ScanError {
    ScanError::Git {
        repo: repo.display().to_string(),
        message: message.to_owned(),
    }
}

fn spawn(repo: &Path, args: &[&str], stdin: Stdio) -> Result<Child, ScanError> {
    Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(["-c", "core.quotePath=false"])
        .args(args)
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(ScanError::GitMissing)
}

fn check_repo(repo: &Path) -> Result<(), ScanError> {
    let out = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(["rev-parse", "--git-dir"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map_err(ScanError::GitMissing)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(ScanError::NotARepo(repo.display().to_string()))
    }
}

fn parse_oid(hex_id: &str) -> Option<Oid> {
    let mut oid = [0u8; 20];
    hex::decode_to_slice(hex_id, &mut oid).ok()?;
    Some(oid)
}

/// Pass 1: blob → first commit and path, oldest commits first.
fn origins(repo: &Path) -> Result<Origins, ScanError> {
    let mut child = spawn(
        repo,
        &[
            "log",
            "--all",
            "--reverse",
            "--raw",
            "--no-abbrev",
            "--no-renames",
            "--format=%x01%H",
        ],
        Stdio::null(),
    )?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| git_err(repo, "no stdout for git log"))?;
    let mut o = Origins::default();
    let mut current: Option<u32> = None;
    for line in BufReader::new(stdout).lines() {
        let line = line.map_err(|e| git_err(repo, &format!("reading git log: {e}")))?;
        if let Some(commit) = line.strip_prefix('\u{1}') {
            o.commits.push(commit.to_owned());
            current = u32::try_from(o.commits.len() - 1).ok();
            continue;
        }
        let (Some(meta), Some(c)) = (line.strip_prefix(':'), current) else {
            continue;
        };
        let Some((fields, path)) = meta.split_once('\t') else {
            continue;
        };
        let mut fields = fields.split(' ');
        let (Some(_), Some(new_mode), Some(_), Some(new_id)) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        // Deletions (mode 000000) and submodules (160000) carry no blob.
        if new_mode == "000000" || new_mode == "160000" {
            continue;
        }
        let Some(oid) = parse_oid(new_id) else {
            continue;
        };
        if o.blobs.contains_key(&oid) {
            continue;
        }
        let p = match o.path_ids.get(path) {
            Some(&p) => p,
            None => {
                let p = u32::try_from(o.paths.len()).unwrap_or(u32::MAX);
                o.paths.push(path.to_owned());
                o.path_ids.insert(path.to_owned(), p);
                p
            }
        };
        o.blobs.insert(oid, (c, p));
    }
    let status = child
        .wait()
        .map_err(|e| git_err(repo, &format!("git log: {e}")))?;
    // An empty repository (no commits) makes `git log` fail: nothing to scan.
    if !status.success() && !o.commits.is_empty() {
        return Err(git_err(repo, "git log failed"));
    }
    Ok(o)
}

/// Pass 2: the reachable blobs no larger than `max`, and how many were larger.
fn list_blobs(repo: &Path, max: u64, origins: &Origins) -> Result<(Vec<Blob>, u64), ScanError> {
    let mut revs = spawn(repo, &["rev-list", "--all", "--objects"], Stdio::null())?;
    let revs_out = revs
        .stdout
        .take()
        .ok_or_else(|| git_err(repo, "no stdout for rev-list"))?;
    let mut check = spawn(
        repo,
        &[
            "cat-file",
            "--batch-check=%(objectname) %(objecttype) %(objectsize) %(rest)",
        ],
        Stdio::from(revs_out),
    )?;
    let out = check
        .stdout
        .take()
        .ok_or_else(|| git_err(repo, "no stdout for cat-file"))?;
    let mut blobs = Vec::new();
    let mut skipped = 0u64;
    for line in BufReader::new(out).lines() {
        let line =
            line.map_err(|e| git_err(repo, &format!("reading cat-file --batch-check: {e}")))?;
        let mut parts = line.splitn(4, ' ');
        let (Some(id), Some(kind), Some(size)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        if kind != "blob" {
            continue;
        }
        let (Some(oid), Ok(size)) = (parse_oid(id), size.parse::<u64>()) else {
            continue;
        };
        if size > max {
            skipped += 1;
            continue;
        }
        // Keep a path only for blobs the log did not place (memory: one
        // string per blob adds up on large histories).
        let rest = if origins.blobs.contains_key(&oid) {
            None
        } else {
            parts.next().filter(|r| !r.is_empty()).map(str::to_owned)
        };
        blobs.push(Blob {
            oid,
            fallback_path: rest,
        });
    }
    let _ = revs.wait();
    let _ = check.wait();
    Ok((blobs, skipped))
}
