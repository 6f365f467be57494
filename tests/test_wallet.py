"""The wallet (issue 18 §2): a double-entry ledger whose balance never goes below zero.

Spends come from features (promotions call WalletService.spend); here they are made through the
running server's own service, in its event loop and against the real embedded database, the way
a request handler makes them. Funds come from top-ups (credit_topup, what a confirmed gateway
payment applies; the gateway round trip itself is tested at the end of this file)."""
from __future__ import annotations

import asyncio
import json
import uuid

import pytest

from sheda_rt.errors import Conflict
from sheda_rt.push.dispatch import deep_link
from sheda_rt.wallet.service import InsufficientFunds
from tests.paystack_server import SECRET
from tests.test_payments import paystack  # noqa: F401  (the local gateway fixture)

WALLET = "/api/v1/wallet"
AUDIT = "/api/v1/admin/ledger/audit"
REFUNDS = "/api/v1/admin/wallet/refunds"


async def fund(sheda, user_id: int, naira: int) -> dict:
    tx, created = await sheda.ctx.wallet.credit_topup(user_id, naira * 100, reference=f"test_{uuid.uuid4().hex}")
    assert created
    return tx


async def ledger_count(sheda) -> int:
    return await sheda.ctx.db["ledger_transactions"].count_documents({})


async def audit_ok(sheda, admin) -> dict:
    r = await sheda.api.get(AUDIT, token=admin.token)
    assert r.status == 200, r
    assert r.json["ok"] is True and r.json["mismatches"] == [], r.json
    return r.json


async def test_fifty_concurrent_spends_never_take_the_wallet_below_zero_and_the_ledger_adds_up(sheda):
    user, admin = await sheda.signup("agent"), await sheda.admin()
    await fund(sheda, user.id, 1000)  # 1,000.00: room for exactly 33 spends of 30.00
    wallet = sheda.ctx.wallet

    async def one(i):
        try:
            return await wallet.spend(user.id, 3000, idempotency_key=f"race-{i}", kind="spend", memo="race", refs={"i": i})
        except InsufficientFunds as exc:
            return exc

    results = await asyncio.gather(*(one(i) for i in range(50)))
    paid = [r for r in results if isinstance(r, dict)]
    refused = [r for r in results if isinstance(r, InsufficientFunds)]
    assert len(paid) == 33 and len(refused) == 17, (len(paid), [r for r in results if not isinstance(r, (dict, InsufficientFunds))])
    assert all(r.status == 402 and r.code == "insufficient_funds" for r in refused)
    assert await wallet.balance(user.id) == 1000
    me = (await sheda.api.get(WALLET, token=user.token)).json
    assert me["balance"] == "10.00" and me["currency"] == "NGN" and len(me["recent"]) == 10
    assert me["recent"][0]["amount"] == "-30.00"
    # Every entry's balance_after is a real balance the wallet passed through: 1000 - 30k for k = 1..33.
    entries = []
    page = {"limit": 100}
    while True:
        r = await sheda.api.get(WALLET + "/transactions", token=user.token, params=page)
        assert r.status == 200, r
        entries += r.json["items"]
        if not r.json["next_cursor"]:
            break
        page["cursor"] = r.json["next_cursor"]
    assert len(entries) == 34 and entries[-1]["kind"] == "topup" and entries[-1]["amount"] == "1000.00"
    assert sorted(e["balance_after"] for e in entries[:-1]) == sorted(f"{1000 - 30 * k}.00" for k in range(1, 34))
    report = await audit_ok(sheda, admin)
    assert report["transactions"] >= 34


async def test_a_retried_spend_charges_once_and_a_reused_key_for_another_amount_is_409(sheda):
    user = await sheda.signup("agent")
    await fund(sheda, user.id, 100)
    wallet = sheda.ctx.wallet
    first = await wallet.spend(user.id, 2500, idempotency_key="promo-1", kind="spend", memo="Featured 7 days",
                               refs={"property_id": 5})
    again = await asyncio.gather(*(wallet.spend(user.id, 2500, idempotency_key="promo-1", kind="spend", memo="Featured 7 days",
                                                refs={"property_id": 5}) for _ in range(5)))
    assert all(a == first for a in again)
    assert first["lines"] == [{"account": f"wallet:{user.id}", "amount": "-25.00"}, {"account": "platform:revenue", "amount": "25.00"}]
    assert await wallet.balance(user.id) == 7500
    with pytest.raises(Conflict) as err:
        await wallet.spend(user.id, 2600, idempotency_key="promo-1", kind="spend", memo="x", refs={})
    assert err.value.code == "idempotency_key_reused"
    with pytest.raises(Conflict):
        await wallet.spend(user.id, 2500, idempotency_key="promo-1", kind="spend:bump", memo="x", refs={})
    # Keys are per user: another wallet's "promo-1" is its own.
    other = await sheda.signup("agent")
    await fund(sheda, other.id, 50)
    assert (await wallet.spend(other.id, 2500, idempotency_key="promo-1", kind="spend", memo="m", refs={}))["id"] != first["id"]
    assert await wallet.balance(user.id) == 7500 and await wallet.balance(other.id) == 2500


async def test_insufficient_funds_is_402_with_nothing_charged(sheda):
    user = await sheda.signup("agent")
    wallet = sheda.ctx.wallet
    before = await ledger_count(sheda)
    with pytest.raises(InsufficientFunds) as err:  # an empty (never used) wallet
        await wallet.spend(user.id, 1, idempotency_key="k1", kind="spend", memo="", refs={})
    assert err.value.status == 402 and err.value.body()["balance"] == "0.00"
    await fund(sheda, user.id, 10)
    with pytest.raises(InsufficientFunds) as err:
        await wallet.spend(user.id, 1001, idempotency_key="k2", kind="spend", memo="", refs={})
    assert err.value.body() == {"detail": err.value.detail, "code": "insufficient_funds", "balance": "10.00", "required": "10.01"}
    assert await ledger_count(sheda) == before + 1 and await wallet.balance(user.id) == 1000
    # The refused key is not burnt: once funded, the same key pays.
    await fund(sheda, user.id, 1)
    assert (await wallet.spend(user.id, 1001, idempotency_key="k2", kind="spend", memo="", refs={}))["kind"] == "spend"
    assert await wallet.balance(user.id) == 99


async def test_bad_spend_input_stores_nothing(sheda):
    user = await sheda.signup("agent")
    await fund(sheda, user.id, 10)
    before = await ledger_count(sheda)
    for key in ("", "x" * 101, "has space", "ünï", "a/b"):
        with pytest.raises(Exception) as err:
            await sheda.ctx.wallet.spend(user.id, 100, idempotency_key=key, kind="spend", memo="", refs={})
        assert getattr(err.value, "status", None) == 422, key
    for amount in (0, -5, True):
        with pytest.raises(ValueError):
            await sheda.ctx.wallet.spend(user.id, amount, idempotency_key="ok", kind="spend", memo="", refs={})
    assert await ledger_count(sheda) == before and await sheda.ctx.wallet.balance(user.id) == 1000


async def test_admin_refund_reverses_a_spend_once_and_only_admins_refund_or_audit(sheda):
    user, admin = await sheda.signup("agent"), await sheda.admin()
    topup = await fund(sheda, user.id, 100)
    spent = await sheda.ctx.wallet.spend(user.id, 4000, idempotency_key="r1", kind="spend", memo="Bump", refs={"property_id": 9})
    for who in (user, await sheda.signup("client")):
        assert (await sheda.api.post(REFUNDS, {"transaction_id": spent["id"], "reason": "x"}, token=who.token)).status == 403
        assert (await sheda.api.get(AUDIT, token=who.token)).status == 403
    assert (await sheda.api.get(AUDIT)).status == 401
    assert (await sheda.api.get(WALLET)).status == 401
    before = await ledger_count(sheda)
    for bad in ({}, {"transaction_id": spent["id"]}, {"transaction_id": "1", "reason": "x"}, {"transaction_id": 0, "reason": "x"},
                {"transaction_id": spent["id"], "reason": "   "}, {"transaction_id": spent["id"], "reason": "x", "extra": 1},
                {"transaction_id": 10**19, "reason": "x"}):
        r = await sheda.api.post(REFUNDS, bad, token=admin.token)
        assert r.status == 422, (bad, r)
    assert (await sheda.api.post(REFUNDS, {"transaction_id": 10**17, "reason": "x"}, token=admin.token)).status == 404
    r = await sheda.api.post(REFUNDS, {"transaction_id": topup["id"], "reason": "x"}, token=admin.token)
    assert r.status == 409 and r.json["code"] == "not_refundable"
    assert await ledger_count(sheda) == before

    r = await sheda.api.post(REFUNDS, {"transaction_id": spent["id"], "reason": "Listing was delisted"}, token=admin.token)
    assert r.status == 201, r
    refund = r.json
    assert refund["kind"] == "refund" and refund["reverses"] == spent["id"] and refund["memo"] == "Listing was delisted"
    assert refund["lines"] == [{"account": f"wallet:{user.id}", "amount": "40.00"}, {"account": "platform:revenue", "amount": "-40.00"}]
    again = await asyncio.gather(*(sheda.api.post(REFUNDS, {"transaction_id": spent["id"], "reason": "again"}, token=admin.token)
                                   for _ in range(3)))
    assert all(a.status == 200 and a.json["id"] == refund["id"] for a in again)
    r = await sheda.api.post(REFUNDS, {"transaction_id": refund["id"], "reason": "refund the refund"}, token=admin.token)
    assert r.status == 409 and r.json["code"] == "not_refundable"
    me = (await sheda.api.get(WALLET, token=user.token)).json
    assert me["balance"] == "100.00"
    assert [(e["kind"], e["amount"], e["balance_after"]) for e in me["recent"]] == [
        ("refund", "40.00", "100.00"), ("spend", "-40.00", "60.00"), ("topup", "100.00", "100.00")]
    # The original spend is untouched: the refund is another transaction.
    stored = await sheda.ctx.db["ledger_transactions"].find_one({"_id": spent["id"]})
    assert [int(line["amount_minor"]) for line in stored["lines"]] == [-4000, 4000] and "reversed_by" not in stored
    await audit_ok(sheda, admin)


