"""An agent's own listings (GET /users/me/properties) and fixing an unlisted listing before listing it again.

The agent sees every listing of theirs, listed or not, available, sold or rented, newest first, narrowed by
`status` and `listed`, in cursor pages; nobody else's. An unlisted listing that is still available can be
changed (PATCH, images) by its agent and stays unlisted; saved searches hear nothing of it until it is listed
again ("relisted", once). A listing hidden with its agent's account, or unlisted and sold, still refuses (409)."""
from __future__ import annotations

from tests.listing_helpers import create_property, word
from tests.support import PNG_1PX, multipart
from tests.test_saved_searches import alerts_of, save, settle

API = "/api/v1/properties"
MINE = "/api/v1/users/me/properties"


async def walk(sheda, user, limit: int, **params) -> list[int]:
    """Every page of my listings, following next_cursor; the ids in the order served."""
    ids, cursor = [], None
    for _ in range(100):
        r = await sheda.api.get(MINE, params={"limit": limit, **params, **({"cursor": cursor} if cursor else {})}, token=user.token)
        assert r.status == 200, r
        assert len(r.json["items"]) <= limit
        ids += [p["id"] for p in r.json["items"]]
        cursor = r.json["next_cursor"]
        if cursor is None:
            return ids
    raise AssertionError("the pages never ended")


async def set_active(sheda, user, pid: int, active: bool):
    r = await sheda.api.patch(f"{API}/{pid}/status", {"active": active}, token=user.token)
    assert r.status == 200 and r.json["is_active"] is active, r
    return r.json


def _collscan(explained) -> bool:
    return "COLLSCAN" in repr(explained)


async def test_my_listings_in_every_state_filtered_and_paged(sheda):
    agent, other = await sheda.signup("agent"), await sheda.signup("agent")
    client, builder = await sheda.signup("client"), await sheda.signup("builder")
    w = word()
    props = [await create_property(sheda, agent, location=f"{w} Lekki", title=f"mine {i}") for i in range(7)]
    theirs = [await create_property(sheda, other, location=f"{w} Ikoyi") for _ in range(2)]
    ids = [p["id"] for p in props]
    # States: two unlisted by the agent, one rented (listed), one sold and then unlisted. Contracts set status;
    # here it is written directly, as the agent-deactivation scenarios do.
    col = sheda.ctx.db["properties"]
    rented, sold, unlisted = ids[1], ids[3], ids[5]
    await col.update_one({"_id": rented}, {"$set": {"status": "rented"}})
    await col.update_one({"_id": sold}, {"$set": {"status": "sold"}})
    await set_active(sheda, agent, sold, False)
    await set_active(sheda, agent, unlisted, False)

    newest_first = sorted(ids, reverse=True)
    for limit in (1, 2, 3, 7, 100):  # every page size: no repeats, no gaps, newest first
        assert await walk(sheda, agent, limit) == newest_first, limit
    first = await sheda.api.get(MINE, token=agent.token)  # limit 20 by default: one page
    assert first.status == 200 and first.json["next_cursor"] is None and [p["id"] for p in first.json["items"]] == newest_first
    # each item is the listing as GET /properties/{id} shows it to its agent
    by_id = {p["id"]: p for p in first.json["items"]}
    for pid in (sold, unlisted, rented):
        assert by_id[pid] == (await sheda.api.get(f"{API}/{pid}", token=agent.token)).json
    assert by_id[sold]["is_active"] is False and by_id[sold]["status"] == "sold" and by_id[sold]["hidden_reason"] is None
    assert by_id[rented]["is_active"] is True and by_id[rented]["status"] == "rented"

    # filters, alone and together, through every page
    available_listed = [i for i in newest_first if i not in (rented, sold, unlisted)]
    for params, expected in (({"status": "sold"}, [sold]), ({"status": "rented"}, [rented]),
                             ({"status": "available"}, [i for i in newest_first if i not in (rented, sold)]),
                             ({"listed": "false"}, sorted([sold, unlisted], reverse=True)),
                             ({"listed": "true"}, [i for i in newest_first if i not in (sold, unlisted)]),
                             ({"listed": "false", "status": "available"}, [unlisted]),
                             ({"listed": "true", "status": "available"}, available_listed),
                             ({"listed": "true", "status": "sold"}, [])):
        assert await walk(sheda, agent, 2, **params) == expected, params
        assert await walk(sheda, agent, 1, **params) == expected, params

    # another agent's listings never appear, in either list
    assert await walk(sheda, other, 1) == sorted((p["id"] for p in theirs), reverse=True)
    assert await walk(sheda, other, 5, listed="false") == []

    # who may ask, and bad input
    for user in (client, builder):
        r = await sheda.api.get(MINE, token=user.token)
        assert r.status == 403 and r.json["code"] == "insufficient_scope", r
    r = await sheda.api.get(MINE)
    assert r.status == 401 and r.headers.get("WWW-Authenticate", "").startswith("Bearer"), r
    for params, field in (({"status": "gone"}, "status"), ({"listed": "maybe"}, "listed"), ({"limit": 101}, "limit"),
                          ({"limit": 0}, "limit"), ({"cursor": "not-a-cursor"}, "cursor"), ({"agent_id": other.id}, "agent_id")):
        r = await sheda.api.get(MINE, params=params, token=agent.token)
        assert r.status == 422 and [e["field"] for e in r.json["errors"]] == [field], (params, r.json)
    # a cursor of one filter continues another as a plain position: still the agent's own listings only
    page = await sheda.api.get(MINE, params={"limit": 2, "status": "available"}, token=agent.token)
    r = await sheda.api.get(MINE, params={"limit": 100, "cursor": page.json["next_cursor"]}, token=other.token)
    assert r.status == 200 and {p["id"] for p in r.json["items"]} <= {p["id"] for p in theirs}, r


