"""Chat over the real WebSocket and REST, as mobile clients use it (contract, section Chat)."""
from __future__ import annotations

import asyncio
import json

from tornado.httpclient import HTTPRequest
from tornado.websocket import WebSocketClosedError, websocket_connect

import pytest

from sheda_rt.chat.store import conv_key
from tests.support import PNG_1PX, multipart



@pytest.fixture
def settings_overrides():
    # These scenarios send many frames quickly; the rate limit has its own module (test_chat_limits.py).
    return {"ws_rate_burst": 10_000, "ws_rate_per_second": 10_000}


MESSAGE_KEYS = {"type", "id", "sender_info", "receiver_id", "message", "created_at"}


async def stored(sheda, a, b) -> list[dict]:
    return await sheda.ctx.db["messages"].find({"conv": conv_key(a.id, b.id)}).sort("_id", 1).to_list()


async def pair(sheda):
    return await sheda.signup("client"), await sheda.signup("agent")


async def test_seed_frame_is_stored_acked_and_delivered(sheda):
    alice, bob = await pair(sheda)
    a = await sheda.ws(alice.token)
    b = await sheda.ws(bob.token)
    # The seed's frame exactly: no type, no client_msg_id; a sender_id in the frame is ignored.
    await a.send({"receiver_id": bob.id, "message": "Hello there!", "sender_id": 999999})
    ack = await a.wait_type("ack")
    assert ack["client_msg_id"] is None and isinstance(ack["id"], int) and ack["created_at"].endswith("Z")
    got = await b.wait_type("message")
    assert MESSAGE_KEYS <= set(got)
    assert got["id"] == ack["id"] and got["created_at"] == ack["created_at"]
    assert got["sender_info"] == {"id": alice.id, "username": alice.username, "avatar_url": None}
    assert got["receiver_id"] == bob.id and got["message"] == "Hello there!"
    docs = await stored(sheda, alice, bob)
    assert [(d["_id"], d["sender_id"], d["receiver_id"], d["message"]) for d in docs] == [(ack["id"], alice.id, bob.id, "Hello there!")]
    # The sending socket gets the ack, never its own message back.
    await a.send({"type": "ping"})
    await a.wait_type("pong")
    assert a.of_type("message") == []


async def test_two_devices_and_three_users_each_socket_gets_each_message_once(sheda):
    alice, bob, carol = await sheda.signup("client"), await sheda.signup("agent"), await sheda.signup("client")
    a1, a2 = await sheda.ws(alice.token), await sheda.ws(alice.token)
    b, c = await sheda.ws(bob.token), await sheda.ws(carol.token)
    await a1.send({"type": "message", "receiver_id": bob.id, "message": "from phone", "client_msg_id": "m1"})
    ack = await a1.wait_type("ack", client_msg_id="m1")
    await b.wait_type("message", id=ack["id"])
    mirrored = await a2.wait_type("message", id=ack["id"])  # the sender's other device sees what it sent
    assert mirrored["client_msg_id"] == "m1" and mirrored["sender_info"]["id"] == alice.id
    await c.send({"receiver_id": alice.id, "message": "hi alice"})
    c_ack = await c.wait_type("ack")
    for sock in (a1, a2):
        await sock.wait_type("message", id=c_ack["id"])
    await b.send({"receiver_id": carol.id, "message": "hi carol"})
    b_ack = await b.wait_type("ack")
    await c.wait_type("message", id=b_ack["id"])
    # Round-trip a ping through every socket so anything in flight has arrived, then count.
    for sock in (a1, a2, b, c):
        await sock.send({"type": "ping"})
        await sock.wait_type("pong")
    ids = lambda sock: [f["id"] for f in sock.of_type("message")]
    assert ids(a1) == [c_ack["id"]]
    assert ids(a2) == [ack["id"], c_ack["id"]]
    assert ids(b) == [ack["id"]]  # bob never sees his own message to carol, nor carol's to alice
    assert ids(c) == [b_ack["id"]]


async def test_order_is_kept_within_a_conversation(sheda):
    alice, bob = await pair(sheda)
    a, b = await sheda.ws(alice.token), await sheda.ws(bob.token)
    for i in range(15):
        await a.send({"receiver_id": bob.id, "message": f"n{i}", "client_msg_id": f"o{i}"})
    await b.wait_for(lambda f: f.get("message") == "n14")
    got = b.of_type("message")
    assert [f["message"] for f in got] == [f"n{i}" for i in range(15)]
    assert [f["id"] for f in got] == sorted(f["id"] for f in got)


