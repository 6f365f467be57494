"""Edit, delete, reply, react and delivered receipts (issue 15 §2), as clients use them: real
sockets and REST against the real server and the embedded database. Every refusal is checked to
change nothing (the stored document and what the sockets received), and every change comes back
in a `sync after_seq` replay after a disconnect. Every frame received is held to the socket's
documented models and to the served AsyncAPI document."""
from __future__ import annotations

import uuid

import pytest

from sheda_rt.chat.store import conv_key
from tests.test_asyncapi import DOC, check_frame, document_validators


@pytest.fixture
def settings_overrides():
    return {"ws_rate_burst": 10_000, "ws_rate_per_second": 10_000, "ws_control_burst": 10_000, "ws_control_per_second": 10_000}


async def send(ws, receiver_id: int, text: str, **extra) -> dict:
    key = uuid.uuid4().hex
    await ws.send({"type": "message", "receiver_id": receiver_id, "message": text, "client_msg_id": key, **extra})
    return await ws.wait_type("ack", client_msg_id=key)


async def settle(*sockets) -> None:
    """Round-trip a ping through each socket: whatever was sent to it before has arrived."""
    for ws in sockets:
        n = len(ws.of_type("pong"))
        await ws.send({"type": "ping"})
        await ws.wait_for(lambda f, n=n: f.get("type") == "pong" and len(ws.of_type("pong")) > n)


async def stored(sheda, message_id: int) -> dict:
    return await sheda.ctx.db["messages"].find_one({"_id": message_id})


async def history(sheda, user, other) -> list[dict]:
    r = await sheda.api.get(f"/api/v1/chat/chat-history/{other.id}", token=user.token)
    assert r.status == 200, r
    return r.json


async def conversations(sheda, user) -> list[dict]:
    r = await sheda.api.get("/api/v1/chat/conversations", token=user.token)
    assert r.status == 200, r
    return r.json["items"]


async def sync_since(ws, since: int = 0) -> list[dict]:
    start = len(ws.frames)
    await ws.send({"type": "sync", "since": since})
    await ws.wait_for(lambda f: f.get("type") == "sync.done" and "since" in f, start=start)
    return [f for f in ws.frames[start:] if f.get("type") == "message"]


async def replay(ws, after_seq: int) -> list[dict]:
    start = len(ws.frames)
    await ws.send({"type": "sync", "after_seq": after_seq})
    await ws.wait_for(lambda f: f.get("type") == "sync.done" and "after_seq" in f, start=start)
    return [f for f in ws.frames[start:] if f.get("type") != "sync.done"]


async def fits_the_document(sheda, *sockets) -> None:
    validators = document_validators((await sheda.api.get(DOC)).json)
    problems = [p for ws in sockets for f in ws.frames for p in check_frame(f, validators)[1]]
    assert not problems, "\n".join(dict.fromkeys(problems))


async def trio(sheda):
    alice, bob, carol = await sheda.signup("client"), await sheda.signup("agent"), await sheda.signup("client")
    return alice, bob, carol, await sheda.ws(alice.token), await sheda.ws(bob.token), await sheda.ws(carol.token)


# ---- edit ------------------------------------------------------------------------------------------
async def test_the_sender_edits_and_both_sides_history_sync_and_list_show_the_latest_text(sheda):
    alice, bob, carol, a, b, c = await trio(sheda)
    a2 = await sheda.ws(alice.token)  # Alice's second device
    ack = await send(a, bob.id, "Viewing at 10?")
    await b.wait_type("message", id=ack["id"])
    await a.send({"type": "edit", "id": ack["id"], "message": "Viewing at 11?"})
    updates = [await ws.wait_type("message.updated", id=ack["id"]) for ws in (a, a2, b)]
    assert {u["seq"] for u in updates} == {updates[0]["seq"]} and updates[0]["seq"] > ack["id"]
    assert updates[0]["message"] == "Viewing at 11?" and updates[0]["sender_id"] == alice.id
    assert updates[0]["receiver_id"] == bob.id and updates[0]["edited_at"].endswith("Z")
    doc = await stored(sheda, ack["id"])
    assert doc["message"] == "Viewing at 11?" and doc["edited_at"] is not None
    for user, other in ((alice, bob), (bob, alice)):
        (row,) = await history(sheda, user, other)
        assert row["message"] == "Viewing at 11?" and row["edited_at"] == updates[0]["edited_at"]
        (conv,) = await conversations(sheda, user)
        assert conv["last_message"]["message"] == "Viewing at 11?" and conv["last_message"]["edited_at"]
    (synced,) = await sync_since(b)
    assert synced["message"] == "Viewing at 11?" and synced["edited_at"] == updates[0]["edited_at"]
    # Over REST too; the answer is the event the sockets get.
    r = await sheda.api.patch(f"/api/v1/chat/messages/{ack['id']}", {"message": "Viewing at noon?"}, token=alice.token)
    assert r.status == 200, r
    assert r.json["type"] == "message.updated" and r.json["message"] == "Viewing at noon?"
    await b.wait_type("message.updated", seq=r.json["seq"])
    assert (await history(sheda, bob, alice))[0]["message"] == "Viewing at noon?"
    await settle(c)
    assert c.of_type("message.updated") == []  # a stranger hears nothing
    await fits_the_document(sheda, a, a2, b, c)


