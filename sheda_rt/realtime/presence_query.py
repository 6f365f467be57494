"""Presence you can ask for: `GET /api/v1/presence?user_ids=1,2,3`.

A socket learns presence as it changes (`{"type": "presence", ...}` frames to the
people a user shares a conversation with); a screen that opens later asks here for
the current state of the people it shows.

Who may be asked about
----------------------
Only the people the caller shares a conversation with, the same people who get the
caller-side `presence` frames. Any other id is left out of the answer, exactly as
an id that does not exist is: the answer never tells a stranger whether someone
exists, is online, or when they were last seen. The caller is left out too (one
does not share a conversation with oneself; a client knows its own state).

Cost
----
At most MAX_IDS ids per request. Membership is one query on `conversations` by
`_id` (a conversation's id is the pair's key, so "does the caller share one with
each of these" is one `_id $in` look-up, served by the primary key on any engine,
not one query per id); `last_seen` is one `_id $in` read of `users`. `online` is the
hub's global presence: this process's sockets first, then the broker's (Redis's,
with several processes) for the peers not connected here, one look-up each; the
list is bounded, and only peers reach that step.
"""
from __future__ import annotations

from typing import Annotated, Any, Optional

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from sheda_rt.clock import format_ts
from sheda_rt.database.ids import MAX_ID
from sheda_rt.responses import ResponseModel, Timestamp

#: Ids one request may ask about; more is a 422 (a screen shows far fewer people).
MAX_IDS = 100


def _join_repeats(value: Any) -> Any:
    """`?user_ids=1&user_ids=2` arrives as a list: the same as `?user_ids=1,2`."""
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return value


class PresenceAsk(BaseModel):
    """The query of GET /api/v1/presence."""

    model_config = ConfigDict(extra="forbid")

    user_ids: Annotated[str, BeforeValidator(_join_repeats)] = Field(
        max_length=MAX_IDS * 22, examples=["12,40,41"], json_schema_extra={"pattern": r"^ *[0-9]{1,18} *(, *[0-9]{1,18} *)*$"},
        description=f"Comma-separated user ids, 1 to {MAX_IDS} of them (repeats are answered once). Ids of people you "
                    "share no conversation with, your own and unknown ones are left out of the answer.")

    @field_validator("user_ids")
    @classmethod
    def _ids(cls, value: str) -> str:
        parts = [p.strip(" ") for p in value.split(",")]
        if not parts or parts == [""]:
            raise ValueError("at least one user id")
        if len(parts) > MAX_IDS:
            raise ValueError(f"at most {MAX_IDS} user ids")
        for part in parts:
            if not part.isascii() or not part.isdigit() or not 1 <= int(part) <= MAX_ID:
                raise ValueError(f"{part[:30]!r} is not a user id (an integer from 1 to {MAX_ID})")
        return value

    @property
    def ids(self) -> list[int]:
        return list(dict.fromkeys(int(p.strip(" ")) for p in self.user_ids.split(",")))


class PresenceItem(ResponseModel):
    user_id: int
    online: bool = Field(description="Has an open socket on any server process now")
    last_seen: Optional[Timestamp] = Field(description="When their last socket closed (null: never recorded)")


class PresenceList(ResponseModel):
    """One item per asked id the caller shares a conversation with, in the order asked."""

    items: list[PresenceItem]


class PresenceQuery:
    """Answers presence questions; the rules above. Depends on the hub (who is online),
    the users store (last_seen) and the conversations store (who shares one)."""

    def __init__(self, hub, users, conversations, blocks=None):
        self.hub = hub
        self.users = users
        self.conversations = conversations
        self.blocks = blocks  # [blocks] presence is not told across a block, asked for or announced

    async def of(self, caller: int, user_ids: list[int]) -> dict:
        asked = [u for u in dict.fromkeys(user_ids) if u != caller][:MAX_IDS]
        if not asked:
            return {"items": []}
        peers = await self.conversations.peers_among(caller, asked)
        if self.blocks is not None:  # the caller's relations: cached, one read at most
            peers = peers - (await self.blocks.relations_of([caller]))[caller]
        shown = [u for u in asked if u in peers]
        if not shown:
            return {"items": []}
        docs = await self.users.get_many(shown)
        items = []
        for user_id in shown:
            doc = docs.get(user_id)
            if doc is None:  # a conversation with a user whose record is gone: nothing to show
                continue
            items.append({"user_id": user_id, "online": await self.hub.online_anywhere(user_id),
                          "last_seen": format_ts(doc.get("last_seen"))})
        return {"items": items}
