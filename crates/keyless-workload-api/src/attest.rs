//! Caller attestation: turns the kernel's view of the process at the other
//! end of the Workload API socket into selectors (`unix:uid:N`, `unix:gid:N`,
//! `unix:path:/abs`, `unix:sha256:<hex>`), like SPIRE's unix attestor.
//!
//! The socket is world-connectable, so everything here must come from the
//! kernel, never from the caller: uid, gid and pid from `SO_PEERCRED`, the
//! binary from `/proc/<pid>/exe`.
//!
//! A pid is only a number and may be reused once its process dies. To make
//! sure every fact describes the same process, `/proc/<pid>` is opened once
//! and all later reads go through that open directory (via the
//! `/proc/self/fd/<fd>` magic link, which resolves to the directory we hold
//! rather than to whatever process owns the pid now; reads through it fail
//! once the process is gone). The process start time (field 22 of `stat`) is
//! read before and after, through the held directory and by pid: any change
//! means the pid was recycled and attestation fails.
//!
//! Known limit shared with every unix attestor: a caller that `exec`s another
//! binary after connecting is attested as that binary. The effective uid and
//! gid of the process must still equal those it connected with, which stops
//! the dangerous case of exec-ing a setuid binary.
//!
//! Hashing a binary is the expensive part, so digests are cached by
//! (path, device, inode, size, mtime, ctime): ctime cannot be set from user
//! space, so a binary rewritten in place never keeps a stale digest. All of
//! this is blocking file I/O; callers run it on a blocking thread.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use keyless_identity::Selector;

/// How many binary digests are remembered; the cache is emptied when full
/// (a host runs far fewer distinct workload binaries than this).
const HASH_CACHE_CAPACITY: usize = 1024;

/// Where the kernel's process information lives.
const PROC: &str = "/proc";

/// The credentials the kernel reported for a socket peer (`SO_PEERCRED`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCredentials {
    pub uid: u32,
    pub gid: u32,
    /// `None` (or 0) when the peer lives in a pid namespace we cannot see.
    pub pid: Option<i32>,
}

/// What attestation established about a caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attestation {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
    /// The binary, from `/proc/<pid>/exe`; `None` when the kernel would not
    /// tell us (another user's process and we lack the privilege).
    pub path: Option<PathBuf>,
    /// Lowercase hex SHA-256 of the binary, when it could be read.
    pub sha256: Option<String>,
    /// Every fact above as selectors, in a stable order.
    pub selectors: Vec<Selector>,
}

/// Why a caller could not be attested.
#[derive(Debug, thiserror::Error)]
pub enum AttestError {
    #[error("caller pid unavailable (the caller is in another pid namespace)")]
    NoPid,
    #[error("process {pid} is gone")]
    ProcessGone { pid: i32 },
    #[error("process {pid} was replaced during attestation (pid reused)")]
    PidReused { pid: i32 },
    #[error("process {pid} changed credentials since it connected")]
    CredentialsChanged { pid: i32 },
    #[error("cannot read `{path}`: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("malformed `{path}`")]
    Malformed { path: PathBuf },
    #[error("invalid selector for process {pid}: {reason}")]
    Selector { pid: i32, reason: String },
}

/// Attests socket peers; holds the digest cache, so share one per server.
#[derive(Debug, Default)]
pub struct Attestor {
    digests: Mutex<HashMap<FileKey, [u8; 32]>>,
}

/// Identifies one version of one file well enough to reuse its digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct FileKey {
    path: PathBuf,
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

// === impl Attestor ===

impl Attestor {
    pub fn new() -> Self {
        Self::default()
    }

