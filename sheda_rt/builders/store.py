"""The `projects`, `units`, `unit_batch_locks` and `payment_plans` collections.

A unit held by a booking carries `booking_id` (set by `hold`, dropped when it is available
again); bookings move only the unit they hold (`move_held`, sheda_rt/builders/bookings.py).

Projects are searched through the shared faceted search (`sheda_rt/search.py`):
the driving state is `state` (draft | published), the facets are `"*"`,
`"b:<builder id>"`, `"s:<status>"`, the location word prefixes and the grid cells,
and the price key is `price_minor`, the lowest price of an available unit (absent
when none is available, so price sorts list only projects with something to sell).
What the project's units add up to (counts by status, price range, the
`avail` pairs of price and bedrooms the filters match) is a summary kept on the
project document and rewritten after every unit change (`set_summary`).

Units: one secondary index, `(project_id, unit_number)` unique. It enforces the
rule in the data and serves every read: a page is `{project_id, unit_number: >last}`
(index-shaped, the embedded planner walks it) with the other filters as a residual
stage; a duplicate check is `{project_id, unit_number: {$in}}`.
"""
from __future__ import annotations

from pymongo import ASCENDING, DESCENDING, IndexModel
from pymongo.errors import BulkWriteError, DuplicateKeyError

from sheda_rt.database.writes import update_then_get
from sheda_rt.errors import ValidationFailed
from sheda_rt.pagination import decode_cursor, encode_cursor
from sheda_rt.search import FacetedSearch, FacetStats, SearchPlan, geo_facets, location_facets, refacet_once

IN_CHUNK = 200  # values per $in: the embedded database matches $in by scanning the list


def project_facets(doc: dict) -> list[str]:
    out = {"*", f"b:{doc['builder_id']}", f"s:{doc['status']}"}
    out.update(geo_facets(doc.get("geo")))
    out.update(location_facets(doc.get("location", "")))
    return sorted(out)


