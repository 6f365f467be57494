"""The chat collections.

`messages`: one document per message, `_id` from the id allocator (so ids
increase in the order messages were committed), `conv` = "<low id>:<high id>"
naming the pair. Indexes were chosen by measuring insert cost on the embedded
database (each index costs about as much as the document write itself):
- `idempotency`: unique (sender_id, client_msg_id), partial (only messages that
  carry a key). It is what makes a resend store nothing new, across processes.
- `conversation`: (conv, _id). History, listing threads' fallback, sync (per
  conversation), read receipts and unread counts all walk this one index.
- `thread`: (conv, property_id, _id), partial on property_id: free for the
  ordinary messages that have no listing.
There is deliberately no (receiver_id, _id) or multikey "users" index: they
would cost every insert to speed up reconnect-only queries.

`conversations`: one small document per pair that ever talked (membership and
per-user read watermarks). It is written once per pair (the process remembers
which pairs exist) and on read receipts, never per message: updating a
"last message" field per message cost about 0.5 ms each on the embedded
database, as much as the insert. The list of conversations finds each pair's
last message through the `conversation` index instead.
"""
from __future__ import annotations

import logging
from collections import OrderedDict

from pymongo import ASCENDING, DESCENDING, IndexModel, UpdateOne
from pymongo.errors import BulkWriteError

log = logging.getLogger("sheda.chat.store")

DUPLICATE_KEY = 11000


def conv_key(a: int, b: int) -> str:
    lo, hi = (a, b) if a < b else (b, a)
    return f"{lo}:{hi}"


class InsertOutcome:
    """What insert_many did with each document, by position."""

    __slots__ = ("duplicates", "failed")

    def __init__(self):
        self.duplicates: set[int] = set()
        self.failed: dict[int, str] = {}


class MessageStore:
    INDEXES = [
        IndexModel([("sender_id", ASCENDING), ("client_msg_id", ASCENDING)], unique=True, name="idempotency",
                   partialFilterExpression={"client_msg_id": {"$type": "string"}}),
        IndexModel([("conv", ASCENDING), ("_id", ASCENDING)], name="conversation"),
        IndexModel([("conv", ASCENDING), ("property_id", ASCENDING), ("_id", ASCENDING)], name="thread",
                   partialFilterExpression={"property_id": {"$type": "number"}}),
    ]

    def __init__(self, db):
        self.col = db["messages"]

    async def ensure_indexes(self):
        await self.col.create_indexes(self.INDEXES)

    async def insert_batch(self, docs: list[dict]) -> InsertOutcome:
        """One insert_many for the whole batch. Unordered, so one duplicate key does
        not stop the others; duplicates and other per-document failures are reported
        by position. A failure of the call itself (database down) raises."""
        outcome = InsertOutcome()
        try:
            await self.col.insert_many(docs, ordered=False)
        except BulkWriteError as exc:
            for err in exc.details.get("writeErrors", []):
                if err.get("code") == DUPLICATE_KEY and "client_msg_id" in str(err.get("keyPattern") or err.get("errmsg", "")):
                    outcome.duplicates.add(err["index"])
                else:
                    outcome.failed[err["index"]] = err.get("errmsg", "write failed")
        return outcome

    async def find_by_client_ids(self, keys: list[tuple[int, str]]) -> dict[tuple[int, str], dict]:
        if not keys:
            return {}
        query = {"$or": [{"sender_id": s, "client_msg_id": c} for s, c in keys]}
        return {(d["sender_id"], d["client_msg_id"]): d async for d in self.col.find(query)}

    async def conversation(self, conv: str, *, offset: int, limit: int, newest_first: bool, property_id: int | None = None) -> list[dict]:
        query: dict = {"conv": conv}
        if property_id is not None:
            query["property_id"] = property_id
        cursor = self.col.find(query).sort("_id", DESCENDING if newest_first else ASCENDING).skip(offset).limit(limit)
        return await cursor.to_list(limit)

    async def after(self, conv: str, since: int, limit: int) -> list[dict]:
        cursor = self.col.find({"conv": conv, "_id": {"$gt": since}}).sort("_id", ASCENDING).limit(limit)
        return await cursor.to_list(limit)

    async def last_in(self, conv: str) -> dict | None:
        return await self.col.find_one({"conv": conv}, sort=[("_id", DESCENDING)])

    async def last_id_from(self, conv: str, sender_id: int) -> int | None:
        """The id of sender_id's newest message in conv (None if they never wrote in it)."""
        doc = await self.col.find_one({"conv": conv, "sender_id": sender_id}, projection={"_id": 1}, sort=[("_id", DESCENDING)])
        return doc["_id"] if doc else None

    async def mark_read(self, conv: str, sender_id: int, after_id: int, up_to: int, when) -> int:
        result = await self.col.update_many(
            {"conv": conv, "_id": {"$gt": after_id, "$lte": up_to}, "sender_id": sender_id},
            {"$set": {"read_at": when}},
        )
        return result.modified_count

    async def count_from(self, conv: str, sender_id: int, after_id: int) -> int:
        return await self.col.count_documents({"conv": conv, "_id": {"$gt": after_id}, "sender_id": sender_id})


