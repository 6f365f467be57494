"""The `jobs` collection: one document per job, claimed with conditional `update_one`s.

A job's `_id` is its unique key, so an idempotent enqueue costs no index of its own:
inserting a key that exists fails on the `_id` index and nothing is duplicated.

One secondary index, (status, run_at, _id), serves every read the runner and the admin listing
make. `run_at` means "when to look at this job next": for a pending job the time it is due, for a
running job the expiry of its lease (the claim moves `run_at` to the lease's end), for a finished
one when it ended. So "due work" and "leases of dead processes" are the same index-shaped query,
`{status, run_at <= now}`. The embedded planner uses an index only for a filter on a prefix of its
keys with at most the last one a range (measured: `{status, kind, run_at<=}` on a (status, run_at,
kind) index, `{status, _id<}` and the `$or` of a keyset cursor all scan the collection), and
`find_one_and_update` scans the collection there, so claims are `find` + conditional `update_one`
with the expected status and `run_at` in the filter (of racing claimers exactly one matches).
The kind is checked by the runner, not the query. Each write touches two index entries at most
(_id and this one).
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from pymongo import ASCENDING, DESCENDING, IndexModel
from pymongo.errors import DuplicateKeyError

from sheda_rt.errors import ValidationFailed
from sheda_rt.pagination import PageQuery, decode_cursor, encode_cursor

PENDING, RUNNING, DONE, FAILED, CANCELLED = "pending", "running", "done", "failed", "cancelled"
STATUSES = (PENDING, RUNNING, DONE, FAILED, CANCELLED)
ADMIN_SORT = [("run_at", DESCENDING), ("_id", DESCENDING)]


class JobStore:
    INDEXES = [IndexModel([("status", ASCENDING), ("run_at", ASCENDING), ("_id", ASCENDING)], name="status_run_at")]

    def __init__(self, db):
        self.col = db["jobs"]

    async def ensure_indexes(self):
        await self.col.create_indexes(self.INDEXES)

    async def insert(self, doc: dict) -> bool:
        """False when a job with this key exists already (the existing one is kept)."""
        try:
            await self.col.insert_one(doc)
            return True
        except DuplicateKeyError:
            return False

    async def get(self, key: str) -> dict | None:
        return await self.col.find_one({"_id": key})

    async def due(self, status: str, now: datetime, limit: int, after: tuple[datetime, str] | None = None) -> list[dict]:
        """Pending jobs that are due, or running jobs whose lease has expired (by `status`), oldest
        first by (run_at, _id), after the job `after` names as (run_at, _id) (the runner walks past
        kinds it does not run). A keyset on both keys, in two index-shaped reads (the rest of the
        jobs due at `after`'s run_at, then those due later): on run_at alone, more jobs due at one
        instant than fit a batch (a broadcast's pushes, or jobs of a kind this process does not run)
        filled every read with the same ones and hid the jobs behind them."""
        order = [("run_at", ASCENDING), ("_id", ASCENDING)]
        if after is None:
            return await self.col.find({"status": status, "run_at": {"$lte": now}}, sort=order, limit=limit).to_list()
        at, key = after
        docs = []
        if at <= now:
            docs = await self.col.find({"status": status, "run_at": at, "_id": {"$gt": key}}, sort=[("_id", ASCENDING)],
                                       limit=limit).to_list()
        if len(docs) < limit:
            docs += await self.col.find({"status": status, "run_at": {"$gt": at, "$lte": now}}, sort=order,
                                        limit=limit - len(docs)).to_list()
        return docs

    async def pending(self, limit: int) -> list[dict]:
        """The pending jobs, due or not, oldest first by (run_at, _id), at most `limit`, with only
        their kind and run_at: the queue's gauges (JobRunner.observe), in one read of the
        (status, run_at) index."""
        far = datetime(9999, 1, 1, tzinfo=timezone.utc)
        return await self.col.find({"status": PENDING, "run_at": {"$lte": far}}, {"kind": 1, "run_at": 1},
                                   sort=[("run_at", ASCENDING), ("_id", ASCENDING)], limit=limit, batch_size=limit).to_list()

    async def count_pending(self) -> int:
        return await self.col.count_documents({"status": PENDING})

    async def claim(self, doc: dict, owner: str, lease_until: datetime, now: datetime) -> bool:
        """Take `doc` as it was read: only if nobody changed its status or run_at since."""
        result = await self.col.update_one(
            {"_id": doc["_id"], "status": doc["status"], "run_at": doc["run_at"]},
            {"$set": {"status": RUNNING, "run_at": lease_until, "lease": {"owner": owner, "expires": lease_until},
                      "started_at": now, "updated_at": now},
             "$inc": {"attempts": 1}})
        return result.modified_count == 1

    async def renew(self, key: str, owner: str, lease_until: datetime, new_until: datetime) -> bool:
        result = await self.col.update_one(
            {"_id": key, "status": RUNNING, "run_at": lease_until, "lease.owner": owner},
            {"$set": {"run_at": new_until, "lease.expires": new_until}})
        return result.modified_count == 1

    async def finish(self, key: str, owner: str, lease_until: datetime, fields: dict) -> bool:
        """Record how a run ended, if this owner's lease is still the job's (a runner whose lease
        lapsed and was taken over must not overwrite the new holder's state)."""
        result = await self.col.update_one(
            {"_id": key, "status": RUNNING, "run_at": lease_until, "lease.owner": owner},
            {"$set": fields, "$unset": {"lease": ""}})
        return result.modified_count == 1

    async def rearm(self, doc: dict, fields: dict) -> bool:
        """A finished job (done, failed, cancelled) made pending again under its key."""
        result = await self.col.update_one({"_id": doc["_id"], "status": doc["status"], "run_at": doc["run_at"]},
                                           {"$set": fields, "$unset": {"lease": "", "last_error": "", "result": ""}})
        return result.modified_count == 1

    async def bring_forward(self, key: str, run_at: datetime, now: datetime) -> bool:
        """Only a pending job due later: one conditional write (the (status, run_at, _id) index's keys)."""
        result = await self.col.update_one({"_id": key, "status": PENDING, "run_at": {"$gt": run_at}},
                                           {"$set": {"run_at": run_at, "updated_at": now}})
        return result.modified_count == 1

    async def cancel(self, key: str, now: datetime) -> bool:
        result = await self.col.update_one({"_id": key, "status": PENDING},
                                           {"$set": {"status": CANCELLED, "run_at": now, "updated_at": now}})
        return result.modified_count == 1

    async def page(self, status: str, page: PageQuery, serialize) -> dict:
        """A keyset page of one status, most recent `run_at` first. The cursor is (run_at, _id) of the
        last item; the next page asks for `run_at <= cursor` (index-shaped, see above) and skips the
        few jobs of the same millisecond already shown."""
        flt: dict = {"status": status}
        after: list | None = None
        if page.cursor:
            after = decode_cursor(page.cursor, 2)
            if not isinstance(after[0], datetime) or not isinstance(after[1], str):
                raise ValidationFailed.single("cursor", "is not a cursor for this listing")
            # run_at < cursor + 1 ms, i.e. <= the cursor (dates are stored to the millisecond): the embedded database
            # answers `$lte` on this (status, run_at, _id) index as `$lt`, which lost the rest of the cursor's instant.
            flt["run_at"] = {"$lt": after[0] + timedelta(milliseconds=1)}
        docs: list[dict] = []
        cursor = self.col.find(flt, sort=ADMIN_SORT, batch_size=page.limit + 8)
        try:
            async for doc in cursor:
                if after is not None and doc["run_at"] == after[0] and doc["_id"] >= after[1]:
                    continue
                docs.append(doc)
                if len(docs) > page.limit:
                    break
        finally:
            await cursor.close()
        more = len(docs) > page.limit
        docs = docs[: page.limit]
        next_cursor = encode_cursor([docs[-1]["run_at"], docs[-1]["_id"]]) if more else None
        return {"items": [serialize(d) for d in docs], "next_cursor": next_cursor}
