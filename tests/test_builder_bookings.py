"""Bookings of off-plan units with installment plans, and following construction (issue 17 §3, §4), as
clients and builders use them with live sockets: two clients race for one unit, the winner pays the
booking amount, the builder confirms, installments fall due with a moved clock (never slept on), one
goes overdue, all are paid and the unit is sold; holds lapse; cancellations; construction updates reach
the buyers and the project's watchers. Every refusal is checked to leave storage as it was, and every
frame the sockets received is held to the socket protocol's models and the served AsyncAPI document."""
from __future__ import annotations

import asyncio

import pytest

from sheda_rt.builders.bookings import BookingService
from sheda_rt.realtime import protocol
from tests.listing_helpers import snapshot
from tests.test_asyncapi import check_frame, document_validators
from tests.test_builders import _collscan, _winning_plan, add_units, published_project, unit, verified_builder

BOOKINGS = "/api/v1/bookings"
PLAN = {"name": "Four steps", "lines": [
    {"label": "Booking", "percent": "10.00", "due": "booking"},
    {"label": "Month one", "percent": "33.33", "due": "months:1"},
    {"label": "Month two", "percent": "33.33", "due": "months:2"},
    {"label": "Handover", "percent": "23.34", "due": "handover"},
]}


@pytest.fixture
def settings_overrides():
    # The clock moves by months here: tokens (and the sockets that carry them) outlive it.
    return {"access_token_minutes": 365 * 24 * 60}


async def setup_project(sheda, *, units=("A-1", "A-2"), price="45000000.01", plan=PLAN, **over):
    builder = await verified_builder(sheda)
    project = await published_project(sheda, builder, **over)
    stored = await add_units(sheda, builder, project["id"], [unit(n, price=price) for n in units])
    r = await sheda.api.post(f"/api/v1/projects/{project['id']}/payment-plans", plan, token=builder.token)
    assert r.status == 201, r
    return builder, project, stored, r.json


async def book(sheda, client, unit_id: int, plan_id: int):
    return await sheda.api.post(BOOKINGS, {"unit_id": unit_id, "plan_id": plan_id}, token=client.token)


async def line(sheda, user, booking_id: int, n: int, action: str, body: dict | None = None):
    path = f"{BOOKINGS}/{booking_id}/installments/{n}/{action}"
    return await sheda.api.post(path, body if body is not None else ({"reference": f"TRF-{n}"} if action == "payment-sent" else None),
                                token=user.token)


async def unit_doc(sheda, unit_id: int) -> dict:
    return await sheda.ctx.db["units"].find_one({"_id": unit_id})


async def assert_frames_documented(sheda, sockets) -> None:
    validators = document_validators((await sheda.api.get("/api/v1/asyncapi.json")).json)
    problems = []
    for ws in sockets:
        for frame in ws.frames:
            problems += check_frame(frame, validators)[1]
    assert not problems, "\n".join(dict.fromkeys(problems))


def test_every_booking_event_kind_is_documented():
    assert set(protocol.frame_types(protocol.BookingEvent)) == {f"booking.{k}" for k in BookingService._TEXT}


async def test_two_clients_race_the_winner_pays_every_installment_and_the_unit_is_sold(sheda):
    builder, project, units, plan = await setup_project(sheda, expected_completion="2028-06-30")
    target = units[0]
    c1, c2 = await sheda.signup("client"), await sheda.signup("client")
    b_ws, ws1, ws2 = await sheda.ws(builder.token), await sheda.ws(c1.token), await sheda.ws(c2.token)
    sockets = [b_ws, ws1, ws2]
    try:
        # Two clients race for one unit: exactly one wins, the loser's attempt leaves nothing stored.
        r1, r2 = await asyncio.gather(book(sheda, c1, target["id"], plan["id"]), book(sheda, c2, target["id"], plan["id"]))
        assert sorted([r1.status, r2.status]) == [201, 409], (r1, r2)
        winner, loser = (c1, c2) if r1.status == 201 else (c2, c1)
        w_ws = ws1 if winner is c1 else ws2
        booking = (r1 if r1.status == 201 else r2).json
        assert (r2 if r1.status == 201 else r1).json["code"] == "unit_not_available"
        assert await sheda.ctx.db["bookings"].count_documents({"unit_id": target["id"]}) == 1
        stored_unit = await unit_doc(sheda, target["id"])
        assert stored_unit["status"] == "reserved" and stored_unit["booking_id"] == booking["id"]
        assert booking["status"] == "reserved" and booking["client_id"] == winner.id and booking["builder_id"] == builder.id
        assert booking["hold_until"] is not None
        # The schedule: kobo-exact, the remainder on the last line; line 1 due when the hold ends.
        amounts = [ln["amount"] for ln in booking["installments"]]
        assert amounts == ["4500000.00", "14998500.00", "14998500.00", "10503000.01"], amounts
        assert booking["installments"][0]["due_date"] == booking["hold_until"]
        assert booking["installments"][3]["due_date"].startswith("2028-06-30")
        assert [ln["status"] for ln in booking["installments"]] == ["due"] * 4
        assert booking["outstanding"] == "45000000.01" and booking["paid"] == "0.00"
        await b_ws.wait_type("booking.created")
        assert (await sheda.api.get(f"/api/v1/projects/{project['id']}", token=builder.token)).json["unit_counts"]["reserved"] == 1
        mine = await sheda.api.get(BOOKINGS, token=winner.token)
        assert [b["id"] for b in mine.json["items"]] == [booking["id"]]
        assert (await sheda.api.get(BOOKINGS, token=loser.token)).json["items"] == []
        assert (await sheda.api.get(f"{BOOKINGS}/{booking['id']}", token=loser.token)).status == 404
        assert (await sheda.api.get(f"{BOOKINGS}/{booking['id']}", token=builder.token)).status == 200

        # The winner pays the booking amount; the builder sees it live, then confirms: the unit is booked.
        r = await line(sheda, winner, booking["id"], 1, "payment-sent", {"reference": "TRF-0001"})
        assert r.status == 200 and r.json["installments"][0]["status"] == "sent" and r.json["hold_until"] is None, r
        sent = await b_ws.wait_type("booking.payment_sent")
        assert sent["installment"] == 1 and sent["booking"]["installments"][0]["reference"] == "TRF-0001"
        await b_ws.wait_for(lambda f: f.get("type") == "notification" and f.get("kind") == "booking.payment_sent")
        r = await line(sheda, builder, booking["id"], 1, "confirm")
        assert r.status == 200 and r.json["status"] == "active" and r.json["paid"] == "4500000.00", r
        await w_ws.wait_type("booking.payment_confirmed")
        assert (await unit_doc(sheda, target["id"]))["status"] == "booked"

        # A month on, less three days: line 2 gets its reminder (once, however often the job runs).
        sheda.ctx.clock.advance(days=28)
        result = await sheda.ctx.booking_job.run()
        assert result == {"expired": 0, "reminded": 1, "overdue": 0, "completed": 0, "units_synced": 0}, result
        due = await w_ws.wait_type("booking.installment_due")
        assert due["installment"] == 2
        await b_ws.wait_type("booking.installment_due")
        assert (await sheda.ctx.bookings.run_due()) == {"expired": 0, "reminded": 0, "overdue": 0, "completed": 0, "units_synced": 0}
        # Past its date unpaid: overdue, to both.
        sheda.ctx.clock.advance(days=4)
        assert (await sheda.ctx.booking_job.run()) == {"expired": 0, "reminded": 0, "overdue": 1, "completed": 0, "units_synced": 0}
        late = await w_ws.wait_type("booking.installment_overdue")
        assert late["booking"]["installments"][1]["status"] == "overdue"
        await b_ws.wait_type("booking.installment_overdue")
        await w_ws.wait_for(lambda f: f.get("type") == "notification" and f.get("kind") == "booking.installment_overdue")
        recv = await sheda.api.get("/api/v1/builder/receivables", token=builder.token)
        assert recv.status == 200, recv
        row = recv.json["projects"][0]
        assert row["project_id"] == project["id"] and row["received"] == "4500000.00" and row["overdue"] == "14998500.00"
        assert row["due"] == "25501500.01" and recv.json["totals"]["overdue"] == "14998500.00"
        assert (await sheda.api.get("/api/v1/builder/receivables", token=winner.token)).status == 403

        # A declined payment goes back to overdue; then everything is paid and the unit is sold.
        assert (await line(sheda, winner, booking["id"], 2, "payment-sent")).status == 200
        r = await line(sheda, builder, booking["id"], 2, "decline")
        assert r.status == 200 and r.json["installments"][1]["status"] == "overdue", r
        await w_ws.wait_type("booking.payment_declined")
        for n in (2, 3, 4):
            assert (await line(sheda, winner, booking["id"], n, "payment-sent")).status == 200
            r = await line(sheda, builder, booking["id"], n, "confirm")
            assert r.status == 200, r
        assert r.json["status"] == "completed" and r.json["outstanding"] == "0.00" and r.json["paid"] == "45000000.01"
        await w_ws.wait_type("booking.completed")
        await b_ws.wait_type("booking.completed")
        assert (await unit_doc(sheda, target["id"]))["status"] == "sold"
        recv = await sheda.api.get("/api/v1/builder/receivables", token=builder.token)
        assert recv.json["totals"] == {"due": "0.00", "overdue": "0.00", "received": "45000000.01", "awaiting_confirmation": "0.00"}
        # The loser was told nothing about the winner's booking.
        assert not [f for f in (ws2 if loser is c2 else ws1).frames if str(f.get("type", "")).startswith("booking.")]
        # A completed booking cannot be cancelled, nor a line paid twice.
        before = await snapshot(sheda, "bookings", booking["id"])
        r = await sheda.api.post(f"{BOOKINGS}/{booking['id']}/cancel", {"reason": "changed my mind"}, token=builder.token)
        assert r.status == 409 and r.json["code"] == "wrong_state", r
        assert (await line(sheda, winner, booking["id"], 2, "payment-sent")).status == 409
        assert await snapshot(sheda, "bookings", booking["id"]) == before
    finally:
        for ws in sockets:
            ws.close()
    await assert_frames_documented(sheda, sockets)