async def test_offline_receiver_reconnects_and_syncs(sheda):
    alice, bob = await pair(sheda)
    b = await sheda.ws(bob.token)
    await b.send({"receiver_id": alice.id, "message": "before"})
    first = await b.wait_type("ack")
    b.close()
    await b.wait_closed()
    a = await sheda.ws(alice.token)
    acks = []
    for i in range(3):
        await a.send({"receiver_id": bob.id, "message": f"missed {i}", "client_msg_id": f"s{i}"})
        acks.append((await a.wait_type("ack", client_msg_id=f"s{i}"))["id"])
    b = await sheda.ws(bob.token)
    await b.send({"type": "sync", "since": first["id"]})
    done = await b.wait_type("sync.done")
    synced = b.of_type("message")
    assert [f["id"] for f in synced] == acks and [f["message"] for f in synced] == ["missed 0", "missed 1", "missed 2"]
    assert all(MESSAGE_KEYS <= set(f) and f["sender_info"]["id"] == alice.id for f in synced)
    assert done["last_id"] == acks[-1] and done["more"] is False and done["count"] == 3
    # since=0: everything, both directions, oldest first; paging with limit.
    await b.send({"type": "sync", "since": 0, "limit": 2})
    page = await b.wait_for(lambda f: f.get("type") == "sync.done" and f["since"] == 0)
    assert page["more"] is True and page["count"] == 2 and page["last_id"] == acks[0]
    history = await sheda.api.get(f"/api/v1/chat/chat-history/{alice.id}", token=bob.token)
    assert history.status == 200
    assert [r["id"] for r in history.json] == [first["id"], *acks]


async def test_resend_with_same_client_msg_id_stores_once_and_gets_same_ack(sheda):
    alice, bob = await pair(sheda)
    a, b = await sheda.ws(alice.token), await sheda.ws(bob.token)
    frame = {"receiver_id": bob.id, "message": "pay rent", "client_msg_id": "idem-1"}
    await a.send(frame)
    ack1 = await a.wait_type("ack", client_msg_id="idem-1")
    # Two copies pipelined (likely in one batch) and one more after a reconnect.
    await a.send(frame)
    await a.send(frame)
    await a.wait_for(lambda f: len([x for x in a.frames if x.get("type") == "ack"]) == 3)
    a.close()
    a = await sheda.ws(alice.token)
    await a.send(frame)
    ack4 = await a.wait_type("ack")
    assert ack4 == ack1
    assert all(f == ack1 for f in a.of_type("ack"))
    docs = await stored(sheda, alice, bob)
    assert len(docs) == 1 and docs[0]["client_msg_id"] == "idem-1"
    await b.send({"type": "ping"})
    await b.wait_type("pong")
    assert [f["id"] for f in b.of_type("message")] == [ack1["id"]]  # delivered once
    # The same key from another sender is a different message.
    b2 = await sheda.ws(bob.token)
    await b2.send({"receiver_id": alice.id, "message": "ok", "client_msg_id": "idem-1"})
    other = await b2.wait_type("ack")
    assert other["id"] != ack1["id"]


async def test_bad_frames_get_error_frames_and_store_nothing(sheda):
    alice, bob = await pair(sheda)
    a = await sheda.ws(alice.token)
    await a.send({"receiver_id": bob.id, "message": "the only message"})
    await a.wait_type("ack")
    before = await stored(sheda, alice, bob)
    ghost = 10**15
    agent, property_id = await sheda.signup("agent"), await sheda.ctx.ids.next("properties")
    await sheda.ctx.db["properties"].insert_one({"_id": property_id, "agent_id": agent.id, "title": "chat test listing"})
    cases = [
        ("not json {", "invalid_json"),
        ("[1, 2]", "invalid_frame"),
        ({"type": "shout", "receiver_id": bob.id, "message": "x"}, "unknown_type"),
        ({"type": 7}, "unknown_type"),
        ({"message": "who for?", "client_msg_id": "e1"}, "validation_error"),
        ({"receiver_id": bob.id, "client_msg_id": "e2"}, "validation_error"),
        ({"receiver_id": str(bob.id), "message": "typed id", "client_msg_id": "e3"}, "validation_error"),
        ({"receiver_id": bob.id, "message": 12, "client_msg_id": "e4"}, "validation_error"),
        ({"receiver_id": True, "message": "bool id"}, "validation_error"),
        ({"receiver_id": bob.id, "message": "x", "client_msg_id": 5}, "validation_error"),
        ({"receiver_id": alice.id, "message": "note to self", "client_msg_id": "e5"}, "self_message"),
        ({"receiver_id": ghost, "message": "anyone?", "client_msg_id": "e6"}, "receiver_not_found"),
        ({"receiver_id": bob.id, "message": "", "client_msg_id": "e7"}, "validation_error"),
        ({"receiver_id": bob.id, "message": "   \n ", "client_msg_id": "e8"}, "validation_error"),
        ({"receiver_id": bob.id, "message": "x" * 4001, "client_msg_id": "e9"}, "validation_error"),
        ({"receiver_id": bob.id, "message": "about a flat", "property_id": ghost, "client_msg_id": "e10"}, "property_not_found"),
        ({"receiver_id": bob.id, "message": "about a flat", "property_id": property_id, "client_msg_id": "e11"}, "not_listing_participant"),
        ({"type": "read", "other_user_id": bob.id}, "validation_error"),
        ({"type": "read", "other_user_id": alice.id, "up_to": 1}, "self_message"),
        ({"type": "typing", "receiver_id": "x"}, "validation_error"),
        ({"type": "typing", "receiver_id": ghost}, "receiver_not_found"),
        ({"type": "sync", "since": "yesterday"}, "validation_error"),
        ({"type": "sync", "since": -1}, "validation_error"),
        # ids beyond what the database's 64-bit integers hold: a field error, not a crash
        ({"receiver_id": 2**70, "message": "huge id", "client_msg_id": "e12"}, "validation_error"),
        ({"receiver_id": bob.id, "message": "huge listing", "property_id": 10**19, "client_msg_id": "e13"}, "validation_error"),
        ({"type": "read", "other_user_id": bob.id, "up_to": 2**64}, "validation_error"),
        ({"type": "sync", "since": 10**30}, "validation_error"),
    ]
    for frame, code in cases:
        start = len(a.frames)
        await a.send(frame)
        err = await a.wait_for(lambda f: f.get("type") == "error", start=start)
        assert err["code"] == code, (frame, err)
        assert err["detail"]
        cmid = frame.get("client_msg_id") if isinstance(frame, dict) else None
        if isinstance(cmid, str):
            assert err["client_msg_id"] == cmid
    # 4,000 characters exactly is fine.
    await a.send({"receiver_id": bob.id, "message": "y" * 4000, "client_msg_id": "max"})
    await a.wait_type("ack", client_msg_id="max")
    after = await stored(sheda, alice, bob)
    assert after[: len(before)] == before and len(after) == len(before) + 1 and after[-1]["message"] == "y" * 4000
    assert await sheda.ctx.db["messages"].count_documents({"sender_id": alice.id, "receiver_id": {"$ne": bob.id}}) == 0