async def test_edit_refusals_change_nothing(sheda, clock):
    alice, bob, carol, a, b, c = await trio(sheda)
    ack = await send(a, bob.id, "original")
    other = await send(c, bob.id, "carol's")
    before = await stored(sheda, ack["id"])
    refusals = [
        (b, {"id": ack["id"], "message": "hijack"}, "not_sender"),  # the receiver
        (c, {"id": ack["id"], "message": "hijack"}, "message_not_found"),  # a stranger: no hint the id exists
        (a, {"id": other["id"], "message": "hijack"}, "message_not_found"),  # another conversation's message
        (a, {"id": 10 ** 12, "message": "hijack"}, "message_not_found"),
        (a, {"id": ack["id"], "message": "   "}, "validation_error"),
    ]
    for ws, frame, code in refusals:
        await ws.send({"type": "edit", **frame})
        await ws.wait_type("error", code=code)
    for token, mid, body, status, code in [
        (bob.token, ack["id"], {"message": "x"}, 403, "not_sender"),
        (carol.token, ack["id"], {"message": "x"}, 404, "message_not_found"),
        (alice.token, 10 ** 12, {"message": "x"}, 404, "message_not_found"),
        (alice.token, ack["id"], {"message": ""}, 422, "validation_error"),
        (alice.token, ack["id"], {"message": 5}, 422, "validation_error"),
        (None, ack["id"], {"message": "x"}, 401, None),
    ]:
        r = await sheda.api.patch(f"/api/v1/chat/messages/{mid}", body, token=token)
        assert r.status == status, r
        if code:
            assert r.json["code"] == code, r
    # The window (CHAT_EDIT_WINDOW_SECONDS, 900 by default) closes.
    clock.advance(seconds=901)
    await a.send({"type": "edit", "id": ack["id"], "message": "too late"})
    await a.wait_type("error", code="edit_window_closed")
    r = await sheda.api.patch(f"/api/v1/chat/messages/{ack['id']}", {"message": "too late"}, token=alice.token)
    assert r.status == 409 and r.json["code"] == "edit_window_closed", r
    assert await stored(sheda, ack["id"]) == before
    await settle(a, b, c)
    assert not any(ws.of_type("message.updated") for ws in (a, b, c))
    await fits_the_document(sheda, a, b, c)


