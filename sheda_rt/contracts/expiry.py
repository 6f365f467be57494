"""The contract-expiry job: a tornado PeriodicCallback in the server's IOLoop that
runs through the durable job queue (sheda_rt/jobs/).

Ticks once when the server starts (so a server that was down past an end_date
catches up at once) and then every CONTRACT_EXPIRY_INTERVAL_HOURS (default 24).
Each tick is one queue job whose key names the period (`contract_expiry:<n>`, n = the
clock's time divided by the interval), so however many processes tick, a period's pass
runs once; a process that dies during it leaves a lease that lapses, and the next
tick (or any runner's poll) finishes it. A pass expires every active contract whose
end_date <= the clock's now(); ContractService.expire moves each contract with the
expected state in the update's filter, so each expires exactly once even if a pass
is repeated. Tests call `run()` directly with a moved clock instead of waiting.
"""
from __future__ import annotations

import logging

from sheda_rt.jobs.periodic import PeriodicTrigger
from sheda_rt.metrics import JOB_RUNS

log = logging.getLogger("sheda.jobs")


class ContractExpiryJob(PeriodicTrigger):
    name = "contract_expiry"

    def __init__(self, contracts, interval_hours: float, queue, clock):
        super().__init__(interval_hours * 3600 * 1000)
        self.contracts = contracts
        self.queue = queue
        self.clock = clock
        queue.register(self.name, self._handle)

    def period_key(self) -> str:
        period = int(self.clock.now().timestamp() * 1000 // self.interval_ms)
        return f"{self.name}:{period}"

    async def run(self) -> int:
        """This period's pass, through the queue; returns how many contracts this call expired
        (0 when the period's pass ran already or is running in another process)."""
        ran, result = await self.queue.run_now(self.name, self.period_key())
        return int(result or 0) if ran else 0

    async def _handle(self, job: dict) -> int:
        try:
            expired = await self.contracts.expire_due()
        except Exception:
            JOB_RUNS.labels(job=self.name, outcome="error").inc()
            raise  # the queue retries it with backoff
        JOB_RUNS.labels(job=self.name, outcome="ok").inc()
        if expired:
            log.info('{"event": "contracts_expired", "count": %d}', expired)
        return expired