class ConversationStore:
    INDEXES = [IndexModel([("users", ASCENDING)], name="member")]
    KNOWN_MAX = 200_000  # pairs remembered as existing; forgetting one only costs a no-op upsert
    IN_CHUNK = 200

    def __init__(self, db):
        self.col = db["conversations"]
        self._known: OrderedDict[str, None] = OrderedDict()

    async def ensure_indexes(self):
        await self.col.create_indexes(self.INDEXES)

    async def ensure(self, pairs: dict[str, tuple[int, int]], now) -> None:
        """Make sure each pair has its document; only pairs this process has not seen
        cost a write (one unordered bulk of upserts for the batch)."""
        new = [(conv, users) for conv, users in pairs.items() if conv not in self._known]
        if not new:
            return
        await self.col.bulk_write(
            [UpdateOne({"_id": conv}, {"$setOnInsert": {"users": list(users), "created_at": now, "read_upto": {}}}, upsert=True)
             for conv, users in new],
            ordered=False,
        )
        for conv, _ in new:
            self._known[conv] = None
        while len(self._known) > self.KNOWN_MAX:
            self._known.popitem(last=False)

    async def of_user(self, user_id: int, limit: int = 5000) -> list[dict]:
        return await self.col.find({"users": user_id}).limit(limit).to_list(limit)

    async def peers_of_many(self, user_ids: set[int]) -> dict[int, list[int]]:
        """{user: the people they share a conversation with} for many users in one query."""
        out: dict[int, list[int]] = {}
        ids = list(user_ids)
        for i in range(0, len(ids), self.IN_CHUNK):  # bounded $in lists (a database may match them per document)
            async for conv in self.col.find({"users": {"$in": ids[i:i + self.IN_CHUNK]}}, projection={"users": 1}):
                a, b = conv["users"]
                if a in user_ids:
                    out.setdefault(a, []).append(b)
                if b in user_ids:
                    out.setdefault(b, []).append(a)
        for peers in out.values():  # a conversation between two users of one batch is seen twice
            peers[:] = list(dict.fromkeys(peers))
        return out

    async def get(self, conv: str) -> dict | None:
        return await self.col.find_one({"_id": conv})

    async def advance_read(self, conv: str, user_id: int, up_to: int) -> int | None:
        """Raise user_id's read watermark in conv to up_to; returns the previous one
        (None when the pair never talked). A compare-and-set on the watermark with
        find_one + update_one: exactly one of two racing receipts moves it from a given
        value (so each message is marked and announced once), and both operations are
        served from the _id index on every engine (find_one_and_update scans the
        collection on the embedded database, and read receipts are the chat's most
        frequent write)."""
        field = f"read_upto.{user_id}"
        for _ in range(8):
            doc = await self.col.find_one({"_id": conv}, projection={field: 1})
            if doc is None:
                return None
            previous = int((doc.get("read_upto") or {}).get(str(user_id), 0))
            if up_to <= previous:
                return previous
            seen = {field: previous} if previous else {field: {"$in": [None, 0]}}  # 0 or never set
            if (await self.col.update_one({"_id": conv, **seen}, {"$set": {field: up_to}})).modified_count:
                return previous
        return up_to  # others kept moving it: report nothing new rather than loop
