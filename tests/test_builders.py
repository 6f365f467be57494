"""Builders as they use the product: register, get verified, publish projects, add units and payment
plans; clients and strangers browse. Every refusal is checked to leave storage as it was."""
from __future__ import annotations

import asyncio
from datetime import timedelta
from decimal import Decimal

from bson.decimal128 import Decimal128

from tests.listing_helpers import (another_server, location_facets_keeping_dotless_i, snapshot, start_and_stop, unfolded_location_facets,
                                   word)
from tests.support import PNG_1PX, eventually, multipart

PROJECTS = "/api/v1/projects"


def project_body(**over) -> dict:
    body = {"name": "Palm Court", "description": "Off-plan terraces", "location": "Lekki Phase 1, Lagos",
            "launch_date": "2026-01-15", "expected_completion": "2028-06-30", "amenities": ["gym", "pool"]}
    body.update(over)
    return body


def unit(number: str, **over) -> dict:
    body = {"unit_number": number, "floor": 1, "type": "apartment", "bedrooms": 2, "area_sqm": 95.5, "price": "45000000.00"}
    body.update(over)
    return body


async def create_project(sheda, builder, **over) -> dict:
    r = await sheda.api.post(PROJECTS, project_body(**over), token=builder.token)
    assert r.status == 201, r
    return r.json


async def verified_builder(sheda, admin=None):
    builder = await sheda.signup("builder")
    admin = admin or await sheda.admin()
    r = await sheda.api.patch(f"/api/v1/admin/builders/{builder.id}", {"verified": True}, token=admin.token)
    assert r.status == 200 and r.json["verified"] is True, r
    return builder


async def published_project(sheda, builder, **over) -> dict:
    project = await create_project(sheda, builder, **over)
    r = await sheda.api.post(f"{PROJECTS}/{project['id']}/publish", token=builder.token)
    assert r.status == 200, r
    return r.json


async def add_units(sheda, builder, project_id: int, units: list[dict]) -> list[dict]:
    r = await sheda.api.post(f"{PROJECTS}/{project_id}/units", {"units": units}, token=builder.token)
    assert r.status == 201, r
    return r.json["items"]


async def unit_numbers(sheda, project_id: int) -> list[str]:
    return sorted([d["unit_number"] async for d in sheda.ctx.db["units"].find({"project_id": project_id})])


async def test_builder_registers_is_refused_publish_until_an_admin_verifies_them_live(sheda):
    builder = await sheda.signup("builder")
    me = await sheda.api.get("/api/v1/users/me", token=builder.token)
    assert me.status == 200 and me.json["user_type"] == "builder"
    assert me.json["profile"]["verified"] is False and me.json["profile"]["company_name"] is None
    r = await sheda.api.patch("/api/v1/users/me", {"company_name": "Acme Homes Ltd", "registration_number": "RC 1234567",
                                                    "website": "https://acme.example", "about": "We build."}, token=builder.token)
    assert r.status == 200 and r.json["profile"]["company_name"] == "Acme Homes Ltd", r
    # verified is the admin's to set, and another type's field is refused
    for bad in ({"verified": True}, {"agency_name": "x"}, {"website": "not a url"}):
        r = await sheda.api.patch("/api/v1/users/me", bad, token=builder.token)
        assert r.status == 422, (bad, r)
    body, headers = multipart("file", "logo.png", PNG_1PX, "image/png")
    r = await sheda.api.request("PUT", "/api/v1/builder/profile/logo", body=body, headers=headers, token=builder.token)
    assert r.status == 200 and r.json["logo_url"].startswith("/media/builders/"), r

    project = await create_project(sheda, builder)
    assert project["published"] is False and project["status"] == "planning"
    stored = await snapshot(sheda, "projects", project["id"])
    r = await sheda.api.post(f"{PROJECTS}/{project['id']}/publish", token=builder.token)
    assert r.status == 403 and r.json["code"] == "builder_not_verified", r
    assert await snapshot(sheda, "projects", project["id"]) == stored

    admin = await sheda.admin()
    ws = await sheda.ws(builder.token)
    try:
        # only admins verify; nothing changes for anyone else
        other = await sheda.signup("builder")
        r = await sheda.api.patch(f"/api/v1/admin/builders/{builder.id}", {"verified": True}, token=other.token)
        assert r.status == 403
        client = await sheda.signup("client")
        r = await sheda.api.patch(f"/api/v1/admin/builders/{client.id}", {"verified": True}, token=admin.token)
        assert r.status == 404 and r.json["code"] == "builder_not_found"
        assert (await sheda.api.patch(f"/api/v1/admin/builders/{builder.id}", {"verified": "yes"}, token=admin.token)).status == 422
        assert not ((await sheda.ctx.users.get(builder.id)).get("builder_profile") or {}).get("verified")

        r = await sheda.api.patch(f"/api/v1/admin/builders/{builder.id}", {"verified": True}, token=admin.token)
        assert r.status == 200 and r.json["verified"] is True and r.json["company_name"] == "Acme Homes Ltd"
        event = await ws.wait_type("builder.verified")
        assert event["builder"]["id"] == builder.id and event["builder"]["verified"] is True
        note = await ws.wait_type("notification")
        assert note["kind"] == "builder_verified"
        stored_notes = await sheda.api.get("/api/v1/notifications", token=builder.token)
        assert any(n["kind"] == "builder_verified" for n in stored_notes.json["items"])
        # saying it again changes and announces nothing
        before = len(ws.frames)
        r = await sheda.api.patch(f"/api/v1/admin/builders/{builder.id}", {"verified": True}, token=admin.token)
        assert r.status == 200
    finally:
        ws.close()
    assert len([f for f in ws.frames[before:] if f.get("type") == "builder.verified"]) == 0

    r = await sheda.api.post(f"{PROJECTS}/{project['id']}/publish", token=builder.token)
    assert r.status == 200 and r.json["published"] is True and r.json["published_at"], r
    r = await sheda.api.post(f"{PROJECTS}/{project['id']}/publish", token=builder.token)
    assert r.status == 409 and r.json["code"] == "already_published"

    page = await sheda.api.get(f"/api/v1/builders/{builder.id}")
    assert page.status == 200 and page.json["company_name"] == "Acme Homes Ltd" and page.json["verified"] is True
    assert [p["id"] for p in page.json["projects"]] == [project["id"]]
    assert (await sheda.api.get(f"/api/v1/builders/{admin.id}")).status == 404
    public = await sheda.api.get(f"/api/v1/users/{builder.id}")
    assert public.status == 200 and public.json["company_name"] == "Acme Homes Ltd"


