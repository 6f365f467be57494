"""Payments at their edges (issue 18 review): amounts and ids no client should send are 422 with nothing
started at the gateway; signed webhooks with odd or broken bodies are acknowledged without a 500; one
event delivered several times at once (Paystack retries while the first delivery is still being handled)
raises its flag once."""
from __future__ import annotations

import asyncio
import json

import uuid

import pytest

from tests.paystack_server import SECRET
from tests.test_payments import gw, open_contract, paystack, start_payment  # noqa: F401

PAY = "/api/v1/payments"
WALLET = "/api/v1/wallet"


@pytest.fixture
def settings_overrides(paystack):  # noqa: F811
    return {"paystack_secret_key": SECRET, "paystack_base_url": paystack.base_url,
            "mongodb_db": f"sheda_pay_edges_{uuid.uuid4().hex[:8]}",  # reconciliation here sees this module's payments only
            "access_token_minutes": 240}


async def test_odd_amounts_and_ids_are_422_and_nothing_reaches_the_gateway(sheda, gw):  # noqa: F811
    user = await sheda.signup("client")
    odd = ["1e3", "-0", "0.001", "0", "0.00", "-5", "1" * 30, 10 ** 30, -(10 ** 30), "NaN", "Infinity", "-Infinity", " 5000",
           "5000.", ".5", "\u0665\u0660\u0660", "5_000", True, None, [], {}, "1000.000", "1,000", "0x1F4", "+500", "500\n",
           "9" * 14, 0, -1, 2 ** 63, "1e-2", "1E3", 1e3]
    for amount in odd:
        r = await sheda.api.post(PAY, {"purpose": "wallet_topup", "target_id": user.id, "amount": amount}, token=user.token)
        assert r.status == 422 and r.json["code"] == "validation_error", (amount, r.status, r.json)
    for target in (0, -1, 2 ** 63, "1", 1.0, None, 10 ** 40):
        r = await sheda.api.post(PAY, {"purpose": "wallet_topup", "target_id": target, "amount": "500"}, token=user.token)
        assert r.status == 422, (target, r.status, r.json)
    assert gw.initialized == []


async def test_concurrent_deliveries_of_one_wrong_amount_event_flag_the_payment_once(sheda, gw):  # noqa: F811
    """Four deliveries of one event at once each found the mismatch and pushed a flag (4 flags for one
    mismatch) before flags were raised once per reason."""
    user = await sheda.signup("client")
    r = await sheda.api.post(PAY, {"purpose": "wallet_topup", "target_id": user.id, "amount": "500"}, token=user.token)
    ref = r.json["reference"]
    gw.pay(ref, amount=100)
    body = gw.event_body(ref)
    hooks = await asyncio.gather(*(gw.deliver(body) for _ in range(4)))
    assert [h.code for h in hooks] == [200] * 4
    pay = (await sheda.api.get(f"{PAY}/{ref}", token=user.token)).json
    assert [f["reason"] for f in pay["flags"]] == ["webhook_mismatch"], pay["flags"]
    assert pay["applied"] is False and pay["status"] == "pending"
    assert (await sheda.api.get(WALLET, token=user.token)).json["balance"] == "0.00"


