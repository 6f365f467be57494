"""The embedded database: a SecantusDB server run as a child process.

SecantusDB speaks the MongoDB wire protocol, so the rest of the code only ever
sees a `mongodb://` URI. We never import it (it is GPL); we run its launcher.

One data directory must never get two database processes. The process that
starts the database writes `DATA_DIR/db.lock.json` (pid + port); anyone else
(the CLI while the server runs, a second server) finds it, checks the pid is
alive and the port answers, and connects instead of starting another.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

log = logging.getLogger("sheda.db")


class EmbeddedDatabaseError(RuntimeError):
    pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def launcher_path() -> str:
    found = shutil.which("secantusd-py")
    if found:
        return found
    beside = Path(sys.executable).parent / "secantusd-py"
    if beside.exists():
        return str(beside)
    raise EmbeddedDatabaseError("the embedded database is not installed: run `pip install -r requirements.txt` (package secantusdb)")


def _ping(uri: str, timeout: float) -> bool:
    from pymongo import MongoClient  # sync client: this runs before the event loop
    from pymongo.errors import PyMongoError

    client = MongoClient(uri, serverSelectionTimeoutMS=int(timeout * 1000), connectTimeoutMS=int(timeout * 1000))
    try:
        client.admin.command("ping")
        return True
    except PyMongoError:
        return False
    finally:
        client.close()


@dataclass
class EmbeddedDatabase:
    data_dir: Path
    port: int = 0
    process: subprocess.Popen | None = None
    owned: bool = False
    oplog_max_entries: int | None = None  # its --oplog-max-entries (None: its default, 100,000)

    @property
    def lock_path(self) -> Path:
        return self.data_dir / "db.lock.json"

    @property
    def uri(self) -> str:
        # retryWrites=false: this is one node on loopback, with no failover for a retry
        # to ride out. A retry could only reach it after the watchdog restarted it, and
        # its records of executed retryable writes are kept in its memory, so such a
        # retry could apply a write twice. Keeping those records also costs it a walk
        # over the last 10,000 of them on every write: 43% of its CPU when storing
        # 1,000 messages/s in batches of 4 (py-spy). Our callers see the error instead
        # (a 503, a store_failed frame; chat resends are idempotent by client_msg_id).
        # A MONGODB_URI keeps the driver's default (retryable writes on).
        return f"mongodb://127.0.0.1:{self.port}/?directConnection=true&retryWrites=false"

    def running_instance(self) -> int | None:
        """Port of a live database already serving this data directory, if any."""
        try:
            info = json.loads(self.lock_path.read_text())
        except (OSError, ValueError):
            return None
        pid, port = info.get("pid"), info.get("port")
        if isinstance(pid, int) and isinstance(port, int) and _pid_alive(pid) and _port_open(port):
            return port
        return None

    def start(self, timeout: float = 60.0) -> str:
        """Connect to the database of this data directory, starting it if nobody runs it."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        existing = self.running_instance()
        if existing:
            self.port = existing
            log.info(json.dumps({"event": "embedded_db_reused", "port": existing}))
            return self.uri
        self.port = _free_port()
        self.process = self._spawn()
        self.owned = True
        if self._wait_ready(timeout):
            log.info(json.dumps({"event": "embedded_db_started", "port": self.port, "pid": self.process.pid}))
            self.trim_oplog()
            return self.uri
        if self.process.poll() is not None:
            raise EmbeddedDatabaseError(f"the embedded database exited with code {self.process.returncode}; see {self.data_dir / 'db.log'}")
        self.stop()
        raise EmbeddedDatabaseError(f"the embedded database did not answer within {timeout:.0f}s; see {self.data_dir / 'db.log'}")

    def _spawn(self) -> subprocess.Popen:
        storage = self.data_dir / "db"
        storage.mkdir(parents=True, exist_ok=True)
        logfile = open(self.data_dir / "db.log", "ab")
        cmd = [launcher_path(), "--host", "127.0.0.1", "--port", str(self.port), "--storage-path", str(storage), "--log-level", "WARNING"]
        if self.oplog_max_entries is not None:
            cmd += ["--oplog-max-entries", str(self.oplog_max_entries)]
        # Own process group: a Ctrl-C on the terminal reaches us, and we stop the child in order.
        try:
            return subprocess.Popen(cmd, stdout=logfile, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        finally:
            logfile.close()

    def _wait_ready(self, timeout: float, should_stop: Callable[[], bool] = lambda: False) -> bool:
        """Until the process answers a ping (True; the lock file then names it), exits,
        times out or should_stop() (False)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not should_stop():
            if self.process.poll() is not None:
                return False
            if _port_open(self.port) and _ping(self.uri, 2.0):
                self.lock_path.write_text(json.dumps({"pid": self.process.pid, "port": self.port}))
                return True
            time.sleep(0.1)
        return False

    def trim_oplog(self) -> int:
        """Drop the oplog entries past its cap or older than its retention (an hour) now, before
        anyone is served: the database would otherwise drop them all at the first of its own trims
        (every 1,000 writes), holding its storage lock meanwhile: 0.83 s for 28,800 entries an hour
        old, measured in the chat benchmark's first second. Returns how many were dropped."""
        from pymongo import MongoClient  # sync client: this runs before the event loop (or in the watchdog's thread)
        from pymongo.errors import PyMongoError

        client = MongoClient(self.uri, serverSelectionTimeoutMS=10_000, socketTimeoutMS=600_000)
        started = time.monotonic()
        try:
            dropped = int(client.admin.command({TRIM_COMMAND: 1}).get("pruned", 0))
        except PyMongoError as exc:
            log.warning(json.dumps({"event": "embedded_oplog_trim_failed", "error": f"{type(exc).__name__}: {exc}"[:300]}))
            return 0
        finally:
            client.close()
        if dropped:
            log.info(json.dumps({"event": "embedded_oplog_trimmed", "rows": dropped, "seconds": round(time.monotonic() - started, 3)}))
        return dropped

    # ---- the watchdog ------------------------------------------------------
    # If the database process dies (a crash, the OOM killer, a stray kill), the
    # server keeps running and answers 503 / database_unavailable meanwhile; the
    # process that started the database starts it again on the same port and the
    # same storage (WiredTiger recovers its journal), and the driver reconnects
    # by itself. Single process: an asyncio task polls (`watch`); with workers the
    # supervisor sees the exit in its os.wait() and calls `recover`.

    def exited(self) -> bool:
        return self.owned and self.process is not None and self.process.poll() is not None

    def recover(self, should_stop: Callable[[], bool] = lambda: False) -> bool:
        """Start the database again on the same port until it answers (True) or
        should_stop() (False); backs off from 0.5 s to 30 s between attempts."""
        delay = 0.5
        while not should_stop():
            code = self.process.returncode if self.process.returncode is not None else self.process.poll()
            log.error(json.dumps({"event": "embedded_db_exited", "pid": self.process.pid, "code": code, "restarting": True}))
            self.process = self._spawn()
            if self._wait_ready(60.0, should_stop):
                log.warning(json.dumps({"event": "embedded_db_restarted", "port": self.port, "pid": self.process.pid}))
                return True  # (its oplog: the server's trimmer, within 100 writes or 10 s; a trim here could hold this thread)
            if self.process.poll() is None:  # hung rather than exited: make room for the next attempt
                self.process.kill()
                self.process.wait()
            end = time.monotonic() + delay
            while time.monotonic() < end and not should_stop():
                time.sleep(0.1)
            delay = min(delay * 2, 30.0)
        return False

    async def watch(self, interval: float = 0.5) -> None:
        """Single-process watchdog (cancel it at shutdown)."""
        stopping = threading.Event()
        loop = asyncio.get_running_loop()
        try:
            while True:
                await asyncio.sleep(interval)
                if self.exited():
                    await loop.run_in_executor(None, self.recover, stopping.is_set)
        finally:
            stopping.set()

    def stop(self, timeout: float = 20.0) -> None:
        if not self.owned or self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        try:
            info = json.loads(self.lock_path.read_text())
            if info.get("pid") == self.process.pid:
                self.lock_path.unlink()
        except (OSError, ValueError):
            pass
        log.info(json.dumps({"event": "embedded_db_stopped"}))
        self.owned = False


# SecantusDB's own command: drop the oplog entries past its cap or retention (what it does by
# itself after every 1,000 writes). Sent through the driver like any command, only to the
# embedded database (a MongoDB replica set sizes its oplog itself).
TRIM_COMMAND = "secantusAdmin.pruneOplog"


class OplogTrimmer:
    """Keeps the embedded database's operation log trimmed in small slices.

    Why: the embedded database trims its oplog itself after every 1,000 writes. Once the log is
    full (EMBEDDED_OPLOG_MAX_ENTRIES entries, or entries an hour old: any server that has run
    for a while), each of those trims drops the ~1,000 oldest entries in one go while holding its
    storage lock: measured, 22 ms during which no write is answered, once a second at 1,000
    chat messages/s (a trim costs ~1 ms plus ~22 us per row dropped). Asked every `rows`
    chat writes instead (default 100: 3.5 ms), the database's own trim finds almost nothing
    left to do. While the log is not full yet, a trim drops nothing and only costs its ~1 ms:
    then the next one waits for IDLE_FACTOR times as many writes. With no writes, a trim every
    IDLE_SECONDS drops entries as they pass the hour, so a quiet night is not followed by one
    long trim at the first morning message.

    `written()` is how many documents this process's chat has stored so far (messages and
    stream events: sheda_rt/chat/batcher.py), the writes that fill the log.
    """

    TICK = 0.1
    IDLE_SECONDS = 10.0
    IDLE_FACTOR = 10

    def __init__(self, client, written: Callable[[], int], rows: int):
        self.client = client
        self.written = written
        self.rows = rows

    async def run(self) -> None:
        from pymongo.errors import OperationFailure, PyMongoError

        from sheda_rt.metrics import OPLOG_TRIMMED

        loop = asyncio.get_running_loop()
        seen, last = self.written(), loop.time()
        every = self.rows
        warned = -60.0
        while True:
            await asyncio.sleep(self.TICK)
            count, now = self.written(), loop.time()
            busy = count - seen >= every
            if not busy and now - last < self.IDLE_SECONDS:
                continue
            seen, last = count, now
            try:
                reply = await self.client.admin.command({TRIM_COMMAND: 1})
                dropped = int(reply.get("pruned") or 0)
            except OperationFailure as exc:
                if exc.code == 59:  # CommandNotFound: a database that does not have it trims by itself
                    log.warning(json.dumps({"event": "embedded_oplog_trim_unsupported"}))
                    return
                if now - warned >= 60:
                    warned = now
                    log.warning(json.dumps({"event": "embedded_oplog_trim_failed", "error": str(exc)[:300]}))
            except PyMongoError:
                pass  # unreachable (the watchdog restarts it): again after the next slice or idle period
            except Exception:  # never let the loop die unseen
                if now - warned >= 60:
                    warned = now
                    log.exception("embedded oplog trim failed")
            else:
                OPLOG_TRIMMED.observe(dropped)
                if busy:  # (an idle trim that drops nothing says nothing about a log full by count)
                    every = self.rows if dropped else self.rows * self.IDLE_FACTOR
