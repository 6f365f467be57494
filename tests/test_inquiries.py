"""Public inquiries and the lead pipeline: a visitor asks about a listing, the agent hears of it live,
works the lead (status, notes) and answers a registered inquirer in chat; bots and floods are refused."""
from __future__ import annotations

import itertools

import pytest

from tests.listing_helpers import create_property, word
from tests.support import PNG_1PX, multipart, walk_pages

INQ = "/api/v1/inquiries"
LEADS = "/api/v1/leads"
_ips = itertools.count(1)


@pytest.fixture
def settings_overrides():
    # Each test client picks its address (X-Forwarded-For), so one test's inquiries never use up another's limit.
    return {"trust_proxy_headers": True}


def from_ip(ip: str | None = None) -> dict:
    n = next(_ips)
    return {"X-Forwarded-For": ip or f"10.{n // 65536 % 256}.{n // 256 % 256}.{n % 256}"}


def inquiry(prop: dict, **over) -> dict:
    return {"property_id": prop["id"], "name": "Ada Buyer", "email": "ada@example.com", "phone": "+234 803 000 0000",
            "message": "Is it still available? Can I view it on Saturday?", **over}


async def leads_count(sheda) -> int:
    return await sheda.ctx.db["leads"].count_documents({})


async def test_anonymous_inquiry_becomes_a_lead_the_agent_hears_of_live(sheda):
    agent = await sheda.signup("agent")
    prop = await create_property(sheda, agent, title=f"Sea view flat {word()}")
    agent_ws = await sheda.ws(agent.token)
    r = await sheda.api.post(INQ, inquiry(prop), headers=from_ip())
    assert r.status == 201, r
    assert r.json["property_id"] == prop["id"] and r.json["created_at"].endswith("Z")
    lead_id = r.json["id"]
    event = await agent_ws.wait_type("lead.created")
    lead = event["lead"]
    assert lead["id"] == lead_id and lead["status"] == "new" and lead["user_id"] is None and lead["agent_id"] == agent.id
    assert lead["name"] == "Ada Buyer" and lead["email"] == "ada@example.com" and lead["phone"] == "+234 803 000 0000"
    note = await agent_ws.wait_type("notification", kind="lead.created")
    assert note["data"] == {"lead_id": lead_id, "property_id": prop["id"]}
    stored = await sheda.api.get("/api/v1/notifications", token=agent.token)
    assert any(n["kind"] == "lead.created" and n["data"]["lead_id"] == lead_id for n in stored.json["items"])
    # the agent's list and the lead itself
    mine = await sheda.api.get(LEADS, token=agent.token)
    assert mine.status == 200 and [item["id"] for item in mine.json["items"]] == [lead_id]
    assert mine.json["items"][0] == lead
    assert (await sheda.api.get(f"{LEADS}/{lead_id}", token=agent.token)).json == lead


@pytest.mark.parametrize("settings_overrides", [{"trust_proxy_headers": True, "public_base_url": "https://api.example.test/"}])
async def test_the_leads_first_message_carries_the_absolute_avatar_like_every_chat_frame(sheda):
    """With PUBLIC_BASE_URL set, every chat frame and answer has the sender's avatar as an absolute
    URL (a phone cannot resolve a bare /media/... path); the lead's first message had the path."""
    agent = await sheda.signup("agent")
    client = await sheda.signup("client")
    body, headers = multipart("file", "me.png", PNG_1PX, "image/png")
    avatar = (await sheda.api.put("/api/v1/users/me/avatar", body=body, headers=headers, token=agent.token)).json["avatar_url"]
    assert avatar.startswith("https://api.example.test/media/avatars/"), avatar
    prop = await create_property(sheda, agent)
    r = await sheda.api.post(INQ, inquiry(prop), token=client.token, headers=from_ip())
    assert r.status == 201, r
    client_ws = await sheda.ws(client.token)
    r = await sheda.api.post(f"{LEADS}/{r.json['id']}/conversation", {"message": "Hello Ada"}, token=agent.token)
    assert r.status == 201, r
    expected = {"id": agent.id, "username": agent.username, "avatar_url": avatar}
    assert r.json["message"]["sender_info"] == expected, r.json
    frame = await client_ws.wait_type("message")
    assert frame["sender_info"] == expected, frame


