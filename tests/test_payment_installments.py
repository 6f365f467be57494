"""Paying a builder booking's installments through the gateway (issue 18 §1), against the local
Paystack of tests/paystack_server.py: a line paid through checkout and a signed webhook is confirmed
as the builder's confirm does it (line 1 activates the booking, the last completes it, the same events
and notifications); a webhook racing the builder's manual confirm confirms the line once; a
wrong-amount webhook and a payment for a cancelled booking are flagged, not applied; a lost webhook is
recovered by reconciliation; and bad requests are refused with nothing stored."""
from __future__ import annotations

import asyncio

import pytest

from tests.listing_helpers import snapshot
from tests.paystack_server import SECRET
from tests.test_builder_bookings import BOOKINGS, book, line, setup_project
from tests.test_payments import gw, paystack  # noqa: F401 (fixtures: the local Paystack and its webhook URL)

PAY = "/api/v1/payments"
TWO_STEPS = {"name": "Two steps", "lines": [
    {"label": "Booking", "percent": "10.00", "due": "booking"},
    {"label": "Balance", "percent": "90.00", "due": "months:1"},
]}


@pytest.fixture
def settings_overrides(paystack):  # noqa: F811
    return {"paystack_secret_key": SECRET, "paystack_base_url": paystack.base_url,
            "payment_callback_url": "https://app.example.com/paid",
            "access_token_minutes": 7 * 24 * 60}  # tokens outlive the clock moves below (a lapsed hold)


OPENED: list[tuple] = []  # (builder, booking id) of this module's bookings, closed after each test


@pytest.fixture(autouse=True)
def close_bookings(sheda, io_loop):
    """The database lives for the whole session: bookings left reserved or active would be expired or
    reminded by another module's booking job run (which counts them), so each is cancelled after its test."""
    yield
    opened = list(OPENED)
    OPENED.clear()

    async def close():
        for builder, booking_id in opened:
            r = await sheda.api.post(f"{BOOKINGS}/{booking_id}/cancel", {"reason": "test over"}, token=builder.token)
            assert r.status in (200, 409), r  # 409: completed or already closed by the test

    io_loop.run_sync(close)


async def booked(sheda, plan=None):
    """A builder, a client and the client's reserved booking."""
    builder, project, units, stored_plan = await setup_project(sheda, units=("P-1",), price="45000000.01",
                                                               **({"plan": plan} if plan else {}))
    client = await sheda.signup("client")
    r = await book(sheda, client, units[0]["id"], stored_plan["id"])
    assert r.status == 201, r
    OPENED.append((builder, r.json["id"]))
    return builder, client, r.json


async def pay_line(sheda, client, booking_id: int, n: int):
    return await sheda.api.post(PAY, {"purpose": "installment", "target_id": booking_id, "line": n}, token=client.token)


async def paid_through_gateway(sheda, gw, client, booking_id: int, n: int) -> dict:  # noqa: F811
    r = await pay_line(sheda, client, booking_id, n)
    assert r.status == 201, r
    gw.pay(r.json["reference"])
    hook = await gw.deliver(gw.event_body(r.json["reference"]))
    assert hook.code == 200, hook
    return (await sheda.api.get(f"{PAY}/{r.json['reference']}", token=client.token)).json


async def notes(sheda, user_id: int, booking_id: int, kind: str, n: int | None = None) -> int:
    flt = {"user_id": user_id, "kind": kind, "data.booking_id": booking_id}
    if n is not None:
        flt["data.installment"] = n
    return await sheda.ctx.db["notifications"].count_documents(flt)


