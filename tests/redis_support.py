"""Real processes for the multi-process tests: a redis-server on a free port, and
Sheda RT servers started as `python run.py` subprocesses, as an operator would.

Fixtures here are imported by the test modules that need them (no conftest):
`redis_server` (one redis-server for the module) and `server_pair` (two server
processes on different ports sharing that Redis, the session's embedded
database and one DATA_DIR, so either process can read the OTP mail).
"""
from __future__ import annotations

import email
from contextlib import contextmanager
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from email import policy
from pathlib import Path

import pytest

from tests.support import Api, User, WsClient, unique

ROOT = Path(__file__).resolve().parent.parent
JWT_SECRET = "multiprocess-test-secret-" + "y" * 32


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def clean_env() -> dict:
    """This environment without settings that would leak into the servers we start."""
    return {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "MONGODB_URI", "MONGODB_DB", "PROMETHEUS_MULTIPROC_DIR")}


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.3):
            return True
    except OSError:
        return False


class RedisServer:
    """`redis-server --port P --save "" --appendonly no`: no persistence, so a restart is a clean, empty Redis."""

    def __init__(self, port: int | None = None):
        self.port = port or free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed: run the suite with tests/run.sh (it installs it)")
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not port_open(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


class ServerProcess:
    """One `python run.py` with its own PORT; everything else from `env`."""

    def __init__(self, env: dict, data_dir: Path, name: str, args: tuple = ()):
        self.port = free_port()
        self.name = name
        self.args = args
        self.data_dir = data_dir
        self.log_path = data_dir / f"{name}.log"
        self.env = {**clean_env(), **env, "PORT": str(self.port), "HOST": "127.0.0.1"}
        self.process: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/api/v1/chat/ws"

    def start(self, timeout: float = 60.0) -> "ServerProcess":
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen([sys.executable, "run.py", *self.args], cwd=ROOT, env=self.env,
                                        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(self.base_url + "/health", timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.name} did not answer /health within {timeout}s:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text()[-4000:]
        except OSError:
            return ""

    def signal(self, sig: int) -> None:
        self.process.send_signal(sig)

    def wait(self, timeout: float = 30.0) -> int:
        return self.process.wait(timeout)

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def server_env(embedded_db, redis: RedisServer | None, data_dir: Path, db_name: str, **extra) -> dict:
    env = {
        "DATA_DIR": str(data_dir), "MONGODB_DB": db_name, "JWT_SECRET": JWT_SECRET,
        "BCRYPT_ROUNDS": "4", "LOG_LEVEL": "INFO", "SHUTDOWN_GRACE_SECONDS": "5", "REDIS_HEARTBEAT_SECONDS": "1",
        # a module's servers share the limits in Redis, and every sign-up comes from 127.0.0.1
        "REGISTRATIONS_PER_IP_PER_HOUR": "100000", "OTP_SENDS_PER_IP_PER_HOUR": "100000",
    }
    if embedded_db is not None:  # else the server starts (or reuses) the embedded database of data_dir
        env["MONGODB_URI"] = embedded_db.uri
    if redis is not None:
        env["REDIS_URL"] = redis.url
    env.update({k: str(v) for k, v in extra.items()})
    return env


def otp_from_outbox(outbox: Path, address: str, timeout: float = 10.0) -> str:
    """The newest OTP mailed to `address` (the outbox mailer writes .eml files)."""
    deadline = time.monotonic() + timeout
    while True:
        found = []
        for path in outbox.glob("*.eml") if outbox.exists() else ():
            msg = email.message_from_bytes(path.read_bytes(), policy=policy.default)
            if (msg["To"] or "").lower() == address.lower():
                found.append((path.stat().st_mtime_ns, path.name, msg))
        if found:
            body = max(found, key=lambda f: (f[0], f[1]))[2].get_content()
            match = re.search(r"\b(\d{6})\b", body)
            assert match, f"no 6-digit code in: {body!r}"
            return match.group(1)
        if time.monotonic() > deadline:
            raise AssertionError(f"no mail to {address} in {outbox}")
        time.sleep(0.05)


class Remote:
    """A server process as a client sees it: REST, sign-up, sockets."""

    def __init__(self, server: ServerProcess):
        self.server = server
        self.api = Api(server.base_url)

    async def signup(self, user_type: str = "client") -> User:
        body = {"username": unique(user_type[0]), "email": f"{unique('e')}@example.com", "password": "correct-horse-1",
                "user_type": user_type}
        resp = await self.api.post("/api/v1/auth/register", body)
        assert resp.status == 201, resp
        otp = otp_from_outbox(self.server.data_dir / "outbox", body["email"])
        verified = await self.api.post("/api/v1/auth/verify-account", {"email": body["email"], "otp": otp})
        assert verified.status == 200, verified
        tokens = verified.json
        return User(id=resp.json["id"], username=body["username"], email=body["email"], password=body["password"],
                    user_type=user_type, access_token=tokens["access_token"], refresh_token=tokens["refresh_token"], data=resp.json)

    async def ws(self, token: str) -> WsClient:
        from tornado.httpclient import HTTPRequest
        from tornado.websocket import websocket_connect

        conn = await websocket_connect(HTTPRequest(f"{self.server.ws_url}?token={token}", request_timeout=10))
        return WsClient(conn)

    async def metrics(self) -> dict[tuple, float]:
        return parse_metrics((await self.api.get("/metrics")).body.decode())


def parse_metrics(text: str) -> dict[tuple, float]:
    """{(sample name, (sorted label items)): value} from the Prometheus text format."""
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


@pytest.fixture(scope="module")
def redis_server():
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def shared_dir():
    path = Path(tempfile.mkdtemp(prefix="sheda-mp-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def server_pair(embedded_db, redis_server, shared_dir):
    """Two server processes, different ports, one Redis, one database: one product."""
    env = server_env(embedded_db, redis_server, shared_dir, f"sheda_mp_{uuid.uuid4().hex[:8]}")
    with running_pair(env, shared_dir) as pair:
        yield pair


@contextmanager
def running_pair(env: dict, shared_dir, names=("a", "b")):
    """Two server processes on one environment (one Redis, one database), stopped however the block ends."""
    a, b = (ServerProcess(env, shared_dir, name) for name in names)
    try:
        a.start()
        b.start()
        yield a, b
    finally:
        a.stop()
        b.stop()
