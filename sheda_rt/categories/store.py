"""The `categories` collection.

A category in use cannot be deleted. "In use" is a counter on the category
(`uses`), moved by the listings service: +1 *before* a listing is written with the
category (the increment's filter is the existence check), -1 after a listing
leaves it. Delete is `delete_one({_id, uses: 0})`, so a listing being created
with the category while an admin deletes it either finds the category gone (422)
or has already counted itself (409 for the delete): never a listing pointing at
a deleted category. A crash between the +1 and the listing write leaves the count
one too high, which can only refuse a delete, never allow a wrong one.
"""
from __future__ import annotations

from pymongo import ASCENDING, IndexModel
from pymongo.errors import DuplicateKeyError

from sheda_rt.database.writes import update_then_get
from sheda_rt.errors import Conflict
from sheda_rt.pagination import PageQuery, paginate

SORT = [("_id", ASCENDING)]


class CategoryStore:
    INDEXES = [IndexModel([("key", ASCENDING)], unique=True, name="key_unique")]

    def __init__(self, db, ids):
        self.col = db["categories"]
        self.ids = ids

    async def ensure_indexes(self):
        await self.col.create_indexes(self.INDEXES)

    async def insert(self, doc: dict) -> dict:
        doc = dict(doc, _id=await self.ids.next("categories"), uses=0)
        try:
            await self.col.insert_one(doc)
        except DuplicateKeyError:
            raise Conflict("A category with this name exists", "category_exists") from None
        return doc

    async def get(self, category_id: int) -> dict | None:
        return await self.col.find_one({"_id": category_id})

    async def page(self, page: PageQuery, serialize) -> dict:
        return await paginate(self.col, {}, SORT, page, serialize)

    async def update(self, category_id: int, changes: dict) -> dict | None:
        try:
            return await update_then_get(self.col, {"_id": category_id}, {"$set": changes})
        except DuplicateKeyError:
            raise Conflict("A category with this name exists", "category_exists") from None

    async def use(self, category_id: int) -> bool:
        """Count one more listing in the category; False when it does not exist."""
        result = await self.col.update_one({"_id": category_id}, {"$inc": {"uses": 1}})
        return result.matched_count == 1

    async def release(self, category_id: int) -> None:
        await self.col.update_one({"_id": category_id, "uses": {"$gt": 0}}, {"$inc": {"uses": -1}})

    async def delete_unused(self, category_id: int) -> bool:
        result = await self.col.delete_one({"_id": category_id, "uses": 0})
        return result.deleted_count == 1
