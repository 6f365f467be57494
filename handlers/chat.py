"""/api/v1/chat/ws (the WebSocket) and the chat REST routes: thin edges over ChatService.

The socket handler parses frames, checks the rate limit and turns service
errors into error frames; the service decides; the hub delivers. Frames this
socket answers itself (ack, error, pong, sync pages) go straight to it;
everything addressed to a *user* goes through `hub.publish_*`.
"""
from __future__ import annotations

import asyncio
import json
import logging
import uuid
import zlib
from datetime import datetime, timezone

import tornado.websocket
from pydantic import ValidationError
from tornado.iostream import StreamClosedError

from handlers.base import APIHandler, RequestIdMixin
from handlers.routing import Reply, endpoint, route
from sheda_rt import client_input
from sheda_rt.accounts.auth import USER
from sheda_rt.chat.frames import (
    INBOUND, ConversationsQuery, HistoryQuery, HistoryRow, ReadBody, SendMessageBody, ack_frame, echoable_key, error_frame,
    history_row, sender_info,
)
from sheda_rt.chat.models import Conversation, ReadReceipt, SentMessage
from sheda_rt.wire import encode
from sheda_rt.clock import format_ts
from sheda_rt.errors import DATABASE_UNAVAILABLE, ApiError, Forbidden, RateLimited, Unauthorized, ValidationFailed, to_wire
from sheda_rt.limits import BurstGuard, TokenBucket
from sheda_rt.realtime.stream import StreamReset
from sheda_rt.metrics import OPEN_SOCKETS
from sheda_rt.responses import Page

log = logging.getLogger("sheda.chat.ws")

CLOSE_GOING_AWAY = 1001
CLOSE_INVALID_DATA = 1007
CLOSE_POLICY = 1008
CLOSE_TRY_LATER = 1013
CLOSE_UNAUTHORIZED = 4401
CLOSE_FORBIDDEN = 4403

# How long a socket closed for abuse waits for its stored messages' acks to go out first.
ACK_BEFORE_CLOSE_SECONDS = 10.0


class _StrictTextProtocol(tornado.websocket.WebSocketProtocol13):
    """RFC 6455 (8.1): a text frame that is not UTF-8 fails the connection with 1007. Tornado's
    own handling drops the TCP connection without a close frame (the client sees 1006, no
    reason). This checks first and has the socket close with 1007 instead (after the acks of its
    messages being stored, like any other close for a client's fault). Tornado has no public hook
    for it: this overrides WebSocketProtocol13._handle_message, which
    tests/test_socket_cap.py pins. A compressed data frame (WS_COMPRESSION) is only inflated in
    there, so this inflates it first, as Tornado would (its decompressor, once: the deflate
    context carries over between messages; 1009 past the size limit), and hands Tornado the
    inflated bytes as an uncompressed frame. Bytes that do not inflate close with 1007 too (in
    Tornado the zlib error escaped its frame loop: a logged traceback and 1006). Uncompressed
    frames pay one comparison more."""

    def _handle_message(self, opcode: int, data: bytes):
        if opcode <= 0x2 and not self.client_terminated:  # a whole text or binary message
            if self._frame_compressed:
                try:
                    data = self._decompressor.decompress(data)
                except tornado.websocket._DecompressTooLargeError:
                    self.close(1009, "message too big after decompression")
                    self._abort()
                    return None
                except zlib.error:
                    self.handler.invalid_compressed_frame()
                    return None
                self._frame_compressed = False  # inflated here; the next message's header sets it again
            if opcode == 0x1 and not data.isascii():
                try:
                    data.decode("utf-8")
                except UnicodeDecodeError:
                    self.handler.invalid_text_frame()
                    return None
        return super()._handle_message(opcode, data)


