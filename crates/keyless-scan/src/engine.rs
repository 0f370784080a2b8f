//! The matching core: keyword prefilter, windowed regexes, validation
//! (entropy, context, placeholders), base64 decoding, redaction.
//!
//! Hot path: one aho-corasick pass and one byte-class pass (base64 runs)
//! over every buffer; nothing is allocated for a buffer without keyword hits
//! or long base64 runs.

use aho_corasick::{AhoCorasick, AhoCorasickKind, MatchKind};
use base64::Engine as _;
use regex::bytes::Regex;

use crate::{Finding, Rule, fingerprint, redact};

/// Shortest base64 run that is decoded.
const MIN_BASE64_RUN: usize = 32;
/// Base64 characters decoded first to judge whether a long run is text.
const PROBE_LEN: usize = 64;
/// Bytes around a match searched for a rule's context words.
const CONTEXT_SPAN: usize = 256;
/// How far a window is stretched to reach a line boundary.
const LINE_STRETCH: usize = 4096;
/// Longest prefix or suffix of a match kept around the redacted secret.
const REDACTED_AFFIX: usize = 40;

/// A rule with its compiled regex.
#[derive(Debug)]
struct Compiled {
    regex: Regex,
    secret_group: Option<usize>,
}

/// The compiled rule set.
#[derive(Debug)]
pub(crate) struct Engine {
    rules: Vec<Rule>,
    compiled: Vec<Compiled>,
    /// Keyword automaton (None only if it failed to build: then every rule
    /// runs on whole buffers).
    keywords: Option<AhoCorasick>,
    /// Keyword pattern id → the rules listing it.
    keyword_rules: Vec<Vec<usize>>,
    /// Rules with no keyword: run on whole buffers.
    unkeyed: Vec<usize>,
}

/// A match before it becomes a [`Finding`]: offsets into the scanned buffer.
#[derive(Debug, Clone)]
pub(crate) struct Hit {
    pub rule: usize,
    /// Where the match (or the decoded base64 run) starts.
    pub start: usize,
    /// Where the secret starts and ends (equal to start/end for decoded hits).
    pub secret_start: usize,
    pub secret_end: usize,
    pub secret: Vec<u8>,
    pub redacted: String,
    pub decoded: bool,
}

impl Engine {
    /// Compiles the rules. A rule whose regex does not compile is left out
    /// (the rule tests assert that none is).
    pub(crate) fn new(all: Vec<Rule>) -> Self {
        let mut rules = Vec::with_capacity(all.len());
        let mut compiled = Vec::with_capacity(all.len());
        for rule in all {
            let Ok(regex) = regex::bytes::RegexBuilder::new(rule.pattern)
                .size_limit(50 << 20)
                .build()
            else {
                continue;
            };
            let secret_group = regex.capture_names().position(|n| n == Some("s"));
            compiled.push(Compiled {
                regex,
                secret_group,
            });
            rules.push(rule);
        }
        let mut words: Vec<String> = Vec::new();
        let mut keyword_rules: Vec<Vec<usize>> = Vec::new();
        let mut unkeyed = Vec::new();
        for (i, rule) in rules.iter().enumerate() {
            if rule.keywords.is_empty() {
                unkeyed.push(i);
            }
            for kw in rule.keywords {
                let lower = kw.to_ascii_lowercase();
                match words.iter().position(|w| *w == lower) {
                    Some(p) => {
                        if let Some(list) = keyword_rules.get_mut(p) {
                            list.push(i);
                        }
                    }
                    None => {
                        words.push(lower);
                        keyword_rules.push(vec![i]);
                    }
                }
            }
        }
        // Non-overlapping leftmost-longest search is faster than overlapping
        // search; so that a keyword hidden inside a longer one (`api_key` in
        // `dd_api_key`) still opens its rules' windows, each keyword also
        // lists the rules of every keyword it contains.
        let folded: Vec<Vec<usize>> = words
            .iter()
            .map(|w| {
                let mut list: Vec<usize> = words
                    .iter()
                    .zip(&keyword_rules)
                    .filter(|(inner, _)| w.contains(inner.as_str()))
                    .flat_map(|(_, rules)| rules.iter().copied())
                    .collect();
                list.sort_unstable();
                list.dedup();
                list
            })
            .collect();
        let keyword_rules = folded;
        let keywords = AhoCorasick::builder()
            .ascii_case_insensitive(true)
            .match_kind(MatchKind::LeftmostLongest)
            .kind(Some(AhoCorasickKind::DFA))
            .build(&words)
            .ok();
        if keywords.is_none() {
            unkeyed = (0..rules.len()).collect();
        }
        Self {
            rules,
            compiled,
            keywords,
            keyword_rules,
            unkeyed,
        }
    }

