"""GET /api/v1/events/stream: the user's events as Server-Sent Events, for networks that
block WebSockets (some corporate proxies, captive portals, old middleboxes).

The stream is one more connection of the hub (the Connection protocol: conn_id, user_id,
jti, fam, expires_at, deliver, close_for), registered exactly like a socket, so it gets
everything published to the user, durable and ephemeral, and obeys the same rules: a
logout or a revoked login closes it, the token's expiry closes it, shutdown closes it, and
a client that does not read is cut off once WS_OUTBOUND_BUFFER_BYTES are unsent. It only
carries events out; the client sends over REST (POST /api/v1/chats and friends).

Wire format (https://html.spec.whatwg.org/multipage/server-sent-events.html): each frame is
`id: <seq>` (durable frames only, so the browser's Last-Event-ID is always the last durable
position), `event: <the frame's type>` and `data: <the frame's JSON, one line>`. A
reconnecting EventSource sends Last-Event-ID by itself; the stream then replays everything
after that position (`EventStream.replay`, the same replay as the socket's `sync`) before
any live frame, so nothing is missed or sent twice.

Why an EventSource and not long polling: one request per session instead of one per event
batch, and browsers reconnect and resume by themselves. Why the stream ends (instead of a
503) when the database fails mid-replay: an EventSource answered with anything but a 200
gives up for good, while a stream that ends is reopened after `retry` with Last-Event-ID.
"""
from __future__ import annotations

import asyncio
import json
import logging
import socket
import uuid
from collections import OrderedDict

from pydantic import BaseModel, Field
from tornado.iostream import StreamClosedError

from handlers.base import APIHandler, dumps
from handlers.routing import EndpointDoc, route
from sheda_rt.accounts.auth import USER, bearer_token
from sheda_rt.database.ids import MAX_ID
from sheda_rt.errors import DATABASE_UNAVAILABLE, Unauthorized, ValidationFailed, to_wire
from sheda_rt.realtime.stream import StreamReset

log = logging.getLogger("sheda.events.stream")

#: Sent first: EventSource waits this long (ms) before reconnecting after the stream ends.
RETRY_MS = 3000
#: Durable events per replay page (each page is written, then flushed before the next is read).
REPLAY_PAGE = 500
#: The socket's close codes, used as the `code` of the final `close` event.
CLOSE_TRY_LATER = 1013
#: Seqs remembered as written, so a resync after a broker outage skips them (a few KiB per stream).
RECENT_SEQS = 256

_HEARTBEAT = b": ping\n\n"


class StreamQuery(BaseModel):
    token: str | None = Field(None, description=(
        "Access token, for clients that cannot set headers (a browser's EventSource); the Authorization "
        "header is used when both are sent"))
    last_event_id: int | None = Field(None, ge=0, le=MAX_ID, description=(
        "Resume after this position, for EventSource polyfills that cannot send the Last-Event-ID header "
        "(the header wins when both are sent)"))
    lastEventId: int | None = Field(None, ge=0, le=MAX_ID, description=(  # noqa: N815 (the polyfill's own name)
        "The same as last_event_id, under the name the common EventSource polyfill (Yaffle's "
        "event-source-polyfill) appends on reconnect; last_event_id wins when both are sent"))


def sse_event(text: str) -> tuple[bytes, int | None]:
    """One frame (JSON text as the hub delivers it) as an SSE event, and its seq: `id` from its
    "seq" (durable frames only), `event` from its "type". json.dumps never writes a raw line
    break, so the frame is one `data:` line."""
    try:
        frame = json.loads(text)
    except ValueError:
        frame = None
    lines, seq = [], None
    if isinstance(frame, dict):
        seq = frame.get("seq")
        if isinstance(seq, int) and not isinstance(seq, bool):
            lines.append(f"id: {seq}\n")
        else:
            seq = None
        kind = frame.get("type")
        if isinstance(kind, str) and kind and "\n" not in kind and "\r" not in kind:
            lines.append(f"event: {kind}\n")
    lines.append(f"data: {text}\n\n")
    return "".join(lines).encode(), seq


