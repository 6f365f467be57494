"""Change requests on bookings (issue 17 §4), as clients and builders use them with live sockets: the
client asks, the builder quotes, the client accepts and the booking's schedule gains the change's line
(once, however the accepts race), the builder completes it; withdrawals and rejections; every refusal
(wrong party, wrong state, bad input) leaves storage as it was. Every frame the sockets received is held
to the socket protocol's models and the served AsyncAPI document."""
from __future__ import annotations

import asyncio

import pytest

from sheda_rt.builders.change_requests import ChangeRequestService
from sheda_rt.realtime import protocol
from tests.listing_helpers import snapshot
from tests.test_builder_bookings import BOOKINGS, assert_frames_documented, book, line, setup_project


@pytest.fixture
def settings_overrides():
    return {"access_token_minutes": 365 * 24 * 60}


OPENED: list[tuple] = []  # (builder, booking id) of this module's bookings, closed after each test


@pytest.fixture(autouse=True)
def close_bookings(sheda, io_loop):
    """The database lives for the whole session: bookings left active would have their lines reminded
    and made overdue by another module's booking job run, so each test's bookings are cancelled after it."""
    yield
    opened = list(OPENED)
    OPENED.clear()

    async def close():
        for builder, booking_id in opened:
            r = await sheda.api.post(f"{BOOKINGS}/{booking_id}/cancel", {"reason": "test over"}, token=builder.token)
            assert r.status in (200, 409), r  # 409: the test already closed it

    io_loop.run_sync(close)


def crs(booking_id: int) -> str:
    return f"{BOOKINGS}/{booking_id}/change-requests"


async def active_booking(sheda):
    """A builder, a client and the client's booking, its booking payment confirmed (active)."""
    builder, project, units, plan = await setup_project(sheda, expected_completion="2028-06-30")
    client = await sheda.signup("client")
    r = await book(sheda, client, units[0]["id"], plan["id"])
    assert r.status == 201, r
    booking = r.json
    assert (await line(sheda, client, booking["id"], 1, "payment-sent")).status == 200
    r = await line(sheda, builder, booking["id"], 1, "confirm")
    assert r.status == 200 and r.json["status"] == "active", r
    OPENED.append((builder, booking["id"]))
    return builder, client, r.json


async def ask(sheda, client, booking_id: int, category: str = "finishes", **extra):
    return await sheda.api.post(crs(booking_id), {"category": category, "description": "Marble floors in the lounge", **extra},
                                token=client.token)


async def move(sheda, user, booking_id: int, cr_id: int, action: str, body: dict | None = None):
    return await sheda.api.post(f"{crs(booking_id)}/{cr_id}/{action}", body, token=user.token)


def test_every_change_request_event_kind_is_documented():
    assert set(protocol.frame_types(protocol.ChangeRequestEvent)) == {f"change_request.{k}" for k in ChangeRequestService._TEXT}


