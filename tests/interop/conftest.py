"""Fixtures for the interop tests: real clients against a real `keyless up`.

Each test gets its own fabric (`keyless up` on a temporary data dir, HTTP on a
free loopback port, trust domain example.org), started with a bounded wait
for its `ready` line and always terminated afterwards, even when the test
fails. The binary is `$KEYLESS_BIN` (scripts/test sets it), else
`target/debug/keyless`.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import grpc
import pytest
import requests

from spiffe._proto import workload_pb2, workload_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]
TRUST_DOMAIN = "example.org"
READY_TIMEOUT = 30.0
CLI_TIMEOUT = 30.0
SECURITY_HEADER = ("workload.spiffe.io", "true")


def keyless_bin() -> Path:
    path = Path(os.environ.get("KEYLESS_BIN", ROOT / "target" / "debug" / "keyless"))
    if not path.is_absolute():
        path = ROOT / path
    return path


def free_port() -> int:
    """A loopback port nobody listens on right now (for servers that need one up front)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout: float, interval: float = 0.1, what: str = "condition"):
    """Polls `predicate` until it returns a truthy value; fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def stop_process(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds: never leaves a process behind."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=grace)


class CliResult:
    def __init__(self, args, completed: subprocess.CompletedProcess):
        self.args = args
        self.code = completed.returncode
        self.stdout = completed.stdout
        self.stderr = completed.stderr

    def ok(self) -> "CliResult":
        assert self.code == 0, f"`keyless {' '.join(self.args)}` exited {self.code}: {self.stderr.strip()}"
        return self


class Fabric:
    """One `keyless up` process on its own data dir."""

    def __init__(self, data_dir: Path, trust_domain: str | None = TRUST_DOMAIN):
        self.data_dir = data_dir
        self.trust_domain = trust_domain
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None
        self.base_url: str | None = None
        self.lines: list[str] = []
        self._ready = threading.Event()
        self._reader: threading.Thread | None = None
        self._stderr_file = None
        self.stderr_path: Path | None = None
        self._starts = 0
        # More `keyless up` flags (e.g. `--model anthropic`), kept across restarts.
        self.extra_args: list[str] = []

    # --- lifecycle ---

    def start(self, port: int | None = None, trust_domain: str | None = ..., expect_ready: bool = True):
        """Starts `keyless up`; with `port` None, on a free port (kept across restarts)."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        if port is None:
            port = self.port or free_port()
        td = self.trust_domain if trust_domain is ... else trust_domain
        args = [str(keyless_bin()), "up", "--data-dir", str(self.data_dir), "--listen", f"127.0.0.1:{port}"]
        if td is not None:
            args += ["--trust-domain", td]
        args += self.extra_args
        self.lines = []
        self._ready = threading.Event()
        self._starts += 1
        self.stderr_path = self.data_dir.parent / f"keyless-up-{self._starts}.stderr"
        self._stderr_file = open(self.stderr_path, "wb")
        env = dict(os.environ)
        env.pop("SPIFFE_ENDPOINT_SOCKET", None)
        env["NO_COLOR"] = "1"  # plain logs in failure messages
        self.proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr_file,
            env=env,
            text=True,
        )
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}"
        # A reader thread keeps draining stdout, so the fabric never blocks on a full pipe.
        self._reader = threading.Thread(target=self._read_stdout, args=(self.proc, self._ready), daemon=True)
        self._reader.start()
        if not expect_ready:
            return self
        deadline = time.monotonic() + READY_TIMEOUT
        while not self._ready.wait(0.05):
            if self.proc.poll() is not None:
                pytest.fail(f"keyless up exited {self.proc.returncode} before ready:\n{self.logs()}")
            if time.monotonic() >= deadline:
                self.stop()
                pytest.fail(f"keyless up printed no `ready` within {READY_TIMEOUT:.0f} s:\n{self.logs()}")
        return self

    def _read_stdout(self, proc: subprocess.Popen, ready: threading.Event):
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            self.lines.append(line)
            if line.strip() == "ready":
                ready.set()

    def stop(self):
        if self.proc is not None:
            stop_process(self.proc)
            if self._reader is not None:
                self._reader.join(timeout=5)
        if self._stderr_file is not None:
            self._stderr_file.close()
            self._stderr_file = None

    def restart(self, **kwargs):
        self.stop()
        return self.start(port=self.port, **kwargs)

    def logs(self) -> str:
        err = ""
        if self.stderr_path is not None and self.stderr_path.exists():
            err = self.stderr_path.read_text(errors="replace")[-4000:]
        return "stdout:\n" + "\n".join(self.lines) + "\nstderr (tail):\n" + err

    # --- addresses ---

    @property
    def socket_path(self) -> Path:
        return self.data_dir / "workload.sock"

    @property
    def socket_uri(self) -> str:
        return f"unix://{self.socket_path}"

    @property
    def spiffe_issuer(self) -> str:
        return f"{self.base_url}/spiffe"

    # --- CLI ---

    def cli(self, *args: str, timeout: float = CLI_TIMEOUT) -> CliResult:
        """Runs `keyless ARGS... --data-dir DIR` and captures its output."""
        argv = [*args, "--data-dir", str(self.data_dir)]
        env = dict(os.environ)
        env.pop("SPIFFE_ENDPOINT_SOCKET", None)
        completed = subprocess.run(
            [str(keyless_bin()), *argv],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
        )
        return CliResult(argv, completed)

    def create_entry(self, spiffe_id: str, *selectors: str, x509_ttl: str | None = None, jwt_ttl: str | None = None) -> str:
        args = ["entry", "create", "--spiffe-id", spiffe_id]
        for s in selectors:
            args += ["--selector", s]
        if x509_ttl:
            args += ["--x509-ttl", x509_ttl]
        if jwt_ttl:
            args += ["--jwt-ttl", jwt_ttl]
        result = self.cli(*args).ok()
        entry_id = result.stdout.strip()
        assert entry_id, "entry create printed no id"
        return entry_id

    def list_entries(self) -> list[dict]:
        import json

        return json.loads(self.cli("entry", "list", "--json").ok().stdout)

    def fetch_svid_files(self, out: Path) -> dict:
        """`keyless svid fetch --out DIR`: returns the paths and PEM certificates written."""
        out.mkdir(parents=True, exist_ok=True)
        result = self.cli("svid", "fetch", "--out", str(out)).ok()
        return {
            "spiffe_id": result.stdout.strip(),
            "svid": out / "svid.pem",
            "key": out / "svid.key",
            "bundle": out / "bundle.pem",
        }

    def fetch_jwt(self, *audiences: str) -> str:
        args = ["svid", "fetch"]
        for a in audiences:
            args += ["--audience", a]
        token = self.cli(*args).ok().stdout.strip()
        assert token.count(".") == 2, f"not a compact JWS: {token!r}"
        return token

    def get(self, path: str, **kwargs) -> requests.Response:
        kwargs.setdefault("timeout", 10)
        return requests.get(self.base_url + path, **kwargs)


