//! The SQL text the database engine sends, and everything that goes into it.
//!
//! PostgreSQL's role commands (`CREATE ROLE`, `ALTER ROLE … PASSWORD`) are
//! utility statements that take no bind parameters, so names, passwords and
//! times must be spliced into text. This module is the one place that does
//! it: names are quoted identifiers with `"` doubled, the password and the
//! expiration are string literals with `'` doubled, and templates are only
//! accepted when every placeholder sits inside the right quotes. The values
//! are also generated from safe alphabets, so escaping is a second wall.
//!
//! The password never reaches the server in clear: `{{password}}` renders as
//! a SCRAM-SHA-256 verifier (as Vault's `password_authentication =
//! "scram-sha-256"` does), which PostgreSQL stores as is. So a failed
//! statement that the server logs, or a query shown in `pg_stat_activity`,
//! does not reveal a usable password.

use std::num::NonZeroU32;
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::{digest, hmac, pbkdf2, rand};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use crate::SecretsError;

/// PostgreSQL's identifier limit (NAMEDATALEN - 1), in bytes.
pub(crate) const MAX_IDENTIFIER: usize = 63;
/// Prefix of every username Keyless generates; revoke refuses any other.
pub(crate) const USERNAME_PREFIX: &str = "kl_";
/// Random characters at the end of a generated username (~103 bits).
const USERNAME_RANDOM: usize = 20;
/// Room left for the role name inside a username.
pub(crate) const ROLE_IN_USERNAME: usize =
    MAX_IDENTIFIER - USERNAME_PREFIX.len() - 1 - USERNAME_RANDOM;
/// Length of generated passwords (62-letter alphabet: ~238 bits).
const PASSWORD_LEN: usize = 40;
/// PostgreSQL's own default SCRAM iteration count.
const SCRAM_ITERATIONS: u32 = 4096;
/// Longest accepted statement template, in bytes.
const MAX_STATEMENT: usize = 16 * 1024;

const LOWER_DIGITS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// A role or connection name: `[A-Za-z0-9_-]`, 1 to 64 bytes.
pub(crate) fn validate_name(kind: &str, name: &str) -> Result<(), SecretsError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(SecretsError::InvalidRequest(format!(
            "invalid {kind} name `{}`: use [A-Za-z0-9_-], at most 64 characters",
            name.escape_debug()
        )))
    }
}

/// A username handed to renew or revoke: shaped like one Keyless generated
/// (`kl_<role>_<20 of [a-z0-9]>`), nothing else, so a lease can never be
/// used to drop `postgres`, the managing role or any hand-made role.
pub(crate) fn validate_username(username: &str) -> Result<(), SecretsError> {
    let shaped = username.len() <= MAX_IDENTIFIER
        && username.strip_prefix(USERNAME_PREFIX).is_some_and(|rest| {
            let cut = rest.len().saturating_sub(USERNAME_RANDOM + 1);
            match (rest.get(..cut), rest.get(cut..)) {
                (Some(role), Some(tail)) => {
                    !role.is_empty()
                        && role
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
                        && tail.len() == USERNAME_RANDOM + 1
                        && tail.starts_with('_')
                        && tail.bytes().skip(1).all(|b| LOWER_DIGITS.contains(&b))
                }
                _ => false,
            }
        });
    if shaped {
        Ok(())
    } else {
        Err(SecretsError::InvalidRequest(format!(
            "invalid username `{}`: not a credential issued by keyless",
            username.escape_debug()
        )))
    }
}

