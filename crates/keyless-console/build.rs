//! Builds the web console (Svelte + Vite, in `<workspace>/console`) into
//! `OUT_DIR/dist` and writes `OUT_DIR/assets.rs`, the table of embedded files
//! that `src/lib.rs` serves: the binary carries the console, nothing is read
//! from disk at run time.
//!
//! Steps: `npm ci` when `console/node_modules` is missing or was installed
//! from another `package-lock.json` (a stamp in node_modules holds the lock's
//! SHA-256, the same stamp `scripts/lib/npm.sh` writes), then
//! `npm run build -- --outDir OUT_DIR/dist --emptyOutDir`. Both run with a
//! timeout, so a hung registry fails the build instead of hanging it.
//!
//! `KEYLESS_CONSOLE_SKIP_BUILD=1` skips npm and embeds a page saying the
//! console was not built and how to build it, for machines without Node.js.

use std::fs;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

/// Set (to anything but `0`, `false` or nothing) to embed a placeholder.
const SKIP_ENV: &str = "KEYLESS_CONSOLE_SKIP_BUILD";
/// A cold `npm ci` downloads a few MB; ten minutes means the registry hung.
const NPM_CI_TIMEOUT: Duration = Duration::from_secs(600);
/// `vite build` takes seconds; minutes mean something is stuck.
const NPM_BUILD_TIMEOUT: Duration = Duration::from_secs(300);
/// Shared with scripts/lib/npm.sh.
const STAMP: &str = ".keyless-lock.sha256";
/// Files whose change means a rebuild (node_modules deliberately not: the
/// lock file decides what it holds).
const INPUTS: &[&str] = &[
    "src",
    "index.html",
    "package.json",
    "package-lock.json",
    "vite.config.js",
    "svelte.config.js",
];
const NEEDS_NODE: &str = "the console needs Node.js and npm to build";
const HOW_TO_SKIP: &str = "install Node.js (20.19+ or 22.12+) with npm, or set \
     KEYLESS_CONSOLE_SKIP_BUILD=1 to embed a page that says the console was not built";

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let manifest = PathBuf::from(env("CARGO_MANIFEST_DIR")?);
    let out = PathBuf::from(env("OUT_DIR")?);
    let raw = manifest.join("..").join("..").join("console");
    let console = fs::canonicalize(&raw).unwrap_or(raw);

    println!("cargo::rerun-if-env-changed={SKIP_ENV}");
    for input in INPUTS {
        println!("cargo::rerun-if-changed={}", console.join(input).display());
    }

    let dist = out.join("dist");
    let built = if skip_requested() {
        write_placeholder(&dist)?;
        false
    } else {
        build(&console, &out, &dist)?;
        true
    };
    write_table(&dist, &out.join("assets.rs"), built)
}

fn env(name: &str) -> Result<String, String> {
    std::env::var(name).map_err(|_| format!("cargo did not set `{name}`"))
}

fn skip_requested() -> bool {
    std::env::var(SKIP_ENV)
        .map(|v| !matches!(v.trim(), "" | "0" | "false"))
        .unwrap_or(false)
}

// === npm ===

fn program(name: &str) -> String {
    // npm is a batch file on Windows, which Command does not resolve by itself.
    if cfg!(windows) && name == "npm" {
        "npm.cmd".to_owned()
    } else {
        name.to_owned()
    }
}