# ---- delete ----------------------------------------------------------------------------------------
async def test_delete_for_everyone_leaves_a_tombstone_for_both(sheda):
    alice, bob, carol, a, b, c = await trio(sheda)
    ack = await send(a, bob.id, "my bank details are ...")
    keep = await send(b, alice.id, "thanks")
    await b.send({"type": "react", "id": ack["id"], "emoji": "👍"})
    await a.wait_type("message.reaction")
    # Only the sender may delete for everyone; a stranger learns nothing.
    await b.send({"type": "delete", "id": ack["id"], "for": "everyone"})
    await b.wait_type("error", code="not_sender")
    await c.send({"type": "delete", "id": ack["id"], "for": "everyone"})
    await c.wait_type("error", code="message_not_found")
    await a.send({"type": "delete", "id": ack["id"], "for": "nobody"})
    await a.wait_type("error", code="validation_error")
    assert (await stored(sheda, ack["id"]))["message"] == "my bank details are ..."
    await a.send({"type": "delete", "id": ack["id"], "for": "everyone"})
    events = [await ws.wait_type("message.deleted", id=ack["id"]) for ws in (a, b)]
    assert events[0]["for"] == "everyone" and events[0]["seq"] == events[1]["seq"] and events[0]["sender_id"] == alice.id
    doc = await stored(sheda, ack["id"])
    assert doc["message"] == "" and doc["deleted"] is True and "reactions" not in doc
    assert (doc["sender_id"], doc["receiver_id"], doc["conv"]) == (alice.id, bob.id, conv_key(alice.id, bob.id))
    for user, other in ((alice, bob), (bob, alice)):
        rows = await history(sheda, user, other)
        assert [(r["id"], r["message"], r.get("deleted")) for r in rows] == [(ack["id"], "", True), (keep["id"], "thanks", None)]
        assert "reactions" not in rows[0] and rows[0]["sender_id"] == alice.id and rows[0]["created_at"]
    synced = await sync_since(b)
    assert synced[0]["id"] == ack["id"] and synced[0]["deleted"] is True and synced[0]["message"] == ""
    # A tombstone cannot be edited, reacted to, or deleted again.
    await a.send({"type": "edit", "id": ack["id"], "message": "back"})
    await a.wait_type("error", code="message_not_found")
    await b.send({"type": "react", "id": ack["id"], "emoji": "👍"})
    await b.wait_type("error", code="message_not_found")
    # Over REST. A key the route does not take is a 422 naming it, nothing deleted (it was ignored: a typo'd
    # `?fro=me` next to `for=everyone` deleted for everyone).
    r = await sheda.api.delete(f"/api/v1/chat/messages/{keep['id']}?for=everyone&fro=me", token=bob.token)
    assert r.status == 422 and [e["field"] for e in r.json["errors"]] == ["fro"], r
    assert (await sheda.api.delete(f"/api/v1/chat/messages/{keep['id']}?for=everyone", token=alice.token)).status == 403
    r = await sheda.api.delete(f"/api/v1/chat/messages/{keep['id']}?for=everyone", token=bob.token)
    assert r.status == 200 and r.json["type"] == "message.deleted" and r.json["for"] == "everyone", r
    await a.wait_type("message.deleted", id=keep["id"])
    assert (await sheda.api.delete(f"/api/v1/chat/messages/{keep['id']}", token=bob.token)).status == 422
    assert (await sheda.api.delete(f"/api/v1/chat/messages/{keep['id']}?for=all", token=bob.token)).status == 422
    await fits_the_document(sheda, a, b, c)


async def test_delete_for_me_hides_it_from_my_history_sync_and_list_only(sheda):
    alice, bob, carol, a, b, c = await trio(sheda)
    first = await send(a, bob.id, "first")
    last = await send(a, bob.id, "embarrassing")
    b2 = await sheda.ws(bob.token)
    await b.send({"type": "delete", "id": last["id"], "for": "me"})  # the receiver may
    mine = [await ws.wait_type("message.deleted", id=last["id"]) for ws in (b, b2)]
    assert mine[0]["for"] == "me" and mine[0]["seq"] == mine[1]["seq"]
    assert [r["id"] for r in await history(sheda, bob, alice)] == [first["id"]]
    assert [r["id"] for r in await history(sheda, alice, bob)] == [first["id"], last["id"]]
    assert [f["id"] for f in await sync_since(b)] == [first["id"]]
    assert (await conversations(sheda, bob))[0]["last_message"]["id"] == first["id"]
    assert (await conversations(sheda, alice))[0]["last_message"]["id"] == last["id"]
    assert (await stored(sheda, last["id"]))["message"] == "embarrassing"  # still Alice's
    # It is gone for me: editing-like acts on it are not found for me; a stranger cannot hide it.
    await b.send({"type": "react", "id": last["id"], "emoji": "😂"})
    await b.wait_type("error", code="message_not_found")
    await c.send({"type": "delete", "id": first["id"], "for": "me"})
    await c.wait_type("error", code="message_not_found")
    r = await sheda.api.delete(f"/api/v1/chat/messages/{first['id']}?for=me", token=carol.token)
    assert r.status == 404 and r.json["code"] == "message_not_found", r
    r = await sheda.api.delete(f"/api/v1/chat/messages/{first['id']}?for=me", token=alice.token)  # the sender may too
    assert r.status == 200 and r.json["for"] == "me", r
    assert [r["id"] for r in await history(sheda, alice, bob)] == [last["id"]]
    await settle(a, b)
    assert [f["id"] for f in a.of_type("message.deleted")] == [first["id"]]  # Bob's hiding was his alone
    assert [f["id"] for f in b.of_type("message.deleted")] == [last["id"]]
    assert (await stored(sheda, first["id"]))["hidden_for"] == [alice.id]
    await fits_the_document(sheda, a, b, b2, c)


