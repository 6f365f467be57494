"""Blocking (issue 15 §4): the routes, and what a block stops both ways (messages over the
socket and REST, typing, presence, viewings) while the conversation stays readable."""
from __future__ import annotations

import uuid

import pytest

from sheda_rt.chat.store import conv_key
from tests.listing_helpers import book, create_property, next_slot, open_window

B = "/api/v1/users/{}/block"


@pytest.fixture
def settings_overrides():
    return {"ws_rate_burst": 10_000, "ws_rate_per_second": 10_000}


async def send(ws, receiver_id: int, text: str) -> dict:
    """Send a message frame; its ack, or the error frame answering it."""
    cid = uuid.uuid4().hex
    await ws.send({"receiver_id": receiver_id, "message": text, "client_msg_id": cid})
    return await ws.wait_for(lambda f: f.get("type") in ("ack", "error") and f.get("client_msg_id") == cid)


async def flush(ws) -> None:
    """Everything the server had queued for this socket before now has arrived."""
    start = len(ws.frames)
    await ws.send({"type": "ping"})
    await ws.wait_for(lambda f: f.get("type") == "pong", start=start)


async def stored(sheda, a, b) -> int:
    return await sheda.ctx.db["messages"].count_documents({"conv": conv_key(a.id, b.id)})


async def test_block_routes(sheda):
    me = await sheda.signup("client")
    other, third, fourth = await sheda.signup("agent"), await sheda.signup("client"), await sheda.signup("builder")

    first = await sheda.api.post(B.format(other.id), token=me.token)
    assert first.status == 201, first
    assert first.json["user_id"] == other.id and first.json["username"] == other.username
    assert first.json["created_at"].endswith("Z")
    again = await sheda.api.post(B.format(other.id), token=me.token)  # idempotent: the first block stands
    assert again.status == 201 and again.json == first.json
    assert await sheda.ctx.db["blocks"].count_documents({"blocker": me.id}) == 1

    assert (await sheda.api.post(B.format(me.id), token=me.token)).json["code"] == "self_block"
    unknown = await sheda.api.post(B.format(999_999_999), token=me.token)
    assert unknown.status == 404 and unknown.json["code"] == "user_not_found"
    assert (await sheda.api.post(B.format(other.id))).status == 401
    assert (await sheda.api.get("/api/v1/users/me/blocks")).status == 401

    for u in (third, fourth):
        assert (await sheda.api.post(B.format(u.id), token=me.token)).status == 201
    seen, cursor = [], None
    while True:  # newest first, one per page
        page = await sheda.api.get("/api/v1/users/me/blocks", token=me.token, params={"limit": 1, **({"cursor": cursor} if cursor else {})})
        assert page.status == 200, page
        seen += [i["user_id"] for i in page.json["items"]]
        cursor = page.json["next_cursor"]
        if cursor is None:
            break
    assert seen == [fourth.id, third.id, other.id]
    # Only my own blocks: the blocked user's list does not show who blocks them.
    assert (await sheda.api.get("/api/v1/users/me/blocks", token=other.token)).json["items"] == []
    bad = await sheda.api.get("/api/v1/users/me/blocks", token=me.token, params={"cursor": "garbage"})
    assert bad.status == 422

    assert (await sheda.api.delete(B.format(other.id), token=me.token)).status == 204
    assert (await sheda.api.delete(B.format(other.id), token=me.token)).status == 204  # idempotent
    assert [i["user_id"] for i in (await sheda.api.get("/api/v1/users/me/blocks", token=me.token)).json["items"]] == [fourth.id, third.id]


