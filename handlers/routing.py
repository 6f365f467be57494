"""Route templates and the `endpoint` decorator.

A route is written once as a template (`/api/v1/users/{user_id:int}`); from it
come Tornado's regex, the OpenAPI path, and the metrics label. An endpoint is a
handler method wrapped by `endpoint(...)`, which does, in this order: auth,
query parsing, body parsing, the call, serialization. Every endpoint parses its
query: a method that declares no `query=` model takes none (NoQuery), so an
unknown key is a 422 naming it on every route, checked here once before the
method runs; a route whose keys come from someone else's protocol declares
`query=OpenQuery` (probes, scrapers, webhooks). The same arguments feed
the OpenAPI document, so the docs cannot drift from what the code enforces.

Responses take the same road back: what a method returns is validated through its
`response=` model before it is sent (`serialize`), and that model is the response's
schema in the document. A body that does not match is a server bug: a 500 with a
traceback in the log, never a silently different shape.
"""
from __future__ import annotations

import functools
import inspect
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from pydantic import BaseModel, TypeAdapter, ValidationError
from tornado.web import URLSpec

from sheda_rt.accounts.auth import Requirement
from sheda_rt.pagination import NoQuery
from sheda_rt.responses import MEDIA_BASE, MEDIA_REWRITTEN

_PARAM = re.compile(r"\{(\w+)(?::(int|str|path))?\}")
_PATTERNS = {"int": r"[0-9]{1,18}", "str": r"[^/]+", "path": r".+", None: r"[^/]+"}


def route(template: str, handler: type, **kwargs) -> URLSpec:
    """`/things/{thing_id:int}` → a URLSpec whose name is the template."""
    types: dict[str, type] = {}

    def repl(match: re.Match) -> str:
        name, kind = match.group(1), match.group(2)
        if kind == "int":
            types[name] = int
        return f"(?P<{name}>{_PATTERNS[kind]})"

    regex = _PARAM.sub(repl, re.escape(template).replace(r"\{", "{").replace(r"\}", "}").replace(r"\:", ":")) + "$"
    return URLSpec(regex, handler, dict(kwargs, path_types=types, route_template=template), name=template)


@dataclass
class Reply:
    """A method's answer with a status other than the endpoint's own, documented in its
    `also=` (e.g. 200 for the idempotent replay of a 201). The body goes through the same
    response model."""

    body: Any
    status: int


class ResponseDrift(RuntimeError):
    """What a service built does not match the endpoint's response model (a server bug: 500)."""


@functools.lru_cache(maxsize=None)
def _adapter(response: Any) -> TypeAdapter:
    return TypeAdapter(response)


def serialize(response: Any, result: Any, media_base: str | None = None) -> Any:
    """`result` checked against the `response` model, as plain data for the JSON writer.

    The model checks names and types; what is sent is what the service built, key for key
    (never a null it left out). Only when a `MediaUrl` was made absolute under `media_base`
    (PUBLIC_BASE_URL) is the body rebuilt from the validated model (`exclude_unset`): rebuilding
    costs 5x the check (500 history rows: ~2 ms to check, ~12 ms more to rebuild), so it is paid
    only when there is something to change. Model instances (e.g. a TokenPair) were validated
    when they were built and pass as they are."""
    if response is None or result is None or isinstance(result, BaseModel):
        return result
    adapter = _adapter(response)
    context = {MEDIA_BASE: media_base}
    try:
        value = adapter.validate_python(result, context=context)
    except ValidationError as exc:
        raise ResponseDrift(f"response does not match {response!r}: {exc}") from None
    return adapter.dump_python(value, exclude_unset=True) if context.get(MEDIA_REWRITTEN) else result


@dataclass
class EndpointDoc:
    summary: str
    auth: Requirement | None
    body: type[BaseModel] | None
    query: type[BaseModel] | None
    response: Any
    status: int
    form: bool
    upload: str | None
    errors: tuple[int, ...]
    tags: tuple[str, ...] = field(default_factory=tuple)
    description: str = ""
    also: dict[int, str] = field(default_factory=dict)
    content_type: str = "application/json"
    upload_types: str = "jpeg, png or webp"  # what the multipart file may be (the document's description of it)


def endpoint(
    summary: str,
    *,
    auth: Requirement | None = None,
    body: type[BaseModel] | None = None,
    query: type[BaseModel] | None = None,
    response: Any = None,
    status: int = 200,
    form: bool = False,
    upload: str | None = None,
    errors: tuple[int, ...] = (),
    tags: tuple[str, ...] = (),
    also: dict[int, str] | None = None,
    content_type: str = "application/json",
    upload_types: str = "jpeg, png or webp",
) -> Callable:
    """Wrap a handler method. The method receives `body=` / `query=` models when declared
    (`query` only if its signature names it); without `query=` the route takes no query key
    (NoQuery: any key is a 422 naming it). It returns what to send (a dict, list, pydantic model,
    a `Reply` for one of the statuses in `also`, or None for an empty 204-style reply). `response` is the success body's model
    (or a type such as `list[Model]`): the body is validated through it and it is the schema
    in the document. `also` documents other statuses answered with that same body, by their
    description. `content_type` other than JSON (e.g. /metrics) is documented as text."""

    query_model = query if query is not None else NoQuery

    def decorate(fn):
        takes_query = "query" in inspect.signature(fn).parameters

        @functools.wraps(fn)
        async def wrapper(self, *args, **kwargs):
            if self._finished:
                # Already answered (a streamed body crossed the size limit: 413 was sent while
                # it arrived); Tornado still calls the method once the body ends. Do nothing.
                return
            kwargs = self.convert_path_args(kwargs)
            if auth is not None:
                self.principal = await self.ctx.auth.authenticate(self.request.headers.get("Authorization"), auth)
            parsed = self.parse_query(query_model)  # every route: an unknown key is a 422 naming it
            if takes_query:
                kwargs["query"] = parsed
            if body is not None:
                kwargs["body"] = self.parse_body(body, form=form)
            result = await fn(self, *args, **kwargs)
            if not self._finished:
                code = status
                if isinstance(result, Reply):
                    result, code = result.body, result.status
                self.send(serialize(response, result, self.ctx.settings.public_base_url), code)

        wrapper.endpoint_doc = EndpointDoc(
            summary=summary, auth=auth, body=body, query=query_model, response=response, status=status,
            form=form, upload=upload, errors=errors, tags=tags, description=(fn.__doc__ or "").strip(),
            also=dict(also or {}), content_type=content_type, upload_types=upload_types,
        )
        return wrapper

    return decorate
