"""The one JSON encoder for everything that goes on the wire: REST bodies and error
bodies, socket frames (live, replayed, broadcast, channel events), SSE events.

Compact separators and UTF-8 text as it is (`ensure_ascii=False`). The few non-JSON
values the services hand over are written the contract's way, and only those:

- a datetime as `sheda_rt.clock.format_ts` writes it (`2025-10-16T10:00:00.000Z`);
- money (`Decimal`, BSON `Decimal128`) as a decimal string, never a float;
- a calendar date as `YYYY-MM-DD`; a pydantic model as its JSON dump; sets and tuples as lists.

Anything else is a TypeError. Three encoders used to disagree: the hub's fell back to
`str()`, so a datetime in a frame went out as Python's `2025-10-16 10:00:00+00:00` (not
the contract's format) and an unknown object as its repr, which no client can parse;
failing loudly where the frame is built is the better bug.
"""
from __future__ import annotations

import json
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from bson.decimal128 import Decimal128
from pydantic import BaseModel

from sheda_rt.clock import format_ts


def _default(value: Any):
    if isinstance(value, datetime):  # before date: a datetime is a date
        return format_ts(value)
    if isinstance(value, Decimal128):
        value = value.to_decimal()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"not JSON serializable on the wire: {type(value).__name__}")


# One encoder object, built once: json.dumps with options builds a new JSONEncoder per call,
# and the chat path encodes every frame through here.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=_default)


def encode(obj: Any) -> str:
    """`obj` as wire JSON text."""
    return _ENCODER.encode(obj)