async def test_a_lapsed_hold_frees_the_unit_and_a_sent_booking_payment_pauses_it(sheda):
    builder, project, units, plan = await setup_project(sheda)
    client, other = await sheda.signup("client"), await sheda.signup("client")
    ws = await sheda.ws(client.token)
    try:
        first = (await book(sheda, client, units[0]["id"], plan["id"])).json
        paused = (await book(sheda, client, units[1]["id"], plan["id"])).json
        assert (await line(sheda, client, paused["id"], 1, "payment-sent")).status == 200
        sheda.ctx.clock.advance(hours=47)
        assert (await sheda.ctx.bookings.run_due())["expired"] == 0
        sheda.ctx.clock.advance(hours=2)
        assert (await sheda.ctx.booking_job.run())["expired"] == 1
        event = await ws.wait_type("booking.expired")
        assert event["booking"]["id"] == first["id"] and event["booking"]["status"] == "expired"
        assert (await unit_doc(sheda, units[0]["id"]))["status"] == "available"
        assert "booking_id" not in await unit_doc(sheda, units[0]["id"])
        # Again: nothing more happens (idempotent), and the paused hold is still held.
        assert (await sheda.ctx.bookings.run_due())["expired"] == 0
        assert (await sheda.api.get(f"{BOOKINGS}/{paused['id']}", token=client.token)).json["status"] == "reserved"
        # The expired booking cannot be paid into any more; the freed unit is someone else's to book.
        r = await line(sheda, client, first["id"], 1, "payment-sent")
        assert r.status == 409, r
        assert (await book(sheda, other, units[0]["id"], plan["id"])).status == 201
        # A decline gives the paused hold back (what was left of it), and then it lapses too.
        r = await line(sheda, builder, paused["id"], 1, "decline")
        assert r.status == 200 and r.json["hold_until"] is not None and r.json["installments"][0]["status"] == "due", r
        sheda.ctx.clock.advance(hours=49)
        assert (await sheda.ctx.booking_job.run())["expired"] == 2  # and other's booking
        assert (await unit_doc(sheda, units[1]["id"]))["status"] == "available"
    finally:
        ws.close()


