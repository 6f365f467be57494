"""Faceted keyset search over compound indexes, shared by listings and builder projects.

How a search uses the indexes
-----------------------------
The embedded database plans a query from its top-level fields only: it walks an
index when the filter is exactly "equality fields + at most one range field" that
form the index's leading keys (or a geo operator on a 2dsphere field), and it
never stops an index walk at a LIMIT — every candidate the index yields is
fetched, matched, sorted in memory, then cut. So a search is built as:

1. A *driver* `$match` that is exactly index-shaped:
   `{<state>, facets: <one facet>, <sort key>: <range>}` on compound indexes
   `(<state>, facets, <date>, _id)` / `(<state>, facets, <price>, _id)`.
   `facets` is a small multikey array per document (`"*"`, type and owner tags,
   `"w:<prefix>"` for each location word prefix, grid cells). One facet picks the
   most selective candidate set the request allows; the collection's owner decides
   which facets exist and which one drives.
2. A residual `$match` for every other filter and the keyset cursor's `$or`.
3. `$sort` on the page's sort key + `_id`, `$limit` page size + 1.

Because nothing cuts an index walk at the limit, the driver's sort-key range is
walked in *slices* that grow 4x each time (1 day, 4 days, ... of the date; or
price ranges growing 4x) until a page is full. Slices are disjoint and ordered,
so concatenating their results is the page; a page costs about as many document
reads as it returns instead of every matching document. (MongoDB proper would
walk the same compound index in order; the slices cost it nothing but a few
round trips on sparse results.)

Near a point: the embedded database's 2dsphere walk costs time in proportion to
the whole collection (measured: ~2 s per query at 20k listings, whatever the
radius), so `near=` is driven by the same compound indexes instead. Each document
with a position carries grid-cell facets `"g<k>:<row>:<col>"`, one per level of
a lat/lng grid whose cells are 0.02° x 4^k wide (k = 0..4, about 2 km to 570
km). A search picks the finest level at which the circle's bounding box touches
at most 4 cells and runs one driver per cell, merging them in sort order; the
exact `$geoWithin $centerSphere` is a residual match on those few candidates. A
circle no level covers with 4 cells (over a pole or the antimeridian) walks the
plain slices with the same residual.

Location text: the database has no text index, and an unanchored regex (or
even an anchored one here) is a collection scan. Instead each location word
contributes its prefixes of 3..20 characters (shorter words: the whole word) to
`facets`, so "lekk" finds "Lekki Phase 1" through an ordinary multikey index.
Words are folded as keywords are (below), stored and typed alike, so "bogota"
finds "Bogotá", "istanbul" finds "İstanbul" and "strasse" finds "Straße"; for
plain ASCII the folded word is the lowercased one. Location words and keywords
also read the Turkish dotless "ı" as "i" ("kadikoy" finds "Kadıköy"): a letter,
not an accent, but one people type as "i".

Keywords (`q=`): each whole word of a document's text fields (for listings: title,
location, description), folded (NFKD with accents dropped, then casefolded, so
"Ìkòyí" and "IKOYI" are both "ikoyi"; "ı" as "i"), is a facet `"k:<word>"`, minus a short list
of stop words, at most KEYWORD_MAX_FACETS per document in field order: every facet
is one entry in each compound index, ~0.2 ms of the embedded database's one core
per entry per write, so a 5,000-character description must not cost hundreds.
A query's longest word drives (the usual proxy for the rarest), the others are a
residual `facets: {$all: [...]}`.

Map bounds (`bbox=`): like `near=`, the finest grid level at which the box touches
at most GEO_MAX_CELLS cells drives, one pipeline per cell, and the exact box is a
residual range on the point's coordinates (`geo.coordinates.0/1`, planar, the
same on both engines). Boxes across the antimeridian are refused by the query
models (send two searches).
"""
from __future__ import annotations

import asyncio
import logging
import math
import random
import re
import time
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from bson import Int64
from pymongo import ASCENDING, DESCENDING, UpdateOne
from pymongo.errors import BulkWriteError, DuplicateKeyError

from sheda_rt.errors import FieldError, ValidationFailed
from sheda_rt.pagination import after_filter, decode_cursor, encode_cursor

EARTH_RADIUS_KM = 6378.1
PREFIX_MIN, PREFIX_MAX = 3, 20
_WORD = re.compile(r"[^\W_]+")

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


def sorts_for(date_field: str = "created_at", price_field: str = "price_minor") -> dict[str, list[tuple[str, int]]]:
    """The three orders a faceted search offers, over one collection's date and price fields."""
    return {
        "newest": [(date_field, DESCENDING), ("_id", DESCENDING)],
        "price_asc": [(price_field, ASCENDING), ("_id", ASCENDING)],
        "price_desc": [(price_field, DESCENDING), ("_id", DESCENDING)],
    }


#: Letters that are letters of their own, not accents (fold keeps them), typed as the plain letter by whoever
#: writes the place's name: Turkish dotless "ı" ("kadikoy" for "Kadıköy"; "İ" folds to "i" already). Location
#: words and keywords (q=) alike; fold itself keeps it (guided area ids and category keys are stored folded).
_TYPED_LETTERS = str.maketrans({"ı": "i"})


