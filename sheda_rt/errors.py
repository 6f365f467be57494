"""Failures the services raise, independent of transport.

REST turns them into `{"detail", "code"}` bodies with the status below; the
WebSocket turns them into `{"type": "error", "code", "detail"}` frames. Services
never import Tornado: they raise these and the edge decides the wire format.
"""
from __future__ import annotations


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
    def from_pydantic(cls, exc) -> "ValidationFailed":
        errors = []
        for err in exc.errors(include_url=False):
            field = ".".join(str(p) for p in err["loc"]) or "body"
            errors.append({"field": field, "message": err["msg"]})
        return cls(errors, detail="; ".join(f"{e['field']}: {e['message']}" for e in errors[:3]))


class RateLimited(ApiError):
    status, code = 429, "rate_limited"

    def __init__(self, detail: str, retry_after: int):
        super().__init__(detail, headers={"Retry-After": str(max(1, int(retry_after)))}, extra={"retry_after": max(1, int(retry_after))})


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
