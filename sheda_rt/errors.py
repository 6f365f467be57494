"""Failures the services raise, independent of transport, and the one mapping of any
exception to what a client is told (`to_wire`).

REST turns them into `{"detail", "code"}` bodies with the status below; the
WebSocket turns them into `{"type": "error", "code", "detail"}` frames. Services
never import Tornado: they raise these and the edge decides the wire format.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import ValidationError


class ApiError(Exception):
    status = 400
    code = "bad_request"

    def __init__(self, detail: str, code: str | None = None, *, headers: dict | None = None, extra: dict | None = None):
        super().__init__(detail)
        self.detail = detail
        if code:
            self.code = code
        self.headers = headers or {}
        self.extra = extra or {}

    def body(self) -> dict:
        return {"detail": self.detail, "code": self.code, **self.extra}


class BadRequest(ApiError):
    status, code = 400, "bad_request"


class Unauthorized(ApiError):
    status, code = 401, "unauthorized"

    def __init__(self, detail: str = "Missing or invalid token", code: str | None = None, **kw):
        super().__init__(detail, code, **kw)
        self.headers.setdefault("WWW-Authenticate", "Bearer")


class Forbidden(ApiError):
    status, code = 403, "forbidden"


class NotFound(ApiError):
    status, code = 404, "not_found"


class Conflict(ApiError):
    status, code = 409, "conflict"


class TooLarge(ApiError):
    status, code = 413, "too_large"


class UnsupportedMedia(ApiError):
    status, code = 415, "unsupported_media_type"


class FieldError(ValueError):
    """A model validator's complaint about one field of a cross-field rule (price_min above price_max is
    price_max's). Pydantic reports it as any ValueError, with no location (the rule is the model's);
    ValidationFailed.from_pydantic names `field` in the 422 errors instead of the whole body or query."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


class ValidationFailed(ApiError):
    """422 with `errors: [{field, message}]`."""

    status, code = 422, "validation_error"

    def __init__(self, errors: list[dict], detail: str = "Request validation failed"):
        super().__init__(detail, extra={"errors": errors})
        self.errors = errors

    @classmethod
    def single(cls, field: str, message: str) -> "ValidationFailed":
        return cls([{"field": field, "message": message}], detail=f"{field}: {message}")

    @classmethod
    def from_pydantic(cls, exc, where: str = "body", data=None) -> "ValidationFailed":
        """`where`: what an error of the whole model is about ("body", or "query" for a query string).
        `data`: the input validated; given, `field` names only what the client sent (see _input_loc)."""
        errors = []
        for err in exc.errors(include_url=False):
            loc = [str(p) for p in err["loc"]] if data is None else _input_loc(err, data)
            named = getattr((err.get("ctx") or {}).get("error"), "field", None)  # a FieldError of a model validator
            if named is not None and (not loc or loc[-1] != named):
                loc.append(named)  # under a nested model's own location (a saved search's query.price_max)
            field = ".".join(loc) or where
            errors.append({"field": field, "message": err["msg"]})
        return cls(errors, detail="; ".join(f"{e['field']}: {e['message']}" for e in errors[:3]))


def _input_loc(err: dict, data) -> list[str]:
    """An error's location as the client's keys: pydantic puts the members of a union in it (a device's
    `fcm.token`: the tag of the `platform` union; `muted_until.datetime` and `muted_until.literal['forever']`: the
    alternatives of one field), which are no field of the body. Walk the input along the location and keep
    what is in it; a last key absent from it is a missing field (kept). An unknown or absent union tag is
    the discriminator's field."""
    loc, current, out = list(err["loc"]), data, []
    for i, part in enumerate(loc):
        if isinstance(current, dict) and part in current:
            current = current[part]
        elif isinstance(current, list) and isinstance(part, int) and 0 <= part < len(current):
            current = current[part]
        elif isinstance(current, dict) and i == len(loc) - 1:
            pass  # a missing field
        else:
            continue  # a union member's label, not a key of the input
        out.append(str(part))
    if err.get("type") in ("union_tag_invalid", "union_tag_not_found"):
        out.append(str((err.get("ctx") or {}).get("discriminator", "")).strip("'\""))
    return out


class RateLimited(ApiError):
    status, code = 429, "rate_limited"

    def __init__(self, detail: str, retry_after: int, code: str | None = None):
        super().__init__(detail, code, headers={"Retry-After": str(max(1, int(retry_after)))},
                         extra={"retry_after": max(1, int(retry_after))})


class ServiceUnavailable(ApiError):
    status, code = 503, "unavailable"


class DatabaseUnavailable(ServiceUnavailable):
    code = "database_unavailable"


def from_storage(exc: BaseException) -> ApiError | None:
    """The database could not be reached (down, restarting, failing over): a 503 the
    client may retry, not a 500. None for anything else."""
    from pymongo.errors import ConnectionFailure  # the driver's "could not talk to it" family

    if isinstance(exc, ConnectionFailure):
        return DatabaseUnavailable("The database is unavailable; try again in a few seconds",
                                   headers={"Retry-After": "5"}, extra={"retry_after": 5})
    return None


#: `WireError.log_event` values: what the server logs about an error it answered.
DATABASE_UNAVAILABLE = "database_unavailable"  # one warning line per failure, no traceback
INTERNAL_ERROR = "internal_error"  # a fault of ours: the edge logs the traceback


@dataclass(frozen=True)
class WireError:
    """What a client is told about an exception, whatever the transport: the status
    (REST), the fields of the body or error frame (`code`, `detail`, then `extra`:
    `errors`, `retry_after`, ...), the headers (REST: Retry-After, WWW-Authenticate),
    and what the server logs (`log_event`: None for a client's error answered as such)."""

    status: int
    code: str
    detail: str
    extra: dict = field(default_factory=dict)
    headers: dict = field(default_factory=dict)
    log_event: str | None = None

    def body(self) -> dict:
        """The REST body: {"detail", "code", **extra}."""
        return {"detail": self.detail, "code": self.code, **self.extra}

    @property
    def is_fault(self) -> bool:
        return self.log_event == INTERNAL_ERROR

    def log_record(self, exc: BaseException, **where) -> dict:
        """The log line for an answered storage fault: where it happened (a route, a frame) and
        what the driver said."""
        return {"event": self.log_event, **where, "error": f"{type(exc).__name__}: {str(exc)[:200]}"}


def to_wire(exc: BaseException, fault_detail: str = "Internal server error") -> WireError:
    """The one mapping of an exception to the wire, for REST errors and WebSocket error
    frames alike: an ApiError as it says; a pydantic ValidationError as a 422 naming the
    fields; the database out of reach as a 503 the client may retry (`from_storage`);
    anything else as a fault of ours (500, `fault_detail`, logged with its traceback)."""
    mapped = from_storage(exc)
    if mapped is not None:
        known, event = mapped, DATABASE_UNAVAILABLE
    elif isinstance(exc, ApiError):
        known, event = exc, None
    elif isinstance(exc, ValidationError):
        known, event = ValidationFailed.from_pydantic(exc), None
    else:
        return WireError(500, "internal_error", fault_detail, log_event=INTERNAL_ERROR)
    return WireError(known.status, known.code, known.detail, dict(known.extra), dict(known.headers), event)
