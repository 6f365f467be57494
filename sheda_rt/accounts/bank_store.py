"""Agents' bank details (`account_info`), one document per agent keyed by user id.

Kept apart from `users` so that the user documents every request loads for
auth never carry bank details, and so a profile serializer cannot leak them.
"""
from __future__ import annotations


from sheda_rt.database.writes import update_then_get


class AccountInfoStore:
    INDEXES: list = []  # keyed by _id (the user id): nothing else is queried

    def __init__(self, db):
        self.col = db["account_info"]

    async def ensure_indexes(self):
        return None

    async def get(self, user_id: int) -> dict | None:
        return await self.col.find_one({"_id": user_id})

    async def put(self, user_id: int, fields: dict, now) -> dict:
        return await update_then_get(
            self.col, {"_id": user_id},
            {"$set": {**fields, "updated_at": now}, "$setOnInsert": {"created_at": now}},
            upsert=True,
        )

    async def delete(self, user_id: int) -> bool:
        return (await self.col.delete_one({"_id": user_id})).deleted_count == 1
