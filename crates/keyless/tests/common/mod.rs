//! Runs the real `keyless` binary for integration tests: `keyless up` on a
//! temporary data dir and a free loopback port, plus the admin CLI against it.
//!
//! The binary exposes no library, so tests drive it exactly as an operator
//! would. Every wait is bounded, and [`Fabric`]'s `Drop` kills the process, so
//! a failing test never leaves a fabric running.

#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const TRUST_DOMAIN: &str = "example.org";
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const CLI_TIMEOUT: Duration = Duration::from_secs(30);

pub fn keyless_bin() -> &'static str {
    env!("CARGO_BIN_EXE_keyless")
}

/// The uid this test process runs as (the Workload API attests it).
pub fn own_uid() -> u32 {
    std::fs::metadata("/proc/self")
        .expect("stat /proc/self")
        .uid()
}

pub fn own_uid_selector() -> String {
    format!("unix:uid:{}", own_uid())
}

/// A loopback port nothing listens on right now.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

/// One `keyless up` process on its own temporary data dir.
pub struct Fabric {
    child: Child,
    dir: tempfile::TempDir,
    pub data_dir: PathBuf,
    pub base_url: String,
    stdout: Vec<String>,
}

impl Fabric {
    /// Starts `keyless up --trust-domain example.org` and waits for `ready`.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let data_dir = dir.path().join("data");
        let port = free_port();
        let stderr = std::fs::File::create(dir.path().join("stderr.log")).expect("stderr log");
        let mut child = Command::new(keyless_bin())
            .args(["up", "--data-dir"])
            .arg(&data_dir)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--trust-domain", TRUST_DOMAIN])
            .env_remove("SPIFFE_ENDPOINT_SOCKET")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn keyless up");

        // A reader thread forwards lines until `ready`, then keeps draining
        // stdout so the fabric never blocks on a full pipe.
        let (tx, rx) = mpsc::channel::<String>();
        let out = child.stdout.take().expect("piped stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });

        let mut fabric = Self {
            child,
            dir,
            data_dir,
            base_url: format!("http://127.0.0.1:{port}"),
            stdout: Vec::new(),
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    let ready = line.trim() == "ready";
                    fabric.stdout.push(line);
                    if ready {
                        break;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!(
                        "keyless up printed no `ready` within {READY_TIMEOUT:?}\n{}",
                        fabric.logs()
                    )
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = fabric.child.wait().ok();
                    panic!(
                        "keyless up exited ({status:?}) before `ready`\n{}",
                        fabric.logs()
                    )
                }
            }
        }
        fabric
    }

    pub fn socket_path(&self) -> PathBuf {
        self.data_dir.join("workload.sock")
    }

    /// The `SPIFFE_ENDPOINT_SOCKET`-style address of the Workload API.
    pub fn socket_uri(&self) -> String {
        format!("unix://{}", self.socket_path().display())
    }

    /// What the fabric printed so far, for failure messages.
    pub fn logs(&self) -> String {
        let stderr =
            std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default();
        let tail: String = stderr
            .chars()
            .rev()
            .take(4000)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        format!(
            "stdout:\n{}\nstderr (tail):\n{tail}",
            self.stdout.join("\n")
        )
    }

    /// Runs `keyless ARGS… --data-dir DIR`, bounded by a timeout.
    pub fn cli(&self, args: &[&str]) -> Output {
        run_bounded(
            Command::new(keyless_bin())
                .args(args)
                .arg("--data-dir")
                .arg(&self.data_dir)
                .env_remove("SPIFFE_ENDPOINT_SOCKET"),
        )
    }

    /// `keyless entry create`; returns the entry id.
    pub fn create_entry(
        &self,
        spiffe_id: &str,
        selectors: &[&str],
        x509_ttl: Option<&str>,
    ) -> String {
        let mut args = vec!["entry", "create", "--spiffe-id", spiffe_id];
        for s in selectors {
            args.extend(["--selector", s]);
        }
        if let Some(ttl) = x509_ttl {
            args.extend(["--x509-ttl", ttl]);
        }
        let out = self.cli(&args);
        assert!(
            out.status.success(),
            "entry create failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.logs()
        );
        let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        assert!(!id.is_empty(), "entry create printed no id");
        id
    }

    pub fn temp_path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Fabric {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a command to completion with [`CLI_TIMEOUT`]; kills it and panics past that.
fn run_bounded(cmd: &mut Command) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn keyless");
    // Read both pipes on threads so a chatty child cannot block on a full pipe.
    let mut so = child.stdout.take().expect("stdout");
    let mut se = child.stderr.take().expect("stderr");
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut so, &mut v);
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut se, &mut v);
        v
    });
    let deadline = Instant::now() + CLI_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait keyless") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("keyless CLI did not finish within {CLI_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: t_out.join().unwrap_or_default(),
        stderr: t_err.join().unwrap_or_default(),
    }
}