async def test_the_audit_finds_a_cached_balance_that_disagrees_with_the_ledger(sheda):
    user, admin = await sheda.signup("agent"), await sheda.admin()
    await fund(sheda, user.id, 5)
    await audit_ok(sheda, admin)
    wallets = sheda.ctx.db["wallets"]
    await wallets.update_one({"_id": user.id}, {"$inc": {"balance_minor": 1}})  # what a bug (or a hand edit) would do
    try:
        r = (await sheda.api.get(AUDIT, token=admin.token)).json
        assert r["ok"] is False
        assert {"kind": "cached_balance", "account": f"wallet:{user.id}", "transaction_id": None,
                "detail": "the ledger says 5.00, the wallet holds 5.01"} in [{**m, "transaction_id": m.get("transaction_id")}
                                                                             for m in r["mismatches"]]
        # GET /wallet trusts the ledger, not the cache.
        assert (await sheda.api.get(WALLET, token=user.token)).json["balance"] == "5.00"
    finally:
        await wallets.update_one({"_id": user.id}, {"$inc": {"balance_minor": -1}})
    await audit_ok(sheda, admin)


async def test_wallet_pages_are_mine_only_and_bad_queries_are_422(sheda):
    user, other = await sheda.signup("client"), await sheda.signup("client")
    await fund(sheda, user.id, 3)
    await fund(sheda, user.id, 4)
    r = await sheda.api.get(WALLET + "/transactions", token=other.token)
    assert r.status == 200 and r.json == {"items": [], "next_cursor": None}
    assert (await sheda.api.get(WALLET, token=other.token)).json == {"user_id": other.id, "currency": "NGN", "balance": "0.00",
                                                                      "owed": "0.00", "recent": []}
    r = await sheda.api.get(WALLET + "/transactions", token=user.token, params={"limit": 1})
    assert [e["amount"] for e in r.json["items"]] == ["4.00"] and r.json["next_cursor"]
    r2 = await sheda.api.get(WALLET + "/transactions", token=user.token, params={"limit": 1, "cursor": r.json["next_cursor"]})
    assert [e["amount"] for e in r2.json["items"]] == ["3.00"]
    for bad in ({"limit": 0}, {"limit": 101}, {"cursor": "nonsense"}, {"bogus": 1}):
        assert (await sheda.api.get(WALLET + "/transactions", token=user.token, params=bad)).status == 422, bad


# ---- top-ups through the gateway (a local Paystack: tests/paystack_server.py) ----------------------

PAY = "/api/v1/payments"


@pytest.fixture
def settings_overrides(paystack):
    return {"paystack_secret_key": SECRET, "paystack_base_url": paystack.base_url, "wallet_topup_min_naira": 100,
            "wallet_topup_max_naira": 1_000_000}


async def test_a_topup_through_the_gateway_credits_the_wallet_once(sheda, paystack):
    paystack.webhook_url = sheda.base_url + "/api/v1/webhooks/paystack"
    user, admin = await sheda.signup("client"), await sheda.admin()
    r = await sheda.api.post(PAY, {"purpose": "wallet_topup", "target_id": user.id, "amount": "5000.00"}, token=user.token)
    assert r.status == 201, r
    pay = r.json
    assert pay["purpose"] == "wallet_topup" and pay["amount"] == "5000.00" and pay["payee_id"] is None and pay["status"] == "pending"
    assert paystack.initialized[-1]["amount"] == 500_000 and paystack.initialized[-1]["email"] == user.email
    # A double tap hands back the same checkout; another amount is another top-up.
    again = await sheda.api.post(PAY, {"purpose": "wallet_topup", "target_id": user.id, "amount": "5000"}, token=user.token)
    assert again.status == 200 and again.json["reference"] == pay["reference"]
    other = await sheda.api.post(PAY, {"purpose": "wallet_topup", "target_id": user.id, "amount": "250.50"}, token=user.token)
    assert other.status == 201 and other.json["reference"] != pay["reference"]
    assert (await sheda.api.get(WALLET, token=user.token)).json["balance"] == "0.00"  # nothing before the gateway says so

    paystack.pay(pay["reference"])
    body = paystack.event_body(pay["reference"])
    r = await paystack.deliver(body)
    assert r.code == 200, r.body
    me = (await sheda.api.get(WALLET, token=user.token)).json
    assert me["balance"] == "5000.00"
    [entry] = me["recent"]
    assert entry["kind"] == "topup" and entry["amount"] == "5000.00" and entry["refs"]["payment_reference"] == pay["reference"]
    assert entry["lines"] == [{"account": "gateway:clearing", "amount": "-5000.00"}, {"account": f"wallet:{user.id}", "amount": "5000.00"}]
    done = (await sheda.api.get(f"{PAY}/{pay['reference']}", token=user.token)).json
    assert done["status"] == "succeeded" and done["applied"] is True and done["flagged"] is False
    # A redelivery, the reconciliation job and a second apply of the same payment credit nothing more.
    assert (await paystack.deliver(body)).code == 200
    await sheda.ctx.payment_reconciliation.run()
    stored = await sheda.ctx.payment_store.get(pay["reference"])
    results = await asyncio.gather(*(sheda.ctx.payment_targets["wallet_topup"].apply(stored) for _ in range(3)))
    assert results == [("already_credited", None)] * 3
    assert (await sheda.api.get(WALLET, token=user.token)).json["balance"] == "5000.00"
    # The money can be spent, and the ledger adds up: clearing owes what the wallets hold plus revenue.
    await sheda.ctx.wallet.spend(user.id, 120_000, idempotency_key="after-topup", kind="spend", memo="", refs={})
    assert await sheda.ctx.wallet.balance(user.id) == 380_000
    await audit_ok(sheda, admin)


async def test_topup_input_is_checked_before_anything_is_stored(sheda, paystack):
    user, other = await sheda.signup("agent"), await sheda.signup("client")
    payments = sheda.ctx.db["payments"]
    before = await payments.count_documents({"payer_id": user.id})
    cases = [
        ({"purpose": "wallet_topup", "target_id": other.id, "amount": "500.00"}, 403, "not_your_wallet"),
        ({"purpose": "wallet_topup", "target_id": user.id, "amount": "99.99"}, 422, "validation_error"),
        ({"purpose": "wallet_topup", "target_id": user.id, "amount": "1000000.01"}, 422, "validation_error"),
        ({"purpose": "wallet_topup", "target_id": user.id, "amount": 500.5}, 422, "validation_error"),
        ({"purpose": "wallet_topup", "target_id": user.id, "amount": "-500"}, 422, "validation_error"),
        ({"purpose": "wallet_topup", "target_id": user.id}, 422, "validation_error"),
        ({"purpose": "wallet_topup", "target_id": user.id, "amount": "500", "line": 1}, 422, "validation_error"),
    ]
    for body, status, code in cases:
        r = await sheda.api.post(PAY, body, token=user.token)
        assert (r.status, r.json["code"]) == (status, code), (body, r)
    r = await sheda.api.post(PAY, {"purpose": "wallet_topup", "target_id": user.id, "amount": "99.99"}, token=user.token)
    assert r.json["errors"] == [{"field": "amount", "message": "must be at least 100.00"}]
    assert await payments.count_documents({"payer_id": user.id}) == before and paystack.initialized == []
    assert (await sheda.api.post(PAY, {"purpose": "wallet_topup", "target_id": user.id, "amount": "500"})).status == 401


def test_topup_bounds_the_wrong_way_round_stop_the_server_with_one_line():
    from config import load_settings
    from config.settings import SettingsError

    with pytest.raises(SettingsError) as err:
        load_settings(jwt_secret="x" * 40, wallet_topup_min_naira=500, wallet_topup_max_naira=100)
    assert "WALLET_TOPUP_MAX_NAIRA" in str(err.value) and "\n" not in str(err.value)


async def test_pending_topup_checkouts_are_capped_per_user_and_a_double_tap_still_gets_its_checkout(sheda, paystack):
    """One user started 60 top-ups in a row, each a real gateway transaction the reconciliation must verify later.
    At most WALLET_TOPUP_MAX_PENDING (default 5) may be pending at once per user: beyond, 429 rate_limited with
    Retry-After and nothing is started; the same amount again still answers 200 with its checkout."""
    paystack.webhook_url = sheda.base_url + "/api/v1/webhooks/paystack"
    user, other = await sheda.signup("client"), await sheda.signup("client")
    refs = []
    for naira in (101, 102, 103, 104, 105):
        r = await sheda.api.post(PAY, {"purpose": "wallet_topup", "target_id": user.id, "amount": f"{naira}.00"}, token=user.token)
        assert r.status == 201, r
        refs.append(r.json["reference"])
    r = await sheda.api.post(PAY, {"purpose": "wallet_topup", "target_id": user.id, "amount": "106.00"}, token=user.token)
    assert r.status == 429 and r.json["code"] == "rate_limited", r
    assert int(r.headers["Retry-After"]) >= 1 and r.json["retry_after"] == int(r.headers["Retry-After"])
    assert len(paystack.initialized) == 5
    assert await sheda.ctx.db["payments"].count_documents({"payer_id": user.id}) == 5
    # A retry of a checkout already started (the same amount) is not a new one: 200, as before.
    again = await sheda.api.post(PAY, {"purpose": "wallet_topup", "target_id": user.id, "amount": "103"}, token=user.token)
    assert again.status == 200 and again.json["reference"] == refs[2]
    # Another user is not affected.
    r = await sheda.api.post(PAY, {"purpose": "wallet_topup", "target_id": other.id, "amount": "106.00"}, token=other.token)
    assert r.status == 201, r
    # Once one is paid it no longer counts.
    paystack.pay(refs[0])
    assert (await paystack.deliver(paystack.event_body(refs[0]))).code == 200
    r = await sheda.api.post(PAY, {"purpose": "wallet_topup", "target_id": user.id, "amount": "106.00"}, token=user.token)
    assert r.status == 201, r
    # A burst at once cannot get past the cap either.
    burst_user = await sheda.signup("client")
    results = await asyncio.gather(*(sheda.api.post(PAY, {"purpose": "wallet_topup", "target_id": burst_user.id,
                                                          "amount": f"{200 + i}.00"}, token=burst_user.token) for i in range(12)))
    created = [r for r in results if r.status == 201]
    assert len(created) <= 5 and all(r.status in (201, 429) for r in results), [r.status for r in results]
    assert await sheda.ctx.db["payments"].count_documents({"payer_id": burst_user.id}) == len(created)
    assert len([b for b in paystack.initialized if b["metadata"]["target_id"] == burst_user.id]) == len(created)
    # (Racing requests may both step back and leave a place free: never one too many.)
    for i in range(5 - len(created)):
        r = await sheda.api.post(PAY, {"purpose": "wallet_topup", "target_id": burst_user.id, "amount": f"{300 + i}.00"},
                                 token=burst_user.token)
        assert r.status == 201, r
    r = await sheda.api.post(PAY, {"purpose": "wallet_topup", "target_id": burst_user.id, "amount": "399.00"}, token=burst_user.token)
    assert r.status == 429, r