async def test_signed_in_inquiry_is_linked_and_turns_into_a_chat_with_one_call(sheda):
    agent = await sheda.signup("agent")
    client = await sheda.signup("client")
    prop = await create_property(sheda, agent)
    r = await sheda.api.post(INQ, inquiry(prop), token=client.token, headers=from_ip())
    assert r.status == 201, r
    lead_id = r.json["id"]
    lead = (await sheda.api.get(f"{LEADS}/{lead_id}", token=agent.token)).json
    assert lead["user_id"] == client.id and lead["conversation"] is None
    client_ws = await sheda.ws(client.token)
    r = await sheda.api.post(f"{LEADS}/{lead_id}/conversation", {"message": "Hello Ada, Saturday 10:00 works"}, token=agent.token)
    assert r.status == 201, r
    assert r.json["lead"]["status"] == "contacted" and r.json["lead"]["conversation"]["message_id"] == r.json["message"]["id"]
    assert r.json["message"]["receiver_id"] == client.id and r.json["message"]["property_id"] == prop["id"]
    frame = await client_ws.wait_type("message")
    assert frame["message"] == "Hello Ada, Saturday 10:00 works" and frame["sender_info"]["id"] == agent.id
    assert frame["property_id"] == prop["id"]
    history = await sheda.api.get(f"/api/v1/chat/chat-history/{agent.id}", token=client.token)
    assert [m["message"] for m in history.json] == ["Hello Ada, Saturday 10:00 works"]
    # once per lead; nothing more is sent
    again = await sheda.api.post(f"{LEADS}/{lead_id}/conversation", {"message": "again"}, token=agent.token)
    assert again.status == 409 and again.json["code"] == "conversation_exists", again
    history = await sheda.api.get(f"/api/v1/chat/chat-history/{agent.id}", token=client.token)
    assert len(history.json) == 1
    # an anonymous lead has nobody to chat with; other agents and clients cannot use the lead
    anon = (await sheda.api.post(INQ, inquiry(prop), headers=from_ip())).json["id"]
    r = await sheda.api.post(f"{LEADS}/{anon}/conversation", {"message": "hi"}, token=agent.token)
    assert r.status == 409 and r.json["code"] == "inquirer_not_registered", r
    other = await sheda.signup("agent")
    assert (await sheda.api.post(f"{LEADS}/{anon}/conversation", {"message": "hi"}, token=other.token)).status == 404
    assert (await sheda.api.post(f"{LEADS}/{anon}/conversation", {"message": "hi"}, token=client.token)).status == 403
    for body in ({}, {"message": ""}, {"message": "x" * 2001}, {"message": 5}):
        assert (await sheda.api.post(f"{LEADS}/{anon}/conversation", body, token=agent.token)).status == 422, body
    assert (await sheda.api.get(f"{LEADS}/{anon}", token=agent.token)).json["conversation"] is None


async def test_a_conversation_start_left_by_a_dead_process_is_taken_over(sheda):
    """A process that died between claiming the lead's conversation and recording its message left the claim:
    every later try was 409 conversation_exists while the lead showed no conversation, so the agent could never
    answer that inquirer from the lead. A claim older than a minute with no message is taken over; a fresh one
    (another screen sending right now) still answers 409."""
    from datetime import timedelta

    agent, client = await sheda.signup("agent"), await sheda.signup("client")
    prop = await create_property(sheda, agent)
    leads = []
    for _ in range(2):
        r = await sheda.api.post(INQ, inquiry(prop), token=client.token, headers=from_ip())
        assert r.status == 201, r
        leads.append(r.json["id"])
    now = sheda.ctx.clock.now()
    await sheda.ctx.db["leads"].update_one({"_id": leads[0]}, {"$set": {"conversation": {"starting_at": now - timedelta(minutes=5)}}})
    await sheda.ctx.db["leads"].update_one({"_id": leads[1]}, {"$set": {"conversation": {"starting_at": now}}})
    client_ws = await sheda.ws(client.token)
    r = await sheda.api.post(f"{LEADS}/{leads[0]}/conversation", {"message": "Sorry for the wait"}, token=agent.token)
    assert r.status == 201 and r.json["lead"]["conversation"]["message_id"] == r.json["message"]["id"], r
    assert r.json["lead"]["status"] == "contacted"
    assert (await client_ws.wait_type("message"))["message"] == "Sorry for the wait"
    r = await sheda.api.post(f"{LEADS}/{leads[0]}/conversation", {"message": "again"}, token=agent.token)
    assert r.status == 409 and r.json["code"] == "conversation_exists", r
    r = await sheda.api.post(f"{LEADS}/{leads[1]}/conversation", {"message": "Hello"}, token=agent.token)
    assert r.status == 409 and r.json["code"] == "conversation_exists", r