async def test_hidden_messages_leave_unread_counts_and_do_not_end_sync_pages_early(sheda):
    alice, bob, carol, a, b, c = await trio(sheda)
    sent = [await send(a, bob.id, f"m{i}") for i in range(5)]
    for ack in sent[:3]:
        await b.send({"type": "delete", "id": ack["id"], "for": "me"})
        await b.wait_type("message.deleted", id=ack["id"])
    (conv,) = await conversations(sheda, bob)
    assert conv["unread_count"] == 2  # the two Bob still sees
    assert (await conversations(sheda, alice))[0]["unread_count"] == 0
    # Pages of one: every visible message comes, and `more` is true until the last.
    since, seen = 0, []
    while True:
        start = len(b.frames)
        await b.send({"type": "sync", "since": since, "limit": 1})
        done = await b.wait_for(lambda f: f.get("type") == "sync.done" and "since" in f, start=start)
        seen += [f["id"] for f in b.frames[start:] if f.get("type") == "message"]
        if not done["more"]:
            break
        since = done["last_id"]
    assert seen == [ack["id"] for ack in sent[3:]]


# ---- reply -----------------------------------------------------------------------------------------
async def test_replies_quote_the_original_and_stay_in_their_conversation(sheda):
    alice, bob, carol, a, b, c = await trio(sheda)
    long = "Is the flat on Admiralty Way still available for the first of next month, and does it come furnished? " * 2
    question = await send(a, bob.id, long)
    await b.send({"type": "message", "receiver_id": alice.id, "message": "Yes, furnished.", "reply_to": question["id"],
                  "client_msg_id": "r1"})
    ack = await b.wait_type("ack", client_msg_id="r1")
    got = await a.wait_type("message", id=ack["id"])
    assert got["reply_to"] == question["id"]
    preview = got["reply_preview"]
    assert preview["id"] == question["id"] and preview["sender_id"] == alice.id
    assert len(preview["message"]) <= 100 and long.startswith(preview["message"].rstrip("…"))
    rows = await history(sheda, alice, bob)
    assert rows[1]["reply_to"] == question["id"] and rows[1]["reply_preview"] == preview
    assert "reply_to" not in rows[0]
    # Replying to a message of another conversation (or one that does not exist) is refused; nothing stored.
    foreign = await send(c, alice.id, "carol here")
    await b.send({"type": "message", "receiver_id": alice.id, "message": "sneaky", "reply_to": foreign["id"], "client_msg_id": "r2"})
    refused = await b.wait_type("error", client_msg_id="r2")
    assert refused["code"] == "invalid_reply" and refused["errors"][0]["field"] == "reply_to"
    r = await sheda.api.post("/api/v1/chats", {"receiver_id": alice.id, "message": "sneaky", "reply_to": 10 ** 12}, token=bob.token)
    assert r.status == 422 and r.json["code"] == "invalid_reply", r
    assert len(await history(sheda, alice, bob)) == 2
    # Over REST, and the quote follows the original: edited, then deleted.
    r = await sheda.api.post("/api/v1/chats", {"receiver_id": bob.id, "message": "Great", "reply_to": ack["id"]}, token=alice.token)
    assert r.status == 201 and r.json["reply_to"] == ack["id"] and r.json["reply_preview"]["message"] == "Yes, furnished.", r
    await a.send({"type": "edit", "id": question["id"], "message": "Still available?"})
    await b.wait_type("message.updated")
    assert (await history(sheda, bob, alice))[1]["reply_preview"]["message"] == "Still available?"
    await a.send({"type": "delete", "id": question["id"], "for": "everyone"})
    await b.wait_type("message.deleted")
    rows = await history(sheda, bob, alice)
    assert rows[1]["reply_preview"] == {"id": question["id"], "sender_id": alice.id, "deleted": True}
    synced = {f["id"]: f for f in await sync_since(b)}
    assert synced[ack["id"]]["reply_preview"] == {"id": question["id"], "sender_id": alice.id, "deleted": True}
    # A reply to a tombstone is delivered with the tombstone as its quote.
    await b.send({"type": "message", "receiver_id": alice.id, "message": "?", "reply_to": question["id"], "client_msg_id": "r3"})
    ack3 = await b.wait_type("ack", client_msg_id="r3")
    assert (await a.wait_type("message", id=ack3["id"]))["reply_preview"]["deleted"] is True
    await fits_the_document(sheda, a, b, c)