/// `"ident"` with embedded `"` doubled.
pub(crate) fn quote_ident(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// `'text'` with embedded `'` doubled. Only valid with
/// `standard_conforming_strings = on` (the default since PostgreSQL 9.1),
/// which [`super::Database`] checks when it configures a connection.
pub(crate) fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

fn random_string(alphabet: &[u8], len: usize) -> Result<String, SecretsError> {
    // Rejection sampling: only bytes below the largest multiple of the
    // alphabet size are used, so every character is equally likely.
    let n = alphabet.len();
    let limit = 256 - 256 % n;
    let mut out = String::with_capacity(len);
    let mut buf = [0u8; 64];
    while out.len() < len {
        rand::fill(&mut buf).map_err(|_| rng_error())?;
        for &b in &buf {
            if usize::from(b) < limit
                && out.len() < len
                && let Some(&c) = alphabet.get(usize::from(b) % n)
            {
                out.push(char::from(c));
            }
        }
    }
    Ok(out)
}

fn rng_error() -> SecretsError {
    SecretsError::Database("the system random number generator failed".to_owned())
}

/// A fresh password from the system RNG.
pub(crate) fn generate_password() -> Result<String, SecretsError> {
    random_string(ALNUM, PASSWORD_LEN)
}

/// `kl_<role>_<random>`, the role part cut so the whole fits in 63 bytes.
pub(crate) fn generate_username(role: &str) -> Result<String, SecretsError> {
    let role_part = role.get(..role.len().min(ROLE_IN_USERNAME)).unwrap_or(role);
    let random = random_string(LOWER_DIGITS, USERNAME_RANDOM)?;
    Ok(format!("{USERNAME_PREFIX}{role_part}_{random}"))
}

/// The role name a generated username was made for, when it was not cut.
pub(crate) fn role_of_username(username: &str) -> Option<&str> {
    let rest = username.strip_prefix(USERNAME_PREFIX)?;
    let role = rest.get(..rest.len().checked_sub(USERNAME_RANDOM + 1)?)?;
    (!role.is_empty() && role.len() < ROLE_IN_USERNAME).then_some(role)
}

/// PostgreSQL's SCRAM-SHA-256 verifier for `password` (RFC 5802/7677 keys,
/// PostgreSQL's `SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>` text).
/// The password must be plain ASCII, where SASLprep changes nothing.
pub(crate) fn scram_verifier(password: &str) -> Result<String, SecretsError> {
    let mut salt = [0u8; 16];
    rand::fill(&mut salt).map_err(|_| rng_error())?;
    Ok(scram_verifier_with_salt(password, &salt))
}

fn scram_verifier_with_salt(password: &str, salt: &[u8]) -> String {
    let iterations = NonZeroU32::new(SCRAM_ITERATIONS).unwrap_or(NonZeroU32::MIN);
    let mut salted = [0u8; 32];
    pbkdf2::derive(
        pbkdf2::PBKDF2_HMAC_SHA256,
        iterations,
        salt,
        password.as_bytes(),
        &mut salted,
    );
    let key = hmac::Key::new(hmac::HMAC_SHA256, &salted);
    let client_key = hmac::sign(&key, b"Client Key");
    let stored_key = digest::digest(&digest::SHA256, client_key.as_ref());
    let server_key = hmac::sign(&key, b"Server Key");
    format!(
        "SCRAM-SHA-256${SCRAM_ITERATIONS}:{}${}:{}",
        STANDARD.encode(salt),
        STANDARD.encode(stored_key.as_ref()),
        STANDARD.encode(server_key.as_ref())
    )
}

/// `YYYY-MM-DD HH:MM:SS.mmm+00`, a `timestamptz` literal body in UTC.
pub(crate) fn format_timestamp(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let days = i64::try_from(secs / 86_400).unwrap_or(i64::MAX / 2);
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{:03}+00",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
        since.subsec_millis()
    )
}

/// Howard Hinnant's days-from-civil inverse: days since 1970-01-01 to a
/// proleptic Gregorian date.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (
        y,
        u32::try_from(m).unwrap_or(1),
        u32::try_from(d).unwrap_or(1),
    )
}

/// Which statement list a template belongs to; each allows its placeholders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Creation,
    Renew,
    Revocation,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Self::Creation => "creation_statements",
            Self::Renew => "renew_statements",
            Self::Revocation => "revocation_statements",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Placeholder {
    Name,
    Password,
    Expiration,
}

