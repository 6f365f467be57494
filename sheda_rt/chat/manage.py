"""Conversations a user can manage (issue 15 §3): mute (until a time, or forever) and archive,
per user per conversation.

Both are fields of the pair's document in `conversations` (ConversationStore), keyed by the
user, written only when the user changes them; sending a message writes nothing more:
- `muted_until.<user>`: a date (ConversationStore.FOREVER for "forever"). A muted conversation
  still counts in unread totals; the push dispatcher asks `ConversationStore.muted` before it
  sends (sheda_rt/push/dispatch.py), so a mute set or lifted during the grace period counts.
- `archived_upto.<user>`: the id of the newest message the user saw in the pair when they archived
  it (`MessageStore.last_seen_by`: not one they deleted for themselves). The pair is archived for
  that user while that "last message" is <= that value, so a newer message (either way) brings it
  back by itself, with no write per message. The conversation list (its `?archived=true|false`
  filter and each row's `archived`) and GET/PATCH .../settings judge it by that one function.
Each change is also a durable event of my own stream, `conversation.settings` (the row below plus
its seq), so my other devices learn of it live or in a `sync after_seq` replay. A conversation a new
message un-archives sends no event: the message itself is the news.
"""
from __future__ import annotations

import logging
from datetime import datetime
from typing import TYPE_CHECKING, Awaitable, Callable, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from sheda_rt.chat.store import ConversationStore, conv_key
from sheda_rt.client_input import iso_offset
from sheda_rt.clock import format_ts, to_utc
from sheda_rt.errors import NotFound
from sheda_rt.responses import ResponseModel, Timestamp

if TYPE_CHECKING:
    from sheda_rt.chat.store import MessageStore
    from sheda_rt.clock import Clock

log = logging.getLogger("sheda.chat.manage")

#: Dates from this on are refused (ask for "forever" instead): far enough, and clear of the
#: calendar's end, where converting an offset to UTC overflows.
LATEST_MUTE = datetime(9000, 1, 1)


class ConversationSettingsIn(BaseModel):
    """What to change; a field left out stays as it is."""

    model_config = ConfigDict(extra="forbid")

    muted_until: Union[datetime, Literal["forever"], None] = Field(None, description=(
        "Mute pushes of this conversation until this time (ISO 8601, any offset), \"forever\", or null to unmute. "
        "A time already past unmutes. Muted conversations still count in unread totals"))
    archived: Optional[bool] = Field(None, description=(
        "true: archive (hidden from the default conversation list until a newer message arrives); false: unarchive"))

    @field_validator("muted_until", mode="before")
    @classmethod
    def _iso_text(cls, v):
        if v is not None and not isinstance(v, str):  # no Unix timestamps: one unambiguous form
            raise ValueError('must be an ISO 8601 date-time string, "forever" or null')
        return iso_offset(v) if isinstance(v, str) else v  # "+01" is "+01:00"

    @field_validator("muted_until")
    @classmethod
    def _utc(cls, v):
        if isinstance(v, datetime):
            try:
                v = to_utc(v)
            except (OverflowError, ValueError):
                raise ValueError("is out of range") from None
            if v.replace(tzinfo=None) >= LATEST_MUTE:
                raise ValueError('is too far ahead: send "forever"')
            v = v.replace(microsecond=v.microsecond // 1000 * 1000)  # what the database keeps
        return v

    @field_validator("archived", mode="before")
    @classmethod
    def _strict_bool(cls, v):
        if v is not None and not isinstance(v, bool):
            raise ValueError("must be true or false")
        return v

    @model_validator(mode="after")
    def _something(self):
        if not self.model_fields_set:
            raise ValueError("send muted_until, archived or both")
        if "archived" in self.model_fields_set and self.archived is None:
            raise ValueError("archived must be true or false")
        return self


MutedUntil = Optional[Union[Literal["forever"], Timestamp]]


class ConversationSettings(ResponseModel):
    """My settings of one conversation."""

    user_id: int = Field(description="The other person")
    muted_until: MutedUntil = Field(description='When the mute ends, "forever", or null when not muted')
    archived: bool
    seq: Optional[int] = Field(None, description=(
        "After a change: its position in my event stream (the conversation.settings event my other sockets get)"))


def user_state(doc: dict | None, user_id: int, last_id: int | None, now: datetime) -> dict:
    """`muted_until` and `archived` of a conversation row, as user_id sees them."""
    until = ConversationStore.muted_until(doc, user_id, now)
    shown = "forever" if until is not None and until >= ConversationStore.FOREVER else format_ts(until)
    return {"muted_until": shown, "archived": ConversationStore.archived(doc, user_id, last_id)}


class ConversationManager:
    """Reads and changes one user's mute and archive state of a conversation. Named
    dependencies: the chat's two stores, the clock and the event stream's publish
    (`EventStream.publish(user_ids, frame) -> seq`)."""

    def __init__(self, *, conversations: ConversationStore, messages: MessageStore, clock: Clock,
                 publish: Callable[[list[int], dict], Awaitable[int]]):
        self.conversations = conversations
        self.messages = messages
        self.clock = clock
        self.publish = publish

    async def _pair(self, me: int, peer: int) -> tuple[str, dict]:
        conv = conv_key(me, peer)
        doc = await self.conversations.get(conv) if peer != me else None
        if doc is None:  # also a pair that never talked: there is nothing to mute or archive
            raise NotFound(f"You have no conversation with user {peer}", "conversation_not_found")
        return conv, doc

    async def _row(self, me: int, peer: int, conv: str, doc: dict) -> dict:
        last = await self.messages.last_seen_by(conv, me)  # as the conversation list judges it
        return {"user_id": peer, **user_state(doc, me, last["_id"] if last else None, self.clock.now())}

    async def get(self, me: int, peer: int) -> dict:
        conv, doc = await self._pair(me, peer)
        return await self._row(me, peer, conv, doc)

    async def update(self, me: int, peer: int, change: ConversationSettingsIn) -> dict:
        conv, _ = await self._pair(me, peer)
        values: dict = {}
        if "muted_until" in change.model_fields_set:
            until = change.muted_until
            if until == "forever":
                values["muted_until"] = ConversationStore.FOREVER
            else:
                values["muted_until"] = until if until is not None and until > self.clock.now() else None
        if "archived" in change.model_fields_set:
            if change.archived:
                # What the user has in front of them (the newest message they still see, as the list
                # shows it): anything stored after this read is newer and brings the conversation back.
                last = await self.messages.last_seen_by(conv, me)
                values["archived_upto"] = last["_id"] if last else 0
            else:
                values["archived_upto"] = None
        if not await self.conversations.set_user_state(conv, me, values):
            raise NotFound(f"You have no conversation with user {peer}", "conversation_not_found")
        row = await self._row(me, peer, conv, await self.conversations.get(conv))
        try:  # the change is stored: if the event cannot be, my other devices learn it on their next list
            row["seq"] = await self.publish([me], {"type": "conversation.settings", **row})
        except Exception:
            log.exception("conversation.settings event not stored")
        return row


__all__ = ["ConversationManager", "ConversationSettings", "ConversationSettingsIn", "MutedUntil", "user_state"]