async def test_builder_scope_in_tokens_switch_account_and_admin_listing(sheda):
    builder = await sheda.signup("builder")
    client = await sheda.signup("client")
    assert (await sheda.api.post(PROJECTS, project_body(), token=client.token)).status == 403
    r = await sheda.api.post("/api/v1/auth/switch-account", {"switch_to": "builder"}, token=client.token)
    assert r.status == 200, r
    as_builder = r.json["access_token"]
    assert (await sheda.api.post(PROJECTS, project_body(), token=as_builder)).status == 201
    # the old client token lost its client scope; the builder's token never had one
    r = await sheda.api.post("/api/v1/appointments", {"property_id": 1, "scheduled_at": "2030-01-01T10:00:00Z"}, token=builder.token)
    assert r.status == 403 and r.json["code"] == "insufficient_scope"
    admin = await sheda.admin()
    r = await sheda.api.get("/api/v1/admin/users", params={"user_type": "builder", "limit": 100}, token=admin.token)
    assert r.status == 200 and {builder.id, client.id} <= {u["id"] for u in r.json["items"]}
    assert all(u["user_type"] == "builder" for u in r.json["items"])
    # refresh keeps the builder scope
    r = await sheda.api.post("/api/v1/auth/refresh", {"refresh_token": builder.refresh_token})
    assert r.status == 200
    assert (await sheda.api.post(PROJECTS, project_body(), token=r.json["access_token"])).status == 201


async def test_a_rule_across_fields_names_the_field_at_fault_in_the_422(sheda):
    """The README's convention: `errors[].field` is the body field at fault, also for a rule across fields
    (a project finishing before it launches, a null name, plan percents not adding up, a phase ending before
    it starts), so an app can mark the input; these said "body"."""
    builder = await verified_builder(sheda)
    r = await sheda.api.post(PROJECTS, project_body(launch_date="2027-01-01", expected_completion="2026-01-01"), token=builder.token)
    assert r.status == 422 and [e["field"] for e in r.json["errors"]] == ["expected_completion"], r
    pid = (await create_project(sheda, builder))["id"]
    r = await sheda.api.patch(f"{PROJECTS}/{pid}", {"name": None}, token=builder.token)
    assert r.status == 422 and [e["field"] for e in r.json["errors"]] == ["name"], r
    plan = {"name": "p", "lines": [{"label": "a", "percent": "50.00", "due": "booking"},
                                   {"label": "b", "percent": "49.00", "due": "handover"}]}
    r = await sheda.api.post(f"{PROJECTS}/{pid}/payment-plans", plan, token=builder.token)
    assert r.status == 422 and [e["field"] for e in r.json["errors"]] == ["lines"], r
    phases = {"phases": [{"phase": "foundation", "percent": 10, "start_date": "2027-02-01", "end_date": "2027-01-01"}]}
    r = await sheda.api.put(f"{PROJECTS}/{pid}/progress", phases, token=builder.token)
    assert r.status == 422 and [e["field"] for e in r.json["errors"]] == ["phases.0.end_date"], r
    # A construction update's percent sets a phase's progress, so it needs the phase: the 422 names `percent`.
    r = await sheda.api.post(f"{PROJECTS}/{pid}/updates", {"title": "Slab cast", "body": "Level 1", "percent": 10}, token=builder.token)
    assert r.status == 422 and [e["field"] for e in r.json["errors"]] == ["percent"], r


async def test_drafts_are_seen_only_by_their_builder_and_admins(sheda):
    builder = await sheda.signup("builder")
    other = await sheda.signup("builder")
    client = await sheda.signup("client")
    admin = await sheda.admin()
    w = word()
    draft = await create_project(sheda, builder, location=f"{w} Ikoyi")
    pid = draft["id"]
    assert (await sheda.api.get(f"{PROJECTS}/{pid}")).status == 404
    assert (await sheda.api.get(f"{PROJECTS}/{pid}", token=client.token)).status == 404
    assert (await sheda.api.get(f"{PROJECTS}/{pid}", token=other.token)).status == 404
    assert (await sheda.api.get(f"{PROJECTS}/{pid}/units", token=client.token)).status == 404
    assert (await sheda.api.get(f"{PROJECTS}/{pid}", token="garbage")).status == 401
    assert (await sheda.api.get(f"{PROJECTS}/{pid}", token=builder.token)).json["id"] == pid
    assert (await sheda.api.get(f"{PROJECTS}/{pid}", token=admin.token)).status == 200
    r = await sheda.api.get(PROJECTS, params={"location": w})
    assert r.status == 200 and r.json["items"] == []
    r = await sheda.api.get(PROJECTS, params={"location": w, "state": "draft"}, token=client.token)
    assert r.status == 403 and r.json["code"] == "drafts_forbidden"
    r = await sheda.api.get(PROJECTS, params={"state": "draft", "builder_id": builder.id}, token=other.token)
    assert r.status == 403
    r = await sheda.api.get(PROJECTS, params={"state": "draft", "builder_id": builder.id}, token=builder.token)
    assert r.status == 200 and [p["id"] for p in r.json["items"]] == [pid]
    r = await sheda.api.get(PROJECTS, params={"state": "draft", "location": w}, token=admin.token)
    assert r.status == 200 and [p["id"] for p in r.json["items"]] == [pid]


