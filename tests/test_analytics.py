"""Views and the agent's analytics: what happened to each listing, per day."""
from __future__ import annotations

from datetime import timedelta

import pytest

from tests.listing_helpers import create_property
from tests.test_contracts import rental_ready

ANALYTICS = "/api/v1/agents/me/analytics"


@pytest.fixture
def settings_overrides():
    return {"trust_proxy_headers": True}  # signed-out viewers are told apart by their address


def ip(address: str) -> dict:
    return {"X-Forwarded-For": address}


async def test_views_favourites_inquiries_viewings_and_contracts_per_listing_per_day(sheda):
    agent, prop, [(client, appt)] = await rental_ready(sheda)
    other = await create_property(sheda, agent, title="Quiet one")
    url = f"/api/v1/properties/{prop['id']}"
    # views: one per viewer per day; the agent's own views do not count
    for _ in range(3):
        assert (await sheda.api.get(url, token=client.token)).status == 200
        assert (await sheda.api.get(url, headers=ip("192.0.2.10"))).status == 200
    assert (await sheda.api.get(url, headers=ip("192.0.2.11"))).status == 200
    assert (await sheda.api.get(url, token=agent.token)).status == 200
    assert (await sheda.api.get(f"/api/v1/properties/{other['id']}", headers=ip("192.0.2.10"))).status == 200
    # a favourite, an inquiry, and (from rental_ready) a viewing booked; then a contract
    assert (await sheda.api.post(f"{url}/favourite", token=client.token)).status == 201
    r = await sheda.api.post("/api/v1/inquiries", {"property_id": prop["id"], "name": "Ada", "email": "ada@example.com",
                                                  "message": "Still available?"}, headers=ip("192.0.2.12"))
    assert r.status == 201, r
    r = await sheda.api.post(f"/api/v1/contracts/{prop['id']}", {"appointment_id": appt["id"], "term_months": 12}, token=client.token)
    assert r.status == 201, r

    metrics = (await sheda.api.get("/metrics")).body.decode()
    assert "sheda_inquiries_total" in metrics and "sheda_listing_views_total" in metrics
    r = await sheda.api.get(ANALYTICS, token=agent.token)
    assert r.status == 200, r
    today = sheda.ctx.clock.now().date().isoformat()
    assert r.json["to_day"] == today
    by_id = {item["property_id"]: item for item in r.json["listings"]}
    main = by_id[prop["id"]]
    assert main["totals"] == {"views": 3, "favourites": 1, "inquiries": 1, "viewings": 1, "contracts": 1}
    assert main["days"] == [{"day": today, "views": 3, "favourites": 1, "inquiries": 1, "viewings": 1, "contracts": 1}]
    assert main["title"] == prop["title"]
    assert by_id[other["id"]]["totals"]["views"] == 1
    assert r.json["totals"]["views"] == 4 and r.json["listings"][0]["property_id"] == prop["id"]  # most viewed first

    # a range without today has nothing; tomorrow the same viewer counts again
    yesterday = (sheda.ctx.clock.now() - timedelta(days=1)).date().isoformat()
    r = await sheda.api.get(ANALYTICS, token=agent.token, params={"from": yesterday, "to": yesterday})
    assert r.status == 200 and r.json["listings"] == [] and r.json["totals"]["views"] == 0
    sheda.ctx.clock.advance(days=1)
    assert (await sheda.api.get(url, headers=ip("192.0.2.10"))).status == 200
    login = await sheda.api.post("/api/v1/auth/login", {"username": agent.username, "password": agent.password})  # a day later
    r = await sheda.api.get(ANALYTICS, token=login.json["access_token"], params={"from": today})
    main = next(item for item in r.json["listings"] if item["property_id"] == prop["id"])
    assert [(d["day"], d["views"]) for d in main["days"]] == [(today, 3), ((sheda.ctx.clock.now()).date().isoformat(), 1)]


async def test_only_agents_read_their_analytics_and_bad_ranges_are_422(sheda):
    agent = await sheda.signup("agent")
    client = await sheda.signup("client")
    assert (await sheda.api.get(ANALYTICS)).status == 401
    assert (await sheda.api.get(ANALYTICS, token=client.token)).status == 403
    r = await sheda.api.get(ANALYTICS, token=agent.token)
    assert r.status == 200 and r.json["listings"] == [], r
    for params in ({"from": "2026-02-01", "to": "2026-01-01"}, {"from": "2020-01-01", "to": "2026-01-01"}, {"from": "yesterday"},
                   {"to": "2026-13-01"}, {"from_": "2026-01-01"}, {"agent_id": "1"}, {"from": "9999-01-01"}, {"from": "x" * 5000}):
        r = await sheda.api.get(ANALYTICS, token=agent.token, params=params)
        assert r.status == 422, (params, r)
        if params.get("to") == "2026-01-01":  # a range the wrong way round or too long: named by its end, not "body"
            assert [e["field"] for e in r.json["errors"]] == ["to"], (params, r.json)