async def test_request_quote_accept_adds_one_schedule_line_and_complete(sheda):
    builder, client, booking = await active_booking(sheda)
    b_ws, c_ws = await sheda.ws(builder.token), await sheda.ws(client.token)
    try:
        r = await ask(sheda, client, booking["id"], "electrical", attachment_ids=["/media/plans/wiring.png"])
        assert r.status == 201, r
        cr = r.json
        assert cr["status"] == "requested" and cr["booking_id"] == booking["id"] and cr["cost"] is None
        assert cr["attachments"] == ["/media/plans/wiring.png"] and cr["category"] == "electrical"
        ev = await b_ws.wait_type("change_request.requested")
        assert ev["change_request"]["id"] == cr["id"]
        await c_ws.wait_type("change_request.requested")
        await b_ws.wait_for(lambda f: f.get("type") == "notification" and f.get("kind") == "change_request.requested")

        # The builder quotes (and may quote again); the client sees it live.
        assert (await move(sheda, builder, booking["id"], cr["id"], "quote", {"cost": "100000.00", "days": 5})).status == 200
        r = await move(sheda, builder, booking["id"], cr["id"], "quote", {"cost": "250000.50", "days": 10})
        assert r.status == 200 and r.json["status"] == "quoted" and r.json["cost"] == "250000.50" and r.json["days"] == 10, r
        ev = await c_ws.wait_for(lambda f: f.get("type") == "change_request.quoted" and f["change_request"]["days"] == 10)
        assert ev["change_request"]["cost"] == "250000.50"
        await c_ws.wait_for(lambda f: f.get("type") == "notification" and f.get("kind") == "change_request.quoted")

        # Two accepts race: exactly one 200, the other 409; the schedule gains the line once.
        accepted_at = sheda.ctx.clock.now()
        r1, r2 = await asyncio.gather(move(sheda, client, booking["id"], cr["id"], "accept"),
                                      move(sheda, client, booking["id"], cr["id"], "accept"))
        assert sorted([r1.status, r2.status]) == [200, 409], (r1, r2)
        won = r1 if r1.status == 200 else r2
        assert (r2 if r1.status == 200 else r1).json["code"] == "wrong_state"
        assert won.json["status"] == "accepted" and won.json["installment"] == 5
        after = won.json["booking"]
        assert len(after["installments"]) == 5
        extra = after["installments"][4]
        assert extra["n"] == 5 and extra["label"] == "Change: electrical" and extra["amount"] == "250000.50"
        assert extra["status"] == "due" and extra["due"] == "change:10"
        assert extra["due_date"][:10] == (accepted_at.date().fromordinal(accepted_at.toordinal() + 10)).isoformat()
        assert after["price"] == "45000000.01" and after["paid"] == "4500000.00"
        assert after["outstanding"] == "40750000.51"  # the price plus the change, minus what is paid
        stored = await sheda.ctx.db["bookings"].find_one({"_id": booking["id"]})
        assert [ln.get("change_request_id") for ln in stored["installments"]].count(cr["id"]) == 1
        ev = await b_ws.wait_type("change_request.accepted")
        assert ev["booking"]["installments"][4]["label"] == "Change: electrical"
        await b_ws.wait_for(lambda f: f.get("type") == "notification" and f.get("kind") == "change_request.accepted")
        # The change's line is paid like any other.
        assert (await line(sheda, client, booking["id"], 5, "payment-sent")).status == 200
        r = await line(sheda, builder, booking["id"], 5, "confirm")
        assert r.status == 200 and r.json["paid"] == "4750000.50", r

        r = await move(sheda, builder, booking["id"], cr["id"], "complete")
        assert r.status == 200 and r.json["status"] == "completed" and r.json["completed_at"], r
        await c_ws.wait_type("change_request.completed")
        await c_ws.wait_for(lambda f: f.get("type") == "notification" and f.get("kind") == "change_request.completed")

        # Everyone entitled lists it; admins too.
        for who in (client, builder, await sheda.admin()):
            r = await sheda.api.get(crs(booking["id"]), token=who.token)
            assert r.status == 200 and [c["id"] for c in r.json["items"]] == [cr["id"]], r
        # The list takes no query key: one is a 422 naming it, as on every list route (a filter the route
        # does not have answered 200 with every row).
        r = await sheda.api.get(crs(booking["id"]), token=client.token, params={"status": "requested"})
        assert r.status == 422 and [e["field"] for e in r.json["errors"]] == ["status"], r
        await assert_frames_documented(sheda, [b_ws, c_ws])
    finally:
        b_ws.close()
        c_ws.close()


async def test_withdraw_and_reject_end_requests_without_touching_the_schedule(sheda):
    builder, client, booking = await active_booking(sheda)
    b_ws, c_ws = await sheda.ws(builder.token), await sheda.ws(client.token)
    try:
        one = (await ask(sheda, client, booking["id"], "layout")).json
        two = (await ask(sheda, client, booking["id"], "plumbing")).json
        assert (await move(sheda, builder, booking["id"], one["id"], "quote", {"cost": "5000", "days": 3})).status == 200
        r = await move(sheda, client, booking["id"], one["id"], "withdraw")
        assert r.status == 200 and r.json["status"] == "withdrawn", r
        await b_ws.wait_type("change_request.withdrawn")
        r = await move(sheda, builder, booking["id"], two["id"], "reject", {"reason": "Load-bearing wall"})
        assert r.status == 200 and r.json["status"] == "rejected" and r.json["reject_reason"] == "Load-bearing wall", r
        ev = await c_ws.wait_type("change_request.rejected")
        assert ev["change_request"]["reject_reason"] == "Load-bearing wall"
        await c_ws.wait_for(lambda f: f.get("type") == "notification" and f.get("kind") == "change_request.rejected")
        stored = await sheda.ctx.db["bookings"].find_one({"_id": booking["id"]})
        assert len(stored["installments"]) == 4
        await assert_frames_documented(sheda, [b_ws, c_ws])
    finally:
        b_ws.close()
        c_ws.close()


