"""The events as Server-Sent Events (GET /api/v1/events/stream), read by a real HTTP client
(httpx, streaming) the way a browser's EventSource reads them: what the socket gets arrives
here too, durable frames with an id, ephemeral ones without; Last-Event-ID resumes exactly;
refusals are JSON before the stream starts; heartbeats, shutdown, logout, token expiry and
slow consumers end it."""
from __future__ import annotations

import asyncio
import json
import socket
import struct
from urllib.parse import urlparse

import httpx
import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from sheda_rt.chat.store import conv_key
from tests.redis_support import Remote, redis_server, server_pair, shared_dir  # noqa: F401  (fixtures)
from tests.support import eventually
from tests.test_browser import browser, new_page, origins, server  # noqa: F401  (fixtures: chromium, a web app's origins, run.py)

PATH = "/api/v1/events/stream"


@pytest.fixture
def settings_overrides():
    # Some scenarios send many frames quickly; the rate limit is tested in test_chat_limits.py.
    return {"ws_rate_burst": 10_000, "ws_rate_per_second": 10_000}


class SseClient:
    """An open event stream: every event and comment it has received, in order."""

    def __init__(self, client: httpx.AsyncClient, response: httpx.Response):
        self.client = client
        self.response = response
        self.events: list[dict] = []  # {"id": str | None, "event": str | None, "data": parsed JSON}
        self.comments: list[str] = []
        self.retry: int | None = None
        self.last_event_id: str | None = None  # as an EventSource keeps it: every `id:` field, with or without data
        self.ended = asyncio.get_running_loop().create_future()
        self._new = asyncio.Event()
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self):
        fields: dict = {}
        try:
            async for line in self.response.aiter_lines():
                if line == "":
                    if "data" in fields:
                        self.events.append({"id": fields.get("id"), "event": fields.get("event"), "data": json.loads(fields["data"])})
                    fields = {}
                elif line.startswith(":"):
                    self.comments.append(line[1:].strip())
                else:
                    name, _, value = line.partition(":")
                    value = value[1:] if value.startswith(" ") else value
                    if name == "retry":
                        self.retry = int(value)
                    else:
                        if name == "id":
                            self.last_event_id = value
                        fields[name] = value
                self._new.set()
        except httpx.HTTPError:
            pass
        finally:
            if not self.ended.done():
                self.ended.set_result(True)
            self._new.set()

    def of_type(self, kind: str) -> list[dict]:
        return [e for e in self.events if e["event"] == kind]

    async def wait_for(self, predicate, timeout: float = 5.0):
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            found = predicate(self)
            if found:
                return found
            remaining = deadline - loop.time()
            if remaining <= 0 or self.ended.done():
                raise AssertionError(f"not seen within {timeout}s; events {self.events!r}, comments {self.comments!r}")
            self._new.clear()
            try:
                await asyncio.wait_for(self._new.wait(), remaining)
            except asyncio.TimeoutError:
                pass

    async def wait_event(self, kind: str, timeout: float = 5.0, **match) -> dict:
        def seen(s):
            return next((e for e in s.of_type(kind) if all(e["data"].get(k) == v for k, v in match.items())), None)
        return await self.wait_for(seen, timeout)

    async def wait_ended(self, timeout: float = 5.0) -> None:
        await asyncio.wait_for(asyncio.shield(self.ended), timeout)

    async def close(self) -> None:
        await self.response.aclose()
        await self.client.aclose()
        await asyncio.gather(self._reader, return_exceptions=True)


async def open_stream(server, token: str | None = None, *, query_token: bool = False, last_event_id=None,
                      params: dict | None = None, headers: dict | None = None):
    """GET the stream of `server` (the test's server, or a Remote process): an SseClient when it
    opened (200), else (status, headers, JSON body)."""
    base_url = server.server.base_url if isinstance(server, Remote) else server.base_url
    hdrs = dict(headers or {})
    query = dict(params or {})
    if token and query_token:
        query["token"] = token
    elif token:
        hdrs["Authorization"] = f"Bearer {token}"
    if last_event_id is not None:
        hdrs["Last-Event-ID"] = str(last_event_id)
    client = httpx.AsyncClient(timeout=httpx.Timeout(30.0))
    response = await client.send(client.build_request("GET", base_url + PATH, params=query, headers=hdrs), stream=True)
    if response.status_code != 200:
        body = await response.aread()
        await response.aclose()
        await client.aclose()
        return response.status_code, response.headers, json.loads(body)
    return SseClient(client, response)


