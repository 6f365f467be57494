"""Liveness and readiness."""
from __future__ import annotations

import asyncio

from handlers.base import APIHandler
from handlers.routing import Reply, endpoint, route
from sheda_rt.pagination import OpenQuery  # probes are not ours: keys they add are never a 422
from sheda_rt.responses import Health, Readiness


class HealthHandler(APIHandler):
    @endpoint("Liveness: the process answers", response=Health, query=OpenQuery, tags=("operations",))
    async def get(self):
        return {"status": "ok"}


class ReadyHandler(APIHandler):
    @endpoint("Readiness: the database (and Redis, when configured) answer", response=Readiness, query=OpenQuery,
              also={503: "Not ready: `checks` says which dependency failed"}, tags=("operations",))
    async def get(self):
        checks = await self.ctx.readiness()
        ready = all(v == "ok" for v in checks.values())
        return Reply({"status": "ready" if ready else "unavailable", "checks": checks}, 200 if ready else 503)


default_handlers = [
    route("/health", HealthHandler),
    route("/health/ready", ReadyHandler),
]