async def test_every_refusal_changes_nothing(sheda):
    builder, client, booking = await active_booking(sheda)
    stranger, other_builder = await sheda.signup("client"), await sheda.signup("builder")
    bid = booking["id"]
    cr = (await ask(sheda, client, bid)).json

    async def refused(status: int, code: str | None, call):
        before = (await snapshot(sheda, "bookings", bid), await snapshot(sheda, "change_requests", cr["id"]),
                  await sheda.ctx.db["change_requests"].count_documents({}))
        r = await call
        assert r.status == status, r
        if code:
            assert r.json["code"] == code, r
        after = (await snapshot(sheda, "bookings", bid), await snapshot(sheda, "change_requests", cr["id"]),
                 await sheda.ctx.db["change_requests"].count_documents({}))
        assert after == before

    # Bad input: 422.
    await refused(422, None, ask(sheda, client, bid, "roof"))
    await refused(422, None, sheda.api.post(crs(bid), {"category": "layout", "description": ""}, token=client.token))
    await refused(422, None, sheda.api.post(crs(bid), {"category": "layout", "description": "x" * 2001}, token=client.token))
    await refused(422, None, ask(sheda, client, bid, attachment_ids=["javascript:alert(1)"]))
    # Attachments are uploads (README): an outside URL is 422 naming the entry, not stored as the client's file.
    for outside in ("https://example.com/plan.png", "http://example.com/plan.png"):
        r = await ask(sheda, client, bid, attachment_ids=["/media/plans/ok.png", outside])
        assert r.status == 422 and [e["field"] for e in r.json["errors"]] == ["attachment_ids.1"], r
    for body in ({"cost": "-1", "days": 3}, {"cost": "abc", "days": 3}, {"cost": "10.001", "days": 3}, {"cost": "10", "days": -1},
                 {"cost": "10", "days": "3"}, {"cost": "10"}):
        await refused(422, None, move(sheda, builder, bid, cr["id"], "quote", body))
    await refused(422, None, move(sheda, builder, bid, cr["id"], "reject", {}))
    # Strangers: 404 as for the booking; the other party or the wrong scope: 403.
    await refused(404, "booking_not_found", ask(sheda, stranger, bid))
    await refused(404, "booking_not_found", sheda.api.get(crs(bid), token=stranger.token))
    await refused(404, "booking_not_found", move(sheda, other_builder, bid, cr["id"], "quote", {"cost": "10", "days": 1}))
    await refused(403, None, ask(sheda, builder, bid))
    await refused(403, None, move(sheda, client, bid, cr["id"], "quote", {"cost": "10", "days": 1}))
    await refused(403, None, move(sheda, builder, bid, cr["id"], "withdraw"))
    await refused(404, "change_request_not_found", move(sheda, builder, bid, cr["id"] + 1000, "quote", {"cost": "10", "days": 1}))
    # Wrong state: 409.
    await refused(409, "wrong_state", move(sheda, client, bid, cr["id"], "accept"))  # not quoted yet
    await refused(409, "wrong_state", move(sheda, builder, bid, cr["id"], "complete"))
    assert (await move(sheda, builder, bid, cr["id"], "quote", {"cost": "10", "days": 1})).status == 200
    assert (await move(sheda, client, bid, cr["id"], "accept")).status == 200
    await refused(409, "wrong_state", move(sheda, client, bid, cr["id"], "accept"))
    await refused(409, "wrong_state", move(sheda, client, bid, cr["id"], "withdraw"))
    await refused(409, "wrong_state", move(sheda, builder, bid, cr["id"], "reject", {"reason": "late"}))
    await refused(409, "wrong_state", move(sheda, builder, bid, cr["id"], "quote", {"cost": "10", "days": 1}))
    # A closed booking takes no new change requests, and its quotes can no longer be accepted.
    cr = (await ask(sheda, client, bid, "fixtures")).json
    assert (await move(sheda, builder, bid, cr["id"], "quote", {"cost": "99", "days": 2})).status == 200
    assert (await sheda.api.post(f"{BOOKINGS}/{bid}/cancel", {"reason": "Buyer left"}, token=builder.token)).status == 200
    await refused(409, "wrong_state", ask(sheda, client, bid))
    await refused(409, "wrong_state", move(sheda, client, bid, cr["id"], "accept"))
    # nor new quotes (the client was told of a quote it could never accept)
    await refused(409, "wrong_state", move(sheda, builder, bid, cr["id"], "quote", {"cost": "98", "days": 2}))
    assert (await snapshot(sheda, "change_requests", cr["id"]))["status"] == "quoted"


async def test_two_changes_accepted_at_once_get_their_own_lines(sheda):
    builder, client, booking = await active_booking(sheda)
    bid = booking["id"]
    ids = []
    for category, cost in (("layout", "1000.00"), ("plumbing", "2000.00"), ("other", "3000.00")):
        cr = (await ask(sheda, client, bid, category)).json
        assert (await move(sheda, builder, bid, cr["id"], "quote", {"cost": cost, "days": 7})).status == 200
        ids.append(cr["id"])
    results = await asyncio.gather(*(move(sheda, client, bid, i, "accept") for i in ids))
    assert [r.status for r in results] == [200, 200, 200], results
    stored = await sheda.ctx.db["bookings"].find_one({"_id": bid})
    lines = stored["installments"]
    assert [ln["n"] for ln in lines] == [1, 2, 3, 4, 5, 6, 7]
    assert sorted(ln.get("change_request_id") for ln in lines[4:]) == sorted(ids)
    assert sorted(r.json["installment"] for r in results) == [5, 6, 7]
    view = (await sheda.api.get(f"{BOOKINGS}/{bid}", token=client.token)).json
    assert view["outstanding"] == "40506000.01"  # 45000000.01 - 4500000.00 + 6000.00


