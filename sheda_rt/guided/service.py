"""Guided search: the three questions from live listings, and the listings ranked by fit.

Ranking, as groups in this order (each group in the requested sort; cheapest first by default,
so among those over budget the smallest overshoot comes first):
  1. exact: every answer fits;
  2. over budget: in the area, priced above the band by at most OVER_BUDGET (15 %);
  3. outside the area: within budget, positioned within NEAR_KM of the area's edge (its
     radius around its centre, sheda_rt/guided/catalog.py);
  4. both: outside the area and over budget.
`what` (rent or buy, kind of home) is never bent. An unanswered question has no misses.

Each group is one search through the listings' own planner (PropertyService.plan and the
store's faceted search, sheda_rt/search.py), so every read is index-driven: the area drives
through its words' keyword facets (`q=`, in the location as in title or description) and a
case-insensitive regex on `location` (a residual: evaluated only on those candidates) keeps
the listings whose area it is; outside the area is a `near=` circle (grid cells drive) minus
that regex. A page fills from the first unfinished group on; the cursor holds the group and
that group's own keyset cursor, so pages never repeat or skip a listing while others insert.

Cost: the groups in the area are read by id: the catalog's listings of the group (area, kind,
price) plus every listing written since the catalog was read, each matched against the whole
search by the database (FacetedSearch._by_ids), about 30 ms at 100,000 listings where walking
the kind-and-price driver fetched ~500 listings of other areas per page (100-150 ms). So they
are exact as of now, not as of the catalog's last read; a group the catalog counts none of, when
nothing was written since, is not searched. The groups outside the area walk their grid cells;
a group with few listings walks every slice of its sort key before it is known to be done
(sheda_rt/search.py), and the default price order walks fewer slices than `newest`.
"""
from __future__ import annotations

import hashlib
import logging
import json
from decimal import Decimal
from typing import TYPE_CHECKING

from sheda_rt.errors import ValidationFailed
from sheda_rt.guided.catalog import distance_km
from sheda_rt.guided.models import (LISTING_TYPES, GuidedAnswers, GuidedPageQuery, budget_id, parse_budget, parse_what,
                                    what_id)
from sheda_rt.listings.models import Q_MAX_WORDS, SearchQuery
from sheda_rt.listings.service import property_view
from sheda_rt.pagination import decode_cursor, encode_cursor
from sheda_rt.search import keyword_words

if TYPE_CHECKING:
    from sheda_rt.clock import Clock
    from sheda_rt.guided.catalog import Area, GuidedCatalog, Tally
    from sheda_rt.listings.service import PropertyService
    from sheda_rt.listings.store import PropertyStore

log = logging.getLogger("sheda.guided")

OVER_BUDGET = Decimal("0.15")
NEAR_KM = 3.0
MAX_AREAS = 100  # where offers the areas with most listings first
CANDIDATES_MAX = 1500  # a group's listings fetched by id (both reads of FacetedSearch._by_ids) at most
MEMO_MAX = 256  # questions kept per catalog version (per answers so far)
BANDS = 5  # budget offers up to this many bands, cut at quantiles of the prices
NICE = (1, 1.5, 2, 2.5, 3, 4, 5, 7.5)  # band edges are these times a power of ten (naira)

TEXTS = {"what": "What are you looking for?", "budget": "What is your budget?", "where": "Where would you like to live?"}
KIND_WORDS = {"rent": "to rent", "sale": "to buy"}


def short_naira(kobo: int) -> str:
    """₦850, ₦200k, ₦1.5M, ₦2B: amounts as people say them (rounded)."""
    naira = Decimal(kobo) / 100
    for size, suffix in ((Decimal(10) ** 9, "B"), (Decimal(10) ** 6, "M"), (Decimal(1000), "k")):
        if naira >= size:
            value = naira / size
            text = f"{value:.0f}" if value >= 100 else f"{value:.1f}".rstrip("0").rstrip(".")
            return f"₦{text}{suffix}"
    return f"₦{naira.quantize(Decimal(1), rounding='ROUND_CEILING'):,}"


