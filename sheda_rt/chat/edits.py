"""What happens to a message after it is sent (issue 15 §2): edit, delete (for everyone or
for me), reactions, and delivered receipts; and how a reply names the message it answers.

Rules:
- Only the sender edits, within CHAT_EDIT_WINDOW_SECONDS of sending; only the sender deletes
  for everyone (any time); either participant deletes for themselves; either reacts, with one
  of REACTIONS, each emoji toggled per user per message. A message someone is not a
  participant of is `message_not_found` (404), exactly like an id that does not exist: the
  answer never tells a stranger that the id is taken.
- A refusal changes nothing: every rule is checked on the stored message before any write.
- While either participant blocks the other, neither edits nor reacts (403 `blocked`, the send path's words):
  both reach the other person, live and in their history, as a message would. Deleting stays open (for
  me, and for everyone by the sender: it takes words away from the person who blocked).
- Every change is a durable event of both participants' streams (`message.updated`,
  `message.deleted`, `message.reaction`; `delivered` to the sender), stored and delivered
  through the chat's group commit (`submit_event`), so it has a seq and comes back in a
  `sync after_seq` replay after a disconnect. Delete for me is an event of my stream only.
- A tombstone (deleted for everyone) keeps id, sender, receiver, times and `deleted: true`;
  its text is "" and its reactions and attachments are gone from the document.
- Delete for me adds my id to the message's `hidden_for` (set only then, so sending costs
  nothing more); history, sync and the conversation list leave such messages out for me.

Every query is {conv, _id} (both keys of the conversation index) or the primary key alone:
the embedded database scans the collection for any other filter.
"""
from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Awaitable, Callable

from sheda_rt.chat.store import conv_key, visible_to  # noqa: F401  (visible_to: importable from here too)
from sheda_rt.clock import format_ts
from sheda_rt.errors import BadRequest, Conflict, Forbidden, NotFound, ValidationFailed
from sheda_rt.wire import encode

if TYPE_CHECKING:
    from sheda_rt.blocks.service import BlockService
    from sheda_rt.chat.store import ConversationStore, MessageStore
    from sheda_rt.clock import Clock

#: The reactions a message can get (a fixed set: clients draw them, counts stay small).
REACTIONS = ("👍", "❤️", "😂", "😮", "😢", "🙏")
PREVIEW_CHARS = 100


class InvalidInput(ValidationFailed):
    """A 422 with its own code (invalid_reply, invalid_emoji) and the field it is about."""

    def __init__(self, field: str, message: str, code: str):
        super().__init__([{"field": field, "message": message}], detail=f"{field}: {message}")
        self.code = code


def preview_of(original: dict) -> dict:
    """The short quote a reply shows of the message it answers (the tombstone when deleted)."""
    if original.get("deleted"):
        return {"id": original["_id"], "sender_id": original["sender_id"], "deleted": True}
    text = original.get("message") or ""
    return {"id": original["_id"], "sender_id": original["sender_id"],
            "message": text if len(text) <= PREVIEW_CHARS else text[:PREVIEW_CHARS - 1] + "…"}


async def attach_reply(messages: MessageStore, doc: dict, reply_to: int) -> None:
    """A message being sent answers `reply_to`: it must be in the same conversation (one look-up
    by (conv, _id)). Sets reply_to and the preview delivered with it; raises invalid_reply."""
    original = await messages.get(doc["conv"], reply_to)
    if original is None or doc["sender_id"] in (original.get("hidden_for") or ()):
        raise InvalidInput("reply_to", f"message {reply_to} is not in this conversation", "invalid_reply")
    doc["reply_to"] = reply_to
    doc["reply_preview"] = preview_of(original)


async def refresh_previews(messages: MessageStore, docs: list[dict]) -> None:
    """Replies read back (history, sync) quote the original as it is now (edited, deleted):
    one query per conversation of the page that has replies, none when there are none."""
    wanted: dict[str, set[int]] = {}
    for d in docs:
        if d.get("reply_to") is not None:
            wanted.setdefault(d["conv"], set()).add(d["reply_to"])
    for conv, ids in wanted.items():
        found = {o["_id"]: o for o in await messages.get_many(conv, sorted(ids))}
        for d in docs:
            if d.get("conv") == conv and d.get("reply_to") in found:
                d["reply_preview"] = preview_of(found[d["reply_to"]])


