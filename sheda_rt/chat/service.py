"""Chat rules, for the WebSocket and REST paths alike. Knows nothing about Tornado.

Hot path (one message): validate (receiver and listing checks from small TTL
caches, no database round trip when warm) → GroupCommit (one insert_many per
batch) → after the batch is stored, each message is JSON-encoded once and
handed to the hub for the receiver's sockets and the sender's other sockets →
the caller's future resolves (the ack).

Why the user caches are correct enough to refuse inactive receivers: a
deactivation (or deletion) reaches every process as a session-revocation control
message (`hub.revoke_sessions(..., jti=None)`), which drops the user's entries at
once. So "this receiver exists and is active" is kept 60 s (a send checks it
without a database round trip; at 2 s, re-reading 200 busy receivers cost the
server ~5 % of its CPU), while the profile fields shown in frames and lists
(username, avatar, last_seen) are kept 2 s.
"""
from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import TYPE_CHECKING

from sheda_rt.chat.batcher import GroupCommit
from sheda_rt.chat.edits import attach_reply, refresh_previews, visible_to
from sheda_rt.chat.frames import MAX_MESSAGE_CHARS, ack_frame, history_row, message_frame, sender_info
from sheda_rt.chat.store import ConversationStore, MessageStore, conv_key
from sheda_rt.chat.manage import user_state
from sheda_rt.clock import format_ts, to_utc
from sheda_rt.errors import ApiError, BadRequest, Forbidden, NotFound, RateLimited, ValidationFailed
from sheda_rt.metrics import MESSAGES_DELIVERED  # noqa: F401  (counted by the hub)
from sheda_rt.pagination import decode_cursor, encode_cursor
from sheda_rt.wire import encode  # the one wire encoder (sheda_rt.chat.service.encode stays importable)
from sheda_rt.realtime.stream import with_seq

if TYPE_CHECKING:  # types only: the context wires these in (runtime imports here would make cycles)
    from pymongo.asynchronous.database import AsyncDatabase

    from config.settings import Settings
    from sheda_rt.blocks.service import BlockService
    from sheda_rt.accounts.users_store import UserStore
    from sheda_rt.chat.attachments import AttachmentService
    from sheda_rt.clock import Clock
    from sheda_rt.database.ids import IdAllocator
    from sheda_rt.limits import MemoryLimits
    from sheda_rt.push.service import PushService
    from sheda_rt.realtime.events_store import EventStore
    from sheda_rt.realtime.hub import Hub
    from sheda_rt.realtime.turns import Turns
    from sheda_rt.redis_limits import RedisLimits

log = logging.getLogger("sheda.chat")


class TTLCache:
    """A small dict with per-entry expiry (monotonic clock: it is about freshness, not business time)."""

    def __init__(self, ttl: float, max_entries: int = 100_000):
        self.ttl = ttl
        self.max_entries = max_entries
        self._data: dict = {}

    def get(self, key):
        hit = self._data.get(key)
        if hit is None:
            return None
        if hit[0] < time.monotonic():
            del self._data[key]
            return None
        return hit[1]

    def put(self, key, value) -> None:
        if len(self._data) >= self.max_entries:
            self._data.clear()  # crude but bounded; refills from the database
        self._data[key] = (time.monotonic() + self.ttl, value)

    def forget(self, key) -> None:
        self._data.pop(key, None)


