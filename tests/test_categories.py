"""Categories (admin-managed, public to read, kept while in use) and a listing's life cycle:
unlist and list again, price history."""
from __future__ import annotations

import asyncio

from tests.listing_helpers import create_property, listing, snapshot, word
from tests.test_contracts import rental_ready

CATS = "/api/v1/categories"
API = "/api/v1/properties"


async def new_category(sheda, admin, name=None, **over) -> dict:
    r = await sheda.api.post(CATS, {"name": name or f"Cat {word()}", **over}, token=admin.token)
    assert r.status == 201, r
    return r.json


async def test_admins_manage_categories_and_everyone_reads_them(sheda):
    admin = await sheda.admin()
    agent = await sheda.signup("agent")
    name = f"Student housing {word()}"
    r = await sheda.api.post(CATS, {"name": name, "description": "Near campuses"}, token=admin.token)
    assert r.status == 201, r
    cat = r.json
    assert cat["name"] == name and cat["description"] == "Near campuses" and cat["listings"] == 0
    assert cat["created_at"].endswith("Z")
    # public reads, paged
    r = await sheda.api.get(f"{CATS}/{cat['id']}")
    assert r.status == 200 and r.json == cat
    seen, cursor = [], None
    while True:
        r = await sheda.api.get(CATS, params={"limit": 2, **({"cursor": cursor} if cursor else {})})
        assert r.status == 200, r
        seen += r.json["items"]
        cursor = r.json["next_cursor"]
        if not cursor:
            break
    assert cat in seen
    # rename; names are unique ignoring case, accents and spacing
    other = await new_category(sheda, admin)
    r = await sheda.api.patch(f"{CATS}/{other['id']}", {"name": "  " + name.upper().replace(" ", "   ") + " "}, token=admin.token)
    assert r.status == 409 and r.json["code"] == "category_exists", r
    r = await sheda.api.post(CATS, {"name": name.replace("Student", "Stúdent")}, token=admin.token)
    assert r.status == 409 and r.json["code"] == "category_exists", r
    r = await sheda.api.patch(f"{CATS}/{other['id']}", {"description": "Big houses"}, token=admin.token)
    assert r.status == 200 and r.json["description"] == "Big houses" and r.json["name"] == other["name"]
    # only admins write
    for token, status in ((None, 401), (agent.token, 403)):
        assert (await sheda.api.post(CATS, {"name": f"x{word()}"}, token=token)).status == status
        assert (await sheda.api.patch(f"{CATS}/{cat['id']}", {"name": f"x{word()}"}, token=token)).status == status
        assert (await sheda.api.delete(f"{CATS}/{cat['id']}", token=token)).status == status
    # an unused category is deleted
    assert (await sheda.api.delete(f"{CATS}/{other['id']}", token=admin.token)).status == 204
    assert (await sheda.api.get(f"{CATS}/{other['id']}")).status == 404
    assert (await sheda.api.delete(f"{CATS}/{other['id']}", token=admin.token)).status == 404
    assert (await sheda.api.patch(f"{CATS}/{other['id']}", {"name": "back"}, token=admin.token)).status == 404


async def test_bad_category_input_is_422_and_stores_nothing(sheda):
    admin = await sheda.admin()
    cat = await new_category(sheda, admin)
    before = await sheda.ctx.db["categories"].count_documents({})
    for body in ({}, {"name": ""}, {"name": "   "}, {"name": "x" * 61}, {"name": 5}, {"name": None}, {"name": "ok", "extra": 1},
                 {"name": "ok", "description": "d" * 501}, ["name"]):
        r = await sheda.api.post(CATS, body, token=admin.token)
        assert r.status == 422, (body, r)
    for body in ({}, {"name": None}, {"description": None}, {"name": ""}, {"listings": 3}):
        r = await sheda.api.patch(f"{CATS}/{cat['id']}", body, token=admin.token)
        assert r.status == 422, (body, r)
        if body and None in body.values():  # a null names its field, not "body"
            assert [e["field"] for e in r.json["errors"]] == list(body), (body, r.json)
    assert await sheda.ctx.db["categories"].count_documents({}) == before
    assert (await sheda.api.get(f"{CATS}/{cat['id']}")).json == cat
    for params in ({"limit": "0"}, {"cursor": "nonsense"}, {"sort": "name"}):
        assert (await sheda.api.get(CATS, params=params)).status == 422


