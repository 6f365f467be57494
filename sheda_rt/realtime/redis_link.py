"""The one Redis connection state the cross-process parts share (fan-out, presence, turns).

Used when REDIS_URL is set; any number of processes (one host with `--processes N`, or
many hosts behind a load balancer) then behave as one server. The parts share one client
and this object instead of reaching into each other:

- `up` / `last_error`: whether Redis works for us now. The fan-out's subscriber decides it
  (its connection is the one that notices a dead link first); presence and turns read it
  and fail fast while it is down instead of waiting on a dead link.
- `epoch`: counts reconnections. What was stored while Redis was away has no idempotency
  claims, so the chat forgets what it remembered and reads conversations back.
- `pause(seconds)` / `usable()`: after a failed publish the link is left alone for a
  moment (every caller fails fast instead of waiting on it).
- `trouble()`: anyone who could not use Redis says so; listeners (the fan-out's resync
  floor) learn that durable events may be reaching other processes late or not at all.
- `on_connect` hooks run after each (re)connection, before the link counts as up (presence
  rewrites its set); `on_up` listeners run once it is up (the fan-out sends a resync).

Keys and channels are prefixed with `sheda:<MONGODB_DB>:`, so deployments with different
databases can share one Redis without seeing each other's events.
"""
from __future__ import annotations

import asyncio
import json
import logging
import uuid
from typing import Awaitable, Callable

from redis import asyncio as redis_asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

log = logging.getLogger("sheda.broker")


async def cancel_until_done(tasks) -> None:
    """Cancel the tasks and wait until they have ended. A Redis call in flight can swallow a
    cancellation (redis-py's connection cleanup catches it and the call returns), and a loop
    then goes on waiting for more work: so cancel again until every task is done."""
    pending = set(tasks)
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.5)
    for task in tasks:
        task.cancelled() or task.exception()  # retrieved, as gather(return_exceptions=True) did


def redis_client(url: str) -> redis_asyncio.Redis:
    """A client that fails fast: short timeouts, no transparent retries (we decide
    what an outage means), bytes in and out."""
    return redis_asyncio.Redis.from_url(
        url, socket_connect_timeout=1.0, socket_timeout=2.0, retry=Retry(NoBackoff(), 0), decode_responses=False,
    )


def chunks(items, size: int = 1000):
    items = list(items)
    for i in range(0, len(items), size):
        yield items[i:i + size]


class RedisLink:
    def __init__(self, url: str, namespace: str, *, client: redis_asyncio.Redis | None = None):
        self.redis = client or redis_client(url)
        self.prefix = f"sheda:{namespace}:"
        self.process_id = uuid.uuid4().hex[:12]
        self.up = False
        self.last_error = "not connected yet"
        self.epoch = 0
        self._paused_until = 0.0
        self._up_event = asyncio.Event()
        self._connect_hooks: list[Callable[[], Awaitable[None]]] = []
        self._trouble_listeners: list[Callable[[], None]] = []
        self._up_listeners: list[Callable[[], None]] = []

    # ---- who wants to know -------------------------------------------------------
    def on_connect(self, hook: Callable[[], Awaitable[None]]) -> None:
        """`hook` runs after each (re)connection, before the link counts as up; if it raises,
        the connection counts as failed (and is retried)."""
        self._connect_hooks.append(hook)

    def on_trouble(self, listener: Callable[[], None]) -> None:
        self._trouble_listeners.append(listener)

    def on_up(self, listener: Callable[[], None]) -> None:
        self._up_listeners.append(listener)

    # ---- state -------------------------------------------------------------------
    def usable(self) -> bool:
        """Up, and not paused after a failed publish."""
        return self.up and asyncio.get_running_loop().time() >= self._paused_until

    def pause(self, seconds: float) -> None:
        """Fail fast for a moment instead of making every caller wait on a dead link."""
        self._paused_until = asyncio.get_running_loop().time() + seconds

    def trouble(self) -> None:
        """Redis could not be used for a publish, a turn or the subscription."""
        for listener in self._trouble_listeners:
            listener()

    async def connected(self) -> None:
        """The subscriber (re)connected: run the connect hooks, then count as up."""
        for hook in self._connect_hooks:
            await hook()
        self.set_up()

    def set_up(self) -> None:
        if not self.up:
            log.info(json.dumps({"event": "redis_up", "process": self.process_id}))
            self.epoch += 1
        self.up = True
        self._paused_until = 0.0
        self._up_event.set()
        for listener in self._up_listeners:
            listener()

    def set_down(self, exc: BaseException) -> None:
        self.trouble()
        self.last_error = f"{type(exc).__name__}: {exc}"[:200]
        if self.up:
            log.warning(json.dumps({"event": "redis_down", "process": self.process_id, "error": self.last_error}))
        self.up = False
        self._up_event.clear()

    async def wait_up(self, seconds: float) -> None:
        """Wait (at most `seconds`) for the first connection. A server whose Redis is down
        still starts (readiness says so) and connects when Redis comes up."""
        try:
            await asyncio.wait_for(self._up_event.wait(), seconds)
        except asyncio.TimeoutError:
            log.warning(json.dumps({"event": "redis_unavailable_at_start", "error": self.last_error}))

    async def health(self) -> str:
        if not self.up:
            return f"down: {self.last_error}"
        try:
            await asyncio.wait_for(self.redis.ping(), 1.0)
            return "ok"
        except Exception as exc:
            return f"down: {type(exc).__name__}"

    async def close(self) -> None:
        """After the parts stopped: the client goes."""
        self.up = False
        try:
            await self.redis.aclose()
        except Exception:
            pass
