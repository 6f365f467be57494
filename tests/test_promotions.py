"""Paid promotions (issue 18 §2): featured listings first in search while their days last, a bump to
the top of "newest", paid once per Idempotency-Key from the agent's wallet.

Wallets are topped up as a user tops up: POST /payments (wallet_topup) and the local gateway's signed
webhook (tests/paystack_server.py); balances are read over GET /api/v1/wallet. Every listing a test makes
is unlisted when it ends: the test database lives for the session, and a featured or bumped
listing would otherwise come first in other modules' searches."""
from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta

import pytest

from sheda_rt.listings.models import SearchQuery
from sheda_rt.pagination import page_filter
from sheda_rt.promotions import featured as featured_module
from tests.listing_helpers import create_property, word
from tests.paystack_server import SECRET
from tests.test_payments import paystack  # noqa: F401  (the local gateway fixture)

API = "/api/v1/properties"
WALLET = "/api/v1/wallet"


@pytest.fixture
def settings_overrides(paystack):
    return {"paystack_secret_key": SECRET, "paystack_base_url": paystack.base_url}


@pytest.fixture
def fund(sheda, paystack):
    """Top a user's wallet up as they would: POST /payments (wallet_topup), pay at the (local) gateway,
    which delivers its signed charge.success webhook."""
    paystack.webhook_url = sheda.base_url + "/api/v1/webhooks/paystack"

    async def fund(user, naira: int) -> None:
        r = await sheda.api.post("/api/v1/payments", {"purpose": "wallet_topup", "target_id": user.id, "amount": f"{naira}.00"},
                                 token=user.token)
        assert r.status == 201, r
        paystack.pay(r.json["reference"])
        delivered = await paystack.deliver(paystack.event_body(r.json["reference"]))
        assert delivered.code == 200, delivered.body

    return fund


async def balance(sheda, user) -> str:
    r = await sheda.api.get(WALLET, token=user.token)
    assert r.status == 200, r
    return r.json["balance"]


async def promote(sheda, agent, property_id: int, body: dict, key: str | None = "auto"):
    headers = {} if key is None else {"Idempotency-Key": uuid.uuid4().hex if key == "auto" else key}
    return await sheda.api.post(f"{API}/{property_id}/promotions", body, token=agent.token, headers=headers)


async def unlist(sheda, agent, ids) -> None:
    """Through the service (a moderator's unlisting): the agent's token may have expired with a moved clock."""
    for property_id in ids:
        assert await sheda.ctx.properties.take_down(property_id)


async def all_pages(sheda, params: dict) -> list[dict]:
    items, cursor = [], None
    for _ in range(50):
        r = await sheda.api.get(API, params={**params, **({"cursor": cursor} if cursor else {})})
        assert r.status == 200, r
        items += r.json["items"]
        cursor = r.json["next_cursor"]
        if not cursor:
            return items
    raise AssertionError("more pages than listings")


async def test_featured_listings_come_first_on_every_sort_and_page_until_their_days_end(sheda, fund, monkeypatch):
    agent, client = await sheda.signup("agent"), await sheda.signup("client")
    w = word()
    props = []
    for i, price in enumerate([3_000_000, 1_000_000, 5_000_000, 2_000_000, 4_000_000, 6_000_000, 1_500_000]):
        props.append(await create_property(sheda, agent, location=f"{w} Lekki", price=f"{price}.00", title=f"pool house {i}",
                                           geo={"lat": 6.45 + i * 0.001, "lng": 3.47}))
        sheda.ctx.clock.advance(seconds=1)  # distinct creation times: a definite newest-first order
    ids = [p["id"] for p in props]
    try:
        await fund(agent, 100_000)
        featured = [props[3]["id"], props[5]["id"]]  # neither the newest nor an end of any price order
        ws = await sheda.ws(client.token)
        await ws.send({"type": "subscribe", "channel": f"property:{featured[0]}"})
        await ws.wait_type("subscribed")
        for pid, days in zip(featured, (3, 5)):
            r = await promote(sheda, agent, pid, {"kind": "featured", "days": days})
            assert r.status == 201, r
            assert r.json["kind"] == "featured" and r.json["days"] == days and r.json["amount"] == f"{1000 * days}.00"
        started = await ws.wait_type("property.updated", property_id=featured[0])
        assert started["changes"] == ["featured_until"] and started["property"]["featured_until"] is not None

        views = {}
        for pid in ids:
            views[pid] = (await sheda.api.get(f"{API}/{pid}")).json
        assert views[featured[0]]["featured_until"] and views[ids[0]]["featured_until"] is None
        order_of_creation = {pid: i for i, pid in enumerate(ids)}
        await sheda.ctx.property_store.stats.refresh()  # a facet sample: the featured segment may go unsliced
        for most in (-1, 10**9):  # the featured segment sliced, then in one pipeline per driver
            monkeypatch.setattr(featured_module, "UNSLICED_MAX", most)
            for sort in ("newest", "price_asc", "price_desc"):
                for params in ({"location": w}, {"q": "pool", "location": w}, {"near": "6.452,3.47", "radius_km": 2, "location": w},
                               {"bbox": "3.46,6.44,3.48,6.46", "location": w}):
                    for limit in (1, 2, 3, 20):
                        got = [p["id"] for p in await all_pages(sheda, {**params, "sort": sort, "limit": limit})]
                        assert sorted(got) == sorted(ids), (sort, params, limit, got)  # every listing once
                        assert set(got[:2]) == set(featured), (sort, params, limit, got)
                        expected = []
                        for group in (featured, [pid for pid in ids if pid not in featured]):
                            if sort == "newest":
                                expected += sorted(group, key=lambda pid: -order_of_creation[pid])
                            else:
                                expected += sorted(group, key=lambda pid: float(views[pid]["price"]), reverse=sort == "price_desc")
                        assert got == expected, (sort, params, limit)

        # Three days on: the first one's days are over. Search stops listing it first at once, before the
        # job has run; the job then ends it and tells its watchers.
        sheda.ctx.clock.advance(days=3, minutes=1)
        got = [p["id"] for p in await all_pages(sheda, {"location": w, "limit": 2})]
        assert got[0] == featured[1] and got[1:] == [pid for pid in reversed(ids) if pid != featured[1]]
        counts = await sheda.ctx.promotion_job.run()
        assert counts["featured_ended"] >= 1
        ended = await ws.wait_for(lambda f: f.get("type") == "property.updated" and f["property"]["featured_until"] is None)
        assert ended["changes"] == ["featured_until"] and ended["property_id"] == featured[0]
        assert (await sheda.api.get(f"{API}/{featured[0]}")).json["featured_until"] is None
        assert (await sheda.api.get(f"{API}/{featured[1]}")).json["featured_until"] is not None
        ws.close()
    finally:
        await unlist(sheda, agent, ids)


