"""The one base class every REST handler extends.

It owns: the JSON error body for every failure (ApiError, pydantic errors,
Tornado's own 404/405, anything unexpected), request ids, CORS, request-size
limits (bodies are streamed so an oversized upload is refused with a JSON 413
before it is buffered), and JSON serialization. Handlers only parse, call a
service, and return what to send.
"""
from __future__ import annotations

import asyncio
import json
import logging
import re
import uuid
from typing import Any

import tornado.web
from pydantic import BaseModel, ValidationError
from tornado import httputil
from tornado.iostream import StreamClosedError

from sheda_rt import client_input
from sheda_rt.errors import DATABASE_UNAVAILABLE, ApiError, BadRequest, TooLarge, UnsupportedMedia, ValidationFailed, to_wire
from sheda_rt.wire import encode

log = logging.getLogger("sheda.http")

#: Route kwarg for upload endpoints: `route(tpl, H, max_body=UPLOAD_BODY)` sizes the body limit from settings.
UPLOAD_BODY = "upload"

#: A body that is too large is answered at once (413, `Connection: close`), then read and
#: dropped for up to this long before the connection is closed. Closing with the body still
#: arriving makes the kernel reset the connection, and the client saw "connection reset"
#: instead of its 413 (every time for a 30 MB body: Tornado's own size cap closed it first).
LINGER_SECONDS = 30.0

_STATUS_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
                 409: "conflict", 413: "too_large", 415: "unsupported_media_type", 422: "validation_error", 429: "rate_limited",
                 431: "headers_too_large"}


#: The one wire encoder (sheda_rt/wire.py), under the name handlers have always imported.
dumps = encode


def stamp_request_id(handler: tornado.web.RequestHandler) -> None:
    """Give the response its X-Request-ID: the client's own (if sane) or a new one. Every handler
    calls this from set_default_headers (API routes, docs, static and media files, the socket's
    upgrade), so any response can be matched to its log line. Tornado calls set_default_headers
    again when an error clears the headers: the request keeps its one id."""
    if getattr(handler, "request_id", None) is None:
        incoming = handler.request.headers.get("X-Request-ID", "")
        handler.request_id = incoming if 0 < len(incoming) <= 128 and incoming.isprintable() else uuid.uuid4().hex
    handler.set_header("X-Request-ID", handler.request_id)


# `?_=<time>`: what web clients add to a GET so no cache answers it (jQuery `cache: false`, many fetch
# wrappers). Every read ignores it; a write never gets one from them, so there it stays an unknown key.
CACHE_BUSTER = "_"


class RequestIdMixin:
    """For handlers that are not APIHandlers (static files, the docs page, the WebSocket)."""

    def set_default_headers(self):
        super().set_default_headers()
        stamp_request_id(self)


