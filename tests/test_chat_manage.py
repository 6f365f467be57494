"""Conversations you can manage (issue 15 §3): mute (until a time, forever) and archive per user
per conversation, the conversation list's archived filter, no push for a muted conversation,
and search of my own messages (accents, case, pagination, privacy, `with`, deleted messages)."""
from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

import pytest

from sheda_rt.chat.store import conv_key
from tests.test_asyncapi import DOC, check_frame, document_validators
from tests.test_push import jobs_of, run_jobs, subscribed, until_jobs
from tests.test_push import push  # noqa: F401  (fixture: the local push service)

CONVERSATIONS = "/api/v1/chat/conversations"
SEARCH = "/api/v1/chat/search"


@pytest.fixture
def settings_overrides():
    # As in test_push: the local push service is on 127.0.0.1, jobs are run by the tests themselves.
    return {"push_allow_local_endpoints": True, "job_poll_seconds": 3600, "push_grace_seconds": 10}


def settings_url(peer) -> str:
    return f"{CONVERSATIONS}/{peer.id}/settings"


async def say(sheda, sender, receiver, text: str) -> int:
    r = await sheda.api.post("/api/v1/chats", {"receiver_id": receiver.id, "message": text}, token=sender.token)
    assert r.status == 201, r
    return r.json["id"]


def without_seq(row: dict) -> dict:
    assert isinstance(row.pop("seq"), int)  # a change is an event of my stream (below)
    return row


async def conversation_rows(sheda, user, **params) -> dict[int, dict]:
    r = await sheda.api.get(CONVERSATIONS, token=user.token, params=params)
    assert r.status == 200, r
    return {row["user_id"]: row for row in r.json["items"]}


