"""The `properties` and `favourites` collections, and how a search runs on them.

How a search uses the indexes
-----------------------------
The embedded database plans a query from its top-level fields only: it walks an
index when the filter is exactly "equality fields + at most one range field" that
form the index's leading keys (or a geo operator on a 2dsphere field), and it
never stops an index walk at a LIMIT — every candidate the index yields is
fetched, matched, sorted in memory, then cut. So a search is built as:

1. A *driver* `$match` that is exactly index-shaped:
   `{status, facets: <one facet>, <sort key>: <range>}` on the compound indexes
   `(status, facets, created_at, _id)` / `(status, facets, price_minor, _id)`,
   or `{geo: {$geoWithin: ...}, status}` on the 2dsphere index.
   `facets` is a small multikey array per listing: `"*"`, `"l:rent"`,
   `"t:apartment"`, `"l:rent|t:apartment"`, `"a:<agent id>"` and `"w:<prefix>"`
   for each location word prefix. One facet picks the most selective candidate
   set the request allows (agent > location word > listing+property type > all).
2. A residual `$match` for every other filter (bedroom_min, flags, more location
   words, price when sorting by date, is_active) and the keyset cursor's `$or`.
3. `$sort` on the page's sort key + `_id`, `$limit` page size + 1.

Because nothing cuts an index walk at the limit, the driver's sort-key range is
walked in *slices* that grow 4x each time (1 day, 4 days, ... of created_at; or
price ranges growing 4x) until a page is full. Slices are disjoint and ordered,
so concatenating their results is the page; a page costs about as many document
reads as it returns instead of every available listing. (MongoDB proper would
walk the same compound index in order; the slices cost it nothing but a few
round trips on sparse results.)

Near a point: the embedded database's 2dsphere walk costs time in proportion to
the whole collection (measured: ~2 s per query at 20k listings, whatever the
radius), so `near=` is driven by the same compound indexes instead. Each listing
with a position carries grid-cell facets `"g<k>:<row>:<col>"`, one per level of
a lat/lng grid whose cells are 0.02° x 4^k wide (k = 0..4, about 2 km to 570
km). A search picks the finest level at which the circle's bounding box touches
at most 4 cells and runs one driver per cell (`{status, facets: <cell>, <sort
key>: <slice>}`), merging them in sort order; the exact `$geoWithin
$centerSphere` is a residual match on those few candidates. A circle no level
covers with 4 cells (over a pole or the antimeridian) walks the plain slices with
the same residual. The 2dsphere index stays: it refuses malformed points on
write, and a real MongoDB can serve ad-hoc geo queries from it.

Location text: the database has no text index, and an unanchored regex (or
even an anchored one here) is a collection scan. Instead each location word
contributes its prefixes of 3..20 characters (shorter words: the whole word) to
`facets`, so "lekk" finds "Lekki Phase 1" through an ordinary multikey index.
"""
from __future__ import annotations

import asyncio
import logging
import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from pymongo import ASCENDING, DESCENDING, GEOSPHERE, IndexModel, UpdateOne
from pymongo.errors import DuplicateKeyError

from sheda_rt.database.writes import get_then_update, update_then_get

from sheda_rt.errors import Conflict
from sheda_rt.pagination import PageQuery, after_filter, decode_cursor, encode_cursor, paginate
from sheda_rt.errors import ValidationFailed

log = logging.getLogger("sheda.listings")

EARTH_RADIUS_KM = 6378.1
PREFIX_MIN, PREFIX_MAX = 3, 20
_WORD = re.compile(r"[^\W_]+")

SORTS: dict[str, list[tuple[str, int]]] = {
    "newest": [("created_at", DESCENDING), ("_id", DESCENDING)],
    "price_asc": [("price_minor", ASCENDING), ("_id", ASCENDING)],
    "price_desc": [("price_minor", DESCENDING), ("_id", DESCENDING)],
}

# Slice walking bounds (see module docstring).
DATE_FIRST_SLICE = timedelta(days=1)
DATE_FLOOR = datetime(2000, 1, 1, tzinfo=timezone.utc)
PRICE_BASE = 100_000  # kobo: the first ascending slice ends at 4 x max(start, ₦1,000)
PRICE_CEILING = 100_000_000_000_000  # kobo: ₦1 trillion, the largest accepted price
GROWTH = 4

# Geo grid levels (see module docstring): cell sizes in degrees.
GEO_CELL_DEGREES = (0.02, 0.08, 0.32, 1.28, 5.12)
GEO_MAX_CELLS = 4
KM_PER_DEGREE = math.pi * EARTH_RADIUS_KM / 180