async def test_inactive_receiver_is_refused(sheda):
    alice, bob = await pair(sheda)
    a = await sheda.ws(alice.token)
    await a.send({"receiver_id": bob.id, "message": "still there?"})
    await a.wait_type("ack")  # bob is now in the server's user cache
    resp = await sheda.api.delete("/api/v1/users/me", token=bob.token)
    assert resp.status in (200, 204), resp
    await a.send({"receiver_id": bob.id, "message": "hello?", "client_msg_id": "late"})
    err = await a.wait_type("error", client_msg_id="late")
    assert err["code"] == "receiver_inactive"
    assert len(await stored(sheda, alice, bob)) == 1
    rest = await sheda.api.post("/api/v1/chats", {"receiver_id": bob.id, "message": "rest"}, token=alice.token)
    assert rest.status == 403 and rest.json["code"] == "receiver_inactive"


async def test_listing_scoped_messages_and_thread(sheda):
    client, agent, other = await sheda.signup("client"), await sheda.signup("agent"), await sheda.signup("client")
    property_id = await sheda.ctx.ids.next("properties")
    await sheda.ctx.db["properties"].insert_one({"_id": property_id, "agent_id": agent.id, "title": "2-bed flat"})
    c = await sheda.ws(client.token)
    await c.send({"receiver_id": agent.id, "message": "Is it available?", "property_id": property_id, "client_msg_id": "q"})
    ack = await c.wait_type("ack", client_msg_id="q")
    await c.send({"receiver_id": agent.id, "message": "general question"})
    await c.wait_for(lambda f: f.get("type") == "ack" and f["client_msg_id"] is None)
    g = await sheda.ws(agent.token)
    reply = await sheda.api.post("/api/v1/chats", {"receiver_id": client.id, "message": "Yes", "property_id": property_id}, token=agent.token)
    assert reply.status == 201 and reply.json["property_id"] == property_id
    live = await c.wait_type("message", id=reply.json["id"])
    assert live["property_id"] == property_id
    thread = await sheda.api.get(f"/api/v1/chat/threads/{property_id}/{agent.id}", token=client.token)
    assert thread.status == 200 and [r["id"] for r in thread.json] == [ack["id"], reply.json["id"]]
    assert (await sheda.api.get(f"/api/v1/chat/threads/{property_id}/{client.id}", token=agent.token)).json == thread.json
    # A third person may not talk about the listing with the client; nor read such a thread.
    o = await sheda.ws(other.token)
    await o.send({"receiver_id": client.id, "message": "me too", "property_id": property_id, "client_msg_id": "x"})
    assert (await o.wait_type("error", client_msg_id="x"))["code"] == "not_listing_participant"
    denied = await sheda.api.get(f"/api/v1/chat/threads/{property_id}/{client.id}", token=other.token)
    assert denied.status == 403 and denied.json["code"] == "not_listing_participant"
    assert (await sheda.api.get(f"/api/v1/chat/threads/{10**15}/{agent.id}", token=client.token)).status == 404
    assert await sheda.ctx.db["messages"].count_documents({"sender_id": other.id}) == 0
    await g.send({"type": "ping"})
    await g.wait_type("pong")