class EventStreamHandler(APIHandler):
    """One SSE client: a hub Connection while its response is open."""

    # Background tasks (presence on close) must be referenced until done.
    _tasks: set = set()

    def initialize(self, **kwargs):
        super().initialize(**kwargs)
        self.conn_id = uuid.uuid4().hex
        self.user_id = None
        self.jti = None
        self.fam = None
        self.user_type = None  # the user's type when the stream opened: admin broadcasts to one type (Hub.broadcast)
        self.expires_at = None  # the token's exp (epoch seconds): the hub's expiry watch closes the stream then
        self._registered = False
        self._done = asyncio.Event()  # set once the stream is over, whoever ended it
        # Live frames that arrive while a replay is being written: sent after it, minus what
        # the replay already carried.
        self._held: list[str] | None = None
        self._held_bytes = 0
        self._resync_after: int | None = None  # a sync.hint that arrived during a replay: replay again from here
        # The seqs most recently written, so a resync does not send them twice (bounded: at worst a repeat).
        self._recent: OrderedDict[int, None] = OrderedDict()

    async def get(self):
        ctx = self.ctx
        query = self.parse_query(StreamQuery)
        after = self._last_event_id(query)
        header = self.request.headers.get("Authorization")
        token = bearer_token(header) if header else query.token
        if not token:
            raise Unauthorized("Missing token: send 'Authorization: Bearer <jwt>' or ?token=<jwt>", "missing_token")
        self.principal = await ctx.auth.authenticate_token(token, USER)
        # The user's cap on open connections, shared with the socket (WS_MAX_SOCKETS_PER_USER): 429
        # too_many_sockets. No await from here to the registration below, so the check holds.
        ctx.sessions.admit(self.principal.user_id)
        self.user_id = self.principal.user_id
        self.jti = self.principal.jti
        self.fam = self.principal.claims.get("fam")
        self.user_type = self.principal.user.get("user_type")
        self.expires_at = self.principal.claims["exp"]
        # A stream is not a request shutdown should wait for: the drain closes it through the hub.
        ctx.inflight.discard(self)

        self.set_header("Content-Type", "text/event-stream; charset=utf-8")
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Accel-Buffering", "no")  # nginx: pass each event on, do not buffer the response
        # Each flushed event goes out at once, not after the client's delayed ACK of the previous
        # one (Nagle's algorithm, which Tornado leaves on while a response is being written).
        self.request.connection.stream.set_nodelay(True)
        self._bound_unacknowledged_writes()
        if after is not None:
            self._held = []
        # Registered before anything is replayed, so an event published meanwhile is held, not
        # missed; and the client sees the stream open only once it is registered, so what it then
        # sends over REST comes back on the stream.
        self._registered = True
        await ctx.sessions.opened(self)  # registers synchronously, then presence (sheda_rt/realtime/sessions.py)
        first = f"retry: {RETRY_MS}\n"
        if after is None:
            # A fresh stream: an id-only block (no event fires) gives the EventSource a position, so a
            # drop before its first durable event still reconnects with Last-Event-ID and misses nothing.
            try:
                position = await ctx.stream.position()
            except Exception:  # the database away: no position, as before (the client refetches over REST)
                position = None
            if position is not None:
                first += f"id: {position}\n"
        self.write(f"{first}\n".encode())
        self.flush()
        if after is not None:
            await self._replay(after)
        heartbeat = ctx.settings.sse_heartbeat_seconds
        while not self._done.is_set():
            try:
                await asyncio.wait_for(self._done.wait(), heartbeat)
            except asyncio.TimeoutError:
                self._send(_HEARTBEAT)

    def _bound_unacknowledged_writes(self) -> None:
        """A client that vanished without a FIN or RST (a phone off the network) is noticed when a
        write (at the latest the next heartbeat) stays unacknowledged for WS_PING_TIMEOUT, the grace
        a socket's ping gets: the kernel then fails the connection (TCP_USER_TIMEOUT, Linux), Tornado
        closes the stream and on_connection_close frees its place under WS_MAX_SOCKETS_PER_USER.
        Without it TCP retransmits for ~15 minutes, holding the place and its buffers meanwhile."""
        option = getattr(socket, "TCP_USER_TIMEOUT", None)
        sock = self.request.connection.stream.socket
        if option is None or sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
            return
        try:
            sock.setsockopt(socket.IPPROTO_TCP, option, max(1, int(self.ctx.settings.ws_ping_timeout * 1000)))
        except OSError:
            pass

    def _last_event_id(self, query: StreamQuery) -> int | None:
        header = self.request.headers.get("Last-Event-ID", "").strip()
        if not header:
            return query.last_event_id if query.last_event_id is not None else query.lastEventId
        if not (header.isascii() and header.isdigit() and len(header) <= 18 and int(header) <= MAX_ID):
            raise ValidationFailed.single("Last-Event-ID", "must be the id of an event this stream sent (a non-negative integer)")
        return int(header)

    async def _replay(self, after: int) -> None:
        """Every durable event after `after`, page by page, then the live frames held meanwhile
        that the replay did not already carry; then again if a sync.hint came meanwhile. Live
        frames are held (`_held` is a list) from before this is called until it returns."""
        while after is not None and not self._done.is_set():
            last = await self._replay_pages(after)
            if last is None:
                return
            held, self._held, self._held_bytes = self._held or [], None, 0
            for text in held:
                data, seq = sse_event(text)
                if seq is None or seq > last:
                    self._write_event(data, seq)
            after, self._resync_after = self._resync_after, None
            if after is not None:
                self._held = []
            if not self._done.is_set():
                self.flush()

    async def _replay_pages(self, after: int) -> int | None:
        """Write the durable events after `after`; the last position replayed, or None when the
        stream ended meanwhile."""
        last = after
        try:
            while not self._done.is_set():
                page = await self.ctx.stream.replay(self.user_id, last, REPLAY_PAGE)
                for frame in page.frames:
                    if frame["seq"] not in self._recent:  # a resync: what this client already got is not repeated
                        self._write_event(*sse_event(dumps(frame)))
                last = max(last, page.last_seq)
                await self.flush()  # the client's pace: the next page is read once this one is out
                if not page.more:
                    return last
        except StreamReset as reset:
            # Its id is the position the client goes on from once it has refetched over REST, so
            # an EventSource that reconnects resumes from there instead of meeting the reset again.
            self.write(f"id: {reset.last_seq}\n".encode() + sse_event(dumps(reset.frame()))[0])
            return max(last, reset.last_seq)
        except StreamClosedError:
            self._end()
        except Exception as exc:
            wire = to_wire(exc)
            if wire.log_event != DATABASE_UNAVAILABLE:
                raise
            # The client reconnects after `retry` with the Last-Event-ID of the last event it got.
            log.warning(json.dumps(wire.log_record(exc, frame="sse_replay")))
            self.close_for(CLOSE_TRY_LATER, "database unavailable: reconnect to resume")
        return None

    def _resync(self, hint: dict) -> None:
        """The broker lost its link for a while (sync.hint): durable events after the hint's
        position may not have reached this process live. A socket's client syncs by itself; this
        stream's client cannot send, so the stream replays from there for it (what it already
        wrote is skipped; live frames are held meanwhile, as at the start). Before that position
        everything reached it live, or was replayed when it opened."""
        after = hint.get("after_seq")
        if not isinstance(after, int):
            return
        if self._held is not None:  # a replay is being written: once it is done, again from here
            self._resync_after = after if self._resync_after is None else min(self._resync_after, after)
            return
        self._held = []
        task = asyncio.ensure_future(self._replay_guarded(after))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _replay_guarded(self, after: int) -> None:
        try:
            await self._replay(after)
        except Exception:
            log.exception("SSE resync failed: user %s conn %s", self.user_id, self.conn_id)
            self.close_for(CLOSE_TRY_LATER, "resync failed: reconnect to resume")

    # ---- the Connection protocol ------------------------------------------------
    def deliver(self, text: str) -> None:
        """Queue a frame without blocking (held while a replay is written). A client whose
        unsent bytes would exceed WS_OUTBOUND_BUFFER_BYTES is a slow consumer: cut off, as a socket is."""
        if self._done.is_set():
            return
        if '"sync.hint"' in text:
            hint = json.loads(text)
            if isinstance(hint, dict) and hint.get("type") == "sync.hint":
                self._resync(hint)
                return
        if self._held is not None:
            self._held.append(text)
            self._held_bytes += len(text)
            if self._held_bytes > self.ctx.settings.ws_outbound_buffer_bytes:
                self._cut_off()
            return
        self._send_text(text)

    def close_for(self, code: int, reason: str) -> None:
        """End the stream from the server side. A last `close` event says why, so a client can
        tell "reconnect" (1001 shutdown, 1013) from "sign in again" (4401, 4403)."""
        if self._done.is_set():
            return
        self._send_text(dumps({"type": "close", "code": code, "reason": reason}))
        self._end()

    # ---- writing ------------------------------------------------------------------
    def _write_event(self, data: bytes, seq: int | None) -> None:
        """Buffer one event (flushed by the caller), remembering its seq."""
        if seq is not None:
            self._remember(seq)
        self.write(data)

    def _remember(self, seq: int) -> None:
        self._recent[seq] = None
        if len(self._recent) > RECENT_SEQS:
            self._recent.popitem(last=False)

    def _send_text(self, text: str) -> None:
        data, seq = sse_event(text)
        if self._send(data) and seq is not None:
            self._remember(seq)

    def _send(self, data: bytes) -> bool:
        """Write and flush now, unless the client is over its unsent-bytes limit (then it is cut off)."""
        if self._done.is_set() or self._finished:
            return False
        stream = self.request.connection.stream
        if stream.closed():
            self._end()
            return False
        if stream._total_write_index - stream._total_write_done_index + len(data) > self.ctx.settings.ws_outbound_buffer_bytes:
            self._cut_off()
            return False
        self.write(data)
        self.flush()
        return True

    def _cut_off(self) -> None:
        """A slow consumer: its connection is closed, not finished (finishing would queue more
        bytes behind the ones it is not reading). It may reconnect and resume with Last-Event-ID."""
        log.info("closing slow SSE consumer: user %s conn %s", self.user_id, self.conn_id)
        self._end()
        self.request.connection.stream.close()

    def _end(self) -> None:
        """The stream is over: the handler's get returns (Tornado finishes the response if the
        connection is still open) and the hub forgets it."""
        if self._done.is_set():
            return
        self._done.set()
        self._held = None
        if not self._registered:
            return
        self._registered = False
        task = asyncio.ensure_future(self._went_away())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _went_away(self):
        await self.ctx.sessions.closed(self)  # its registration, presence if it was the last (sheda_rt/realtime/sessions.py)

    def on_connection_close(self):
        self._end()
        super().on_connection_close()

    def on_finish(self):
        self._end()
        super().on_finish()


