//! `keyless doctor`: checks that a deployment keeps no secret where it
//! should not, and that what it must protect is protected. One line per
//! check, `PASS`/`WARN`/`FAIL` and why; exit 1 on any `FAIL`.
//!
//! It reads the data dir, the store and the configuration directly (never
//! the running fabric), so it works with the fabric up or down, and it is
//! read-only except for what opening the store does.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use keyless_scan::{ScanOptions, Scanner};
use keyless_store::Store;
use keyless_store::sqlx;

use crate::cli::DoctorArgs;
use crate::config::{self, FileConfig};
use crate::{CliError, CliResult};

/// Above these the doctor warns (the identity service refuses only beyond
/// its hard limits, checked as failures).
const CA_TTL_CEILING: Duration = Duration::from_secs(30 * 24 * 3600);
const JWT_KEY_TTL_CEILING: Duration = Duration::from_secs(30 * 24 * 3600);
const X509_SVID_TTL_CEILING: Duration = Duration::from_secs(24 * 3600);
const JWT_SVID_TTL_CEILING: Duration = Duration::from_secs(3600);
const STS_KEY_LIFETIME_CEILING: Duration = Duration::from_secs(30 * 24 * 3600);
/// Shortest CA / JWT key lifetime the identity service accepts.
const MIN_AUTHORITY_TTL: Duration = Duration::from_secs(60);
/// Longest SVID TTL the identity service accepts.
const MAX_SVID_TTL: Duration = keyless_identity::MAX_ENTRY_TTL;
/// KV versions sampled for the "sealed at rest" check.
const SEALED_SAMPLE: i64 = 1000;
/// AES-256-GCM output is at least nonce (12) + tag (16) bytes.
const MIN_SEALED_LEN: usize = 28;

/// How one check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Status {
    Pass,
    Warn,
    Fail,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Status::Pass => "PASS",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        }
    }
}

/// One line of the checklist.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Check {
    status: Status,
    name: &'static str,
    detail: String,
}

fn check(status: Status, name: &'static str, detail: impl Into<String>) -> Check {
    Check {
        status,
        name,
        detail: detail.into(),
    }
}

pub async fn run(args: DoctorArgs) -> CliResult {
    let mut checks = Vec::new();
    let file = match &args.config {
        Some(path) => match load_config(path) {
            Ok(f) => {
                checks.push(check(
                    Status::Pass,
                    "configuration",
                    format!("`{}` parses", path.display()),
                ));
                f
            }
            Err(e) => {
                checks.push(check(Status::Fail, "configuration", e));
                FileConfig::default()
            }
        },
        None => FileConfig::default(),
    };
    // As `keyless up` resolves it: a flag wins, a defaulted flag loses to the file.
    let data_dir = match &file.data_dir {
        Some(d) if args.data_dir.data_dir == Path::new(config::DEFAULT_DATA_DIR) => d.clone(),
        _ => args.data_dir.data_dir.clone(),
    };
    let database_url = std::env::var(config::ENV_DATABASE_URL)
        .ok()
        .or_else(|| file.database_url.clone());

    let dir_ok = data_dir.is_dir();
    checks.push(check_data_dir(&data_dir));
    if dir_ok {
        checks.extend(check_keys(&data_dir));
        checks.push(check_database_files(&data_dir, database_url.is_some()));
        checks.push(check_admin_socket(&data_dir));
        checks.push(check_keys_at_rest(&data_dir));
    }
    checks.push(check_config_secrets(
        args.config.as_deref(),
        &file,
        &data_dir,
    ));
    checks.push(check_tls(&file));
    checks.push(check_ttls(&file));
    if dir_ok || database_url.is_some() {
        match open_store(&data_dir, database_url.as_deref()).await {
            Ok(store) => {
                checks.push(check_sealed(&store, &data_dir).await);
                checks.push(check_audit(&store, &data_dir).await);
                store.close().await;
            }
            Err(e) => checks.push(check(Status::Fail, "audit log", e)),
        }
    }

    for c in &checks {
        println!("{}  {}: {}", c.status.label(), c.name, c.detail);
    }
    let count = |s: Status| checks.iter().filter(|c| c.status == s).count();
    let (fails, warns) = (count(Status::Fail), count(Status::Warn));
    println!(
        "{} checks: {} passed, {warns} warning(s), {fails} failed",
        checks.len(),
        count(Status::Pass)
    );
    if fails > 0 {
        return Err(CliError::Exit(1));
    }
    Ok(())
}