async def chat(sheda, sender, receiver, text: str) -> dict:
    resp = await sheda.api.post("/api/v1/chats", {"receiver_id": receiver.id, "message": text}, token=sender.token)
    assert resp.status == 201, resp
    return resp.json


async def test_a_message_sent_over_rest_arrives_on_the_stream_with_its_seq_as_id(sheda):
    alice, bob = await sheda.signup("client"), await sheda.signup("agent")
    stream = await open_stream(sheda, alice.token)
    try:
        headers = stream.response.headers
        assert headers["Content-Type"].startswith("text/event-stream")
        assert headers["Cache-Control"] == "no-cache" and headers["X-Accel-Buffering"] == "no"
        assert headers.get("X-Request-ID")
        await stream.wait_for(lambda s: s.retry == 3000)
        sent = await chat(sheda, bob, alice, "hello over SSE")
        event = await stream.wait_event("message", message="hello over SSE")
        frame = event["data"]
        assert frame["type"] == "message" and frame["id"] == sent["id"] and frame["sender_info"]["id"] == bob.id
        assert isinstance(frame["seq"], int) and event["id"] == str(frame["seq"])
        # The receiver answers over REST while on SSE; the read receipt (durable) comes back to bob's stream.
        bob_stream = await open_stream(sheda, bob.token, query_token=True)
        try:
            reply = await chat(sheda, alice, bob, "hi bob")
            got = await bob_stream.wait_event("message", message="hi bob")
            assert got["data"]["id"] == reply["id"] and got["id"] == str(got["data"]["seq"])
        finally:
            await bob_stream.close()
    finally:
        await stream.close()


async def test_typing_and_presence_arrive_without_an_id_and_the_stream_counts_as_online(sheda):
    alice, bob = await sheda.signup("client"), await sheda.signup("agent")
    await chat(sheda, alice, bob, "is it available?")  # they talk: each hears the other's presence
    bob_ws = await sheda.ws(bob.token)
    stream = await open_stream(sheda, alice.token)
    try:
        online = await bob_ws.wait_type("presence", user_id=alice.id)  # alice came online through SSE
        assert online["online"] is True
        await bob_ws.send({"type": "typing", "receiver_id": alice.id})
        typing = await stream.wait_event("typing", user_id=bob.id)
        assert typing["id"] is None and "seq" not in typing["data"] and typing["data"]["receiver_id"] == alice.id
        bob_ws.close()
        offline = await stream.wait_event("presence", user_id=bob.id, online=False)
        assert offline["id"] is None and "seq" not in offline["data"]
        bob_ws = await sheda.ws(bob.token)
        await stream.wait_event("presence", user_id=bob.id, online=True)
    finally:
        await stream.close()
    # alice's only connection was the stream: closing it takes her offline for bob.
    gone = await bob_ws.wait_for(lambda f: f.get("type") == "presence" and f["user_id"] == alice.id and f["online"] is False)
    assert gone["last_seen"].endswith("Z")
    assert sheda.ctx.hub.sockets_of(alice.id) == []


