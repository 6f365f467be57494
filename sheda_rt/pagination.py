"""The one cursor-pagination helper.

A page is `{"items": [...], "next_cursor": "..." | null}`. The cursor is an
opaque token holding the sort key of the last item returned; the next page asks
for items strictly after it in the same order (keyset pagination), so inserts
by others between pages never cause repeats or skips. Every sort ends with
`_id` as the tie-breaker so the order is total.
"""
from __future__ import annotations

import base64
import json
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

from bson.decimal128 import Decimal128
from pydantic import BaseModel, ConfigDict, Field

from sheda_rt import client_input
from sheda_rt.errors import ApiError, ValidationFailed


class StrictQuery(BaseModel):
    """The base of every query model that refuses keys it does not take: an unknown key is a 422 naming
    it (a typo'd filter or flag must not pass silently as "no filter" or the default). Every list route
    shares it through PageQuery; a route with a query of its own (DELETE /chat/messages/{id}?for=) or
    none at all (NoQuery, the default of every endpoint) derives from it too. The seed's chat history
    (HistoryQuery), the SSE stream and the routes declared with OpenQuery stay lenient on purpose (see
    their models)."""

    model_config = ConfigDict(extra="forbid")


class NoQuery(StrictQuery):
    """A route that takes no query key at all: what `endpoint` (handlers/routing.py) applies to every method that
    declares no query model, so `?for=everyone` on GET /users/me is a 422 naming `for`, not the default answer."""


class OpenQuery(BaseModel):
    """A route whose URL is built by someone else's protocol, so keys it does not read are not the client's typo:
    health probes and metrics scrapers (which may add their own), a gateway's webhook (its URL is whatever the
    operator registered). Declared with `query=OpenQuery`; every key is ignored and none is ever a 422."""

    model_config = ConfigDict(extra="ignore")


class PageQuery(StrictQuery):
    # the routes that page with this model alone (favourites, saved searches, blocks, a project's
    # updates) answered 200 to an unknown key while their subclasses' routes (GET /properties) refused

    limit: int = Field(20, ge=1, le=100, description="Items per page (max 100)")
    cursor: str | None = Field(None, description="next_cursor of the previous page")


def _enc(value: Any) -> Any:
    if isinstance(value, datetime):
        return {"$dt": value.isoformat()}
    if isinstance(value, Decimal128):
        return {"$dec": str(value.to_decimal())}
    if isinstance(value, Decimal):
        return {"$dec": str(value)}
    return value


INT64_MAX = 2**63 - 1
_DT_MIN = datetime(1970, 1, 1, tzinfo=timezone.utc)
_DT_MAX = datetime(9000, 1, 1, tzinfo=timezone.utc)


class _Forged(ValueError):
    """A cursor value no page of ours could have produced."""


def _dec(value: Any) -> Any:
    """One cursor value back into what the query compares with. Only the scalars
    `_enc` writes are accepted: a cursor is client input, and anything else (an
    operator object, an int the database cannot hold, a naive or absurd date)
    would reach the query or the date arithmetic."""
    if isinstance(value, dict):
        if set(value) == {"$dt"} and isinstance(value["$dt"], str):
            when = datetime.fromisoformat(value["$dt"])
            if when.tzinfo is None or not (_DT_MIN <= when <= _DT_MAX):
                raise _Forged("date out of range")
            return when
        if set(value) == {"$dec"} and isinstance(value["$dec"], str):
            amount = Decimal(value["$dec"])
            if not amount.is_finite():
                raise _Forged("not a finite amount")
            return Decimal128(amount)
        raise _Forged("not a cursor value")
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        if not -INT64_MAX - 1 <= value <= INT64_MAX:
            raise _Forged("integer out of range")
        return value
    if isinstance(value, str) and len(value) <= 256:
        return value
    raise _Forged("not a cursor value")


def _cursor_json(raw: bytes) -> Any:
    """The cursor's JSON through the one client-input decoder (bounded depth; a lone
    surrogate would otherwise reach the query and fail to encode: a 500)."""
    try:
        return client_input.parse_json(raw, "cursor")
    except ApiError:
        raise _Forged("not a cursor") from None


def encode_cursor(values: list) -> str:
    raw = json.dumps([_enc(v) for v in values], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, size: int) -> list:
    try:
        raw = _cursor_json(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if not isinstance(raw, list):
            raise _Forged("not a list")
        values = [_dec(v) for v in raw]
    except (ValueError, TypeError, ArithmeticError, RecursionError):
        raise ValidationFailed.single("cursor", "is not a cursor this API issued")
    if len(values) != size:
        raise ValidationFailed.single("cursor", "is not a cursor for this listing")
    return values


def _get(doc: dict, dotted: str) -> Any:
    for part in dotted.split("."):
        doc = doc.get(part) if isinstance(doc, dict) else None
    return doc


def after_filter(sort: list[tuple[str, int]], values: list) -> dict:
    """The filter selecting documents strictly after `values` in `sort` order."""
    ors = []
    for i, (field, direction) in enumerate(sort):
        clause = {f: v for (f, _), v in zip(sort[:i], values[:i])}
        clause[field] = {"$gt" if direction > 0 else "$lt": values[i]}
        ors.append(clause)
    return {"$or": ors}


def page_filter(query: dict, sort: list[tuple[str, int]], cursor: str | None) -> dict:
    """`query` narrowed to the documents after `cursor`. Sorted by `_id` alone, the cursor's condition is a
    plain range merged into `query` (`{user_id: 8, _id: {$lt: 120}}`): the embedded database's planner walks an
    index only when every condition of the filter is one of its keys, and took `{$and: [query, {$or: [...]}]}`
    for none, so every page after the first read the whole collection (explained: COLLSCAN)."""
    if not cursor:
        return dict(query)
    after = after_filter(sort, decode_cursor(cursor, len(sort)))
    if len(sort) == 1 and sort[0][0] not in query:
        return {**query, **after["$or"][0]}
    return {"$and": [query, after]} if query else after


async def paginate(collection, query: dict, sort: list[tuple[str, int]], page: PageQuery, serialize, projection=None,
                   residual: dict | None = None) -> dict:
    """Run one keyset page. `sort` must end with ("_id", ±1). `residual`: more conditions that no index holds
    (optional filters): applied in a second `$match` after `query` + cursor, which the embedded database serves
    from the index of `query`'s keys (one `find` with them all is a collection scan there, see page_filter)."""
    assert sort[-1][0] == "_id", "sorts end with _id so the order is total"
    flt = page_filter(query, sort, page.cursor)
    if residual:
        pipeline = [{"$match": flt}, {"$match": residual}, {"$sort": dict(sort)}, {"$limit": page.limit + 1}]
        if projection:
            pipeline.append({"$project": projection})
        docs = await (await collection.aggregate(pipeline)).to_list()
    else:
        docs = await collection.find(flt, projection=projection, sort=sort, limit=page.limit + 1).to_list()
    more = len(docs) > page.limit
    docs = docs[: page.limit]
    next_cursor = encode_cursor([_get(docs[-1], f) for f, _ in sort]) if more and docs else None
    items = [serialize(d) for d in docs]
    return {"items": items, "next_cursor": next_cursor}
