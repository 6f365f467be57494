"""The socket under abusive or slow clients: rate limits, slow consumers, group
commit under concurrent senders, and a batch the database refuses."""
from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import struct
from urllib.parse import urlparse

import pytest
from tornado.websocket import WebSocketClosedError

from sheda_rt.chat.store import conv_key


async def test_rate_limit_sends_error_frames_then_persistent_abuse_closes_1008(sheda):
    # Defaults: messages burst 20, 5/s sustained (per user); other frames 60, 10/s (per socket);
    # 20 frames refused while the client had been told to wait (over a second ago) close the socket.
    alice, bob = await sheda.signup("client"), await sheda.signup("agent")
    ws = await sheda.ws(alice.token)
    for i in range(30):
        await ws.send({"receiver_id": bob.id, "message": f"spam {i}", "client_msg_id": f"r{i}"})
    await ws.wait_for(lambda f: len(ws.of_type("ack")) + len(ws.of_type("error")) == 30)
    limited = [f for f in ws.of_type("error") if f["code"] == "rate_limited"]
    assert 5 <= len(limited) <= 10 and all(f["retry_after"] > 0 for f in limited)
    assert all(f["client_msg_id"].startswith("r") for f in limited)
    acked = {f["client_msg_id"] for f in ws.of_type("ack")}
    stored = await sheda.ctx.db["messages"].find({"conv": conv_key(alice.id, bob.id)}).to_list()
    assert {d["client_msg_id"] for d in stored} == acked  # limited frames stored nothing
    await asyncio.sleep(1.0)  # tokens come back: the socket is usable again
    await ws.send({"type": "ping"})
    await ws.wait_type("pong")
    try:
        for _ in range(400):  # a flood that goes on after the refusals (one burst alone is not abuse)
            await ws.send({"type": "ping"})
            await asyncio.sleep(0.01)
            if ws.closed.done():
                break
    except WebSocketClosedError:
        pass  # closed by the server mid-flood
    code, reason = await ws.wait_closed()
    assert code == 1008 and "rate" in reason


async def test_pacing_just_above_the_limit_is_still_persistent_abuse(sheda):
    # 20 messages/s against 5/s sustained: every fourth frame is accepted, which must not
    # wipe the record of the refused ones in between.
    alice, bob = await sheda.signup("client"), await sheda.signup("agent")
    ws = await sheda.ws(alice.token)
    closed = False
    try:
        for i in range(200):
            await ws.send({"receiver_id": bob.id, "message": f"pace {i}", "client_msg_id": f"p{i}"})
            await asyncio.sleep(0.05)
            if ws.closed.done():
                closed = True
                break
    except WebSocketClosedError:
        closed = True
    assert closed
    code, reason = await ws.wait_closed()
    assert code == 1008 and "rate" in reason
    assert ws.of_type("ack") and [f for f in ws.of_type("error") if f["code"] == "rate_limited"]


