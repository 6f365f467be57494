"""Inquiries about builders' projects (off-plan sales): a buyer asks about a published project, or one of its
units, through the same POST /inquiries as a listing; the project's builder gets it as a lead, live and as a
notification, works it in the same pipeline (GET /leads, status, notes) and answers the buyer in chat."""
from __future__ import annotations

import pytest

from tests.listing_helpers import create_property
from tests.support import walk_pages
from tests.test_builders import add_units, create_project, published_project, unit, verified_builder
from tests.test_inquiries import INQ, LEADS, from_ip, leads_count


@pytest.fixture
def settings_overrides():
    # Each test client picks its address (X-Forwarded-For), so one test's inquiries never use up another's limit.
    return {"trust_proxy_headers": True}


def ask(project: dict, **over) -> dict:
    return {"project_id": project["id"], "name": "Ada Buyer", "email": "ada@example.com", "phone": "+234 803 000 0000",
            "message": "Is a 2-bedroom still available off-plan? What is the payment plan?", **over}


async def builder_with_project(sheda, units=("A-101", "A-102")):
    builder = await verified_builder(sheda)
    project = await published_project(sheda, builder, name="Palm Court")
    added = await add_units(sheda, builder, project["id"], [unit(n) for n in units]) if units else []
    return builder, project, added


async def test_a_buyer_asks_about_a_project_and_a_unit_and_the_builder_works_the_lead(sheda):
    builder, project, units = await builder_with_project(sheda)
    buyer = await sheda.signup("client")
    builder_ws = await sheda.ws(builder.token)
    # anonymous, about the project
    r = await sheda.api.post(INQ, ask(project), headers=from_ip())
    assert r.status == 201, r
    assert r.json["project_id"] == project["id"] and r.json["unit_id"] is None and r.json["property_id"] is None, r
    anon_id = r.json["id"]
    event = await builder_ws.wait_type("lead.created")
    lead = event["lead"]
    assert lead["id"] == anon_id and lead["agent_id"] == builder.id and lead["user_id"] is None and lead["status"] == "new"
    assert lead["project_id"] == project["id"] and lead["unit_id"] is None and lead["property_id"] is None
    note = await builder_ws.wait_type("notification", kind="lead.created")
    assert note["data"] == {"lead_id": anon_id, "project_id": project["id"]} and "Palm Court" in note["body"], note
    # signed in, about one unit
    r = await sheda.api.post(INQ, ask(project, unit_id=units[1]["id"]), token=buyer.token, headers=from_ip())
    assert r.status == 201 and r.json["unit_id"] == units[1]["id"], r
    lead_id = r.json["id"]
    lead = (await builder_ws.wait_for(lambda f: f.get("type") == "lead.created" and f["lead"]["id"] == lead_id))["lead"]
    assert lead["unit_id"] == units[1]["id"] and lead["user_id"] == buyer.id
    note = await builder_ws.wait_for(lambda f: f.get("type") == "notification" and f["data"].get("lead_id") == lead_id)
    assert note["data"] == {"lead_id": lead_id, "project_id": project["id"], "unit_id": units[1]["id"]}
    assert "A-102" in note["body"], note
    stored = await sheda.api.get("/api/v1/notifications", token=builder.token)
    assert {n["data"].get("lead_id") for n in stored.json["items"] if n["kind"] == "lead.created"} == {anon_id, lead_id}
    # the builder's leads: the list, one lead, the status filter
    mine = await sheda.api.get(LEADS, token=builder.token)
    assert mine.status == 200 and [item["id"] for item in mine.json["items"]] == [lead_id, anon_id], mine
    assert mine.json["items"][0] == lead
    assert (await sheda.api.get(f"{LEADS}/{lead_id}", token=builder.token)).json == lead
    # answered in chat: the buyer gets it live, the lead becomes contacted
    buyer_ws = await sheda.ws(buyer.token)
    r = await sheda.api.post(f"{LEADS}/{lead_id}/conversation", {"message": "Hello Ada, A-102 is available"}, token=builder.token)
    assert r.status == 201, r
    assert r.json["lead"]["status"] == "contacted" and r.json["lead"]["conversation"]["message_id"] == r.json["message"]["id"]
    assert r.json["message"]["receiver_id"] == buyer.id and r.json["message"].get("property_id") is None
    frame = await buyer_ws.wait_type("message")
    assert frame["message"] == "Hello Ada, A-102 is available" and frame["sender_info"]["id"] == builder.id
    history = await sheda.api.get(f"/api/v1/chat/chat-history/{builder.id}", token=buyer.token)
    assert [m["message"] for m in history.json] == ["Hello Ada, A-102 is available"]
    again = await sheda.api.post(f"{LEADS}/{lead_id}/conversation", {"message": "again"}, token=builder.token)
    assert again.status == 409 and again.json["code"] == "conversation_exists", again
    r = await sheda.api.post(f"{LEADS}/{anon_id}/conversation", {"message": "hi"}, token=builder.token)
    assert r.status == 409 and r.json["code"] == "inquirer_not_registered", r
    # the pipeline: statuses, notes, the filter
    for status in ("qualified", "won"):
        r = await sheda.api.patch(f"{LEADS}/{lead_id}", {"status": status}, token=builder.token)
        assert r.status == 200 and r.json["status"] == status, r
    r = await sheda.api.patch(f"{LEADS}/{anon_id}", {"status": "won"}, token=builder.token)
    assert r.status == 409 and r.json["code"] == "invalid_transition", r
    r = await sheda.api.post(f"{LEADS}/{lead_id}/notes", {"text": "Booked A-102"}, token=builder.token)
    assert r.status == 201 and r.json["author_id"] == builder.id, r
    won = await sheda.api.get(LEADS, token=builder.token, params={"status": "won"})
    assert [item["id"] for item in won.json["items"]] == [lead_id]
    assert won.json["items"][0]["notes"][0]["text"] == "Booked A-102"


