"""Channels of things over the socket: subscribe / unsubscribe, the refusals, the limit, and a
listing's REST changes reaching whoever watches `property:<id>` (and nobody else).

Absence of a frame is shown without waiting on a clock: the listing's change is published before
the REST call answers, and frames on one socket keep their order, so once a ping sent after the
REST call is answered, a property.updated for that socket would already have arrived."""
from __future__ import annotations

import asyncio

import pytest

from sheda_rt.errors import Forbidden
from tests.listing_helpers import create_property
from tests.support import PNG_1PX, multipart

API = "/api/v1/properties"


async def _quiet(ws) -> int:
    """Round-trip a ping: everything the server sent this socket before now has arrived."""
    start = len(ws.frames)
    await ws.send({"type": "ping"})
    await ws.wait_for(lambda f: f.get("type") == "pong", start=start)
    return len(ws.frames)


async def _ask(ws, frame: dict, answer: str | None = None) -> dict:
    """Send a frame and wait for its answer (the given type, or an error)."""
    start = len(ws.frames)
    await ws.send(frame)
    return await ws.wait_for(lambda f: f.get("type") in (answer or frame["type"] + "d", "error"), start=start)


async def test_subscribe_and_unsubscribe_are_answered_and_idempotent(sheda):
    agent = await sheda.signup("agent")
    user = await sheda.signup("client")
    prop = await create_property(sheda, agent)
    name = f"property:{prop['id']}"
    ws = await sheda.ws(user.token)

    assert await _ask(ws, {"type": "subscribe", "channel": name}) == {"type": "subscribed", "channel": name}
    assert await _ask(ws, {"type": "subscribe", "channel": name}) == {"type": "subscribed", "channel": name}
    assert sheda.ctx.hub.channels_of(_conn(sheda, user.id)) == {name}
    assert await _ask(ws, {"type": "unsubscribe", "channel": name}) == {"type": "unsubscribed", "channel": name}
    assert await _ask(ws, {"type": "unsubscribe", "channel": name}) == {"type": "unsubscribed", "channel": name}
    assert not sheda.ctx.hub.watched_here(name)
    # Never subscribed: still answered (a client replaying its unsubscribes needs no bookkeeping).
    other = f"property:{(await create_property(sheda, agent))['id']}"
    assert await _ask(ws, {"type": "unsubscribe", "channel": other}) == {"type": "unsubscribed", "channel": other}
    assert sheda.ctx.settings.ws_max_subscriptions == 100  # the documented default
    ws.close()


def _conn(sheda, user_id: int):
    (conn,) = sheda.ctx.hub.sockets_of(user_id)
    return conn


async def test_refusals_are_error_frames_and_the_socket_stays_open(sheda):
    agent = await sheda.signup("agent")
    user = await sheda.signup("client")
    listed = await create_property(sheda, agent)
    hidden = await create_property(sheda, agent)
    assert (await sheda.api.delete(f"{API}/{hidden['id']}", token=agent.token)).status == 204
    ws = await sheda.ws(user.token)

    unknown = ["property", "property:", ":1", "property:0", "property:-1", f"property:0{listed['id']}", "property:abc",
               f"Property:{listed['id']}", f" property:{listed['id']}", f"property:{listed['id']} ", "nope:1",
               "property:1000000000000000000", "property:999999999999999999",  # past the id space; an id nobody has
               f"property:{hidden['id']}",  # unlisted: a 404 over REST to everyone but its agent, so unknown here too
               "x" * 5000, "", "property:1\u0000"]
    for name in unknown:
        err = await _ask(ws, {"type": "subscribe", "channel": name})
        assert err["type"] == "error" and err["code"] == "unknown_channel" and err["channel"] == name, (name, err)
    err = await _ask(ws, {"type": "unsubscribe", "channel": "nope:1"})
    assert err["code"] == "unknown_channel"
    for bad in (42, None, ["property:1"]):
        err = await _ask(ws, {"type": "subscribe", "channel": bad})
        assert err["code"] == "validation_error" and err["errors"][0]["field"] == "channel", err
    assert (await _ask(ws, {"type": "subscribe"}))["code"] == "validation_error"

    # `forbidden` comes from a kind's own rule: a kind registered the one-line way refuses this user.
    async def builders_only(user_id: int, thing_id: int) -> None:
        raise Forbidden("Only the project's buyers and builder see its feed")

    sheda.ctx.channels.register("sealed", builders_only)
    err = await _ask(ws, {"type": "subscribe", "channel": "sealed:7"})
    assert err == {"type": "error", "code": "forbidden", "detail": "Only the project's buyers and builder see its feed",
                   "channel": "sealed:7"}

    assert sheda.ctx.hub.channels_of(_conn(sheda, user.id)) == set()
    ok = await _ask(ws, {"type": "subscribe", "channel": f"property:{listed['id']}"})
    assert ok == {"type": "subscribed", "channel": f"property:{listed['id']}"}  # still open, still served
    # The agent still sees its unlisted listing over REST, so it may watch it too.
    agent_ws = await sheda.ws(agent.token)
    assert (await _ask(agent_ws, {"type": "subscribe", "channel": f"property:{hidden['id']}"}))["type"] == "subscribed"
    ws.close()
    agent_ws.close()