async def test_rest_send_is_delivered_live_and_history_and_conversations_add_up(sheda):
    alice, bob, carol = await sheda.signup("client"), await sheda.signup("agent"), await sheda.signup("client")
    a_phone, b = await sheda.ws(alice.token), await sheda.ws(bob.token)
    sent = await sheda.api.post("/api/v1/chats", {"receiver_id": bob.id, "message": "over REST", "client_msg_id": "r1"}, token=alice.token)
    assert sent.status == 201, sent
    row = sent.json
    assert {"id", "sender_id", "receiver_id", "message", "timestamp"} <= set(row)
    live = await b.wait_type("message", id=row["id"])
    assert live["message"] == "over REST" and live["sender_info"]["id"] == alice.id
    await a_phone.wait_type("message", id=row["id"])  # alice's open socket sees what she sent from elsewhere
    again = await sheda.api.post("/api/v1/chats", {"receiver_id": bob.id, "message": "over REST", "client_msg_id": "r1"}, token=alice.token)
    assert again.status == 200 and again.json["id"] == row["id"]
    for body, status, code in [({"receiver_id": alice.id, "message": "self"}, 400, "self_message"),
                               ({"receiver_id": 10**15, "message": "ghost"}, 404, "receiver_not_found"),
                               ({"receiver_id": bob.id, "message": ""}, 422, "validation_error"),
                               ({"receiver_id": bob.id}, 422, "validation_error"),
                               ({"receiver_id": bob.id, "message": "z" * 4001}, 422, "validation_error")]:
        bad = await sheda.api.post("/api/v1/chats", body, token=alice.token)
        assert bad.status == status and bad.json["code"] == code, (body, bad)
    assert (await sheda.api.post("/api/v1/chats", {"receiver_id": bob.id, "message": "x"})).status == 401

    await b.send({"receiver_id": alice.id, "message": "ws reply"})
    reply = await b.wait_type("ack")
    for i in range(3):
        await sheda.api.post("/api/v1/chats", {"receiver_id": alice.id, "message": f"c{i}"}, token=carol.token)

    hist = await sheda.api.get(f"/api/v1/chat/chat-history/{bob.id}", token=alice.token)
    assert hist.status == 200
    assert [(r["sender_id"], r["receiver_id"], r["message"]) for r in hist.json] == [(alice.id, bob.id, "over REST"), (bob.id, alice.id, "ws reply")]
    assert all(set(r) >= {"id", "sender_id", "receiver_id", "message", "timestamp"} for r in hist.json)
    assert (await sheda.api.get(f"/api/v1/chats/{bob.id}", token=alice.token)).json == hist.json
    newest = await sheda.api.get(f"/api/v1/chat/chat-history/{bob.id}", token=alice.token, params={"offset": 1, "limit": 1})
    assert [r["message"] for r in newest.json] == ["ws reply"]
    desc = await sheda.api.get(f"/api/v1/chat/chat-history/{bob.id}", token=alice.token, params={"order": "desc", "limit": 1})
    assert [r["message"] for r in desc.json] == ["ws reply"]
    assert (await sheda.api.get(f"/api/v1/chat/chat-history/{bob.id}", token=alice.token, params={"limit": 0})).status == 422
    assert (await sheda.api.get(f"/api/v1/chat/chat-history/{10**15}", token=alice.token)).status == 404

    convs = await sheda.api.get("/api/v1/chat/conversations", token=alice.token)
    assert convs.status == 200
    items = convs.json["items"]
    assert [i["user_id"] for i in items] == [carol.id, bob.id]
    assert items[0]["last_message"]["message"] == "c2" and items[0]["unread_count"] == 3
    assert items[1]["last_message"]["id"] == reply["id"] and items[1]["unread_count"] == 1
    assert items[1]["peer"]["username"] == bob.username
    page = await sheda.api.get("/api/v1/chat/conversations", token=alice.token, params={"limit": 1})
    assert [i["user_id"] for i in page.json["items"]] == [carol.id] and page.json["next_cursor"]
    rest = await sheda.api.get("/api/v1/chat/conversations", token=alice.token, params={"limit": 1, "cursor": page.json["next_cursor"]})
    assert [i["user_id"] for i in rest.json["items"]] == [bob.id] and rest.json["next_cursor"] is None
    assert (await sheda.api.get("/api/v1/chat/conversations", token=alice.token, params={"cursor": "garbage"})).status == 422
    # An unknown key is a 422 naming it, as on every list route and GET /events (it was a silent 200: a
    # typo'd `archived` listed the unarchived rows); the seed's history routes stay lenient, so a
    # client's cache-buster keeps working there.
    for path in ("/api/v1/chat/conversations", "/api/v1/events"):
        r = await sheda.api.get(path, token=alice.token, params={"limit": 1, "archive": "true"})
        assert r.status == 422 and [e["field"] for e in r.json["errors"]] == ["archive"], (path, r)
    for path in (f"/api/v1/chat/chat-history/{bob.id}", f"/api/v1/chats/{bob.id}"):
        r = await sheda.api.get(path, token=alice.token, params={"_": "1764489600000"})
        assert r.status == 200 and r.json == hist.json, (path, r)

    # Read receipts: alice reads bob's reply; bob's socket hears it; read_at is stored; unread drops.
    a_phone2 = await sheda.ws(alice.token)
    await a_phone.send({"type": "read", "other_user_id": bob.id, "up_to": reply["id"]})
    receipt = await b.wait_type("read")
    assert receipt["reader_id"] == alice.id and receipt["other_user_id"] == bob.id and receipt["up_to"] == reply["id"]
    assert receipt["read_at"].endswith("Z")
    await a_phone2.wait_type("read", up_to=reply["id"])
    doc = await sheda.ctx.db["messages"].find_one({"_id": reply["id"]})
    assert doc["read_at"] is not None
    assert (await sheda.ctx.db["messages"].find_one({"_id": row["id"]})).get("read_at") is None  # alice's own message: untouched
    convs = await sheda.api.get("/api/v1/chat/conversations", token=alice.token)
    assert [(i["user_id"], i["unread_count"]) for i in convs.json["items"]] == [(carol.id, 3), (bob.id, 0)]
    hist = await sheda.api.get(f"/api/v1/chat/chat-history/{alice.id}", token=bob.token)
    assert hist.json[1]["read_at"] == receipt["read_at"]
    marked = await sheda.api.post("/api/v1/chat/read", {"other_user_id": carol.id, "up_to": 10**15}, token=alice.token)
    newest_from_carol = items[0]["last_message"]["id"]
    assert marked.status == 200 and marked.json["reader_id"] == alice.id and marked.json["up_to"] == newest_from_carol
    convs = await sheda.api.get("/api/v1/chat/conversations", token=alice.token)
    assert [i["unread_count"] for i in convs.json["items"]] == [0, 0]
    again = await sheda.api.post("/api/v1/chat/read", {"other_user_id": carol.id, "up_to": 10**15}, token=alice.token)
    assert again.status == 200 and again.json["up_to"] == newest_from_carol and again.json["read_at"] is None
    # "Read up to" a far-future id did not pre-read what carol writes next.
    await sheda.api.post("/api/v1/chats", {"receiver_id": alice.id, "message": "c-later"}, token=carol.token)
    convs = await sheda.api.get("/api/v1/chat/conversations", token=alice.token)
    assert [(i["user_id"], i["unread_count"]) for i in convs.json["items"]] == [(carol.id, 1), (bob.id, 0)]