async def test_every_page_of_my_listings_is_served_by_an_index(sheda):
    """The embedded database walks an index only when every condition of a filter is one of its keys: the agent
    and the cursor's `_id` range are (index agent_newest); `status` and `listed` are a second `$match` over those."""
    agent = await sheda.signup("agent")
    props = [await create_property(sheda, agent, location=f"{word()} Lekki") for _ in range(3)]
    page = await sheda.api.get(MINE, params={"limit": 1}, token=agent.token)
    cursor = page.json["next_cursor"]
    db, store = sheda.ctx.db, sheda.ctx.properties.store
    from sheda_rt.pagination import page_filter
    for c in (None, cursor):
        flt = page_filter({"agent_id": agent.id}, store.MINE_SORT, c)
        explained = await db.command("explain", {"find": "properties", "filter": flt, "sort": {"_id": -1}, "limit": 21},
                                     verbosity="queryPlanner")
        assert not _collscan(explained) and "agent_newest" in repr(explained), explained
        pipeline = [{"$match": flt}, {"$match": {"status": "available", "is_active": False}}, {"$sort": {"_id": -1}}, {"$limit": 21}]
        explained = await db.command("explain", {"aggregate": "properties", "pipeline": pipeline, "cursor": {}}, verbosity="queryPlanner")
        assert not _collscan(explained) and "agent_newest" in repr(explained), explained
    assert len(await walk(sheda, agent, 1)) == len(props)


