"""The Tornado Application: owns the route table and the context.

It lives at the edge, not in the core: `sheda_rt/` never imports `handlers/`
(tests/test_architecture.py). Whoever builds a server passes `make_app` in
(`Server(..., app_factory=make_app)`; run.py does it for the operator)."""
from __future__ import annotations

import json
import logging

import tornado.web

from handlers.base import HeadersTooLargeHandler, NotFoundHandler, header_bytes
from handlers.metrics import observe_request
from handlers.routes import all_routes

access_log = logging.getLogger("sheda.access")


class ShedaApplication(tornado.web.Application):
    def __init__(self, ctx):
        self.ctx = ctx
        self.routes = all_routes(ctx.settings)
        super().__init__(
            self.routes,
            default_handler_class=NotFoundHandler,
            websocket_max_message_size=ctx.settings.ws_max_message_bytes,
            websocket_ping_interval=ctx.settings.ws_ping_interval,
            websocket_ping_timeout=ctx.settings.ws_ping_timeout,
            compress_response=False,
            xsrf_cookies=False,
        )

    def find_handler(self, request, **kwargs):
        """A header block over MAX_HEADER_BYTES is answered 431 in JSON, whatever the route."""
        if header_bytes(request) > self.ctx.settings.max_header_bytes:
            return self.get_handler_delegate(request, HeadersTooLargeHandler)
        return super().find_handler(request, **kwargs)

    def log_request(self, handler) -> None:
        """One JSON line per request, and the HTTP metrics."""
        principal = getattr(handler, "principal", None)
        record = {
            "method": handler.request.method,
            "path": handler.request.path,
            "route": getattr(handler, "route_template", None),
            "status": handler.get_status(),
            "duration_ms": round(1000.0 * handler.request.request_time(), 2),
            "user_id": principal.user_id if principal else None,
            "request_id": getattr(handler, "request_id", None),
        }
        access_log.info(json.dumps(record))
        observe_request(handler)  # [operations] HTTP metrics by route template


def make_app(ctx) -> ShedaApplication:
    """The application factory a `sheda_rt.server.Server` is given: routes and handlers
    for this context."""
    return ShedaApplication(ctx)
