"""The event stream across processes and faults: two `python run.py` processes sharing one
redis-server and one database (Redis stopped mid-test), and one process killed with kill -9
together with its embedded database. Whatever a socket got live, and whatever was acked,
is in the replay afterwards, once, in order."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import uuid
from datetime import datetime, timezone

from tests.listing_helpers import confirmed_viewing, create_property, next_slot, open_window
from tests.redis_support import Remote, ServerProcess, redis_server, server_env, server_pair, shared_dir  # noqa: F401


async def replay(remote: Remote, user, after_seq: int = 0) -> list[dict]:
    out, after = [], after_seq
    while True:
        r = await remote.api.get("/api/v1/events", params={"after_seq": after, "limit": 50}, token=user.token)
        assert r.status == 200, r
        out += r.json["items"]
        after = r.json["last_seq"]
        if not r.json["more"]:
            return out


def seqs(frames) -> list[int]:
    return [f["seq"] for f in frames if "seq" in f]


async def send(ws, receiver_id: int, text: str) -> dict:
    cid = uuid.uuid4().hex
    await ws.send({"receiver_id": receiver_id, "message": text, "client_msg_id": cid})
    return await ws.wait_type("ack", 10, client_msg_id=cid)


async def test_replay_covers_two_processes_and_a_redis_outage(server_pair, redis_server):
    a, b = (Remote(s) for s in server_pair)
    alice, bob, carol = await a.signup("client"), await b.signup("agent"), await a.signup("client")
    alice_a = await a.ws(alice.token)  # Alice's phone on process A, online throughout
    bob_b = await b.ws(bob.token)

    # Before the outage: every kind of durable event, crossing processes.
    prop = await create_property(b, bob)
    when = next_slot(datetime.now(timezone.utc), days_ahead=2, hour=10)
    await open_window(b, bob, when, "09:00", "17:00")
    first = await send(bob_b, alice.id, "from B")
    await alice_a.wait_type("message", 10, id=first["id"])
    await alice_a.send({"type": "read", "other_user_id": bob.id, "up_to": first["id"]})
    await bob_b.wait_type("read", 10)
    await confirmed_viewing(a, bob, alice, prop, when)
    await alice_a.wait_type("appointment.confirmed", 10)
    live_before = seqs(alice_a.frames)
    assert live_before == sorted(live_before) and len(live_before) >= 4

    # Redis goes away: the processes cannot reach each other's sockets.
    redis_server.stop()
    try:
        await asyncio.sleep(0.5)
        during = []
        for n in range(3):  # Bob keeps writing from B (stored; Alice's socket on A cannot hear it)
            r = await b.api.post("/api/v1/chats", {"receiver_id": alice.id, "message": f"outage {n}"}, token=bob.token)
            assert r.status == 201, r
            during.append(r.json["id"])
        mine = await send(alice_a, bob.id, "from A during the outage")  # stored and acked on A
        # Carol, on A too, writes to Alice: heard live, with a position above Bob's unheard ones,
        # so "sync from the highest seq I have" alone would skip Bob's.
        r = await a.api.post("/api/v1/chats", {"receiver_id": alice.id, "message": "carol on A"}, token=carol.token)
        assert r.status == 201, r
        await alice_a.wait_type("message", 10, id=r.json["id"])
        assert r.json["id"] > max(during)
    finally:
        redis_server.start()
    # Back: every socket is told where to sync from.
    hint = await alice_a.wait_type("sync.hint", 20)
    assert hint["after_seq"] <= min(during)
    start = min(hint["after_seq"], max(seqs(alice_a.frames)))
    caught_up = await replay(a, alice, start)

    everything = await replay(b, alice)  # the whole stream, asked of the other process
    whole = seqs(everything)
    assert whole == sorted(whole) and len(whole) == len(set(whole))
    # Nothing Alice saw live is missing, nothing is missing after the sync, and the outage's
    # messages (hers and Bob's) are there.
    assert set(seqs(alice_a.frames)) <= set(whole)
    # (The socket that sent a read receipt is not sent it back, nor its own messages: it knows them.)
    own = {f["seq"] for f in everything if f["type"] == "read" and f["reader_id"] == alice.id}
    own |= {f["seq"] for f in everything if f["type"] == "message" and f["sender_info"]["id"] == alice.id}
    assert set(seqs(alice_a.frames)) | set(seqs(caught_up)) | own == set(whole)
    assert set(during) | {mine["id"]} <= set(whole)
    bobs = seqs(await replay(a, bob))
    assert set(during) | {mine["id"], first["id"]} <= set(bobs)
    for ws in (alice_a, bob_b):
        ws.close()


async def test_nothing_acked_or_seen_is_lost_after_kill_9_of_the_server_and_its_database(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    env = server_env(None, None, data, "sheda_stream_kill")
    server = ServerProcess(env, data, "first")
    again = ServerProcess(env, data, "second")
    try:
        server.start(timeout=120)
        remote = Remote(server)
        alice, bob = await remote.signup("client"), await remote.signup("agent")
        alice_ws, bob_ws = await remote.ws(alice.token), await remote.ws(bob.token)
        acks = [await send(bob_ws, alice.id, f"m{n}") for n in range(5)]
        await alice_ws.wait_type("message", 10, id=acks[-1]["id"])
        await alice_ws.send({"type": "read", "other_user_id": bob.id, "up_to": acks[2]["id"]})
        receipt = await bob_ws.wait_type("read", 10)
        seen_alice, seen_bob = seqs(alice_ws.frames), seqs(bob_ws.frames)
        # kill -9 the server, then its embedded database.
        lock = json.loads((data / "db.lock.json").read_text())
        server.process.send_signal(signal.SIGKILL)
        server.process.wait()
        os.kill(lock["pid"], signal.SIGKILL)

        again.start(timeout=120)
        remote = Remote(again)
        for user, seen in ((alice, seen_alice), (bob, seen_bob)):
            stream = await replay(remote, user)
            assert set(seen) <= set(seqs(stream)), (seen, stream)
            assert seqs(stream) == sorted(set(seqs(stream)))
        assert {a["id"] for a in acks} | {receipt["seq"]} <= set(seqs(await replay(remote, alice)))
        # The stream goes on after the restart, above everything before it.
        ws = await remote.ws(bob.token)
        later = await send(ws, alice.id, "after the restart")
        assert later["id"] > max(seen_alice + seen_bob)
        ws.close()
    finally:
        server.stop()
        again.stop()