def location_words(text: str) -> list[str]:
    """The words of a location, folded (see fold, and "ı" as "i"): a stored location's and a typed one's alike."""
    return _WORD.findall(fold(text).translate(_TYPED_LETTERS))


def word_facet(word: str) -> str:
    """The facet a typed word looks up: its first 20 characters (a stored prefix or whole word)."""
    return "w:" + word[:PREFIX_MAX]


def location_facets(text: str) -> set[str]:
    """The word-prefix facets a stored location contributes (see "Location text" above)."""
    out: set[str] = set()
    for word in location_words(text):
        if len(word) < PREFIX_MIN:
            out.add("w:" + word)
        else:
            for n in range(PREFIX_MIN, min(len(word), PREFIX_MAX) + 1):
                out.add("w:" + word[:n])
    return out


# Keyword facets (see "Keywords" above).
KEYWORD_MAX_FACETS = 64
#: Words too common to narrow anything; never stored, ignored in a query.
STOP_WORDS = frozenset("""a an and are as at be by for from has have in is it its of on or the this to with""".split())


def fold(text: str) -> str:
    """Case- and accent-insensitive form of text: casefold, NFKD, combining marks dropped."""
    return "".join(c for c in unicodedata.normalize("NFKD", (text or "").casefold()) if not unicodedata.combining(c))


def keyword_words(text: str) -> list[str]:
    """The searchable words of text (folded, "ı" as "i", stop words dropped), in order, repeats kept."""
    return [w for w in _WORD.findall(fold(text).translate(_TYPED_LETTERS)) if w not in STOP_WORDS]


def keyword_facet(word: str) -> str:
    """The facet of one folded word (long words are cut at 20 characters, stored and queried alike)."""
    return "k:" + word[:PREFIX_MAX]


def keyword_facets(*texts: str) -> set[str]:
    """The keyword facets of a document's text fields, most important field first; at most
    KEYWORD_MAX_FACETS distinct words (later words of a long description are not indexed)."""
    out: dict[str, None] = {}
    for text in texts:
        for word in keyword_words(text):
            out.setdefault(keyword_facet(word), None)
            if len(out) >= KEYWORD_MAX_FACETS:
                return set(out)
    return set(out)


def geo_cell(level: int, lat: float, lng: float) -> str:
    size = GEO_CELL_DEGREES[level]
    return f"g{level}:{math.floor(lat / size)}:{math.floor(lng / size)}"


def geo_facets(geo: dict | None) -> set[str]:
    """The grid-cell facets of a stored GeoJSON point (none without a position)."""
    point = (geo or {}).get("coordinates")
    if not point:
        return set()
    lng, lat = point
    return {geo_cell(level, lat, lng) for level in range(len(GEO_CELL_DEGREES))}


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


def geo_cells_in_box(min_lng: float, min_lat: float, max_lng: float, max_lat: float) -> list[str] | None:
    """The grid cells (at most GEO_MAX_CELLS, finest level that manages it) holding every
    point of the box; None when no level does. Exact: a point's cell is floor(coordinate /
    size), which is monotonic, so a point inside the box lies in one of these cells."""
    for level, size in enumerate(GEO_CELL_DEGREES):
        rows = range(math.floor(min_lat / size), math.floor(max_lat / size) + 1)
        cols = range(math.floor(min_lng / size), math.floor(max_lng / size) + 1)
        if len(rows) * len(cols) <= GEO_MAX_CELLS:
            return [f"g{level}:{r}:{c}" for r in rows for c in cols]
    return None


def parse_bbox(value: str | None) -> str | None:
    """A `bbox=minLng,minLat,maxLng,maxLat` query value, checked and normalised."""
    if value is None:
        return value
    parts = value.split(",")
    try:
        min_lng, min_lat, max_lng, max_lat = (float(p) for p in parts)
    except ValueError:
        raise ValueError("must be 'minLng,minLat,maxLng,maxLat', e.g. 3.35,6.40,3.50,6.47") from None
    if not all(-180 <= x <= 180 for x in (min_lng, max_lng)) or not all(-90 <= y <= 90 for y in (min_lat, max_lat)):
        raise ValueError("longitudes must be within ±180 and latitudes within ±90")
    if min_lat > max_lat:
        raise ValueError("minLat must not exceed maxLat")
    if min_lng > max_lng:
        raise ValueError("minLng exceeds maxLng: boxes across the antimeridian are not supported; send two searches, "
                         "one on each side of it")
    return f"{min_lng},{min_lat},{max_lng},{max_lat}"


def parse_near(value: str | None) -> str | None:
    """A `near=lat,lng` query value, checked and normalised (for the query models' validators)."""
    if value is None:
        return value
    parts = value.split(",")
    try:
        lat, lng = (float(p) for p in parts)
    except ValueError:
        raise ValueError("must be 'lat,lng', e.g. 6.4474,3.4553") from None
    if not (-90 <= lat <= 90 and -180 <= lng <= 180):
        raise ValueError("lat must be within ±90 and lng within ±180")
    return f"{lat},{lng}"