async def test_refusals_are_json_before_the_stream_starts(sheda):
    alice = await sheda.signup("client")
    for token, code in ((None, "missing_token"), ("not-a-jwt", "invalid_token"), (alice.refresh_token, "wrong_token_type")):
        for query_token in (False, True):
            status, headers, body = await open_stream(sheda, token, query_token=query_token)
            assert status == 401 and body["code"] == code, (token, query_token, body)
            assert headers["Content-Type"].startswith("application/json") and headers.get("X-Request-ID")
    status, _, body = await open_stream(sheda, headers={"Authorization": "Basic YWxpY2U6cHc="})
    assert status == 401 and body["code"] == "invalid_token"
    status, _, body = await open_stream(sheda, alice.token, last_event_id="yesterday")
    assert status == 422 and body["errors"][0]["field"] == "Last-Event-ID"
    status, _, body = await open_stream(sheda, alice.token, params={"last_event_id": "-1"})
    assert status == 422 and body["errors"][0]["field"] == "last_event_id"
    # The header wins over ?token=: a good query token does not rescue a bad header.
    status, _, body = await open_stream(sheda, alice.token, query_token=True, headers={"Authorization": "Bearer nope"})
    assert status == 401
    assert (await sheda.ctx.users.update(alice.id, {"is_active": False})) is not None
    status, _, body = await open_stream(sheda, alice.token)
    assert status == 403 and body["code"] == "account_inactive"
    assert sheda.ctx.hub.sockets_of(alice.id) == []


@pytest.mark.parametrize("settings_overrides", [{"sse_heartbeat_seconds": 0.2}])
async def test_heartbeat_comments_keep_an_idle_stream_alive(sheda):
    alice = await sheda.signup("client")
    loop = asyncio.get_running_loop()
    started = loop.time()
    stream = await open_stream(sheda, alice.token)
    try:
        await stream.wait_for(lambda s: s.comments.count("ping") >= 3)
        assert stream.events == []  # comments only: nothing an EventSource would dispatch
        # One per SSE_HEARTBEAT_SECONDS, not faster (the server's first is 0.2 s after it opened).
        assert loop.time() - started >= 3 * 0.2 * 0.95
    finally:
        await stream.close()


async def raw_stream(sheda, token: str) -> socket.socket:
    """A stream opened over a bare socket, its response head read: the test decides how it ends."""
    url = urlparse(sheda.base_url)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, (url.hostname, url.port))
    await loop.sock_sendall(sock, f"GET {PATH}?token={token} HTTP/1.1\r\nHost: {url.netloc}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += await loop.sock_recv(sock, 1)
    assert head.startswith(b"HTTP/1.1 200"), head
    # And the first block (retry, id): with nothing left unread, closing the socket sends a FIN, not a RST.
    body = head.partition(b"\r\n\r\n")[2]
    while not body.endswith(b"\n\n\r\n"):
        body += await loop.sock_recv(sock, 1)
    assert b"retry: 3000" in body, body
    return sock


@pytest.mark.parametrize("settings_overrides", [{"ws_max_sockets_per_user": 1, "sse_heartbeat_seconds": 3600}])
async def test_a_stream_whose_client_went_away_gives_its_place_back_at_once(sheda):
    # With one place per user, each new stream needs the last one's place. No heartbeat comes
    # meanwhile (an hour): the server notices the client's FIN or RST by itself.
    alice = await sheda.signup("client")
    hub = sheda.ctx.hub
    for ending in ("close", "reset", "close", "reset"):
        sock = await raw_stream(sheda, alice.token)
        assert hub.count_of(alice.id) == 1
        status, headers, body = await open_stream(sheda, alice.token)
        assert status == 429 and body["code"] == "too_many_sockets", body
        # A peer that vanishes without either is dropped once a write stays unacknowledged for
        # WS_PING_TIMEOUT (TCP_USER_TIMEOUT, Linux), not after TCP's own ~15 min of retries.
        if hasattr(socket, "TCP_USER_TIMEOUT"):
            server_side = hub.sockets_of(alice.id)[0].request.connection.stream.socket
            timeout_ms = server_side.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT)
            assert timeout_ms == int(sheda.ctx.settings.ws_ping_timeout * 1000), timeout_ms
        if ending == "reset":  # a killed app: a TCP RST
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
        await eventually(lambda: hub.count_of(alice.id) == 0)
    stream = await open_stream(sheda, alice.token)
    try:
        bob = await sheda.signup("agent")
        sent = await chat(sheda, bob, alice, "to the stream that took the place")
        await stream.wait_event("message", id=sent["id"])
    finally:
        await stream.close()


