"""`availability` (agents' weekly windows) and `appointments`.

One appointment per agent per slot is a unique index, not a check: a booking
carries `slot_key` = "<agent_id>:<slot start>" while it is pending or confirmed,
and the index is unique over documents that have the field (partial). Two
truly concurrent bookings of one slot race on the insert and exactly one wins;
rejecting or cancelling removes `slot_key`, which frees the slot (the hold key of
sheda_rt/database/transitions.py, which appointments share with contracts).
"""
from __future__ import annotations

from pymongo import ASCENDING, IndexModel
from pymongo.errors import DuplicateKeyError

from sheda_rt.database.transitions import TwoPartyStore, party_indexes
from sheda_rt.database.writes import update_then_get


class AvailabilityStore:
    INDEXES = [IndexModel([("agent_id", ASCENDING), ("weekday", ASCENDING), ("start_min", ASCENDING)], name="agent_day")]

    def __init__(self, db, ids):
        self.col = db["availability"]
        self.guards = db["availability_guards"]
        self.ids = ids

    # ---- optimistic concurrency per agent ----------------------------------------
    async def version(self, agent_id: int) -> int:
        """The agent's window-set version: every successful create or edit bumps it."""
        doc = await self.guards.find_one({"_id": agent_id})
        return doc["v"] if doc else 0

    async def bump(self, agent_id: int, seen: int) -> bool:
        """Compare-and-set the version from `seen` to `seen + 1`; False when another
        write got there first (the caller undoes its write and tries again)."""
        try:
            result = await self.guards.update_one({"_id": agent_id, "v": seen}, {"$inc": {"v": 1}}, upsert=(seen == 0))
        except DuplicateKeyError:  # the upsert of version 0 lost to another writer's
            return False
        return result.modified_count == 1 or result.upserted_id is not None

    async def ensure_indexes(self):
        await self.col.create_indexes(self.INDEXES)

    async def insert(self, doc: dict) -> dict:
        doc = dict(doc, _id=await self.ids.next("availability"))
        await self.col.insert_one(doc)
        return doc

    async def get(self, window_id: int) -> dict | None:
        return await self.col.find_one({"_id": window_id})

    async def of_agent(self, agent_id: int) -> list[dict]:
        docs = await self.col.find({"agent_id": agent_id}).to_list()
        order = {d: i for i, d in enumerate(("MONDAY", "TUESDAY", "WEDNESDAY", "THURSDAY", "FRIDAY", "SATURDAY", "SUNDAY"))}
        return sorted(docs, key=lambda d: (order[d["weekday"]], d["start_min"], d["_id"]))

    async def overlapping(self, agent_id: int, weekday: str, start_min: int, end_min: int, exclude_id: int) -> list[dict]:
        return await self.col.find({"agent_id": agent_id, "weekday": weekday, "start_min": {"$lt": end_min},
                                    "end_min": {"$gt": start_min}, "_id": {"$ne": exclude_id}}).to_list()

    async def covering(self, agent_id: int, weekday: str, start_min: int, end_min: int) -> dict | None:
        return await self.col.find_one({"agent_id": agent_id, "weekday": weekday, "start_min": {"$lte": start_min},
                                        "end_min": {"$gte": end_min}})

    async def replace_fields(self, window_id: int, expected: dict, changes: dict) -> dict | None:
        """Change a window only if it still has the `expected` values (used to undo a losing edit)."""
        return await update_then_get(self.col, {"_id": window_id, **expected}, {"$set": changes})

    async def delete(self, window_id: int, agent_id: int) -> bool:
        return (await self.col.delete_one({"_id": window_id, "agent_id": agent_id})).deleted_count == 1

    async def delete_if(self, window_id: int, expected: dict) -> bool:
        return (await self.col.delete_one({"_id": window_id, **expected})).deleted_count == 1


class AppointmentStore(TwoPartyStore):
    COLLECTION, NOUN, HOLD_KEY = "appointments", "appointment", "slot_key"
    HOLD_TAKEN = ("That slot is already booked with this agent; pick another time", "slot_taken")
    INDEXES = [
        IndexModel([("slot_key", ASCENDING)], unique=True, name="one_booking_per_slot",
                   partialFilterExpression={"slot_key": {"$exists": True}}),
        *party_indexes(),
    ]

    async def move(self, appointment_id: int, expected: dict, changes: dict) -> dict | None:
        """A reschedule: set `changes` (the new time and its slot_key) only while the appointment is
        still as read (`expected`); raises DuplicateKeyError when the new slot is held by another."""
        return await update_then_get(self.col, {"_id": appointment_id, **expected}, {"$set": changes})

    # The embedded database plans an index only for a filter whose every field the index holds: these ask
    # `parties_status` for a party's open (or cancelled) viewings alone and narrow them here.
    async def _of_party(self, party_id: int, status, keep, limit: int) -> list[dict]:
        found: list[dict] = []
        async for doc in self.col.find({"parties": party_id, "status": status}):
            if keep(doc):
                found.append(doc)
                if len(found) >= limit:
                    break
        return found

    async def open_of_client(self, client_id: int, agent_id: int, now, exclude_id: int | None, limit: int) -> list[dict]:
        """The client's open (pending or confirmed, upcoming) viewings with this agent but `exclude_id`, oldest
        booking first."""
        found = await self._of_party(client_id, {"$in": ["pending", "confirmed"]},
                                     lambda d: (d["client_id"] == client_id and d["agent_id"] == agent_id and d["scheduled_at"] > now
                                                and d["_id"] != exclude_id), limit)
        return sorted(found, key=lambda d: d["_id"])

    async def open_of_party(self, party_id: int, now, property_id: int | None, limit: int, *,
                            as_agent: bool = False) -> list[dict]:
        """Open (pending or confirmed) viewings still ahead where `party_id` is the client or the agent (only
        the agent with `as_agent`; of one property when given)."""
        return await self._of_party(party_id, {"$in": ["pending", "confirmed"]},
                                    lambda d: (d["scheduled_at"] > now and (property_id is None or d["property_id"] == property_id)
                                               and (not as_agent or d["agent_id"] == party_id)), limit)

    async def closed_unannounced(self, party_id: int, property_id: int | None, limit: int) -> list[dict]:
        """Viewings the system closed whose other party was not told yet (the closing run died between the two)."""
        return await self._of_party(party_id, "cancelled",
                                    lambda d: d.get("close_notice_pending") and (property_id is None or d["property_id"] == property_id),
                                    limit)

    async def announced(self, appointment_id: int) -> None:
        await self.col.update_one({"_id": appointment_id}, {"$unset": {"close_notice_pending": ""}})

    async def discard(self, appointment_id: int) -> None:
        """Undo a booking that was never announced (it lost the open-viewings check to concurrent ones)."""
        await self.col.delete_one({"_id": appointment_id, "status": "pending"})