async def test_messages_are_refused_both_ways_and_the_conversation_stays_readable(sheda):
    alice, bob = await sheda.signup("client"), await sheda.signup("agent")
    a, b = await sheda.ws(alice.token), await sheda.ws(bob.token)
    # They talk first (each side's cache now knows "not blocked").
    assert (await send(a, bob.id, "Is the flat still free?"))["type"] == "ack"
    assert (await send(b, alice.id, "Yes"))["type"] == "ack"
    await a.wait_type("message", message="Yes")
    await b.wait_type("message", message="Is the flat still free?")
    assert await stored(sheda, alice, bob) == 2

    assert (await sheda.api.post(B.format(bob.id), token=alice.token)).status == 201  # Alice blocks Bob
    start_a, start_b = len(a.frames), len(b.frames)
    refused_b = await send(b, alice.id, "Hello?")  # the blocked side
    refused_a = await send(a, bob.id, "Bye")  # the side that blocked
    for refused in (refused_a, refused_b):
        assert refused["type"] == "error" and refused["code"] == "blocked", refused
    assert refused_a["detail"] == refused_b["detail"]  # no hint which side blocked
    rest_a = await sheda.api.post("/api/v1/chats", {"receiver_id": bob.id, "message": "x"}, token=alice.token)
    rest_b = await sheda.api.post("/api/v1/chats", {"receiver_id": alice.id, "message": "x"}, token=bob.token)
    assert rest_a.status == rest_b.status == 403
    assert rest_a.json == rest_b.json and rest_a.json["code"] == "blocked"
    await flush(a)
    await flush(b)
    assert [f for f in a.frames[start_a:] if f.get("type") == "message"] == []
    assert [f for f in b.frames[start_b:] if f.get("type") == "message"] == []
    assert await stored(sheda, alice, bob) == 2  # nothing stored

    # Still readable: history (both sides), sync, the conversation list.
    for me, other in ((alice, bob), (bob, alice)):
        history = await sheda.api.get(f"/api/v1/chats/{other.id}", token=me.token)
        assert [m["message"] for m in history.json] == ["Is the flat still free?", "Yes"]
        convs = await sheda.api.get("/api/v1/chat/conversations", token=me.token)
        assert [c["user_id"] for c in convs.json["items"]] == [other.id]
    start = len(b.frames)
    await b.send({"type": "sync", "since": 0})
    done = await b.wait_for(lambda f: f.get("type") == "sync.done", start=start)
    assert done["count"] == 2

    # Unblocked: at once, both ways.
    assert (await sheda.api.delete(B.format(bob.id), token=alice.token)).status == 204
    assert (await send(b, alice.id, "Thanks for unblocking"))["type"] == "ack"
    await a.wait_type("message", message="Thanks for unblocking")
    assert (await send(a, bob.id, "Sure"))["type"] == "ack"


async def test_neither_side_edits_or_reacts_across_a_block_and_deleting_stays_open(sheda):
    """An edit rewrites what the other person reads, a reaction reaches their sockets live: both went through a
    block (the blocked user could turn an old message into abuse, or toggle reactions at the person who blocked
    them). Both are refused like a message, 403 / error frame `blocked`, whichever side blocked, and change
    nothing; deleting (for me, or the sender's for everyone) still works."""
    alice, bob = await sheda.signup("client"), await sheda.signup("agent")
    a, b = await sheda.ws(alice.token), await sheda.ws(bob.token)
    mine = (await send(b, alice.id, "Viewing at 10?"))["id"]
    hers = (await send(a, bob.id, "Yes, see you"))["id"]
    await b.wait_type("message", id=hers)
    assert (await sheda.api.post(B.format(bob.id), token=alice.token)).status == 201  # Alice blocks Bob
    before = {m: await sheda.ctx.db["messages"].find_one({"_id": m}) for m in (mine, hers)}
    start_a, start_b = len(a.frames), len(b.frames)
    for me, ws, own, theirs in ((bob, b, mine, hers), (alice, a, hers, mine)):  # the blocked side, and the side that blocked
        r = await sheda.api.patch(f"/api/v1/chat/messages/{own}", {"message": "rewritten"}, token=me.token)
        assert r.status == 403 and r.json["code"] == "blocked", r
        r = await sheda.api.post(f"/api/v1/chat/messages/{theirs}/reactions", {"emoji": "\U0001F602"}, token=me.token)
        assert r.status == 403 and r.json["code"] == "blocked", r
        for frame in ({"type": "edit", "id": own, "message": "rewritten"}, {"type": "react", "id": theirs, "emoji": "\U0001F602"}):
            begin = len(ws.frames)
            await ws.send(frame)
            err = await ws.wait_for(lambda f: f.get("type") == "error", start=begin)
            assert err["code"] == "blocked", (frame, err)
    await flush(a)
    await flush(b)
    for ws, start in ((a, start_a), (b, start_b)):
        assert [f for f in ws.frames[start:] if f.get("type") in ("message.updated", "message.reaction")] == []
    for m, doc in before.items():
        assert await sheda.ctx.db["messages"].find_one({"_id": m}) == doc  # nothing changed
    r = await sheda.api.delete(f"/api/v1/chat/messages/{mine}", params={"for": "everyone"}, token=bob.token)
    assert r.status == 200 and r.json["for"] == "everyone", r
    r = await sheda.api.delete(f"/api/v1/chat/messages/{hers}", params={"for": "me"}, token=alice.token)
    assert r.status == 200 and r.json["for"] == "me", r


