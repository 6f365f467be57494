"""The chat collections.

`messages`: one document per message, `_id` from the id allocator (so ids
increase in the order messages were committed), `conv` = "<low id>:<high id>"
naming the pair. Indexes were chosen by measuring insert cost on the embedded
database (each index entry costs it about 0.2 ms of its single core, as much as
the document write itself):
- `conversation`: (conv, _id). Every read of messages walks this one index.
There is deliberately no (receiver_id, _id), multikey "users" or per-listing
index: each would cost every insert. There is no unique (sender_id,
client_msg_id) index either (earlier versions had one, `idempotency`, dropped at
startup): it cost every keyed message a second index entry, 40 % of the
database's insert rate (batches of 100: 3,440 rows/s with one secondary index,
2,050 with two). Resends are recognised within a bounded window instead (see
sheda_rt/chat/idempotency.py), reading the conversation through this index
where memory and Redis do not know. (A partial (conv, property_id, _id) index
for listing threads cost every insert ~13% of chat throughput on the embedded
database, which also never chose it for a query.)

How reads use the index (`scan`): every query is exactly {conv, _id range},
nothing else in the filter, and walks the range in windows of ids (the newest
256 ids first, then as wide as the density seen so far says is needed, at most
16x the last) until it has what it needs;
other conditions (sender, listing, idempotency key) are checked here. Why: a
query planner may fetch every document in the index range before sorting and
limiting (the embedded database does, and falls back to a collection scan for
any condition outside the index's keys). Windows keep a history page, a read
receipt, an unread count or a resend's look-up proportional to the recent part
of one conversation, not to the conversation or the whole collection. On any
engine they are plain index range scans.

`conversations`: one small document per pair that ever talked (membership and
per-user read watermarks). It is written once per pair (the process remembers
which pairs exist) and on read receipts, never per message: updating a
"last message" field per message cost about 0.5 ms each on the embedded
database, as much as the insert. The list of conversations finds each pair's
last message through the `conversation` index instead.
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from datetime import datetime, timezone
from typing import Awaitable, Callable

from pymongo import ASCENDING, DESCENDING, IndexModel, UpdateOne

from sheda_rt.database.writes import InsertOutcome, insert_unordered  # noqa: F401  (InsertOutcome re-exported)

log = logging.getLogger("sheda.chat.store")


#: The fields `is_news` reads: what a scan for news projects.
NEWS_FIELDS = {"sender_id": 1, "deleted": 1, "hidden_for": 1}


def is_news(doc: dict, sender_id: int, reader_id: int) -> bool:
    """A message of sender_id's the reader has still to learn about: not deleted for everyone (a
    tombstone) and not deleted by the reader for themselves. The one rule of unread counts
    (conversation list, push badge), pushes and digests: deleting a message takes it off each of
    them at once, with no counter to keep (nothing is written per message), so a retried delete
    cannot take it off twice."""
    return doc["sender_id"] == sender_id and not doc.get("deleted") and reader_id not in (doc.get("hidden_for") or ())


def visible_to(user_id: int) -> Callable[[dict], bool]:
    """Whether a message is shown to user_id (not deleted for them only; a tombstone is shown)."""
    return lambda d: user_id not in (d.get("hidden_for") or ())


def conv_key(a: int, b: int) -> str:
    lo, hi = (a, b) if a < b else (b, a)
    return f"{lo}:{hi}"


class MessageStore:
    INDEXES = [
        IndexModel([("conv", ASCENDING), ("_id", ASCENDING)], name="conversation"),
    ]
    RETIRED_INDEXES = ("thread", "idempotency")  # created by earlier versions; dropped at startup
    WINDOW = 256  # ids in the first window of a scan
    GROWTH = 16  # each next window is this much wider

    def __init__(self, db, ids):
        self.col = db["messages"]
        self.ids = ids
        # The newest id handed out, when its writer knows it better than the counter (a single
        # process reserves ids ahead: sheda_rt/database/ids.py ReservedIds); else the counter.
        self.head: Callable[[], Awaitable[int]] | None = None

    async def ensure_indexes(self):
        await self.col.create_indexes(self.INDEXES)
        existing = await self.col.index_information()
        for name in self.RETIRED_INDEXES:
            if name in existing:
                await self.col.drop_index(name)

    async def newest_id(self) -> int:
        """The highest message id handed out so far: where scans start (their first window is
        open above it, so a lower value only costs a wider read). Read it once and pass it as
        `newest` when scanning many conversations."""
        if self.head is not None:
            return await self.head()
        return await self.ids.current("messages")

    async def scan(self, conv: str, *, newest_first: bool, need: int | None = None, after: int = 0, upto: int | None = None,
                   keep: Callable[[dict], bool] | None = None, projection: dict | None = None,
                   newest: int | None = None) -> list[dict]:
        """Messages of conv with after < _id <= upto (upto None: no upper bound) that pass
        `keep`, in id order (newest first if asked), at most `need` of them (None: all)."""
        def bounds(lo: int, hi: int | None) -> dict:
            return {"conv": conv, "_id": {"$gt": lo, "$lte": hi} if hi is not None else {"$gt": lo}}

        if need is None:  # everything in the range: one query, windows would only split it
            docs = await self.col.find(bounds(after, upto), projection).sort("_id", DESCENDING if newest_first else ASCENDING).to_list(None)
            return [d for d in docs if keep is None or keep(d)]
        out: list[dict] = []
        if need <= 0:
            return out

        async def window(lo: int, hi: int | None, direction) -> bool:
            """Add the window's matches to `out`; True once it holds `need`."""
            cursor = self.col.find(bounds(lo, hi), projection).sort("_id", direction)
            if keep is None:
                cursor = cursor.limit(need - len(out))
            for d in await cursor.to_list(None):
                if keep is None or keep(d):
                    out.append(d)
                    if len(out) >= need:
                        return True
            return False

        if newest is None:  # ids above it are handled by an open-ended window
            newest = await self.newest_id()
        width, scanned = self.WINDOW, 0
        if newest_first:
            hi = upto  # the first window is open-ended at the top
            top = min(upto, newest) if upto is not None else newest
            while True:
                lo = max(after, top - width)
                if await window(lo, hi, DESCENDING) or lo <= after:
                    return out
                scanned += top - lo
                hi = top = lo
                width = self._next_width(width, scanned, len(out), need)
        lo = after
        ceiling = min(upto, newest) if upto is not None else newest
        while True:
            hi = lo + width
            last = hi >= ceiling
            if last:
                hi = upto  # the last window reaches the real bound (open-ended when there is none)
            if await window(lo, hi, ASCENDING) or last:
                return out
            scanned += hi - lo
            lo = hi
            width = self._next_width(width, scanned, len(out), need)

    async def insert_batch(self, docs: list[dict]) -> InsertOutcome:
        """One insert_many for the whole batch (see `insert_unordered`)."""
        return await insert_unordered(self.col, docs, again=self.insert_batch)

    async def get(self, conv: str, message_id: int) -> dict | None:
        """One message by id (both keys of the conversation index)."""
        return await self.col.find_one({"conv": conv, "_id": message_id})

    async def by_id(self, message_id: int) -> dict | None:
        """One message by id alone (the primary key): what an edit, delete or reaction names.
        The caller checks it is one of the message's participants."""
        return await self.col.find_one({"_id": message_id})

    async def get_many(self, conv: str, message_ids: list[int]) -> list[dict]:
        """Messages of conv by id (both keys of the conversation index): the originals replies quote."""
        return await self.col.find({"conv": conv, "_id": {"$in": message_ids}}).to_list(None)

    async def revise(self, conv: str, message_id: int, update) -> int:
        """Change one stored message (edit, delete, reaction): filtered by both keys of the
        conversation index, nothing else (any other condition scans on the embedded database)."""
        return (await self.col.update_one({"conv": conv, "_id": message_id}, update)).modified_count

    async def hide_all_for(self, conv: str, user_id: int, upto: int) -> int:
        """Delete for user_id (`hidden_for`, as their own delete for me does) every message of conv
        up to id `upto`: filtered by the conversation index's keys alone."""
        return (await self.col.update_many({"conv": conv, "_id": {"$lte": upto}},
                                           {"$addToSet": {"hidden_for": user_id}})).modified_count

    async def recent_keys(self, conv: str, limit: int) -> dict[tuple[int, str], tuple[int, object]]:
        """{(sender_id, client_msg_id): (id, created_at)} of the newest `limit` messages
        of conv that carry a key: what the idempotency window learns of a conversation
        it has not seen since this process started (or since it forgot it)."""
        docs = await self.scan(conv, newest_first=True, need=limit,
                               projection={"sender_id": 1, "client_msg_id": 1, "created_at": 1})
        return {(d["sender_id"], d["client_msg_id"]): (d["_id"], d.get("created_at")) for d in reversed(docs)
                if isinstance(d.get("client_msg_id"), str)}

    def _next_width(self, width: int, scanned: int, found: int, need: int) -> int:
        """The next window: wide enough for what is still needed at the density seen so
        far (+25%), at least WINDOW and at most GROWTH times the last one. A dense
        conversation is not overshot 16x; a sparse one is reached in a few steps."""
        if found == 0:
            return width * self.GROWTH
        wanted = int((need - found) * scanned / found * 1.25) + 1
        return max(self.WINDOW, min(wanted, width * self.GROWTH))

    async def conversation(self, conv: str, *, offset: int, limit: int, newest_first: bool, property_id: int | None = None,
                           viewer: int | None = None) -> list[dict]:
        """A page of conv; with `viewer`, without the messages they deleted for themselves."""
        keep = (lambda d: d.get("property_id") == property_id) if property_id is not None else None
        if viewer is not None:
            listing = keep
            keep = lambda d: viewer not in (d.get("hidden_for") or ()) and (listing is None or listing(d))  # noqa: E731
        return (await self.scan(conv, newest_first=newest_first, need=offset + limit, keep=keep))[offset:]

    async def after(self, conv: str, since: int, limit: int, newest: int | None = None,
                    keep: Callable[[dict], bool] | None = None) -> list[dict]:
        return await self.scan(conv, newest_first=False, need=limit, after=since, newest=newest, keep=keep)

    async def last_in(self, conv: str, newest: int | None = None, keep: Callable[[dict], bool] | None = None) -> dict | None:
        docs = await self.scan(conv, newest_first=True, need=1, newest=newest, keep=keep)
        return docs[0] if docs else None

    async def last_seen_by(self, conv: str, viewer: int, newest: int | None = None) -> dict | None:
        """The newest message of conv that `viewer` still sees (`visible_to`: not one they deleted for
        themselves; a tombstone counts). The one rule of "the conversation's last message" for a user:
        the conversation list's `last_message`, and what archiving records and compares with
        (`ConversationStore.archived`), so the list and the settings route always agree."""
        return await self.last_in(conv, newest, visible_to(viewer))

    async def last_id_from(self, conv: str, sender_id: int, after: int = 0) -> int | None:
        """The id of sender_id's newest message in conv with id > after (None if none)."""
        docs = await self.scan(conv, newest_first=True, need=1, after=after, projection={"sender_id": 1},
                               keep=lambda d: d["sender_id"] == sender_id)
        return docs[0]["_id"] if docs else None

    async def mark_read(self, conv: str, sender_id: int, after_id: int, up_to: int, when) -> int:
        """Set read_at on sender_id's messages in conv with after_id < id <= up_to. The filter
        is the index range alone; the sender is checked by the update itself (a pipeline
        update), so no condition outside the index can turn it into a collection scan."""
        result = await self.col.update_many(
            {"conv": conv, "_id": {"$gt": after_id, "$lte": up_to}},
            [{"$set": {"read_at": {"$cond": [{"$eq": ["$sender_id", sender_id]}, when, "$read_at"]}}}],
        )
        return result.modified_count

    async def count_from(self, conv: str, sender_id: int, after_id: int, reader: int) -> int:
        """How many of sender_id's messages in conv with id > after_id are still news for
        `reader` (`is_news`): the unread count of the conversation list and the push badge."""
        rows = await self.scan(conv, newest_first=False, after=after_id, projection=NEWS_FIELDS,
                               keep=lambda d: is_news(d, sender_id, reader))
        return len(rows)