async def test_signed_webhooks_with_odd_bodies_are_acknowledged_never_a_500(sheda, gw):  # noqa: F811
    user = await sheda.signup("client")
    r = await sheda.api.post(PAY, {"purpose": "wallet_topup", "target_id": user.id, "amount": "500"}, token=user.token)
    ref = r.json["reference"]
    gw.pay(ref)
    for data in ({"id": 10 ** 40, "reference": ref, "amount": 10 ** 40, "currency": "NGN"},
                 {"id": "x" * 64, "reference": ref, "amount": "50000", "currency": "NGN"},
                 {"id": 5, "reference": ["x"], "amount": 1.5, "currency": 7},
                 {"id": 6, "reference": "\ud800", "amount": 1, "currency": "NGN"}):
        body = json.dumps({"event": "charge.success", "data": data}).encode()
        h = await gw.deliver(body)
        assert h.code == 200, (data, h.code, h.body)
    for body in (b"{", b"[]", b"null", b"\xff\xfe", b'{"event": "charge.success", "data": {"id": 1e999}}', b"{" * 5000 + b"}" * 5000):
        h = await gw.deliver(body)
        assert h.code == 200, (body[:30], h.code, h.body)
    # The one event with the right amount, currency and reference credited the wallet, once; the
    # 10**40 kobo one was flagged.
    pay = (await sheda.api.get(f"{PAY}/{ref}", token=user.token)).json
    assert pay["status"] == "succeeded" and pay["applied"] is True
    assert [f["reason"] for f in pay["flags"]] == ["webhook_mismatch"]
    assert (await sheda.api.get(WALLET, token=user.token)).json["balance"] == "500.00"


async def test_payments_the_gateway_keeps_undecided_do_not_starve_reconciliation_of_the_others(sheda, gw):  # noqa: F811
    """Reconciliation verifies a batch of stale payments per run. It took the oldest every time, so once a
    batch's worth stayed undecided at the gateway (Paystack's "ongoing": a transfer or USSD payment not
    settled yet), a newer payment whose webhook was lost was never verified: its wallet never credited.
    Now the ones verified least recently go first."""
    user = await sheda.signup("client")
    undecided = []
    for naira in ("500", "600", "700"):
        r = await sheda.api.post(PAY, {"purpose": "wallet_topup", "target_id": user.id, "amount": naira}, token=user.token)
        assert r.status == 201, r
        undecided.append(r.json["reference"])
        gw.transactions[r.json["reference"]]["status"] = "ongoing"
    r = await sheda.api.post(PAY, {"purpose": "wallet_topup", "target_id": user.id, "amount": "800"}, token=user.token)
    paid = r.json["reference"]
    gw.pay(paid)  # ...and its webhook is lost
    sheda.ctx.clock.advance(minutes=31)
    for _ in range(3):
        await sheda.ctx.payments.reconcile(batch=3)
    assert (await sheda.api.get(f"{PAY}/{paid}", token=user.token)).json["status"] == "succeeded"
    assert (await sheda.api.get(WALLET, token=user.token)).json["balance"] == "800.00"
    for reference in undecided:  # still asked about, never closed while the gateway has not decided
        assert (await sheda.api.get(f"{PAY}/{reference}", token=user.token)).json["status"] == "pending"
    assert sorted(gw.verified.count(reference) for reference in undecided) >= [2, 2, 2]


async def test_a_paid_contract_whose_activation_was_cut_between_its_writes_is_finished(sheda, gw):  # noqa: F811
    """What a process killed between the contract activation's two writes leaves (ContractService._activate
    takes the property for the contract, then moves the contract): the property held by the contract, the
    contract still awaiting payment. The gateway's payment carries on from there: the contract ends active."""
    agent, client, prop, contract = await open_contract(sheda)
    pay = await start_payment(sheda, client, contract)
    await sheda.ctx.db["properties"].update_one({"_id": prop["id"]}, {"$set": {"status": "rented", "contract_id": contract["id"]}})
    gw.pay(pay["reference"])
    assert (await gw.deliver(gw.event_body(pay["reference"]))).code == 200
    payment = (await sheda.api.get(f"{PAY}/{pay['reference']}", token=client.token)).json
    assert payment["status"] == "succeeded" and payment["applied"] is True and payment["flagged"] is False, payment
    assert (await sheda.api.get(f"/api/v1/contracts/{contract['id']}", token=client.token)).json["status"] == "active"