def resolve_url(reference: str) -> str:
    return f"{PAY.replace('/api/v1', '/api/v1/admin')}/{reference}/resolve"


async def test_an_admin_settles_a_flagged_topup_crediting_what_the_gateway_verified_or_dismissing_it(sheda, paystack):
    """A top-up flagged for an admin (the webhook reported another amount than the checkout's) could be listed but
    never settled. An admin now credits what the gateway verifies was paid (never a figure from a body) or
    dismisses it with a reason; once, recorded on the payment and, for money, in the ledger."""
    from tests.test_openapi_typed import Conformance, served_document

    conf = Conformance(await served_document(sheda))
    op, one = "/api/v1/admin/payments/{reference}/resolve", "/api/v1/payments/{reference}"
    paystack.webhook_url = sheda.base_url + "/api/v1/webhooks/paystack"
    user, admin, other = await sheda.signup("client"), await sheda.admin(), await sheda.signup("client")
    r = await sheda.api.post(PAY, {"purpose": "wallet_topup", "target_id": user.id, "amount": "5000.00"}, token=user.token)
    assert r.status == 201, r
    ref = r.json["reference"]
    paystack.pay(ref, amount=300_000)  # the customer paid 3,000.00 at the checkout
    assert (await paystack.deliver(paystack.event_body(ref))).code == 200
    flagged = conf.check(await sheda.api.get(f"{PAY}/{ref}", token=user.token), "GET", one, 200)
    assert flagged["flagged"] is True and flagged["flags"][0]["reason"] == "webhook_mismatch" and flagged["resolution"] is None
    assert (await sheda.api.get(WALLET, token=user.token)).json["balance"] == "0.00"
    listed = (await sheda.api.get(PAY, token=admin.token, params={"flagged": "true", "limit": 100})).json["items"]
    assert ref in [p["reference"] for p in listed]

    url = resolve_url(ref)
    assert (await sheda.api.post(url, {"action": "credit", "reason": "paid less"})).status == 401
    conf.check(await sheda.api.post(url, {"action": "credit", "reason": "paid less"}, token=user.token), "POST", op, 403)
    for bad in ({}, {"action": "credit"}, {"action": "refund", "reason": "x"}, {"action": "credit", "reason": "  "},
                {"action": "credit", "reason": "x", "amount": "5000.00"}):
        conf.check(await sheda.api.post(url, bad, token=admin.token), "POST", op, 422)
    r = await sheda.api.post(resolve_url("shd_" + "0" * 24), {"action": "dismiss", "reason": "x"}, token=admin.token)
    assert r.status == 404 and r.json["code"] == "payment_not_found"

    results = await asyncio.gather(*(sheda.api.post(url, {"action": "credit", "reason": "customer paid 3,000 only"},
                                                    token=admin.token) for _ in range(3)))
    assert sorted(r.status for r in results) == [200, 200, 201], results
    done = next(conf.check(r, "POST", op, 201) for r in results if r.status == 201)
    conf.check(next(r for r in results if r.status == 200), "POST", op, 200)
    assert all(r.json == done for r in results)
    assert done["status"] == "succeeded" and done["applied"] is True and done["flagged"] is False
    assert done["amount"] == "5000.00" and done["flags"] == flagged["flags"]  # what was asked, and why it was flagged
    res = done["resolution"]
    assert res["action"] == "credit" and res["amount"] == "3000.00" and res["by"] == admin.id
    assert res["reason"] == "customer paid 3,000 only" and res["at"] and res["transaction_id"]
    me = (await sheda.api.get(WALLET, token=user.token)).json
    assert me["balance"] == "3000.00"
    [entry] = me["recent"]
    assert entry["id"] == res["transaction_id"] and entry["amount"] == "3000.00"
    assert entry["refs"]["payment_reference"] == ref and entry["refs"]["resolved_by"] == admin.id
    # Settled: no longer among the flagged; another action is refused; a redelivered webhook changes nothing.
    listed = (await sheda.api.get(PAY, token=admin.token, params={"flagged": "true", "limit": 100})).json["items"]
    assert ref not in [p["reference"] for p in listed]
    r = await sheda.api.post(url, {"action": "dismiss", "reason": "x"}, token=admin.token)
    assert conf.check(r, "POST", op, 409)["code"] == "already_resolved"
    assert (await paystack.deliver(paystack.event_body(ref))).code == 200
    assert (await sheda.api.get(f"{PAY}/{ref}", token=user.token)).json == done
    assert (await sheda.api.get(WALLET, token=user.token)).json["balance"] == "3000.00"

    # A flagged top-up the gateway says was never paid cannot be credited; it can be dismissed.
    r = await sheda.api.post(PAY, {"purpose": "wallet_topup", "target_id": other.id, "amount": "700.00"}, token=other.token)
    ref2 = r.json["reference"]
    assert (await paystack.deliver(paystack.event_body(ref2, status="success", amount=1))).code == 200  # a mismatching body
    assert (await sheda.api.get(f"{PAY}/{ref2}", token=other.token)).json["flagged"] is True
    r = await sheda.api.post(resolve_url(ref2), {"action": "credit", "reason": "x"}, token=admin.token)
    assert r.status == 409 and r.json["code"] == "not_paid", r
    r = await sheda.api.post(resolve_url(ref2), {"action": "dismiss", "reason": "a test transaction"}, token=admin.token)
    conf.check(r, "POST", op, 201)
    assert r.json["status"] == "failed" and r.json["flagged"] is False and r.json["resolution"]["action"] == "dismiss"
    assert r.json["resolution"]["amount"] is None and r.json["resolution"]["transaction_id"] is None
    assert (await sheda.api.post(resolve_url(ref2), {"action": "dismiss", "reason": "again"}, token=admin.token)).status == 200
    # An unflagged payment is not an admin's to settle.
    r = await sheda.api.post(PAY, {"purpose": "wallet_topup", "target_id": other.id, "amount": "800.00"}, token=other.token)
    r = await sheda.api.post(resolve_url(r.json["reference"]), {"action": "dismiss", "reason": "x"}, token=admin.token)
    assert r.status == 409 and r.json["code"] == "not_flagged"
    assert (await sheda.api.get(WALLET, token=other.token)).json["balance"] == "0.00"
    await audit_ok(sheda, admin)


async def paid_topup(sheda, paystack, user, naira: str) -> str:
    r = await sheda.api.post(PAY, {"purpose": "wallet_topup", "target_id": user.id, "amount": naira}, token=user.token)
    assert r.status == 201, r
    paystack.pay(r.json["reference"])
    assert (await paystack.deliver(paystack.event_body(r.json["reference"]))).code == 200
    return r.json["reference"]