async def test_featured_days_bought_while_featured_add_to_the_end(sheda, fund):
    agent = await sheda.signup("agent")
    prop = await create_property(sheda, agent, location=f"{word()} Ikeja")
    try:
        await fund(agent, 10_000)
        first = await promote(sheda, agent, prop["id"], {"kind": "featured", "days": 2})
        second = await promote(sheda, agent, prop["id"], {"kind": "featured", "days": 3})
        assert first.status == second.status == 201, (first, second)
        parse_ts = lambda s: datetime.fromisoformat(s.replace("Z", "+00:00"))  # noqa: E731
        assert parse_ts(second.json["featured_until"]) - parse_ts(first.json["featured_until"]) == timedelta(days=3)
        assert (await sheda.api.get(f"{API}/{prop['id']}")).json["featured_until"] == second.json["featured_until"]
        assert await balance(sheda, agent) == "5000.00"
    finally:
        await unlist(sheda, agent, [prop["id"]])


async def test_a_bump_moves_a_listing_to_the_top_of_newest_once(sheda, fund):
    agent = await sheda.signup("agent")
    w = word()
    props = []
    for i in range(4):
        props.append(await create_property(sheda, agent, location=f"{w} Yaba"))
        sheda.ctx.clock.advance(seconds=1)
    ids = [p["id"] for p in props]
    try:
        await fund(agent, 1_000)
        newest = lambda: all_pages(sheda, {"location": w, "limit": 3})  # noqa: E731
        assert [p["id"] for p in await newest()] == ids[::-1]
        r = await promote(sheda, agent, ids[0], {"kind": "bump"})
        assert r.status == 201 and r.json["amount"] == "500.00" and r.json["bumped_at"] and r.json["featured_until"] is None, r
        got = await newest()
        assert [p["id"] for p in got] == [ids[0], ids[3], ids[2], ids[1]]
        assert got[0]["created_at"] == props[0]["created_at"] and got[0]["bumped_at"] == r.json["bumped_at"]
        # Once: a listing made after the bump goes above it.
        sheda.ctx.clock.advance(seconds=1)
        later = await create_property(sheda, agent, location=f"{w} Yaba")
        ids.append(later["id"])
        assert [p["id"] for p in await newest()] == [later["id"], ids[0], ids[3], ids[2], ids[1]]
        # price orders are not moved by a bump
        assert (await sheda.api.get(API, params={"location": w, "sort": "price_asc"})).json["items"][0]["id"] == ids[0]
        assert await balance(sheda, agent) == "500.00"
    finally:
        await unlist(sheda, agent, ids)


async def test_an_empty_wallet_is_402_with_nothing_charged_and_nothing_promoted(sheda, fund):
    agent = await sheda.signup("agent")
    prop = await create_property(sheda, agent, location=f"{word()} Ajah")
    try:
        key = uuid.uuid4().hex
        r = await promote(sheda, agent, prop["id"], {"kind": "featured", "days": 3}, key=key)
        assert r.status == 402 and r.json["code"] == "insufficient_funds", r
        assert r.json["required"] == "3000.00" and r.json["balance"] == "0.00"
        view = (await sheda.api.get(f"{API}/{prop['id']}")).json
        assert view["featured_until"] is None and view["bumped_at"] is None
        assert await sheda.ctx.db["promotions"].count_documents({"user_id": agent.id}) == 0
        assert (await sheda.api.get(WALLET, token=agent.token)).json["recent"] == []
        # Not enough is the same: nothing moves.
        await fund(agent, 2_900)
        r = await promote(sheda, agent, prop["id"], {"kind": "featured", "days": 3}, key=key)
        assert r.status == 402, r
        assert await balance(sheda, agent) == "2900.00"
        # After a top-up the same key buys it.
        await fund(agent, 100)
        r = await promote(sheda, agent, prop["id"], {"kind": "featured", "days": 3}, key=key)
        assert r.status == 201, r
        assert await balance(sheda, agent) == "0.00"
    finally:
        await unlist(sheda, agent, [prop["id"]])