async def test_wrong_owner_scope_or_state_change_nothing(sheda):
    admin = await sheda.admin()
    builder = await verified_builder(sheda, admin)
    other = await verified_builder(sheda, admin)
    client = await sheda.signup("client")
    project = await published_project(sheda, builder, status="under_construction")
    pid = project["id"]
    [u1] = await add_units(sheda, builder, pid, [unit("A1")])
    stored, stored_unit = await snapshot(sheda, "projects", pid), await snapshot(sheda, "units", u1["id"])
    plan = {"name": "30/70", "lines": [{"label": "Deposit", "percent": "30.00", "due": "booking"},
                                        {"label": "Balance", "percent": "70", "due": "handover"}]}

    for token in (other.token, client.token):
        r = await sheda.api.patch(f"{PROJECTS}/{pid}", {"name": "Mine now"}, token=token)
        assert r.status == 403 and r.json["code"] == "not_owner"
        assert (await sheda.api.post(f"{PROJECTS}/{pid}/units", {"units": [unit("Z9")]}, token=token)).status == 403
        assert (await sheda.api.patch(f"{PROJECTS}/{pid}/units/{u1['id']}", {"status": "blocked"}, token=token)).status == 403
        assert (await sheda.api.post(f"{PROJECTS}/{pid}/payment-plans", plan, token=token)).status == 403
        assert (await sheda.api.post(f"{PROJECTS}/{pid}/publish", token=token)).status == 403
    assert (await sheda.api.post(PROJECTS, project_body(), token=client.token)).status == 403
    assert (await sheda.api.post(PROJECTS, project_body())).status == 401
    assert (await sheda.api.patch(f"{PROJECTS}/{pid}", {"name": "x"})).status == 401
    # wrong state: status never goes backwards
    r = await sheda.api.patch(f"{PROJECTS}/{pid}", {"status": "planning"}, token=builder.token)
    assert r.status == 409 and r.json["code"] == "status_backwards"
    # bad input
    for bad in ({"status": "demolished"}, {"name": None}, {}, {"expected_completion": "2020-01-01"}, {"launch_date": 20260101},
                {"geo": {"lat": 91, "lng": 0}}, {"amenities": ["x"] * 51}, {"owner": 1}):
        r = await sheda.api.patch(f"{PROJECTS}/{pid}", bad, token=builder.token)
        assert r.status == 422, (bad, r)
    assert (await sheda.api.patch(f"{PROJECTS}/99999999", {"name": "x"}, token=builder.token)).status == 404
    # a sold-out rule: reserved/booked/sold units cannot be blocked (made reserved as a booking would)
    await sheda.ctx.db["units"].update_one({"_id": u1["id"]}, {"$set": {"status": "reserved"}})
    r = await sheda.api.patch(f"{PROJECTS}/{pid}/units/{u1['id']}", {"status": "blocked"}, token=builder.token)
    assert r.status == 409 and r.json["code"] == "unit_not_available"
    await sheda.ctx.db["units"].update_one({"_id": u1["id"]}, {"$set": {"status": "available"}})
    assert await snapshot(sheda, "projects", pid) == stored
    assert await snapshot(sheda, "units", u1["id"]) == stored_unit
    assert await sheda.ctx.db["payment_plans"].count_documents({"project_id": pid}) == 0
    assert await unit_numbers(sheda, pid) == ["A1"]

    # forward moves and the admin's hand work
    r = await sheda.api.patch(f"{PROJECTS}/{pid}", {"status": "completed", "geo": {"lat": 6.45, "lng": 3.47}}, token=builder.token)
    assert r.status == 200 and r.json["status"] == "completed" and r.json["geo"] == {"lat": 6.45, "lng": 3.47}
    r = await sheda.api.patch(f"{PROJECTS}/{pid}", {"name": "Renamed by admin", "geo": None}, token=admin.token)
    assert r.status == 200 and r.json["name"] == "Renamed by admin" and r.json["geo"] is None


async def test_units_batch_all_or_nothing_and_duplicate_numbers_409(sheda):
    builder = await verified_builder(sheda)
    project = await published_project(sheda, builder)
    pid = project["id"]
    batch = [unit(f"B{i:03d}", floor=i % 10, bedrooms=1 + i % 3, price=f"{30000000 + i * 100000}.00") for i in range(500)]
    items = await add_units(sheda, builder, pid, batch)
    assert len(items) == 500 and {u["status"] for u in items} == {"available"}
    assert items[0]["price"] == "30000000.00" and items[0]["area_sqm"] == 95.5

    before = await unit_numbers(sheda, pid)
    # one taken number: 409 naming it, and none of the new ones stored
    r = await sheda.api.post(f"{PROJECTS}/{pid}/units", {"units": [unit("C1"), unit("B007"), unit("C2")]}, token=builder.token)
    assert r.status == 409 and r.json["code"] == "duplicate_unit_number" and r.json["unit_numbers"] == ["B007"], r
    # a number twice in one batch
    r = await sheda.api.post(f"{PROJECTS}/{pid}/units", {"units": [unit("C1"), unit("C1")]}, token=builder.token)
    assert r.status == 409 and r.json["unit_numbers"] == ["C1"]
    # bad input: empty, too many, a float price, an unknown type
    for bad in ([], [unit(f"D{i}") for i in range(501)], [unit("D1", price=45000000.5)], [unit("D1", type="castle")],
                [unit("D1", floor="3")], [unit("", )], [unit("D1", area_sqm=0)], [unit("D1", bedrooms=True)]):
        r = await sheda.api.post(f"{PROJECTS}/{pid}/units", {"units": bad}, token=builder.token)
        assert r.status == 422, r
    assert await unit_numbers(sheda, pid) == before

    detail = await sheda.api.get(f"{PROJECTS}/{pid}")
    assert detail.json["unit_counts"]["available"] == 500 and detail.json["units_total"] == 500
    assert detail.json["price_range"] == {"min": "30000000.00", "max": "79900000.00"}
    assert detail.json["bedrooms"] == [1, 2, 3]


async def test_concurrent_overlapping_batches_exactly_one_is_stored_whole(sheda):
    builder = await verified_builder(sheda)
    for _round in range(3):
        project = await published_project(sheda, builder)
        pid = project["id"]
        # Each batch starts with a number only it has, so a loser stored in part would show.
        first = [unit("F1")] + [unit(f"R{i:03d}") for i in range(0, 300)]
        second = [unit("S1")] + [unit(f"R{i:03d}") for i in range(299, 100, -1)]
        results = await asyncio.gather(*(sheda.api.post(f"{PROJECTS}/{pid}/units", {"units": b}, token=builder.token)
                                         for b in (first, second)))
        assert sorted(r.status for r in results) == [201, 409], results
        winner = next(b for b, r in zip((first, second), results) if r.status == 201)
        assert await unit_numbers(sheda, pid) == sorted(u["unit_number"] for u in winner)
        loser = next(r for r in results if r.status == 409)
        assert loser.json["code"] == "duplicate_unit_number"
        assert await sheda.ctx.db["unit_batch_locks"].count_documents({"_id": pid}) == 0
        detail = (await sheda.api.get(f"{PROJECTS}/{pid}")).json
        assert detail["unit_counts"]["available"] == len(winner)