async def test_a_gateway_refund_or_a_lost_chargeback_takes_the_topup_back_once_and_never_below_zero(sheda, paystack):
    """A top-up refunded on Paystack (refund.processed) or charged back (a dispute resolved merchant-accepted) was
    acknowledged and ignored: the wallet kept money the platform no longer had. Now the wallet gives it back, once per
    event, never below zero: what was already spent is debited from platform:reversal_shortfall and flagged."""
    paystack.webhook_url = sheda.base_url + "/api/v1/webhooks/paystack"
    user, admin = await sheda.signup("client"), await sheda.admin()
    ref = await paid_topup(sheda, paystack, user, "5000.00")
    await sheda.ctx.wallet.spend(user.id, 100_000, idempotency_key="before-refund", kind="spend", memo="", refs={})

    # A partial refund: 1,500.00 goes back to the gateway. Unsigned or forged: 401, nothing moves.
    body = paystack.refund(ref, 150_000)
    assert (await paystack.deliver(body, signature="")).code == 401
    assert (await paystack.deliver(body, signature="0" * 128)).code == 401
    assert (await sheda.api.get(WALLET, token=user.token)).json["balance"] == "4000.00"
    assert (await paystack.deliver(body)).code == 200
    me = (await sheda.api.get(WALLET, token=user.token)).json
    assert me["balance"] == "2500.00"
    entry = me["recent"][0]
    assert entry["kind"] == "topup_reversal" and entry["amount"] == "-1500.00" and entry["balance_after"] == "2500.00"
    assert entry["refs"]["payment_reference"] == ref and entry["refs"]["shortfall"] == "0.00" and entry["reverses"]
    assert entry["lines"] == [{"account": "gateway:clearing", "amount": "1500.00"}, {"account": f"wallet:{user.id}", "amount": "-1500.00"}]
    assert (await paystack.deliver(body)).code == 200  # a redelivery takes nothing more
    assert (await sheda.api.get(WALLET, token=user.token)).json["balance"] == "2500.00"
    assert (await sheda.api.get(f"{PAY}/{ref}", token=user.token)).json["flagged"] is False

    # The rest refunded after the user spent some: the wallet gives what it holds, the shortfall is flagged.
    await sheda.ctx.wallet.spend(user.id, 150_000, idempotency_key="spent-meanwhile", kind="spend", memo="", refs={})
    assert (await paystack.deliver(paystack.refund(ref, 350_000))).code == 200
    me = (await sheda.api.get(WALLET, token=user.token)).json
    assert me["balance"] == "0.00"
    entry = me["recent"][0]
    assert entry["kind"] == "topup_reversal" and entry["amount"] == "-1000.00" and entry["refs"]["shortfall"] == "2500.00"
    assert {"account": "platform:reversal_shortfall", "amount": "-2500.00"} in entry["lines"]
    pay = (await sheda.api.get(f"{PAY}/{ref}", token=admin.token)).json
    assert pay["flagged"] is True and [f["reason"] for f in pay["flags"]] == ["topup_reversal_shortfall"]
    # Never more than the top-up: another refund event of it takes nothing.
    count = await ledger_count(sheda)
    assert (await paystack.deliver(paystack.refund(ref, 100_000))).code == 200
    assert await ledger_count(sheda) == count
    audit = await audit_ok(sheda, admin)
    assert audit["platform"]["platform:reversal_shortfall"] == "-2500.00"

    # A chargeback: opened, the payment is flagged and nothing moves; lost (merchant-accepted), the money goes back.
    other = await sheda.signup("client")
    ref2 = await paid_topup(sheda, paystack, other, "800.00")
    assert (await paystack.deliver(paystack.dispute_body(ref2, 9001))).code == 200
    pay = (await sheda.api.get(f"{PAY}/{ref2}", token=admin.token)).json
    assert [f["reason"] for f in pay["flags"]] == ["gateway_dispute"]
    assert (await sheda.api.get(WALLET, token=other.token)).json["balance"] == "800.00"
    resolved = paystack.dispute_body(ref2, 9001, "charge.dispute.resolve", resolution="merchant-accepted")
    assert (await paystack.deliver(resolved)).code == 200
    assert (await paystack.deliver(resolved)).code == 200
    me = (await sheda.api.get(WALLET, token=other.token)).json
    assert me["balance"] == "0.00" and me["recent"][0]["kind"] == "topup_reversal" and me["recent"][0]["amount"] == "-800.00"
    # A dispute the platform won (declined) leaves the wallet alone.
    ref3 = await paid_topup(sheda, paystack, other, "300.00")
    assert (await paystack.deliver(paystack.dispute_body(ref3, 9002, "charge.dispute.resolve", resolution="declined"))).code == 200
    assert (await sheda.api.get(WALLET, token=other.token)).json["balance"] == "300.00"
    await audit_ok(sheda, admin)


async def test_a_topup_refunded_before_its_credit_was_applied_is_never_credited(sheda, paystack):
    """A success whose credit a crash left to the reconciliation, then refunded on Paystack: the refund found no credit
    to take back, and the reconciliation would then credit money the payer already got back. Now the refund is
    recorded as the payment's effect (flagged topup_reversed_uncredited) and the credit never comes."""
    paystack.webhook_url = sheda.base_url + "/api/v1/webhooks/paystack"
    user, admin = await sheda.signup("client"), await sheda.admin()
    r = await sheda.api.post(PAY, {"purpose": "wallet_topup", "target_id": user.id, "amount": "2000.00"}, token=user.token)
    ref = r.json["reference"]
    paystack.pay(ref)
    # The process died right after the success was recorded, before the credit: succeeded, not applied.
    await sheda.ctx.db["payments"].update_one({"reference": ref}, {"$set": {"status": "succeeded", "applied": False}})
    assert (await paystack.deliver(paystack.refund(ref))).code == 200
    pay = (await sheda.api.get(f"{PAY}/{ref}", token=admin.token)).json
    assert pay["flagged"] is True and [f["reason"] for f in pay["flags"]] == ["topup_reversed_uncredited"] and pay["applied"]
    await sheda.ctx.payment_reconciliation.run()
    assert (await sheda.api.get(WALLET, token=user.token)).json["balance"] == "0.00"
    await audit_ok(sheda, admin)


async def test_concurrent_refunds_and_chargebacks_of_one_topup_never_take_back_more_than_it_credited(sheda, paystack):
    """A refund and a lost chargeback of the same money are two events; delivered at once (Paystack retries in parallel,
    several processes answer), each read what the others had taken back before any of them wrote, so together they
    took back more than the top-up credited. Now each reserves its amount on the payment with one conditional write
    before its ledger entry: 20 events of 500.00 for a 5,000.00 top-up take back exactly 5,000.00, never below zero."""
    paystack.webhook_url = sheda.base_url + "/api/v1/webhooks/paystack"
    user, admin = await sheda.signup("client"), await sheda.admin()
    ref = await paid_topup(sheda, paystack, user, "5000.00")
    await sheda.ctx.wallet.spend(user.id, 100_000, idempotency_key="before-race", kind="spend", memo="", refs={})
    bodies = [paystack.refund(ref, 50_000) if i % 2 else
              paystack.dispute_body(ref, 77_000 + i, "charge.dispute.resolve", resolution="merchant-accepted", refund_amount=50_000)
              for i in range(20)]
    answers = await asyncio.gather(*(paystack.deliver(body) for body in bodies))
    assert [a.code for a in answers] == [200] * 20
    payment = await sheda.ctx.payment_store.get(ref)
    topup = await sheda.ctx.wallet.ledger.by_key(f"topup:{ref}")
    reversals = await sheda.ctx.wallet.ledger.reversals_of(topup["_id"])
    taken = [sum(int(line["amount_minor"]) for line in tx["lines"] if line["account"] == "gateway:clearing") for tx in reversals]
    assert sum(taken) == 500_000 and len(taken) == 10 and set(taken) == {50_000}, taken
    assert payment["reversed_minor"] == 500_000
    assert (await sheda.api.get(WALLET, token=user.token)).json["balance"] == "0.00"
    pay = (await sheda.api.get(f"{PAY}/{ref}", token=admin.token)).json
    assert [f["reason"] for f in pay["flags"]] == ["topup_reversal_shortfall"]
    # Redeliveries take nothing more.
    count = await ledger_count(sheda)
    assert {(await paystack.deliver(body)).code for body in bodies[:4]} == {200}
    assert await ledger_count(sheda) == count
    audit = await audit_ok(sheda, admin)
    assert audit["platform"]["platform:reversal_shortfall"].startswith("-")

    # A process died between the reservation and its ledger entry: the redelivery completes it, and so does the
    # reconciliation job for an event the gateway never delivers again; neither reserves twice.
    second = await sheda.signup("client")  # (the first user owes the shortfall: their next top-up repays it first)
    ref2 = await paid_topup(sheda, paystack, second, "1000.00")
    payment2 = await sheda.ctx.payment_store.get(ref2)
    first = paystack.refund(ref2, 30_000)
    source = "refund.processed:" + json.loads(first)["data"]["refund_reference"]
    await sheda.ctx.payment_store.start_reversals(payment2["_id"], 0, [])
    lost = "refund.processed:" + json.loads(paystack.refund(ref2, 30_000))["data"]["refund_reference"]  # never delivered
    for src in (source, lost):
        assert await sheda.ctx.payment_store.reserve_reversal(
            payment2["_id"], {"source": src, "amount_minor": 30_000, "why": "refund", "at": sheda.ctx.clock.now()}, 70_000)
    assert (await sheda.api.get(WALLET, token=second.token)).json["balance"] == "1000.00"
    assert (await paystack.deliver(first)).code == 200
    assert (await sheda.api.get(WALLET, token=second.token)).json["balance"] == "700.00"
    await sheda.ctx.payment_reconciliation.run()
    assert (await sheda.api.get(WALLET, token=second.token)).json["balance"] == "400.00"
    await sheda.ctx.payment_reconciliation.run()
    assert (await paystack.deliver(first)).code == 200
    assert (await sheda.api.get(WALLET, token=second.token)).json["balance"] == "400.00"
    stored = await sheda.ctx.payment_store.get(ref2)
    assert stored["reversed_minor"] == 60_000 and len(stored["reversals"]) == 2 and "reversal_open" not in stored
    await audit_ok(sheda, admin)


async def test_a_credit_landing_while_a_refund_marks_its_topup_uncredited_is_taken_back(sheda, paystack):
    """The refund of a top-up whose credit is not applied yet looks for the credit, finds none and records the payment
    applied (reversed before credit). A credit in flight at that moment (the webhook's or the reconciliation's apply,
    which read the payment before) was written to the ledger anyway, and the wallet kept money the payer had back.
    Whichever of the two sees the other afterwards now takes the credit back, once (under the refund's own event)."""
    paystack.webhook_url = sheda.base_url + "/api/v1/webhooks/paystack"
    user, admin = await sheda.signup("client"), await sheda.admin()
    payments, target = sheda.ctx.payments, sheda.ctx.payment_targets["wallet_topup"]

    async def succeeded_unapplied(naira: str) -> dict:
        r = await sheda.api.post(PAY, {"purpose": "wallet_topup", "target_id": user.id, "amount": naira}, token=user.token)
        paystack.pay(r.json["reference"])
        await sheda.ctx.db["payments"].update_one({"reference": r.json["reference"]}, {"$set": {"status": "succeeded", "applied": False}})
        return await sheda.ctx.payment_store.get(r.json["reference"])

    # 1. The credit lands between the refund's look for it and its write: the refund looks again and takes it back.
    stale = await succeeded_unapplied("2000.00")
    original = target.credited

    async def credit_lands_meanwhile(payment):
        found = await original(payment)
        if found is None and payment["reference"] == stale["reference"]:
            await target.apply(payment)  # the apply in flight writes its credit now
        return found

    target.credited = credit_lands_meanwhile
    try:
        assert (await paystack.deliver(paystack.refund(stale["reference"]))).code == 200
    finally:
        target.credited = original
    assert (await sheda.api.get(WALLET, token=user.token)).json["balance"] == "0.00"
    await sheda.ctx.payment_reconciliation.run()  # the apply in flight (or the reconciliation) records its credit
    pay = (await sheda.api.get(f"{PAY}/{stale['reference']}", token=admin.token)).json
    assert pay["applied"] is True and pay["flagged"] is False, pay
    assert (await sheda.api.get(WALLET, token=user.token)).json["balance"] == "0.00"

    # 2. The credit comes after the refund's write: the refund took the top-up's ledger key (a void), so the apply
    # credits nothing (no credit and reversal pair either).
    stale = await succeeded_unapplied("700.00")
    assert (await paystack.deliver(paystack.refund(stale["reference"]))).code == 200
    assert await payments.apply(stale) == "already_applied"
    assert (await sheda.api.get(WALLET, token=user.token)).json["balance"] == "0.00"
    entries = (await sheda.api.get(WALLET + "/transactions", token=user.token, params={"limit": 10})).json["items"]
    assert [(e["kind"], e["amount"]) for e in entries] == [("topup_reversal", "-2000.00"), ("topup", "2000.00")]
    assert await payments.apply(stale) == "already_applied"  # once
    await sheda.ctx.payment_reconciliation.run()
    assert len((await sheda.api.get(WALLET + "/transactions", token=user.token, params={"limit": 10})).json["items"]) == 2
    pay = (await sheda.api.get(f"{PAY}/{stale['reference']}", token=admin.token)).json
    assert pay["applied"] is True and [f["reason"] for f in pay["flags"]] == ["topup_reversed_uncredited"], pay
    await audit_ok(sheda, admin)


