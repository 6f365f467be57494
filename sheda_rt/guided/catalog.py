"""What the guided questions offer: the available listings tallied by kind, area and price,
kept in memory by each process and refreshed from the database in the background.

Why in memory: every option carries a count over all available listings (kinds of home,
areas, price bands per area and listing type), and the embedded database counts by reading
every document: at 100,000 listings that is a collection scan per request. So each process
keeps one small row per available listing (listing type, property type, area, price,
position: about 100 bytes, ~10 MB at 100,000) and answers the questions from it.

Staleness: the first question a process is asked reads every listing once (one pass over
the collection, a batch per round trip). Measured on the embedded database: ~0.12 ms of its
one core per listing, so ~12 s at 100,000 listings (a real MongoDB reads them in about a
second); the question waits FIRST_READ_WAIT seconds for it and is then a 503 `warming_up`
with Retry-After while the read goes on (not started at server start: every test server would
pay it). After that a refresh
reads only the listings whose `updated_at` is at or after the start of the previous refresh
minus CHANGE_MARGIN (other processes' clocks, writes in flight), through this module's
`guided_changed` index on `updated_at`. Every write that changes what a row holds (price,
kinds, location, position, status, listed or not) sets `updated_at`
(sheda_rt/listings/store.py); as a safety net against one that does not, the whole collection
is read again every FULL_RELOAD_SECONDS (6 h; answers come from the old tally meanwhile). A refresh
starts when a request finds the catalog older than GUIDED_REFRESH_SECONDS and runs in the
background (that request is answered from the catalog as it is), so the options lag the
listings by at most GUIDED_REFRESH_SECONDS plus one refresh. `refresh()` reads now (tests,
a benchmark's warm-up).

Areas (sheda_rt/guided/areas.py): a listing's area is the part of its location before the last
comma ("Lekki Phase 1, Lagos" -> "Lekki Phase 1"; "12 Admiralty Way, Lekki, Lagos" -> "Lekki"),
or the whole location when it has no comma. Its id is the area's words folded (case and accents
dropped) and joined by hyphens ("Ìkòyí" and "IKOYI" are both `ikoyi`); its label here is the
most common spelling. An area
with positioned listings has a centre (the median position) and a radius (90 % of its listings
lie within it, between 0.5 and 10 km), which place near misses "2 km outside" it.
"""
from __future__ import annotations

import asyncio
import bisect
import itertools
import logging
import math
import re
import time
from collections import Counter
from datetime import timedelta
from typing import NamedTuple

from pymongo import ASCENDING, IndexModel

from sheda_rt.clock import format_ts
from sheda_rt.errors import ServiceUnavailable
from sheda_rt.guided.areas import area_of
from sheda_rt.guided.models import KINDS, LISTING_TYPES
from sheda_rt.search import EARTH_RADIUS_KM

log = logging.getLogger("sheda.guided")

CHANGE_MARGIN = timedelta(seconds=60)
FULL_RELOAD_SECONDS = 6 * 3600.0
FIRST_READ_WAIT = 5.0
BATCH = 1000
MAX_SPELLINGS = 50  # an area's spellings become one regex alternation: the commonest ones
REGEX_MAX_CHARS = 1000  # the embedded database's cap on a $regex pattern (a longer one is an error)
AREA_MIN_RADIUS_KM, AREA_MAX_RADIUS_KM = 0.5, 10.0
_SEP = r"(?:[^\w,]|_)"  # what separates words inside one comma-separated part of a location


class Row(NamedTuple):
    listing_type: str
    property_type: str
    area: str | None  # the area's id
    spelling: tuple[str, ...] | None  # the area's words exactly as written
    label: str | None  # the area as written
    price: int  # kobo
    point: tuple[float, float] | None  # lat, lng


def row_of(doc: dict) -> Row | None:
    """The row of an available, listed listing; None for any other (or one this code did not write)."""
    if doc.get("status") != "available" or not doc.get("is_active", True):
        return None
    lt, pt, price = doc.get("listing_type"), doc.get("property_type"), doc.get("price_minor")
    if lt not in LISTING_TYPES or pt not in KINDS.values() or not isinstance(price, int) or isinstance(price, bool):
        return None
    location = doc.get("location")
    area = area_of(location) if isinstance(location, str) else None
    point = None
    coordinates = (doc.get("geo") or {}).get("coordinates") if isinstance(doc.get("geo"), dict) else None
    if isinstance(coordinates, list) and len(coordinates) == 2 and all(
            isinstance(c, (int, float)) and not isinstance(c, bool) for c in coordinates):
        point = (float(coordinates[1]), float(coordinates[0]))
    slug, spelling, label = area or (None, None, None)
    return Row(lt, pt, slug, spelling, label, int(price), point)