@pytest.mark.parametrize("settings_overrides", [{"ws_max_subscriptions": 3}])
async def test_a_socket_watches_at_most_ws_max_subscriptions_channels(sheda):
    agent = await sheda.signup("agent")
    user = await sheda.signup("client")
    names = [f"property:{(await create_property(sheda, agent))['id']}" for _ in range(4)]
    ws = await sheda.ws(user.token)
    for name in names[:3]:
        assert (await _ask(ws, {"type": "subscribe", "channel": name}))["type"] == "subscribed"
    err = await _ask(ws, {"type": "subscribe", "channel": names[3]})
    assert err["code"] == "too_many_subscriptions" and err["limit"] == 3 and err["channel"] == names[3], err
    # At the limit, a channel already watched is still answered (idempotent, nothing new).
    assert (await _ask(ws, {"type": "subscribe", "channel": names[0]}))["type"] == "subscribed"
    # The limit is per socket: another socket of the same user has its own.
    ws2 = await sheda.ws(user.token)
    assert (await _ask(ws2, {"type": "subscribe", "channel": names[3]}))["type"] == "subscribed"
    assert (await _ask(ws, {"type": "unsubscribe", "channel": names[1]}))["type"] == "unsubscribed"
    assert (await _ask(ws, {"type": "subscribe", "channel": names[3]}))["type"] == "subscribed"
    ws.close()
    ws2.close()


async def test_rest_changes_reach_the_watchers_of_the_listing_only(sheda):
    agent = await sheda.signup("agent")
    watcher = await sheda.signup("client")
    bystander = await sheda.signup("client")
    prop = await create_property(sheda, agent)
    other = await create_property(sheda, agent)
    pid = prop["id"]
    ws = await sheda.ws(watcher.token)
    by_ws = await sheda.ws(bystander.token)
    assert (await _ask(ws, {"type": "subscribe", "channel": f"property:{pid}"}))["type"] == "subscribed"
    # The bystander watches another listing: its changes are not this one's.
    assert (await _ask(by_ws, {"type": "subscribe", "channel": f"property:{other['id']}"}))["type"] == "subscribed"

    # A price change: the frame carries the listing exactly as GET returns it and what changed.
    r = await sheda.api.patch(f"{API}/{pid}", {"price": "2600000.00"}, token=agent.token)
    assert r.status == 200, r
    event = await ws.wait_type("property.updated")
    assert event["property_id"] == pid and event["changes"] == ["price", "price_history"]
    assert event["property"] == r.json == (await sheda.api.get(f"{API}/{pid}")).json
    assert "seq" not in event  # ephemeral: no position in anyone's stream

    # Several fields at once.
    start = len(ws.frames)
    r = await sheda.api.patch(f"{API}/{pid}", {"title": "3 bedroom flat", "bedroom": 3, "wifi": True}, token=agent.token)
    event = await ws.wait_for(lambda f: f.get("type") == "property.updated", start=start)
    assert sorted(event["changes"]) == ["bedroom", "title", "wifi"] and event["property"]["title"] == "3 bedroom flat"

    # An image.
    body, headers = multipart("file", "a.png", PNG_1PX, "image/png")
    start = len(ws.frames)
    r = await sheda.api.post(f"{API}/{pid}/images", body=body, headers=headers, token=agent.token)
    assert r.status == 201, r
    event = await ws.wait_for(lambda f: f.get("type") == "property.updated", start=start)
    assert event["changes"] == ["images"] and event["property"]["images"] == r.json["property"]["images"]
    start = len(ws.frames)
    assert (await sheda.api.delete(f"{API}/{pid}/images/{r.json['image']['id']}", token=agent.token)).status == 204
    event = await ws.wait_for(lambda f: f.get("type") == "property.updated", start=start)
    assert event["changes"] == ["images"] and event["property"]["images"] == []

    # Unlisted, then listed again.
    start = len(ws.frames)
    assert (await sheda.api.delete(f"{API}/{pid}", token=agent.token)).status == 204
    event = await ws.wait_for(lambda f: f.get("type") == "property.updated", start=start)
    assert event["changes"] == ["is_active"] and event["property"]["is_active"] is False
    start = len(ws.frames)
    r = await sheda.api.patch(f"{API}/{pid}/status", {"active": True}, token=agent.token)
    assert r.status == 200, r
    event = await ws.wait_for(lambda f: f.get("type") == "property.updated", start=start)
    assert event["changes"] == ["is_active"] and event["property"] == r.json

    # A PATCH that changes nothing tells nobody anything.
    seen = await _quiet(ws)
    assert (await sheda.api.patch(f"{API}/{pid}", {"bedroom": 3}, token=agent.token)).status == 200
    await _quiet(ws)
    assert not [f for f in ws.frames[seen:] if f["type"] == "property.updated"]

    # The bystander got nothing of all this; unsubscribed, the watcher gets nothing more.
    await _quiet(by_ws)
    assert not by_ws.of_type("property.updated")
    assert (await _ask(ws, {"type": "unsubscribe", "channel": f"property:{pid}"}))["type"] == "unsubscribed"
    seen = len(ws.frames)
    assert (await sheda.api.patch(f"{API}/{pid}", {"price": "2700000.00"}, token=agent.token)).status == 200
    await _quiet(ws)
    assert not [f for f in ws.frames[seen:] if f["type"] == "property.updated"]
    ws.close()
    by_ws.close()


