"""Bookings across processes (issue 17 §3): two real `python run.py` servers sharing one Redis and
one database (tests/redis_support.py). Clients racing for the same units through different
processes: each unit goes to exactly one of them (the guard is the unit's conditional update in the
database, not anything in a process's memory), and the builder's socket on the other process hears
of each winner; a project update posted on one process reaches a buyer and a watcher on the other. A builder
deactivated through one process has their projects hidden for readers served by the other."""
from __future__ import annotations

import asyncio

from tests.redis_support import Remote, redis_server, server_pair, shared_dir  # noqa: F401  (module fixtures)
from tests.listing_helpers import word
from tests.support import eventually
from tests.test_builders import project_body, unit
from tests.test_multiprocess_admin import admin_on

PLAN = {"name": "Half and half", "lines": [{"label": "Booking", "percent": "50.00", "due": "booking"},
                                           {"label": "Handover", "percent": "50.00", "due": "handover"}]}


async def test_racing_bookings_through_two_processes_each_unit_goes_to_exactly_one_client(server_pair):
    a, b = (Remote(s) for s in server_pair)
    admin = await admin_on(a)
    builder = await a.signup("builder")
    assert (await a.api.patch(f"/api/v1/admin/builders/{builder.id}", {"verified": True}, token=admin.token)).status == 200
    project = (await a.api.post("/api/v1/projects", project_body(), token=builder.token)).json
    pid = project["id"]
    assert (await a.api.post(f"/api/v1/projects/{pid}/publish", token=builder.token)).status == 200
    units = (await a.api.post(f"/api/v1/projects/{pid}/units", {"units": [unit(f"R-{i}") for i in range(7)]},
                              token=builder.token)).json["items"]
    plan = (await a.api.post(f"/api/v1/projects/{pid}/payment-plans", PLAN, token=builder.token)).json
    c1, c2 = await a.signup("client"), await b.signup("client")
    watcher = await a.signup("client")
    b_ws = await b.ws(builder.token)
    w_ws = await a.ws(watcher.token)
    c2_ws = await a.ws(c2.token)
    try:
        await w_ws.send({"type": "subscribe", "channel": f"project:{pid}"})
        await w_ws.wait_type("subscribed")
        winners = []
        for u in units[:6]:
            r1, r2 = await asyncio.gather(
                a.api.post("/api/v1/bookings", {"unit_id": u["id"], "plan_id": plan["id"]}, token=c1.token),
                b.api.post("/api/v1/bookings", {"unit_id": u["id"], "plan_id": plan["id"]}, token=c2.token))
            assert sorted([r1.status, r2.status]) == [201, 409], (r1, r2)
            winners.append((r1 if r1.status == 201 else r2).json)
        for booking in winners:
            await b_ws.wait_for(lambda f, i=booking["id"]: f.get("type") == "booking.created" and f["booking"]["id"] == i,
                                timeout=15)
        # c2 surely has one: the last unit, booked through B alone.
        r = await b.api.post("/api/v1/bookings", {"unit_id": units[6]["id"], "plan_id": plan["id"]}, token=c2.token)
        assert r.status == 201, r
        counts = (await b.api.get(f"/api/v1/projects/{pid}")).json["unit_counts"]
        assert counts["reserved"] == len(units) and counts["available"] == 0
        # A construction update posted on B reaches a buyer's socket and a watcher's on A.
        r = await b.api.post(f"/api/v1/projects/{pid}/updates", {"title": "Piling done", "body": "On to the slab."},
                             token=builder.token)
        assert r.status == 201, r
        await w_ws.wait_for(lambda f: f.get("type") == "project.updated" and "update" in f.get("changes", []), timeout=15)
        await c2_ws.wait_type("project.update", timeout=15)
    finally:
        for ws in (b_ws, w_ws, c2_ws):
            ws.close()



async def test_a_builder_deactivated_through_a_has_their_projects_hidden_for_readers_on_b(server_pair):
    """f810a53: a builder's published projects follow their account (a durable job, run by the process that changed
    the account). Deactivated by an admin through A, readers served by B no longer find them (list, project, units:
    404 project_not_found) nor book them; reactivated through B, readers on A find them again."""
    a, b = (Remote(s) for s in server_pair)
    admin = await admin_on(a)
    builder, reader = await b.signup("builder"), await b.signup("client")
    assert (await b.api.patch(f"/api/v1/admin/builders/{builder.id}", {"verified": True}, token=admin.token)).status == 200
    w = word()
    r = await b.api.post("/api/v1/projects", project_body(location=f"{w} Lekki"), token=builder.token)
    assert r.status == 201, r
    pid = r.json["id"]
    assert (await b.api.post(f"/api/v1/projects/{pid}/publish", token=builder.token)).status == 200
    [u] = (await b.api.post(f"/api/v1/projects/{pid}/units", {"units": [unit("H-1")]}, token=builder.token)).json["items"]
    plan = (await b.api.post(f"/api/v1/projects/{pid}/payment-plans", PLAN, token=builder.token)).json

    async def listed_on(remote: Remote, expected: set[int]) -> bool:
        r = await remote.api.get("/api/v1/projects", params={"location": w, "limit": "100"})
        assert r.status == 200, r
        return {p["id"] for p in r.json["items"]} == expected

    assert await listed_on(b, {pid})
    r = await a.api.patch(f"/api/v1/admin/users/{builder.id}", {"is_active": False}, token=admin.token)
    assert r.status == 200, r
    await eventually(lambda: listed_on(b, set()), "the project out of B's list", timeout=30)
    for path in (f"/api/v1/projects/{pid}", f"/api/v1/projects/{pid}/units", f"/api/v1/projects/{pid}/units/{u['id']}",
                 f"/api/v1/projects/{pid}/payment-plans"):
        for token in (None, reader.token):
            r = await b.api.get(path, token=token)
            assert r.status == 404 and r.json["code"] == "project_not_found", (path, r)
    r = await b.api.get(f"/api/v1/projects/{pid}", token=admin.token)  # admins still see it, and why
    assert r.status == 200 and r.json["hidden_reason"] == "builder_inactive", r
    r = await b.api.post("/api/v1/bookings", {"unit_id": u["id"], "plan_id": plan["id"]}, token=reader.token)
    assert r.status == 409 and r.json["code"] == "builder_inactive", r
    # Reactivated through B: readers on A find it again.
    r = await b.api.patch(f"/api/v1/admin/users/{builder.id}", {"is_active": True}, token=admin.token)
    assert r.status == 200, r
    await eventually(lambda: listed_on(a, {pid}), "the project back in A's list", timeout=30)
    r = await a.api.get(f"/api/v1/projects/{pid}", token=reader.token)
    assert r.status == 200 and r.json["hidden_reason"] is None, r
    assert (await a.api.get(f"/api/v1/projects/{pid}/units")).status == 200
