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
from datetime import datetime
from decimal import Decimal
from typing import Any

from bson.decimal128 import Decimal128
from pydantic import BaseModel, Field

from sheda_rt.errors import ValidationFailed


class PageQuery(BaseModel):
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


def _dec(value: Any) -> Any:
    if isinstance(value, dict) and "$dt" in value:
        return datetime.fromisoformat(value["$dt"])
    if isinstance(value, dict) and "$dec" in value:
        return Decimal128(value["$dec"])
    return value


def encode_cursor(values: list) -> str:
    raw = json.dumps([_enc(v) for v in values], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, size: int) -> list:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        values = [_dec(v) for v in json.loads(raw)]
    except (ValueError, TypeError):
        raise ValidationFailed.single("cursor", "is not a cursor this API issued")
    if not isinstance(values, list) or len(values) != size:
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


async def paginate(collection, query: dict, sort: list[tuple[str, int]], page: PageQuery, serialize, projection=None) -> dict:
    """Run one keyset page. `sort` must end with ("_id", ±1)."""
    assert sort[-1][0] == "_id", "sorts end with _id so the order is total"
    flt = dict(query)
    if page.cursor:
        flt = {"$and": [query, after_filter(sort, decode_cursor(page.cursor, len(sort)))]} if query else after_filter(sort, decode_cursor(page.cursor, len(sort)))
    docs = await collection.find(flt, projection=projection, sort=sort, limit=page.limit + 1).to_list()
    more = len(docs) > page.limit
    docs = docs[: page.limit]
    next_cursor = encode_cursor([_get(docs[-1], f) for f, _ in sort]) if more and docs else None
    items = [serialize(d) for d in docs]
    return {"items": items, "next_cursor": next_cursor}