async def test_every_socket_watching_gets_it_and_a_closed_sockets_channels_are_dropped(sheda):
    agent = await sheda.signup("agent")
    a = await sheda.signup("client")
    b = await sheda.signup("client")
    prop = await create_property(sheda, agent)
    name = f"property:{prop['id']}"
    sockets = [await sheda.ws(a.token), await sheda.ws(a.token), await sheda.ws(b.token)]
    for ws in sockets:
        assert (await _ask(ws, {"type": "subscribe", "channel": name}))["type"] == "subscribed"
    assert (await sheda.api.patch(f"{API}/{prop['id']}", {"price": "100.00"}, token=agent.token)).status == 200
    for ws in sockets:
        assert (await ws.wait_type("property.updated"))["property"]["price"] == "100.00"

    for ws in sockets:
        ws.close()
        await ws.wait_closed()
    for _ in range(500):  # the server notices the close on its own schedule
        if not sheda.ctx.hub.watched_here(name):
            break
        await asyncio.sleep(0.01)
    assert not sheda.ctx.hub.watched_here(name)
    assert not sheda.ctx.hub._watching


async def test_a_contract_taking_and_releasing_the_listing_reaches_its_watchers(sheda):
    """`status` is never PATCHed: contracts move it (available -> rented on confirmation, back on
    expiry), and the watchers of the listing are told both times."""
    from tests.test_contracts import CT, rental_ready

    agent, prop, [(client, appt)] = await rental_ready(sheda)
    watcher = await sheda.signup("client")
    ws = await sheda.ws(watcher.token)
    assert (await _ask(ws, {"type": "subscribe", "channel": f"property:{prop['id']}"}))["type"] == "subscribed"
    r = await sheda.api.post(f"{CT}/{prop['id']}", {"appointment_id": appt["id"], "term_months": 12}, token=client.token)
    assert r.status == 201, r
    cid = r.json["id"]
    assert (await sheda.api.patch(f"{CT}/{cid}/payment-sent", token=client.token)).status == 200
    assert (await sheda.api.patch(f"{CT}/{cid}/confirm-payment", token=agent.token)).status == 200
    event = await ws.wait_type("property.updated")
    assert event["changes"] == ["status"] and event["property"]["status"] == "rented"
    assert event["property"] == (await sheda.api.get(f"/api/v1/properties/{prop['id']}")).json

    admin = await sheda.admin()
    start = len(ws.frames)
    assert (await sheda.api.patch(f"{CT}/{cid}/expire", token=admin.token)).status == 200
    event = await ws.wait_for(lambda f: f.get("type") == "property.updated", start=start)
    assert event["changes"] == ["status"] and event["property"]["status"] == "available"
    ws.close()
