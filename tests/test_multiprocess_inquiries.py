"""The inquiry limit per client address holds across processes sharing one Redis: two real
`python run.py` servers count one address's inquiries together. And a project inquiry (a builder's
lead) made through one process reaches the builder's sockets on both, live."""
from __future__ import annotations

import uuid

import pytest

from tests.listing_helpers import listing
from tests.redis_support import Remote, redis_server, running_pair, server_env, shared_dir  # noqa: F401  (module fixtures)
from tests.test_builders import project_body, unit
from tests.test_multiprocess_admin import admin_on


@pytest.fixture(scope="module")
def server_pair(embedded_db, redis_server, shared_dir):
    """The shared pair (tests/redis_support.py), taking the client address from X-Forwarded-For as behind a load
    balancer: a request without one is 127.0.0.1's, so the per-address test below counts one address, and a test
    that names its own address spends none of that one's five."""
    env = server_env(embedded_db, redis_server, shared_dir, f"sheda_mp_{uuid.uuid4().hex[:8]}", TRUST_PROXY_HEADERS="true")
    with running_pair(env, shared_dir) as pair:
        yield pair


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


async def test_a_project_lead_made_through_a_reaches_the_builders_sockets_on_b_live(server_pair):
    """2884e44: a buyer's inquiry about a builder's project is the builder's lead, told live (lead.created and its
    notification). Through a load balancer the buyer's request lands on A while the builder's phone is on B."""
    a, b = (Remote(s) for s in server_pair)
    admin = await admin_on(a)
    builder, buyer = await b.signup("builder"), await a.signup("client")
    r = await b.api.patch(f"/api/v1/admin/builders/{builder.id}", {"verified": True}, token=admin.token)
    assert r.status == 200, r
    r = await b.api.post("/api/v1/projects", project_body(name="Palm Court"), token=builder.token)
    assert r.status == 201, r
    pid = r.json["id"]
    assert (await a.api.post(f"/api/v1/projects/{pid}/publish", token=builder.token)).status == 200
    r = await b.api.post(f"/api/v1/projects/{pid}/units", {"units": [unit("A-101")]}, token=builder.token)
    assert r.status == 201, r
    unit_id = r.json["items"][0]["id"]
    builder_b, builder_a, buyer_a = await b.ws(builder.token), await a.ws(builder.token), await a.ws(buyer.token)
    try:
        body = {"project_id": pid, "unit_id": unit_id, "name": "Ada Buyer", "email": "ada@example.com",
                "message": "Is A-101 still available off-plan?"}
        r = await a.api.post("/api/v1/inquiries", body, token=buyer.token, headers={"X-Forwarded-For": "10.77.0.1"})
        assert r.status == 201 and r.json["project_id"] == pid and r.json["unit_id"] == unit_id, r
        lead_id = r.json["id"]
        for ws in (builder_b, builder_a):
            event = await ws.wait_for(lambda f: f.get("type") == "lead.created" and f["lead"]["id"] == lead_id, timeout=15)
            lead = event["lead"]
            assert lead["agent_id"] == builder.id and lead["user_id"] == buyer.id and lead["project_id"] == pid, lead
            note = await ws.wait_for(lambda f: f.get("type") == "notification" and f.get("kind") == "lead.created", timeout=15)
            assert note["data"] == {"lead_id": lead_id, "project_id": pid, "unit_id": unit_id}, note
        assert len([f for f in builder_b.frames if f.get("type") == "lead.created"]) == 1  # told once, not once per process
        # The builder works it through B: the project's leads, then an answer the buyer's socket on A gets.
        r = await b.api.get("/api/v1/leads", params={"project_id": str(pid)}, token=builder.token)
        assert r.status == 200 and [i["id"] for i in r.json["items"]] == [lead_id] and r.json["items"][0] == lead, r
        r = await b.api.post(f"/api/v1/leads/{lead_id}/conversation", {"message": "Hello Ada, A-101 is available"},
                             token=builder.token)
        assert r.status == 201 and r.json["lead"]["status"] == "contacted", r
        got = await buyer_a.wait_type("message", 15, id=r.json["message"]["id"])
        assert got["message"] == "Hello Ada, A-101 is available" and got["sender_info"]["id"] == builder.id, got
    finally:
        for ws in (builder_b, builder_a, buyer_a):
            ws.close()