/// Splits a template into text and placeholders, checking each placeholder
/// is known, allowed for `kind`, and sits inside the quotes that make our
/// escaping correct (`"{{name}}"`, `'{{password}}'`, `'{{expiration}}'`).
fn parse(kind: Kind, template: &str) -> Result<Vec<Piece<'_>>, SecretsError> {
    let bad =
        |why: String| SecretsError::InvalidRequest(format!("invalid {}: {why}", kind.label()));
    if template.trim().is_empty() {
        return Err(bad("empty statement".to_owned()));
    }
    if template.len() > MAX_STATEMENT {
        return Err(bad(format!("statement longer than {MAX_STATEMENT} bytes")));
    }
    if template.contains('\0') {
        return Err(bad("statement contains a NUL byte".to_owned()));
    }
    let mut pieces = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        let before = rest.get(..start).unwrap_or_default();
        let after_open = rest.get(start + 2..).unwrap_or_default();
        let end = after_open
            .find("}}")
            .ok_or_else(|| bad("unclosed `{{`".to_owned()))?;
        let key = after_open.get(..end).unwrap_or_default().trim();
        let after = after_open.get(end + 2..).unwrap_or_default();
        let (placeholder, quote) = match key {
            "name" | "username" => (Placeholder::Name, '"'),
            "password" => (Placeholder::Password, '\''),
            "expiration" => (Placeholder::Expiration, '\''),
            other => return Err(bad(format!("unknown placeholder `{{{{{other}}}}}`"))),
        };
        let allowed = match kind {
            Kind::Creation => true,
            Kind::Renew => placeholder != Placeholder::Password,
            Kind::Revocation => placeholder == Placeholder::Name,
        };
        if !allowed {
            return Err(bad(format!(
                "placeholder `{{{{{key}}}}}` is not allowed here"
            )));
        }
        if !(before.ends_with(quote) && after.starts_with(quote)) {
            let example = if quote == '"' {
                "\"{{name}}\""
            } else {
                "'{{password}}' / '{{expiration}}'"
            };
            return Err(bad(format!(
                "placeholder `{{{{{key}}}}}` must be quoted as in {example}"
            )));
        }
        pieces.push(Piece::Text(before));
        pieces.push(Piece::Value(placeholder));
        rest = after;
    }
    if rest.contains("}}") {
        return Err(bad("stray `}}`".to_owned()));
    }
    pieces.push(Piece::Text(rest));
    Ok(pieces)
}

#[derive(Debug)]
enum Piece<'a> {
    Text(&'a str),
    Value(Placeholder),
}

/// Checks a statement list before it is stored. Creation statements must
/// create the login with a password and an expiration (the `VALID UNTIL`
/// safety net); renew and revocation statements must name the role.
pub(crate) fn validate_statements(kind: Kind, statements: &[String]) -> Result<(), SecretsError> {
    if kind == Kind::Creation && statements.is_empty() {
        return Err(SecretsError::InvalidRequest(
            "creation_statements must not be empty".to_owned(),
        ));
    }
    let mut seen = Vec::new();
    for statement in statements {
        for piece in parse(kind, statement)? {
            if let Piece::Value(p) = piece {
                seen.push(p);
            }
        }
    }
    let required: &[(Placeholder, &str)] = match kind {
        _ if statements.is_empty() => &[],
        Kind::Creation => &[
            (Placeholder::Name, "{{name}}"),
            (Placeholder::Password, "{{password}}"),
            (Placeholder::Expiration, "{{expiration}}"),
        ],
        Kind::Renew | Kind::Revocation => &[(Placeholder::Name, "{{name}}")],
    };
    for (p, text) in required {
        if !seen.contains(p) {
            return Err(SecretsError::InvalidRequest(format!(
                "invalid {}: missing `{text}`",
                kind.label()
            )));
        }
    }
    Ok(())
}

/// The values a template is rendered with (already in their SQL-ready form
/// except for escaping, which [`render`] does).
#[derive(Debug)]
pub(crate) struct Values<'a> {
    pub name: &'a str,
    /// What `{{password}}` becomes: a SCRAM verifier.
    pub password: &'a str,
    pub expiration: &'a str,
}