async def test_last_event_id_replays_exactly_the_missed_durable_events_then_goes_live(sheda):
    alice, bob = await sheda.signup("client"), await sheda.signup("agent")
    stream = await open_stream(sheda, alice.token)
    seen = [await chat(sheda, bob, alice, f"before {i}") for i in range(2)]
    await stream.wait_for(lambda s: len(s.of_type("message")) == 2)
    last_id = stream.of_type("message")[-1]["id"]
    await stream.close()
    missed = [await chat(sheda, bob, alice, f"missed {i}") for i in range(3)]
    # alice read them on another device: the read receipt (durable, on both users' streams) is missed too.
    read = await sheda.api.post("/api/v1/chat/read", {"other_user_id": bob.id, "up_to": missed[-1]["id"]}, token=alice.token)
    assert read.status == 200, read

    resumed = await open_stream(sheda, alice.token, last_event_id=last_id)
    try:
        await resumed.wait_for(lambda s: len(s.of_type("message")) == 3)
        live = await chat(sheda, bob, alice, "live after the replay")
        await resumed.wait_event("message", message="live after the replay")
        messages = resumed.of_type("message")
        assert [e["data"]["id"] for e in messages] == [m["id"] for m in missed] + [live["id"]]
        receipts = resumed.of_type("read")
        assert len(receipts) == 1 and receipts[0]["data"]["up_to"] == missed[-1]["id"] and receipts[0]["id"]
        assert [e["event"] for e in resumed.events if e["id"] is not None] == ["message"] * 3 + ["read", "message"]
        ids = [int(e["id"]) for e in resumed.events if e["id"] is not None]
        assert ids == sorted(set(ids)) and min(ids) > int(last_id)  # in order, each once, nothing from before
        assert all(e["data"]["seq"] == int(e["id"]) for e in resumed.events if e["id"] is not None)
    finally:
        await resumed.close()
    # The query form (EventSource polyfills), from the first message on: everything after it.
    polyfill = await open_stream(sheda, alice.token, query_token=True, params={"last_event_id": seen[0]["id"]})
    try:
        await polyfill.wait_for(lambda s: len(s.of_type("message")) == 5)
        assert [e["data"]["id"] for e in polyfill.of_type("message")] == [seen[1]["id"]] + [m["id"] for m in missed] + [live["id"]]
    finally:
        await polyfill.close()
    # Yaffle's event-source-polyfill names it lastEventId (and sends no header): the same resume.
    yaffle = await open_stream(sheda, alice.token, query_token=True, params={"lastEventId": missed[0]["id"]})
    try:
        await yaffle.wait_for(lambda s: len(s.of_type("message")) == 3)
        assert [e["data"]["id"] for e in yaffle.of_type("message")] == [m["id"] for m in missed[1:]] + [live["id"]]
    finally:
        await yaffle.close()
    status, _, body = await open_stream(sheda, alice.token, params={"lastEventId": "soon"})
    assert status == 422 and body["errors"][0]["field"] == "lastEventId", body


async def test_a_fresh_stream_has_a_position_so_a_drop_before_any_event_loses_nothing(sheda):
    # An EventSource resumes with the last `id` it saw. A stream opened without one starts with an
    # id-only block (no event fires) at the current position: a drop before any durable event still
    # reconnects with Last-Event-ID, and what was sent meanwhile is replayed.
    alice, bob = await sheda.signup("client"), await sheda.signup("agent")
    stream = await open_stream(sheda, alice.token)
    try:
        await stream.wait_for(lambda s: s.retry == 3000 and s.last_event_id is not None)
        assert stream.events == []
        position = stream.last_event_id
    finally:
        await stream.close()
    missed = await chat(sheda, bob, alice, "while the stream was down")
    resumed = await open_stream(sheda, alice.token, last_event_id=position)
    try:
        got = await resumed.wait_event("message", message="while the stream was down")
        assert got["data"]["id"] == missed["id"] and [e["event"] for e in resumed.events if e["id"]] == ["message"]
    finally:
        await resumed.close()


