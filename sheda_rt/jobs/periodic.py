"""A periodic trigger in the server's IOLoop: runs `run()` once at start (a server that
was down catches up at once) and then every `interval_ms`.

The jobs that need one (contract expiry, payment reconciliation) subclass it and say
what a run does; the timer, the stop, and the rule that a failed run never kills the
timer (the next tick tries again) live here once. Tests call `run()` directly with a
moved clock instead of waiting for a tick.
"""
from __future__ import annotations

import json
import logging

from tornado.ioloop import IOLoop, PeriodicCallback

from sheda_rt.errors import DATABASE_UNAVAILABLE, from_storage
from sheda_rt.metrics import JOB_RUNS

log = logging.getLogger("sheda.jobs")


class PeriodicTrigger:
    name = "periodic"

    def __init__(self, interval_ms: float):
        self.interval_ms = interval_ms
        self._periodic: PeriodicCallback | None = None
        self._running = False

    def enabled(self) -> bool:
        """False when there is nothing for this job to do in this configuration."""
        return True

    async def run(self):
        raise NotImplementedError

    def start(self) -> None:
        if not self.enabled():
            return
        self._running = True
        self._periodic = PeriodicCallback(self._tick, self.interval_ms)
        self._periodic.start()
        IOLoop.current().add_callback(self._tick)

    def stop(self) -> None:
        self._running = False
        if self._periodic is not None:
            self._periodic.stop()
            self._periodic = None

    async def _tick(self) -> None:
        if not self._running:
            return
        try:
            await self.run()
        except Exception as exc:
            JOB_RUNS.labels(job=self.name, outcome="error").inc()
            if from_storage(exc) is not None:  # the database is away: expected, the next tick tries again
                log.warning(json.dumps({"event": DATABASE_UNAVAILABLE, "job": self.name, "error": repr(exc)[:200]}))
            else:
                log.exception("%s run failed", self.name)
