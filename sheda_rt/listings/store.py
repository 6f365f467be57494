"""The `properties` and `favourites` collections.

Searches run through the shared faceted search (`sheda_rt/search.py`, where the
index plan is explained): a listing's `facets` are `"*"`, `"l:rent"`,
`"t:apartment"`, `"l:rent|t:apartment"`, `"a:<agent id>"`, `"c:<category id>"`, its
location word prefixes, its keywords (title, location, description) and its grid
cells, and the driving state is `status` (available,
rented, sold). "newest" sorts by `newest_at`: the creation time, or the last paid bump
(sheda_rt/promotions/). A featured listing also carries each facet prefixed with "f:" while
`featured_until` is set, and searches list featured ones first (sheda_rt/promotions/featured.py).
The 2dsphere index stays: it refuses malformed points on write,
and a real MongoDB can serve ad-hoc geo queries from it.
"""
from __future__ import annotations

import logging

from pymongo import ASCENDING, DESCENDING, GEOSPHERE, IndexModel
from pymongo.errors import DuplicateKeyError, OperationFailure

from sheda_rt.database.writes import get_then_update, update_then_get
from sheda_rt.errors import Conflict
from sheda_rt.pagination import PageQuery, paginate
from sheda_rt.promotions.featured import featured_facets, search_featured_first
# Re-exported: the listings service and tests name these here.
from sheda_rt.search import (EARTH_RADIUS_KM, FacetedSearch, FacetPostings, FacetStats, SearchPlan, geo_cells_covering, geo_facets,  # noqa: F401
                             keyword_facet, keyword_facets, keyword_words, location_facets, location_words, refacet_once, word_facet)

log = logging.getLogger("sheda.listings")

def facets_for(doc: dict) -> list[str]:
    lt, pt = doc["listing_type"], doc["property_type"]
    out = {"*", f"l:{lt}", f"t:{pt}", f"l:{lt}|t:{pt}", f"a:{doc['agent_id']}"}
    out.update(geo_facets(doc.get("geo")))
    out.update(location_facets(doc.get("location", "")))
    out.update(keyword_facets(doc.get("title", ""), doc.get("location", ""), doc.get("description", "")))
    if doc.get("category_id") is not None:
        out.add(f"c:{doc['category_id']}")
    if doc.get("featured_until") is not None:  # last: a prefixed copy of every facet above
        out |= featured_facets(out)
    return sorted(out)


async def _no_postings(docs) -> None:
    """FacetPostings.add when the keyword postings are switched off."""


def _newest_at(doc: dict):
    """Where a new listing sorts in "newest": its creation (a bump moves it later)."""
    return doc.get("newest_at") or doc["created_at"]