async def test_a_batch_waits_for_the_batch_in_progress_and_takes_over_a_dead_holders_lock(sheda, clock):
    builder = await verified_builder(sheda)
    project = await published_project(sheda, builder)
    pid = project["id"]
    locks, now = sheda.ctx.unit_batch_locks, clock.now()
    # another process is adding units to this project (it holds the lock)
    assert (await locks.acquire(pid, "other-process", now, now + timedelta(seconds=60)))[0]
    waiting = asyncio.ensure_future(sheda.api.post(f"{PROJECTS}/{pid}/units", {"units": [unit("W1"), unit("W2")]},
                                                   token=builder.token))
    await asyncio.sleep(0.3)
    assert not waiting.done()  # it cannot go ahead while the other batch holds the project
    assert await unit_numbers(sheda, pid) == []
    # the other batch stores W2 and lets go: the waiting one is judged against it, and stores nothing
    stored = await sheda.ctx.unit_store.insert_batch([{
        "project_id": pid, "unit_number": "W2", "floor": 1, "type": "studio", "bedrooms": 0, "bathrooms": 1, "area_sqm": 30,
        "price": Decimal128("1.00"), "price_minor": 100, "status": "available", "created_at": now, "updated_at": now}])
    assert stored is not None
    await locks.release(pid, "other-process")
    r = await waiting
    assert r.status == 409 and r.json["unit_numbers"] == ["W2"], r
    assert await unit_numbers(sheda, pid) == ["W2"]
    # a holder that died half way through its batch: its lock lapses after a minute, and the batch that
    # takes over first removes what the dead one stored
    taken, _ = await locks.acquire(pid, "crashed", clock.now(), clock.now() + timedelta(seconds=60))
    assert taken
    now = clock.now()
    await sheda.ctx.unit_store.insert_batch([{
        "project_id": pid, "unit_number": n, "floor": 1, "type": "studio", "bedrooms": 0, "bathrooms": 1, "area_sqm": 30,
        "price": Decimal128("1.00"), "price_minor": 100, "status": "available", "batch": "crashed", "created_at": now,
        "updated_at": now} for n in ("W8", "W9")])
    clock.advance(seconds=61)
    await add_units(sheda, builder, pid, [unit("W3"), unit("W9")])
    assert await unit_numbers(sheda, pid) == ["W2", "W3", "W9"]
    assert (await sheda.api.get(f"{PROJECTS}/{pid}")).json["units_total"] == 3


async def test_units_listing_filters_cursor_and_block_unblock(sheda):
    builder = await verified_builder(sheda)
    project = await published_project(sheda, builder)
    pid = project["id"]
    units = [unit(f"U{i:02d}", floor=i // 5, type="penthouse" if i >= 20 else "apartment", bedrooms=4 if i >= 20 else 2,
                  price=str(10_000_000 * (i + 1))) for i in range(25)]
    stored = await add_units(sheda, builder, pid, units)
    by_number = {u["unit_number"]: u for u in stored}

    async def all_pages(**params):
        seen, cursor = [], None
        while True:
            r = await sheda.api.get(f"{PROJECTS}/{pid}/units", params={"limit": 7, **params, **({"cursor": cursor} if cursor else {})})
            assert r.status == 200, r
            seen += [u["unit_number"] for u in r.json["items"]]
            cursor = r.json["next_cursor"]
            if not cursor:
                return seen

    assert await all_pages() == [f"U{i:02d}" for i in range(25)]
    assert await all_pages(type="penthouse") == [f"U{i:02d}" for i in range(20, 25)]
    assert await all_pages(floor=1) == [f"U{i:02d}" for i in range(5, 10)]
    assert await all_pages(price_min="50000000", price_max=80_000_000) == ["U04", "U05", "U06", "U07"]
    r = await sheda.api.patch(f"{PROJECTS}/{pid}/units/{by_number['U21']['id']}", {"status": "blocked"}, token=builder.token)
    assert r.status == 200 and r.json["status"] == "blocked"
    assert await all_pages(status="blocked") == ["U21"]
    detail = (await sheda.api.get(f"{PROJECTS}/{pid}")).json
    assert detail["unit_counts"]["blocked"] == 1 and detail["unit_counts"]["available"] == 24
    # blocking twice is a no-op; unblocking puts it back
    assert (await sheda.api.patch(f"{PROJECTS}/{pid}/units/{by_number['U21']['id']}", {"status": "blocked"},
                                  token=builder.token)).status == 200
    r = await sheda.api.patch(f"{PROJECTS}/{pid}/units/{by_number['U21']['id']}", {"status": "available"}, token=builder.token)
    assert r.status == 200 and r.json["status"] == "available"
    for bad in ({"status": "sold"}, {"status": "reserved"}, {}):
        r = await sheda.api.patch(f"{PROJECTS}/{pid}/units/{by_number['U21']['id']}", bad, token=builder.token)
        assert r.status == 422, r
    other = await published_project(sheda, builder)
    assert (await sheda.api.patch(f"{PROJECTS}/{other['id']}/units/{by_number['U21']['id']}", {"status": "blocked"},
                                  token=builder.token)).status == 404
    for bad in ({"status": "gone"}, {"floor": "x"}, {"cursor": "garbage"}, {"limit": 101}, {"price_min": "5", "price_max": "1"}):
        assert (await sheda.api.get(f"{PROJECTS}/{pid}/units", params=bad)).status == 422, bad
    r = await sheda.api.get(f"{PROJECTS}/{pid}/units", params={"price_min": "5", "price_max": "1"})
    assert [e["field"] for e in r.json["errors"]] == ["price_max"], r.json  # the query field, not "body"


