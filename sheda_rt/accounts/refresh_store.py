"""Refresh tokens issued, by `jti`, for rotation.

Every refresh token is recorded when issued. Using one flips `used_at` from
null in a single conditional update, so two concurrent refreshes with the same
token cannot both win. A token presented again after it was used means it
leaked (or a client is buggy): the caller revokes the whole family. Records
expire with the token (TTL index), so the collection stays as small as the set
of refresh tokens that could still be presented.
"""
from __future__ import annotations

from datetime import datetime

from pymongo import ASCENDING, IndexModel


class RefreshTokenStore:
    INDEXES = [
        IndexModel([("expires_at", ASCENDING)], expireAfterSeconds=0, name="ttl"),
        IndexModel([("fam", ASCENDING)], name="family"),
    ]

    def __init__(self, db):
        self.col = db["refresh_tokens"]

    async def ensure_indexes(self):
        await self.col.create_indexes(self.INDEXES)

    async def record(self, jti: str, user_id: int, fam: str, issued_at: datetime, expires_at: datetime) -> None:
        await self.col.insert_one({"_id": jti, "user_id": user_id, "fam": fam, "issued_at": issued_at,
                                   "expires_at": expires_at, "used_at": None})

    async def mark_used(self, jti: str, now: datetime) -> str:
        """'ok' when this call used the token, 'reused' when it was used before, 'unknown' when never recorded
        (or already expired and removed)."""
        result = await self.col.update_one({"_id": jti, "used_at": None}, {"$set": {"used_at": now}})
        if result.modified_count == 1:
            return "ok"
        return "reused" if await self.col.find_one({"_id": jti}, projection={"_id": 1}) else "unknown"

    async def mark_family_used(self, fam: str, now: datetime) -> int:
        """Use up every refresh token of the family not used yet (a rotation that does not go through one
        presented token: the family's next pair is issued another way). Presented later, each is 'reused'
        for `mark_used`. How many were used up."""
        result = await self.col.update_many({"fam": fam, "used_at": None}, {"$set": {"used_at": now}})
        return result.modified_count

    async def get(self, jti: str) -> dict | None:
        return await self.col.find_one({"_id": jti})

    async def family_tokens(self, fam: str) -> list[dict]:
        return await self.col.find({"fam": fam}).to_list()
