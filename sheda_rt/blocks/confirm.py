"""Invalidations every process has applied before the change is answered.

With several processes, a control op through the hub (sheda_rt/realtime/fanout_redis.py) is
fire-and-forget: the block request can be answered, and the blocked user's next message can
reach another process, before that process has read the op from Redis. Measured with two
processes and warm caches: a message sent right after the 201 got through in one round of
five. So a change is also published here, and the request waits until every process has
applied it:

1. PUBLISH `<prefix>blocks:invalidate` {users, token}: Redis answers with the number of
   processes subscribed (every process, this one included: they listen from start).
2. Each process drops the users' cached relations (synchronously, in its subscriber) and
   PUBLISHes the token on `<prefix>blocks:applied`.
3. The request waits for as many acknowledgements as step 1 counted (at most TIMEOUT: a
   process that died after receiving it holds nothing up for long; its cache died with it).

Two Redis round trips and a wait of one more per block or unblock, which are rare; nothing on
the chat's hot path. When Redis is away the publish fails at once and the change falls back
on the control op (kept and replayed by the fan-out when Redis returns) and the cache's TTL.
"""
from __future__ import annotations

import asyncio
import json
import logging
import uuid
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from sheda_rt.realtime.redis_link import RedisLink

log = logging.getLogger("sheda.blocks")


class ConfirmedInvalidation:
    TIMEOUT = 2.0  # seconds a change waits for the other processes' acknowledgements

    def __init__(self, link: RedisLink, listen: Callable[[bytes, Callable[[bytes], None]], None], name: str = "blocks"):
        """`listen`: the fan-out's subscriber hook (RedisFanout.listen), registered before it starts."""
        self.redis = link.redis
        self._ask = (link.prefix + f"{name}:invalidate").encode()
        self._applied = (link.prefix + f"{name}:applied").encode()
        self._apply: Callable[[list[int]], None] = lambda users: None
        self._waiting: dict[str, dict] = {}
        self._acks: set[asyncio.Task] = set()  # referenced until sent
        listen(self._ask, self._on_ask)
        listen(self._applied, self._on_applied)

    def on_apply(self, apply: Callable[[list[int]], None]) -> None:
        """What each process does with a change (the block service drops cached relations)."""
        self._apply = apply

    def _on_ask(self, data: bytes) -> None:
        try:
            message = json.loads(data)
            self._apply([int(u) for u in message["users"]])
            token = str(message["token"])
        except Exception:
            log.exception("bad invalidation %r", data[:200])
            return
        task = asyncio.ensure_future(self._acknowledge(token))
        self._acks.add(task)
        task.add_done_callback(self._acks.discard)

    async def _acknowledge(self, token: str) -> None:
        try:
            await self.redis.publish(self._applied, token.encode())
        except Exception as exc:  # the asker stops waiting after TIMEOUT
            log.warning(json.dumps({"event": "invalidation_ack_failed", "error": repr(exc)[:200]}))

    def _on_applied(self, data: bytes) -> None:
        entry = self._waiting.get(data.decode(errors="replace"))
        if entry is not None:
            entry["acks"] += 1
            self._check(entry)

    @staticmethod
    def _check(entry: dict) -> None:
        if entry["need"] is not None and entry["acks"] >= entry["need"] and not entry["done"].done():
            entry["done"].set_result(None)

    async def everywhere(self, users: list[int]) -> bool:
        """Publish the change and wait until every process applied it. False when that could
        not be confirmed (Redis away, or a process did not answer within TIMEOUT)."""
        token = uuid.uuid4().hex
        entry = {"acks": 0, "need": None, "done": asyncio.get_running_loop().create_future()}
        self._waiting[token] = entry
        try:
            entry["need"] = await self.redis.publish(self._ask, json.dumps({"users": users, "token": token}).encode())
            self._check(entry)
            await asyncio.wait_for(asyncio.shield(entry["done"]), self.TIMEOUT)
            return True
        except Exception as exc:
            log.warning(json.dumps({"event": "invalidation_unconfirmed", "users": users, "acks": entry["acks"],
                                    "processes": entry["need"], "error": repr(exc)[:200]}))
            return False
        finally:
            self._waiting.pop(token, None)
