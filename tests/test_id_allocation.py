"""The first writes of every kind on an empty store race for the id counters (issue 19).

A fresh data directory has no counter documents; the first registrations, the
first chat messages, the first listing all create theirs at the same moment.
Before the fix, the embedded database answered some of the racing upserts with
no document and `reserve` failed with a TypeError: a 500 for a registration.
"""
from __future__ import annotations

import asyncio
import uuid

import tornado.netutil
from tornado.httpclient import AsyncHTTPClient

from config import load_settings
from handlers.app import make_app
from sheda_rt.database.connection import connect
from sheda_rt.database.ids import IdAllocator
from sheda_rt.server import Server
from tests.listing_helpers import listing
from tests.support import ShedaClient, otp_from_mail, unique


ROUNDS = 5  # fresh databases per test; the HTTP race failed in most rounds without the fix
USERS = 24  # registered at once per round, then 12 pairs send their first messages at once


async def test_concurrent_first_reservations_get_disjoint_ids(embedded_db):
    """The allocator alone, at the driver: 30 callers reserve 1 to 3 ids of a counter that does
    not exist yet, on 20 fresh databases. Without the fix most rounds had a failure."""
    client, _ = connect(embedded_db.uri, "unused")
    try:
        for _ in range(20):
            ids = IdAllocator(client["ids_race_" + uuid.uuid4().hex[:10]])
            ranges = await asyncio.gather(*[ids.reserve("things", 1 + i % 3) for i in range(30)])
            got = [i for r in ranges for i in r]
            assert len(got) == sum(1 + i % 3 for i in range(30))
            assert len(set(got)) == len(got), "two callers were given the same id"
            assert await ids.current("things") >= max(got)
    finally:
        await client.close()


async def _fresh_server(embedded_db, tmp_path) -> tuple[Server, ShedaClient]:
    settings = load_settings(
        data_dir=tmp_path / uuid.uuid4().hex[:8], mongodb_uri=embedded_db.uri, mongodb_db="ids_race_" + uuid.uuid4().hex[:10],
        host="127.0.0.1", port=0, jwt_secret="test-secret-" + "x" * 32, bcrypt_rounds=4, shutdown_grace_seconds=2,
        ws_rate_burst=10_000, ws_rate_per_second=10_000,
        registrations_per_ip_per_hour=100_000,  # the burst registers USERS accounts from one address
    )
    server = Server(settings, embedded_db.uri, app_factory=make_app)
    port = (await server.start(tornado.netutil.bind_sockets(0, "127.0.0.1")))[0]
    sheda = ShedaClient(server, f"http://127.0.0.1:{port}")
    # All the requests of a burst in flight together (the shared client holds 10 at most).
    sheda.api.http = AsyncHTTPClient(force_instance=True, max_clients=USERS)
    return server, sheda


async def test_first_registrations_and_messages_race_on_a_fresh_database(embedded_db, tmp_path):
    for _ in range(ROUNDS):
        server, sheda = await _fresh_server(embedded_db, tmp_path)
        try:
            bodies = [{"username": unique("r"), "email": f"{unique('e')}@example.com", "password": "correct-horse-1",
                       "user_type": "agent" if i % 2 else "client"} for i in range(USERS)]
            answers = await asyncio.gather(*[sheda.api.post("/api/v1/auth/register", b) for b in bodies])
            assert [a.status for a in answers] == [201] * USERS, answers
            user_ids = [a.json["id"] for a in answers]
            assert len(set(user_ids)) == USERS

            # Every account is stored under the id it was given.
            for uid, body in zip(user_ids, bodies):
                profile = await sheda.api.get(f"/api/v1/users/{uid}")
                assert profile.status == 200 and profile.json["username"] == body["username"], profile

            verified = await asyncio.gather(*[
                sheda.api.post("/api/v1/auth/verify-account", {"email": b["email"], "otp": otp_from_mail(sheda.ctx.mailer, b["email"])})
                for b in bodies])
            assert all(v.status == 200 for v in verified), verified
            tokens = [v.json["access_token"] for v in verified]

            # The agents' first listings at once: the properties counter is created by this burst.
            agents = [(uid, tok) for i, (uid, tok) in enumerate(zip(user_ids, tokens)) if i % 2]
            listed = await asyncio.gather(*[sheda.api.post("/api/v1/properties", listing(title=f"flat of {uid}"), token=tok)
                                            for uid, tok in agents])
            assert all(r.status == 201 for r in listed), listed
            assert len({r.json["id"] for r in listed}) == len(agents)
            for r, (uid, _) in zip(listed, agents):
                shown = await sheda.api.get(f"/api/v1/properties/{r.json['id']}")
                assert shown.status == 200 and shown.json["agent_id"] == uid and shown.json["title"] == f"flat of {uid}"

            # The first chat messages of twelve pairs at once: the message counter and the
            # conversations are created by this burst.
            sends = await asyncio.gather(*[
                sheda.api.post("/api/v1/chats", {"receiver_id": user_ids[i + 1], "message": f"first {i}", "client_msg_id": f"c{i}"},
                               token=tokens[i])
                for i in range(0, USERS, 2)])
            assert all(s.status == 201 for s in sends), sends
            message_ids = [s.json["id"] for s in sends]
            assert len(set(message_ids)) == len(message_ids)
            for i, mid in zip(range(0, USERS, 2), message_ids):
                history = await sheda.api.get(f"/api/v1/chat/chat-history/{user_ids[i + 1]}", token=tokens[i])
                assert history.status == 200
                assert [(m["id"], m["message"]) for m in history.json] == [(mid, f"first {i}")]
        finally:
            await server.shutdown()
            cleaner, _ = connect(embedded_db.uri, "unused")
            await cleaner.drop_database(server.settings.mongodb_db)
            await cleaner.close()


