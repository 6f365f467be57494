"""Conditional single-document writes that hand back the document, fast on any engine.

`find_one_and_update` is the natural call, but the embedded database serves it by
scanning the whole collection (measured: 12 ms at 1,000 documents, 150 ms at
20,000, linear), while `update_one` and `find_one` use the `_id` index everywhere.
So a write that must report the document is an `update_one` whose filter still
carries every expected value (the write stays atomic and conditional: of racing
callers exactly one matches) followed by a `find_one` by `_id`. The document
returned is the current one: a write landing in between shows through, which is
what the caller would read a moment later anyway.
"""
from __future__ import annotations


async def update_then_get(col, flt: dict, update, *, upsert: bool = False) -> dict | None:
    """Apply `update` to the one document matching `flt` (which names its `_id`); the
    document after the write, or None when nothing matched (and nothing was upserted)."""
    result = await col.update_one(flt, update, upsert=upsert)
    if result.matched_count == 0 and result.upserted_id is None:
        return None
    return await col.find_one({"_id": flt["_id"]})


async def get_then_update(col, flt: dict, update) -> dict | None:
    """The document as it was before `update`, or None when `flt` matched nothing (or a
    racing writer changed it so that it no longer matched when we wrote)."""
    before = await col.find_one(flt)
    if before is None:
        return None
    result = await col.update_one(flt, update)
    return before if result.modified_count == 1 else None