async def test_a_resume_racing_live_sends_loses_and_duplicates_nothing(sheda):
    alice, bob = await sheda.signup("client"), await sheda.signup("agent")
    first = await chat(sheda, bob, alice, "start")
    for i in range(40):
        await chat(sheda, bob, alice, f"while away {i}")
    bob_ws = await sheda.ws(bob.token)
    stop = asyncio.Event()

    async def keep_sending():
        i = 0
        while not stop.is_set():
            await bob_ws.send({"receiver_id": alice.id, "message": f"racing {i}", "client_msg_id": f"race{i}"})
            i += 1
            await asyncio.sleep(0.005)

    sender = asyncio.ensure_future(keep_sending())
    await asyncio.sleep(0.05)
    stream = await open_stream(sheda, alice.token, last_event_id=first["id"])  # a message's seq is its id
    try:
        await asyncio.sleep(0.3)
        stop.set()
        await sender
        await bob_ws.wait_for(lambda f: len(bob_ws.of_type("ack")) + len(bob_ws.of_type("error")) >= 1)
        stored = [d["_id"] for d in await sheda.ctx.db["messages"].find(
            {"conv": conv_key(alice.id, bob.id), "_id": {"$gt": first["id"]}}).sort("_id", 1).to_list()]
        await stream.wait_for(lambda s: len(s.of_type("message")) >= len(stored), timeout=10)
        got = [e["data"]["id"] for e in stream.of_type("message")]
        assert got == stored  # every message after the position, in order, exactly once
    finally:
        await stream.close()


async def test_after_a_broker_outage_the_stream_resyncs_for_its_client(sheda):
    # With several processes, a Redis outage can keep another process's events from reaching
    # this one live; the hub then hands every connection a sync.hint. A socket's client syncs;
    # the stream's client cannot send, so the stream replays for it. Here the missed delivery is
    # made by taking the stream out of the hub's registry while a message is stored.
    alice, bob = await sheda.signup("client"), await sheda.signup("agent")
    stream = await open_stream(sheda, alice.token)
    try:
        seen = await chat(sheda, bob, alice, "seen live")
        await stream.wait_event("message", id=seen["id"])
        hub = sheda.ctx.hub
        conn = hub.sockets_of(alice.id)[0]
        hub.remove(conn)
        missed = await chat(sheda, bob, alice, "missed live")
        hub.add(conn)
        hub.handle_control({"op": "resync", "after_seq": seen["id"] - 1})  # the floor: before "seen live"
        await stream.wait_event("message", id=missed["id"])
        live = await chat(sheda, bob, alice, "live again")
        await stream.wait_event("message", id=live["id"])
        assert [e["data"]["id"] for e in stream.of_type("message")] == [seen["id"], missed["id"], live["id"]]  # none twice
        assert stream.of_type("sync.hint") == []  # handled by the stream, not left to the client
    finally:
        await stream.close()


async def test_across_processes_and_a_redis_outage_the_stream_misses_nothing(server_pair, redis_server):
    # Two `python run.py` processes sharing Redis and the database; Alice's stream is on A.
    a, b = (Remote(s) for s in server_pair)
    alice, bob, carol = await a.signup("client"), await b.signup("agent"), await a.signup("client")
    stream = await open_stream(a, alice.token)
    try:
        first = await b.api.post("/api/v1/chats", {"receiver_id": alice.id, "message": "from B"}, token=bob.token)
        assert first.status == 201, first
        await stream.wait_event("message", 10, id=first.json["id"])  # crossed processes through Redis
        redis_server.stop()
        try:
            await asyncio.sleep(0.5)
            during = []
            for n in range(3):  # stored on B; A cannot hear them
                r = await b.api.post("/api/v1/chats", {"receiver_id": alice.id, "message": f"outage {n}"}, token=bob.token)
                assert r.status == 201, r
                during.append(r.json["id"])
            # Carol on A: heard live, above Bob's unheard ones (so "after the last id" would skip them).
            r = await a.api.post("/api/v1/chats", {"receiver_id": alice.id, "message": "carol on A"}, token=carol.token)
            assert r.status == 201, r
            await stream.wait_event("message", 10, id=r.json["id"])
            assert r.json["id"] > max(during)
        finally:
            redis_server.start()
        # Back: the stream replays what this process may have missed, by itself.
        await stream.wait_for(lambda s: set(during) <= {e["data"]["id"] for e in s.of_type("message")}, timeout=30)
        after = await b.api.post("/api/v1/chats", {"receiver_id": alice.id, "message": "after"}, token=bob.token)
        await stream.wait_event("message", 20, id=after.json["id"])
        ids = [int(e["id"]) for e in stream.events if e["id"] is not None]
        assert len(ids) == len(set(ids))  # nothing twice
        everything = await a.api.get("/api/v1/events", params={"after_seq": 0, "limit": 500}, token=alice.token)
        assert everything.status == 200 and not everything.json["more"], everything
        assert set(ids) == {f["seq"] for f in everything.json["items"]}  # and nothing missing
    finally:
        await stream.close()