async def test_line_one_paid_through_checkout_and_webhook_activates_the_booking(sheda, gw):  # noqa: F811
    builder, client, booking = await booked(sheda)
    bid, first = booking["id"], booking["installments"][0]
    b_ws, c_ws = await sheda.ws(builder.token), await sheda.ws(client.token)
    try:
        r = await pay_line(sheda, client, bid, 1)
        assert r.status == 201, r
        pay = r.json
        assert pay["purpose"] == "installment" and pay["target_id"] == bid and pay["line"] == 1
        assert pay["amount"] == first["amount"] and pay["currency"] == "NGN" and pay["status"] == "pending"
        assert pay["payer_id"] == client.id and pay["payee_id"] == builder.id
        sent = gw.initialized[-1]
        assert sent["reference"] == pay["reference"] and sent["email"] == client.email
        assert sent["amount"] == int(first["amount"].replace(".", ""))  # kobo
        assert sent["metadata"] == {"purpose": "installment", "target_id": bid, "line": 1}
        # A second ask while the checkout is live hands back the same attempt.
        again = await pay_line(sheda, client, bid, 1)
        assert again.status == 200 and again.json["reference"] == pay["reference"] and len(gw.initialized) == 1
        # The builder (the payee) sees it; nobody else does.
        assert (await sheda.api.get(f"{PAY}/{pay['reference']}", token=builder.token)).status == 200
        stranger = await sheda.signup("client")
        assert (await sheda.api.get(f"{PAY}/{pay['reference']}", token=stranger.token)).status == 404

        gw.pay(pay["reference"])
        hook = await gw.deliver(gw.event_body(pay["reference"]))
        assert hook.code == 200 and gw.verified == [pay["reference"]]
        done = (await sheda.api.get(f"{PAY}/{pay['reference']}", token=client.token)).json
        assert done["status"] == "succeeded" and done["applied"] is True and done["flagged"] is False

        after = (await sheda.api.get(f"{BOOKINGS}/{bid}", token=client.token)).json
        assert after["status"] == "active" and after["hold_until"] is None
        assert [ln["status"] for ln in after["installments"]] == ["confirmed", "due", "due", "due"]
        assert after["paid"] == first["amount"]
        stored = await snapshot(sheda, "bookings", bid)
        assert stored["installments"][0]["paid_by"] == pay["reference"]
        assert (await snapshot(sheda, "units", booking["unit_id"]))["status"] == "booked"
        # The same events as the builder's confirm, to both sides (nobody acted by hand: both are told).
        for ws in (b_ws, c_ws):
            frame = await ws.wait_type("booking.payment_confirmed")
            assert frame["installment"] == 1 and frame["booking"]["status"] == "active"
            await ws.wait_type("notification", kind="booking.payment_confirmed")
        # A redelivery changes nothing; the line is paid, so it cannot be paid again.
        assert (await gw.deliver(gw.event_body(pay["reference"]))).code == 200
        assert await notes(sheda, client.id, bid, "booking.payment_confirmed", 1) == 1
        r = await pay_line(sheda, client, bid, 1)
        assert r.status == 409 and r.json["code"] == "wrong_state"
    finally:
        b_ws.close()
        c_ws.close()


async def test_every_line_through_the_gateway_the_last_completes_the_booking(sheda, gw):  # noqa: F811
    builder, client, booking = await booked(sheda, plan=TWO_STEPS)
    bid = booking["id"]
    # The balance cannot be paid before the booking payment is confirmed.
    r = await pay_line(sheda, client, bid, 2)
    assert r.status == 409 and r.json["code"] == "wrong_state"
    await paid_through_gateway(sheda, gw, client, bid, 1)
    c_ws = await sheda.ws(client.token)
    try:
        last = await paid_through_gateway(sheda, gw, client, bid, 2)
        assert last["status"] == "succeeded" and last["applied"] is True and last["amount"] == booking["installments"][1]["amount"]
        after = (await sheda.api.get(f"{BOOKINGS}/{bid}", token=builder.token)).json
        assert after["status"] == "completed" and after["outstanding"] == "0.00" and after["paid"] == booking["price"]
        assert (await snapshot(sheda, "units", booking["unit_id"]))["status"] == "sold"
        assert (await c_ws.wait_type("booking.completed"))["booking"]["status"] == "completed"
        assert await notes(sheda, builder.id, bid, "booking.completed") == 1
        # Both payments are the builder's receipts.
        mine = (await sheda.api.get(PAY, token=builder.token, params={"status": "succeeded"})).json["items"]
        assert sorted(p["line"] for p in mine) == [1, 2]
        receivables = (await sheda.api.get("/api/v1/builder/receivables", token=builder.token)).json
        assert receivables["totals"]["received"] == booking["price"]
    finally:
        c_ws.close()