class ProjectStore:
    INDEXES = [
        IndexModel([("state", ASCENDING), ("facets", ASCENDING), ("created_at", DESCENDING), ("_id", DESCENDING)],
                   name="search_newest"),
        IndexModel([("state", ASCENDING), ("facets", ASCENDING), ("price_minor", ASCENDING), ("_id", ASCENDING)],
                   name="search_price"),
    ]

    # Bump when project_facets changes: projects stored before are re-faceted once at startup (only those whose
    # facets change are written). 2: location words folded (accents, "ß"), as GET /projects folds what is typed;
    # 3: location words read Turkish "ı" as "i".
    FACETS_VERSION = 3

    def __init__(self, db, ids):
        self.col = db["projects"]
        self.meta = db["meta"]
        self.ids = ids
        # Which of a request's conditions is rarest (the driver), and where price slices should cut: a sample.
        self.stats = FacetStats(self.col, lambda: ids.current("projects"))
        self.finder = FacetedSearch(self.col, state_field="state", date_field="created_at", price_field="price_minor",
                                    stats=self.stats)

    async def ensure_indexes(self):
        await self.col.create_indexes(self.INDEXES)
        await self.refacet_if_stale()

    async def refacet_if_stale(self, batch: int = 1000) -> int:
        """Recompute `facets` of the projects whose facets an older project_facets made (once per FACETS_VERSION,
        writing only those that change: search.py refacet_once); returns how many were rewritten."""
        return await refacet_once(self.col, self.meta, marker="projects.facets", version=self.FACETS_VERSION,
                                  top=await self.ids.current("projects"), fields={"builder_id": 1, "status": 1, "geo": 1, "location": 1},
                                  facets_of=project_facets, label="project", batch=batch)

    async def insert(self, doc: dict) -> dict:
        doc = dict(doc, _id=await self.ids.next("projects"), rev=1, summary_rev=0, facets=project_facets(doc))
        await self.col.insert_one(doc)
        return doc

    async def get(self, project_id: int) -> dict | None:
        return await self.col.find_one({"_id": project_id})

    async def update_if_rev(self, project_id: int, rev: int, merged: dict, changes: dict, unset: list[str]) -> dict | None:
        """Apply `changes` only if nobody changed the project since we read revision `rev`
        (the status rule and the facets were decided from that revision)."""
        update: dict = {"$set": dict(changes, facets=project_facets(merged)), "$inc": {"rev": 1}}
        if unset:
            update["$unset"] = {k: "" for k in unset}
        return await update_then_get(self.col, {"_id": project_id, "rev": rev}, update)

    async def push_image(self, project_id: int, url: str, max_images: int, now) -> dict | None:
        """Append an image unless the project already has `max_images` (the count is in the
        filter, so racing uploads never exceed it); None when it is full."""
        return await update_then_get(self.col, {"_id": project_id, f"images.{max_images - 1}": {"$exists": False}},
                                     {"$push": {"images": url}, "$set": {"updated_at": now}, "$inc": {"rev": 1}})

    async def publish(self, project_id: int, now) -> dict | None:
        """draft → published, once: None when it was not a draft any more."""
        return await update_then_get(self.col, {"_id": project_id, "state": "draft"},
                                     {"$set": {"state": "published", "published_at": now, "updated_at": now}, "$inc": {"rev": 1}})

    async def hide(self, project_id: int, now, hidden_reason: str) -> dict | None:
        """A published project off the public lists (its builder's account left: builders/builder_status.py), marked
        `hidden_reason`; only one published and not hidden already (None otherwise). `state` stays published."""
        return await update_then_get(self.col, {"_id": project_id, "state": "published", "hidden_reason": {"$exists": False}},
                                     {"$set": {"hidden_reason": hidden_reason, "updated_at": now}, "$inc": {"rev": 1}})

    async def unhide(self, project_id: int, now, hidden_reason: str) -> dict | None:
        """Back on the public lists: only a project hidden for `hidden_reason` (None otherwise)."""
        return await update_then_get(self.col, {"_id": project_id, "hidden_reason": hidden_reason},
                                     {"$unset": {"hidden_reason": ""}, "$set": {"updated_at": now}, "$inc": {"rev": 1}})

    async def builder_project_ids(self, builder_id: int, *, hidden_reason: str | None = None, limit: int = 100) -> list[int]:
        """Up to `limit` of a builder's published projects not hidden (or, with `hidden_reason`, hidden for it). On
        index search_newest (state, the builder's facet), the hiding as a second `$match`."""
        pipeline = self.builder_project_pipeline(builder_id, hidden_reason=hidden_reason, limit=limit)
        return [d["_id"] for d in await (await self.col.aggregate(pipeline)).to_list()]

    @staticmethod
    def builder_project_pipeline(builder_id: int, *, hidden_reason: str | None = None, limit: int = 100) -> list[dict]:
        cond = {"hidden_reason": {"$exists": False}} if hidden_reason is None else {"hidden_reason": hidden_reason}
        return [{"$match": {"state": "published", "facets": f"b:{builder_id}"}}, {"$match": cond}, {"$limit": limit},
                {"$project": {"_id": 1}}]

    def published_builder_ids(self, batch: int = 500):
        """`builder_id` of every published project not hidden, as a cursor read `batch` at a time (one pass, for a
        backfill at a start)."""
        return self.col.find({"state": "published", "hidden_reason": {"$exists": False}}, projection={"builder_id": 1},
                             batch_size=batch)

    async def set_summary(self, project_id: int, summary_rev: int, summary: dict, unset: list[str]) -> bool:
        """Store a unit summary computed after reading `summary_rev`; False when another summary
        landed meanwhile (the caller computes again, so the last one written is never stale)."""
        update: dict = {"$set": summary, "$inc": {"summary_rev": 1}}
        if unset:
            update["$unset"] = {k: "" for k in unset}
        result = await self.col.update_one({"_id": project_id, "summary_rev": summary_rev}, update)
        return result.matched_count == 1

    async def search(self, plan: SearchPlan, now, serialize, trace: list | None = None) -> dict:
        return await self.finder.search(plan, now, serialize, trace=trace)