class StaticFiles(RequestIdMixin, tornado.web.StaticFileHandler):
    """Files from a folder (media uploads, the docs' assets) with the API's conventions: JSON
    errors, and only names a file of ours can have. `GET /media/%00` made the filesystem
    call raise ValueError (a 500); a 5,000-character name, OSError."""

    #: What a served name looks like; anything else is a 404 before the filesystem is asked.
    names = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}(/[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}){0,3}")

    def parse_url_path(self, url_path: str) -> str:
        if not self.names.fullmatch(url_path):
            raise tornado.web.HTTPError(404)
        return super().parse_url_path(url_path)

    def write_error(self, status_code: int, **kwargs):
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        code = _STATUS_CODES.get(status_code, "http_error" if status_code < 500 else "internal_error")
        self.finish(dumps({"detail": "No such file" if status_code == 404 else self._reason, "code": code}))


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
            if not (length.isascii() and length.isdigit()) or len(length) > 18:
                self._drainable = False  # Tornado refuses this message too, and closes
                raise BadRequest("Content-Length is not a number", "bad_content_length")
            size = int(length)
            if size > self._limit():
                self._chunks = None
                self.refuse_body(TooLarge(f"Request body is {size} bytes; the limit here is {self._limit()} bytes"), size)

    def refuse_body(self, exc: ApiError, size: int) -> None:
        """Refuse a request before its body is read (only from prepare): the answer goes out
        now with `Connection: close`, and the body is read and dropped as it arrives (up to
        its declared size, for LINGER_SECONDS at most) before the connection is closed, so
        the client reads the answer instead of a reset."""
        if self.request.version != "HTTP/1.1" or not hasattr(self.request.connection, "detach"):
            raise exc
        self.ctx.inflight.discard(self)
        self.clear()  # the default headers again: Content-Type, X-Request-ID, CORS
        self.set_status(exc.status)
        for name, value in exc.headers.items():
            self.set_header(name, value)
        body = dumps(exc.body()).encode()
        self.set_header("Content-Length", str(len(body)))
        self.set_header("Connection", "close")
        head = f"HTTP/1.1 {exc.status} {self._reason}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in self._headers.get_all()) + "\r\n"
        self.application.log_request(self)
        stream = self.detach()
        task = asyncio.ensure_future(_answer_and_linger(stream, head.encode("latin-1") + body, size))
        _LINGERING.add(task)
        task.add_done_callback(_LINGERING.discard)

    def send_error(self, status_code: int = 500, **kwargs):
        """A refusal raised before the body has arrived (an unknown route, a method not
        allowed) waits for the body, dropping it as it comes, and is sent after it: answering
        first made Tornado close the connection with the body unread, and about half the time
        the client saw a reset instead of its 404 and lost its kept-alive connection. (Bodies
        are at most the handler's limit here: a larger one was refused by refuse_body.)"""
        body_done = getattr(self.request, "_body_future", None)
        if body_done is not None and not body_done.done() and not self._finished and getattr(self, "_drainable", True):
            self._chunks = None
            self._drainable = False  # one deferred answer per request
            body_done.add_done_callback(lambda done: self._send_deferred_error(done, status_code, kwargs))
            return
        # Answered with the body still unread: Tornado closes the connection after this answer.
        self._closes_connection = body_done is not None and not body_done.done()
        super().send_error(status_code, **kwargs)

    def _send_deferred_error(self, done, status_code: int, kwargs: dict) -> None:
        if done.cancelled() or done.exception() is not None or self._finished:
            return  # the client went away meanwhile
        try:
            super().send_error(status_code, **kwargs)
        except Exception:
            log.exception("could not send a deferred error")

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
                self._drainable = False  # a chunked body of unknown length: refused now
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
            if key == CACHE_BUSTER and self.request.method in ("GET", "HEAD"):
                continue  # a web client's cache-buster (jQuery's cache: false), on any read: never the client's typo
            decoded = [client_input.text(v, key) for v in values]
            raw[key] = decoded if len(decoded) > 1 else decoded[0]
        try:
            return model.model_validate(raw)
        except ValidationError as exc:
            raise ValidationFailed.from_pydantic(exc, where="query")

    def form_fields(self) -> tuple[dict, dict]:
        """Parse a urlencoded or multipart body into (fields, files)."""
        fields: dict[str, list[bytes]] = {}
        files: dict[str, list[httputil.HTTPFile]] = {}
        content_type = self.request.headers.get("Content-Type", "")
        try:
            httputil.parse_body_arguments(content_type, self.body_bytes, fields, files, self.request.headers)
        except httputil.HTTPInputError as exc:  # no boundary, a truncated part, garbage: the client's fault
            raise BadRequest(f"Malformed form body: {exc}", "invalid_form")
        flat = {k: client_input.text(v[-1], k) for k, v in fields.items()}
        for name, uploads in files.items():
            for upload in uploads:
                client_input.check_text(upload.filename or "", f"{name}.filename")
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
        """A JSON body (Content-Type application/json, else 415), or a form where the route
        accepts one. JSON is decoded by client_input (bounded depth, no lone surrogates)
        and validated by the model, whose fields are strict about JSON types (StrictInt,
        StrictBool, or a strict model config like the chat's, shared with the socket):
        `"receiver_id": "2"`, `2.0` or `false` for an integer is a 422, not a guess."""
        header = self.request.headers.get("Content-Type", "")
        content_type, _, params = header.partition(";")
        content_type = content_type.strip().lower()
        if form and content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
            data: Any = self.form_fields()[0]
            try:
                return model.model_validate(data)
            except ValidationError as exc:
                raise ValidationFailed.from_pydantic(exc, data=data)
        raw = self.body_bytes
        if not raw.strip():
            data = {}
        else:
            charsets = {v.strip().strip('"').lower() for k, _, v in (p.partition("=") for p in params.split(";"))
                        if k.strip().lower() == "charset"}
            if content_type != "application/json" or not charsets <= {"utf-8", "utf8"}:
                accepted = "application/json" + (" or a form (application/x-www-form-urlencoded, multipart/form-data)" if form else "")
                raise UnsupportedMedia(f"Send the body as {accepted}, not {header or 'no Content-Type'}")
            data = client_input.parse_json(raw)
        if not isinstance(data, dict):
            raise ValidationFailed.single("body", "must be a JSON object")
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            raise ValidationFailed.from_pydantic(exc, data=data)

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
        wire = to_wire(exc) if exc is not None and not isinstance(exc, tornado.web.HTTPError) else None
        if wire is not None and not wire.is_fault:  # the one mapping REST and socket errors share
            self.set_status(wire.status)
            for name, value in wire.headers.items():
                self.set_header(name, value)
            body = wire.body()
        elif isinstance(exc, tornado.web.HTTPError) and exc.status_code < 500:
            message = (exc.log_message % exc.args if exc.args else exc.log_message) if exc.log_message else self._reason
            body = {"detail": message, "code": _STATUS_CODES.get(exc.status_code, "http_error")}
            if exc.status_code == 405:
                self.set_header("Allow", ", ".join(m for m in self.SUPPORTED_METHODS if self._implements(m)))
                body["detail"] = f"Method {self.request.method} is not allowed here"
        elif status_code < 500:  # Tornado's own refusals without an exception (send_error(404))
            body = {"detail": self._reason, "code": _STATUS_CODES.get(status_code, "http_error")}
        else:  # a fault of ours: the request id lets the client's report be matched to the traceback
            fault = wire or to_wire(exc)
            body = {**fault.body(), "request_id": getattr(self, "request_id", None)}
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        if getattr(self, "_closes_connection", False):
            self.set_header("Connection", "close")
        self.finish(dumps(body))

    def log_exception(self, typ, value, tb):
        wire = to_wire(value)
        if wire.log_event is None:
            return  # an answered client error, not a server fault
        if wire.log_event == DATABASE_UNAVAILABLE:  # answered 503; one line, not a traceback per request
            log.warning(json.dumps(wire.log_record(value, method=self.request.method, path=self.request.path)))
            return
        super().log_exception(typ, value, tb)  # Tornado's HTTPErrors and our faults


