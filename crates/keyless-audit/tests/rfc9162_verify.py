#!/usr/bin/env python3
"""An RFC 9162 proof verifier written independently of the Rust crate.

Reads a JSON list of cases on stdin (see tests/proofs.rs), checks each with
the verification algorithms of RFC 9162 sections 2.1.3.2 and 2.1.4.2, and
exits non-zero if any case's outcome differs from its "expect" field.
Usable on its own: feed it proofs fetched from /audit/proof/*.
"""
import base64
import hashlib
import json
import sys


def node(left, right):
    return hashlib.sha256(b"\x01" + left + right).digest()


def verify_inclusion(leaf, index, size, proof, root):
    if index >= size:
        return False
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def verify_consistency(size1, size2, root1, root2, proof):
    if size1 == size2:
        return not proof and root1 == root2
    if size1 == 0 or size1 > size2 or not proof:
        return False
    path = list(proof)
    if size1 & (size1 - 1) == 0:
        path.insert(0, root1)
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node(c, fr)
            sr = node(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node(sr, c)
        fn >>= 1
        sn >>= 1
    return sn == 0 and fr == root1 and sr == root2


def main():
    cases = json.load(sys.stdin)
    d = base64.b64decode
    bad = 0
    for i, c in enumerate(cases):
        proof = [d(h) for h in c["proof"]]
        if c["kind"] == "inclusion":
            got = verify_inclusion(d(c["leaf"]), c["index"], c["size"], proof, d(c["root"]))
        else:
            got = verify_consistency(c["size1"], c["size2"], d(c["root1"]), d(c["root2"]), proof)
        if got != c["expect"]:
            bad += 1
            print(f"case {i} ({c['kind']}): got {got}, expected {c['expect']}")
    if bad:
        print(f"{bad} of {len(cases)} cases wrong")
        sys.exit(1)
    print(f"{len(cases)} cases ok")


if __name__ == "__main__":
    main()