async def test_a_retried_promotion_charges_once_and_answers_the_same(sheda, fund):
    agent, other_agent = await sheda.signup("agent"), await sheda.signup("agent")
    prop = await create_property(sheda, agent, location=f"{word()} Surulere")
    other_prop = await create_property(sheda, other_agent, location=f"{word()} Surulere")
    try:
        await fund(agent, 5_000)
        key = uuid.uuid4().hex
        answers = await asyncio.gather(*(promote(sheda, agent, prop["id"], {"kind": "featured", "days": 2}, key=key)
                                         for _ in range(5)))
        assert all(a.status == 201 for a in answers), answers
        assert len({a.body for a in answers}) == 1  # the same answer, byte for byte
        again = await promote(sheda, agent, prop["id"], {"kind": "featured", "days": 2}, key=key)
        assert again.status == 201 and again.body == answers[0].body
        assert await balance(sheda, agent) == "3000.00"
        wallet = (await sheda.api.get(WALLET, token=agent.token)).json
        spends = [e for e in wallet["recent"] if e["kind"].startswith("spend")]
        assert len(spends) == 1 and spends[0]["id"] == answers[0].json["transaction_id"] and spends[0]["amount"] == "-2000.00"
        # The same key for another promotion is refused; no key at all is a 422 naming the header.
        other = await promote(sheda, agent, prop["id"], {"kind": "bump"}, key=key)
        assert other.status == 409 and other.json["code"] == "idempotency_key_reused", other
        for body, pid in (({"kind": "featured", "days": 3}, prop["id"]), ({"kind": "featured", "days": 2}, other_prop["id"])):
            r = await promote(sheda, agent, pid, body, key=key)
            assert r.status == 409 and r.json["code"] == "idempotency_key_reused", (body, r)
        # A key is the agent's own: another agent's same key buys their own promotion.
        await fund(other_agent, 1_000)
        theirs = await promote(sheda, other_agent, other_prop["id"], {"kind": "featured", "days": 1}, key=key)
        assert theirs.status == 201 and theirs.json["id"] != answers[0].json["id"], theirs
        assert await balance(sheda, other_agent) == "0.00"
        missing = await promote(sheda, agent, prop["id"], {"kind": "bump"}, key=None)
        assert missing.status == 422 and missing.json["errors"][0]["field"] == "Idempotency-Key", missing
        assert (await promote(sheda, agent, prop["id"], {"kind": "bump"}, key="has spaces in it")).status == 422
        assert await balance(sheda, agent) == "3000.00"
    finally:
        await unlist(sheda, agent, [prop["id"], other_prop["id"]])


async def test_concurrent_promotions_on_one_wallet_never_overdraw_it(sheda, fund):
    agent, admin = await sheda.signup("agent"), await sheda.admin()
    w = word()
    props = [await create_property(sheda, agent, location=f"{w} Oshodi") for _ in range(2)]
    ids = [p["id"] for p in props]
    try:
        await fund(agent, 1_500)  # three bumps' worth
        answers = await asyncio.gather(*(promote(sheda, agent, ids[i % 2], {"kind": "bump"}) for i in range(10)))
        assert sorted(a.status for a in answers) == [201] * 3 + [402] * 7, answers
        assert await balance(sheda, agent) == "0.00"
        applied = [a.json["id"] for a in answers if a.status == 201]
        stored = await sheda.ctx.db["promotions"].find({"user_id": agent.id}).to_list()
        assert sorted(d["_id"] for d in stored) == sorted(applied) and {d["state"] for d in stored} == {"applied"}
        audit = await sheda.api.get("/api/v1/admin/ledger/audit", token=admin.token)
        assert audit.status == 200 and audit.json["ok"] is True, audit
    finally:
        await unlist(sheda, agent, ids)


async def test_only_the_listings_agent_promotes_an_available_listed_listing(sheda, fund):
    agent, other, client = await sheda.signup("agent"), await sheda.signup("agent"), await sheda.signup("client")
    prop = await create_property(sheda, agent, location=f"{word()} Ikoyi")
    try:
        for user in (agent, other, client):
            await fund(user, 5_000)
        r = await promote(sheda, other, prop["id"], {"kind": "bump"})
        assert r.status == 403 and r.json["code"] == "not_owner", r
        assert (await promote(sheda, client, prop["id"], {"kind": "bump"})).status == 403
        assert (await promote(sheda, agent, 99_999_999, {"kind": "bump"})).status == 404
        for body in ({"kind": "featured"}, {"kind": "bump", "days": 2}, {"kind": "featured", "days": 0},
                     {"kind": "featured", "days": 31}, {"kind": "featured", "days": "3"}, {"kind": "gold"},
                     {"kind": "featured", "days": 3.0}, {"kind": "featured", "days": 2.5}, {"kind": "featured", "days": True},
                     {"kind": "featured", "days": -1}, {"kind": "featured", "days": 10**30}, {"kind": "featured", "days": None},
                     {"kind": "featured", "days": 366}, {"kind": "featured", "days": [3]}, {"days": 3}, {"kind": None},
                     {"kind": "bump", "extra": 1}, [], "bump", None, 3):
            r = await promote(sheda, agent, prop["id"], body)
            assert r.status == 422 and r.json["code"], (body, r)
        for raw in ('{"kind": "featured", "days": 1e400}', '{"kind": "featured", "days": NaN}', '{"kind": "featured", "days": 3e0}',
                    '{"kind": "featured", "days": 100000000000000000000000000000000000000}', '{"kind": "featured", "days": -0.0}',
                    '{"kind": "featured", "days": "\u0663"}', '{"kind": "bump", "kind": "gold"}', '{"kind": "bump"'):
            r = await sheda.api.request("POST", f"{API}/{prop['id']}/promotions", body=raw, token=agent.token,
                                        headers={"Idempotency-Key": uuid.uuid4().hex, "Content-Type": "application/json"})
            assert r.status in (400, 422) and r.json["code"], (raw, r)
        for key in ("k" * 201, "tab\there"):
            assert (await promote(sheda, agent, prop["id"], {"kind": "bump"}, key=key)).status == 422, key
        r = await sheda.api.patch(f"{API}/{prop['id']}/status", {"active": False}, token=agent.token)
        assert r.status == 200, r
        r = await promote(sheda, agent, prop["id"], {"kind": "featured", "days": 1})
        assert r.status == 409 and r.json["code"] == "property_not_available", r
        for user in (agent, other, client):
            assert await balance(sheda, user) == "5000.00"
    finally:
        await unlist(sheda, agent, [prop["id"]])