async def test_a_plan_starts_with_its_booking_payment_and_old_plans_that_do_not_still_book(sheda):
    """Line 1 is the booking payment (due within the hold). A plan whose first line is due later is refused
    (422 naming lines.0.due) instead of being booked with that line due at booking after all; a plan stored
    before that rule still books, its line 1 shown as what it is: due at booking, on the hold's end."""
    builder, project, units, plan = await setup_project(sheda, units=("L-1",))
    plans = f"/api/v1/projects/{project['id']}/payment-plans"
    stored = await sheda.ctx.db["payment_plans"].count_documents({"project_id": project["id"]})
    for first in ("months:3", "handover"):
        bad = {"name": "Later", "lines": [{"label": "First", "percent": "40.00", "due": first},
                                          {"label": "Then", "percent": "60.00", "due": "booking"}]}
        r = await sheda.api.post(plans, bad, token=builder.token)
        assert r.status == 422 and [e["field"] for e in r.json["errors"]] == ["lines.0.due"], r
    assert await sheda.ctx.db["payment_plans"].count_documents({"project_id": project["id"]}) == stored
    old = await sheda.ctx.payment_plan_store.insert({
        "project_id": project["id"], "name": "Old", "created_at": sheda.ctx.clock.now(),
        "lines": [{"label": "Quarter", "percent": "25.00", "due": "months:3"},
                  {"label": "Handover", "percent": "75.00", "due": "handover"}]})
    r = await sheda.api.get(plans, params={"unit_id": units[0]["id"]})
    [listed] = [p for p in r.json["items"] if p["id"] == old["_id"]]
    assert [ln["due"] for ln in listed["lines"]] == ["booking", "handover"], listed
    assert [ln["due"] for ln in listed["schedule"]] == ["booking", "handover"], listed
    client = await sheda.signup("client")
    r = await book(sheda, client, units[0]["id"], old["_id"])
    assert r.status == 201, r
    first = r.json["installments"][0]
    assert first["due"] == "booking" and first["due_date"] == r.json["hold_until"] and first["label"] == "Quarter", r.json
    assert (await line(sheda, client, r.json["id"], 1, "payment-sent")).status == 200
    assert (await line(sheda, builder, r.json["id"], 1, "confirm")).json["status"] == "active"
    assert (await line(sheda, client, r.json["id"], 2, "payment-sent")).status == 200
    # closed, so that no later test's booking job (the database lives for the session) finds its lines
    assert (await sheda.api.post(f"{BOOKINGS}/{r.json['id']}/cancel", {"reason": "test over"}, token=builder.token)).status == 200
    # A line sent before the booking closed: the refusal says what is missing (not "a line the client marked sent").
    for action, needs in (("confirm", "on an active booking"), ("decline", "an open booking")):
        refused = await line(sheda, builder, r.json["id"], 2, action)
        assert refused.status == 409 and needs in refused.json["detail"], refused


async def test_a_plan_that_splits_a_units_price_into_a_zero_line_is_refused_at_booking(sheda):
    """A unit priced 0.01 on a 10% booking line gets a line of 0.00, which no payment could settle (a gateway
    charge of nothing fails every time): the booking is refused (422 naming plan_id) with nothing stored and
    the unit still available; a plan that splits it into lines of at least a kobo books it. (Such a plan or unit
    is refused when it is made since; this is one stored before: the unit's price written directly.)"""
    plan = {"name": "Tenth", "lines": [{"label": "Booking", "percent": "10.00", "due": "booking"},
                                       {"label": "Balance", "percent": "90.00", "due": "months:1"}]}
    builder, project, units, tenth = await setup_project(sheda, units=("Z-1",), price="1.00", plan=plan)
    await sheda.ctx.db["units"].update_one({"_id": units[0]["id"]}, {"$set": {"price_minor": 1}})
    whole = {"name": "Whole", "lines": [{"label": "Booking", "percent": "100.00", "due": "booking"}]}
    r = await sheda.api.post(f"/api/v1/projects/{project['id']}/payment-plans", whole, token=builder.token)
    assert r.status == 201, r
    whole_id = r.json["id"]
    client = await sheda.signup("client")
    before = await sheda.ctx.db["bookings"].count_documents({})
    r = await book(sheda, client, units[0]["id"], tenth["id"])
    assert r.status == 422 and [e["field"] for e in r.json["errors"]] == ["plan_id"], r
    assert "0.00" in r.json["errors"][0]["message"], r.json
    assert await sheda.ctx.db["bookings"].count_documents({}) == before
    assert (await unit_doc(sheda, units[0]["id"]))["status"] == "available"
    r = await book(sheda, client, units[0]["id"], whole_id)
    assert r.status == 201 and r.json["installments"][0]["amount"] == "0.01", r
    assert (await sheda.api.post(f"{BOOKINGS}/{r.json['id']}/cancel", {}, token=client.token)).status == 200


async def test_a_plan_or_unit_that_would_split_a_price_into_a_zero_line_is_refused_when_made(sheda):
    """A builder learned of a 0.00 line only when a client's booking was refused (422 plan_id). Now a plan whose line
    would split the price of a unit of its project (not sold) into 0.00 is 422 naming that line's percent (`lines`
    for the default plan), and a unit priced so that a plan of its project does is 422 naming its price; nothing is
    stored either way. Lines of at least a kobo are taken."""
    tenth = {"name": "Tenth", "lines": [{"label": "Booking", "percent": "10.00", "due": "booking"},
                                        {"label": "Balance", "percent": "90.00", "due": "months:1"}]}
    builder, project, units, _ = await setup_project(sheda, units=("Z-1", "Z-2"), price="1000.00", plan=tenth)
    plans_url, units_url = f"/api/v1/projects/{project['id']}/payment-plans", f"/api/v1/projects/{project['id']}/units"

    async def plan_count():
        return await sheda.ctx.db["payment_plans"].count_documents({"project_id": project["id"]})

    async def unit_count():
        return await sheda.ctx.db["units"].count_documents({"project_id": project["id"]})

    # A unit whose price the project's 10% line would split into 0.00 (0.09 x 10% < a kobo): 422, nothing stored.
    r = await sheda.api.post(units_url, {"units": [unit("Z-3", price="5.00"), unit("Z-4", price="0.09")]}, token=builder.token)
    assert r.status == 422 and [e["field"] for e in r.json["errors"]] == ["units.1.price"], r
    assert "0.00" in r.json["errors"][0]["message"] and "Tenth" in r.json["errors"][0]["message"], r.json
    assert await unit_count() == 2
    [cheap] = await add_units(sheda, builder, project["id"], [unit("Z-5", price="0.10")])  # 10% of it is a kobo
    assert cheap["price"] == "0.10"
    # Now a plan with a line of 5% would split 0.10 into 0.00 (line 2): 422 naming it; nothing stored.
    plans = await plan_count()
    thin = {"name": "Thin", "lines": [{"label": "Booking", "percent": "50.00", "due": "booking"},
                                      {"label": "Extra", "percent": "5.00", "due": "months:1"},
                                      {"label": "Balance", "percent": "45.00", "due": "handover"}]}
    r = await sheda.api.post(plans_url, thin, token=builder.token)
    assert r.status == 422 and [e["field"] for e in r.json["errors"]] == ["lines.1.percent"], r
    assert "0.10" in r.json["errors"][0]["message"], r.json
    # The default plan (lines left out) at a 5% booking percentage likewise, naming lines.
    admin = await sheda.admin()
    assert (await sheda.api.patch("/api/v1/admin/settings", {"booking_percent": "5.00"}, token=admin.token)).status == 200
    try:
        r = await sheda.api.post(plans_url, {"name": "Default"}, token=builder.token)
        assert r.status == 422 and [e["field"] for e in r.json["errors"]] == ["lines"], r
    finally:
        assert (await sheda.api.patch("/api/v1/admin/settings", {"booking_percent": "10.00"}, token=admin.token)).status == 200
    assert await plan_count() == plans
    # Lines of at least a kobo of every unit: taken.
    r = await sheda.api.post(plans_url, {"name": "Halves", "lines": [{"label": "Booking", "percent": "50.00", "due": "booking"},
                                                                     {"label": "Balance", "percent": "50.00", "due": "handover"}]},
                             token=builder.token)
    assert r.status == 201, r