fn load_config(path: &Path) -> Result<FileConfig, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| {
        format!(
            "`{}` is not a valid configuration: {}",
            path.display(),
            e.message()
        )
    })
}

fn mode_of(path: &Path) -> Option<u32> {
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| m.permissions().mode() & 0o777)
}

// === file permissions ===

fn check_data_dir(dir: &Path) -> Check {
    const NAME: &str = "data dir";
    let Ok(meta) = std::fs::metadata(dir) else {
        return check(
            Status::Fail,
            NAME,
            format!("`{}` does not exist (use --data-dir)", dir.display()),
        );
    };
    if !meta.is_dir() {
        return check(
            Status::Fail,
            NAME,
            format!("`{}` is not a directory", dir.display()),
        );
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o022 != 0 {
        return check(
            Status::Fail,
            NAME,
            format!(
                "`{}` is group- or world-writable (mode {mode:04o}): others could replace its sockets; run `chmod go-w {}`",
                dir.display(),
                dir.display()
            ),
        );
    }
    check(
        Status::Pass,
        NAME,
        format!("`{}` exists, mode {mode:04o}", dir.display()),
    )
}

/// `DIR/keys` 0700 and every file in it 0600 (no group or other bits).
fn check_keys(dir: &Path) -> Vec<Check> {
    let keys = dir.join("keys");
    let Some(mode) = mode_of(&keys) else {
        return vec![check(
            Status::Fail,
            "keys dir",
            format!(
                "`{}` is missing: not a Keyless data dir, or its keys were lost",
                keys.display()
            ),
        )];
    };
    let dir_check = if mode & 0o077 != 0 {
        check(
            Status::Fail,
            "keys dir",
            format!(
                "`{}` has mode {mode:04o}, want 0700: run `chmod 700 {}`",
                keys.display(),
                keys.display()
            ),
        )
    } else {
        check(
            Status::Pass,
            "keys dir",
            format!("`{}` mode {mode:04o}", keys.display()),
        )
    };
    let entries = match std::fs::read_dir(&keys) {
        Ok(e) => e,
        Err(e) => {
            return vec![
                dir_check,
                check(
                    Status::Fail,
                    "key files",
                    format!("cannot list `{}`: {e}", keys.display()),
                ),
            ];
        }
    };
    let mut loose = Vec::new();
    let mut total = 0usize;
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            continue;
        }
        total += 1;
        let mode = meta.permissions().mode() & 0o777;
        if meta.file_type().is_symlink() || mode & 0o077 != 0 {
            loose.push(format!(
                "{} ({})",
                entry.file_name().to_string_lossy(),
                if meta.file_type().is_symlink() {
                    "symlink".to_owned()
                } else {
                    format!("{mode:04o}")
                }
            ));
        }
    }
    loose.sort();
    let files_check = if loose.is_empty() {
        check(
            Status::Pass,
            "key files",
            format!("{total} key file(s), all 0600 or stricter"),
        )
    } else {
        check(
            Status::Fail,
            "key files",
            format!(
                "readable or writable by others: {}; run `chmod 600` on them (and consider the keys exposed)",
                loose.join(", ")
            ),
        )
    };
    vec![dir_check, files_check]
}