# --- fixtures ---------------------------------------------------------------


@pytest.fixture(scope="session", autouse=True)
def _binary_exists():
    path = keyless_bin()
    if not path.exists():
        pytest.fail(f"keyless binary not found at {path}: run `cargo build -p keyless` or set KEYLESS_BIN", pytrace=False)


@pytest.fixture
def fabric_factory(tmp_path_factory):
    """Makes fabrics on demand; every one is stopped at teardown, pass or fail."""
    made: list[Fabric] = []

    def make(trust_domain: str | None = TRUST_DOMAIN, start: bool = True) -> Fabric:
        base = tmp_path_factory.mktemp("fabric")
        f = Fabric(base / "data", trust_domain=trust_domain)
        made.append(f)
        if start:
            f.start()
        return f

    yield make
    for f in made:
        f.stop()


@pytest.fixture
def fabric(fabric_factory) -> Fabric:
    return fabric_factory()


@pytest.fixture
def own_uid_selector() -> str:
    return f"unix:uid:{os.getuid()}"


# --- Workload API helpers -----------------------------------------------------


class RawWorkloadApi:
    """The generated gRPC stub without py-spiffe's header interceptor, so a test
    controls the metadata and sees the exact status code and message."""

    def __init__(self, socket_path: Path):
        self.channel = grpc.insecure_channel(f"unix:{socket_path}")
        self.stub = workload_pb2_grpc.SpiffeWorkloadAPIStub(self.channel)

    def close(self):
        self.channel.close()

    @staticmethod
    def _metadata(with_header: bool):
        return [SECURITY_HEADER] if with_header else []

    def fetch_x509_svid(self, with_header: bool = True, timeout: float = 10):
        stream = self.stub.FetchX509SVID(
            workload_pb2.X509SVIDRequest(), metadata=self._metadata(with_header), timeout=timeout
        )
        try:
            return next(stream)
        finally:
            stream.cancel()

    def fetch_jwt_svid(self, audience, with_header: bool = True, timeout: float = 10):
        return self.stub.FetchJWTSVID(
            workload_pb2.JWTSVIDRequest(audience=list(audience)),
            metadata=self._metadata(with_header),
            timeout=timeout,
        )

    def validate_jwt_svid(self, token: str, audience: str, with_header: bool = True, timeout: float = 10):
        return self.stub.ValidateJWTSVID(
            workload_pb2.ValidateJWTSVIDRequest(audience=audience, svid=token),
            metadata=self._metadata(with_header),
            timeout=timeout,
        )


