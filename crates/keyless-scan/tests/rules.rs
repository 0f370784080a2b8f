//! Every built-in rule reports its positive examples and no rule reports
//! any rule's negative examples.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use keyless_scan::Scanner;

#[test]
fn at_least_fifty_rules_all_compiled_with_examples() {
    let s = Scanner::new();
    // The count of `r(` rows in rules.rs: a rule whose regex does not
    // compile would be missing here.
    let source = include_str!("../src/rules.rs");
    let rows = source.matches("\n        r(\"").count();
    assert_eq!(s.rules().len(), rows, "a rule failed to compile");
    assert!(s.rules().len() >= 50, "only {} rules", s.rules().len());
    let mut ids = std::collections::HashSet::new();
    for r in s.rules() {
        assert!(ids.insert(r.id), "duplicate rule id {}", r.id);
        assert!(!r.positive.is_empty(), "{} has no positive example", r.id);
        assert!(!r.negative.is_empty(), "{} has no negative example", r.id);
        assert!(!r.keywords.is_empty(), "{} has no keyword", r.id);
    }
}

#[test]
fn every_rule_matches_its_positive_examples() {
    let s = Scanner::new();
    let mut failures = Vec::new();
    for r in s.rules() {
        for p in r.positive {
            let found = s.scan_bytes("example.txt", p.as_bytes());
            if !found.iter().any(|f| f.rule_id == r.id) {
                let ids: Vec<_> = found.iter().map(|f| f.rule_id.as_str()).collect();
                failures.push(format!("{}: missed {p:?} (found {ids:?})", r.id));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn no_rule_fires_on_any_negative_example() {
    let s = Scanner::new();
    let mut failures = Vec::new();
    for r in s.rules() {
        for n in r.negative {
            for f in s.scan_bytes("example.txt", n.as_bytes()) {
                failures.push(format!("{}'s negative {n:?} fired {}", r.id, f.rule_id));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn positives_are_found_inside_larger_text_too() {
    // The windowing must not lose a match far from the file start.
    let s = Scanner::new();
    let filler = "fn main() { println!(\"hello\"); }\n".repeat(500);
    for r in s.rules() {
        let p = r.positive[0];
        let text = format!("{filler}{p}\n{filler}");
        let found = s.scan_bytes("big.rs", text.as_bytes());
        let f = found.iter().find(|f| f.rule_id == r.id);
        assert!(f.is_some(), "{} lost in a big file", r.id);
        assert_eq!(f.unwrap().line, 501, "{} line", r.id);
    }
}