# ---- reactions ---------------------------------------------------------------------------------------
async def test_reactions_toggle_per_user_and_history_shows_counts_and_mine(sheda):
    alice, bob, carol, a, b, c = await trio(sheda)
    ack = await send(a, bob.id, "Offer accepted!")
    await b.send({"type": "react", "id": ack["id"], "emoji": "❤️"})
    on = [await ws.wait_type("message.reaction", id=ack["id"]) for ws in (a, b)]
    assert on[0] == on[1] and on[0]["on"] is True and on[0]["user_id"] == bob.id and on[0]["counts"] == {"❤️": 1}
    await a.send({"type": "react", "id": ack["id"], "emoji": "❤️"})
    await a.wait_for(lambda f: f.get("type") == "message.reaction" and f["user_id"] == alice.id)
    await a.send({"type": "react", "id": ack["id"], "emoji": "🙏"})
    await b.wait_for(lambda f: f.get("type") == "message.reaction" and f["emoji"] == "🙏")
    (row,) = await history(sheda, alice, bob)
    assert row["reactions"] == {"❤️": 2, "🙏": 1} and sorted(row["my_reactions"]) == sorted(["❤️", "🙏"])
    (row,) = await history(sheda, bob, alice)
    assert row["reactions"] == {"❤️": 2, "🙏": 1} and row["my_reactions"] == ["❤️"]
    # Toggled off.
    n = len(a.of_type("message.reaction"))
    await b.send({"type": "react", "id": ack["id"], "emoji": "❤️"})
    off = await a.wait_for(lambda f: f.get("type") == "message.reaction" and len(a.of_type("message.reaction")) > n)
    assert off["on"] is False and off["counts"] == {"❤️": 1, "🙏": 1}
    (row,) = await history(sheda, bob, alice)
    assert row["reactions"] == {"❤️": 1, "🙏": 1} and row["my_reactions"] == []
    # Refusals: an emoji outside the set, a stranger, an unknown id.
    before = await stored(sheda, ack["id"])
    for ws, frame, code in [(b, {"id": ack["id"], "emoji": "🍕"}, "invalid_emoji"), (b, {"id": ack["id"], "emoji": "+1"}, "invalid_emoji"),
                            (c, {"id": ack["id"], "emoji": "👍"}, "message_not_found"),
                            (a, {"id": 10 ** 12, "emoji": "👍"}, "message_not_found")]:
        await ws.send({"type": "react", **frame})
        await ws.wait_type("error", code=code)
    assert await stored(sheda, ack["id"]) == before
    await settle(a, b, c)
    assert len(b.of_type("message.reaction")) == 4 and c.of_type("message.reaction") == []
    await fits_the_document(sheda, a, b, c)


