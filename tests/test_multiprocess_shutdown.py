"""SIGTERM with sockets open and messages in flight: pending batches are stored,
their acks and deliveries go out, then every client gets 1001. The database and
the acks agree exactly: every acked message is stored, and nothing was stored
that its sender was not told about."""
from __future__ import annotations

import asyncio
import signal
import uuid

from pymongo import AsyncMongoClient
from tornado.websocket import WebSocketClosedError

from tests.redis_support import Remote, ServerProcess, server_env

PAIRS = 8


async def test_sigterm_stores_what_was_acked_and_closes_with_1001(embedded_db, tmp_path):
    db_name = f"sheda_shutdown_{uuid.uuid4().hex[:8]}"
    # Generous socket rate limits: this test is about shutdown, not throttling.
    env = server_env(embedded_db, None, tmp_path, db_name, WS_RATE_BURST=100000, WS_RATE_PER_SECOND=100000)
    server = ServerProcess(env, tmp_path, "single").start()
    remote = Remote(server)
    try:
        senders = [await remote.signup("client") for _ in range(PAIRS)]
        receivers = [await remote.signup("agent") for _ in range(PAIRS)]
        sender_ws = [await remote.ws(u.token) for u in senders]
        receiver_ws = [await remote.ws(u.token) for u in receivers]
        sent: list[list[str]] = [[] for _ in range(PAIRS)]
        stop_sending = asyncio.Event()

        async def keep_sending(i: int) -> None:
            n = 0
            while not stop_sending.is_set() and not sender_ws[i].closed.done():
                cid = f"s{i}-{n}"
                try:
                    await sender_ws[i].send({"receiver_id": receivers[i].id, "message": f"message {n}", "client_msg_id": cid})
                except WebSocketClosedError:
                    return
                sent[i].append(cid)
                n += 1
                await asyncio.sleep(0.003)

        tasks = [asyncio.ensure_future(keep_sending(i)) for i in range(PAIRS)]
        await asyncio.sleep(1.0)  # traffic flowing: batches being stored while the signal lands
        assert all(ws.of_type("ack") for ws in sender_ws), "no traffic before the signal"
        server.signal(signal.SIGTERM)

        closes = await asyncio.gather(*(ws.wait_closed(20) for ws in sender_ws + receiver_ws))
        stop_sending.set()
        await asyncio.gather(*tasks)
        assert await asyncio.get_running_loop().run_in_executor(None, server.wait, 30) == 0
        assert [code for code, _reason in closes] == [1001] * (2 * PAIRS), closes

        client = AsyncMongoClient(embedded_db.uri)
        try:
            messages = client[db_name]["messages"]
            for i in range(PAIRS):
                stored = {d["client_msg_id"]: d["_id"] async for d in messages.find({"sender_id": senders[i].id})}
                acks = {f["client_msg_id"]: f["id"] for f in sender_ws[i].of_type("ack")}
                refused = {f.get("client_msg_id") for f in sender_ws[i].of_type("error")}
                # Every acked message is stored under the id the ack named, and nothing unacked was stored.
                assert acks == stored, (i, set(acks) ^ set(stored))
                # What was not stored was refused with an error frame, or never read before the close.
                assert not refused & set(stored)
                assert all(f["code"] == "shutting_down" for f in sender_ws[i].of_type("error")), sender_ws[i].of_type("error")
                unanswered = [c for c in sent[i] if c not in acks and c not in refused]
                assert unanswered == sent[i][len(sent[i]) - len(unanswered):], "only a tail of unread frames may go unanswered"
                # The receiver got every stored message live before its 1001, in order, once.
                delivered = [f["id"] for f in receiver_ws[i].of_type("message")]
                assert delivered == sorted(stored.values()), i
                assert len(stored) > 10
        finally:
            await client.close()
    finally:
        server.stop()
