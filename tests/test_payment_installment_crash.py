"""A builder booking's installment paid through the gateway while the server that handles the webhook is
killed with SIGKILL around the gateway's verify answer (issue 18 §3: "a kill -9 between the gateway's
answer and our write, with the money ending up right after restart and reconciliation").

The victim is a real `python run.py` on this module's own database; the test's in-process server shares
that database and plays the other process (its clock can be moved past the 30 minutes reconciliation
waits for). Whichever way the payment is finished, by Paystack's redelivery to the restarted server or by
reconciliation, the line is confirmed exactly once: one payment succeeded and applied, unflagged, the
booking active with the line paid by it, the unit booked, one notification to each side."""
from __future__ import annotations

import asyncio
import uuid

import pytest

from tests.listing_helpers import snapshot
from tests.paystack_server import SECRET
from tests.redis_support import Remote, ServerProcess, server_env
from tests.test_builder_bookings import book, setup_project
from tests.test_payment_installments import TWO_STEPS, notes, pay_line
from tests.test_payments import delivered_to_a_server_killed_around_verify, paystack, restarted  # noqa: F401

PAY = "/api/v1/payments"


@pytest.fixture
def settings_overrides(paystack):  # noqa: F811
    return {"paystack_secret_key": SECRET, "paystack_base_url": paystack.base_url,
            "mongodb_db": f"sheda_crash_{uuid.uuid4().hex[:8]}",  # shared with the victim process only
            "access_token_minutes": 240}  # tokens outlive the clock move


@pytest.mark.parametrize("recovery", ["redelivery", "reconciliation"])
@pytest.mark.parametrize("moment", ["before", "after"])
async def test_kill_9_around_verify_of_an_installment_then_restart_confirms_the_line_once(
        sheda, paystack, embedded_db, tmp_path, moment, recovery):  # noqa: F811
    s = sheda.server.settings
    builder, project, units, plan = await setup_project(sheda, units=("K-1",), plan=TWO_STEPS)
    client = await sheda.signup("client")
    r = await book(sheda, client, units[0]["id"], plan["id"])
    assert r.status == 201, r
    booking = r.json
    bid = booking["id"]
    r = await pay_line(sheda, client, bid, 1)
    assert r.status == 201, r
    reference = r.json["reference"]
    paystack.pay(reference)

    env = server_env(embedded_db, None, tmp_path / "victim", s.mongodb_db, JWT_SECRET=s.jwt_secret.get_secret_value(),
                     PAYSTACK_SECRET_KEY=SECRET, PAYSTACK_BASE_URL=paystack.base_url)
    servers = [ServerProcess(env, tmp_path, "victim").start()]
    try:
        body = paystack.event_body(reference)
        await delivered_to_a_server_killed_around_verify(paystack, servers[0], body, moment)
        servers.append(restarted(servers[0], paystack))
        api = Remote(servers[-1]).api

        if recovery == "redelivery":
            for _ in range(2):  # Paystack delivers again (and once more: no further effect)
                assert (await paystack.deliver(body)).code == 200
        else:  # the webhook is lost for good: another process's reconciliation, 31 minutes on, twice at once
            sheda.ctx.clock.advance(minutes=31)
            await asyncio.gather(sheda.ctx.payment_reconciliation.run(), sheda.ctx.payment_reconciliation.run())
            assert (await paystack.deliver(body)).code == 200  # a late redelivery changes nothing either

        payment = (await api.get(f"{PAY}/{reference}", token=client.token)).json
        assert payment["status"] == "succeeded" and payment["applied"] is True and payment["flagged"] is False, payment
        seen = (await api.get(f"/api/v1/bookings/{bid}", token=client.token)).json
        assert seen["status"] == "active" and [ln["status"] for ln in seen["installments"]] == ["confirmed", "due"]
        assert seen["paid"] == booking["installments"][0]["amount"]
        stored = await snapshot(sheda, "bookings", bid)
        assert stored["installments"][0]["paid_by"] == reference
        assert (await snapshot(sheda, "units", booking["unit_id"]))["status"] == "booked"
        for user in (client, builder):
            assert await notes(sheda, user.id, bid, "booking.payment_confirmed", 1) == 1
        assert await sheda.ctx.db["payments"].count_documents({"target_id": bid, "purpose": "installment"}) == 1
    finally:
        for server in servers:
            server.stop()