class ConversationStore:
    INDEXES = [IndexModel([("users", ASCENDING)], name="member")]
    KNOWN_MAX = 200_000  # pairs remembered as existing; forgetting one only costs a no-op upsert
    IN_CHUNK = 200

    def __init__(self, db):
        self.col = db["conversations"]
        self._known: OrderedDict[str, None] = OrderedDict()

    async def ensure_indexes(self):
        await self.col.create_indexes(self.INDEXES)

    async def ensure(self, pairs: dict[str, tuple[int, int]], now) -> None:
        """Make sure each pair has its document; only pairs this process has not seen
        cost a write (one unordered bulk of upserts for the batch)."""
        new = [(conv, users) for conv, users in pairs.items() if conv not in self._known]
        if not new:
            return
        await self.col.bulk_write(
            [UpdateOne({"_id": conv}, {"$setOnInsert": {"users": list(users), "created_at": now, "read_upto": {}}}, upsert=True)
             for conv, users in new],
            ordered=False,
        )
        for conv, _ in new:
            self._known[conv] = None
        while len(self._known) > self.KNOWN_MAX:
            self._known.popitem(last=False)

    async def of_user(self, user_id: int, limit: int = 5000) -> list[dict]:
        return await self.col.find({"users": user_id}).limit(limit).to_list(limit)

    async def peers_of_many(self, user_ids: set[int]) -> dict[int, list[int]]:
        """{user: the people they share a conversation with} for many users in one query."""
        out: dict[int, list[int]] = {}
        ids = list(user_ids)
        for i in range(0, len(ids), self.IN_CHUNK):  # bounded $in lists (a database may match them per document)
            async for conv in self.col.find({"users": {"$in": ids[i:i + self.IN_CHUNK]}}, projection={"users": 1}):
                a, b = conv["users"]
                if a in user_ids:
                    out.setdefault(a, []).append(b)
                if b in user_ids:
                    out.setdefault(b, []).append(a)
        for peers in out.values():  # a conversation between two users of one batch is seen twice
            peers[:] = list(dict.fromkeys(peers))
        return out

    async def peers_among(self, user_id: int, others: list[int]) -> set[int]:
        """Which of `others` share a conversation with user_id: one `_id $in` query (a pair's
        conversation id is its key), served by the primary key, whatever user_id talks to."""
        keys = [conv_key(user_id, other) for other in others if other != user_id]
        found: set[int] = set()
        for i in range(0, len(keys), self.IN_CHUNK):
            async for conv in self.col.find({"_id": {"$in": keys[i:i + self.IN_CHUNK]}}, projection={"users": 1}):
                found.update(u for u in conv["users"] if u != user_id)
        return found

    async def get(self, conv: str) -> dict | None:
        return await self.col.find_one({"_id": conv})

    # ---- per-user state: mute and archive (sheda_rt/chat/manage.py) ----------------------
    # `muted_until.<user>` (a date; FOREVER: no end) and `archived_upto.<user>` (the newest message
    # id when archived) live on the pair's document, written only when the user changes them: the
    # message path writes nothing more, and a newer message un-archives the pair by itself.
    FOREVER = datetime(9999, 12, 31, tzinfo=timezone.utc)

    @staticmethod
    def muted_until(doc: dict | None, user_id: int, now: datetime) -> datetime | None:
        """When user_id's mute of this pair ends (FOREVER: never); None when it is not muted now."""
        until = (doc.get("muted_until") or {}).get(str(user_id)) if doc else None
        return until if until is not None and until > now else None

    @staticmethod
    def archived(doc: dict | None, user_id: int, last_id: int | None) -> bool:
        """Archived for user_id while its last message (`last_id`, from `MessageStore.last_seen_by`) is one
        they archived with; also while they see none (they deleted every message for themselves)."""
        upto = (doc.get("archived_upto") or {}).get(str(user_id)) if doc else None
        return upto is not None and (last_id is None or last_id <= upto)

    async def muted(self, conv: str, user_id: int, now: datetime) -> bool:
        """Whether user_id muted conv (the push dispatcher asks before sending): one _id read."""
        field = f"muted_until.{user_id}"
        return self.muted_until(await self.col.find_one({"_id": conv}, projection={field: 1}), user_id, now) is not None

    async def set_user_state(self, conv: str, user_id: int, values: dict) -> bool:
        """Set (a value) or clear (None) user_id's `muted_until` / `archived_upto` in conv;
        False when the pair never talked."""
        sets = {f"{k}.{user_id}": v for k, v in values.items() if v is not None}
        unsets = {f"{k}.{user_id}": "" for k, v in values.items() if v is None}
        update = {**({"$set": sets} if sets else {}), **({"$unset": unsets} if unsets else {})}
        if not update:
            return await self.get(conv) is not None
        return (await self.col.update_one({"_id": conv}, update)).matched_count == 1

    async def advance_read(self, conv: str, user_id: int, up_to: int, previous: int | None = None) -> int | None:
        return await self.advance(conv, "read_upto", user_id, up_to, previous)

    async def advance(self, conv: str, watermark: str, user_id: int, up_to: int, previous: int | None = None) -> int | None:
        """Raise user_id's watermark (read or delivered) in conv to up_to; returns the previous one
        (None when the pair never talked). `previous`, when the caller has just read it,
        saves the first read (a stale value only fails the compare-and-set). A compare-and-set on the watermark with
        find_one + update_one: exactly one of two racing receipts moves it from a given
        value (so each message is marked and announced once), and both operations are
        served from the _id index on every engine (find_one_and_update scans the
        collection on the embedded database, and read receipts are the chat's most
        frequent write)."""
        field = f"{watermark}.{user_id}"  # read_upto, or delivered_upto (sheda_rt/chat/edits.py)
        for _ in range(8):
            if previous is None:
                doc = await self.col.find_one({"_id": conv}, projection={field: 1})
                if doc is None:
                    return None
                previous = int((doc.get(watermark) or {}).get(str(user_id), 0))
            if up_to <= previous:
                return previous
            seen = {field: previous} if previous else {field: {"$in": [None, 0]}}  # 0 or never set
            if (await self.col.update_one({"_id": conv, **seen}, {"$set": {field: up_to}})).modified_count:
                return previous
            previous = None  # moved meanwhile: read it again
        return up_to  # others kept moving it: report nothing new rather than loop