async def test_featured_without_days_or_a_bump_with_days_is_a_422_naming_days(sheda, fund):
    """A client form highlights the field a 422 names: `days`, not the whole body; and the OpenAPI document does not
    promise a default the server does not apply."""
    agent = await sheda.signup("agent")
    prop = await create_property(sheda, agent, location=f"{word()} Ikoyi")
    try:
        await fund(agent, 50_000)
        for body in ({"kind": "featured"}, {"kind": "featured", "days": None}, {"kind": "bump", "days": 2}):
            r = await promote(sheda, agent, prop["id"], body)
            assert r.status == 422 and [e["field"] for e in r.json["errors"]] == ["days"], (body, r)
        assert await balance(sheda, agent) == "50000.00"
        doc = (await sheda.api.get("/api/v1/openapi.json")).json
        days = doc["components"]["schemas"]["PromotionCreate"]["properties"]["days"]
        assert "default 30" not in days["description"] and "required" in days["description"], days
    finally:
        await unlist(sheda, agent, [prop["id"]])


async def test_a_retry_charging_while_its_twin_got_402_keeps_its_record(sheda, fund, monkeypatch):
    """Two requests with one Idempotency-Key (a retry sent while the first is still out) and a top-up landing
    between them: the first finds the wallet short (402) and drops the pending promotion while the retry,
    which found it pending, is about to charge it. The retry's charge is real, so it must end as a promotion
    the agent can see (201, listed, the listing bumped), once, never a charge with no promotion and a 500.
    The wallet's spend is only held at the two moments that make this order happen every run."""
    agent, admin = await sheda.signup("agent"), await sheda.admin()
    prop = await create_property(sheda, agent, location=f"{word()} Ikota")
    real_spend = sheda.ctx.wallet.spend
    first_in, retry_in, first_answered = asyncio.Event(), asyncio.Event(), asyncio.Event()
    calls = []

    async def held_spend(user_id, amount_minor, **kw):
        calls.append(kw["idempotency_key"])
        if len(calls) == 1:  # the first request: short of money...
            first_in.set()
            try:
                return await real_spend(user_id, amount_minor, **kw)
            finally:
                await retry_in.wait()  # ...answered only once the retry is charging the same promotion
        retry_in.set()
        await first_answered.wait()  # the retry charges after the first dropped it and the top-up landed
        return await real_spend(user_id, amount_minor, **kw)

    monkeypatch.setattr(sheda.ctx.wallet, "spend", held_spend)
    try:
        key = uuid.uuid4().hex
        first = asyncio.ensure_future(promote(sheda, agent, prop["id"], {"kind": "bump"}, key=key))
        await first_in.wait()
        retry = asyncio.ensure_future(promote(sheda, agent, prop["id"], {"kind": "bump"}, key=key))
        r1 = await first
        assert r1.status == 402, r1
        monkeypatch.setattr(sheda.ctx.wallet, "spend", real_spend)
        await fund(agent, 500)
        first_answered.set()
        r2 = await retry
        assert calls[0] == calls[1]  # one promotion, one wallet key
        assert r2.status == 201 and r2.json["status"] == "applied", r2
        assert await balance(sheda, agent) == "0.00"  # charged once
        listed = (await sheda.api.get(f"{API}/{prop['id']}/promotions", token=agent.token)).json["items"]
        assert [p["id"] for p in listed] == [r2.json["id"]] and listed[0]["transaction_id"] == r2.json["transaction_id"]
        assert (await sheda.api.get(f"{API}/{prop['id']}")).json["bumped_at"] is not None
        # The same key again answers that promotion and charges nothing more.
        again = await promote(sheda, agent, prop["id"], {"kind": "bump"}, key=key)
        assert again.status == 201 and again.json == r2.json, again
        assert await balance(sheda, agent) == "0.00"
        audit = await sheda.api.get("/api/v1/admin/ledger/audit", token=admin.token)
        assert audit.status == 200 and audit.json["ok"] is True, audit
    finally:
        await unlist(sheda, agent, [prop["id"]])


async def test_a_promotion_interrupted_after_the_charge_is_finished_by_the_job(sheda, fund):
    """A process that dies between charging the wallet and changing the listing leaves the promotion
    pending with its charge made: steps 1 and 2 of PromotionService are run here as it runs them."""
    agent = await sheda.signup("agent")
    prop = await create_property(sheda, agent, location=f"{word()} Magodo")
    service, store = sheda.ctx.promotions, sheda.ctx.promotion_store
    try:
        await fund(agent, 5_000)
        charged = await store.insert_pending({"user_id": agent.id, "key": "k-charged", "property_id": prop["id"], "kind": "featured",
                                              "days": 2, "amount_minor": 200_000, "created_at": sheda.ctx.clock.now()})
        await sheda.ctx.wallet.spend(agent.id, 200_000, idempotency_key=service.wallet_key(charged["_id"]), kind="spend:promotion")
        uncharged = await store.insert_pending({"user_id": agent.id, "key": "k-lost", "property_id": prop["id"], "kind": "bump",
                                                "days": None, "amount_minor": 50_000, "created_at": sheda.ctx.clock.now()})
        assert (await sheda.ctx.promotion_job.run())["finished"] == 0  # still young: its request may be alive
        sheda.ctx.clock.advance(minutes=2)
        counts = await sheda.ctx.promotion_job.run()
        assert counts["finished"] >= 1
        view = (await sheda.api.get(f"{API}/{prop['id']}")).json
        assert view["featured_until"] is not None and view["bumped_at"] is None
        assert (await store.get(charged["_id"]))["state"] == "applied"
        assert await balance(sheda, agent) == "3000.00"  # charged once
        # The client's retry with its key gets the finished promotion, with no second charge.
        r = await promote(sheda, agent, prop["id"], {"kind": "featured", "days": 2}, key="k-charged")
        assert r.status == 201 and r.json["id"] == charged["_id"], r
        # The one never charged is dropped once it is surely dead; nothing was charged for it.
        assert await store.get(uncharged["_id"]) is not None
        sheda.ctx.clock.advance(minutes=10)
        assert (await sheda.ctx.promotion_job.run())["dropped"] >= 1
        assert await store.get(uncharged["_id"]) is None
        assert await balance(sheda, agent) == "3000.00"
    finally:
        await unlist(sheda, agent, [prop["id"]])