async def test_other_builders_agents_and_clients_cannot_see_or_work_a_project_lead(sheda):
    builder, project, _ = await builder_with_project(sheda, units=())
    admin = await sheda.admin()
    other_builder, agent, client = await verified_builder(sheda, admin), await sheda.signup("agent"), await sheda.signup("client")
    lead_id = (await sheda.api.post(INQ, ask(project), token=client.token, headers=from_ip())).json["id"]
    for who in (other_builder, agent):
        assert lead_id not in [i["id"] for i in (await sheda.api.get(LEADS, token=who.token)).json["items"]]
        assert (await sheda.api.get(f"{LEADS}/{lead_id}", token=who.token)).status == 404
        assert (await sheda.api.patch(f"{LEADS}/{lead_id}", {"status": "contacted"}, token=who.token)).status == 404
        assert (await sheda.api.post(f"{LEADS}/{lead_id}/notes", {"text": "mine"}, token=who.token)).status == 404
        assert (await sheda.api.post(f"{LEADS}/{lead_id}/conversation", {"message": "hi"}, token=who.token)).status == 404
    assert (await sheda.api.get(LEADS, token=client.token)).status == 403
    assert (await sheda.api.get(f"{LEADS}/{lead_id}", token=client.token)).status == 404
    assert (await sheda.api.post(f"{LEADS}/{lead_id}/conversation", {"message": "hi"}, token=client.token)).status == 403
    # admins see it and move it, but only its builder writes to the buyer
    assert (await sheda.api.get(f"{LEADS}/{lead_id}", token=admin.token)).json["project_id"] == project["id"]
    assert (await sheda.api.patch(f"{LEADS}/{lead_id}", {"status": "lost"}, token=admin.token)).json["status"] == "lost"
    assert (await sheda.api.get(f"{LEADS}/{lead_id}", token=builder.token)).json["status"] == "lost"


async def test_bad_project_inquiries_are_refused_naming_the_field_and_store_nothing(sheda):
    builder, project, units = await builder_with_project(sheda, units=("B-1",))
    _, elsewhere, other_units = await builder_with_project(sheda, units=("C-1",))
    draft = await create_project(sheda, builder, name="Not yet")
    agent = await sheda.signup("agent")
    prop = await create_property(sheda, agent)
    before = await leads_count(sheda)
    for body, field in [
        (ask(project, property_id=prop["id"]), "project_id"),      # both
        ({k: v for k, v in ask(project).items() if k != "project_id"}, "property_id"),  # neither
        (ask(project, project_id=None), "property_id"),
        (ask(project, project_id=None, unit_id=units[0]["id"]), "property_id"),
        (ask(project, project_id="1"), "project_id"), (ask(project, project_id=0), "project_id"),
        (ask(project, project_id=2**70), "project_id"), (ask(project, project_id=1.5), "project_id"),
        (ask(project, unit_id="x"), "unit_id"), (ask(project, unit_id=0), "unit_id"),
        (ask(project, unit_id=other_units[0]["id"]), "unit_id"),  # a unit of another project
        (ask(project, unit_id=999_999_999), "unit_id"),
        (ask(project, website="http://spam.example"), "website"), (ask(project, name="Ada\nB"), "name"),
        (ask(project, builder_id=builder.id), "builder_id"),
    ]:
        r = await sheda.api.post(INQ, body, headers=from_ip())
        assert r.status == 422 and r.json["code"] == "validation_error", (body, r)
        assert field in [e["field"] for e in r.json["errors"]], (body, r.json)
    # a unit with a listing is not a thing either
    r = await sheda.api.post(INQ, {**ask(project, unit_id=units[0]["id"]), "project_id": None, "property_id": prop["id"]},
                             headers=from_ip())
    assert r.status == 422 and [e["field"] for e in r.json["errors"]] == ["unit_id"], r
    # unknown and unpublished projects: 404, to their builder too
    for pid in (999_999_999, draft["id"]):
        r = await sheda.api.post(INQ, ask(project, project_id=pid), headers=from_ip())
        assert r.status == 404 and r.json["code"] == "project_not_found", r
    r = await sheda.api.post(INQ, ask(project, project_id=draft["id"]), token=builder.token, headers=from_ip())
    assert r.status == 404, r
    r = await sheda.api.post(INQ, ask(project), token=builder.token, headers=from_ip())
    assert r.status == 409 and r.json["code"] == "own_project", r
    assert await leads_count(sheda) == before
    assert elsewhere["id"] != project["id"]