# The document entry is written out rather than made by @endpoint: the token may come in the
# query (EventSource cannot set headers), and the answer is a stream, not one JSON body.
EventStreamHandler.get.endpoint_doc = EndpointDoc(
    summary="The user's events as Server-Sent Events (the WebSocket's fallback)",
    auth=USER, body=None, query=StreamQuery, response=None, status=200, form=False, upload=None,
    errors=(401, 403, 422, 429), tags=("chat",), content_type="text/event-stream",
    description="""
    Delivers what the chat WebSocket delivers (messages, read receipts, notifications, appointment.*,
    contract.*, typing, presence, ...), for networks that block WebSockets; send over REST meanwhile.
    Authenticate with `Authorization: Bearer <jwt>` or `?token=<jwt>`; refusals are JSON (401, 403)
    before the stream starts, and 429 `too_many_sockets` with Retry-After when the user already holds
    WS_MAX_SOCKETS_PER_USER sockets and streams on this server process. Each event: `id: <seq>`
    (durable frames only), `event: <frame type>`, `data: <frame JSON>`. Resume with the `Last-Event-ID` header (or `?last_event_id=`): every durable
    event after it is replayed before live ones; a position that cannot be resumed gets a
    `sync.reset` event (refetch over REST). `retry: 3000` first (with `id: <current position>` on a
    fresh stream of one process, so a drop before the first event still resumes), `: ping` comments every
    SSE_HEARTBEAT_SECONDS, and a last `close` event {code, reason} when the server ends the stream
    (4401 token expired or revoked, 1001 shutdown). A client that does not read is cut off.
    """,
)

default_handlers = [
    route("/api/v1/events/stream", EventStreamHandler),
]
