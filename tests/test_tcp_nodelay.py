"""Frames leave at once: the server's end of a chat socket and of an event stream has Nagle's
algorithm off (TCP_NODELAY). Tornado leaves it on for a connection upgraded from HTTP (and while
a streamed response is being written), so a small frame written while the previous one was still
unacknowledged (an ack right after a delivery, two deliveries in a row) waited for the client's
delayed ACK: up to 40 ms on Linux, and 10-20% of the chat benchmark's closed loop."""
from __future__ import annotations

import socket

from tests.test_sse import open_stream


def _nodelay(sock: socket.socket) -> bool:
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


async def test_a_chat_socket_sends_every_frame_at_once(sheda):
    user = await sheda.signup("client")
    ws = await sheda.ws(user.token)
    await ws.send({"type": "ping"})
    await ws.wait_for(lambda f: f.get("type") == "pong")
    (conn,) = sheda.ctx.hub.sockets_of(user.id)
    assert _nodelay(conn.ws_connection.stream.socket)
    ws.close()


async def test_an_event_stream_sends_every_event_at_once(sheda):
    user = await sheda.signup("client")
    stream = await open_stream(sheda, user.token)
    try:
        await stream.wait_for(lambda s: s.retry is not None)
        (conn,) = sheda.ctx.hub.sockets_of(user.id)
        assert _nodelay(conn.request.connection.stream.socket)
    finally:
        await stream.close()