async def test_a_signed_in_project_inquiry_across_a_block_is_refused_and_counts_nothing(sheda):
    builder, project, _ = await builder_with_project(sheda, units=())
    pest, shy = await sheda.signup("client"), await sheda.signup("client")
    assert (await sheda.api.post(f"/api/v1/users/{pest.id}/block", token=builder.token)).status == 201  # the builder blocks pest
    assert (await sheda.api.post(f"/api/v1/users/{builder.id}/block", token=shy.token)).status == 201  # shy blocks the builder
    before = await leads_count(sheda)
    ip = from_ip()
    answers = []
    for user in (pest, shy):
        r = await sheda.api.post(INQ, ask(project), token=user.token, headers=ip)
        assert r.status == 409 and r.json["code"] == "blocked", r
        answers.append(r.json)
    assert answers[0] == answers[1]  # no hint which side blocked
    assert await leads_count(sheda) == before
    assert (await sheda.api.delete(f"/api/v1/users/{pest.id}/block", token=builder.token)).status == 204
    for _ in range(5):  # the refusals spent none of the address's five
        assert (await sheda.api.post(INQ, ask(project), token=pest.token, headers=ip)).status == 201


async def test_a_project_whose_builder_is_not_active_takes_no_inquiry(sheda):
    """A listing leaves the listings with its agent's account, so nobody inquires about a deactivated agent's; a
    project stays published, and its inquiries were 201 and stored as leads nobody could read or answer (a
    deactivated account cannot sign in, a builder switched to client has no leads), the buyer told nothing. 409
    builder_inactive as for booking its units; nothing stored or counted against the address; taken again once
    the account is back."""
    builder, project, units = await builder_with_project(sheda, units=("I-1",))
    admin, buyer = await sheda.admin(), await sheda.signup("client")
    before = await leads_count(sheda)
    ip = from_ip()
    assert (await sheda.api.patch(f"/api/v1/admin/users/{builder.id}", {"is_active": False}, token=admin.token)).status == 200
    for token in (None, buyer.token):
        r = await sheda.api.post(INQ, ask(project, unit_id=units[0]["id"]), token=token, headers=ip)
        assert r.status == 409 and r.json["code"] == "builder_inactive", r
    assert (await sheda.api.patch(f"/api/v1/admin/users/{builder.id}", {"is_active": True}, token=admin.token)).status == 200
    login = await sheda.api.post("/api/v1/auth/login", {"username": builder.username, "password": builder.password})
    assert login.status == 200, login  # deactivation ended the builder's sessions
    r = await sheda.api.post("/api/v1/auth/switch-account", {"switch_to": "client"}, token=login.json["access_token"])
    assert r.status == 200, r
    as_client = r.json["access_token"]
    r = await sheda.api.post(INQ, ask(project), token=buyer.token, headers=ip)
    assert r.status == 409 and r.json["code"] == "builder_inactive", r
    assert await leads_count(sheda) == before
    assert (await sheda.api.post("/api/v1/auth/switch-account", {"switch_to": "builder"}, token=as_client)).status == 200
    for _ in range(5):  # the refusals spent none of the address's five
        r = await sheda.api.post(INQ, ask(project, unit_id=units[0]["id"]), token=buyer.token, headers=ip)
        assert r.status == 201, r


