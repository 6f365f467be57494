"""The `leads` collection: one document per inquiry, which is the lead it became.

Every state change is a conditional `update_one` (the expected state in its filter)
followed by a `find_one` by `_id` (sheda_rt/database/writes.py), so two agents'
screens racing on one lead can never both move it, and the embedded database
never scans the collection for it.
"""
from __future__ import annotations

from pymongo import DESCENDING, IndexModel

from sheda_rt.database.writes import update_then_get
from sheda_rt.pagination import PageQuery, paginate

SORT = [("_id", DESCENDING)]


class LeadStore:
    INDEXES = [
        # GET /leads: an agent's own (all, or one status), and an admin's (all, or one status), newest first.
        IndexModel([("agent_id", 1), ("_id", DESCENDING)], name="agent_newest"),
        IndexModel([("agent_id", 1), ("status", 1), ("_id", DESCENDING)], name="agent_status_newest"),
        IndexModel([("status", 1), ("_id", DESCENDING)], name="status_newest"),
        # ?project_id= (a builder's, or an admin's). Not partial: the embedded planner never picks a partial index
        # unless hinted (explained: COLLSCAN), and inquiries are few (at most 5 per address per hour).
        IndexModel([("project_id", 1), ("_id", DESCENDING)], name="project_newest"),
    ]

    def __init__(self, db, ids):
        self.col = db["leads"]
        self.ids = ids

    async def ensure_indexes(self):
        await self.col.create_indexes(self.INDEXES)

    async def insert(self, doc: dict) -> dict:
        doc = dict(doc, _id=await self.ids.next("leads"))
        await self.col.insert_one(doc)
        return doc

    async def get(self, lead_id: int) -> dict | None:
        return await self.col.find_one({"_id": lead_id})

    async def page(self, agent_id: int | None, status: str | None, page: PageQuery, serialize, project_id: int | None = None) -> dict:
        query: dict = {}
        if agent_id is not None:
            query["agent_id"] = agent_id
        if status is not None:
            query["status"] = status
        if project_id is not None:
            # project_newest walks only that project's leads; the owner and status are checked on those (the
            # embedded planner uses an index only when every condition of the filter is one of its keys).
            return await paginate(self.col, {"project_id": project_id}, SORT, page, serialize, residual=query)
        return await paginate(self.col, query, SORT, page, serialize)

    async def move(self, lead_id: int, from_status: str, to_status: str, actor_id: int, now) -> dict | None:
        """from_status -> to_status, only if the lead is still in from_status."""
        return await update_then_get(
            self.col, {"_id": lead_id, "status": from_status},
            {"$set": {"status": to_status, "updated_at": now},
             "$push": {"status_history": {"from": from_status, "to": to_status, "by": actor_id, "at": now}}})

    async def add_note(self, lead_id: int, note: dict, max_notes: int, now) -> dict | None:
        """Append a note unless the lead already has max_notes (the count is in the filter)."""
        return await update_then_get(
            self.col, {"_id": lead_id, f"notes.{max_notes - 1}": {"$exists": False}},
            {"$push": {"notes": note}, "$set": {"updated_at": now}})

    async def claim_conversation(self, lead_id: int, now, stale_before) -> bool:
        """Mark the lead as starting its conversation; False if it already has one, or another request
        started one since `stale_before` (an older start whose message was never recorded is a process that
        died mid-send: the claim is taken over)."""
        result = await self.col.update_one(
            {"_id": lead_id, "$or": [{"conversation": None},
                                     {"conversation.message_id": {"$exists": False}, "conversation.starting_at": {"$lt": stale_before}}]},
            {"$set": {"conversation": {"starting_at": now}}})
        return result.modified_count == 1

    async def release_conversation(self, lead_id: int) -> None:
        await self.col.update_one({"_id": lead_id, "conversation.message_id": {"$exists": False}}, {"$set": {"conversation": None}})

    async def set_conversation(self, lead_id: int, message_id: int, now) -> dict | None:
        return await update_then_get(
            self.col, {"_id": lead_id}, {"$set": {"conversation": {"message_id": message_id, "started_at": now}, "updated_at": now}})
