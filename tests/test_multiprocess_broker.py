"""The Redis fan-out and presence (one Redis link per hub) and Redis limits between two
Hubs of this process, each with its own Redis connections — exactly what two server processes have — against a real
redis-server. The end-to-end versions (real server processes, real sockets) are
in test_multiprocess.py; here we can also kill a "process" without cleanup and
move through outages precisely."""
from __future__ import annotations

import asyncio
import json
import uuid

from prometheus_client import REGISTRY

from sheda_rt.limits import MemoryLimits
from sheda_rt.realtime.hub import Hub
from sheda_rt.realtime.fanout_redis import RedisFanout
from sheda_rt.realtime.presence import RedisPresence
from sheda_rt.realtime.redis_link import RedisLink, redis_client
from sheda_rt.redis_limits import RedisLimits
from tests.redis_support import redis_server  # noqa: F401  (module fixture)
from tests.support import eventually


class Socket:
    """What the hub sees of a WebSocket: frames queued to it, and a server-side close."""

    def __init__(self, user_id: int, jti: str = "jti-1"):
        self.conn_id = uuid.uuid4().hex
        self.user_id = user_id
        self.jti = jti
        self.frames: list[dict] = []
        self.closed: int | None = None

    def deliver(self, text: str) -> None:
        self.frames.append(json.loads(text))

    def close_for(self, code: int, reason: str) -> None:
        self.closed = code


class RedisHub(Hub):
    """A hub as a server process builds it with REDIS_URL (sheda_rt/context.py): fan-out and
    presence over one Redis link, which is closed after them."""

    def __init__(self, url: str, namespace: str, heartbeat: float):
        self.link = RedisLink(url, namespace)
        super().__init__(RedisFanout(self.link), RedisPresence(self.link, heartbeat_seconds=heartbeat))

    async def stop(self) -> None:
        await super().stop()
        await self.link.close()


async def two_hubs(redis_server, namespace: str | None = None, heartbeat: float = 0.2) -> tuple[RedisHub, RedisHub]:
    namespace = namespace or uuid.uuid4().hex[:8]
    a = RedisHub(redis_server.url, namespace, heartbeat)
    b = RedisHub(redis_server.url, namespace, heartbeat)
    await a.start()
    await b.start()
    assert a.link.up and b.link.up
    return a, b


async def test_events_reach_every_socket_of_the_user_once_on_any_process(redis_server):
    a, b = await two_hubs(redis_server)
    try:
        alice_a, alice_b, bob_b = Socket(1), Socket(1), Socket(2)
        await a.connected(alice_a)
        await b.connected(alice_b)
        await b.connected(bob_b)
        # A message from Alice's socket on A: Bob on B, Alice's other socket on B, not the sender.
        for n in range(50):
            await a.publish_to_user(2, {"type": "message", "n": n})
            await a.publish_to_user(1, {"type": "message", "n": n}, exclude=alice_a.conn_id)
        await eventually(lambda: len(bob_b.frames) == 50 and len(alice_b.frames) == 50)
        await asyncio.sleep(0.2)  # anything extra would have arrived by now
        assert [f["n"] for f in bob_b.frames] == list(range(50))  # in order, once each
        assert [f["n"] for f in alice_b.frames] == list(range(50))
        assert alice_a.frames == []
        # An event published on B for a user with sockets on both: each socket exactly once.
        await b.publish_to_user(1, {"type": "notification", "id": 7})
        await eventually(lambda: any(f["type"] == "notification" for f in alice_a.frames))
        await asyncio.sleep(0.2)
        assert [f for f in alice_a.frames if f["type"] == "notification"] == [{"type": "notification", "id": 7}]
        assert [f for f in alice_b.frames if f["type"] == "notification"] == [{"type": "notification", "id": 7}]
    finally:
        await a.stop()
        await b.stop()


async def test_namespaces_do_not_see_each_other(redis_server):
    a, _ = await two_hubs(redis_server, namespace="one")
    c, _d = await two_hubs(redis_server, namespace="two")
    try:
        mine, theirs = Socket(5), Socket(5)
        await a.connected(mine)
        await c.connected(theirs)
        await a.publish_to_user(5, {"type": "x"})
        await asyncio.sleep(0.2)
        assert len(mine.frames) == 1 and theirs.frames == []
    finally:
        for hub in (a, _, c, _d):
            await hub.stop()