    pub(crate) fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Findings in `data`, deduplicated per secret, in buffer order.
    pub(crate) fn findings(&self, path: &str, data: &[u8], decode: bool) -> Vec<Finding> {
        let hits = self.hits(data, decode);
        self.to_findings(path, data, hits)
    }

    /// All hits in `data`: keyword windows, then (if `decode`) base64 runs;
    /// generic hits overlapping a specific one are dropped, and a secret is
    /// reported once per rule (its first occurrence).
    pub(crate) fn hits(&self, data: &[u8], decode: bool) -> Vec<Hit> {
        let mut hits = Vec::new();
        self.plain_hits(data, &mut hits);
        if decode {
            self.base64_hits(data, &mut hits);
        }
        if hits.len() > 1 {
            hits.sort_by_key(|h| (h.start, h.rule));
            // Specific spans sorted by start, with the running maximum of
            // their ends: "does any specific span overlap [a, b)?" is one
            // binary search, so many hits do not cost quadratic time.
            let mut specific: Vec<(usize, usize)> = hits
                .iter()
                .filter(|h| !self.rule(h.rule).is_some_and(|r| r.generic))
                .map(|h| (h.secret_start, h.secret_end))
                .collect();
            specific.sort_unstable();
            let max_end: Vec<usize> = specific
                .iter()
                .scan(0usize, |m, &(_, e)| {
                    *m = (*m).max(e);
                    Some(*m)
                })
                .collect();
            let overlaps_specific = |a: usize, b: usize| {
                let k = specific.partition_point(|&(s, _)| s < b);
                k > 0 && max_end.get(k - 1).is_some_and(|&e| e > a)
            };
            let mut seen = std::collections::HashSet::new();
            hits.retain(|h| {
                let generic = self.rule(h.rule).is_some_and(|r| r.generic);
                if generic && overlaps_specific(h.secret_start, h.secret_end) {
                    return false;
                }
                seen.insert((h.rule, h.secret.clone()))
            });
        }
        hits
    }

    fn rule(&self, i: usize) -> Option<&Rule> {
        self.rules.get(i)
    }

    /// Runs each rule's regex on the merged windows around its keyword hits.
    fn plain_hits(&self, data: &[u8], hits: &mut Vec<Hit>) {
        // (rule, start, end) windows; empty (no allocation) for most files.
        let mut windows: Vec<(usize, usize, usize)> = Vec::new();
        if let Some(ac) = &self.keywords {
            for m in ac.find_iter(data) {
                let Some(list) = self.keyword_rules.get(m.pattern().as_usize()) else {
                    continue;
                };
                for &r in list {
                    let w = self.rule(r).map_or(512, |rule| rule.window);
                    let start = line_start(data, m.start().saturating_sub(w));
                    let end = line_end(data, m.end().saturating_add(w).min(data.len()));
                    windows.push((r, start, end));
                }
            }
        }
        for &r in &self.unkeyed {
            windows.push((r, 0, data.len()));
        }
        if windows.is_empty() {
            return;
        }
        windows.sort_unstable();
        let mut merged: Vec<(usize, usize, usize)> = Vec::with_capacity(windows.len());
        for (r, s, e) in windows {
            match merged.last_mut() {
                Some(last) if last.0 == r && s <= last.2 => last.2 = last.2.max(e),
                _ => merged.push((r, s, e)),
            }
        }
        for (r, s, e) in merged {
            let (Some(rule), Some(c), Some(window)) =
                (self.rules.get(r), self.compiled.get(r), data.get(s..e))
            else {
                continue;
            };
            for caps in c.regex.captures_iter(window) {
                let Some(whole) = caps.get(0) else { continue };
                let secret = c.secret_group.and_then(|g| caps.get(g)).unwrap_or(whole);
                let (ms, me) = (s + whole.start(), s + whole.end());
                let (ss, se) = (s + secret.start(), s + secret.end());
                if !valid(rule, secret.as_bytes(), data, ss, se) {
                    continue;
                }
                hits.push(Hit {
                    rule: r,
                    start: ms,
                    secret_start: ss,
                    secret_end: se,
                    secret: secret.as_bytes().to_vec(),
                    redacted: redacted_match(data, ms, me, ss, se),
                    decoded: false,
                });
            }
        }
        // A match may begin with a delimiter the pattern consumed: report
        // the secret's own position when the delimiter is before it.
        for h in hits.iter_mut() {
            if h.start < h.secret_start
                && data
                    .get(h.start)
                    .is_some_and(|b| !b.is_ascii_alphanumeric() && *b != b'-' && *b != b'"')
            {
                h.start += 1;
            }
        }
    }

