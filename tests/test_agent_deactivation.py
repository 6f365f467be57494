"""An agent's listings follow their account: deactivated (by themselves, an admin or a moderator), their listed
listings leave every search and are 404 to all but admins; reactivated by an admin, exactly those come back (the
ones the agent had unlisted themselves stay unlisted). Another agent's listings never change."""
from __future__ import annotations

import asyncio

from tests.listing_helpers import another_server, create_property, start_and_stop, word
from tests.support import eventually

API = "/api/v1/properties"


async def found(sheda, w: str, **params) -> set[int]:
    query = "&".join(f"{k}={v}" for k, v in {"location": w, "limit": 100, **params}.items())
    r = await sheda.api.get(f"{API}?{query}")
    assert r.status == 200, r
    return {p["id"] for p in r.json["items"]}


async def agent_with_listings(sheda, w: str):
    agent = await sheda.signup("agent")
    listed = [await create_property(sheda, agent, location=f"{w} Lekki", title=f"listed {i}") for i in range(2)]
    own = await create_property(sheda, agent, location=f"{w} Lekki", title="unlisted by its agent")
    r = await sheda.api.patch(f"{API}/{own['id']}/status", {"active": False}, token=agent.token)
    assert r.status == 200 and r.json["is_active"] is False and r.json["hidden_reason"] is None, r
    return agent, listed, own


async def test_deactivated_by_an_admin_then_reactivated(sheda):
    w = word()
    admin = await sheda.admin()
    client = await sheda.signup("client")
    agent, listed, own = await agent_with_listings(sheda, w)
    other = await sheda.signup("agent")
    theirs = await create_property(sheda, other, location=f"{w} Ikoyi")
    ids = {p["id"] for p in listed}
    # one of them rented: it is hidden too, and comes back rented (as it was)
    rented = await create_property(sheda, agent, location=f"{w} Lekki", title="rented")
    await sheda.ctx.db["properties"].update_one({"_id": rented["id"]}, {"$set": {"status": "rented"}})
    assert await found(sheda, w, status="rented") == {rented["id"]}
    assert (await sheda.api.post(f"{API}/{listed[0]['id']}/favourite", token=client.token)).status == 201
    assert await found(sheda, w) == ids | {theirs["id"]}
    before_theirs = (await sheda.api.get(f"{API}/{theirs['id']}")).json

    r = await sheda.api.patch(f"/api/v1/admin/users/{agent.id}", {"is_active": False}, token=admin.token)
    assert r.status == 200 and r.json["is_active"] is False, r
    await eventually(lambda: _gone(sheda, w, ids | {rented["id"]}))
    assert await found(sheda, w) == {theirs["id"]}
    assert await found(sheda, w, status="rented") == set()
    assert await found(sheda, w, agent_id=agent.id) == set()
    for p in listed + [rented]:
        for token in (client.token, None):
            r = await sheda.api.get(f"{API}/{p['id']}", token=token)
            assert r.status == 404 and r.json["code"] == "property_not_found", r
        r = await sheda.api.get(f"{API}/{p['id']}", token=admin.token)  # admins still see it, and why it is hidden
        assert r.status == 200 and r.json["is_active"] is False and r.json["hidden_reason"] == "agent_inactive", r
    r = await sheda.api.get(f"{API}/{own['id']}", token=admin.token)
    assert r.json["is_active"] is False and r.json["hidden_reason"] is None  # told apart from the agent's own unlisting
    favs = (await sheda.api.get("/api/v1/users/me/favourites", token=client.token)).json["items"]
    assert [f["property"] for f in favs if f["property_id"] == listed[0]["id"]] == [None]
    r = await sheda.api.post(f"{API}/{listed[1]['id']}/favourite", token=client.token)
    assert r.status == 404, r

    # an admin unlists one of the hidden ones on purpose: it stays unlisted when the account comes back
    r = await sheda.api.patch(f"{API}/{listed[1]['id']}/status", {"active": False}, token=admin.token)
    assert r.status == 200 and r.json["is_active"] is False and r.json["hidden_reason"] is None, r

    alerts_before = await sheda.ctx.db["jobs"].count_documents({"kind": "saved_search.match"})
    r = await sheda.api.patch(f"/api/v1/admin/users/{agent.id}", {"is_active": True}, token=admin.token)
    assert r.status == 200 and r.json["is_active"] is True, r
    back = {listed[0]["id"]}
    await eventually(lambda: _back(sheda, w, back | {theirs["id"]}))
    assert await found(sheda, w, status="rented") == {rented["id"]}
    r = await sheda.api.get(f"{API}/{listed[0]['id']}", token=client.token)
    assert r.status == 200 and r.json["is_active"] is True and r.json["hidden_reason"] is None, r
    for p in (own, listed[1]):  # unlisted by its agent, unlisted by an admin: still unlisted
        assert (await sheda.api.get(f"{API}/{p['id']}", token=client.token)).status == 404
    r = await sheda.api.get(f"/api/v1/agents/{agent.id}")
    assert r.status == 200 and {p["id"] for p in r.json["listings"]} == back, r
    # coming back is not news to saved searches: no "relisted" alert job
    assert await sheda.ctx.db["jobs"].count_documents({"kind": "saved_search.match"}) == alerts_before
    # the other agent's listing never changed
    assert (await sheda.api.get(f"{API}/{theirs['id']}")).json == before_theirs