class ChatService:
    USER_TTL = 2.0
    ACTIVE_TTL = 60.0
    PROPERTY_TTL = 60.0

    def __init__(self, *, settings: Settings, clock: Clock, hub: Hub, users: UserStore, db: AsyncDatabase, ids: IdAllocator,
                 attachments: AttachmentService | None = None,
                 limits: MemoryLimits | RedisLimits, push: PushService, events: EventStore | None = None,
                 turns: Turns | None = None, blocks: BlockService | None = None):
        self.settings = settings
        self.clock = clock
        self.hub = hub
        self.users = users
        self.limits = limits  # typing notices, one per interval per pair
        self.push = push  # told of stored and read messages (a receiver without a socket gets a push later)
        self.attachments = attachments  # [attachments] claimed by a message, shown with signed links (sheda_rt/chat/attachments.py)
        self.blocks = blocks  # [blocks] no message or typing between two users while either blocks the other (cached)
        self.messages = MessageStore(db, ids)
        self.conversations = ConversationStore(db)
        self.properties = db["properties"]  # owned by the listings feature; we only read agent_id
        self._user_cache = TTLCache(self.USER_TTL)
        self._active = TTLCache(self.ACTIVE_TTL)  # receivers known to exist and be active
        self._property_cache = TTLCache(self.PROPERTY_TTL)
        self.batcher = GroupCommit(
            self.messages, self.conversations, ids, clock, events=events,
            window_ms=self.settings.chat_batch_window_ms, max_batch=self.settings.chat_batch_max,
            after_commit=self._deliver_stored, turns=turns, depth=self.settings.chat_pipeline_depth,
            idempotency_seconds=self.settings.chat_idempotency_seconds,
            idempotency_messages=self.settings.chat_idempotency_messages,
        )
        self.messages.head = self.batcher.head  # scans start at the newest id handed out, not the counter ahead of it
        self.hub.control_listeners.append(self._on_control)

    @property
    def stores(self) -> list:
        return [self.messages, self.conversations]

    def _on_control(self, message: dict) -> None:
        if message.get("op") == "revoke" and message.get("jti") is None:
            self._user_cache.forget(message.get("user_id"))
            self._active.forget(message.get("user_id"))
        elif message.get("op") == "profile":  # Hub.profile_changed: sync frames show the new avatar at once
            self._user_cache.forget(message.get("user_id"))

    # ---- lookups -------------------------------------------------------------
    async def user_brief(self, user_id: int) -> dict | None:
        """{_id, username, avatar_url, is_active, user_type} from the cache or the database."""
        hit = self._user_cache.get(user_id)
        if hit is not None:
            return hit
        doc = await self.users.get(user_id)
        if doc is None:
            return None
        brief = {"_id": doc["_id"], "username": doc.get("username"), "avatar_url": doc.get("avatar_url"),
                 "is_active": doc.get("is_active", True), "user_type": doc.get("user_type"), "full_name": doc.get("full_name"),
                 "last_seen": doc.get("last_seen")}
        self._user_cache.put(user_id, brief)
        return brief

    async def briefs(self, user_ids) -> dict[int, dict]:
        out, missing = {}, []
        for uid in set(user_ids):
            hit = self._user_cache.get(uid)
            if hit is None:
                missing.append(uid)
            else:
                out[uid] = hit
        for uid in missing:
            brief = await self.user_brief(uid)
            if brief is not None:
                out[uid] = brief
        return out

    async def _property_agent(self, property_id: int) -> int | None:
        hit = self._property_cache.get(property_id)
        if hit is not None:
            return hit
        doc = await self.properties.find_one({"_id": property_id}, projection={"agent_id": 1})
        if doc is None or doc.get("agent_id") is None:
            return None
        self._property_cache.put(property_id, doc["agent_id"])
        return doc["agent_id"]

    async def _check_peer(self, me: int, other: int, *, role: str = "receiver") -> None:
        if other == me:
            raise BadRequest("You cannot send messages to yourself", "self_message")
        if self._active.get(other):
            return
        peer = await self.user_brief(other)
        if peer is None:
            raise NotFound(f"No user with id {other}", f"{role}_not_found")
        if not peer["is_active"]:
            raise Forbidden(f"User {other} is deactivated", f"{role}_inactive")
        self._active.put(other, True)

    async def _check_listing(self, property_id: int, a: int, b: int) -> None:
        agent = await self._property_agent(property_id)
        if agent is None:
            raise NotFound(f"No listing with id {property_id}", "property_not_found")
        if agent not in (a, b):
            raise Forbidden("A message about a listing must be between the listing's agent and one other person",
                            "not_listing_participant")

    # ---- sending -------------------------------------------------------------
    async def submit(self, sender: dict, receiver_id: int, message: str, *, client_msg_id: str | None = None,
                     attachment_ids: list[int] | None = None,
                     property_id: int | None = None, origin: str | None = None, info: dict | None = None,
                     reply_to: int | None = None) -> asyncio.Future:
        """Validate and queue a message; returns the future of (stored doc, duplicate).
        Raises ApiError for a message that must not be stored."""
        if not message.strip() and not attachment_ids:
            raise ValidationFailed.single("message", "must not be empty (send text, attachments or both)")
        if len(message) > MAX_MESSAGE_CHARS:
            raise ValidationFailed.single("message", f"must be at most {MAX_MESSAGE_CHARS} characters (got {len(message)})")
        me = sender["_id"]
        try:
            await self._check_peer(me, receiver_id)
            if self.blocks is not None:
                await self.blocks.check(me, receiver_id)  # 403 `blocked`; answered from a cache (sheda_rt/blocks/service.py)
        except ApiError as refused:
            # Refusals that can follow a stored original (not an unknown receiver, not oneself).
            resend = client_msg_id is not None and refused.code in ("blocked", "receiver_inactive")
            stored = await self._stored_resend(me, receiver_id, client_msg_id) if resend else None
            if stored is None:
                raise
            answered = asyncio.get_running_loop().create_future()
            answered.set_result((stored, True))
            return answered
        if property_id is not None:
            await self._check_listing(property_id, me, receiver_id)
        doc = {"sender_id": me, "receiver_id": receiver_id, "conv": conv_key(me, receiver_id), "message": message}
        if client_msg_id is not None:
            doc["client_msg_id"] = client_msg_id
        if property_id is not None:
            doc["property_id"] = property_id
        if reply_to is not None:  # [edits] one look-up by (conv, _id); none for a plain message
            await attach_reply(self.messages, doc, reply_to)
        if attachment_ids:  # [attachments] a text-only message never comes here
            return await self._submit_with_attachments(doc, attachment_ids, origin=origin,
                                                       info=info or sender_info(sender, self.settings.public_base_url))
        return self.batcher.submit(doc, origin=origin, info=info or sender_info(sender, self.settings.public_base_url))

    async def _stored_resend(self, me: int, receiver_id: int, client_msg_id: str) -> dict | None:
        """A resend refused because the receiver blocked the sender or left after the original was
        stored: the original, when it is in the resend window (CHAT_IDEMPOTENCY_SECONDS, the newest
        CHAT_IDEMPOTENCY_MESSAGES), so the resend gets its ack as the batcher would have answered it.
        Only refused messages come here (two reads); the send path is unchanged."""
        conv = conv_key(me, receiver_id)
        keys = await self.messages.recent_keys(conv, self.settings.chat_idempotency_messages)
        hit = keys.get((me, client_msg_id))
        if hit is None:
            return None
        message_id, created_at = hit
        if created_at is not None and (self.clock.now() - to_utc(created_at)).total_seconds() > self.settings.chat_idempotency_seconds:
            return None
        return await self.messages.by_id(message_id)

    async def _submit_with_attachments(self, doc: dict, attachment_ids: list[int], *, origin: str | None, info: dict) -> asyncio.Future:
        """[attachments] Claim the files (one conditional update; 404/409 with nothing claimed) before the
        message enters its batch; once the batch answers they are marked sent, or given back if it failed."""
        if self.attachments is None:
            raise NotFound("Attachments are not available here", "attachment_not_found")
        token, doc["attachments"] = await self.attachments.claim(doc["sender_id"], attachment_ids, doc["conv"],
                                                                 doc.get("client_msg_id"))
        if token is None:  # a resend of the message that claimed them: the resend window answers it
            return self.batcher.submit(doc, origin=origin, info=info)
        try:
            future = self.batcher.submit(doc, origin=origin, info=info)
        except BaseException:
            await self.attachments.store.release(attachment_ids, token)
            raise
        self.attachments.settle(attachment_ids, token, future)
        return future

    def _present(self, docs) -> None:
        """[attachments] Give messages that carry attachments their signed links (in memory, for the
        frame or row being built; what is stored has no URLs)."""
        if self.attachments is None:
            return
        for d in docs:
            if d.get("attachments"):
                d["attachment_views"] = [self.attachments.view(a) for a in d["attachments"]]


    async def spend_message_budget(self, user_id: int) -> float:
        """One chat message sent by `user_id`, whatever the transport (socket frame, REST send, a
        lead's first message): all draw from one per-user token bucket (WS_RATE_BURST,
        WS_RATE_PER_SECOND; across processes with Redis), so switching transport buys no more.
        0.0 when allowed; otherwise seconds until a token is available (nothing was spent)."""
        s = self.settings
        return await self.limits.take_token(f"ws:{user_id}", s.ws_rate_burst, s.ws_rate_per_second)

    async def spend_action_budget(self, user_id: int) -> None:
        """An edit or a reaction sent over REST. On the socket each spends the socket's control budget
        (WS_CONTROL_BURST, WS_CONTROL_PER_SECOND); over REST they spend one per-user bucket of the same
        figures (across processes with Redis), else a client could rewrite a message or toggle a reaction
        without end, each a stored event delivered live to the other person. Beyond it 429 `rate_limited`
        with Retry-After, and nothing changes."""
        s = self.settings
        wait = await self.limits.take_token(f"chat-acts:{user_id}", s.ws_control_burst, s.ws_control_per_second)
        if wait > 0:
            raise RateLimited("Too many edits and reactions; try again after Retry-After seconds", math.ceil(wait))

    async def send(self, sender: dict, receiver_id: int, message: str, **kw) -> tuple[dict, bool]:
        """REST: spend a token of the sender's message budget (429 `rate_limited` with Retry-After,
        nothing stored, when it is empty), submit and wait for the batch."""
        wait = await self.spend_message_budget(sender["_id"])
        if wait > 0:
            raise RateLimited("Too many messages; send this one again after Retry-After seconds", math.ceil(wait))
        doc, duplicate = await (await self.submit(sender, receiver_id, message, **kw))
        self._present([doc])  # [attachments]
        return doc, duplicate

    async def _deliver_stored(self, stored) -> None:
        """After a batch is stored: each new message to the receiver's sockets and the
        sender's other sockets, and each event of the stream to its users, in id (stream)
        order, encoded once."""
        publish = self.hub.publish_encoded
        for p in stored:
            doc = p.doc
            if p.is_event:
                text = with_seq(doc["text"], doc["_id"])
                for user_id in p.users:
                    await publish(user_id, text, p.origin)
                continue
            if doc.get("attachments"):  # [attachments]
                self._present([doc])
            text = encode(message_frame(doc, p.info))
            await publish(doc["receiver_id"], text)
            await publish(doc["sender_id"], text, p.origin)
            self.push.on_message_stored(doc)  # [push] a receiver with no open socket gets a push later

    # ---- sync, history -------------------------------------------------------
    async def sync(self, user_id: int, since: int, limit: int) -> tuple[list[dict], bool]:
        """Messages to or from user_id with id > since, oldest first, at most `limit`;
        and whether more remain. One indexed query per conversation of the user."""
        convs = await self.conversations.of_user(user_id)
        newest = await self.messages.newest_id()
        visible = visible_to(user_id)  # [edits] not what I deleted for myself (filtered in the scan, so `more` stays right)
        results = await asyncio.gather(*(self.messages.after(c["_id"], since, limit + 1, newest, visible) for c in convs))
        settled = await self.batcher.settled()  # not past a batch still being stored (it comes live)
        merged = sorted((d for docs in results for d in docs if d["_id"] <= settled), key=lambda d: d["_id"])
        more = len(merged) > limit
        page = merged[:limit]
        await refresh_previews(self.messages, page)  # [edits] replies quote the original as it is now
        infos = await self.briefs(d["sender_id"] for d in page)
        self._present(page)  # [attachments]
        frames = []
        for d in page:
            info = infos.get(d["sender_id"])
            frame = message_frame(d, sender_info(info, self.settings.public_base_url) if info
                                  else {"id": d["sender_id"], "username": None, "avatar_url": None}, user_id)
            frame["read_at"] = format_ts(d.get("read_at"))
            frames.append(frame)
        return frames, more

    async def history(self, me: int, other: int, *, offset: int, limit: int, order: str, property_id: int | None = None) -> list[dict]:
        if other != me and await self.user_brief(other) is None:
            raise NotFound(f"No user with id {other}", "user_not_found")
        docs = await self.messages.conversation(conv_key(me, other), offset=offset, limit=limit, newest_first=order == "desc",
                                                property_id=property_id, viewer=me)
        return await self.present_rows(me, docs)

    async def present_rows(self, me: int, docs: list[dict]) -> list[dict]:
        """Stored messages as history shows them to `me` (history, search): reply quotes as they are
        now, attachment links, my reactions."""
        await refresh_previews(self.messages, docs)  # [edits]
        self._present(docs)  # [attachments]
        return [history_row(d, me) for d in docs]

    async def thread(self, me: int, property_id: int, other: int, **kw) -> list[dict]:
        await self._check_listing(property_id, me, other)
        return await self.history(me, other, property_id=property_id, **kw)

    async def conversation_list(self, me: int, limit: int, cursor: str | None, archived: bool = False) -> dict:
        """One row per peer, most recent first: peer info, last message, unread count, my mute
        and archive state; only archived rows or only the others. Keyset-paged on the last
        message id (opaque cursor)."""
        before = None
        if cursor:
            value = decode_cursor(cursor, 1)[0]
            if not isinstance(value, int):
                raise ValidationFailed.single("cursor", "is not a cursor this API issued")
            before = value
        convs = await self.conversations.of_user(me)
        newest = await self.messages.newest_id()
        lasts = await asyncio.gather(*(self.messages.last_seen_by(c["_id"], me, newest) for c in convs))
        rows = [(c, last) for c, last in zip(convs, lasts) if last is not None and (before is None or last["_id"] < before)
                and ConversationStore.archived(c, me, last["_id"]) == archived]  # a newer message un-archives by itself
        rows.sort(key=lambda r: r[1]["_id"], reverse=True)
        page = rows[:limit]
        peers = [next((u for u in c["users"] if u != me), me) for c, _ in page]
        infos = await self.briefs(peers)
        unread = await asyncio.gather(*(
            self.messages.count_from(c["_id"], peer, int((c.get("read_upto") or {}).get(str(me), 0)), me)
            for (c, _), peer in zip(page, peers)
        ))
        self._present(last for _, last in page)  # [attachments]
        items = []
        for (c, last), peer, n in zip(page, peers, unread):
            info = infos.get(peer) or {"_id": peer}
            items.append({
                "user_id": peer,
                "peer": {"id": peer, "username": info.get("username"), "full_name": info.get("full_name"),
                         "avatar_url": info.get("avatar_url"), "user_type": info.get("user_type"),
                         "is_active": info.get("is_active", False), "last_seen": format_ts(info.get("last_seen"))},
                "last_message": history_row(last, me),
                "unread_count": n,
                **user_state(c, me, last["_id"], self.clock.now()),  # muted_until, archived (chat/manage.py)
                "last_message_status": _status(c, last, me, peer),  # [edits]
            })
        next_cursor = encode_cursor([page[-1][1]["_id"]]) if len(rows) > limit else None
        return {"items": items, "next_cursor": next_cursor}

    # ---- receipts, typing (presence: sheda_rt/realtime/sessions.py) --------------
    async def mark_read(self, me: int, other: int, up_to: int, origin: str | None = None) -> dict:
        """Mark other's messages to me with id <= up_to as read; tell other's sockets and
        my other sockets. Returns the read event; when nothing new was read (nothing
        published) its read_at is None and up_to is the watermark as it stands."""
        if other == me:
            raise BadRequest("There is no conversation with yourself", "self_message")
        if await self.user_brief(other) is None:
            raise NotFound(f"No user with id {other}", "user_not_found")
        conv = conv_key(me, other)
        event = {"type": "read", "reader_id": me, "other_user_id": other, "up_to": 0, "read_at": None}
        pair = await self.conversations.get(conv)
        if pair is None:  # they never talked
            return event
        previous = int((pair.get("read_upto") or {}).get(str(me), 0))
        # The watermark never passes other's newest message: a read receipt "up to" an id
        # not written yet would silently mark future messages read and zero the unread count.
        # Only messages after the watermark can move it, so only those are looked at.
        newest = await self.messages.last_id_from(conv, other, after=previous)
        if newest is None:
            return {**event, "up_to": previous}
        up_to = min(up_to, newest)
        if up_to <= previous:
            return {**event, "up_to": previous}
        previous = await self.conversations.advance_read(conv, me, up_to, previous)
        if previous is None or up_to <= previous:
            return {**event, "up_to": previous or 0}
        now = self.clock.now()
        await self.messages.mark_read(conv, other, previous, up_to, now)
        event = {**event, "up_to": up_to, "read_at": format_ts(now)}
        # A durable event of both users' streams (stored, then delivered in stream order).
        # The watermark moved already: if the event cannot be stored the receipt stands and
        # the failure is only logged (the conversation list shows the new watermark).
        try:
            stored, _ = await self.batcher.submit_event([other, me], encode(event), origin=origin)
            event["seq"] = stored["_id"]
        except Exception:
            log.exception("read receipt event not stored")
        self.push.on_read(me, other)  # [push] cancels pending pushes of this conversation
        return event

    async def typing(self, me: int, other: int) -> bool:
        await self._check_peer(me, other)
        if self.blocks is not None and await self.blocks.between(me, other):
            return False  # not forwarded, and not refused either: the typer is not told a block exists
        interval = self.settings.typing_interval_seconds
        if interval > 0 and await self.limits.take_token(f"typing:{me}:{other}", 1, 1.0 / interval) > 0:
            return False
        await self.hub.publish_encoded(other, encode({"type": "typing", "user_id": me, "sender_id": me, "receiver_id": other}))
        return True

    # ---- moderation (sheda_rt/moderation/service.py) ---------------------------------
    async def message_around(self, message_id: int, around: int) -> tuple[dict | None, list[dict]]:
        """A message by id alone (the primary key) and up to `around` messages before and
        after it in its conversation, oldest first: what a report of it keeps."""
        doc = await self.messages.by_id(message_id)
        if doc is None:
            return None, []
        before = await self.messages.scan(doc["conv"], newest_first=True, need=around, upto=message_id - 1)
        after = await self.messages.scan(doc["conv"], newest_first=False, need=around, after=message_id)
        return doc, [*reversed(before), *after]

    def congested(self) -> bool:
        """Messages are queuing faster than batches store them: a socket should stop reading
        until its own message is stored (back-pressure)."""
        return self.batcher.backlog > 4 * self.batcher.max_batch

    async def drain(self) -> None:
        """Shutdown: store and answer everything accepted (the server closes the sockets after
        every feature has drained: sheda_rt/realtime/sessions.py)."""
        await self.batcher.drain()

    def forget_user(self, user_id: int) -> None:
        """A profile field shown in frames changed (last_seen when going offline)."""
        self._user_cache.forget(user_id)

    async def hide_history_from(self, user_id: int) -> None:
        """A pending registration was replaced by its email's owner (AccountService.registration_replaced):
        messages sent to the old registrant are not the new one's. Each is deleted for them, as their own
        "delete for me" would, so their conversation list, history, sync and stream replay, search, unread
        counts and digests leave it out; the sender keeps theirs. The profile cached for frames goes too."""
        self._user_cache.forget(user_id)
        newest = await self.messages.newest_id()
        for conv in await self.conversations.of_user(user_id):
            await self.messages.hide_all_for(conv["_id"], user_id, newest)


def _status(conv: dict, last: dict, me: int, peer: int) -> str | None:
    """[edits] My last message as the peer has it: read, delivered or sent (None: theirs is last)."""
    if last["sender_id"] != me:
        return None
    if last["_id"] <= int((conv.get("read_upto") or {}).get(str(peer), 0)):
        return "read"
    if last["_id"] <= int((conv.get("delivered_upto") or {}).get(str(peer), 0)):
        return "delivered"
    return "sent"


__all__ = ["ChatService", "ack_frame", "encode"]