async def test_a_credit_whose_process_died_around_a_refund_never_stands(sheda, paystack):
    """A top-up's apply writes its credit, then records the payment applied. When its process died between the two
    and a refund landed before the credit's write (the refund found no credit, recorded the payment reversed before
    credit and looked again, still none), the credit landed after and nobody took it back: the payment was recorded
    applied, so the reconciliation never looked at it again (checked: the wallet kept 700.00 the payer had back).
    The refund now takes the top-up's own ledger key when it finds no credit, so whichever of the two writes that key
    first decides: a credit is taken back, a refund first means the credit is never written."""
    paystack.webhook_url = sheda.base_url + "/api/v1/webhooks/paystack"
    user, admin = await sheda.signup("client"), await sheda.admin()
    wallet = sheda.ctx.wallet

    async def succeeded_unapplied(naira: str) -> dict:
        r = await sheda.api.post(PAY, {"purpose": "wallet_topup", "target_id": user.id, "amount": naira}, token=user.token)
        paystack.pay(r.json["reference"])
        await sheda.ctx.db["payments"].update_one({"reference": r.json["reference"]}, {"$set": {"status": "succeeded", "applied": False}})
        return await sheda.ctx.payment_store.get(r.json["reference"])

    # 1. The credit's ledger entry was written, then its process died: the refund finds the credit and takes it back.
    p = await succeeded_unapplied("2000.00")
    await wallet.credit_topup(user.id, p["amount_minor"], reference=p["reference"])  # the dead apply's last write
    assert (await paystack.deliver(paystack.refund(p["reference"]))).code == 200
    await sheda.ctx.payment_reconciliation.run()
    assert (await sheda.api.get(WALLET, token=user.token)).json["balance"] == "0.00"
    done = (await sheda.api.get(f"{PAY}/{p['reference']}", token=admin.token)).json
    assert done["applied"] is True and done["flagged"] is False, done

    # 2. The refund landed between the apply's read of the payment and its credit; the credit's write came after,
    # then its process died before recording anything; the reconciliation runs.
    p = await succeeded_unapplied("700.00")
    assert (await paystack.deliver(paystack.refund(p["reference"]))).code == 200
    tx, credited = await wallet.credit_topup(user.id, p["amount_minor"], reference=p["reference"])  # the dead apply's write
    await sheda.ctx.payment_reconciliation.run()
    assert (await sheda.api.get(WALLET, token=user.token)).json["balance"] == "0.00"
    assert credited is False and tx["kind"] == "topup_void" and tx["lines"] == [], tx  # the refund holds the top-up's key
    pay = (await sheda.api.get(f"{PAY}/{p['reference']}", token=admin.token)).json
    assert pay["applied"] is True and [f["reason"] for f in pay["flags"]] == ["topup_reversed_uncredited"], pay
    # An admin cannot credit it afterwards either (the payer has the money back); dismissing settles it.
    r = await sheda.api.post(resolve_url(p["reference"]), {"action": "credit", "reason": "x"}, token=admin.token)
    assert r.status == 409 and r.json["code"] == "refunded_before_credit", r
    r = await sheda.api.post(resolve_url(p["reference"]), {"action": "dismiss", "reason": "refunded"}, token=admin.token)
    assert r.status == 201 and r.json["flagged"] is False, r
    assert (await sheda.api.get(WALLET, token=user.token)).json["balance"] == "0.00"

    # 3. The same with the process dying after the refund's key but before the payment's record: the redelivery of the
    # refund, or else the reconciliation, records it (flagged once), and no credit comes.
    for recovery, naira in (("redelivery", "300.00"), ("reconciliation", "400.00")):
        p = await succeeded_unapplied(naira)
        body = paystack.refund(p["reference"])
        voided = await wallet.void_topup(p["reference"], refs={"gateway_event": "refund.processed:x", "reason": "refund"},
                                         memo="refunded before credit")
        assert voided[1] is True
        if recovery == "redelivery":
            assert (await paystack.deliver(body)).code == 200
        await sheda.ctx.payment_reconciliation.run()
        await sheda.ctx.payments.apply(p)
        pay = (await sheda.api.get(f"{PAY}/{p['reference']}", token=admin.token)).json
        assert pay["applied"] is True and [f["reason"] for f in pay["flags"]] == ["topup_reversed_uncredited"], (recovery, pay)
        assert (await sheda.api.get(WALLET, token=user.token)).json["balance"] == "0.00"
    await audit_ok(sheda, admin)


async def test_an_admin_credit_a_refund_voids_meanwhile_leaves_the_payment_to_a_dismiss(sheda, paystack):
    """An admin credits a flagged top-up; its refund lands between the credit's checks and its ledger write (the top-up's
    key takes the void). The credit is 409 refunded_before_credit, as it must be, but its claim on the payment stayed:
    every later credit was 409 refunded_before_credit and every dismiss 409 already_resolved, the payment flagged for
    ever. A credit that can never be carried out gives its claim up, so a dismiss settles it."""
    paystack.webhook_url = sheda.base_url + "/api/v1/webhooks/paystack"
    user, admin = await sheda.signup("client"), await sheda.admin()
    r = await sheda.api.post(PAY, {"purpose": "wallet_topup", "target_id": user.id, "amount": "900.00"}, token=user.token)
    ref = r.json["reference"]
    paystack.pay(ref)
    await sheda.ctx.db["payments"].update_one({"reference": ref}, {"$set": {"status": "succeeded", "applied": False}})
    await sheda.ctx.payments._flag(await sheda.ctx.payment_store.get(ref), "effect_stuck", "paid, not applied")
    target = sheda.ctx.payment_targets["wallet_topup"]
    original = target.credit_verified

    async def refund_lands_before_the_write(payment, *args, **kw):
        if payment["reference"] == ref:  # the refund's webhook, after the credit's checks and claim
            assert (await paystack.deliver(paystack.refund(ref))).code == 200
        return await original(payment, *args, **kw)

    target.credit_verified = refund_lands_before_the_write
    try:
        r = await sheda.api.post(resolve_url(ref), {"action": "credit", "reason": "stuck"}, token=admin.token)
    finally:
        target.credit_verified = original
    assert r.status == 409 and r.json["code"] == "refunded_before_credit", r
    r = await sheda.api.post(resolve_url(ref), {"action": "credit", "reason": "again"}, token=admin.token)
    assert r.status == 409 and r.json["code"] == "refunded_before_credit", r
    r = await sheda.api.post(resolve_url(ref), {"action": "dismiss", "reason": "refunded"}, token=admin.token)
    assert r.status == 201 and r.json["flagged"] is False and r.json["resolution"]["action"] == "dismiss", r
    assert (await sheda.api.get(WALLET, token=user.token)).json["balance"] == "0.00"
    await audit_ok(sheda, admin)


