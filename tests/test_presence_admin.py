"""Presence on request (GET /api/v1/presence) and the administrators' real-time API
(POST /api/v1/admin/broadcast, POST /api/v1/admin/users/{id}/disconnect), one process.
The same across two processes with Redis: test_multiprocess_admin.py."""
from __future__ import annotations

from datetime import datetime

import pytest

from tests.support import eventually
from tests.test_openapi_typed import Conformance


@pytest.fixture
def settings_overrides():
    return {"ws_rate_burst": 10_000, "ws_rate_per_second": 10_000}


async def talk(sheda, a, b) -> None:
    """a and b share a conversation from now on."""
    sent = await sheda.api.post("/api/v1/chats", {"receiver_id": b.id, "message": "hello"}, token=a.token)
    assert sent.status == 201, sent


async def presence(sheda, who, ids) -> dict:
    resp = await sheda.api.get("/api/v1/presence", params={"user_ids": ",".join(map(str, ids))}, token=who.token)
    assert resp.status == 200, resp
    return resp.json


def parse_ts(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


async def settled(ws) -> None:
    """Everything already delivered to this socket has arrived (the pong comes after it)."""
    count = len(ws.of_type("pong"))
    await ws.send({"type": "ping"})
    await ws.wait_for(lambda f: f.get("type") == "pong" and len(ws.of_type("pong")) > count)


# ---- presence ----------------------------------------------------------------------------------
async def test_presence_shows_only_people_you_talk_to_online_while_connected_then_last_seen(sheda, clock):
    alice, bob, carol = await sheda.signup("client"), await sheda.signup("agent"), await sheda.signup("client")
    await talk(sheda, alice, bob)
    carol_ws = await sheda.ws(carol.token)  # a stranger, online: still not shown

    # Bob never connected: shown, offline, never seen. Carol (a stranger), Alice herself and an
    # unknown id are left out; repeats are answered once, in the order asked.
    got = await presence(sheda, alice, [carol.id, bob.id, alice.id, 10**15, bob.id])
    assert got == {"items": [{"user_id": bob.id, "online": False, "last_seen": None}]}

    bob_ws = await sheda.ws(bob.token)
    assert (await presence(sheda, alice, [bob.id]))["items"] == [{"user_id": bob.id, "online": True, "last_seen": None}]
    # It works both ways: Bob asks about Alice (offline) and Carol (a stranger, online).
    assert (await presence(sheda, bob, [alice.id, carol.id]))["items"] == [{"user_id": alice.id, "online": False, "last_seen": None}]

    before = clock.now()
    bob_ws.close()

    async def offline():
        items = (await presence(sheda, alice, [bob.id]))["items"]
        return items if items[0]["online"] is False and items[0]["last_seen"] else None

    items = await eventually(offline, "presence settled after the close")
    assert parse_ts(items[0]["last_seen"]) >= before.replace(microsecond=before.microsecond // 1000 * 1000)
    # Repeated query parameters mean the same as a comma-separated list.
    again = await sheda.api.get("/api/v1/presence", params={"user_ids": [str(carol.id), str(bob.id)]}, token=alice.token)
    assert again.status == 200 and again.json == {"items": items}
    carol_ws.close()


async def test_presence_refuses_bad_and_too_many_ids_with_the_contracts_422(sheda):
    alice = await sheda.signup("client")
    for params in ({}, {"user_ids": ""}, {"user_ids": "abc"}, {"user_ids": "0"}, {"user_ids": "-3"}, {"user_ids": "1,,2"},
                   {"user_ids": "1.5"}, {"user_ids": "1" + "0" * 18}, {"user_ids": "١٢"},  # Arabic-Indic digits
                   {"user_ids": ",".join(str(i) for i in range(1, 102))}, {"user_ids": "1", "limit": "3"}):
        resp = await sheda.api.get("/api/v1/presence", params=params, token=alice.token)
        assert resp.status == 422, (params, resp)
        body = resp.json
        assert body["code"] == "validation_error" and body["detail"] and body["errors"], body
        assert all(set(e) == {"field", "message"} for e in body["errors"]), body
    # 100 ids are fine (none of them a peer: nothing to show).
    ok = await sheda.api.get("/api/v1/presence", params={"user_ids": ",".join(str(i) for i in range(1, 101))}, token=alice.token)
    assert ok.status == 200 and ok.json == {"items": []}
    unauthenticated = await sheda.api.get("/api/v1/presence", params={"user_ids": "1"})
    assert unauthenticated.status == 401 and unauthenticated.json["code"]


# ---- broadcast ---------------------------------------------------------------------------------
async def notifications_of(sheda, user) -> list[dict]:
    resp = await sheda.api.get("/api/v1/notifications", params={"limit": 50}, token=user.token)
    assert resp.status == 200, resp
    return resp.json["items"]


async def test_broadcast_reaches_every_socket_and_stores_a_notification_for_everyone(sheda):
    admin = await sheda.admin()
    client, agent, builder = await sheda.signup("client"), await sheda.signup("agent"), await sheda.signup("builder")
    sockets = {"client": await sheda.ws(client.token), "client2": await sheda.ws(client.token),
               "agent": await sheda.ws(agent.token), "builder": await sheda.ws(builder.token)}

    resp = await sheda.api.post("/api/v1/admin/broadcast", {"message": "Maintenance at 22:00 UTC"}, token=admin.token)
    assert resp.status == 202, resp
    assert resp.json["delivered_sockets"] >= 4 and resp.json["notified"] >= 4
    frames = [await ws.wait_type("announcement") for ws in sockets.values()]
    for frame in frames:
        assert set(frame) == {"type", "message", "created_at"} and frame["message"] == "Maintenance at 22:00 UTC"
        assert "seq" not in frame  # ephemeral
    assert frames[0]["created_at"].endswith("Z")

    for user in (client, agent, builder, admin):  # admins are users too
        stored = [n for n in await notifications_of(sheda, user) if n["kind"] == "announcement"]
        assert len(stored) == 1, stored
        assert stored[0]["body"] == "Maintenance at 22:00 UTC" and stored[0]["title"] and stored[0]["is_read"] is False
    # Stored without a per-user live `notification` frame: the announcement was the live part.
    for ws in sockets.values():
        await settled(ws)
        assert ws.of_type("notification") == []


async def test_broadcast_to_one_user_type_reaches_only_their_sockets_and_notifications(sheda):
    admin = await sheda.admin()
    client, agent = await sheda.signup("client"), await sheda.signup("agent")
    client_ws, agent_ws = await sheda.ws(client.token), await sheda.ws(agent.token)

    resp = await sheda.api.post("/api/v1/admin/broadcast", {"message": "Agents: new listing rules", "user_type": "agent"},
                                token=admin.token)
    assert resp.status == 202, resp
    frame = await agent_ws.wait_type("announcement")
    assert frame["message"] == "Agents: new listing rules" and frame["user_type"] == "agent"
    # Then one for everyone: the client's first announcement is that one (delivery keeps order).
    await sheda.api.post("/api/v1/admin/broadcast", {"message": "Everyone: hello"}, token=admin.token)
    first = await client_ws.wait_type("announcement")
    assert first["message"] == "Everyone: hello" and "user_type" not in first

    agent_kinds = [(n["kind"], n["body"]) for n in await notifications_of(sheda, agent)]
    client_kinds = [(n["kind"], n["body"]) for n in await notifications_of(sheda, client)]
    assert ("announcement", "Agents: new listing rules") in agent_kinds
    assert ("announcement", "Agents: new listing rules") not in client_kinds
    assert ("announcement", "Everyone: hello") in client_kinds


async def test_broadcast_skips_deactivated_users(sheda):
    admin = await sheda.admin()
    gone = await sheda.signup("builder")
    off = await sheda.api.patch(f"/api/v1/admin/users/{gone.id}", {"is_active": False}, token=admin.token)
    assert off.status == 200, off
    resp = await sheda.api.post("/api/v1/admin/broadcast", {"message": "builders only", "user_type": "builder"}, token=admin.token)
    assert resp.status == 202, resp
    stored = await sheda.ctx.db["notifications"].count_documents({"user_id": gone.id, "kind": "announcement"})
    assert stored == 0


async def test_admin_routes_refuse_non_admins_and_bad_bodies(sheda):
    admin = await sheda.admin()
    user = await sheda.signup("agent")
    user_ws = await sheda.ws(user.token)
    for path, body in (("/api/v1/admin/broadcast", {"message": "hi"}), (f"/api/v1/admin/users/{user.id}/disconnect", None)):
        refused = await sheda.api.post(path, body, token=user.token)
        assert refused.status == 403 and refused.json["code"], refused
        assert (await sheda.api.post(path, body)).status == 401
    for body in ({}, {"message": ""}, {"message": "   "}, {"message": "x" * 2001}, {"message": "hi", "user_type": "admin"},
                 {"message": "hi", "extra": 1}, {"message": 5}):
        resp = await sheda.api.post("/api/v1/admin/broadcast", body, token=admin.token)
        assert resp.status == 422 and resp.json["code"] == "validation_error" and resp.json["errors"], (body, resp)
    assert (await sheda.api.post("/api/v1/admin/broadcast", {"message": "x" * 2000}, token=admin.token)).status == 202
    # Nothing refused reached the socket: only the one accepted announcement.
    await user_ws.wait_type("announcement")
    await settled(user_ws)
    assert [f["message"] for f in user_ws.of_type("announcement")] == ["x" * 2000]


# ---- disconnect --------------------------------------------------------------------------------
async def test_disconnect_closes_only_that_users_sockets_with_4000(sheda):
    admin = await sheda.admin()
    bob, alice = await sheda.signup("client"), await sheda.signup("agent")
    bob1, bob2, alice_ws = await sheda.ws(bob.token), await sheda.ws(bob.token), await sheda.ws(alice.token)

    resp = await sheda.api.post(f"/api/v1/admin/users/{bob.id}/disconnect", token=admin.token)
    assert resp.status == 202, resp
    assert resp.json == {"user_id": bob.id, "close_code": 4000}
    for ws in (bob1, bob2):
        assert await ws.wait_closed() == (4000, "disconnected by an administrator")
    await settled(alice_ws)  # still open and answering
    assert not alice_ws.closed.done()
    # The token still works: Bob may reconnect (to keep him out, deactivate him).
    again = await sheda.ws(bob.token)
    await settled(again)

    missing = await sheda.api.post(f"/api/v1/admin/users/{10**15}/disconnect", token=admin.token)
    assert missing.status == 404 and missing.json["code"] == "user_not_found"
    assert not alice_ws.closed.done() and not again.closed.done()


async def test_the_openapi_document_types_the_new_routes_and_real_answers_match_it(sheda):
    doc = (await sheda.api.get("/api/v1/openapi.json")).json
    c = Conformance(doc)  # closed schemas: a field sent but not documented fails too
    admin, alice, bob = await sheda.admin(), await sheda.signup("client"), await sheda.signup("agent")
    await talk(sheda, alice, bob)
    bob_ws = await sheda.ws(bob.token)
    api = sheda.api
    c.check(await api.get("/api/v1/presence", params={"user_ids": f"{bob.id},{admin.id}"}, token=alice.token), "GET",
            "/api/v1/presence", 200)
    c.check(await api.get("/api/v1/presence", params={"user_ids": "x"}, token=alice.token), "GET", "/api/v1/presence", 422)
    c.check(await api.post("/api/v1/admin/broadcast", {"message": "hi", "user_type": "agent"}, token=admin.token), "POST",
            "/api/v1/admin/broadcast", 202)
    c.check(await api.post("/api/v1/admin/broadcast", {"message": "hi"}, token=alice.token), "POST", "/api/v1/admin/broadcast", 403)
    c.check(await api.post(f"/api/v1/admin/users/{bob.id}/disconnect", token=admin.token), "POST",
            "/api/v1/admin/users/{user_id}/disconnect", 202)
    c.check(await api.post(f"/api/v1/admin/users/{10**15}/disconnect", token=admin.token), "POST",
            "/api/v1/admin/users/{user_id}/disconnect", 404)
    await bob_ws.wait_closed()
    presence_op = doc["paths"]["/api/v1/presence"]["get"]
    assert [p["name"] for p in presence_op["parameters"]] == ["user_ids"]
    assert presence_op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("PresenceList")
    assert "422" in presence_op["responses"]
    broadcast = doc["paths"]["/api/v1/admin/broadcast"]["post"]
    assert broadcast["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("BroadcastBody")
    assert broadcast["responses"]["202"]["content"]["application/json"]["schema"]["$ref"].endswith("BroadcastResult")
    disconnect = doc["paths"]["/api/v1/admin/users/{user_id}/disconnect"]["post"]
    assert disconnect["responses"]["202"]["content"]["application/json"]["schema"]["$ref"].endswith("DisconnectResult")
    assert "404" in disconnect["responses"] and "403" in disconnect["responses"]