class MessageActions:
    """Edit, delete, react, delivered receipts. Named dependencies: the chat's stores,
    `submit_event` (the chat group commit's: stores and delivers a durable event in order),
    the clock and the edit window."""

    #: [attachments] Deletes a tombstoned message's files (AttachmentService.discard), set by the context.
    discard_attachments: Callable[[list[int]], Awaitable[None]] | None = None

    def __init__(self, *, messages: MessageStore, conversations: ConversationStore,
                 submit_event: Callable[..., Awaitable[tuple[dict, bool]]], clock: Clock, edit_window_seconds: float,
                 blocks: BlockService | None = None):
        self.messages = messages
        self.blocks = blocks
        self.conversations = conversations
        self.submit_event = submit_event
        self.clock = clock
        self.edit_window = timedelta(seconds=edit_window_seconds)

    async def _find(self, me: int, message_id: int) -> dict:
        """The message, if me is one of its two participants (404 otherwise: a stranger
        learns nothing), and not deleted for me."""
        doc = await self.messages.by_id(message_id)
        if doc is None or me not in (doc["sender_id"], doc["receiver_id"]) or me in (doc.get("hidden_for") or ()):
            raise NotFound(f"No message with id {message_id}", "message_not_found")
        return doc

    async def _publish(self, users: list[int], frame: dict, origin: str | None) -> dict:
        stored, _ = await self.submit_event(list(dict.fromkeys(users)), encode(frame), origin=origin)
        return {**frame, "seq": stored["_id"]}

    @staticmethod
    def _pair(doc: dict) -> list[int]:
        return [doc["sender_id"], doc["receiver_id"]]

    async def _not_blocked(self, me: int, doc: dict) -> None:
        """403 `blocked` when either participant blocks the other (answered from the blocks' cache)."""
        if self.blocks is not None:
            other = doc["receiver_id"] if doc["sender_id"] == me else doc["sender_id"]
            await self.blocks.check(me, other)

    async def edit(self, me: int, message_id: int, text: str, origin: str | None = None) -> dict:
        """The sender replaces the text within the edit window; returns message.updated."""
        if not text.strip():
            raise ValidationFailed.single("message", "must not be empty")
        doc = await self._find(me, message_id)
        if doc["sender_id"] != me:
            raise Forbidden("Only the sender can edit a message", "not_sender")
        if doc.get("deleted"):
            raise NotFound(f"Message {message_id} was deleted", "message_not_found")
        if self.clock.now() - doc["created_at"] > self.edit_window:
            raise Conflict(f"A message can be edited for {int(self.edit_window.total_seconds())} seconds after it is sent",
                           "edit_window_closed")
        await self._not_blocked(me, doc)
        now = self.clock.now()
        # A delete for everyone that lands first wins: the text of a tombstone stays "".
        await self.messages.revise(doc["conv"], message_id, [{"$set": {
            "message": {"$cond": [{"$eq": ["$deleted", True]}, "", text]}, "edited_at": now}}])
        frame = {"type": "message.updated", "id": message_id, "sender_id": doc["sender_id"], "receiver_id": doc["receiver_id"],
                 "message": text, "edited_at": format_ts(now)}
        return await self._publish(self._pair(doc), frame, origin)

    async def delete(self, me: int, message_id: int, scope: str, origin: str | None = None) -> dict:
        """scope "everyone": the sender makes it a tombstone for both; "me": hidden from my
        history, sync and list only. Returns message.deleted."""
        doc = await self._find(me, message_id)
        now = self.clock.now()
        frame = {"type": "message.deleted", "id": message_id, "sender_id": doc["sender_id"], "receiver_id": doc["receiver_id"],
                 "for": scope, "deleted_at": format_ts(now)}
        if scope == "me":
            await self.messages.revise(doc["conv"], message_id, {"$addToSet": {"hidden_for": me}})
            return await self._publish([me], frame, origin)
        if doc["sender_id"] != me:
            raise Forbidden("Only the sender can delete a message for everyone", "not_sender")
        if doc.get("deleted"):
            raise NotFound(f"Message {message_id} was already deleted", "message_not_found")
        return await self._tombstone(doc, frame, now, origin)

    async def _tombstone(self, doc: dict, frame: dict, now, origin: str | None = None) -> dict:
        # The text, reactions, reply quote and attachments leave storage; the tombstone keeps
        # who, when, and its place in the conversation.
        await self.messages.revise(doc["conv"], doc["_id"], {
            "$set": {"message": "", "deleted": True, "deleted_at": now},
            "$unset": {"reactions": "", "reply_preview": "", "attachments": "", "attachment_ids": "", "edited_at": ""}})
        if doc.get("attachments") and self.discard_attachments is not None:  # [attachments] their files leave storage too
            await self.discard_attachments([a["id"] for a in doc["attachments"]])
        return await self._publish(self._pair(doc), frame, origin)

    async def remove(self, message_id: int) -> bool:
        """Delete for everyone on a moderator's decision (sheda_rt/moderation/service.py): the
        sender's tombstone and event, whoever asks and whoever hid it for themselves. False when
        there is no such message; a tombstone already is left as it is."""
        doc = await self.messages.by_id(message_id)
        if doc is None:
            return False
        if not doc.get("deleted"):
            now = self.clock.now()
            frame = {"type": "message.deleted", "id": message_id, "sender_id": doc["sender_id"],
                     "receiver_id": doc["receiver_id"], "for": "everyone", "deleted_at": format_ts(now)}
            await self._tombstone(doc, frame, now)
        return True

    async def react(self, me: int, message_id: int, emoji: str, origin: str | None = None) -> dict:
        """Toggle my `emoji` on the message; returns message.reaction with the new counts."""
        if emoji not in REACTIONS:
            raise InvalidInput("emoji", f"must be one of {' '.join(REACTIONS)}", "invalid_emoji")
        doc = await self._find(me, message_id)
        if doc.get("deleted"):
            raise NotFound(f"Message {message_id} was deleted", "message_not_found")
        await self._not_blocked(me, doc)
        on = me not in ((doc.get("reactions") or {}).get(emoji) or ())
        field = f"reactions.{emoji}"
        await self.messages.revise(doc["conv"], message_id, {"$addToSet": {field: me}} if on else {"$pull": {field: me}})
        after = await self.messages.get(doc["conv"], message_id) or doc
        frame = {"type": "message.reaction", "id": message_id, "sender_id": doc["sender_id"], "receiver_id": doc["receiver_id"],
                 "user_id": me, "emoji": emoji, "on": on, "counts": reaction_counts(after)}
        return await self._publish(self._pair(doc), frame, origin)

    async def received(self, me: int, other: int, up_to: int, origin: str | None = None) -> dict:
        """I have received other's messages to me up to `up_to` (capped at their newest): raise
        my delivered watermark and tell other's sockets. Returns the delivered event;
        delivered_at is None (nothing published) when nothing new was received."""
        if other == me:
            raise BadRequest("There is no conversation with yourself", "self_message")
        conv = conv_key(me, other)
        event = {"type": "delivered", "reader_id": me, "other_user_id": other, "up_to": 0, "delivered_at": None}
        pair = await self.conversations.get(conv)
        if pair is None:
            return event
        previous = int((pair.get("delivered_upto") or {}).get(str(me), 0))
        newest = await self.messages.last_id_from(conv, other, after=previous)
        if newest is None or min(up_to, newest) <= previous:
            return {**event, "up_to": previous}
        up_to = min(up_to, newest)
        previous = await self.conversations.advance(conv, "delivered_upto", me, up_to, previous)
        if previous is None or up_to <= previous:
            return {**event, "up_to": previous or 0}
        event = {**event, "up_to": up_to, "delivered_at": format_ts(self.clock.now())}
        return await self._publish([other], event, origin)


def reaction_counts(doc: dict) -> dict[str, int]:
    return {emoji: len(users) for emoji, users in (doc.get("reactions") or {}).items() if users}


def revision_fields(doc: dict, viewer: int | None = None) -> dict:
    """What a message shows of its later life (edits, deletion, replies, reactions), for the
    frames and rows built in frames.py: absent fields are simply not sent."""
    out: dict = {}
    if doc.get("reply_to") is not None:
        out["reply_to"] = doc["reply_to"]
        if doc.get("reply_preview") is not None and not doc.get("deleted"):
            out["reply_preview"] = doc["reply_preview"]
    if doc.get("deleted"):
        out["deleted"] = True
        return out
    if doc.get("edited_at") is not None:
        out["edited_at"] = format_ts(doc["edited_at"])
    counts = reaction_counts(doc)
    if counts:
        out["reactions"] = counts
        if viewer is not None:
            out["my_reactions"] = [e for e, users in doc["reactions"].items() if viewer in users]
    return out