async def test_receivables_count_a_line_said_sent_as_due_never_overdue(sheda):
    """A line the client marked sent awaits the builder, not the client: the report counts it in due (and in
    awaiting_confirmation), as the booking shows it `sent`, even after its date (the booking payment's hold is
    paused meanwhile); an unpaid line of an active booking past its date is overdue before the job marks it."""
    builder, project, units, plan = await setup_project(sheda, units=("R-1", "R-2"), price="1000000.00")
    client = await sheda.signup("client")
    lapsing = (await book(sheda, client, units[0]["id"], plan["id"])).json
    paused = (await book(sheda, client, units[1]["id"], plan["id"])).json
    assert (await line(sheda, client, paused["id"], 1, "payment-sent")).status == 200

    async def report():
        r = await sheda.api.get("/api/v1/builder/receivables", token=builder.token)
        assert r.status == 200, r
        [row] = r.json["projects"]
        assert {k: row[k] for k in r.json["totals"]} == r.json["totals"], r.json
        return r.json["totals"]

    sheda.ctx.clock.advance(hours=49)  # past the hold the booking payment was sent in
    await sheda.ctx.bookings.run_due()
    assert (await sheda.api.get(f"{BOOKINGS}/{lapsing['id']}", token=builder.token)).json["status"] == "expired"
    shown = (await sheda.api.get(f"{BOOKINGS}/{paused['id']}", token=builder.token)).json
    assert shown["status"] == "reserved" and shown["installments"][0]["status"] == "sent", shown
    assert await report() == {"due": "1000000.00", "overdue": "0.00", "received": "0.00", "awaiting_confirmation": "100000.00"}
    assert (await line(sheda, builder, paused["id"], 1, "confirm")).status == 200
    sheda.ctx.clock.advance(days=32)  # line 2 (months:1) is past its date; the job has not marked it yet
    assert await report() == {"due": "566700.00", "overdue": "333300.00", "received": "100000.00",
                              "awaiting_confirmation": "0.00"}
    assert (await line(sheda, client, paused["id"], 2, "payment-sent")).status == 200
    assert await report() == {"due": "900000.00", "overdue": "0.00", "received": "100000.00",
                              "awaiting_confirmation": "333300.00"}
    assert (await line(sheda, builder, paused["id"], 2, "decline")).json["installments"][1]["status"] == "overdue"
    assert (await report())["overdue"] == "333300.00"
    # The report names the project as it is called now.
    assert (await sheda.api.patch(f"/api/v1/projects/{project['id']}", {"name": "Renamed Court"}, token=builder.token)).status == 200
    r = await sheda.api.get("/api/v1/builder/receivables", token=builder.token)
    assert [p["project_name"] for p in r.json["projects"]] == ["Renamed Court"], r.json
    r = await sheda.api.post(f"{BOOKINGS}/{paused['id']}/cancel", {"reason": "test over"}, token=builder.token)
    assert r.status == 200, r  # closed, as above


async def test_a_later_line_due_at_booking_is_not_overdue_for_the_builders_late_confirmation(sheda):
    """A second line due 'booking' can be paid only once the booking is active (the booking payment confirmed).
    The builder confirming after the hold's end (paused while they checked) must not make it overdue at once:
    it falls due what was left of the hold when the booking payment was sent, from the confirmation."""
    from datetime import datetime, timedelta

    fees = {"name": "Fees at booking", "lines": [{"label": "Booking", "percent": "10.00", "due": "booking"},
                                                  {"label": "Legal fees", "percent": "5.00", "due": "booking"},
                                                  {"label": "Balance", "percent": "85.00", "due": "handover"}]}
    builder, project, units, plan = await setup_project(sheda, units=("F-1",), plan=fees)
    client = await sheda.signup("client")
    booking = (await book(sheda, client, units[0]["id"], plan["id"])).json
    assert booking["installments"][1]["due_date"] == booking["hold_until"]
    assert (await line(sheda, client, booking["id"], 1, "payment-sent")).status == 200
    sheda.ctx.clock.advance(hours=72)  # the builder answers a day after the hold would have ended
    r = await line(sheda, builder, booking["id"], 1, "confirm")
    assert r.status == 200 and r.json["status"] == "active", r
    due = datetime.fromisoformat(r.json["installments"][1]["due_date"].replace("Z", "+00:00"))
    assert due >= sheda.ctx.clock.now() + timedelta(hours=47), r.json["installments"][1]
    await sheda.ctx.bookings.run_due()
    after = (await sheda.api.get(f"{BOOKINGS}/{booking['id']}", token=client.token)).json
    assert after["installments"][1]["status"] == "due", after["installments"][1]
    assert (await line(sheda, client, booking["id"], 2, "payment-sent")).status == 200
    r = await sheda.api.post(f"{BOOKINGS}/{booking['id']}/cancel", {"reason": "test over"}, token=builder.token)
    assert r.status == 200, r  # closed, so that no later test's booking job finds its lines


async def test_a_handover_line_follows_the_projects_expected_completion(sheda):
    builder, project, units, plan = await setup_project(sheda, units=("H-1",), expected_completion="2028-06-30")
    client = await sheda.signup("client")
    booking = (await book(sheda, client, units[0]["id"], plan["id"])).json
    assert (await line(sheda, client, booking["id"], 1, "payment-sent")).status == 200
    assert (await line(sheda, builder, booking["id"], 1, "confirm")).status == 200
    r = await sheda.api.patch(f"/api/v1/projects/{project['id']}", {"expected_completion": "2029-03-31"}, token=builder.token)
    assert r.status == 200, r
    await sheda.ctx.bookings.run_due()
    after = (await sheda.api.get(f"{BOOKINGS}/{booking['id']}", token=client.token)).json
    assert after["installments"][3]["due_date"].startswith("2029-03-31") and after["installments"][3]["status"] == "due"
    assert after["installments"][1]["due_date"] == booking["installments"][1]["due_date"]  # the others stay
    # Without a date it is due at handover, never overdue.
    r = await sheda.api.patch(f"/api/v1/projects/{project['id']}", {"expected_completion": None}, token=builder.token)
    assert r.status == 200, r
    await sheda.ctx.bookings.run_due()
    assert (await sheda.api.get(f"{BOOKINGS}/{booking['id']}", token=client.token)).json["installments"][3]["due_date"] is None