async def test_presence_is_global_until_the_last_socket_anywhere_closes(redis_server):
    a, b = await two_hubs(redis_server)
    try:
        on_a, on_b, second_on_a = Socket(9), Socket(9), Socket(9)
        assert await a.connected(on_a) is True       # first socket anywhere: online
        assert await b.connected(on_b) is False      # already online (on A)
        assert await a.connected(second_on_a) is False
        assert await a.disconnected(on_a) is False
        assert await a.disconnected(second_on_a) is False  # still on B
        assert await b.disconnected(on_b) is True          # last one anywhere: offline
        assert await b.connected(Socket(9)) is True
    finally:
        await a.stop()
        await b.stop()


async def test_a_crashed_process_does_not_keep_its_users_online(redis_server):
    a, b = await two_hubs(redis_server, heartbeat=0.2)
    crashed = False
    try:
        assert await a.connected(Socket(11)) is True
        assert await b.connected(Socket(11)) is False
        # A dies without cleaning up: its tasks stop, its keys stay behind in Redis.
        tasks = [*a.fanout._tasks, a.presence._task]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await a.link.redis.aclose()
        crashed = True
        # Within 3 heartbeats its set no longer counts: B's closing socket is the user's last one.
        await asyncio.sleep(0.8)
        assert await b.disconnected(b.sockets_of(11)[0]) is True
        assert await b.connected(Socket(11)) is True
    finally:
        if not crashed:
            await a.stop()
        await b.stop()


async def test_logout_signal_closes_sockets_on_the_other_process(redis_server):
    a, b = await two_hubs(redis_server)
    try:
        same_token_b, other_token_b, same_token_a = Socket(3, "t1"), Socket(3, "t2"), Socket(3, "t1")
        for hub, sock in ((b, same_token_b), (b, other_token_b), (a, same_token_a)):
            await hub.connected(sock)
        await a.revoke_sessions(3, jti="t1", code=4401)
        await eventually(lambda: same_token_b.closed == 4401)
        assert same_token_a.closed == 4401 and other_token_b.closed is None
        await b.revoke_sessions(3, code=4403)  # deactivation: every token
        await eventually(lambda: other_token_b.closed == 4403)
    finally:
        await a.stop()
        await b.stop()


async def test_redis_outage_keeps_local_delivery_and_resumes_cross_process(redis_server):
    a, b = await two_hubs(redis_server)
    try:
        alice_a, bob_a, bob_b, carol_b = Socket(21), Socket(22), Socket(22), Socket(23, "c1")
        for hub, sock in ((a, alice_a), (a, bob_a), (b, bob_b), (b, carol_b)):
            await hub.connected(sock)
        redis_server.stop()
        await eventually(lambda: not a.link.up and not b.link.up)
        assert (await a.link.health()).startswith("down")

        errors = REGISTRY.get_sample_value("sheda_broker_publish_errors_total")
        loop = asyncio.get_running_loop()
        started = loop.time()
        await a.publish_to_user(22, {"type": "message", "n": 1})
        assert loop.time() - started < 0.05  # fails fast, nothing waits for Redis
        assert bob_a.frames == [{"type": "message", "n": 1}]  # this process's sockets still get it
        assert bob_b.frames == []
        assert REGISTRY.get_sample_value("sheda_broker_publish_errors_total") == errors + 1
        # Presence falls back to what this process knows; a logout is kept for the others.
        assert await a.connected(Socket(24)) is True
        await a.revoke_sessions(23, jti="c1")

        redis_server.start()  # same port, empty: nothing survived from before
        await eventually(lambda: a.link.up and b.link.up, timeout=15)
        assert await a.link.health() == "ok"
        await eventually(lambda: carol_b.closed == 4401)  # the revocation was replayed
        # Every socket on both processes is told to sync: events may have missed it live meanwhile.
        def hints(sock):
            return [f for f in sock.frames if f.get("type") == "sync.hint"]

        await eventually(lambda: all(hints(sock) for sock in (alice_a, bob_a, bob_b)))
        assert all(h == {"type": "sync.hint", "after_seq": 0, "reason": "broker_outage"} for sock in (alice_a, bob_a, bob_b)
                   for h in hints(sock))
        for sock in (alice_a, bob_a, bob_b):
            sock.frames[:] = [f for f in sock.frames if f.get("type") != "sync.hint"]
        await a.publish_to_user(22, {"type": "message", "n": 2})
        await b.publish_to_user(21, {"type": "message", "n": 3})
        await eventually(lambda: bob_b.frames == [{"type": "message", "n": 2}] and alice_a.frames == [{"type": "message", "n": 3}])
        assert bob_a.frames == [{"type": "message", "n": 1}, {"type": "message", "n": 2}]
        # Presence was re-announced: Bob is on both, so closing one socket is not offline.
        assert await b.disconnected(bob_b) is False
        assert await a.disconnected(bob_a) is True
    finally:
        if redis_server.process is None:
            redis_server.start()
        await a.stop()
        await b.stop()


