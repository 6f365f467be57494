"""The `notifications` collection: one document per notification, owned by `user_id`."""
from __future__ import annotations

from pymongo import DESCENDING, IndexModel
from pymongo.errors import DuplicateKeyError

from sheda_rt.database.writes import update_then_get

from sheda_rt.pagination import PageQuery, paginate

SORT = [("_id", DESCENDING)]


class NotificationStore:
    INDEXES = [
        # GET /notifications (newest first) and ?unread=true both walk the user's prefix.
        IndexModel([("user_id", 1), ("_id", DESCENDING)], name="user_newest"),
        IndexModel([("user_id", 1), ("is_read", 1), ("_id", DESCENDING)], name="user_unread"),
        # A notification sent once per event whoever reports it (a wallet credit: a webhook, its redelivery, the
        # reconciliation, in any process) carries `key`; the others have none and take no entry here.
        IndexModel([("key", 1)], unique=True, name="key_unique", partialFilterExpression={"key": {"$exists": True}}),
    ]

    def __init__(self, db, ids):
        self.col = db["notifications"]
        self.ids = ids

    async def ensure_indexes(self):
        await self.col.create_indexes(self.INDEXES)

    async def insert(self, doc: dict) -> dict:
        doc = dict(doc, _id=await self.ids.next("notifications"))
        await self.col.insert_one(doc)
        return doc

    async def insert_once(self, doc: dict) -> dict | None:
        """Insert a notification carrying `key`; None when one with that key is stored already (nothing written)."""
        doc = dict(doc, _id=await self.ids.next("notifications"))
        try:
            await self.col.insert_one(doc)
        except DuplicateKeyError:
            return None
        return doc

    async def unpublished(self, key: str) -> dict | None:
        """The notification of `key` if the process that stored it never recorded it published (it died in between,
        or is publishing right now); None when there is none or it was published. Stored before `unpublished` existed:
        published (then every keyed notification was, or was lost with no way to tell)."""
        return await self.col.find_one({"key": key, "unpublished": True})

    async def mark_published(self, notification_id: int, now) -> None:
        await self.col.update_one({"_id": notification_id}, {"$unset": {"unpublished": ""}, "$set": {"published_at": now}})

    #: Documents per insert_many: a few hundred KB per call, so thousands of users are a few calls.
    INSERT_CHUNK = 1000

    async def insert_for_users(self, user_ids: list[int], fields: dict) -> int:
        """The same notification (`fields`) for each of `user_ids` (an announcement to every
        user): ids reserved in one counter update, documents built and inserted INSERT_CHUNK
        to a call, so N users cost about N / INSERT_CHUNK round trips and never N documents
        in memory at once. Returns how many were stored; a failure raises (the chunks before
        it stay stored)."""
        if not user_ids:
            return 0
        ids = await self.ids.reserve("notifications", len(user_ids))
        for start in range(0, len(user_ids), self.INSERT_CHUNK):
            chunk = user_ids[start:start + self.INSERT_CHUNK]
            await self.col.insert_many([dict(fields, _id=ids[start + i], user_id=user_id) for i, user_id in enumerate(chunk)],
                                       ordered=False)
        return len(user_ids)

    async def page(self, user_id: int, unread: bool | None, page: PageQuery, serialize) -> dict:
        query: dict = {"user_id": user_id}
        if unread is not None:
            query["is_read"] = not unread
        return await paginate(self.col, query, SORT, page, serialize)

    async def mark_read(self, user_id: int, notification_id: int, now) -> dict | None:
        """Idempotent: marking a read notification again keeps its first read_at."""
        doc = await update_then_get(self.col, {"_id": notification_id, "user_id": user_id, "is_read": False},
                                    {"$set": {"is_read": True, "read_at": now}})
        if doc is None:
            doc = await self.col.find_one({"_id": notification_id, "user_id": user_id})
        return doc

    async def mark_all_read(self, user_id: int, now) -> int:
        result = await self.col.update_many({"user_id": user_id, "is_read": False}, {"$set": {"is_read": True, "read_at": now}})
        return result.modified_count

    async def is_read(self, user_id: int, notification_id: int) -> bool:
        """Read (on any device), or gone: a push of it still waiting has nothing left to tell."""
        doc = await self.col.find_one({"_id": notification_id, "user_id": user_id}, projection={"is_read": 1})
        return doc is None or bool(doc.get("is_read"))

    async def unread_count(self, user_id: int) -> int:
        return await self.col.count_documents({"user_id": user_id, "is_read": False})

    async def delete_for_user(self, user_id: int) -> int:
        """Every notification of user_id (the user's prefix of `user_newest`)."""
        return (await self.col.delete_many({"user_id": user_id})).deleted_count