async def test_what_a_reversal_could_not_take_is_owed_and_the_next_topups_repay_it_first(sheda, paystack):
    """A top-up reversed after the user spent it left a shortfall that was only flagged (platform:reversal_shortfall):
    the user kept spending later top-ups while owing it. The wallet now shows what is owed, the next top-ups repay it
    first (an owed_repayment entry: wallet -> platform:reversal_shortfall), once per top-up and never more than owed,
    and the admins' audit lists who owes what until it is cleared."""
    paystack.webhook_url = sheda.base_url + "/api/v1/webhooks/paystack"
    user, admin = await sheda.signup("client"), await sheda.admin()
    ref = await paid_topup(sheda, paystack, user, "5000.00")
    await sheda.ctx.wallet.spend(user.id, 400_000, idempotency_key="spent", kind="spend", memo="", refs={})
    me = (await sheda.api.get(WALLET, token=user.token)).json
    assert me["owed"] == "0.00" and me["balance"] == "1000.00", me
    assert (await paystack.deliver(paystack.refund(ref))).code == 200  # 5,000.00 back; the wallet held 1,000.00
    me = (await sheda.api.get(WALLET, token=user.token)).json
    assert me["balance"] == "0.00" and me["owed"] == "4000.00", me
    audit = await audit_ok(sheda, admin)
    assert audit["owed"][f"wallet:{user.id}"] == "4000.00"  # (the module's other tests leave their own debts)

    # The next top-up repays what it can: all of it goes to the debt.
    ref2 = await paid_topup(sheda, paystack, user, "1500.00")
    me = (await sheda.api.get(WALLET, token=user.token)).json
    assert me["balance"] == "0.00" and me["owed"] == "2500.00", me
    repay, topup = me["recent"][:2]
    assert topup["kind"] == "topup" and topup["amount"] == "1500.00"
    assert repay["kind"] == "owed_repayment" and repay["amount"] == "-1500.00" and repay["balance_after"] == "0.00"
    assert repay["lines"] == [{"account": f"wallet:{user.id}", "amount": "-1500.00"},
                              {"account": "platform:reversal_shortfall", "amount": "1500.00"}]
    assert repay["refs"]["payment_reference"] == ref2
    # A redelivery, the reconciliation and another apply of that top-up repay nothing more.
    assert (await paystack.deliver(paystack.event_body(ref2))).code == 200
    await sheda.ctx.payment_reconciliation.run()
    await sheda.ctx.payment_targets["wallet_topup"].apply(await sheda.ctx.payment_store.get(ref2))
    assert (await sheda.api.get(WALLET, token=user.token)).json["owed"] == "2500.00"

    # Two top-ups at once: together they repay exactly what is owed, and the rest is the user's.
    refs = []
    for naira in ("2000.00", "2100.00"):
        r = await sheda.api.post(PAY, {"purpose": "wallet_topup", "target_id": user.id, "amount": naira}, token=user.token)
        paystack.pay(r.json["reference"])
        refs.append(r.json["reference"])
    answers = await asyncio.gather(*(paystack.deliver(paystack.event_body(r)) for r in refs))
    assert [a.code for a in answers] == [200, 200]
    me = (await sheda.api.get(WALLET, token=user.token)).json
    assert me["owed"] == "0.00" and me["balance"] == "1600.00", me
    audit = await audit_ok(sheda, admin)
    assert f"wallet:{user.id}" not in audit["owed"], audit  # cleared
    # Owing nothing, a top-up is all the user's.
    await paid_topup(sheda, paystack, user, "100.00")
    me = (await sheda.api.get(WALLET, token=user.token)).json
    assert me["balance"] == "1700.00" and me["recent"][0]["kind"] == "topup"

    # A wallet stored before `owed` was kept (a shortfall recorded by the previous version): read from its ledger.
    other = await sheda.signup("client")
    ref3 = await paid_topup(sheda, paystack, other, "800.00")
    await sheda.ctx.wallet.spend(other.id, 50_000, idempotency_key="spent", kind="spend", memo="", refs={})
    assert (await paystack.deliver(paystack.refund(ref3))).code == 200
    await sheda.ctx.db["wallets"].update_one({"_id": other.id}, {"$unset": {"owed_minor": ""}})
    assert (await sheda.api.get(WALLET, token=other.token)).json["owed"] == "500.00"
    assert (await audit_ok(sheda, admin))["owed"][f"wallet:{other.id}"] == "500.00"
    await paid_topup(sheda, paystack, other, "600.00")
    me = (await sheda.api.get(WALLET, token=other.token)).json
    assert me["owed"] == "0.00" and me["balance"] == "100.00", me
    assert (await sheda.ctx.db["wallets"].find_one({"_id": other.id}))["owed_minor"] == 0  # kept from its next entry on
    await audit_ok(sheda, admin)


async def wallet_notes(sheda, user) -> list[dict]:
    r = await sheda.api.get("/api/v1/notifications", token=user.token, params={"limit": 100})
    assert r.status == 200, r
    return [n for n in r.json["items"] if n["kind"].startswith("wallet.")]


async def test_the_payer_is_told_once_of_each_credit_and_reversal(sheda, paystack):
    """A top-up credited, taken back (with a shortfall owed) or repaying a debt sent no notification: a user whose app
    was closed never learned their money arrived. Each is now a stored notification (also on the event stream and
    pushed), once per ledger entry however many deliveries, reconciliations, applies or processes finish it, also when
    the one that wrote the entry stopped before telling."""
    paystack.webhook_url = sheda.base_url + "/api/v1/webhooks/paystack"
    user = await sheda.signup("client")
    ref = await paid_topup(sheda, paystack, user, "5000.00")
    [note] = await wallet_notes(sheda, user)
    assert note["kind"] == "wallet.credited" and note["title"] == "Wallet topped up" and note["is_read"] is False
    assert note["data"] == {"reference": ref, "amount": "5000.00", "balance": "5000.00", "repaid": "0.00", "owed": "0.00"}
    assert "5000.00 NGN was added" in note["body"], note
    assert deep_link(note["kind"], note["data"]) == "/wallet"  # what its push opens
    replay = await sheda.api.get("/api/v1/events", params={"after_seq": 0, "limit": 200}, token=user.token)
    assert [e["id"] for e in replay.json["items"] if e["type"] == "notification" and e["kind"] == "wallet.credited"] == [note["id"]]
    # A redelivery, the reconciliation and three applies at once tell nothing more.
    assert (await paystack.deliver(paystack.event_body(ref))).code == 200
    await sheda.ctx.payment_reconciliation.run()
    stored = await sheda.ctx.payment_store.get(ref)
    await asyncio.gather(*(sheda.ctx.payment_targets["wallet_topup"].apply(stored) for _ in range(3)))
    assert [n["id"] for n in await wallet_notes(sheda, user)] == [note["id"]]

    # Taken back after most of it was spent: the reversal and what is now owed, once.
    await sheda.ctx.wallet.spend(user.id, 400_000, idempotency_key="spent", kind="spend", memo="", refs={})
    refund = paystack.refund(ref)
    assert (await paystack.deliver(refund)).code == 200
    assert (await paystack.deliver(refund)).code == 200
    await sheda.ctx.payment_reconciliation.run()
    reversed_, _ = await wallet_notes(sheda, user)
    assert reversed_["kind"] == "wallet.reversed" and reversed_["title"] == "Top-up taken back", reversed_
    assert reversed_["data"] == {"reference": ref, "reason": "refund", "amount": "5000.00", "taken": "1000.00",
                                 "shortfall": "4000.00", "balance": "0.00", "owed": "4000.00"}, reversed_
    assert "you owe 4000.00 NGN" in reversed_["body"], reversed_

    # The next top-up: its credit was written by a process that stopped before telling (nor recorded it applied);
    # whoever finishes the payment tells, once, with what it repaid.
    r = await sheda.api.post(PAY, {"purpose": "wallet_topup", "target_id": user.id, "amount": "1500.00"}, token=user.token)
    ref2 = r.json["reference"]
    paystack.pay(ref2)
    await sheda.ctx.wallet.credit_topup(user.id, 150_000, reference=ref2)
    assert len(await wallet_notes(sheda, user)) == 2
    assert (await paystack.deliver(paystack.event_body(ref2))).code == 200
    assert (await paystack.deliver(paystack.event_body(ref2))).code == 200
    repaid, *older = await wallet_notes(sheda, user)
    assert len(older) == 2 and repaid["kind"] == "wallet.credited", repaid
    assert repaid["data"] == {"reference": ref2, "amount": "1500.00", "balance": "0.00", "repaid": "1500.00",
                              "owed": "2500.00"}, repaid
    assert "1500.00 NGN of it repaid what you owed" in repaid["body"] and "2500.00 NGN still owed" in repaid["body"], repaid
    me = (await sheda.api.get(WALLET, token=user.token)).json
    assert me["balance"] == "0.00" and me["owed"] == "2500.00", me


async def test_a_credit_notification_stored_by_a_process_that_died_before_publishing_it_is_published_once(sheda, paystack):
    """notify(key=...) stores the notification, then publishes it (event stream, live frame, push). A process that died
    in between left it stored and never published: whoever finished the payment found its key taken and sent nothing, so
    the payer got no event, frame or push. Now the finisher publishes it, once, even when several finish at once."""
    from tests.support import eventually
    from tests.test_push import Subscriber

    paystack.webhook_url = sheda.base_url + "/api/v1/webhooks/paystack"
    user = await sheda.signup("client")
    notes = sheda.ctx.db["notifications"]

    async def died_before_publishing(naira: int) -> tuple[str, int]:
        """A paid top-up whose process wrote the credit and stored its notification (as notify stores a keyed one),
        then died: nothing published, the payment not recorded applied."""
        r = await sheda.api.post(PAY, {"purpose": "wallet_topup", "target_id": user.id, "amount": f"{naira}.00"}, token=user.token)
        ref = r.json["reference"]
        paystack.pay(ref)
        await sheda.ctx.wallet.credit_topup(user.id, naira * 100, reference=ref)
        note_id = await sheda.ctx.ids.next("notifications")
        await notes.insert_one({"_id": note_id, "user_id": user.id, "kind": "wallet.credited", "title": "Wallet topped up",
                                "body": f"{naira}.00 NGN was added to your wallet.", "data": {"reference": ref},
                                "is_read": False, "created_at": sheda.ctx.clock.now(), "key": f"wallet.credited:{ref}",
                                "unpublished": True})
        return ref, note_id

    async def finish_racing(ref: str) -> None:
        """Two deliveries of the webhook, the reconciliation and two applies at once, then a redelivery."""
        stored = await sheda.ctx.payment_store.get(ref)
        apply = sheda.ctx.payment_targets["wallet_topup"].apply
        results = await asyncio.gather(paystack.deliver(paystack.event_body(ref)), paystack.deliver(paystack.event_body(ref)),
                                       sheda.ctx.payment_reconciliation.run(), apply(stored), apply(stored))
        assert [d.code for d in results[:2]] == [200, 200]
        assert (await paystack.deliver(paystack.event_body(ref))).code == 200
        assert (await sheda.ctx.payment_store.get(ref))["applied"] is True

    async def on_stream(note_id: int) -> list[dict]:
        replay = await sheda.api.get("/api/v1/events", params={"after_seq": 0, "limit": 200}, token=user.token)
        assert replay.status == 200, replay
        return [e for e in replay.json["items"] if e["type"] == "notification" and e["id"] == note_id]

    # Online: one event on the stream, one live frame.
    ws = await sheda.ws(user.token)
    await ws.send({"type": "ping"})
    await ws.wait_type("pong")
    ref, note_id = await died_before_publishing(600)
    await finish_racing(ref)
    assert len(await on_stream(note_id)) == 1
    await ws.wait_type("notification", id=note_id)
    start = len(ws.frames)
    await ws.send({"type": "ping"})
    await ws.wait_for(lambda f: f.get("type") == "pong", start=start)  # every frame sent before it has arrived
    assert [f["id"] for f in ws.of_type("notification")] == [note_id]
    assert (await notes.find_one({"_id": note_id})).get("unpublished") is None  # recorded published
    ws.close()
    await ws.wait_closed()

    async def offline():
        return not await sheda.ctx.hub.online_anywhere(user.id)

    await eventually(offline, "the server to see the socket closed")  # (pushes go only to a user with no socket open)

    # Offline with a phone: one event on the stream, one push job.
    web = Subscriber(f"https://push.example.com/send/{uuid.uuid4().hex[:12]}")
    r = await sheda.api.post("/api/v1/devices", web.body(), token=user.token)
    assert r.status == 201, r
    device_id = r.json["id"]
    ref, note_id = await died_before_publishing(700)
    await finish_racing(ref)
    assert len(await on_stream(note_id)) == 1
    await sheda.ctx.push.dispatch.drain()
    jobs = await sheda.ctx.db["jobs"].find({"payload.device_id": device_id, "payload.note.data.notification_id": note_id}).to_list()
    assert len(jobs) == 1, jobs
    # And a notification stored before `unpublished` existed (published then) is not published again.
    ref, note_id = await died_before_publishing(800)
    await notes.update_one({"_id": note_id}, {"$unset": {"unpublished": ""}})
    await finish_racing(ref)
    assert await on_stream(note_id) == []


