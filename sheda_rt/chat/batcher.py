"""Group commit: many senders, one insert_many.

Why: on the embedded database one insert_many of 100 messages costs about as
much as 10 single inserts, and the id counter is one round trip per batch
instead of per message. So messages that arrive from many sockets within a few
milliseconds (CHAT_BATCH_WINDOW_MS) are stored together, at most
CHAT_BATCH_MAX at a time.

Rules this class keeps:
- One commit at a time. Messages arriving while a batch is being stored wait
  for the next one, so batches grow with load by themselves, ids are handed out
  in arrival order, and deliveries of batch N go out before those of batch N+1
  (per-conversation order).
- Nothing is acked or delivered before its batch is stored. `after_commit`
  (the service's delivery) runs for the stored messages first; only then are
  the callers' futures resolved (the acks). A failed batch resolves its
  futures with the error: no ack, no delivery.
- A repeated (sender_id, client_msg_id) resolves to the stored message, whether
  the first copy is in the same batch or was stored long ago (the unique index
  reports it; we read the stored one back).
- `drain()` (server shutdown) refuses new messages and returns once everything
  accepted so far is stored and answered.
- With several processes, a batch is stored and published during this process's
  turn (the hub's commit turn, a lock in Redis), so ids reach every socket in
  increasing order everywhere, not only within one process.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Awaitable, Callable

from sheda_rt.errors import ApiError, ServiceUnavailable
from sheda_rt.metrics import BATCH_SIZE, MESSAGES_STORED

log = logging.getLogger("sheda.chat.batcher")


@dataclass(slots=True)
class Pending:
    doc: dict  # the message without _id / created_at yet
    origin: str | None  # conn_id of the sending socket (not delivered back to it)
    info: dict  # sender_info for the delivered frame
    future: asyncio.Future = field(default=None)
    duplicate: bool = False


class StoreFailed(ServiceUnavailable):
    code = "store_failed"


class GroupCommit:
    def __init__(self, messages, conversations, ids, clock, *, window_ms: float, max_batch: int,
                 after_commit: Callable[[list[Pending]], Awaitable[None]], turns=None):
        self.messages = messages
        self.conversations = conversations
        self.ids = ids
        self.clock = clock
        self.window = window_ms / 1000.0
        self.max_batch = max_batch
        self.after_commit = after_commit
        self.turns = turns  # the hub: batches of all processes take turns (ids delivered in order)
        self._queue: list[Pending] = []
        self._task: asyncio.Task | None = None
        self._full = asyncio.Event()
        self._closed = False

    @property
    def backlog(self) -> int:
        return len(self._queue)

    def submit(self, doc: dict, *, origin: str | None, info: dict) -> asyncio.Future:
        """Queue a message; the future resolves to (stored doc, duplicate) once stored."""
        if self._closed:
            raise ServiceUnavailable("The server is shutting down; send again after reconnecting", "shutting_down")
        pending = Pending(doc, origin, info, asyncio.get_running_loop().create_future())
        self._queue.append(pending)
        if len(self._queue) >= self.max_batch:
            self._full.set()
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())
        return pending.future

    async def drain(self) -> None:
        self._closed = True
        while self._task is not None:
            self._full.set()
            await asyncio.shield(self._task)

    async def _run(self) -> None:
        try:
            if self.window > 0 and len(self._queue) < self.max_batch:
                self._full.clear()
                try:
                    await asyncio.wait_for(self._full.wait(), self.window)
                except asyncio.TimeoutError:
                    pass
            while self._queue:
                batch = self._queue[: self.max_batch]
                del self._queue[: self.max_batch]
                self._full.clear()
                await self._commit(batch)
        finally:
            self._task = None
            if self._queue:  # arrived during the finally of a failed run
                self._task = asyncio.ensure_future(self._run())

    async def _commit(self, batch: list[Pending]) -> None:
        turn = await self.turns.acquire_commit_turn() if self.turns is not None else None
        try:
            await self._commit_in_turn(batch)
        finally:
            if self.turns is not None:
                self.turns.release_commit_turn(turn)

    async def _commit_in_turn(self, batch: list[Pending]) -> None:
        try:
            stored = await self._store(batch)
        except Exception as exc:  # the database call itself failed: nothing of this batch is acked
            log.warning("chat batch of %d failed: %r", len(batch), exc)
            error = exc if isinstance(exc, ApiError) else StoreFailed("The message could not be stored; send it again", "store_failed")
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(error)
            return
        try:
            await self.after_commit(stored)
        except Exception:  # delivery problems never un-store a message; sync recovers it
            log.exception("chat delivery after commit failed")
        for p in batch:
            if not p.future.done():
                p.future.set_result((p.doc, p.duplicate))

    async def _store(self, batch: list[Pending]) -> list[Pending]:
        """Store the batch; returns the Pendings that are new messages (in id order)."""
        first: dict[tuple[int, str], Pending] = {}
        unique: list[Pending] = []
        followers: list[tuple[Pending, Pending]] = []
        for p in batch:
            key = p.doc.get("client_msg_id")
            if key is not None:
                k = (p.doc["sender_id"], key)
                if k in first:
                    followers.append((p, first[k]))
                    continue
                first[k] = p
            unique.append(p)

        now = self.clock.now()
        # The pairs' conversation documents first: a stored message always has its
        # conversation (listing, unread counts, read receipts). If this fails, the batch
        # fails before anything is stored.
        await self.conversations.ensure({p.doc["conv"]: (p.doc["sender_id"], p.doc["receiver_id"]) for p in unique}, now)
        ids = await self.ids.reserve("messages", len(unique))
        docs = []
        for p, mid in zip(unique, ids):
            p.doc["_id"] = mid
            p.doc["created_at"] = now
            docs.append(p.doc)
        outcome = await self.messages.insert_batch(docs)

        if outcome.duplicates:
            keys = [(unique[i].doc["sender_id"], unique[i].doc["client_msg_id"], unique[i].doc["conv"]) for i in outcome.duplicates]
            existing = await self.messages.find_by_client_ids(keys)
            for i in outcome.duplicates:
                p = unique[i]
                found = existing.get((p.doc["sender_id"], p.doc["client_msg_id"]))
                if found is None:  # the duplicate vanished (deleted meanwhile): report, do not ack
                    outcome.failed[i] = "duplicate key but no stored message"
                else:
                    p.doc, p.duplicate = found, True
        for i, reason in outcome.failed.items():
            log.warning("chat message not stored: %s", reason)
            unique[i].future.set_exception(StoreFailed("The message could not be stored; send it again", "store_failed"))

        new = [p for i, p in enumerate(unique) if i not in outcome.failed and not p.duplicate]
        for p, leader in followers:
            if leader.future.done():  # the leader failed
                p.future.set_exception(leader.future.exception())
            else:
                p.doc, p.duplicate = leader.doc, True
        if new:
            MESSAGES_STORED.inc(len(new))
            BATCH_SIZE.observe(len(new))
        return new