@pytest.mark.parametrize("settings_overrides", [{"trust_proxy_headers": True, "ws_rate_burst": 2, "ws_rate_per_second": 0.05}])
async def test_the_leads_first_message_spends_the_agents_chat_budget(sheda):
    # A chat message however it is sent: socket, POST /chats, or the answer to a lead share one budget.
    agent, client = await sheda.signup("agent"), await sheda.signup("client")
    prop = await create_property(sheda, agent)
    lead_id = (await sheda.api.post(INQ, inquiry(prop), token=client.token, headers=from_ip())).json["id"]
    for i in range(2):
        sent = await sheda.api.post("/api/v1/chats", {"receiver_id": client.id, "message": f"hi {i}"}, token=agent.token)
        assert sent.status == 201, sent
    r = await sheda.api.post(f"{LEADS}/{lead_id}/conversation", {"message": "Hello Ada"}, token=agent.token)
    assert r.status == 429 and r.json["code"] == "rate_limited" and int(r.headers["Retry-After"]) >= 1, r
    lead = (await sheda.api.get(f"{LEADS}/{lead_id}", token=agent.token)).json
    assert lead["status"] == "new" and lead["conversation"] is None  # nothing sent: the lead can be answered later
    history = await sheda.api.get(f"/api/v1/chat/chat-history/{agent.id}", token=client.token)
    assert [m["message"] for m in history.json] == ["hi 0", "hi 1"]


async def test_agents_see_their_own_leads_admins_all_with_status_filter_and_cursor(sheda):
    admin = await sheda.admin()
    agent, other = await sheda.signup("agent"), await sheda.signup("agent")
    client = await sheda.signup("client")
    mine, theirs = await create_property(sheda, agent), await create_property(sheda, other)
    my_ids = [(await sheda.api.post(INQ, inquiry(mine), headers=from_ip())).json["id"] for _ in range(5)]
    their_id = (await sheda.api.post(INQ, inquiry(theirs), headers=from_ip())).json["id"]

    def walk(token, **params):
        return walk_pages(sheda.api, LEADS, token, **params)

    assert await walk(agent.token) == sorted(my_ids, reverse=True)
    assert await walk(other.token) == [their_id]
    assert set(my_ids + [their_id]) <= set(await walk(admin.token))
    assert (await sheda.api.patch(f"{LEADS}/{my_ids[0]}", {"status": "contacted"}, token=agent.token)).status == 200
    assert (await sheda.api.patch(f"{LEADS}/{my_ids[1]}", {"status": "lost"}, token=admin.token)).status == 200
    assert await walk(agent.token, status="contacted") == [my_ids[0]]
    assert await walk(agent.token, status="new") == sorted(my_ids[2:], reverse=True)
    assert my_ids[1] in await walk(admin.token, status="lost")
    # nobody else reads or changes them
    assert (await sheda.api.get(f"{LEADS}/{their_id}", token=agent.token)).status == 404
    assert (await sheda.api.patch(f"{LEADS}/{their_id}", {"status": "contacted"}, token=agent.token)).status == 404
    assert (await sheda.api.post(f"{LEADS}/{their_id}/notes", {"text": "mine now"}, token=agent.token)).status == 404
    assert (await sheda.api.get(LEADS, token=client.token)).status == 403
    assert (await sheda.api.get(LEADS)).status == 401
    assert (await sheda.api.get(f"{LEADS}/{their_id}", token=client.token)).status == 404
    for params in ({"status": "open"}, {"limit": "0"}, {"cursor": "garbage"}, {"agent_id": "1"}):
        assert (await sheda.api.get(LEADS, token=agent.token, params=params)).status == 422, params