# ---- delivered receipts ------------------------------------------------------------------------------
async def test_delivered_receipts_reach_the_sender_and_the_list_shows_sent_delivered_read(sheda):
    alice, bob, carol, a, b, c = await trio(sheda)
    m1 = await send(a, bob.id, "one")
    m2 = await send(a, bob.id, "two")
    assert (await conversations(sheda, alice))[0]["last_message_status"] == "sent"
    assert (await conversations(sheda, bob))[0]["last_message_status"] is None  # the last message is not Bob's
    await b.send({"type": "received", "other_user_id": alice.id, "up_to": m1["id"]})
    d1 = await a.wait_type("delivered")
    assert (d1["reader_id"], d1["other_user_id"], d1["up_to"]) == (bob.id, alice.id, m1["id"]) and d1["seq"] > m2["id"]
    assert (await conversations(sheda, alice))[0]["last_message_status"] == "sent"  # m2 not yet
    await b.send({"type": "received", "other_user_id": alice.id, "up_to": 10 ** 12})  # capped at Alice's newest
    d2 = await a.wait_type("delivered", up_to=m2["id"])
    assert d2["seq"] > d1["seq"]
    assert (await conversations(sheda, alice))[0]["last_message_status"] == "delivered"
    # Nothing new: no event. A receipt for a conversation that does not exist: nothing either.
    await b.send({"type": "received", "other_user_id": alice.id, "up_to": m2["id"]})
    await c.send({"type": "received", "other_user_id": alice.id, "up_to": m2["id"]})
    await b.send({"type": "received", "other_user_id": bob.id, "up_to": 1})
    await b.wait_type("error", code="self_message")
    await settle(a, b, c)
    assert len(a.of_type("delivered")) == 2 and b.of_type("delivered") == []
    doc = await sheda.ctx.db["conversations"].find_one({"_id": conv_key(alice.id, bob.id)})
    assert doc["delivered_upto"] == {str(bob.id): m2["id"]}
    # Read after delivered.
    await b.send({"type": "read", "other_user_id": alice.id, "up_to": m2["id"]})
    await a.wait_type("read")
    assert (await conversations(sheda, alice))[0]["last_message_status"] == "read"
    await fits_the_document(sheda, a, b, c)


# ---- the stream --------------------------------------------------------------------------------------
async def test_every_change_is_replayed_by_sync_after_seq_after_a_disconnect(sheda):
    alice, bob, carol, a, b, c = await trio(sheda)
    m1 = await send(a, bob.id, "hello")
    got = await b.wait_type("message", id=m1["id"])
    checkpoint = got["seq"]
    b.close()
    await b.wait_closed()
    m2 = await send(a, bob.id, "second")
    await a.send({"type": "edit", "id": m1["id"], "message": "hello, Bob"})
    await a.wait_type("message.updated")
    await a.send({"type": "react", "id": m1["id"], "emoji": "😮"})
    await a.wait_type("message.reaction")
    await a.send({"type": "delete", "id": m2["id"], "for": "everyone"})
    await a.wait_type("message.deleted")
    b = await sheda.ws(bob.token)
    frames = await replay(b, checkpoint)
    kinds = [(f["type"], f.get("id")) for f in frames]
    assert kinds == [("message", m2["id"]), ("message.updated", m1["id"]), ("message.reaction", m1["id"]),
                     ("message.deleted", m2["id"])], kinds
    seqs = [f["seq"] for f in frames]
    assert seqs == sorted(seqs) and len(set(seqs)) == 4
    assert frames[0]["deleted"] is True  # the replayed message as it is now
    # The same events over REST; Bob's own delivered receipt reaches Alice's stream, not his.
    await b.send({"type": "received", "other_user_id": alice.id, "up_to": m1["id"]})
    delivered = await a.wait_type("delivered")
    r = await sheda.api.get("/api/v1/events", params={"after_seq": checkpoint}, token=alice.token)
    assert r.status == 200 and r.json["items"][-1]["type"] == "delivered" and r.json["items"][-1]["seq"] == delivered["seq"], r
    r = await sheda.api.get("/api/v1/events", params={"after_seq": checkpoint}, token=bob.token)
    assert [i["type"] for i in r.json["items"]] == ["message", "message.updated", "message.reaction", "message.deleted"], r
    await fits_the_document(sheda, a, b, c)