def _collscan(stage: dict) -> bool:
    children = ([stage["inputStage"]] if "inputStage" in stage else []) + list(stage.get("inputStages", []))
    return stage.get("stage") == "COLLSCAN" or any(_collscan(c) for c in children)


def _winning_plan(explained: dict) -> dict:
    if "queryPlanner" in explained:
        return explained["queryPlanner"]["winningPlan"]
    return next(s["$cursor"]["queryPlanner"]["winningPlan"] for s in explained["stages"] if "$cursor" in s)


async def test_featured_first_searches_and_the_job_walk_indexes_never_the_collection(sheda, fund, monkeypatch):
    """The embedded planner scans the whole collection unless a filter is index-shaped: every pipeline of
    both segments, on every sort, page and filter kind, and the job's reads, are explained here."""
    agent = await sheda.signup("agent")
    w = word()
    props = [await create_property(sheda, agent, location=f"{w} Lekki", price=f"{1_000_000 + i}.00", title="pool villa",
                                   geo={"lat": 6.45, "lng": 3.47}) for i in range(5)]
    ids = [p["id"] for p in props]
    try:
        await fund(agent, 10_000)
        for pid in ids[:3]:
            assert (await promote(sheda, agent, pid, {"kind": "featured", "days": 1})).status == 201
        db, trace = sheda.ctx.db, []
        await sheda.ctx.property_store.stats.refresh()
        for most in (-1, 10**9):  # the featured segment sliced, then unsliced
            monkeypatch.setattr(featured_module, "UNSLICED_MAX", most)
            for sort in ("newest", "price_asc", "price_desc"):
                for params in ({}, {"location": w}, {"q": "pool villa"}, {"near": "6.45,3.47", "radius_km": 1},
                               {"bbox": "3.46,6.44,3.48,6.46"}, {"agent_id": agent.id}, {"listing_type": "rent", "price_min": "1"},
                               {"price_min": "1000001", "price_max": "1000003"}):
                    cursor = None
                    for _page in range(3):
                        page = await sheda.ctx.properties.search(SearchQuery(**params, sort=sort, limit=2, cursor=cursor),
                                                                 trace=trace)
                        cursor = page["next_cursor"]
                        if not cursor:
                            break
        featured_drivers = [p[0]["$match"] for p in trace if p[0]["$match"].get("facets", "").startswith("f:")]
        assert any("newest_at" not in d and "price_minor" not in d for d in featured_drivers)  # unsliced ones ran
        assert any("newest_at" in d for d in featured_drivers)  # and sliced ones
        assert any(not p[0]["$match"].get("facets", "").startswith("f:") for p in trace)  # and the rest
        for pipeline in trace:
            explained = await db.command("explain", {"aggregate": "properties", "pipeline": pipeline, "cursor": {}},
                                         verbosity="queryPlanner")
            assert not _collscan(_winning_plan(explained)), (pipeline, _winning_plan(explained))
        now = sheda.ctx.clock.now()
        for collection, flt in (("properties", {"featured_until": {"$lte": now}}),
                                ("promotions", {"state": "pending", "created_at": {"$lte": now}}),
                                ("promotions", {"user_id": agent.id, "key": "x"})):
            explained = await db.command("explain", {"find": collection, "filter": flt}, verbosity="queryPlanner")
            assert not _collscan(explained["queryPlanner"]["winningPlan"]), (collection, flt, explained)
    finally:
        await unlist(sheda, agent, ids)


# ---- review (R4): what a featured listing shows and carries when it is unlisted, sold, edited or over ----
async def stored(sheda, property_id: int) -> dict:
    return await sheda.ctx.db["properties"].find_one({"_id": property_id})


def prefixed(doc: dict) -> set[str]:
    return {f for f in doc["facets"] if f.startswith("f:")}


async def test_an_unlisted_or_sold_featured_listing_is_not_listed_first(sheda, fund):
    """Unlisted: in no segment of any search (agent's own search included). Sold or rented: a search of sold
    listings keeps its own order (its featured days keep running and count again should it be available again)."""
    agent = await sheda.signup("agent")
    w = word()
    props = []
    for _ in range(4):
        props.append(await create_property(sheda, agent, location=f"{w} Ilupeju"))
        sheda.ctx.clock.advance(seconds=1)
    ids = [p["id"] for p in props]
    store, now = sheda.ctx.property_store, sheda.ctx.clock.now
    try:
        await fund(agent, 10_000)
        for pid in ids[:2]:  # the two oldest are featured
            assert (await promote(sheda, agent, pid, {"kind": "featured", "days": 2})).status == 201
        assert [p["id"] for p in await all_pages(sheda, {"location": w, "limit": 1})] == [ids[1], ids[0], ids[3], ids[2]]
        r = await sheda.api.patch(f"{API}/{ids[1]}/status", {"active": False}, token=agent.token)
        assert r.status == 200, r
        for params in ({"location": w}, {"location": w, "agent_id": agent.id}, {"location": w, "sort": "price_asc"}):
            for limit in (1, 20):
                got = [p["id"] for p in await all_pages(sheda, {**params, "limit": limit})]
                assert got == ([ids[0], ids[3], ids[2]] if "sort" not in params else got) and ids[1] not in got, (params, got)
        r = await sheda.api.patch(f"{API}/{ids[1]}/status", {"active": True}, token=agent.token)
        assert r.status == 200 and r.json["featured_until"] is not None, r
        assert [p["id"] for p in await all_pages(sheda, {"location": w, "limit": 1})] == [ids[1], ids[0], ids[3], ids[2]]

        # Two featured and one plain listing sold: status=sold lists them newest first, featured or not.
        for contract, pid in enumerate((ids[0], ids[1], ids[3]), start=-3):
            assert await store.take(pid, "sold", contract, now()) is not None
        got = [p["id"] for p in await all_pages(sheda, {"location": w, "status": "sold", "limit": 1})]
        assert got == [ids[3], ids[1], ids[0]], got
        assert [p["id"] for p in await all_pages(sheda, {"location": w, "limit": 1})] == [ids[2]]
        # Available again (the contract let go) within its days: first again.
        assert await store.release(ids[0], -3, now()) is not None
        assert [p["id"] for p in await all_pages(sheda, {"location": w, "limit": 1})] == [ids[0], ids[2]]
    finally:
        for contract, pid in enumerate((ids[0], ids[1], ids[3]), start=-3):
            await store.release(pid, contract, now())
        await unlist(sheda, agent, ids)