async def hold_property_oddly(sheda, prop, contract) -> None:
    """A property held for the contract in a state its activation does not expect (a rent contract's
    property marked sold: a half-finished hand repair): the contract cannot move, and nothing says so."""
    await sheda.ctx.db["properties"].update_one({"_id": prop["id"]}, {"$set": {"status": "sold", "contract_id": contract["id"],
                                                                               "updated_at": sheda.ctx.clock.now()}})


async def test_a_paid_contract_whose_activation_stays_stuck_is_flagged_once_for_an_admin(sheda, gw):  # noqa: F811
    """A gateway payment for a contract whose activation cannot proceed answers "in progress" from then
    on: the money was taken and nothing happens. 30 minutes after the success the reconciliation job
    flags it (once) for an admin; it stays unapplied, and is still retried."""
    agent, client, prop, contract = await open_contract(sheda)
    pay = await start_payment(sheda, client, contract)
    await hold_property_oddly(sheda, prop, contract)
    gw.pay(pay["reference"])
    assert (await gw.deliver(gw.event_body(pay["reference"]))).code == 200
    payment = (await sheda.api.get(f"{PAY}/{pay['reference']}", token=client.token)).json
    assert payment["status"] == "succeeded" and payment["applied"] is False and payment["flagged"] is False
    await sheda.ctx.payment_reconciliation.run()  # minutes after the success: an agent's confirmation may be finishing
    assert (await sheda.api.get(f"{PAY}/{pay['reference']}", token=client.token)).json["flagged"] is False
    sheda.ctx.clock.advance(minutes=31)
    for _ in range(2):
        await sheda.ctx.payment_reconciliation.run()
    payment = (await sheda.api.get(f"{PAY}/{pay['reference']}", token=client.token)).json
    assert payment["applied"] is False and [f["reason"] for f in payment["flags"]] == ["effect_stuck"], payment
    flagged = (await sheda.api.get(PAY, token=(await sheda.admin()).token, params={"flagged": "true"})).json["items"]
    assert pay["reference"] in [p["reference"] for p in flagged]
    # Anyone else asking for flagged payments sees only their own.
    stranger = await sheda.signup("client")
    assert (await sheda.api.get(PAY, token=stranger.token, params={"flagged": "true"})).json["items"] == []
    assert (await sheda.api.get(f"{PAY}/{pay['reference']}", token=stranger.token)).status == 404


async def test_effects_stuck_in_progress_do_not_starve_reconciliation_of_the_others(sheda, gw):  # noqa: F811
    """Reconciliation finishes a batch of succeeded, unapplied payments per run, in no order: once a batch's
    worth stayed "in progress" (the stuck contracts above), a payment whose process died between its success
    and its effect was never finished: here a top-up never credited. Now the ones tried least recently go first."""
    stuck = []
    for _ in range(3):
        agent, client, prop, contract = await open_contract(sheda)
        pay = await start_payment(sheda, client, contract)
        await hold_property_oddly(sheda, prop, contract)
        gw.pay(pay["reference"])
        assert (await gw.deliver(gw.event_body(pay["reference"]))).code == 200
        stuck.append(pay["reference"])
    user = await sheda.signup("client")
    r = await sheda.api.post(PAY, {"purpose": "wallet_topup", "target_id": user.id, "amount": "900"}, token=user.token)
    topup = r.json["reference"]
    # What a process killed between the payment's move to succeeded and its effect leaves:
    now = sheda.ctx.clock.now()
    await sheda.ctx.db["payments"].update_one({"reference": topup}, {"$set": {"status": "succeeded", "succeeded_at": now},
                                                                      "$unset": {"open_key": ""}})
    for _ in range(2):
        await sheda.ctx.payments.reconcile(batch=3)
    assert (await sheda.api.get(WALLET, token=user.token)).json["balance"] == "900.00"
    assert (await sheda.api.get(f"{PAY}/{topup}", token=user.token)).json["applied"] is True
    for reference in stuck:
        assert (await sheda.ctx.payment_store.get(reference))["applied"] is False