async def test_racing_read_receipts_announce_each_advance_once(sheda):
    alice, bob = await pair(sheda)
    a = await sheda.ws(alice.token)
    ids = []
    for i in range(5):
        r = await sheda.api.post("/api/v1/chats", {"receiver_id": bob.id, "message": f"m{i}"}, token=alice.token)
        ids.append(r.json["id"])
    phone, laptop = await sheda.ws(bob.token), await sheda.ws(bob.token)
    frames = [(phone, ids[2]), (laptop, ids[4]), (phone, ids[4]), (laptop, ids[1])]
    await asyncio.gather(*(ws.send({"type": "read", "other_user_id": alice.id, "up_to": up}) for ws, up in frames))
    await a.wait_for(lambda f: f.get("type") == "read" and f["up_to"] == ids[4])
    await asyncio.sleep(0.3)
    ups = [f["up_to"] for f in a.of_type("read")]
    assert len(ups) == len(set(ups)) and max(ups) == ids[4], ups  # each advance announced once
    conv = await sheda.ctx.db["conversations"].find_one({"_id": conv_key(alice.id, bob.id)})
    assert conv["read_upto"][str(bob.id)] == ids[4]
    unread = await sheda.ctx.db["messages"].count_documents({"_id": {"$in": ids}, "read_at": None})
    assert unread == 0


async def test_typing_is_forwarded_at_most_once_per_interval_and_never_stored(sheda):
    alice, bob = await pair(sheda)
    a, b = await sheda.ws(alice.token), await sheda.ws(bob.token)
    for _ in range(4):
        await a.send({"type": "typing", "receiver_id": bob.id})
    first = await b.wait_type("typing")
    assert first["user_id"] == alice.id and first["receiver_id"] == bob.id
    await a.send({"type": "ping"})
    await a.wait_type("pong")
    await asyncio.sleep(0.2)
    assert len(b.of_type("typing")) == 1
    await asyncio.sleep(1.0)
    await a.send({"type": "typing", "receiver_id": bob.id})
    await b.wait_for(lambda f: len(b.of_type("typing")) == 2)
    assert await sheda.ctx.db["messages"].count_documents({"conv": conv_key(alice.id, bob.id)}) == 0


