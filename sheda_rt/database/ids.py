"""Integer ids (the contract's ids are integers), allocated race-free.

One `counters` document per collection, bumped with `$inc` in a single atomic
`find_one_and_update`. A batch of N inserts reserves N ids in one round trip,
so the chat group commit costs one counter update per batch, not per message.

The first use of a counter is a race: concurrent `$inc` upserts of a document
that does not exist yet may collide. A real MongoDB can answer one of them
with a duplicate-key error on `_id`; the embedded database answered some of
them with no document at all (measured: 20 concurrent first upserts, 1 to 7
answered None, each of whose increments had still been applied). So the
counter is never upserted by the increment: `reserve` increments an existing
document only, and when there is none yet it creates it with an insert whose
duplicate-key error simply means another caller created it first, then
increments again. Every range handed out comes from an increment the database
confirmed with its result, so two callers always get disjoint ids; an
increment whose answer was lost leaves a gap, never a repeat.

The counter is bumped with w=1 and no journal wait, while the rows that use the
ids are written durably (see connection.py). That is safe because a journal
(and a replica set's oplog) is one sequence: waiting for a later write to be
durable makes every earlier write of the same server durable too. If the
database dies between the two, the reservation may be lost, but then so is
the unacknowledged insert that would have used it: an id is never handed out
twice for rows that survived. It saves one journal flush per batch.
"""
from __future__ import annotations

import asyncio
from collections import deque

from pymongo import ReturnDocument, WriteConcern
from pymongo.errors import DuplicateKeyError


# The largest id a request may name: 18 digits, as the path patterns allow. Larger
# integers would not fit the database's int64 and must be a 422, never a 500.
MAX_ID = 10**18 - 1

# Tries of "increment, else create" before giving up: one create is enough unless
# the database keeps answering an increment of an existing counter with nothing.
_ATTEMPTS = 8


class IdAllocationError(RuntimeError):
    """The database never confirmed an increment of the counter (not a race we know)."""


class IdAllocator:
    def __init__(self, db):
        self._counters = db.get_collection("counters", write_concern=WriteConcern(w=1))
        # For ranges handed out later (ReservedIds): journaled whatever the URI asks (its `w` kept, but
        # at least 1: w=0 cannot wait for a journal), since a range must outlive a restart of the
        # database that the process does not see.
        w = db.write_concern.document.get("w", "majority")
        self._durable_counters = db.get_collection("counters", write_concern=WriteConcern(w=w if w != 0 else 1, j=True))

    async def reserve(self, name: str, count: int = 1, *, durable: bool = False) -> range:
        """Reserve `count` consecutive ids for `name`; returns them as a range. `durable`:
        answered only once the increment is journaled (see ReservedIds)."""
        if count < 1:
            return range(0)
        counters = self._durable_counters if durable else self._counters
        for _ in range(_ATTEMPTS):
            doc = await counters.find_one_and_update(
                {"_id": name}, {"$inc": {"seq": count}}, return_document=ReturnDocument.AFTER
            )
            if doc is not None:
                end = int(doc["seq"])
                return range(end - count + 1, end + 1)
            try:
                await counters.insert_one({"_id": name, "seq": 0})
            except DuplicateKeyError:
                pass  # another caller created it first: increment theirs
        raise IdAllocationError(f"the database did not confirm an increment of counter {name!r}")

    async def current(self, name: str) -> int:
        """The highest id reserved so far for `name` (0 before the first)."""
        doc = await self._counters.find_one({"_id": name})
        return int(doc["seq"]) if doc else 0

    async def next(self, name: str) -> int:
        return (await self.reserve(name, 1))[0]