/// `keyless.db` and its WAL companions 0600.
fn check_database_files(dir: &Path, external_db: bool) -> Check {
    const NAME: &str = "database files";
    let db = dir.join("keyless.db");
    if !db.exists() {
        return if external_db {
            check(
                Status::Pass,
                NAME,
                "no embedded database (the store is PostgreSQL)",
            )
        } else {
            check(
                Status::Warn,
                NAME,
                format!(
                    "no `{}` (not started yet, or PostgreSQL without --config)",
                    db.display()
                ),
            )
        };
    }
    let mut seen = Vec::new();
    let mut loose = Vec::new();
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let path = dir.join(format!("keyless.db{suffix}"));
        if let Some(mode) = mode_of(&path) {
            seen.push(format!("keyless.db{suffix}"));
            if mode & 0o077 != 0 {
                loose.push(format!("keyless.db{suffix} ({mode:04o})"));
            }
        }
    }
    if loose.is_empty() {
        check(
            Status::Pass,
            NAME,
            format!("{}: 0600 or stricter", seen.join(", ")),
        )
    } else {
        check(
            Status::Fail,
            NAME,
            format!(
                "readable or writable by others: {}; run `chmod 600`",
                loose.join(", ")
            ),
        )
    }
}

/// `admin.sock` is the admin API's only authentication: 0600.
fn check_admin_socket(dir: &Path) -> Check {
    const NAME: &str = "admin socket";
    let sock = dir.join("admin.sock");
    match mode_of(&sock) {
        None => check(Status::Pass, NAME, "absent (the fabric is not running)"),
        Some(mode) if mode & 0o077 != 0 => check(
            Status::Fail,
            NAME,
            format!(
                "`{}` has mode {mode:04o}: anyone who can open it administers the fabric; want 0600",
                sock.display()
            ),
        ),
        Some(mode) => check(
            Status::Pass,
            NAME,
            format!("`{}` mode {mode:04o}", sock.display()),
        ),
    }
}

/// The embedded key manager keeps keys in plain files: say so.
fn check_keys_at_rest(dir: &Path) -> Check {
    let keys = dir.join("keys");
    let count = |suffix: &str| {
        std::fs::read_dir(&keys)
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.file_name().to_string_lossy().ends_with(suffix))
                    .count()
            })
            .unwrap_or(0)
    };
    let keks = count(".aes256gcm.key");
    let all = std::fs::read_dir(&keys).map(|rd| rd.count()).unwrap_or(0);
    check(
        Status::Warn,
        "keys at rest",
        format!(
            "the embedded key manager keeps {} signing key(s) (PKCS#8) and {keks} key-encryption key(s) in `{}` protected by file permissions only, not encrypted; use an HSM or KMS backend where that is not enough",
            all.saturating_sub(keks),
            keys.display()
        ),
    )
}

// === configuration ===

/// The configuration files the doctor scans: `--config`, `DIR/*.toml`,
/// `.env*` in DIR and in the current directory, and the gateway and risk
/// files the configuration names. Never the database.
fn config_files(config: Option<&Path>, file: &FileConfig, dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    let mut push = |p: PathBuf| {
        let key = p.canonicalize().unwrap_or_else(|_| p.clone());
        if p.is_file()
            && !out
                .iter()
                .any(|o| o.canonicalize().unwrap_or_else(|_| o.clone()) == key)
        {
            out.push(p);
        }
    };
    if let Some(c) = config {
        push(c.to_owned());
    }
    for p in [&file.gateway_config, &file.risk_config]
        .into_iter()
        .flatten()
    {
        push(p.clone());
    }
    let listed = |d: &Path| -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(d)
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        v.sort();
        v
    };
    for p in listed(dir) {
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.ends_with(".toml") || name.starts_with(".env") {
            push(p);
        }
    }
    for p in listed(Path::new(".")) {
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.starts_with(".env") {
            push(p);
        }
    }
    out
}