async def test_featured_until_is_null_once_the_days_are_over_even_before_the_job_runs(sheda, fund):
    agent = await sheda.signup("agent")
    w = word()
    prop = await create_property(sheda, agent, location=f"{w} Gbagada")
    try:
        await fund(agent, 1_000)
        r = await promote(sheda, agent, prop["id"], {"kind": "featured", "days": 1})
        assert r.status == 201, r
        sheda.ctx.clock.advance(days=1, seconds=1)
        assert (await stored(sheda, prop["id"]))["featured_until"] is not None  # the job has not run: still stored
        assert (await sheda.api.get(f"{API}/{prop['id']}")).json["featured_until"] is None
        assert (await sheda.api.get(API, params={"location": w})).json["items"][0]["featured_until"] is None
        # the promotion itself still says until when that purchase featured it
        assert r.json["featured_until"] is not None
    finally:
        await unlist(sheda, agent, [prop["id"]])
        await sheda.ctx.promotion_job.run()  # ends it (the shared database keeps no stale featured days of this test)


async def test_prefixed_facets_follow_edits_relisting_and_the_end_of_featured_days(sheda, fund):
    """The f: copies are the listing's facets, exactly, while featured (an edit's new keyword is found first at
    once), survive an unlisting and relisting, and all go when the days end (index entries are a cost per write)."""
    from sheda_rt.listings.store import facets_for

    agent = await sheda.signup("agent")
    w, new = word(), word()
    props = [await create_property(sheda, agent, location=f"{w} Ogba", price="2000000.00") for _ in range(2)]
    ids = [p["id"] for p in props]
    try:
        await fund(agent, 5_000)
        assert (await promote(sheda, agent, ids[0], {"kind": "featured", "days": 1})).status == 201
        doc = await stored(sheda, ids[0])
        plain = {f for f in doc["facets"] if not f.startswith("f:")}
        assert prefixed(doc) == {"f:" + f for f in plain} and sorted(doc["facets"]) == facets_for(doc)
        assert not prefixed(await stored(sheda, ids[1]))

        r = await sheda.api.patch(f"{API}/{ids[0]}", {"price": "1500000.00", "title": f"{new} duplex"}, token=agent.token)
        assert r.status == 200 and r.json["featured_until"] is not None, r
        doc = await stored(sheda, ids[0])
        assert sorted(doc["facets"]) == facets_for(doc) and any(f.startswith("f:k:" + new[:4]) for f in doc["facets"])
        assert (await sheda.api.get(API, params={"q": new})).json["items"][0]["id"] == ids[0]
        for active in (False, True):
            assert (await sheda.api.patch(f"{API}/{ids[0]}/status", {"active": active}, token=agent.token)).status == 200
        doc = await stored(sheda, ids[0])
        assert sorted(doc["facets"]) == facets_for(doc) and prefixed(doc)
        assert [p["id"] for p in await all_pages(sheda, {"location": w, "sort": "price_desc"})] == ids

        sheda.ctx.clock.advance(days=1, seconds=1)
        await sheda.ctx.promotion_job.run()
        doc = await stored(sheda, ids[0])
        assert "featured_until" not in doc and not prefixed(doc) and sorted(doc["facets"]) == facets_for(doc)
        assert [p["id"] for p in await all_pages(sheda, {"location": w, "sort": "price_desc"})] == ids[::-1]
    finally:
        await unlist(sheda, agent, ids)


