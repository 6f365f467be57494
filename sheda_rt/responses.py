"""Building blocks of the response models: every REST success body is validated
through its model on the way out (handlers/routing.py), and the same model is its
schema in the OpenAPI document, so the document cannot promise one shape while
the server sends another.

A response model checks what the services build; it does not rebuild it. The
serializer keeps exactly the keys a service produced (`exclude_unset`), so a
field that a service leaves out is not suddenly sent as null, and new fields
added by a service still reach clients (the contract: add fields, never drop
one) — the models allow extras, and the tests hold the document to listing
every field (tests/test_openapi_typed.py).

Media URLs are the one value the serializer changes: `MediaUrl` makes a stored
`/media/...` path absolute when PUBLIC_BASE_URL is set (`public_media_url`, the
one place media URLs are made), so a web app on another origin can load them.
"""
from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Generic, Literal, Optional, TypeVar

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationInfo

from sheda_rt.clock import format_ts

#: Key of the validation context that carries PUBLIC_BASE_URL to `MediaUrl`.
MEDIA_BASE = "public_base_url"
#: Set in the validation context when a `MediaUrl` was made absolute (the body must be rebuilt).
MEDIA_REWRITTEN = "media_rewritten"

TIMESTAMP_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z$"
MONEY_PATTERN = r"^-?[0-9]+\.[0-9]{2}$"


class ResponseModel(BaseModel):
    """Base of every response model. Extras are allowed at run time (a field a service adds
    is sent, not dropped); the document's schemas are tested to name every field sent."""

    model_config = ConfigDict(extra="allow")


def _timestamp(value: Any) -> Any:
    return format_ts(value) if isinstance(value, datetime) else value


def public_media_url(path: Optional[str], base: Optional[str]) -> Optional[str]:
    """A stored media path (`/media/avatars/ab12.png`) as clients get it: absolute under
    PUBLIC_BASE_URL when that is set, else the path itself. Already absolute URLs pass."""
    if path is None or not base or not path.startswith("/"):
        return path
    return base + path


def _media_url(value: Optional[str], info: ValidationInfo) -> Optional[str]:
    context = info.context if info.context is not None else {}
    url = public_media_url(value, context.get(MEDIA_BASE))
    if url != value:
        context[MEDIA_REWRITTEN] = True
    return url


#: ISO 8601 UTC with milliseconds and Z, e.g. 2025-10-16T10:00:00.000Z.
Timestamp = Annotated[str, Field(pattern=TIMESTAMP_PATTERN, json_schema_extra={"format": "date-time"}, examples=["2025-10-16T10:00:00.000Z"]),
                      BeforeValidator(_timestamp)]
#: Money: a decimal string with two decimals (naira), never a float.
MoneyText = Annotated[str, Field(pattern=MONEY_PATTERN, examples=["2500000.00"], description="decimal string, two decimals (naira)")]
#: A media file's URL: `/media/...`, or absolute under PUBLIC_BASE_URL when it is set.
MediaUrl = Annotated[str, AfterValidator(_media_url),
                     Field(description="/media/... path, or an absolute URL when the server sets PUBLIC_BASE_URL")]

T = TypeVar("T")


class Page(ResponseModel, Generic[T]):
    """A cursor page: pass `next_cursor` back as `?cursor=` for the next one; null on the last page."""

    items: list[T]
    next_cursor: Optional[str]


class Detail(ResponseModel):
    """A success that only has something to say (e.g. 202 on send-otp)."""

    detail: str


class Health(ResponseModel):
    status: Literal["ok"]


class Readiness(ResponseModel):
    """`checks` names each dependency (`database`, and `redis` when configured) with "ok" or what failed."""

    status: Literal["ready", "unavailable"]
    checks: dict[str, str]