/// Renders validated statements into one SQL text, statements separated by
/// `;` and escaped for the quotes around each placeholder.
pub(crate) fn render(
    kind: Kind,
    statements: &[String],
    values: &Values<'_>,
) -> Result<String, SecretsError> {
    let mut sql = String::new();
    for statement in statements {
        for piece in parse(kind, statement)? {
            match piece {
                Piece::Text(t) => sql.push_str(t),
                Piece::Value(Placeholder::Name) => sql.push_str(&values.name.replace('"', "\"\"")),
                Piece::Value(Placeholder::Password) => {
                    sql.push_str(&values.password.replace('\'', "''"));
                }
                Piece::Value(Placeholder::Expiration) => {
                    sql.push_str(&values.expiration.replace('\'', "''"));
                }
            }
        }
        sql.push_str(";\n");
    }
    Ok(sql)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::time::Duration;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| (*x).to_owned()).collect()
    }

    const CREATE: &str =
        "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'";

    #[test]
    fn names_are_validated() {
        for ok in ["ro", "app-read_1", &"a".repeat(64)] {
            assert!(validate_name("role", ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "a b",
            "x\"; DROP ROLE postgres; --",
            "r'o",
            "é",
            &"a".repeat(65),
        ] {
            let err = validate_name("role", bad).unwrap_err().to_string();
            assert!(err.starts_with("invalid role name"), "{err}");
        }
    }

    #[test]
    fn usernames_fit_postgres_and_are_recognised() {
        let u = generate_username("readonly").unwrap();
        assert!(
            u.starts_with("kl_readonly_") && u.len() == 3 + 8 + 1 + 20,
            "{u}"
        );
        assert_eq!(role_of_username(&u), Some("readonly"));
        validate_username(&u).unwrap();
        let long = "r".repeat(64);
        let u = generate_username(&long).unwrap();
        assert_eq!(u.len(), MAX_IDENTIFIER);
        assert_eq!(role_of_username(&u), None, "a cut role name is not guessed");
        assert_ne!(
            generate_username("r").unwrap(),
            generate_username("r").unwrap()
        );
        let tail = "_abcdefghij0123456789";
        for bad in [
            "postgres".to_owned(),
            "kl_test_mgr_a1b2c3d4e5f6".to_owned(),
            format!("kl_x\"y{tail}"),
            format!("kl_x'y{tail}"),
            format!("kl_x y{tail}"),
            format!("kl{tail}"),
            format!("kl_{tail}"),
            "kl_r_ABCDEFGHIJ0123456789".to_owned(),
            format!("kl_{}{tail}", "a".repeat(40)),
        ] {
            assert!(validate_username(&bad).is_err(), "{bad}");
        }
        validate_username(&format!("kl_a-B_1{tail}")).unwrap();
    }

    #[test]
    fn passwords_are_long_and_alphanumeric() {
        let p = generate_password().unwrap();
        assert_eq!(p.len(), 40);
        assert!(p.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_ne!(p, generate_password().unwrap());
    }

    #[test]
    fn quoting_doubles_quotes() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
    }

    #[test]
    fn scram_verifier_matches_rfc7677_vector() {
        // RFC 7677 §3: password "pencil", salt W22ZaJ0SNY7soEsUEjb6gQ==, i=4096.
        // The exchange's ServerSignature and ClientProof must check out
        // against the StoredKey/ServerKey we put in the verifier.
        let salt = STANDARD.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let v = scram_verifier_with_salt("pencil", &salt);
        assert!(
            v.starts_with("SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$"),
            "{v}"
        );
        let (stored, server) = v.rsplit('$').next().unwrap().split_once(':').unwrap();
        let stored = STANDARD.decode(stored).unwrap();
        let server = STANDARD.decode(server).unwrap();
        let nonce = "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
        let auth = format!(
            "n=user,r=rOprNGfwEbeRWgbNEkqO,r={nonce},s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,c=biws,r={nonce}"
        );
        let server_sig = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &server), auth.as_bytes());
        assert_eq!(
            STANDARD.encode(server_sig.as_ref()),
            "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
        let client_sig = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &stored), auth.as_bytes());
        let proof = STANDARD
            .decode("dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
            .unwrap();
        let client_key: Vec<u8> = proof
            .iter()
            .zip(client_sig.as_ref())
            .map(|(a, b)| a ^ b)
            .collect();
        assert_eq!(
            digest::digest(&digest::SHA256, &client_key).as_ref(),
            stored.as_slice()
        );
        assert_ne!(
            scram_verifier("pencil").unwrap(),
            scram_verifier("pencil").unwrap()
        );
    }

    #[test]
    fn timestamps_are_utc_literals() {
        assert_eq!(format_timestamp(UNIX_EPOCH), "1970-01-01 00:00:00.000+00");
        let t = UNIX_EPOCH + Duration::from_millis(1_795_966_882_123);
        assert_eq!(format_timestamp(t), "2026-11-29 15:41:22.123+00");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(format_timestamp(leap), "2000-02-29 00:00:00.000+00");
    }

    #[test]
    fn creation_templates_are_validated() {
        validate_statements(
            Kind::Creation,
            &s(&[CREATE, "GRANT app_read TO \"{{name}}\""]),
        )
        .unwrap();
        let cases: &[(&[&str], &str)] = &[
            (&[], "must not be empty"),
            (&["  "], "empty statement"),
            (
                &[
                    "CREATE ROLE {{name}} LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'",
                ],
                "must be quoted",
            ),
            (
                &["CREATE ROLE \"{{name}}\" PASSWORD \"{{password}}\""],
                "must be quoted",
            ),
            (
                &["CREATE ROLE \"{{name}}\" VALID UNTIL '{{expiration}}'"],
                "missing `{{password}}`",
            ),
            (
                &["CREATE ROLE \"{{name}}\" PASSWORD '{{password}}'"],
                "missing `{{expiration}}`",
            ),
            (
                &["CREATE ROLE \"{{nme}}\""],
                "unknown placeholder `{{nme}}`",
            ),
            (&["CREATE ROLE \"{{name\""], "unclosed"),
            (&["CREATE ROLE x }}"], "stray"),
        ];
        for (stmts, want) in cases {
            let err = validate_statements(Kind::Creation, &s(stmts))
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{stmts:?}: {err}");
        }
    }

    #[test]
    fn renew_and_revocation_templates_are_validated() {
        validate_statements(Kind::Renew, &[]).unwrap();
        validate_statements(Kind::Revocation, &[]).unwrap();
        validate_statements(
            Kind::Renew,
            &s(&["ALTER ROLE \"{{name}}\" VALID UNTIL '{{expiration}}'"]),
        )
        .unwrap();
        let err = validate_statements(
            Kind::Renew,
            &s(&["ALTER ROLE \"{{name}}\" PASSWORD '{{password}}'"]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("not allowed"), "{err}");
        let err = validate_statements(Kind::Revocation, &s(&["SELECT 1"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing `{{name}}`"), "{err}");
    }

    #[test]
    fn rendering_escapes_values_inside_their_quotes() {
        let sql = render(
            Kind::Creation,
            &s(&[CREATE, "GRANT r TO \"{{username}}\";"]),
            &Values {
                name: "x\"; DROP ROLE postgres; --",
                password: "p'; DROP ROLE postgres; --",
                expiration: "2030-01-01 00:00:00+00",
            },
        )
        .unwrap();
        assert_eq!(
            sql,
            "CREATE ROLE \"x\"\"; DROP ROLE postgres; --\" WITH LOGIN PASSWORD \
             'p''; DROP ROLE postgres; --' VALID UNTIL '2030-01-01 00:00:00+00';\n\
             GRANT r TO \"x\"\"; DROP ROLE postgres; --\";;\n"
        );
    }
}
