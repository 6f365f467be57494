"""The `promotions` collection: one document per promotion bought, keyed by its payer's Idempotency-Key.

A promotion is stored `pending` before the wallet is charged and becomes `applied` once the
listing carries it (sheda_rt/promotions/service.py says why in that order); an admin's refund of its
spend sets `refund` "refunding", then "refunded" once the listing no longer carries it. Every read here is
index-shaped for the embedded database's planner: (user_id, key) for a retry, (state, created_at)
for the job's pending sweep, (property_id, state, _id) for a listing's promotions.
"""
from __future__ import annotations

from pymongo import ASCENDING, DESCENDING, IndexModel
from pymongo.errors import DuplicateKeyError

from sheda_rt.pagination import PageQuery, paginate


class PromotionStore:
    INDEXES = [
        IndexModel([("user_id", ASCENDING), ("key", ASCENDING)], unique=True, name="payer_key"),
        IndexModel([("state", ASCENDING), ("created_at", ASCENDING)], name="state_age"),
        # state is a key: the embedded planner walks an index only when every condition of the filter is one
        IndexModel([("property_id", ASCENDING), ("state", ASCENDING), ("_id", DESCENDING)], name="property_state_newest"),
        # Refunds left half-way, for the job (`refund` is "refunding", then "refunded"; absent on most).
        IndexModel([("refund", ASCENDING)], name="refund"),
    ]
    SORT = [("_id", DESCENDING)]

    def __init__(self, db, ids):
        self.col = db["promotions"]
        self.ids = ids

    async def ensure_indexes(self):
        await self.col.create_indexes(self.INDEXES)

    async def by_key(self, user_id: int, key: str) -> dict | None:
        return await self.col.find_one({"user_id": user_id, "key": key})

    async def get(self, promotion_id: int) -> dict | None:
        return await self.col.find_one({"_id": promotion_id})

    async def insert_pending(self, doc: dict) -> dict | None:
        """Store a new pending promotion; None when this payer already used its key (a retry racing us)."""
        doc = dict(doc, _id=await self.ids.next("promotions"), state="pending")
        try:
            await self.col.insert_one(doc)
        except DuplicateKeyError:
            return None
        return doc

    async def discard_pending(self, promotion_id: int) -> None:
        """Nothing was charged: the promotion never happened (its key may be used again)."""
        await self.col.delete_one({"_id": promotion_id, "state": "pending"})

    async def mark_applied(self, promotion_id: int, fields: dict) -> dict | None:
        """pending → applied with its outcome, once; the document as it is afterwards."""
        await self.col.update_one({"_id": promotion_id, "state": "pending"}, {"$set": {**fields, "state": "applied"}})
        return await self.get(promotion_id)

    async def restore_applied(self, promo: dict, fields: dict) -> dict | None:
        """Put back, applied, a promotion that was charged after it was dropped as never charged (a racing request
        with its key got a 402, or the job gave up on it); the document as it is afterwards, None if its key names
        a newer promotion since."""
        try:
            await self.col.insert_one({**promo, **fields, "state": "applied"})
        except DuplicateKeyError:  # restored by a racing caller (same _id), or the key names a newer promotion
            pass
        return await self.get(promo["_id"])

    async def begin_refund(self, promotion_id: int, fields: dict) -> None:
        """Its spend was refunded: `refund` "refunding" (the listing is being given back), once; a pending one
        becomes applied with it (listed, and never marked applied by a request still charging it)."""
        await self.col.update_one({"_id": promotion_id, "state": {"$in": ["pending", "applied"]}, "refund": None},
                                  {"$set": {**fields, "state": "applied", "refund": "refunding"}})

    async def finish_refund(self, promotion_id: int) -> None:
        """refunding → refunded: the listing no longer carries it."""
        await self.col.update_one({"_id": promotion_id, "refund": "refunding"}, {"$set": {"refund": "refunded"}})

    async def refunding(self, limit: int = 100) -> list[dict]:
        """Refunds a request left half-way (the job finishes them)."""
        return await self.col.find({"refund": "refunding"}, limit=limit).to_list()

    async def page(self, property_id: int, page: PageQuery, serialize) -> dict:
        """A listing's applied promotions (refunded ones too), newest first (a pending one is still being bought: not shown)."""
        return await paginate(self.col, {"property_id": property_id, "state": "applied"}, self.SORT, page, serialize)

    async def pending_before(self, cutoff, limit: int = 100) -> list[dict]:
        return await self.col.find({"state": "pending", "created_at": {"$lte": cutoff}},
                                   sort=[("created_at", ASCENDING)], limit=limit).to_list()
