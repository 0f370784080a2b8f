//! A generated, labelled corpus: secrets of many kinds planted in files
//! (plain, in log lines, base64-encoded) among look-alike non-secrets. The
//! scan's recall and precision are printed and must both reach 0.95.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::collections::HashMap;
use std::fmt::Write as _;

use base64::Engine as _;
use keyless_scan::{ScanOptions, Scanner};

/// splitmix64: deterministic, seedable, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick(&mut self, alphabet: &str, n: usize) -> String {
        let a = alphabet.as_bytes();
        (0..n).map(|_| a[self.below(a.len())] as char).collect()
    }
    fn choose<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

const AN: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
const URL: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-";
const B64: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const HEX: &str = "0123456789abcdef";
const AWS: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// A planted secret: the line that carries it and the secret itself.
fn secret(rng: &mut Rng, kind: usize) -> (String, String) {
    let r = rng;
    match kind % 26 {
        0 => {
            let s = format!("AKIA{}", r.pick(AWS, 16));
            (format!("aws_access_key_id = {s}"), s)
        }
        1 => {
            let s = r.pick(B64, 40);
            (format!("aws_secret_access_key = {s}"), s)
        }
        2 => {
            let s = format!("ghp_{}", r.pick(AN, 36));
            (format!("GITHUB_TOKEN={s}"), s)
        }
        3 => {
            let s = format!("github_pat_{}_{}", r.pick(AN, 22), r.pick(AN, 59));
            (format!("gh auth token {s}"), s)
        }
        4 => {
            let s = format!("glpat-{}", r.pick(URL, 20));
            (format!("GITLAB_TOKEN: \"{s}\""), s)
        }
        5 => {
            let s = format!(
                "xoxb-{}-{}-{}",
                r.pick("0123456789", 12),
                r.pick("0123456789", 13),
                r.pick(AN, 24)
            );
            (format!("slack_token = '{s}'"), s)
        }
        6 => {
            let s = format!("T{}/B{}/{}", r.pick(AWS, 9), r.pick(AWS, 9), r.pick(AN, 24));
            (format!("webhook: https://hooks.slack.com/services/{s}"), s)
        }
        7 => {
            let s = format!("sk_live_{}", r.pick(AN, 32));
            (format!("Stripe.api_key = \"{s}\""), s)
        }
        8 => {
            let s = format!("SG.{}.{}", r.pick(URL, 22), r.pick(URL, 43));
            (format!("SENDGRID_API_KEY={s}"), s)
        }
        9 => {
            let s = format!("sk-proj-{}T3BlbkFJ{}", r.pick(URL, 40), r.pick(URL, 40));
            (format!("OPENAI_API_KEY={s}"), s)
        }
        10 => {
            let s = format!("sk-ant-api03-{}AA", r.pick(URL, 93));
            (format!("ANTHROPIC_API_KEY={s}"), s)
        }
        11 => {
            let s = format!(
                "hf_{}",
                r.pick("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz", 34)
            );
            (format!("HF_TOKEN={s}"), s)
        }
        12 => {
            let s = format!("npm_{}", r.pick(AN, 36));
            (format!("//registry.npmjs.org/:_authToken={s}"), s)
        }
        13 => {
            let s = format!("dckr_pat_{}", r.pick(URL, 27));
            (format!("docker login -u ci -p {s}"), s)
        }
        14 => {
            let s = format!("dop_v1_{}", r.pick(HEX, 64));
            (format!("DO_TOKEN={s}"), s)
        }
        15 => {
            let s = format!("NRAK-{}", r.pick(AWS, 27));
            (format!("newrelic api key {s}"), s)
        }
        16 => {
            let s = format!("{}:AA{}", r.pick("123456789", 10), r.pick(URL, 33));
            (format!("bot = Bot(\"{s}\")"), s)
        }
        17 => {
            let s = format!("GOCSPX-{}", r.pick(URL, 28));
            (format!("\"client_secret\": \"{s}\""), s)
        }
        18 => {
            let s = format!("AIza{}", r.pick(URL, 35));
            (format!("maps_key: {s}"), s)
        }
        19 => {
            let s = format!("hvs.{}", r.pick(URL, 43));
            (format!("export VAULT_TOKEN={s}"), s)
        }
        20 => {
            let s = r.pick(AN, 20);
            (
                format!("DATABASE_URL=postgres://app:{s}@db.internal:5432/app"),
                s,
            )
        }
        21 => {
            let body: Vec<String> = (0..6).map(|_| r.pick(B64, 64)).collect();
            let s = body.join("\n");
            (
                format!(
                    "{}\n{s}\n{}",
                    // Assembled: no key block sits in this source.
                    concat!("-----BEGIN RSA", " PRIVATE KEY-----"),
                    concat!("-----END RSA", " PRIVATE KEY-----")
                ),
                s,
            )
        }
        22 => {
            let s = format!("{}9{}", r.pick(AN, 10), r.pick("!#%^*()-_=+abcdefXYZ", 10));
            (format!("db_password = \"{s}\""), s)
        }
        23 => {
            let enc = |v: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
            let s = format!(
                "{}.{}.{}",
                enc(r#"{"alg":"RS256","typ":"JWT"}"#),
                enc(&format!(
                    r#"{{"sub":"user-{}","exp":1900000000}}"#,
                    r.pick(HEX, 8)
                )),
                r.pick(URL, 86)
            );
            (format!("Authorization: Bearer {s}"), s)
        }
        24 => {
            let s = format!("shpat_{}", r.pick(HEX, 32));
            (format!("SHOPIFY_ACCESS_TOKEN={s}"), s)
        }
        _ => {
            let s = format!("mongodb+srv://svc:{}@cluster0.internal/db", r.pick(AN, 18));
            let pw = s[18..36].to_owned();
            (format!("MONGO_URI=\"{s}\""), pw)
        }
    }
}

/// A look-alike that is not a secret.
fn decoy(rng: &mut Rng, kind: usize) -> String {
    let r = rng;
    match kind % 24 {
        0 => "aws_access_key_id = AKIAXXXXXXXXXXXXXXXX".into(),
        1 => format!(
            "request_id = \"{}-{}-4{}-a{}-{}\"",
            r.pick(HEX, 8),
            r.pick(HEX, 4),
            r.pick(HEX, 3),
            r.pick(HEX, 3),
            r.pick(HEX, 12)
        ),
        2 => format!("sha256: {}", r.pick(HEX, 64)),
        3 => format!("commit {}", r.pick(HEX, 40)),
        4 => format!("image: registry.local/app@sha256:{}", r.pick(HEX, 64)),
        5 => format!("\"integrity\": \"sha512-{}==\"", r.pick(B64, 86)),
        6 => format!("GITHUB_TOKEN=ghp_{}", "x".repeat(36)),
        7 => format!("STRIPE_TEST_KEY=sk_test_{}", r.pick(AN, 24)),
        8 => "password = \"changeme\"".into(),
        9 => format!(
            "password: \"${{{}_PASSWORD}}\"",
            r.choose(&["DB", "REDIS", "SMTP"])
        ),
        10 => "api_key = \"YOUR_API_KEY_HERE\"".into(),
        11 => format!(
            "DATABASE_URL=postgres://app:${{DB_PASSWORD}}@db{}:5432/app",
            r.below(9)
        ),
        12 => format!(
            "let {} = get_token_for(user_id, scope);",
            r.choose(&["access_token", "refresh_token", "id_token"])
        ),
        13 => {
            "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor.".into()
        }
        14 => format!("token_type = \"Bearer\"  # expires_in = {}", r.below(7200)),
        15 => format!(
            "-----BEGIN CERTIFICATE-----\n{}\n{}\n-----END CERTIFICATE-----",
            r.pick(B64, 64),
            r.pick(B64, 64)
        ),
        16 => {
            let raw: Vec<u8> = (0..48).map(|_| r.next() as u8).collect();
            format!(
                "blob: {}",
                base64::engine::general_purpose::STANDARD.encode(raw)
            )
        }
        17 => "slack_token = \"xoxb-your-token-here\"".into(),
        18 => format!(
            "curl https://api.internal.example.com:{}/v1/health",
            8000 + r.below(999)
        ),
        19 => format!("AIza{}", "X".repeat(35)),
        20 => format!(
            "secret_name = \"prod-{}-credentials\"",
            r.choose(&["db", "api", "queue"])
        ),
        21 => format!(
            "const TOKEN_ENDPOINT = \"/oauth2/{}/token\";",
            r.choose(&["v1", "v2"])
        ),
        22 => format!("eyJhbGciOiJub25lIn0.eyJzdWIiOiJ{}In0.", r.pick(AN, 6)),
        _ => format!(
            "user: alice, password_hint = \"your-password-{}\"",
            r.below(100)
        ),
    }
}

fn filler(rng: &mut Rng) -> String {
    let lines = [
        "fn handle(req: Request) -> Response { let id = req.id(); respond(id) }",
        "    for item in items.iter().filter(|i| i.enabled) { total += item.cost; }",
        "# Configuration for the staging environment; see docs/deploy.md",
        "2026-03-01T12:00:00Z INFO http: GET /healthz 200 1.2ms",
        "import os, sys, json  # helpers",
        "The quick brown fox jumps over the lazy dog near the riverbank.",
    ];
    rng.choose(&lines).to_owned()
}

#[test]
fn labelled_corpus_recall_and_precision() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng(0x5EC2_E75C_A11E_D000);
    // path → planted secrets
    let mut planted: HashMap<String, Vec<String>> = HashMap::new();
    let mut n_planted = 0;
    let mut n_decoys = 0;
    let mut modes = [0usize; 3];
    for file in 0..60 {
        let ext = ["env", "yaml", "py", "log", "json", "txt"][file % 6];
        let path = dir.path().join(format!("dir{}/file{file}.{ext}", file % 7));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let mut text = String::new();
        let mut secrets = Vec::new();
        for slot in 0..12 {
            for _ in 0..rng.below(6) {
                writeln!(text, "{}", filler(&mut rng)).unwrap();
            }
            if slot % 3 == 0 {
                let kind = rng.below(1000);
                let (line, s) = secret(&mut rng, kind);
                // Plain, inside a log line, or base64-encoded (one-line kinds).
                let mode = if line.contains('\n') { 0 } else { rng.below(3) };
                modes[mode] += 1;
                match mode {
                    0 => writeln!(text, "{line}").unwrap(),
                    1 => writeln!(
                        text,
                        "2026-03-01T12:00:{:02}Z WARN worker[{}]: env dump {line}",
                        slot,
                        rng.below(99)
                    )
                    .unwrap(),
                    _ => writeln!(
                        text,
                        "config_blob: {}",
                        base64::engine::general_purpose::STANDARD.encode(&line)
                    )
                    .unwrap(),
                }
                secrets.push(s);
                n_planted += 1;
            } else {
                let kind = rng.below(1000);
                writeln!(text, "{}", decoy(&mut rng, kind)).unwrap();
                n_decoys += 1;
            }
        }
        std::fs::write(&path, text).unwrap();
        planted.insert(path.display().to_string(), secrets);
    }
    assert!(n_planted >= 200, "{n_planted} planted");
    assert!(n_decoys >= 200, "{n_decoys} decoys");

    let opts = ScanOptions {
        threads: 2,
        ..ScanOptions::default()
    };
    let report = Scanner::new()
        .scan_paths(&[dir.path().to_path_buf()], &opts)
        .unwrap();
    assert_eq!(report.files_scanned, 60);

    let hit = |f: &keyless_scan::Finding, s: &str| {
        f.secret.len() >= 8 && (f.secret.contains(s) || s.contains(&f.secret))
    };
    let mut true_pos = 0;
    let mut false_pos = Vec::new();
    for f in &report.findings {
        let secrets = planted.get(&f.path).map(Vec::as_slice).unwrap_or(&[]);
        if secrets.iter().any(|s| hit(f, s)) {
            true_pos += 1;
        } else {
            false_pos.push(format!(
                "{}:{} {} {}",
                f.path, f.line, f.rule_id, f.redacted
            ));
        }
    }
    let mut missed = Vec::new();
    let mut found = 0;
    for (path, secrets) in &planted {
        for s in secrets {
            if report.findings.iter().any(|f| &f.path == path && hit(f, s)) {
                found += 1;
            } else {
                missed.push(format!("{path}: {}…", &s[..s.len().min(12)]));
            }
        }
    }
    let recall = f64::from(found) / f64::from(n_planted as u32);
    let precision = f64::from(true_pos) / report.findings.len().max(1) as f64;
    println!(
        "corpus: {n_planted} planted (plain {}, log {}, base64 {}), {n_decoys} decoys, {} findings",
        modes[0],
        modes[1],
        modes[2],
        report.findings.len()
    );
    println!("recall = {recall:.3}, precision = {precision:.3}");
    for m in &missed {
        println!("missed: {m}");
    }
    for f in &false_pos {
        println!("false positive: {f}");
    }
    assert!(recall >= 0.95, "recall {recall:.3}");
    assert!(precision >= 0.95, "precision {precision:.3}");
    // Base64-planted secrets are reported as decoded.
    assert!(
        report
            .findings
            .iter()
            .any(|f| f.decoded.as_deref() == Some("base64"))
    );
}
