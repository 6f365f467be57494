"""One resumable event stream per user: every durable event has a position (`seq`).

The rule clients rely on
------------------------
- Durable frames (chat messages, read receipts, notifications, `appointment.*`,
  `contract.*`, `builder.*`, `project.*`, and whatever later features publish through
  `EventStream.publish`) carry an integer `seq`. Ephemeral frames (typing, presence,
  pong, announcements, channel events) carry none and are never replayed.
- Positions come from one global sequence: a message's `seq` is its id, and other
  events take positions from the same counter. So a user's `seq` values increase
  but have gaps (other users' events sit in between); a gap is never a lost event.
- On every socket of a user, durable frames arrive in increasing `seq` order, on any
  number of processes: events are sequenced by the chat group commit (they are
  stored in the same batches as messages, with positions reserved in the same
  step, during the process's commit turn when there are several processes) and
  published in position order after they are stored. So the highest `seq` a client
  has received is a complete checkpoint: `{"type": "sync", "after_seq": S}` (or
  `GET /api/v1/events?after_seq=S`, or SSE's Last-Event-ID) returns everything after
  it, in order, in pages.
- Nothing is delivered before it is stored, so nothing acked or seen live can be
  missing from a replay, whatever crashes afterwards.
- `sync.reset` (`StreamReset`): S is older than what is retained (events other than
  messages are kept EVENT_RETENTION_DAYS; messages forever), S is beyond anything
  this data set ever handed out (the data directory was restored from a backup, or
  this is another deployment), or the client names an epoch that is not this data
  set's. The client then refetches state over REST and continues from the reset's
  `last_seq`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Awaitable, Callable

from sheda_rt.jobs.periodic import PeriodicTrigger
from sheda_rt.wire import encode


def encode_event(frame: dict) -> str:
    """A durable frame as wire text (without its seq): the encoding live frames always had."""
    return encode(frame)


def with_seq(text: str, seq: int) -> str:
    """Splice `"seq": N` into an encoded frame (a JSON object): no second encoding."""
    return f'{text[:-1]},"seq":{seq}}}' if len(text) > 2 else f'{{"seq":{seq}}}'


class StreamReset(Exception):
    """The client's position cannot be resumed: refetch over REST, then go on from last_seq."""

    def __init__(self, epoch: str, reason: str, last_seq: int):
        super().__init__(reason)
        self.epoch = epoch
        self.reason = reason
        self.last_seq = last_seq

    def frame(self) -> dict:
        return {"type": "sync.reset", "epoch": self.epoch, "reason": self.reason, "last_seq": self.last_seq}


@dataclass
class Replay:
    frames: list[dict] = field(default_factory=list)
    last_seq: int = 0
    more: bool = False
    epoch: str = ""


class EventStream:
    """Publishes durable events (stored, then delivered, in stream order) and replays them.

    Dependencies by name: `writer` (the chat group commit, which sequences and stores),
    `events` (EventStore), `message_replay` (the chat's message replay: frames of the
    user's messages after an id), `head` (the highest position handed out so far)."""

    def __init__(self, *, writer, events, message_replay: Callable[[int, int, int], Awaitable[tuple[list[dict], bool]]],
                 head: Callable[[], Awaitable[int]]):
        self.writer = writer
        self.events = events
        self.message_replay = message_replay
        self.head = head
        self.epoch = ""

    async def start(self) -> None:
        self.epoch = (await self.events.load_meta())["epoch"]

    async def publish(self, user_ids, frame: dict, *, origin: str | None = None, note: int | None = None) -> int:
        """Store `frame` as one event for `user_ids` and deliver it to their sockets (not to
        socket `origin`), in stream order; returns its seq. Raises when it cannot be
        stored (then nobody got it). `note`: the id of the notification it is the frame of, when that
        must be on the stream once whoever publishes it (a second publish raises, nothing delivered)."""
        users = list(dict.fromkeys(user_ids))
        if note is None:
            doc, _ = await self.writer.submit_event(users, encode_event(frame), origin=origin)
        else:
            doc, _ = await self.writer.submit_event(users, encode_event(frame), origin=origin, note=note)
        return doc["_id"]

    async def position(self) -> int | None:
        """Where a client that has just registered stands: every event at or below it was delivered
        before, every one above it reaches the client live or in a replay after it (the replay's
        own stop, `settled`). None with several processes: there the newest id handed out may
        belong to another process's batch that is not stored yet, so no position is vouched for."""
        turns = getattr(self.writer, "turns", None)
        if turns is not None and turns.shared:
            return None
        return await self.writer.settled()

    async def replay(self, user_id: int, after_seq: int, limit: int, epoch: str | None = None) -> Replay:
        """The user's durable events after position `after_seq`, oldest first, at most `limit`."""
        meta = await self.events.load_meta()
        self.epoch = meta["epoch"]
        head = await self.head()
        if epoch is not None and epoch != self.epoch:
            raise StreamReset(self.epoch, "epoch_changed", head)
        if after_seq > head:
            raise StreamReset(self.epoch, "unknown_position", head)
        if after_seq < int(meta.get("pruned_below") or 0) - 1:
            raise StreamReset(self.epoch, "expired", head)
        messages, messages_more = await self.message_replay(user_id, after_seq, limit)
        events = await self.events.after(user_id, after_seq, limit + 1)
        settled = await self.writer.settled()  # (the messages' replay stops there too)
        events = [e for e in events if e["_id"] <= settled]
        merged: list[tuple[int, dict]] = [(f["seq"], f) for f in messages]
        merged += [(e["_id"], json.loads(with_seq(e["text"], e["_id"]))) for e in events]
        merged.sort(key=lambda item: item[0])
        page = [f for _, f in merged[:limit]]
        more = len(merged) > limit or messages_more or len(events) > limit
        return Replay(page, page[-1]["seq"] if page else after_seq, more, self.epoch)


class EventRetentionJob(PeriodicTrigger):
    """Deletes events (not messages) older than EVENT_RETENTION_DAYS, every
    EVENT_PRUNE_INTERVAL_MINUTES; positions before the cut then answer sync.reset."""

    name = "event_retention"

    def __init__(self, events, clock, retention_days: float, interval_minutes: float):
        super().__init__(interval_minutes * 60_000)
        self.events = events
        self.clock = clock
        self.retention_days = retention_days

    async def run(self) -> int:
        from datetime import timedelta

        return await self.events.prune_before(self.clock.now() - timedelta(days=self.retention_days))
