"""Runtime settings (issue 17 §5): an admin reads the defaults (the static settings), changes
them, and sees each change in the audit; others are refused; bad values change nothing; a new
booking holds its unit for the new period; units over the new maximum are refused (409
too_many_units); the public status carries the maintenance banner. With two processes, a
change made through A is what B answers right after A's answer."""
from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from tests.redis_support import Remote, redis_server, server_pair, shared_dir  # noqa: F401  (module fixtures)
from tests.test_builder_bookings import book, setup_project
from tests.test_builders import unit
from tests.test_multiprocess_admin import admin_on

SETTINGS = "/api/v1/admin/settings"
AUDIT = "/api/v1/admin/settings/audit"


@pytest.fixture
def sheda(sheda, io_loop):
    """The settings are one document in the shared test database: every test here leaves the defaults."""
    yield sheda
    io_loop.run_sync(lambda: sheda.ctx.db["runtime_settings"].delete_many({}))


def ts(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


async def test_admin_reads_defaults_patches_and_sees_the_audit(sheda):
    admin = await sheda.admin()
    r = await sheda.api.get(SETTINGS, token=admin.token)
    assert r.status == 200, r
    assert r.json == {"booking_hold_hours": sheda.ctx.settings.booking_hold_hours, "booking_percent": "10.00",
                      "max_units_per_project": 5000, "maintenance_banner": None}
    assert (await sheda.api.get("/api/v1/status")).json == {"maintenance_banner": None}

    r = await sheda.api.patch(SETTINGS, {"booking_hold_hours": 12, "booking_percent": "15.5",
                                         "maintenance_banner": "Upgrade tonight 22:00"}, token=admin.token)
    assert r.status == 200, r
    assert r.json == {"booking_hold_hours": 12.0, "booking_percent": "15.50", "max_units_per_project": 5000,
                      "maintenance_banner": "Upgrade tonight 22:00"}
    assert (await sheda.api.get(SETTINGS, token=admin.token)).json == r.json
    assert (await sheda.api.get("/api/v1/status")).json == {"maintenance_banner": "Upgrade tonight 22:00"}
    # A second change: only what moved is audited; null clears the banner.
    r = await sheda.api.patch(SETTINGS, {"booking_hold_hours": 12, "maintenance_banner": None}, token=admin.token)
    assert r.status == 200 and r.json["maintenance_banner"] is None and r.json["booking_hold_hours"] == 12.0, r

    page = await sheda.api.get(AUDIT, params={"limit": "1"}, token=admin.token)
    assert page.status == 200, page
    newest = page.json["items"][0]
    assert newest["who"] == admin.id and newest["changes"] == {"maintenance_banner": ["Upgrade tonight 22:00", None]}
    rest = await sheda.api.get(AUDIT, params={"limit": "1", "cursor": page.json["next_cursor"]}, token=admin.token)
    first = rest.json["items"][0]
    assert first["who"] == admin.id and first["changes"] == {
        "booking_hold_hours": [sheda.ctx.settings.booking_hold_hours, 12.0], "booking_percent": ["10.00", "15.50"],
        "maintenance_banner": [None, "Upgrade tonight 22:00"]}
    assert ts(first["when"]) <= ts(newest["when"]) and first["id"] != newest["id"]


async def test_non_admins_are_refused_and_bad_values_change_nothing(sheda):
    admin, user = await sheda.admin(), await sheda.signup("client")
    for method, path, body in (("get", SETTINGS, None), ("patch", SETTINGS, {"booking_hold_hours": 1}), ("get", AUDIT, None)):
        r = await (sheda.api.get(path, token=user.token) if method == "get" else sheda.api.patch(path, body, token=user.token))
        assert r.status == 403, (path, r)
        assert (await sheda.api.request(method.upper(), path, json_body=body)).status == 401
    before = (await sheda.api.get(SETTINGS, token=admin.token)).json
    audit_before = (await sheda.api.get(AUDIT, params={"limit": "100"}, token=admin.token)).json["items"]
    bad = [{"booking_hold_hours": 0}, {"booking_hold_hours": "soon"}, {"booking_hold_hours": None},
           {"booking_percent": "100.01"}, {"booking_percent": "-1"}, {"booking_percent": 10.5}, {"booking_percent": "1e3"},
           {"max_units_per_project": 0}, {"max_units_per_project": 2.5}, {"maintenance_banner": "x" * 501},
           {"maintenance_banner": 5}, {"colour": "blue"}, {"booking_hold_hours": 6, "unknown": 1},
           {"booking_hold_hours": 6, "max_units_per_project": -3}]
    for body in bad:
        r = await sheda.api.patch(SETTINGS, body, token=admin.token)
        assert r.status == 422 and r.json["code"] == "validation_error" and r.json["errors"], (body, r)
    assert (await sheda.api.patch(SETTINGS, [1], token=admin.token)).status == 422
    assert (await sheda.api.get(SETTINGS, token=admin.token)).json == before
    assert (await sheda.api.get(AUDIT, params={"limit": "100"}, token=admin.token)).json["items"] == audit_before
    assert await sheda.ctx.db["runtime_settings"].count_documents({}) == 0


async def test_numbers_must_be_json_numbers_and_a_blank_banner_is_no_banner(sheda):
    # `true` was taken as a 1-hour hold (a bool is an int to lax pydantic) and "6" as 6: the body's JSON types are strict.
    admin = await sheda.admin()
    before = (await sheda.api.get(SETTINGS, token=admin.token)).json
    for body in ({"booking_hold_hours": True}, {"booking_hold_hours": "6"}, {"max_units_per_project": True},
                 {"max_units_per_project": "5"}, {"max_units_per_project": 5.0},
                 {"max_units_per_project": None}):  # only the banner takes null: the 422 names the field, not "body"
        r = await sheda.api.patch(SETTINGS, body, token=admin.token)
        assert r.status == 422 and r.json["errors"][0]["field"] == next(iter(body)), (body, r)
    assert (await sheda.api.get(SETTINGS, token=admin.token)).json == before
    # "" or spaces were stored and served as the banner, which the apps show while it is not null: an empty bar.
    assert (await sheda.api.patch(SETTINGS, {"maintenance_banner": "Upgrade at 22:00"}, token=admin.token)).status == 200
    for blank in ("", "   "):
        r = await sheda.api.patch(SETTINGS, {"maintenance_banner": blank}, token=admin.token)
        assert r.status == 200 and r.json["maintenance_banner"] is None, (blank, r)
        assert (await sheda.api.get("/api/v1/status")).json == {"maintenance_banner": None}


async def test_a_new_booking_holds_its_unit_for_the_new_period(sheda):
    admin = await sheda.admin()
    builder, project, units, plan = await setup_project(sheda, units=("H-1", "H-2"))
    client = await sheda.signup("client")
    r = await book(sheda, client, units[0]["id"], plan["id"])
    assert r.status == 201, r
    assert ts(r.json["hold_until"]) - ts(r.json["created_at"]) == _hours(sheda.ctx.settings.booking_hold_hours)
    assert (await sheda.api.patch(SETTINGS, {"booking_hold_hours": 2.5}, token=admin.token)).status == 200
    r = await book(sheda, client, units[1]["id"], plan["id"])
    assert r.status == 201, r
    assert ts(r.json["hold_until"]) - ts(r.json["created_at"]) == _hours(2.5)
    assert r.json["installments"][0]["due_date"] == r.json["hold_until"]
    # The test database is shared: leave no held booking behind for another module's booking job to expire.
    mine = await sheda.api.get("/api/v1/bookings", token=client.token)
    for booking in mine.json["items"]:
        assert (await sheda.api.post(f"/api/v1/bookings/{booking['id']}/cancel", {}, token=client.token)).status == 200


async def test_the_booking_percent_makes_the_booking_line_of_a_plan_sent_without_lines(sheda):
    """booking_percent is the default booking percentage: a payment plan sent without `lines` is a booking line of
    it (line 1, the booking payment) and the balance at handover, as it is when the plan is made."""
    admin = await sheda.admin()
    builder, project, units, _ = await setup_project(sheda, units=("D-1",), price="20000000.00")
    plans = f"/api/v1/projects/{project['id']}/payment-plans"
    r = await sheda.api.post(plans, {"name": "Standard"}, token=builder.token)
    assert r.status == 201 and r.json["lines"] == [{"label": "Booking", "percent": "10.00", "due": "booking"},
                                                   {"label": "Balance", "percent": "90.00", "due": "handover"}], r
    assert (await sheda.api.patch(SETTINGS, {"booking_percent": "15.5"}, token=admin.token)).status == 200
    r = await sheda.api.post(plans, {"name": "Standard 15.5"}, token=builder.token)
    assert r.status == 201 and r.json["lines"] == [{"label": "Booking", "percent": "15.50", "due": "booking"},
                                                   {"label": "Balance", "percent": "84.50", "due": "handover"}], r
    client = await sheda.signup("client")
    booked = await book(sheda, client, units[0]["id"], r.json["id"])
    assert booked.status == 201, booked
    assert [(i["n"], i["amount"]) for i in booked.json["installments"]] == [(1, "3100000.00"), (2, "16900000.00")]
    assert (await sheda.api.post(f"/api/v1/bookings/{booked.json['id']}/cancel", {}, token=client.token)).status == 200
    assert (await sheda.api.patch(SETTINGS, {"booking_percent": "100"}, token=admin.token)).status == 200
    r = await sheda.api.post(plans, {"name": "All at booking"}, token=builder.token)
    assert r.status == 201 and r.json["lines"] == [{"label": "Booking", "percent": "100.00", "due": "booking"}], r
    # 0: no booking line to make, and line 1 is always the booking payment: the builder sends the lines.
    assert (await sheda.api.patch(SETTINGS, {"booking_percent": "0"}, token=admin.token)).status == 200
    r = await sheda.api.post(plans, {"name": "Nothing down"}, token=builder.token)
    assert r.status == 422 and [e["field"] for e in r.json["errors"]] == ["lines"], r
    assert len((await sheda.api.get(plans)).json["items"]) == 4  # setup's plan and the three made here


def _hours(h: float) -> timedelta:
    return timedelta(hours=h)


async def test_units_over_the_runtime_maximum_are_refused(sheda):
    admin = await sheda.admin()
    builder, project, units, plan = await setup_project(sheda, units=("M-1", "M-2"))
    assert (await sheda.api.patch(SETTINGS, {"max_units_per_project": 3}, token=admin.token)).status == 200
    path = f"/api/v1/projects/{project['id']}/units"
    r = await sheda.api.post(path, {"units": [unit("M-3"), unit("M-4")]}, token=builder.token)
    assert r.status == 409 and r.json["code"] == "too_many_units" and "at most 3" in r.json["detail"], r
    assert await sheda.ctx.db["units"].count_documents({"project_id": project["id"]}) == 2
    r = await sheda.api.post(path, {"units": [unit("M-3")]}, token=builder.token)
    assert r.status == 201, r
    assert (await sheda.api.post(path, {"units": [unit("M-4")]}, token=builder.token)).status == 409


async def test_a_change_through_a_is_what_b_answers_right_after(server_pair):
    a, b = Remote(server_pair[0]), Remote(server_pair[1])
    admin = await admin_on(a)
    # B has read (and cached) the settings before the change.
    assert (await b.api.get("/api/v1/status")).json == {"maintenance_banner": None}
    before = (await b.api.get(SETTINGS, token=admin.token)).json
    for banner, hours in (("Down at noon", 7.0), (None, 9.0), ("Back soon", 11.0)):
        r = await a.api.patch(SETTINGS, {"maintenance_banner": banner, "booking_hold_hours": hours}, token=admin.token)
        assert r.status == 200, r
        # No wait: A answers once every process has dropped its copy.
        assert (await b.api.get("/api/v1/status")).json == {"maintenance_banner": banner}
        assert (await b.api.get(SETTINGS, token=admin.token)).json == {**before, "maintenance_banner": banner,
                                                                          "booking_hold_hours": hours}