async def test_project_search_filters_sorts_and_cursor(sheda):
    admin = await sheda.admin()
    builder = await verified_builder(sheda, admin)
    other = await verified_builder(sheda, admin)
    w = word()
    a = await published_project(sheda, builder, location=f"{w} Lekki Phase 1", geo={"lat": 6.4474, "lng": 3.4553})
    b = await published_project(sheda, builder, location=f"{w} Ikoyi", status="under_construction")
    c = await published_project(sheda, other, location=f"{w} Ajah", geo={"lat": 6.47, "lng": 3.57})
    empty = await published_project(sheda, other, location=f"{w} Epe")
    await add_units(sheda, builder, a["id"], [unit("1", price="20000000", bedrooms=2), unit("2", price="60000000", bedrooms=4)])
    await add_units(sheda, builder, b["id"], [unit("1", price="35000000", bedrooms=3)])
    await add_units(sheda, other, c["id"], [unit("1", price="90000000", bedrooms=5)])

    async def ids(**params):
        r = await sheda.api.get(PROJECTS, params={"location": w, **params})
        assert r.status == 200, r
        return [p["id"] for p in r.json["items"]]

    assert set(await ids()) == {a["id"], b["id"], c["id"], empty["id"]}
    assert await ids() == [empty["id"], c["id"], b["id"], a["id"]]  # newest first
    assert await ids(sort="price_asc") == [a["id"], b["id"], c["id"]]  # no available unit: not in price sorts
    assert await ids(sort="price_desc") == [c["id"], b["id"], a["id"]]
    assert set(await ids(builder_id=builder.id)) == {a["id"], b["id"]}
    assert await ids(status="under_construction") == [b["id"]]
    assert await ids(location=f"{w} lekk") == [a["id"]]
    assert await ids(near="6.47,3.57", radius_km=2) == [c["id"]]
    assert await ids(near="6.4474,3.4553", radius_km=1) == [a["id"]]
    # price and bedrooms are matched by one available unit meeting them all
    assert set(await ids(price_min="30000000", price_max="70000000")) == {a["id"], b["id"]}
    assert await ids(price_min="25000000", price_max="30000000") == []
    assert set(await ids(bedrooms_min=4)) == {a["id"], c["id"]}
    assert await ids(bedrooms=4, price_max="50000000") == []
    assert await ids(bedrooms=3) == [b["id"]]
    # blocking the only 3-bedroom unit takes b out of that search
    b_unit = (await sheda.api.get(f"{PROJECTS}/{b['id']}/units")).json["items"][0]
    assert (await sheda.api.patch(f"{PROJECTS}/{b['id']}/units/{b_unit['id']}", {"status": "blocked"}, token=builder.token)).status == 200
    assert await ids(bedrooms=3) == []
    # cursor pages neither repeat nor skip
    seen, cursor = [], None
    while True:
        r = await sheda.api.get(PROJECTS, params={"location": w, "limit": 1, **({"cursor": cursor} if cursor else {})})
        seen += [p["id"] for p in r.json["items"]]
        cursor = r.json["next_cursor"]
        if not cursor:
            break
    assert seen == [empty["id"], c["id"], b["id"], a["id"]]
    for bad in ({"sort": "cheapest"}, {"near": "x"}, {"radius_km": 0}, {"bedrooms": 99}, {"price_min": "1.555"}, {"cursor": "zz"},
                {"builder_id": 0}, {"status": "done"}, {"unknown": 1}):
        assert (await sheda.api.get(PROJECTS, params=bad)).status == 422, bad
    r = await sheda.api.get(PROJECTS, params={"price_min": "5", "price_max": "1"})
    assert r.status == 422 and [e["field"] for e in r.json["errors"]] == ["price_max"], r.json  # the query field, not "body"
    r = await sheda.api.get(PROJECTS, params={"radius_km": 2})  # alone it would be ignored: every project, no circle
    assert r.status == 422 and [e["field"] for e in r.json["errors"]] == ["radius_km"], r.json


async def test_project_location_words_match_whatever_their_case_and_accents_also_for_projects_stored_before(sheda, tmp_path):
    """GET /projects folds location words as listings do ("bogota" finds "Bogotá", "strasse" "Straße"); a project
    stored by an older version (words only lowercased) is re-faceted by the first start of this version."""
    from sheda_rt.builders.store import ProjectStore

    builder = await verified_builder(sheda)
    w = word()
    bogota = await published_project(sheda, builder, location=f"Bogotá {w}")
    strasse = await published_project(sheda, builder, location=f"Straße 9 {w}")

    async def ids(location):
        r = await sheda.api.get(PROJECTS, params={"location": f"{location} {w}"})
        assert r.status == 200, r
        return {p["id"] for p in r.json["items"]}

    for typed in ("bogota", "BOGOTÁ", "bogo"):
        assert await ids(typed) == {bogota["id"]}, typed
    for typed in ("strasse", "STRAẞE", "straße"):
        assert await ids(typed) == {strasse["id"]}, typed
    # As the older version wrote them: words only lowercased, no marker.
    col, meta = sheda.ctx.db["projects"], sheda.ctx.db["meta"]
    for project in (bogota, strasse):
        doc = await col.find_one({"_id": project["id"]})
        old = {f for f in doc["facets"] if not f.startswith("w:")} | unfolded_location_facets(doc["location"])
        await col.update_one({"_id": project["id"]}, {"$set": {"facets": sorted(old)}})
    await meta.delete_one({"_id": "projects.facets"})
    assert await ids("bogota") == set() and await ids("strasse") == set()  # what the old data answers
    await start_and_stop(another_server(sheda, tmp_path))  # what every start runs
    assert await ids("bogota") == {bogota["id"]} and await ids("strasse") == {strasse["id"]}
    assert (await meta.find_one({"_id": "projects.facets"}))["version"] == ProjectStore.FACETS_VERSION
    assert await sheda.ctx.project_store.refacet_if_stale() == 0  # once only


async def test_project_location_words_read_turkish_dotless_i_as_i_also_for_projects_stored_before(sheda, tmp_path):
    """GET /projects reads "ı" as "i" as listings do ("kadikoy" finds "Kadıköy"); a project stored by the previous
    version ("w:kadıköy") is re-faceted by the first start of this version."""
    from sheda_rt.builders.store import ProjectStore

    builder = await verified_builder(sheda)
    w = word()
    project = await published_project(sheda, builder, location=f"Kadıköy {w}")

    async def ids(location):
        r = await sheda.api.get(PROJECTS, params={"location": f"{location} {w}"})
        assert r.status == 200, r
        return {p["id"] for p in r.json["items"]}

    for typed in ("kadikoy", "Kadıköy", "KADIKOY", "kadı"):
        assert await ids(typed) == {project["id"]}, typed
    col, meta = sheda.ctx.db["projects"], sheda.ctx.db["meta"]
    doc = await col.find_one({"_id": project["id"]})
    old = {f for f in doc["facets"] if not f.startswith("w:")} | location_facets_keeping_dotless_i(doc["location"])
    await col.update_one({"_id": project["id"]}, {"$set": {"facets": sorted(old)}})
    await meta.update_one({"_id": "projects.facets"}, {"$set": {"version": 2}}, upsert=True)
    assert await ids("kadikoy") == set()  # what the old data answers
    await start_and_stop(another_server(sheda, tmp_path))  # what every start runs
    assert await ids("kadikoy") == {project["id"]}
    assert (await meta.find_one({"_id": "projects.facets"}))["version"] == ProjectStore.FACETS_VERSION


