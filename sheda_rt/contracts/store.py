"""The `contracts` collection.

Transitions are single conditional updates whose filter names the expected
state, so two requests racing on one contract cannot both move it. `open_key`
("<property>:<client>") exists only while a contract awaits payment; a unique
partial index on it means one open contract per client and property. Both are the
mechanism of sheda_rt/database/transitions.py, which contracts share with appointments.
"""
from __future__ import annotations

from pymongo import ASCENDING, IndexModel

from sheda_rt.database.transitions import TwoPartyStore, party_indexes

OPEN_STATES = ["awaiting_payment", "payment_pending"]


class ContractStore(TwoPartyStore):
    COLLECTION, NOUN, HOLD_KEY = "contracts", "contract", "open_key"
    HOLD_TAKEN = ("You already have an open contract for this property", "contract_exists")
    INDEXES = [
        IndexModel([("open_key", ASCENDING)], unique=True, name="one_open_contract_per_client_property",
                   partialFilterExpression={"open_key": {"$exists": True}}),
        *party_indexes(),
        IndexModel([("status", ASCENDING), ("end_date", ASCENDING)], name="expiry_due"),
        IndexModel([("property_id", ASCENDING), ("status", ASCENDING)], name="property_status"),
    ]

    async def due_ids(self, now, limit: int = 1000) -> list[int]:
        """Active contracts whose end_date has passed."""
        docs = await self.col.find({"status": "active", "end_date": {"$lte": now}}, projection={"_id": 1}, limit=limit).to_list()
        return [d["_id"] for d in docs]

    async def unreleased(self) -> list[dict]:
        """Expired contracts whose property was not yet made available (a crash in between)."""
        return await self.col.find({"status": "expired", "property_released": False}).to_list()

    async def mark_released(self, contract_id: int) -> None:
        await self.col.update_one({"_id": contract_id}, {"$set": {"property_released": True}})

    async def open_on_property(self, property_id: int) -> list[dict]:
        return await self.col.find({"property_id": property_id, "status": {"$in": OPEN_STATES}}).to_list()