async def test_a_refund_event_is_confirmed_with_paystack_before_the_wallet_gives_anything_back(sheda, paystack):
    """A refund.processed was trusted on its signature alone: the wallet gave back whatever amount it named. Paystack's
    refund events carry no refund id to fetch, but GET /refund lists a transaction's refunds with their status and
    amount: a top-up's money is now taken back only when the refunds Paystack shows processed for that transaction
    cover this one and those taken back before. Otherwise nothing moves, the payment is flagged refund_unconfirmed and
    the delivery is a 503 (Paystack delivers again); Paystack unreachable, a 503 too."""
    paystack.webhook_url = sheda.base_url + "/api/v1/webhooks/paystack"
    user, admin = await sheda.signup("client"), await sheda.admin()
    ref = await paid_topup(sheda, paystack, user, "3000.00")
    transaction_id = paystack.transactions[ref]["id"]

    # A refund Paystack never made (a signed body alone): nothing moves.
    never = paystack.refund(ref, 100_000, recorded=False)
    r = await paystack.deliver(never)
    assert r.code == 503 and json.loads(r.body)["code"] == "refund_unconfirmed", r.body
    assert int(r.headers["Retry-After"]) > 0
    assert (await sheda.api.get(WALLET, token=user.token)).json["balance"] == "3000.00"
    pay = (await sheda.api.get(f"{PAY}/{ref}", token=admin.token)).json
    assert [f["reason"] for f in pay["flags"]] == ["refund_unconfirmed"]
    assert paystack.refund_lists[-1] == str(transaction_id)  # asked about that transaction's refunds

    # A refund Paystack made is taken back; one naming more than Paystack refunded in all is not.
    assert (await paystack.deliver(paystack.refund(ref, 50_000))).code == 200
    assert (await sheda.api.get(WALLET, token=user.token)).json["balance"] == "2500.00"
    pending = paystack.refund(ref, 70_000, status="pending")  # listed, not processed yet
    more = json.loads(pending)
    more["event"], more["data"]["status"] = "refund.processed", "processed"
    more = json.dumps(more).encode()
    assert (await paystack.deliver(more)).code == 503
    assert (await sheda.api.get(WALLET, token=user.token)).json["balance"] == "2500.00"
    paystack.refunds[-1]["status"] = "processed"  # Paystack processed it: the redelivery takes it back
    assert (await paystack.deliver(more)).code == 200
    assert (await sheda.api.get(WALLET, token=user.token)).json["balance"] == "1800.00"
    assert (await paystack.deliver(more)).code == 200  # once
    assert (await sheda.api.get(WALLET, token=user.token)).json["balance"] == "1800.00"

    # Paystack unreachable: 503 gateway_unavailable, nothing moves; delivered again later, it is taken back.
    later = paystack.refund(ref, 30_000)
    paystack.refunds_down = True
    try:
        r = await paystack.deliver(later)
    finally:
        paystack.refunds_down = False
    assert r.code == 503 and json.loads(r.body)["code"] == "gateway_unavailable", r.body
    assert (await sheda.api.get(WALLET, token=user.token)).json["balance"] == "1800.00"
    assert (await paystack.deliver(later)).code == 200
    assert (await sheda.api.get(WALLET, token=user.token)).json["balance"] == "1500.00"
    await audit_ok(sheda, admin)


async def test_a_lost_chargeback_is_confirmed_with_paystack_before_the_wallet_gives_anything_back(sheda, paystack):
    """A charge.dispute.resolve (merchant-accepted) was trusted on its signature alone: the wallet gave back whatever
    refund_amount a signed body named. Its dispute id is Paystack's, and GET /dispute/:id shows that dispute: a top-up's
    money is now taken back only when Paystack shows the same dispute, on this payment's transaction, resolved
    merchant-accepted, for this amount. Otherwise nothing moves, the payment is flagged dispute_unconfirmed and the
    delivery is a 503 (Paystack delivers again); Paystack unreachable, a 503 gateway_unavailable."""
    paystack.webhook_url = sheda.base_url + "/api/v1/webhooks/paystack"
    user, other, admin = await sheda.signup("client"), await sheda.signup("client"), await sheda.admin()
    ref = await paid_topup(sheda, paystack, user, "2000.00")
    assert (await paystack.deliver(paystack.dispute_body(ref, 8801))).code == 200  # opened: flagged, nothing moves

    # A resolution Paystack never made (it still shows the dispute awaiting our feedback): nothing moves.
    never = paystack.dispute_body(ref, 8801, "charge.dispute.resolve", resolution="merchant-accepted", recorded=False)
    r = await paystack.deliver(never)
    assert r.code == 503 and json.loads(r.body)["code"] == "dispute_unconfirmed", r.body
    assert int(r.headers["Retry-After"]) > 0
    assert paystack.dispute_fetches[-1] == "8801"
    assert (await sheda.api.get(WALLET, token=user.token)).json["balance"] == "2000.00"
    pay = (await sheda.api.get(f"{PAY}/{ref}", token=admin.token)).json
    assert [f["reason"] for f in pay["flags"]] == ["gateway_dispute", "dispute_unconfirmed"], pay["flags"]
    # Paystack resolved it in our favour (declined): a body saying merchant-accepted takes nothing.
    paystack.dispute_body(ref, 8801, "charge.dispute.resolve", resolution="declined")
    assert (await paystack.deliver(never)).code == 503
    # Paystack resolved it against us for 500.00: a body naming 2,000.00 takes nothing; the one naming 500.00 takes it, once.
    lost = paystack.dispute_body(ref, 8801, "charge.dispute.resolve", resolution="merchant-accepted", refund_amount=50_000)
    assert (await paystack.deliver(never)).code == 503
    assert (await sheda.api.get(WALLET, token=user.token)).json["balance"] == "2000.00"
    assert (await paystack.deliver(lost)).code == 200
    assert (await sheda.api.get(WALLET, token=user.token)).json["balance"] == "1500.00"
    assert (await paystack.deliver(lost)).code == 200
    assert (await paystack.deliver(never)).code == 200  # that dispute's event is handled: nothing more
    assert (await sheda.api.get(WALLET, token=user.token)).json["balance"] == "1500.00"

    # Another payment's lost dispute, named in a body for this top-up: nothing moves here; its own event takes its money.
    ref_other = await paid_topup(sheda, paystack, other, "700.00")
    theirs = paystack.dispute_body(ref_other, 8802, "charge.dispute.resolve", resolution="merchant-accepted")
    forged = paystack.dispute_body(ref, 8802, "charge.dispute.resolve", resolution="merchant-accepted",
                                   refund_amount=70_000, recorded=False)
    assert (await paystack.deliver(forged)).code == 503
    assert (await sheda.api.get(WALLET, token=user.token)).json["balance"] == "1500.00"
    assert (await paystack.deliver(theirs)).code == 200
    assert (await sheda.api.get(WALLET, token=other.token)).json["balance"] == "0.00"
    assert (await sheda.api.get(WALLET, token=user.token)).json["balance"] == "1500.00"

    # Paystack unreachable: 503 gateway_unavailable, nothing moves; delivered again later, it is taken back.
    second = paystack.dispute_body(ref, 8803, "charge.dispute.resolve", resolution="merchant-accepted", refund_amount=20_000)
    paystack.disputes_down = True
    try:
        r = await paystack.deliver(second)
    finally:
        paystack.disputes_down = False
    assert r.code == 503 and json.loads(r.body)["code"] == "gateway_unavailable", r.body
    assert (await sheda.api.get(WALLET, token=user.token)).json["balance"] == "1500.00"
    assert (await paystack.deliver(second)).code == 200
    assert (await sheda.api.get(WALLET, token=user.token)).json["balance"] == "1300.00"
    await audit_ok(sheda, admin)


