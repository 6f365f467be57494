"""Run `python run.py ...` as a real process, the way an operator does."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

RUN_PY = str(Path(__file__).resolve().parent.parent / "run.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env_for(data_dir: Path, port: int | None = None, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("MONGODB_URI", "REDIS_URL", "JWT_SECRET", "PROCESSES")}
    env.update({"DATA_DIR": str(data_dir), "HOST": "127.0.0.1", "BCRYPT_ROUNDS": "4", "PYTHONUNBUFFERED": "1",
                # tests sign every user up from 127.0.0.1 (module-wide servers: the browser, the fuzzer)
                "REGISTRATIONS_PER_IP_PER_HOUR": "100000", "OTP_SENDS_PER_IP_PER_HOUR": "100000"})
    if port is not None:
        env["PORT"] = str(port)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run_cli(data_dir: Path, *args: str, env_extra: dict | None = None, stdin: str | None = None, timeout: float = 90):
    """One command to completion: (returncode, stdout, stderr)."""
    proc = subprocess.run([sys.executable, RUN_PY, *args], cwd=str(data_dir.parent), env=env_for(data_dir, **(env_extra or {})),
                          input=stdin, capture_output=True, text=True, timeout=timeout)
    return proc.returncode, proc.stdout, proc.stderr


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is dead for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False


class ServerProcess:
    """`python run.py` on a free port with its own DATA_DIR; always stopped by pid."""

    def __init__(self, data_dir: Path, **env_extra):
        self.data_dir = data_dir
        self.port = free_port()
        self.env = env_for(data_dir, self.port, **env_extra)
        self.proc: subprocess.Popen | None = None
        self.log_path = data_dir.parent / f"server-{self.port}.log"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 90) -> "ServerProcess":
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([sys.executable, RUN_PY], cwd=str(self.data_dir.parent), env=self.env,
                                     stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}: {self.output()}")
            try:
                status, body = self.get("/health/ready")
                if status == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"server not ready within {timeout}s: {self.output()}")

    def get(self, path: str) -> tuple[int, dict]:
        return self.request("GET", path)

    def request(self, method: str, path: str, body: dict | None = None, token: str | None = None) -> tuple[int, dict]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base_url + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                raw = resp.read()
                return resp.status, (json.loads(raw) if raw else None)
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            return exc.code, (json.loads(raw) if raw else None)

    def db_pid(self) -> int | None:
        try:
            return json.loads((self.data_dir / "db.lock.json").read_text())["pid"]
        except (OSError, ValueError, KeyError):
            return None

    def stop(self, sig=signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            self.log.close()

    def kill(self) -> None:
        """Test cleanup: never leave a server or its database behind."""
        db_pid = self.db_pid()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if db_pid and pid_alive(db_pid):
            os.kill(db_pid, signal.SIGKILL)
        if not self.log.closed:
            self.log.close()

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""
