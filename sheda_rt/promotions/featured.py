"""Featured listings first in search, still index-driven on every sort and page.

A featured listing carries, next to its ordinary facets, a copy of each prefixed with
FEATURED_PREFIX (`"f:*"`, `"f:l:rent"`, `"f:k:pool"`, `"f:g2:..."`; see `featured_facets`,
added by the listings store while `featured_until` is set). A search then runs in two
*segments* over the same compound indexes:

1. featured: the request's own plan with every driver facet prefixed (SearchPlan.facet_prefix),
   so the driver `{status, facets: "f:<facet>", <sort key>: <range>}` is as selective as the
   plain search but meets only featured listings; residual `featured_until > now`;
2. the rest: the plain plan with the residual `not (featured_until > now)`, so a listing is in
   exactly one segment at a given moment (one whose featured days ran out before the expiry job
   cleared it falls back into the rest at once).

Each segment is sorted by the request's sort and walked in the usual slices; a page takes what
is left of the featured segment, then fills up from the rest. The cursor records the segment:
`["f", <inner cursor>]` or `["r", <inner cursor or "">]`, the inner cursor being the plain
search's own. Why not one index with "featured" as a leading sort key: the database's planner
walks an index only when every filter condition is a key, and a sort on (featured, date) would
need another pair of compound indexes over every listing; the prefixed facets cost index entries
only for the few listings that paid, and only while they are featured.

A cursor from before this existed (the plain three-part one) continues in the rest segment.

Only a search of available listings (the default) lists featured ones first: the placement was bought
to find a tenant or buyer, so a search of sold or rented listings stays in its own order (a featured
listing taken by a contract keeps its days, and is first again should the contract release it).
"""
from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from functools import partial

from sheda_rt.errors import ValidationFailed
from sheda_rt.pagination import decode_cursor, encode_cursor
from sheda_rt.search import FacetedSearch, SearchPlan

FEATURED_PREFIX = "f:"
FEATURED, REST = "f", "r"
#: While the facet sample estimates at most this many featured listings (all of them, whatever their
#: facets), the featured segment is one pipeline per driver over its whole range (SearchPlan.unsliced):
#: fetching a few hundred small documents costs less than the 8-15 round trips of mostly empty slices,
#: which doubled the pipelines of every search (measured at 3,000 listings: browse newest 3 -> 11).
#: More featured listings than that, or no sample yet: sliced like any search, bounded per page.
UNSLICED_MAX = 300
#: The listing states searched featured-first (SearchPlan.status).
FEATURED_STATES = ("available",)


def featured_facets(facets) -> set[str]:
    """The extra facets of a featured listing: each of its facets, prefixed."""
    return {FEATURED_PREFIX + f for f in facets if not f.startswith(FEATURED_PREFIX)}


def _and(residual: dict, extra: dict) -> dict:
    return {"$and": [residual, extra]} if residual else extra


def _segment(cursor: str | None) -> tuple[str, str | None]:
    if not cursor:
        return FEATURED, None
    try:
        segment, inner = decode_cursor(cursor, 2)
    except ValidationFailed:  # a plain cursor issued before featured listings existed: the rest segment
        return REST, cursor
    if segment not in (FEATURED, REST) or not isinstance(inner, str):
        raise ValidationFailed.single("cursor", "is not a cursor this API issued")
    return segment, inner or None


def few_featured(finder: FacetedSearch) -> bool:
    stats = finder.stats
    if stats is None:
        return False
    stats.refresh_soon()
    estimate = stats.estimate(lambda row: FEATURED_PREFIX + "*" in row["facets"])
    return estimate is not None and estimate <= UNSLICED_MAX


async def search_featured_first(finder: FacetedSearch, plan: SearchPlan, now: datetime, serialize,
                                trace: list | None = None) -> dict:
    """One page of `plan`: listings featured now first (in the plan's sort), then the others.
    `serialize` is called as serialize(doc, now=now), so a view can tell featured days that are over
    (ended in search at `now`) from current ones before the promotions job clears them."""
    serialize = partial(serialize, now=now)
    if plan.status not in FEATURED_STATES:
        return await finder.search(plan, now, serialize, trace=trace)
    segment, inner = _segment(plan.cursor)
    items: list = []
    if segment == FEATURED:
        few = few_featured(finder)
        featured = replace(plan, facet_prefix=FEATURED_PREFIX, cursor=inner, unsliced=few,
                           residual=_and(plan.residual, {"featured_until": {"$gt": now}}))
        if few and hasattr(plan, "keywords"):
            # Few featured: the prefixed driver meets only them, while the id paths (FacetedSearch: keyword
            # postings, a caller's candidates) would fetch every listing carrying the words or named; the
            # words stay in the residual.
            featured = replace(featured, keywords=(), candidates=None)
        page = await finder.search(featured, now, serialize, trace=trace)
        if page["next_cursor"]:
            return {"items": page["items"], "next_cursor": encode_cursor([FEATURED, page["next_cursor"]])}
        items, inner = page["items"], None
    need = plan.limit - len(items)
    rest = replace(plan, cursor=inner, limit=max(need, 1),
                   residual=_and(plan.residual, {"featured_until": {"$not": {"$gt": now}}}))
    page = await finder.search(rest, now, serialize, trace=trace)
    if need == 0:  # the featured ones filled this page: the next starts the rest, if there is any
        return {"items": items, "next_cursor": encode_cursor([REST, ""]) if page["items"] else None}
    return {"items": items + page["items"],
            "next_cursor": encode_cursor([REST, page["next_cursor"]]) if page["next_cursor"] else None}
