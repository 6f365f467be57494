"""How the group commit overlaps inserts (sheda_rt/chat/batcher.py): a batch starts at once
beside one insert still in progress, beside two only once PARALLEL_MIN messages wait; and
whatever overlaps, acks and deliveries go out in id order."""
from __future__ import annotations

import asyncio
import functools

import pytest

from sheda_rt.chat import batcher as batcher_module
from tests.support import eventually


@pytest.fixture
def settings_overrides():
    return {"ws_rate_burst": 10_000, "ws_rate_per_second": 10_000, "chat_pipeline_depth": 3}


# The insert's stages are held by gates: each state waited for stays until the test moves on.
until = functools.partial(eventually, interval=0.005)


async def test_a_second_insert_starts_at_once_a_third_waits_for_company_and_all_go_out_in_id_order(sheda):
    users = [await sheda.signup("client") for _ in range(2)]
    alice, bob = [await sheda.ws(u.token) for u in users]
    store = sheda.ctx.chat.messages
    real = store.insert_batch
    gate = asyncio.Event()
    calls: list[list[str]] = []

    async def held(docs):  # the database answers only once the test lets it
        calls.append([d["message"] for d in docs])
        await gate.wait()
        return await real(docs)

    store.insert_batch = held
    try:
        await alice.send({"receiver_id": users[1].id, "message": "one", "client_msg_id": "p1"})
        await until(lambda: len(calls) == 1, "the first message's insert")
        await alice.send({"receiver_id": users[1].id, "message": "two", "client_msg_id": "p2"})
        await until(lambda: len(calls) == 2, "a second insert beside the first, at once")
        # Beside two inserts in progress, a few messages wait for one of them to answer.
        few = batcher_module.PARALLEL_MIN - 1
        for i in range(few):
            await alice.send({"receiver_id": users[1].id, "message": f"w{i}", "client_msg_id": f"w{i}"})
        await until(lambda: sheda.ctx.chat.batcher.backlog == few, "the few queued")
        await asyncio.sleep(0.2)
        assert calls == [["one"], ["two"]]
        assert alice.of_type("ack") == [] and bob.of_type("message") == []  # nothing out before it is stored
        # One more makes PARALLEL_MIN waiting: they start a third insert together.
        await alice.send({"receiver_id": users[1].id, "message": "last", "client_msg_id": "plast"})
        await until(lambda: len(calls) == 3, "a third insert once PARALLEL_MIN wait")
        assert calls[2] == [f"w{i}" for i in range(few)] + ["last"]
        gate.set()
        keys = ["p1", "p2"] + [f"w{i}" for i in range(few)] + ["plast"]
        acks = [await alice.wait_type("ack", client_msg_id=k) for k in keys]
        delivered = [await bob.wait_type("message", client_msg_id=k) for k in keys]
    finally:
        gate.set()  # (a failed assertion above must not leave inserts held at shutdown)
        store.insert_batch = real
    ids = [a["id"] for a in acks]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert [d["id"] for d in delivered] == ids
    # In the order the sockets saw them, too: acks and deliveries in increasing id order.
    assert [f["id"] for f in alice.of_type("ack") if f.get("client_msg_id") in keys] == ids
    assert [f["id"] for f in bob.of_type("message") if f.get("client_msg_id") in keys] == ids


async def test_a_sync_never_reads_past_a_batch_still_being_stored(sheda):
    """Two inserts overlap: the second batch can be stored before the first. A sync (or stream
    replay) at that moment must not return the second batch's message: the client would move its
    position past the first batch's ids, then get that message delivered below its position."""
    users = [await sheda.signup("client") for _ in range(2)]
    alice, bob = [await sheda.ws(u.token) for u in users]
    store = sheda.ctx.chat.messages
    real = store.insert_batch
    gate = asyncio.Event()
    calls: list[list[str]] = []

    async def first_held(docs):  # the first batch's insert waits; the next one goes through
        calls.append([d["message"] for d in docs])
        if len(calls) == 1:
            await gate.wait()
        return await real(docs)

    store.insert_batch = first_held
    try:
        await alice.send({"receiver_id": users[1].id, "message": "early", "client_msg_id": "s1"})
        await until(lambda: len(calls) == 1, "the first insert")
        await alice.send({"receiver_id": users[1].id, "message": "late", "client_msg_id": "s2"})
        await until(lambda: len(calls) == 2, "the second insert")
        db = sheda.ctx.db
        for _ in range(200):  # the second batch is in the database, the first is not
            if await db["messages"].find_one({"message": "late", "sender_id": users[0].id}):
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError("the second batch was not stored")
        assert await db["messages"].find_one({"message": "early", "sender_id": users[0].id}) is None
        reader = await sheda.ws(users[1].token)  # bob's other device catching up
        await reader.send({"type": "sync", "since": 0, "limit": 50})
        done = await reader.wait_type("sync.done")
        assert done["count"] == 0 and reader.of_type("message") == [], reader.frames
        await reader.send({"type": "sync", "after_seq": 0, "limit": 50})
        done = await reader.wait_type("sync.done", after_seq=0)
        assert done["count"] == 0, reader.frames
        gate.set()
        acks = [await alice.wait_type("ack", client_msg_id=k) for k in ("s1", "s2")]
        live = [await reader.wait_type("message", client_msg_id=k) for k in ("s1", "s2")]
    finally:
        gate.set()
        store.insert_batch = real
    assert [f["id"] for f in live] == [a["id"] for a in acks] and acks[0]["id"] < acks[1]["id"]
    await reader.send({"type": "sync", "since": 0, "limit": 50})
    done = await reader.wait_for(lambda f: f.get("type") == "sync.done" and f.get("count") == 2)
    assert done["last_id"] == acks[1]["id"]
