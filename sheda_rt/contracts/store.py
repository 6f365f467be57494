"""The `contracts` collection.

Transitions are single conditional updates whose filter names the expected
state, so two requests racing on one contract cannot both move it. `open_key`
("<property>:<client>") exists only while a contract awaits payment; a unique
partial index on it means one open contract per client and property.
"""
from __future__ import annotations

from pymongo import ASCENDING, DESCENDING, IndexModel
from pymongo.errors import DuplicateKeyError

from sheda_rt.database.writes import update_then_get

from sheda_rt.errors import Conflict
from sheda_rt.pagination import paginate

NEWEST = [("_id", DESCENDING)]
OPEN_STATES = ["awaiting_payment", "payment_pending"]


class ContractStore:
    INDEXES = [
        IndexModel([("open_key", ASCENDING)], unique=True, name="one_open_contract_per_client_property",
                   partialFilterExpression={"open_key": {"$exists": True}}),
        IndexModel([("parties", ASCENDING), ("_id", DESCENDING)], name="parties_newest"),
        IndexModel([("parties", ASCENDING), ("status", ASCENDING), ("_id", DESCENDING)], name="parties_status"),
        IndexModel([("status", ASCENDING), ("end_date", ASCENDING)], name="expiry_due"),
        IndexModel([("property_id", ASCENDING), ("status", ASCENDING)], name="property_status"),
    ]

    def __init__(self, db, ids):
        self.col = db["contracts"]
        self.ids = ids

    async def ensure_indexes(self):
        await self.col.create_indexes(self.INDEXES)

    async def insert(self, doc: dict) -> dict:
        doc = dict(doc, _id=await self.ids.next("contracts"))
        try:
            await self.col.insert_one(doc)
        except DuplicateKeyError:
            raise Conflict("You already have an open contract for this property", "contract_exists")
        return doc

    async def get(self, contract_id: int) -> dict | None:
        return await self.col.find_one({"_id": contract_id})

    async def transition(self, contract_id: int, who: dict, from_states: list[str], to_state: str, now,
                         extra: dict | None = None, close: bool = False) -> dict | None:
        update: dict = {"$set": {"status": to_state, "updated_at": now, **(extra or {})}}
        if close:
            update["$unset"] = {"open_key": ""}
        return await update_then_get(self.col, {"_id": contract_id, "status": {"$in": from_states}, **who}, update)

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

    async def page(self, user_id: int, status: str | None, role: str | None, page, serialize) -> dict:
        query: dict = {"parties": user_id}
        if status:
            query["status"] = status
        if role:
            query[f"{role}_id"] = user_id
        return await paginate(self.col, query, NEWEST, page, serialize)