async def _gone(sheda, w, ids) -> bool:
    return not (await found(sheda, w)) & ids and not (await found(sheda, w, status="rented")) & ids


async def _back(sheda, w, ids) -> bool:
    return await found(sheda, w) == ids


async def test_deactivated_by_themselves(sheda):
    w = word()
    admin = await sheda.admin()
    agent, listed, own = await agent_with_listings(sheda, w)
    ids = {p["id"] for p in listed}
    assert (await sheda.api.delete("/api/v1/users/me", token=agent.token)).status == 204
    await eventually(lambda: _back(sheda, w, set()))
    r = await sheda.api.get(f"{API}/{listed[0]['id']}")
    assert r.status == 404, r
    assert (await sheda.api.get(f"/api/v1/agents/{agent.id}")).status == 404
    r = await sheda.api.patch(f"/api/v1/admin/users/{agent.id}", {"is_active": True}, token=admin.token)
    assert r.status == 200, r
    await eventually(lambda: _back(sheda, w, ids))
    assert (await sheda.api.get(f"{API}/{own['id']}")).status == 404


async def test_an_agent_who_switches_to_client_takes_their_listings_along(sheda):
    # switch-account away from agent left the listings on the market while the account had no agent profile,
    # no availability (both 404) and could neither answer a viewing nor change the listing (403 not_owner).
    w = word()
    admin = await sheda.admin()
    agent, listed, own = await agent_with_listings(sheda, w)
    ids = {p["id"] for p in listed}
    for to in ("client", "builder"):
        r = await sheda.api.post("/api/v1/auth/switch-account", {"switch_to": to}, token=agent.token)
        assert r.status == 200, r
        await eventually(lambda: _back(sheda, w, set()))
        r = await sheda.api.get(f"{API}/{listed[0]['id']}", token=admin.token)
        assert r.json["is_active"] is False and r.json["hidden_reason"] == "agent_inactive", r
        assert (await sheda.api.get(f"{API}/{listed[0]['id']}")).status == 404
        r = await sheda.api.post("/api/v1/auth/switch-account", {"switch_to": "agent"}, token=agent.token)
        assert r.status == 200, r
        await eventually(lambda: _back(sheda, w, ids))
        assert (await sheda.api.get(f"{API}/{own['id']}")).status == 404  # unlisted by the agent: stays so
    # Switching between the other types changes nothing for the listings (a client to a builder has none).
    client = await sheda.signup("client")
    assert (await sheda.api.post("/api/v1/auth/switch-account", {"switch_to": "builder"}, token=client.token)).status == 200
    assert await found(sheda, w) == ids


