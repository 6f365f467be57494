"""OpenAPI 3.1 generated from the route table and the same pydantic models that
validate requests, plus Swagger UI 5 served from the installed swagger-ui-py
package (no CDN: these machines have no internet, and clients may be offline).
Swagger UI 4 (the swagger-ui-bundle package) cannot read OpenAPI 3.1: it showed
"Unable to render this definition"."""
from __future__ import annotations

import importlib.util
import inspect
import re
from pathlib import Path

import tornado.web
from pydantic import BaseModel, TypeAdapter
from pydantic.json_schema import models_json_schema

from handlers.base import APIHandler, RequestIdMixin, StaticFiles
from handlers.routing import route
from sheda_rt.database.ids import MAX_ID
from sheda_rt.realtime.asyncapi import build_asyncapi, with_server

_ERROR_SCHEMA = {
    "type": "object",
    "required": ["detail", "code"],
    "properties": {
        "detail": {"type": "string", "description": "for people"},
        "code": {"type": "string", "description": "for programs, e.g. validation_error, slot_taken, rate_limited"},
        "errors": {"type": "array", "description": "422 only: what is wrong with which field",
                   "items": {"type": "object", "required": ["field", "message"],
                             "properties": {"field": {"type": "string"}, "message": {"type": "string"}}}},
        "retry_after": {"type": "integer", "description": "429/503: seconds to wait (also the Retry-After header)"},
    },
}
_STATUS_TEXT = {400: "Bad request: e.g. `invalid_json`, `invalid_form` (a malformed form or multipart body)",
                401: "Missing, invalid, expired or revoked token (WWW-Authenticate: Bearer)", 402: "Payment required: `insufficient_funds` (the wallet's balance is below the price; nothing was charged)",
                403: "Not allowed",
                404: "Not found", 409: "Conflict (duplicate, wrong state, slot taken)",
                413: "Too large: the body is over MAX_JSON_BYTES, or the upload over MAX_UPLOAD_BYTES",
                415: "Unsupported media type: send application/json (or multipart/form-data where documented)",
                422: "Validation failed (`errors` names each field; a query key the route does not take is one)",
                429: "Rate limited (see Retry-After)",
                503: "Unavailable: code database_unavailable while the database cannot be reached (see Retry-After)"}
# Error bodies that always carry more than detail and code: a 422 names its fields, a 429 its wait.
_ERROR_VARIANTS = {
    422: ("ValidationFailure", {"description": "422: the error body with `errors`, one entry per refused field",
                                "allOf": [{"$ref": "#/components/schemas/Error"}], "required": ["errors"]}),
    429: ("RateLimitedError", {"description": "429: the error body with `retry_after` (seconds, as in Retry-After)",
                               "allOf": [{"$ref": "#/components/schemas/Error"}], "required": ["retry_after"]}),
}
_REQUEST_ID = {"X-Request-ID": {"description": "The request's id (the client's own X-Request-ID, or a new one); "
                                               "every response carries it", "schema": {"type": "string"}}}
_RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before trying again", "schema": {"type": "integer"}}}
_PATH_ID = {"type": "integer", "minimum": 1, "maximum": MAX_ID}


def _endpoints(routes):
    for spec in routes:
        for method in ("get", "post", "put", "patch", "delete"):
            doc = getattr(getattr(spec.handler_class, method, None), "endpoint_doc", None)
            if doc is not None:
                yield spec, method, doc


def _collect_models(routes) -> list[type[BaseModel]]:
    models = []
    for _, _, doc in _endpoints(routes):
        for m in (doc.body, doc.response):
            if isinstance(m, type) and issubclass(m, BaseModel) and m not in models:
                models.append(m)
    return models


def _response_schema(doc, schemas: dict, refs: dict) -> dict:
    """The success body's schema: a $ref to the response model, or (e.g. list[Model], a Union)
    the type's schema with its models moved to components like every other schema."""
    if (doc.response, "validation") in refs:
        return refs[(doc.response, "validation")]
    schema = TypeAdapter(doc.response).json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(schema.pop("$defs", {}))
    return schema


def _success(doc, description: str, schemas: dict, refs: dict) -> dict:
    answer: dict = {"description": description, "headers": dict(_REQUEST_ID)}
    if doc.content_type != "application/json":
        answer["content"] = {doc.content_type: {"schema": {"type": "string"}}}
    elif doc.response is not None:
        answer["content"] = {"application/json": {"schema": _response_schema(doc, schemas, refs)}}
    return answer


def _error_codes(doc, template: str, has_path_params: bool) -> set[int]:
    """Every status a route answers besides its success: what it declares, plus what its parts
    bring (a body can be malformed, too large, of another type or invalid; a query invalid; a
    token missing or not allowed; an id unknown; the database away)."""
    codes = set(doc.errors)
    if doc.body is not None or doc.upload:
        codes |= {400, 413, 415, 422}
    if doc.query is not None and (doc.query.model_config.get("extra") == "forbid" or doc.query.model_fields):
        codes.add(422)  # a bad value, or (NoQuery, the default, and every strict model) a key the route does not take
    if doc.auth is not None:
        codes |= {401, 403}
    if has_path_params:
        codes.add(404)
    if template.startswith("/api"):
        codes.add(503)  # every API route reaches the database
    return codes - set(doc.also) - {doc.status}