async def test_payment_plans_split_a_unit_price_to_the_kobo(sheda):
    builder = await verified_builder(sheda)
    project = await published_project(sheda, builder)
    pid = project["id"]
    [u] = await add_units(sheda, builder, pid, [unit("P1", price="10000000.01")])
    plan = {"name": "Thirds", "lines": [{"label": "Booking", "percent": "33.33", "due": "booking"},
                                         {"label": "Frame", "percent": "33.33", "due": "months:6"},
                                         {"label": "Handover", "percent": "33.34", "due": "handover"}]}
    r = await sheda.api.post(f"{PROJECTS}/{pid}/payment-plans", plan, token=builder.token)
    assert r.status == 201 and [ln["percent"] for ln in r.json["lines"]] == ["33.33", "33.33", "33.34"], r
    plan_id = r.json["id"]
    for bad_lines in ([{"label": "All", "percent": "99.99", "due": "booking"}],
                      [{"label": "All", "percent": 100.0, "due": "booking"}],
                      [{"label": "All", "percent": 2634712425267313204197851136, "due": "booking"}],  # was a 500
                      [{"label": "All", "percent": "1e2", "due": "booking"}],
                      [{"label": "A", "percent": "50", "due": "booking"}, {"label": "B", "percent": "50.001", "due": "handover"}],
                      [{"label": "All", "percent": "100", "due": "months:0"}],
                      [{"label": "All", "percent": "100", "due": "someday"}],
                      [{"label": "A", "percent": "0", "due": "booking"}, {"label": "B", "percent": "100", "due": "handover"}], []):
        r = await sheda.api.post(f"{PROJECTS}/{pid}/payment-plans", {"name": "Bad", "lines": bad_lines}, token=builder.token)
        assert r.status == 422, (bad_lines, r)
    assert await sheda.ctx.db["payment_plans"].count_documents({"project_id": pid}) == 1
    r = await sheda.api.get(f"{PROJECTS}/{pid}/payment-plans", params={"unit_id": u["id"]})
    assert r.status == 200 and [p["id"] for p in r.json["items"]] == [plan_id]
    schedule = r.json["items"][0]["schedule"]
    # 33.33% of 1,000,000,001 kobo is 333,300,000.3333 → 333,300,000 kobo; the remainder goes last
    assert [s["amount"] for s in schedule] == ["3333000.00", "3333000.00", "3334000.01"]
    assert sum(Decimal(s["amount"]) for s in schedule) == Decimal("10000000.01")
    r = await sheda.api.get(f"{PROJECTS}/{pid}/payment-plans")
    assert "schedule" not in r.json["items"][0]
    assert (await sheda.api.get(f"{PROJECTS}/{pid}/payment-plans", params={"unit_id": 99999999})).status == 404


def _collscan(stage: dict) -> bool:
    children = ([stage["inputStage"]] if "inputStage" in stage else []) + list(stage.get("inputStages", []))
    return stage.get("stage") == "COLLSCAN" or any(_collscan(c) for c in children)


def _winning_plan(explained: dict) -> dict:
    if "queryPlanner" in explained:
        return explained["queryPlanner"]["winningPlan"]
    return next(s["$cursor"]["queryPlanner"]["winningPlan"] for s in explained["stages"] if "$cursor" in s)



async def test_a_builders_sold_out_project_is_left_out_of_price_sorts_whatever_the_sample_holds(sheda):
    """Price sorts list only projects with something to sell. A builder's page cheapest first, when the facet
    sample holds one priced project of theirs (its first price slice is then the whole range), listed the sold
    out one too, and first (a project without a lowest price sorted before every price)."""
    builder = await verified_builder(sheda)
    priced = await published_project(sheda, builder, location="Lekki")
    sold_out = await published_project(sheda, builder, location="Lekki")
    await add_units(sheda, builder, priced["id"], [unit("1", price="20000000")])
    units = await add_units(sheda, builder, sold_out["id"], [unit("1", price="10000000")])
    r = await sheda.api.patch(f"{PROJECTS}/{sold_out['id']}/units/{units[0]['id']}", {"status": "blocked"}, token=builder.token)
    assert r.status == 200, r
    await sheda.ctx.projects.store.stats.refresh()  # the sample now holds the builder's one priced project
    for sort in ("price_asc", "price_desc"):
        r = await sheda.api.get(PROJECTS, params={"builder_id": builder.id, "sort": sort})
        assert r.status == 200 and [p["id"] for p in r.json["items"]] == [priced["id"]], (sort, r.json)
    r = await sheda.api.get(PROJECTS, params={"builder_id": builder.id})
    assert [p["id"] for p in r.json["items"]] == [sold_out["id"], priced["id"]]  # newest first lists both

