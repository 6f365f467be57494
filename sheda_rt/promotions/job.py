"""The promotions job: a PeriodicTrigger in every server process (sheda_rt/jobs/periodic.py).

Every PROMOTION_JOB_INTERVAL_MINUTES (default 1), and once at start, it ends featured listings
whose days ran out (announced as property.updated; search already stops listing them first at
the moment itself, see sheda_rt/promotions/featured.py) and finishes promotions a dead request
left pending or refunding (sheda_rt/promotions/service.py). Several processes may run it at once: each write
names the listing's revision or the promotion's state, so a second application is a no-op.
Tests call `run()` with a moved clock instead of waiting for a tick.
"""
from __future__ import annotations

import logging

from sheda_rt.jobs.periodic import PeriodicTrigger
from sheda_rt.metrics import JOB_RUNS

log = logging.getLogger("sheda.jobs")


class PromotionJob(PeriodicTrigger):
    name = "promotions"

    def __init__(self, promotions, interval_minutes: float):
        super().__init__(interval_minutes * 60 * 1000)
        self.promotions = promotions

    async def run(self) -> dict:
        counts = {"featured_ended": await self.promotions.end_featured(), **await self.promotions.finish_pending(),
                  "refunds_finished": await self.promotions.finish_refunds()}
        JOB_RUNS.labels(job=self.name, outcome="ok").inc()
        if any(counts.values()):
            log.info('{"event": "promotions_job", "counts": "%s"}', counts)
        return counts
