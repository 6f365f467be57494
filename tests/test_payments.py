"""Paying for a contract through the gateway (issue 18 §1), against a local Paystack
(tests/paystack_server.py) that answers as its documentation describes: the happy path with
both sockets open, forged / replayed / out-of-order / wrong-amount / wrong-currency webhooks,
a lost webhook recovered by reconciliation with a moved clock, a webhook racing the agent's
manual confirmation, and a server with no gateway configured."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import uuid
from types import SimpleNamespace

import pytest
import tornado.netutil
from tornado.simple_httpclient import HTTPStreamClosedError

from config import load_settings
from handlers.app import make_app
from sheda_rt.clock import Clock
from sheda_rt.server import Server
from tests import test_contracts as contracts_tests
from tests.support import Api
from tests.listing_helpers import snapshot
from tests.paystack_server import SECRET, FakePaystack, sign
from tests.redis_support import Remote, ServerProcess, server_env

PAY = "/api/v1/payments"
CT = "/api/v1/contracts"


@pytest.fixture
def paystack(io_loop):
    gateway = FakePaystack()
    gateway.start()
    yield gateway
    gateway.stop()


@pytest.fixture
def settings_overrides(paystack):
    return {"paystack_secret_key": SECRET, "paystack_base_url": paystack.base_url,
            "payment_callback_url": "https://app.example.com/paid",
            "access_token_minutes": 240}  # tokens outlive the clock moves below


@pytest.fixture
def gw(sheda, paystack, io_loop):
    paystack.webhook_url = sheda.base_url + "/api/v1/webhooks/paystack"
    yield paystack
    # An early webhook leaves re-verifies due in minutes of real time: the database is shared, and a later
    # test's runner would ask its own local Paystack about this test's references.
    io_loop.run_sync(lambda: sheda.ctx.db["jobs"].delete_many({"kind": "payment_reverify", "status": "pending"}))


async def open_contract(sheda, price="1200000.00", listing_type="rent"):
    agent, prop, [(client, appt)] = await contracts_tests.rental_ready(sheda, listing_type=listing_type, price=price)
    body = {"appointment_id": appt["id"], "term_months": 12} if listing_type == "rent" else {"appointment_id": appt["id"]}
    r = await sheda.api.post(f"{CT}/{prop['id']}", body, token=client.token)
    assert r.status == 201, r
    return agent, client, prop, r.json


async def start_payment(sheda, client, contract) -> dict:
    r = await sheda.api.post(PAY, {"purpose": "contract", "target_id": contract["id"]}, token=client.token)
    assert r.status == 201, r
    return r.json


async def stored_events(sheda, reference) -> list[dict]:
    return await sheda.ctx.db["payment_events"].find({"reference": reference}).to_list()


async def test_happy_path_checkout_webhook_verify_contract_active_with_live_events(sheda, gw):
    agent, client, prop, contract = await open_contract(sheda)
    agent_ws, client_ws = await sheda.ws(agent.token), await sheda.ws(client.token)

    pay = await start_payment(sheda, client, contract)
    assert pay["status"] == "pending" and pay["amount"] == "1200000.00" and pay["currency"] == "NGN"
    assert pay["checkout_url"].startswith(gw.base_url + "/checkout/") and pay["payer_id"] == client.id and pay["payee_id"] == agent.id
    sent = gw.initialized[-1]
    assert sent["amount"] == 120_000_000 and sent["email"] == client.email and sent["reference"] == pay["reference"]
    assert sent["currency"] == "NGN" and sent["callback_url"] == "https://app.example.com/paid"
    # Asking again while the checkout is live hands back the same attempt, not a second charge.
    again = await sheda.api.post(PAY, {"purpose": "contract", "target_id": contract["id"]}, token=client.token)
    assert again.status == 200 and again.json["reference"] == pay["reference"] and len(gw.initialized) == 1
    # Both parties (and nobody else) can see it.
    assert (await sheda.api.get(f"{PAY}/{pay['reference']}", token=agent.token)).json["status"] == "pending"
    stranger = await sheda.signup("client")
    assert (await sheda.api.get(f"{PAY}/{pay['reference']}", token=stranger.token)).status == 404

    gw.pay(pay["reference"])  # the customer pays at the checkout
    r = await gw.deliver(gw.event_body(pay["reference"]))
    assert r.code == 200 and json.loads(r.body) == {"received": True}
    assert gw.verified == [pay["reference"]]  # confirmed with the gateway before the contract moved

    done = (await sheda.api.get(f"{PAY}/{pay['reference']}", token=client.token)).json
    assert done["status"] == "succeeded" and done["applied"] is True and done["flagged"] is False and done["paid_at"]
    active = (await sheda.api.get(f"{CT}/{contract['id']}", token=client.token)).json
    assert active["status"] == "active" and active["is_active"] is True
    assert (await snapshot(sheda, "properties", prop["id"]))["status"] == "rented"
    # The same live events and notifications as the manual confirmation, on both parties' sockets.
    assert (await client_ws.wait_type("contract.confirmed"))["contract"]["status"] == "active"
    assert (await agent_ws.wait_type("contract.confirmed"))["contract"]["id"] == contract["id"]
    told_client = await client_ws.wait_type("notification", kind="contract.confirmed")
    told_agent = await agent_ws.wait_type("notification", kind="contract.confirmed")
    # The gateway confirmed it, not the agent: each party is told in their own words (a phone shows these)
    assert told_client["body"].startswith("Your payment of 1200000.00 NGN for") and "agent" not in told_client["body"], told_client
    assert told_agent["title"] == "Payment received" and told_agent["body"].startswith("The client paid 1200000.00 NGN for"), told_agent
    mine = (await sheda.api.get(PAY, token=client.token)).json
    assert [p["reference"] for p in mine["items"]] == [pay["reference"]] and mine["next_cursor"] is None
    assert [p["reference"] for p in (await sheda.api.get(PAY, token=agent.token, params={"status": "succeeded"})).json["items"]] \
        == [pay["reference"]]
    # The contract is paid: no new payment for it.
    r = await sheda.api.post(PAY, {"purpose": "contract", "target_id": contract["id"]}, token=client.token)
    assert r.status == 409 and r.json["code"] == "wrong_state"
    agent_ws.close()
    client_ws.close()


async def test_only_the_contracts_client_starts_a_payment_and_input_is_bounded(sheda, gw):
    agent, client, prop, contract = await open_contract(sheda)
    r = await sheda.api.post(PAY, {"purpose": "contract", "target_id": contract["id"]}, token=agent.token)
    assert r.status == 403  # agents are not clients
    other = await sheda.signup("client")
    r = await sheda.api.post(PAY, {"purpose": "contract", "target_id": contract["id"]}, token=other.token)
    assert r.status == 404 and r.json["code"] == "contract_not_found"
    for bad in ({"purpose": "wallet_topup", "target_id": contract["id"]}, {"purpose": "contract", "target_id": "1"},
                {"purpose": "contract", "target_id": 0}, {"purpose": "contract", "target_id": 2**70}, {"purpose": "contract"}):
        r = await sheda.api.post(PAY, bad, token=client.token)
        assert r.status == 422, (bad, r)
    assert gw.initialized == []
    for weird in ("nope", "%00", "%ED%A0%80", "x" * 5000, "%F0%9F%8F%A0", "shd_%24ne"):
        r = await sheda.api.get(f"{PAY}/{weird}", token=client.token)
        assert r.status in (400, 404) and r.json["code"] in ("not_found", "payment_not_found", "bad_request"), (weird, r)


async def test_forged_or_missing_signature_is_401_and_nothing_is_stored(sheda, gw):
    agent, client, prop, contract = await open_contract(sheda)
    pay = await start_payment(sheda, client, contract)
    gw.pay(pay["reference"])
    body = gw.event_body(pay["reference"])
    for signature in (sign(body, "sk_test_not_ours"), "", "zz" * 64, sign(body + b" ", SECRET)):
        r = await gw.deliver(body, signature=signature)
        assert r.code == 401, (signature, r.code, r.body)
        assert json.loads(r.body)["code"] == "bad_signature"
    for garbage in (b"", b"{", b"\xff\xfe", b"[]", b'{"event": 1}'):
        r = await gw.deliver(garbage, signature="00")
        assert r.code == 401
    assert await stored_events(sheda, pay["reference"]) == []
    assert gw.verified == []
    assert (await sheda.api.get(f"{PAY}/{pay['reference']}", token=client.token)).json["status"] == "pending"
    assert (await snapshot(sheda, "contracts", contract["id"]))["status"] == "awaiting_payment"
    # Signed garbage is acknowledged (Paystack sent it) and changes nothing; never a 500.
    for garbage in (b"{", b"[]", b'{"event": "charge.success"}', b'{"event": "charge.success", "data": {"id": true}}',
                    b'{"event": "charge.success", "data": {"id": 5, "reference": "\\ud800"}}', b"[" * 5000 + b"]" * 5000,
                    b'{"event": "charge.success", "data": {"id": 6, "$where": "1", "a.b": {"$gt": 1}, "reference": {"$ne": 1}}}'):
        r = await gw.deliver(garbage)
        assert r.code == 200, (garbage, r.code, r.body)
    assert (await snapshot(sheda, "contracts", contract["id"]))["status"] == "awaiting_payment"


async def test_a_replayed_event_is_200_with_no_effect(sheda, gw):
    agent, client, prop, contract = await open_contract(sheda)
    pay = await start_payment(sheda, client, contract)
    gw.pay(pay["reference"])
    body = gw.event_body(pay["reference"])
    assert (await gw.deliver(body)).code == 200
    notes = await sheda.ctx.db["notifications"].count_documents({"data.contract_id": contract["id"]})
    before = await sheda.ctx.db["payments"].find_one({"reference": pay["reference"]})
    for _ in range(3):
        r = await gw.deliver(body)
        assert r.code == 200
    assert gw.verified == [pay["reference"]]  # the redeliveries were recognised before the gateway was asked
    assert len(await stored_events(sheda, pay["reference"])) == 1
    assert await sheda.ctx.db["notifications"].count_documents({"data.contract_id": contract["id"]}) == notes
    assert await sheda.ctx.db["payments"].find_one({"reference": pay["reference"]}) == before


@pytest.mark.parametrize("what", ["amount", "currency", "verify_amount"])
async def test_wrong_amount_or_currency_is_flagged_for_an_admin_and_not_applied(sheda, gw, what):
    agent, client, prop, contract = await open_contract(sheda)
    pay = await start_payment(sheda, client, contract)
    ref = pay["reference"]
    if what == "amount":
        gw.pay(ref, amount=120_000_000 - 100)  # one naira short
        body = gw.event_body(ref)
    elif what == "currency":
        gw.pay(ref, currency="USD")
        body = gw.event_body(ref)
    else:  # the webhook claims the right amount; the gateway's own record says otherwise
        gw.pay(ref, amount=1_000)
        body = gw.event_body(ref, amount=120_000_000)
    r = await gw.deliver(body)
    assert r.code == 200
    stored = (await sheda.api.get(f"{PAY}/{ref}", token=client.token)).json
    assert stored["flagged"] is True and stored["status"] == "pending" and stored["applied"] is False
    assert stored["flags"][0]["reason"] == ("verify_mismatch" if what == "verify_amount" else "webhook_mismatch")
    assert (await snapshot(sheda, "contracts", contract["id"]))["status"] == "awaiting_payment"
    assert (await snapshot(sheda, "properties", prop["id"]))["status"] == "available"
    admin = await sheda.admin()
    flagged = (await sheda.api.get(PAY, token=admin.token, params={"flagged": "true"})).json["items"]
    assert ref in [p["reference"] for p in flagged]
    assert (await sheda.api.get(f"{PAY}/{ref}", token=admin.token)).status == 200
    # Reconciliation leaves flagged payments to the admin.
    sheda.ctx.clock.advance(minutes=31)
    await sheda.ctx.payment_reconciliation.run()
    assert (await snapshot(sheda, "contracts", contract["id"]))["status"] == "awaiting_payment"
    # The flagged attempt no longer holds the contract's checkout: the client can pay again.
    again = await start_payment(sheda, client, contract)
    assert again["reference"] != ref and again["status"] == "pending"
    assert (await sheda.api.get(f"{PAY}/{ref}", token=client.token)).json["flagged"] is True


async def test_a_signed_success_the_gateway_does_not_confirm_moves_nothing(sheda, gw):
    agent, client, prop, contract = await open_contract(sheda)
    pay = await start_payment(sheda, client, contract)
    # A correctly signed charge.success (the key leaked, or a replay from elsewhere) for a transaction the
    # gateway still has unpaid: verify says so, and nothing moves.
    r = await gw.deliver(gw.event_body(pay["reference"], status="success"))
    assert r.code == 200 and gw.verified == [pay["reference"]]
    assert (await sheda.api.get(f"{PAY}/{pay['reference']}", token=client.token)).json["status"] == "pending"
    assert (await snapshot(sheda, "contracts", contract["id"]))["status"] == "awaiting_payment"


async def settled_within(sheda, reference, status, seconds=10.0) -> dict:
    """The payment once it is `status`: the queue's poll loop may be running a due job as well as the test."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while True:
        await sheda.ctx.job_runner.run_due()
        doc = await sheda.ctx.db["payments"].find_one({"reference": reference})
        if doc["status"] == status or loop.time() > deadline:
            return doc
        await asyncio.sleep(0.05)