async def test_the_documents_describe_the_frames_and_routes(sheda):
    spec = (await sheda.api.get("/api/v1/openapi.json")).json
    item = spec["paths"]["/api/v1/chat/messages/{message_id}"]
    assert {"patch", "delete"} <= set(item)
    assert {"403", "404", "409", "422"} <= set(item["patch"]["responses"])
    assert [p["name"] for p in item["delete"]["parameters"] if p["in"] == "query"] == ["for"]
    send = spec["paths"]["/api/v1/chats"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert "reply_to" in str(spec["components"]["schemas"].get(send.get("$ref", "").split("/")[-1], send))
    socket = (await sheda.api.get(DOC)).json
    text = str(socket)
    for kind in ("edit", "delete", "react", "received", "message.updated", "message.deleted", "message.reaction", "delivered"):
        assert f"'{kind}'" in text, kind


async def test_react_and_received_over_rest_for_clients_without_a_socket(sheda):
    alice, bob, carol, a, b, c = await trio(sheda)
    ack = await send(a, bob.id, "Keys on Friday")
    url = f"/api/v1/chat/messages/{ack['id']}/reactions"
    r = await sheda.api.post(url, {"emoji": "🙏"}, token=bob.token)
    assert r.status == 200 and r.json["on"] is True and r.json["counts"] == {"🙏": 1}, r
    assert (await a.wait_type("message.reaction", id=ack["id"]))["seq"] == r.json["seq"]
    r = await sheda.api.post(url, {"emoji": "🙏"}, token=bob.token)
    assert r.status == 200 and r.json["on"] is False and r.json["counts"] == {}, r
    for token, body, status, code in [(bob.token, {"emoji": "🍕"}, 422, "invalid_emoji"), (carol.token, {"emoji": "👍"}, 404, "message_not_found"),
                                      (bob.token, {}, 422, "validation_error"), (None, {"emoji": "👍"}, 401, None)]:
        r = await sheda.api.post(url, body, token=token)
        assert r.status == status and (code is None or r.json["code"] == code), r
    assert "reactions" not in (await history(sheda, bob, alice))[0]
    r = await sheda.api.post("/api/v1/chat/received", {"other_user_id": alice.id, "up_to": ack["id"]}, token=bob.token)
    assert r.status == 200 and r.json["up_to"] == ack["id"] and r.json["delivered_at"], r
    assert (await a.wait_type("delivered"))["seq"] == r.json["seq"]
    r = await sheda.api.post("/api/v1/chat/received", {"other_user_id": alice.id, "up_to": ack["id"]}, token=bob.token)
    assert r.status == 200 and r.json["delivered_at"] is None and "seq" not in r.json, r  # nothing new
    r = await sheda.api.post("/api/v1/chat/received", {"other_user_id": bob.id, "up_to": 1}, token=bob.token)
    assert r.status == 400 and r.json["code"] == "self_message", r
    assert (await conversations(sheda, alice))[0]["last_message_status"] == "delivered"
    await fits_the_document(sheda, a, b, c)


@pytest.mark.parametrize("settings_overrides", [{"ws_rate_burst": 10_000, "ws_rate_per_second": 10_000,
                                                 "ws_control_burst": 3, "ws_control_per_second": 0.001}])
async def test_edits_and_reactions_over_rest_spend_a_budget_as_on_the_socket(sheda):
    """On the socket every edit and reaction spends the control budget; over REST they spent nothing, so a client
    could toggle a reaction (or rewrite a message) without end, each a stored event delivered live to the other
    person. REST now spends one per-user budget of the same figures: here 3, refilled once in 1,000 s, so the
    refusals do not depend on timing. A refusal is 429 with Retry-After and changes nothing."""
    alice, bob = await sheda.signup("client"), await sheda.signup("agent")
    r = await sheda.api.post("/api/v1/chats", {"receiver_id": bob.id, "message": "Keys on Friday"}, token=alice.token)
    assert r.status == 201, r
    mid = r.json["id"]
    react = f"/api/v1/chat/messages/{mid}/reactions"
    for _ in range(3):  # on, off, on: Bob's three
        assert (await sheda.api.post(react, {"emoji": "👍"}, token=bob.token)).status == 200
    assert (await sheda.api.patch(f"/api/v1/chat/messages/{mid}", {"message": "Keys on Saturday"}, token=alice.token)).status == 200  # her own
    before = await stored(sheda, mid)
    events = (await sheda.api.get("/api/v1/events", token=alice.token, params={"after_seq": 0})).json["items"]
    for _ in range(2):
        r = await sheda.api.post(react, {"emoji": "👍"}, token=bob.token)
        assert r.status == 429 and r.json["code"] == "rate_limited" and int(r.headers["Retry-After"]) >= 1, r
        r = await sheda.api.patch(f"/api/v1/chat/messages/{mid}", {"message": "x"}, token=bob.token)
        assert r.status == 429, r  # spent before the rules are asked
    assert await stored(sheda, mid) == before
    assert (await sheda.api.get("/api/v1/events", token=alice.token, params={"after_seq": 0})).json["items"] == events
    # Each user has their own: Alice (one spent by her edit) still edits.
    assert (await sheda.api.patch(f"/api/v1/chat/messages/{mid}", {"message": "Keys on Sunday"}, token=alice.token)).status == 200