class UnitStore:
    INDEXES = [IndexModel([("project_id", ASCENDING), ("unit_number", ASCENDING)], unique=True, name="project_unit_number")]
    SORT = {"unit_number": 1}

    def __init__(self, db, ids):
        self.col = db["units"]
        self.ids = ids

    async def ensure_indexes(self):
        await self.col.create_indexes(self.INDEXES)

    async def taken_numbers(self, project_id: int, numbers: list[str]) -> list[str]:
        """Which of `numbers` the project already has."""
        taken: list[str] = []
        for i in range(0, len(numbers), IN_CHUNK):
            flt = {"project_id": project_id, "unit_number": {"$in": numbers[i:i + IN_CHUNK]}}
            taken.extend([d["unit_number"] async for d in self.col.find(flt, projection={"unit_number": 1})])
        return taken

    async def count(self, project_id: int) -> int:
        return await self.col.count_documents({"project_id": project_id})

    async def insert_batch(self, docs: list[dict]) -> list[dict] | None:
        """All of `docs` or none: None (and nothing left stored) when a unit number was taken.
        Callers hold the project's batch lock, so this is the guard of last resort."""
        ids = await self.ids.reserve("units", len(docs))
        out = [dict(doc, _id=i) for doc, i in zip(docs, ids)]
        try:
            await self.col.insert_many(out, ordered=True)
        except (BulkWriteError, DuplicateKeyError) as exc:
            errors = exc.details.get("writeErrors", []) if isinstance(exc, BulkWriteError) else [{"code": 11000}]
            await self.delete_ids([d["_id"] for d in out])
            if errors and all(e.get("code") == 11000 for e in errors):
                return None
            raise
        return out

    async def delete_batch(self, project_id: int, batch: str) -> int:
        """Remove what one batch stored (its units carry the batch's lock token)."""
        return (await self.col.delete_many({"project_id": project_id, "batch": batch})).deleted_count

    async def delete_ids(self, ids: list[int]) -> None:
        for i in range(0, len(ids), IN_CHUNK):
            await self.col.delete_many({"_id": {"$in": ids[i:i + IN_CHUNK]}})

    async def get(self, unit_id: int) -> dict | None:
        return await self.col.find_one({"_id": unit_id})

    async def set_status(self, unit_id: int, project_id: int, expected: str, status: str, now) -> dict | None:
        return await update_then_get(self.col, {"_id": unit_id, "project_id": project_id, "status": expected},
                                     {"$set": {"status": status, "updated_at": now}})

    async def hold(self, unit_id: int, booking_id: int, now) -> dict | None:
        """available -> reserved for booking `booking_id`, in one conditional update: of two
        bookings racing for a unit (on any processes) exactly one gets it; None for the other."""
        return await update_then_get(self.col, {"_id": unit_id, "status": "available"},
                                     {"$set": {"status": "reserved", "booking_id": booking_id, "updated_at": now}})

    async def move_held(self, unit_id: int, booking_id: int, from_states: list[str], status: str, now) -> dict | None:
        """Move a unit that booking `booking_id` holds (reserved -> booked -> sold, or back to
        available, which lets it go); None when it is not held by that booking in those states."""
        update: dict = {"$set": {"status": status, "updated_at": now}}
        if status == "available":
            update["$unset"] = {"booking_id": ""}
        return await update_then_get(self.col, {"_id": unit_id, "booking_id": booking_id, "status": {"$in": from_states}}, update)

    async def lowest_price(self, project_id: int) -> int | None:
        """The lowest price (kobo) of the project's units not sold (those can still be booked), or None."""
        docs = await self.col.find({"project_id": project_id, "status": {"$ne": "sold"}}, projection={"price_minor": 1},
                                   sort=[("price_minor", ASCENDING)], limit=1).to_list()
        return int(docs[0]["price_minor"]) if docs else None

    async def for_summary(self, project_id: int) -> list[dict]:
        return await self.col.find({"project_id": project_id}, projection={"status": 1, "price_minor": 1, "bedrooms": 1}).to_list()

    def page_pipeline(self, project_id: int, residual: dict, limit: int, cursor: str | None) -> list[dict]:
        """An index-shaped driver `{project_id, unit_number: > last}`, then the filters."""
        driver: dict = {"project_id": project_id}
        if cursor:
            tag, last = decode_cursor(cursor, 2)
            if tag != "u" or not isinstance(last, str):
                raise ValidationFailed.single("cursor", "is not a cursor for this listing")
            driver["unit_number"] = {"$gt": last}
        return [{"$match": driver}] + ([{"$match": residual}] if residual else []) + [
            {"$sort": self.SORT}, {"$limit": limit + 1}]

    async def page(self, project_id: int, residual: dict, limit: int, cursor: str | None, serialize,
                   trace: list | None = None) -> dict:
        """Units of a project ordered by unit_number (as text), keyset-paginated."""
        pipeline = self.page_pipeline(project_id, residual, limit, cursor)
        if trace is not None:
            trace.append(pipeline)
        docs = await (await self.col.aggregate(pipeline)).to_list()
        more = len(docs) > limit
        docs = docs[:limit]
        next_cursor = encode_cursor(["u", docs[-1]["unit_number"]]) if more and docs else None
        return {"items": [serialize(d) for d in docs], "next_cursor": next_cursor}


