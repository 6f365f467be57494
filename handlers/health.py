"""Liveness and readiness."""
from __future__ import annotations

import asyncio

from handlers.base import APIHandler
from handlers.routing import endpoint, route


class HealthHandler(APIHandler):
    @endpoint("Liveness: the process answers", tags=("operations",))
    async def get(self):
        return {"status": "ok"}


class ReadyHandler(APIHandler):
    @endpoint("Readiness: the database (and Redis, when configured) answer", errors=(503,), tags=("operations",))
    async def get(self):
        checks = await self.ctx.readiness()
        ready = all(v == "ok" for v in checks.values())
        self.send({"status": "ready" if ready else "unavailable", "checks": checks}, 200 if ready else 503)


default_handlers = [
    route("/health", HealthHandler),
    route("/health/ready", ReadyHandler),
]
