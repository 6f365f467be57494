"""The `reports` collection: one document per report.

`open_key` ("reporter:target_type:target_id") is set only while a report is open, under a
partial unique index: one open report per reporter per target is a property of the data
(two concurrent duplicates cannot both be stored), and a handled report frees the key.
Indexes (each entry costs the embedded database ~0.2 ms per write; reports are rare):
`open_key` (partial) and `status_id` (status, _id) for the queue, keyset-paged on _id.
"""
from __future__ import annotations

from pymongo import ASCENDING, DESCENDING, IndexModel
from pymongo.errors import DuplicateKeyError

from sheda_rt.database.writes import update_then_get
from sheda_rt.pagination import PageQuery, paginate


def open_key(reporter_id: int, target_type: str, target_id: int) -> str:
    return f"{reporter_id}:{target_type}:{target_id}"


class DuplicateReport(Exception):
    """The reporter already has an open report of this target."""


class ReportStore:
    INDEXES = [
        IndexModel([("open_key", ASCENDING)], name="open_key", unique=True,
                   partialFilterExpression={"open_key": {"$exists": True}}),
        IndexModel([("status", ASCENDING), ("_id", ASCENDING)], name="status_id"),
    ]

    def __init__(self, db, ids):
        self.col = db["reports"]
        self.ids = ids

    async def ensure_indexes(self):
        await self.col.create_indexes(self.INDEXES)

    async def insert(self, doc: dict) -> dict:
        doc = dict(doc, _id=await self.ids.next("reports"),
                   open_key=open_key(doc["reporter_id"], doc["target_type"], doc["target_id"]))
        try:
            await self.col.insert_one(doc)
        except DuplicateKeyError:
            raise DuplicateReport() from None
        return doc

    async def get(self, report_id: int) -> dict | None:
        return await self.col.find_one({"_id": report_id})

    async def handle(self, report_id: int, status: str, fields: dict) -> dict | None:
        """open -> status (the expected state is in the filter: of two moderators acting at
        once exactly one moves it); None when it is not open (any more)."""
        return await update_then_get(self.col, {"_id": report_id, "status": "open"},
                                     {"$set": {"status": status, **fields}, "$unset": {"open_key": ""}})

    async def page(self, status: str, page: PageQuery, serialize) -> dict:
        # The queue (open) oldest first, what was handled newest first.
        sort = [("_id", ASCENDING if status == "open" else DESCENDING)]
        return await paginate(self.col, {"status": status}, sort, page, serialize)
