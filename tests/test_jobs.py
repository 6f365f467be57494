"""The durable job queue (sheda_rt/jobs/): idempotent enqueue, exactly one runner per job across
servers sharing a database, a dead runner's lease lapsing, backoff and give-up, the admin listing,
and the claim query walking an index on the embedded database. Time moves on the clock, no sleeping."""
from __future__ import annotations

import asyncio
import contextvars
import uuid
from collections import Counter
from datetime import datetime, timedelta, timezone

import tornado.netutil

from config import load_settings
from handlers.app import make_app
from sheda_rt.jobs.runner import GiveUp, RetryLater
from sheda_rt.server import Server
from tests.support import eventually


async def run_until(runner, key: str, done) -> dict:
    """Run what is due, then wait until job `key` satisfies `done`: the server's own poll loop
    (every second) may claim the job before this call does, and then finishes it meanwhile."""
    await runner.run_due()

    async def reached():
        doc = await runner.store.get(key)
        return doc if done(doc) else None
    return await eventually(reached, f"job {key} to get there")


def kind_name(prefix: str) -> str:
    # The test database is shared by the session: a kind of its own keeps this test's jobs to itself.
    return f"test.{prefix}.{uuid.uuid4().hex[:8]}"


async def second_server(sheda, tmp_path, **overrides):
    """Another Server (own context, own runner) on the same database, as a second process would be."""
    s = sheda.server.settings
    settings = load_settings(**{**s.model_dump(), "data_dir": tmp_path / "second", "jwt_secret": s.jwt_secret.get_secret_value(),
                                **overrides})
    server = Server(settings, s.mongodb_uri, clock=sheda.ctx.clock, app_factory=make_app)
    await server.start(tornado.netutil.bind_sockets(0, "127.0.0.1"))
    return server


async def test_same_key_never_makes_two_jobs(sheda):
    runner = sheda.ctx.job_runner
    kind = kind_name("dup")
    results = await asyncio.gather(*(runner.enqueue(kind, {"n": i}, key=f"{kind}:one") for i in range(10)))
    assert sum(created for _, created in results) == 1
    assert await sheda.ctx.db["jobs"].count_documents({"_id": f"{kind}:one"}) == 1
    # a finished job stays finished unless re-armed
    ran = []
    runner.register(kind, lambda job: _record(ran, job))
    await run_until(runner, f"{kind}:one", lambda d: d["status"] == "done")
    assert ran == [f"{kind}:one"]
    _, created = await runner.enqueue(kind, {}, key=f"{kind}:one")
    assert not created and (await sheda.ctx.job_store.get(f"{kind}:one"))["status"] == "done"
    job, created = await runner.enqueue(kind, {"again": True}, key=f"{kind}:one", rearm=True)
    assert created and job["status"] == "pending"
    await run_until(runner, f"{kind}:one", lambda d: d["status"] == "done")
    assert ran == [f"{kind}:one", f"{kind}:one"]


async def _record(ran, job):
    ran.append(job["_id"])
    await asyncio.sleep(0)
    return len(ran)


async def test_two_servers_on_one_database_run_each_job_once(sheda, tmp_path):
    other = await second_server(sheda, tmp_path)
    try:
        kind = kind_name("once")
        ran: Counter = Counter()
        where: Counter = Counter()

        def handler(name):
            async def run(job):
                ran[job["_id"]] += 1
                where[name] += 1
                await asyncio.sleep(0.001)  # let the other runner try to take it meanwhile
            return run

        sheda.ctx.job_runner.register(kind, handler("a"))
        other.ctx.job_runner.register(kind, handler("b"))
        keys = [f"{kind}:{i}" for i in range(60)]
        for key in keys:
            await sheda.ctx.job_runner.enqueue(kind, {}, key=key)
        await asyncio.gather(sheda.ctx.job_runner.run_due(), other.ctx.job_runner.run_due(),
                             sheda.ctx.job_runner.run_due(), other.ctx.job_runner.run_due())
        assert set(ran) == set(keys) and set(ran.values()) == {1}, ran
        assert where["a"] > 0 and where["b"] > 0, where  # both really competed
        for _ in range(100):  # a background poll may still be recording the run it started
            if await sheda.ctx.db["jobs"].count_documents({"kind": kind, "status": "done"}) == 60:
                break
            await asyncio.sleep(0.02)
        assert await sheda.ctx.db["jobs"].count_documents({"kind": kind, "status": "done"}) == 60
        assert set(ran.values()) == {1}
    finally:
        await other.shutdown()


