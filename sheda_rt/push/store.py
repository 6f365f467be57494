"""`push_devices` (one document per device, unique by its token or endpoint) and
`notification_settings` (one document per user, `_id` = the user's id: no index of its own)."""
from __future__ import annotations

import hashlib
from datetime import datetime

from pymongo import ASCENDING, IndexModel
from pymongo.errors import DuplicateKeyError


def token_key(platform: str, token: str) -> str:
    """What makes a device unique: its platform and token (webpush: its endpoint). Hashed, so the
    unique index stays small whatever the token's length (up to 4 KB)."""
    return hashlib.sha256(f"{platform}\n{token}".encode()).hexdigest()


class DeviceStore:
    INDEXES = [
        IndexModel([("token_key", ASCENDING)], unique=True, name="token_unique"),
        # GET /devices walks {user_id}; logout deletes {user_id, fam}.
        IndexModel([("user_id", ASCENDING), ("fam", ASCENDING)], name="user_family"),
    ]

    def __init__(self, db, ids):
        self.col = db["push_devices"]
        self.ids = ids

    async def ensure_indexes(self):
        await self.col.create_indexes(self.INDEXES)

    async def upsert(self, key: str, fields: dict, now: datetime) -> dict:
        """Register or update the device under `key`; it moves to the user who registered it last."""
        for _ in range(3):
            result = await self.col.update_one({"token_key": key}, {"$set": dict(fields, updated_at=now)})
            if result.matched_count:
                return await self.col.find_one({"token_key": key})
            doc = dict(fields, _id=await self.ids.next("push_devices"), token_key=key, created_at=now, updated_at=now)
            try:
                await self.col.insert_one(doc)
                return doc
            except DuplicateKeyError:  # registered at the same moment elsewhere: update that one
                continue
        raise RuntimeError("device registration kept racing")

    async def of_user(self, user_id: int) -> list[dict]:
        docs = await self.col.find({"user_id": user_id}).to_list()
        return sorted(docs, key=lambda d: d["_id"])

    async def delete(self, user_id: int, device_id: int) -> bool:
        return (await self.col.delete_one({"_id": device_id, "user_id": user_id})).deleted_count == 1

    async def delete_family(self, user_id: int, fam: str) -> int:
        return (await self.col.delete_many({"user_id": user_id, "fam": fam})).deleted_count

    async def delete_gone(self, device_id: int, key: str) -> bool:
        """The provider says the device is gone: delete it unless it was registered again meanwhile."""
        return (await self.col.delete_one({"_id": device_id, "token_key": key})).deleted_count == 1

    async def delete_signed_out(self, device_id: int, ep: int) -> bool:
        """Its login was signed out everywhere: delete it unless registered again (a new epoch) meanwhile."""
        return (await self.col.delete_one({"_id": device_id, "ep": ep})).deleted_count == 1

    async def get(self, device_id: int) -> dict | None:
        return await self.col.find_one({"_id": device_id})

    # ---- what a device shows (the dispatcher's silent badge updates) --------------------------
    # `shown`: {tag: {user_id, clear, at}}, one entry per visible push on the device's screen that no update has
    # cleared yet (tag: the push's collapse key); `badge`: the badge the device was last sent. Devices stored
    # before these fields have neither: nothing to clear there.
    async def record_shown(self, device_id: int, tag: str, entry: dict, badge: int) -> None:
        await self.col.update_one({"_id": device_id}, {"$set": {f"shown.{tag}": entry, "badge": badge}})

    async def record_badge(self, device_id: int, badge: int, cleared: dict[str, dict]) -> None:
        """The badge update went out: its badge, and each cleared entry dropped unless a newer push of that tag
        replaced it meanwhile (its `at` changed)."""
        await self.col.update_one({"_id": device_id}, {"$set": {"badge": badge}})
        for tag, entry in cleared.items():
            await self.col.update_one({"_id": device_id, f"shown.{tag}.at": entry.get("at")}, {"$unset": {f"shown.{tag}": ""}})

    async def every(self, platforms: list[str]) -> list[dict]:
        """Every device of these platforms, ids only (an announcement's push fan-out, a background job:
        devices are far fewer than users)."""
        return await self.col.find({"platform": {"$in": platforms}}, projection={"user_id": 1, "platform": 1}).to_list()


class PreferenceStore:
    INDEXES: list = []

    def __init__(self, db):
        self.col = db["notification_settings"]

    async def ensure_indexes(self):
        return None

    async def get(self, user_id: int) -> dict | None:
        return await self.col.find_one({"_id": user_id})

    async def put(self, user_id: int, settings: dict, now: datetime) -> None:
        await self.col.update_one({"_id": user_id}, {"$set": dict(settings, updated_at=now)}, upsert=True)