class ChatSocket(RequestIdMixin, tornado.websocket.WebSocketHandler):
    """One client socket; implements the hub's Connection protocol (conn_id, user_id,
    jti, deliver, close_for)."""

    # Background tasks (presence on close) must be referenced until done.
    _tasks: set = set()

    def initialize(self, **_):
        self.conn_id = uuid.uuid4().hex
        self.user_id = None
        self.jti = None
        self.fam = None
        self.user_type = None  # the user's type when the socket opened: admin broadcasts to one type (Hub.broadcast)
        self.expires_at = None  # the token's exp (epoch seconds): the hub closes the socket then (4401)
        self.info = None  # the sender_info stamped on this socket's messages (open(); profile_changed())
        self._closing = False
        self._ending = False  # closing for abuse: no more frames handled, pending acks still sent
        self._registered = False
        # Created on first use, so the many idle sockets stay small.
        self._control: TokenBucket | None = None  # budget of frames other than messages, this socket's own
        self._guard: BurstGuard | None = None  # refused frames: staggered retry_after, persistent abuse
        self._pending: set | None = None  # store futures of this socket's messages not yet answered

    @property
    def ctx(self):
        return self.application.ctx

    # ---- handshake -------------------------------------------------------------
    def check_origin(self, origin: str) -> bool:
        allowed = self.ctx.settings.cors_origins
        return "*" in allowed or origin in allowed

    def select_subprotocol(self, subprotocols: list[str]) -> str | None:
        # Browsers cannot set headers: `new WebSocket(url, ["bearer", jwt])`; we must answer "bearer".
        if len(subprotocols) >= 2 and subprotocols[0].lower() == "bearer":
            return subprotocols[0]
        return None

    def _offered_token(self) -> str | None:
        offered = [p.strip() for p in self.request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()]
        if len(offered) >= 2 and offered[0].lower() == "bearer":
            return offered[1]
        values = self.request.query_arguments.get("token")
        if not values:
            return None
        # Not Tornado's get_query_argument: invalid UTF-8 there is an HTML 400. A token that is
        # not even text is simply a bad token (close 4401, like any other).
        return values[-1].decode("utf-8", "replace").strip()

    async def get(self, *args, **kwargs):
        # Tornado refuses these handshakes itself, in plain text or with no body (its checks, in
        # its order); every other error here is JSON. A proxy in front that forwards `Upgrade`
        # but drops `Connection: Upgrade` is the usual way to meet the second.
        headers = self.request.headers
        refusal = None
        if headers.get("Upgrade", "").lower() != "websocket":
            refusal = 400, "websocket_required", "This is the chat WebSocket: connect with a WebSocket client (Upgrade: websocket)"
        elif "upgrade" not in (part.strip().lower() for part in headers.get("Connection", "").split(",")):
            refusal = 400, "websocket_required", "A WebSocket handshake needs `Connection: Upgrade` (a proxy in front may drop it)"
        elif headers.get("Sec-WebSocket-Version") != "13":  # Tornado 6.5+ refuses drafts 7 and 8 with an empty 426
            refusal = 426, "upgrade_required", "Unsupported WebSocket version: use 13"
            self.set_header("Sec-WebSocket-Version", "13")
        elif not (headers.get("Host") and headers.get("Sec-WebSocket-Key")):
            refusal = 400, "bad_request", "Missing WebSocket handshake headers (Host, Sec-WebSocket-Key)"
        if refusal is not None:
            status, code, detail = refusal
            self.set_status(status)
            self.set_header("Content-Type", "application/json; charset=UTF-8")
            self.finish(encode({"detail": detail, "code": code}))
            return
        await super().get(*args, **kwargs)

    def write_error(self, status_code: int, **kwargs):
        """Refusals of the upgrade itself (not a WebSocket request, wrong method) are JSON like every other error."""
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        codes = {400: "bad_request", 403: "forbidden", 405: "method_not_allowed", 426: "upgrade_required"}
        detail = self._reason if status_code < 500 else "Internal server error"
        self.finish(encode({"detail": detail, "code": codes.get(status_code, "http_error" if status_code < 500 else "internal_error")}))

    def get_compression_options(self):
        return {} if self.ctx.settings.ws_compression else None

    def get_websocket_protocol(self):
        protocol = super().get_websocket_protocol()
        if type(protocol) is tornado.websocket.WebSocketProtocol13:
            return _StrictTextProtocol(self, False, protocol.params)
        return protocol

    def invalid_text_frame(self) -> None:
        self._close_when_answered(CLOSE_INVALID_DATA, "text frame is not valid UTF-8")

    def invalid_compressed_frame(self) -> None:
        self._close_when_answered(CLOSE_INVALID_DATA, "compressed frame does not inflate (permessage-deflate)")

    def _refuse(self, wire) -> None:
        """Answer the handshake with an error (JSON, the REST way) instead of upgrading."""
        self.set_status(wire.status)
        for name, value in wire.headers.items():
            self.set_header(name, value)
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish(encode(wire.body()))

    async def prepare(self):
        # Authenticate before the upgrade completes, so the socket is registered with
        # the hub (in open(), synchronously) by the time the client sees it open:
        # nothing addressed to the user in between is missed. A failure is still
        # reported the WebSocket way, as a close code after the upgrade.
        self._auth_error = None
        self.principal = None
        origin = self.request.headers.get("Origin")
        if origin is not None and not self.check_origin(origin):
            # A page from an origin not in CORS_ORIGINS. Tornado would refuse it too, later
            # (after the token lookup) and with a bare text body and nothing in the log; a
            # browser only shows "Unexpected response code: 403", so the log says why.
            log.warning(json.dumps({"event": "ws_origin_refused", "origin": origin[:200], "hint": "not in CORS_ORIGINS"}))
            self.set_status(403)
            self.set_header("Content-Type", "application/json; charset=UTF-8")
            self.finish(encode({"detail": f"Origin {origin[:200]!r} is not allowed: add it to the server's CORS_ORIGINS",
                                    "code": "origin_not_allowed"}))
            return
        token = self._offered_token()
        try:
            if not token:
                raise Unauthorized("Missing token: use ?token=<jwt> or the 'bearer, <jwt>' subprotocol", "missing_token")
            self.principal = await self.ctx.auth.authenticate_token(token, USER)
        except (Unauthorized, Forbidden) as exc:
            self._auth_error = exc
        except Exception as exc:
            wire = to_wire(exc)  # the one mapping REST errors and error frames share
            if wire.log_event != DATABASE_UNAVAILABLE:
                raise
            # The database cannot be asked about the token: refuse the upgrade the HTTP
            # way (503 + Retry-After), so the client retries rather than logging in again.
            log.warning(json.dumps(wire.log_record(exc, frame="connect")))
            self._refuse(wire)
            return
        if self.principal is not None:
            # The user's cap on open connections (WS_MAX_SOCKETS_PER_USER), refused before the upgrade
            # like the database's 503: 429 too_many_sockets + Retry-After. No await from here to
            # open()'s registration, so concurrent handshakes of one user cannot all pass it.
            try:
                self.ctx.sessions.admit(self.principal.user_id)
            except RateLimited as exc:
                self.principal = None
                self._refuse(to_wire(exc))

    async def open(self):
        exc = self._auth_error
        if exc is not None:
            self.close(CLOSE_FORBIDDEN if isinstance(exc, Forbidden) else CLOSE_UNAUTHORIZED, exc.detail[:120])
            return
        ctx = self.ctx
        user = self.principal.user
        self.user_id = user["_id"]
        self.jti = self.principal.jti
        self.fam = self.principal.claims.get("fam")
        self.user_type = user.get("user_type")
        self.expires_at = self.principal.claims["exp"]  # watched by the hub from hub.connected on
        self.info = sender_info(user, self.ctx.settings.public_base_url)
        self.principal = None
        self.request.headers.clear()  # idle sockets are many: keep only what we use
        self._registered = True
        # Every frame goes out at once. Tornado leaves a socket upgraded from HTTP with Nagle's
        # algorithm on, so a frame written while the previous one was unacknowledged (an ack
        # right after a delivery, two deliveries in a row) waited for the client's delayed ACK,
        # up to 40 ms on Linux: the closed loop of the chat benchmark ran 10-20% slower with it.
        self.set_nodelay(True)
        OPEN_SOCKETS.inc()
        await ctx.sessions.opened(self)  # registers synchronously, then asks the broker and announces presence

    def on_close(self):
        if not self._registered:
            return
        self._registered = False
        self._closing = True
        OPEN_SOCKETS.dec()
        task = asyncio.ensure_future(self._went_away())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _went_away(self):
        await self.ctx.sessions.closed(self)  # its channels, its registration, presence if it was the last

    # ---- the Connection protocol ------------------------------------------------
    def deliver(self, text: str) -> None:
        """Queue a frame without blocking. A socket whose unsent bytes would exceed
        WS_OUTBOUND_BUFFER_BYTES is a slow consumer: it is closed, not buffered for."""
        ws = self.ws_connection
        if ws is None or self._closing:
            return
        data = text.encode()
        stream = ws.stream
        if stream._total_write_index - stream._total_write_done_index + len(data) > self.ctx.settings.ws_outbound_buffer_bytes:
            log.info("closing slow consumer: user %s conn %s", self.user_id, self.conn_id)
            self.close_for(CLOSE_TRY_LATER, "slow consumer: outbound buffer full")
            return
        try:
            if ws._compressor is None:
                # Tornado's write_message wraps every write in a Task (for its Future);
                # writing the frame directly saves that on the hot path. Failures show
                # up as the stream closing, which on_close handles.
                ws._write_frame(True, 0x1, data)
            else:
                ws.write_message(data)
        except (StreamClosedError, tornado.websocket.WebSocketClosedError):
            pass

    def close_for(self, code: int, reason: str) -> None:
        if self._closing:
            return
        self._closing = True
        self.close(code, reason)

    def send_frame(self, frame: dict) -> None:
        self.deliver(encode(frame))

    def profile_changed(self, fields: dict) -> None:
        """Hub.profile_changed: the sender_info this socket stamps on its messages (computed
        once, at the handshake, to keep the send path free of profile look-ups) follows the
        user's new avatar."""
        if self.user_id is None or self.info is None:
            return
        fresh = sender_info({"_id": self.user_id, **fields}, self.ctx.settings.public_base_url)
        self.info = {**self.info, **{key: fresh[key] for key in ("username", "avatar_url") if key in fields}}

    def _close_when_answered(self, code: int, reason: str) -> None:
        """Close, but first answer every message of this socket that is being stored: a client
        that is never told its message was stored resends it (a duplicate without client_msg_id)."""
        if self._closing or self._ending:
            return
        self._ending = True
        pending = [f for f in (self._pending or ()) if not f.done()]
        if not pending:
            self.close_for(code, reason)
            return

        async def after_acks():
            await asyncio.wait(pending, timeout=ACK_BEFORE_CLOSE_SECONDS)
            await asyncio.sleep(0)  # the futures' done-callbacks (the acks) run first
            self.close_for(code, reason)

        task = asyncio.ensure_future(after_acks())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---- inbound frames -----------------------------------------------------------
    async def on_message(self, raw):
        if self.user_id is None or self._closing or self._ending:
            return
        ctx = self.ctx
        # The same strict decoder as REST bodies: bad JSON, nesting deeper than
        # client_input.MAX_DEPTH or a lone surrogate anywhere is an error frame, never a
        # dropped socket, and never reaches a chat batch.
        refused: ApiError | None = None
        try:
            data = client_input.parse_json(raw, "The frame")
        except ApiError as exc:
            data, refused = getattr(exc, "document", None), exc
        cmid = data.get("client_msg_id") if isinstance(data, dict) else None
        if not echoable_key(cmid):
            cmid = None
        kind = data.get("type", "message") if isinstance(data, dict) else None
        settings = ctx.settings
        # Messages spend the user's budget (shared by all their sockets, and across processes
        # with Redis); everything else (pings, read receipts, typing, sync, bad frames) spends
        # this socket's own control budget, so keeping a socket alive never costs a message.
        if refused is None and kind == "message":
            wait = await ctx.chat.spend_message_budget(self.user_id)  # the same budget as REST sends
            rate = settings.ws_rate_per_second
        else:
            if self._control is None:
                self._control = TokenBucket(settings.ws_control_burst, settings.ws_control_per_second)
            wait, rate = self._control.take(), settings.ws_control_per_second
        if wait > 0:
            if self._guard is None:
                self._guard = BurstGuard(settings.ws_rate_strikes_before_close)
            retry_after, abusive = self._guard.refused(wait, rate)
            if abusive:
                self._close_when_answered(CLOSE_POLICY, "rate limit exceeded repeatedly")
                return
            self.send_frame(error_frame("rate_limited", "Too many frames; resend this one after retry_after seconds", cmid,
                                        retry_after=round(retry_after, 3)))
            return
        if isinstance(refused, ValidationFailed):
            self.send_frame(error_frame(refused.code, refused.detail, cmid, errors=refused.errors))
            return
        if refused is not None:
            self.send_frame(error_frame(refused.code, refused.detail))
            return
        if not isinstance(data, dict):
            self.send_frame(error_frame("invalid_frame", "A frame must be a JSON object"))
            return
        model = INBOUND.get(kind) if isinstance(kind, str) else None
        if model is None:
            shown = repr(kind) if len(repr(kind)) <= 40 else repr(kind)[:37] + "..."
            self.send_frame(error_frame("unknown_type", f"Unknown frame type {shown}; expected one of {', '.join(INBOUND)}", cmid))
            return
        try:
            frame = model.model_validate(data)
        except ValidationError as exc:
            failed = ValidationFailed.from_pydantic(exc)
            self.send_frame(error_frame(failed.code, failed.detail, cmid, errors=failed.errors))
            return
        try:
            await self.DISPATCH[kind](self, frame)
        except Exception as exc:  # answered as REST would (sheda_rt.errors.to_wire); the socket stays open
            wire = to_wire(exc, fault_detail="The frame could not be handled; try again")
            if wire.is_fault:
                log.exception("chat frame %r failed", kind)
            elif wire.log_event == DATABASE_UNAVAILABLE:
                log.warning(json.dumps(wire.log_record(exc, frame=kind)))
            self.send_frame(error_frame(wire.code, wire.detail, cmid, **wire.extra))

    async def _on_message(self, frame):
        chat = self.ctx.chat
        future = await chat.submit({"_id": self.user_id}, frame.receiver_id, frame.message, client_msg_id=frame.client_msg_id,
                                   attachment_ids=frame.attachment_ids,
                                   property_id=frame.property_id, origin=self.conn_id, info=self.info, reply_to=frame.reply_to)
        cmid = frame.client_msg_id
        if self._pending is None:
            self._pending = set()
        self._pending.add(future)
        future.add_done_callback(lambda done: self._answer_stored(done, cmid))
        if chat.congested():
            # Back-pressure: stop reading this socket until its message is stored.
            await asyncio.wait([future])

    def _answer_stored(self, future: asyncio.Future, client_msg_id: str | None) -> None:
        self._pending.discard(future)
        exc = future.exception()
        if exc is None:
            doc, _ = future.result()
            self.send_frame(ack_frame(doc))
        elif isinstance(exc, ApiError):
            self.send_frame(error_frame(exc.code, exc.detail, client_msg_id))
        else:
            self.send_frame(error_frame("store_failed", "The message could not be stored; send it again", client_msg_id))

    async def _on_read(self, frame):
        await self.ctx.chat.mark_read(self.user_id, frame.other_user_id, frame.up_to, origin=self.conn_id)

    async def _on_typing(self, frame):
        await self.ctx.chat.typing(self.user_id, frame.receiver_id)

    async def _on_sync(self, frame):
        if frame.after_seq is not None:  # the event stream: every durable event after a position
            try:
                replay = await self.ctx.stream.replay(self.user_id, frame.after_seq, frame.limit, frame.epoch)
            except StreamReset as reset:
                self.send_frame(reset.frame())
                return
            for f in replay.frames:
                self.send_frame(f)
            self.send_frame({"type": "sync.done", "after_seq": frame.after_seq, "last_seq": replay.last_seq,
                             "count": len(replay.frames), "more": replay.more, "epoch": replay.epoch})
            return
        frames, more = await self.ctx.chat.sync(self.user_id, frame.since, frame.limit)
        for f in frames:
            self.send_frame(f)
        last = frames[-1]["id"] if frames else frame.since
        self.send_frame({"type": "sync.done", "since": frame.since, "last_id": last, "count": len(frames), "more": more})

    # [edits] The change comes back as its durable event to every socket of the users concerned, this
    # one included (so the answer has its seq and arrives in stream order); refusals are error frames.
    async def _on_edit(self, frame):
        await self.ctx.chat_edits.edit(self.user_id, frame.id, frame.message)

    async def _on_delete(self, frame):
        await self.ctx.chat_edits.delete(self.user_id, frame.id, frame.scope)

    async def _on_react(self, frame):
        await self.ctx.chat_edits.react(self.user_id, frame.id, frame.emoji)

    async def _on_received(self, frame):
        await self.ctx.chat_edits.received(self.user_id, frame.other_user_id, frame.up_to)

    async def _on_ping(self, frame):
        self.send_frame({"type": "pong"})

    async def _on_subscribe(self, frame):
        name = await self.ctx.channels.subscribe(self, frame.channel)
        if not self._registered:  # closed while permission was asked: its channels were dropped already
            await self.ctx.channels.drop(self)
            return
        self.send_frame({"type": "subscribed", "channel": name})

    async def _on_unsubscribe(self, frame):
        self.send_frame({"type": "unsubscribed", "channel": await self.ctx.channels.unsubscribe(self, frame.channel)})

    async def _on_auth(self, frame):
        """Renew the socket's token: checked exactly as a REST bearer token is (signature, expiry,
        access type, revocation, the account), and it must be the socket's own user's. From then
        on the socket closes when the new token expires, and logging out the new token (or its
        login) closes it. Any refusal leaves the current token and its expiry in force."""
        try:
            principal = await self.ctx.auth.authenticate_token(frame.token, USER)
        except (Unauthorized, Forbidden) as exc:
            raise Unauthorized(f"Token not renewed: {exc.detail}", "invalid_token", extra={"reason": exc.code})
        if principal.user_id != self.user_id:
            raise Unauthorized("Token not renewed: it belongs to another user", "invalid_token", extra={"reason": "other_user"})
        if self._closing or self._ending:
            return  # closed (expired, logged out) while the token was being checked: nothing to renew
        exp = principal.claims["exp"]
        self.jti, self.fam = principal.jti, principal.claims.get("fam")
        self.ctx.hub.renew_expiry(self, exp)
        self.send_frame({"type": "auth.ok", "expires_at": format_ts(datetime.fromtimestamp(exp, tz=timezone.utc))})