/// The first line `prog --version` prints, or why it could not run.
fn version_of(prog: &str) -> Result<String, String> {
    let output = Command::new(program(prog))
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{NEEDS_NODE}: `{prog}` could not be run ({e}); {HOW_TO_SKIP}"))?;
    if !output.status.success() {
        return Err(format!(
            "{NEEDS_NODE}: `{prog} --version` failed ({}); {HOW_TO_SKIP}",
            output.status
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// Vite 8 runs on Node ^20.19 or >=22.12; older ones fail with obscure errors.
fn check_node_version(version: &str) -> Result<(), String> {
    let mut parts = version.trim_start_matches('v').split('.');
    let major: u64 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let minor: u64 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let ok = (major == 20 && minor >= 19) || (major == 22 && minor >= 12) || major >= 23;
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{NEEDS_NODE}: Node.js `{version}` is too old for vite (20.19+ or 22.12+); {HOW_TO_SKIP}"
        ))
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn build(console: &Path, out: &Path, dist: &Path) -> Result<(), String> {
    let lock = console.join("package-lock.json");
    let lock_bytes = fs::read(&lock).map_err(|e| {
        format!(
            "cannot read `{}` ({e}): the console is built from its lock file only",
            lock.display()
        )
    })?;
    let node = version_of("node")?;
    check_node_version(&node)?;
    version_of("npm")?;

    let modules = console.join("node_modules");
    let stamp = modules.join(STAMP);
    let want = sha256_hex(&lock_bytes);
    let have = fs::read_to_string(&stamp).unwrap_or_default();
    if !modules.is_dir() || have.trim() != want {
        run_logged(
            Command::new(program("npm"))
                .args(["ci", "--no-audit", "--no-fund", "--prefer-offline"])
                .current_dir(console),
            NPM_CI_TIMEOUT,
            &out.join("npm-ci.log"),
            "npm ci",
        )?;
        fs::write(&stamp, format!("{want}\n"))
            .map_err(|e| format!("cannot write `{}`: {e}", stamp.display()))?;
    }

    let dist_arg = dist
        .to_str()
        .ok_or_else(|| format!("OUT_DIR `{}` is not UTF-8", dist.display()))?;
    run_logged(
        Command::new(program("npm"))
            .args(["run", "build", "--", "--outDir", dist_arg, "--emptyOutDir"])
            .current_dir(console),
        NPM_BUILD_TIMEOUT,
        &out.join("npm-build.log"),
        "npm run build",
    )?;
    if !dist.join("index.html").is_file() {
        return Err(format!(
            "vite wrote no index.html into `{}`",
            dist.display()
        ));
    }
    Ok(())
}

/// Runs `cmd` with its output in `log`, killing it after `timeout`; on
/// failure the error carries the log's last lines.
fn run_logged(cmd: &mut Command, timeout: Duration, log: &Path, what: &str) -> Result<(), String> {
    let file =
        fs::File::create(log).map_err(|e| format!("cannot create `{}`: {e}", log.display()))?;
    let err_file = file
        .try_clone()
        .map_err(|e| format!("cannot reopen `{}`: {e}", log.display()))?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(err_file)
        .spawn()
        .map_err(|e| format!("{NEEDS_NODE}: `{what}` could not start ({e}); {HOW_TO_SKIP}"))?;
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{what} timed out after {} s; its last lines:\n{}",
                    timeout.as_secs(),
                    tail(log)
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(100)),
            Err(e) => return Err(format!("waiting for {what} failed: {e}")),
        }
    };
    if status.success() {
        Ok(())
    } else {
        Err(format!(
            "{what} failed ({status}); its last lines:\n{}",
            tail(log)
        ))
    }
}

/// The last 30 lines of a log (at most its last 16 KiB).
fn tail(log: &Path) -> String {
    let mut text = String::new();
    if let Ok(mut f) = fs::File::open(log) {
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = f.seek(SeekFrom::Start(len.saturating_sub(16 * 1024)));
        let mut bytes = Vec::new();
        let _ = f.read_to_end(&mut bytes);
        text = String::from_utf8_lossy(&bytes).into_owned();
    }
    let lines: Vec<&str> = text.lines().collect();
    let skip = lines.len().saturating_sub(30);
    lines.into_iter().skip(skip).collect::<Vec<_>>().join("\n")
}

// === Placeholder ===