async def test_a_dead_runners_lease_lapses_and_the_job_completes_once(sheda):
    runner, store, clock = sheda.ctx.job_runner, sheda.ctx.job_store, sheda.ctx.clock
    kind = kind_name("lease")
    ran = []
    runner.register(kind, lambda job: _record(ran, job))
    job, _ = await runner.enqueue(kind, {}, key=f"{kind}:x")
    # A process claims it, as every runner does, and is killed before finishing.
    dead_until = clock.now() + runner.lease
    assert await store.claim(job, "dead-process", dead_until, clock.now())
    # (run_due counts every due job of the shared test database, other modules' too: this job's
    # own runs are what `ran` records.)
    await runner.run_due()
    assert ran == []  # the lease is still live: nobody else may run it
    clock.advance(seconds=runner.lease.total_seconds() + 1)
    await runner.run_due()
    assert ran == [f"{kind}:x"]
    doc = await store.get(f"{kind}:x")
    assert doc["status"] == "done" and doc["attempts"] == 2 and "lease" not in doc
    # The dead process coming back cannot overwrite what the new holder recorded.
    assert not await store.finish(f"{kind}:x", "dead-process", dead_until, {"status": "failed"})
    assert (await store.get(f"{kind}:x"))["status"] == "done"
    await runner.run_due()
    assert ran == [f"{kind}:x"]


async def test_failures_back_off_then_give_up_and_admins_see_them(sheda):
    runner, store, clock = sheda.ctx.job_runner, sheda.ctx.job_store, sheda.ctx.clock
    kind = kind_name("flaky")
    calls = []

    async def always_fails(job):
        calls.append(clock.now())
        raise RuntimeError("provider said no")

    runner.register(kind, always_fails)
    await runner.enqueue(kind, {"what": "x"}, key=f"{kind}:a")
    delays = []
    for attempt in range(1, runner.max_attempts + 1):
        doc = await run_until(runner, f"{kind}:a", lambda d, n=attempt: d["attempts"] == n and d["status"] != "running")
        assert doc["attempts"] == attempt and "provider said no" in doc["last_error"]
        if attempt < runner.max_attempts:
            assert doc["status"] == "pending"
            delay = (doc["run_at"] - doc["updated_at"]).total_seconds()  # from the failure to the next try
            delays.append(delay)
            assert await runner.run_due() == 0  # not before its time
            clock.advance(seconds=delay)
    assert delays == [runner.backoff(n) for n in range(1, runner.max_attempts)]
    assert delays == sorted(delays) and delays[1] == 2 * delays[0]  # exponential
    assert runner.backoff(60) == runner.backoff_max_seconds  # capped
    doc = await store.get(f"{kind}:a")
    assert doc["status"] == "failed" and len(calls) == runner.max_attempts
    clock.advance(days=1)
    await runner.run_due()  # other tests' jobs (e.g. viewing reminders) may fall due a day later: count this job's calls
    assert len(calls) == runner.max_attempts and (await store.get(f"{kind}:a"))["status"] == "failed"  # given up for good

    # GiveUp fails at once; RetryLater waits the asked delay
    async def gone(job):
        raise GiveUp("the device is gone")

    async def busy(job):
        raise RetryLater(120, "429")

    kind_gone, kind_busy = kind_name("gone"), kind_name("busy")
    runner.register(kind_gone, gone)
    runner.register(kind_busy, busy)
    await runner.enqueue(kind_gone, {}, key=f"{kind_gone}:a")
    await runner.enqueue(kind_busy, {}, key=f"{kind_busy}:a")
    await run_until(runner, f"{kind_gone}:a", lambda d: d["status"] == "failed")
    busy_doc = await run_until(runner, f"{kind_busy}:a", lambda d: d.get("attempts") == 1 and d["status"] == "pending")
    assert busy_doc["status"] == "pending" and (busy_doc["run_at"] - busy_doc["updated_at"]).total_seconds() == 120
    from sheda_rt.jobs.runner import JOBS_OLDEST_DUE_SECONDS, JOBS_PENDING

    clock.advance(seconds=150)  # the busy job is due (not run): the queue's depth and wait show it
    await runner.observe()
    assert JOBS_PENDING._value.get() >= 1 and JOBS_OLDEST_DUE_SECONDS._value.get() >= 30

    admin = await sheda.admin()
    user = await sheda.signup()
    r = await sheda.api.get("/api/v1/admin/jobs", params={"status": "failed", "limit": 100}, token=admin.token)
    assert r.status == 200, r
    [item] = [i for i in r.json["items"] if i["kind"] == kind]
    assert item["key"] == f"{kind}:a" and item["status"] == "failed" and item["attempts"] == runner.max_attempts
    assert "provider said no" in item["last_error"] and item["payload"] == {"what": "x"}
    # paging through every failed job: no repeats, each failed
    seen, cursor = [], None
    while True:
        params = {"status": "failed", "limit": 2, **({"cursor": cursor} if cursor else {})}
        page = (await sheda.api.get("/api/v1/admin/jobs", params=params, token=admin.token)).json
        seen += [i["key"] for i in page["items"]]
        assert all(i["status"] == "failed" for i in page["items"])
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert len(seen) == len(set(seen)) and {f"{kind}:a", f"{kind_gone}:a"} <= set(seen)
    assert (await sheda.api.get("/api/v1/admin/jobs", params={"status": "failed"}, token=user.token)).status == 403
    assert (await sheda.api.get("/api/v1/admin/jobs", params={"status": "failed"})).status == 401
    for bad in ({"status": "exploded"}, {"limit": 0}, {"cursor": "!!"}, {"extra": 1}):
        assert (await sheda.api.get("/api/v1/admin/jobs", params=bad, token=admin.token)).status == 422, bad


