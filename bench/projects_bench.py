"""Builder projects and units at scale: latency of typical project searches and unit pages, and
proof that each is index-driven.

    python bench/projects_bench.py [--projects 10000] [--units-per-project 50] [--runs 50]

Starts its own embedded database (like bench/search_bench.py, whose helpers it uses), creates the
`projects` and `units` indexes through their stores, loads `--projects` generated projects and on
average `--units-per-project` units each (insert_many in batches, every project carrying the unit
summary ProjectService.refresh_summary would write), then for each query runs it `--runs` times
through ProjectService (the code GET /projects and GET /projects/{id}/units run), prints p50 / p99 /
max in milliseconds, explains every pipeline it ran and fails if any plan is a COLLSCAN.
The data: 300 builders, the listings benchmark's 25 areas, 85% published, 70% with a map position,
statuses spread over planning / under_construction / completed; 10 to 2x the average units per
project, prices log-uniform ₦5M-₦500M, 0-5 bedrooms, 80% available.
"""
from __future__ import annotations

import argparse
import asyncio
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import timedelta, timezone
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from pymongo import AsyncMongoClient  # noqa: E402

from search_bench import AREAS, free_port, has_collscan, p99, stage_tree, winning_plan  # noqa: E402
from sheda_rt.builders.models import UNIT_STATUSES, ProjectQuery, UnitQuery  # noqa: E402
from sheda_rt.builders.service import ProjectService, unit_summary  # noqa: E402
from sheda_rt.builders.store import PaymentPlanStore, ProjectStore, UnitBatchLocks, UnitStore, project_facets  # noqa: E402
from sheda_rt.clock import Clock  # noqa: E402
from sheda_rt.database.embedded import launcher_path  # noqa: E402
from sheda_rt.database.ids import IdAllocator  # noqa: E402
from sheda_rt.listings.money import to_decimal128, to_minor  # noqa: E402

CENTRES = {"Lekki": (6.45, 3.47), "Ikoyi": (6.45, 3.43), "Victoria Island": (6.43, 3.42), "Ajah": (6.47, 3.57),
           "Wuse": (9.08, 7.47), "Maitama": (9.09, 7.50)}
UNIT_TYPES = ["apartment", "studio", "penthouse", "duplex", "terrace", "detached", "shop"]


def make_project(rng: random.Random, now) -> dict:
    area = rng.choice(AREAS)
    created = now - timedelta(days=rng.uniform(0, 700))
    doc = {"builder_id": rng.randint(1, 300), "name": f"{area} Gardens", "description": "Off-plan homes",
           "location": f"{area}, {'Abuja' if area in ('Wuse 2', 'Maitama', 'Asokoro', 'Gwarinpa', 'Jabi', 'Garki') else 'Lagos'}",
           "status": rng.choice(["planning", "under_construction", "under_construction", "completed"]),
           "amenities": ["gym", "pool"], "images": [], "state": "published" if rng.random() < 0.85 else "draft",
           "created_at": created, "updated_at": created}
    if doc["state"] == "published":
        doc["published_at"] = created
    if rng.random() < 0.7:
        lat, lng = next((c for name, c in CENTRES.items() if name in area), (6.5, 3.35))
        doc["geo"] = {"type": "Point", "coordinates": [lng + rng.uniform(-0.05, 0.05), lat + rng.uniform(-0.05, 0.05)]}
    return doc


def make_units(rng: random.Random, project_id: int, count: int, now) -> list[dict]:
    out = []
    for n in range(count):
        price = Decimal(int(math.exp(rng.uniform(math.log(5e6), math.log(5e8))))).quantize(Decimal("1"))
        status = "available" if rng.random() < 0.8 else rng.choice(UNIT_STATUSES[1:])
        out.append({"project_id": project_id, "unit_number": f"{chr(65 + n % 8)}-{n:04d}", "floor": n % 20,
                    "type": rng.choice(UNIT_TYPES), "bedrooms": rng.randint(0, 5), "bathrooms": 1,
                    "area_sqm": round(rng.uniform(30, 400), 1), "price": to_decimal128(price), "price_minor": to_minor(price),
                    "status": status, "created_at": now, "updated_at": now})
    return out


PROJECT_QUERIES = [
    ("browse, newest", {}),
    ("location 'lekki', newest", {"location": "lekki"}),
    ("near Victoria Island (3 km)", {"near": "6.43,3.42", "radius_km": 3}),
    ("under construction, cheapest first", {"status": "under_construction", "sort": "price_asc"}),
    ("one builder's projects", {"builder_id": 42}),
    ("3+ bedrooms under ₦60M, cheapest first", {"bedrooms_min": 3, "price_max": "60000000", "sort": "price_asc"}),
    ("ikoyi, exactly 2 bedrooms, dearest first", {"location": "ikoyi", "bedrooms": 2, "sort": "price_desc"}),
]
UNIT_QUERIES = [
    ("units of one project, page 1", {}),
    ("available units", {"status": "available"}),
    ("penthouses", {"type": "penthouse"}),
    ("units ₦20M-₦80M", {"price_min": "20000000", "price_max": "80000000"}),
]