async def test_presence_goes_to_people_you_talk_with(sheda):
    alice, bob, stranger = await sheda.signup("client"), await sheda.signup("agent"), await sheda.signup("client")
    await sheda.api.post("/api/v1/chats", {"receiver_id": bob.id, "message": "hi"}, token=alice.token)
    b, s = await sheda.ws(bob.token), await sheda.ws(stranger.token)
    a1 = await sheda.ws(alice.token)
    online = await b.wait_type("presence", user_id=alice.id)
    assert online["online"] is True
    a2 = await sheda.ws(alice.token)
    a1.close()
    await a1.wait_closed()
    await asyncio.sleep(0.3)
    assert [f["online"] for f in b.of_type("presence")] == [True]  # still online on the second device
    a2.close()
    offline = await b.wait_for(lambda f: f.get("type") == "presence" and f["online"] is False)
    assert offline["user_id"] == alice.id and offline["last_seen"].endswith("Z")
    user = await sheda.ctx.users.get(alice.id)
    assert user["last_seen"] is not None
    await s.send({"type": "ping"})
    await s.wait_type("pong")
    assert s.of_type("presence") == []


async def test_many_users_dropping_at_once_all_go_offline_with_last_seen(sheda):
    # A network blip drops many mobile sockets together: every one is recorded offline
    # (their last_seen writes are coalesced) and the agent they talk to hears each.
    agent = await sheda.signup("agent")
    clients = [await sheda.signup("client") for _ in range(25)]
    for c in clients:
        await sheda.api.post("/api/v1/chats", {"receiver_id": agent.id, "message": "hello"}, token=c.token)
    watcher = await sheda.ws(agent.token)
    sockets = [await sheda.ws(c.token) for c in clients]
    await watcher.wait_for(lambda f: len([p for p in watcher.of_type("presence") if p["online"]]) == len(clients), timeout=10)
    for ws in sockets:
        ws.close()
    await watcher.wait_for(lambda f: len([p for p in watcher.of_type("presence") if not p["online"]]) == len(clients), timeout=10)
    offline = {p["user_id"]: p for p in watcher.of_type("presence") if not p["online"]}
    assert set(offline) == {c.id for c in clients}
    stored = {d["_id"]: d.get("last_seen") async for d in sheda.ctx.db["users"].find({"_id": {"$in": [c.id for c in clients]}})}
    assert all(stored[c.id] is not None for c in clients), stored


async def test_bad_tokens_close_4401_and_deactivated_users_4403(sheda):
    alice = await sheda.signup("client")
    for token in ("not-a-jwt", alice.refresh_token, None):
        ws = await sheda.ws(token)
        code, _ = await ws.wait_closed()
        assert code == 4401, token
    assert (await sheda.ctx.users.update(alice.id, {"is_active": False})) is not None
    ws = await sheda.ws(alice.token)
    code, reason = await ws.wait_closed()
    assert code == 4403 and reason


async def test_a_new_avatar_reaches_messages_sent_from_a_socket_opened_before_it(sheda):
    """A phone keeps its socket open while its user picks a new avatar: the messages it sends
    next carry the new avatar_url, as REST sends, sync and history do. (The socket used to keep
    the sender_info of its handshake, so receivers got the old avatar, whose file is deleted
    when it is replaced, until the sender reconnected.)"""
    alice, bob = await pair(sheda)
    a, b = await sheda.ws(alice.token), await sheda.ws(bob.token)
    urls = []
    for n in range(2):  # the first avatar, then a second that replaces (and deletes) the first
        body, headers = multipart("file", "me.png", PNG_1PX, "image/png")
        r = await sheda.api.put("/api/v1/users/me/avatar", body=body, headers=headers, token=alice.token)
        assert r.status == 200, r
        urls.append(r.json["avatar_url"])
        await a.send({"receiver_id": bob.id, "message": f"after avatar {n}", "client_msg_id": f"av{n}"})
        ack = await a.wait_type("ack", client_msg_id=f"av{n}")
        got = await b.wait_type("message", id=ack["id"])
        assert got["sender_info"] == {"id": alice.id, "username": alice.username, "avatar_url": urls[-1]}
    assert urls[0] != urls[1]
    assert (await sheda.api.get(urls[0])).status == 404  # what a stale frame would have pointed to


async def test_token_in_subprotocol(sheda):
    alice, bob = await pair(sheda)
    ws = await sheda.ws(alice.token, query=False, subprotocol=True)
    assert ws.conn.selected_subprotocol == "bearer"
    await ws.send({"receiver_id": bob.id, "message": "from a browser"})
    await ws.wait_type("ack")
    bad = await sheda.ws("garbage", query=False, subprotocol=True)
    assert (await bad.wait_closed())[0] == 4401