async def test_a_listings_promotions_are_listed_for_its_agent_and_admins(sheda, fund):
    from tests.test_openapi_typed import Conformance, served_document

    conf = Conformance(await served_document(sheda))
    post, get = f"{API}/{{property_id}}/promotions", f"{API}/{{property_id}}/promotions"
    agent, other, client, admin = await sheda.signup("agent"), await sheda.signup("agent"), await sheda.signup("client"), await sheda.admin()
    prop = await create_property(sheda, agent, location=f"{word()} Maryland")
    mine = await create_property(sheda, other, location=f"{word()} Maryland")
    url = f"{API}/{prop['id']}/promotions"
    try:
        r = await promote(sheda, agent, prop["id"], {"kind": "bump"})
        conf.check(r, "POST", post, 402)
        await fund(agent, 3_500)
        bought = []
        for body in ({"kind": "featured", "days": 1}, {"kind": "bump"}, {"kind": "featured", "days": 2}):
            r = await promote(sheda, agent, prop["id"], body)
            bought.append(conf.check(r, "POST", post, 201))
            sheda.ctx.clock.advance(seconds=1)
        assert (await promote(sheda, other, mine["id"], {"kind": "bump"})).status == 402  # another listing's, unpaid
        conf.check(await promote(sheda, agent, prop["id"], {"kind": "featured", "days": 1}), "POST", post, 402)

        pages, cursor = [], None
        while True:
            r = await sheda.api.get(url, params={"limit": 2, **({"cursor": cursor} if cursor else {})}, token=agent.token)
            pages.append(conf.check(r, "GET", get, 200))
            cursor = r.json["next_cursor"]
            if not cursor:
                break
        assert [len(p["items"]) for p in pages] == [2, 1]
        assert [i for p in pages for i in p["items"]] == bought[::-1]  # newest first, each as its POST answered
        assert conf.check(await sheda.api.get(url, token=admin.token), "GET", get, 200)["items"] == bought[::-1]
        assert (await sheda.api.get(f"{API}/{mine['id']}/promotions", token=other.token)).json == {"items": [], "next_cursor": None}

        conf.check(await sheda.api.get(url), "GET", get, 401)
        for user in (other, client):
            assert conf.check(await sheda.api.get(url, token=user.token), "GET", get, 403)["code"] == "not_owner"
        conf.check(await sheda.api.get(f"{API}/99999999/promotions", token=agent.token), "GET", get, 404)
        for params in ({"limit": 0}, {"limit": 101}, {"cursor": "nonsense"}, {"page": 2}):
            conf.check(await sheda.api.get(url, params=params, token=agent.token), "GET", get, 422)
        await unlist(sheda, agent, [prop["id"]])  # unlisted: its agent and admins still see its promotions
        conf.check(await sheda.api.get(url, token=agent.token), "GET", get, 200)
        conf.check(await sheda.api.get(url, token=admin.token), "GET", get, 200)
        conf.check(await sheda.api.get(url, token=other.token), "GET", get, 404)

        # Every page's read walks the (property_id, state, _id) index, the pages after the first included.
        store = sheda.ctx.promotion_store
        for cursor in (None, pages[0]["next_cursor"]):
            flt = page_filter({"property_id": prop["id"], "state": "applied"}, store.SORT, cursor)
            explained = await sheda.ctx.db.command("explain", {"find": "promotions", "filter": flt, "sort": {"_id": -1}},
                                                   verbosity="queryPlanner")
            assert not _collscan(explained["queryPlanner"]["winningPlan"]), (flt, explained)
    finally:
        await unlist(sheda, agent, [prop["id"]])
        await unlist(sheda, other, [mine["id"]])


REFUNDS = "/api/v1/admin/wallet/refunds"


async def listed_promotions(sheda, agent, property_id: int) -> list[dict]:
    r = await sheda.api.get(f"{API}/{property_id}/promotions", token=agent.token)
    assert r.status == 200, r
    return r.json["items"]