async def test_status_moves_only_along_the_pipeline_and_notes_are_kept(sheda):
    agent = await sheda.signup("agent")
    prop = await create_property(sheda, agent)
    lead_id = (await sheda.api.post(INQ, inquiry(prop), headers=from_ip())).json["id"]
    url = f"{LEADS}/{lead_id}"

    async def move(status):
        return await sheda.api.patch(url, {"status": status}, token=agent.token)

    for wrong in ("qualified", "won"):
        r = await move(wrong)
        assert r.status == 409 and r.json["code"] == "invalid_transition" and r.json["status"] == "new", r
        assert r.json["allowed"] == ["contacted", "lost"]
    assert (await sheda.api.get(url, token=agent.token)).json["status"] == "new"
    assert (await move("contacted")).json["status"] == "contacted"
    assert (await move("contacted")).status == 200  # already there: nothing changes
    assert (await move("won")).status == 409
    assert (await move("qualified")).json["status"] == "qualified"
    assert (await move("won")).json["status"] == "won"
    for after in ("lost", "new", "contacted", "qualified"):
        r = await move(after)
        assert r.status == 409 and r.json["status"] == "won", r
    for body in ({}, {"status": "open"}, {"status": None}, {"status": "won", "agent_id": 2}, {"status": 3}):
        assert (await sheda.api.patch(url, body, token=agent.token)).status == 422, body
    stored = await sheda.ctx.db["leads"].find_one({"_id": lead_id})
    assert [(h["from"], h["to"]) for h in stored["status_history"]] == [("new", "contacted"), ("contacted", "qualified"),
                                                                         ("qualified", "won")]
    # notes
    r = await sheda.api.post(f"{url}/notes", {"text": "Called, wants a viewing"}, token=agent.token)
    assert r.status == 201 and r.json["text"] == "Called, wants a viewing" and r.json["author_id"] == agent.id, r
    for body in ({}, {"text": ""}, {"text": "   "}, {"text": "x" * 2001}, {"text": "ok", "pinned": True}, {"text": 7}):
        assert (await sheda.api.post(f"{url}/notes", body, token=agent.token)).status == 422, body
    lead = (await sheda.api.get(url, token=agent.token)).json
    assert [n["text"] for n in lead["notes"]] == ["Called, wants a viewing"]


async def test_two_screens_moving_one_lead_at_once_move_it_once(sheda):
    import asyncio

    agent = await sheda.signup("agent")
    prop = await create_property(sheda, agent)
    for _ in range(3):
        lead_id = (await sheda.api.post(INQ, inquiry(prop), headers=from_ip())).json["id"]
        results = await asyncio.gather(*(sheda.api.patch(f"{LEADS}/{lead_id}", {"status": s}, token=agent.token)
                                         for s in ("contacted", "lost", "contacted", "lost")))
        final = (await sheda.api.get(f"{LEADS}/{lead_id}", token=agent.token)).json["status"]
        stored = await sheda.ctx.db["leads"].find_one({"_id": lead_id})
        assert len(stored["status_history"]) <= 2  # new->contacted->lost at most, never both from new
        assert [h["from"] for h in stored["status_history"]][:1] == ["new"]
        assert all(r.status in (200, 409) for r in results), results
        assert final in ("contacted", "lost")


async def test_bots_and_bad_inquiries_are_refused_and_store_nothing(sheda):
    agent = await sheda.signup("agent")
    prop = await create_property(sheda, agent)
    gone = await create_property(sheda, agent)
    assert (await sheda.api.delete(f"/api/v1/properties/{gone['id']}", token=agent.token)).status == 204
    before = await leads_count(sheda)
    bad = [
        inquiry(prop, website="http://spam.example"),    # the honeypot
        inquiry(prop, website="x"),
        inquiry(prop, message="m" * 10_240),             # 10 KB
        inquiry(prop, message=""), inquiry(prop, message=" "),
        inquiry(prop, email="not-an-email"), inquiry(prop, email="a@b"), inquiry(prop, email=""),
        inquiry(prop, name=""), inquiry(prop, name="n" * 101), inquiry(prop, name=None),
        inquiry(prop, phone="call me"), inquiry(prop, phone="1" * 40),
        inquiry(prop, property_id=str(prop["id"])), inquiry(prop, property_id=1.0), inquiry(prop, property_id=0),
        inquiry(prop, property_id=2**70), inquiry(prop, extra="x"),
        {"property_id": prop["id"], "name": "x", "email": "a@example.com"},   # no message
    ]
    for body in bad:
        r = await sheda.api.post(INQ, body, headers=from_ip())
        assert r.status == 422, (body, r)
        assert r.json["code"] == "validation_error" and r.json["errors"], r
    r = await sheda.api.post(INQ, inquiry(prop, website="x"), headers=from_ip())
    assert r.json["errors"][0]["field"] == "website"
    for raw in (b"not json", b"[]", b"null", b'{"property_id":'):
        r = await sheda.api.request("POST", INQ, body=raw, headers={"Content-Type": "application/json", **from_ip()})
        assert r.status in (400, 422), (raw, r)
    assert (await sheda.api.post(INQ, inquiry(prop, property_id=999_999_999), headers=from_ip())).status == 404
    assert (await sheda.api.post(INQ, inquiry(gone), headers=from_ip())).status == 404
    r = await sheda.api.post(INQ, inquiry(prop), token=agent.token, headers=from_ip())
    assert r.status == 409 and r.json["code"] == "own_listing", r
    r = await sheda.api.post(INQ, inquiry(prop), token="not-a-token", headers=from_ip())
    assert r.status == 401, r
    assert await leads_count(sheda) == before