async def test_accept_names_the_quote_seen_and_a_requote_meanwhile_is_refused(sheda):
    """The builder may quote again until the client accepts. A client who accepts the 2,500.50 they were
    shown must not end up owing the 99,999.00 quoted a moment later: the accept names the cost it agrees
    to, and a different current quote is 409 quote_changed with nothing changed."""
    builder, client, booking = await active_booking(sheda)
    bid = booking["id"]
    cr = (await ask(sheda, client, bid)).json
    assert (await move(sheda, builder, bid, cr["id"], "quote", {"cost": "2500.50", "days": 5})).status == 200
    seen = (await sheda.api.get(crs(bid), token=client.token)).json["items"][0]
    assert seen["cost"] == "2500.50"
    assert (await move(sheda, builder, bid, cr["id"], "quote", {"cost": "99999.00", "days": 5})).status == 200
    before = (await snapshot(sheda, "bookings", bid), await snapshot(sheda, "change_requests", cr["id"]))
    r = await move(sheda, client, bid, cr["id"], "accept", {"cost": seen["cost"]})
    assert r.status == 409 and r.json["code"] == "quote_changed" and r.json["cost"] == "99999.00", r
    assert (await snapshot(sheda, "bookings", bid), await snapshot(sheda, "change_requests", cr["id"])) == before
    for bad in ({"cost": 2500.5}, {"cost": "-1"}, {"price": "2500.50"}):
        r = await move(sheda, client, bid, cr["id"], "accept", bad)
        assert r.status == 422, r
    # Agreeing to the quote now shown: accepted, and the line is of that cost.
    r = await move(sheda, client, bid, cr["id"], "accept", {"cost": "99999"})
    assert r.status == 200 and r.json["status"] == "accepted" and r.json["cost"] == "99999.00", r
    assert r.json["booking"]["installments"][-1]["amount"] == "99999.00"


async def test_a_change_accepted_while_reserved_is_not_overdue_when_the_booking_payment_is_confirmed_late(sheda):
    """A change accepted on a reserved booking gains its line at once, but that line can be paid only once the
    booking is active. When the builder confirms the booking payment after the change's date (the hold paused
    while they checked), the line must not be overdue the moment the booking activates: it falls due no sooner
    than what was left of the hold when the booking payment was sent, from the confirmation (as a line due
    'booking' does), by the builder's confirm and by a gateway's alike."""
    from datetime import datetime, timedelta

    builder, project, units, plan = await setup_project(sheda, units=("CR-1",), expected_completion="2028-06-30")
    client = await sheda.signup("client")
    booking = (await book(sheda, client, units[0]["id"], plan["id"])).json
    bid = booking["id"]
    OPENED.append((builder, bid))
    cr = (await ask(sheda, client, bid)).json
    assert (await move(sheda, builder, bid, cr["id"], "quote", {"cost": "1500.00", "days": 1})).status == 200
    r = await move(sheda, client, bid, cr["id"], "accept")
    assert r.status == 200 and r.json["installment"] == 5, r
    r = await line(sheda, client, bid, 5, "payment-sent")
    assert r.status == 409 and r.json["code"] == "wrong_state", r  # not payable while reserved
    assert (await line(sheda, client, bid, 1, "payment-sent")).status == 200
    sheda.ctx.clock.advance(hours=30)  # the builder answers after the change's date
    r = await line(sheda, builder, bid, 1, "confirm")
    assert r.status == 200 and r.json["status"] == "active", r
    due = datetime.fromisoformat(r.json["installments"][4]["due_date"].replace("Z", "+00:00"))
    assert due >= sheda.ctx.clock.now() + timedelta(hours=47), r.json["installments"][4]
    await sheda.ctx.bookings.run_due()
    after = (await sheda.api.get(f"{BOOKINGS}/{bid}", token=client.token)).json
    assert after["installments"][4]["status"] == "due", after["installments"][4]
    report = (await sheda.api.get("/api/v1/builder/receivables", token=builder.token)).json
    assert [p["overdue"] for p in report["projects"] if p["project_id"] == project["id"]] == ["0.00"], report
    assert (await line(sheda, client, bid, 5, "payment-sent")).status == 200
