"""Helpers shared by the ``test_server_*`` and ``test_cli`` modules: a real ``rtseg serve``
started as a subprocess on a free port (real Ray, real gRPC), stopped gracefully.

One server per test module (Ray takes seconds to start); tests reset it between them with the
Reset RPC (``--allow-reset``). The few self-tests here need no Ray.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

READY = re.compile(r"rtseg serving on ([\d.]+):(\d+)")
TOKEN = "s3cret-token"


class ServerProcess:
    """``rtseg serve --port 0 ARGS...`` in its own session; ``target`` once it serves."""

    def __init__(self, workdir: Path, *args: str, env: dict | None = None,
                 start_timeout_s: float = 420.0):
        self.workdir = Path(workdir)
        self.stderr_path = self.workdir / "serve.stderr"
        full_env = dict(os.environ)
        full_env.pop("RAY_ADDRESS", None)
        for key in [k for k in full_env if k.startswith("RTSEG_")]:
            del full_env[key]
        full_env.update(env or {})
        cmd = [sys.executable, "-m", "engine.cli", "serve", "--host", "127.0.0.1", "--port", "0",
               "--data-dir", str(self.workdir / "data"), *args]
        if "--console-port" not in args:      # many servers side by side: none takes 8080
            cmd.append("--no-console")
        self._stderr = open(self.stderr_path, "w")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self._stderr, text=True,
                                     cwd=self.workdir, env=full_env, start_new_session=True)
        self.target = self._wait_ready(start_timeout_s)

    def _wait_ready(self, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        out = self.proc.stdout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            ready, _, _ = select.select([out], [], [], 0.5)
            if not ready:
                continue
            line = out.readline()
            m = READY.search(line or "")
            if m:
                return f"{m.group(1)}:{m.group(2)}"
        self.stop()
        raise RuntimeError(f"rtseg serve did not start; stderr:\n{self.stderr_tail()}")

    def stderr_tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.stderr_path.read_text().splitlines()[-n:])
        except OSError:
            return ""

    def stop(self, timeout_s: float = 60.0) -> int | None:
        """SIGTERM (graceful: the server shuts its Ray down), then SIGKILL of its session."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                pass
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)   # the session this test started
            except ProcessLookupError:
                pass
            self.proc.wait(10)
        self._stderr.close()
        if self.proc.stdout:
            self.proc.stdout.close()
        return self.proc.returncode


def start_server(tmp_path_factory, *args: str, env: dict | None = None) -> ServerProcess:
    return ServerProcess(tmp_path_factory.mktemp("rtseg-serve"), *args, env=env)


@contextlib.contextmanager
def served_engine_factory(tmp_path_factory, shards: int = 1, *extra_args: str):
    """``engine_factory`` for the execution-mode fixtures: a served engine (real Ray, real
    gRPC) whose every ``make(...)`` is a fresh engine (the Reset RPC), reached through
    ``engine.client.Client`` (the embedded Engine's method names). One server per use."""
    from engine.client import Client

    srv = start_server(tmp_path_factory, "--shards", str(shards), "--clock", "event",
                       "--allow-reset", *extra_args)
    client = Client(srv.target, timeout_s=120)

    def make(clock: str = "event", retention: str | int = "30d",
             max_events_per_type: int = 4096):
        return client.reset(clock, retention, max_events_per_type)

    try:
        yield make
    finally:
        client.close()
        srv.stop()


def make_self_signed(directory: Path, host: str = "127.0.0.1") -> tuple[Path, Path]:
    """A self-signed certificate for ``host`` (and localhost): -> (cert.pem, key.pem)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.IPAddress(ipaddress.ip_address(host)), x509.DNSName("localhost")]),
                critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = Path(directory) / "cert.pem", Path(directory) / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def wait_until(predicate, timeout_s: float = 10.0, interval_s: float = 0.01):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError("condition not reached in time")


# ----------------------------------------------------------------------------- self-tests


def test_ready_line_pattern():
    m = READY.search("rtseg serving on 127.0.0.1:40123 (shards=2, clock=event)")
    assert m and m.group(2) == "40123"


def test_self_signed_certificate(tmp_path):
    cert, key = make_self_signed(tmp_path)
    assert b"BEGIN CERTIFICATE" in cert.read_bytes()
    assert b"PRIVATE KEY" in key.read_bytes()


def test_server_process_reports_a_failed_start(tmp_path):
    with pytest.raises(RuntimeError, match="did not start"):
        ServerProcess(tmp_path, "--clock", "sideways", start_timeout_s=60)