# One dispatch table: frame type -> (the pydantic model in INBOUND parses it) -> the method that
# calls the service. A type in one table and not the other fails at import.
ChatSocket.DISPATCH = {
    "message": ChatSocket._on_message, "read": ChatSocket._on_read, "typing": ChatSocket._on_typing, "sync": ChatSocket._on_sync,
    "ping": ChatSocket._on_ping, "auth": ChatSocket._on_auth, "subscribe": ChatSocket._on_subscribe,
    "unsubscribe": ChatSocket._on_unsubscribe,
    "edit": ChatSocket._on_edit, "delete": ChatSocket._on_delete, "react": ChatSocket._on_react,  # [edits]
    "received": ChatSocket._on_received,
}
if ChatSocket.DISPATCH.keys() != INBOUND.keys():
    raise RuntimeError(f"frame types without a handler or a model: {ChatSocket.DISPATCH.keys() ^ INBOUND.keys()}")


# ---- REST ---------------------------------------------------------------------------
class ChatHistoryHandler(APIHandler):
    @endpoint("Chat history with another user (both directions; chronological by default)", auth=USER, query=HistoryQuery,
              response=list[HistoryRow], errors=(401, 404, 422), tags=("chat",))
    async def get(self, other_user_id: int, query: HistoryQuery):
        """A bare array (the seed's shape): `offset` skips messages counted from the oldest
        (`order=asc`, the default) or from the newest (`order=desc`)."""
        return await self.ctx.chat.history(self.principal.user_id, other_user_id, offset=query.offset, limit=query.limit,
                                           order=query.order)