async def test_a_position_that_cannot_be_resumed_gets_sync_reset(sheda):
    alice = await sheda.signup("client")
    stream = await open_stream(sheda, alice.token, last_event_id=10**15)  # beyond anything this data set handed out
    try:
        reset = await stream.wait_event("sync.reset")
        assert reset["data"]["epoch"] and reset["data"]["reason"] == "unknown_position"
        # Its id is where to go on from after refetching over REST: a reconnect from there resumes.
        assert reset["id"] == str(reset["data"]["last_seq"])
    finally:
        await stream.close()
    bob = await sheda.signup("agent")
    resumed = await open_stream(sheda, alice.token, last_event_id=reset["id"])
    try:
        sent = await chat(sheda, bob, alice, "after the reset")
        await resumed.wait_event("message", id=sent["id"])
        assert resumed.of_type("sync.reset") == []
    finally:
        await resumed.close()


async def test_shutdown_logout_and_token_expiry_end_the_stream(sheda, clock):
    alice = await sheda.signup("client")
    login = await sheda.api.post("/api/v1/auth/login", {"username": alice.username, "password": alice.password})
    other = login.json["access_token"]
    by_logout, by_expiry = await open_stream(sheda, alice.token), await open_stream(sheda, other)
    resp = await sheda.api.post("/api/v1/auth/logout", token=alice.token)
    assert resp.status in (200, 204), resp
    closed = await by_logout.wait_event("close")
    assert closed["data"]["code"] == 4401
    await by_logout.wait_ended()
    await by_logout.close()
    assert not by_expiry.ended.done()  # another login's stream stays
    clock.advance(minutes=sheda.ctx.settings.access_token_minutes + 1)
    expired = await by_expiry.wait_event("close")
    assert expired["data"] == {"type": "close", "code": 4401, "reason": "token expired"}
    await by_expiry.wait_ended()
    await by_expiry.close()
    clock.advance(minutes=-(sheda.ctx.settings.access_token_minutes + 1))

    fresh = await sheda.api.post("/api/v1/auth/login", {"username": alice.username, "password": alice.password})
    stream = await open_stream(sheda, fresh.json["access_token"])
    try:
        await sheda.ctx.drain()  # what shutdown runs before closing connections
        closed = await stream.wait_event("close")
        assert closed["data"]["code"] == 1001
        await stream.wait_ended()
    finally:
        await stream.close()
    assert sheda.ctx.hub.sockets_of(alice.id) == []


@pytest.mark.parametrize("settings_overrides", [{"ws_outbound_buffer_bytes": 64 * 1024, "ws_rate_burst": 10_000,
                                                 "ws_rate_per_second": 10_000}])
