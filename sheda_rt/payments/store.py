"""The `payments` and `payment_events` collections.

A payment is one attempt to pay. Every status change is one `update_one` whose
filter names the expected states, so of two writers (a webhook and the
reconciliation job, in two processes) exactly one moves it; the other sees
nothing matched and does nothing. `open_key` ("<purpose>:<target>") exists only
while an attempt is initialized or pending: a unique partial index on it means
one live checkout per contract, and a second POST hands back the first.

`payment_events` holds each webhook event once, by its id (unique `_id`): a
redelivery finds it and changes nothing.
"""
from __future__ import annotations

from pymongo import ASCENDING, DESCENDING, IndexModel
from pymongo.errors import DuplicateKeyError

from sheda_rt.database.transitions import guarded_transition
from sheda_rt.database.writes import update_then_get
from sheda_rt.pagination import paginate

NEWEST = [("_id", DESCENDING)]
LIVE_STATES = ["initialized", "pending"]


class PaymentStore:
    INDEXES = [
        IndexModel([("reference", ASCENDING)], unique=True, name="reference_unique"),
        IndexModel([("open_key", ASCENDING)], unique=True, name="one_live_payment_per_target",
                   partialFilterExpression={"open_key": {"$exists": True}}),
        IndexModel([("parties", ASCENDING), ("_id", DESCENDING)], name="parties_newest"),
        IndexModel([("parties", ASCENDING), ("status", ASCENDING), ("_id", DESCENDING)], name="parties_status"),
        IndexModel([("parties", ASCENDING), ("flagged", ASCENDING), ("status", ASCENDING), ("_id", DESCENDING)],
                   name="parties_flagged"),
        IndexModel([("status", ASCENDING), ("flagged", ASCENDING), ("created_at", ASCENDING)], name="status_age"),
        IndexModel([("status", ASCENDING), ("applied", ASCENDING)], name="succeeded_unapplied"),
        IndexModel([("flagged", ASCENDING), ("_id", DESCENDING)], name="flagged_newest"),
        IndexModel([("flagged", ASCENDING), ("status", ASCENDING), ("_id", DESCENDING)], name="flagged_status"),
        # A target's payments in one status (the succeeded payments of a booking its builder cancelled).
        IndexModel([("purpose", ASCENDING), ("target_id", ASCENDING), ("status", ASCENDING)], name="target_status"),
        # A payer's live attempts of one purpose, oldest first (the cap on pending top-up checkouts).
        IndexModel([("payer_id", ASCENDING), ("purpose", ASCENDING), ("status", ASCENDING), ("flagged", ASCENDING),
                    ("_id", ASCENDING)], name="payer_purpose_live"),
        # Payments with a reversal reserved whose ledger entry may be missing (the reconciliation completes them).
        IndexModel([("reversal_open", ASCENDING)], name="reversal_open",
                   partialFilterExpression={"reversal_open": {"$exists": True}}),
    ]

    def __init__(self, db, ids):
        self.col = db["payments"]
        self.events = db["payment_events"]
        self.ids = ids

    async def ensure_indexes(self):
        await self.col.create_indexes(self.INDEXES)

    async def insert(self, doc: dict) -> dict | None:
        """The new attempt, or None when the target already has a live one (open_key taken)."""
        doc = dict(doc, _id=await self.ids.next("payments"))
        try:
            await self.col.insert_one(doc)
        except DuplicateKeyError:
            return None
        return doc

    async def get(self, reference: str) -> dict | None:
        return await self.col.find_one({"reference": reference})

    async def live_for(self, open_key: str) -> dict | None:
        return await self.col.find_one({"open_key": open_key})

    async def transition(self, payment_id: int, from_states: list[str], to_state: str, now, extra: dict | None = None,
                         close: bool = False) -> dict | None:
        """from_states -> to_state in one conditional write; None when it was not in from_states.
        `close` drops open_key (the attempt no longer holds the target's one live checkout)."""
        return await guarded_transition(self.col, payment_id, from_states, to_state, now, extra=extra,
                                        unset="open_key" if close else None)

    async def set_fields(self, payment_id: int, fields: dict, expect: dict | None = None) -> bool:
        result = await self.col.update_one({"_id": payment_id, **(expect or {})}, {"$set": fields})
        return result.matched_count == 1

    async def flag(self, payment_id: int, flag: dict, now) -> bool:
        """Raise a flag once per reason: concurrent deliveries of one event (the gateway retries while
        the first is still being handled), or a webhook racing the reconciliation job, each find the
        same mismatch, and an admin needs one flag for it, not one per writer. True when raised now.
        A flagged attempt no longer holds its target's one live checkout (open_key): it waits for an
        admin, and the payer can start a new checkout instead of being handed the flagged one for ever."""
        result = await self.col.update_one({"_id": payment_id, "flags.reason": {"$ne": flag["reason"]}},
                                           {"$set": {"flagged": True, "updated_at": now}, "$push": {"flags": flag},
                                            "$unset": {"open_key": ""}})
        return result.modified_count == 1

    async def mark_applied(self, payment_id: int, outcome: str, flag: dict | None, now, fields: dict | None = None) -> bool:
        """Record that the payment's effect was carried out, with its flag (and `fields`) in the same write (a process
        dying between two writes would leave it applied and never flagged: a double payment nobody
        sees). Only the first writer records it (True); the others find it applied (False)."""
        update: dict = {"$set": {**(fields or {}), "applied": True, "outcome": outcome, "updated_at": now}}
        if flag is not None:
            update["$set"]["flagged"] = True
            update["$push"] = {"flags": flag}
        result = await self.col.update_one({"_id": payment_id, "applied": False}, update)
        return result.matched_count == 1

    async def live_of_payer(self, payer_id: int, purpose: str, limit: int) -> list[dict]:
        """Up to `limit` of the payer's live (initialized or pending) attempts of `purpose` that no flag set aside,
        oldest first."""
        flt = {"payer_id": payer_id, "purpose": purpose, "status": {"$in": LIVE_STATES}, "flagged": False}
        return await self.col.find(flt, projection={"_id": 1, "created_at": 1}, sort=[("_id", ASCENDING)],
                                   limit=limit).to_list()

    async def discard_unstarted(self, payment_id: int) -> None:
        """Delete an attempt the gateway never heard of (still initialized): it was refused before its checkout."""
        await self.col.delete_one({"_id": payment_id, "status": "initialized", "checkout_url": {"$exists": False}})

    async def claim_resolution(self, payment_id: int, resolution: dict) -> tuple[dict, bool]:
        """An admin's settlement of a flagged payment, claimed once (the first action wins; a second admin's
        other action finds this one). (the payment afterwards, claimed by this call?)"""
        won = await update_then_get(self.col, {"_id": payment_id, "resolution": None}, {"$set": {"resolution": resolution}})
        return (won, True) if won is not None else (await self.col.find_one({"_id": payment_id}), False)

    async def release_resolution(self, payment_id: int, action: str) -> None:
        """Give up a claimed settlement of `action` not carried out (it never can be: PaymentService._released_if_voided)."""
        await self.col.update_one({"_id": payment_id, "resolution.action": action, "resolution.done": {"$ne": True}},
                                  {"$set": {"resolution": None}})

    async def finish_resolution(self, payment_id: int, action: str, fields: dict, now) -> None:
        """The claimed settlement carried out: recorded once (racing finishers of one claim: the first), and the
        payment no longer waits for an admin."""
        await self.col.update_one({"_id": payment_id, "resolution.action": action, "resolution.done": {"$ne": True}},
                                  {"$set": {**fields, "resolution.done": True, "flagged": False, "updated_at": now},
                                   "$unset": {"open_key": ""}})

    async def of_target(self, purpose: str, target_id: int, status: str) -> list[dict]:
        return await self.col.find({"purpose": purpose, "target_id": target_id, "status": status}).to_list()

    async def stale(self, older_than, limit: int) -> list[dict]:
        """Attempts still initialized or pending that were created before `older_than` (flagged
        ones wait for an admin instead of being asked about again on every run), those verified least
        recently first (never verified: first of all). Oldest first would hand every run the same batch
        once a batch's worth stays undecided at the gateway (a transfer not settled for days), and a
        newer payment whose webhook was lost would never be verified. The filter stays the status_age
        index's keys; the sort is over live payments past 30 minutes, which the gateway has mostly decided."""
        return await self.col.find({"status": {"$in": LIVE_STATES}, "flagged": False, "created_at": {"$lte": older_than}},
                                   sort=[("last_verified_at", ASCENDING), ("created_at", ASCENDING)], limit=limit).to_list()

    async def unapplied(self, limit: int) -> list[dict]:
        """Succeeded attempts whose effect (the contract) is not recorded as done: a crash or a
        confirmation of the same contract in flight at the time), those tried least recently first (never
        tried: first of all), so a batch's worth stuck "in progress" never keeps the others from being finished."""
        return await self.col.find({"status": "succeeded", "applied": False},
                                   sort=[("apply_tried_at", ASCENDING), ("_id", ASCENDING)], limit=limit).to_list()

    async def page(self, query: dict, page, serialize) -> dict:
        return await paginate(self.col, query, NEWEST, page, serialize)

    # ---- money the gateway gave back (top-up reversals) ------------------------
    # `reversed_minor`: kobo reserved by every reversal of this payment together; `reversals`: one entry per gateway
    # event {source, amount_minor, why, at}; `reversal_open`: set with each reservation, dropped by the
    # reconciliation once every reservation's ledger entry is known to exist (PaymentService.reconcile).
    async def start_reversals(self, payment_id: int, reversed_minor: int, entries: list[dict]) -> None:
        """Give a payment its reversal record (once: a payment that has one keeps it), from what the ledger already
        took back for it (reversals made before reservations were recorded)."""
        await self.col.update_one({"_id": payment_id, "reversed_minor": {"$exists": False}},
                                  {"$set": {"reversed_minor": reversed_minor, "reversals": entries}})

    async def reserve_reversal(self, payment_id: int, entry: dict, limit_minor: int) -> bool:
        """Reserve `entry["amount_minor"]` for the gateway event `entry["source"]` in one conditional write: only
        while what is reserved so far is at most `limit_minor` (what the top-up credited less this amount) and this
        event has no reservation yet. Of any number of racing writers, in any process, the reservations that win
        never add up to more than the credit. True when reserved now."""
        result = await self.col.update_one(
            {"_id": payment_id, "reversed_minor": {"$lte": limit_minor}, "reversals.source": {"$ne": entry["source"]}},
            {"$inc": {"reversed_minor": entry["amount_minor"]}, "$push": {"reversals": entry}, "$set": {"reversal_open": True}})
        return result.modified_count == 1

    async def open_reversals(self, limit: int) -> list[dict]:
        return await self.col.find({"reversal_open": True}, limit=limit).to_list()

    async def close_reversals(self, payment_id: int, count: int) -> None:
        """Drop `reversal_open` when the payment still holds exactly the `count` reservations the caller completed
        (one reserved meanwhile keeps it open)."""
        await self.col.update_one({"_id": payment_id, "reversal_open": True, "reversals": {"$size": count}},
                                  {"$unset": {"reversal_open": ""}})

    # ---- webhook events ------------------------------------------------------
    async def record_event(self, doc: dict) -> dict | None:
        """Store an event once. None when it is new; the stored one when it was already there."""
        try:
            await self.events.insert_one(doc)
            return None
        except DuplicateKeyError:
            return await self.events.find_one({"_id": doc["_id"]}) or doc

    async def event_done(self, event_id: str, outcome: str, now) -> None:
        await self.events.update_one({"_id": event_id}, {"$set": {"processed": True, "outcome": outcome, "processed_at": now}})