    /// Attests the process described by `peer`. Blocking: reads `/proc`
    /// and possibly hashes the caller's binary.
    pub fn attest(&self, peer: PeerCredentials) -> Result<Attestation, AttestError> {
        let pid = match peer.pid {
            Some(pid) if pid > 0 => pid,
            _ => return Err(AttestError::NoPid),
        };
        let by_pid = Path::new(PROC).join(pid.to_string());
        let dir = File::open(&by_pid).map_err(|e| gone_or(pid, &by_pid, e))?;
        // Every read below goes through the directory we hold open.
        let held = Path::new(PROC)
            .join("self/fd")
            .join(dir.as_raw_fd().to_string());

        let started = start_time(pid, &held.join("stat"))?;
        check_credentials(pid, &held.join("status"), peer)?;

        let exe = held.join("exe");
        let (path, sha256) = match std::fs::read_link(&exe) {
            Ok(path) => {
                let digest = self.digest(pid, &path, &exe)?;
                (Some(path), Some(digest))
            }
            // Without ptrace-level access to the caller (another user's
            // process while we are not root) the kernel hides its binary:
            // attest what we know; entries needing path or hash won't match.
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                tracing::debug!(
                    pid,
                    "binary of caller not readable; path and sha256 selectors omitted"
                );
                (None, None)
            }
            Err(e) => return Err(gone_or(pid, &exe, e)),
        };

        // Same process all along? Through the held directory (fails if it
        // died) and by pid (differs if the pid now names someone else).
        if start_time(pid, &held.join("stat"))? != started
            || start_time(pid, &by_pid.join("stat"))? != started
        {
            return Err(AttestError::PidReused { pid });
        }
        drop(dir);

        let mut selectors = vec![Selector::unix_uid(peer.uid), Selector::unix_gid(peer.gid)];
        if let Some(path) = &path {
            let text = path.to_str().ok_or_else(|| AttestError::Selector {
                pid,
                reason: "binary path is not utf-8".to_owned(),
            })?;
            selectors.push(
                Selector::unix_path(text).map_err(|e| AttestError::Selector {
                    pid,
                    reason: e.to_string(),
                })?,
            );
        }
        if let Some(digest) = &sha256 {
            selectors.push(Selector::unix_sha256(digest));
        }
        Ok(Attestation {
            pid,
            uid: peer.uid,
            gid: peer.gid,
            path,
            sha256: sha256.map(hex::encode),
            selectors,
        })
    }

    /// SHA-256 of the binary behind `exe` (a `/proc/.../exe` link, which
    /// opens the exact inode the process runs even if `path` was replaced).
    fn digest(&self, pid: i32, path: &Path, exe: &Path) -> Result<[u8; 32], AttestError> {
        let mut file = File::open(exe).map_err(|e| gone_or(pid, exe, e))?;
        let meta = file.metadata().map_err(|e| read_error(exe, e))?;
        let key = FileKey {
            path: path.to_owned(),
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        };
        if let Some(digest) = self.digests.lock().ok().and_then(|c| c.get(&key).copied()) {
            return Ok(digest);
        }
        let digest = sha256_of(&mut file).map_err(|e| read_error(exe, e))?;
        if let Ok(mut cache) = self.digests.lock() {
            if cache.len() >= HASH_CACHE_CAPACITY {
                cache.clear();
            }
            cache.insert(key, digest);
        }
        Ok(digest)
    }
}

/// Hashes everything `reader` yields.
fn sha256_of(reader: &mut impl Read) -> io::Result<[u8; 32]> {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = reader.read(&mut buf)?;
        match buf.get(..n) {
            Some([]) | None => break,
            Some(chunk) => ctx.update(chunk),
        }
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    Ok(out)
}

/// Field 22 of `/proc/<pid>/stat`: the start time in clock ticks since boot.
/// The second field (the command name) is in parentheses and may contain
/// spaces or `)`, so fields are counted from the last `)`.
fn start_time(pid: i32, stat: &Path) -> Result<u64, AttestError> {
    let text = std::fs::read_to_string(stat).map_err(|e| gone_or(pid, stat, e))?;
    parse_start_time(&text).ok_or_else(|| AttestError::Malformed {
        path: stat.to_owned(),
    })
}

fn parse_start_time(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    // `rest` starts at field 3 (state), so field 22 is the 20th.
    rest.split_whitespace().nth(22 - 3)?.parse().ok()
}

