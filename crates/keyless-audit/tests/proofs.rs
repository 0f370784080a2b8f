//! Inclusion and consistency proofs produced by the crate, checked by a
//! verifier written separately (tests/common), by the crate's own RFC 9162
//! verifier, and by a Python verifier (tests/rfc9162_verify.py) when
//! python3 is installed. Negative cases check that tampered proofs fail.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use common::{check_consistency, check_inclusion};
use keyless_audit::merkle::{Hash, MerkleTree, leaf_hash};
use keyless_audit::{verify_consistency, verify_inclusion};

fn tree(n: u64) -> MerkleTree {
    MerkleTree::from_leaves((0..n).map(|i| leaf_hash(format!("entry {i}").as_bytes())))
}

fn flip(mut h: Hash) -> Hash {
    h[0] ^= 1;
    h
}

/// Checks one inclusion proof both ways, and that tampering breaks it.
fn check_incl(t: &MerkleTree, index: u64, size: u64) {
    let proof = t.inclusion_proof(index, size).unwrap();
    let root = t.root_at(size).unwrap();
    let leaf = *t.leaf(index).unwrap();
    assert!(
        check_inclusion(index, size, leaf, &proof, root),
        "independent: index {index} size {size}"
    );
    verify_inclusion(&leaf, index, size, &proof, &root).unwrap();
    // O(log n) hashes.
    assert!(proof.len() <= 64 - (size.leading_zeros() as usize) + 1);
    assert!(!check_inclusion(index, size, flip(leaf), &proof, root));
    assert!(verify_inclusion(&flip(leaf), index, size, &proof, &root).is_err());
    if !proof.is_empty() {
        let mut bad = proof.clone();
        bad[0] = flip(bad[0]);
        assert!(!check_inclusion(index, size, leaf, &bad, root));
        assert!(verify_inclusion(&leaf, index, size, &bad, &root).is_err());
        assert!(verify_inclusion(&leaf, index, size, &proof[1..], &root).is_err());
    }
    if size > 1 {
        let other = (index + 1) % size;
        assert!(
            verify_inclusion(&leaf, other, size, &proof, &root).is_err()
                || t.leaf(other) == Some(&leaf)
        );
    }
}

fn check_cons(t: &MerkleTree, m: u64, n: u64) {
    let proof = t.consistency_proof(m, n).unwrap();
    let (r1, r2) = (t.root_at(m).unwrap(), t.root_at(n).unwrap());
    assert!(
        check_consistency(m, n, r1, r2, &proof),
        "independent: {m} -> {n}"
    );
    verify_consistency(m, n, &r1, &r2, &proof).unwrap();
    if 0 < m && m < n {
        assert!(verify_consistency(m, n, &flip(r1), &r2, &proof).is_err());
        assert!(verify_consistency(m, n, &r1, &flip(r2), &proof).is_err());
        assert!(!check_consistency(m, n, flip(r1), r2, &proof));
        let mut bad = proof.clone();
        let last = bad.len() - 1;
        bad[last] = flip(bad[last]);
        assert!(verify_consistency(m, n, &r1, &r2, &bad).is_err());
        assert!(!check_consistency(m, n, r1, r2, &bad));
    }
}

#[test]
fn every_inclusion_and_consistency_proof_up_to_40_entries_verifies() {
    let t = tree(40);
    for size in 1..=40 {
        for index in 0..size {
            check_incl(&t, index, size);
        }
        for m in 0..=size {
            check_cons(&t, m, size);
        }
    }
}

#[test]
fn sampled_proofs_at_larger_sizes_verify() {
    let t = tree(70_001);
    for size in [1023, 1024, 1025, 4097, 65_536, 70_001] {
        for index in [0, 1, size / 3, size / 2, size - 2, size - 1] {
            check_incl(&t, index, size);
        }
        for m in [1, 2, 3, 1000, size / 2, size - 1, size] {
            check_cons(&t, m, size);
        }
    }
}

/// RFC 6962 test vectors (certificate-transparency reference code): the
/// roots of the trees over these eight leaves.
#[test]
fn rfc6962_reference_roots() {
    let leaves: [&[u8]; 8] = [
        b"",
        b"\x00",
        b"\x10",
        b"\x20\x21",
        b"\x30\x31",
        b"\x40\x41\x42\x43",
        b"\x50\x51\x52\x53\x54\x55\x56\x57",
        b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f",
    ];
    let roots = [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];
    let t = MerkleTree::from_leaves(leaves.iter().map(|l| leaf_hash(l)));
    for (i, r) in roots.iter().enumerate() {
        assert_eq!(
            hex::encode(t.root_at(i as u64 + 1).unwrap()),
            *r,
            "size {}",
            i + 1
        );
    }
}

/// The Python verifier is a third implementation, in another language.
#[test]
fn python_verifier_accepts_good_proofs_and_rejects_bad_ones() {
    let python = std::process::Command::new("python3")
        .arg("--version")
        .output();
    if python.map(|o| !o.status.success()).unwrap_or(true) {
        eprintln!("SKIPPED python verifier: python3 not found");
        return;
    }
    let b64 = |h: &Hash| {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(h)
    };
    let t = tree(300);
    let mut cases = Vec::new();
    for size in [1u64, 2, 3, 7, 8, 9, 31, 64, 100, 255, 300] {
        for index in [0, size / 2, size - 1] {
            let proof = t.inclusion_proof(index, size).unwrap();
            let root = t.root_at(size).unwrap();
            for (good, leaf) in [
                (true, *t.leaf(index).unwrap()),
                (false, flip(*t.leaf(index).unwrap())),
            ] {
                cases.push(serde_json::json!({
                    "kind": "inclusion", "expect": good, "index": index, "size": size,
                    "leaf": b64(&leaf), "root": b64(&root),
                    "proof": proof.iter().map(b64).collect::<Vec<_>>(),
                }));
            }
        }
        for m in [1, size / 2, size - 1] {
            if m == 0 || m >= size {
                continue;
            }
            let proof = t.consistency_proof(m, size).unwrap();
            let (r1, r2) = (t.root_at(m).unwrap(), t.root_at(size).unwrap());
            for (good, old) in [(true, r1), (false, flip(r1))] {
                cases.push(serde_json::json!({
                    "kind": "consistency", "expect": good, "size1": m, "size2": size,
                    "root1": b64(&old), "root2": b64(&r2),
                    "proof": proof.iter().map(b64).collect::<Vec<_>>(),
                }));
            }
        }
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/rfc9162_verify.py");
    let mut child = std::process::Command::new("python3")
        .arg(script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(serde_json::to_string(&cases).unwrap().as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "python verifier disagreed:\n{text}");
    assert!(
        text.contains(&format!("{} cases ok", cases.len())),
        "{text}"
    );
}