async def test_the_job_finishes_unit_moves_a_dead_process_left_half_done(sheda):
    """What a process that died between a booking's write and its unit's leaves behind (written
    here as it would be left), finished by the job once the in-flight grace has passed."""
    builder, project, units, plan = await setup_project(sheda, units=("S-1", "S-2", "S-3"))
    client, rival = await sheda.signup("client"), await sheda.signup("client")
    bookings, db = sheda.ctx.db["bookings"], sheda.ctx.db["units"]
    # 1. Cancelled by the builder, the process died before the unit was let go.
    one = (await book(sheda, client, units[0]["id"], plan["id"])).json
    await bookings.update_one({"_id": one["id"]}, {"$set": {"status": "cancelled", "unit_synced": False}})
    # 2. Stored, the process died before taking the unit (still available).
    two = (await book(sheda, client, units[1]["id"], plan["id"])).json
    await bookings.update_one({"_id": two["id"]}, {"$set": {"unit_synced": False}})
    await db.update_one({"_id": units[1]["id"]}, {"$set": {"status": "available"}, "$unset": {"booking_id": ""}})
    # 3. Same, but another client booked the unit meanwhile: the orphan can never complete.
    three = (await book(sheda, client, units[2]["id"], plan["id"])).json
    await bookings.update_one({"_id": three["id"]}, {"$set": {"unit_synced": False}})
    await db.update_one({"_id": units[2]["id"]}, {"$set": {"status": "available"}, "$unset": {"booking_id": ""}})
    assert (await book(sheda, rival, units[2]["id"], plan["id"])).status == 201
    # Within the grace nothing is touched (a request may still be finishing).
    assert (await sheda.ctx.bookings.sync_units()) == 0
    sheda.ctx.clock.advance(minutes=2)
    assert (await sheda.ctx.bookings.sync_units()) == 3
    assert (await unit_doc(sheda, units[0]["id"]))["status"] == "available"
    held = await unit_doc(sheda, units[1]["id"])
    assert held["status"] == "reserved" and held["booking_id"] == two["id"]
    orphan = await snapshot(sheda, "bookings", three["id"])
    assert orphan["status"] == "cancelled" and orphan["cancelled_by"] is None
    assert (await unit_doc(sheda, units[2]["id"]))["booking_id"] != three["id"]
    assert (await sheda.ctx.bookings.sync_units()) == 0
    counts = (await sheda.api.get(f"/api/v1/projects/{project['id']}", token=builder.token)).json["unit_counts"]
    assert counts["available"] == 1 and counts["reserved"] == 2


async def test_confirming_the_last_line_and_cancelling_at_once_exactly_one_wins(sheda):
    """The builder confirms the last line (a two-line plan's second, or a one-line plan's booking payment) and
    cancels the booking at the same moment: exactly one answers 200 and storage says what it did (completed and
    the unit sold, or cancelled with that line still sent and the unit available again), never a cancelled booking
    with every line paid and its unit back on sale. Deterministically too: a cancel reaching a booking whose lines
    are all confirmed but whose completion is not written yet is 409, and the booking completes."""
    two = {"name": "Two", "lines": [{"label": "Booking", "percent": "10.00", "due": "booking"},
                                    {"label": "Balance", "percent": "90.00", "due": "months:1"}]}
    rounds = 6
    builder, project, units, two_plan = await setup_project(sheda, units=[f"R-{i}" for i in range(rounds + 1)], plan=two)
    whole = {"name": "Whole", "lines": [{"label": "Booking", "percent": "100.00", "due": "booking"}]}
    r = await sheda.api.post(f"/api/v1/projects/{project['id']}/payment-plans", whole, token=builder.token)
    assert r.status == 201, r
    one_plan = r.json
    client = await sheda.signup("client")
    outcomes = set()
    for i in range(rounds):
        plan = two_plan if i % 2 else one_plan
        r = await book(sheda, client, units[i]["id"], plan["id"])
        assert r.status == 201, r
        bid = r.json["id"]
        assert (await line(sheda, client, bid, 1, "payment-sent")).status == 200
        last = len(plan["lines"])
        if last == 2:
            assert (await line(sheda, builder, bid, 1, "confirm")).status == 200
            assert (await line(sheda, client, bid, 2, "payment-sent")).status == 200
        confirmed, cancelled = await asyncio.gather(
            line(sheda, builder, bid, last, "confirm"),
            sheda.api.post(f"{BOOKINGS}/{bid}/cancel", {"reason": "changed plans"}, token=builder.token))
        assert sorted([confirmed.status, cancelled.status]) == [200, 409], (i, confirmed, cancelled)
        stored, held = await sheda.ctx.db["bookings"].find_one({"_id": bid}), await unit_doc(sheda, units[i]["id"])
        if confirmed.status == 200:
            outcomes.add("confirmed")
            assert cancelled.json["code"] == "wrong_state" and "completed" in cancelled.json["detail"], cancelled
            assert stored["status"] == "completed" and held["status"] == "sold", (stored, held)
            assert [ln["status"] for ln in stored["installments"]] == ["confirmed"] * last
        else:
            outcomes.add("cancelled")
            assert confirmed.json["code"] == "wrong_state" and "cancelled" in confirmed.json["detail"], confirmed
            assert stored["status"] == "cancelled" and held["status"] == "available", (stored, held)
            assert stored["installments"][last - 1]["status"] == "sent", stored
    assert outcomes  # which side wins each round is the race's; the invariant holds either way

    # The confirm's write landed (every line confirmed), its completion not yet: the cancel is refused, and completes it.
    r = await book(sheda, client, units[rounds]["id"], two_plan["id"])
    bid = r.json["id"]
    for who, action in ((client, "payment-sent"), (builder, "confirm")):
        assert (await line(sheda, who, bid, 1, action)).status == 200
    await sheda.ctx.db["bookings"].update_one({"_id": bid}, {"$set": {"installments.1.status": "confirmed"}})
    r = await sheda.api.post(f"{BOOKINGS}/{bid}/cancel", {"reason": "changed plans"}, token=builder.token)
    assert r.status == 409 and r.json["code"] == "wrong_state", r
    assert (await sheda.ctx.db["bookings"].find_one({"_id": bid}))["status"] == "completed"
    assert (await unit_doc(sheda, units[rounds]["id"]))["status"] == "sold"


