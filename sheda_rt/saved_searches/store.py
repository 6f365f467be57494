"""The collections of saved searches and their alerts.

- `saved_searches`: one document per search, `{user_id, name, query, alert, alert_key?}`.
  `alert_key` is set only while alerts are on: one facet every listing that matches the search
  must carry (the facet GET /properties would drive the same search with: a location word, a
  keyword, the agent, the category, the listing/property type, or "*"), or for a map search with
  nothing more selective the grid cells covering its circle or box (an array: the index is
  multikey; a listing inside carries one of them). A changed listing looks up the searches filed
  under any of its own facets, one `$in` on the `alert_key` index, so it reads only searches that
  can possibly match, never every saved search.
- `saved_search_quota`: `{_id: user_id, n}`, the number of searches a user has; taking a place is
  one conditional increment (`n < limit`), so concurrent creates can never pass the limit.
- `saved_search_alerts`: one document per (user, listing) that was ever alerted, `_id` =
  "<user>:<listing>". The `_id` index is the dedup: whichever process inserts it first alerts, a
  second insert (another change of the listing, another process, another of the user's searches)
  fails and alerts nobody. Daily ones wait as `queued` for the user's digest.
"""
from __future__ import annotations

from pymongo import ASCENDING, DESCENDING, IndexModel
from pymongo.errors import BulkWriteError, DuplicateKeyError

from sheda_rt.database.writes import update_then_get
from sheda_rt.pagination import PageQuery, paginate

SORT = [("_id", DESCENDING)]


class SavedSearchStore:
    INDEXES = [
        IndexModel([("user_id", ASCENDING), ("_id", DESCENDING)], name="user_newest"),
        IndexModel([("alert_key", ASCENDING)], name="alert_key"),
    ]

    def __init__(self, db, ids):
        self.col = db["saved_searches"]
        self.quota = db["saved_search_quota"]
        self.ids = ids

    async def ensure_indexes(self):
        await self.col.create_indexes(self.INDEXES)

    # ---- the per-user limit -------------------------------------------------
    async def take_place(self, user_id: int, limit: int) -> bool:
        """One more search for this user, unless they have `limit` already (atomic)."""
        try:
            await self.quota.update_one({"_id": user_id, "n": {"$lt": limit}}, {"$inc": {"n": 1}}, upsert=True)
            return True
        except DuplicateKeyError:  # the document exists and is full: the upsert tried to insert a second one
            return False

    async def give_back(self, user_id: int) -> None:
        await self.quota.update_one({"_id": user_id, "n": {"$gt": 0}}, {"$inc": {"n": -1}})

    # ---- searches -----------------------------------------------------------
    async def insert(self, doc: dict) -> dict:
        doc = dict(doc, _id=await self.ids.next("saved_searches"))
        await self.col.insert_one(doc)
        return doc

    async def get(self, user_id: int, search_id: int) -> dict | None:
        return await self.col.find_one({"_id": search_id, "user_id": user_id})

    async def update(self, user_id: int, search_id: int, fields: dict, unset: list[str]) -> dict | None:
        update: dict = {"$set": fields}
        if unset:
            update["$unset"] = {k: "" for k in unset}
        return await update_then_get(self.col, {"_id": search_id, "user_id": user_id}, update)

    async def delete(self, user_id: int, search_id: int) -> bool:
        return (await self.col.delete_one({"_id": search_id, "user_id": user_id})).deleted_count == 1

    async def page(self, user_id: int, page: PageQuery, serialize) -> dict:
        return await paginate(self.col, {"user_id": user_id}, SORT, page, serialize)

    def alerting(self, facets: list[str], batch: int = 500):
        """Searches with alerts on filed under any of these facets (a listing's), as a cursor."""
        return self.col.find({"alert_key": {"$in": list(facets)}}, batch_size=batch)


class AlertStore:
    INDEXES = [IndexModel([("user_id", ASCENDING), ("status", ASCENDING), ("_id", ASCENDING)], name="user_status")]

    def __init__(self, db):
        self.col = db["saved_search_alerts"]

    async def ensure_indexes(self):
        await self.col.create_indexes(self.INDEXES)

    @staticmethod
    def key(user_id: int, property_id: int) -> str:
        return f"{user_id}:{property_id}"

    async def claim_many(self, docs: list[dict]) -> list[dict]:
        """Insert the alerts of many (user, listing) pairs in one unordered write; returns each as
        stored, with `existing: True` where one was there already (inserted by another job)."""
        if not docs:
            return []
        taken: set[str] = set()
        try:
            await self.col.insert_many(docs, ordered=False)
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors", [])
            if any(e.get("code") != 11000 for e in errors):
                raise
            taken = {docs[e["index"]]["_id"] for e in errors}
        found = {}
        if taken:
            found = {d["_id"]: d for d in await self.col.find({"_id": {"$in": sorted(taken)}}).to_list()}
        return [dict(found[d["_id"]], existing=True) if d["_id"] in found else d for d in docs if d["_id"] not in taken or d["_id"] in found]

    # Writes name (user_id, status, _id), every key of the one index, so the embedded planner walks it.
    async def settle(self, user_id: int, key: str, status_from: str, fields: dict) -> bool:
        """Move one alert on from `status_from` (False when it is not in that state any more)."""
        result = await self.col.update_one({"user_id": user_id, "status": status_from, "_id": key}, {"$set": fields})
        return result.modified_count == 1

    async def queued(self, user_id: int, limit: int) -> list[dict]:
        return await self.col.find({"user_id": user_id, "status": "queued"}, sort=[("_id", ASCENDING)], limit=limit).to_list()

    async def mark(self, user_id: int, keys: list[str], status_from: str, fields: dict) -> int:
        if not keys:
            return 0
        result = await self.col.update_many({"user_id": user_id, "status": status_from, "_id": {"$in": keys}}, {"$set": fields})
        return result.modified_count