async def test_a_client_that_stops_reading_is_cut_off_not_buffered(sheda):
    alice, slow_user = await sheda.signup("client"), await sheda.signup("agent")
    # A client with a tiny receive buffer that reads the response head and then nothing.
    url = urlparse(sheda.base_url)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, (url.hostname, url.port))
    await loop.sock_sendall(sock, f"GET {PATH}?token={slow_user.token} HTTP/1.1\r\nHost: {url.netloc}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += await loop.sock_recv(sock, 1)
    assert head.startswith(b"HTTP/1.1 200"), head
    conn = sheda.ctx.hub.sockets_of(slow_user.id)[0]
    stream = conn.request.connection.stream
    peak = 0
    a = await sheda.ws(alice.token)
    text, n = "z" * 3900, 1600  # ~6 MB: more than the kernel's socket buffers plus our 64 KiB
    for i in range(n):
        await a.send({"receiver_id": slow_user.id, "message": text, "client_msg_id": f"s{i}"})
        if not stream.closed():
            peak = max(peak, stream._total_write_index - stream._total_write_done_index)
    await a.wait_for(lambda f: len(a.of_type("ack")) == n, timeout=60)
    for _ in range(100):
        if not sheda.ctx.hub.sockets_of(slow_user.id):
            break
        await asyncio.sleep(0.1)
    assert sheda.ctx.hub.sockets_of(slow_user.id) == []  # the server let go of it
    assert peak <= 64 * 1024  # and never held more than the configured buffer for it
    sock.close()
    assert await sheda.ctx.db["messages"].count_documents({"conv": conv_key(alice.id, slow_user.id)}) == n
    await a.send({"type": "ping"})
    await a.wait_type("pong")


async def test_the_stream_is_in_the_openapi_document(sheda):
    doc = (await sheda.api.get("/api/v1/openapi.json")).json
    op = doc["paths"][PATH]["get"]
    assert list(op["responses"]["200"]["content"]) == ["text/event-stream"]
    assert {"401", "403", "422", "503"} <= set(op["responses"])
    assert op["security"] == [{"bearer": []}]
    assert {p["name"] for p in op["parameters"]} == {"token", "last_event_id", "lastEventId"}
    assert "Last-Event-ID" in op["description"]


def until(page, predicate: str, arg=None) -> None:
    try:
        page.wait_for_function(predicate, arg=arg, timeout=20_000)
    except PlaywrightTimeout:
        state = page.evaluate("() => ({opens: window.opens, events: window.sse})")
        raise AssertionError(f"not true within 20 s: {predicate}; page state {state!r}; console {page.console!r}")


def test_a_browsers_eventsource_gets_events_and_resumes_by_itself(server, origins, new_page):
    """Chromium's own EventSource, on a web app's origin in CORS_ORIGINS, token in the query."""
    allowed, _ = origins
    alice, bob, admin = server.signup("client"), server.signup("agent"), server.admin()
    page = new_page(allowed.origin + "/")
    page.evaluate("""url => {
        window.sse = []; window.opens = 0;
        const source = new EventSource(url);
        source.onopen = () => { window.opens += 1; };
        for (const type of ["message", "close"]) {
          source.addEventListener(type, (e) => window.sse.push({type, id: e.lastEventId, data: JSON.parse(e.data)}));
        }
    }""", f"{server.base_url}{PATH}?token={alice.access_token}")
    until(page, "() => opens === 1")
    status, first = server.request("POST", "/api/v1/chats", {"receiver_id": alice.id, "message": "first"}, token=bob.access_token)
    assert status == 201, first
    until(page, "id => sse.some(e => e.type === 'message' && e.data.id === id)", first["id"])
    # The server ends the stream (an administrator's disconnect: the token stays valid)...
    status, answer = server.request("POST", f"/api/v1/admin/users/{alice.id}/disconnect", token=admin.access_token)
    assert status == 202, answer
    until(page, "() => sse.some(e => e.type === 'close' && e.data.code === 4000)")
    # ...a message is stored while it is away (the browser waits `retry`, 3 s, before reconnecting)...
    status, missed = server.request("POST", "/api/v1/chats", {"receiver_id": alice.id, "message": "while away"}, token=bob.access_token)
    assert status == 201, missed
    # ...and the EventSource reconnects by itself with Last-Event-ID: the missed message comes, once.
    until(page, "() => opens === 2")
    until(page, "id => sse.some(e => e.type === 'message' && e.data.id === id)", missed["id"])
    messages = page.evaluate("() => sse.filter(e => e.type === 'message').map(e => [e.id, e.data.id])")
    assert messages == [[str(first["id"]), first["id"]], [str(missed["id"]), missed["id"]]]
