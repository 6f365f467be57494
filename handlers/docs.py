"""OpenAPI 3.1 generated from the route table and the same pydantic models that
validate requests, plus Swagger UI 5 served from the installed swagger-ui-py
package (no CDN: these machines have no internet, and clients may be offline).
Swagger UI 4 (the swagger-ui-bundle package) cannot read OpenAPI 3.1: it showed
"Unable to render this definition"."""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import tornado.web
from pydantic import BaseModel, TypeAdapter
from pydantic.json_schema import models_json_schema

from handlers.base import APIHandler, RequestIdMixin
from handlers.routing import route

_ERROR_SCHEMA = {
    "type": "object",
    "required": ["detail", "code"],
    "properties": {
        "detail": {"type": "string"},
        "code": {"type": "string"},
        "errors": {"type": "array", "items": {"type": "object", "properties": {"field": {"type": "string"}, "message": {"type": "string"}}}},
    },
}
_STATUS_TEXT = {400: "Bad request", 401: "Missing, invalid, expired or revoked token", 403: "Not allowed", 404: "Not found",
                409: "Conflict", 413: "Too large", 415: "Unsupported media type", 422: "Validation failed",
                429: "Rate limited (see Retry-After)",
                503: "Unavailable: code database_unavailable while the database cannot be reached (see Retry-After)"}


def _collect_models(routes) -> list[type[BaseModel]]:
    models = []
    for spec in routes:
        for method in ("get", "post", "put", "patch", "delete"):
            doc = getattr(getattr(spec.handler_class, method, None), "endpoint_doc", None)
            if doc is None:
                continue
            for m in (doc.body, doc.response):
                if isinstance(m, type) and issubclass(m, BaseModel) and m not in models:
                    models.append(m)
    return models


def build_openapi(routes, version: str = "1.0.0") -> dict:
    models = _collect_models(routes)
    _, defs = models_json_schema([(m, "validation") for m in models], ref_template="#/components/schemas/{model}")
    schemas = dict(defs.get("$defs", {}))
    schemas["Error"] = _ERROR_SCHEMA
    paths: dict = {}
    for spec in routes:
        template = spec.name
        if not template or not template.startswith(("/api", "/health", "/metrics")):
            continue
        oa_path = re.sub(r"\{(\w+)(?::\w+)?\}", r"{\1}", template)
        params_in_path = re.findall(r"\{(\w+)(?::(\w+))?\}", template)
        for method in ("get", "post", "put", "patch", "delete"):
            doc = getattr(getattr(spec.handler_class, method, None), "endpoint_doc", None)
            if doc is None:
                continue
            op: dict = {"summary": doc.summary, "operationId": f"{method}_{re.sub(r'[^A-Za-z0-9]+', '_', template).strip('_')}",
                        "tags": list(doc.tags) or ["misc"], "responses": {}}
            if doc.description:
                op["description"] = doc.description
            parameters = [{"name": n, "in": "path", "required": True, "schema": {"type": "integer" if k == "int" else "string"}}
                          for n, k in params_in_path]
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
                ref = {"$ref": f"#/components/schemas/{doc.body.__name__}"}
                content = {"application/json": {"schema": ref}}
                if doc.form:
                    content["application/x-www-form-urlencoded"] = {"schema": ref}
                op["requestBody"] = {"required": True, "content": content}
            if doc.upload:
                op["requestBody"] = {"required": True, "content": {"multipart/form-data": {"schema": {
                    "type": "object", "required": [doc.upload],
                    "properties": {doc.upload: {"type": "string", "format": "binary", "description": "jpeg, png or webp"}}}}}}
            success: dict = {"description": "OK" if doc.status < 300 else "Done"}
            if doc.status != 204:
                if isinstance(doc.response, type) and issubclass(doc.response, BaseModel):
                    success["content"] = {"application/json": {"schema": {"$ref": f"#/components/schemas/{doc.response.__name__}"}}}
                elif doc.response is not None:
                    # e.g. list[Model]: its models go to components like every other schema.
                    schema = TypeAdapter(doc.response).json_schema(ref_template="#/components/schemas/{model}")
                    schemas.update(schema.pop("$defs", {}))
                    success["content"] = {"application/json": {"schema": schema}}
                else:
                    success["content"] = {"application/json": {"schema": {"type": "object"}}}
            op["responses"][str(doc.status)] = success
            codes = set(doc.errors)
            if doc.body is not None or doc.query is not None:
                codes |= {400, 422} if doc.body is not None else {422}
            if doc.auth is not None:
                op["security"] = [{"bearer": []}]
                op["x-required-auth"] = doc.auth.describe()
                codes |= {401, 403}
            if template.startswith("/api"):
                codes.add(503)  # every API route reaches the database
            for code in sorted(codes):
                op["responses"][str(code)] = {"description": _STATUS_TEXT.get(code, "Error"),
                                              "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
            paths.setdefault(oa_path, {})[method] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "Sheda RT", "version": version,
                 "description": "Real-time-first real estate marketplace API. Chat over WebSocket at /api/v1/chat/ws; see README."},
        "paths": paths,
        "components": {"schemas": schemas, "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}}},
    }


class OpenAPIHandler(APIHandler):
    _cache: dict | None = None

    async def get(self):
        if OpenAPIHandler._cache is None:
            OpenAPIHandler._cache = build_openapi([r for r in self.application.routes if hasattr(r, 'handler_class')])
        self.send(OpenAPIHandler._cache)


_SWAGGER_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Sheda RT API</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="stylesheet" href="/docs/static/swagger-ui.css"></head><body><div id="swagger-ui"></div>
<script src="/docs/static/swagger-ui-bundle.js"></script>
<script>window.ui = SwaggerUIBundle({url: "/api/v1/openapi.json", dom_id: "#swagger-ui", deepLinking: true});</script>
</body></html>"""


class SwaggerHandler(RequestIdMixin, tornado.web.RequestHandler):
    def get(self):
        self.set_header("Content-Type", "text/html; charset=UTF-8")
        self.finish(_SWAGGER_PAGE)


class SwaggerStaticHandler(RequestIdMixin, tornado.web.StaticFileHandler):
    """Swagger UI's own files (bundle, css, favicons)."""


def _swagger_dir() -> str:
    # Located without importing the package (its __init__ pulls in its framework adapters).
    spec = importlib.util.find_spec("swagger_ui")
    if spec is None or not spec.origin:
        raise RuntimeError("swagger-ui-py is not installed (pip install -r requirements.txt)")
    return str(Path(spec.origin).parent / "static")


default_handlers = [
    route("/api/v1/openapi.json", OpenAPIHandler),
    tornado.web.URLSpec(r"/docs/?$", SwaggerHandler),
    tornado.web.URLSpec(r"/docs/static/(.*)", SwaggerStaticHandler, {"path": _swagger_dir()}),
]