async def test_the_inquirers_name_is_held_to_the_rules_of_names_other_users_see(sheda):
    """The agent sees the inquirer's name on the lead and in the notification ("<name> asked about ..."): like a
    full_name it must have a visible character and no line breaks, control characters or right-to-left overrides
    (which reorder the text shown after them); these were stored. Joiners and direction marks inside a name stay."""
    agent = await sheda.signup("agent")
    prop = await create_property(sheda, agent)
    before = await leads_count(sheda)
    for name in ("Ada\nNew inquiry: call +234 800", "Ada\u202eyrtnuoc", "Ada\u2066x\u2069", "Ada\x00", "Ada\tB", "\u200b\u200d"):
        r = await sheda.api.post(INQ, inquiry(prop, name=name), headers=from_ip())
        assert r.status == 422 and [e["field"] for e in r.json["errors"]] == ["name"], (name, r)
    assert await leads_count(sheda) == before
    r = await sheda.api.post(INQ, inquiry(prop, name="\u0645\u0647\u200c\u0633\u0627"), headers=from_ip())  # a Persian name with its joiner
    assert r.status == 201, r
    lead = await sheda.api.get(f"{LEADS}/{r.json['id']}", token=agent.token)
    assert lead.json["name"] == "\u0645\u0647\u200c\u0633\u0627", lead


async def test_a_signed_in_inquiry_across_a_block_is_refused_like_a_viewing(sheda):
    """A client the agent blocked (or who blocks the agent) cannot reach them with a signed-in inquiry: it put the
    client's words in front of the agent (lead, notification, live event) while every chat message was refused.
    409 `blocked` as for a viewing, the same words whichever side blocked; nothing stored, nothing counted
    against the address. Lifted, it goes through."""
    agent = await sheda.signup("agent")
    pest, shy = await sheda.signup("client"), await sheda.signup("client")
    prop = await create_property(sheda, agent)
    assert (await sheda.api.post(f"/api/v1/users/{pest.id}/block", token=agent.token)).status == 201  # the agent blocks pest
    assert (await sheda.api.post(f"/api/v1/users/{agent.id}/block", token=shy.token)).status == 201  # shy blocks the agent
    agent_ws = await sheda.ws(agent.token)
    before = await leads_count(sheda)
    ip = from_ip()
    answers = []
    for user in (pest, shy):
        r = await sheda.api.post(INQ, inquiry(prop), token=user.token, headers=ip)
        assert r.status == 409 and r.json["code"] == "blocked", r
        answers.append(r.json)
    assert answers[0] == answers[1]  # no hint which side blocked
    assert await leads_count(sheda) == before
    start = len(agent_ws.frames)
    await agent_ws.send({"type": "ping"})
    await agent_ws.wait_for(lambda f: f.get("type") == "pong", start=start)
    assert [f for f in agent_ws.frames if f.get("type") in ("lead.created", "notification")] == []
    assert (await sheda.api.delete(f"/api/v1/users/{pest.id}/block", token=agent.token)).status == 204
    for _ in range(5):  # the refusals spent none of the address's five
        r = await sheda.api.post(INQ, inquiry(prop), token=pest.token, headers=ip)
        assert r.status == 201, r


async def test_at_most_five_inquiries_per_hour_from_one_address(sheda):
    agent = await sheda.signup("agent")
    prop = await create_property(sheda, agent)
    before = await leads_count(sheda)
    ip = "203.0.113.77"
    for _ in range(5):
        assert (await sheda.api.post(INQ, inquiry(prop), headers=from_ip(ip))).status == 201
    r = await sheda.api.post(INQ, inquiry(prop), headers=from_ip(ip))
    assert r.status == 429 and r.json["code"] == "rate_limited", r
    assert 3000 < int(r.headers["Retry-After"]) <= 3600
    # a signed-in sender from that address is limited too
    client = await sheda.signup("client")
    assert (await sheda.api.post(INQ, inquiry(prop), token=client.token, headers=from_ip(ip))).status == 429
    assert await leads_count(sheda) == before + 5
    # another address is not affected
    assert (await sheda.api.post(INQ, inquiry(prop), headers=from_ip("203.0.113.78"))).status == 201


@pytest.mark.parametrize("settings_overrides", [{"trust_proxy_headers": True, "inquiries_per_ip_per_hour": 2}])
async def test_the_limit_is_a_setting(sheda):
    agent = await sheda.signup("agent")
    prop = await create_property(sheda, agent)
    for expected in (201, 201, 429):
        assert (await sheda.api.post(INQ, inquiry(prop), headers=from_ip("203.0.113.90"))).status == expected