const PLACEHOLDER_HTML: &str = r#"<!doctype html>
<html lang="en">
  <head>
    <meta charset="utf-8" />
    <meta name="viewport" content="width=device-width, initial-scale=1" />
    <title>Keyless console — not built</title>
    <link rel="stylesheet" href="/assets/console-not-built.css" />
  </head>
  <body>
    <main>
      <h1>The Keyless console was not built</h1>
      <p>This binary was compiled with <code>KEYLESS_CONSOLE_SKIP_BUILD=1</code>, so it carries
        this page instead of the web console. The JSON API, the OAuth endpoints and the audit
        log work as usual.</p>
      <p>To build the console, install Node.js 20.19+ (or 22.12+) with npm, then run
        <code>cargo build</code> again without <code>KEYLESS_CONSOLE_SKIP_BUILD</code>: the
        build runs <code>npm ci</code> and <code>npm run build</code> in <code>console/</code>.</p>
    </main>
  </body>
</html>
"#;

const PLACEHOLDER_CSS: &str = "body { font-family: system-ui, sans-serif; background: #f5f6f8; \
     color: #1c2330; }\nmain { max-width: 40rem; margin: 10vh auto; background: #fff; \
     border: 1px solid #dde1e7; border-radius: 10px; padding: 2rem; line-height: 1.5; }\n";

fn write_placeholder(dist: &Path) -> Result<(), String> {
    if dist.exists() {
        fs::remove_dir_all(dist).map_err(|e| format!("cannot clear `{}`: {e}", dist.display()))?;
    }
    let assets = dist.join("assets");
    fs::create_dir_all(&assets)
        .map_err(|e| format!("cannot create `{}`: {e}", assets.display()))?;
    fs::write(dist.join("index.html"), PLACEHOLDER_HTML)
        .and_then(|()| fs::write(assets.join("console-not-built.css"), PLACEHOLDER_CSS))
        .map_err(|e| {
            format!(
                "cannot write the placeholder into `{}`: {e}",
                dist.display()
            )
        })
}

// === Asset table ===

fn content_type(path: &str) -> &'static str {
    let ext = path.rsplit_once('.').map(|(_, e)| e).unwrap_or("");
    match ext.to_ascii_lowercase().as_str() {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" | "map" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "ico" => "image/x-icon",
        "woff" => "font/woff",
        "woff2" => "font/woff2",
        "ttf" => "font/ttf",
        "wasm" => "application/wasm",
        "txt" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// Every file under `dir`, as (URL path, file path), sorted by URL path.
fn files(root: &Path, dir: &Path, found: &mut Vec<(String, PathBuf)>) -> Result<(), String> {
    let entries = fs::read_dir(dir).map_err(|e| format!("cannot list `{}`: {e}", dir.display()))?;
    for entry in entries {
        let entry = entry.map_err(|e| format!("cannot list `{}`: {e}", dir.display()))?;
        let path = entry.path();
        // Tool metadata (.vite/) is not part of the site.
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        if path.is_dir() {
            files(root, &path, found)?;
        } else {
            let rel = path.strip_prefix(root).map_err(|e| {
                format!("`{}` is outside `{}`: {e}", path.display(), root.display())
            })?;
            let parts: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            found.push((format!("/{}", parts.join("/")), path));
        }
    }
    Ok(())
}

fn write_table(dist: &Path, target: &Path, built: bool) -> Result<(), String> {
    let mut found = Vec::new();
    files(dist, dist, &mut found)?;
    found.sort();
    let mut code = String::from(
        "// @generated by keyless-console's build.rs: the files of the console build.\n\
         /// (URL path, content type, bytes) of every embedded file.\n\
         pub(crate) static ASSETS: &[(&str, &str, &[u8])] = &[\n",
    );
    for (url, path) in &found {
        let file = path
            .to_str()
            .ok_or_else(|| format!("`{}` is not UTF-8", path.display()))?;
        code.push_str(&format!(
            "    ({url:?}, {:?}, include_bytes!({file:?})),\n",
            content_type(url)
        ));
    }
    code.push_str("];\n");
    code.push_str(&format!(
        "/// Whether the real console is embedded (not the placeholder).\npub(crate) const BUILT: bool = {built};\n"
    ));
    fs::write(target, code).map_err(|e| format!("cannot write `{}`: {e}", target.display()))
}
