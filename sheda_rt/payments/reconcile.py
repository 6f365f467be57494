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

from tornado.ioloop import IOLoop, PeriodicCallback

from sheda_rt.metrics import JOB_RUNS

log = logging.getLogger("sheda.jobs")


class PaymentReconciliationJob:
    name = "payment_reconciliation"

    def __init__(self, payments, interval_minutes: float):
        self.payments = payments
        self.interval_ms = interval_minutes * 60 * 1000
        self._periodic: PeriodicCallback | None = None
        self._running = False

    def start(self) -> None:
        if self.payments.gateway is None:
            return  # no gateway, no gateway payments to reconcile
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
            log.exception("payment reconciliation run failed")

    async def run(self) -> dict:
        """One pass; how many payments ended how."""
        counts = await self.payments.reconcile()
        JOB_RUNS.labels(job=self.name, outcome="ok").inc()
        if counts:
            log.info('{"event": "payments_reconciled", "counts": "%s"}', counts)
        return counts