def check_radius(query) -> None:
    """A query model's `radius_km` only with its `near`: alone it would be silently ignored, and a client
    that forgot near= would get everything instead of a circle (a 422 naming radius_km)."""
    if query.near is None and "radius_km" in query.model_fields_set:
        raise FieldError("radius_km", "radius_km needs near=lat,lng: it is the radius around that point")


def _without_facet(cond, facet: str):
    """`cond` without `facet` in its `facets: {$all: [...]}` tests (top level and inside `$and`), for
    documents known to carry `facet` (the driver's): the same documents match."""
    if not isinstance(cond, dict):
        return cond
    out = {}
    for k, v in cond.items():
        if k == "facets" and isinstance(v, dict) and set(v) == {"$all"} and isinstance(v["$all"], list):
            rest = [f for f in v["$all"] if f != facet]
            if rest:
                out[k] = {"$all": rest}
        elif k == "$and" and isinstance(v, list):
            out[k] = [_without_facet(c, facet) for c in v]
        else:
            out[k] = v
    return out


def _without_facets(cond):
    """`cond` without its tests of `facets` (at the top level of a condition dict and inside
    `$and`): a filter every document matching `cond` also matches, minus the array scans."""
    if isinstance(cond, dict):
        out = {k: ([_without_facets(c) for c in v] if k == "$and" else v) for k, v in cond.items() if k != "facets"}
        if "$and" in out:
            out["$and"] = [c for c in out["$and"] if c] or None
            if out["$and"] is None:
                del out["$and"]
        return out
    return cond


@dataclass
class SearchPlan:
    """What a service decided; FacetedSearch turns it into pipelines."""

    status: str  # the value of the collection's driving state field
    sort: str
    limit: int
    facet: str = "*"
    near: tuple[float, float, float] | None = None  # lat, lng, radius_km
    bbox: tuple[float, float, float, float] | None = None  # min_lng, min_lat, max_lng, max_lat
    price_min: int | None = None  # kobo, inclusive
    price_max: int | None = None
    residual: dict = field(default_factory=dict)
    cursor: str | None = None
    # Keyword facets every result carries (also in `residual`): with postings, their
    # intersection may be fetched by id instead of walking a driver (FacetedSearch.search).
    keywords: tuple[str, ...] = ()
    # Prepended to every driver facet: a segment of documents carrying prefixed copies of their
    # facets (featured listings first: sheda_rt/promotions/featured.py).
    facet_prefix: str = ""
    # One pipeline per driver over its whole range instead of growing slices: for a segment the
    # caller knows holds few documents (featured listings), where each empty slice is a round trip.
    unsliced: bool = False
    # Ids the caller knows include every match (its own index in memory: the guided catalog's
    # listings of one area, kind and budget), fetched by id and matched against the whole plan
    # instead of walking a driver (FacetedSearch._by_ids). A superset: ids that do not match
    # cost a read, they are never shown; a match missing from them is never shown either.
    candidates: tuple[int, ...] | None = None


