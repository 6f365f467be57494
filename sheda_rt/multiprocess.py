"""`python run.py --processes N`: N worker processes sharing one port.

The parent binds the listening sockets, forks N workers that each run the
normal single-process server on those sockets (the kernel spreads accepted
connections between them), and then only supervises:

- SIGTERM / SIGINT to the parent is forwarded to every worker, each of which
  shuts down gracefully (pending chat batches stored, sockets closed with 1001,
  in-flight requests finished); the parent returns once all have exited, and
  the launcher then stops the embedded database it started once for all.
- A worker that dies abnormally is restarted (up to MAX_RESTARTS in all), so a
  crash costs that worker's sockets, not the service. Clients reconnect and
  `sync`; the dead worker's users drop out of global presence when its Redis
  heartbeat lapses.

Workers share events, presence, limits and revocations through Redis
(REDIS_URL; the launcher refuses N > 1 without it) and data through the one
database URI the parent resolved. Their Prometheus metrics are aggregated
with prometheus_client's multiprocess mode: the parent creates a metrics
directory before anything imports prometheus_client, so `/metrics` on any
worker reports the sum over all of them (the open-sockets gauge over the live workers).

No event loop and no threads run in the parent before forking; the workers
build theirs after the fork.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import tempfile
import time

from config.settings import SettingsError

log = logging.getLogger("sheda.workers")

MAX_RESTARTS = 16
EXIT_SETTINGS = 2  # a worker refused a setting: not restarted; the supervisor stops the others and exits 2
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def prepare_metrics_dir() -> str | None:
    """Call before anything imports prometheus_client. Returns the directory we created
    (to remove at exit), or None when the operator set PROMETHEUS_MULTIPROC_DIR."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return None
    path = tempfile.mkdtemp(prefix="sheda-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    return path


def _worker_main(index: int, settings, uri: str, sockets, app_factory, embedded_db: bool = False) -> None:
    """In the child: run one ordinary server on the inherited sockets, then exit
    without unwinding into the parent's code (which would stop the database)."""
    code = 1
    try:
        for sig in _STOP_SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
        os.environ["SHEDA_WORKER"] = str(index)
        from sheda_rt.server import serve

        asyncio.run(serve(settings, uri=uri, app_factory=app_factory, sockets=sockets, embedded_db=embedded_db))
        code = 0
    except KeyboardInterrupt:
        code = 0
    except SettingsError as exc:  # a setting refused at start (a key that does not parse): every restart would fail alike
        print(f"sheda: {exc}", file=sys.stderr)
        code = EXIT_SETTINGS
    except BaseException:
        log.exception("worker %s failed", index)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


class Supervisor:
    def __init__(self, settings, uri: str, sockets, app_factory, embedded=None):
        self.settings, self.uri, self.sockets = settings, uri, sockets
        self.app_factory = app_factory  # each worker builds its own application after the fork
        self.embedded = embedded  # the embedded database this parent started, if any: restarted if it dies
        self.children: dict[int, int] = {}  # pid -> worker index
        self.stopping = False
        self.restarts = 0

    def spawn(self, index: int) -> None:
        # Stop signals stay blocked across fork so neither side runs a handler meant for the other.
        signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        try:
            pid = os.fork()
            if pid == 0:
                _worker_main(index, self.settings, self.uri, self.sockets, self.app_factory, self.embedded is not None)
            self.children[pid] = index
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
        log.info(json.dumps({"event": "worker_started", "worker": index, "pid": pid}))

    def stop_all(self, *_args) -> None:
        self.stopping = True
        for pid in list(self.children):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def run(self) -> int:
        for sig in _STOP_SIGNALS:
            signal.signal(sig, self.stop_all)
        for index in range(self.settings.processes):
            self.spawn(index)
        failed = settings_refused = False
        while self.children:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                break
            index = self.children.pop(pid, None)
            if index is None:
                db = self.embedded
                if db is not None and db.owned and db.process is not None and pid == db.process.pid:
                    db.process.returncode = os.waitstatus_to_exitcode(status)  # we reaped it, not Popen
                    if not self.stopping:
                        db.recover(lambda: self.stopping)
                continue  # not a worker
            self._forget_metrics(pid)
            code = os.waitstatus_to_exitcode(status)
            log.info(json.dumps({"event": "worker_exited", "worker": index, "pid": pid, "code": code}))
            if self.stopping or code == 0:
                continue
            if code == EXIT_SETTINGS:
                settings_refused = True
                self.stop_all()
                continue
            if self.restarts >= MAX_RESTARTS:
                log.error(json.dumps({"event": "workers_crashing", "restarts": self.restarts}))
                failed = True
                self.stop_all()
                continue
            self.restarts += 1
            time.sleep(min(0.1 * self.restarts, 2.0))
            if not self.stopping:
                self.spawn(index)
        return EXIT_SETTINGS if settings_refused else 1 if failed else 0

    @staticmethod
    def _forget_metrics(pid: int) -> None:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(pid)


def run_workers(settings, uri: str, app_factory, embedded=None) -> int:
    """The launcher's entry for N > 1 (it has checked REDIS_URL and resolved the database)."""
    import tornado.netutil

    sockets = tornado.netutil.bind_sockets(settings.port, settings.host)
    settings.jwt_secret_value()  # a generated secret is created once, here, not raced by the workers
    log.info(json.dumps({"event": "listening_shared", "host": settings.host, "port": sockets[0].getsockname()[1],
                         "processes": settings.processes, "pid": os.getpid()}))
    try:
        return Supervisor(settings, uri, sockets, app_factory, embedded).run()
    finally:
        for sock in sockets:
            sock.close()