async def test_a_process_dying_after_the_deactivation_leaves_a_job_that_hides_them(sheda):
    """The job is queued before the account's write: a process killed between the write and the run leaves
    it pending, and whichever process's runner finds it due does the work."""
    w = word()
    agent, listed, _own = await agent_with_listings(sheda, w)
    ids = {p["id"] for p in listed}
    ctx = sheda.ctx
    key = await ctx.agent_listings.changing(agent.id)  # what deactivate does first ...
    await ctx.users.revoke_all_tokens(agent.id, {"is_active": False})  # ... its write, then the process dies
    assert await found(sheda, w) == ids
    sheda.ctx.clock.advance(seconds=31)
    await ctx.job_runner.run_due()
    job = await ctx.db["jobs"].find_one({"_id": key})
    assert job["status"] == "done" and job["result"] == {"outcome": "hidden", "listings": 2}, job
    assert await found(sheda, w) == set()
    # run again (a retry after a crash): nothing more to do
    assert await ctx.properties.hide_agent_listings(agent.id) == 0


async def test_an_agent_deactivated_before_listings_followed_is_caught_up_at_a_start(sheda, tmp_path):
    """An account deactivated by an older version (before the listings.agent_status job) kept its listings listed:
    the first start of this version queues that job for each inactive account with a listing still listed, and the
    listings are hidden exactly as a deactivation now hides them (an admin's reactivation brings them back)."""
    from sheda_rt.listings.agent_status import BACKFILL_MARKER

    w = word()
    admin = await sheda.admin()
    agent, listed, own = await agent_with_listings(sheda, w)
    ids = {p["id"] for p in listed}
    # Deactivated by this version: its listings are hidden already, nothing to catch up.
    followed, _, _ = await agent_with_listings(sheda, word())
    assert (await sheda.api.patch(f"/api/v1/admin/users/{followed.id}", {"is_active": False}, token=admin.token)).status == 200
    await job_done(sheda, (await sheda.ctx.db["jobs"].find_one({"kind": "listings.agent_status", "payload.user_id": followed.id}))["_id"])
    # Deactivated by the older version: only the account's write; and no marker of the backfill.
    await sheda.ctx.db["users"].update_one({"_id": agent.id}, {"$set": {"is_active": False}})
    await sheda.ctx.db["meta"].delete_one({"_id": BACKFILL_MARKER})
    assert await found(sheda, w) == ids  # what the old data shows
    await start_and_stop(another_server(sheda, tmp_path))  # what every start runs
    key = f"listings.agent_status:{agent.id}:backfill"
    job = await job_done(sheda, key)
    assert job["result"] == {"outcome": "hidden", "listings": 2}, job
    assert await sheda.ctx.db["jobs"].find_one({"_id": f"listings.agent_status:{followed.id}:backfill"}) is None
    assert await found(sheda, w) == set()
    for p in listed:
        r = await sheda.api.get(f"{API}/{p['id']}", token=admin.token)
        assert r.status == 200 and r.json["is_active"] is False and r.json["hidden_reason"] == "agent_inactive", r
    r = await sheda.api.get(f"{API}/{own['id']}", token=admin.token)
    assert r.json["hidden_reason"] is None  # unlisted by its agent: told apart, stays unlisted
    assert await sheda.ctx.agent_listings.backfill_inactive() == 0  # once only
    r = await sheda.api.patch(f"/api/v1/admin/users/{agent.id}", {"is_active": True}, token=admin.token)
    assert r.status == 200, r
    await eventually(lambda: _back(sheda, w, ids))


async def job_done(sheda, key: str) -> dict:
    """The queued job `key` once it has run (this process's runner takes it when no other runner holds it)."""
    for _ in range(1000):
        await sheda.ctx.job_runner.run_due()
        job = await sheda.ctx.db["jobs"].find_one({"_id": key})
        assert job is not None, f"no job {key}"
        if job["status"] == "done":
            return job
        await asyncio.sleep(0.1)
    raise AssertionError(f"job {key} never ran: {job}")


async def test_the_walk_reads_the_agents_listings_on_an_index(sheda):
    """One `find` with the state beside agent_id, or beside the search indexes' (status, facets), is a collection
    scan on the embedded database: the walk's read is a pipeline whose first `$match` index agent_newest serves."""
    store = sheda.ctx.property_store
    for reason in (None, "agent_inactive"):
        pipeline = store.agent_listing_pipeline(123, hidden_reason=reason)
        explained = await sheda.ctx.db.command("explain", {"aggregate": "properties", "pipeline": pipeline, "cursor": {}},
                                               verbosity="queryPlanner")
        assert "COLLSCAN" not in repr(explained) and "agent_newest" in repr(explained), explained
