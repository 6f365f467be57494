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

    async def reserve(self, name: str, count: int = 1) -> range:
        """Reserve `count` consecutive ids for `name`; returns them as a range."""
        if count < 1:
            return range(0)
        for _ in range(_ATTEMPTS):
            doc = await self._counters.find_one_and_update(
                {"_id": name}, {"$inc": {"seq": count}}, return_document=ReturnDocument.AFTER
            )
            if doc is not None:
                end = int(doc["seq"])
                return range(end - count + 1, end + 1)
            try:
                await self._counters.insert_one({"_id": name, "seq": 0})
            except DuplicateKeyError:
                pass  # another caller created it first: increment theirs
        raise IdAllocationError(f"the database did not confirm an increment of counter {name!r}")

    async def current(self, name: str) -> int:
        """The highest id reserved so far for `name` (0 before the first)."""
        doc = await self._counters.find_one({"_id": name})
        return int(doc["seq"]) if doc else 0

    async def next(self, name: str) -> int:
        return (await self.reserve(name, 1))[0]
