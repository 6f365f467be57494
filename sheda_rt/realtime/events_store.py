"""The `events` collection (durable events other than chat messages) and the stream's
one meta document.

An event is stored once for all its recipients: `{_id: seq, users: [...], text: <the
frame as JSON, without seq>, at}`. `_id` is the event's position in the stream: it
comes from the same counter as chat message ids (so messages and events share one
order), reserved by the chat group commit in the batch that stores the event. The
frame is kept as the text that went on the wire (byte for byte what live clients
got, and no BSON encoding question for whatever the frame holds); `seq` is spliced
in when it is sent.

Index: (users, _id): a replay is `{users: U, _id: > S}` in `_id` order, both keys of
the index, so it walks the user's range and nothing else on any engine. Events are
far rarer than messages (read receipts, notifications, appointment and contract
changes), so their index entries do not weigh on the chat's write rate.

`stream_meta` holds `{_id: "stream", epoch, pruned_below}`: the epoch names this
data set (a client that synced against another one is told to start over) and
`pruned_below` is the lowest position still complete after retention pruning.
"""
from __future__ import annotations

import uuid

from pymongo import ASCENDING, IndexModel
from pymongo.errors import DuplicateKeyError

from sheda_rt.database.writes import InsertOutcome, insert_unordered

META_ID = "stream"


class EventStore:
    INDEXES = [IndexModel([("users", ASCENDING), ("_id", ASCENDING)], name="user_stream"),
               # The frame of a notification sent once per key (a wallet credit) carries `note` (its id): stored once
               # whoever publishes it (the process that stored it, or one finishing after that one died). Other
               # events have none and take no entry here.
               IndexModel([("note", ASCENDING)], unique=True, name="note_unique",
                          partialFilterExpression={"note": {"$exists": True}})]
    PRUNE_WINDOW = 500

    def __init__(self, db):
        self.col = db["events"]
        self.meta = db["stream_meta"]

    async def ensure_indexes(self):
        await self.col.create_indexes(self.INDEXES)

    async def insert_batch(self, docs: list[dict]) -> InsertOutcome:
        return await insert_unordered(self.col, docs)

    async def has_note(self, note_id: int) -> bool:
        """Whether the frame of notification `note_id` is stored (published with `note`)."""
        return await self.col.find_one({"note": note_id}, projection={"_id": 1}) is not None

    async def after(self, user_id: int, after_seq: int, limit: int) -> list[dict]:
        return await (self.col.find({"users": user_id, "_id": {"$gt": after_seq}}, projection={"text": 1})
                      .sort("_id", ASCENDING).limit(limit).to_list(limit))

    async def forget_user(self, user_id: int) -> int:
        """Take user_id out of every event's recipients (a pending registration replaced by its email's
        owner: the old registrant's events are not replayed to the new one). The other recipients keep
        theirs; an event left with none is never replayed and goes with retention pruning."""
        return (await self.col.update_many({"users": user_id}, {"$pull": {"users": user_id}})).modified_count

    # ---- the meta document -------------------------------------------------------
    async def load_meta(self) -> dict:
        """The stream's meta document, created with a fresh epoch the first time."""
        doc = await self.meta.find_one({"_id": META_ID})
        if doc is None:
            try:
                await self.meta.insert_one({"_id": META_ID, "epoch": uuid.uuid4().hex[:16], "pruned_below": 0})
            except DuplicateKeyError:  # another process created it first
                pass
            doc = await self.meta.find_one({"_id": META_ID})
        return doc

    async def new_epoch(self) -> str:
        """Start a new epoch (an operator restored a backup, or wants every client to refetch)."""
        epoch = uuid.uuid4().hex[:16]
        await self.load_meta()
        await self.meta.update_one({"_id": META_ID}, {"$set": {"epoch": epoch}})
        return epoch

    # ---- retention ----------------------------------------------------------------
    async def prune_before(self, cutoff) -> int:
        """Delete events stored before `cutoff` (a datetime). Returns the new `pruned_below`
        (the newest deleted position + 1: a client at or past the newest deleted position
        misses nothing), or 0 when nothing was old. Positions increase with time, so the
        old events are a prefix in `_id` order: found by walking `_id` in windows (the
        primary index on any engine) and deleted as one `_id` range."""
        newest_old = 0
        while True:
            docs = await (self.col.find({"_id": {"$gt": newest_old}}, projection={"at": 1}).sort("_id", ASCENDING)
                          .limit(self.PRUNE_WINDOW).to_list(self.PRUNE_WINDOW))
            old = [d["_id"] for d in docs if d["at"] < cutoff]
            if old:
                newest_old = old[-1]
            if len(old) < len(docs) or not docs:
                break
        if newest_old == 0:
            return 0
        await self.col.delete_many({"_id": {"$lte": newest_old}})
        await self.load_meta()
        await self.meta.update_one({"_id": META_ID, "pruned_below": {"$lt": newest_old + 1}},
                                   {"$set": {"pruned_below": newest_old + 1}})
        return newest_old + 1