async def test_an_early_charge_success_is_not_marked_processed_so_its_redelivery_confirms(sheda, gw):
    agent, client, prop, contract = await open_contract(sheda)
    ref = (await start_payment(sheda, client, contract))["reference"]
    gw.transactions[ref]["status"] = "ongoing"  # Paystack sent charge.success a moment before its verify agrees
    body = gw.event_body(ref, status="success")
    r = await gw.deliver(body)
    assert r.code == 200 and gw.verified == [ref]
    assert (await sheda.api.get(f"{PAY}/{ref}", token=client.token)).json["status"] == "pending"
    [event] = await stored_events(sheda, ref)
    assert event["processed"] is False  # not lost: a redelivery is handled afresh
    gw.pay(ref)
    assert (await gw.deliver(body)).code == 200
    done = (await sheda.api.get(f"{PAY}/{ref}", token=client.token)).json
    assert done["status"] == "succeeded" and done["applied"] is True and done["flagged"] is False
    assert (await snapshot(sheda, "contracts", contract["id"]))["status"] == "active"
    asked = len(gw.verified)
    assert (await gw.deliver(body)).code == 200 and len(gw.verified) == asked  # processed now: a replay asks nothing


async def test_an_early_charge_success_is_verified_again_within_minutes_and_applied_once(sheda, gw):
    agent, client, prop, contract = await open_contract(sheda)
    ref = (await start_payment(sheda, client, contract))["reference"]
    body = gw.event_body(ref, status="success")  # verify still says abandoned (not paid yet)
    assert (await gw.deliver(body)).code == 200 and (await gw.deliver(body)).code == 200  # Paystack sent it twice
    jobs = sheda.ctx.db["jobs"]
    assert await jobs.count_documents({"kind": "payment_reverify", "payload.reference": ref}) == 1
    sheda.ctx.clock.advance(minutes=1, seconds=1)
    asked = len(gw.verified)
    assert (await settled_within(sheda, ref, "succeeded", seconds=0.5))["status"] == "pending"  # still undecided
    assert gw.verified[asked:].count(ref) == 1  # (other tests' jobs may be due too: the database is shared)
    assert (await jobs.find_one({"_id": f"payment_reverify:{ref}:1"}))["status"] == "pending"  # backing off: 5 minutes
    gw.pay(ref)
    sheda.ctx.clock.advance(minutes=5, seconds=1)
    stored = await settled_within(sheda, ref, "succeeded")
    assert stored["status"] == "succeeded" and stored["applied"] is True and stored["flagged"] is False
    assert (await snapshot(sheda, "contracts", contract["id"]))["status"] == "active"
    assert await sheda.ctx.db["notifications"].count_documents({"kind": "contract.confirmed", "data.contract_id": contract["id"]}) == 2
    assert await jobs.count_documents({"_id": f"payment_reverify:{ref}:2"}) == 0  # decided: no further step
    # The 30-minute reconciliation and a late redelivery find it done: confirmed once.
    sheda.ctx.clock.advance(minutes=31)
    await sheda.ctx.payment_reconciliation.run()
    assert (await gw.deliver(body)).code == 200
    assert await sheda.ctx.db["notifications"].count_documents({"kind": "contract.confirmed", "data.contract_id": contract["id"]}) == 2
    assert (await snapshot(sheda, "payments", stored["_id"]))["flags"] == []


