"""Listing search at 100,000 properties: latency of typical searches and proof that each is index-driven.

    python bench/search_bench.py [--count 100000] [--runs 100]

Starts its own embedded database (a `secantusd-py` child process on a free port and a
temporary directory), creates the `properties` indexes through PropertyStore, loads
`--count` generated listings with insert_many in batches of 1,000 (through the store, so
every document has the same derived fields as one created over the API), then for each
query:
  * runs it `--runs` times through PropertyService.search (the code GET /properties runs),
    printing p50 / p99 / max in milliseconds and how many pipelines it ran (range slices, times grid cells for near=);
  * explains every pipeline it ran and prints the winning plan's stage tree;
  * asserts that no plan is a COLLSCAN.
A q= search is timed twice: as it runs (keyword postings may fetch the few listings carrying
every word by id, sheda_rt/search.py FacetPostings) and with the index drivers alone (before the
postings). Then listings created one at a time, alternately with and without posting their
keywords, time what the postings add to a write (those listings are removed again).
The database gets a 12G WiredTiger cache (BENCH_DB_CACHE to change it): bulk-loading these
multikey-heavy documents (~40 facets each since keywords are facets) stalls the embedded
database in cache eviction at around 25,000 listings with its default 1G, and near 70,000
with 4G (no write for minutes, CPU spinning). `--db-dir` keeps the loaded database: a
second run with the same directory only times the queries.
The data: 500 agents, 25 areas of Lagos/Abuja, created over two years, 85% available,
prices log-uniform (rent ₦300k-₦20M, sale ₦5M-₦2B), 70% with a map position, 12
categories, and a description of 6-12 words drawn from a 60-word vocabulary with
Zipf-like weights (the first words are common, the last rare), so keyword searches (q=)
meet both common and rare words.
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import math
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pymongo import AsyncMongoClient  # noqa: E402

from sheda_rt.clock import Clock  # noqa: E402
from sheda_rt.database.embedded import launcher_path  # noqa: E402
from sheda_rt.database.ids import IdAllocator  # noqa: E402
from sheda_rt.listings.models import AMENITIES, SearchQuery  # noqa: E402
from sheda_rt.listings.money import to_decimal128, to_minor  # noqa: E402
from sheda_rt.listings.service import PropertyService  # noqa: E402
from sheda_rt.listings.store import PropertyStore  # noqa: E402

AREAS = ["Lekki Phase 1", "Lekki Phase 2", "Ikoyi", "Victoria Island", "Ajah", "Yaba", "Surulere", "Ikeja GRA", "Magodo",
         "Gbagada", "Maryland", "Ogudu", "Ikorodu", "Festac", "Ojodu", "Sangotedo", "Chevron", "Oniru", "Banana Island",
         "Wuse 2", "Maitama", "Asokoro", "Gwarinpa", "Jabi", "Garki"]
TYPES = ["apartment", "house", "duplex", "bungalow", "land", "shortlet", "shared apartment", "office", "shop"]
VOCABULARY = ("spacious serviced parking security newly built tiled ensuite balcony gated estate generator borehole "
              "kitchen furnished modern renovated quiet wardrobe fitted family garden terrace pool gym study lounge "
              "waterfront view penthouse cinema elevator rooftop laundry store playground jacuzzi solar inverter "
              "lagoon ocean smart marble chandelier sauna bar library helipad vineyard orchard stable observatory "
              "greenhouse pavilion atrium courtyard gazebo fountain").split()
WEIGHTS = [1 / (i + 1) for i in range(len(VOCABULARY))]
CATEGORIES = 12


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_doc(rng: random.Random, now: datetime) -> dict:
    listing_type = "sale" if rng.random() < 0.35 else "rent"
    lo, hi = (300_000, 20_000_000) if listing_type == "rent" else (5_000_000, 2_000_000_000)
    price = Decimal(int(math.exp(rng.uniform(math.log(lo), math.log(hi))) // 1000 * 1000))
    area = rng.choice(AREAS)
    created = now - timedelta(seconds=rng.uniform(0, 730 * 86400))
    roll = rng.random()
    doc = {
        "title": f"{rng.randint(1, 5)} bedroom {rng.choice(TYPES)} in {area}",
        "description": " ".join(rng.choices(VOCABULARY, WEIGHTS, k=rng.randint(6, 12))),
        "category_id": rng.randint(1, CATEGORIES),
        "price": to_decimal128(price), "price_minor": to_minor(price), "is_negotiable": rng.random() < 0.5,
        "location": f"{rng.randint(1, 99)} {rng.choice(['Admiralty Way', 'Adeola Odeku', 'Allen Avenue', 'Herbert Macaulay', 'Aminu Kano'])}, {area}, {'Abuja' if area in AREAS[-6:] else 'Lagos'}",
        "property_type": rng.choice(TYPES), "listing_type": listing_type,
        "status": "available" if roll < 0.85 else ("rented" if listing_type == "rent" else "sold"),
        "is_active": rng.random() < 0.98,
        "bedroom": rng.randint(0, 6), "bathroom": rng.randint(1, 5), "furnished": rng.random() < 0.3,
        "images": [], "agent_id": rng.randint(1, 500), "created_at": created.replace(microsecond=created.microsecond // 1000 * 1000),
        "updated_at": created.replace(microsecond=0),
    }
    for flag in AMENITIES:
        doc[flag] = rng.random() < 0.5
    if rng.random() < 0.7:
        doc["geo"] = {"type": "Point", "coordinates": [round(rng.uniform(3.2, 3.7), 6), round(rng.uniform(6.40, 6.70), 6)]}
    return doc


QUERIES = [
    ("browse: available, newest", {}),
    ("rent apartments in Lekki under ₦3M, newest", {"listing_type": "rent", "property_type": "apartment", "location": "lekki",
                                                     "price_max": "3000000"}),
    ("houses for sale, 3+ bedrooms, cheapest first", {"listing_type": "sale", "property_type": "house", "bedroom_min": 3,
                                                      "sort": "price_asc"}),
    ("furnished rentals with wifi, dearest first", {"listing_type": "rent", "furnished": "true", "wifi": "true", "sort": "price_desc"}),
    ("one agent's listings", {"agent_id": 42}),
    ("near Victoria Island (3 km), newest", {"near": "6.43,3.42", "radius_km": 3}),
    ("one category, newest", {"category_id": 5}),
    ("q: one common word (pool), newest", {"q": "pool"}),
    ("q: one rare word (observatory), newest", {"q": "observatory"}),
    ("q: one word + rent, 2+ bed, under ₦5M", {"q": "garden", "listing_type": "rent", "bedroom_min": 2, "price_max": "5000000"}),
    ("q: three words (serviced pool lekki), newest", {"q": "serviced pool lekki"}),
    ("q: three words + sale, cheapest first", {"q": "gated estate ikoyi", "listing_type": "sale", "sort": "price_asc"}),
    ("q: three words + furnished, dearest first", {"q": "modern kitchen lekki", "furnished": "true", "sort": "price_desc"}),
    ("bbox: VI/Ikoyi box, newest", {"bbox": "3.40,6.42,3.45,6.46"}),
    ("bbox: wide box (most of Lagos), cheapest first", {"bbox": "3.2,6.4,3.7,6.7", "sort": "price_asc"}),
    ("bbox + q (pool) + rent", {"bbox": "3.35,6.40,3.50,6.50", "q": "pool", "listing_type": "rent"}),
]


def stage_tree(stage: dict, depth: int = 0) -> list[str]:
    label = stage.get("stage", "?")
    if stage.get("indexName"):
        label += f" {stage['indexName']} {stage.get('keyPattern')}"
    lines = ["    " + "  " * depth + label]
    for child in ([stage["inputStage"]] if "inputStage" in stage else []) + list(stage.get("inputStages", [])):
        lines += stage_tree(child, depth + 1)
    return lines


def winning_plan(explained: dict) -> dict:
    if "queryPlanner" in explained:
        return explained["queryPlanner"]["winningPlan"]
    for stage in explained.get("stages", []):
        if "$cursor" in stage:
            return stage["$cursor"]["queryPlanner"]["winningPlan"]
    raise RuntimeError(f"no winning plan in {explained!r}")


def has_collscan(stage: dict) -> bool:
    if stage.get("stage") == "COLLSCAN":
        return True
    children = ([stage["inputStage"]] if "inputStage" in stage else []) + list(stage.get("inputStages", []))
    return any(has_collscan(c) for c in children)


async def timed(service, q, runs: int) -> list[float]:
    """Milliseconds of `runs` searches, sorted."""
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        await service.search(q)
        out.append((time.perf_counter() - t0) * 1000)
    return sorted(out)


def p99(sorted_ms: list[float]) -> float:
    return sorted_ms[min(len(sorted_ms) - 1, math.ceil(0.99 * len(sorted_ms)) - 1)]


async def main(count: int, runs: int, db_dir: str | None = None, only: list[str] | None = None,
               drivers: bool = True, writes: bool = True, guided_case: bool = True) -> int:
    root = Path(db_dir) if db_dir else Path(tempfile.mkdtemp(prefix="sheda-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = open(root / "db.log", "wb")
    proc = subprocess.Popen([launcher_path(), "--host", "127.0.0.1", "--port", str(port), "--storage-path", str(root / "db"),
                             "--log-level", "WARNING", "--cache-size", os.environ.get("BENCH_DB_CACHE", "12G")], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    client = AsyncMongoClient(f"mongodb://127.0.0.1:{port}/?directConnection=true", tz_aware=True, tzinfo=timezone.utc,
                              serverSelectionTimeoutMS=30000)
    failures = 0
    try:
        db = client["sheda_bench"]
        await db.command("ping")
        store = PropertyStore(db, IdAllocator(db))
        await store.ensure_indexes()
        clock = Clock()
        # Search uses only the store and the clock.
        service = PropertyService(store, None, clock=clock, ids=None, media=None, channels=None, categories=None, analytics=None,
                                  public_base_url=None)

        rng = random.Random(20251016)
        now = clock.now()
        started = time.perf_counter()
        batch = 1000
        loaded = await store.col.estimated_document_count()
        if loaded:  # --db-dir kept from an earlier run: time the queries again without reloading
            print(f"reusing {loaded:,} listings in {root}")
            count = 0
        for offset in range(0, count, batch):
            await store.insert_many([make_doc(rng, now) for _ in range(min(batch, count - offset))])
            if (offset // batch) % 10 == 9:
                print(f"  loaded {offset + batch:,} ({time.perf_counter() - started:.0f}s)", flush=True)
        load_s = time.perf_counter() - started
        await store.stats.refresh()  # the facet sample a server takes in the background on its first searches
        print(f"loaded {count:,} properties in {load_s:.1f}s ({count / load_s:,.0f}/s); indexes: "
              f"{', '.join(sorted((await store.col.index_information()).keys()))}\n")

        # As the server does once started (sheda_rt/server.py): what was built so far is never garbage, and
        # the collector's full passes over it would be timed as search latency.
        gc.collect()
        gc.freeze()
        print(f"{'query':52} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'items':>6} {'pipes':>6}")
        plans: list[tuple[str, list]] = []
        for name, params in QUERIES:
            if only and not any(word.lower() in name.lower() for word in only):
                continue
            q = SearchQuery.model_validate({"limit": 20, **params})
            trace: list = []
            page = await service.search(q, trace=trace)
            timings = await timed(service, q, runs)
            print(f"{name:52} {statistics.median(timings):8.1f} {p99(timings):8.1f} {timings[-1]:8.1f} {len(page['items']):6} {len(trace):6}")
            plans.append((name, trace))
            if page["next_cursor"] and name.startswith("browse"):
                q2 = SearchQuery.model_validate({"limit": 20, **params, "cursor": page["next_cursor"]})
                t2 = await timed(service, q2, runs)
                print(f"{'  ... its page 2 (cursor)':52} {statistics.median(t2):8.1f} {p99(t2):8.1f} {t2[-1]:8.1f}")
            if drivers and "q" in params:  # the same search without the keyword postings: the index drivers alone (before them)
                store.finder.postings, postings = None, store.finder.postings
                try:
                    t2 = await timed(service, q, runs)
                finally:
                    store.finder.postings = postings
                print(f"{'  ... index drivers only (no postings)':52} {statistics.median(t2):8.1f} {p99(t2):8.1f} {t2[-1]:8.1f}")

        # What the postings cost a write: listings created one at a time (as POST /properties stores them),
        # alternately with and without posting their keywords; removed again afterwards.
        write_ms: dict[bool, list[float]] = {True: [], False: []}
        made: list[int] = []
        real_add = store.postings.add

        async def no_postings(docs) -> None:
            return None
        try:
            for i in range(2 * min(runs, 100) if writes else 0):
                with_postings = i % 2 == 0
                store.postings.add = real_add if with_postings else no_postings
                t0 = time.perf_counter()
                made.append((await store.insert(make_doc(rng, now)))["_id"])
                write_ms[with_postings].append((time.perf_counter() - t0) * 1000)
        finally:
            store.postings.add = real_add
            for i in range(0, len(made), 50):
                await store.col.delete_many({"_id": {"$in": made[i:i + 50]}})
        for with_postings, label in ((False, "write: create one listing, no postings"), (True, "write: create one listing, with postings")):
            ms = sorted(write_ms[with_postings])
            if not ms:
                continue
            print(f"{label:52} {statistics.median(ms):8.1f} {p99(ms):8.1f} {ms[-1]:8.1f}")

        # Guided search (sheda_rt/guided/): the catalog's first read (once per server), then the ranked answers
        # (exact matches, over budget, outside the area, both: one planned search per group) as POST /search/guided runs them.
        guided_name = "guided: rent apartment, up to ₦3M, Lekki Phase 1"
        if only and not any(word.lower() in guided_name.lower() for word in only):
            guided_case = False
        if guided_case:
            from sheda_rt.guided.catalog import GuidedCatalog
            from sheda_rt.guided.models import GuidedAnswers, GuidedPageQuery
            from sheda_rt.guided.service import GuidedSearchService

            catalog = GuidedCatalog(db, clock=clock, refresh_seconds=30)
            t0 = time.perf_counter()
            await catalog.ensure_indexes()
            await catalog.refresh()
            print(f"{'guided: catalog index + first read (once per server)':52} {(time.perf_counter() - t0) * 1000:8.0f}")
            guided = GuidedSearchService(catalog, listings=service, store=store, clock=clock)
            name = guided_name
            answers = GuidedAnswers(what="rent:apartment", budget="b:0-3000000", where="lekki-phase-1")
            trace = []
            page = await guided.search(answers, GuidedPageQuery(limit=20), trace=trace)
            timings = []
            for _ in range(runs):
                t0 = time.perf_counter()
                await guided.search(answers, GuidedPageQuery(limit=20))
                timings.append((time.perf_counter() - t0) * 1000)
            timings.sort()
            print(f"{name:52} {statistics.median(timings):8.1f} {p99(timings):8.1f} {timings[-1]:8.1f} {len(page['items']):6} {len(trace):6}")
            plans.append((name, trace))

        print("\nplans (each pipeline a search ran; the leading $match is what the index serves):")
        for name, trace in plans:
            print(f"  {name}")
            for i, pipeline in enumerate(trace):
                explained = await db.command("explain", {"aggregate": "properties", "pipeline": pipeline, "cursor": {}},
                                             verbosity="queryPlanner")
                plan = winning_plan(explained)
                scan = has_collscan(plan)
                failures += scan
                if i < 2 or scan or i == len(trace) - 1:
                    print(f"   pipeline {i + 1}/{len(trace)} driver {pipeline[0]['$match']}")
                    print("\n".join(stage_tree(plan)))
                elif i == 2:
                    print("   ...")
        print("\nCOLLSCAN plans:", failures, "(none)" if not failures else "(FAIL)")
    finally:
        await client.close()
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        if not db_dir:
            shutil.rmtree(root, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--db-dir", help="keep the database here; a later run with the same directory skips loading")
    parser.add_argument("--only", action="append", help="time only the cases whose name contains this (repeatable; 'guided' for guided search)")
    parser.add_argument("--no-drivers", action="store_true", help="skip timing q= searches a second time without the postings")
    parser.add_argument("--no-writes", action="store_true", help="skip the one-listing-at-a-time write timings")
    args = parser.parse_args()
    sys.exit(asyncio.run(main(args.count, args.runs, args.db_dir, only=args.only, drivers=not args.no_drivers,
                              writes=not args.no_writes)))