@pytest.mark.parametrize("order", ["together", "webhook_first", "builder_first"])
async def test_webhook_racing_the_builders_confirm_confirms_the_line_once(sheda, gw, order):  # noqa: F811
    for _ in range(3 if order == "together" else 1):
        builder, client, booking = await booked(sheda, plan=TWO_STEPS)
        bid = booking["id"]
        await paid_through_gateway(sheda, gw, client, bid, 1)
        pay = (await pay_line(sheda, client, bid, 2)).json
        # The client also says a transfer is on its way, so the builder can confirm by hand.
        assert (await line(sheda, client, bid, 2, "payment-sent")).status == 200
        gw.pay(pay["reference"])
        webhook = gw.deliver(gw.event_body(pay["reference"]))
        confirm = line(sheda, builder, bid, 2, "confirm")
        if order == "together":
            hook, manual = await asyncio.gather(webhook, confirm)
        elif order == "webhook_first":
            hook = await webhook
            manual = await confirm
            assert manual.status == 409 and manual.json["code"] == "wrong_state"
        else:
            manual = await confirm
            hook = await webhook
            assert manual.status == 200
        assert hook.code == 200 and manual.status in (200, 409), manual
        await sheda.ctx.payment_reconciliation.run()  # finishes anything left half-way
        stored = await snapshot(sheda, "bookings", bid)
        assert stored["status"] == "completed" and stored["installments"][1]["status"] == "confirmed"
        assert await notes(sheda, client.id, bid, "booking.payment_confirmed", 2) == 1  # confirmed once
        assert await notes(sheda, client.id, bid, "booking.completed") == 1
        payment = (await sheda.api.get(f"{PAY}/{pay['reference']}", token=client.token)).json
        assert payment["status"] == "succeeded" and payment["applied"] is True
        if manual.status == 200:  # the builder got there first: the client may have paid twice
            assert [f["reason"] for f in payment["flags"]] == ["installment_already_confirmed"]
            assert "paid_by" not in stored["installments"][1]
        else:  # the gateway's money confirmed it; the transfer the client announced may still come: flagged too
            assert [f["reason"] for f in payment["flags"]] == ["installment_also_sent"]
            assert stored["installments"][1]["paid_by"] == pay["reference"]


async def test_a_wrong_amount_webhook_is_flagged_and_the_line_stays_unpaid(sheda, gw):  # noqa: F811
    builder, client, booking = await booked(sheda)
    bid = booking["id"]
    pay = (await pay_line(sheda, client, bid, 1)).json
    gw.pay(pay["reference"], amount=100)  # one naira instead of the booking payment
    assert (await gw.deliver(gw.event_body(pay["reference"]))).code == 200
    flagged = (await sheda.api.get(f"{PAY}/{pay['reference']}", token=client.token)).json
    assert flagged["flagged"] is True and flagged["applied"] is False and flagged["status"] == "pending"
    assert [f["reason"] for f in flagged["flags"]] == ["webhook_mismatch"]
    stored = await snapshot(sheda, "bookings", bid)
    assert stored["status"] == "reserved" and stored["installments"][0]["status"] == "due"
    assert (await snapshot(sheda, "units", booking["unit_id"]))["status"] == "reserved"


async def test_a_payment_for_a_booking_cancelled_meanwhile_is_flagged_for_a_refund(sheda, gw):  # noqa: F811
    builder, client, booking = await booked(sheda)
    bid = booking["id"]
    pay = (await pay_line(sheda, client, bid, 1)).json
    assert (await sheda.api.post(f"{BOOKINGS}/{bid}/cancel", {}, token=client.token)).status == 200
    gw.pay(pay["reference"])  # the client paid at the checkout anyway
    assert (await gw.deliver(gw.event_body(pay["reference"]))).code == 200
    payment = (await sheda.api.get(f"{PAY}/{pay['reference']}", token=client.token)).json
    assert payment["status"] == "succeeded" and payment["applied"] is True
    assert [f["reason"] for f in payment["flags"]] == ["installment_not_payable"]
    stored = await snapshot(sheda, "bookings", bid)
    assert stored["status"] == "cancelled" and stored["installments"][0]["status"] == "due"
    assert (await snapshot(sheda, "units", booking["unit_id"]))["status"] == "available"