async def test_the_admin_listing_pages_through_jobs_of_one_instant(sheda):
    """Pages end between jobs of the same run_at (a period's jobs are queued together): the next page asked
    for run_at <= the cursor's, which the embedded database answers as < on the (status, run_at, _id) index,
    so the rest of that instant was never listed."""
    store = sheda.ctx.job_store
    kind, at = kind_name("instant"), datetime(2999, 1, 1, 12, 0, 0, 123000, tzinfo=timezone.utc)  # first in the listing
    keys = [f"{kind}:{i}" for i in range(5)]
    await store.col.insert_many([{"_id": key, "kind": kind, "payload": {}, "status": "failed", "attempts": 5, "run_at": at,
                                  "created_at": at, "updated_at": at, "finished_at": at, "last_error": "x"} for key in keys])
    try:
        admin = await sheda.admin()
        seen, cursor = [], None
        while len(seen) < 10:
            params = {"status": "failed", "limit": 2, **({"cursor": cursor} if cursor else {})}
            page = (await sheda.api.get("/api/v1/admin/jobs", params=params, token=admin.token)).json
            seen += [i["key"] for i in page["items"] if i["kind"] == kind]
            cursor = page["next_cursor"]
            if not cursor or len(seen) == len(keys):
                break
        assert seen == sorted(keys, reverse=True)
    finally:
        await store.col.delete_many({"kind": kind})


def _collscan(stage: dict) -> bool:
    children = ([stage["inputStage"]] if "inputStage" in stage else []) + list(stage.get("inputStages", []))
    return stage.get("stage") == "COLLSCAN" or any(_collscan(c) for c in children)


async def test_claim_and_admin_queries_walk_an_index(sheda):
    """The embedded planner scans the collection unless every filter condition is a key of one index:
    the runner's claim query and the admin listing are explained here."""
    db, now = sheda.ctx.db, sheda.ctx.clock.now()
    filters = [{"status": status, "run_at": {"$lte": now}} for status in ("pending", "running")]
    filters.append({"status": "running", "run_at": {"$gte": now, "$lte": now}})
    filters += [{"status": "pending", "run_at": now, "_id": {"$gt": "k"}}, {"status": "pending", "run_at": {"$gt": now, "$lte": now}}]  # keyset pages
    filters += [{"status": "failed"}, {"status": "failed", "run_at": {"$lt": now}}]  # the admin listing and its cursor pages
    filters.append({"status": "pending", "run_at": {"$lte": datetime(9999, 1, 1, tzinfo=timezone.utc)}})  # the gauges' walk
    for flt in filters:
        explained = await db.command("explain", {"find": "jobs", "filter": flt}, verbosity="queryPlanner")
        assert not _collscan(explained["queryPlanner"]["winningPlan"]), (flt, explained)


