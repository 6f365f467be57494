"""Route templates and the `endpoint` decorator.

A route is written once as a template (`/api/v1/users/{user_id:int}`); from it
come Tornado's regex, the OpenAPI path, and the metrics label. An endpoint is a
handler method wrapped by `endpoint(...)`, which does, in this order: auth,
query parsing, body parsing, the call, serialization. The same arguments feed
the OpenAPI document, so the docs cannot drift from what the code enforces.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from pydantic import BaseModel
from tornado.web import URLSpec

from sheda_rt.accounts.auth import Requirement

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
) -> Callable:
    """Wrap a handler method. The method receives `body=` / `query=` models when declared
    and returns what to send (a dict, list, pydantic model, or None for an empty 204-style reply)."""

    def decorate(fn):
        @functools.wraps(fn)
        async def wrapper(self, *args, **kwargs):
            if self._finished:
                # Already answered (a streamed body crossed the size limit: 413 was sent while
                # it arrived); Tornado still calls the method once the body ends. Do nothing.
                return
            kwargs = self.convert_path_args(kwargs)
            if auth is not None:
                self.principal = await self.ctx.auth.authenticate(self.request.headers.get("Authorization"), auth)
            if query is not None:
                kwargs["query"] = self.parse_query(query)
            if body is not None:
                kwargs["body"] = self.parse_body(body, form=form)
            result = await fn(self, *args, **kwargs)
            if not self._finished:
                self.send(result, status)

        wrapper.endpoint_doc = EndpointDoc(
            summary=summary, auth=auth, body=body, query=query, response=response, status=status,
            form=form, upload=upload, errors=errors, tags=tags, description=(fn.__doc__ or "").strip(),
        )
        return wrapper

    return decorate
