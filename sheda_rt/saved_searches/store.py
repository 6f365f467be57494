"""The collections of saved searches and their alerts.

- `saved_searches`: one document per search, `{user_id, name, query, alert, alert_key?, alerts_after?}`.
  `alerts_after`: the count of listing changes (CHANGES) read just before the search was stored, and again
  before an edit that changes its filters or turns its alerts on; a change counted at or below it was stored
  before the search was (as it is now), so it never alerts it (none: a search saved before the count existed,
  alerted by every change until such an edit).
  `alert_key` is set only while alerts are on: one facet every listing that matches the search
  must carry (the facet GET /properties would drive the same search with: a location word, a
  keyword, the agent, the category, the listing/property type, or "*"), or for a map search with
  nothing more selective the grid cells covering its circle or box (an array: the index is
  multikey; a listing inside carries one of them). A changed listing looks up the searches filed
  under any of its own facets, one `$in` on the `alert_key` index, so it reads only searches that
  can possibly match, never every saved search.
  The limit per user is kept by `slot` (0..limit-1) under a unique (user_id, slot) index: a new
  search takes a free slot, and of two creates racing for one slot the index lets one in (the
  other tries the next free one), so concurrent creates can never pass the limit, and nothing
  (no counter) can drift from the searches themselves when a process dies mid-create.
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
# The counter of listing changes that may alert (job.py): each change's match job takes the next value once the
# change is stored; a search records the value when it is saved, and alerts only on changes counted after it.
CHANGES = "listing_changes"


class SavedSearchStore:
    INDEXES = [
        IndexModel([("user_id", ASCENDING), ("_id", DESCENDING)], name="user_newest"),
        IndexModel([("alert_key", ASCENDING)], name="alert_key"),
        IndexModel([("user_id", ASCENDING), ("slot", ASCENDING)], unique=True, name="user_slot"),
    ]

    def __init__(self, db, ids):
        self.col = db["saved_searches"]
        self.meta = db["meta"]  # markers of one-time backfills
        self.ids = ids

    async def ensure_indexes(self):
        await self.col.create_indexes(self.INDEXES)

    # ---- searches -----------------------------------------------------------
    async def insert(self, doc: dict, limit: int) -> dict | None:
        """Store a new search of `doc["user_id"]` in a free slot; None when all `limit` slots are taken.
        Each lost race means another search took that slot, so this ends within `limit` + 1 tries."""
        doc = dict(doc, _id=await self.ids.next("saved_searches"))
        for _ in range(limit + 1):
            used = {d["slot"] for d in await self.col.find({"user_id": doc["user_id"]}, projection={"slot": 1}).to_list()}
            free = next((i for i in range(limit) if i not in used), None)
            if free is None:
                return None
            try:
                await self.col.insert_one(dict(doc, slot=free))
                return dict(doc, slot=free)
            except DuplicateKeyError:  # another create took this slot first: look again
                continue
        return None

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

    async def alerting_ids(self, user_id: int) -> set[int]:
        """The ids of this user's searches whose alerts are on (at most the limit: one read on user_newest)."""
        docs = await self.col.find({"user_id": user_id}, projection={"alert": 1}).to_list()
        return {d["_id"] for d in docs if d.get("alert") in ("instant", "daily")}

    def alerting(self, facets: list[str], batch: int = 500):
        """Searches with alerts on filed under any of these facets (a listing's), as a cursor."""
        return self.col.find({"alert_key": {"$in": list(facets)}}, batch_size=batch)

    async def changes_so_far(self) -> int:
        """The listing changes counted so far (CHANGES): every change counted after this read is newer."""
        return await self.ids.current(CHANGES)

    async def next_change(self) -> int:
        """Count one listing change (stored already): its number orders it against the searches' `alerts_after`."""
        return await self.ids.next(CHANGES)

    # ---- one-time backfills ----------------------------------------------------
    def filed_under_words(self, batch: int = 500):
        """Searches with alerts on filed under a location word (`w:...`) or a keyword (`k:...`), as a cursor (a regex:
        one pass over the collection, for a backfill at a start)."""
        return self.col.find({"alert_key": {"$regex": "^[wk]:"}}, projection={"query": 1, "alert": 1, "alert_key": 1},
                             batch_size=batch)

    async def refile(self, search_id: int, old_key, new_key) -> bool:
        """File a search under `new_key` if it is still filed under `old_key` (an edit meanwhile filed it itself)."""
        return (await self.col.update_one({"_id": search_id, "alert_key": old_key}, {"$set": {"alert_key": new_key}})).modified_count == 1

    async def marked(self, marker: str) -> bool:
        return await self.meta.find_one({"_id": marker}) is not None

    async def mark(self, marker: str) -> None:
        try:
            await self.meta.update_one({"_id": marker}, {"$set": {"done": True}}, upsert=True)
        except DuplicateKeyError:  # another process's upsert won
            pass


class PendingAlerts:
    """The `alert_pending` marker of listings (sheda_rt/listings/service.py `alert_marker`): written with a change that
    may alert, cleared by that change's match job once it has run. Its own sparse index holds only listings whose
    marker is there (a few at any time), so the sweep finds them without reading the listings; the
    listings store does not use the field."""

    INDEXES = [IndexModel([("alert_pending", ASCENDING)], sparse=True, name="alert_pending")]

    def __init__(self, db):
        self.col = db["properties"]

    async def ensure_indexes(self):
        await self.col.create_indexes(self.INDEXES)

    async def left(self, limit: int) -> list[dict]:
        """Listings whose marker is still there ({field: {$exists: true}} rides the sparse index)."""
        return await self.col.find({"alert_pending": {"$exists": True}}, projection={"alert_pending": 1, "rev": 1},
                                   limit=limit).to_list()

    async def clear(self, property_id: int, marker_id: str) -> None:
        """Only this marker: a later change's marker (another id) stays for its own job."""
        await self.col.update_one({"_id": property_id, "alert_pending.id": marker_id}, {"$unset": {"alert_pending": ""}})


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