    /// Decodes runs of ≥ 32 base64 characters that decode to mostly
    /// printable text, scans them (no further decoding) and reports hits at
    /// the run's position.
    fn base64_hits(&self, data: &[u8], hits: &mut Vec<Hit>) {
        // Skip search: a run of ≥ 32 containing none of the bytes probed at
        // i + 31 cannot start in i..=i+31, so text with spaces and
        // punctuation is crossed 32 bytes per probe. Invariant: the byte
        // before `i` is not base64 (or `i` is 0).
        let b64 = |at: usize| data.get(at).is_some_and(|&b| is_base64_byte(b));
        let mut i = 0usize;
        while i + MIN_BASE64_RUN <= data.len() {
            let probe = i + MIN_BASE64_RUN - 1;
            if !b64(probe) {
                i = probe + 1;
                continue;
            }
            let mut start = probe;
            while start > i && b64(start - 1) {
                start -= 1;
            }
            let mut end = probe + 1;
            while b64(end) {
                end += 1;
            }
            if end - start >= MIN_BASE64_RUN {
                self.decode_run(data, start, end, hits);
            }
            i = end + 1;
        }
    }

    fn decode_run(&self, data: &[u8], start: usize, end: usize, hits: &mut Vec<Hit>) {
        let Some(run) = data.get(start..end) else {
            return;
        };
        // Hex digests and binary blobs are common and never decode to text:
        // reject them on a short prefix before decoding the whole run.
        if run.iter().all(|b| b.is_ascii_hexdigit()) {
            return;
        }
        if run.len() > 2 * PROBE_LEN {
            let probe = run.get(..PROBE_LEN).and_then(decode_base64);
            if !probe.is_some_and(|p| mostly_printable(&p)) {
                return;
            }
        }
        let Some(decoded) = decode_base64(run) else {
            return;
        };
        if !mostly_printable(&decoded) {
            return;
        }
        for inner in self.hits(&decoded, false) {
            hits.push(Hit {
                start,
                secret_start: start,
                secret_end: end,
                decoded: true,
                ..inner
            });
        }
    }

    /// Turns hits into findings, computing lines and columns in one pass.
    pub(crate) fn to_findings(&self, path: &str, data: &[u8], mut hits: Vec<Hit>) -> Vec<Finding> {
        hits.sort_by_key(|h| (h.start, h.rule));
        let mut out = Vec::with_capacity(hits.len());
        let mut line = 1u64;
        let mut line_begin = 0usize;
        let mut pos = 0usize;
        for h in hits {
            let Some(rule) = self.rule(h.rule) else {
                continue;
            };
            let target = h.start.min(data.len());
            if let Some(between) = data.get(pos..target) {
                for nl in memchr::memchr_iter(b'\n', between) {
                    line += 1;
                    line_begin = pos + nl + 1;
                }
            }
            pos = pos.max(target);
            let column = data
                .get(line_begin..target)
                .map_or(0, |s| s.iter().filter(|b| (**b & 0xC0) != 0x80).count())
                as u64
                + 1;
            out.push(Finding {
                rule_id: rule.id.to_owned(),
                rule_name: rule.name.to_owned(),
                severity: rule.severity,
                fingerprint: fingerprint(rule.id, &h.secret),
                path: path.to_owned(),
                line,
                column,
                commit: None,
                redacted: h.redacted,
                decoded: h.decoded.then(|| "base64".to_owned()),
                secret: String::from_utf8_lossy(&h.secret).into_owned(),
            });
        }
        out
    }