class PropertyStore:
    INDEXES = [
        IndexModel([("status", ASCENDING), ("facets", ASCENDING), ("newest_at", DESCENDING), ("_id", DESCENDING)], name="search_newest_at"),
        IndexModel([("status", ASCENDING), ("facets", ASCENDING), ("price_minor", ASCENDING), ("_id", ASCENDING)], name="search_price"),
        # The version is spelled out so re-creating the index at the next start is a no-op, not a spec conflict.
        IndexModel([("geo", GEOSPHERE)], name="search_geo", **{"2dsphereIndexVersion": 3}),
        # The promotions job's "featured days over" query; sparse: only featured listings have the field.
        IndexModel([("featured_until", ASCENDING)], name="featured_until", sparse=True),
        # An agent's own listings in every state (GET /users/me/properties), newest first, every page an equality on
        # agent_id and an _id range. The search indexes cannot serve it: they lead with one status, and an `_id`
        # range or `is_active` beside (status, facets) is a collection scan on the embedded database (explained).
        # One entry per listing that never changes (agent and id are fixed), beside the dozens of facet entries
        # each search index holds per listing.
        IndexModel([("agent_id", ASCENDING), ("_id", DESCENDING)], name="agent_newest"),
    ]
    MINE_SORT = [("_id", DESCENDING)]
    # search_newest sorted by created_at until a bump could move a listing up "newest" (newest_at).
    RETIRED_INDEXES = ("search_newest",)

    # Bump when facets_for changes: listings stored before are re-faceted once at startup.
    FACETS_VERSION = 6  # 2: geo grid cells; 3: keywords (q=) and categories; 4: location words folded (accents, "ß");
    # 5: location words read Turkish "ı" as "i"; 6: keywords too

    def __init__(self, db, ids, *, keyword_postings: bool = True):
        self.col = db["properties"]
        self.meta = db["meta"]
        self.ids = ids
        # Which of a request's conditions is rarest (the driver): a sample of the listings' facets.
        self.stats = FacetStats(self.col, lambda: ids.current("properties"), fields=("status", "is_active"))  # fields: sheda_rt/metrics.py ListingGauges
        # Which listings carry each keyword, as bitmaps: a few keywords together are fetched by id (search.py).
        # Off (SEARCH_KEYWORD_POSTINGS=false): writes cost one upsert less per keyword; searches of several
        # common words then read every listing carrying the rarest of them.
        self.keyword_postings = keyword_postings
        self.postings = FacetPostings(db["properties_postings"], self.meta, lambda: ids.current("properties"), marker="properties.postings")
        if not keyword_postings:
            self.postings.add = _no_postings
        self.finder = FacetedSearch(self.col, state_field="status", date_field="newest_at", price_field="price_minor",
                                    stats=self.stats, postings=self.postings if keyword_postings else None)

    async def ensure_indexes(self):
        await self.col.create_indexes(self.INDEXES)
        await self.backfill_newest_at()
        existing = await self.col.index_information()
        for name in self.RETIRED_INDEXES:
            if name in existing:
                try:
                    await self.col.drop_index(name)
                except OperationFailure:  # another process starting at the same time dropped it first
                    pass
        await self.refacet_if_stale()
        if self.keyword_postings:
            await self.postings.backfill(self.col)
        else:
            await self.postings.disable()

    async def backfill_newest_at(self) -> int:
        """Listings stored before bumps existed sort in "newest" by their creation time: one
        update at the first start of this version (marked done in `meta`; idempotent)."""
        if await self.meta.find_one({"_id": "properties.newest_at"}) is not None:
            return 0
        result = await self.col.update_many({"newest_at": {"$exists": False}}, [{"$set": {"newest_at": "$created_at"}}])
        try:
            await self.meta.update_one({"_id": "properties.newest_at"}, {"$set": {"done": True}}, upsert=True)
        except DuplicateKeyError:  # another process's upsert won
            pass
        return result.modified_count

    async def refacet_if_stale(self, batch: int = 1000) -> int:
        """Recompute `facets` of the listings whose facets an older facets_for made (once per FACETS_VERSION,
        writing only those that change: search.py refacet_once); returns how many were rewritten."""
        fields = {"listing_type": 1, "property_type": 1, "agent_id": 1, "location": 1, "geo": 1,
                  "title": 1, "description": 1, "category_id": 1, "featured_until": 1}
        return await refacet_once(self.col, self.meta, marker="properties.facets", version=self.FACETS_VERSION,
                                  top=await self.postings.max_id(), fields=fields, facets_of=facets_for, label="listing",
                                  before_write=self.postings.add, batch=batch)  # bits before the words

    # ---- documents ---------------------------------------------------------
    async def insert(self, doc: dict) -> dict:
        doc = dict(doc, _id=await self.ids.next("properties"), rev=1, facets=facets_for(doc), newest_at=_newest_at(doc))
        await self.postings.add([(doc["_id"], doc["facets"])])  # before the listing: a search never misses it
        await self.col.insert_one(doc)
        return doc

    async def insert_many(self, docs: list[dict]) -> list[dict]:
        """Bulk load (imports, the benchmark): one id reservation and one insert for the batch."""
        ids = await self.ids.reserve("properties", len(docs))
        out = [dict(doc, _id=i, rev=1, facets=facets_for(doc), newest_at=_newest_at(doc)) for doc, i in zip(docs, ids)]
        if out:
            await self.postings.add((d["_id"], d["facets"]) for d in out)
            await self.col.insert_many(out, ordered=False)
        return out

    async def get(self, property_id: int) -> dict | None:
        return await self.col.find_one({"_id": property_id})

    async def get_many(self, ids) -> dict[int, dict]:
        ids = list(set(ids))
        if not ids:
            return {}
        return {d["_id"]: d async for d in self.col.find({"_id": {"$in": ids}})}

    async def update_if_rev(self, property_id: int, rev: int, merged: dict, changes: dict, unset: list[str],
                            push: dict | None = None, keep: int = 50) -> dict | None:
        """Apply `changes` only if nobody changed the listing since we read revision `rev`
        (facets are recomputed from the merged document, so they must not go stale).
        `push` appends to arrays, each kept to its last `keep` entries."""
        facets = facets_for(merged)
        await self.postings.add([(property_id, facets)])  # a new word's bit before the word
        update: dict = {"$set": dict(changes, facets=facets), "$inc": {"rev": 1}}
        if unset:
            update["$unset"] = {k: "" for k in unset}
        if push:
            update["$push"] = {k: {"$each": [v], "$slice": -keep} for k, v in push.items()}
        return await update_then_get(self.col, {"_id": property_id, "rev": rev}, update)

    async def delist(self, property_id: int, now, hidden_reason: str | None = None) -> dict | None:
        """Unlisted. By its agent, an admin or a moderator (no `hidden_reason`): a deliberate unlisting, which
        also ends a hiding (listing_hidden_reason below), so that listing stays unlisted when its agent comes back.
        With `hidden_reason` (the agent's account was deactivated): only a listing still listed, marked so the
        reactivation lists exactly those again (relist with the same reason)."""
        if hidden_reason is None:
            return await update_then_get(
                self.col, {"_id": property_id},
                {"$set": {"is_active": False, "delisted_at": now, "updated_at": now}, "$unset": {"hidden_reason": ""},
                 "$inc": {"rev": 1}})
        return await update_then_get(
            self.col, {"_id": property_id, "is_active": {"$ne": False}},
            {"$set": {"is_active": False, "hidden_reason": hidden_reason, "delisted_at": now, "updated_at": now}, "$inc": {"rev": 1}})

    async def relist(self, property_id: int, now, also: dict | None = None, hidden_reason: str | None = None) -> dict | None:
        """Listed again, only if it is unlisted and still available (never a sold or rented one); `also`: more fields
        set in the same write (the saved-search alerts' marker). With `hidden_reason`: only a listing hidden for that
        reason, whatever its status (it is put back as it was: listed, and rented or sold if a contract holds it)."""
        flt = {"_id": property_id, "is_active": False}
        flt.update({"status": "available"} if hidden_reason is None else {"hidden_reason": hidden_reason})
        return await update_then_get(
            self.col, flt,
            {"$set": {"is_active": True, "relisted_at": now, "updated_at": now, **(also or {})},
             "$unset": {"delisted_at": "", "hidden_reason": ""}, "$inc": {"rev": 1}})

    async def agent_listing_ids(self, agent_id: int, *, hidden_reason: str | None = None, limit: int = 100) -> list[int]:
        """Up to `limit` of an agent's listings still listed (or, with `hidden_reason`, hidden for it), whatever
        their status. On index agent_newest, with the state as a second `$match`: one `find` with it beside
        agent_id (or beside the search indexes' (status, facets)) is a collection scan on the embedded database."""
        pipeline = self.agent_listing_pipeline(agent_id, hidden_reason=hidden_reason, limit=limit)
        return [d["_id"] for d in await (await self.col.aggregate(pipeline)).to_list()]

    @staticmethod
    def agent_listing_pipeline(agent_id: int, *, hidden_reason: str | None = None, limit: int = 100) -> list[dict]:
        cond = {"is_active": {"$ne": False}} if hidden_reason is None else {"hidden_reason": hidden_reason}
        return [{"$match": {"agent_id": agent_id}}, {"$match": cond}, {"$limit": limit}, {"$project": {"_id": 1}}]

    async def agent_page(self, agent_id: int, page: PageQuery, serialize, *, status: str | None = None,
                         listed: bool | None = None) -> dict:
        """One page of an agent's listings, newest first, whatever their state; `status` and `listed` narrow it
        (residual conditions over the agent's listings: index `agent_newest` serves the rest)."""
        residual: dict = {}
        if status is not None:
            residual["status"] = status
        if listed is not None:
            residual["is_active"] = {"$ne": False} if listed else False  # a listing without the field is listed
        return await paginate(self.col, {"agent_id": agent_id}, self.MINE_SORT, page, serialize, residual=residual)

    # ---- status, driven by contracts ---------------------------------------
    async def take(self, property_id: int, new_status: str, contract_id: int, now) -> dict | None:
        """available → rented/sold, only if still available and listed. The one gate that
        makes two contracts on one property unable to both become active."""
        return await update_then_get(
            self.col, {"_id": property_id, "status": "available", "is_active": True},
            {"$set": {"status": new_status, "contract_id": contract_id, "updated_at": now}})

    async def release(self, property_id: int, contract_id: int, now) -> dict | None:
        """Back to available, only if it is still held by this contract (idempotent)."""
        return await update_then_get(
            self.col, {"_id": property_id, "contract_id": contract_id},
            {"$set": {"status": "available", "updated_at": now}, "$unset": {"contract_id": ""}})

    # ---- images ------------------------------------------------------------
    async def push_image(self, property_id: int, image: dict, max_images: int, state: dict) -> dict | None:
        """Append an image unless the listing already has `max_images` or is no longer in `state` (the conditions
        the caller checked, e.g. listed). The count is part of the update's filter, so concurrent uploads can
        never exceed it."""
        doc = await update_then_get(
            self.col, {**state, "_id": property_id, f"images.{max_images - 1}": {"$exists": False}},
            {"$push": {"images": image}})
        if doc is not None:
            doc = await self.ensure_primary(property_id) or doc
        return doc

    async def ensure_primary(self, property_id: int) -> dict | None:
        """If images exist but none is primary, the first one becomes primary (atomic)."""
        doc = await update_then_get(
            self.col, {"_id": property_id, "images.0": {"$exists": True}, "images.is_primary": {"$ne": True}},
            {"$set": {"images.0.is_primary": True}})
        return doc or await self.get(property_id)

    async def set_primary(self, property_id: int, image_id: int, now) -> dict | None:
        """Exactly one primary: one pipeline update sets this image's flag and clears the others."""
        return await update_then_get(
            self.col, {"_id": property_id, "images.id": image_id},
            [{"$set": {"updated_at": now, "images": {"$map": {"input": "$images", "as": "img", "in": {
                "$mergeObjects": ["$$img", {"is_primary": {"$eq": ["$$img.id", image_id]}}]}}}}}])

    async def pull_image(self, property_id: int, image_id: int) -> dict | None:
        """Remove one image; returns the document as it was before (to find the file to delete)."""
        return await get_then_update(self.col, {"_id": property_id, "images.id": image_id}, {"$pull": {"images": {"id": image_id}}})

    # ---- search ------------------------------------------------------------
    def pipelines(self, plan: SearchPlan, now):
        return self.finder.pipelines(plan, now)

    async def search(self, plan: SearchPlan, now, serialize, trace: list | None = None) -> dict:
        return await search_featured_first(self.finder, plan, now, serialize, trace=trace)

    async def apply_bump(self, property_id: int, promotion_id: int, now, keep: int = 50) -> dict | None:
        """A paid bump: the listing moves up "newest" once per promotion (its id joins `promotion_ids`; None
        when it is there already). Facets do not change, so no revision is named or taken: concurrent bumps
        and edits never make each other retry, and `$max` keeps the latest of racing bumps."""
        return await update_then_get(
            self.col, {"_id": property_id, "promotion_ids": {"$ne": promotion_id},
                       "withdrawn_promotion_ids": {"$ne": promotion_id}},  # refunded before it was applied: never
            {"$max": {"newest_at": now, "bumped_at": now}, "$push": {"promotion_ids": {"$each": [promotion_id], "$slice": -keep}}})

    async def featured_over(self, now, limit: int = 100) -> list[dict]:
        """Listings whose featured days ran out by `now` (the promotions job ends them)."""
        return await self.col.find({"featured_until": {"$lte": now}}, limit=limit).to_list()


class FavouriteStore:
    INDEXES = [
        IndexModel([("user_id", ASCENDING), ("property_id", ASCENDING)], unique=True, name="user_property_unique"),
        IndexModel([("user_id", ASCENDING), ("_id", DESCENDING)], name="user_newest"),
    ]
    SORT = [("_id", DESCENDING)]

    def __init__(self, db, ids):
        self.col = db["favourites"]
        self.ids = ids

    async def ensure_indexes(self):
        await self.col.create_indexes(self.INDEXES)

    async def add(self, user_id: int, property_id: int, now) -> dict:
        doc = {"_id": await self.ids.next("favourites"), "user_id": user_id, "property_id": property_id, "created_at": now}
        try:
            await self.col.insert_one(doc)
        except DuplicateKeyError:
            raise Conflict("This property is already in your favourites", "already_favourite")
        return doc

    async def remove(self, user_id: int, property_id: int) -> bool:
        return (await self.col.delete_one({"user_id": user_id, "property_id": property_id})).deleted_count == 1

    async def page(self, user_id: int, page: PageQuery) -> dict:
        return await paginate(self.col, {"user_id": user_id}, self.SORT, page, lambda d: d)
