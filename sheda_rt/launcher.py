"""Start the server process(es) with the database they need, and stop cleanly."""
from __future__ import annotations

import asyncio
import json
import logging
import shutil
import sys

from pymongo.errors import PyMongoError

from config.settings import SettingsError

from sheda_rt.database.embedded import EmbeddedDatabaseError

log = logging.getLogger("sheda.launcher")


def fail(message: str) -> int:
    print(f"sheda: {message}", file=sys.stderr)
    return 2


def use_fast_event_loop() -> str:
    """uvloop (libuv) for the server's event loop when it is installed (requirements.txt
    names it): socket reads, writes and callbacks cost the chat's hot path noticeably
    less CPU per message than the standard loop. Workers forked later inherit it."""
    try:
        import uvloop
    except ImportError:
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return "uvloop"


def run_server(settings, app_factory) -> int:
    """`app_factory` builds the Tornado application for a context (see sheda_rt.server.Server);
    the caller imports it only when it is called, after the metrics directory is prepared."""
    use_fast_event_loop()
    if settings.processes > 1 and not settings.redis_url:
        return fail("--processes > 1 needs REDIS_URL: separate processes share sockets' events through Redis")
    metrics_dir = None
    if settings.processes > 1:
        from sheda_rt.multiprocess import prepare_metrics_dir

        metrics_dir = prepare_metrics_dir()  # before prometheus_client is imported (by the server modules)
    from sheda_rt.server import database_uri, serve

    try:
        uri, embedded = database_uri(settings)
    except EmbeddedDatabaseError as exc:
        return fail(str(exc))
    try:
        if settings.processes > 1:
            from sheda_rt.multiprocess import run_workers

            return run_workers(settings, uri, app_factory, embedded)
        asyncio.run(serve(settings, uri=uri, app_factory=app_factory, embedded=embedded))
        return 0
    except SettingsError as exc:  # found at start (a key file unreadable, APNs half configured): one line, no traceback
        return fail(str(exc))
    except OSError as exc:
        return fail(f"cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}")
    except PyMongoError as exc:
        # Unreachable MONGODB_URI, a malformed URI, an index the database refuses: one line, no traceback.
        return fail(f"database error at startup: {type(exc).__name__}: {str(exc).splitlines()[0].split(' (configured timeouts')[0][:300]}")
    except KeyboardInterrupt:
        return 0
    finally:
        if embedded is not None:
            embedded.stop()
        if metrics_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)