class FacetStats:
    """How common each facet is, estimated from a uniform random sample of the documents.

    Why: one facet drives a search and the embedded database fetches every document in
    that facet's index range, so the rarest of a request's conditions should drive. The
    database cannot tell us cheaply (its `count` reads the whole collection), and a
    word's length says little about its rarity: "serviced pool lekki" driven by its
    longest word fetched thousands of listings (2.4 s at 20k listings), where "pool"
    or "lekki" would fetch a few hundred. So SAMPLE_SIZE random ids (the collection's
    ids are the allocator's sequence) are read by `_id` at most every MAX_AGE seconds,
    in the background of a search that has a choice to make; until then, and for a
    facet the sample never saw (rare: a good driver), callers fall back on their own
    order of preference.
    """

    SAMPLE_SIZE = 2000
    MAX_AGE = 600.0

    def __init__(self, col, max_id, *, price_field: str = "price_minor", fields: tuple[str, ...] = (), sample_size: int = SAMPLE_SIZE,
                 max_age: float = MAX_AGE, monotonic=time.monotonic):
        self.col = col
        self.price_field = price_field
        self.fields = tuple(fields)  # more fields kept per sampled document, for `estimate`
        self._docs: list[tuple[frozenset, int]] = []  # each sampled document's facets and price
        self._rows: list[dict] = []  # each sampled document's facets (a frozenset) and `fields`
        self._drawn = 0  # ids drawn (some may name no document)
        self._top = 0  # the highest id when the sample was taken
        self.max_id = max_id  # async () -> the highest id issued so far
        self.sample_size = sample_size
        self.max_age = max_age
        self._now = monotonic
        self._share: dict[str, float] | None = None
        self._taken_at: float | None = None
        self._task: asyncio.Task | None = None

    def share(self, facet: str) -> float | None:
        """The fraction of documents carrying `facet` (0.0 when the sample has none); None without a sample."""
        if self._share is None:
            return None
        return self._share.get(facet, 0.0)

    def pick(self, candidates: list[str]) -> str:
        """The rarest candidate by the sample (ties: the earlier); the first without a sample."""
        self.refresh_soon()
        if self._share is None or len(candidates) < 2:
            return candidates[0]
        return min(enumerate(candidates), key=lambda ic: (self._share.get(ic[1], 0.0), ic[0]))[1]

    def prices(self, facets: list[str]) -> list[int]:
        """Sorted prices of the sampled documents carrying any of `facets` (empty without a sample)."""
        wanted = set(facets)
        if "*" in wanted:
            return sorted(p for _, p in self._docs)
        return sorted(p for f, p in self._docs if not wanted.isdisjoint(f))

    def estimate(self, where) -> int | None:
        """How many documents satisfy `where(row)` (row: {"facets": frozenset, <fields>...}),
        scaled from the sample: the share of the ids drawn whose document satisfies it, times
        the ids issued. Exact when the sample drew every id (up to sample_size documents);
        otherwise off by about 1/sqrt(sample_size) of the total at worst. None without a sample."""
        if self._share is None:
            return None
        if not self._drawn:
            return 0
        hits = sum(1 for row in self._rows if where(row))
        return round(hits * self._top / self._drawn)

    def refresh_soon(self) -> None:
        """Start a background refresh when the sample is missing or old (never two at once)."""
        if self._task is not None and not self._task.done():
            return
        if self._taken_at is not None and self._now() - self._taken_at < self.max_age:
            return
        self._taken_at = self._now()  # also spaces out retries after a failed refresh
        self._task = asyncio.get_running_loop().create_task(self._refresh_logged())

    async def _refresh_logged(self) -> None:
        try:
            await self.refresh()
        except Exception:  # the searches keep their fallback order; the next due refresh tries again
            logging.getLogger("sheda.search").warning("facet sample failed", exc_info=True)

    async def refresh(self) -> None:
        top = await self.max_id()
        if top < 1:
            self._share, self._docs, self._rows, self._drawn, self._top, self._taken_at = {}, [], [], 0, 0, self._now()
            return
        ids = random.sample(range(1, top + 1), min(self.sample_size, top))
        counts: Counter = Counter()
        sampled: list[tuple[frozenset, int]] = []
        rows: list[dict] = []
        seen = 0
        projection = {"facets": 1, self.price_field: 1, "_id": 0, **{f: 1 for f in self.fields}}
        for i in range(0, len(ids), 200):  # the embedded database matches $in by scanning its list: chunks
            docs = await self.col.find({"_id": {"$in": ids[i:i + 200]}}, projection=projection).to_list()
            seen += len(docs)
            for d in docs:
                facets = frozenset(d.get("facets") or ())
                counts.update(facets)
                price = d.get(self.price_field)
                if isinstance(price, int) and not isinstance(price, bool):
                    sampled.append((facets, price))
                rows.append({**{f: d.get(f) for f in self.fields}, "facets": facets})
        self._share = {f: c / seen for f, c in counts.items()} if seen else {}
        self._docs, self._rows, self._drawn, self._top = sampled, rows, len(ids), top
        self._taken_at = self._now()


