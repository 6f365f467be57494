"""Channels across processes: two real `python run.py` servers sharing one Redis and one
database. A listing changed over REST on one process reaches its watcher on the other, and a
process subscribes to a channel's Redis channel only while one of its sockets watches it."""
from __future__ import annotations

import asyncio

from redis import asyncio as redis_asyncio

from tests.listing_helpers import listing
from tests.redis_support import Remote, redis_server, server_pair, shared_dir  # noqa: F401  (module fixtures)


async def _ask(ws, frame: dict) -> dict:
    start = len(ws.frames)
    await ws.send(frame)
    return await ws.wait_for(lambda f: f.get("type") in (frame["type"] + "d", "error"), start=start)


async def _numsub(redis, channel: str, want: int) -> int:
    """PUBSUB NUMSUB of `channel`, once it equals `want` (or after ~5 s of asking)."""
    count = -1
    for _ in range(250):
        count = dict(await redis.pubsub_numsub(channel))[channel.encode()]
        if count == want:
            break
        await asyncio.sleep(0.02)
    return count


async def test_a_rest_change_on_one_process_reaches_a_watcher_on_the_other(server_pair, redis_server):
    a, b = (Remote(s) for s in server_pair)
    agent = await a.signup("agent")
    watcher = await b.signup("client")
    r = await a.api.post("/api/v1/properties", listing(), token=agent.token)
    assert r.status == 201, r
    pid = r.json["id"]
    name = f"property:{pid}"
    redis_channel = f"sheda:{server_pair[0].env['MONGODB_DB']}:ch:{name}"
    redis = redis_asyncio.Redis.from_url(redis_server.url)
    try:
        assert await _numsub(redis, redis_channel, 0) == 0  # nobody watches: no process listens

        ws = await b.ws(watcher.token)
        assert await _ask(ws, {"type": "subscribe", "channel": name}) == {"type": "subscribed", "channel": name}
        assert await _numsub(redis, redis_channel, 1) == 1  # process b, once

        r = await a.api.patch(f"/api/v1/properties/{pid}", {"price": "3100000.00", "wifi": True}, token=agent.token)
        assert r.status == 200, r
        event = await ws.wait_type("property.updated", timeout=10)
        assert event["property_id"] == pid and sorted(event["changes"]) == ["price", "price_history", "wifi"]
        assert event["property"] == r.json

        # Delisting through a reaches b too.
        assert (await a.api.delete(f"/api/v1/properties/{pid}", token=agent.token)).status == 204
        event = await ws.wait_for(lambda f: f.get("type") == "property.updated" and f["changes"] == ["is_active"], timeout=10)
        assert event["property"]["is_active"] is False

        # Unsubscribed (or closed), the process lets go of the Redis channel.
        assert (await _ask(ws, {"type": "unsubscribe", "channel": name}))["type"] == "unsubscribed"
        assert await _numsub(redis, redis_channel, 0) == 0
        assert (await a.api.patch(f"/api/v1/properties/{pid}/status", {"active": True}, token=agent.token)).status == 200
        ws2 = await b.ws(watcher.token)
        assert (await _ask(ws2, {"type": "subscribe", "channel": name}))["type"] == "subscribed"
        assert await _numsub(redis, redis_channel, 1) == 1
        ws2.close()
        await ws2.wait_closed()
        assert await _numsub(redis, redis_channel, 0) == 0
        ws.close()
    finally:
        await redis.aclose()


async def test_after_a_redis_restart_the_watching_process_subscribes_again(server_pair, redis_server):
    """Redis restarted empty: the process holding the watcher subscribes its channels again on
    reconnect, so changes through the other process reach the watcher without a new subscribe."""
    a, b = (Remote(s) for s in server_pair)
    agent = await a.signup("agent")
    watcher = await b.signup("client")
    r = await a.api.post("/api/v1/properties", listing(), token=agent.token)
    assert r.status == 201, r
    pid = r.json["id"]
    name = f"property:{pid}"
    redis_channel = f"sheda:{server_pair[0].env['MONGODB_DB']}:ch:{name}"
    ws = await b.ws(watcher.token)
    assert (await _ask(ws, {"type": "subscribe", "channel": name}))["type"] == "subscribed"
    redis_server.stop()
    try:
        redis_server.start()  # same port, nothing remembered
        redis = redis_asyncio.Redis.from_url(redis_server.url)
        try:
            assert await _numsub(redis, redis_channel, 1) == 1
        finally:
            await redis.aclose()
        # a's publisher reconnects on its own schedule: ask until a change gets through.
        for attempt in range(50):
            price = f"{4000000 + attempt}.00"
            r = await a.api.patch(f"/api/v1/properties/{pid}", {"price": price}, token=agent.token)
            assert r.status == 200, r
            try:
                await ws.wait_for(lambda f: f.get("type") == "property.updated" and f["property"]["price"] == price, timeout=0.2)
                break
            except AssertionError:
                continue
        else:
            raise AssertionError(f"no property.updated reached process b after the restart: {ws.frames[-3:]}")
    finally:
        if redis_server.process is None:
            redis_server.start()
        ws.close()