async def test_a_booking_paid_in_full_whose_completion_a_dead_process_left_undone_is_completed(sheda):
    """A process dying between confirming the last line and completing the booking left it active with every line
    paid forever (a confirm of that line again is 409). The booking job completes it (the unit sold, both sides
    told), once however often it runs; a retried confirm finishes it as well (still 409: the line was confirmed)."""
    two = {"name": "Two", "lines": [{"label": "Booking", "percent": "10.00", "due": "booking"},
                                    {"label": "Balance", "percent": "90.00", "due": "months:1"}]}
    builder, project, units, plan = await setup_project(sheda, units=("D-1", "D-2"), plan=two)
    client = await sheda.signup("client")
    stuck = []
    for u in units:
        r = await book(sheda, client, u["id"], plan["id"])
        bid = r.json["id"]
        for who, n, action in ((client, 1, "payment-sent"), (builder, 1, "confirm"), (client, 2, "payment-sent")):
            assert (await line(sheda, who, bid, n, action)).status == 200
        # What the dead process left: its confirm's write (line 2 confirmed), not the completion after it.
        await sheda.ctx.db["bookings"].update_one({"_id": bid}, {"$set": {"installments.1.status": "confirmed",
                                                                          "installments.1.confirmed_at": sheda.ctx.clock.now()}})
        stuck.append(bid)
    # The builder retries the confirm: 409 (the line is confirmed), and the booking completes.
    r = await line(sheda, builder, stuck[1], 2, "confirm")
    assert r.status == 409 and r.json["code"] == "wrong_state" and "completed" in r.json["detail"], r
    assert (await unit_doc(sheda, units[1]["id"]))["status"] == "sold"
    # The other is the job's.
    result = await sheda.ctx.bookings.run_due()
    assert result["completed"] >= 1, result
    stored = await sheda.ctx.db["bookings"].find_one({"_id": stuck[0]})
    assert stored["status"] == "completed" and stored["unit_synced"] is True, stored
    assert (await unit_doc(sheda, units[0]["id"]))["status"] == "sold"
    for user in (client, builder):
        assert await sheda.ctx.db["notifications"].count_documents(
            {"user_id": user.id, "kind": "booking.completed", "data.booking_id": stuck[0]}) == 1
    assert (await sheda.ctx.bookings.run_due())["completed"] == 0
    r = await sheda.api.get(f"{BOOKINGS}/{stuck[0]}", token=client.token)
    assert r.json["status"] == "completed" and r.json["outstanding"] == "0.00", r


async def test_cancellation_by_the_client_before_the_booking_payment_or_by_the_builder_with_a_reason(sheda):
    builder, project, units, plan = await setup_project(sheda, units=("C-1", "C-2", "C-3"))
    client = await sheda.signup("client")
    b_ws = await sheda.ws(builder.token)
    try:
        # The client cancels a reserved booking (even with the payment sent): the unit is available again.
        one = (await book(sheda, client, units[0]["id"], plan["id"])).json
        assert (await line(sheda, client, one["id"], 1, "payment-sent")).status == 200
        r = await sheda.api.post(f"{BOOKINGS}/{one['id']}/cancel", {}, token=client.token)
        assert r.status == 200 and r.json["status"] == "cancelled" and r.json["cancelled_by"] == client.id, r
        await b_ws.wait_type("booking.cancelled")
        assert (await unit_doc(sheda, units[0]["id"]))["status"] == "available"
        # Once the booking payment is confirmed the client cannot cancel; the builder can, with a reason.
        two = (await book(sheda, client, units[1]["id"], plan["id"])).json
        assert (await line(sheda, client, two["id"], 1, "payment-sent")).status == 200
        assert (await line(sheda, builder, two["id"], 1, "confirm")).status == 200
        before, unit_before = await snapshot(sheda, "bookings", two["id"]), await unit_doc(sheda, units[1]["id"])
        r = await sheda.api.post(f"{BOOKINGS}/{two['id']}/cancel", {}, token=client.token)
        assert r.status == 409 and r.json["code"] == "wrong_state", r
        r = await sheda.api.post(f"{BOOKINGS}/{two['id']}/cancel", {}, token=builder.token)
        assert r.status == 422, r
        stranger = await sheda.signup("builder")
        r = await sheda.api.post(f"{BOOKINGS}/{two['id']}/cancel", {"reason": "mine now"}, token=stranger.token)
        assert r.status == 404, r
        assert await snapshot(sheda, "bookings", two["id"]) == before and await unit_doc(sheda, units[1]["id"]) == unit_before
        c_ws = await sheda.ws(client.token)
        try:
            r = await sheda.api.post(f"{BOOKINGS}/{two['id']}/cancel", {"reason": "Buyer failed KYC"}, token=builder.token)
            assert r.status == 200 and r.json["cancel_reason"] == "Buyer failed KYC", r
            event = await c_ws.wait_type("booking.cancelled")
            assert event["booking"]["cancelled_by"] == builder.id
            note = await c_ws.wait_for(lambda f: f.get("type") == "notification" and f.get("kind") == "booking.cancelled")
            assert "Buyer failed KYC" in note["body"]
        finally:
            c_ws.close()
        assert (await unit_doc(sheda, units[1]["id"]))["status"] == "available"
        # Cancelled twice: 409, nothing changes.
        before = await snapshot(sheda, "bookings", two["id"])
        assert (await sheda.api.post(f"{BOOKINGS}/{two['id']}/cancel", {"reason": "again"}, token=builder.token)).status == 409
        assert await snapshot(sheda, "bookings", two["id"]) == before
    finally:
        b_ws.close()


