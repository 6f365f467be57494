"""The job runner: claims due jobs from the `jobs` collection and runs their handlers.

Exactly one process runs a job at a time: a claim is a conditional update (store.py), and
the claimant holds a lease (owner + expiry) that it renews while the handler runs. A process
that dies mid-job stops renewing; once the lease has expired any runner claims the job again
and finishes it (so handlers must be safe to run again after a crash: they check the state
they change, as the contract expiry and the push dispatcher do).

A handler that raises is retried with exponential backoff (JOB_BACKOFF_SECONDS doubled per
attempt, capped at JOB_BACKOFF_MAX_SECONDS; `RetryLater(seconds)` asks for a given delay, e.g.
a provider's Retry-After) until JOB_MAX_ATTEMPTS attempts have failed; then the job is
`failed`, with its last error, for admins (GET /api/v1/admin/jobs?status=failed). `GiveUp`
fails it at once (retrying cannot help).

Time is the context's clock, so tests move it instead of sleeping; the poll loop sleeps
JOB_POLL_SECONDS of real time between looks.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import uuid
from datetime import datetime, timedelta
from typing import Any, Awaitable, Callable

from prometheus_client import Counter, Gauge

from sheda_rt.jobs.models import job_out
from sheda_rt.jobs.store import CANCELLED, DONE, FAILED, PENDING, RUNNING, JobStore

log = logging.getLogger("sheda.jobs")

JOBS_FINISHED = Counter("sheda_jobs_finished_total", "Queue job runs by kind and outcome (done, retry, failed)", ["kind", "outcome"])

# Every process sees the same collection: the largest report is the value.
JOBS_PENDING = Gauge("sheda_jobs_pending", "Jobs waiting in the queue (pending, due or not)", multiprocess_mode="max")
JOBS_OLDEST_DUE_SECONDS = Gauge("sheda_jobs_oldest_due_seconds", "How long the oldest due pending job has waited past its run_at",
                                multiprocess_mode="max")
GAUGE_SECONDS = 15.0
# The gauges read at most this many pending jobs (a deeper queue is an alarm already, and counted instead).
OBSERVE_LIMIT = 5000

Handler = Callable[[dict], Awaitable[Any]]
MAX_KEY_CHARS = 512


class RetryLater(Exception):
    """The handler asks to be run again after `seconds` (counts as a failed attempt)."""

    def __init__(self, seconds: float, reason: str = "retry later"):
        super().__init__(reason)
        self.seconds = max(0.0, float(seconds))


class Defer(Exception):
    """Not now, and not a failure: run again after `seconds` without counting an attempt
    (e.g. a push held by the user's quiet hours)."""

    def __init__(self, seconds: float, reason: str = "deferred"):
        super().__init__(reason)
        self.seconds = max(0.0, float(seconds))


class GiveUp(Exception):
    """The job cannot succeed; fail it now without further attempts."""


class JobRunner:
    def __init__(self, store: JobStore, clock, *, lease_seconds: float = 60.0, max_attempts: int = 5,
                 backoff_seconds: float = 5.0, backoff_max_seconds: float = 3600.0, poll_seconds: float = 1.0,
                 batch: int = 20):
        self.store = store
        self.clock = clock
        self.lease = timedelta(seconds=lease_seconds)
        self.max_attempts = max_attempts
        self.backoff_seconds = backoff_seconds
        self.backoff_max_seconds = backoff_max_seconds
        self.poll_seconds = poll_seconds
        self.batch = batch
        # Unique per runner, not per process: two servers in one process (tests) are two owners.
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.handlers: dict[str, Handler] = {}
        self._task: asyncio.Task | None = None
        self._inflight: set[asyncio.Task] = set()
        self._soon: dict[asyncio.Task, str] = {}  # run_soon's background runs -> their kind
        self._stopping = False
        self._sleeping = False
        # One pass of run_due at a time per runner: a call made while the poll loop is mid-pass waits
        # for that pass, so when it returns every job due at the call has been run (not merely
        # claimed by the loop and still running). Passes never overlap usefully anyway: they race
        # for the same claims.
        self._pass = asyncio.Lock()
        # Features' own queue gauges (e.g. the push dispatcher's, by provider), refreshed with the runner's
        # Called with the pending jobs (kind, run_at; oldest first, at most OBSERVE_LIMIT) and now.
        self.observers: list[Callable[[list[dict], datetime], Awaitable[None]]] = []

    # ---- registration and enqueueing --------------------------------------
    def register(self, kind: str, handler: Handler) -> None:
        self.handlers[kind] = handler

    def _new_doc(self, kind: str, key: str | None, payload: dict, run_at: datetime, now: datetime) -> dict:
        key = key or f"{kind}:{uuid.uuid4().hex}"
        if len(key) > MAX_KEY_CHARS:
            raise ValueError("job key too long")
        return {"_id": key, "kind": kind, "payload": payload, "status": PENDING, "run_at": run_at, "attempts": 0,
                "created_at": now, "updated_at": now}

    async def enqueue(self, kind: str, payload: dict | None = None, *, key: str | None = None, run_at: datetime | None = None,
                      rearm: bool = False) -> tuple[dict, bool]:
        """Add a job; returns (job, created). The same key never makes two jobs: an existing job
        under `key` is returned as it is, unless `rearm` and it has finished (done, failed,
        cancelled): then it is made pending again with this payload and run_at."""
        now = self.clock.now()
        doc = self._new_doc(kind, key, payload or {}, run_at or now, now)
        if await self.store.insert(doc):
            return doc, True
        for _ in range(3):
            existing = await self.store.get(doc["_id"])
            if existing is None:  # deleted in between: try once more as new
                if await self.store.insert(doc):
                    return doc, True
                continue
            if not rearm or existing["status"] in (PENDING, RUNNING):
                return existing, False
            fields = {"kind": kind, "payload": doc["payload"], "status": PENDING, "run_at": doc["run_at"], "attempts": 0,
                      "updated_at": now}
            if await self.store.rearm(existing, fields):
                return dict(existing, **fields), True
        return await self.store.get(doc["_id"]), False

    async def cancel(self, key: str) -> bool:
        """A pending job is cancelled; a running one is left to finish (its handler re-checks)."""
        return await self.store.cancel(key, self.clock.now())

    async def admin_page(self, query) -> dict:
        """GET /admin/jobs: one status's jobs, most recent first, a keyset page of `job_out` rows."""
        return await self.store.page(query.status, query, job_out)

    async def bring_forward(self, key: str, run_at: datetime) -> bool:
        """A pending job due later than `run_at` is made due at `run_at` (e.g. a digest deferred for one
        conversation's window when another conversation needs it sooner); anything else is left alone."""
        return await self.store.bring_forward(key, run_at, self.clock.now())

    # ---- running -----------------------------------------------------------
    def run_soon(self, kind: str, key: str, payload: dict | None = None) -> asyncio.Task:
        """Run the job `key`, already queued (durable), here in the background at once, as `run_now` does (the
        first runner to claim it runs it); `payload` None: the queued job's. Never fails its caller: a
        failure here leaves the job queued, and a runner's poll takes it. `settle` waits for these runs."""
        task = asyncio.ensure_future(self._run_soon(kind, key, payload))
        self._soon[task] = kind
        task.add_done_callback(self._soon.pop)
        return task

    async def _run_soon(self, kind: str, key: str, payload: dict | None) -> None:
        try:
            if payload is None:
                job = await self.store.get(key)
                if job is None:
                    return
                payload = job["payload"]
            await self.run_now(kind, key, payload)
        except Exception as exc:  # the job stays queued: the poll takes it
            log.info(json.dumps({"event": "job_run_soon_deferred", "kind": kind, "job": key, "error": repr(exc)[:200]}))

    async def run_here_after(self, kind: str, key: str, wait_seconds: float) -> None:
        """The second half of a change's follow-up job: queued (due later, the crash net) before the change's
        write, made due now and run here once the write is done, the caller waiting for it up to
        `wait_seconds` (a longer run goes on in the background). Never raises: the change is made whatever
        happens here, and the queued job is the fallback any runner takes."""
        try:
            await self.bring_forward(key, self.clock.now())
        except Exception as exc:
            log.info(json.dumps({"event": "job_follow_up_deferred", "kind": kind, "job": key, "error": repr(exc)[:200]}))
            return
        await asyncio.wait({self.run_soon(kind, key)}, timeout=wait_seconds)

    async def settle(self, kind: str | None = None) -> None:
        """Wait for the `run_soon` runs in progress (of `kind`, or all of them)."""
        tasks = [task for task, of in self._soon.items() if kind is None or of == kind]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def run_now(self, kind: str, key: str, payload: dict | None = None) -> tuple[bool, Any]:
        """Create-or-claim the job `key` and run it here at once: (ran, result). When another
        runner holds it or it has finished already, (False, None)."""
        now = self.clock.now()
        lease_until = now + self.lease
        doc = self._new_doc(kind, key, payload or {}, now, now)
        claimed = dict(doc, status=RUNNING, run_at=lease_until, lease={"owner": self.owner, "expires": lease_until},
                       started_at=now, attempts=1)
        if await self.store.insert(claimed):
            return await self._execute(claimed)
        existing = await self.store.get(key)
        if existing is None or not self._claimable(existing, now):
            return False, None
        return await self._claim_and_run(existing, now)

    def _claimable(self, doc: dict, now: datetime) -> bool:
        return doc["status"] in (PENDING, RUNNING) and doc["run_at"] <= now and doc["kind"] in self.handlers

    async def run_due(self, limit: int | None = None) -> int:
        """Claim and run every job due now (pending and due, or with a lapsed lease), oldest
        first; returns how many runs this runner did. Jobs of kinds this process does not run
        (another version's) are walked past, never claimed. The poll loop calls this; tests call
        it after moving the clock."""
        async with self._pass:
            return await self._run_due(limit or 10_000)

    async def _run_due(self, limit: int) -> int:
        ran = 0
        for status in (PENDING, RUNNING):
            after = None  # (run_at, _id) of the last job looked at: each read goes on past it
            while ran < limit and not self._stopping:
                now = self.clock.now()
                batch = await self.store.due(status, now, self.batch, after)
                if not batch:
                    break
                for doc in batch:
                    after = (doc["run_at"], doc["_id"])
                    if doc["kind"] not in self.handlers or ran >= limit or self._stopping:
                        continue
                    took, _ = await self._claim_and_run(doc, now)
                    ran += took
                if len(batch) < self.batch:
                    break
        return ran

    async def _claim_and_run(self, doc: dict, now: datetime) -> tuple[bool, Any]:
        if doc["status"] == RUNNING and doc.get("attempts", 0) >= self.max_attempts:
            # Its holders kept dying mid-run (a job that kills its process?): stop trying.
            took = await self.store.claim(doc, self.owner, now + self.lease, now)
            if took:
                await self.store.finish(doc["_id"], self.owner, now + self.lease, {
                    "status": FAILED, "run_at": now, "updated_at": now, "finished_at": now,
                    "last_error": "lease expired: the process running it stopped", "attempts": doc.get("attempts", 0)})
                JOBS_FINISHED.labels(kind=doc["kind"], outcome="failed").inc()
            return False, None
        lease_until = now + self.lease
        if not await self.store.claim(doc, self.owner, lease_until, now):
            return False, None
        claimed = dict(doc, status=RUNNING, run_at=lease_until, attempts=doc.get("attempts", 0) + 1,
                       lease={"owner": self.owner, "expires": lease_until})
        return await self._execute(claimed)

    async def _execute(self, job: dict) -> tuple[bool, Any]:
        handler = self.handlers.get(job["kind"])
        state = {"lease_until": job["run_at"]}
        renewer = asyncio.ensure_future(self._renew(job["_id"], state))
        task = asyncio.current_task()
        if task is not None:
            self._inflight.add(task)
        try:
            result = await handler(job)
        except Exception as exc:  # any failure is an attempt; the queue decides retry or give-up
            await self._failed(job, exc, state)
            return True, None
        finally:
            renewer.cancel()
            if task is not None:
                self._inflight.discard(task)
        now = self.clock.now()
        fields = {"status": DONE, "run_at": now, "updated_at": now, "finished_at": now}
        if result is not None:
            fields["result"] = result
        if not await self.store.finish(job["_id"], self.owner, state["lease_until"], fields):
            log.warning(json.dumps({"event": "job_lease_lost", "job": job["_id"], "kind": job["kind"]}))
        JOBS_FINISHED.labels(kind=job["kind"], outcome="done").inc()
        return True, result

    async def _failed(self, job: dict, exc: Exception, state: dict) -> None:
        now = self.clock.now()
        attempts = job.get("attempts", 1)
        error = f"{type(exc).__name__}: {exc}"[:500]
        if isinstance(exc, Defer):
            await self.store.finish(job["_id"], self.owner, state["lease_until"], {
                "status": PENDING, "run_at": now + timedelta(seconds=exc.seconds), "updated_at": now,
                "attempts": max(0, attempts - 1), "deferred": str(exc)[:200]})
            JOBS_FINISHED.labels(kind=job["kind"], outcome="deferred").inc()
            return
        if self.gives_up(job, exc):
            fields = {"status": FAILED, "run_at": now, "updated_at": now, "finished_at": now, "last_error": error}
            outcome = "failed"
            log.warning(json.dumps({"event": "job_failed", "job": job["_id"], "kind": job["kind"], "attempts": attempts,
                                    "error": error}))
        else:
            delay = exc.seconds if isinstance(exc, RetryLater) else self.backoff(attempts)
            fields = {"status": PENDING, "run_at": now + timedelta(seconds=delay), "updated_at": now, "last_error": error}
            outcome = "retry"
            if not isinstance(exc, RetryLater):
                log.info(json.dumps({"event": "job_retry", "job": job["_id"], "kind": job["kind"], "attempts": attempts,
                                     "delay_seconds": delay, "error": error}))
        await self.store.finish(job["_id"], self.owner, state["lease_until"], fields)
        JOBS_FINISHED.labels(kind=job["kind"], outcome=outcome).inc()

    def gives_up(self, job: dict, exc: Exception) -> bool:
        """Whether this failure of the running `job` fails it for good (GiveUp, or its last attempt): a handler
        that keeps state of its own (e.g. an image shown `processing`) ends it before re-raising."""
        return not isinstance(exc, Defer) and (isinstance(exc, GiveUp) or job.get("attempts", 1) >= self.max_attempts)

    def backoff(self, attempts: int) -> float:
        """Seconds before attempt `attempts + 1`: base * 2^(attempts-1), capped."""
        return min(self.backoff_max_seconds, self.backoff_seconds * (2 ** max(0, min(attempts - 1, 30))))

    async def _renew(self, key: str, state: dict) -> None:
        """Keep the lease while the handler runs (a third of the lease, in real time)."""
        try:
            while True:
                await asyncio.sleep(self.lease.total_seconds() / 3)
                new_until = self.clock.now() + self.lease
                if not await self.store.renew(key, self.owner, state["lease_until"], new_until):
                    log.warning(json.dumps({"event": "job_lease_lost", "job": key}))
                    return
                state["lease_until"] = new_until
        except asyncio.CancelledError:
            pass
        except Exception as exc:  # the database away: the next renewal tries again
            log.info(json.dumps({"event": "job_lease_renew_failed", "job": key, "error": repr(exc)[:200]}))

    # ---- lifecycle ---------------------------------------------------------
    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.ensure_future(self._loop())
            log.info(json.dumps({"event": "job_runner_started", "owner": self.owner, "kinds": sorted(self.handlers)}))

    def stop(self) -> None:
        """No new claims; a run in progress finishes (drain waits for it, bounded)."""
        self._stopping = True
        if self._task is not None and self._sleeping:
            self._task.cancel()

    async def drain(self, timeout: float = 5.0) -> None:
        """At shutdown: let runs in progress finish (bounded); one cut short keeps its lease,
        which lapses, and another runner does it again."""
        waiting = [t for t in (*self._inflight, *self._soon) if not t.done() and t is not asyncio.current_task()]
        if self._task is not None and not self._task.done():
            waiting.append(self._task)
        if waiting:
            _, late = await asyncio.wait(waiting, timeout=timeout)
            for task in late:
                task.cancel()
        self._task = None

    async def observe(self) -> None:
        """Queue depth and the oldest due job's wait, for /metrics, and the same read handed to the
        observers (push: by provider). One walk of the pending jobs' kind and run_at on the
        (status, run_at) index; counted only when the walk comes back full (OBSERVE_LIMIT). On
        the embedded database a read's matching holds its global lock, so every other request
        waits meanwhile: with ~200 pending jobs the walk takes 8-9 ms; before, a count (4.2 ms),
        a read of the oldest due job (0.6 ms) and the push gauges' own walk (8.2 ms) came on top."""
        now = self.clock.now()
        pending = await self.store.pending(OBSERVE_LIMIT)
        JOBS_PENDING.set(len(pending) if len(pending) < OBSERVE_LIMIT else await self.store.count_pending())
        oldest = pending[0]["run_at"] if pending else None
        JOBS_OLDEST_DUE_SECONDS.set((now - oldest).total_seconds() if oldest is not None and oldest <= now else 0)
        for observer in self.observers:
            await observer(pending, now)

    async def _loop(self) -> None:
        observed = 0.0
        while not self._stopping:
            try:
                await self.run_due()
                if asyncio.get_running_loop().time() - observed > GAUGE_SECONDS:
                    observed = asyncio.get_running_loop().time()
                    await self.observe()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # database away: look again next time
                log.info(json.dumps({"event": "job_poll_failed", "error": repr(exc)[:200]}))
            if self._stopping:
                return
            self._sleeping = True
            try:
                await asyncio.sleep(self.poll_seconds)
            finally:
                self._sleeping = False