const MTLS_READY: Duration = Duration::from_secs(30);

/// `keyless up` with an mTLS listener on a free port; killed on drop.
pub struct MtlsFabric {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub stdout: Vec<String>,
    pub mtls: SocketAddr,
}

impl MtlsFabric {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let stderr = std::fs::File::create(dir.path().join("stderr.log")).unwrap();
        let mut child = Command::new(keyless_bin())
            .args(["up", "--data-dir"])
            .arg(dir.path().join("data"))
            .args(["--listen", "127.0.0.1:0"])
            .args(["--mtls-listen", "127.0.0.1:0"])
            .args(["--trust-domain", TRUST_DOMAIN])
            .env_remove("SPIFFE_ENDPOINT_SOCKET")
            .env_remove("KEYLESS_MTLS_LISTEN")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let (tx, rx) = mpsc::channel::<String>();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let mut stdout = Vec::new();
        let deadline = Instant::now() + MTLS_READY;
        loop {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => {
                    let ready = line.trim() == "ready";
                    stdout.push(line);
                    if ready {
                        break;
                    }
                }
                Err(e) => {
                    let _ = child.kill();
                    let stderr =
                        std::fs::read_to_string(dir.path().join("stderr.log")).unwrap_or_default();
                    panic!("no `ready` ({e}):\n{}\n{stderr}", stdout.join("\n"));
                }
            }
        }
        let mtls = stdout
            .iter()
            .find_map(|l| l.trim().strip_prefix("mTLS:"))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|url| url.strip_prefix("https://"))
            .unwrap_or_else(|| panic!("no mTLS line in:\n{}", stdout.join("\n")))
            .parse()
            .unwrap();
        Self {
            child,
            dir,
            stdout,
            mtls,
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The caller's X509-SVID from the Workload API (rust-spiffe): the
    /// trust domain's roots, the SVID chain and its private key, all DER.
    pub async fn workload_x509(&self) -> (Vec<Vec<u8>>, Vec<Vec<u8>>, Vec<u8>) {
        let socket = format!("unix://{}", self.data_dir().join("workload.sock").display());
        let client = tokio::time::timeout(
            Duration::from_secs(10),
            spiffe::WorkloadApiClient::connect_to(socket),
        )
        .await
        .unwrap()
        .unwrap();
        let ctx = tokio::time::timeout(Duration::from_secs(10), client.fetch_x509_context())
            .await
            .unwrap()
            .unwrap();
        let svid = ctx.default_svid().unwrap();
        let roots = ctx
            .bundle_set()
            .get(&spiffe::TrustDomain::new(TRUST_DOMAIN).unwrap())
            .unwrap()
            .authorities()
            .iter()
            .map(|c| c.as_bytes().to_vec())
            .collect();
        let chain = svid
            .cert_chain()
            .iter()
            .map(|c| c.as_bytes().to_vec())
            .collect();
        (roots, chain, svid.private_key().as_bytes().to_vec())
    }

    pub fn cli(&self, args: &[&str]) {
        let out = Command::new(keyless_bin())
            .args(args)
            .arg("--data-dir")
            .arg(self.data_dir())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "keyless {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for MtlsFabric {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