_LINGERING: set = set()


async def _answer_and_linger(stream, response: bytes, size: int) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + LINGER_SECONDS
    try:
        await stream.write(response)
        left = size
        while left > 0 and loop.time() < deadline:
            chunk = await asyncio.wait_for(stream.read_bytes(min(left, 1 << 20), partial=True), deadline - loop.time())
            left -= len(chunk)
    except (StreamClosedError, asyncio.TimeoutError, OSError):
        pass
    finally:
        stream.close()


class HeadersTooLargeHandler(APIHandler):
    """Requests whose header block is over MAX_HEADER_BYTES, whatever their route: the
    contract's JSON 431 (the application routes them here, see ShedaApplication.find_handler).
    Tornado itself only closes the connection without an answer, so its own cap is set
    higher (HARD_HEADER_BYTES) and ours is enforced here, where a JSON answer can be sent."""

    def prepare(self):
        if not self._finished:
            raise tornado.web.HTTPError(431, "The request's headers are over %d bytes", self.settings_limit)

    @property
    def settings_limit(self) -> int:
        return self.ctx.settings.max_header_bytes


def header_bytes(request) -> int:
    """Size of a request's header block as sent (name, ': ', value, CRLF per line)."""
    return sum(len(name) + len(value) + 4 for name, value in request.headers.get_all())


class NotFoundHandler(APIHandler):
    """Unknown routes: the contract's JSON 404 for every method."""

    def prepare(self):
        if self.request.method == "OPTIONS":
            return
        super().prepare()  # a body over the JSON limit: answered (413) at once, the rest dropped
        if not self._finished:  # sent once any body has arrived (see send_error): the connection stays usable
            raise tornado.web.HTTPError(404, "No such route: %s", self.request.path)