async def test_out_of_order_failed_then_success_on_the_same_checkout(sheda, gw):
    agent, client, prop, contract = await open_contract(sheda)
    pay = await start_payment(sheda, client, contract)
    ref = pay["reference"]
    gw.fail(ref)  # the card is declined; no webhook for that
    sheda.ctx.clock.advance(minutes=31)
    await sheda.ctx.payment_reconciliation.run()
    assert (await sheda.api.get(f"{PAY}/{ref}", token=client.token)).json["status"] == "failed"
    assert (await snapshot(sheda, "contracts", contract["id"]))["status"] == "awaiting_payment"
    gw.pay(ref)  # the customer retries on the same checkout and it goes through
    assert (await gw.deliver(gw.event_body(ref))).code == 200
    assert (await sheda.api.get(f"{PAY}/{ref}", token=client.token)).json["status"] == "succeeded"
    assert (await snapshot(sheda, "contracts", contract["id"]))["status"] == "active"


async def test_out_of_order_webhook_before_the_gateway_answered_initialize(sheda, gw):
    agent, client, prop, contract = await open_contract(sheda)

    async def customer_pays_at_once(reference):
        gw.pay(reference)
        resp = await gw.deliver(gw.event_body(reference))
        assert resp.code == 200

    gw.before_initialize_answer = customer_pays_at_once
    pay = await start_payment(sheda, client, contract)
    assert pay["status"] == "succeeded" and pay["applied"] is True and pay["checkout_url"].startswith(gw.base_url)
    assert (await snapshot(sheda, "contracts", contract["id"]))["status"] == "active"