async def test_origin_is_checked(sheda):
    alice = await sheda.signup("client")
    req = HTTPRequest(sheda.ws_url + f"?token={alice.token}", headers={"Origin": "https://evil.example"})
    try:
        await websocket_connect(req)
        raise AssertionError("a foreign origin was accepted")
    except Exception as exc:
        assert "403" in str(exc)
    ok = await sheda.ws(alice.token)  # no Origin header: a mobile client
    await ok.send({"type": "ping"})
    await ok.wait_type("pong")


async def test_logout_closes_the_socket_of_that_token_within_a_second(sheda):
    alice = await sheda.signup("client")
    login = await sheda.api.post("/api/v1/auth/login", {"username": alice.username, "password": alice.password})
    other_token = login.json["access_token"]
    ws, keep = await sheda.ws(alice.token), await sheda.ws(other_token)
    loop = asyncio.get_running_loop()
    start = loop.time()
    resp = await sheda.api.post("/api/v1/auth/logout", token=alice.token)
    assert resp.status in (200, 204), resp
    code, _ = await ws.wait_closed(timeout=1.0)
    assert code == 4401 and loop.time() - start < 1.0
    await keep.send({"type": "ping"})  # the other login's socket stays
    await keep.wait_type("pong")
    again = await sheda.ws(alice.token)
    assert (await again.wait_closed())[0] == 4401


async def test_frame_over_64_kib_closes_1009(sheda):
    alice, bob = await pair(sheda)
    ws = await sheda.ws(alice.token)
    await ws.send(json.dumps({"receiver_id": bob.id, "message": "x" * (70 * 1024)}))
    code, _ = await ws.wait_closed()
    assert code == 1009
    assert await sheda.ctx.db["messages"].count_documents({"sender_id": alice.id}) == 0


async def test_shutdown_drain_stores_and_acks_then_closes_1001(sheda):
    alice, bob = await pair(sheda)
    a, b = await sheda.ws(alice.token), await sheda.ws(bob.token)
    for i in range(5):
        await a.send({"receiver_id": bob.id, "message": f"last words {i}", "client_msg_id": f"d{i}"})
    await a.wait_for(lambda f: len(a.of_type("ack")) == 5)
    await sheda.ctx.drain()  # what shutdown runs before closing connections
    assert (await a.wait_closed())[0] == 1001 and (await b.wait_closed())[0] == 1001
    acked = {f["id"] for f in a.of_type("ack")}
    docs = await stored(sheda, alice, bob)
    assert {d["_id"] for d in docs} == acked and len(acked) == 5
    try:
        fresh = await sheda.ws(alice.token)
        await fresh.send({"receiver_id": bob.id, "message": "too late", "client_msg_id": "late"})
        err = await fresh.wait_type("error")
        assert err["code"] == "shutting_down"
    except WebSocketClosedError:
        pass