async def test_listings_carry_a_category_filter_by_it_and_a_used_category_is_kept(sheda):
    admin = await sheda.admin()
    agent = await sheda.signup("agent")
    luxury, student = await new_category(sheda, admin), await new_category(sheda, admin)
    w = word()
    a = await create_property(sheda, agent, location=f"{w} a", category_id=luxury["id"])
    b = await create_property(sheda, agent, location=f"{w} b", category_id=luxury["id"], listing_type="sale")
    c = await create_property(sheda, agent, location=f"{w} c")
    assert a["category_id"] == luxury["id"] and c["category_id"] is None

    async def ids(**params):
        r = await sheda.api.get(API, params={"location": w, **params})
        assert r.status == 200, r
        return {p["id"] for p in r.json["items"]}

    assert await ids(category_id=luxury["id"]) == {a["id"], b["id"]}
    assert await ids(category_id=luxury["id"], listing_type="sale") == {b["id"]}
    assert await ids(category_id=student["id"]) == set()
    r = await sheda.api.get(API, params={"category_id": luxury["id"]})  # the category alone drives the search
    assert {p["id"] for p in r.json["items"]} == {a["id"], b["id"]}
    assert (await sheda.api.get(f"{CATS}/{luxury['id']}")).json["listings"] == 2

    # unknown category: 422, nothing stored or changed
    before = await sheda.ctx.db["properties"].count_documents({"agent_id": agent.id})
    r = await sheda.api.post(API, listing(location=f"{w} d", category_id=999_999_999), token=agent.token)
    assert r.status == 422 and r.json["errors"][0]["field"] == "category_id", r
    for bad in ("1", 0, -1, True, 2**70):
        assert (await sheda.api.post(API, listing(category_id=bad), token=agent.token)).status == 422, bad
    assert await sheda.ctx.db["properties"].count_documents({"agent_id": agent.id}) == before
    stored = await snapshot(sheda, "properties", c["id"])
    r = await sheda.api.patch(f"{API}/{c['id']}", {"category_id": 999_999_999}, token=agent.token)
    assert r.status == 422, r
    assert await snapshot(sheda, "properties", c["id"]) == stored

    # in use: cannot be deleted
    r = await sheda.api.delete(f"{CATS}/{luxury['id']}", token=admin.token)
    assert r.status == 409 and r.json["code"] == "category_in_use" and r.json["listings"] == 2, r
    # moving and removing update the counts; an unlisted listing still uses its category
    r = await sheda.api.patch(f"{API}/{a['id']}", {"category_id": student["id"]}, token=agent.token)
    assert r.status == 200 and r.json["category_id"] == student["id"], r
    assert await ids(category_id=student["id"]) == {a["id"]}
    r = await sheda.api.patch(f"{API}/{b['id']}", {"category_id": None}, token=agent.token)
    assert r.status == 200 and r.json["category_id"] is None, r
    assert (await sheda.api.get(f"{CATS}/{luxury['id']}")).json["listings"] == 0
    assert (await sheda.api.get(f"{CATS}/{student['id']}")).json["listings"] == 1
    assert (await sheda.api.delete(f"{API}/{a['id']}", token=agent.token)).status == 204
    assert (await sheda.api.delete(f"{CATS}/{student['id']}", token=admin.token)).status == 409
    assert (await sheda.api.delete(f"{CATS}/{luxury['id']}", token=admin.token)).status == 204
    r = await sheda.api.post(API, listing(category_id=luxury["id"]), token=agent.token)
    assert r.status == 422, r


async def test_a_category_deleted_while_listings_are_created_with_it_is_never_left_dangling(sheda):
    admin = await sheda.admin()
    agent = await sheda.signup("agent")
    for _ in range(3):
        cat = await new_category(sheda, admin)
        results = await asyncio.gather(
            sheda.api.delete(f"{CATS}/{cat['id']}", token=admin.token),
            *(sheda.api.post(API, listing(category_id=cat["id"]), token=agent.token) for _ in range(4)))
        deleted = results[0].status == 204
        created = [r for r in results[1:] if r.status == 201]
        assert all(r.status in (201, 422) for r in results[1:]), results
        assert results[0].status in (204, 409), results[0]
        if deleted:
            assert await sheda.ctx.db["properties"].count_documents({"category_id": cat["id"]}) == 0
        else:
            assert created and (await sheda.api.get(f"{CATS}/{cat['id']}")).json["listings"] == len(created)