async def test_project_and_unit_reads_walk_indexes_never_the_collection(sheda):
    """The embedded planner scans the whole collection unless a filter is index-shaped: every read
    the searches, unit pages, duplicate checks and summaries run is explained here."""
    from sheda_rt.builders.models import ProjectQuery, UnitQuery

    builder = await verified_builder(sheda)
    w = word()
    project = await published_project(sheda, builder, location=f"{w} Lekki", geo={"lat": 6.45, "lng": 3.47})
    pid = project["id"]
    await add_units(sheda, builder, pid, [unit(f"X{i}", bedrooms=i % 4) for i in range(30)])
    db, trace = sheda.ctx.db, []
    first = await sheda.ctx.projects.list_units(None, pid, UnitQuery(limit=5), trace=trace)
    for params in ({}, {"location": w}, {"builder_id": builder.id}, {"status": "planning"}, {"near": "6.45,3.47", "radius_km": 3},
                   {"sort": "price_asc", "bedrooms_min": 2}, {"sort": "price_desc", "price_max": "50000000"}):
        await sheda.ctx.projects.search(ProjectQuery(**params), None, trace=trace)
    for params in ({"status": "available"}, {"type": "shop", "floor": 1}, {"price_min": "1", "cursor": first["next_cursor"]}):
        await sheda.ctx.projects.list_units(None, pid, UnitQuery(**params), trace=trace)
    assert len(trace) >= 10
    for pipeline in trace:
        collection = "units" if "project_id" in pipeline[0]["$match"] else "projects"
        explained = await db.command("explain", {"aggregate": collection, "pipeline": pipeline, "cursor": {}},
                                     verbosity="queryPlanner")
        assert not _collscan(_winning_plan(explained)), (collection, pipeline, _winning_plan(explained))
    for flt in ({"project_id": pid}, {"project_id": pid, "unit_number": {"$in": ["X1", "X2"]}}):
        explained = await db.command("explain", {"find": "units", "filter": flt}, verbosity="queryPlanner")
        assert not _collscan(_winning_plan(explained)), (flt, explained)


async def test_project_images_are_uploads_of_its_builder(sheda):
    builder = await sheda.signup("builder")
    other = await sheda.signup("builder")
    project = await create_project(sheda, builder, images=["https://cdn.example/render.jpg"])
    pid = project["id"]
    body, headers = multipart("file", "site.png", PNG_1PX, "image/png")
    r = await sheda.api.request("POST", f"{PROJECTS}/{pid}/images", body=body, headers=headers, token=builder.token)
    assert r.status == 201 and r.json["images"][0] == "https://cdn.example/render.jpg", r
    assert r.json["images"][1].startswith("/media/projects/") and len(r.json["images"]) == 2
    stored = await snapshot(sheda, "projects", pid)
    r = await sheda.api.request("POST", f"{PROJECTS}/{pid}/images", body=body, headers=headers, token=other.token)
    assert r.status == 404  # a draft: the other builder cannot even see it
    fake, fake_headers = multipart("file", "x.png", b"not an image at all", "image/png")
    r = await sheda.api.request("POST", f"{PROJECTS}/{pid}/images", body=fake, headers=fake_headers, token=builder.token)
    assert r.status == 415, r
    assert await snapshot(sheda, "projects", pid) == stored
    for bad in (["javascript:alert(1)"], ["/etc/passwd"], ["x"] * 21):
        assert (await sheda.api.patch(f"{PROJECTS}/{pid}", {"images": bad}, token=builder.token)).status == 422, bad


async def test_a_media_path_must_name_a_file_under_media_not_climb_out_of_it(sheda):
    """Project images, construction updates' image_ids and change requests' attachments take an uploaded file's
    /media/... path (project images an http(s) URL too). A path with '.' or '..' segments was stored and shown to every client as an
    image, though it names no upload: '/media/../api/v1/users/me' is the API's own route once a browser resolves it."""
    builder = await verified_builder(sheda)
    project = await published_project(sheda, builder)
    pid = project["id"]
    for bad in ("/media/../api/v1/users/me", "/media/projects/../../etc/passwd", "/media/./x.png", "/media/..", "/media/a/.."):
        r = await sheda.api.post(PROJECTS, project_body(images=[bad]), token=builder.token)
        assert r.status == 422 and [e["field"] for e in r.json["errors"]] == ["images.0"], (bad, r)
        r = await sheda.api.post(f"{PROJECTS}/{pid}/updates", {"title": "t", "body": "b", "image_ids": [bad]}, token=builder.token)
        assert r.status == 422 and [e["field"] for e in r.json["errors"]] == ["image_ids.0"], (bad, r)
    for good in ("/media/projects/1/a..b.png", "/media/x.y/z.png", "https://cdn.example/a/../b.png"):
        r = await sheda.api.patch(f"{PROJECTS}/{pid}", {"images": [good]}, token=builder.token)
        assert r.status == 200 and r.json["images"] == [good], (good, r)


# ---- a builder's account leaves, their projects leave the lists (sheda_rt/builders/builder_status.py) ----------------
async def _found_projects(sheda, w: str) -> set[int]:
    r = await sheda.api.get(f"{PROJECTS}?location={w}&limit=100")
    assert r.status == 200, r
    return {p["id"] for p in r.json["items"]}


async def _projects_are(sheda, w: str, ids: set[int]):
    async def check():
        return await _found_projects(sheda, w) == ids
    await eventually(check, "the projects' job (the request waits for it; a loaded machine may still be running it)", timeout=20)


async def _hidden_to_the_public(sheda, project: dict, unit_id: int, tokens) -> None:
    pid = project["id"]
    for token in tokens:
        for path in (f"{PROJECTS}/{pid}", f"{PROJECTS}/{pid}/units", f"{PROJECTS}/{pid}/units/{unit_id}",
                     f"{PROJECTS}/{pid}/payment-plans", f"{PROJECTS}/{pid}/progress", f"{PROJECTS}/{pid}/updates",
                     f"{PROJECTS}/{pid}/models"):
            r = await sheda.api.get(path, token=token)
            assert r.status == 404 and r.json["code"] == "project_not_found", (path, r)