async def test_the_queue_gauges_read_the_pending_jobs_once_and_count_a_longer_queue(sheda, monkeypatch):
    """sheda_jobs_pending and sheda_jobs_oldest_due_seconds come from one walk of the pending jobs,
    which the observers (push, by provider) get too; past the walk's limit the queue is counted."""
    from sheda_rt.jobs import runner as runner_module
    from sheda_rt.jobs.runner import JOBS_OLDEST_DUE_SECONDS, JOBS_PENDING

    runner, store, clock = sheda.ctx.job_runner, sheda.ctx.job_store, sheda.ctx.clock
    kind = kind_name("gauges")
    seen = []

    async def observer(pending, now):
        seen.append(([d for d in pending if d["kind"] == kind], now))

    reads = Counter()  # this test task's reads only (not the server's own runner loop, which observes too)
    real_pending, real_count = store.pending, store.count_pending
    mine = contextvars.ContextVar("mine", default=False)
    mine.set(True)

    async def pending_walk(limit):
        if mine.get():
            reads["walk"] += 1
        return await real_pending(limit)

    async def count_pending():
        if mine.get():
            reads["count"] += 1
        return await real_count()

    monkeypatch.setattr(store, "pending", pending_walk)
    monkeypatch.setattr(store, "count_pending", count_pending)
    runner.observers.append(observer)
    try:
        now = clock.now()
        for i, minutes in enumerate((-10, 5, 60)):  # one due 10 minutes ago, two not due yet
            await runner.enqueue(kind, {"i": i}, key=f"{kind}:{i}", run_at=now + timedelta(minutes=minutes))
        pending = lambda: store.col.count_documents({"status": "pending"})  # noqa: E731 (the whole shared queue)
        before = await pending()
        await runner.observe()
        assert JOBS_PENDING._value.get() in (before, await pending()) and before >= 3
        assert reads == {"walk": 1}  # one read of the queue for every gauge, the observers' too
        assert JOBS_OLDEST_DUE_SECONDS._value.get() >= 600 - 1
        ours, when = seen[-1]
        assert [d["_id"] for d in ours] == [f"{kind}:0", f"{kind}:1", f"{kind}:2"]  # oldest first
        assert set(ours[0]) == {"_id", "kind", "run_at"} and abs((clock.now() - when).total_seconds()) < 5
        monkeypatch.setattr(runner_module, "OBSERVE_LIMIT", 2)  # a queue longer than the walk: counted
        before = await pending()
        await runner.observe()
        assert JOBS_PENDING._value.get() in (before, await pending()) and before >= 3
        assert reads == {"walk": 2, "count": 1} and len(seen[-1][0]) <= 2
    finally:
        runner.observers.remove(observer)
        await store.col.delete_many({"kind": kind})


async def test_many_jobs_due_at_one_instant_never_hide_the_ones_behind_them(sheda):
    """More jobs due at the same instant than one read holds (a broadcast's pushes; here jobs of a
    kind this process does not run, which it walks past): one run_due still reaches the jobs after
    them. Before, reads paged on run_at alone returned the same batch again and stopped there."""
    runner, store, clock = sheda.ctx.job_runner, sheda.ctx.job_store, sheda.ctx.clock
    at = clock.now()
    foreign, mine = kind_name("aa.other.version"), kind_name("zz.mine")
    ran = []

    async def handle(job):
        ran.append(job["_id"])

    runner.register(mine, handle)
    try:
        for i in range(runner.batch * 2 + 3):  # keys sort before mine's, all due at `at`
            await runner.enqueue(foreign, {}, key=f"{foreign}:{i:03}", run_at=at)
        for i in range(runner.batch + 2):
            await runner.enqueue(mine, {}, key=f"{mine}:{i:03}", run_at=at)
        await runner.run_due()
        assert sorted(ran) == [f"{mine}:{i:03}" for i in range(runner.batch + 2)]
        assert await store.col.count_documents({"kind": foreign, "status": "pending"}) == runner.batch * 2 + 3  # walked past
    finally:
        await store.col.delete_many({"kind": {"$in": [foreign, mine]}})


async def test_contract_expiry_period_runs_once_through_the_queue(sheda):
    job = sheda.ctx.contract_expiry
    sheda.ctx.clock.advance(days=1000)  # a period no other test uses
    counts = await asyncio.gather(job.run(), job.run(), job.run())
    doc = await sheda.ctx.job_store.get(job.period_key())
    assert doc["kind"] == "contract_expiry" and doc["status"] == "done" and doc["attempts"] == 1
    assert doc["result"] == sum(counts)
    assert await job.run() == 0  # the period's pass is done
    sheda.ctx.clock.advance(days=1)
    await job.run()
    assert (await sheda.ctx.job_store.get(job.period_key()))["status"] == "done"
