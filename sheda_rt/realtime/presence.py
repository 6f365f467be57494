"""Presence: whether a user has a socket on any process, so "came online" and "went
offline" are told once (on the first socket anywhere and after the last one), and the
push dispatcher knows who is connected somewhere (sheda_rt/push/presence.py).

The hub asks it when a user's first socket here opens or their last one here closes;
`LocalPresence` answers from the hub's own knowledge (one process), `RedisPresence` from
every live process's users in Redis.

Global presence that survives a crash
-------------------------------------
Each process keeps the set of users with sockets on it in
`<prefix>presence:<process id>` and heartbeats into the sorted set
`<prefix>procs` (score = Redis time of its last heartbeat); its set expires
with the heartbeat. "First socket anywhere" / "last socket anywhere" are Lua
scripts that update this process's set and look for the user in the sets of
the live processes only, atomically. A crashed process stops heartbeating;
after `3 x heartbeat` its users no longer count as online anywhere, and the
next heartbeat of a live process claims its set (one claimant: the script is
atomic) and hands those users to `vanished`, which tells their peers they went
offline unless they are connected somewhere else by then (without that, the
people they talk with were never sent `presence` offline and showed them online
until they reloaded) — nobody stays online forever. A stopping process marks
itself dead at once, its set holding the users it had (`leaving`), so those who
did not reconnect elsewhere are announced the same way. During an outage presence falls
back to this process's own knowledge and the set is rewritten on reconnect
(a connect hook of the link, before it counts as up); the users who came or
went here meanwhile were announced to this process's sockets only, so one
heartbeat after Redis is back they are announced again as they are then. The scripts build key
names from the process list, so this needs a single Redis (or a primary with
replicas), not Redis Cluster.
"""
from __future__ import annotations

import asyncio
import json
import logging
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Awaitable, Callable, Collection, Protocol

if TYPE_CHECKING:  # a single process never loads the Redis client
    from sheda_rt.realtime.redis_link import RedisLink

log = logging.getLogger("sheda.broker")


class Presence(Protocol):
    async def start(self, *, users_here: Callable[[], Collection[int]],
                    vanished: Callable[..., Awaitable[None]] | None = None) -> None:
        """`users_here()`: the users with a socket on this process now (the hub's registry);
        `vanished(users)`: users of a process that died (they may be online elsewhere by now);
        `vanished(users, {user: when})`: users whose presence changed here while Redis was away
        (only this process's sockets were told): announce them as they are now."""

    async def stop(self) -> None: ...

    def leaving(self, users: Collection[int]) -> None:
        """Shutdown, before this process closes its connections: their users (not announced
        offline by this process) are left for a live process to announce, as a crash's are."""

    async def user_added(self, user_id: int, first_here: bool) -> bool:
        """A socket of user_id opened here; True if it is the user's first socket anywhere."""

    async def user_removed(self, user_id: int, last_here: bool) -> bool:
        """A socket of user_id closed here; True if the user has no socket left anywhere."""

    async def online_elsewhere(self, user_id: int) -> bool:
        """Whether a process's global presence holds a socket of user_id."""


class LocalPresence:
    """One process: its own sockets are everyone's."""

    async def start(self, *, users_here=None, vanished=None) -> None:
        pass

    async def stop(self) -> None:
        pass

    def leaving(self, users) -> None:
        pass

    async def user_added(self, user_id: int, first_here: bool) -> bool:
        return first_here

    async def user_removed(self, user_id: int, last_here: bool) -> bool:
        return last_here

    async def online_elsewhere(self, user_id: int) -> bool:
        """There is no other process."""
        return False


# Redis time in milliseconds, shared by the scripts (no clock skew between hosts).
_NOW = """
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS: procs zset, own presence set. ARGV: key prefix of presence sets, process id, user id, ttl ms.
# Returns 1 when no other live process holds the user (the user's first socket anywhere).
_PRESENCE_ADD = _NOW + """
redis.call('SADD', KEYS[2], ARGV[3])
redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[4]) * 2)
redis.call('ZADD', KEYS[1], now, ARGV[2])
for _, p in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], now - tonumber(ARGV[4]), '+inf')) do
  if p ~= ARGV[2] and redis.call('SISMEMBER', ARGV[1] .. p, ARGV[3]) == 1 then return 0 end