class FacetPostings:
    """Which documents carry each keyword facet, as bitmaps in a collection of their own.

    Why: one facet drives a search, so a request of three moderately common words (each on
    5-15% of the listings, together on 0.1%) made the embedded database fetch every listing
    carrying the rarest of them to find the few carrying all three: 3,000-7,000 documents,
    0.5-0.8 s at 100,000 listings. Its planner cannot intersect two index ranges and has no
    index-only read (even a projection of `_id` decodes each document), so the ids of the
    listings carrying every word are worked out here instead, from bitmaps: a posting
    document `{_id: "<facet>|<block>", b0..b63: int64}` holds 63 bits per int64 (the sign
    bit is left alone), one per id, for BLOCK consecutive ids. A search reads the few
    posting documents of its words by `_id` (no secondary index: the collection costs no
    index entry, and a write adds one small upsert per keyword, ~0.5 ms each on the
    embedded database), ANDs them, and fetches only those listings by `_id`, where the full
    filter (every word, state, other filters, cursor) is matched again, so a stale bit can
    only cost a fetch, never a wrong result.

    Bits are only ever set, never cleared, so writers on several processes need no order
    among themselves: a listing's bits are set before the listing is written with those
    words (a failed write leaves a bit that matches nothing), and a word an edit removed
    keeps its bit (a false candidate, filtered out). Postings are used once the `meta`
    marker says every listing stored before has been posted (`backfill`, at startup)."""

    BITS = 63
    WORDS = 64
    BLOCK = BITS * WORDS  # 4,032 ids per posting document
    FETCH_CHUNK = 50  # `_id: {$in}` chunks: the embedded database matches $in by scanning the list

    def __init__(self, col, meta, max_id, *, marker: str, prefix: str = "k:", monotonic=time.monotonic):
        self.col = col
        self.meta = meta
        self.max_id = max_id  # async () -> the highest id issued so far
        self.marker = marker
        self.prefix = prefix
        self._now = monotonic
        self._ready = False
        self._checked_at: float | None = None

    def posted(self, facets) -> list[str]:
        return [f for f in facets if f.startswith(self.prefix)]

    @classmethod
    def _slot(cls, doc_id: int) -> tuple[int, int, int]:
        block, rest = divmod(doc_id, cls.BLOCK)
        word, bit = divmod(rest, cls.BITS)
        return block, word, bit

    async def add(self, docs) -> None:
        """Set the bits of `docs` ((id, facets) pairs): one upsert per (facet, block) touched; for
        one document, one update of all its posting documents (its bit is at the same place in
        each), then, if any was missing (a word new to that block), an upsert of each."""
        docs = list(docs)
        if len(docs) == 1:
            doc_id, facets = docs[0]
            block, word, bit = self._slot(doc_id)
            keys = [f"{f}|{block}" for f in dict.fromkeys(self.posted(facets))]
            update = {"$bit": {f"b{word}": {"or": Int64(1 << bit)}}}
            if not keys or (await self.col.update_many({"_id": {"$in": keys}}, update)).matched_count == len(keys):
                return
            # Some were missing when updated; which ones is unknown once another writer may have made them
            # since (skipping those lost bits: measured), so every one is upserted: OR-ing a bit twice is harmless.
            await self._write([UpdateOne({"_id": k}, update, upsert=True) for k in keys])
            return
        masks: dict[str, dict[int, int]] = {}
        for doc_id, facets in docs:
            block, word, bit = self._slot(doc_id)
            for f in self.posted(facets):
                words = masks.setdefault(f"{f}|{block}", {})
                words[word] = words.get(word, 0) | (1 << bit)
        ops = [UpdateOne({"_id": key}, {"$bit": {f"b{w}": {"or": Int64(m)} for w, m in words.items()}}, upsert=True)
               for key, words in masks.items()]
        for i in range(0, len(ops), 1000):
            await self._write(ops[i:i + 1000])

    async def _write(self, ops: list) -> None:
        if not ops:
            return
        try:
            await self.col.bulk_write(ops, ordered=False)
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors") or []
            if not errors or any(e.get("code") != 11000 for e in errors):
                raise
            # Two writers created the same posting document at once and this upsert lost: the document
            # exists now, so the same update sets this writer's bits in it.
            await self.col.bulk_write([ops[e["index"]] for e in errors], ordered=False)

    async def disable(self) -> None:
        """Postings switched off (SEARCH_KEYWORD_POSTINGS=false): writes stop posting, so the marker
        goes; a later start with them on posts every listing again before any search uses them."""
        await self.meta.delete_one({"_id": self.marker})
        self._ready = False

    async def ready(self) -> bool:
        """Whether every stored document has been posted (checked again at most every 5 s until it is)."""
        if self._ready:
            return True
        if self._checked_at is not None and self._now() - self._checked_at < 5.0:
            return False
        self._checked_at = self._now()
        self._ready = await self.meta.find_one({"_id": self.marker}) is not None
        return self._ready

    async def backfill(self, source, batch: int = 1000) -> int:
        """Post every document of `source` (the searched collection) once, then mark the postings
        complete. Idempotent, so processes starting together may both run it. Reads by `_id $in`
        chunks over the allocator's range: the embedded database serves an `_id` range by a
        collection scan."""
        if await self.ready():
            return 0
        top = await self.max_id()
        done = 0
        for start in range(1, top + 1, batch):
            ids = list(range(start, min(start + batch, top + 1)))
            pairs = []
            for i in range(0, len(ids), self.FETCH_CHUNK):
                async for d in source.find({"_id": {"$in": ids[i:i + self.FETCH_CHUNK]}}, projection={"facets": 1}):
                    pairs.append((d["_id"], d.get("facets") or ()))
            await self.add(pairs)
            done += len(pairs)
        try:
            await self.meta.update_one({"_id": self.marker}, {"$set": {"done": True}}, upsert=True)
        except DuplicateKeyError:  # another process's upsert won
            pass
        self._ready = True
        return done

    async def slots(self, facets: list[str]) -> tuple[dict[tuple[int, int], int], int]:
        """The (block, word) -> bits of the ids carrying every facet, and the fewest ids any one
        facet is on (how many listings its best single driver would walk)."""
        top = await self.max_id()
        blocks = range(0, top // self.BLOCK + 1)
        keys = [f"{f}|{b}" for f in facets for b in blocks]
        per: dict[str, dict[tuple[int, int], int]] = {f: {} for f in facets}
        for i in range(0, len(keys), self.FETCH_CHUNK):
            async for d in self.col.find({"_id": {"$in": keys[i:i + self.FETCH_CHUNK]}}):
                facet, _, block = d["_id"].rpartition("|")
                slots = per.get(facet)
                if slots is None:
                    continue
                for name, value in d.items():
                    if name.startswith("b") and value:
                        slots[(int(block), int(name[1:]))] = int(value)
        fewest = min(sum(v.bit_count() for v in s.values()) for s in per.values())
        common = None
        for s in sorted(per.values(), key=len):
            if common is None:
                common = dict(s)
            else:
                common = {k: v & s[k] for k, v in common.items() if k in s and v & s[k]}
        return common or {}, fewest

    @classmethod
    def ids(cls, slots: dict[tuple[int, int], int]) -> list[int]:
        out = []
        for (block, word), bits in sorted(slots.items()):
            base = block * cls.BLOCK + word * cls.BITS
            while bits:
                low = bits & -bits
                out.append(base + low.bit_length() - 1)
                bits ^= low
        return out


async def refacet_once(col, meta, *, marker: str, version: int, top: int, fields: dict, facets_of, label: str,
                       before_write=None, batch: int = 1000) -> int:
    """Recompute `facets_of(doc)` for every document of `col` (ids 1..`top`, the allocator's range) when the
    `meta` document `marker` says the stored facets were made by an older version (then it records `version`);
    returns how many documents were rewritten. Only a document whose facets change is written: each facet is
    an entry in every compound index (~0.2 ms each on the embedded database), and a version that changes
    one kind of facet (e.g. location words folded: accented ones only) must not rewrite every document.
    Idempotent (facets are a function of the document), so processes starting together may both run it; each
    write names the revision it read (`rev`), so an edit racing it (which recomputes facets itself) is never
    overwritten with facets of the older fields. Reads by `_id $in` chunks over the ids, as the postings'
    backfill does (an `_id` range is a collection scan on the embedded database). `before_write(pairs)` gets
    each batch's changed (id, facets) before they are written (the keyword postings: bits before the words)."""
    found = await meta.find_one({"_id": marker})
    if found is not None and found.get("version", 0) >= version:
        return 0
    projection = {**fields, "facets": 1, "rev": 1}
    written = 0
    for start in range(1, top + 1, batch):
        ids = list(range(start, min(start + batch, top + 1)))
        docs = []
        for i in range(0, len(ids), FacetPostings.FETCH_CHUNK):
            docs += await col.find({"_id": {"$in": ids[i:i + FacetPostings.FETCH_CHUNK]}}, projection=projection).to_list()
        changed = []
        for d in docs:
            try:
                facets = facets_of(d)
            except (KeyError, TypeError, ValueError):  # not a document this code wrote: leave it, never block a start
                logging.getLogger("sheda.search").warning("%s %r has no usable fields; facets left as they are", label, d["_id"])
                continue
            if set(facets) != set(d.get("facets") or ()):
                changed.append((d, facets))
        if not changed:
            continue
        if before_write is not None:
            await before_write([(d["_id"], facets) for d, facets in changed])
        await col.bulk_write([UpdateOne({"_id": d["_id"], "rev": d.get("rev")}, {"$set": {"facets": facets}})
                              for d, facets in changed], ordered=False)
        written += len(changed)
    try:
        await meta.update_one({"_id": marker}, {"$max": {"version": version}}, upsert=True)
    except DuplicateKeyError:  # another process's upsert won; it wrote the same version
        pass
    return written


class FacetedSearch:
    """Runs SearchPlans on one collection whose documents carry `facets`, a state field
    (the drivers' equality), a date and a price (int64 kobo) field, with the two compound
    indexes `(state, facets, date, _id)` and `(state, facets, price, _id)`. With `stats`,
    a near=/bbox= search is driven by the request's own facet instead of the grid cells
    when the sample says the facet is rarer than the cells together. With `postings`, a
    plan's keywords whose listings together are few are fetched by id instead (see
    FacetPostings and `_by_ids`)."""

    def __init__(self, col, *, state_field: str = "status", date_field: str = "created_at", price_field: str = "price_minor",
                 stats: FacetStats | None = None, postings: FacetPostings | None = None):
        self.col = col
        self.state_field = state_field
        self.price_field = price_field
        self.sorts = sorts_for(date_field, price_field)
        self.stats = stats
        self.postings = postings

    def _facet_is_rarer(self, facet: str, cells: list[str]) -> bool:
        if self.stats is None or facet == "*":
            return False
        mine, theirs = self.stats.share(facet), [self.stats.share(c) for c in cells]
        return mine is not None and mine < sum(theirs)

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

    def _slices(self, plan: SearchPlan, after_value, now: datetime, facets: list[str] | None = None):
        """Disjoint ranges of the sort key, in sort order, each 4x wider than the last;
        the final one is open-ended. Yields a range dict, or None for "no bound".
        Price ranges are cut at the sampled prices of the driving facets when there is a
        sample (see _sampled_price_slices)."""
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
        elif facets and self.stats is not None and (prices := self.stats.prices(facets)):
            yield from self._sampled_price_slices(plan, after_value, prices)
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

    @staticmethod
    def _sampled_price_slices(plan: SearchPlan, after_value, prices: list[int]):
        """Price slices holding 1, 4, 16, ... sampled documents of the driving facets each.

        Why: prices are far from uniform (rents start around ₦300k), so slices growing 4x
        in *price* run empty for a while and then one slice holds a fifth of the driver's
        documents, every one of which the embedded database fetches for a page of 20
        (bbox over all of Lagos, cheapest first: 0.7 s at 20k listings). Growing in
        *sampled documents* keeps the first slices near the page size wherever the prices
        bunch up. Bounds are exclusive below / `$lt v + 1` above as in _slices."""
        from bisect import bisect_left, bisect_right

        count = 1
        if plan.sort == "price_asc":
            bounds = [b for b in (after_value, plan.price_min) if b is not None]
            lo = max(bounds) if bounds else None  # inclusive
            cap = plan.price_max  # inclusive
            while True:
                i = bisect_left(prices, lo) if lo is not None else 0
                j = i + count
                hi = prices[j] if j < len(prices) else None  # exclusive
                if hi is not None and lo is not None and hi <= lo:
                    hi = lo + 1
                if hi is None or (cap is not None and hi > cap):
                    rng = {**({"$gte": lo} if lo is not None else {}), **({"$lt": cap + 1} if cap is not None else {})}
                    yield rng or None
                    return
                yield {"$lt": hi, **({"$gte": lo} if lo is not None else {})}
                lo, count = hi, count * GROWTH
        else:  # price_desc
            bounds = [b for b in (after_value, plan.price_max) if b is not None]
            hi = min(bounds) if bounds else None  # inclusive
            floor = plan.price_min  # inclusive
            while True:
                i = bisect_right(prices, hi) if hi is not None else len(prices)
                j = i - count
                low = prices[j] if j >= 0 else None  # inclusive
                if low is not None and hi is not None and low > hi:
                    low = hi
                if low is None or (floor is not None and low < floor):
                    rng = {**({"$lt": hi + 1} if hi is not None else {}), **({"$gte": floor} if floor is not None else {})}
                    yield rng or None
                    return
                yield {"$gt": low - 1, **({"$lt": hi + 1} if hi is not None else {})}
                hi, count = low - 1, count * GROWTH

    def pipelines(self, plan: SearchPlan, now: datetime):
        """The probes of a search, lazily, in sort order: each is a builder that takes the
        number of items still wanted and returns the pipelines to run together (one per
        driver facet: one, or up to GEO_MAX_CELLS for a near= search)."""
        sort = self.sorts[plan.sort]
        key = sort[0][0]
        after = self._cursor_after(plan)
        residual = dict(plan.residual)
        facets = [plan.facet]
        within = cells = None
        if plan.near is not None:
            lat, lng, radius_km = plan.near
            within = {"geo": {"$geoWithin": {"$centerSphere": [[lng, lat], radius_km / EARTH_RADIUS_KM]}}}
            cells = geo_cells_covering(lat, lng, radius_km)
        elif plan.bbox is not None:
            min_lng, min_lat, max_lng, max_lat = plan.bbox
            within = {"geo.coordinates.0": {"$gte": min_lng, "$lte": max_lng},
                      "geo.coordinates.1": {"$gte": min_lat, "$lte": max_lat}}
            cells = geo_cells_in_box(min_lng, min_lat, max_lng, max_lat)
        # The residual's conditions in the order the database tests them, stopping at the first that fails:
        # scalar tests (box, price, cursor) before the residual's array tests, each of which scans the ~40
        # facets of the document (measured: a third of a fetched listing's cost).
        first: list[dict] = []
        last: list[dict] = []
        if within is not None:
            first.append(within)
            if cells is not None and self._facet_is_rarer(plan.facet, cells):
                cells = None
            if cells is not None:
                if plan.facet != "*":  # the request's own facet becomes a residual condition
                    last.append({"facets": plan.facet})
                facets = cells
        if plan.facet != "*" and not plan.facet_prefix:
            # Every document the driver yields carries its facet (or, when grid cells drive, `last` tests it
            # once): no need to look for it among the residual's words again.
            residual = _without_facet(residual, plan.facet)
        if after is not None:
            first.append(after_filter(sort, list(after)))
        sort_stage = {"$sort": dict(sort)}
        if plan.sort == "newest" and (plan.price_min is not None or plan.price_max is not None):
            price = {**({"$gte": plan.price_min} if plan.price_min is not None else {}),
                     **({"$lte": plan.price_max} if plan.price_max is not None else {})}
            first.insert(0, {self.price_field: price})
        conds = first + ([residual] if residual else []) + last
        residual = conds[0] if len(conds) == 1 else {"$and": conds} if conds else {}
        slices = self._slices(plan, after[0] if after else None, now, facets)
        if plan.unsliced:  # a price sort keeps its price bounds in the driver (`$lt v + 1`: see _slices)
            whole = {} if plan.sort == "newest" else {**({"$gte": plan.price_min} if plan.price_min is not None else {}),
                                                      **({"$lt": plan.price_max + 1} if plan.price_max is not None else {})}
            slices = [whole or None]
        for rng in slices:
            drivers = []
            for facet in facets:
                driver = {self.state_field: plan.status, "facets": plan.facet_prefix + facet}
                if rng is not None:
                    driver[key] = rng
                drivers.append([{"$match": driver}] + ([{"$match": residual}] if residual else []))
            yield (lambda drivers: lambda need: [stages + [sort_stage, {"$limit": need}] for stages in drivers])(drivers)

    # The id path (`_by_ids`) fetches every listing carrying all the keywords, page after page; the
    # driver walks about want x (listings of its facet) / (listings matching) of them per page, and its
    # slices overshoot that by up to 4x. Fetching one by `_id` costs the embedded database ~1.7x a
    # driver's fetch (measured), about what the overshoot costs the driver, so ids win when
    # ids^2 <= want x fewest; never above ID_PATH_MAX ids (a page's cost must stay bounded).
    ID_PATH_MAX = 3000

    async def search(self, plan: SearchPlan, now: datetime, serialize, trace: list | None = None) -> dict:
        if plan.candidates is not None:
            return await self._by_ids(plan, sorted(plan.candidates), serialize, trace)
        # One keyword alone: its own driver reads about as many listings as a page needs (the id path
        # would win only below a page of them), so its postings are not even read (~10 ms at 100,000).
        if self.postings is not None and len(plan.keywords) > 1 and await self.postings.ready():
            slots, fewest = await self.postings.slots(list(plan.keywords))
            n = sum(bits.bit_count() for bits in slots.values())
            if n <= self.ID_PATH_MAX and n * n <= (plan.limit + 1) * fewest:
                return await self._by_ids(plan, FacetPostings.ids(slots), serialize, trace)
        want = plan.limit + 1
        key, direction = self.sorts[plan.sort][0]
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
        return self._page(plan, docs, serialize)

    def _exact_filter(self, plan: SearchPlan, *, relaxed: bool = False) -> dict:
        """Every condition of the plan as one filter: what its drivers and residual select together
        (state, driving facet, residual, near/bbox, price range, the cursor's keyset). `relaxed`
        leaves out every test of `facets` (see _by_ids): a filter every match of the exact one passes."""
        conds: list[dict] = [{self.state_field: plan.status}]
        # The driving facet, unless the residual requires it anyway (a keyword among `$all`): each array
        # test scans the ~40 facets of every listing fetched (measured: a fifth of the id path's time).
        if not relaxed and (plan.facet_prefix or (plan.facet != "*" and plan.facet not in plan.keywords)):
            conds.append({"facets": plan.facet_prefix + plan.facet})
        residual = _without_facets(plan.residual) if relaxed else plan.residual
        if residual:
            conds.append(residual)
        if plan.near is not None:
            lat, lng, radius_km = plan.near
            conds.append({"geo": {"$geoWithin": {"$centerSphere": [[lng, lat], radius_km / EARTH_RADIUS_KM]}}})
        if plan.bbox is not None:
            min_lng, min_lat, max_lng, max_lat = plan.bbox
            conds.append({"geo.coordinates.0": {"$gte": min_lng, "$lte": max_lng},
                          "geo.coordinates.1": {"$gte": min_lat, "$lte": max_lat}})
        if plan.price_min is not None or plan.price_max is not None:
            conds.append({self.price_field: {**({"$gte": plan.price_min} if plan.price_min is not None else {}),
                                             **({"$lte": plan.price_max} if plan.price_max is not None else {})}})
        after = self._cursor_after(plan)
        if after is not None:
            conds.append(after_filter(self.sorts[plan.sort], list(after)))
        return {"$and": conds}

    async def _by_ids(self, plan: SearchPlan, ids: list[int], serialize, trace: list | None) -> dict:
        """The page from the listings carrying every keyword (ids from the postings, or the plan's
        candidates), in two reads.

        1. Every candidate by `_id` in chunks, matched against the plan without its `facets` tests
           and returned as `_id` + sort key only; sorted here. Why: testing `$all` of the keywords
           against the ~40 facets of each candidate was a third of this path's time (measured at
           100,000 listings: 396 candidates, 86 ms with it, 49 ms without, 3.8 ms to fetch 21 by id).
        2. The candidates in that order, `want` at a time, fetched whole and matched against the
           whole plan, until a page is full or none are left.
        Read 1 only drops candidates the exact filter drops too, and read 2 keeps the sort order
        and applies the exact filter, so the page is the first `want` listings matching the plan:
        exact whatever the postings hold beyond the truth (a stale bit costs one more fetch)."""
        want = plan.limit + 1
        key, direction = self.sorts[plan.sort][0]
        step = FacetPostings.FETCH_CHUNK
        tail = [{"$match": self._exact_filter(plan, relaxed=True)}, {"$project": {key: 1}}]
        pipelines = [[{"$match": {"_id": {"$in": ids[i:i + step]}}}] + tail for i in range(0, len(ids), step)]
        if trace is not None:
            trace.extend(pipelines)
        parts = await asyncio.gather(*(self._run(p) for p in pipelines))
        ranked = sorted((d for part in parts for d in part), key=lambda d: (d[key], d["_id"]), reverse=direction < 0)
        order = [d["_id"] for d in ranked]
        exact = {"$match": self._exact_filter(plan)}
        docs: list[dict] = []
        at = 0
        while len(docs) < want and at < len(order):
            batch, at = order[at:at + max(want - len(docs), 1)], at + max(want - len(docs), 1)
            pipeline = [{"$match": {"_id": {"$in": batch}}}, exact]
            if trace is not None:
                trace.append(pipeline)
            rank = {i: n for n, i in enumerate(batch)}
            docs += sorted(await self._run(pipeline), key=lambda d: rank[d["_id"]])
        return self._page(plan, docs[:want], serialize)

    def _page(self, plan: SearchPlan, docs: list[dict], serialize) -> dict:
        more = len(docs) > plan.limit
        docs = docs[: plan.limit]
        next_cursor = None
        if more and docs:
            last = docs[-1]
            next_cursor = encode_cursor([plan.sort, last[self.sorts[plan.sort][0][0]], last["_id"]])
        return {"items": [serialize(d) for d in docs], "next_cursor": next_cursor}

    async def _run(self, pipeline: list) -> list[dict]:
        return await (await self.col.aggregate(pipeline)).to_list()
