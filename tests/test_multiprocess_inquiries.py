"""The inquiry limit per client address holds across processes sharing one Redis: two real
`python run.py` servers count one address's inquiries together."""
from __future__ import annotations

from tests.listing_helpers import listing
from tests.redis_support import Remote, redis_server, server_pair, shared_dir  # noqa: F401  (module fixtures)


async def test_five_inquiries_per_hour_per_address_across_two_processes(server_pair):
    a, b = (Remote(s) for s in server_pair)
    agent = await a.signup("agent")
    r = await a.api.post("/api/v1/properties", listing(), token=agent.token)
    assert r.status == 201, r
    body = {"property_id": r.json["id"], "name": "Ada", "email": "ada@example.com", "message": "Still available?"}
    # Both servers see this test client as 127.0.0.1: one address, five inquiries between them.
    for remote in (a, b, a, b, a):
        r = await remote.api.post("/api/v1/inquiries", body)
        assert r.status == 201, r
    for remote in (b, a):
        r = await remote.api.post("/api/v1/inquiries", body)
        assert r.status == 429 and int(r.headers["Retry-After"]) > 3000, r
    leads = await b.api.get("/api/v1/leads", token=agent.token)
    assert leads.status == 200 and len(leads.json["items"]) == 5