async def test_lost_webhook_recovered_by_reconciliation_with_a_moved_clock(sheda, gw):
    agent, client, prop, contract = await open_contract(sheda, listing_type="sale", price="45000000.00")
    _, client2, prop2, contract2 = await open_contract(sheda)
    paid = await start_payment(sheda, client, contract)
    unpaid = await start_payment(sheda, client2, contract2)
    gw.pay(paid["reference"])  # ...and the webhook never arrives
    await sheda.ctx.payment_reconciliation.run()
    assert paid["reference"] not in gw.verified  # not 30 minutes yet: not asked about
    sheda.ctx.clock.advance(minutes=31)
    # Two processes' jobs at once: each move happens once.
    first, second = await asyncio.gather(sheda.ctx.payment_reconciliation.run(), sheda.ctx.payment_reconciliation.run())
    assert (await sheda.api.get(f"{PAY}/{paid['reference']}", token=client.token)).json["status"] == "succeeded"
    stored = await snapshot(sheda, "contracts", contract["id"])
    assert stored["status"] == "active" and stored["paid_by"] == paid["reference"]
    assert (await snapshot(sheda, "properties", prop["id"]))["status"] == "sold"
    assert await sheda.ctx.db["notifications"].count_documents({"kind": "contract.confirmed", "data.contract_id": contract["id"]}) == 2
    # The checkout nobody paid is abandoned, its contract still open for another try.
    assert (await sheda.api.get(f"{PAY}/{unpaid['reference']}", token=client2.token)).json["status"] == "abandoned"
    assert (await snapshot(sheda, "contracts", contract2["id"]))["status"] == "awaiting_payment"
    retry = await start_payment(sheda, client2, contract2)
    assert retry["reference"] != unpaid["reference"]
    asked = len(gw.verified)
    await sheda.ctx.payment_reconciliation.run()  # nothing of these left to do
    assert paid["reference"] not in gw.verified[asked:] and unpaid["reference"] not in gw.verified[asked:]