async def test_a_departed_builders_projects_leave_the_lists_and_come_back_with_the_account(sheda):
    """A builder deactivated (or switched to client) kept their published projects on GET /projects, readable and
    their units looking bookable (a booking is 409 builder_inactive), while their page is 404. As an agent's
    listings leave with the agent: out of every list and 404 to the public as a draft is (`hidden_reason`
    builder_inactive for the builder and admins, still published); reactivated or switched back, exactly those
    come back. Another builder's project never changes."""
    w = word()
    admin = await sheda.admin()
    client = await sheda.signup("client")
    builder = await verified_builder(sheda, admin)
    project = await published_project(sheda, builder, location=f"{w} Lekki")
    units = await add_units(sheda, builder, project["id"], [unit("H-1")])
    draft = await create_project(sheda, builder, location=f"{w} Lekki")
    other = await verified_builder(sheda, admin)
    theirs = await published_project(sheda, other, location=f"{w} Ikoyi")
    before_theirs = (await sheda.api.get(f"{PROJECTS}/{theirs['id']}")).json
    assert await _found_projects(sheda, w) == {project["id"], theirs["id"]}
    r = await sheda.api.get(f"{PROJECTS}/{project['id']}")
    assert r.status == 200 and r.json["hidden_reason"] is None, r

    # deactivated by an admin
    r = await sheda.api.patch(f"/api/v1/admin/users/{builder.id}", {"is_active": False}, token=admin.token)
    assert r.status == 200, r
    await _projects_are(sheda, w, {theirs["id"]})
    r = await sheda.api.get(f"{PROJECTS}?builder_id={builder.id}")
    assert r.status == 200 and r.json["items"] == [], r
    await _hidden_to_the_public(sheda, project, units[0]["id"], (None, client.token))
    r = await sheda.api.get(f"{PROJECTS}/{project['id']}", token=admin.token)  # admins still see it, and why
    assert r.status == 200 and r.json["published"] is True and r.json["hidden_reason"] == "builder_inactive", r
    assert (await sheda.api.get(f"/api/v1/builders/{builder.id}")).status == 404
    r = await sheda.api.get(f"{PROJECTS}/{draft['id']}", token=admin.token)
    assert r.json["published"] is False and r.json["hidden_reason"] is None  # a draft is not hidden, it stays a draft

    # reactivated: exactly those back
    r = await sheda.api.patch(f"/api/v1/admin/users/{builder.id}", {"is_active": True}, token=admin.token)
    assert r.status == 200, r
    await _projects_are(sheda, w, {project["id"], theirs["id"]})
    r = await sheda.api.get(f"{PROJECTS}/{project['id']}", token=client.token)
    assert r.status == 200 and r.json["published"] is True and r.json["hidden_reason"] is None, r
    assert (await sheda.api.get(f"{PROJECTS}/{project['id']}/units")).status == 200
    r = await sheda.api.get(f"/api/v1/builders/{builder.id}")
    assert r.status == 200 and [p["id"] for p in r.json["projects"]] == [project["id"]], r
    assert (await sheda.api.get(f"{PROJECTS}/{draft['id']}")).status == 404  # still a draft

    # switched to client (the deactivation ended the builder's sessions: signed in again), then back to builder
    login = await sheda.api.post("/api/v1/auth/login", {"username": builder.username, "password": builder.password})
    assert login.status == 200, login
    r = await sheda.api.post("/api/v1/auth/switch-account", {"switch_to": "client"}, token=login.json["access_token"])
    assert r.status == 200, r
    as_client = r.json["access_token"]
    await _projects_are(sheda, w, {theirs["id"]})
    await _hidden_to_the_public(sheda, project, units[0]["id"], (None, client.token))
    r = await sheda.api.get(f"{PROJECTS}/{project['id']}", token=as_client)  # its builder still sees it
    assert r.status == 200 and r.json["hidden_reason"] == "builder_inactive", r
    r = await sheda.api.post("/api/v1/auth/switch-account", {"switch_to": "agent"}, token=as_client)
    assert r.status == 200, r  # client to agent: still not a builder, still hidden
    as_agent = r.json["access_token"]
    assert await _found_projects(sheda, w) == {theirs["id"]}
    r = await sheda.api.post("/api/v1/auth/switch-account", {"switch_to": "builder"}, token=as_agent)
    assert r.status == 200, r
    await _projects_are(sheda, w, {project["id"], theirs["id"]})
    assert (await sheda.api.get(f"{PROJECTS}/{project['id']}")).status == 200
    assert (await sheda.api.get(f"{PROJECTS}/{theirs['id']}")).json == before_theirs  # the other builder's: unchanged


async def test_a_builder_who_left_before_projects_followed_is_caught_up_at_a_start(sheda, tmp_path):
    """Projects stored before this version whose builder had already been deactivated or switched to another type
    stayed listed: the first start queues the builder's job (once), and they are hidden as a deactivation now hides
    them; reactivated, they come back."""
    w = word()
    admin = await sheda.admin()
    gone = await verified_builder(sheda, admin)
    switched = await verified_builder(sheda, admin)
    staying = await verified_builder(sheda, admin)
    projects = {b.id: await published_project(sheda, b, location=f"{w} Lekki") for b in (gone, switched, staying)}
    # what an older version wrote: only the accounts' writes
    await sheda.ctx.db["users"].update_one({"_id": gone.id}, {"$set": {"is_active": False}})
    await sheda.ctx.db["users"].update_one({"_id": switched.id}, {"$set": {"user_type": "client"}})
    await sheda.ctx.db["meta"].delete_one({"_id": "projects.builder_status.backfill"})
    assert await _found_projects(sheda, w) == {p["id"] for p in projects.values()}  # what the old data shows
    await start_and_stop(another_server(sheda, tmp_path))  # what every start runs
    for b in (gone, switched):
        job = await _job_done(sheda, f"projects.builder_status:{b.id}:backfill")
        assert job["result"] == {"outcome": "hidden", "projects": 1}, job
    assert await sheda.ctx.db["jobs"].find_one({"_id": f"projects.builder_status:{staying.id}:backfill"}) is None
    assert await _found_projects(sheda, w) == {projects[staying.id]["id"]}
    assert await sheda.ctx.builder_projects.backfill_inactive() == 0  # once only
    r = await sheda.api.patch(f"/api/v1/admin/users/{gone.id}", {"is_active": True}, token=admin.token)
    assert r.status == 200, r
    await _projects_are(sheda, w, {projects[gone.id]["id"], projects[staying.id]["id"]})


async def _job_done(sheda, key: str) -> dict:
    for _ in range(1000):
        await sheda.ctx.job_runner.run_due()
        job = await sheda.ctx.db["jobs"].find_one({"_id": key})
        assert job is not None, f"no job {key}"
        if job["status"] == "done":
            return job
        await asyncio.sleep(0.1)
    raise AssertionError(f"job {key} never ran: {job}")


async def test_the_walk_over_a_builders_projects_reads_an_index(sheda):
    store = sheda.ctx.project_store
    for reason in (None, "builder_inactive"):
        pipeline = store.builder_project_pipeline(123, hidden_reason=reason)
        explained = await sheda.ctx.db.command("explain", {"aggregate": "projects", "pipeline": pipeline, "cursor": {}},
                                               verbosity="queryPlanner")
        assert not _collscan(_winning_plan(explained)), (pipeline, explained)
