"""The Redis fan-out: the hub's delivery and session control across processes.

Used instead of `LocalFanout` (sheda_rt/realtime/fanout.py) when REDIS_URL is set. It shares
the Redis client and connection state with presence and the commit turns (`RedisLink`,
sheda_rt/realtime/redis_link.py); its subscriber connection is what decides whether the link
is up. It knows nothing of the hub: it delivers through the callbacks given at `start`.

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
every user with a socket here (the link's connect hooks re-announce presence). Chat messages are
stored before they are published, so what another process missed is there via
`sync`. Revocation signals are the exception: they are kept (bounded) and
replayed when Redis returns, since a logged-out token must not keep a socket.

The resync floor
----------------
From the moment Redis first fails us (a publish, a turn, the subscription: the link's
`trouble`), durable events may reach other processes' sockets late, out of order or not at
all. The fan-out remembers the highest stream position delivered here before that
(`last_seq()`), and once Redis works again (the link is up, or a publish went through) it
sends the control op `resync` with it: every process then tells its sockets to sync from
there (the hub's `handle_control`).

Commit turns ride on this fan-out's publish pipeline (sheda_rt/realtime/turns.py): a turn's
release is queued with `enqueue_after_publishes` behind that batch's publishes, and its
wake-ups come over `listen`.
"""
from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from typing import Callable, Collection

from sheda_rt.metrics import BROKER_PUBLISH_ERRORS
from sheda_rt.realtime.fanout import DeliverChannel, DeliverUser
from sheda_rt.realtime.redis_link import RedisLink, cancel_until_done, chunks as _chunks

log = logging.getLogger("sheda.broker")

_SEP = b"\x00"  # never inside JSON text (control characters are escaped there)


class RedisFanout:
    #: Pending cross-process publishes kept while Redis is slow; beyond this they are dropped (and counted).
    MAX_OUTBOX = 100_000
    #: Revocation signals kept for replay during an outage.
    MAX_CONTROL_BACKLOG = 10_000

    def __init__(self, link: RedisLink):
        self.link = link
        self.redis = link.redis
        self.prefix = link.prefix
        self._origin = link.process_id.encode()
        # Given at start: the hub's delivery to its own sockets, its control handling, its stream position.
        self._deliver_user: DeliverUser | None = None
        self._deliver_channel: DeliverChannel | None = None
        self._on_control: Callable[[dict], None] | None = None
        self._last_seq: Callable[[], int] | None = None
        self._here: Callable[[], Collection[int]] = frozenset  # users with a socket on this process
        # The stream position before Redis last failed us (None: no failure since it was up).
        self._resync_floor: int | None = None
        link.on_trouble(self._trouble)
        link.on_up(self._recovered)

        self._user_prefix = (self.prefix + "u:").encode()
        self._control_channel = (self.prefix + "control").encode()
        # More channels of the subscriber connection, fixed ones (the commit turns' wake-up).
        self._listeners: dict[bytes, Callable[[bytes], None]] = {}
        # Channels of things (`property:42`, sheda_rt/realtime/channels.py): subscribed while a
        # socket here watches one, like the user channels, so an unwatched thing costs no process
        # anything but the one PUBLISH of its change.
        self._channel_prefix = (self.prefix + "ch:").encode()
        self._channels_here: set[str] = set()
        self._channels_subscribed: set[str] = set()

        self._subscribed: set[int] = set()  # user channels the current subscriber connection has
        self._pubsub = None
        self._sub_lock = asyncio.Lock()
        # (channel, payload) to PUBLISH, or a step (a callable given the pipeline) to run after them.
        self._outbox: deque[tuple[bytes, bytes] | Callable] = deque()
        self._outbox_ready = asyncio.Event()
        self._control_backlog: deque[bytes] = deque(maxlen=self.MAX_CONTROL_BACKLOG)
        self._tasks: list[asyncio.Task] = []
        self._stopping = False

    # ---- lifecycle ---------------------------------------------------------
    async def start(self, *, deliver_user: DeliverUser, deliver_channel: DeliverChannel, on_control: Callable[[dict], None],
                    last_seq: Callable[[], int], users_here: Callable[[], Collection[int]], wait_seconds: float = 2.0) -> None:
        """Start subscriber and publisher. A server whose Redis is down still starts
        (readiness says so) and connects when Redis comes up."""
        self._deliver_user, self._deliver_channel, self._on_control = deliver_user, deliver_channel, on_control
        self._last_seq, self._here = last_seq, users_here
        self._stopping = False
        self._tasks = [asyncio.create_task(coro) for coro in (self._subscriber(), self._publisher())]
        await self.link.wait_up(wait_seconds)

    async def stop(self) -> None:
        self._stopping = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 2.0
        while self._outbox and self.link.up and loop.time() < deadline:  # let queued events reach the others
            await asyncio.sleep(0.01)
        await cancel_until_done(self._tasks)
        self._tasks = []

    # ---- the resync floor ----------------------------------------------------
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
        if self._resync_floor is None and self._last_seq is not None:
            self._resync_floor = self._last_seq()

    def _send_resync(self, floor: int) -> None:
        text = json.dumps({"op": "resync", "after_seq": floor}, separators=(",", ":")).encode()
        self._on_control({"op": "resync", "after_seq": floor})
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
                return  # the subscriber subscribes every user here when it (re)connects
            try:
                here = set(self._here())
                for chunk in _chunks(here - self._subscribed):
                    await pubsub.subscribe(*[self._user_channel(u) for u in chunk])
                    self._subscribed.update(chunk)
                for chunk in _chunks(self._subscribed - here):
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
                self._on_control(json.loads(text))
            elif channel.startswith(self._user_prefix):
                self._deliver_user(int(channel[len(self._user_prefix):]), text.decode(), exclude.decode() or None)
            elif channel.startswith(self._channel_prefix):
                self._deliver_channel(channel[len(self._channel_prefix):].decode(), text.decode())
        except Exception:
            log.exception("bad broker message on %r", channel)

    # ---- publishing --------------------------------------------------------
    async def publish(self, user_id: int, text: str, exclude: str | None) -> None:
        self._deliver_user(user_id, text, exclude)
        self._enqueue(self._user_channel(user_id), (exclude or "").encode(), text.encode())

    async def publish_channel(self, name: str, text: str) -> None:
        """An event of a thing's channel: to the watchers here now, then (one PUBLISH through the
        ordered outbox) to the processes subscribed to it. Ephemeral: lost while Redis is away."""
        self._deliver_channel(name, text)
        self._enqueue(self._named_channel(name), b"", text.encode())

    async def user_added(self, user_id: int, first_here: bool) -> None:
        """A socket of user_id opened here (the hub registered it): subscribe on the first one."""
        if first_here:
            await self._sync_subscriptions()

    async def user_removed(self, user_id: int, last_here: bool) -> None:
        """A socket of user_id closed here: unsubscribe after the last one."""
        if last_here:
            await self._sync_subscriptions()

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
        self._on_control(message)
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