fn check_config_secrets(config: Option<&Path>, file: &FileConfig, dir: &Path) -> Check {
    const NAME: &str = "no secret in configuration";
    let files = config_files(config, file, dir);
    if files.is_empty() {
        return check(
            Status::Pass,
            NAME,
            "no configuration or .env file found to scan",
        );
    }
    let report = match Scanner::new().scan_paths(&files, &ScanOptions::default()) {
        Ok(r) => r,
        Err(e) => return check(Status::Fail, NAME, format!("cannot scan: {e}")),
    };
    if report.findings.is_empty() {
        let names: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
        return check(
            Status::Pass,
            NAME,
            format!("{} file(s) scanned: {}", files.len(), names.join(", ")),
        );
    }
    let found: Vec<String> = report
        .findings
        .iter()
        .map(|f| format!("{}:{} {} {}", f.path, f.line, f.rule_id, f.redacted))
        .collect();
    check(
        Status::Fail,
        NAME,
        format!(
            "{} secret(s): {}; move them to the secrets broker and revoke them (`keyless scan --revoke`)",
            found.len(),
            found.join("; ")
        ),
    )
}

/// Whether `host` (no port) is a loopback name or address.
fn is_loopback_host(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.eq_ignore_ascii_case("localhost")
        || h.parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The host of a `HOST:PORT` listen address.
fn listen_host(listen: &str) -> &str {
    match listen.rsplit_once(':') {
        Some((host, _)) => host,
        None => listen,
    }
}

fn check_tls(file: &FileConfig) -> Check {
    const NAME: &str = "tls";
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    let listen = env(config::ENV_LISTEN)
        .or_else(|| file.listen.clone())
        .unwrap_or_else(|| config::DEFAULT_LISTEN.to_owned());
    let public_url = env(config::ENV_PUBLIC_URL).or_else(|| file.public_url.clone());
    let mtls = env(config::ENV_MTLS_LISTEN).or_else(|| file.mtls_listen.clone());
    tls_verdict(&listen, public_url.as_deref(), mtls.as_deref()).map_or_else(
        |(status, detail)| check(status, NAME, detail),
        |detail| check(Status::Pass, NAME, detail),
    )
}

/// `Ok(detail)` when fine, `Err((status, detail))` otherwise.
fn tls_verdict(
    listen: &str,
    public_url: Option<&str>,
    mtls: Option<&str>,
) -> Result<String, (Status, String)> {
    let public = public_url.and_then(|u| url::Url::parse(u).ok());
    if let (Some(raw), None) = (public_url, &public) {
        return Err((
            Status::Fail,
            format!("public_url `{raw}` is not a valid URL"),
        ));
    }
    if let Some(u) = &public
        && u.scheme() == "http"
        && !u.host_str().is_some_and(is_loopback_host)
    {
        return Err((
            Status::Warn,
            format!(
                "public_url `{u}` is plain HTTP on a non-loopback host: tokens would cross the network in clear; serve it over HTTPS (a TLS proxy) or use --mtls-listen"
            ),
        ));
    }
    let https = public.as_ref().is_some_and(|u| u.scheme() == "https");
    let loopback = is_loopback_host(listen_host(listen));
    if !loopback && !https && mtls.is_none() {
        return Err((
            Status::Warn,
            format!(
                "the HTTP listener `{listen}` is reachable from the network without TLS and no https public_url says a TLS proxy fronts it"
            ),
        ));
    }
    let mut detail = match mtls {
        Some(m) => format!(
            "mTLS listener on `{m}` (clients present X509-SVIDs; tokens are certificate-bound, RFC 8705)"
        ),
        None => "no mTLS listener".to_owned(),
    };
    if https {
        detail.push_str("; public_url is https (TLS terminated in front of the listener)");
    } else if loopback {
        detail.push_str(&format!("; HTTP listener `{listen}` on loopback only"));
    }
    Ok(detail)
}

/// One TTL setting: its effective value and where it came from.
struct Ttl {
    name: &'static str,
    value: Result<Duration, String>,
    default: bool,
    min: Duration,
    max: Option<Duration>,
    ceiling: Duration,
}

fn check_ttls(file: &FileConfig) -> Check {
    let env = |name: &str| std::env::var(name).ok();
    let setting = |name: &'static str,
                   given: Option<String>,
                   default: Duration,
                   min: Duration,
                   max: Option<Duration>,
                   ceiling: Duration| Ttl {
        name,
        value: match &given {
            Some(s) => config::parse_duration(name, s),
            None => Ok(default),
        },
        default: given.is_none(),
        min,
        max,
        ceiling,
    };
    let hour = Duration::from_secs(3600);
    let ttls = [
        setting(
            "identity.ca_ttl",
            env(config::ENV_CA_TTL).or_else(|| file.identity.ca_ttl.clone()),
            24 * hour,
            MIN_AUTHORITY_TTL,
            None,
            CA_TTL_CEILING,
        ),
        setting(
            "identity.jwt_key_ttl",
            env(config::ENV_JWT_KEY_TTL).or_else(|| file.identity.jwt_key_ttl.clone()),
            24 * hour,
            MIN_AUTHORITY_TTL,
            None,
            JWT_KEY_TTL_CEILING,
        ),
        setting(
            "identity.default_x509_ttl",
            file.identity.default_x509_ttl.clone(),
            hour,
            Duration::from_secs(1),
            Some(MAX_SVID_TTL),
            X509_SVID_TTL_CEILING,
        ),
        setting(
            "identity.default_jwt_ttl",
            file.identity.default_jwt_ttl.clone(),
            Duration::from_secs(300),
            Duration::from_secs(1),
            Some(MAX_SVID_TTL),
            JWT_SVID_TTL_CEILING,
        ),
        setting(
            "sts.signing_key_lifetime",
            file.sts.signing_key_lifetime.clone(),
            24 * hour,
            MIN_AUTHORITY_TTL,
            None,
            STS_KEY_LIFETIME_CEILING,
        ),
    ];
    ttl_verdict(&ttls)
}

fn ttl_verdict(ttls: &[Ttl]) -> Check {
    const NAME: &str = "ttls";
    let mut worst = Status::Pass;
    let mut problems = Vec::new();
    let mut summary = Vec::new();
    for t in ttls {
        let d = match &t.value {
            Ok(d) => *d,
            Err(e) => {
                worst = Status::Fail;
                problems.push(e.clone());
                continue;
            }
        };
        let shown = humantime::format_duration(d).to_string();
        summary.push(format!(
            "{} {shown}{}",
            t.name,
            if t.default { " (default)" } else { "" }
        ));
        if d < t.min || t.max.is_some_and(|m| d > m) {
            worst = Status::Fail;
            problems.push(format!(
                "{} {shown} is outside what Keyless accepts ({}{})",
                t.name,
                humantime::format_duration(t.min),
                t.max
                    .map(|m| format!(" to {}", humantime::format_duration(m)))
                    .unwrap_or_else(|| " or more".to_owned())
            ));
        } else if d > t.ceiling {
            worst = worst.max(Status::Warn);
            problems.push(format!(
                "{} {shown} is above the recommended ceiling of {}",
                t.name,
                humantime::format_duration(t.ceiling)
            ));
        }
    }
    if problems.is_empty() {
        check(Status::Pass, NAME, summary.join(", "))
    } else {
        check(worst, NAME, problems.join("; "))
    }
}

// === store ===

async fn open_store(dir: &Path, database_url: Option<&str>) -> Result<Store, String> {
    match database_url {
        Some(url) => Store::open(url)
            .await
            .map_err(|e| format!("cannot open the store: {e}")),
        None => {
            let path = dir.join("keyless.db");
            if !path.exists() {
                return Err(format!("no database at `{}` to verify", path.display()));
            }
            Store::open_sqlite(&path)
                .await
                .map_err(|e| format!("cannot open `{}`: {e}", path.display()))
        }
    }
}

/// Secrets in the store are sealed: KV versions are AES-256-GCM ciphertext
/// (not JSON), their key-encryption keys exist, and no database connection
/// URL keeps a password in clear.
async fn check_sealed(store: &Store, dir: &Path) -> Check {
    const NAME: &str = "secrets at rest";
    let versions: Vec<(Option<Vec<u8>>,)> =
        match sqlx::query_as("SELECT ciphertext FROM kv_versions WHERE destroyed = 0 LIMIT $1")
            .bind(SEALED_SAMPLE)
            .fetch_all(store.pool())
            .await
        {
            Ok(v) => v,
            Err(e) => return check(Status::Warn, NAME, format!("cannot read the KV store: {e}")),
        };
    let clear = versions
        .iter()
        .filter_map(|(c,)| c.as_ref())
        .filter(|c| {
            c.len() < MIN_SEALED_LEN || serde_json::from_slice::<serde_json::Value>(c).is_ok()
        })
        .count();
    let keks: Vec<(String,)> = sqlx::query_as("SELECT DISTINCT kek_name FROM kv_metadata")
        .fetch_all(store.pool())
        .await
        .unwrap_or_default();
    let missing: Vec<String> = keks
        .into_iter()
        .map(|(k,)| k)
        .filter(|k| !dir.join("keys").join(format!("{k}.aes256gcm.key")).exists())
        .collect();
    let urls: Vec<(String, String)> =
        sqlx::query_as("SELECT name, connection_url FROM secrets_db_connections")
            .fetch_all(store.pool())
            .await
            .unwrap_or_default();
    let with_password: Vec<String> = urls
        .into_iter()
        .filter(|(_, u)| {
            url::Url::parse(u)
                .ok()
                .is_some_and(|u| u.password().is_some_and(|p| !p.is_empty()))
        })
        .map(|(n, _)| n)
        .collect();
    let mut problems = Vec::new();
    if clear > 0 {
        problems.push(format!("{clear} KV version(s) look like plaintext"));
    }
    if !with_password.is_empty() {
        problems.push(format!(
            "database connection(s) {} store a password in the URL",
            with_password.join(", ")
        ));
    }
    if !problems.is_empty() {
        return check(Status::Fail, NAME, problems.join("; "));
    }
    if !missing.is_empty() {
        return check(
            Status::Warn,
            NAME,
            format!(
                "key-encryption key(s) {} are not in `{}` (another key manager, or those secrets can no longer be opened)",
                missing.join(", "),
                dir.join("keys").display()
            ),
        );
    }
    check(
        Status::Pass,
        NAME,
        format!(
            "{} KV version(s) checked: all AES-256-GCM ciphertext under key-manager keys; database passwords sealed, none in connection URLs",
            versions.len()
        ),
    )
}

/// What `keyless audit verify` does: recompute the tree, check every
/// checkpoint (and its key against the key manager when it opens).
async fn check_audit(store: &Store, dir: &Path) -> Check {
    const NAME: &str = "audit log";
    let keys_dir = dir.join("keys");
    let result = match keyless_store::FileKeyManager::open(&keys_dir) {
        Ok(km) if keys_dir.exists() => keyless_audit::verify_with_keys(store, &km).await,
        _ => keyless_audit::verify(store).await,
    };
    match result {
        Ok(r) => check(
            Status::Pass,
            NAME,
            format!(
                "{} entries verified, {} checkpoint(s) consistent",
                r.size, r.checkpoints
            ),
        ),
        Err(keyless_audit::AuditError::Tampered(t)) => check(
            Status::Fail,
            NAME,
            format!("tampered ({:?}): {}", t.kind, t.reason),
        ),
        Err(e) => check(Status::Fail, NAME, format!("cannot verify: {e}")),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_public_url_off_loopback_warns() {
        let warn = |listen: &str, public: Option<&str>, mtls: Option<&str>| {
            tls_verdict(listen, public, mtls).err().map(|(s, _)| s)
        };
        assert_eq!(warn("127.0.0.1:8180", None, None), None);
        assert_eq!(
            warn("127.0.0.1:8180", Some("http://localhost:8180"), None),
            None
        );
        assert_eq!(
            warn("127.0.0.1:8180", Some("http://keyless.example.com"), None),
            Some(Status::Warn)
        );
        assert_eq!(
            warn("0.0.0.0:8180", Some("https://keyless.example.com"), None),
            None
        );
        assert_eq!(warn("0.0.0.0:8180", None, None), Some(Status::Warn));
        assert_eq!(warn("0.0.0.0:8180", None, Some("0.0.0.0:8443")), None);
        assert_eq!(warn("[::1]:8180", None, None), None);
        assert_eq!(
            warn("127.0.0.1:1", Some("not a url"), None),
            Some(Status::Fail)
        );
        let ok = tls_verdict("127.0.0.1:1", None, Some("127.0.0.1:8443")).unwrap();
        assert!(ok.contains("mTLS listener on `127.0.0.1:8443`"), "{ok}");
    }

    fn ttl(value: Result<Duration, String>, ceiling_s: u64) -> Ttl {
        Ttl {
            name: "x",
            value,
            default: false,
            min: Duration::from_secs(60),
            max: Some(Duration::from_secs(1000)),
            ceiling: Duration::from_secs(ceiling_s),
        }
    }

    #[test]
    fn ttls_fail_outside_limits_and_warn_above_ceilings() {
        let s = |t: Ttl| ttl_verdict(&[t]).status;
        assert_eq!(s(ttl(Ok(Duration::from_secs(100)), 500)), Status::Pass);
        assert_eq!(s(ttl(Ok(Duration::from_secs(600)), 500)), Status::Warn);
        assert_eq!(s(ttl(Ok(Duration::from_secs(2000)), 500)), Status::Fail);
        assert_eq!(s(ttl(Ok(Duration::from_secs(10)), 500)), Status::Fail);
        assert_eq!(s(ttl(Err("invalid x `y`".into()), 500)), Status::Fail);
    }

    #[test]
    fn loose_key_files_fail_and_strict_ones_pass() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        std::fs::create_dir(&keys).unwrap();
        std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o700)).unwrap();
        let key = keys.join("jwt-1.p256.pk8");
        std::fs::write(&key, b"k").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let statuses = |d: &Path| check_keys(d).iter().map(|c| c.status).collect::<Vec<_>>();
        assert_eq!(statuses(dir.path()), [Status::Pass, Status::Pass]);
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let checks = check_keys(dir.path());
        assert_eq!(checks[1].status, Status::Fail);
        assert!(
            checks[1].detail.contains("jwt-1.p256.pk8 (0644)"),
            "{}",
            checks[1].detail
        );
        std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(check_keys(dir.path())[0].status, Status::Fail);
    }

    #[test]
    fn a_world_writable_data_dir_fails() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(check_data_dir(dir.path()).status, Status::Pass);
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        assert_eq!(check_data_dir(dir.path()).status, Status::Fail);
        assert_eq!(
            check_data_dir(&dir.path().join("nope")).status,
            Status::Fail
        );
    }

    #[test]
    fn configuration_files_are_the_config_toml_and_env_files_only() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            ".env",
            ".env.local",
            "keyless.toml",
            "keyless.db",
            "notes.txt",
        ] {
            std::fs::write(dir.path().join(name), "x = 1\n").unwrap();
        }
        let files = config_files(None, &FileConfig::default(), dir.path());
        let names: Vec<String> = files
            .iter()
            .filter(|p| p.parent() == Some(dir.path()))
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert!(names.contains(&".env".to_owned()), "{names:?}");
        assert!(names.contains(&".env.local".to_owned()), "{names:?}");
        assert!(names.contains(&"keyless.toml".to_owned()), "{names:?}");
        assert!(!names.contains(&"keyless.db".to_owned()), "{names:?}");
        assert!(!names.contains(&"notes.txt".to_owned()), "{names:?}");
    }
}
