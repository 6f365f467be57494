"""The one base class every REST handler extends.

It owns: the JSON error body for every failure (ApiError, pydantic errors,
Tornado's own 404/405, anything unexpected), request ids, CORS, request-size
limits (bodies are streamed so an oversized upload is refused with a JSON 413
before it is buffered), and JSON serialization. Handlers only parse, call a
service, and return what to send.
"""
from __future__ import annotations

import json
import logging
import uuid
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import tornado.web
from bson.decimal128 import Decimal128
from pydantic import BaseModel, ValidationError
from tornado import httputil

from sheda_rt.clock import format_ts
from sheda_rt.errors import ApiError, BadRequest, TooLarge, UnsupportedMedia, ValidationFailed, from_storage

log = logging.getLogger("sheda.http")

#: Route kwarg for upload endpoints: `route(tpl, H, max_body=UPLOAD_BODY)` sizes the body limit from settings.
UPLOAD_BODY = "upload"

_STATUS_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
                 409: "conflict", 413: "too_large", 415: "unsupported_media_type", 422: "validation_error", 429: "rate_limited"}


def json_default(value: Any):
    if isinstance(value, datetime):
        return format_ts(value)
    if isinstance(value, Decimal128):
        value = value.to_decimal()
    if isinstance(value, Decimal):
        return str(value)  # money is a decimal string, never a float
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def dumps(value: Any) -> str:
    return json.dumps(value, default=json_default, separators=(",", ":"), ensure_ascii=False)


def stamp_request_id(handler: tornado.web.RequestHandler) -> None:
    """Give the response its X-Request-ID: the client's own (if sane) or a new one. Every handler
    calls this from set_default_headers (API routes, docs, static and media files, the socket's
    upgrade), so any response can be matched to its log line. Tornado calls set_default_headers
    again when an error clears the headers: the request keeps its one id."""
    if getattr(handler, "request_id", None) is None:
        incoming = handler.request.headers.get("X-Request-ID", "")
        handler.request_id = incoming if 0 < len(incoming) <= 128 and incoming.isprintable() else uuid.uuid4().hex
    handler.set_header("X-Request-ID", handler.request_id)


class RequestIdMixin:
    """For handlers that are not APIHandlers (static files, the docs page, the WebSocket)."""

    def set_default_headers(self):
        super().set_default_headers()
        stamp_request_id(self)