def distance_km(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Great-circle distance between two (lat, lng) points."""
    lat1, lng1, lat2, lng2 = map(math.radians, (*a, *b))
    h = math.sin((lat2 - lat1) / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin((lng2 - lng1) / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(h)))


def _area_regex(alternatives: list[str]) -> str:
    body = f"{_SEP}*(?:{'|'.join(alternatives)}){_SEP}*"
    return f"^{body}$|(?:^|,){body},[^,]*$"


class Area:
    """One area's tallies: how many listings, how they spell it, where they are."""

    def __init__(self, slug: str):
        self.slug = slug
        self.count = 0
        self.labels: Counter = Counter()
        self.spellings: Counter = Counter()
        self.points: dict[int, tuple[float, float]] = {}
        self._geometry: tuple[tuple[float, float], float] | None | bool = False  # False: not computed

    @property
    def label(self) -> str:
        return self.labels.most_common(1)[0][0]

    def pattern(self) -> str:
        """A regex matching exactly the locations whose area is this one, as the database
        evaluates it on the candidates of an index-driven search. Spellings are kept as written
        (accents, and the case of non-ASCII letters), so it does not lean on an engine's case
        folding of non-ASCII letters (PCRE's differs from Python's re); it is sent with the `i`
        option, which every engine applies alike to ASCII letters, so spellings differing only in
        ASCII case are one alternative. The first is the area's id's words ("obalende"): a listing
        written since the catalog's last read typing the area without its accents ("Obalende" where
        only "Ọbalende" was listed) is in it at once; other new spellings are once read. The pattern
        stays within REGEX_MAX_CHARS: the embedded database refuses a longer one, which made every
        guided search of an area with ~40 spellings of its name in different cases a 500."""
        alternatives: list[str] = []
        seen: set[tuple[str, ...]] = set()
        spellings = itertools.chain([tuple(self.slug.split("-"))], (sp for sp, _ in self.spellings.most_common()))
        for spelling in itertools.islice(spellings, MAX_SPELLINGS + 1):
            key = tuple("".join(c.lower() if c.isascii() else c for c in w) for w in spelling)
            if key in seen:
                continue
            option = f"{_SEP}+".join(re.escape(w) for w in spelling)
            if alternatives and len(_area_regex(alternatives + [option])) > REGEX_MAX_CHARS:
                break
            seen.add(key)
            alternatives.append(option)
        return _area_regex(alternatives)

    def geometry(self) -> tuple[tuple[float, float], float] | None:
        """(centre, radius_km) from the positioned listings; None when none has a position."""
        if self._geometry is False:
            points = list(self.points.values())
            if not points:
                self._geometry = None
            else:
                centre = (_median([p[0] for p in points]), _median([p[1] for p in points]))
                distances = sorted(distance_km(centre, p) for p in points)
                radius = distances[min(len(distances) - 1, math.ceil(0.9 * len(distances)) - 1)]
                self._geometry = (centre, min(AREA_MAX_RADIUS_KM, max(AREA_MIN_RADIUS_KM, radius)))
        return self._geometry

    def add(self, _id: int, row: Row, sign: int) -> None:
        self.count += sign
        for counter, key in ((self.labels, row.label), (self.spellings, row.spelling)):
            counter[key] += sign
            if counter[key] <= 0:
                del counter[key]
        if row.point is not None:
            if sign > 0:
                self.points[_id] = row.point
            else:
                self.points.pop(_id, None)
            self._geometry = False


def _median(values: list[float]) -> float:
    values = sorted(values)
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


class Tally:
    """The available listings by kind, area and price; changed one listing at a time."""

    def __init__(self):
        self.rows: dict[int, Row] = {}
        self.kinds: Counter = Counter()  # (listing_type, property_type) -> listings
        self.prices: dict[tuple[str, str, str | None], list[int]] = {}  # (lt, pt, area) -> sorted prices, kobo
        self.members: dict[tuple[str, str, str | None], set[int]] = {}  # (lt, pt, area) -> listing ids
        self.areas: dict[str, Area] = {}
        self.version = 0
        # What callers derived from this tally (the questions per answers so far), dropped at every change:
        # a band's quantiles sort every fitting price (~100,000 of them for the unnarrowed questions).
        self.memo: dict = {}

    def put(self, _id: int, row: Row | None, *, bulk: bool = False) -> None:
        """This listing is now `row` (None: not available any more). `bulk` appends prices
        unsorted (a full load sorts them once in `finish`)."""
        old = self.rows.get(_id)
        if old == row:
            return
        self.version += 1
        self.memo.clear()
        if old is not None:
            del self.rows[_id]
            self._count(_id, old, -1)
        if row is not None:
            self.rows[_id] = row
            self._count(_id, row, +1, bulk=bulk)

    def finish(self) -> None:
        for prices in self.prices.values():
            prices.sort()

    def _count(self, _id: int, row: Row, sign: int, bulk: bool = False) -> None:
        kind = (row.listing_type, row.property_type)
        self.kinds[kind] += sign
        if self.kinds[kind] <= 0:
            del self.kinds[kind]
        group = (*kind, row.area)
        prices = self.prices.setdefault(group, [])
        members = self.members.setdefault(group, set())
        if sign > 0:
            prices.append(row.price) if bulk else bisect.insort(prices, row.price)
            members.add(_id)
        else:
            prices.pop(bisect.bisect_left(prices, row.price))
            members.discard(_id)
            if not prices:
                del self.prices[group]
                del self.members[group]
        if row.area is not None:
            area = self.areas.get(row.area) or self.areas.setdefault(row.area, Area(row.area))
            area.add(_id, row, sign)
            if area.count <= 0:
                del self.areas[row.area]

    # ---- what the questions ask -------------------------------------------------------------
    def _groups(self, listing_type: str | None, property_type: str | None, area: str | None):
        for (lt, pt, a), prices in self.prices.items():
            if (listing_type is None or lt == listing_type) and (property_type is None or pt == property_type) and \
                    (area is None or a == area):
                yield (lt, pt, a), prices

    def kind_counts(self, area: str | None = None) -> Counter:
        if area is None:
            return Counter(self.kinds)
        out: Counter = Counter()
        for (lt, pt, _), prices in self._groups(None, None, area):
            out[(lt, pt)] += len(prices)
        return out

    def area_counts(self, listing_type: str | None = None, property_type: str | None = None) -> Counter:
        if listing_type is None and property_type is None:
            return Counter({slug: a.count for slug, a in self.areas.items()})
        out: Counter = Counter()
        for (_, _, a), prices in self._groups(listing_type, property_type, None):
            if a is not None:
                out[a] += len(prices)
        return out

    def price_sample(self, listing_type: str | None, property_type: str | None, area: str | None, size: int = 4096) -> list[int]:
        """Sorted prices (kobo) of the fitting listings, or about `size` of them spread evenly over
        each group's sorted prices (and each group's dearest) when there are more: enough to cut
        quantiles without sorting 100,000 prices per question."""
        groups = [prices for _, prices in self._groups(listing_type, property_type, area)]
        total = sum(len(p) for p in groups)
        if total <= size:
            return sorted(itertools.chain.from_iterable(groups))
        sample: list[int] = []
        for prices in groups:
            take = max(1, round(len(prices) * size / total))
            sample += [prices[i * len(prices) // take] for i in range(take)] + [prices[-1]]
        return sorted(sample)

    def ids_priced(self, listing_type: str | None, property_type: str | None, area: str,
                   above: int | None, up_to: int | None) -> list[int]:
        """The available listings of one area that fit, priced above `above` and up to `up_to`."""
        rows = self.rows
        return [i for group, _ in self._groups(listing_type, property_type, area) for i in self.members.get(group, ())
                if (above is None or rows[i].price > above) and (up_to is None or rows[i].price <= up_to)]

    def count_priced(self, listing_type: str | None, property_type: str | None, area: str | None,
                     above: int | None, up_to: int | None) -> int:
        """How many available listings fit, priced above `above` and up to `up_to` (kobo; None: no bound)."""
        total = 0
        for _, prices in self._groups(listing_type, property_type, area):
            end = bisect.bisect_right(prices, up_to) if up_to is not None else len(prices)
            total += end - (bisect.bisect_right(prices, above) if above is not None else 0)
        return max(0, total)


class GuidedCatalog:
    """The current Tally of one process, refreshed as the module docstring says."""

    INDEXES = [IndexModel([("updated_at", ASCENDING)], name="guided_changed")]
    FIELDS = {"listing_type": 1, "property_type": 1, "price_minor": 1, "location": 1, "geo": 1, "status": 1, "is_active": 1}

    def __init__(self, db, *, clock, refresh_seconds: float, full_reload_seconds: float = FULL_RELOAD_SECONDS,
                 monotonic=time.monotonic):
        self.col = db["properties"]
        self.clock = clock
        self.refresh_seconds = refresh_seconds
        self.full_reload_seconds = full_reload_seconds
        self._now = monotonic
        self._tally: Tally | None = None
        self._since = None  # listings changed at or after this are read by the next refresh
        self._read_at: float | None = None  # monotonic start of the last refresh
        self._full_at: float | None = None
        self.as_of = None  # wall-clock start of the last refresh
        self._lock = asyncio.Lock()
        self._task: asyncio.Task | None = None

    async def ensure_indexes(self) -> None:
        await self.col.create_indexes(self.INDEXES)

    async def current(self) -> Tally:
        """The tally to answer from: read now the first time (503 after FIRST_READ_WAIT seconds,
        the read going on), else as it is (a refresh starts in the background when it is older
        than refresh_seconds)."""
        if self._tally is None:
            if self._task is None or self._task.done():
                self._task = asyncio.get_running_loop().create_task(self._refresh_logged())
            await asyncio.wait({self._task}, timeout=FIRST_READ_WAIT)
            if self._tally is None:
                raise ServiceUnavailable("Guided search is reading the listings for the first time since the server "
                                         "started; try again in a few seconds", "warming_up", headers={"Retry-After": "5"})
        elif self._now() - self._read_at >= self.refresh_seconds and (self._task is None or self._task.done()):
            self._task = asyncio.get_running_loop().create_task(self._refresh_logged())
        return self._tally

    @property
    def since(self):
        """Listings written at or after this may have changed since the last read (None before the
        first): the tally plus these is every available listing as it is now."""
        return self._since

    def candidates(self, listing_type: str | None, property_type: str | None, area: str,
                   above: int | None, up_to: int | None) -> list[int] | None:
        """The listings of one area that fit as of the last read (with those written since `since`:
        every listing that fits now). None before the first read."""
        if self._tally is None:
            return None
        return self._tally.ids_priced(listing_type, property_type, area, above, up_to)

    async def changed_since(self, since, limit: int) -> list[int] | None:
        """Ids of the listings written at or after `since` (the `guided_changed` index), or None
        when there are more than `limit`."""
        docs = await self.col.find({"updated_at": {"$gte": since}}, projection={"_id": 1}, limit=limit + 1).to_list()
        return None if len(docs) > limit else [d["_id"] for d in docs]

    async def drain(self) -> None:
        """At shutdown: a refresh still reading is dropped (the next process reads again)."""
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _refresh_logged(self) -> None:
        try:
            await self.refresh()
        except Exception:  # the questions keep the catalog as it was; the next due request tries again
            log.warning("guided search catalog refresh failed", exc_info=True)

    async def refresh(self) -> None:
        """Read the listings changed since the last refresh (all of them the first time, and every
        full_reload_seconds)."""
        async with self._lock:
            started, wall = self._now(), self.clock.now()
            if self._tally is None or started - self._full_at >= self.full_reload_seconds:
                tally = Tally()
                # One pass over the collection, BATCH documents per round trip (the other requests run between
                # them). Not batches of `_id > last`: the embedded database answers each of those with a scan.
                async for doc in self.col.find({}, projection=self.FIELDS, batch_size=BATCH):
                    tally.put(doc["_id"], row_of(doc), bulk=True)
                tally.finish()
                if self._tally is not None:
                    tally.version = self._tally.version + 1
                self._tally, self._full_at = tally, started
            else:
                docs = await self.col.find({"updated_at": {"$gte": self._since}}, projection=self.FIELDS).to_list()
                for doc in docs:  # all at once, after the read: a request never sees half a refresh
                    self._tally.put(doc["_id"], row_of(doc))
            self._since, self._read_at, self.as_of = wall - CHANGE_MARGIN, started, format_ts(wall)


__all__ = ["GuidedCatalog", "Tally", "Area", "Row", "area_of", "row_of", "distance_km"]
