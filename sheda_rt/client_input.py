"""The one decoder for what clients send: REST bodies, WebSocket frames, query
strings, form fields, file names.

Whatever it returns can be stored (BSON strings are UTF-8) and sent back on the
wire (our JSON is UTF-8); whatever cannot is refused here, as a client error,
before it reaches a service, a chat batch or an error frame. Found by real
clients:

- A lone UTF-16 surrogate (the JSON escape `\\ud800`) decodes to a Python str
  that cannot be encoded as UTF-8. Stored, it failed the whole group-commit batch
  it landed in (other users' messages too); echoed in an error frame, the frame
  could not be encoded and the socket was dropped. Refused as a 422
  `validation_error` naming the field.
- Deep nesting (`'[' * 2000 + ']' * 2000`, 4 KB) made the standard decoder raise
  RecursionError: a 500 on every JSON route and a dropped socket. JSON is parsed
  by pydantic-core's parser (no Python recursion, its own limit of 200 levels),
  and documents deeper than MAX_DEPTH are refused as `invalid_json`, so nothing
  downstream (validation, serialization) ever walks a deep document.
- `NaN` / `Infinity` are not JSON; they are refused like any other syntax error.
"""
from __future__ import annotations

import json
import re
from typing import Any

import pydantic_core

from sheda_rt.errors import BadRequest, ValidationFailed

#: Deepest nesting accepted in a body or frame. The deepest real document (a listing
#: with its geo point) is 2 levels; anything near this is not a client of ours.
MAX_DEPTH = 32

_SURROGATE = re.compile("[\ud800-\udfff]")
SURROGATE_MESSAGE = "holds a lone UTF-16 surrogate (\\ud800-\\udfff), which is not valid Unicode"


class InvalidJson(BadRequest):
    code = "invalid_json"


class LoneSurrogate(ValidationFailed):
    """422 naming the field; `document` is what the text decodes to, so a socket can
    still echo a valid `client_msg_id` from it."""

    def __init__(self, field: str, document: Any = None):
        super().__init__([{"field": field, "message": SURROGATE_MESSAGE}], detail=f"{field}: {SURROGATE_MESSAGE}")
        self.document = document


# ISO 8601's offset of whole hours ("+01", how PostgreSQL prints a timestamptz), which pydantic's parser does not take
_HOURS_OFFSET = re.compile(r"(?<=[0-9])([+-][0-9]{2})$")


def iso_offset(text: str) -> str:
    """A client's ISO 8601 date-time with every offset form the standard allows: "+01" becomes "+01:00" ("+01:00",
    "+0100" and "Z" pass as they are). For every request field that takes a time (a viewing's, a mute's end)."""
    return _HOURS_OFFSET.sub(r"\1:00", text)


def has_surrogate(text: str) -> bool:
    return _SURROGATE.search(text) is not None


def printable_key(key: str) -> str:
    """A key (or any client string) as wire-safe text: lone surrogates become `\\udXXX`."""
    return key.encode("utf-8", "backslashreplace").decode("utf-8")


def wire_safe(text: str) -> str:
    """Text that can always be encoded as UTF-8 (for echoing client values in errors)."""
    return text if not has_surrogate(text) else printable_key(text)


def parse_json(raw: bytes | str, what: str = "Body") -> Any:
    """Parse one JSON document strictly. Raises InvalidJson (400) for bad syntax or
    nesting deeper than MAX_DEPTH, LoneSurrogate (422) for a lone surrogate in any
    string, keys included."""
    try:
        doc = pydantic_core.from_json(raw, allow_inf_nan=False, cache_strings=False)
    except (ValueError, TypeError) as exc:
        # pydantic-core refuses lone surrogates too, but without saying where: find the field.
        message = str(exc)
        if "surrogate" in message or "hex escape" in message or isinstance(exc, TypeError):
            _name_the_surrogate(raw)
        if "recursion limit" in message:
            raise InvalidJson(f"{what} is nested deeper than {MAX_DEPTH} levels") from None
        raise InvalidJson(f"{what} is not valid JSON") from None
    # Cheap test first: a document with few brackets cannot be deep.
    brackets = raw.count(b"[") + raw.count(b"{") if isinstance(raw, (bytes, bytearray)) else raw.count("[") + raw.count("{")
    if brackets > MAX_DEPTH and _depth_exceeds(doc, MAX_DEPTH):
        raise InvalidJson(f"{what} is nested deeper than {MAX_DEPTH} levels")
    return doc


def _depth_exceeds(doc: Any, limit: int) -> bool:
    stack = [(doc, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


def _name_the_surrogate(raw: bytes | str) -> None:
    """Raise LoneSurrogate naming the first offending string, if the text is otherwise
    JSON. (The standard decoder accepts lone surrogates; it only runs on text the strict
    parser refused, and depth is checked before anything recursive touches it.)"""
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):
        return
    stack: list[tuple[Any, str]] = [(doc, "")]
    while stack:
        node, path = stack.pop()
        if isinstance(node, str):
            if has_surrogate(node):
                raise LoneSurrogate(path or "body", doc if not _depth_exceeds(doc, MAX_DEPTH) else None)
        elif isinstance(node, dict):
            for key, value in node.items():
                field = f"{path}.{printable_key(key)}" if path else printable_key(key)
                if has_surrogate(key):
                    raise LoneSurrogate(field, None)
                stack.append((value, field))
        elif isinstance(node, list):
            stack.extend((value, f"{path}.{i}" if path else str(i)) for i, value in enumerate(node))


def text(value: bytes, field: str) -> str:
    """A query-string value, form field or file name: strict UTF-8. Invalid bytes were
    silently turned into U+FFFD before; now the client is told which field is wrong."""
    try:
        decoded = value.decode("utf-8")
    except UnicodeDecodeError:
        raise ValidationFailed.single(printable_key(field), "is not valid UTF-8") from None
    return decoded


def check_text(value: str, field: str) -> str:
    """A string already decoded by someone else (a path parameter, a file name): refuse lone surrogates."""
    if has_surrogate(value):
        raise LoneSurrogate(printable_key(field))
    return value