async def test_ids_reserved_ahead_keep_increasing_and_the_head_is_what_was_handed_out(embedded_db):
    """A single process's chat takes ids from ranges it reserved ahead (ReservedIds). Whatever
    the sizes asked, concurrently or not, ids only increase, nothing is handed out twice, the
    stream's head is the newest id handed out (never one still to come), and a process started
    later (a restart) hands out ids above everything the earlier one reserved."""
    from sheda_rt.database.ids import ReservedIds

    client, _ = connect(embedded_db.uri, "unused")
    try:
        ids = IdAllocator(client["ids_ahead_" + uuid.uuid4().hex[:10]])
        await ids.reserve("messages", 41)  # earlier traffic
        first = ReservedIds(ids, "messages", ahead=16, most=64)
        assert await first.head() == 41  # nothing reserved yet: the counter
        got = await first.take(1)
        assert got == [42] and await first.head() == 42
        assert await ids.current("messages") > 42  # the rest of the range waits in memory
        handed = list(got)
        for size in (1, 3, 7, 16, 40, 2, 9):  # larger than the range, and across ranges
            more = await first.take(size)
            assert len(more) == size and more == sorted(more) and more[0] > handed[-1]
            handed += more
            assert await first.head() == handed[-1]
        assert first.ahead == 64  # grew with the takes (8 x 40 asked for), up to `most`
        together = await asyncio.gather(*(first.take(1 + i % 5) for i in range(30)))
        flat = [i for part in together for i in part]
        assert len(set(flat)) == len(flat) and min(flat) > handed[-1]
        assert all(part == sorted(part) for part in together)
        handed += flat
        assert await first.head() == max(handed)

        if first._refill is not None:  # a range the last takes started reserving, not handed out
            await first._refill
        reserved = await ids.current("messages")
        later = ReservedIds(ids, "messages", ahead=16)
        assert await later.head() == reserved  # what `first` left unused is never handed out
        after = await later.take(5)
        assert after[0] > reserved and len(set(after) | set(handed)) == len(after) + len(handed)
        assert reserved - max(handed) <= 64 + 40  # the gap: at most what was reserved ahead

        # Shutting down (another server may already be serving this database): what is still
        # stored gets ids above that server's, not from the rest of this one's range.
        theirs = await ids.reserve("messages", 10)
        later.stop_ahead()
        tail = await later.take(2)
        assert tail[0] > theirs[-1] and tail == sorted(tail) and await later.head() == tail[-1]
    finally:
        await client.close()


async def test_a_range_reserved_ahead_outlives_the_database_being_killed_even_when_the_uri_asks_w1(tmp_path):
    """A range is handed out long after it was reserved, so it must be journaled whatever write
    concern the URI sets: otherwise a database killed -9 and restarted behind the process's back
    forgets the increment, hands the same range out again, and ids go backwards. Three rounds of
    reserve, kill -9 at once, restart: the counter is always past every range."""
    import os
    import signal

    from sheda_rt.database.embedded import EmbeddedDatabase

    db = EmbeddedDatabase(tmp_path / "db")
    db.start()
    try:
        for _ in range(3):
            client, _ = connect(db.uri + "&w=1", "unused")  # the URI's own write concern: not journaled
            try:
                ids = IdAllocator(client["ids_durable"])
                await ids.reserve("messages", 5)  # the counter exists (a w=1 write, like the chat's)
                got = await ids.reserve("messages", 128, durable=True)
            finally:
                await client.close()
            os.kill(db.process.pid, signal.SIGKILL)
            db.process.wait()
            assert db.recover()
            client, _ = connect(db.uri, "unused")
            try:
                assert await IdAllocator(client["ids_durable"]).current("messages") >= got[-1]
            finally:
                await client.close()
    finally:
        db.stop()
