"""Does one listing match one search? The same answer GET /properties would give, decided in Python.

A saved search is matched against a listing that just changed, so the question is the reverse of a
search: not "which listings match these filters" but "does this listing match". Rather than restating
the filters, this evaluates the very SearchPlan the listings service builds for GET /properties
(`PropertyService.plan`): its state, its residual match (the filters, as a MongoDB filter), its price
bounds and its circle or box. Only the few operators plans are made of are understood; anything else
raises, so a new kind of filter cannot be silently ignored (tests/test_saved_searches.py compares this
with the real search for every filter).
"""
from __future__ import annotations

import math
import re

from sheda_rt.search import EARTH_RADIUS_KM, SearchPlan


class UnknownFilter(ValueError):
    """A plan holds an operator the matcher does not evaluate."""


def _field(doc: dict, path: str):
    value = doc
    for part in path.split("."):
        if isinstance(value, dict):
            value = value.get(part)
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return None
    return value


def _compare(value, op: str, bound) -> bool:
    if value is None or isinstance(value, bool) != isinstance(bound, bool):
        return False
    try:
        if op == "$gte":
            return value >= bound
        if op == "$gt":
            return value > bound
        if op == "$lte":
            return value <= bound
        if op == "$lt":
            return value < bound
    except TypeError:  # a stored value of another type never matches a range (as in MongoDB)
        return False
    raise UnknownFilter(op)


def _condition(value, cond) -> bool:
    if isinstance(cond, dict) and cond and all(k.startswith("$") for k in cond):
        for op, arg in cond.items():
            if op == "$all":
                have = value if isinstance(value, list) else [value]
                if not all(a in have for a in arg):
                    return False
            elif op in ("$gte", "$gt", "$lte", "$lt"):
                if not _compare(value, op, arg):
                    return False
            elif op == "$regex":  # as the guided search's area condition: a Python re of the same (simple) pattern
                flags = re.IGNORECASE if "i" in cond.get("$options", "") else 0
                if not isinstance(value, str) or re.search(arg, value, flags) is None:
                    return False
            elif op == "$options":
                continue
            elif op == "$in":
                have = value if isinstance(value, list) else [value]
                if not any(a in have for a in arg):
                    return False
            else:
                raise UnknownFilter(op)
        return True
    if isinstance(value, list) and not isinstance(cond, list):  # equality with an array: membership
        return cond in value
    if isinstance(value, bool) != isinstance(cond, bool):  # True == 1 in Python, never in MongoDB
        return False
    return value == cond


def matches_filter(flt: dict, doc: dict) -> bool:
    """A MongoDB filter of the shapes plans use: field equality, ranges, $all, $in, $regex, $and, $nor."""
    for key, cond in flt.items():
        if key == "$and":
            if not all(matches_filter(part, doc) for part in cond):
                return False
        elif key == "$nor":
            if any(matches_filter(part, doc) for part in cond):
                return False
        elif key.startswith("$"):
            raise UnknownFilter(key)
        elif not _condition(_field(doc, key), cond):
            return False
    return True


def within_km(point: list | None, lat: float, lng: float, radius_km: float) -> bool:
    """`$geoWithin $centerSphere`: the great-circle distance, in radians of the same earth radius."""
    if not point:
        return False
    plng, plat = point
    p1, p2 = math.radians(lat), math.radians(plat)
    dp, dl = p2 - p1, math.radians(plng - lng)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * math.asin(min(1.0, math.sqrt(h))) <= radius_km / EARTH_RADIUS_KM


def listing_matches(plan: SearchPlan, doc: dict, extra: dict | None = None) -> bool:
    """True when GET /properties with the filters `plan` was made from would list `doc` (a stored listing);
    `extra`: a further condition on top of the plan's (a guided search's area)."""
    if doc.get("status") != plan.status:
        return False
    price = doc.get("price_minor")
    if plan.price_min is not None and not (isinstance(price, int) and price >= plan.price_min):
        return False
    if plan.price_max is not None and not (isinstance(price, int) and price <= plan.price_max):
        return False
    point = _field(doc, "geo.coordinates")
    if plan.near is not None and not within_km(point, *plan.near):
        return False
    if plan.bbox is not None:
        min_lng, min_lat, max_lng, max_lat = plan.bbox
        if not point or not (min_lng <= point[0] <= max_lng and min_lat <= point[1] <= max_lat):
            return False
    if plan.facet not in (doc.get("facets") or ()):  # the driver is a condition too ("w:" matches nothing)
        return False
    return matches_filter(plan.residual, doc) and (extra is None or matches_filter(extra, doc))