class RawSocket:
    """A minimal WebSocket client over a plain socket with a tiny receive buffer, that
    can stop reading: the way to make the server's outbound buffer really fill."""

    def __init__(self, url: str, token: str):
        self.url = urlparse(url)
        self.token = token
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)

    async def connect(self):
        loop = asyncio.get_running_loop()
        self.sock.setblocking(False)
        await loop.sock_connect(self.sock, (self.url.hostname, self.url.port))
        key = base64.b64encode(os.urandom(16)).decode()
        req = (f"GET {self.url.path}?token={self.token} HTTP/1.1\r\nHost: {self.url.netloc}\r\nUpgrade: websocket\r\n"
               f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n")
        await loop.sock_sendall(self.sock, req.encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += await loop.sock_recv(self.sock, 1)
        assert head.startswith(b"HTTP/1.1 101"), head

    async def read_all(self, timeout: float = 5.0) -> bytes:
        loop = asyncio.get_running_loop()
        data = b""
        end = loop.time() + timeout
        while loop.time() < end:
            try:
                chunk = await asyncio.wait_for(loop.sock_recv(self.sock, 65536), end - loop.time())
            except (asyncio.TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            data += chunk
        return data


def close_code(stream: bytes) -> int | None:
    """Walk server frames (unmasked) and return the close frame's code, if one arrived."""
    i = 0
    while i + 2 <= len(stream):
        opcode, length = stream[i] & 0x0F, stream[i + 1] & 0x7F
        i += 2
        if length == 126:
            length = struct.unpack("!H", stream[i:i + 2])[0]; i += 2
        elif length == 127:
            length = struct.unpack("!Q", stream[i:i + 8])[0]; i += 8
        if i + length > len(stream):
            return None
        if opcode == 0x8:
            return struct.unpack("!H", stream[i:i + 2])[0]
        i += length
    return None


@pytest.mark.parametrize("settings_overrides", [{"ws_outbound_buffer_bytes": 64 * 1024, "ws_rate_burst": 10_000, "ws_rate_per_second": 10_000}])
async def test_slow_consumer_is_disconnected_not_buffered(sheda):
    alice, slow_user = await sheda.signup("client"), await sheda.signup("agent")
    slow = RawSocket(sheda.ws_url, slow_user.token)
    await slow.connect()
    assert len(sheda.ctx.hub.sockets_of(slow_user.id)) == 1
    conn = sheda.ctx.hub.sockets_of(slow_user.id)[0]
    stream = conn.ws_connection.stream
    peak = 0
    a = await sheda.ws(alice.token)
    text, N = "z" * 3900, 1600
    # ~6 MB for a client that reads nothing: more than the kernel's socket buffers
    # (loopback send buffers grow to 4 MB) plus our 64 KiB.
    for i in range(N):
        await a.send({"receiver_id": slow_user.id, "message": text, "client_msg_id": f"f{i}"})
        if conn.ws_connection is not None:
            peak = max(peak, stream._total_write_index - stream._total_write_done_index)
    await a.wait_for(lambda f: len(a.of_type("ack")) == N, timeout=60)
    for _ in range(100):
        if not sheda.ctx.hub.sockets_of(slow_user.id):
            break
        await asyncio.sleep(0.1)
    assert sheda.ctx.hub.sockets_of(slow_user.id) == []  # the server let go of it
    assert peak <= 64 * 1024  # and never held more than the configured buffer for it
    # What did reach the slow client ends with the close frame (or the server cut it off).
    received = await slow.read_all(timeout=3)
    assert close_code(received) in (1013, None)
    assert len(received) < N * 3900 // 2
    slow.sock.close()
    # The sender and everything stored are unaffected; the slow user can sync later.
    assert await sheda.ctx.db["messages"].count_documents({"conv": conv_key(alice.id, slow_user.id)}) == N
    await a.send({"type": "ping"})
    await a.wait_type("pong")


@pytest.mark.parametrize("settings_overrides", [{"chat_batch_window_ms": 20, "ws_rate_burst": 10_000, "ws_rate_per_second": 10_000}])
async def test_messages_from_many_sockets_share_one_insert_many(sheda):
    users = [await sheda.signup("client") for _ in range(6)]
    sockets = [await sheda.ws(u.token) for u in users]
    sizes = []
    store = sheda.ctx.chat.messages
    real_insert = store.insert_batch

    async def recording_insert(docs):  # observe, then do the real insert
        sizes.append(len(docs))
        return await real_insert(docs)

    store.insert_batch = recording_insert
    try:
        await asyncio.gather(*(ws.send({"receiver_id": users[(i + 1) % 6].id, "message": f"m{i}", "client_msg_id": f"g{i}"})
                               for i, ws in enumerate(sockets)))
        for i, ws in enumerate(sockets):
            await ws.wait_type("ack", client_msg_id=f"g{i}")
            await ws.wait_type("message", message=f"m{(i - 1) % 6}")
    finally:
        store.insert_batch = real_insert
    assert sum(sizes) == 6 and max(sizes) >= 2, sizes


async def test_a_batch_the_database_refuses_is_neither_acked_nor_delivered(sheda):
    alice, bob = await sheda.signup("client"), await sheda.signup("agent")
    a, b = await sheda.ws(alice.token), await sheda.ws(bob.token)
    db = sheda.ctx.db
    # A real database-side refusal: a validator that no message satisfies.
    await db.command("collMod", "messages", validator={"message": {"$type": "int"}}, validationAction="error")
    try:
        await a.send({"receiver_id": bob.id, "message": "lost?", "client_msg_id": "v1"})
        err = await a.wait_type("error")
        assert err["code"] == "store_failed" and err["client_msg_id"] == "v1"  # the client knows which one to resend
    finally:
        await db.command("collMod", "messages", validator={}, validationAction="error")
    assert a.of_type("ack") == []
    await a.send({"receiver_id": bob.id, "message": "again", "client_msg_id": "v1"})  # the resend works
    ack = await a.wait_type("ack", client_msg_id="v1")
    got = await b.wait_type("message")
    assert got["id"] == ack["id"] and got["message"] == "again"
    assert [d["message"] for d in await db["messages"].find({"conv": conv_key(alice.id, bob.id)}).to_list()] == ["again"]


# ---- REST sends spend the same per-user message budget as the socket ----------------------
async def _rest_send(sheda, user, receiver_id: int, text: str):
    return await sheda.api.post("/api/v1/chats", {"receiver_id": receiver_id, "message": text, "client_msg_id": text},
                                token=user.token)


def _assert_rate_limited(resp):
    assert resp.status == 429, resp
    body = resp.json
    assert body["code"] == "rate_limited" and body["detail"] and body["retry_after"] >= 1
    assert int(resp.headers["Retry-After"]) >= 1 and int(resp.headers["Retry-After"]) == body["retry_after"]


async def test_rest_sends_are_rate_limited_per_user_and_store_nothing_beyond_the_budget(sheda):
    # One user sent 300 messages over REST in 1.3 s: REST had no limit while the socket had one.
    alice, bob, carol = await sheda.signup("client"), await sheda.signup("agent"), await sheda.signup("client")
    burst = sheda.ctx.settings.ws_rate_burst
    results = await asyncio.gather(*(_rest_send(sheda, alice, bob.id, f"rest {i}") for i in range(burst + 15)))
    ok = [r for r in results if r.status == 201]
    limited = [r for r in results if r.status != 201]
    assert burst <= len(ok) < burst + 8 and limited  # the burst, plus what refilled (5/s) meanwhile
    for r in limited:
        _assert_rate_limited(r)
    history = await sheda.api.get(f"/api/v1/chats/{bob.id}", token=alice.token, params={"limit": 100})
    assert history.status == 200
    assert sorted(m["id"] for m in history.json) == sorted(r.json["id"] for r in ok)  # a refused send stored nothing
    # Another user's budget is their own.
    resp = await _rest_send(sheda, carol, bob.id, "carol 1")
    assert resp.status == 201, resp


@pytest.mark.parametrize("settings_overrides", [{"ws_rate_per_second": 0.05}])  # no refill during the test
async def test_socket_and_rest_sends_share_one_budget(sheda):
    burst = sheda.ctx.settings.ws_rate_burst
    alice, bob, carol = await sheda.signup("client"), await sheda.signup("agent"), await sheda.signup("client")
    # The burst spent on the socket: a REST send is refused.
    ws = await sheda.ws(alice.token)
    for i in range(burst):
        await ws.send({"receiver_id": bob.id, "message": f"ws {i}", "client_msg_id": f"w{i}"})
    await ws.wait_for(lambda f: len(ws.of_type("ack")) == burst)
    assert ws.of_type("error") == []
    _assert_rate_limited(await _rest_send(sheda, alice, bob.id, "rest after ws"))
    # The burst spent over REST: a socket message is refused.
    for i in range(burst):
        resp = await _rest_send(sheda, carol, bob.id, f"rest {i}")
        assert resp.status == 201, resp
    _assert_rate_limited(await _rest_send(sheda, carol, bob.id, "one more"))
    wc = await sheda.ws(carol.token)
    await wc.send({"receiver_id": bob.id, "message": "ws after rest", "client_msg_id": "late"})
    err = await wc.wait_type("error")
    assert err["code"] == "rate_limited" and err["client_msg_id"] == "late"
    for user, n in ((alice, burst), (carol, burst)):
        history = await sheda.api.get(f"/api/v1/chats/{bob.id}", token=user.token, params={"limit": 100})
        assert len(history.json) == n  # nothing refused was stored
    # Bob spent nothing: both transports still work for him.
    resp = await _rest_send(sheda, bob, alice.id, "bob rest")
    assert resp.status == 201, resp
    wb = await sheda.ws(bob.token)
    await wb.send({"receiver_id": alice.id, "message": "bob ws", "client_msg_id": "b1"})
    await wb.wait_type("ack", client_msg_id="b1")