async def test_the_owner_or_an_admin_unlists_and_lists_again(sheda):
    admin = await sheda.admin()
    agent = await sheda.signup("agent")
    other = await sheda.signup("agent")
    w = word()
    prop = await create_property(sheda, agent, location=f"{w} x")
    status = f"{API}/{prop['id']}/status"

    async def found():
        return [p["id"] for p in (await sheda.api.get(API, params={"location": w})).json["items"]]

    r = await sheda.api.patch(status, {"active": False}, token=agent.token)
    assert r.status == 200 and r.json["is_active"] is False, r
    assert await found() == [] and (await sheda.api.get(f"{API}/{prop['id']}")).status == 404
    assert (await sheda.api.patch(status, {"active": False}, token=agent.token)).json["is_active"] is False  # idempotent
    assert (await sheda.api.patch(status, {"active": True}, token=other.token)).status == 404  # unlisted: others do not see it
    assert (await sheda.api.patch(status, {"active": True})).status == 401
    for body in ({}, {"active": "yes"}, {"active": 1}, {"active": None}, {"active": True, "status": "sold"}):
        assert (await sheda.api.patch(status, body, token=agent.token)).status == 422, body
    r = await sheda.api.patch(status, {"active": True}, token=agent.token)
    assert r.status == 200 and r.json["is_active"] is True, r
    assert await found() == [prop["id"]] and (await sheda.api.get(f"{API}/{prop['id']}")).status == 200
    assert (await sheda.api.patch(status, {"active": True}, token=agent.token)).status == 200  # idempotent
    assert (await sheda.api.patch(status, {"active": False}, token=other.token)).status == 403
    assert await found() == [prop["id"]]
    # an admin too; DELETE is the same unlisting
    assert (await sheda.api.delete(f"{API}/{prop['id']}", token=agent.token)).status == 204
    r = await sheda.api.patch(status, {"active": True}, token=admin.token)
    assert r.status == 200 and r.json["is_active"] is True, r
    assert (await sheda.api.patch(f"{API}/999999999/status", {"active": True}, token=admin.token)).status == 404


async def test_a_sold_property_cannot_be_listed_again(sheda):
    agent, prop, [(client, appt)] = await rental_ready(sheda, listing_type="sale")
    r = await sheda.api.post(f"/api/v1/contracts/{prop['id']}", {"appointment_id": appt["id"]}, token=client.token)
    assert r.status == 201, r
    cid = r.json["id"]
    assert (await sheda.api.patch(f"/api/v1/contracts/{cid}/payment-sent", token=client.token)).status == 200
    assert (await sheda.api.patch(f"/api/v1/contracts/{cid}/confirm-payment", token=agent.token)).status == 200
    status = f"{API}/{prop['id']}/status"
    r = await sheda.api.patch(status, {"active": False}, token=agent.token)
    assert r.status == 200 and r.json["status"] == "sold" and r.json["is_active"] is False
    stored = await snapshot(sheda, "properties", prop["id"])
    r = await sheda.api.patch(status, {"active": True}, token=agent.token)
    assert r.status == 409 and r.json["code"] == "property_not_available" and r.json["status"] == "sold", r
    assert await snapshot(sheda, "properties", prop["id"]) == stored


async def test_price_changes_are_kept_as_price_history(sheda):
    agent = await sheda.signup("agent")
    prop = await create_property(sheda, agent, price="2500000.00")
    assert prop["price_history"] == []
    r = await sheda.api.patch(f"{API}/{prop['id']}", {"price": "2300000"}, token=agent.token)
    assert r.status == 200, r
    sheda.ctx.clock.advance(seconds=5)
    r = await sheda.api.patch(f"{API}/{prop['id']}", {"price": "2300000.00", "title": "Same price"}, token=agent.token)  # no change
    r = await sheda.api.patch(f"{API}/{prop['id']}", {"price": "2400000.50"}, token=agent.token)
    history = r.json["price_history"]
    assert [(h["old_price"], h["new_price"]) for h in history] == [("2500000.00", "2300000.00"), ("2300000.00", "2400000.50")]
    assert history[0]["changed_at"] < history[1]["changed_at"]
    assert (await sheda.api.get(f"{API}/{prop['id']}")).json["price_history"] == history
