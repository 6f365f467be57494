"""Saved-search alert matching at scale: what one listing change costs when many searches are saved.

    python bench/saved_search_bench.py [--searches 20000] [--listings 200]

Starts its own embedded database (temporary directory), saves `--searches` searches through
SavedSearchStore with the alert key SavedSearchService gives them (so they are filed as the server
files them), then inserts `--listings` listings through PropertyStore and runs, for each, the match
job's handler (ListingAlerts.run: candidate look-up on the alert_key index, the full filters checked
with the GET /properties plan, and each match's alert written; every search is `daily`, so a match
costs its alert document and the digest job's enqueue, no socket or push). Prints p50 / p99 / max in
milliseconds of the look-up and checks alone and of the whole job, the candidate searches read and matched per listing, the look-up's plan
(asserted not to be a COLLSCAN), and for comparison the time to read and check every saved search
for one listing (what matching without the index would cost).

The searches: 25 areas of Lagos/Abuja; 60% a location (with a type, a price cap or a bedroom
minimum), 15% keywords, 10% a circle around a point of an area, 15% only rent/sale and a type (the
broad ones every listing of that type reads).
"""
from __future__ import annotations

import argparse
import asyncio
import math
import random
import statistics
import sys
import tempfile
import time
from datetime import datetime
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pymongo import AsyncMongoClient  # noqa: E402

from sheda_rt.clock import Clock  # noqa: E402
from sheda_rt.database.embedded import EmbeddedDatabase  # noqa: E402
from sheda_rt.database.ids import IdAllocator  # noqa: E402
from sheda_rt.accounts.users_store import UserStore  # noqa: E402
from sheda_rt.jobs.runner import JobRunner  # noqa: E402
from sheda_rt.jobs.store import JobStore  # noqa: E402
from sheda_rt.listings.money import to_decimal128, to_minor  # noqa: E402
from sheda_rt.listings.service import PropertyService  # noqa: E402
from sheda_rt.listings.store import PropertyStore  # noqa: E402
from sheda_rt.saved_searches.job import AlertDigests, ListingAlerts  # noqa: E402
from sheda_rt.saved_searches.models import SavedSearchQuery  # noqa: E402
from sheda_rt.saved_searches.service import SavedSearchService  # noqa: E402
from sheda_rt.saved_searches.store import AlertStore, PendingAlerts, SavedSearchStore  # noqa: E402

AREAS = {"Lekki Phase 1": (6.447, 3.473), "Lekki Phase 2": (6.436, 3.520), "Ikoyi": (6.452, 3.435), "Victoria Island": (6.428, 3.421),
         "Ajah": (6.468, 3.566), "Yaba": (6.509, 3.371), "Surulere": (6.500, 3.354), "Ikeja GRA": (6.578, 3.350),
         "Magodo": (6.620, 3.380), "Gbagada": (6.553, 3.387), "Maryland": (6.570, 3.367), "Ogudu": (6.575, 3.393),
         "Ikorodu": (6.619, 3.507), "Festac": (6.467, 3.284), "Ojodu": (6.640, 3.358), "Sangotedo": (6.471, 3.633),
         "Chevron": (6.438, 3.531), "Oniru": (6.434, 3.443), "Banana Island": (6.462, 3.445), "Wuse 2": (9.080, 7.470),
         "Maitama": (9.090, 7.495), "Asokoro": (9.040, 7.520), "Gwarinpa": (9.110, 7.400), "Jabi": (9.070, 7.420),
         "Garki": (9.030, 7.490)}
TYPES = ["apartment", "house", "duplex", "bungalow", "land", "shortlet", "office"]
WORDS = "spacious serviced pool gym waterfront penthouse gated estate garden terrace borehole generator".split()


def random_query(rng: random.Random) -> dict:
    area = rng.choice(list(AREAS))
    roll = rng.random()
    lt = rng.choice(["rent", "sale"])
    if roll < 0.60:
        q = {"location": area.split()[0], "listing_type": lt}
        if rng.random() < 0.5:
            q["property_type"] = rng.choice(TYPES)
        if rng.random() < 0.5:
            q["price_max"] = str(rng.choice([1, 2, 5, 10, 50, 200]) * 1_000_000)
        if rng.random() < 0.3:
            q["bedroom_min"] = rng.randint(1, 4)
        return q
    if roll < 0.75:
        return {"q": " ".join(rng.sample(WORDS, rng.randint(1, 2))), "listing_type": lt}
    if roll < 0.85:
        lat, lng = AREAS[area]
        return {"near": f"{lat},{lng}", "radius_km": rng.choice([1, 2, 5])}
    return {"listing_type": lt, "property_type": rng.choice(TYPES)}