def build_openapi(routes, version: str = "1.0.0") -> dict:
    models = _collect_models(routes)
    refs, defs = models_json_schema([(m, "validation") for m in models], ref_template="#/components/schemas/{model}")
    schemas = dict(defs.get("$defs", {}))
    schemas["Error"] = _ERROR_SCHEMA
    for name, schema in _ERROR_VARIANTS.values():
        schemas[name] = schema
    paths: dict = {}
    for spec, method, doc in _endpoints(routes):
        template = spec.name
        if not template or not template.startswith(("/api", "/health", "/metrics")):
            continue
        oa_path = re.sub(r"\{(\w+)(?::\w+)?\}", r"{\1}", template)
        params_in_path = re.findall(r"\{(\w+)(?::(\w+))?\}", template)
        op: dict = {"summary": doc.summary, "operationId": f"{method}_{re.sub(r'[^A-Za-z0-9]+', '_', template).strip('_')}",
                    "tags": list(doc.tags) or ["misc"], "responses": {}}
        if doc.description:
            op["description"] = inspect.cleandoc(doc.description)
        parameters = [{"name": n, "in": "path", "required": True,
                       "schema": dict(_PATH_ID) if k == "int" else {"type": "string"}} for n, k in params_in_path]
        if doc.query is not None:
            qs = doc.query.model_json_schema(ref_template="#/components/schemas/{model}")
            required = set(qs.get("required", []))
            for name, prop in qs.get("properties", {}).items():
                parameters.append({"name": name, "in": "query", "required": name in required, "schema": prop,
                                   **({"description": prop["description"]} if "description" in prop else {})})
            schemas.update(qs.get("$defs", {}))
        if parameters:
            op["parameters"] = parameters
        if doc.body is not None:
            ref = refs[(doc.body, "validation")]
            content = {"application/json": {"schema": ref}}
            if doc.form:  # both form encodings are taken (handlers/base.py): a browser's FormData sends multipart
                content["application/x-www-form-urlencoded"] = {"schema": ref}
                content["multipart/form-data"] = {"schema": ref}
            op["requestBody"] = {"required": True, "content": content}
        if doc.upload:
            op["requestBody"] = {"required": True, "content": {"multipart/form-data": {"schema": {
                "type": "object", "required": [doc.upload],
                "properties": {doc.upload: {"type": "string", "format": "binary", "description": doc.upload_types}}}}}}
        op["responses"][str(doc.status)] = _success(doc, "OK" if doc.status < 300 else "Done", schemas, refs)
        for code, description in doc.also.items():
            op["responses"][str(code)] = _success(doc, description, schemas, refs)
        for code in sorted(_error_codes(doc, template, bool(params_in_path))):
            name = _ERROR_VARIANTS[code][0] if code in _ERROR_VARIANTS else "Error"
            answer = {"description": _STATUS_TEXT.get(code, "Error"), "headers": dict(_REQUEST_ID),
                      "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}}}
            if code in (429, 503):
                answer["headers"].update(_RETRY_AFTER)
            op["responses"][str(code)] = answer
        if doc.auth is not None:
            op["security"] = [{"bearer": []}]
            op["x-required-auth"] = doc.auth.describe()
        paths.setdefault(oa_path, {})[method] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "Sheda RT", "version": version,
                 "description": "Real-time-first real estate marketplace API. Chat over WebSocket at /api/v1/chat/ws, its frames described "
                                "by the AsyncAPI 3.0 document at /api/v1/asyncapi.json; see README."},
        "paths": paths,
        "components": {"schemas": schemas, "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}}},
    }


class OpenAPIHandler(APIHandler):
    _cache: dict | None = None

    async def get(self):
        if OpenAPIHandler._cache is None:
            OpenAPIHandler._cache = build_openapi([r for r in self.application.routes if hasattr(r, 'handler_class')])
        self.send(OpenAPIHandler._cache)


class AsyncAPIHandler(APIHandler):
    """The socket's protocol (AsyncAPI 3.0, generated from the frame models), with this server's
    address as the client asked for it."""

    _cache: dict | None = None

    async def get(self):
        if AsyncAPIHandler._cache is None:
            AsyncAPIHandler._cache = build_asyncapi()
        self.send(with_server(AsyncAPIHandler._cache, self.request.host, "wss" if self.request.protocol == "https" else "ws"))


_SWAGGER_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Sheda RT API</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="stylesheet" href="/docs/static/swagger-ui.css"></head><body><div id="swagger-ui"></div>
<script src="/docs/static/swagger-ui-bundle.js"></script>
<script>window.ui = SwaggerUIBundle({url: "/api/v1/openapi.json", dom_id: "#swagger-ui", deepLinking: true, validatorUrl: null});</script>
</body></html>"""


class SwaggerHandler(RequestIdMixin, tornado.web.RequestHandler):
    """The page asks nothing of any other host: no CDN, and `validatorUrl: null` turns off the
    badge Swagger UI would otherwise fetch from validator.swagger.io."""

    def get(self):
        self.set_header("Content-Type", "text/html; charset=UTF-8")
        self.finish(_SWAGGER_PAGE)


class SwaggerStaticHandler(StaticFiles):
    """Swagger UI's own files (bundle, css, favicons)."""


def _swagger_dir() -> str:
    # Located without importing the package (its __init__ pulls in its framework adapters).
    spec = importlib.util.find_spec("swagger_ui")
    if spec is None or not spec.origin:
        raise RuntimeError("swagger-ui-py is not installed (pip install -r requirements.txt)")
    return str(Path(spec.origin).parent / "static")


default_handlers = [
    route("/api/v1/openapi.json", OpenAPIHandler),
    route("/api/v1/asyncapi.json", AsyncAPIHandler),
    tornado.web.URLSpec(r"/docs/?$", SwaggerHandler),
    tornado.web.URLSpec(r"/docs/static/(.*)", SwaggerStaticHandler, {"path": _swagger_dir()}),
]
