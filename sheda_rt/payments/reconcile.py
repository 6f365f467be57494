"""The payment reconciliation job: a tornado PeriodicCallback in the server's IOLoop.

Webhooks get lost (our server was down, the gateway gave up retrying). Every
PAYMENT_RECONCILE_INTERVAL_MINUTES (default 5), and once at start, this verifies
with the gateway each payment still initialized or pending 30 minutes after it
began, and applies what the gateway says (PaymentService.reconcile). Several
processes may run it at once: every move is a conditional write, so a second
application is a no-op. Tests call `run()` with a moved clock instead of waiting.

A charge.success that arrives before the gateway's verify confirms it (Paystack still says
abandoned / ongoing / pending) is not left for that 30-minute pass: PaymentReverification
verifies that one reference again through the durable job queue, REVERIFY_DELAYS apart
(1, then 5, then 15 minutes), until the gateway decides; past the last, this job takes over.
"""
from __future__ import annotations

import logging
from datetime import timedelta

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


#: How long after an undecided verify the reference is asked about again: after the webhook, then after each
#: still-undecided answer (1 + 5 + 15 = 21 minutes, before the reconciliation's 30).
REVERIFY_DELAYS = (timedelta(minutes=1), timedelta(minutes=5), timedelta(minutes=15))


class PaymentReverification:
    """Durable re-verifies of one reference, as queue jobs `payment_reverify:<reference>:<step>`: a key names
    its step, so redeliveries of the early webhook (or several processes) schedule each step once, and a
    process dying mid-way leaves a lease that any runner finishes. The verify's answer is applied by
    PaymentService.settle, as the webhook and the reconciliation do, so a success is applied once."""

    kind = "payment_reverify"

    def __init__(self, payments, queue, clock):
        self.payments = payments
        self.queue = queue
        self.clock = clock
        queue.register(self.kind, self._handle)

    async def schedule(self, reference: str, step: int = 0) -> None:
        await self.queue.enqueue(self.kind, {"reference": reference, "step": step},
                                 key=f"{self.kind}:{reference}:{step}", run_at=self.clock.now() + REVERIFY_DELAYS[step])

    async def _handle(self, job: dict) -> str:
        reference, step = job["payload"]["reference"], int(job["payload"].get("step", 0))
        outcome = await self.payments.reverify(reference)  # the gateway down: raises, and the queue retries
        if outcome == "undecided" and step + 1 < len(REVERIFY_DELAYS):
            await self.schedule(reference, step + 1)
        JOB_RUNS.labels(job=self.kind, outcome="ok").inc()
        return outcome