class UnitBatchLocks:
    """One holder at a time per project for adding units, across processes: a document whose
    `_id` is the project id. Without it two overlapping batches could each store part of
    themselves before meeting the other's numbers in the unique index, and both roll back.
    A holder that died (or lost the database mid-insert) lets go when `until` passes; the
    batch that takes over learns its token, so it can remove what that holder left."""

    def __init__(self, db):
        self.col = db["unit_batch_locks"]

    async def ensure_indexes(self):
        return None

    async def acquire(self, project_id: int, token: str, now, until) -> tuple[bool, str | None]:
        """(taken, the token of a lapsed holder this call took over, if any)."""
        lapsed = None
        for _ in range(3):
            try:
                await self.col.insert_one({"_id": project_id, "token": token, "until": until})
                return True, lapsed
            except DuplicateKeyError:
                held = await self.col.find_one({"_id": project_id})
                if held is None:  # released meanwhile: try again
                    continue
                if held["until"] > now:
                    return False, None
                # Its time ran out: remove exactly that holder's lock (a racing taker removes it once).
                if (await self.col.delete_one({"_id": project_id, "token": held["token"]})).deleted_count:
                    lapsed = held["token"]
        return False, lapsed

    async def release(self, project_id: int, token: str) -> None:
        await self.col.delete_one({"_id": project_id, "token": token})


class PaymentPlanStore:
    INDEXES = [IndexModel([("project_id", ASCENDING), ("_id", ASCENDING)], name="project_plans")]

    def __init__(self, db, ids):
        self.col = db["payment_plans"]
        self.ids = ids

    async def ensure_indexes(self):
        await self.col.create_indexes(self.INDEXES)

    async def insert(self, doc: dict) -> dict:
        doc = dict(doc, _id=await self.ids.next("payment_plans"))
        await self.col.insert_one(doc)
        return doc

    async def get(self, plan_id: int) -> dict | None:
        return await self.col.find_one({"_id": plan_id})

    async def for_project(self, project_id: int, limit: int) -> list[dict]:
        return await self.col.find({"project_id": project_id}, sort=[("_id", ASCENDING)], limit=limit).to_list()
