"""Message ids in delivery order across processes.

A client syncs from the highest id it has seen, so no socket may ever receive a
message after one with a higher id: if it lost its connection in between, the
lower one would never come (sync starts above it). Within one process the group
commit guarantees this (one batch at a time, delivered in id order). Across
processes, batches are stored side by side; they take turns through a commit
lock in Redis, and each releases its turn only after its deliveries went out.
"""
from __future__ import annotations

import asyncio
import shutil
import tempfile
import uuid
from pathlib import Path

import redis

from tests.redis_support import Remote, ServerProcess, redis_server, server_env  # noqa: F401  (fixture)

SENDERS_PER_PROCESS = 4
MESSAGES_EACH = 120


async def test_every_socket_receives_ids_in_increasing_order_across_processes(embedded_db, redis_server):
    shared = Path(tempfile.mkdtemp(prefix="sheda-order-"))
    db_name = f"sheda_order_{uuid.uuid4().hex[:8]}"
    env = server_env(embedded_db, redis_server, shared, db_name, WS_RATE_BURST=100000, WS_RATE_PER_SECOND=100000)
    a, b = ServerProcess(env, shared, "a"), ServerProcess(env, shared, "b")
    try:
        a.start()
        b.start()
        ra, rb = Remote(a), Remote(b)
        receiver = await ra.signup("agent")
        inbox = [await ra.ws(receiver.token), await rb.ws(receiver.token)]  # the receiver on both processes
        senders = []
        for remote in (ra, rb):
            for _ in range(SENDERS_PER_PROCESS):
                user = await remote.signup("client")
                senders.append(await remote.ws(user.token))

        async def burst(ws, n):
            for i in range(MESSAGES_EACH):
                await ws.send({"receiver_id": receiver.id, "message": f"{n}:{i}", "client_msg_id": f"{n}-{i}"})
                if i % 10 == 9:
                    await asyncio.sleep(0.001)

        await asyncio.gather(*(burst(ws, n) for n, ws in enumerate(senders)))
        total = len(senders) * MESSAGES_EACH
        for ws in inbox:
            await ws.wait_for(lambda f: len(ws.of_type("message")) >= total, 60)
        # Each turn was handed back right after its publishes, not left to lapse (3 s each).
        turn = redis.Redis.from_url(redis_server.url).get(f"sheda:{db_name}:chat:turn")
        assert turn is None, "the last batch's turn is released once its deliveries are out"
        for ws in inbox:
            ids = [f["id"] for f in ws.of_type("message")]
            assert len(ids) == total == len(set(ids)), "each message once"
            late = [(prev, cur) for prev, cur in zip(ids, ids[1:]) if cur < prev]
            assert not late, f"{len(late)} deliveries came after a higher id, e.g. {late[:5]}"
    finally:
        a.stop()
        b.stop()
        shutil.rmtree(shared, ignore_errors=True)