class ChatsHandler(APIHandler):
    @endpoint("Send a message over REST (stored, then delivered live to the receiver's sockets)", auth=USER,
              body=SendMessageBody, response=SentMessage, status=201, errors=(400, 401, 403, 404, 409, 422, 429, 503), tags=("chat",),
              also={200: "A resend with the same client_msg_id: the message stored the first time (nothing new stored or sent)"})
    async def post(self, body: SendMessageBody):
        """201 with the stored message; a resend with the same `client_msg_id` answers 200
        with the message stored the first time (nothing new is stored or delivered). Every send spends
        the user's message budget, shared with the chat socket (WS_RATE_BURST, WS_RATE_PER_SECOND):
        beyond it 429 `rate_limited` with Retry-After, and nothing is stored."""
        user = self.principal.user
        doc, duplicate = await self.ctx.chat.send(user, body.receiver_id, body.message, client_msg_id=body.client_msg_id,
                                                  attachment_ids=body.attachment_ids,
                                                  property_id=body.property_id, info=sender_info(user, self.ctx.settings.public_base_url),
                                                  reply_to=body.reply_to)
        row = {**history_row(doc), "sender_info": sender_info(user)}  # made absolute by the response model
        return Reply(row, 200) if duplicate else row


class ChatsWithUserHandler(APIHandler):
    @endpoint("Chat history with a user (the seed's GET /chats/{user_id}; same as chat-history)", auth=USER,
              query=HistoryQuery, response=list[HistoryRow], errors=(401, 404, 422), tags=("chat",))
    async def get(self, user_id: int, query: HistoryQuery):
        return await self.ctx.chat.history(self.principal.user_id, user_id, offset=query.offset, limit=query.limit,
                                           order=query.order)


