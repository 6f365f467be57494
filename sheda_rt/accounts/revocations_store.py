"""The token denylist: one document per revoked `jti`, removed by a TTL index once
the token would have expired anyway, so the collection never outgrows the
tokens that could still be presented."""
from __future__ import annotations

from datetime import datetime

from pymongo import ASCENDING, IndexModel
from pymongo.errors import DuplicateKeyError


class RevocationStore:
    INDEXES = [IndexModel([("expires_at", ASCENDING)], expireAfterSeconds=0, name="ttl")]

    def __init__(self, db):
        self.col = db["revoked_tokens"]

    async def ensure_indexes(self):
        await self.col.create_indexes(self.INDEXES)

    async def revoke(self, jti: str, expires_at: datetime, reason: str = "logout") -> bool:
        """True when this call revoked it, False when it already was."""
        try:
            await self.col.insert_one({"_id": jti, "expires_at": expires_at, "reason": reason})
            return True
        except DuplicateKeyError:
            return False

    async def revoked_among(self, ids: list[str]) -> set[str]:
        """Which of `ids` (jtis, "fam:<family>") are revoked: one `_id $in` query."""
        return {d["_id"] async for d in self.col.find({"_id": {"$in": ids}}, projection={"_id": 1})}

    async def is_revoked(self, jti: str) -> bool:
        return await self.col.find_one({"_id": jti}, projection={"_id": 1}) is not None

    async def any_revoked(self, ids: list[str]) -> bool:
        """One query for "is this token, or anything it belongs to (its family), revoked?"."""
        return await self.col.find_one({"_id": {"$in": ids}}, projection={"_id": 1}) is not None