async def test_an_admin_refund_of_a_promotion_ends_it_once_and_its_record_says_refunded(sheda, fund):
    """An admin refunded a featured promotion's spend: the money came back, but the listing stayed featured and
    GET .../promotions still showed it applied. The refund now ends the promotion (its remaining days leave the
    listing: alone, it is no longer featured; stacked, the days bought after it move up) and records it refunded,
    once, whoever asks again or races it (a second refund, the expiry job)."""
    from tests.test_openapi_typed import Conformance, served_document

    conf = Conformance(await served_document(sheda))
    get = f"{API}/{{property_id}}/promotions"
    agent, admin = await sheda.signup("agent"), await sheda.admin()
    prop = await create_property(sheda, agent, location=f"{word()} Lekki")
    stacked = await create_property(sheda, agent, location=f"{word()} Lekki")
    parse_ts = lambda s: datetime.fromisoformat(s.replace("Z", "+00:00"))  # noqa: E731
    try:
        await fund(agent, 20_000)
        key = uuid.uuid4().hex
        bought = await promote(sheda, agent, prop["id"], {"kind": "featured", "days": 3}, key=key)
        assert bought.status == 201 and prefixed(await stored(sheda, prop["id"])), bought
        assert await balance(sheda, agent) == "17000.00"
        watcher = await sheda.ws(agent.token)
        await watcher.send({"type": "subscribe", "channel": f"property:{prop['id']}"})
        await watcher.wait_type("subscribed")

        refunds = await asyncio.gather(*(sheda.api.post(REFUNDS, {"transaction_id": bought.json["transaction_id"],
                                                                  "reason": "listing misrepresented"}, token=admin.token)
                                         for _ in range(3)))
        assert sorted(r.status for r in refunds) == [200, 200, 201], refunds
        refund = next(r.json for r in refunds if r.status == 201)
        assert all(r.json["id"] == refund["id"] for r in refunds)
        assert await balance(sheda, agent) == "20000.00"
        # The listing left the featured slot, for everyone, at once.
        assert (await sheda.api.get(f"{API}/{prop['id']}")).json["featured_until"] is None
        doc = await stored(sheda, prop["id"])
        assert "featured_until" not in doc and not prefixed(doc), doc
        ended = await watcher.wait_type("property.updated", property_id=prop["id"])
        assert ended["changes"] == ["featured_until"] and ended["property"]["featured_until"] is None
        # Its record says so.
        [listed] = conf.check(await sheda.api.get(f"{API}/{prop['id']}/promotions", token=agent.token), "GET", get, 200)["items"]
        assert listed["status"] == "refunded" and listed["refund_transaction_id"] == refund["id"] and listed["refunded_at"]
        assert listed["id"] == bought.json["id"] and listed["transaction_id"] == bought.json["transaction_id"]
        # Its Idempotency-Key again does not buy it back (nor charge).
        r = await promote(sheda, agent, prop["id"], {"kind": "featured", "days": 3}, key=key)
        assert r.status == 201 and r.json == listed, r
        assert (await sheda.api.get(f"{API}/{prop['id']}")).json["featured_until"] is None
        r = await sheda.api.post(REFUNDS, {"transaction_id": bought.json["transaction_id"], "reason": "again"}, token=admin.token)
        assert r.status == 200 and r.json["id"] == refund["id"]
        assert await listed_promotions(sheda, agent, prop["id"]) == [listed]
        assert await balance(sheda, agent) == "20000.00"
        watcher.close()

        # Stacked days: refunding the first of two purchases takes only its days off; the second keeps its own.
        first = await promote(sheda, agent, stacked["id"], {"kind": "featured", "days": 2})
        second = await promote(sheda, agent, stacked["id"], {"kind": "featured", "days": 3})
        assert first.status == second.status == 201
        r = await sheda.api.post(REFUNDS, {"transaction_id": first.json["transaction_id"], "reason": "x"}, token=admin.token)
        assert r.status == 201, r
        until = parse_ts((await sheda.api.get(f"{API}/{stacked['id']}")).json["featured_until"])
        expected = parse_ts(second.json["featured_until"]) - timedelta(days=2)
        assert abs((until - expected).total_seconds()) < 60, (until, expected)
        assert [p["status"] for p in await listed_promotions(sheda, agent, stacked["id"])] == ["applied", "refunded"]
        # A refund cut short after the money moved (the record says refunding, the listing still featured) is
        # finished by the promotions job.
        third = await promote(sheda, agent, prop["id"], {"kind": "featured", "days": 1})
        assert third.status == 201 and prefixed(await stored(sheda, prop["id"]))
        await sheda.ctx.wallet.ledger.post({"key": f"refund:{third.json['transaction_id']}", "kind": "refund", "memo": "cut",
                                            "reverses": third.json["transaction_id"], "refs": {},
                                            "lines": [{"account": f"wallet:{agent.id}", "amount_minor": 100_000},
                                                      {"account": "platform:revenue", "amount_minor": -100_000}]},
                                           sheda.ctx.clock.now())
        await sheda.ctx.db["promotions"].update_one({"_id": third.json["id"]}, {"$set": {"refund": "refunding"}})
        assert (await sheda.ctx.promotion_job.run())["refunds_finished"] == 1
        assert not prefixed(await stored(sheda, prop["id"]))
        assert (await listed_promotions(sheda, agent, prop["id"]))[0]["status"] == "refunded"
        # A bump refunded is recorded so as well.
        bump = await promote(sheda, agent, stacked["id"], {"kind": "bump"})
        r = await sheda.api.post(REFUNDS, {"transaction_id": bump.json["transaction_id"], "reason": "z"}, token=admin.token)
        assert r.status == 201, r
        assert [p["status"] for p in await listed_promotions(sheda, agent, stacked["id"])] == ["refunded", "applied", "refunded"]
        # A refund racing the expiry job once the days are over (through the services: the clock moves past the
        # tokens' life): one refund, nothing featured, no error.
        sheda.ctx.clock.advance(days=4)
        (refund2, created), _counts = await asyncio.gather(
            sheda.ctx.wallet.refund(admin.id, second.json["transaction_id"], "y"), sheda.ctx.promotion_job.run())
        assert created and refund2["reverses"] == second.json["transaction_id"]
        assert "featured_until" not in await stored(sheda, stacked["id"])
        states = [p.get("refund") for p in await sheda.ctx.db["promotions"].find({"property_id": stacked["id"]}).to_list()]
        assert states == ["refunded"] * 3, states
        assert await sheda.ctx.wallet.balance(agent.id) == 2_000_000
        audit = await sheda.ctx.wallet.audit()
        assert audit["ok"] is True, audit
    finally:
        await unlist(sheda, agent, [prop["id"], stacked["id"]])


async def test_a_promotion_refunded_while_still_pending_never_applies_afterwards(sheda, fund):
    """Its request charged the wallet and died before the listing changed; an admin refunds the charge before the
    job finishes it. Neither the job nor the client's retry with its key may feature the listing afterwards."""
    agent, admin = await sheda.signup("agent"), await sheda.admin()
    prop = await create_property(sheda, agent, location=f"{word()} Gbagada")
    service, store = sheda.ctx.promotions, sheda.ctx.promotion_store
    try:
        await fund(agent, 5_000)
        charged = await store.insert_pending({"user_id": agent.id, "key": "k-refunded", "property_id": prop["id"], "kind": "featured",
                                              "days": 2, "amount_minor": 200_000, "created_at": sheda.ctx.clock.now()})
        spend = await sheda.ctx.wallet.spend(agent.id, 200_000, idempotency_key=service.wallet_key(charged["_id"]),
                                             kind="spend:promotion", refs={"promotion_id": charged["_id"], "property_id": prop["id"]})
        r = await sheda.api.post(REFUNDS, {"transaction_id": spend["id"], "reason": "never shown"}, token=admin.token)
        assert r.status == 201, r
        [listed] = await listed_promotions(sheda, agent, prop["id"])
        assert listed["status"] == "refunded" and listed["transaction_id"] == spend["id"] and listed["refund_transaction_id"] == r.json["id"]
        # The client's retry with its key, and a request still charging it (its last steps, run here), change nothing.
        again = await promote(sheda, agent, prop["id"], {"kind": "featured", "days": 2}, key="k-refunded")
        assert again.status == 201 and again.json == listed, again
        assert (await service._apply(charged, spend["id"]))["status"] == "refunded"
        sheda.ctx.clock.advance(minutes=2)
        await sheda.ctx.promotion_job.run()
        doc = await stored(sheda, prop["id"])
        assert "featured_until" not in doc and not prefixed(doc), doc
        assert await balance(sheda, agent) == "5000.00"
    finally:
        await unlist(sheda, agent, [prop["id"]])