def _nice_ceil(kobo: int) -> int:
    """The smallest edge in NICE x 10^k naira at or above `kobo` (in kobo)."""
    naira = max(1, -(-kobo // 100))
    power = 1
    while True:
        for m in NICE:
            edge = int(m * power)
            if edge >= naira and m * power == edge:
                return edge * 100
        power *= 10


def bands(sample: list[int], count) -> list[tuple[int, int | None, int]]:
    """(lo, hi, n) price bands (kobo, above lo up to hi; hi None: no end) cut at nice numbers
    near the quantiles of the sorted price `sample` (which holds the dearest price); n is
    `count(above, up_to)`, and every band has listings."""
    if not sample:
        return []
    cuts: list[int] = []
    for i in range(1, BANDS):
        edge = _nice_ceil(sample[min(len(sample) - 1, len(sample) * i // BANDS)])
        if edge < sample[-1] and (not cuts or edge > cuts[-1]):
            cuts.append(edge)
    out, lo = [], 0
    for hi in cuts + [None]:
        n = count(lo or None, hi)
        if n > 0:
            out.append((lo, hi, n))
        lo = hi
    return out


def band_label(lo: int, hi: int | None) -> str:
    if hi is None:
        return f"Over {short_naira(lo)}" if lo else "Any price"
    return f"{short_naira(lo)} – {short_naira(hi)}" if lo else f"Up to {short_naira(hi)}"


def kind_label(listing_type: str, property_type: str | None) -> str:
    return f"{(property_type or 'any home').capitalize()} {KIND_WORDS[listing_type]}"


class GuidedSearchService:
    def __init__(self, catalog: GuidedCatalog, *, listings: PropertyService, store: PropertyStore, clock: Clock):
        self.catalog = catalog  # the options' counts, in memory
        self.listings = listings  # its planner turns filters into index-driven searches
        self.store = store  # runs those plans
        self.clock = clock

    # ---- the questions ----------------------------------------------------------------------
    async def questions(self, what: str | None = None, where: str | None = None) -> dict:
        tally = await self.catalog.current()
        if where is not None:
            self._area(tally, where, "where")
        key = ("questions", what, where)
        questions = tally.memo.get(key)
        if questions is None:
            if len(tally.memo) >= MEMO_MAX:
                tally.memo.clear()
            questions = tally.memo[key] = self._questions(tally, what, where)
        return {"questions": questions, "as_of": self.catalog.as_of}

    @staticmethod
    def _questions(tally: Tally, what: str | None, where: str | None) -> list[dict]:
        lt, pt = parse_what(what) if what else (None, None)
        kinds = tally.kind_counts(where)
        what_options = []
        for listing_type in LISTING_TYPES:
            of_type = sorted(((n, t) for (l, t), n in kinds.items() if l == listing_type), key=lambda nt: (-nt[0], nt[1]))
            if of_type:
                what_options.append({"id": what_id(listing_type, None), "label": kind_label(listing_type, None),
                                     "count": sum(n for n, _ in of_type)})
                what_options += [{"id": what_id(listing_type, t), "label": kind_label(listing_type, t), "count": n} for n, t in of_type]
        budget_options = []
        for listing_type in ([lt] if lt else LISTING_TYPES):
            prefix = "" if lt else ("Rent: " if listing_type == "rent" else "Buy: ")
            sample = tally.price_sample(listing_type, pt, where)
            for lo, hi, count in bands(sample, lambda above, up_to: tally.count_priced(listing_type, pt, where, above, up_to)):
                budget_options.append({"id": budget_id(lo, hi), "label": prefix + band_label(lo, hi), "count": count})
        areas = tally.area_counts(lt, pt)
        offered = [slug for slug, n in sorted(areas.items(), key=lambda sn: (-sn[1], tally.areas[sn[0]].label))[:MAX_AREAS] if n > 0]
        if where is not None and where not in offered and areas.get(where, 0) > 0:
            offered.append(where)  # the area already chosen stays offered, however few listings it has
        where_options = [{"id": slug, "label": tally.areas[slug].label, "count": areas[slug]} for slug in offered]
        return [{"id": "what", "text": TEXTS["what"], "options": what_options},
                {"id": "budget", "text": TEXTS["budget"], "options": budget_options},
                {"id": "where", "text": TEXTS["where"], "options": where_options}]

    @staticmethod
    def _area(tally: Tally, slug: str, field: str) -> Area:
        area = tally.areas.get(slug)
        if area is None:
            raise ValidationFailed.single(field, f"unknown option {slug!r}: no listings in such an area now; "
                                                 "GET /api/v1/search/guided/questions lists the areas")
        return area

    # ---- the search -------------------------------------------------------------------------
    def _groups(self, tally: Tally, answers: GuidedAnswers, area: Area | None) -> list[dict]:
        """The searches of each fit group, in rank order: filters for SearchQuery, the extra
        residual condition, what makes each listing of the group a near miss, and how many
        listings the catalog counts in it (None: not counted; 0 skips the search)."""
        base, (lo, hi) = kind_filters(answers), (parse_budget(answers.budget) if answers.budget else (None, None))
        prices = [(lo or None, hi, False)]  # (above, up to, over budget), kobo
        if hi is not None:
            prices.append((hi, int(hi * (1 + OVER_BUDGET)), True))
        in_area = outside = None
        # The area as it is now, captured: a refresh during this search's reads may change or drop it.
        place = {"centre": None, "radius": None, "label": area.label if area else None}
        if area is not None:
            in_area = area_match(area)
            geometry = area.geometry()
            if geometry is not None:
                (lat, lng), radius = geometry
                place.update(centre=(lat, lng), radius=radius)
                outside = ({"near": f"{lat},{lng}", "radius_km": min(100.0, radius + NEAR_KM)}, {"$nor": [in_area[1]]})
        groups = []
        for where, miss_place in ((in_area, False), (outside, True)):
            if where is None and miss_place:
                continue
            filters, extra = where or ({}, None)
            for above, up_to, over in prices:
                counted = None if miss_place else (base.get("listing_type"), base.get("property_type"),
                                                       area.slug if area else None, above, up_to)
                groups.append({"filters": {**base, **filters, **price_filters(above, up_to)}, "extra": extra, "over": over,
                               "outside": miss_place, "counted": counted, "count": tally.count_priced(*counted) if counted else None,
                               "area": place, "members": counted if area is not None else None})
        # rank: exact, then one miss (over budget in the area before within budget outside it), then both
        return sorted(groups, key=lambda g: (g["over"] + g["outside"], g["outside"]))

    async def search(self, answers: GuidedAnswers, page: GuidedPageQuery, trace: list | None = None) -> dict:
        tally = await self.catalog.current()
        area = self._area(tally, answers.where, "answers.where") if answers.where else None
        groups = self._groups(tally, answers, area)
        # A cursor names a group by its place in this list, which a refresh can change (an area whose listings lost
        # their positions has no "outside" groups): the groups' shape is part of what a cursor must match.
        shape = [(g["over"], g["outside"]) for g in groups]
        fingerprint = hashlib.sha256(json.dumps([answers.model_dump(), page.sort, shape]).encode()).hexdigest()[:16]
        start, inner = 0, None
        if page.cursor:
            tag, mark, start, inner = decode_cursor(page.cursor, 4)
            if tag != "guided" or mark != fingerprint or not isinstance(start, int) or isinstance(start, bool) \
                    or not 0 <= start < len(groups) or not (inner is None or isinstance(inner, str)):
                raise ValidationFailed.single("cursor", "belongs to other answers or another order; start again without it")
        items: list[dict] = []
        next_cursor = None
        now = self.clock.now()
        recent, refreshed = await self._recent()
        for group in groups:
            group["recent"] = recent
            if refreshed and group["counted"]:  # counts of the catalog `recent` is relative to
                group["count"] = (await self.catalog.current()).count_priced(*group["counted"])
        for index in range(start, len(groups)):
            group = groups[index]
            if self._none_in(group) and index != start:  # no search (a cursor's own group runs)
                continue
            want = page.limit - len(items)
            found = await self._run(group, want, inner if index == start else None, page.sort, now, trace)
            items += [self._annotate(view, group, answers) for view in found["items"]]
            if found["next_cursor"]:
                next_cursor = encode_cursor(["guided", fingerprint, index, found["next_cursor"]])
                break
            if len(items) >= page.limit:  # this group ended with the page: is anything left in the later ones?
                for later in range(index + 1, len(groups)):
                    if self._none_in(groups[later]):
                        continue
                    known = groups[later]["count"] and groups[later]["recent"] == []  # nothing written since the count
                    if known or (await self._run(groups[later], 1, None, page.sort, now, trace))["items"]:
                        next_cursor = encode_cursor(["guided", fingerprint, later, None])
                        break
                break
        return {"items": items, "next_cursor": next_cursor}

    async def _run(self, group: dict, limit: int, cursor: str | None, sort: str, now, trace) -> dict:
        query = SearchQuery.model_validate({**group["filters"], "limit": limit, "cursor": cursor, "sort": sort})
        plan = self.listings.plan(query)
        if group["members"] is not None:
            plan.candidates = self._candidates(group["members"], group["recent"])
        if group["extra"] is not None:  # first: the database stops at the first failing test, and the area's regex
            # rejects most of the driver's listings for less than testing the area's words against ~40 facets each
            plan.residual = {"$and": [group["extra"], plan.residual]}
        return await self.store.search(plan, now, property_view, trace=trace)

    async def _recent(self) -> tuple[list[int] | None, bool]:
        """(the listings written since the catalog's last read, or None when they are too many to
        fetch by id; whether the catalog was read again meanwhile, so the groups' counts must be
        taken again). Called with no await since the counts were taken: `since` matches them."""
        since = self.catalog.since
        if since is None:
            return None, False
        recent = await self.catalog.changed_since(since, CANDIDATES_MAX)
        if recent is not None:
            return recent, False
        # Many writes since the last read (an idle catalog is read only when asked): read them now,
        # once, rather than walk the drivers of every group of this and the next requests.
        try:
            await self.catalog.refresh()
        except Exception:  # the drivers answer this request as they always could
            log.warning("guided search catalog refresh failed", exc_info=True)
            return None, False
        since = self.catalog.since  # with no await before the counts are taken again
        return await self.catalog.changed_since(since, CANDIDATES_MAX), True

    @staticmethod
    def _none_in(group: dict) -> bool:
        """The catalog counts none in this group and no listing was written since it was read: no
        search needed."""
        return group["count"] == 0 and group["recent"] == []

    def _candidates(self, members: tuple, recent: list[int] | None) -> tuple[int, ...] | None:
        """A group in the area: its listings in the catalog plus every listing written since the
        catalog was read (`recent`: they may fit now), as the search's candidates (SearchPlan.candidates:
        fetched by id and matched against the whole search, so what does not fit now is never shown
        and what fits now is among them). Why: the best index driver of such a group (kind and price)
        meets ~25 listings of other areas per one of this area, ~500 fetched per page at 100,000
        listings; the catalog names the area's own (~150 for a kind and budget in one area). None
        (drive as usual) when they are more than an id path should fetch."""
        ids = self.catalog.candidates(*members)
        if ids is None or recent is None or len(ids) + len(recent) > CANDIDATES_MAX:
            return None
        return tuple(set(ids).union(recent))

    @staticmethod
    def _annotate(view: dict, group: dict, answers: GuidedAnswers) -> dict:
        reasons = []
        if group["over"]:
            _, hi = parse_budget(answers.budget)
            price = int(Decimal(view["price"]) * 100)
            reasons.append(f"{short_naira(price - hi)} over budget")
        if group["outside"]:
            place = group["area"]
            geo = view["geo"]
            beyond = distance_km(place["centre"], (geo["lat"], geo["lng"])) - place["radius"] if geo else 0.0
            where = place["label"]
            reasons.append(f"{round(beyond)} km outside {where}" if beyond >= 0.5 else f"less than 1 km outside {where}")
        return {**view, "match": {"exact": not reasons, "reasons": reasons}}


def _naira(kobo: int) -> str:
    return str((Decimal(kobo) / 100).quantize(Decimal("0.01")))


# ---- the exact matches, as filters (the first group; also what a saved search of answers can use) ----
def kind_filters(answers: GuidedAnswers) -> dict:
    """GET /properties filters of the `what` answer: listing_type, and property_type unless `any`."""
    if not answers.what:
        return {}
    lt, pt = parse_what(answers.what)
    return {"listing_type": lt, **({"property_type": pt} if pt else {})}


def price_filters(above: int | None, up_to: int | None) -> dict:
    """GET /properties price filters (naira) of prices above `above` and up to `up_to` (kobo)."""
    return {**({"price_min": _naira(above + 1)} if above else {}), **({"price_max": _naira(up_to)} if up_to is not None else {})}


def area_match(area: Area) -> tuple[dict, dict]:
    """(GET /properties filters, residual condition) selecting the listings whose area this is:
    its words as keywords (they drive, through the keyword facets) and its spellings' regex."""
    words = list(dict.fromkeys(keyword_words(" ".join(area.slug.split("-")))))[:Q_MAX_WORDS]
    return {"q": " ".join(words)}, {"location": {"$regex": area.pattern(), "$options": "i"}}


def exact_filters(answers: GuidedAnswers, area: Area | None) -> tuple[dict, dict | None]:
    """(GET /properties filters, extra residual condition or None) of the listings that fit every
    answer, as the first group of the ranking searches them; `area` is the catalog's for `where`."""
    filters = kind_filters(answers)
    if answers.budget:
        lo, hi = parse_budget(answers.budget)
        filters.update(price_filters(lo or None, hi))
    if area is None:
        return filters, None
    words, regex = area_match(area)
    return {**filters, **words}, regex


__all__ = ["GuidedSearchService", "short_naira", "bands", "exact_filters", "area_match", "kind_filters", "price_filters"]