async def test_wrong_state_owner_or_scope_change_nothing(sheda):
    builder, project, units, plan = await setup_project(sheda, units=("W-1", "W-2", "W-3"))
    _, _, other_units, other_plan = await setup_project(sheda, units=("X-1",))
    client, stranger = await sheda.signup("client"), await sheda.signup("client")
    booking = (await book(sheda, client, units[0]["id"], plan["id"])).json
    bid = booking["id"]
    blocked = units[2]
    assert (await sheda.api.patch(f"/api/v1/projects/{project['id']}/units/{blocked['id']}", {"status": "blocked"},
                                  token=builder.token)).status == 200
    draft = await sheda.api.post("/api/v1/projects", {"name": "Draft", "location": "Ikoyi, Lagos"}, token=builder.token)
    draft_units = await add_units(sheda, builder, draft.json["id"], [unit("D-1")])

    async def state():
        return ([d async for d in sheda.ctx.db["bookings"].find({}, sort=[("_id", 1)])],
                [d async for d in sheda.ctx.db["units"].find({}, sort=[("_id", 1)])])

    before = await state()
    refusals = [
        # booking: wrong scope, unknown or hidden unit, a plan of another project, a blocked or taken unit, own unit
        (book(sheda, builder, units[1]["id"], plan["id"]), 403, "insufficient_scope"),
        (book(sheda, client, 999_999_999, plan["id"]), 404, "unit_not_found"),
        (book(sheda, client, draft_units[0]["id"], plan["id"]), 404, "unit_not_found"),
        (book(sheda, client, units[1]["id"], other_plan["id"]), 422, None),
        (book(sheda, client, blocked["id"], plan["id"]), 409, "unit_not_available"),
        (book(sheda, stranger, units[0]["id"], plan["id"]), 409, "unit_not_available"),
        (sheda.api.post(BOOKINGS, {"unit_id": "1", "plan_id": plan["id"]}, token=client.token), 422, None),
        # lines: wrong side, someone else's booking, a line that does not exist, wrong states
        (line(sheda, builder, bid, 1, "payment-sent"), 403, "insufficient_scope"),
        (line(sheda, stranger, bid, 1, "payment-sent"), 404, "booking_not_found"),
        (line(sheda, client, bid, 9, "payment-sent"), 404, "installment_not_found"),
        (line(sheda, client, bid, 2, "payment-sent"), 409, "wrong_state"),
        (line(sheda, client, bid, 1, "payment-sent", {"reference": ""}), 422, None),
        (line(sheda, client, bid, 1, "confirm"), 403, "insufficient_scope"),
        (line(sheda, builder, bid, 1, "confirm"), 409, "wrong_state"),
        (line(sheda, builder, bid, 1, "decline"), 409, "wrong_state"),
        (sheda.api.get(f"{BOOKINGS}/{bid}", token=stranger.token), 404, "booking_not_found"),
        (sheda.api.post(f"{BOOKINGS}/{bid}/cancel", {}, token=stranger.token), 404, "booking_not_found"),
    ]
    for call, status, code in refusals:
        r = await call
        assert r.status == status and (code is None or r.json["code"] == code), (status, code, r)
    assert await state() == before
    # Another builder cannot confirm what this builder's client sent.
    assert (await line(sheda, client, bid, 1, "payment-sent")).status == 200
    before = await state()
    other_builder = await verified_builder(sheda)
    r = await line(sheda, other_builder, bid, 1, "confirm")
    assert r.status == 404 and r.json["code"] == "booking_not_found", r
    r = await line(sheda, client, bid, 1, "payment-sent")
    assert r.status == 409, r
    assert await state() == before


async def test_construction_progress_and_updates_reach_buyers_live_and_the_projects_watchers(sheda):
    builder, project, units, plan = await setup_project(sheda, units=("U-1", "U-2"))
    pid = project["id"]
    buyer1, buyer2 = await sheda.signup("client"), await sheda.signup("client")
    watcher, bystander = await sheda.signup("agent"), await sheda.signup("client")
    assert (await book(sheda, buyer1, units[0]["id"], plan["id"])).status == 201
    assert (await book(sheda, buyer2, units[1]["id"], plan["id"])).status == 201
    w1, w2 = await sheda.ws(buyer1.token), await sheda.ws(buyer2.token)
    ww, wb = await sheda.ws(watcher.token), await sheda.ws(bystander.token)
    sockets = [w1, w2, ww, wb]
    try:
        # Any signed-in user may watch a published project; a draft is an unknown channel to them.
        await ww.send({"type": "subscribe", "channel": f"project:{pid}"})
        await ww.wait_type("subscribed")
        draft = await sheda.api.post("/api/v1/projects", {"name": "Draft", "location": "Ikoyi, Lagos"}, token=builder.token)
        await wb.send({"type": "subscribe", "channel": f"project:{draft.json['id']}"})
        await wb.wait_type("error", code="unknown_channel")

        # Progress: public to read, only its builder writes; a change reaches the watchers.
        r = await sheda.api.get(f"/api/v1/projects/{pid}/progress")
        assert r.status == 200 and [p["phase"] for p in r.json["phases"]] == ["foundation", "structure", "roofing", "finishing",
                                                                                "handover"]
        assert r.json["overall_percent"] == 0 and r.json["updated_at"] is None
        body = {"phases": [{"phase": "foundation", "percent": 100, "start_date": "2026-01-10", "end_date": "2026-04-30"},
                           {"phase": "structure", "percent": 40, "start_date": "2026-05-01"}]}
        for who, status in ((bystander, 403), (None, 401)):
            r = await sheda.api.put(f"/api/v1/projects/{pid}/progress", body, token=who.token if who else None)
            assert r.status == status, r
        bad = {"phases": [{"phase": "foundation", "percent": 101}]}
        assert (await sheda.api.put(f"/api/v1/projects/{pid}/progress", bad, token=builder.token)).status == 422
        assert await sheda.ctx.db["project_progress"].find_one({"_id": pid}) is None
        r = await sheda.api.put(f"/api/v1/projects/{pid}/progress", body, token=builder.token)
        assert r.status == 200 and r.json["overall_percent"] == 28 and r.json["phases"][0]["end_date"] == "2026-04-30", r
        event = await ww.wait_type("project.updated")
        assert event["changes"] == ["progress"] and event["progress"]["phases"][1]["percent"] == 40

        # An update: stored, to each buyer live (durable) with a notification, to the watchers on the channel.
        update = {"title": "Roof is on", "body": "We topped out today.", "phase": "roofing", "percent": 80,
                  "image_ids": ["/media/projects/abc123.png"]}
        r = await sheda.api.post(f"/api/v1/projects/{pid}/updates", update, token=bystander.token)
        assert r.status == 403, r
        r = await sheda.api.post(f"/api/v1/projects/{pid}/updates", {"title": "x", "body": "y", "percent": 5}, token=builder.token)
        assert r.status == 422, r
        # image_ids are uploads (README): an outside URL is 422 naming the entry.
        r = await sheda.api.post(f"/api/v1/projects/{pid}/updates",
                                 dict(update, image_ids=["/media/projects/abc123.png", "https://example.com/roof.png"]),
                                 token=builder.token)
        assert r.status == 422 and [e["field"] for e in r.json["errors"]] == ["image_ids.1"], r
        assert await sheda.ctx.db["construction_updates"].count_documents({"project_id": pid}) == 0
        r = await sheda.api.post(f"/api/v1/projects/{pid}/updates", update, token=builder.token)
        assert r.status == 201 and r.json["images"] == update["image_ids"], r
        for ws in (w1, w2):
            live = await ws.wait_type("project.update")
            assert live["update"]["id"] == r.json["id"] and live["project_id"] == pid and live["seq"] >= 1
            await ws.wait_for(lambda f: f.get("type") == "notification" and f.get("kind") == "project.update")
        event = await ww.wait_for(lambda f: f.get("type") == "project.updated" and "update" in f.get("changes", []))
        assert event["update"]["title"] == "Roof is on" and event["progress"]["phases"][2]["percent"] == 80
        notes = await sheda.api.get("/api/v1/notifications", token=buyer2.token)
        assert any(n["kind"] == "project.update" and n["data"]["update_id"] == r.json["id"] for n in notes.json["items"])
        # A buyer who was offline replays it from the event stream.
        replay = await sheda.api.get("/api/v1/events", params={"after_seq": 0, "limit": 200}, token=buyer1.token)
        assert any(f["type"] == "project.update" for f in replay.json["items"])
        # Nobody without a booking gets it as their own event.
        assert not wb.of_type("project.update") and not ww.of_type("project.update")
        assert (await sheda.api.get(f"/api/v1/projects/{pid}/progress")).json["phases"][2]["percent"] == 80

        # The feed pages newest first, with a cursor; a draft's feed is hidden.
        assert (await sheda.api.post(f"/api/v1/projects/{pid}/updates", {"title": "Windows", "body": "In."},
                                     token=builder.token)).status == 201
        page = await sheda.api.get(f"/api/v1/projects/{pid}/updates", params={"limit": 1})
        assert page.status == 200 and page.json["items"][0]["title"] == "Windows" and page.json["next_cursor"], page
        rest = await sheda.api.get(f"/api/v1/projects/{pid}/updates", params={"limit": 1, "cursor": page.json["next_cursor"]})
        assert [u["title"] for u in rest.json["items"]] == ["Roof is on"] and rest.json["next_cursor"] is None
        assert (await sheda.api.get(f"/api/v1/projects/{draft.json['id']}/updates")).status == 404

        # Project changes reach the watchers too.
        assert (await sheda.api.patch(f"/api/v1/projects/{pid}", {"status": "under_construction"}, token=builder.token)).status == 200
        changed = await ww.wait_for(lambda f: f.get("type") == "project.updated" and f.get("changes") == ["project"])
        assert changed["project"]["status"] == "under_construction"
    finally:
        for ws in sockets:
            ws.close()
    await assert_frames_documented(sheda, sockets)