def location_words(text: str) -> list[str]:
    return _WORD.findall((text or "").lower())


def word_facet(word: str) -> str:
    """The facet a typed word looks up: its first 20 characters (a stored prefix or whole word)."""
    return "w:" + word[:PREFIX_MAX]


def geo_cell(level: int, lat: float, lng: float) -> str:
    size = GEO_CELL_DEGREES[level]
    return f"g{level}:{math.floor(lat / size)}:{math.floor(lng / size)}"


def geo_cells_covering(lat: float, lng: float, radius_km: float) -> list[str] | None:
    """The grid cells (at most GEO_MAX_CELLS, at the finest level that manages it) that
    together contain every point within radius_km of (lat, lng); None when no level does."""
    delta = radius_km / KM_PER_DEGREE * 1.01  # the cap's angular radius, with a margin for rounding
    if abs(lat) + delta >= 90:
        return None
    ratio = math.sin(math.radians(delta)) / math.cos(math.radians(lat))
    if ratio >= 1:
        return None
    dlng = math.degrees(math.asin(ratio)) * 1.01  # the cap's widest longitude offset
    if lng - dlng < -180 or lng + dlng > 180:
        return None
    for level, size in enumerate(GEO_CELL_DEGREES):
        rows = range(math.floor((lat - delta) / size), math.floor((lat + delta) / size) + 1)
        cols = range(math.floor((lng - dlng) / size), math.floor((lng + dlng) / size) + 1)
        if len(rows) * len(cols) <= GEO_MAX_CELLS:
            return [f"g{level}:{r}:{c}" for r in rows for c in cols]
    return None


def facets_for(doc: dict) -> list[str]:
    lt, pt = doc["listing_type"], doc["property_type"]
    out = {"*", f"l:{lt}", f"t:{pt}", f"l:{lt}|t:{pt}", f"a:{doc['agent_id']}"}
    point = (doc.get("geo") or {}).get("coordinates")
    if point:
        lng, lat = point
        out.update(geo_cell(level, lat, lng) for level in range(len(GEO_CELL_DEGREES)))
    for word in location_words(doc.get("location", "")):
        if len(word) < PREFIX_MIN:
            out.add("w:" + word)
        else:
            for n in range(PREFIX_MIN, min(len(word), PREFIX_MAX) + 1):
                out.add("w:" + word[:n])
    return sorted(out)


@dataclass
class SearchPlan:
    """What the service decided; the store turns it into pipelines."""

    status: str
    sort: str
    limit: int
    facet: str = "*"
    near: tuple[float, float, float] | None = None  # lat, lng, radius_km
    price_min: int | None = None  # kobo, inclusive
    price_max: int | None = None
    residual: dict = field(default_factory=dict)
    cursor: str | None = None


