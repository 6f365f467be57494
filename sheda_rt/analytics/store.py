"""Per-listing daily counters (`listing_stats`) and the once-per-viewer-per-day view log (`listing_views`).

A view is counted at most once per viewer (account, or hashed address when signed
out) per listing per UTC day: the view log's `_id` is that key, so the duplicate-key
refusal of its insert is the check (no secondary index), and its entries expire
after two days (TTL). Counters are one document per listing and day, `$inc`ed with
an upsert; the analytics read them by (agent_id, day).
"""
from __future__ import annotations

from datetime import timedelta

from pymongo import ASCENDING, IndexModel
from pymongo.errors import DuplicateKeyError

COUNTED = ("views", "favourites", "inquiries")


class ListingStatsStore:
    INDEXES = [IndexModel([("agent_id", ASCENDING), ("day", ASCENDING)], name="agent_day")]
    VIEW_INDEXES = [IndexModel([("expires_at", ASCENDING)], expireAfterSeconds=0, name="expire")]

    def __init__(self, db):
        self.col = db["listing_stats"]
        self.views = db["listing_views"]

    async def ensure_indexes(self):
        await self.col.create_indexes(self.INDEXES)
        await self.views.create_indexes(self.VIEW_INDEXES)

    async def first_view(self, property_id: int, day: str, viewer: str, now) -> bool:
        """True the first time this viewer sees this listing on this day."""
        try:
            await self.views.insert_one({"_id": f"{property_id}:{day}:{viewer}", "expires_at": now + timedelta(days=2)})
        except DuplicateKeyError:
            return False
        return True

    async def bump(self, property_id: int, agent_id: int, day: str, counter: str) -> None:
        assert counter in COUNTED
        flt = {"_id": f"{property_id}:{day}"}
        update = {"$inc": {counter: 1}, "$setOnInsert": {"property_id": property_id, "agent_id": agent_id, "day": day}}
        try:
            await self.col.update_one(flt, update, upsert=True)
        except DuplicateKeyError:  # two first bumps of the day raced: the other one created it
            await self.col.update_one(flt, {"$inc": {counter: 1}})

    async def of_agent(self, agent_id: int, first_day: str, last_day: str) -> list[dict]:
        return await self.col.find({"agent_id": agent_id, "day": {"$gte": first_day, "$lte": last_day}}).to_list()