async def test_lines_paid_through_the_gateway_then_the_booking_cancelled_are_flagged_for_a_refund(sheda, gw):  # noqa: F811
    """The platform took the client's money for lines 1 and 2, then the builder cancelled the booking: the
    unit is gone, so an admin must see that a refund is due (as for money arriving after a cancel), once per
    payment, whoever or whatever finishes the cancel. A line paid by bank transfer went to the builder
    directly: nothing of ours to flag."""
    builder, client, booking = await booked(sheda)
    bid = booking["id"]
    paid = [await paid_through_gateway(sheda, gw, client, bid, n) for n in (1, 2)]
    assert [p["status"] for p in paid] == ["succeeded", "succeeded"] and not any(p["flagged"] for p in paid)
    assert (await line(sheda, client, bid, 3, "payment-sent")).status == 200
    assert (await line(sheda, builder, bid, 3, "confirm")).status == 200
    r = await sheda.api.post(f"{BOOKINGS}/{bid}/cancel", {"reason": "Project re-planned"}, token=builder.token)
    assert r.status == 200 and r.json["status"] == "cancelled", r
    admin = await sheda.admin()
    listed = (await sheda.api.get(f"{PAY}?flagged=true&limit=100", token=admin.token)).json["items"]
    assert sorted(p["reference"] for p in listed if p["target_id"] == bid) == sorted(p["reference"] for p in paid)
    for p in paid:
        now = (await sheda.api.get(f"{PAY}/{p['reference']}", token=client.token)).json
        assert now["status"] == "succeeded" and now["flagged"] is True
        assert [f["reason"] for f in now["flags"]] == ["booking_cancelled"], now["flags"]
        assert "refund is due" in now["flags"][0]["detail"] and "Project re-planned" in now["flags"][0]["detail"]
    # A cancel whose process died before the flag (the booking still unsynced) is finished by the booking job,
    # which flags what is left and never a second time.
    await sheda.ctx.db["payments"].update_one({"reference": paid[1]["reference"]},
                                              {"$set": {"flagged": False, "flags": []}})
    await sheda.ctx.db["bookings"].update_one({"_id": bid}, {"$set": {"unit_synced": False}})
    sheda.ctx.clock.advance(minutes=10)
    await asyncio.gather(sheda.ctx.bookings.sync_units(), sheda.ctx.bookings.sync_units())
    for p in paid:
        stored = await sheda.ctx.db["payments"].find_one({"reference": p["reference"]})
        assert [f["reason"] for f in stored["flags"]] == ["booking_cancelled"]


async def test_a_line_marked_sent_then_paid_at_the_checkout_is_confirmed_and_flagged(sheda, gw):  # noqa: F811
    """The client opened the checkout, then also said a bank transfer was made (payment-sent), then paid at
    the checkout. The gateway's money confirms the line (it is real), but the transfer may reach the builder
    too: the same possible double payment as the builder confirming first (installment_already_confirmed),
    so it is flagged for an admin. A line sent, declined, then paid at the checkout is not."""
    builder, client, booking = await booked(sheda)
    bid = booking["id"]
    pay = (await pay_line(sheda, client, bid, 1)).json
    assert (await line(sheda, client, bid, 1, "payment-sent", {"reference": "BANK-778"})).status == 200
    gw.pay(pay["reference"])
    assert (await gw.deliver(gw.event_body(pay["reference"]))).code == 200
    done = (await sheda.api.get(f"{PAY}/{pay['reference']}", token=client.token)).json
    assert done["status"] == "succeeded" and done["applied"] is True
    assert [f["reason"] for f in done["flags"]] == ["installment_also_sent"] and "BANK-778" in done["flags"][0]["detail"]
    stored = await snapshot(sheda, "bookings", bid)
    assert stored["status"] == "active" and stored["installments"][0]["paid_by"] == pay["reference"]
    # Sent, declined by the builder (no transfer came), then paid at the checkout: nothing to flag.
    assert (await line(sheda, client, bid, 2, "payment-sent", {"reference": "BANK-779"})).status == 200
    assert (await line(sheda, builder, bid, 2, "decline")).status == 200
    second = await paid_through_gateway(sheda, gw, client, bid, 2)
    assert second["status"] == "succeeded" and second["flagged"] is False and second["flags"] == []


