"""The contract-expiry job: a tornado PeriodicCallback in the server's IOLoop.

Runs once when the server starts (so a server that was down past an end_date
catches up at once) and then every CONTRACT_EXPIRY_INTERVAL_HOURS (default 24).
Each run expires every active contract whose end_date <= ctx.clock.now(). Safe to
run in several processes at once: ContractService.expire moves each contract
with the expected state in the update's filter, so each expires exactly once.
Tests call `run()` directly with a moved clock instead of waiting.
"""
from __future__ import annotations

import logging

from tornado.ioloop import IOLoop, PeriodicCallback

from sheda_rt.metrics import JOB_RUNS

log = logging.getLogger("sheda.jobs")


class ContractExpiryJob:
    name = "contract_expiry"

    def __init__(self, contracts, interval_hours: float):
        self.contracts = contracts
        self.interval_ms = interval_hours * 3600 * 1000
        self._periodic: PeriodicCallback | None = None
        self._running = False

    def start(self) -> None:
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
        except Exception:
            # A failed run is retried by the next tick; it must never kill the loop.
            JOB_RUNS.labels(job=self.name, outcome="error").inc()
            log.exception("contract expiry run failed")

    async def run(self) -> int:
        """One pass; returns how many contracts this call expired."""
        expired = await self.contracts.expire_due()
        JOB_RUNS.labels(job=self.name, outcome="ok").inc()
        if expired:
            log.info('{"event": "contracts_expired", "count": %d}', expired)
        return expired
