#!/usr/bin/env python3
"""Generates a deterministic source-like tree for bench/scan.sh.

    bench/scan_gen.py DIR SIZE_MB

Mostly code (~85% of lines), then log lines, and now and then config lines
with the words scanners key on (token, password, secret, api_key), URLs,
digests and base64 blobs, files of 4–64 KiB in nested
directories, and one planted fake credential per ~4 MB. Same seed, same tree.
"""
import base64
import os
import random
import string
import sys

rnd = random.Random(0x5CA9)
AN = string.ascii_letters + string.digits
WORDS = ("user account request response handler config session cache client server buffer "
         "stream value result error index count total item list map set parse build state").split()
# Line kinds and their weights: mostly code; config lines naming tokens,
# passwords and secrets, logs, digests, URLs and base64 blobs now and then.
KINDS = [0, 1, 2, 9, 12, 13] * 14 + [3] * 8 + [4, 5, 7, 10] * 1 + [6, 8, 11] * 1

def ident():
    return "_".join(rnd.choice(WORDS) for _ in range(rnd.randint(1, 3)))

def line():
    k = rnd.choice(KINDS)
    if k == 0:
        return f"fn {ident()}(&self, {ident()}: &str) -> Result<{ident().title()}, Error> {{"
    if k == 1:
        return f"    let {ident()} = self.{ident()}.get(&{ident()}).cloned().unwrap_or_default();"
    if k == 2:
        return f"    if {ident()}.len() > {rnd.randint(1, 9999)} {{ return Err(Error::TooLong); }}"
    if k == 3:
        return f"{rnd.randint(2020, 2026)}-0{rnd.randint(1, 9)}-1{rnd.randint(0, 9)}T12:{rnd.randint(10, 59)}:00Z INFO {ident()}: GET /api/v1/{ident()} 200 {rnd.random():.3f}ms"
    if k == 4:
        return f"{ident()}_token = get_token(\"{ident()}\")  # refreshed every {rnd.randint(1, 60)} minutes"
    if k == 5:
        return f"password_field = form.get(\"{ident()}\")"
    if k == 6:
        return f"# {ident()} {ident()} {ident()}: see https://docs.internal.example.com/{ident()}"
    if k == 7:
        return f"    \"{ident()}\": {{\"secret_ref\": \"vault:kv/{ident()}\", \"ttl\": {rnd.randint(60, 3600)}}},"
    if k == 8:
        return f"sha256:{rnd.getrandbits(256):064x}"
    if k == 9:
        return "    " + " ".join(rnd.choice(WORDS) for _ in range(rnd.randint(4, 14)))
    if k == 10:
        return f"api_key_header = \"X-{ident().title()}-Key\""
    if k == 11:
        return f"data = \"{base64.b64encode(rnd.randbytes(rnd.randint(24, 60))).decode()}\""
    if k == 12:
        return f"import {ident()}.{ident()} as {ident()}"
    return "}"

SECRETS = [
    lambda: "GITHUB_TOKEN=ghp_" + "".join(rnd.choice(AN) for _ in range(36)),
    lambda: "aws_access_key_id = AKIA" + "".join(rnd.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567") for _ in range(16)),
    lambda: "DATABASE_URL=postgres://app:" + "".join(rnd.choice(AN) for _ in range(20)) + "@db:5432/app",
    lambda: "SLACK=xoxb-123456789012-1234567890123-" + "".join(rnd.choice(AN) for _ in range(24)),
]

def main():
    root, size_mb = sys.argv[1], int(sys.argv[2])
    pool = [line() for _ in range(50000)]
    target = size_mb * 1024 * 1024
    written, n, next_secret, planted = 0, 0, 0, 0
    while written < target:
        d = os.path.join(root, f"pkg{n % 97:02d}", f"mod{n % 13:02d}")
        os.makedirs(d, exist_ok=True)
        want = rnd.randint(4096, 65536)
        lines, size = [], 0
        while size < want:
            chunk = rnd.choices(pool, k=64)
            lines.extend(chunk)
            size += sum(len(c) + 1 for c in chunk)
        if written >= next_secret:
            lines.insert(rnd.randrange(len(lines)), rnd.choice(SECRETS)())
            next_secret += 4 * 1024 * 1024
            planted += 1
        data = ("\n".join(lines) + "\n").encode()
        ext = ("rs", "py", "go", "yaml", "log", "json")[n % 6]
        with open(os.path.join(d, f"file{n:06d}.{ext}"), "wb") as f:
            f.write(data)
        written += len(data)
        n += 1
    print(f"generated {n} files, {written / 1e6:.0f} MB, {planted} planted secrets in {root}")

main()