async def timed(call, runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        await call()
        out.append((time.perf_counter() - t0) * 1000)
    return sorted(out)


async def main(projects: int, per_project: int, runs: int) -> int:
    root = Path(tempfile.mkdtemp(prefix="sheda-projects-bench-"))
    port = free_port()
    log = open(root / "db.log", "wb")
    proc = subprocess.Popen([launcher_path(), "--host", "127.0.0.1", "--port", str(port), "--storage-path", str(root / "db"),
                             "--log-level", "WARNING", "--cache-size", os.environ.get("BENCH_DB_CACHE", "4G")],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    client = AsyncMongoClient(f"mongodb://127.0.0.1:{port}/?directConnection=true", tz_aware=True, tzinfo=timezone.utc,
                              serverSelectionTimeoutMS=30000)
    failures = 0
    try:
        db = client["sheda_bench"]
        await db.command("ping")
        ids = IdAllocator(db)
        store, units = ProjectStore(db, ids), UnitStore(db, ids)
        for s in (store, units):
            await s.ensure_indexes()
        clock = Clock()
        # The read paths timed here (search, units, summaries) use no users, notifications or media.
        service = ProjectService(store, units, UnitBatchLocks(db), PaymentPlanStore(db, ids), users=None, notifications=None,
                                 media=None, clock=clock)
        rng = random.Random(20261129)
        now = clock.now()
        started, total_units, batch = time.perf_counter(), 0, 200
        for offset in range(0, projects, batch):
            docs = [make_project(rng, now) for _ in range(min(batch, projects - offset))]
            unit_docs: list[dict] = []
            counts = [rng.randint(10, max(10, 2 * per_project - 10)) for _ in docs]
            reserved = iter(await ids.reserve("projects", len(docs)))
            for doc, count in zip(docs, counts):
                doc["_reserved"] = next(reserved)
                made = make_units(rng, doc["_reserved"], count, now)
                summary, _ = unit_summary(made)
                doc.update(summary)
                unit_docs += made
            # Project ids are reserved first so the units can name them; the documents get what
            # ProjectStore.insert adds (rev, summary_rev, facets).
            await store.col.insert_many([{**{k: v for k, v in d.items() if k != "_reserved"}, "_id": d["_reserved"], "rev": 1,
                                          "summary_rev": 0, "facets": project_facets(d)} for d in docs], ordered=False)
            unit_ids = iter(await ids.reserve("units", len(unit_docs)))
            await units.col.insert_many([dict(u, _id=next(unit_ids)) for u in unit_docs], ordered=False)
            total_units += len(unit_docs)
            if (offset // batch) % 10 == 9:
                print(f"  loaded {offset + batch:,} projects, {total_units:,} units ({time.perf_counter() - started:.0f}s)", flush=True)
        load_s = time.perf_counter() - started
        print(f"loaded {projects:,} projects and {total_units:,} units in {load_s:.1f}s\n")
        await store.stats.refresh()  # the facet sample a server takes in the background on its first searches

        sample = await store.col.find_one({"state": "published", "facets": "*"})
        pid = sample["_id"]
        print(f"{'query':52} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'items':>6} {'pipes':>6}")
        plans: list[tuple[str, str, list]] = []
        for name, params in PROJECT_QUERIES:
            q = ProjectQuery.model_validate({"limit": 20, **params})
            trace: list = []
            page = await service.search(q, None, trace=trace)
            timings = await timed(lambda: service.search(q, None), runs)
            print(f"{name:52} {statistics.median(timings):8.1f} {p99(timings):8.1f} {timings[-1]:8.1f} {len(page['items']):6} {len(trace):6}")
            plans.append((name, "projects", trace))
            if name.startswith("browse") and page["next_cursor"]:
                q2 = ProjectQuery.model_validate({"limit": 20, **params, "cursor": page["next_cursor"]})
                t2 = await timed(lambda: service.search(q2, None), runs)
                print(f"{'  ... its page 2 (cursor)':52} {statistics.median(t2):8.1f} {p99(t2):8.1f} {t2[-1]:8.1f}")
        for name, params in UNIT_QUERIES:
            q = UnitQuery.model_validate({"limit": 20, **params})
            trace = []
            page = await service.list_units(None, pid, q, trace=trace)
            timings = await timed(lambda: service.list_units(None, pid, q), runs)
            print(f"{name:52} {statistics.median(timings):8.1f} {p99(timings):8.1f} {timings[-1]:8.1f} {len(page['items']):6} {len(trace):6}")
            plans.append((name, "units", trace))
        t = await timed(lambda: service.refresh_summary(pid), runs)
        print(f"{'unit summary rewrite (after a unit change)':52} {statistics.median(t):8.1f} {p99(t):8.1f} {t[-1]:8.1f}")

        print("\nplans (the leading $match is what the index serves):")
        for name, collection, trace in plans:
            print(f"  {name}")
            for i, pipeline in enumerate(trace):
                explained = await db.command("explain", {"aggregate": collection, "pipeline": pipeline, "cursor": {}},
                                             verbosity="queryPlanner")
                plan = winning_plan(explained)
                scan = has_collscan(plan)
                failures += scan
                if i < 1 or scan:
                    print(f"   pipeline {i + 1}/{len(trace)} driver {pipeline[0]['$match']}")
                    print("\n".join(stage_tree(plan)))
        print("\nCOLLSCAN plans:", failures, "(none)" if not failures else "(FAIL)")
    finally:
        await client.close()
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        shutil.rmtree(root, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--projects", type=int, default=10_000)
    parser.add_argument("--units-per-project", type=int, default=50)
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    sys.exit(asyncio.run(main(args.projects, args.units_per_project, args.runs)))