end
return 1
"""

# Same keys and arguments. Returns 1 when no live process holds the user any more.
_PRESENCE_REMOVE = _NOW + """
redis.call('SREM', KEYS[2], ARGV[3])
for _, p in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], now - tonumber(ARGV[4]), '+inf')) do
  if p ~= ARGV[2] and redis.call('SISMEMBER', ARGV[1] .. p, ARGV[3]) == 1 then return 0 end
end
return 1
"""

# KEYS: procs zset, own presence set. ARGV: process id, ttl ms, presence key prefix, "1" to
# claim dead processes. Claiming forgets each dead process and returns the users its set held
# (a set outlives its process's last heartbeat by a ttl, so the claimant still finds it), after
# a first element 1 if this process's own set exists (0: it stalled past the ttl and was claimed).
_HEARTBEAT = _NOW + """
redis.call('ZADD', KEYS[1], now, ARGV[1])
local gone = {redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[2]) * 2)}
if ARGV[4] == '1' then
  for _, p in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))) do
    for _, u in ipairs(redis.call('SMEMBERS', ARGV[3] .. p)) do gone[#gone + 1] = u end
    redis.call('DEL', ARGV[3] .. p)
  end
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
end
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 10)
return gone
"""

# KEYS: procs zset. ARGV: presence key prefix, ttl ms, user id. 1 when a live process
# (heartbeat within the ttl) holds a socket of the user.
_ONLINE_ANYWHERE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for _, p in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], now - tonumber(ARGV[2]), '+inf')) do
  if redis.call('SISMEMBER', ARGV[1] .. p, ARGV[3]) == 1 then return 1 end
end
return 0
"""