class ConversationsHandler(APIHandler):
    @endpoint("My conversations: one row per peer (peer info, last message, unread count), most recent first",
              auth=USER, query=ConversationsQuery, response=Page[Conversation], errors=(401, 422), tags=("chat",))
    async def get(self, query: ConversationsQuery):
        return await self.ctx.chat.conversation_list(self.principal.user_id, query.limit, query.cursor, archived=query.archived)


class ReadHandler(APIHandler):
    @endpoint("Mark a peer's messages to me as read up to an id (same as the socket's read frame)", auth=USER,
              body=ReadBody, response=ReadReceipt, errors=(400, 401, 404, 422), tags=("chat",))
    async def post(self, body: ReadBody):
        return await self.ctx.chat.mark_read(self.principal.user_id, body.other_user_id, body.up_to)


class ThreadHandler(APIHandler):
    @endpoint("A listing-scoped thread: messages about one property between its agent and another user", auth=USER,
              query=HistoryQuery, response=list[HistoryRow], errors=(401, 403, 404, 422), tags=("chat",))
    async def get(self, property_id: int, other_user_id: int, query: HistoryQuery):
        return await self.ctx.chat.thread(self.principal.user_id, property_id, other_user_id, offset=query.offset,
                                          limit=query.limit, order=query.order)


default_handlers = [
    route("/api/v1/chat/ws", ChatSocket),
    route("/api/v1/chat/chat-history/{other_user_id:int}", ChatHistoryHandler),
    route("/api/v1/chats", ChatsHandler),
    route("/api/v1/chats/{user_id:int}", ChatsWithUserHandler),
    route("/api/v1/chat/conversations", ConversationsHandler),
    route("/api/v1/chat/read", ReadHandler),
    route("/api/v1/chat/threads/{property_id:int}/{other_user_id:int}", ThreadHandler),
]