async def test_redis_limits_are_shared_and_match_memory_limits(redis_server):
    namespace = uuid.uuid4().hex[:8]
    first, second = redis_client(redis_server.url), redis_client(redis_server.url)
    on_a, on_b = RedisLimits(first, namespace), RedisLimits(second, namespace)
    try:
        # A bucket of 4 at 0.5/s: two processes draw from the same 4 tokens.
        taken = [await (on_a if i % 2 else on_b).take_token("ws:7", 4, 0.5) for i in range(6)]
        assert taken[:4] == [0.0] * 4
        assert 1.5 < taken[4] <= 2.0 and taken[5] > 1.5
        # Failures counted by either process; blocked by the same count MemoryLimits uses.
        memory = MemoryLimits()
        for n in range(1, 4):
            process = on_a if n % 2 else on_b
            assert await process.record_failure("login:1:ip", 60) == n
            assert await memory.record_failure("login:1:ip", 60) == n
        assert await on_a.blocked_for("login:1:ip", 4, 60) == 0
        assert await on_b.blocked_for("login:1:ip", 3, 60) == await memory.blocked_for("login:1:ip", 3, 60) == 60
        await on_b.clear_failures("login:1:ip")
        assert await on_a.blocked_for("login:1:ip", 3, 60) == 0
        # A short window slides: old failures stop counting.
        await on_a.record_failure("short", 0.3)
        await on_a.record_failure("short", 0.3)
        assert await on_b.blocked_for("short", 2, 0.3) == 1
        await asyncio.sleep(0.35)
        assert await on_b.blocked_for("short", 2, 0.3) == 0
        assert await on_b.record_failure("short", 0.3) == 1

        # Redis away: limits keep working per process instead of failing every call.
        redis_server.stop()
        assert await on_a.take_token("outage", 1, 1) == 0.0
        assert await on_a.take_token("outage", 1, 1) > 0
        assert await on_a.record_failure("outage", 60) == 1
        assert await on_a.blocked_for("outage", 1, 60) == 60
    finally:
        if redis_server.process is None:
            redis_server.start()
        await first.aclose()
        await second.aclose()


async def test_stop_ends_even_when_a_redis_call_swallowed_the_cancellation(redis_server):
    # redis-py can consume the CancelledError of a command in flight and return normally (its
    # connection cleanup catches it): the publisher then went on waiting for its next batch, and
    # stop() waited for it forever. Seen as a server that, after a Redis outage, never finished
    # shutting down (SIGTERM, then killed 30 s later by the supervisor).
    a, b = await two_hubs(redis_server)
    in_flight = asyncio.Event()

    class SwallowingPipeline:
        def publish(self, *args):
            pass

        async def execute(self):
            in_flight.set()
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                return []  # what the library did: the cancellation is gone

    class PublisherClient:  # the fan-out's own client; presence keeps the real one
        def __init__(self, real):
            self.real = real

        def pipeline(self, transaction=False):
            return SwallowingPipeline()

        def __getattr__(self, name):
            return getattr(self.real, name)

    a.fanout.redis = PublisherClient(a.fanout.redis)
    try:
        await a.publish_to_user(12345, {"type": "ping"})
        await asyncio.wait_for(in_flight.wait(), 5)
        await asyncio.wait_for(a.stop(), 10)  # returns; before, it never did
    finally:
        await b.stop()
