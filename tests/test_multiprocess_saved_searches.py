"""Saved-search alerts across processes (issue 16 §1, §5): two `python run.py` instances sharing one
redis-server and one database. A listing created through one process and changed at the same moment
through both (two price drops racing, then unlisted and listed again) makes match jobs on both
processes at once; the buyer still gets exactly one alert per listing: one stored notification, one
event in their stream, one frame on their socket on the other process."""
from __future__ import annotations

import asyncio
import time

from pymongo import AsyncMongoClient

from tests.listing_helpers import listing, word
from tests.redis_support import Remote, redis_server, server_pair, shared_dir  # noqa: F401  (module fixtures)


async def jobs_done(db, property_ids, timeout: float = 30.0) -> list[dict]:
    """Every match job of these listings finished (each process runs its own at once; the poll takes any other)."""
    deadline = time.monotonic() + timeout
    while True:
        jobs = await db["jobs"].find({"kind": "saved_search.match", "payload.property_id": {"$in": property_ids}}).to_list()
        if jobs and all(j["status"] == "done" for j in jobs):
            return jobs
        assert time.monotonic() < deadline, [(j["_id"], j["status"]) for j in jobs]
        await asyncio.sleep(0.2)


async def test_one_alert_per_user_per_listing_across_two_processes(server_pair, embedded_db):
    a, b = (Remote(s) for s in server_pair)
    client = AsyncMongoClient(embedded_db.uri)
    db = client[server_pair[0].env["MONGODB_DB"]]
    try:
        agent, buyer = await a.signup("agent"), await b.signup("client")
        area = word()
        r = await a.api.post("/api/v1/saved-searches", {"name": "Area", "query": {"location": area, "price_max": "10000000"}},
                             token=buyer.token)
        assert r.status == 201, r
        ws = await b.ws(buyer.token)
        ids = []
        for i in range(4):
            r = await a.api.post("/api/v1/properties", listing(location=f"{area} Phase {i}", price="5000000"), token=agent.token)
            assert r.status == 201, r
            pid = r.json["id"]
            ids.append(pid)
            # Two price drops at once, one through each process: two more match jobs, one on each, racing the first.
            drops = await asyncio.gather(
                a.api.patch(f"/api/v1/properties/{pid}", {"price": "4000000"}, token=agent.token),
                b.api.patch(f"/api/v1/properties/{pid}", {"price": "3000000"}, token=agent.token))
            assert all(d.status == 200 for d in drops), drops
            off = await b.api.patch(f"/api/v1/properties/{pid}/status", {"active": False}, token=agent.token)
            on = await a.api.patch(f"/api/v1/properties/{pid}/status", {"active": True}, token=agent.token)
            assert off.status == 200 and on.status == 200, (off, on)
        jobs = await jobs_done(db, ids)
        assert len(jobs) >= 4 * 4 - 4  # create, two drops (a drop to a price no lower than the other's is none), relist
        assert sum(j["result"].get("alerted", 0) for j in jobs) == 4, [(j["_id"], j["result"]) for j in jobs]
        # Exactly one stored notification per listing, one event in the stream, one frame on the socket.
        notes = await db["notifications"].find({"user_id": buyer.id, "kind": "saved_search.match"}).to_list()
        assert sorted(n["data"]["property_id"] for n in notes) == ids
        for remote in (a, b):
            events = await remote.api.get("/api/v1/events", params={"after_seq": 0, "limit": 100}, token=buyer.token)
            got = [e["data"]["property_id"] for e in events.json["items"]
                   if e.get("type") == "notification" and e.get("kind") == "saved_search.match"]
            assert sorted(got) == ids, events.json
        await ws.wait_for(lambda f: len([x for x in ws.frames if x.get("kind") == "saved_search.match"]) >= 4, timeout=10)
        assert sorted(f["data"]["property_id"] for f in ws.frames if f.get("kind") == "saved_search.match") == ids
        assert await db["saved_search_alerts"].count_documents({"user_id": buyer.id}) == 4
        ws.close()
    finally:
        await client.close()
