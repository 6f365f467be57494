"""The `blocks` collection: one document per (blocker, blocked), `_id` "blocker:blocked", so
blocking twice is the same document (the primary key makes it idempotent, no extra index).

Indexes (each costs every block a write on the embedded database, and blocks are rare):
- `blocker_newest` (blocker, created_at, _id): my blocks, newest first, keyset-paged;
  and who I block.
- `blocked` (blocked): who blocks me.
Each read is a filter on exactly the keys of one of them (the embedded database's planner
uses an index only when every condition is one of its keys).
"""
from __future__ import annotations

from pymongo import DESCENDING, IndexModel
from pymongo.errors import DuplicateKeyError

from sheda_rt.pagination import PageQuery, paginate

SORT = [("created_at", DESCENDING), ("_id", DESCENDING)]


def block_id(blocker: int, blocked: int) -> str:
    return f"{blocker}:{blocked}"


class BlockStore:
    INDEXES = [
        IndexModel([("blocker", 1), ("created_at", DESCENDING), ("_id", DESCENDING)], name="blocker_newest"),
        IndexModel([("blocked", 1)], name="blocked"),
    ]

    def __init__(self, db):
        self.col = db["blocks"]

    async def ensure_indexes(self):
        await self.col.create_indexes(self.INDEXES)

    async def add(self, blocker: int, blocked: int, now) -> tuple[dict, bool]:
        """The block document, and whether it is new."""
        doc = {"_id": block_id(blocker, blocked), "blocker": blocker, "blocked": blocked, "created_at": now}
        try:
            await self.col.insert_one(doc)
            return doc, True
        except DuplicateKeyError:
            existing = await self.col.find_one({"_id": doc["_id"]})
            return (existing or doc), False

    async def remove(self, blocker: int, blocked: int) -> bool:
        return (await self.col.delete_one({"_id": block_id(blocker, blocked)})).deleted_count == 1

    IN_CHUNK = 200  # ids per $in (bounded lists: a database may match them one by one)

    async def related_many(self, user_ids: list[int]) -> dict[int, set[int]]:
        """{user: everyone they block or are blocked by} for many users: two indexed `$in`
        reads per chunk, whatever the number of users (a presence batch asks for thousands)."""
        out: dict[int, set[int]] = {u: set() for u in user_ids}
        for i in range(0, len(user_ids), self.IN_CHUNK):
            chunk = user_ids[i:i + self.IN_CHUNK]
            async for d in self.col.find({"blocker": {"$in": chunk}}, projection={"blocker": 1, "blocked": 1}):
                out[d["blocker"]].add(d["blocked"])
            async for d in self.col.find({"blocked": {"$in": chunk}}, projection={"blocker": 1, "blocked": 1}):
                out[d["blocked"]].add(d["blocker"])
        return out

    async def page(self, blocker: int, page: PageQuery, serialize) -> dict:
        return await paginate(self.col, {"blocker": blocker}, SORT, page, serialize)