async def test_a_lost_webhook_is_recovered_by_reconciliation(sheda, gw):  # noqa: F811
    builder, client, booking = await booked(sheda)
    bid = booking["id"]
    pay = (await pay_line(sheda, client, bid, 1)).json
    gw.pay(pay["reference"])  # ...and the webhook never arrives
    await sheda.ctx.payment_reconciliation.run()
    assert (await snapshot(sheda, "bookings", bid))["status"] == "reserved"  # not 30 minutes yet
    sheda.ctx.clock.advance(minutes=31)
    await asyncio.gather(sheda.ctx.payment_reconciliation.run(), sheda.ctx.payment_reconciliation.run())
    assert (await sheda.api.get(f"{PAY}/{pay['reference']}", token=client.token)).json["status"] == "succeeded"
    stored = await snapshot(sheda, "bookings", bid)
    assert stored["status"] == "active" and stored["installments"][0]["paid_by"] == pay["reference"]
    assert (await snapshot(sheda, "units", booking["unit_id"]))["status"] == "booked"
    assert await notes(sheda, builder.id, bid, "booking.payment_confirmed", 1) == 1


async def test_bad_installment_and_purpose_requests_are_refused_with_nothing_stored(sheda, gw):  # noqa: F811
    builder, client, booking = await booked(sheda)
    bid = booking["id"]
    other = await sheda.signup("client")

    async def refused(user, body, status, code, field=None):
        before = await sheda.ctx.db["payments"].count_documents({})
        r = await sheda.api.post(PAY, body, token=user.token)
        assert r.status == status and r.json["code"] == code, (body, r)
        if field:
            assert [e["field"] for e in r.json["errors"]] == [field], r.json
        assert await sheda.ctx.db["payments"].count_documents({}) == before

    await refused(client, {"purpose": "installment", "target_id": bid}, 422, "validation_error", "line")
    await refused(client, {"purpose": "installment", "target_id": bid, "line": 0}, 422, "validation_error", "line")
    await refused(client, {"purpose": "installment", "target_id": bid, "line": "1"}, 422, "validation_error", "line")
    await refused(client, {"purpose": "installment", "target_id": bid, "line": 1, "amount": "10.00"}, 422, "validation_error",
                  "amount")
    await refused(client, {"purpose": "contract", "target_id": bid, "line": 1}, 422, "validation_error", "line")
    await refused(client, {"purpose": "wallet_topup", "target_id": client.id}, 422, "validation_error", "amount")
    await refused(client, {"purpose": "wallet_topup", "target_id": client.id, "amount": 10.5}, 422, "validation_error", "amount")
    await refused(client, {"purpose": "installment", "target_id": bid, "line": 5}, 404, "installment_not_found")
    await refused(other, {"purpose": "installment", "target_id": bid, "line": 1}, 404, "booking_not_found")
    await refused(client, {"purpose": "installment", "target_id": 10**9, "line": 1}, 404, "booking_not_found")
    await refused(builder, {"purpose": "installment", "target_id": bid, "line": 1}, 403, "not_client")
    await refused(client, {"purpose": "installment", "target_id": bid, "line": 2}, 409, "wrong_state")  # booking payment first
    # A line the client marked sent awaits the builder's answer to the transfer: not paid twice.
    assert (await line(sheda, client, bid, 1, "payment-sent")).status == 200
    await refused(client, {"purpose": "installment", "target_id": bid, "line": 1}, 409, "wrong_state")
    # A hold that lapsed cannot be paid into.
    _, client2, booking2 = await booked(sheda)
    sheda.ctx.clock.advance(hours=49)  # past BOOKING_HOLD_HOURS (48)
    await refused(client2, {"purpose": "installment", "target_id": booking2["id"], "line": 1}, 409, "hold_expired")
    assert gw.initialized == []
    assert (await snapshot(sheda, "bookings", bid))["installments"][0]["status"] == "sent"
    # A 0.00 line (a booking stored before such plans were refused at booking): nothing to charge, so a 409 saying
    # how it is settled, never the gateway's 503 "try again shortly" that no retry could ever get past.
    _, client3, booking3 = await booked(sheda)
    await sheda.ctx.db["bookings"].update_one({"_id": booking3["id"]}, {"$set": {"installments.0.amount_minor": 0}})
    await refused(client3, {"purpose": "installment", "target_id": booking3["id"], "line": 1}, 409, "nothing_to_pay")
