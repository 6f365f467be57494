"""Records that move through states, written once for every feature that has them.

Correctness lives in the data, not in read-then-write checks:

- **A guarded transition** is one `update_one` whose filter names the expected states
  (and, for a user's move, the user's side of the record), so of two racing requests
  exactly one moves the record and the other matches nothing. It sets `status` and
  `updated_at` and may drop a *hold key* in the same write.
- **A hold key** is a field a record carries only while it holds something exclusive
  (an agent's slot, the one open contract of a client and a property, the one live
  checkout of a contract), under a unique partial index: two concurrent inserts race
  on the index and exactly one wins (409); a transition that releases the hold drops it.

`TwoPartyStore` is that mechanism for records a client and an agent share
(appointments, contracts): insert with an id (409 when the hold is taken), guarded
transitions, why a transition matched nothing (404 / 403 / 409), and pages of a user's
records by role and status. Payments use `guarded_transition` alone.
"""
from __future__ import annotations

from typing import NoReturn

from pymongo import ASCENDING, DESCENDING, IndexModel
from pymongo.errors import DuplicateKeyError

from sheda_rt.database.writes import update_then_get
from sheda_rt.errors import Conflict, Forbidden, NotFound
from sheda_rt.pagination import paginate

NEWEST = [("_id", DESCENDING)]


async def guarded_transition(col, record_id: int, from_states: list[str], to_state: str, now, *, who: dict | None = None,
                             extra: dict | None = None, unset: str | None = None, field: str = "status") -> dict | None:
    """`from_states -> to_state` in one conditional write: the record after it, or None when
    it was not in `from_states` (or `who`'s conditions did not hold). `extra` fields are set
    with the status; `unset` names a field (a hold key) dropped in the same write. `field`
    names the state field when it is not the record's own `status` (a booking's installment
    line, `installments.2.status`, moves under conditions on the booking's status in `who`)."""
    update: dict = {"$set": {field: to_state, "updated_at": now, **(extra or {})}}
    if unset:
        update["$unset"] = {unset: ""}
    return await update_then_get(col, {"_id": record_id, field: {"$in": from_states}, **(who or {})}, update)


def party_indexes() -> list[IndexModel]:
    """What `TwoPartyStore.page` needs: `parties` holds [client_id, agent_id], so one
    equality serves both roles; with and without a status."""
    return [
        IndexModel([("parties", ASCENDING), ("_id", DESCENDING)], name="parties_newest"),
        IndexModel([("parties", ASCENDING), ("status", ASCENDING), ("_id", DESCENDING)], name="parties_status"),
    ]


class TwoPartyStore:
    """A collection of records with `client_id`, `agent_id`, `parties` and `status`.
    Subclasses name the collection, what its records are called, and their hold key."""

    #: The collection, and the name of its id sequence.
    COLLECTION: str
    #: What a record is called in error details ("appointment"); also the 404's code prefix.
    NOUN: str
    #: The field held while the record is open (under a unique partial index in INDEXES).
    HOLD_KEY: str
    #: The 409 (detail, code) when an insert finds the hold taken.
    HOLD_TAKEN: tuple[str, str]
    INDEXES: list[IndexModel]

    def __init__(self, db, ids):
        self.col = db[self.COLLECTION]
        self.ids = ids

    async def ensure_indexes(self):
        await self.col.create_indexes(self.INDEXES)

    async def insert(self, doc: dict) -> dict:
        doc = dict(doc, _id=await self.ids.next(self.COLLECTION))
        try:
            await self.col.insert_one(doc)
        except DuplicateKeyError:
            raise Conflict(*self.HOLD_TAKEN)
        return doc

    async def get(self, record_id: int) -> dict | None:
        return await self.col.find_one({"_id": record_id})

    async def transition(self, record_id: int, who: dict, from_states: list[str], to_state: str, now,
                         extra: dict | None = None, release_hold: bool = False) -> dict | None:
        """A guarded transition (see `guarded_transition`); `who` is the filter's extra
        conditions ({} for the system's own moves, e.g. expiry); `release_hold` drops HOLD_KEY."""
        return await guarded_transition(self.col, record_id, from_states, to_state, now, who=who, extra=extra,
                                        unset=self.HOLD_KEY if release_hold else None)

    async def transition_as(self, record_id: int, user_id: int, role: str | None, from_states: list[str], to_state: str,
                            now, extra: dict | None = None, release_hold: bool = False) -> dict:
        """A user's move: only the record's `role` ("client", "agent"; None: either party)
        may make it. The record after it; or the 404 / 403 / 409 saying why it did not match."""
        who = {f"{role}_id": user_id} if role is not None else {"parties": user_id}
        doc = await self.transition(record_id, who, from_states, to_state, now, extra, release_hold)
        if doc is None:
            await self.explain_refusal(record_id, user_id, role, from_states)
        return doc

    async def explain_refusal(self, record_id: int, user_id: int, role: str | None, expected: list[str]) -> NoReturn:
        """Why a move matched nothing: 404 (missing, or not the user's: others' records are
        never confirmed to exist), 403 (the other side's move), 409 (not in an expected state)."""
        doc = await self.get(record_id)
        noun = self.NOUN
        if doc is None or user_id not in (doc["client_id"], doc["agent_id"]):
            raise NotFound(f"No such {noun}", f"{noun}_not_found")
        if role is not None and doc[f"{role}_id"] != user_id:
            raise Forbidden(f"Only the {noun}'s {role} can do that", f"not_{role}")
        raise Conflict(f"The {noun} is {doc['status']}; this needs it {' or '.join(expected)}", "wrong_state")

    async def page(self, user_id: int, status: str | None, role: str | None, page, serialize) -> dict:
        """A user's records, newest first, optionally of one status and one side."""
        query: dict = {"parties": user_id}
        if status:
            query["status"] = status
        if role:
            query[f"{role}_id"] = user_id
        return await paginate(self.col, query, NEWEST, page, serialize)