@pytest.mark.parametrize("order", ["together", "webhook_first", "agent_first"])
async def test_webhook_racing_the_agents_manual_confirmation_ends_active_exactly_once(sheda, gw, order):
    for _ in range(3 if order == "together" else 1):
        agent, client, prop, contract = await open_contract(sheda)
        pay = await start_payment(sheda, client, contract)
        assert (await sheda.api.patch(f"{CT}/{contract['id']}/payment-sent", token=client.token)).status == 200
        gw.pay(pay["reference"])
        webhook = gw.deliver(gw.event_body(pay["reference"]))
        confirm = sheda.api.patch(f"{CT}/{contract['id']}/confirm-payment", token=agent.token)
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
        await sheda.ctx.payment_reconciliation.run()  # finishes a payment whose contract was being confirmed by hand
        stored = await snapshot(sheda, "contracts", contract["id"])
        assert stored["status"] == "active"
        assert (await snapshot(sheda, "properties", prop["id"]))["contract_id"] == contract["id"]
        confirmed = await sheda.ctx.db["notifications"].count_documents({"kind": "contract.confirmed", "user_id": client.id,
                                                                         "data.contract_id": contract["id"]})
        assert confirmed == 1
        payment = (await sheda.api.get(f"{PAY}/{pay['reference']}", token=client.token)).json
        assert payment["status"] == "succeeded" and payment["applied"] is True
        # Whoever lost: the agent's 409, or the payment flagged (the client may also have transferred).
        if manual.status == 200:
            assert [f["reason"] for f in payment["flags"]] == ["contract_already_active"]
        else:  # the gateway's money activated it; the transfer the client announced may still come: flagged too
            assert [f["reason"] for f in payment["flags"]] == ["contract_also_sent"] and stored["paid_by"] == pay["reference"]


