"""Commit turns: processes take turns storing and publishing a chat batch, so message ids
reach every socket in increasing order across processes. The chat batcher
(sheda_rt/chat/batcher.py) takes them; nothing else does.

Chat batches take turns (ids reach every socket in increasing order)
--------------------------------------------------------------------
A client syncs from the highest message id it has seen, so no socket may get a
message after one with a higher id: had it dropped in between, the lower one
would never come. One process stores one batch at a time, so there it holds by
itself (`LocalTurns`); two processes store side by side, and a batch with lower
ids could be delivered after one with higher ids (the multi-process test saw it
in every run). So each process stores and publishes a chat batch only while it
holds the lock `<prefix>chat:turn` (SET NX PX; a waiter retries when the release
is announced on `<prefix>chat:turned`, or after 5 ms), and releases it through
the fan-out's publish pipeline, after that batch's PUBLISHes on the same
connection (`enqueue_after_publishes`, sheda_rt/realtime/fanout_redis.py): Redis
runs them first, so the next holder's batch (higher ids) is published after
them, and every subscriber reads them in that order. A crashed holder's lock
expires (TURN_TTL_MS); a batch slower than that, or Redis being away, lets
batches run unordered, as cross-process delivery is degraded then anyway (sync
and history have everything).

Idempotency claims ride on the same step: the keys (sender, client_msg_id) of a batch's
new messages are claimed with SET NX while the turn is taken, one round trip for both
(sheda_rt/chat/idempotency.py).
"""
from __future__ import annotations

import asyncio
import json
import logging
import uuid
from typing import TYPE_CHECKING, Callable, Iterable, Protocol

if TYPE_CHECKING:  # a single process never loads the Redis client
    from sheda_rt.realtime.redis_link import RedisLink

log = logging.getLogger("sheda.broker")


class Turns(Protocol):
    #: Whether other processes store chat messages too (ids must then come from the shared
    #: counter during this process's turn, one batch in flight at a time).
    shared: bool

    @property
    def epoch(self) -> int:
        """Changes each time Redis is reconnected after an outage."""

    async def acquire(self, claims: Iterable[str] = (), ttl_seconds: float = 600) -> tuple[object, list[bool] | None]:
        """Wait for this process's turn to store and publish a chat batch, claiming `claims`
        (idempotency keys, expiring after ttl_seconds) in the same step. Returns (the token
        for `release`, which claims were new); the list is None when no other process can
        be asked (Redis away): the caller checks the database for resends itself."""

    def release(self, token) -> None:
        """Called once the batch's deliveries are published."""

    async def release_claims(self, claims: Iterable[str]) -> None:
        """Give back claims whose messages were not stored (a resend is new then)."""


class LocalTurns:
    """One process stores one chat batch at a time by itself: no turns to take, and no
    other process to have claimed an idempotency key (its memory decides)."""

    shared = False
    epoch = 0

    async def acquire(self, claims=(), ttl_seconds: float = 0) -> tuple[None, list[bool]]:
        return None, [True] * len(claims)

    def release(self, token) -> None:
        pass

    async def release_claims(self, claims) -> None:
        pass


# KEYS: the turn lock. ARGV: the holder's token, the channel announcing a free turn.
# Deletes it only if still ours, and wakes the waiting processes.
_RELEASE_TURN = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[2], '')
  return 1
end
return 0
"""
# KEYS: the turn lock. ARGV: token, turn ttl ms, claim ttl s, claim key prefix, then the claims.
# Takes the turn (or returns nil) and, holding it, claims each idempotency key (1) or
# finds it claimed already (0): one round trip for both.
_TAKE_TURN = """
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return nil end
local out = {}
for i = 5, #ARGV do
  out[#out + 1] = redis.call('SET', ARGV[4] .. ARGV[i], '1', 'NX', 'EX', ARGV[3]) and 1 or 0
end
return out
"""


class RedisTurns:
    """Turns across processes (see the module's docstring). Needs two narrow things of the
    fan-out: `enqueue_after_publishes(step)` queues `step(pipeline)` behind the publishes
    queued so far, on the same connection; `listen(channel, callback)` hands it the messages
    of one more channel on the fan-out's subscriber connection."""

    shared = True
    #: A chat batch's turn lapses after this long (a crashed holder blocks nobody for longer).
    TURN_TTL_MS = 3_000

    def __init__(self, link: RedisLink, *, enqueue_after_publishes: Callable[[Callable], None],
                 listen: Callable[[bytes, Callable[[bytes], None]], None]):
        self.link = link
        self._enqueue_after_publishes = enqueue_after_publishes
        self._turn_key = link.prefix + "chat:turn"
        self._turn_channel = (link.prefix + "chat:turned").encode()
        self._claim_prefix = link.prefix + "cmid:"
        self._turn_free = asyncio.Event()
        self._take_turn = link.redis.register_script(_TAKE_TURN)
        listen(self._turn_channel, lambda data: self._turn_free.set())

    @property
    def epoch(self) -> int:
        return self.link.epoch

    async def acquire(self, claims=(), ttl_seconds: float = 600) -> tuple[bytes | None, list[bool] | None]:
        token = uuid.uuid4().hex.encode()
        args = [token, self.TURN_TTL_MS, max(1, int(ttl_seconds)), self._claim_prefix,
                *(c.encode("utf-8", "surrogatepass") for c in claims)]
        while self.link.usable():
            self._turn_free.clear()
            try:
                taken = await self._take_turn(keys=[self._turn_key], args=args)
            except Exception as exc:
                log.info(json.dumps({"event": "redis_turn_failed", "error": repr(exc)[:200]}))
                self.link.trouble()
                return None, None
            if taken is not None:
                return token, [bool(x) for x in taken]
            try:  # woken by the holder's release (the subscriber sees it), or try again anyway
                await asyncio.wait_for(self._turn_free.wait(), 0.005)
            except asyncio.TimeoutError:
                pass
        self.link.trouble()
        return None, None

    async def release_claims(self, claims) -> None:
        if not claims or not self.link.up:
            return
        try:
            await self.link.redis.delete(*(self._claim_prefix + c for c in claims))
        except Exception as exc:  # the claims lapse with their expiry; a resend meanwhile is looked up
            log.info(json.dumps({"event": "redis_claim_release_failed", "error": repr(exc)[:200]}))

    def release(self, token: bytes | None) -> None:
        """Queued behind this batch's publishes, so Redis runs it after them. If the publish
        pipeline fails, the release is dropped with it and the turn lapses by its TTL."""
        if token is not None:
            # EVAL, not the registered script: in a pipeline that would cost a SCRIPT EXISTS
            # round trip on every execute.
            self._enqueue_after_publishes(
                lambda pipe: pipe.eval(_RELEASE_TURN, 1, self._turn_key, token, self._turn_channel))
