"""One-time codes, one live code per user.

A code is 6 digits, mailed in clear and stored only as an HMAC (keyed with the
JWT secret), so a database dump does not hand out codes. The document expires
through a TTL index; until then every wrong guess bumps `attempts`, and the
guess that reaches the limit deletes the code ("burns" it). A right guess
deletes it too: each code works once. Sending a new code replaces the old one.
A code belongs to the user's token epoch when it was issued (the HMAC covers it): once the
epoch moves on (a pending registration replaced, a deactivation), no earlier code matches.
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import datetime

from pymongo import ASCENDING, IndexModel, ReturnDocument
from pymongo.errors import DuplicateKeyError


def new_code() -> str:
    return f"{secrets.randbelow(1_000_000):06d}"


class OtpStore:
    INDEXES = [IndexModel([("expires_at", ASCENDING)], expireAfterSeconds=0, name="ttl")]

    def __init__(self, db, secret: str):
        self.col = db["otps"]
        self._key = hashlib.sha256(("otp:" + secret).encode()).digest()

    async def ensure_indexes(self):
        await self.col.create_indexes(self.INDEXES)

    def _hash(self, user_id: int, code: str, epoch: int = 0) -> str:
        message = f"{user_id}:{epoch}:{code}" if epoch else f"{user_id}:{code}"  # epoch 0: as codes always were
        return hmac.new(self._key, message.encode(), hashlib.sha256).hexdigest()

    async def issue(self, user_id: int, code: str, now: datetime, expires_at: datetime, epoch: int = 0) -> bool:
        """Replace the user's code; False (nothing written) when the live one belongs to a newer epoch
        (a slower caller that read the user before its registration was replaced: its code is dead)."""
        flt = {"_id": user_id, "$or": [{"epoch": {"$lte": epoch}}, {"epoch": {"$exists": False}}]}
        doc = {"_id": user_id, "code_hash": self._hash(user_id, code, epoch), "epoch": epoch, "attempts": 0,
               "created_at": now, "expires_at": expires_at}
        try:
            await self.col.replace_one(flt, doc, upsert=True)
        except DuplicateKeyError:  # a code is there that did not match: a newer epoch's, or one inserted just now
            return (await self.col.replace_one(flt, doc)).matched_count == 1
        return True

    async def consume(self, user_id: int, code: str, now: datetime, max_attempts: int, epoch: int = 0) -> bool:
        """True when `code` is the user's live code, issued at token epoch `epoch` (it is then used
        up); False otherwise."""
        live = {"_id": user_id, "expires_at": {"$gt": now}, "attempts": {"$lt": max_attempts}}
        if await self.col.find_one_and_delete({**live, "code_hash": self._hash(user_id, code, epoch)}) is not None:
            return True
        after = await self.col.find_one_and_update(live, {"$inc": {"attempts": 1}}, return_document=ReturnDocument.AFTER)
        if after is not None and after["attempts"] >= max_attempts:
            await self.col.delete_one({"_id": user_id, "attempts": {"$gte": max_attempts}})
        return False

    async def get(self, user_id: int) -> dict | None:
        return await self.col.find_one({"_id": user_id})
