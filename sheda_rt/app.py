"""The Tornado Application: owns the route table and the context."""
from __future__ import annotations

import json
import logging
import time

import tornado.web

from handlers.base import HeadersTooLargeHandler, NotFoundHandler, header_bytes
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
        """One JSON line per request."""
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
        for hook in getattr(self.ctx, "request_hooks", ()):
            hook(handler)