@pytest.fixture
def raw_api_factory():
    made: list[RawWorkloadApi] = []

    def make(fabric: Fabric) -> RawWorkloadApi:
        api = RawWorkloadApi(fabric.socket_path)
        made.append(api)
        return api

    yield make
    for api in made:
        api.close()


@pytest.fixture
def workload_client_factory():
    """py-spiffe WorkloadApiClients (closed at teardown), with a default deadline
    so a misbehaving server fails a test instead of hanging it."""
    from spiffe import WorkloadApiClient

    made = []

    def make(fabric: Fabric):
        client = WorkloadApiClient(socket_path=fabric.socket_uri, default_timeout=10)
        made.append(client)
        return client

    yield make
    for c in made:
        c.close()


# --- certificates ---------------------------------------------------------------

PEM_CERT_RE = re.compile(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----\n?", re.S)


def split_pem(path: Path) -> list[str]:
    return [m.group(0).rstrip("\n") + "\n" for m in PEM_CERT_RE.finditer(path.read_text())]


def load_certs(path: Path):
    from cryptography import x509

    return [x509.load_pem_x509_certificate(p.encode()) for p in split_pem(path)]


def openssl_bin() -> str:
    path = shutil.which("openssl")
    if not path:
        pytest.fail("openssl not found (scripts/test installs it)", pytrace=False)
    return path


def openssl_verify(leaf_and_chain: Path, bundle: Path, workdir: Path, *extra: str) -> subprocess.CompletedProcess:
    """`openssl verify` of the leaf in `leaf_and_chain` against the roots in
    `bundle`, with the chain's other certificates as untrusted intermediates."""
    certs = split_pem(leaf_and_chain)
    assert certs, f"no certificate in {leaf_and_chain}"
    workdir.mkdir(parents=True, exist_ok=True)
    leaf = workdir / "leaf.pem"
    leaf.write_text(certs[0])
    args = [openssl_bin(), "verify", "-CAfile", str(bundle)]
    if len(certs) > 1:
        inter = workdir / "intermediates.pem"
        inter.write_text("".join(certs[1:]))
        args += ["-untrusted", str(inter)]
    args += [*extra, str(leaf)]
    return subprocess.run(args, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
