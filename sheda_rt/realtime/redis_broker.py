"""The Redis broker: the Hub's delivery, presence and session control across processes.

Used instead of `LocalBroker` when REDIS_URL is set; any number of processes
(one host with `--processes N`, or many hosts behind a load balancer) then
behave as one server.

Why one channel per user, subscribed while the user has a socket here
-----------------------------------------------------------------------
The alternative is one channel per process plus a user -> processes registry.
That costs every publish a registry lookup (a second round trip, or a Lua
script), and the registry is exactly the state that goes stale when a process
dies. With per-user channels Redis itself is the registry: a PUBLISH reaches
precisely the processes holding sockets of that user, in one hop, and a
crashed process's subscriptions vanish with its connection. Redis keeps
channels in a hash table and a PUBLISH costs O(subscribers of that channel),
so 10,000 users on a process are 10,000 channels on one subscriber
connection — cheap (a few hundred bytes each in Redis) — and subscribe /
unsubscribe happen only on a user's first / last socket here. A single
global channel would instead make every process parse every event in the
system. One control channel, subscribed by every process, carries
session-revocation signals (logout, deactivation).

Delivery without duplicates, and during an outage
-------------------------------------------------
`publish` delivers to this process's sockets first (synchronously, Redis or
not) and then queues one PUBLISH whose payload is tagged with this process's
id; the subscriber drops events it originated. So each socket gets an event
exactly once, and sockets on this process keep getting everything while Redis
is away. Publishes go out through one task that pipelines the queue over one
connection: events keep their order (per-conversation order holds across
processes) and bursts cost one write. When Redis is unreachable, publishes
fail fast — counted in `sheda_broker_publish_errors_total`, nothing waits —
and the subscriber reconnects with capped exponential backoff, resubscribes
every user with a socket here and re-announces its presence. Chat messages are
stored before they are published, so what another process missed is there via
`sync`. Revocation signals are the exception: they are kept (bounded) and
replayed when Redis returns, since a logged-out token must not keep a socket.

Chat batches take turns through this broker's publish pipeline: see
sheda_rt/realtime/turns.py (`enqueue_after_publishes`, `listen`).

Global presence that survives a crash
-------------------------------------
Each process keeps the set of users with sockets on it in
`<prefix>presence:<process id>` and heartbeats into the sorted set
`<prefix>procs` (score = Redis time of its last heartbeat); its set expires
with the heartbeat. "First socket anywhere" / "last socket anywhere" are Lua
scripts that update this process's set and look for the user in the sets of
the live processes only, atomically. A crashed process stops heartbeating;
after `3 x heartbeat` its users no longer count as online anywhere and its
keys expire — nobody stays online forever. During an outage presence falls
back to this process's own knowledge and the set is rewritten on reconnect.
The scripts build key names from the process list, so this needs a single
Redis (or a primary with replicas), not Redis Cluster.

Keys and channels are prefixed with `sheda:<MONGODB_DB>:`, so deployments with
different databases can share one Redis without seeing each other's events.
"""
from __future__ import annotations

import asyncio
import json
import logging
from collections import deque

from typing import Callable

from sheda_rt.metrics import BROKER_PUBLISH_ERRORS
from sheda_rt.realtime.redis_link import RedisLink, chunks as _chunks, redis_client  # noqa: F401 (redis_client: tests)

log = logging.getLogger("sheda.broker")

_SEP = b"\x00"  # never inside JSON text (control characters are escaped there)

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
redis.call('PEXPIRE', KEYS[2], ARGV[4])
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