async def test_an_unlisted_listing_is_fixed_without_alerts_then_relisted_with_one(sheda):
    agent, buyer = await sheda.signup("agent"), await sheda.signup("client")
    area = word()
    search = await save(sheda, buyer, name="Cheap rent", location=area, listing_type="rent", price_max="3000000")
    prop = await create_property(sheda, agent, location=f"{area} Phase 1, Lagos", price="4000000")  # too dear: no alert
    pid = prop["id"]
    await set_active(sheda, agent, pid, False)
    ws = await sheda.ws(buyer.token)

    # the owner fixes it while it is off the market: price (a drop into the search's range), text, photos
    r = await sheda.api.patch(f"{API}/{pid}", {"price": "2500000", "title": "Fixed title", "description": "Repainted"},
                              token=agent.token)
    assert r.status == 200, r
    assert r.json["is_active"] is False and r.json["price"] == "2500000.00" and r.json["title"] == "Fixed title"
    assert [(h["old_price"], h["new_price"]) for h in r.json["price_history"]] == [("4000000.00", "2500000.00")]
    body, headers = multipart("file", "a.png", PNG_1PX, "image/png")
    r = await sheda.api.post(f"{API}/{pid}/images", body=body, headers=headers, token=agent.token)
    assert r.status == 201 and r.json["property"]["is_active"] is False and r.json["image"]["is_primary"] is True, r
    first = r.json["image"]["id"]
    r = await sheda.api.post(f"{API}/{pid}/images", body=body, headers=headers, token=agent.token)
    assert r.status == 201, r
    # and enhances a photo, as it may upload one (it was 409 property_delisted)
    r = await sheda.api.post(f"{API}/{pid}/images/{r.json['image']['id']}/enhance", token=agent.token)
    assert r.status == 202 and r.json["status"] == "processing", r
    assert (await sheda.api.delete(f"{API}/{pid}/images/{first}", token=agent.token)).status == 204
    # still unlisted: 404 to others, out of search; and no saved-search alert for the drop
    assert (await sheda.api.get(f"{API}/{pid}", token=buyer.token)).status == 404
    assert pid not in {p["id"] for p in (await sheda.api.get(API, params={"location": area})).json["items"]}
    await settle(sheda)
    assert await alerts_of(sheda, buyer) == []
    jobs = sheda.ctx.db["jobs"]
    reasons = [j["payload"]["reason"] for j in await jobs.find({"kind": "saved_search.match", "payload.property_id": pid}).to_list()]
    assert reasons == ["new"], reasons  # its creation's (it matched nobody); no price_drop
    assert "alert_pending" not in await sheda.ctx.db["properties"].find_one({"_id": pid})

    # listed again: one alert, "relisted", with the fixed listing
    listed = await set_active(sheda, agent, pid, True)
    assert listed["title"] == "Fixed title" and len(listed["images"]) == 1
    frame = await ws.wait_type("notification", kind="saved_search.match")
    assert frame["data"] == {"property_id": pid, "saved_search_id": search["id"], "reason": "relisted"}, frame
    await settle(sheda)
    assert [a["data"]["reason"] for a in await alerts_of(sheda, buyer)] == ["relisted"]
    await jobs.delete_many({"kind": "saved_search.match", "payload.property_id": pid})


async def test_what_still_cannot_be_changed_while_unlisted_is_409(sheda):
    agent, admin = await sheda.signup("agent"), await sheda.admin()
    w = word()
    body, headers = multipart("file", "a.png", PNG_1PX, "image/png")
    # unlisted and sold: it cannot be listed again, so it is not edited either
    sold = await create_property(sheda, agent, location=f"{w} Lekki")
    await sheda.ctx.db["properties"].update_one({"_id": sold["id"]}, {"$set": {"status": "sold"}})
    await set_active(sheda, agent, sold["id"], False)
    stored = await sheda.ctx.db["properties"].find_one({"_id": sold["id"]})
    r = await sheda.api.patch(f"{API}/{sold['id']}", {"title": "x"}, token=agent.token)
    assert r.status == 409 and r.json["code"] == "property_delisted" and r.json["status"] == "sold", r
    r = await sheda.api.post(f"{API}/{sold['id']}/images", body=body, headers=headers, token=agent.token)
    assert r.status == 409 and r.json["code"] == "property_delisted", r
    r = await sheda.api.post(f"{API}/{sold['id']}/images/1/enhance", token=agent.token)
    assert r.status == 409 and r.json["code"] == "property_delisted" and r.json["status"] == "sold", r
    assert await sheda.ctx.db["properties"].find_one({"_id": sold["id"]}) == stored

    # hidden with its agent's deactivated account: not even an admin edits it (it follows the account)
    hidden = await create_property(sheda, agent, location=f"{w} Ikoyi")
    r = await sheda.api.patch(f"/api/v1/admin/users/{agent.id}", {"is_active": False}, token=admin.token)
    assert r.status == 200, r
    await sheda.ctx.agent_listings.drain()
    seen = await sheda.api.get(f"{API}/{hidden['id']}", token=admin.token)
    assert seen.json["hidden_reason"] == "agent_inactive", seen
    r = await sheda.api.patch(f"{API}/{hidden['id']}", {"title": "x"}, token=admin.token)
    assert r.status == 409 and r.json["code"] == "property_delisted" and r.json["hidden_reason"] == "agent_inactive", r
    r = await sheda.api.post(f"{API}/{hidden['id']}/images", body=body, headers=headers, token=admin.token)
    assert r.status == 409 and r.json["code"] == "property_delisted", r
    r = await sheda.api.post(f"{API}/{hidden['id']}/images/1/enhance", token=admin.token)
    assert r.status == 409 and r.json["code"] == "property_delisted" and r.json["hidden_reason"] == "agent_inactive", r
    r = await sheda.api.patch(f"/api/v1/admin/users/{agent.id}", {"is_active": True}, token=admin.token)
    assert r.status == 200, r
    await sheda.ctx.agent_listings.drain()