async def test_a_block_by_either_side_holds_until_both_are_lifted(sheda):
    alice, bob = await sheda.signup("client"), await sheda.signup("agent")
    a = await sheda.ws(alice.token)
    assert (await send(a, bob.id, "hi"))["type"] == "ack"
    await sheda.api.post(B.format(alice.id), token=bob.token)  # Bob blocks Alice
    await sheda.api.post(B.format(bob.id), token=alice.token)  # and Alice blocks Bob
    await sheda.api.delete(B.format(bob.id), token=alice.token)  # Alice lifts hers; Bob's stands
    assert (await send(a, bob.id, "still?"))["code"] == "blocked"
    await sheda.api.delete(B.format(alice.id), token=bob.token)
    assert (await send(a, bob.id, "now"))["type"] == "ack"


async def test_typing_and_presence_are_not_forwarded_across_a_block(sheda):
    alice, bob, carol = await sheda.signup("client"), await sheda.signup("agent"), await sheda.signup("client")
    for other in (bob, carol):  # Alice shares a conversation with both
        assert (await sheda.api.post("/api/v1/chats", {"receiver_id": other.id, "message": "hi"}, token=alice.token)).status == 201
    b, c = await sheda.ws(bob.token), await sheda.ws(carol.token)
    assert (await sheda.api.post(B.format(alice.id), token=bob.token)).status == 201  # Bob blocks Alice

    # Alice comes online: Carol is told, Bob is not (one batch goes to both, Carol's copy first or not).
    a = await sheda.ws(alice.token)
    await c.wait_for(lambda f: f.get("type") == "presence" and f["user_id"] == alice.id and f["online"])
    await flush(b)
    assert [f for f in b.frames if f.get("type") == "presence"] == []

    # Alice types to Bob, then to Carol: only Carol's arrives (frames of one socket are handled in order).
    await a.send({"type": "typing", "receiver_id": bob.id})
    await a.send({"type": "typing", "receiver_id": carol.id})
    await c.wait_type("typing", user_id=alice.id)
    await flush(b)
    assert b.of_type("typing") == []
    assert [f for f in a.frames if f.get("type") == "error"] == []  # the typer is not told either

    # Bob, the blocker, goes offline and online: Alice hears nothing of it (either way).
    b.close()
    await b.wait_closed()
    b = await sheda.ws(bob.token)
    await b.send({"type": "typing", "receiver_id": alice.id})
    c2 = await sheda.ws(carol.token)  # Carol's second device: Alice has a conversation with Carol
    await flush(c2)
    await flush(a)
    assert [f for f in a.frames if f.get("type") in ("presence", "typing") and f.get("user_id") == bob.id] == []

    # Unblocked: typing is forwarded again.
    assert (await sheda.api.delete(B.format(alice.id), token=bob.token)).status == 204
    await a.send({"type": "typing", "receiver_id": bob.id})
    await b.wait_type("typing", user_id=alice.id)


async def test_viewings_are_refused_while_either_side_blocks(sheda):
    agent, client = await sheda.signup("agent"), await sheda.signup("client")
    prop = await create_property(sheda, agent)
    when = next_slot(sheda.ctx.clock.now(), days_ahead=2, hour=9)
    await open_window(sheda, agent, when, "08:00", "18:00")
    before = await sheda.ctx.db["appointments"].count_documents({"agent_id": agent.id})

    for blocker, blocked in ((agent, client), (client, agent)):
        assert (await sheda.api.post(B.format(blocked.id), token=blocker.token)).status == 201
        refused = await book(sheda, client, prop["id"], when)
        assert refused.status == 409 and refused.json["code"] == "blocked", refused
        assert (await sheda.api.delete(B.format(blocked.id), token=blocker.token)).status == 204
    assert await sheda.ctx.db["appointments"].count_documents({"agent_id": agent.id}) == before
    booked = await book(sheda, client, prop["id"], when)
    assert booked.status == 201, booked


async def test_presence_on_request_leaves_out_a_blocked_peer_both_ways(sheda):
    alice, bob, carol = await sheda.signup("client"), await sheda.signup("agent"), await sheda.signup("client")
    for other in (bob, carol):
        assert (await sheda.api.post("/api/v1/chats", {"receiver_id": other.id, "message": "hi"}, token=alice.token)).status == 201
    await sheda.ws(bob.token)
    await sheda.ws(carol.token)

    async def asked(me, *others) -> list[int]:
        r = await sheda.api.get("/api/v1/presence", token=me.token, params={"user_ids": ",".join(str(o.id) for o in others)})
        assert r.status == 200, r
        return [i["user_id"] for i in r.json["items"]]

    assert await asked(alice, bob, carol) == [bob.id, carol.id]
    assert (await sheda.api.post(B.format(alice.id), token=bob.token)).status == 201  # Bob blocks Alice
    assert await asked(alice, bob, carol) == [carol.id]  # left out, as a stranger is: nothing told
    assert await asked(bob, alice) == []
    assert (await sheda.api.delete(B.format(alice.id), token=bob.token)).status == 204
    assert await asked(alice, bob, carol) == [bob.id, carol.id]
