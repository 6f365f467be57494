"""One user's open connections are capped per process (WS_MAX_SOCKETS_PER_USER): one more
handshake is refused before the upgrade with 429 too_many_sockets and Retry-After, counted by
the hub's registry of connections (sockets and event streams), and the count comes back down
however the sockets went (closed, dropped, reset). A text frame that is not UTF-8 closes the
socket with 1007 (RFC 6455), not a bare TCP drop (1006)."""
from __future__ import annotations

import asyncio
import json
import socket
import struct

import httpx
import pytest
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import WebSocketProtocol13, websocket_connect

from handlers.chat import _StrictTextProtocol
from tests.support import WsClient

CAP = 3
UPGRADE = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
           "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}


@pytest.fixture
def settings_overrides():
    return {"ws_max_sockets_per_user": CAP}


async def handshake(sheda, token: str):
    """A handshake the plain HTTP client can read the refusal of (an accepted one would upgrade)."""
    return await sheda.api.get(f"/api/v1/chat/ws?token={token}", headers=UPGRADE)


async def until(condition, timeout: float = 20.0):
    """Wait for the server to reach a state (not for a time): the condition is polled."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


async def test_one_socket_over_the_cap_is_refused_before_the_upgrade_and_others_are_not_affected(sheda):
    alice, bob = await sheda.signup("client"), await sheda.signup("agent")
    mine = [await sheda.ws(alice.token) for _ in range(CAP)]
    r = await handshake(sheda, alice.token)
    assert r.status == 429 and r.json["code"] == "too_many_sockets" and r.json["detail"], r
    assert r.headers["Content-Type"].startswith("application/json")
    # Until every socket whose network vanished has failed its ping: WS_PING_INTERVAL + WS_PING_TIMEOUT + 5.
    assert r.headers["Retry-After"] == "50" and r.json["retry_after"] == 50, r.headers
    with pytest.raises(HTTPClientError) as refused:  # what a WebSocket client sees
        await sheda.ws(alice.token)
    assert refused.value.code == 429
    # The event stream is a connection too: no way around the cap through it.
    r = await sheda.api.get("/api/v1/events/stream", token=alice.token)
    assert r.status == 429 and r.json["code"] == "too_many_sockets" and r.headers["Retry-After"] == "50", r
    assert sheda.ctx.hub.count_of(alice.id) == CAP

    # The sockets she has work; another user is not affected, and her messages reach him.
    for ws in mine:
        await ws.send({"type": "ping"})
        await ws.wait_type("pong")
    his = [await sheda.ws(bob.token) for _ in range(CAP)]
    await mine[0].send({"receiver_id": bob.id, "message": "still here", "client_msg_id": "c1"})
    await mine[0].wait_type("ack")
    for ws in his:
        await ws.wait_type("message", message="still here")

    # A bad token at the cap is still the socket's 4401 (never registered, so never counted).
    bad = await sheda.ws("not-a-token")
    assert (await bad.wait_closed())[0] == 4401

    # Closing one frees its place.
    mine.pop().close()
    await until(lambda: sheda.ctx.hub.count_of(alice.id) == CAP - 1)
    mine.append(await sheda.ws(alice.token))
    await mine[-1].send({"type": "ping"})
    await mine[-1].wait_type("pong")
    assert (await handshake(sheda, alice.token)).status == 429


async def test_concurrent_handshakes_of_one_user_cannot_all_pass_the_cap(sheda):
    alice = await sheda.signup("client")
    results = await asyncio.gather(*(sheda.ws(alice.token) for _ in range(4 * CAP)), return_exceptions=True)
    opened = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, BaseException)]
    assert len(opened) == CAP, results
    assert all(isinstance(r, HTTPClientError) and r.code == 429 for r in refused), refused
    assert sheda.ctx.hub.count_of(alice.id) == CAP


def reset(ws) -> None:
    """Drop the connection the way a dying network or a killed app does: no close frame, a TCP RST."""
    stream = ws.conn.protocol.stream
    stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    stream.close()


async def test_sockets_dropped_without_a_close_give_their_places_back(sheda):
    alice = await sheda.signup("client")
    for _ in range(3):  # open the cap, kill them all abruptly, again: no place leaks
        sockets = [await sheda.ws(alice.token) for _ in range(CAP)]
        assert (await handshake(sheda, alice.token)).status == 429
        for ws in sockets[:-1]:
            reset(ws)
        sockets[-1].conn.protocol.stream.close()  # a FIN without a close frame
        await until(lambda: sheda.ctx.hub.count_of(alice.id) == 0)
    # A stream dropped by its client gives its place back too.
    async with httpx.AsyncClient(timeout=30) as client:
        request = client.build_request("GET", sheda.base_url + "/api/v1/events/stream",
                                       headers={"Authorization": f"Bearer {alice.token}"})
        streams = [await client.send(request, stream=True) for _ in range(CAP)]
        assert all(s.status_code == 200 for s in streams)
        await until(lambda: sheda.ctx.hub.count_of(alice.id) == CAP)
        assert (await handshake(sheda, alice.token)).status == 429
        for s in streams:
            await s.aclose()
    await until(lambda: sheda.ctx.hub.count_of(alice.id) == 0)
    sockets = [await sheda.ws(alice.token) for _ in range(CAP)]
    assert sheda.ctx.hub.count_of(alice.id) == CAP


async def test_a_text_frame_that_is_not_utf8_closes_with_1007_after_the_pending_ack(sheda):
    # Tornado has no public hook for this; the socket overrides WebSocketProtocol13._handle_message.
    assert "_handle_message" in vars(WebSocketProtocol13)
    alice, bob = await sheda.signup("client"), await sheda.signup("agent")
    ws = await sheda.ws(alice.token)
    assert type(ws.conn.protocol) is WebSocketProtocol13  # (the client's; the server's is _StrictTextProtocol)
    assert sheda.ctx.hub.sockets_of(alice.id)[0].ws_connection.__class__ is _StrictTextProtocol
    await ws.send({"receiver_id": bob.id, "message": "before", "client_msg_id": "u1"})
    ws.conn.protocol._write_frame(True, 0x1, b'{"type": "ping", "x": "\xff\xfe"}')
    code, reason = await ws.wait_closed()
    assert code == 1007 and "UTF-8" in reason, (code, reason)
    assert [f["client_msg_id"] for f in ws.of_type("ack")] == ["u1"]  # the message before it was answered
    assert not ws.of_type("pong")
    # Valid UTF-8 beyond ASCII is a frame like any other; a binary frame that is not UTF-8 is a bad frame.
    ws = await sheda.ws(alice.token)
    await ws.send(json.dumps({"receiver_id": bob.id, "message": "héllo ✓ 🏠", "client_msg_id": "u2"}, ensure_ascii=False))
    await ws.wait_type("ack", client_msg_id="u2")
    await ws.conn.write_message(b'{"type": "ping"}\xff', binary=True)
    error = await ws.wait_type("error")
    assert error["code"] == "invalid_json", error
    await ws.send({"type": "ping"})
    await ws.wait_type("pong")
    assert not ws.closed.done()


@pytest.mark.parametrize("settings_overrides", [{"ws_max_sockets_per_user": CAP, "ws_compression": True}])
async def test_a_compressed_text_frame_that_inflates_to_invalid_utf8_closes_with_1007_too(sheda):
    # With WS_COMPRESSION (permessage-deflate) Tornado inflates a frame inside _handle_message and
    # dropped the TCP connection on invalid UTF-8 (the client saw 1006): the socket inflates it
    # first itself (once: the deflate context carries over between messages) and closes with 1007.
    alice, bob = await sheda.signup("client"), await sheda.signup("agent")

    async def deflating_socket() -> WsClient:
        req = HTTPRequest(f"{sheda.ws_url}?token={alice.token}", request_timeout=10)
        ws = WsClient(await websocket_connect(req, compression_options={}))
        assert ws.conn.protocol._compressor is not None  # permessage-deflate was negotiated
        return ws

    def send_compressed(ws: WsClient, opcode: int, payload: bytes) -> None:
        protocol = ws.conn.protocol
        protocol._write_frame(True, opcode, protocol._compressor.compress(payload), flags=protocol.RSV1)

    ws = await deflating_socket()
    # Compressed frames before it (the shared deflate context) are read as usual, also beyond ASCII.
    await ws.send(json.dumps({"receiver_id": bob.id, "message": "héllo ✓ 🏠", "client_msg_id": "z1"}, ensure_ascii=False))
    await ws.wait_type("ack", client_msg_id="z1")
    await ws.send({"receiver_id": bob.id, "message": "before", "client_msg_id": "z2"})
    send_compressed(ws, 0x1, b'{"type": "ping", "x": "\xff\xfe"}')
    code, reason = await ws.wait_closed()
    assert code == 1007 and "UTF-8" in reason, (code, reason)
    assert [f["client_msg_id"] for f in ws.of_type("ack")] == ["z1", "z2"]  # the message before it was answered
    assert not ws.of_type("pong")
    await until(lambda: sheda.ctx.hub.count_of(alice.id) == 0)

    # A compressed binary frame that is not UTF-8 is a bad frame, as uncompressed; the socket goes on.
    ws = await deflating_socket()
    send_compressed(ws, 0x2, b'{"type": "ping"}\xff')
    assert (await ws.wait_type("error"))["code"] == "invalid_json"
    for i in range(3):  # and the deflate context is still in step with the client's
        await ws.send({"type": "ping", "n": i})
        await ws.wait_type("pong")
        ws.frames.clear()
    assert not ws.closed.done()


@pytest.mark.parametrize("settings_overrides", [{"ws_max_sockets_per_user": CAP, "ws_compression": True}])
async def test_a_compressed_frame_that_does_not_inflate_closes_with_1007_and_logs_no_error(sheda, caplog):
    # Not deflate data at all: Tornado's inflate raised out of its frame loop (an "Uncaught
    # exception" logged with its traceback at ERROR for each such client) and dropped the TCP
    # connection (1006). A client's bad bytes are its fault: 1007, and no error in our log.
    alice, bob = await sheda.signup("client"), await sheda.signup("agent")
    for opcode in (0x1, 0x2):
        req = HTTPRequest(f"{sheda.ws_url}?token={alice.token}", request_timeout=10)
        ws = WsClient(await websocket_connect(req, compression_options={}))
        assert ws.conn.protocol._compressor is not None
        await ws.send({"receiver_id": bob.id, "message": "before", "client_msg_id": f"d{opcode}"})
        ws.conn.protocol._write_frame(True, opcode, b"\xff\xff\xff\xff not deflate", flags=ws.conn.protocol.RSV1)
        code, reason = await ws.wait_closed()
        assert code == 1007 and "inflate" in reason, (code, reason)
        assert [f["client_msg_id"] for f in ws.of_type("ack")] == [f"d{opcode}"]
    await until(lambda: sheda.ctx.hub.count_of(alice.id) == 0)
    assert [r.getMessage()[:80] for r in caplog.records if r.levelno >= 40] == []
