"""Integer ids (the contract's ids are integers), allocated race-free.

One `counters` document per collection, bumped with `$inc` in a single atomic
`find_one_and_update`. A batch of N inserts reserves N ids in one round trip,
so the chat group commit costs one counter update per batch, not per message.

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


# The largest id a request may name: 18 digits, as the path patterns allow. Larger
# integers would not fit the database's int64 and must be a 422, never a 500.
MAX_ID = 10**18 - 1


class IdAllocator:
    def __init__(self, db):
        self._counters = db.get_collection("counters", write_concern=WriteConcern(w=1))

    async def reserve(self, name: str, count: int = 1) -> range:
        """Reserve `count` consecutive ids for `name`; returns them as a range."""
        if count < 1:
            return range(0)
        doc = await self._counters.find_one_and_update(
            {"_id": name}, {"$inc": {"seq": count}}, upsert=True, return_document=ReturnDocument.AFTER
        )
        end = int(doc["seq"])
        return range(end - count + 1, end + 1)

    async def current(self, name: str) -> int:
        """The highest id reserved so far for `name` (0 before the first)."""
        doc = await self._counters.find_one({"_id": name})
        return int(doc["seq"]) if doc else 0

    async def next(self, name: str) -> int:
        return (await self.reserve(name, 1))[0]