@pytest.mark.parametrize("checkout_first", [True, False])
async def test_a_contract_marked_paid_then_paid_at_the_checkout_is_activated_and_flagged(sheda, gw, checkout_first):
    """The client said a bank transfer was sent (payment-sent) and also paid at the checkout, in either order.
    The gateway's money activates the contract (it is real), but the transfer may reach the agent too: the same
    possible double payment as the agent confirming first (contract_already_active), flagged as installments
    are (installment_also_sent). Sent, declined by the agent (no transfer came), then paid: nothing to flag."""
    agent, client, prop, contract = await open_contract(sheda)
    cid = contract["id"]
    pay = await start_payment(sheda, client, contract) if checkout_first else None
    assert (await sheda.api.patch(f"{CT}/{cid}/payment-sent", token=client.token)).status == 200
    pay = pay or await start_payment(sheda, client, contract)
    gw.pay(pay["reference"])
    assert (await gw.deliver(gw.event_body(pay["reference"]))).code == 200
    done = (await sheda.api.get(f"{PAY}/{pay['reference']}", token=client.token)).json
    assert done["status"] == "succeeded" and done["applied"] is True
    assert [f["reason"] for f in done["flags"]] == ["contract_also_sent"] and "payment-sent" in done["flags"][0]["detail"]
    stored = await snapshot(sheda, "contracts", cid)
    assert stored["status"] == "active" and stored["paid_by"] == pay["reference"]

    agent2, client2, _, contract2 = await open_contract(sheda)
    assert (await sheda.api.patch(f"{CT}/{contract2['id']}/payment-sent", token=client2.token)).status == 200
    assert (await sheda.api.patch(f"{CT}/{contract2['id']}/decline-payment", token=agent2.token)).status == 200
    second = await start_payment(sheda, client2, contract2)
    gw.pay(second["reference"])
    assert (await gw.deliver(gw.event_body(second["reference"]))).code == 200
    second = (await sheda.api.get(f"{PAY}/{second['reference']}", token=client2.token)).json
    assert second["status"] == "succeeded" and second["flagged"] is False and second["flags"] == []
    assert (await snapshot(sheda, "contracts", contract2["id"]))["status"] == "active"