class ReservedIds:
    """Ids of one counter handed out from ranges reserved ahead, for a process that is
    the counter's only user while it runs (the chat group commit of a single process:
    with several processes, ids must be taken inside the commit turn instead).

    Why: reserving the ids of a chat batch was one database round trip before every
    insert (p50 0.9 ms of a 3 ms send->deliver at 1,000 msgs/s, and a counter update
    of the embedded database per batch). Here a range of `ahead` ids is reserved in
    the background when fewer than half are left, so a batch normally takes its ids
    from memory. `ahead` grows with the batches (at least LEAD times the largest take,
    at most `most`): with a fixed 128, batches of ~70 (a busy closed loop) found fewer
    than they needed every other batch and waited for the increment, which queues at
    the database behind the inserts (8-20 ms under load).

    Every range comes from one increment (so ranges only grow: ids handed out keep
    increasing) and is used only once that increment is journaled: the process may
    hand out ids long after reserving them, and a database restarted meanwhile must
    not hand the same range out again. A process that stops leaves the rest of its
    range unused: a gap of at most `ahead` ids, as a failed insert leaves one.
    """

    LEAD = 8  # `ahead` is at least this many times the largest take: a refill starts with ~4 takes left

    def __init__(self, allocator: IdAllocator, name: str, ahead: int = 128, most: int = 4096):
        self.allocator = allocator
        self.name = name
        self.ahead = ahead
        self.most = max(most, ahead)
        self._ranges: deque[range] = deque()  # reserved, not handed out, increasing
        self._left = 0
        self._refill: asyncio.Task | None = None
        self._last: int | None = None  # the newest id handed out
        self._started = 0  # reservations started
        self._generation = 0  # bumped by stop_ahead

    async def head(self) -> int:
        """The newest id handed out: this object's newest, or before its first, every id
        up to the counter's value without this object's ranges (none of those will
        ever be handed out: every range reserved later starts above them)."""
        while True:
            if self._last is not None:
                return self._last
            if self._refill is not None and not self._refill.done():
                await asyncio.wait([self._refill])
                continue
            if self._ranges:
                return self._ranges[0].start - 1
            started = self._started
            value = await self.allocator.current(self.name)
            if self._started == started:  # (else a range reserved meanwhile may be in `value`)
                return value

    async def take(self, count: int) -> list[int]:
        """`count` ids, each higher than every id this object handed out before."""
        if self.ahead and count * self.LEAD > self.ahead:
            self.ahead = min(self.most, count * self.LEAD)
        while self._left < count:
            if self._refill is None:
                self._refill = asyncio.ensure_future(self._reserve(max(count, self.ahead)))
                self._refill.add_done_callback(self._refilled)
            task = self._refill
            try:
                await asyncio.shield(task)
            finally:
                if self._refill is task and task.done():
                    self._refill = None
        out: list[int] = []
        while len(out) < count:
            head = self._ranges[0]
            n = min(count - len(out), len(head))
            out.extend(head[:n])
            if n == len(head):
                self._ranges.popleft()
            else:
                self._ranges[0] = head[n:]
        self._left -= count
        self._last = out[-1]
        if self.ahead and self._left < self.ahead // 2 and self._refill is None:  # the next range, before it is needed
            self._refill = asyncio.ensure_future(self._reserve(self.ahead))
            self._refill.add_done_callback(self._refilled)
        return out

    def stop_ahead(self) -> None:
        """From now on reserve exactly what each take needs, and forget the rest of the ranges
        (a gap). For a process shutting down: what it still stores while another process may
        already serve the same database gets ids above that one's, not below them."""
        self.ahead = 0
        self._ranges.clear()
        self._left = 0
        self._generation += 1  # a range being reserved now is dropped too

    async def _reserve(self, count: int) -> None:
        self._started += 1
        generation = self._generation
        got = await self.allocator.reserve(self.name, count, durable=True)
        if generation == self._generation:
            self._ranges.append(got)
            self._left += len(got)

    def _refilled(self, task: asyncio.Task) -> None:
        if self._refill is task:
            self._refill = None
        if not task.cancelled() and task.exception() is not None:
            pass  # retrieved; the next take() reserves again and sees the error itself