# ---- mute ----------------------------------------------------------------------------------------
async def test_mute_until_a_time_forever_and_unmute(sheda):
    ada, bob = await sheda.signup(), await sheda.signup()
    await say(sheda, bob, ada, "hello")
    r = await sheda.api.get(settings_url(bob), token=ada.token)
    assert r.status == 200 and r.json == {"user_id": bob.id, "muted_until": None, "archived": False}, r

    until = sheda.ctx.clock.now() + timedelta(seconds=60)
    r = await sheda.api.patch(settings_url(bob), {"muted_until": until.astimezone(timezone(timedelta(hours=1))).isoformat()},
                              token=ada.token)
    assert r.status == 200, r
    shown = until.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.") + f"{until.microsecond // 1000:03d}Z"
    assert without_seq(r.json) == {"user_id": bob.id, "muted_until": shown, "archived": False}
    row = (await conversation_rows(sheda, ada))[bob.id]
    assert row["muted_until"] == shown and row["archived"] is False
    assert row["unread_count"] == 1  # muted still counts unread
    assert (await conversation_rows(sheda, bob))[ada.id]["muted_until"] is None  # per user: Bob muted nothing
    # ISO 8601's whole-hour offset ("+01", as PostgreSQL prints times) is the same instant as "+01:00"
    hours_form = until.astimezone(timezone(timedelta(hours=1))).isoformat()
    assert hours_form.endswith("+01:00")
    r = await sheda.api.patch(settings_url(bob), {"muted_until": hours_form[:-3]}, token=ada.token)
    assert r.status == 200 and r.json["muted_until"] == shown, r

    sheda.ctx.clock.advance(seconds=61)  # the mute ends by itself (no write: it is a date)
    assert (await sheda.api.get(settings_url(bob), token=ada.token)).json["muted_until"] is None

    r = await sheda.api.patch(settings_url(bob), {"muted_until": "forever"}, token=ada.token)
    assert r.status == 200 and r.json["muted_until"] == "forever", r
    assert (await conversation_rows(sheda, ada))[bob.id]["muted_until"] == "forever"

    r = await sheda.api.patch(settings_url(bob), {"muted_until": None}, token=ada.token)
    assert r.status == 200 and r.json["muted_until"] is None, r
    # A time already past unmutes too.
    await sheda.api.patch(settings_url(bob), {"muted_until": "forever"}, token=ada.token)
    r = await sheda.api.patch(settings_url(bob), {"muted_until": "2020-01-01T00:00:00Z"}, token=ada.token)
    assert r.status == 200 and r.json["muted_until"] is None, r


async def test_a_muted_conversation_sends_no_push_and_unmuting_brings_them_back(sheda, push):  # noqa: F811
    ada = await sheda.signup(full_name="Ada Obi")
    bob = await sheda.signup(full_name="Bob Eze")
    carol = await sheda.signup(full_name="Carol Ike")
    sub, device_id = await subscribed(sheda, push, ada)
    await say(sheda, bob, ada, "first")  # the pair exists, so Ada can mute it
    await until_jobs(sheda, device_id)
    assert (await sheda.api.patch(settings_url(bob), {"muted_until": "forever"}, token=ada.token)).status == 200
    # muted during the grace period: the pending push is not sent either
    await say(sheda, bob, ada, "are you there?")
    await say(sheda, carol, ada, "hi from carol")
    await until_jobs(sheda, device_id, 2)
    sheda.ctx.clock.advance(seconds=11)
    await run_jobs(sheda)
    got = [r.payload["conversation"]["other_user_id"] for r in push.accepted(sub.endpoint_id)]
    assert got == [carol.id], got
    outcomes = {j["payload"]["other_id"]: (j.get("result") or {}).get("outcome") for j in await jobs_of(sheda, device_id)}
    assert outcomes[bob.id] == "muted", outcomes
    assert got and push.accepted(sub.endpoint_id)[0].payload["badge"] == 3  # Bob's unread still count in the badge

    assert (await sheda.api.patch(settings_url(bob), {"muted_until": None}, token=ada.token)).status == 200
    await say(sheda, bob, ada, "hello again")
    for _ in range(100):
        if any(j["status"] == "pending" and j["payload"]["other_id"] == bob.id for j in await jobs_of(sheda, device_id)):
            break
        await asyncio.sleep(0.02)
    sheda.ctx.clock.advance(seconds=11)
    await run_jobs(sheda)
    got = [r.payload["conversation"]["other_user_id"] for r in push.accepted(sub.endpoint_id)]
    assert got == [carol.id, bob.id], got


# ---- archive -------------------------------------------------------------------------------------
async def test_archive_hides_from_the_list_until_a_new_message_arrives(sheda):
    ada, bob, carol = await sheda.signup(), await sheda.signup(), await sheda.signup()
    await say(sheda, bob, ada, "the flat on Allen Avenue")
    await say(sheda, carol, ada, "viewing on Friday?")
    r = await sheda.api.patch(settings_url(bob), {"archived": True}, token=ada.token)
    assert r.status == 200 and without_seq(r.json) == {"user_id": bob.id, "muted_until": None, "archived": True}, r

    assert set(await conversation_rows(sheda, ada)) == {carol.id}
    assert set(await conversation_rows(sheda, ada, archived="false")) == {carol.id}
    archived = await conversation_rows(sheda, ada, archived="true")
    assert set(archived) == {bob.id} and archived[bob.id]["archived"] is True
    assert set(await conversation_rows(sheda, bob)) == {ada.id}  # archived for Ada only

    await say(sheda, bob, ada, "still interested?")  # a newer message brings it back, with no write of ours
    rows = await conversation_rows(sheda, ada)
    assert set(rows) == {bob.id, carol.id} and rows[bob.id]["archived"] is False
    assert await conversation_rows(sheda, ada, archived="true") == {}
    assert (await sheda.api.get(settings_url(bob), token=ada.token)).json["archived"] is False

    # archived again, then my own message also brings it back; unarchive by hand too
    await sheda.api.patch(settings_url(carol), {"archived": True}, token=ada.token)
    assert set(await conversation_rows(sheda, ada)) == {bob.id}
    await say(sheda, ada, carol, "yes, Friday")
    assert set(await conversation_rows(sheda, ada)) == {bob.id, carol.id}
    await sheda.api.patch(settings_url(carol), {"archived": True, "muted_until": "forever"}, token=ada.token)
    r = await sheda.api.patch(settings_url(carol), {"archived": False}, token=ada.token)
    assert without_seq(r.json) == {"user_id": carol.id, "muted_until": "forever", "archived": False}, r  # mute left as it was
    assert set(await conversation_rows(sheda, ada)) == {bob.id, carol.id}


async def test_archive_follows_the_messages_i_still_see_in_the_list_and_the_settings_alike(sheda):
    # The settings route judged `archived` by the pair's newest message, the list by the newest one the
    # reader still sees: after Ada deleted for herself the message that had brought an archived
    # conversation back, the list said archived and GET .../settings said not.
    ada, bob = await sheda.signup(), await sheda.signup()
    await say(sheda, bob, ada, "one")
    assert (await sheda.api.patch(settings_url(bob), {"archived": True}, token=ada.token)).status == 200
    two = await say(sheda, bob, ada, "two")  # brings it back
    assert (await sheda.api.get(settings_url(bob), token=ada.token)).json["archived"] is False
    assert (await sheda.api.delete(f"/api/v1/chat/messages/{two}?for=me", token=ada.token)).status == 200
    archived = await conversation_rows(sheda, ada, archived="true")
    assert set(archived) == {bob.id} and archived[bob.id]["archived"] is True  # the newest she sees is archived
    r = await sheda.api.get(settings_url(bob), token=ada.token)
    assert r.status == 200 and r.json["archived"] is True, r  # the same answer
    assert (await conversation_rows(sheda, bob))[ada.id]["archived"] is False  # Bob archived nothing

    # Archiving records the newest message she still sees, not one she deleted for herself.
    carol = await sheda.signup()
    seen = await say(sheda, carol, ada, "seen")
    hidden = await say(sheda, carol, ada, "hidden")
    assert (await sheda.api.delete(f"/api/v1/chat/messages/{hidden}?for=me", token=ada.token)).status == 200
    r = await sheda.api.patch(settings_url(carol), {"archived": True}, token=ada.token)
    assert r.status == 200 and r.json["archived"] is True, r
    doc = await sheda.ctx.db["conversations"].find_one({"_id": conv_key(ada.id, carol.id)})
    assert doc["archived_upto"][str(ada.id)] == seen
    assert set(await conversation_rows(sheda, ada, archived="true")) == {bob.id, carol.id}
    await say(sheda, carol, ada, "newer")  # a new message still brings it back, in both answers
    assert (await conversation_rows(sheda, ada))[carol.id]["archived"] is False
    assert (await sheda.api.get(settings_url(carol), token=ada.token)).json["archived"] is False

    # With every message deleted for me the pair is in neither list; archiving it is still answered as
    # done (it said archived: false), and the next message brings it back.
    dan = await sheda.signup()
    only = await say(sheda, dan, ada, "only")
    assert (await sheda.api.delete(f"/api/v1/chat/messages/{only}?for=me", token=ada.token)).status == 200
    r = await sheda.api.patch(settings_url(dan), {"archived": True}, token=ada.token)
    assert r.status == 200 and r.json["archived"] is True, r
    assert (await sheda.api.get(settings_url(dan), token=ada.token)).json["archived"] is True
    assert dan.id not in await conversation_rows(sheda, ada) and dan.id not in await conversation_rows(sheda, ada, archived="true")
    await say(sheda, dan, ada, "back")
    assert (await conversation_rows(sheda, ada))[dan.id]["archived"] is False
    assert (await sheda.api.get(settings_url(dan), token=ada.token)).json["archived"] is False


async def test_my_other_devices_get_each_change_live_and_in_a_replay(sheda):
    ada, bob = await sheda.signup(), await sheda.signup()
    await say(sheda, bob, ada, "hello")
    phone = await sheda.ws(ada.token)
    bobs = await sheda.ws(bob.token)
    r = await sheda.api.patch(settings_url(bob), {"muted_until": "forever", "archived": True}, token=ada.token)
    assert r.status == 200, r
    frame = await phone.wait_type("conversation.settings")
    assert frame == {"type": "conversation.settings", "user_id": bob.id, "muted_until": "forever", "archived": True,
                     "seq": r.json["seq"]}
    r2 = await sheda.api.patch(settings_url(bob), {"archived": False}, token=ada.token)
    await phone.wait_type("conversation.settings", seq=r2.json["seq"], archived=False, muted_until="forever")
    validators = document_validators((await sheda.api.get(DOC)).json)
    assert [p for f in phone.frames for p in check_frame(f, validators)[1]] == []
    # a device that was away replays them, in order
    laptop = await sheda.ws(ada.token)
    await laptop.send({"type": "sync", "after_seq": r.json["seq"] - 1})
    await laptop.wait_type("sync.done")
    assert [f["seq"] for f in laptop.of_type("conversation.settings")] == [r.json["seq"], r2.json["seq"]]
    await asyncio.sleep(0.1)
    assert bobs.of_type("conversation.settings") == []  # never to the other person
    for ws in (phone, bobs, laptop):
        ws.close()


async def test_settings_refusals(sheda):
    ada, bob, stranger = await sheda.signup(), await sheda.signup(), await sheda.signup()
    await say(sheda, bob, ada, "hi")
    for peer_id in (stranger.id, ada.id, 10**15):  # never talked, myself, nobody
        r = await sheda.api.patch(f"{CONVERSATIONS}/{peer_id}/settings", {"archived": True}, token=ada.token)
        assert r.status == 404 and r.json["code"] == "conversation_not_found", r
        assert (await sheda.api.get(f"{CONVERSATIONS}/{peer_id}/settings", token=ada.token)).status == 404
    for body in ({}, {"muted_until": 1893456000}, {"muted_until": "tomorrow"}, {"muted_until": "9500-01-01T00:00:00Z"},
                 {"muted_until": "9999-12-31T23:00:00-05:00"}, {"archived": "yes"}, {"archived": 1}, {"archived": None},
                 {"pinned": True}, [], "x"):
        r = await sheda.api.patch(settings_url(bob), body, token=ada.token)
        assert r.status == 422, (body, r)
        assert "errors" in r.json and r.json["code"], r
    assert (await sheda.api.patch(settings_url(bob), {"archived": True})).status == 401
    assert (await sheda.api.get(settings_url(bob), token=ada.token)).json == {"user_id": bob.id, "muted_until": None, "archived": False}
    r = await sheda.api.get(CONVERSATIONS, token=ada.token, params={"archived": "maybe"})
    assert r.status == 422, r


# ---- search --------------------------------------------------------------------------------------
async def search(sheda, user, **params):
    return await sheda.api.get(SEARCH, token=user.token, params=params)


async def search_all(sheda, user, page_size: int, cursor: str | None = None, **params) -> tuple[list[int], int]:
    """Every hit id (from `cursor`), following next_cursor while more; and how many pages it took."""
    ids, pages = [], 0
    while True:
        r = await search(sheda, user, limit=page_size, **params, **({"cursor": cursor} if cursor else {}))
        assert r.status == 200, r
        pages += 1
        assert len(r.json["items"]) <= page_size
        ids.extend(item["id"] for item in r.json["items"])
        assert r.json["more"] == (r.json["next_cursor"] is not None)
        if not r.json["more"]:
            return ids, pages
        cursor = r.json["next_cursor"]
        assert pages < 500


async def test_search_ignores_case_and_accents_and_matches_word_starts(sheda):
    ada, bob = await sheda.signup(), await sheda.signup()
    m1 = await say(sheda, bob, ada, "Meet at the CAFE near the estate")
    m2 = await say(sheda, ada, bob, "The café on Àdéolá Odeku street")
    m3 = await say(sheda, bob, ada, "Cafeteria or the Straße garden?")
    await say(sheda, bob, ada, "no coffee place today")

    r = await search(sheda, ada, q="café")
    assert r.status == 200, r
    assert [i["id"] for i in r.json["items"]] == [m3, m2, m1]  # newest first; "café" begins "Cafeteria"
    assert r.json["more"] is False and r.json["next_cursor"] is None
    hit = r.json["items"][1]
    assert hit["message"] == "The café on Àdéolá Odeku street" and hit["sender_id"] == ada.id and hit["other_user_id"] == bob.id
    assert r.json["items"][0]["other_user_id"] == bob.id and "created_at" in hit
    assert [i["id"] for i in (await search(sheda, ada, q="CAFE")).json["items"]] == [m3, m2, m1]
    assert [i["id"] for i in (await search(sheda, bob, q="adeola ODEKU")).json["items"]] == [m2]  # every word, any order
    assert [i["id"] for i in (await search(sheda, ada, q="odeku adeola")).json["items"]] == [m2]
    assert [i["id"] for i in (await search(sheda, ada, q="strasse")).json["items"]] == [m3]  # ß folds to ss
    assert (await search(sheda, ada, q="afe")).json["items"] == []  # inside a word: not a match
    assert (await search(sheda, ada, q="café Lagos")).json["items"] == []  # every word must be there


async def test_search_pages_have_no_duplicates_or_gaps_even_when_the_work_bound_ends_them(sheda):
    ada, bob, carol, dave, erin = [await sheda.signup() for _ in range(5)]
    # Erin's conversation is sparse (its windows grow wide and reach far below the others'): its
    # early hit must still come in order, after every newer hit of the busy conversations.
    expected = [await say(sheda, erin, ada, "the apartment on Bourdillon Road")]
    for i in range(36):
        peer = (bob, carol, dave)[i % 3]
        if i % 2:
            expected.append(await say(sheda, peer, ada, f"apartment viewing number {i}"))
        else:
            await say(sheda, ada, peer, f"unrelated note {i}")
    for i in range(40):  # the newest part of the busy conversations has no hits
        await say(sheda, (bob, carol, dave)[i % 3], ada, f"later note {i}")
    expected.append(await say(sheda, ada, erin, "Apartment keys: Friday"))
    expected.reverse()  # newest first

    ids, _ = await search_all(sheda, ada, 5, q="apartment")
    assert ids == expected
    ids, _ = await search_all(sheda, ada, 100, q="apartment")
    assert ids == expected

    # Bound the work of one request to a few documents: pages get short, some empty with more=true,
    # and following the cursor still gives every hit once, in order.
    search_service = sheda.ctx.chat_search
    search_service.FIRST_WIDTH, search_service.MIN_WIDTH, search_service.TARGET = 2, 1, 2
    for bound in (3, 8, 24, 30):
        search_service.max_examined = bound
        ids, pages = await search_all(sheda, ada, 4, q="apartment")
        assert ids == expected, bound
        if bound == 3:
            assert pages > len(expected) // 4 + 1  # the bound did end pages early

    # A message stored between pages is newer than the cursor: no page repeats or shifts.
    first = await search(sheda, ada, q="apartment", limit=4)
    await say(sheda, bob, ada, "apartment news")
    rest, _ = await search_all(sheda, ada, 4, q="apartment", cursor=first.json["next_cursor"])
    assert [i["id"] for i in first.json["items"]] + rest == expected


async def test_search_is_private_filters_by_peer_and_never_matches_deleted_messages(sheda):
    ada, bob, carol, dave = [await sheda.signup() for _ in range(4)]
    with_bob = await say(sheda, bob, ada, "The duplex has a big garden")
    with_carol = await say(sheda, ada, carol, "Garden flat still free?")
    await say(sheda, carol, dave, "garden party at the duplex")  # another pair: never Ada's
    tombstone = await say(sheda, bob, ada, "garden keys are under the mat")
    hidden = await say(sheda, carol, ada, "garden gate code 4411")

    messages = sheda.ctx.db["messages"]
    # deleted for everyone (a tombstone) and deleted for Ada only
    await messages.update_one({"_id": tombstone}, {"$set": {"deleted": True}})
    await messages.update_one({"_id": hidden}, {"$set": {"hidden_for": [ada.id]}})

    ids = [i["id"] for i in (await search(sheda, ada, q="garden")).json["items"]]
    assert ids == [with_carol, with_bob]
    assert [i["id"] for i in (await search(sheda, ada, q="garden", **{"with": bob.id})).json["items"]] == [with_bob]
    assert [i["id"] for i in (await search(sheda, ada, q="garden", **{"with": carol.id})).json["items"]] == [with_carol]
    assert (await search(sheda, ada, q="garden", **{"with": dave.id})).json["items"] == []
    assert (await search(sheda, ada, q="party")).json["items"] == []
    assert [i["id"] for i in (await search(sheda, carol, q="garden")).json["items"]][-1] == with_carol
    assert hidden in [i["id"] for i in (await search(sheda, carol, q="gate")).json["items"]]  # hidden for Ada only
    assert (await search(sheda, bob, q="keys")).json["items"] == []  # the tombstone matches nobody
    assert (await search(sheda, dave, q="garden", **{"with": ada.id})).json["items"] == []

    r = await search(sheda, ada, q="garden", **{"with": 10**15})
    assert r.status == 404 and r.json["code"] == "user_not_found", r


async def test_search_refuses_bad_input(sheda):
    ada, bob = await sheda.signup(), await sheda.signup()
    await say(sheda, bob, ada, "hello")
    for params in ({}, {"q": ""}, {"q": "   "}, {"q": "!!! ???"}, {"q": "x" * 201}, {"q": " ".join("abcdefghijk")},
                   {"q": "hi", "limit": 0}, {"q": "hi", "limit": 101}, {"q": "hi", "limit": "ten"},
                   {"q": "hi", "cursor": "garbage"}, {"q": "hi", "cursor": "W3siJGR0IjoieCJ9XQ"}, {"q": "hi", "cursor": "WzBd"},
                   {"q": "hi", "with": 0}, {"q": "hi", "with": "bob"}, {"q": "hi", "with": 10**19}, {"q": "hi", "sort": "asc"}):
        r = await search(sheda, ada, **params)
        assert r.status == 422, (params, r)
        assert r.json["errors"], r
    assert (await sheda.api.get(SEARCH, params={"q": "hello"})).status == 401


async def test_a_muted_conversation_is_left_out_of_the_email_digest(sheda):
    from tests.test_reminders import mails, run

    ada, eve = await sheda.signup(full_name="Ada Obi"), await sheda.signup(full_name="Eve Ife")
    bob = await sheda.signup(full_name="Bob Eze")
    await say(sheda, ada, bob, "first")
    assert (await sheda.api.patch(settings_url(ada), {"muted_until": "forever"}, token=bob.token)).status == 200
    await say(sheda, ada, bob, "Is the flat still available?")
    await say(sheda, eve, bob, "Hello from Eve")
    await asyncio.sleep(0.05)  # the digest is armed in the background after the messages are stored
    sheda.ctx.clock.advance(minutes=16)  # offline past DIGEST_OFFLINE_MINUTES
    await run(sheda)
    [digest] = mails(sheda, bob, "unread")
    assert "Eve Ife" in digest.body and "Ada Obi" not in digest.body and "flat" not in digest.body
    assert (await conversation_rows(sheda, bob))[ada.id]["unread_count"] == 2  # still unread, only not mailed


async def test_search_hits_look_like_history_and_follow_edits(sheda):
    ada, bob = await sheda.signup(), await sheda.signup()
    original = await say(sheda, bob, ada, "Is the duplex free?")
    r = await sheda.api.post("/api/v1/chats", {"receiver_id": bob.id, "message": "Garden view, yes", "reply_to": original},
                             token=ada.token)
    assert r.status == 201, r
    reply = r.json["id"]
    r = await sheda.api.patch(f"/api/v1/chat/messages/{original}", {"message": "Is the bungalow free?"}, token=bob.token)
    assert r.status == 200, r

    [hit] = (await search(sheda, ada, q="garden")).json["items"]
    history = (await sheda.api.get(f"/api/v1/chat/chat-history/{bob.id}", token=ada.token)).json
    assert {k: v for k, v in hit.items() if k != "other_user_id"} == next(row for row in history if row["id"] == reply)
    assert hit["reply_preview"]["message"] == "Is the bungalow free?"  # the quote as it is now, as history shows it
    [edited] = (await search(sheda, ada, q="bungalow")).json["items"]
    assert edited["id"] == original and edited["edited_at"]
    assert (await search(sheda, ada, q="duplex")).json["items"] == []  # the old text is gone


async def test_a_deleted_message_is_no_longer_unread_and_the_list_shows_what_i_still_see(sheda, push):  # noqa: F811
    # Unread counts (the list's and the push badge) follow the rule of pushes and digests: a
    # message deleted for everyone (a tombstone) or by the reader for themselves is not news.
    ada, bob = await sheda.signup(), await sheda.signup()
    seen, second, third = [await say(sheda, bob, ada, text) for text in ("one", "two", "three")]
    r = await sheda.api.post("/api/v1/chat/read", {"other_user_id": bob.id, "up_to": seen}, token=ada.token)
    assert r.status == 200, r
    assert (await conversation_rows(sheda, ada))[bob.id]["unread_count"] == 2

    def delete(message_id, scope, user):
        return sheda.api.delete(f"/api/v1/chat/messages/{message_id}?for={scope}", token=user.token)

    assert (await delete(seen, "everyone", bob)).status == 200  # already read: nothing changes
    assert (await conversation_rows(sheda, ada))[bob.id]["unread_count"] == 2
    assert (await delete(second, "everyone", bob)).status == 200
    assert (await conversation_rows(sheda, ada))[bob.id]["unread_count"] == 1
    assert (await delete(second, "everyone", bob)).status == 404  # a retried delete takes nothing more off
    assert (await conversation_rows(sheda, ada))[bob.id]["unread_count"] == 1

    fourth = await say(sheda, bob, ada, "four")
    assert (await conversation_rows(sheda, ada))[bob.id]["unread_count"] == 2
    assert (await delete(fourth, "me", ada)).status == 200  # the reader deletes it for herself
    assert (await delete(fourth, "me", ada)).status == 404
    row = (await conversation_rows(sheda, ada))[bob.id]
    assert row["unread_count"] == 1
    assert row["last_message"]["id"] == third and row["last_message"]["message"] == "three"  # the newest she still sees
    assert (await conversation_rows(sheda, bob))[ada.id]["last_message"]["id"] == fourth  # Bob still sees it

    assert (await delete(third, "everyone", bob)).status == 200
    row = (await conversation_rows(sheda, ada))[bob.id]
    assert row["unread_count"] == 0
    # The README's rule: the list shows a tombstone as it is ("message": "", "deleted": true).
    assert row["last_message"]["id"] == third and row["last_message"]["deleted"] is True and row["last_message"]["message"] == ""

    # The push badge is the same unread total: only the new message counts.
    sub, device_id = await subscribed(sheda, push, ada)
    await say(sheda, bob, ada, "five")
    await until_jobs(sheda, device_id)
    sheda.ctx.clock.advance(seconds=11)
    await run_jobs(sheda)
    [got] = push.accepted(sub.endpoint_id)
    assert got.payload["count"] == 1 and got.payload["badge"] == 1, got.payload