async def test_a_lost_chargeback_paystack_shows_without_an_amount_is_flagged_once_for_an_admin_not_redelivered(sheda, paystack):
    """Paystack's dispute schema allows `refund_amount: null`, and its docs do not say a null means the whole
    transaction. Such a dispute lost on a top-up was 503 dispute_unconfirmed on every delivery until Paystack stopped
    retrying (its record never changes), with nothing flagged as final. Now nothing moves, the payment is flagged
    dispute_amount_unknown once, and the delivery is 200: the event is handled, an admin settles the wallet."""
    paystack.webhook_url = sheda.base_url + "/api/v1/webhooks/paystack"
    user, admin = await sheda.signup("client"), await sheda.admin()
    ref = await paid_topup(sheda, paystack, user, "2000.00")
    body = json.loads(paystack.dispute_body(ref, 8811, "charge.dispute.resolve", resolution="merchant-accepted"))
    body["data"]["refund_amount"] = None
    paystack.disputes["8811"]["refund_amount"] = None  # what GET /dispute/8811 shows
    raw = json.dumps(body).encode()
    r = await paystack.deliver(raw)
    assert r.code == 200, r.body
    assert paystack.dispute_fetches[-1] == "8811"
    fetches = len(paystack.dispute_fetches)
    assert (await paystack.deliver(raw)).code == 200  # a redelivery: handled already, Paystack not asked again
    assert len(paystack.dispute_fetches) == fetches
    assert (await sheda.api.get(WALLET, token=user.token)).json["balance"] == "2000.00"
    pay = (await sheda.api.get(f"{PAY}/{ref}", token=admin.token)).json
    assert [f["reason"] for f in pay["flags"]] == ["dispute_amount_unknown"], pay["flags"]
    assert "8811" in pay["flags"][0]["detail"]
    await audit_ok(sheda, admin)


async def amountless_chargeback(sheda, paystack, ref: str, dispute_id: int) -> None:
    """A chargeback Paystack shows lost on `ref` without an amount: the payment is flagged dispute_amount_unknown."""
    body = json.loads(paystack.dispute_body(ref, dispute_id, "charge.dispute.resolve", resolution="merchant-accepted"))
    body["data"]["refund_amount"] = None
    paystack.disputes[str(dispute_id)]["refund_amount"] = None
    assert (await paystack.deliver(json.dumps(body).encode())).code == 200
    flags = (await sheda.ctx.payment_store.get(ref))["flags"]
    assert "dispute_amount_unknown" in [f["reason"] for f in flags], flags


async def test_an_admin_takes_part_of_a_flagged_topup_back_once_through_the_reversal_path(sheda, paystack):
    """A chargeback Paystack showed lost without an amount (dispute_amount_unknown), or a refund or dispute an admin
    checked by hand, could only be credited or dismissed: the wallet kept money the gateway had taken back, with
    nothing an admin could do. `reverse` takes an amount back the way a gateway refund does: under the same cap, once
    (a double click takes nothing more), recorded on the payment and in the ledger, the payer told once."""
    from tests.test_openapi_typed import Conformance, served_document

    conf = Conformance(await served_document(sheda))
    op = "/api/v1/admin/payments/{reference}/resolve"
    paystack.webhook_url = sheda.base_url + "/api/v1/webhooks/paystack"
    user, admin = await sheda.signup("client"), await sheda.admin()
    ref = await paid_topup(sheda, paystack, user, "5000.00")
    await amountless_chargeback(sheda, paystack, ref, 8821)
    url = resolve_url(ref)
    before = await ledger_count(sheda)

    conf.check(await sheda.api.post(url, {"action": "reverse", "amount": "100.00", "reason": "x"}, token=user.token),
               "POST", op, 403)
    for bad in ({"action": "reverse", "reason": "x"}, {"action": "reverse", "amount": "0", "reason": "x"},
                {"action": "reverse", "amount": "-5.00", "reason": "x"}, {"action": "reverse", "amount": "1.234", "reason": "x"},
                {"action": "reverse", "amount": 10.5, "reason": "x"}, {"action": "reverse", "amount": "abc", "reason": "x"},
                {"action": "reverse", "amount": "10.00"}, {"action": "dismiss", "amount": "10.00", "reason": "x"}):
        r = conf.check(await sheda.api.post(url, bad, token=admin.token), "POST", op, 422)
        assert r["errors"], (bad, r)
    # More than the top-up credited: 409 with what is left, nothing moves and the payment stays flagged.
    r = conf.check(await sheda.api.post(url, {"action": "reverse", "amount": "5000.01", "reason": "x"}, token=admin.token),
                   "POST", op, 409)
    assert r["code"] == "reversal_exceeds_credit" and r["reversible"] == "5000.00", r
    assert await ledger_count(sheda) == before
    pay = (await sheda.api.get(f"{PAY}/{ref}", token=admin.token)).json
    assert pay["flagged"] is True and pay["resolution"] is None

    # Part of it, with a double click: taken once.
    body = {"action": "reverse", "amount": "1500.00", "reason": "Paystack dashboard: 1,500.00 charged back"}
    results = await asyncio.gather(*(sheda.api.post(url, body, token=admin.token) for _ in range(2)))
    assert sorted(r.status for r in results) == [200, 201], results
    done = conf.check(next(r for r in results if r.status == 201), "POST", op, 201)
    assert all(r.json == done for r in results)
    res = done["resolution"]
    assert res["action"] == "reverse" and res["amount"] == "1500.00" and res["shortfall"] == "0.00", res
    assert res["by"] == admin.id and res["reason"] == body["reason"] and res["at"] and res["transaction_id"]
    assert done["flagged"] is False and done["applied"] is True and done["status"] == "succeeded"
    me = (await sheda.api.get(WALLET, token=user.token)).json
    assert me["balance"] == "3500.00" and me["owed"] == "0.00", me
    entry = me["recent"][0]
    assert entry["id"] == res["transaction_id"] and entry["kind"] == "topup_reversal" and entry["amount"] == "-1500.00"
    assert entry["refs"]["reason"] == "admin" and entry["refs"]["resolved_by"] == admin.id
    assert entry["refs"]["payment_reference"] == ref and entry["refs"]["note"] == body["reason"]
    assert await ledger_count(sheda) == before + 1
    # The same again: 200, nothing more; another amount or action: 409 already_resolved; the reconciliation adds nothing.
    r = await sheda.api.post(url, body, token=admin.token)
    assert conf.check(r, "POST", op, 200) == done
    for other in ({**body, "amount": "1000.00"}, {"action": "dismiss", "reason": "x"}):
        r = await sheda.api.post(url, other, token=admin.token)
        assert conf.check(r, "POST", op, 409)["code"] == "already_resolved"
    await sheda.ctx.payment_reconciliation.run()
    assert await ledger_count(sheda) == before + 1
    assert (await sheda.api.get(WALLET, token=user.token)).json["balance"] == "3500.00"
    notes = [n for n in await wallet_notes(sheda, user) if n["kind"] == "wallet.reversed"]
    assert len(notes) == 1 and notes[0]["data"] == {"reference": ref, "reason": "admin", "amount": "1500.00", "taken": "1500.00",
                                                    "shortfall": "0.00", "balance": "3500.00", "owed": "0.00"}, notes
    # A gateway refund later still counts what the admin took back under the cap.
    assert (await paystack.deliver(paystack.refund(ref, 400_000))).code == 200
    assert (await sheda.api.get(WALLET, token=user.token)).json["balance"] == "0.00"
    assert (await sheda.ctx.payment_store.get(ref))["reversed_minor"] == 500_000

    # A flagged top-up that was never credited has nothing to take back.
    r = await sheda.api.post(PAY, {"purpose": "wallet_topup", "target_id": user.id, "amount": "700.00"}, token=user.token)
    ref2 = r.json["reference"]
    assert (await paystack.deliver(paystack.event_body(ref2, status="success", amount=1))).code == 200  # flagged, uncredited
    r = await sheda.api.post(resolve_url(ref2), {"action": "reverse", "amount": "100.00", "reason": "x"}, token=admin.token)
    assert conf.check(r, "POST", op, 409)["code"] == "not_credited"
    assert (await sheda.api.get(f"{PAY}/{ref2}", token=admin.token)).json["resolution"] is None
    await audit_ok(sheda, admin)


async def test_an_admin_reversal_of_a_spent_topup_leaves_the_rest_owed_under_the_cap_of_earlier_reversals(sheda, paystack):
    """An admin's reversal is capped by what earlier gateway reversals took, never takes the wallet below zero, and what
    the wallet no longer holds is owed, repaid first by the next top-up."""
    paystack.webhook_url = sheda.base_url + "/api/v1/webhooks/paystack"
    user, admin = await sheda.signup("client"), await sheda.admin()
    ref = await paid_topup(sheda, paystack, user, "2000.00")
    assert (await paystack.deliver(paystack.refund(ref, 50_000))).code == 200  # 500.00 refunded by the gateway
    await sheda.ctx.wallet.spend(user.id, 130_000, idempotency_key="spent", kind="spend", memo="", refs={})
    assert (await sheda.api.get(WALLET, token=user.token)).json["balance"] == "200.00"
    await amountless_chargeback(sheda, paystack, ref, 8822)
    url = resolve_url(ref)
    r = await sheda.api.post(url, {"action": "reverse", "amount": "1500.01", "reason": "x"}, token=admin.token)
    assert r.status == 409 and r.json["code"] == "reversal_exceeds_credit" and r.json["reversible"] == "1500.00", r

    r = await sheda.api.post(url, {"action": "reverse", "amount": "1500.00", "reason": "lost in full"}, token=admin.token)
    assert r.status == 201, r
    assert r.json["resolution"]["amount"] == "1500.00" and r.json["resolution"]["shortfall"] == "1300.00", r.json
    me = (await sheda.api.get(WALLET, token=user.token)).json
    assert me["balance"] == "0.00" and me["owed"] == "1300.00", me
    entry = me["recent"][0]
    assert entry["kind"] == "topup_reversal" and entry["amount"] == "-200.00" and entry["refs"]["shortfall"] == "1300.00"
    [note] = [n for n in await wallet_notes(sheda, user) if n["kind"] == "wallet.reversed" and n["data"]["reason"] == "admin"]
    assert note["data"]["shortfall"] == "1300.00" and note["data"]["owed"] == "1300.00", note
    assert (await audit_ok(sheda, admin))["owed"][f"wallet:{user.id}"] == "1300.00"
    # The next top-up repays it first.
    await paid_topup(sheda, paystack, user, "1000.00")
    me = (await sheda.api.get(WALLET, token=user.token)).json
    assert me["balance"] == "0.00" and me["owed"] == "300.00", me
    await audit_ok(sheda, admin)