async def test_two_servers_webhook_reconciliation_and_manual_confirmation_at_once(sheda, gw, tmp_path):
    """A second Server (own context, own caches) on the same database, as a second process would be: the
    webhook reaches one, the reconciliation job and the agent's confirmation run on the other, together."""
    s = sheda.server.settings
    other = Server(load_settings(**{**s.model_dump(), "data_dir": tmp_path / "second"}), s.mongodb_uri, clock=sheda.ctx.clock,
                   app_factory=make_app)
    port = (await other.start(tornado.netutil.bind_sockets(0, "127.0.0.1")))[0]
    try:
        api_b = Api(f"http://127.0.0.1:{port}")
        for _ in range(3):
            agent, client, prop, contract = await open_contract(sheda)
            pay = await start_payment(sheda, client, contract)
            assert (await sheda.api.patch(f"{CT}/{contract['id']}/payment-sent", token=client.token)).status == 200
            gw.pay(pay["reference"])
            sheda.ctx.clock.advance(minutes=31)  # the other server's job finds it stale too
            hook, manual, _ = await asyncio.gather(
                gw.deliver(gw.event_body(pay["reference"])),
                api_b.patch(f"{CT}/{contract['id']}/confirm-payment", token=agent.token),
                other.ctx.payment_reconciliation.run())
            assert hook.code == 200 and manual.status in (200, 409), manual
            await sheda.ctx.payment_reconciliation.run()
            assert (await snapshot(sheda, "contracts", contract["id"]))["status"] == "active"
            assert (await snapshot(sheda, "properties", prop["id"]))["contract_id"] == contract["id"]
            assert await sheda.ctx.db["notifications"].count_documents(
                {"kind": "contract.confirmed", "user_id": client.id, "data.contract_id": contract["id"]}) == 1
            payment = (await sheda.api.get(f"{PAY}/{pay['reference']}", token=client.token)).json
            assert payment["status"] == "succeeded" and payment["applied"] is True
            assert [f["reason"] for f in payment["flags"]] == (["contract_already_active"] if manual.status == 200
                                                               else ["contract_also_sent"])  # the client said sent, too
    finally:
        await other.shutdown()


async def test_an_attempt_whose_process_died_before_the_gateway_answered_is_replaced(sheda, gw):
    agent, client, prop, contract = await open_contract(sheda)
    # What a process killed while waiting for initialize leaves: the attempt stored, no checkout ever shown.
    from bson.decimal128 import Decimal128
    now = sheda.ctx.clock.now()
    await sheda.ctx.payment_store.insert({
        "reference": "shd_lost_" + uuid.uuid4().hex[:8], "purpose": "contract", "target_id": contract["id"],
        "amount": Decimal128("1200000.00"), "amount_minor": 120_000_000, "currency": "NGN", "payer_id": client.id,
        "payee_id": agent.id, "parties": [client.id, agent.id], "status": "initialized", "gateway": "paystack",
        "open_key": f"contract:{contract['id']}", "applied": False, "flagged": False, "flags": [], "created_at": now, "updated_at": now})
    r = await sheda.api.post(PAY, {"purpose": "contract", "target_id": contract["id"]}, token=client.token)
    assert r.status == 200 and r.json["status"] == "initialized"  # it may still be on its way: not replaced yet
    sheda.ctx.clock.advance(minutes=3)
    fresh = await start_payment(sheda, client, contract)
    assert fresh["status"] == "pending" and fresh["checkout_url"] and fresh["reference"] != r.json["reference"]
    assert (await sheda.api.get(f"{PAY}/{r.json['reference']}", token=client.token)).json["status"] == "abandoned"


async def delivered_to_a_server_killed_around_verify(paystack, server: ServerProcess, body: bytes, moment: str) -> None:
    """Paystack delivers `body` to `server` (a `python run.py`), which is killed with SIGKILL while
    it verifies the webhook's payment: just before the gateway's answer ("before": the answer never reaches it,
    so it never writes) or just after it ("after": racing its write). Paystack got no 200, so it will deliver again."""
    victim = server.process

    def kill_9(now):
        if now == moment:
            os.kill(victim.pid, signal.SIGKILL)
            return False

    paystack.around_verify_answer = kill_9
    paystack.webhook_url = server.base_url + "/api/v1/webhooks/paystack"
    try:
        lost = await paystack.deliver(body)
        assert lost.code != 200
    except HTTPStreamClosedError:  # the connection died with the process
        pass
    assert victim.wait(10) == -signal.SIGKILL
    assert paystack.around_verify_answer is None  # the kill happened at the verify, not elsewhere