    /// One line with every secret (or base64 run holding one) redacted,
    /// and the findings in it (line number left to the caller).
    pub(crate) fn redact_line(&self, line: &[u8]) -> (Vec<u8>, Vec<Finding>) {
        let hits = self.hits(line, true);
        if hits.is_empty() {
            return (line.to_vec(), Vec::new());
        }
        let mut spans: Vec<(usize, usize)> = hits
            .iter()
            .map(|h| (h.secret_start, h.secret_end))
            .collect();
        spans.sort_unstable();
        let mut out = Vec::with_capacity(line.len());
        let mut pos = 0usize;
        for (s, e) in spans {
            if s < pos {
                // Overlaps a span already redacted: extend it.
                pos = pos.max(e);
                continue;
            }
            out.extend_from_slice(line.get(pos..s).unwrap_or_default());
            let secret = String::from_utf8_lossy(line.get(s..e).unwrap_or_default()).into_owned();
            out.extend_from_slice(redact(&secret).as_bytes());
            pos = e;
        }
        out.extend_from_slice(line.get(pos..).unwrap_or_default());
        let findings = self.to_findings("<stdin>", line, hits);
        (out, findings)
    }
}

/// Whether a regex match passes the rule's checks.
fn valid(rule: &Rule, secret: &[u8], data: &[u8], start: usize, end: usize) -> bool {
    if secret.is_empty() || entropy(secret) < rule.min_entropy {
        return false;
    }
    if rule.reject_placeholders && looks_like_placeholder(secret) {
        return false;
    }
    if rule.generic
        && !(secret.iter().any(u8::is_ascii_digit) && secret.iter().any(u8::is_ascii_alphabetic))
    {
        return false;
    }
    if !rule.context.is_empty() {
        let from = start.saturating_sub(CONTEXT_SPAN);
        let to = end.saturating_add(CONTEXT_SPAN).min(data.len());
        let around = data.get(from..to).unwrap_or_default();
        if !rule
            .context
            .iter()
            .any(|w| contains_ignore_case(around, w.as_bytes()))
        {
            return false;
        }
    }
    true
}

/// Shannon entropy in bits per byte.
pub(crate) fn entropy(s: &[u8]) -> f64 {
    if s.is_empty() {
        return 0.0;
    }
    let mut counts = [0u32; 256];
    for &b in s {
        if let Some(c) = counts.get_mut(usize::from(b)) {
            *c += 1;
        }
    }
    let n = s.len() as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / n;
            -p * p.log2()
        })
        .sum()
}

/// Values people write instead of a real secret.
fn looks_like_placeholder(secret: &[u8]) -> bool {
    const CONTAINS: &[&str] = &[
        "example",
        "xxxx",
        "changeme",
        "change_me",
        "change-me",
        "placeholder",
        "your_",
        "your-",
        "yourpass",
        "dummy",
        "sample",
        "redacted",
        "****",
        "${",
        "{{",
        "}}",
        "%(",
        "<",
        ">",
        "replace",
        "insert",
        "fixme",
        "todo",
        "secret_here",
        "goes_here",
        "here",
        "process.env",
        "os.environ",
        "getenv",
    ];
    const EXACT: &[&str] = &[
        "password", "passwd", "pass", "secret", "guest", "admin", "root", "test", "user",
        "changeit", "letmein", "qwerty", "12345678", "none", "null", "true", "false",
    ];
    let lower = String::from_utf8_lossy(secret).to_ascii_lowercase();
    if lower.starts_with('$') || lower.starts_with('%') || lower.starts_with('{') {
        return true;
    }
    if CONTAINS.iter().any(|p| lower.contains(p)) || EXACT.contains(&lower.as_str()) {
        return true;
    }
    let first = secret.first();
    secret.iter().all(|b| Some(b) == first)
}

/// At least 90% printable ASCII or whitespace: text worth scanning.
fn mostly_printable(bytes: &[u8]) -> bool {
    let printable = bytes
        .iter()
        .filter(|b| matches!(b, 0x20..=0x7e | b'\t' | b'\n' | b'\r'))
        .count();
    printable * 100 >= bytes.len() * 90
}

fn contains_ignore_case(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty()
        && haystack
            .windows(needle.len())
            .any(|w| w.eq_ignore_ascii_case(needle))
}

/// Bytes of the standard and URL-safe base64 alphabets, and padding.
#[expect(
    clippy::indexing_slicing,
    reason = "const evaluation: `b < 256` by the loop bound, checked at compile time"
)]
const BASE64_BYTES: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric() || matches!(c, b'+' | b'/' | b'-' | b'_' | b'=');
        b += 1;
    }
    t
};

#[inline]
fn is_base64_byte(b: u8) -> bool {
    BASE64_BYTES.get(usize::from(b)).copied().unwrap_or(false)
}