async def test_reads_find_messages_spread_far_apart_in_the_id_space(sheda):
    """Other people's traffic consumes ids between the messages of one pair: here the id
    counter jumps by up to 40 million between them (and after the last one), so history,
    threads, sync, the conversation list, unread counts, read receipts and a late resend
    all have to walk far through the conversation index (reads go by id windows)."""
    alice, bob = await pair(sheda)
    property_id = await sheda.ctx.ids.next("properties")
    await sheda.ctx.db["properties"].insert_one({"_id": property_id, "agent_id": bob.id, "title": "far apart"})
    a = await sheda.ws(alice.token)
    counters = sheda.ctx.db["counters"]
    gaps = [0, 1, 300, 5_000, 70_000, 2, 1_200_000, 17, 40_000_000, 3, 255, 256]
    from sheda_rt.database.ids import ReservedIds

    for i, gap in enumerate(gaps):
        await counters.update_one({"_id": "messages"}, {"$inc": {"seq": gap}}, upsert=True)
        # One process alone hands out ids from ranges it reserved ahead; this server takes a
        # fresh range after each jump, as it would next to other processes' traffic.
        sheda.ctx.chat.batcher._reserved = ReservedIds(sheda.ctx.ids, "messages")
        listing = {"property_id": property_id} if i % 3 == 0 else {}
        if i % 2 == 0:
            await a.send({"receiver_id": bob.id, "message": f"m{i}", "client_msg_id": f"s{i}", **listing})
            await a.wait_type("ack", client_msg_id=f"s{i}")
        else:
            sent = await sheda.api.post("/api/v1/chats", {"receiver_id": alice.id, "message": f"m{i}", **listing}, token=bob.token)
            assert sent.status == 201
    await counters.update_one({"_id": "messages"}, {"$inc": {"seq": 3_000_000}})  # quiet since

    everything = await stored(sheda, alice, bob)
    ids = [d["_id"] for d in everything]
    assert [d["message"] for d in everything] == [f"m{i}" for i in range(len(gaps))]
    assert ids[-1] - ids[0] > 40_000_000

    async def history(**params):
        got = await sheda.api.get(f"/api/v1/chat/chat-history/{bob.id}", token=alice.token, params=params)
        assert got.status == 200
        return [r["id"] for r in got.json]

    assert await history(limit=100) == ids
    assert await history(offset=3, limit=4) == ids[3:7]
    assert await history(order="desc", limit=100) == ids[::-1]
    assert await history(order="desc", offset=2, limit=5) == ids[::-1][2:7]
    thread = await sheda.api.get(f"/api/v1/chat/threads/{property_id}/{bob.id}", token=alice.token, params={"limit": 100})
    assert [r["id"] for r in thread.json] == [d["_id"] for d in everything if d.get("property_id") == property_id]
    thread = await sheda.api.get(f"/api/v1/chat/threads/{property_id}/{bob.id}", token=alice.token, params={"order": "desc", "limit": 2})
    assert [r["id"] for r in thread.json] == [d["_id"] for d in everything if d.get("property_id") == property_id][::-1][:2]

    b = await sheda.ws(bob.token)
    await b.send({"type": "sync", "since": ids[3]})
    done = await b.wait_type("sync.done")
    assert done["count"] == len(ids) - 4 and done["last_id"] == ids[-1]
    assert [f["id"] for f in b.of_type("message")] == ids[4:]

    from_bob = [d["_id"] for d in everything if d["sender_id"] == bob.id]
    convs = (await sheda.api.get("/api/v1/chat/conversations", token=alice.token)).json["items"]
    assert [(c["user_id"], c["last_message"]["id"], c["unread_count"]) for c in convs] == [(bob.id, ids[-1], len(from_bob))]

    # Alice reads up to bob's message just after the 40-million gap.
    up_to = ids[9]
    await a.send({"type": "read", "other_user_id": bob.id, "up_to": up_to})
    receipt = await b.wait_type("read")
    assert receipt["up_to"] == up_to
    after = await stored(sheda, alice, bob)
    assert [d["_id"] for d in after if d.get("read_at") is not None] == [i for i in from_bob if i <= up_to]
    convs = (await sheda.api.get("/api/v1/chat/conversations", token=alice.token)).json["items"]
    assert convs[0]["unread_count"] == len([i for i in from_bob if i > up_to])

    # A resend of alice's very first message, millions of ids later: same ack, nothing new stored.
    await a.send({"receiver_id": bob.id, "message": "m0", "client_msg_id": "s0"})
    again = await a.wait_type("ack", client_msg_id="s0", id=ids[0])
    assert again["id"] == ids[0]
    assert [d["_id"] for d in await stored(sheda, alice, bob)] == ids


async def test_window_scans_agree_with_a_plain_sort_at_every_window_boundary(sheda):
    """The store reads a conversation in id windows (256 ids, then wider: 16x while nothing is found).
    Messages placed on both sides of every window edge, read back through every kind of
    scan the chat uses, must come out exactly as a plain sorted query returns them."""
    from sheda_rt.chat.store import MessageStore

    store = MessageStore(sheda.ctx.db, sheda.ctx.ids)
    counters = sheda.ctx.db["counters"]
    base = await sheda.ctx.ids.current("messages") + 10_000_000
    newest = base + 2_000_000
    await counters.update_one({"_id": "messages"}, {"$max": {"seq": newest}}, upsert=True)
    newest = await sheda.ctx.ids.current("messages")
    edges = [256, 256 + 4096, 256 + 4096 + 65536, 256 + 4096 + 65536 + 1048576]
    after = base + 1000
    spots = {after + 1, newest, newest + 5}  # newest + 5: stored beyond the counter (another process's batch)
    for e in edges:
        for d in (-1, 0, 1):
            spots.update({after + e + d, newest - e + d})
    ids = sorted(i for i in spots if i > base)
    conv = f"scan:{base}"
    await sheda.ctx.db["messages"].insert_many(
        [{"_id": i, "conv": conv, "sender_id": i % 2, "receiver_id": 1 - i % 2, "message": "x"} for i in ids])

    def plain(lo, hi, keep):
        return [i for i in ids if lo < i and (hi is None or i <= hi) and (keep is None or keep({"_id": i, "sender_id": i % 2}))]

    odd = lambda d: d["sender_id"] == 1  # noqa: E731
    checked = 0
    for lo in (0, base, after, after + 256, newest - 4352):
        for hi in (None, newest - 256, newest - 257, after + 4352):
            if hi is not None and hi <= lo:
                continue
            for keep in (None, odd):
                expected = plain(lo, hi, keep)
                for need in (1, 2, 3, 7, len(ids), None):
                    for newest_first in (False, True):
                        got = [d["_id"] for d in await store.scan(conv, newest_first=newest_first, need=need, after=lo, upto=hi, keep=keep)]
                        want = expected[::-1] if newest_first else expected
                        assert got == (want if need is None else want[:need]), (lo, hi, keep, need, newest_first)
                        checked += 1
    assert checked > 300
    # Ids were stored past the counter (as another process's batch would be): move the counter
    # past them, or a later test's batch would be handed one of them and meet a duplicate key.
    await counters.update_one({"_id": "messages"}, {"$max": {"seq": max(ids)}})
