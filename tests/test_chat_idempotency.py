"""Exactly-once resends with client_msg_id, without a unique index: the idempotency
window (sheda_rt/chat/idempotency.py) in one process, across two processes through
Redis, and after the server and the embedded database are killed with kill -9."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import uuid

import pytest

from sheda_rt.chat.store import conv_key
from tests.redis_support import Remote, ServerProcess, redis_server, running_pair, server_env, shared_dir  # noqa: F401


def key() -> str:
    return uuid.uuid4().hex


async def acked(ws, cid: str, timeout: float = 10.0, start: int = 0) -> dict:
    """The answer (ack or error frame) to cid among the frames from `start` on."""
    return await ws.wait_for(lambda f: f.get("client_msg_id") == cid and f.get("type") in ("ack", "error"), timeout, start)


async def history(api, me, other) -> list[dict]:
    resp = await api.get(f"/api/v1/chat/chat-history/{other.id}", token=me.token, params={"limit": 100})
    assert resp.status == 200, resp
    return resp.json


@pytest.fixture
def settings_overrides():
    # A 30 ms window puts frames sent together into one batch.
    return {"ws_rate_burst": 10_000, "ws_rate_per_second": 10_000, "chat_batch_window_ms": 30}


async def test_resends_in_one_process_store_once_in_a_batch_in_flight_and_later(sheda):
    alice, bob = await sheda.signup("client"), await sheda.signup("agent")
    a1, a2, b = await sheda.ws(alice.token), await sheda.ws(alice.token), await sheda.ws(bob.token)
    store = sheda.ctx.chat.messages
    real_insert = store.insert_batch
    calls = []

    async def slow_first_insert(docs):  # the real insert, the first one late: the next batch is prepared meanwhile
        calls.append([d.get("client_msg_id") for d in docs])
        if len(calls) == 1:
            await asyncio.sleep(0.3)
        return await real_insert(docs)

    store.insert_batch = slow_first_insert
    k = key()
    try:
        # Twice in one batch, then again (and from alice's other socket) while that batch is in flight.
        await a1.send({"receiver_id": bob.id, "message": "hello", "client_msg_id": k})
        await a1.send({"receiver_id": bob.id, "message": "hello", "client_msg_id": k})
        await asyncio.sleep(0.1)
        await a1.send({"receiver_id": bob.id, "message": "hello again", "client_msg_id": k})
        await a2.send({"receiver_id": bob.id, "message": "hello", "client_msg_id": k})
        await a1.wait_for(lambda f: len(a1.of_type("ack")) == 3)
        await a2.wait_type("ack", client_msg_id=k)
    finally:
        store.insert_batch = real_insert
    assert calls[0] == [k], calls  # only the first copy was ever written
    ids = {f["id"] for f in a1.of_type("ack") + a2.of_type("ack")}
    assert len(ids) == 1
    (mid,) = ids
    # Later, over the socket and over REST: the same message, nothing new.
    await a1.send({"receiver_id": bob.id, "message": "hello", "client_msg_id": k})
    assert (await a1.wait_for(lambda f: len(a1.of_type("ack")) == 4))["id"] == mid
    rest = await sheda.api.post("/api/v1/chats", {"receiver_id": bob.id, "message": "hello", "client_msg_id": k}, token=alice.token)
    assert rest.status == 200 and rest.json["id"] == mid and rest.json["message"] == "hello"
    docs = await sheda.ctx.db["messages"].find({"conv": conv_key(alice.id, bob.id)}).to_list()
    assert [(d["_id"], d["message"]) for d in docs] == [(mid, "hello")]
    await asyncio.sleep(0.2)
    assert [f["id"] for f in b.of_type("message")] == [mid]  # delivered once
    # The same key from another sender, or to another receiver, is another message.
    carol = await sheda.signup("client")
    c = await sheda.ws(carol.token)
    await c.send({"receiver_id": bob.id, "message": "mine", "client_msg_id": k})
    assert (await c.wait_type("ack", client_msg_id=k))["id"] > mid


async def test_a_resend_after_the_receiver_blocked_or_left_gets_the_same_ack(sheda):
    """The ack was lost, then the receiver blocked the sender (or was deactivated) before the
    resend: the message was stored and delivered, so the resend still gets its ack (the same id
    and time; over REST 200 with it), never `blocked` / `receiver_inactive`, which a client takes
    for "not sent". A new message is refused as before."""
    alice, bob, carol = await sheda.signup("client"), await sheda.signup("agent"), await sheda.signup("agent")
    a = await sheda.ws(alice.token)
    first = {}
    for peer, cid in ((bob, "before-block"), (carol, "before-leaving")):
        await a.send({"receiver_id": peer.id, "message": "See you at 10", "client_msg_id": cid})
        first[cid] = await acked(a, cid)
        assert first[cid]["type"] == "ack", first[cid]
    assert (await sheda.api.post(f"/api/v1/users/{alice.id}/block", token=bob.token)).status == 201
    assert (await sheda.api.delete("/api/v1/users/me", token=carol.token)).status == 204
    for peer, cid, refusal in ((bob, "before-block", "blocked"), (carol, "before-leaving", "receiver_inactive")):
        start = len(a.frames)
        await a.send({"receiver_id": peer.id, "message": "See you at 10", "client_msg_id": cid})
        assert await acked(a, cid, start=start) == first[cid]
        rest = await sheda.api.post("/api/v1/chats", {"receiver_id": peer.id, "message": "See you at 10", "client_msg_id": cid},
                                    token=alice.token)
        assert rest.status == 200 and (rest.json["id"], rest.json["created_at"]) == (first[cid]["id"], first[cid]["created_at"]), rest
        start = len(a.frames)
        await a.send({"receiver_id": peer.id, "message": "Hello?", "client_msg_id": key()})
        refused = await a.wait_for(lambda f: f.get("type") == "error", start=start)
        assert refused["code"] == refusal, refused
        assert [m["id"] for m in await history(sheda.api, alice, peer)] == [first[cid]["id"]]


async def test_the_unique_index_of_earlier_versions_is_dropped_at_startup(sheda):
    from pymongo import ASCENDING, IndexModel

    col = sheda.ctx.db["messages"]
    await col.create_indexes([IndexModel([("sender_id", ASCENDING), ("client_msg_id", ASCENDING)], unique=True, name="idempotency",
                                         partialFilterExpression={"client_msg_id": {"$type": "string"}})])
    await sheda.ctx.chat.messages.ensure_indexes()
    assert set(await col.index_information()) == {"_id_", "conversation"}


@pytest.fixture
def server_pair(embedded_db, redis_server, shared_dir):
    """Two server processes, one Redis, one database (the rate limit out of the way)."""
    env = server_env(embedded_db, redis_server, shared_dir, f"sheda_idem_{uuid.uuid4().hex[:8]}",
                     WS_RATE_BURST=10_000, WS_RATE_PER_SECOND=10_000)
    with running_pair(env, shared_dir) as pair:
        yield pair


async def test_a_resend_to_the_other_process_is_stored_once(server_pair):
    a, b = server_pair
    ra, rb = Remote(a), Remote(b)
    alice, bob = await ra.signup("client"), await ra.signup("agent")
    alice_a, alice_b, bob_b = await ra.ws(alice.token), await rb.ws(alice.token), await rb.ws(bob.token)
    # Process b knows the conversation already (it stored a message of it), so it has it in memory
    # when the resend comes: only the claim in Redis can tell it the key was stored by process a.
    first = key()
    await alice_b.send({"receiver_id": bob.id, "message": "first", "client_msg_id": first})
    assert (await acked(alice_b, first))["type"] == "ack"
    sent = {}
    for i in range(5):
        k = key()
        await alice_a.send({"receiver_id": bob.id, "message": f"m{i}", "client_msg_id": k})
        sent[k] = await acked(alice_a, k)
        assert sent[k]["type"] == "ack", sent[k]
        await alice_b.send({"receiver_id": bob.id, "message": f"m{i}", "client_msg_id": k})
        again = await acked(alice_b, k)
        assert again["type"] == "ack" and again["id"] == sent[k]["id"], (sent[k], again)
    # The same new key on both processes at the same moment, many times: one message each.
    raced = []
    for i in range(10):
        k = key()
        await asyncio.gather(alice_a.send({"receiver_id": bob.id, "message": f"r{i}", "client_msg_id": k}),
                             alice_b.send({"receiver_id": bob.id, "message": f"r{i}", "client_msg_id": k}))
        one, two = await acked(alice_a, k), await acked(alice_b, k)
        assert one["type"] == two["type"] == "ack" and one["id"] == two["id"], (one, two)
        raced.append(one["id"])
    rows = await history(ra.api, alice, bob)
    assert sorted(r["message"] for r in rows) == sorted(["first"] + [f"m{i}" for i in range(5)] + [f"r{i}" for i in range(10)])
    await bob_b.wait_for(lambda f: len(bob_b.of_type("message")) >= 16, 10)
    await asyncio.sleep(0.3)
    delivered = [f["id"] for f in bob_b.of_type("message")]
    assert len(delivered) == len(set(delivered)) == 16, delivered


async def test_a_resend_after_kill_9_of_the_server_and_its_database_is_stored_once(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    env = server_env(None, None, data, "sheda_idem_restart")
    server = ServerProcess(env, data, "first")
    again = ServerProcess(env, data, "second")
    try:
        server.start(timeout=120)
        remote = Remote(server)
        alice, bob = await remote.signup("client"), await remote.signup("agent")
        ws = await remote.ws(alice.token)
        keys = [key() for _ in range(3)]
        acks = {}
        for i, k in enumerate(keys):
            await ws.send({"receiver_id": bob.id, "message": f"m{i}", "client_msg_id": k})
            acks[k] = await acked(ws, k)
            assert acks[k]["type"] == "ack"
        # kill -9 the server, then its embedded database (it runs in its own session).
        lock = json.loads((data / "db.lock.json").read_text())
        server.process.send_signal(signal.SIGKILL)
        server.process.wait()
        os.kill(lock["pid"], signal.SIGKILL)

        again.start(timeout=120)
        remote = Remote(again)
        ws = await remote.ws(alice.token)
        for i, k in enumerate(keys):  # the client never saw these acks: it sends again
            await ws.send({"receiver_id": bob.id, "message": f"m{i}", "client_msg_id": k})
            resent = await acked(ws, k)
            assert resent["type"] == "ack" and resent["id"] == acks[k]["id"], (acks[k], resent)
        fresh = key()
        await ws.send({"receiver_id": bob.id, "message": "new", "client_msg_id": fresh})
        assert (await acked(ws, fresh))["id"] > max(a["id"] for a in acks.values())
        rows = await history(remote.api, alice, bob)
        assert [r["message"] for r in sorted(rows, key=lambda r: r["id"])] == ["m0", "m1", "m2", "new"]
    finally:
        server.stop()
        again.stop()


async def test_first_messages_of_new_conversations_during_an_outage_fail_and_the_chat_recovers(tmp_path):
    """A conversation this process has not seen is read back from the database before its
    first message is stored; with the database away that read fails. Those messages get an
    error frame, and once the database is back every conversation works again (a failed
    read must not leave the group commit wedged)."""
    import tempfile
    from pathlib import Path

    from sheda_rt.database.embedded import EmbeddedDatabase

    db = EmbeddedDatabase(Path(tempfile.mkdtemp(prefix="sheda-idem-db-", dir=tmp_path)))
    db.start()
    server = ServerProcess(server_env(db, None, tmp_path, "sheda_idem_outage"), tmp_path, "outage")
    try:
        server.start()
        remote = Remote(server)
        alice, bob, carol, dave = [await remote.signup("client") for _ in range(4)]
        alice_ws, bob_ws = await remote.ws(alice.token), await remote.ws(bob.token)
        # Carol and dave are known receivers (cached as active), but alice never wrote to them.
        for other in (carol, dave):
            k = key()
            await bob_ws.send({"receiver_id": other.id, "message": "hi", "client_msg_id": k})
            assert (await acked(bob_ws, k))["type"] == "ack"

        os.kill(db.process.pid, signal.SIGKILL)
        db.process.wait()
        failed = {}
        for other in (carol, dave, carol):
            k = key()
            await alice_ws.send({"receiver_id": other.id, "message": "during", "client_msg_id": k})
            failed[k] = (other, await acked(alice_ws, k, 20))
            assert failed[k][1]["type"] == "error", failed[k]

        assert db.recover()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while (await remote.api.get("/health/ready")).status != 200:
            assert loop.time() < deadline, "ready again"
            await asyncio.sleep(0.2)
        for k, (other, _) in failed.items():  # the client sends them again
            start = len(alice_ws.frames)
            await alice_ws.send({"receiver_id": other.id, "message": "during", "client_msg_id": k})
            again = await acked(alice_ws, k, 20, start)
            assert again["type"] == "ack", again
        assert len(await history(remote.api, alice, carol)) == 2 and len(await history(remote.api, alice, dave)) == 1
    finally:
        server.stop()
        db.stop()


async def test_a_resend_after_an_insert_whose_answer_was_lost_is_stored_once(sheda):
    """The database wrote the batch but its answer never came back (the connection dropped,
    or the database died right after journaling it): the sender got an error, not an ack,
    and sends again. The resend must find the stored copy, not store a second one."""
    from pymongo.errors import AutoReconnect

    alice, bob = await sheda.signup("client"), await sheda.signup("agent")
    a, b = await sheda.ws(alice.token), await sheda.ws(bob.token)
    warm = key()
    await a.send({"receiver_id": bob.id, "message": "warm", "client_msg_id": warm})
    await a.wait_type("ack", client_msg_id=warm)  # the conversation is known to this process
    store = sheda.ctx.chat.messages
    real_insert = store.insert_batch

    async def written_then_lost(docs):
        await real_insert(docs)
        raise AutoReconnect("connection closed")

    store.insert_batch = written_then_lost
    k = key()
    try:
        await a.send({"receiver_id": bob.id, "message": "did it land?", "client_msg_id": k})
        err = await a.wait_type("error", client_msg_id=k)
        assert err["code"] == "store_failed"
    finally:
        store.insert_batch = real_insert
    stored = await sheda.ctx.db["messages"].find({"conv": conv_key(alice.id, bob.id), "client_msg_id": k}).to_list()
    assert len(stored) == 1  # it did
    await a.send({"receiver_id": bob.id, "message": "did it land?", "client_msg_id": k})
    ack = await a.wait_type("ack", client_msg_id=k)
    assert ack["id"] == stored[0]["_id"]
    assert await sheda.ctx.db["messages"].count_documents({"conv": conv_key(alice.id, bob.id)}) == 2