/// Decodes a run in the standard or URL-safe alphabet, padding optional.
fn decode_base64(run: &[u8]) -> Option<Vec<u8>> {
    let trimmed: &[u8] = {
        let end = run.iter().rposition(|&b| b != b'=').map_or(0, |p| p + 1);
        run.get(..end)?
    };
    if trimmed.contains(&b'=') {
        return None;
    }
    // Drop a dangling sixth-of-a-byte so a run cut short still decodes.
    let usable = if trimmed.len() % 4 == 1 {
        trimmed.len() - 1
    } else {
        trimmed.len()
    };
    let body = trimmed.get(..usable)?;
    let url_safe = body.iter().any(|&b| b == b'-' || b == b'_');
    let standard = body.iter().any(|&b| b == b'+' || b == b'/');
    if url_safe && standard {
        return None;
    }
    if url_safe {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(body)
            .ok()
    } else {
        base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(body)
            .ok()
    }
}

fn line_start(data: &[u8], at: usize) -> usize {
    let floor = at.saturating_sub(LINE_STRETCH);
    data.get(floor..at)
        .and_then(|s| memchr::memrchr(b'\n', s))
        .map_or(floor, |p| floor + p + 1)
}

fn line_end(data: &[u8], at: usize) -> usize {
    let ceil = at.saturating_add(LINE_STRETCH).min(data.len());
    data.get(at..ceil)
        .and_then(|s| memchr::memchr(b'\n', s))
        .map_or(ceil, |p| at + p)
}

/// The match with its secret redacted, control characters flattened and
/// long prefixes or suffixes shortened.
fn redacted_match(data: &[u8], ms: usize, me: usize, ss: usize, se: usize) -> String {
    let text = |a: usize, b: usize| {
        String::from_utf8_lossy(data.get(a..b).unwrap_or_default()).into_owned()
    };
    let before: Vec<char> = text(ms, ss).chars().collect();
    let before: String = before
        .iter()
        .skip(before.len().saturating_sub(REDACTED_AFFIX))
        .collect();
    let after: String = text(se, me).chars().take(REDACTED_AFFIX).collect();
    let out = format!("{before}{}{after}", redact(&text(ss, se)));
    out.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn entropy_of_uniform_and_constant() {
        assert!(entropy(b"aaaaaaaa") < 0.01);
        assert!((entropy(b"abcdefgh") - 3.0).abs() < 1e-9);
    }

    #[test]
    fn base64_runs_decode_in_both_alphabets() {
        assert_eq!(decode_base64(b"aGVsbG8gd29ybGQ=").unwrap(), b"hello world");
        assert_eq!(decode_base64(b"-_-_").unwrap(), vec![0xfb, 0xff, 0xbf]);
        assert!(decode_base64(b"ab+_").is_none());
    }

    #[test]
    fn base64_runs_are_found_at_every_offset_and_length() {
        let engine = Engine::new(crate::rules::builtin());
        let secret = "ghp_Zq8vR2mXk4T9wLp0Bn6Hy3Jd7Fs1Ce5Ga9Ku";
        for pad in 0..40 {
            let line = format!("T={secret}{}", " ".repeat(pad % 5));
            let enc = base64::engine::general_purpose::STANDARD.encode(&line);
            for prefix in ["", "x ", "abc def ", &"word ".repeat(pad)] {
                let data = format!("{prefix}{enc}");
                let hits = engine.hits(data.as_bytes(), true);
                assert!(
                    hits.iter()
                        .any(|h| h.decoded && h.secret == secret.as_bytes()),
                    "pad {pad} prefix {prefix:?}"
                );
                let h = hits.iter().find(|h| h.decoded).unwrap();
                assert_eq!(h.start, prefix.len());
                assert_eq!(h.secret_end, data.len());
            }
        }
        // Base64 of text too short to reach 32 characters is not decoded.
        let short = base64::engine::general_purpose::STANDARD.encode("T=ghp_Zq8vR2mX");
        assert!(short.len() < 32);
        assert!(engine.hits(short.as_bytes(), true).is_empty());
    }

    #[test]
    fn placeholders_are_recognised() {
        for p in [
            "${DB_PASSWORD}",
            "changeme",
            "<your-key>",
            "XXXXXXXX",
            "password",
        ] {
            assert!(looks_like_placeholder(p.as_bytes()), "{p}");
        }
        assert!(!looks_like_placeholder(b"q8Zr2LmP0vX7tY4w"));
    }
}