async def test_booking_reads_walk_indexes_never_the_collection(sheda):
    """Every filter the bookings, the job and the construction feed run, explained: the embedded
    planner scans the whole collection unless every condition is a key of one index."""
    from datetime import datetime, timezone

    builder, project, units, plan = await setup_project(sheda, units=("I-1",))
    client = await sheda.signup("client")
    booking = (await book(sheda, client, units[0]["id"], plan["id"])).json
    now = datetime.now(timezone.utc)
    filters = {
        "bookings": [{"parties": client.id}, {"parties": client.id, "status": "reserved"}, {"parties": f"builder:{builder.id}"},
                     {"parties": f"client:{client.id}", "status": "active"},
                     {"parties": f"builder:{builder.id}", "status": {"$in": ["reserved", "active", "completed"]}},
                     {"status": "reserved", "hold_until": {"$lte": now}}, {"status": "active", "_id": {"$gt": 0}},
                     {"project_id": project["id"], "status": {"$in": ["reserved", "active", "completed"]}},
                     {"unit_synced": False, "updated_at": {"$lte": now}}],
        "construction_updates": [{"project_id": project["id"]}],
    }
    # (The guarded moves' filters, {_id, status, ...}, are updates: explain shows a find's plan
    # for them, but the database's update path goes by _id: 1.8-2.0 ms per update at 20,000
    # documents with or without the extra conditions, measured.)
    for collection, flts in filters.items():
        for flt in flts:
            explained = await sheda.ctx.db.command("explain", {"find": collection, "filter": flt}, verbosity="queryPlanner")
            assert not _collscan(_winning_plan(explained)), (collection, flt, explained)
    # and the pages answer by role
    for role, expected in (("client", [booking["id"]]), ("builder", [])):
        r = await sheda.api.get(BOOKINGS, params={"role": role}, token=client.token)
        assert [b["id"] for b in r.json["items"]] == expected, r
    r = await sheda.api.get(BOOKINGS, params={"role": "builder", "status": "reserved"}, token=builder.token)
    assert [b["id"] for b in r.json["items"]] == [booking["id"]]


async def test_a_deactivated_builders_unit_cannot_be_booked(sheda):
    """A builder whose account is deactivated cannot confirm a payment or answer anything: a client booking one
    of their units would hold it and pay into a dead account. 409 builder_inactive, nothing stored; bookable
    again once an admin reactivates the account."""
    builder, project, units, plan = await setup_project(sheda, units=("D-1",))
    admin = await sheda.admin()
    client = await sheda.signup("client")
    r = await sheda.api.patch(f"/api/v1/admin/users/{builder.id}", {"is_active": False}, token=admin.token)
    assert r.status == 200, r
    before = await sheda.ctx.db["bookings"].count_documents({"unit_id": units[0]["id"]})
    r = await book(sheda, client, units[0]["id"], plan["id"])
    assert r.status == 409 and r.json["code"] == "builder_inactive", r
    assert await sheda.ctx.db["bookings"].count_documents({"unit_id": units[0]["id"]}) == before
    assert (await unit_doc(sheda, units[0]["id"]))["status"] == "available"
    r = await sheda.api.patch(f"/api/v1/admin/users/{builder.id}", {"is_active": True}, token=admin.token)
    assert r.status == 200, r
    r = await book(sheda, client, units[0]["id"], plan["id"])
    assert r.status == 201, r
    r = await sheda.api.post(f"{BOOKINGS}/{r.json['id']}/cancel", {}, token=client.token)
    assert r.status == 200, r  # closed, so that no later test's booking job finds it


async def test_a_builder_who_switched_to_client_has_units_nobody_can_book(sheda):
    """switch-account leaves a builder without the builder scope: they could no longer confirm a payment, so
    their units are as unbookable as a deactivated builder's (409 builder_inactive), until they switch back."""
    builder, project, units, plan = await setup_project(sheda, units=("W-1",))
    client = await sheda.signup("client")
    r = await sheda.api.post("/api/v1/auth/switch-account", {"switch_to": "client"}, token=builder.token)
    assert r.status == 200, r
    as_client = r.json["access_token"]
    r = await book(sheda, client, units[0]["id"], plan["id"])
    assert r.status == 409 and r.json["code"] == "builder_inactive", r
    assert (await unit_doc(sheda, units[0]["id"]))["status"] == "available"
    r = await sheda.api.post("/api/v1/auth/switch-account", {"switch_to": "builder"}, token=as_client)
    assert r.status == 200, r
    r = await book(sheda, client, units[0]["id"], plan["id"])
    assert r.status == 201, r
    r = await sheda.api.post(f"{BOOKINGS}/{r.json['id']}/cancel", {}, token=client.token)
    assert r.status == 200, r  # closed, so that no later test's booking job finds it
