"""Process lifecycle: database, context, HTTP server, jobs, graceful shutdown.

Shutdown order on SIGINT/SIGTERM: stop accepting connections; let features
drain (the chat batcher stores and acks pending messages); close every socket
and event stream with 1001; wait for
in-flight requests, bounded by SHUTDOWN_GRACE_SECONDS; stop jobs; close the
client; stop the embedded database if we started it.
"""
from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import signal
from typing import Callable

import tornado.httpserver
import tornado.netutil
import tornado.web

from sheda_rt import logs
from sheda_rt.context import AppContext
from sheda_rt.database.embedded import EmbeddedDatabase, OplogTrimmer

log = logging.getLogger("sheda.server")

# Tornado closes a connection whose header block is over its cap without answering; ours
# (MAX_HEADER_BYTES, at most 1 MiB) is enforced by the application with a JSON 431, so
# Tornado's sits above it. Beyond this a client gets no answer: 2 MiB of headers is not a client.
HARD_HEADER_BYTES = 2 * 1_048_576


def database_uri(settings) -> tuple[str, EmbeddedDatabase | None]:
    """The configured MongoDB, or the embedded one for this data directory."""
    if settings.mongodb_uri:
        return settings.mongodb_uri, None
    embedded = EmbeddedDatabase(settings.data_dir, oplog_max_entries=settings.embedded_oplog_max_entries)
    return embedded.start(), embedded


# Builds the Tornado application (routes, handlers) for a started context. The core never
# imports the edge (handlers/), so whoever builds a server passes it: handlers.app.make_app.
AppFactory = Callable[[AppContext], tornado.web.Application]


class Server:
    """One process's server: context, application, listening sockets, jobs.
    `run.py` and the tests start it the same way."""

    def __init__(self, settings, uri: str, clock=None, mailer=None, *, app_factory: AppFactory):
        logs.install()  # whoever starts a server (run.py, tests, an embedding app), its logs hold no secrets
        self.settings = settings
        self.app_factory = app_factory
        self.ctx = AppContext(settings, uri, clock=clock, mailer=mailer)
        self.http: tornado.httpserver.HTTPServer | None = None
        self.ports: list[int] = []

    async def start(self, sockets=None) -> list[int]:
        await self.ctx.start()
        self.app = self.app_factory(self.ctx)
        # Bodies are streamed and size-checked per route by the handlers (JSON 413), so
        # the server-level cap only guards against absurd sizes.
        cap = max(self.settings.max_upload_bytes, self.settings.max_json_bytes) * 4 + 1024 * 1024
        self.http = tornado.httpserver.HTTPServer(self.app, xheaders=self.settings.trust_proxy_headers, max_body_size=cap, idle_connection_timeout=120,
                                                  max_header_size=HARD_HEADER_BYTES)
        if sockets is None:
            sockets = tornado.netutil.bind_sockets(self.settings.port, self.settings.host)
        self.http.add_sockets(sockets)
        self.ports = sorted({s.getsockname()[1] for s in sockets})
        for job in self.ctx.jobs:
            job.start()
        log.info(json.dumps({"event": "listening", "host": self.settings.host, "ports": self.ports, "pid": os.getpid()}))
        return self.ports

    async def shutdown(self) -> None:
        log.info(json.dumps({"event": "shutting_down"}))
        loop = asyncio.get_running_loop()
        self.http.stop()
        for job in self.ctx.jobs:
            job.stop()
        await self.ctx.drain()
        deadline = loop.time() + self.settings.shutdown_grace_seconds
        while self.ctx.inflight and loop.time() < deadline:
            await asyncio.sleep(0.05)
        if self.ctx.inflight:
            log.warning(json.dumps({"event": "shutdown_grace_expired", "requests_cut": len(self.ctx.inflight)}))
        await self.http.close_all_connections()
        await self.ctx.close()
        log.info(json.dumps({"event": "stopped"}))


async def serve(settings, uri: str, app_factory: AppFactory, sockets=None, embedded: EmbeddedDatabase | None = None,
                embedded_db: bool = False) -> None:
    """Run until SIGINT or SIGTERM, then shut down gracefully. If we started the
    embedded database, a watchdog starts it again should it die. On the embedded database
    (`embedded`, or `embedded_db` in a worker of a supervisor that started it), its oplog
    is kept trimmed in small slices (OplogTrimmer)."""
    server = Server(settings, uri, app_factory=app_factory)
    await server.start(sockets)
    trimmer = None
    if (embedded is not None or embedded_db) and settings.embedded_oplog_trim_rows > 0:
        batcher = server.ctx.chat.batcher
        trimmer = asyncio.ensure_future(
            OplogTrimmer(server.ctx.client, lambda: batcher.stored_docs, settings.embedded_oplog_trim_rows).run())
    # What startup built (modules, models and their validators, routes: ~130,000 objects)
    # lives as long as the process. Frozen, the collector never walks it again: each full
    # collection walked it for ~115 ms (a loop stall seen in the chat's p99 at 1,000
    # msgs/s); what it walks now (~25,000 objects made since) takes a few ms.
    gc.collect()
    gc.freeze()
    watchdog = asyncio.ensure_future(embedded.watch()) if embedded is not None and embedded.owned else None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    if trimmer is not None:
        trimmer.cancel()
        await asyncio.gather(trimmer, return_exceptions=True)
    try:
        await server.shutdown()
    finally:
        if watchdog is not None:
            watchdog.cancel()
            await asyncio.gather(watchdog, return_exceptions=True)