@tornado.web.stream_request_body
class APIHandler(tornado.web.RequestHandler):
    SUPPORTED_METHODS = ("GET", "HEAD", "POST", "DELETE", "PATCH", "PUT", "OPTIONS")
    #: Largest body this handler accepts; upload handlers raise it via the route kwargs
    #: (an int, or UPLOAD_BODY for MAX_UPLOAD_BYTES plus multipart overhead).
    max_body: int | str | None = None

    def initialize(self, path_types: dict | None = None, max_body: int | str | None = None, route_template: str | None = None, **_):
        self.path_types = path_types or {}
        self.route_template = route_template
        if max_body is not None:
            self.max_body = max_body
        self.principal = None
        self._chunks: list[bytes] = []
        self._received = 0

    @property
    def ctx(self):
        return self.application.ctx

    # ---- request lifecycle -------------------------------------------------
    def set_default_headers(self):
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        stamp_request_id(self)
        origin = self.request.headers.get("Origin")
        if origin and self._origin_allowed(origin):
            self.set_header("Access-Control-Allow-Origin", origin)
            self.set_header("Vary", "Origin")
            self.set_header("Access-Control-Expose-Headers", "X-Request-ID, Retry-After, WWW-Authenticate")

    def _origin_allowed(self, origin: str) -> bool:
        allowed = self.ctx.settings.cors_origins
        return "*" in allowed or origin in allowed

    def _limit(self) -> int:
        if self.max_body == UPLOAD_BODY:
            # One file of up to MAX_UPLOAD_BYTES plus the multipart framing and small fields, so an
            # oversized file is refused by the media store with its own message.
            return self.ctx.settings.max_upload_bytes + 64 * 1024
        return self.max_body if self.max_body is not None else self.ctx.settings.max_json_bytes

    def prepare(self):
        self.ctx.inflight.add(self)
        length = self.request.headers.get("Content-Length")
        if length is not None:
            try:
                size = int(length)
            except ValueError:
                raise BadRequest("Content-Length is not a number", "bad_content_length")
            if size > self._limit():
                self._chunks = None
                raise TooLarge(f"Request body is {size} bytes; the limit here is {self._limit()} bytes")

    def on_finish(self):
        self.ctx.inflight.discard(self)

    def on_connection_close(self):
        self.ctx.inflight.discard(self)
        super().on_connection_close()

    def data_received(self, chunk: bytes):
        if self._chunks is None:  # already refused; drain and drop
            return
        self._received += len(chunk)
        if self._received > self._limit():
            self._chunks = None
            if not self._finished:
                self.send_error(413, exc_info=(TooLarge, TooLarge(f"Request body exceeds {self._limit()} bytes"), None))
            return
        self._chunks.append(chunk)

    @property
    def body_bytes(self) -> bytes:
        if self._chunks is None:
            return b""
        if len(self._chunks) != 1:
            self._chunks = [b"".join(self._chunks)]
        return self._chunks[0]

    def options(self, *args, **kwargs):
        """CORS preflight: answered for any route, allowed origins only."""
        origin = self.request.headers.get("Origin")
        if origin and self._origin_allowed(origin):
            methods = [m for m in self.SUPPORTED_METHODS if m != "OPTIONS" and self._implements(m)]
            self.set_header("Access-Control-Allow-Methods", ", ".join(methods + ["OPTIONS"]))
            requested = self.request.headers.get("Access-Control-Request-Headers")
            self.set_header("Access-Control-Allow-Headers", requested or "Authorization, Content-Type, X-Request-ID")
            self.set_header("Access-Control-Max-Age", "600")
        self.set_status(204)
        self.finish()

    def _implements(self, method: str) -> bool:
        impl = getattr(type(self), method.lower(), None)
        return impl is not None and impl is not getattr(tornado.web.RequestHandler, method.lower(), None)

    # ---- parsing -----------------------------------------------------------
    def convert_path_args(self, kwargs: dict) -> dict:
        for name, kind in self.path_types.items():
            if name in kwargs:
                kwargs[name] = kind(kwargs[name])
        return kwargs

    def parse_query(self, model: type[BaseModel]) -> BaseModel:
        raw = {}
        for key, values in self.request.query_arguments.items():
            decoded = [v.decode("utf-8", "replace") for v in values]
            raw[key] = decoded if len(decoded) > 1 else decoded[0]
        try:
            return model.model_validate(raw)
        except ValidationError as exc:
            raise ValidationFailed.from_pydantic(exc)

    def form_fields(self) -> tuple[dict, dict]:
        """Parse a urlencoded or multipart body into (fields, files)."""
        fields: dict[str, list[bytes]] = {}
        files: dict[str, list[httputil.HTTPFile]] = {}
        content_type = self.request.headers.get("Content-Type", "")
        try:
            httputil.parse_body_arguments(content_type, self.body_bytes, fields, files, self.request.headers)
        except httputil.HTTPInputError as exc:  # no boundary, a truncated part, garbage: the client's fault
            raise BadRequest(f"Malformed form body: {exc}", "invalid_form")
        flat = {k: v[-1].decode("utf-8", "replace") for k, v in fields.items()}
        return flat, files

    def uploaded_file(self, field: str = "file") -> bytes:
        """The bytes of one multipart file field: 415 unless the body is multipart/form-data,
        422 when the field is missing. What the bytes are is the media store's question."""
        content_type = self.request.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if content_type != "multipart/form-data":
            raise UnsupportedMedia(f"Send multipart/form-data with the image in the field {field!r}", "multipart_required")
        _, files = self.form_fields()
        if not files.get(field):
            raise ValidationFailed.single(field, "is required (a multipart file field)")
        return files[field][0].body

    def parse_body(self, model: type[BaseModel], *, form: bool = False) -> BaseModel:
        content_type = self.request.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if form and content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
            data: Any = self.form_fields()[0]
        else:
            raw = self.body_bytes
            if not raw.strip():
                data = {}
            else:
                try:
                    data = json.loads(raw)
                except (ValueError, UnicodeDecodeError):
                    raise BadRequest("Body is not valid JSON", "invalid_json")
            if not isinstance(data, dict):
                raise ValidationFailed.single("body", "must be a JSON object")
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            raise ValidationFailed.from_pydantic(exc)

    # ---- writing -----------------------------------------------------------
    def send(self, payload: Any, status: int = 200):
        self.set_status(status)
        if payload is None or status == 204:
            if status == 200:
                self.set_status(204)
            self.clear_header("Content-Type")
            self.finish()
            return
        self.finish(dumps(payload))

    def write_error(self, status_code: int, **kwargs):
        exc = kwargs.get("exc_info", (None, None, None))[1]
        exc = from_storage(exc) or exc
        if isinstance(exc, ApiError):
            self.set_status(exc.status)
            for name, value in exc.headers.items():
                self.set_header(name, value)
            body = exc.body()
        elif isinstance(exc, ValidationError):
            failed = ValidationFailed.from_pydantic(exc)
            self.set_status(422)
            body = failed.body()
        elif isinstance(exc, tornado.web.HTTPError) and exc.status_code < 500:
            message = (exc.log_message % exc.args if exc.args else exc.log_message) if exc.log_message else self._reason
            body = {"detail": message, "code": _STATUS_CODES.get(exc.status_code, "http_error")}
            if exc.status_code == 405:
                self.set_header("Allow", ", ".join(m for m in self.SUPPORTED_METHODS if self._implements(m)))
                body["detail"] = f"Method {self.request.method} is not allowed here"
        else:
            body = {"detail": "Internal server error", "code": "internal_error", "request_id": getattr(self, "request_id", None)}
            if status_code < 500:
                body = {"detail": self._reason, "code": _STATUS_CODES.get(status_code, "http_error")}
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish(dumps(body))

    def log_exception(self, typ, value, tb):
        if isinstance(value, (ApiError, ValidationError)):
            return  # an answered client error, not a server fault
        if from_storage(value) is not None:  # answered 503; one line, not a traceback per request
            log.warning(json.dumps({"event": "database_unavailable", "method": self.request.method, "path": self.request.path,
                                    "error": f"{type(value).__name__}: {str(value)[:200]}"}))
            return
        super().log_exception(typ, value, tb)


class NotFoundHandler(APIHandler):
    """Unknown routes: the contract's JSON 404 for every method."""

    def prepare(self):
        if self.request.method == "OPTIONS":
            return
        raise tornado.web.HTTPError(404, "No such route: %s", self.request.path)
