"""The payment reconciliation job: a tornado PeriodicCallback in the server's IOLoop.

Webhooks get lost (our server was down, the gateway gave up retrying). Every
PAYMENT_RECONCILE_INTERVAL_MINUTES (default 5), and once at start, this verifies
with the gateway each payment still initialized or pending 30 minutes after it
began, and applies what the gateway says (PaymentService.reconcile). Several
processes may run it at once: every move is a conditional write, so a second
application is a no-op. Tests call `run()` with a moved clock instead of waiting.
"""
from __future__ import annotations

import logging

from sheda_rt.jobs.periodic import PeriodicTrigger
from sheda_rt.metrics import JOB_RUNS

log = logging.getLogger("sheda.jobs")


class PaymentReconciliationJob(PeriodicTrigger):
    name = "payment_reconciliation"

    def __init__(self, payments, interval_minutes: float):
        super().__init__(interval_minutes * 60 * 1000)
        self.payments = payments

    def enabled(self) -> bool:
        return self.payments.gateway is not None  # no gateway, no gateway payments to reconcile

    async def run(self) -> dict:
        """One pass; how many payments ended how."""
        counts = await self.payments.reconcile()
        JOB_RUNS.labels(job=self.name, outcome="ok").inc()
        if counts:
            log.info('{"event": "payments_reconciled", "counts": "%s"}', counts)
        return counts