def restarted(server: ServerProcess, paystack) -> ServerProcess:
    """`python run.py` again on the killed server's settings and database, Paystack's webhooks pointed at it."""
    again = ServerProcess(server.env, server.data_dir, server.name).start()
    paystack.webhook_url = again.base_url + "/api/v1/webhooks/paystack"
    return again


@pytest.mark.parametrize("moment", ["before", "after"])
async def test_kill_9_around_the_gateways_verify_answer_then_restart_and_redelivery(embedded_db, paystack, tmp_path, moment):
    """`python run.py` killed with SIGKILL while it verifies a webhook's payment, just before or just after
    the gateway answers (so before our write, or racing it). After a restart, Paystack's redelivery (it got
    no 200) ends with the money right: the payment succeeded and applied once, the contract active once."""
    env = server_env(embedded_db, None, tmp_path, f"sheda_pay_{uuid.uuid4().hex[:8]}",
                     PAYSTACK_SECRET_KEY=SECRET, PAYSTACK_BASE_URL=paystack.base_url)
    servers = [ServerProcess(env, tmp_path, "pay").start()]
    try:
        remote = Remote(servers[0])
        as_client = SimpleNamespace(api=remote.api, signup=remote.signup, ctx=SimpleNamespace(clock=Clock()))
        agent, client, prop, contract = await open_contract(as_client)
        pay = await start_payment(as_client, client, contract)
        paystack.pay(pay["reference"])
        body = paystack.event_body(pay["reference"])
        await delivered_to_a_server_killed_around_verify(paystack, servers[0], body, moment)

        servers.append(restarted(servers[0], paystack))
        api = Remote(servers[-1]).api
        for _ in range(2):  # Paystack delivers again (and once more: still no effect)
            assert (await paystack.deliver(body)).code == 200
        payment = (await api.get(f"{PAY}/{pay['reference']}", token=client.token)).json
        assert payment["status"] == "succeeded" and payment["applied"] is True and payment["flagged"] is False
        assert (await api.get(f"{CT}/{contract['id']}", token=client.token)).json["status"] == "active"
        assert (await api.get(f"/api/v1/properties/{prop['id']}")).json["status"] == "rented"
        notes = (await api.get("/api/v1/notifications", token=client.token)).json["items"]
        assert [n["kind"] for n in notes].count("contract.confirmed") == 1
    finally:
        for server in servers:
            server.stop()


@pytest.mark.parametrize("settings_overrides", [{}])
async def test_without_a_gateway_payments_are_503_and_the_webhook_401(sheda, settings_overrides):
    agent, client, prop, contract = await open_contract(sheda)
    r = await sheda.api.post(PAY, {"purpose": "contract", "target_id": contract["id"]}, token=client.token)
    assert r.status == 503 and r.json["code"] == "payments_not_configured"
    # it names the bank-transfer routes as they are called (an installment's payment-sent is a POST: PATCH was a 405)
    assert "PATCH /contracts/{id}/payment-sent, POST /bookings/{id}/installments/{n}/payment-sent" in r.json["detail"], r
    body = json.dumps({"event": "charge.success", "data": {"id": 1, "reference": "x", "amount": 1, "currency": "NGN"}}).encode()
    for signature in (sign(body, SECRET), sign(body, ""), ""):
        r = await sheda.api.post("/api/v1/webhooks/paystack", body=body, headers={"x-paystack-signature": signature})
        assert r.status == 401
    assert await stored_events(sheda, "x") == []
    # The manual flow is untouched.
    assert (await sheda.api.patch(f"{CT}/{contract['id']}/payment-sent", token=client.token)).status == 200
    assert (await sheda.api.patch(f"{CT}/{contract['id']}/confirm-payment", token=agent.token)).status == 200
