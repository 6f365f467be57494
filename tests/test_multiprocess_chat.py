"""Chat across processes: two `python run.py` instances on different ports sharing
one redis-server and one database. User A's sockets on one process, user B's on
the other; every kind of frame crosses; Redis goes away and comes back mid-test."""
from __future__ import annotations

import asyncio
import json
import urllib.request
import uuid

from tests.redis_support import Remote, redis_server, server_pair, shared_dir  # noqa: F401  (module fixtures)


def msg_id() -> str:
    return uuid.uuid4().hex


async def send(ws, receiver_id: int, text: str, **extra) -> dict:
    """Send a message frame and return its ack."""
    cid = msg_id()
    await ws.send({"receiver_id": receiver_id, "message": text, "client_msg_id": cid, **extra})
    return await ws.wait_type("ack", 10, client_msg_id=cid)


async def quiet(ws, predicate, seconds: float = 0.5) -> None:
    """Assert no frame matching predicate arrives within `seconds`."""
    start = len(ws.frames)
    await asyncio.sleep(seconds)
    extra = [f for f in ws.frames[start:] if predicate(f)]
    assert not extra, extra


def ready(server) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(server.base_url + "/health/ready", timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


async def wait_ready(server, want_status: int, timeout: float = 20.0) -> dict:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        status, body = await loop.run_in_executor(None, ready, server)
        if status == want_status:
            return body
        assert loop.time() < deadline, (status, body)
        await asyncio.sleep(0.2)


async def test_every_frame_crosses_processes(server_pair):
    a, b = (Remote(s) for s in server_pair)
    alice, bob = await a.signup("client"), await b.signup("agent")
    alice_a, alice_b = await a.ws(alice.token), await b.ws(alice.token)   # Alice: phone on A, laptop on B
    bob_b = await b.ws(bob.token)

    # A message from Alice's socket on A: acked there once stored, delivered to Bob on B
    # and to Alice's laptop on B, in the seed's shape; never echoed to the sending socket.
    ack = await send(alice_a, bob.id, "Hello from process A")
    got = await bob_b.wait_type("message", 5, id=ack["id"])
    assert got["sender_info"]["id"] == alice.id and got["sender_info"]["username"] == alice.username
    assert got["receiver_id"] == bob.id and got["message"] == "Hello from process A" and got["created_at"] == ack["created_at"]
    await alice_b.wait_type("message", 5, id=ack["id"])
    await quiet(alice_a, lambda f: f.get("type") == "message")

    # Order holds across processes, and nothing arrives twice.
    acks = [await send(alice_a, bob.id, f"n{n}") for n in range(20)]
    await bob_b.wait_type("message", 5, id=acks[-1]["id"])
    await asyncio.sleep(0.3)
    ids = [f["id"] for f in bob_b.of_type("message")]
    assert ids == [ack["id"]] + [x["id"] for x in acks]

    # Bob answers from B: Alice gets it on both processes.
    reply = await send(bob_b, alice.id, "Hi Alice, from B")
    for ws in (alice_a, alice_b):
        await ws.wait_type("message", 5, id=reply["id"])

    # Read receipt from B reaches the sender's sockets on A and B.
    await bob_b.send({"type": "read", "other_user_id": alice.id, "up_to": acks[-1]["id"]})
    receipt = await alice_a.wait_type("read", 5)
    await alice_b.wait_type("read", 5)
    assert receipt.get("up_to") == acks[-1]["id"]

    # Typing from A shows on B.
    await alice_a.send({"type": "typing", "receiver_id": bob.id})
    typing = await bob_b.wait_type("typing", 5)
    assert typing.get("user_id", typing.get("sender_id")) == alice.id

    # A REST send on process A is delivered live to the socket on B.
    rest = await a.api.post("/api/v1/chats", {"receiver_id": bob.id, "message": "over REST on A"}, token=alice.token)
    assert rest.status == 201, rest
    await bob_b.wait_type("message", 5, message="over REST on A")

    # History is the same whichever process answers.
    hist_a = await a.api.get(f"/api/v1/chat/chat-history/{bob.id}", token=alice.token)
    hist_b = await b.api.get(f"/api/v1/chat/chat-history/{alice.id}", token=bob.token)
    assert hist_a.status == hist_b.status == 200 and hist_a.json == hist_b.json
    assert len(hist_a.json) == 23

    for ws in (alice_a, alice_b, bob_b):
        ws.close()


async def test_presence_is_global_across_processes(server_pair):
    a, b = (Remote(s) for s in server_pair)
    alice, bob = await a.signup("client"), await b.signup("client")
    alice_a = await a.ws(alice.token)
    bob_b = await b.ws(bob.token)
    await send(alice_a, bob.id, "so we share a conversation")

    def presence_of(user_id, online):
        return lambda f: f.get("type") == "presence" and f.get("user_id") == user_id and f.get("online") is online

    # Bob also connects on A: he was already online, so nobody hears "online" again.
    bob_a = await a.ws(bob.token)
    await quiet(alice_a, presence_of(bob.id, True))
    # Closing the B socket is not "offline": his socket on A is still open.
    bob_b.close()
    await quiet(alice_a, presence_of(bob.id, False), 1.0)
    # Closing the last one anywhere is.
    bob_a.close()
    offline = await alice_a.wait_for(presence_of(bob.id, False), 5)
    assert offline["last_seen"]
    # His first socket anywhere (on B) is "online", heard by Alice on A.
    bob_b = await b.ws(bob.token)
    await alice_a.wait_for(presence_of(bob.id, True), 5)
    for ws in (alice_a, bob_b):
        ws.close()


async def test_logout_on_one_process_closes_the_socket_on_the_other(server_pair):
    a, b = (Remote(s) for s in server_pair)
    bob = await a.signup("client")
    login = await b.api.post("/api/v1/auth/login", {"username": bob.username, "password": bob.password})
    token = login.json["access_token"]
    on_b, other_session_on_b = await b.ws(token), await b.ws(bob.token)
    on_a = await a.ws(token)
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert (await a.api.post("/api/v1/auth/logout", token=token)).status in (200, 204)
    assert (await on_b.wait_closed(5))[0] == 4401
    assert (await on_a.wait_closed(5))[0] == 4401
    assert loop.time() - started < 1.5
    assert not other_session_on_b.closed.done()  # another login of the same user stays
    # And the token is refused everywhere, for sockets too.
    again = await b.ws(token)
    assert (await again.wait_closed(5))[0] == 4401
    other_session_on_b.close()


async def test_socket_messages_on_one_process_and_rest_sends_on_the_other_share_one_budget(server_pair):
    a, b = (Remote(s) for s in server_pair)
    alice, bob = await a.signup("client"), await b.signup("agent")
    alice_b, bob_a = await b.ws(alice.token), await a.ws(bob.token)
    for i in range(30):  # the default burst (20) and more, at once, on process B's socket
        await alice_b.send({"receiver_id": bob.id, "message": f"burst {i}", "client_msg_id": f"burst-{i}"})
    await alice_b.wait_for(lambda f: len([x for x in alice_b.frames if x.get("type") in ("ack", "error")]) == 30, 10)
    assert [f for f in alice_b.frames if f.get("type") == "error" and f.get("code") == "rate_limited"]
    # Over REST on process A: only what refilled meanwhile (5/s), not a budget of its own.
    statuses = []
    for i in range(10):
        r = await a.api.post("/api/v1/chats", {"receiver_id": bob.id, "message": f"rest {i}"}, token=alice.token)
        statuses.append(r.status)
        if r.status == 429:
            assert r.json["code"] == "rate_limited" and int(r.headers["Retry-After"]) >= 1, r
            break
    assert statuses[-1] == 429 and len(statuses) <= 4, statuses
    r = await a.api.post("/api/v1/chats", {"receiver_id": alice.id, "message": "bob is not limited"}, token=bob.token)
    assert r.status == 201, r
    alice_b.close()
    bob_a.close()


async def test_redis_outage_keeps_sockets_and_storage_then_sync_recovers(server_pair, redis_server):
    a, b = (Remote(s) for s in server_pair)
    alice, bob, carol = await a.signup("client"), await b.signup("agent"), await a.signup("client")
    alice_a, bob_b, carol_a = await a.ws(alice.token), await b.ws(bob.token), await a.ws(carol.token)
    before = await send(alice_a, bob.id, "before the outage")
    await bob_b.wait_type("message", 5, id=before["id"])

    redis_server.stop()
    try:
        for server in (a.server, b.server):
            body = await wait_ready(server, 503)
            assert body["checks"]["redis"].startswith("down") and body["checks"]["database"] == "ok"
        # Sockets stay up; messages are still stored and acked; same-process delivery still live.
        missed = [await send(alice_a, bob.id, f"during outage {n}") for n in range(5)]
        same_process = await send(alice_a, carol.id, "Carol is on A too")
        await carol_a.wait_type("message", 5, id=same_process["id"])
        await quiet(bob_b, lambda f: f.get("type") == "message", 0.5)
        assert not bob_b.closed.done() and not alice_a.closed.done()
        # REST keeps working through the outage (limits fall back to per-process).
        assert (await b.api.get("/api/v1/users/me", token=bob.token)).status == 200
    finally:
        redis_server.start()

    for server in (a.server, b.server):
        body = await wait_ready(server, 200)
        assert body["checks"]["redis"] == "ok"
    # Live cross-process delivery resumes...
    await asyncio.sleep(0.5)  # both subscribers resubscribed (readiness says so; give the other a beat)
    after = await send(alice_a, bob.id, "after the outage")
    await bob_b.wait_type("message", 10, id=after["id"])
    # ... and what was missed is there via sync, in order, nothing twice.
    start = len(bob_b.frames)
    await bob_b.send({"type": "sync", "since": before["id"]})
    await bob_b.wait_for(lambda f: f.get("type") == "sync.done", 10, start=start)
    synced = [f["id"] for f in bob_b.frames[start:] if f.get("type") == "message"]
    assert synced == [m["id"] for m in missed] + [after["id"]]
    live = [f["id"] for f in bob_b.frames[:start] if f.get("type") == "message"]
    assert live == [before["id"], after["id"]]
    for ws in (alice_a, bob_b, carol_a):
        ws.close()


async def test_presence_changed_during_a_redis_outage_reaches_the_other_process_once_it_is_back(server_pair, redis_server):
    # While Redis is away a process tells only its own sockets that someone came or went; their
    # peers on the other process used to learn nothing, even after it came back (presence is not
    # in `sync`): Alice saw Bob online and Carol offline until she reloaded.
    a, b = (Remote(s) for s in server_pair)
    alice, bob, carol = await a.signup("client"), await b.signup("agent"), await b.signup("agent")
    for sender in (bob, carol):
        resp = await a.api.post("/api/v1/chats", {"receiver_id": alice.id, "message": "hello"}, token=sender.token)
        assert resp.status == 201, resp
    alice_a, bob_b = await a.ws(alice.token), await b.ws(bob.token)
    await alice_a.wait_for(lambda f: f.get("type") == "presence" and f.get("user_id") == bob.id and f["online"], 10)
    seen = len(alice_a.frames)

    redis_server.stop()
    try:
        for server in (a.server, b.server):
            await wait_ready(server, 503)
        bob_b.close()  # Bob leaves, Carol arrives, both on B
        await bob_b.wait_closed(5)
        carol_b = await b.ws(carol.token)
        await carol_b.send({"type": "ping"})
        await carol_b.wait_type("pong")
    finally:
        redis_server.start()
    for server in (a.server, b.server):
        await wait_ready(server, 200)

    def told(user_id):
        return lambda f: f.get("type") == "presence" and f.get("user_id") == user_id
    bob_left = await alice_a.wait_for(told(bob.id), 30, start=seen)
    carol_came = await alice_a.wait_for(told(carol.id), 30, start=seen)
    assert bob_left["online"] is False and bob_left["last_seen"] and carol_came["online"] is True
    query = await a.api.get(f"/api/v1/presence?user_ids={bob.id},{carol.id}", token=alice.token)
    assert [(i["user_id"], i["online"]) for i in query.json["items"]] == [(bob.id, False), (carol.id, True)], query.json
    for ws in (alice_a, carol_b):
        ws.close()