async def test_project_and_listing_inquiries_share_the_addresses_limit(sheda):
    _, project, _ = await builder_with_project(sheda, units=())
    agent = await sheda.signup("agent")
    prop = await create_property(sheda, agent)
    ip = "203.0.113.41"
    for i in range(5):
        body = ask(project) if i % 2 else {**ask(project), "project_id": None, "property_id": prop["id"]}
        assert (await sheda.api.post(INQ, body, headers=from_ip(ip))).status == 201
    r = await sheda.api.post(INQ, ask(project), headers=from_ip(ip))
    assert r.status == 429 and r.json["code"] == "rate_limited" and int(r.headers["Retry-After"]) >= 1, r


async def test_leads_stored_before_projects_took_inquiries_still_read(sheda):
    """A lead stored before (no project_id / unit_id fields) reads as a listing lead: both null."""
    agent = await sheda.signup("agent")
    prop = await create_property(sheda, agent)
    r = await sheda.api.post(INQ, {**ask({"id": 1}), "project_id": None, "property_id": prop["id"]}, headers=from_ip())
    assert r.status == 201 and r.json["property_id"] == prop["id"] and r.json["project_id"] is None and r.json["unit_id"] is None, r
    lead_id = r.json["id"]
    stored = await sheda.ctx.db["leads"].find_one({"_id": lead_id})
    assert "project_id" not in stored and "unit_id" not in stored  # listing leads are stored as before
    lead = (await sheda.api.get(f"{LEADS}/{lead_id}", token=agent.token)).json
    assert lead["property_id"] == prop["id"] and lead["project_id"] is None and lead["unit_id"] is None
    assert (await sheda.api.patch(f"{LEADS}/{lead_id}", {"status": "contacted"}, token=agent.token)).json["status"] == "contacted"


async def test_leads_filter_by_project_for_its_builder_and_admins_walking_that_projects_index(sheda):
    from tests.test_builders import _collscan, _winning_plan

    builder, palm, _ = await builder_with_project(sheda, units=())
    bay = await published_project(sheda, builder, name="Bay Towers")
    other_builder, theirs, _ = await builder_with_project(sheda, units=())
    admin = await sheda.admin()
    palm_ids = [(await sheda.api.post(INQ, ask(palm), headers=from_ip())).json["id"] for _ in range(5)]
    bay_id = (await sheda.api.post(INQ, ask(bay), headers=from_ip())).json["id"]
    their_id = (await sheda.api.post(INQ, ask(theirs), headers=from_ip())).json["id"]
    assert (await sheda.api.patch(f"{LEADS}/{palm_ids[1]}", {"status": "contacted"}, token=builder.token)).status == 200

    def walk(token, **params):
        return walk_pages(sheda.api, LEADS, token, **params)

    assert await walk(builder.token, project_id=palm["id"]) == sorted(palm_ids, reverse=True)
    assert await walk(builder.token, project_id=bay["id"]) == [bay_id]
    assert await walk(builder.token) == sorted(palm_ids + [bay_id], reverse=True)
    assert await walk(builder.token, project_id=palm["id"], status="contacted") == [palm_ids[1]]
    assert await walk(builder.token, project_id=palm["id"], status="new") == sorted(set(palm_ids) - {palm_ids[1]}, reverse=True)
    assert await walk(builder.token, project_id=theirs["id"]) == []  # not theirs: nothing, as for any other filter
    assert await walk(other_builder.token, project_id=palm["id"]) == []
    assert await walk(other_builder.token, project_id=theirs["id"]) == [their_id]
    assert await walk(admin.token, project_id=palm["id"]) == sorted(palm_ids, reverse=True)
    for params in ({"project_id": "x"}, {"project_id": "0"}, {"project_id": str(2**70)}):
        r = await sheda.api.get(LEADS, token=builder.token, params=params)
        assert r.status == 422 and [e["field"] for e in r.json["errors"]] == ["project_id"], (params, r)
    # the pages walk the project's own index, never the collection (the embedded planner's rule)
    db = sheda.ctx.db
    for flt in ({"project_id": palm["id"]}, {"project_id": palm["id"], "_id": {"$lt": palm_ids[-1]}}):
        explained = await db.command("explain", {"find": "leads", "filter": flt, "sort": {"_id": -1}}, verbosity="queryPlanner")
        assert not _collscan(_winning_plan(explained)), (flt, explained)
        pipeline = [{"$match": flt}, {"$match": {"agent_id": builder.id, "status": "new"}}, {"$sort": {"_id": -1}}, {"$limit": 3}]
        explained = await db.command("explain", {"aggregate": "leads", "pipeline": pipeline, "cursor": {}}, verbosity="queryPlanner")
        assert not _collscan(_winning_plan(explained)), (pipeline, explained)