class PropertyStore:
    INDEXES = [
        IndexModel([("status", ASCENDING), ("facets", ASCENDING), ("created_at", DESCENDING), ("_id", DESCENDING)], name="search_newest"),
        IndexModel([("status", ASCENDING), ("facets", ASCENDING), ("price_minor", ASCENDING), ("_id", ASCENDING)], name="search_price"),
        # The version is spelled out so re-creating the index at the next start is a no-op, not a spec conflict.
        IndexModel([("geo", GEOSPHERE)], name="search_geo", **{"2dsphereIndexVersion": 3}),
    ]

    # Bump when facets_for changes: listings stored before are re-faceted once at startup.
    FACETS_VERSION = 2  # 2: geo grid cells

    def __init__(self, db, ids):
        self.col = db["properties"]
        self.meta = db["meta"]
        self.ids = ids

    async def ensure_indexes(self):
        await self.col.create_indexes(self.INDEXES)
        await self.refacet_if_stale()

    async def refacet_if_stale(self, batch: int = 1000) -> int:
        """Recompute `facets` of every listing when they were made by an older facets_for.
        Idempotent (facets are a function of the document), so processes starting together
        may both run it; each write names the revision it read, so an edit racing it (which
        recomputes facets itself) is never overwritten with facets of the older fields."""
        marker = await self.meta.find_one({"_id": "properties.facets"})
        if marker is not None and marker.get("version", 0) >= self.FACETS_VERSION:
            return 0
        fields = {"listing_type": 1, "property_type": 1, "agent_id": 1, "location": 1, "geo": 1, "rev": 1}
        done, last = 0, None
        while True:
            flt = {"_id": {"$gt": last}} if last is not None else {}
            docs = await self.col.find(flt, projection=fields, sort=[("_id", ASCENDING)], limit=batch).to_list()
            if not docs:
                break
            updates = []
            for d in docs:
                try:
                    updates.append(UpdateOne({"_id": d["_id"], "rev": d.get("rev")}, {"$set": {"facets": facets_for(d)}}))
                except (KeyError, TypeError, ValueError):  # not a listing this code wrote: leave it, never block a start
                    log.warning("listing %r has no usable listing fields; facets left as they are", d["_id"])
            if updates:
                await self.col.bulk_write(updates, ordered=False)
            done += len(docs)
            last = docs[-1]["_id"]
        try:
            await self.meta.update_one({"_id": "properties.facets"}, {"$max": {"version": self.FACETS_VERSION}}, upsert=True)
        except DuplicateKeyError:  # another process's upsert won; it wrote the same version
            pass
        return done

    # ---- documents ---------------------------------------------------------
    async def insert(self, doc: dict) -> dict:
        doc = dict(doc, _id=await self.ids.next("properties"), rev=1, facets=facets_for(doc))
        await self.col.insert_one(doc)
        return doc

    async def insert_many(self, docs: list[dict]) -> list[dict]:
        """Bulk load (imports, the benchmark): one id reservation and one insert for the batch."""
        ids = await self.ids.reserve("properties", len(docs))
        out = [dict(doc, _id=i, rev=1, facets=facets_for(doc)) for doc, i in zip(docs, ids)]
        if out:
            await self.col.insert_many(out, ordered=False)
        return out

    async def get(self, property_id: int) -> dict | None:
        return await self.col.find_one({"_id": property_id})

    async def get_many(self, ids) -> dict[int, dict]:
        ids = list(set(ids))
        if not ids:
            return {}
        return {d["_id"]: d async for d in self.col.find({"_id": {"$in": ids}})}

    async def update_if_rev(self, property_id: int, rev: int, merged: dict, changes: dict, unset: list[str]) -> dict | None:
        """Apply `changes` only if nobody changed the listing since we read revision `rev`
        (facets are recomputed from the merged document, so they must not go stale)."""
        update: dict = {"$set": dict(changes, facets=facets_for(merged)), "$inc": {"rev": 1}}
        if unset:
            update["$unset"] = {k: "" for k in unset}
        return await update_then_get(self.col, {"_id": property_id, "rev": rev}, update)

    async def delist(self, property_id: int, now) -> dict | None:
        return await update_then_get(
            self.col, {"_id": property_id}, {"$set": {"is_active": False, "delisted_at": now, "updated_at": now}, "$inc": {"rev": 1}})

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
    async def push_image(self, property_id: int, image: dict, max_images: int) -> dict | None:
        """Append an image unless the listing already has `max_images`. The count is part of
        the update's filter, so concurrent uploads can never exceed it."""
        doc = await update_then_get(
            self.col, {"_id": property_id, "is_active": True, f"images.{max_images - 1}": {"$exists": False}},
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
    def _cursor_after(self, plan: SearchPlan) -> tuple[Any, int] | None:
        if not plan.cursor:
            return None
        tag, value, last_id = decode_cursor(plan.cursor, 3)
        kind = datetime if plan.sort == "newest" else int
        if tag != plan.sort or not isinstance(value, kind) or isinstance(value, bool) or not isinstance(last_id, int):
            raise ValidationFailed.single("cursor", "belongs to a different search order; start again without it")
        if kind is int and not 0 <= value <= PRICE_CEILING:  # the slice arithmetic adds to it
            raise ValidationFailed.single("cursor", "is not a cursor this API issued")
        return value, last_id

    def _slices(self, plan: SearchPlan, after_value, now: datetime):
        """Disjoint ranges of the sort key, in sort order, each 4x wider than the last;
        the final one is open-ended. Yields a range dict, or None for "no bound"."""
        if plan.sort == "newest":
            hi = after_value
            span = DATE_FIRST_SLICE
            while True:
                lo = (hi or now) - span
                if lo < DATE_FLOOR:
                    yield {"$lte": hi} if hi is not None else None
                    return
                yield {"$gt": lo, **({"$lte": hi} if hi is not None else {})}
                hi, span = lo, span * GROWTH
        # Price bounds that are inclusive at the top are written `$lt: v + 1` (exact for kobo integers):
        # the embedded database's compound range scan stops *before* keys equal to a `$lte` bound on a
        # non-final ascending index field (measured; `$gte`/`$gt`/`$lt` are exact). On the descending
        # created_at field the same happens to `$gte`, which the date slices never use.
        elif plan.sort == "price_asc":
            bounds = [b for b in (after_value, plan.price_min) if b is not None]
            lo = max(bounds) if bounds else None  # inclusive
            cap = plan.price_max  # inclusive
            while True:
                hi = max(lo or 0, PRICE_BASE) * GROWTH  # exclusive
                if (cap is not None and hi > cap) or hi > PRICE_CEILING:
                    rng = {**({"$gte": lo} if lo is not None else {}), **({"$lt": cap + 1} if cap is not None else {})}
                    yield rng or None
                    return
                yield {"$lt": hi, **({"$gte": lo} if lo is not None else {})}
                lo = hi
        else:  # price_desc
            bounds = [b for b in (after_value, plan.price_max) if b is not None]
            hi = min(bounds) if bounds else None  # inclusive
            floor = plan.price_min  # inclusive
            while True:
                lo = PRICE_CEILING // GROWTH if hi is None else hi // GROWTH  # exclusive
                if lo < PRICE_BASE or (floor is not None and lo < floor):
                    rng = {**({"$lt": hi + 1} if hi is not None else {}), **({"$gte": floor} if floor is not None else {})}
                    yield rng or None
                    return
                yield {"$gt": lo, **({"$lt": hi + 1} if hi is not None else {})}
                hi = lo

    def pipelines(self, plan: SearchPlan, now: datetime):
        """The probes of a search, lazily, in sort order: each is a builder that takes the
        number of items still wanted and returns the pipelines to run together (one per
        driver facet: one, or up to GEO_MAX_CELLS for a near= search)."""
        sort = SORTS[plan.sort]
        key = sort[0][0]
        after = self._cursor_after(plan)
        residual = dict(plan.residual)
        facets = [plan.facet]
        if plan.near is not None:
            lat, lng, radius_km = plan.near
            within = {"geo": {"$geoWithin": {"$centerSphere": [[lng, lat], radius_km / EARTH_RADIUS_KM]}}}
            residual = {"$and": [residual, within]} if residual else within
            cells = geo_cells_covering(lat, lng, radius_km)
            if cells is not None:
                if plan.facet != "*":  # the request's own facet becomes a residual condition
                    residual = {"$and": [residual, {"facets": plan.facet}]}
                facets = cells
        if after is not None:
            residual = {"$and": [residual, after_filter(sort, list(after))]} if residual else after_filter(sort, list(after))
        sort_stage = {"$sort": dict(sort)}
        if plan.sort == "newest" and (plan.price_min is not None or plan.price_max is not None):
            price = {**({"$gte": plan.price_min} if plan.price_min is not None else {}),
                     **({"$lte": plan.price_max} if plan.price_max is not None else {})}
            residual = {"$and": [residual, {"price_minor": price}]} if residual else {"price_minor": price}
        for rng in self._slices(plan, after[0] if after else None, now):
            drivers = []
            for facet in facets:
                driver = {"status": plan.status, "facets": facet}
                if rng is not None:
                    driver[key] = rng
                drivers.append([{"$match": driver}] + ([{"$match": residual}] if residual else []))
            yield (lambda drivers: lambda need: [stages + [sort_stage, {"$limit": need}] for stages in drivers])(drivers)

    async def search(self, plan: SearchPlan, now: datetime, serialize, trace: list | None = None) -> dict:
        want = plan.limit + 1
        key, direction = SORTS[plan.sort][0]
        docs: list[dict] = []
        for build in self.pipelines(plan, now):
            pipelines = build(want - len(docs))
            if trace is not None:
                trace.extend(pipelines)
            if len(pipelines) == 1:
                found = await (await self.col.aggregate(pipelines[0])).to_list()
            else:  # a slice over several grid cells: run them together, merge in sort order
                parts = await asyncio.gather(*(self._run(p) for p in pipelines))
                found = sorted((d for part in parts for d in part), key=lambda d: (d[key], d["_id"]), reverse=direction < 0)
                found = found[: want - len(docs)]
            docs.extend(found)
            if len(docs) >= want:
                break
        more = len(docs) > plan.limit
        docs = docs[: plan.limit]
        next_cursor = None
        if more and docs:
            last = docs[-1]
            next_cursor = encode_cursor([plan.sort, last[SORTS[plan.sort][0][0]], last["_id"]])
        return {"items": [serialize(d) for d in docs], "next_cursor": next_cursor}

    async def _run(self, pipeline: list) -> list[dict]:
        return await (await self.col.aggregate(pipeline)).to_list()


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