class RedisPresence:
    """Presence across processes (see the module's docstring)."""

    def __init__(self, link: RedisLink, *, heartbeat_seconds: float = 5.0):
        self.link = link
        self.redis = link.redis
        self.process_id = link.process_id
        self.heartbeat_seconds = heartbeat_seconds
        self.ttl_ms = int(heartbeat_seconds * 3000)
        self._procs_key = link.prefix + "procs"
        self._presence_prefix = link.prefix + "presence:"
        self._own_presence = self._presence_prefix + self.process_id
        self._users_here: Callable[[], Collection[int]] = frozenset
        self._vanished: Callable[..., Awaitable[None]] | None = None
        self._claims: set[asyncio.Task] = set()  # kept until done (a task only the loop references can vanish)
        self._leaving: set[int] | None = None  # set at shutdown (leaving())
        # Users whose first/last socket here came or went while Redis was away: their presence
        # reached only this process's sockets. Re-announced (as they are then) once it is back.
        self._missed: dict[int, datetime] = {}
        self._recheck: dict[int, datetime] = {}
        self._task: asyncio.Task | None = None
        self._presence_add = self.redis.register_script(_PRESENCE_ADD)
        self._presence_remove = self.redis.register_script(_PRESENCE_REMOVE)
        self._heartbeat = self.redis.register_script(_HEARTBEAT)
        self._online_anywhere = self.redis.register_script(_ONLINE_ANYWHERE)
        link.on_connect(self._announce)

    async def start(self, *, users_here: Callable[[], Collection[int]],
                    vanished: Callable[..., Awaitable[None]] | None = None) -> None:
        self._users_here = users_here
        self._vanished = vanished
        self._task = asyncio.create_task(self._heartbeats())

    async def stop(self) -> None:
        """This process's users stop counting at once (not after 3 heartbeats): it is marked
        dead, its set holding the users it had at shutdown (`leaving`), for a live process to
        claim and announce those that did not reconnect elsewhere."""
        from sheda_rt.realtime.redis_link import chunks, cancel_until_done  # (one process never loads the Redis client)

        if self._task is not None:
            await cancel_until_done([self._task])  # its Redis calls can swallow a cancellation
            self._task = None
        if self.link.up:
            try:
                async with asyncio.timeout(1.0):
                    pipe = self.redis.pipeline(transaction=True)
                    pipe.delete(self._own_presence)
                    if self._leaving:
                        for chunk in chunks(self._leaving, 5000):
                            pipe.sadd(self._own_presence, *chunk)
                        pipe.pexpire(self._own_presence, self.ttl_ms * 2)
                        pipe.zadd(self._procs_key, {self.process_id: 0})
                    else:
                        pipe.zrem(self._procs_key, self.process_id)
                    await pipe.execute()
            except Exception as exc:
                log.info(json.dumps({"event": "redis_presence_cleanup_failed", "error": repr(exc)}))

    def leaving(self, users: Collection[int]) -> None:
        self._leaving = set(users)

    def _args(self, user_id: int) -> tuple[list, list]:
        return [self._procs_key, self._own_presence], [self._presence_prefix, self.process_id, user_id, self.ttl_ms]

    async def user_added(self, user_id: int, first_here: bool) -> bool:
        if not first_here:
            return False
        if not self.link.up:
            self._missed[user_id] = datetime.now(timezone.utc)
            return True
        try:
            return bool(await self._presence_add(*self._args(user_id)))
        except Exception as exc:
            log.info(json.dumps({"event": "redis_presence_failed", "error": repr(exc)[:200]}))
            self._missed[user_id] = datetime.now(timezone.utc)
            return True

    async def user_removed(self, user_id: int, last_here: bool) -> bool:
        if not last_here:
            return False
        if self._leaving is not None:  # shutting down: stop() writes the set
            return True
        if not self.link.up:
            self._missed[user_id] = datetime.now(timezone.utc)
            return True
        try:
            return bool(await self._presence_remove(*self._args(user_id)))
        except Exception as exc:
            log.info(json.dumps({"event": "redis_presence_failed", "error": repr(exc)[:200]}))
            self._missed[user_id] = datetime.now(timezone.utc)
            return True

    async def online_elsewhere(self, user_id: int) -> bool:
        """Whether a live process (this one included) holds a socket of user_id in the global
        presence. With Redis away the answer is unknown and False is returned: a caller
        deciding whether to notify someone through another channel then errs on telling them."""
        if not self.link.up:
            return False
        try:
            return bool(await self._online_anywhere(keys=[self._procs_key], args=[self._presence_prefix, self.ttl_ms, user_id]))
        except Exception as exc:
            log.info(json.dumps({"event": "redis_presence_failed", "error": repr(exc)[:200]}))
            return False

    async def _announce(self) -> None:
        """(Re)write this process's presence set from what it holds now."""
        from sheda_rt.realtime.redis_link import chunks  # (here: one process never loads the Redis client)

        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(self._own_presence)
        for chunk in chunks(self._users_here(), 5000):
            pipe.sadd(self._own_presence, *chunk)
        await pipe.execute()
        # No claim here (a connect hook: the link does not count as up yet); the next heartbeat claims.
        await self._heartbeat(keys=[self._procs_key, self._own_presence], args=[self.process_id, self.ttl_ms, self._presence_prefix, "0"])

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_seconds)
            if not self.link.up:
                continue
            try:
                own, *gone = await self._heartbeat(keys=[self._procs_key, self._own_presence],
                                                   args=[self.process_id, self.ttl_ms, self._presence_prefix, "1"])
                if not own and self._users_here():  # stalled past the ttl: its set was claimed (or expired)
                    await self._announce()
                    # ... and a live process may have announced its users offline: online again.
                    self._missed.update(dict.fromkeys(self._users_here(), datetime.now(timezone.utc)))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.info(json.dumps({"event": "redis_heartbeat_failed", "error": repr(exc)[:200]}))
                continue
            if gone and self._vanished is not None:
                users = sorted({int(u) for u in gone})
                log.info(json.dumps({"event": "presence_claimed_dead_process", "users": len(users)}))
                self._spawn(self._vanished(users))
            # Changes missed while Redis was away go out one heartbeat after it is back, when
            # every process has had the time to subscribe again.
            ready, self._recheck, self._missed = self._recheck, self._missed, {}
            if ready and self._vanished is not None:
                self._spawn(self._vanished(sorted(ready), ready))

    def _spawn(self, work) -> None:
        task = asyncio.ensure_future(work)  # never delays the next heartbeat
        self._claims.add(task)
        task.add_done_callback(self._claimed)

    def _claimed(self, task: asyncio.Task) -> None:
        self._claims.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("presence of a dead process's users not announced", exc_info=task.exception())