def random_listing(rng: random.Random, now: datetime, agent: int) -> dict:
    area = rng.choice(list(AREAS))
    lt = "sale" if rng.random() < 0.35 else "rent"
    lo, hi = (300_000, 20_000_000) if lt == "rent" else (5_000_000, 2_000_000_000)
    price = Decimal(int(math.exp(rng.uniform(math.log(lo), math.log(hi))) // 1000 * 1000))
    lat, lng = AREAS[area]
    doc = {"title": f"{rng.randint(1, 5)} bedroom {rng.choice(TYPES)}", "description": " ".join(rng.sample(WORDS, 4)),
           "price": to_decimal128(price), "price_minor": to_minor(price), "location": f"{rng.randint(1, 99)} Road, {area}, Lagos",
           "property_type": rng.choice(TYPES), "listing_type": lt, "bedroom": rng.randint(0, 5), "bathroom": rng.randint(0, 5),
           "status": "available", "is_active": True, "images": [], "agent_id": agent, "created_at": now, "updated_at": now,
           "furnished": False}
    if rng.random() < 0.7:
        doc["geo"] = {"type": "Point", "coordinates": [lng + rng.uniform(-0.02, 0.02), lat + rng.uniform(-0.02, 0.02)]}
    return doc


async def main(args) -> None:
    root = Path(tempfile.mkdtemp(prefix="sheda-ssbench-"))
    db_proc = EmbeddedDatabase(root)
    db_proc.start()
    client = AsyncMongoClient(db_proc.uri)
    try:
        db = client["bench"]
        clock = Clock()
        ids = IdAllocator(db)
        props = PropertyStore(db, ids)
        searches, alerts, jobs = SavedSearchStore(db, ids), AlertStore(db), JobStore(db)
        for store in (props, searches, alerts, jobs):
            await store.ensure_indexes()
        # plan() reads only the store's facet sample; the rest of PropertyService is not used here
        listings = PropertyService(props, None, clock=clock, ids=ids, media=None, channels=None, categories=None, analytics=None,
                                   public_base_url=None)
        saved = SavedSearchService(searches, plan=listings.plan, clock=clock)
        runner = JobRunner(jobs, clock)
        users = UserStore(db, ids)  # the searches' owners: the job reads who is still active
        digests = AlertDigests(runner=runner, alerts=alerts, searches=searches, listings=props, users=None, preferences=None, email=None,
                               clock=clock, hour_utc=7)
        matcher = ListingAlerts(runner=runner, searches=searches, saved=saved, alerts=alerts, listings=props, notifications=None,
                                push=None, digests=digests, clock=clock, push_ttl_seconds=60, pending=PendingAlerts(db), users=users,
                                blocks=None)
        rng = random.Random(7)
        now = clock.now()
        t0 = time.perf_counter()
        batch = []
        for i in range(args.searches):
            query = SavedSearchQuery.model_validate(random_query(rng)).stored()
            batch.append({"_id": i + 1, "user_id": 1_000_000 + i, "name": f"s{i}", "query": query, "alert": "daily",
                          "alert_key": saved.alert_key(query, "daily"), "created_at": now, "updated_at": now})
            if len(batch) == 1000:
                await searches.col.insert_many(batch)
                await users.col.insert_many([{"_id": s["user_id"], "is_active": True} for s in batch])
                batch = []
        if batch:
            await searches.col.insert_many(batch)
            await users.col.insert_many([{"_id": s["user_id"], "is_active": True} for s in batch])
        print(f"saved {args.searches} searches in {time.perf_counter() - t0:.1f} s")
        explain = await db.command("explain", {"find": "saved_searches", "filter": {"alert_key": {"$in": ["w:lekki", "l:rent", "*"]}}})
        stage = explain["queryPlanner"]["winningPlan"]
        print("look-up plan:", stage.get("stage"), "<-", stage.get("inputStage", {}).get("stage"),
              stage.get("inputStage", {}).get("indexName"))
        assert stage.get("stage") != "COLLSCAN" and stage.get("inputStage", {}).get("stage") == "IXSCAN", stage

        times, lookups, candidates, matched = [], [], [], []
        for i in range(args.listings):
            doc = await props.insert(random_listing(rng, clock.now(), agent=1 + i % 50))
            t = time.perf_counter()  # the look-up and the checks alone, as the job does them
            async for s in searches.alerting(doc["facets"]):
                saved.matches(s["query"], doc, s.get("match_extra"))
            lookups.append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            result = await matcher.run({"_id": f"bench:{doc['_id']}", "payload": {"property_id": doc["_id"], "rev": 1, "reason": "new"}})
            times.append((time.perf_counter() - t) * 1000)
            candidates.append(result["candidates"])
            matched.append(result["matched"])
        for name, values in (("look-up and checks", lookups), ("whole match job, alerts written", times)):
            values.sort()
            print(f"{name} per listing ({args.listings} listings): p50 {statistics.median(values):.1f} ms, "
                  f"p99 {values[max(0, int(len(values) * 0.99) - 1)]:.1f} ms, max {values[-1]:.1f} ms")
        print(f"candidate searches read per listing: mean {statistics.mean(candidates):.0f}, max {max(candidates)}; "
              f"matched: mean {statistics.mean(matched):.1f}, max {max(matched)}")
        doc = await props.get(doc["_id"])
        t = time.perf_counter()
        n = 0
        async for s in searches.col.find({}):
            n += saved.matches(s["query"], doc)
        print(f"for comparison, reading and checking all {args.searches} searches for one listing: "
              f"{(time.perf_counter() - t) * 1000:.0f} ms ({n} match)")
    finally:
        await client.close()
        db_proc.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--searches", type=int, default=20000)
    parser.add_argument("--listings", type=int, default=200)
    asyncio.run(main(parser.parse_args()))
