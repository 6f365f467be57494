"""The enhancement timeout sweep: a PeriodicTrigger in the server's IOLoop.

An external service that never calls back (it lost the job, its webhook kept failing) would
leave an image `processing` for ever, and block a new enhancement of it. Every
ENHANCEMENT_SWEEP_MINUTES (and once at start) jobs still pending or processing
ENHANCEMENT_TIMEOUT_HOURS (48) after they started end as `timeout`. Every process may run it:
each move is a guarded write, so a job times out once. Tests call `run()` with a moved clock.
"""
from __future__ import annotations

import logging

from sheda_rt.jobs.periodic import PeriodicTrigger
from sheda_rt.metrics import JOB_RUNS

log = logging.getLogger("sheda.jobs")


class EnhancementTimeoutSweep(PeriodicTrigger):
    name = "enhancement_timeout"

    def __init__(self, enhancement, interval_minutes: float):
        super().__init__(interval_minutes * 60 * 1000)
        self.enhancement = enhancement

    async def run(self) -> int:
        ended = await self.enhancement.sweep()
        JOB_RUNS.labels(job=self.name, outcome="ok").inc()
        if ended:
            log.info('{"event": "enhancements_timed_out", "count": %d}', ended)
        return ended
