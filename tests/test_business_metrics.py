"""Business figures on GET /metrics (issue 16 §2): active listings by listing type, and the
inquiry and view counters that PromQL turns into per-hour rates, as a scraper sees them."""
from __future__ import annotations

import pytest

from tests.listing_helpers import create_property
from tests.redis_support import parse_metrics


@pytest.fixture
def settings_overrides():
    return {"trust_proxy_headers": True}  # signed-out viewers and inquirers are told apart by their address


async def scrape(sheda) -> dict:
    r = await sheda.api.get("/metrics")
    assert r.status == 200, r
    return parse_metrics(r.body.decode())


def active(samples: dict, listing_type: str) -> float | None:
    return samples.get(("sheda_listings_active", (("listing_type", listing_type),)))


async def active_in_db(sheda, listing_type: str) -> int:
    return await sheda.ctx.db["properties"].count_documents({"status": "available", "is_active": True, "listing_type": listing_type})


async def test_active_listings_by_type_come_from_the_sample_not_a_count_per_scrape(sheda):
    stats = sheda.ctx.property_store.stats
    old_size = stats.sample_size
    stats.sample_size = 1_000_000  # every listing of the test database: the estimate is exact
    try:
        agent = await sheda.signup("agent")
        rents = [await create_property(sheda, agent, listing_type="rent") for _ in range(3)]
        for _ in range(2):
            await create_property(sheda, agent, listing_type="sale", price="90000000.00")
        assert (await sheda.api.delete(f"/api/v1/properties/{rents[0]['id']}", token=agent.token)).status == 204  # unlisted
        await stats.refresh()
        samples = await scrape(sheda)
        assert active(samples, "rent") == await active_in_db(sheda, "rent")
        assert active(samples, "sale") == await active_in_db(sheda, "sale")
        before = {lt: active(samples, lt) for lt in ("rent", "sale")}

        # A scrape reads the sample (taken at most every 10 minutes), never the listings themselves:
        # one created since is not in the figure until the sample is taken again.
        await create_property(sheda, agent, listing_type="sale", price="80000000.00")
        samples = await scrape(sheda)
        assert active(samples, "sale") == before["sale"]
        await stats.refresh()
        samples = await scrape(sheda)
        assert active(samples, "sale") == before["sale"] + 1 == await active_in_db(sheda, "sale")
        assert active(samples, "rent") == before["rent"]
    finally:
        stats.sample_size = old_size


async def test_the_estimate_is_scaled_from_the_ids_drawn_when_the_sample_is_smaller(sheda):
    """Above sample_size listings the figure is the share of drawn ids that are active listings of the
    type, times the ids issued: unbiased, so on average over samples it is the true count."""
    agent = await sheda.signup("agent")
    for _ in range(4):
        await create_property(sheda, agent, listing_type="rent")
    stats = sheda.ctx.property_store.stats
    old_size = stats.sample_size
    try:
        stats.sample_size = 1_000_000
        await stats.refresh()
        exact = (await scrape(sheda))[("sheda_listings_active", (("listing_type", "rent"),))]
        assert exact == await active_in_db(sheda, "rent")
        top = await sheda.ctx.ids.current("properties")
        stats.sample_size = max(2, top // 2)  # half the ids
        figures = []
        for _ in range(30):
            await stats.refresh()
            figures.append((await scrape(sheda))[("sheda_listings_active", (("listing_type", "rent"),))])
        assert len(set(figures)) > 1 or figures[0] == exact  # sampled, not counted
        mean = sum(figures) / len(figures)
        assert abs(mean - exact) <= max(2.0, 0.25 * exact), (mean, exact, figures)
    finally:
        stats.sample_size = old_size
        await stats.refresh()


async def test_inquiries_and_views_are_counters_that_rate_per_hour(sheda):
    """`sum(increase(sheda_inquiries_total[1h]))` and `sum(increase(sheda_listing_views_total[1h]))`
    are the per-hour figures: each counter is exposed from the start (at 0 before the first event,
    so increase() sees the first one) and moves by exactly one per inquiry stored / view counted."""
    samples = await scrape(sheda)
    for name in ("sheda_inquiries_total", "sheda_listing_views_total"):
        assert (name, ()) in samples, name
    agent, client = await sheda.signup("agent"), await sheda.signup("client")
    prop = await create_property(sheda, agent)
    url = f"/api/v1/properties/{prop['id']}"
    before = samples
    for _ in range(2):  # the same viewer twice on one day: one view
        assert (await sheda.api.get(url, token=client.token)).status == 200
    assert (await sheda.api.get(url, headers={"X-Forwarded-For": "192.0.2.77"})).status == 200
    assert (await sheda.api.get(url, token=agent.token)).status == 200  # the agent's own view does not count
    r = await sheda.api.post("/api/v1/inquiries", {"property_id": prop["id"], "name": "Ada", "email": "ada@example.com",
                                                  "message": "Is it still available?"}, headers={"X-Forwarded-For": "192.0.2.78"})
    assert r.status == 201, r
    r = await sheda.api.post("/api/v1/inquiries", {"property_id": prop["id"], "name": "Bot", "email": "not-an-email", "message": "x"},
                             headers={"X-Forwarded-For": "192.0.2.79"})
    assert r.status == 422  # refused: nothing stored, nothing counted
    after = await scrape(sheda)
    assert after[("sheda_listing_views_total", ())] - before[("sheda_listing_views_total", ())] == 2
    assert after[("sheda_inquiries_total", ())] - before[("sheda_inquiries_total", ())] == 1