/// The effective uid and gid (second value of `Uid:` / `Gid:` in `status`)
/// must still be those the peer connected with (`SO_PEERCRED` records the
/// effective ids at `connect`).
fn check_credentials(pid: i32, status: &Path, peer: PeerCredentials) -> Result<(), AttestError> {
    let text = std::fs::read_to_string(status).map_err(|e| gone_or(pid, status, e))?;
    let effective = |name: &str| -> Option<u32> {
        let line = text.lines().find_map(|l| l.strip_prefix(name))?;
        line.split_whitespace().nth(1)?.parse().ok()
    };
    let malformed = || AttestError::Malformed {
        path: status.to_owned(),
    };
    let uid = effective("Uid:").ok_or_else(malformed)?;
    let gid = effective("Gid:").ok_or_else(malformed)?;
    if uid != peer.uid || gid != peer.gid {
        return Err(AttestError::CredentialsChanged { pid });
    }
    Ok(())
}

/// A read of the process's `/proc` entry failed: "no such process" and
/// "not found" mean it exited; anything else is reported as is.
fn gone_or(pid: i32, path: &Path, e: io::Error) -> AttestError {
    const ESRCH: i32 = 3;
    if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(ESRCH) {
        AttestError::ProcessGone { pid }
    } else {
        read_error(path, e)
    }
}

fn read_error(path: &Path, source: io::Error) -> AttestError {
    AttestError::Read {
        path: path.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    fn own_credentials() -> PeerCredentials {
        let meta = std::fs::metadata("/proc/self").unwrap();
        PeerCredentials {
            uid: meta.uid(),
            gid: meta.gid(),
            pid: Some(i32::try_from(std::process::id()).unwrap()),
        }
    }

    fn hash_file(path: &Path) -> String {
        hex::encode(sha256_of(&mut File::open(path).unwrap()).unwrap())
    }

    #[test]
    fn own_process_yields_uid_gid_path_and_hash() {
        let peer = own_credentials();
        let got = Attestor::new().attest(peer).unwrap();
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        let sha = hash_file(&exe);
        assert_eq!(got.uid, peer.uid);
        assert_eq!(got.path.as_deref(), Some(exe.as_path()));
        assert_eq!(got.sha256.as_deref(), Some(sha.as_str()));
        let texts: Vec<String> = got.selectors.iter().map(ToString::to_string).collect();
        assert_eq!(
            texts,
            vec![
                format!("unix:uid:{}", peer.uid),
                format!("unix:gid:{}", peer.gid),
                format!("unix:path:{}", exe.display()),
                format!("unix:sha256:{sha}"),
            ]
        );
    }

    #[test]
    fn repeated_attestation_reuses_the_cached_digest() {
        let attestor = Attestor::new();
        let first = attestor.attest(own_credentials()).unwrap();
        let second = attestor.attest(own_credentials()).unwrap();
        assert_eq!(first, second);
        assert_eq!(attestor.digests.lock().unwrap().len(), 1);
    }

    #[test]
    fn nonexistent_pid_fails() {
        // Above the kernel's pid_max limit (2^22), so never a live process.
        let peer = PeerCredentials {
            pid: Some(i32::MAX),
            ..own_credentials()
        };
        let err = Attestor::new().attest(peer).unwrap_err();
        assert!(matches!(err, AttestError::ProcessGone { .. }), "{err}");
    }

    #[test]
    fn missing_pid_fails() {
        for pid in [None, Some(0), Some(-1)] {
            let peer = PeerCredentials {
                pid,
                ..own_credentials()
            };
            let err = Attestor::new().attest(peer).unwrap_err();
            assert!(matches!(err, AttestError::NoPid), "{err}");
        }
    }

    #[test]
    fn credentials_other_than_the_processes_fail() {
        let own = own_credentials();
        let peer = PeerCredentials {
            uid: own.uid.wrapping_add(1),
            ..own
        };
        let err = Attestor::new().attest(peer).unwrap_err();
        assert!(
            matches!(err, AttestError::CredentialsChanged { .. }),
            "{err}"
        );
    }

    #[test]
    fn start_time_is_field_22_even_with_odd_command_names() {
        let stat =
            "42 (we ) ird (name) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 100";
        assert_eq!(parse_start_time(stat), Some(987_654));
        assert_eq!(parse_start_time("42 (short) S 1"), None);
        assert_eq!(parse_start_time("no parens"), None);
    }
}