# KEYS: procs zset, own presence set. ARGV: process id, ttl ms. Also forgets dead processes.
_HEARTBEAT = _NOW + """
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 10)
return 1
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


class RedisBroker:
    #: Pending cross-process publishes kept while Redis is slow; beyond this they are dropped (and counted).
    MAX_OUTBOX = 100_000
    #: Revocation signals kept for replay during an outage.
    MAX_CONTROL_BACKLOG = 10_000

    def __init__(self, link: RedisLink, *, heartbeat_seconds: float = 5.0):
        self.link = link
        self.redis = link.redis
        self.prefix = link.prefix
        self.process_id = link.process_id
        self._origin = self.process_id.encode()
        self.heartbeat_seconds = heartbeat_seconds
        self.ttl_ms = int(heartbeat_seconds * 3000)
        self.hub = None
        # The stream position before Redis last failed us (None: no failure since it was up).
        self._resync_floor: int | None = None
        link.on_trouble(self._trouble)
        link.on_up(self._recovered)
        link.on_connect(self._announce_presence)

        self._user_prefix = (self.prefix + "u:").encode()
        self._control_channel = (self.prefix + "control").encode()
        self._procs_key = self.prefix + "procs"
        self._presence_prefix = self.prefix + "presence:"
        self._own_presence = self._presence_prefix + self.process_id
        # More channels of the subscriber connection, fixed ones (the commit turns' wake-up).
        self._listeners: dict[bytes, Callable[[bytes], None]] = {}
        # Channels of things (`property:42`, sheda_rt/realtime/channels.py): subscribed while a
        # socket here watches one, like the user channels, so an unwatched thing costs no process
        # anything but the one PUBLISH of its change.
        self._channel_prefix = (self.prefix + "ch:").encode()
        self._channels_here: set[str] = set()
        self._channels_subscribed: set[str] = set()

        self._here: set[int] = set()        # users with a socket on this process
        self._subscribed: set[int] = set()  # user channels the current subscriber connection has
        self._pubsub = None
        self._sub_lock = asyncio.Lock()
        # (channel, payload) to PUBLISH, or a step (a callable given the pipeline) to run after them.
        self._outbox: deque[tuple[bytes, bytes] | Callable] = deque()
        self._outbox_ready = asyncio.Event()
        self._control_backlog: deque[bytes] = deque(maxlen=self.MAX_CONTROL_BACKLOG)
        self._tasks: list[asyncio.Task] = []
        self._stopping = False

        self._presence_add = self.redis.register_script(_PRESENCE_ADD)
        self._presence_remove = self.redis.register_script(_PRESENCE_REMOVE)
        self._heartbeat = self.redis.register_script(_HEARTBEAT)
        self._online_anywhere = self.redis.register_script(_ONLINE_ANYWHERE)

    @property
    def up(self) -> bool:
        return self.link.up

    async def health(self) -> str:
        return await self.link.health()

    # ---- lifecycle ---------------------------------------------------------
    async def start(self, hub, wait_seconds: float = 2.0) -> None:
        """Start subscriber, publisher and heartbeat. A server whose Redis is down still
        starts (readiness says so) and connects when Redis comes up."""
        self.hub = hub
        self._stopping = False
        self._tasks = [asyncio.create_task(coro) for coro in (self._subscriber(), self._publisher(), self._heartbeats())]
        await self.link.wait_up(wait_seconds)

    async def stop(self) -> None:
        self._stopping = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 2.0
        while self._outbox and self.link.up and loop.time() < deadline:  # let queued events reach the others
            await asyncio.sleep(0.01)
        if self.link.up:
            try:
                async with asyncio.timeout(1.0):
                    pipe = self.redis.pipeline(transaction=True)
                    pipe.delete(self._own_presence)
                    pipe.zrem(self._procs_key, self.process_id)
                    await pipe.execute()
            except Exception as exc:
                log.info(json.dumps({"event": "redis_presence_cleanup_failed", "error": repr(exc)}))
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        await self.link.close()

    def _recovered(self) -> None:
        floor, self._resync_floor = self._resync_floor, None
        if floor is not None:
            # Events may have missed sockets live, here or elsewhere, since `floor`: every process
            # tells its sockets to sync from there (ids stay ordered again from now on).
            self._send_resync(floor)

    def _trouble(self) -> None:
        """Redis could not be used for a publish, a turn or the subscription: from here until
        it is back, durable events may reach other processes' sockets late or not at all, and
        out of order. Remember the last position delivered before that."""
        if self._resync_floor is None and self.hub is not None:
            self._resync_floor = self.hub.last_seq

    def _send_resync(self, floor: int) -> None:
        text = json.dumps({"op": "resync", "after_seq": floor}, separators=(",", ":")).encode()
        self.hub.handle_control({"op": "resync", "after_seq": floor})
        if not self._enqueue(self._control_channel, b"", text):
            self._control_backlog.append(text)

    # ---- channels ----------------------------------------------------------
    def _user_channel(self, user_id: int) -> bytes:
        return self._user_prefix + str(user_id).encode()

    def _named_channel(self, name: str) -> bytes:
        return self._channel_prefix + name.encode()

    async def _sync_subscriptions(self) -> None:
        """Make the subscriber's user channels equal the users with sockets here, and its
        thing channels the channels watched here. Reconciling from current state (under a lock) keeps it right however
        opens and closes interleave."""
        async with self._sub_lock:
            pubsub = self._pubsub
            if pubsub is None:
                return  # the subscriber subscribes everything in `_here` when it (re)connects
            try:
                for chunk in _chunks(self._here - self._subscribed):
                    await pubsub.subscribe(*[self._user_channel(u) for u in chunk])
                    self._subscribed.update(chunk)
                for chunk in _chunks(self._subscribed - self._here):
                    await pubsub.unsubscribe(*[self._user_channel(u) for u in chunk])
                    self._subscribed.difference_update(chunk)
                await self._reconcile_channels(pubsub)
            except Exception as exc:  # the subscriber loop sees the same failure and reconnects
                log.debug("subscription change failed: %r", exc)

    async def _sync_channel_subscriptions(self) -> None:
        """`_sync_subscriptions` for the thing channels only (a subscribe frame should not
        cost a pass over every user here)."""
        async with self._sub_lock:
            if self._pubsub is None:
                return
            try:
                await self._reconcile_channels(self._pubsub)
            except Exception as exc:
                log.debug("channel subscription change failed: %r", exc)

    async def _reconcile_channels(self, pubsub) -> None:
        for chunk in _chunks(self._channels_here - self._channels_subscribed):
            await pubsub.subscribe(*[self._named_channel(n) for n in chunk])
            self._channels_subscribed.update(chunk)
        for chunk in _chunks(self._channels_subscribed - self._channels_here):
            await pubsub.unsubscribe(*[self._named_channel(n) for n in chunk])
            self._channels_subscribed.difference_update(chunk)

    async def _subscriber(self) -> None:
        delay = 0.05
        while not self._stopping:
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self._control_channel, *self._listeners)
                async with self._sub_lock:
                    self._subscribed = set()
                    self._channels_subscribed = set()
                    self._pubsub = pubsub
                await self._sync_subscriptions()
                await self.link.connected()  # presence is re-announced, then the link counts as up
                delay = 0.05
                self._replay_control_backlog()
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=None)
                    if message is not None and message.get("type") == "message":
                        self._dispatch(message["channel"], message["data"])
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.link.set_down(exc)
            finally:
                async with self._sub_lock:
                    if self._pubsub is pubsub:
                        self._pubsub = None
                try:
                    await pubsub.aclose()
                except Exception:
                    pass
            if self._stopping:
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    def _dispatch(self, channel: bytes, data: bytes) -> None:
        listener = self._listeners.get(channel)
        if listener is not None:
            listener(data)
            return
        origin, _, rest = data.partition(_SEP)
        if origin == self._origin:
            return  # delivered locally when it was published
        exclude, _, text = rest.partition(_SEP)
        try:
            if channel == self._control_channel:
                self.hub.handle_control(json.loads(text))
            elif channel.startswith(self._user_prefix):
                self.hub.deliver_local(int(channel[len(self._user_prefix):]), text.decode(), exclude.decode() or None)
            elif channel.startswith(self._channel_prefix):
                self.hub.deliver_channel_local(channel[len(self._channel_prefix):].decode(), text.decode())
        except Exception:
            log.exception("bad broker message on %r", channel)

    # ---- publishing --------------------------------------------------------
    async def publish(self, user_id: int, text: str, exclude: str | None) -> None:
        self.hub.deliver_local(user_id, text, exclude)
        self._enqueue(self._user_channel(user_id), (exclude or "").encode(), text.encode())

    async def publish_channel(self, name: str, text: str) -> None:
        """An event of a thing's channel: to the watchers here now, then (one PUBLISH through the
        ordered outbox) to the processes subscribed to it. Ephemeral: lost while Redis is away."""
        self.hub.deliver_channel_local(name, text)
        self._enqueue(self._named_channel(name), b"", text.encode())

    async def channel_added(self, name: str, first_here: bool) -> None:
        """A socket here started watching `name`: subscribe on the first one."""
        if first_here:
            self._channels_here.add(name)
            await self._sync_channel_subscriptions()

    async def channel_removed(self, name: str, last_here: bool) -> None:
        """A socket here stopped watching `name` (or closed): unsubscribe after the last one."""
        if last_here:
            self._channels_here.discard(name)
            await self._sync_channel_subscriptions()

    async def publish_control(self, message: dict) -> None:
        self.hub.handle_control(message)
        text = json.dumps(message, separators=(",", ":")).encode()
        if not self._enqueue(self._control_channel, b"", text):
            self._control_backlog.append(text)

    # ---- what the commit turns need (sheda_rt/realtime/turns.py) ------------------
    def listen(self, channel: bytes, callback: Callable[[bytes], None]) -> None:
        """Hand the messages of `channel` to `callback` (subscribed on each connection of
        the subscriber; register before start)."""
        self._listeners[channel] = callback

    def enqueue_after_publishes(self, step: Callable) -> None:
        """Run `step(pipeline)` behind every publish queued so far, on the same connection:
        Redis runs it after them. Not an event: if the pipeline fails, it is dropped."""
        self._outbox.append(step)
        self._outbox_ready.set()

    def _enqueue(self, channel: bytes, exclude: bytes, text: bytes) -> bool:
        if not self.link.usable() or len(self._outbox) >= self.MAX_OUTBOX:
            BROKER_PUBLISH_ERRORS.inc()
            self.link.trouble()
            return False
        self._outbox.append((channel, self._origin + _SEP + exclude + _SEP + text))
        self._outbox_ready.set()
        return True

    def _replay_control_backlog(self) -> None:
        while self._control_backlog and self.link.up:
            text = self._control_backlog.popleft()
            if not self._enqueue(self._control_channel, b"", text):
                self._control_backlog.appendleft(text)
                return

    async def _publisher(self) -> None:
        """One task, one connection at a time, pipelined batches: order is kept."""
        while True:
            await self._outbox_ready.wait()
            self._outbox_ready.clear()
            while self._outbox:
                batch = [self._outbox.popleft() for _ in range(min(len(self._outbox), 1000))]
                try:
                    pipe = self.redis.pipeline(transaction=False)
                    for entry in batch:
                        if callable(entry):
                            entry(pipe)
                        else:
                            pipe.publish(*entry)
                    await pipe.execute()
                    if self._resync_floor is not None and self.link.up:  # publishing works again (the link never dropped)
                        floor, self._resync_floor = self._resync_floor, None
                        self._send_resync(floor)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    # Steps (turn releases) are not events: dropped, a turn lapses by its TTL.
                    lost = [entry for entry in batch + list(self._outbox) if not callable(entry)]
                    self._outbox.clear()
                    BROKER_PUBLISH_ERRORS.inc(len(lost))
                    for channel, payload in lost:
                        if channel == self._control_channel:
                            self._control_backlog.append(payload.split(_SEP, 2)[2])
                    # Fail fast for a moment instead of making every publish wait on a dead link.
                    self.link.pause(1.0)
                    self.link.trouble()
                    log.warning(json.dumps({"event": "redis_publish_failed", "events": len(lost), "error": repr(exc)[:200]}))

    # ---- presence ----------------------------------------------------------
    def _presence_args(self, user_id: int) -> tuple[list, list]:
        return [self._procs_key, self._own_presence], [self._presence_prefix, self.process_id, user_id, self.ttl_ms]

    async def user_added(self, user_id: int, first_here: bool) -> bool:
        if not first_here:
            return False
        self._here.add(user_id)
        await self._sync_subscriptions()
        if not self.up:
            return True
        try:
            return bool(await self._presence_add(*self._presence_args(user_id)))
        except Exception as exc:
            log.info(json.dumps({"event": "redis_presence_failed", "error": repr(exc)[:200]}))
            return True

    async def user_removed(self, user_id: int, last_here: bool) -> bool:
        if not last_here:
            return False
        self._here.discard(user_id)
        await self._sync_subscriptions()
        if not self.up:
            return True
        try:
            return bool(await self._presence_remove(*self._presence_args(user_id)))
        except Exception as exc:
            log.info(json.dumps({"event": "redis_presence_failed", "error": repr(exc)[:200]}))
            return True

    async def online_elsewhere(self, user_id: int) -> bool:
        """Whether a live process (this one included) holds a socket of user_id in the global
        presence. With Redis away the answer is unknown and False is returned: a caller
        deciding whether to notify someone through another channel then errs on telling them."""
        if not self.up:
            return False
        try:
            return bool(await self._online_anywhere(keys=[self._procs_key], args=[self._presence_prefix, self.ttl_ms, user_id]))
        except Exception as exc:
            log.info(json.dumps({"event": "redis_presence_failed", "error": repr(exc)[:200]}))
            return False

    async def _announce_presence(self) -> None:
        """(Re)write this process's presence set from what it holds now."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(self._own_presence)
        for chunk in _chunks(self._here, 5000):
            pipe.sadd(self._own_presence, *chunk)
        await pipe.execute()
        await self._heartbeat(keys=[self._procs_key, self._own_presence], args=[self.process_id, self.ttl_ms])

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_seconds)
            if not self.up:
                continue
            try:
                await self._heartbeat(keys=[self._procs_key, self._own_presence], args=[self.process_id, self.ttl_ms])
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.info(json.dumps({"event": "redis_heartbeat_failed", "error": repr(exc)[:200]}))
