"""Group commit: many senders, one insert_many.

Why: on the embedded database one insert_many of 100 messages costs about as
much as 10 single inserts, and the id counter is one round trip per batch
instead of per message. So messages that arrive from many sockets within a few
milliseconds (CHAT_BATCH_WINDOW_MS) are stored together, at most
CHAT_BATCH_MAX at a time.

Rules this class keeps:
- Batches are formed, given ids and written in arrival order, and released
  (delivered, then acked) strictly in that order, so deliveries of batch N go
  out before those of batch N+1 (per-conversation order, ids increasing on every
  socket). Messages arriving while batches are being stored wait for the next
  one, so batches grow with load by themselves.
- Up to CHAT_PIPELINE_DEPTH batches are in flight in one process (the next one
  is written while the previous waits for its journal flush: the server and the
  database work side by side instead of taking turns); a batch starts at once beside
  one insert in progress, beside two or more only when PARALLEL_MIN messages wait
  (fewer wait for one to answer). With several processes
  the depth is 1: a batch is stored and published during this process's turn
  (`turns`, a lock in Redis: sheda_rt/realtime/turns.py), so ids reach every
  socket in increasing order everywhere.
- Nothing is acked or delivered before its batch is stored. `after_commit`
  (the service's delivery) runs for the stored messages first; only then are
  the callers' futures resolved (the acks). A failed batch resolves its
  futures with the error: no ack, no delivery. A message the database refuses
  on its own (or the driver cannot encode) fails alone; the rest of its batch
  is stored, delivered and acked.
- A repeated (sender_id, client_msg_id) resolves to the stored message, whether
  the first copy is in the same batch, in a batch still in flight, or stored
  earlier (the idempotency window: sheda_rt/chat/idempotency.py).
- `drain()` (server shutdown) refuses new messages and returns once everything
  accepted so far is stored and answered.
- Durable events other than messages (read receipts, notifications, appointment
  and contract changes: sheda_rt/realtime/stream.py) go through the same batches
  (`submit_event`): they take positions from the same id reservation, are stored
  (in `events`, side by side with the messages' insert) and delivered in the same
  id order. That is what makes one ordered, resumable stream per user: a single
  sequencer, already ordered across processes by the commit turns.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Awaitable, Callable

from sheda_rt.chat.idempotency import RecentKeys
from sheda_rt.database.ids import ReservedIds
from sheda_rt.database.writes import InsertOutcome
from sheda_rt.errors import ApiError, ServiceUnavailable, ValidationFailed
from sheda_rt.metrics import BATCH_SIZE, MESSAGES_STORED
from sheda_rt.realtime.turns import LocalTurns, Turns

log = logging.getLogger("sheda.chat.batcher")


@dataclass(slots=True)
class Pending:
    doc: dict  # the message without _id / created_at yet
    origin: str | None  # conn_id of the sending socket (not delivered back to it)
    info: dict | None  # sender_info for the delivered frame (None for an event)
    future: asyncio.Future = field(default=None)
    duplicate: bool = False
    users: list[int] | None = None  # an event (not a message): its recipients

    @property
    def is_event(self) -> bool:
        return self.users is not None

    @property
    def key(self) -> tuple[int, str] | None:
        if self.users is not None:
            return None
        cmid = self.doc.get("client_msg_id")
        return None if cmid is None else (self.doc["sender_id"], cmid)


# A batch starts at once while fewer than FREE_INSERTS inserts are in progress; beside more,
# only once PARALLEL_MIN messages wait (fewer wait for one to answer and go together).
# Measured at 1,000 msgs/s (bash ../shared/perf/compare.sh, interleaved): with one insert
# at a time (FREE_INSERTS 1) a message arriving during an insert waited for its answer,
# then for its own (p50 send->deliver 2.5-2.8 ms); with the second starting at once the
# database takes it as soon as the first is done and the driver's work for it (~0.3 ms
# of this process's CPU) overlaps the first (p50 1.6-1.9 ms). Every free slot taking
# batches of 1 or 2 (no PARALLEL_MIN at all) made ~760 inserts/s with three in flight,
# whose per-insert cost on both sides set the tail; under heavier load the queue passes
# PARALLEL_MIN at once and every slot is used.
FREE_INSERTS = 2
PARALLEL_MIN = 16


class StoreFailed(ServiceUnavailable):
    code = "store_failed"


# In the idempotency window: a key whose batch's insert call failed without an answer (the
# connection dropped, the database died): it may or may not be stored, so a resend of it
# reads its conversation back from the database first.
UNCERTAIN = "uncertain"


def _claim(key: tuple[int, str]) -> str:
    return f"{key[0]}:{key[1]}"


@dataclass(slots=True)
class _Batch:
    new: list[Pending]  # to insert, in id order
    followers: list[tuple[Pending, Pending]]  # (resend, the Pending it repeats: same or earlier batch)
    turn: object = None
    claims: list[str] = field(default_factory=list)  # claimed in Redis for `new` (given back on failure)
    insert: asyncio.Future | None = None


class GroupCommit:
    def __init__(self, messages, conversations, ids, clock, *, window_ms: float, max_batch: int, events=None,
                 after_commit: Callable[[list[Pending]], Awaitable[None]], turns: Turns | None = None, depth: int = 3,
                 idempotency_seconds: float = 600, idempotency_messages: int = 1000):
        self.messages = messages
        self.events = events  # EventStore: where events of the stream are stored
        self.conversations = conversations
        self.ids = ids
        self.clock = clock
        self.window = window_ms / 1000.0
        self.max_batch = max_batch
        self.after_commit = after_commit
        # Commit turns: batches of all processes take turns (ids delivered in order everywhere).
        self.turns: Turns = turns or LocalTurns()
        self.depth = 1 if self.turns.shared else max(1, depth)
        # One process alone: ids come from ranges reserved ahead (no round trip per batch).
        # Several: each batch reserves its own inside its commit turn, so ids reach every
        # socket of every process in increasing order.
        self._reserved = None if self.turns.shared else ReservedIds(ids, "messages")
        self.recent = RecentKeys(idempotency_seconds, idempotency_messages)
        self.idempotency_seconds = idempotency_seconds
        self.idempotency_messages = idempotency_messages
        self._epoch = 0
        self._queue: list[Pending] = []
        self._task: asyncio.Task | None = None
        self._full = asyncio.Event()
        self._closed = False
        self._slots = asyncio.Semaphore(self.depth)
        self._writing = 0  # batches whose insert has not answered yet
        self._wake = asyncio.Event()  # an insert answered, or the queue reached PARALLEL_MIN
        self._last: asyncio.Future | None = None  # the newest batch's release (they run in order)
        self.stored_docs = 0  # messages and events stored so far (what fills the database's oplog)
        self._unreleased: dict[int, int] = {}  # id(batch) -> its first id, from ids handed out to released

    async def head(self) -> int:
        """The newest position handed out to a message or event (the stream's head: a
        client can have seen nothing above it, and is never handed anything at or below it later)."""
        if self._reserved is not None:
            return await self._reserved.head()
        return await self.ids.current("messages")

    async def settled(self) -> int:
        """The newest position at or below which every id this process handed out is released
        (stored and delivered, or failed). Reads that replay the stream (chat sync, stream replay)
        stop here: with inserts overlapping, a batch may be stored before an earlier one still
        being written, and a client that read it would advance past the earlier one's ids (and
        then see them delivered below its position). Above it, messages arrive live."""
        if self._unreleased:
            return min(self._unreleased.values()) - 1
        return await self.head()

    @property
    def backlog(self) -> int:
        return len(self._queue)

    def submit(self, doc: dict, *, origin: str | None, info: dict) -> asyncio.Future:
        """Queue a message; the future resolves to (stored doc, duplicate) once stored."""
        if self._closed:
            raise ServiceUnavailable("The server is shutting down; send again after reconnecting", "shutting_down")
        return self._enqueue(Pending(doc, origin, info, asyncio.get_running_loop().create_future()))

    def submit_event(self, users: list[int], text: str, *, origin: str | None = None, note: int | None = None) -> asyncio.Future:
        """Queue a durable event (its frame encoded, without seq) for `users`; the future
        resolves to (the stored event document, False) once it is stored and delivered. `note`: the
        notification it carries, stored once (EventStore's `note_unique`: a second one fails alone, StoreFailed)."""
        if self.events is None:
            raise RuntimeError("this group commit stores no events")
        if self._closed:
            raise ServiceUnavailable("The server is shutting down", "shutting_down")
        doc = {"users": users, "text": text} if note is None else {"users": users, "text": text, "note": note}
        return self._enqueue(Pending(doc, origin, None, asyncio.get_running_loop().create_future(), users=users))

    def _enqueue(self, pending: Pending) -> asyncio.Future:
        self._queue.append(pending)
        if len(self._queue) >= self.max_batch:
            self._full.set()
        if len(self._queue) >= PARALLEL_MIN:
            self._wake.set()
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())
        return pending.future

    async def drain(self) -> None:
        self._closed = True
        self._wake.set()  # a batch waiting beside busy inserts starts now
        if self._reserved is not None:
            self._reserved.stop_ahead()  # a server replacing this one may already hand out ids above our range
        while self._task is not None or (self._last is not None and not self._last.done()):
            self._full.set()
            if self._task is not None:
                await asyncio.shield(self._task)
            elif self._last is not None:
                await asyncio.shield(self._last)

    async def _run(self) -> None:
        try:
            if self.window > 0 and len(self._queue) < self.max_batch:
                self._full.clear()
                try:
                    await asyncio.wait_for(self._full.wait(), self.window)
                except asyncio.TimeoutError:
                    pass
            while self._queue:
                await self._slots.acquire()  # at most `depth` batches in flight
                # A few messages wait for an insert in progress rather than start a third
                # one beside two (see PARALLEL_MIN).
                while self._writing >= FREE_INSERTS and len(self._queue) < PARALLEL_MIN and not self._closed:
                    self._wake.clear()
                    await self._wake.wait()
                batch = self._queue[: self.max_batch]
                del self._queue[: self.max_batch]
                self._full.clear()
                await self._start(batch)
        finally:
            self._task = None
            if self._queue:  # arrived during the finally of a failed run
                self._task = asyncio.ensure_future(self._run())

    # ---- one batch: start (ids, write) here, release in order in _finish -----------
    async def _start(self, batch: list[Pending]) -> None:
        plan = None
        try:
            plan = await self._prepare(batch)
            if plan.new:  # (a batch of resends only writes nothing)
                plan.insert = asyncio.ensure_future(self._write(plan.new))
                self._writing += 1
                plan.insert.add_done_callback(self._written)
        except Exception as exc:  # before anything was written (_prepare gave back its slot and turn)
            log.warning("chat batch of %d failed: %r", len(batch), exc)
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(self._error(exc))
            return
        previous = self._last
        self._last = asyncio.ensure_future(self._finish(plan, previous))

    async def _prepare(self, batch: list[Pending]) -> _Batch:
        """Sort out resends, take the turn, ids and conversation documents. On failure
        nothing was written: gives back the slot (and the turn) and raises."""
        try:
            return await self._sort_out(batch)
        except BaseException:
            self._slots.release()
            raise

    async def _sort_out(self, batch: list[Pending]) -> _Batch:
        now = self.clock.now()
        recent = self.recent
        epoch = self.turns.epoch
        if epoch != self._epoch:
            # Redis came back after an outage: what was stored meanwhile has no claims, so
            # every conversation is read back from the database when it is next used.
            recent.clear()
            self._epoch = epoch
        recent.trim()  # only here: nothing is forgotten while a batch is being sorted out
        # Conversations this process does not know yet: read their newest keys back first
        # (after a restart, a resend of a message acked before it must be recognised).
        unknown = list({p.doc["conv"] for p in batch if p.key is not None and not recent.knows(p.doc["conv"])})
        if unknown:  # side by side: after a restart a busy batch may bring many
            found = await asyncio.gather(*(self.messages.recent_keys(conv, self.idempotency_messages) for conv in unknown))
            for conv, keys in zip(unknown, found):
                recent.learn(conv, keys, now)
        new: list[Pending] = []
        followers: list[tuple[Pending, Pending]] = []
        stored: list[tuple[Pending, int]] = []  # resends of messages stored earlier, by id
        leaders: dict[tuple[int, str], Pending] = {}  # this batch's first copy of each key
        uncertain: list[Pending] = []  # keys whose earlier insert may or may not have landed
        for p in batch:
            key = p.key
            if key is not None:
                hit = leaders.get(key) or recent.find(p.doc["conv"], key, now)
                if isinstance(hit, Pending):
                    followers.append((p, hit))
                    continue
                if hit is UNCERTAIN:
                    uncertain.append(p)
                elif hit is not None:
                    stored.append((p, hit))
                    continue
                leaders[key] = p
                recent.put(p.doc["conv"], key, p, now)  # in flight: a resend in a later batch follows it
            new.append(p)
        plan = _Batch(new=new, followers=followers)
        try:
            plan.claims = [_claim(p.key) for p in new if p.key is not None]
            plan.turn, claimed = await self.turns.acquire(plan.claims, self.idempotency_seconds)
            # Keys another process claimed (or every key, when Redis cannot be asked): its
            # batch is done (turns), so the conversation in the database says if it is stored.
            if claimed is None or not all(claimed) or uncertain:
                contested = [p for p in new if p.key is not None]
                if claimed is not None:
                    flags = iter(claimed)
                    contested = [p for p in contested if not next(flags)]
                contested_keys = {_claim(p.key) for p in contested}
                plan.claims = [c for c in plan.claims if c not in contested_keys]  # not ours to give back
                contested += [p for p in uncertain if _claim(p.key) not in contested_keys]
                convs = list({p.doc["conv"] for p in contested})
                found = dict(zip(convs, await asyncio.gather(*(self.messages.recent_keys(conv, self.idempotency_messages)
                                                               for conv in convs))))
                for p in contested:
                    hit = found[p.doc["conv"]].get(p.key)
                    if hit is not None:
                        stored.append((p, hit[0]))
                        new.remove(p)
            readded = False
            for p, mid in stored:
                doc = await self.messages.get(p.doc["conv"], mid)
                if doc is None:  # gone meanwhile (deleted): store it as a new message
                    recent.put(p.doc["conv"], p.key, p, now)
                    new.append(p)
                    readded = True
                else:
                    p.doc, p.duplicate = doc, True
                    recent.put(doc["conv"], p.key, mid, now)
            if readded:  # arrival order again
                order = {id(p): i for i, p in enumerate(batch)}
                new.sort(key=lambda p: order[id(p)])
            if new:
                # The pairs' conversation documents first: a stored message always has its
                # conversation (listing, unread counts, read receipts). If this fails, the batch
                # fails before anything is stored.
                pairs = {p.doc["conv"]: (p.doc["sender_id"], p.doc["receiver_id"]) for p in new if not p.is_event}
                if pairs:
                    await self.conversations.ensure(pairs, now)
                ids = (await self._reserved.take(len(new)) if self._reserved is not None
                       else await self.ids.reserve("messages", len(new)))
                for p, mid in zip(new, ids):
                    p.doc["_id"] = mid
                    if p.is_event:
                        p.doc["at"] = now
                    else:
                        p.doc["created_at"] = now
                self._unreleased[id(plan)] = ids[0]
        except BaseException:
            for p in new:
                if p.key is not None:
                    recent.forget(p.doc["conv"], p.key)
            if plan.turn is not None:
                self.turns.release(plan.turn)
            if plan.claims:
                await self.turns.release_claims(plan.claims)
            raise
        # Resends of stored messages are answered with this batch, first (a copy of one of
        # them later in the batch follows it).
        plan.followers[:0] = [(p, p) for p in batch if p.duplicate and not p.future.done()]
        return plan

    async def _finish(self, plan: _Batch, previous: asyncio.Future | None) -> None:
        """Wait for the earlier batches' release, then this batch's write; deliver, ack."""
        try:
            if previous is not None:
                await previous  # never raises (see below)
            await self._release(plan)
        except Exception:
            log.exception("chat batch release failed")
            for p in plan.new + [f for f, _ in plan.followers]:
                if not p.future.done():
                    p.future.set_exception(StoreFailed("The message could not be stored; send it again", "store_failed"))
        finally:
            self._unreleased.pop(id(plan), None)
            if plan.turn is not None:
                self.turns.release(plan.turn)
            self._slots.release()

    async def _release(self, plan: _Batch) -> None:
        recent = self.recent
        now = self.clock.now()
        failed_claims: list[str] = []
        if plan.insert is None:  # nothing to write (all resends)
            stored = []
        else:
            try:
                outcome = await plan.insert
            except Exception as exc:  # the database call itself failed: nothing of this batch is acked
                log.warning("chat batch of %d failed: %r", len(plan.new), exc)
                error = self._error(exc)
                for p in plan.new:
                    if p.key is not None:
                        # It may still have been written (an answer lost with its connection):
                        # a resend looks in the database first. Claims in Redis are kept for
                        # the same reason (another process resolves them the same way).
                        recent.put(p.doc["conv"], p.key, UNCERTAIN, now)
                    if not p.future.done():
                        p.future.set_exception(error)
                self._answer_followers(plan)
                return
            for i, reason in outcome.failed.items():
                p = plan.new[i]
                log.warning("chat message not stored: %s", reason)
                if p.key is not None:
                    recent.forget(p.doc["conv"], p.key)
                    failed_claims.append(_claim(p.key))
                if i in outcome.unencodable and not p.is_event:  # its content: sending it again cannot help
                    p.future.set_exception(ValidationFailed.single("message", "cannot be stored: it is not valid text"))
                else:  # refused by the database on its own (e.g. its id was taken): a resend gets a new one
                    p.future.set_exception(StoreFailed("The message could not be stored; send it again", "store_failed"))
            stored = [p for i, p in enumerate(plan.new) if i not in outcome.failed]
            self.stored_docs += len(stored)
            for p in stored:
                if p.key is not None:
                    recent.put(p.doc["conv"], p.key, p.doc["_id"], now)
            if failed_claims:
                await self.turns.release_claims([c for c in failed_claims if c in set(plan.claims)])
            messages = sum(1 for p in stored if not p.is_event)
            if messages:
                MESSAGES_STORED.inc(messages)
                BATCH_SIZE.observe(messages)
        if stored:
            try:
                await self.after_commit(stored)
            except Exception:  # delivery problems never un-store a message; sync recovers it
                log.exception("chat delivery after commit failed")
        for p in stored:
            if not p.future.done():
                p.future.set_result((p.doc, False))
        self._answer_followers(plan)

    def _written(self, _task) -> None:
        self._writing -= 1
        self._wake.set()

    async def _write(self, new: list[Pending]):
        """Insert the batch: messages into `messages`, events into `events`, side by side.
        Failures are reported by position in `new`; if the messages' call itself fails it
        raises (as it always did); if only the events' call fails, its events fail."""
        events = [i for i, p in enumerate(new) if p.is_event]
        if not events:
            return await self.messages.insert_batch([p.doc for p in new])
        messages = [i for i, p in enumerate(new) if not p.is_event]
        calls = [self.events.insert_batch([new[i].doc for i in events])]
        if messages:
            calls.append(self.messages.insert_batch([new[i].doc for i in messages]))
        results = await asyncio.gather(*calls, return_exceptions=True)
        if messages and isinstance(results[1], BaseException):
            raise results[1]
        outcome = InsertOutcome()
        for positions, result in zip((events, messages), results):
            if isinstance(result, BaseException):
                log.warning("stream events of a batch not stored: %r", result)
                outcome.failed.update({i: f"not stored: {type(result).__name__}" for i in positions})
                continue
            outcome.failed.update({positions[j]: why for j, why in result.failed.items()})
            outcome.unencodable.update(positions[j] for j in result.unencodable)
        return outcome

    @staticmethod
    def _answer_followers(plan: _Batch) -> None:
        for p, leader in plan.followers:
            if p.future.done():
                continue
            if p is leader:  # a resend of a message stored earlier
                p.future.set_result((p.doc, True))
            elif not leader.future.done():  # cannot happen: batches are released in order
                p.future.set_exception(StoreFailed("The message could not be stored; send it again", "store_failed"))
            elif leader.future.exception() is not None:
                p.future.set_exception(leader.future.exception())
            else:
                p.doc, p.duplicate = leader.future.result()[0], True
                p.future.set_result((p.doc, True))

    @staticmethod
    def _error(exc: BaseException) -> Exception:
        return exc if isinstance(exc, ApiError) else StoreFailed("The message could not be stored; send it again", "store_failed")
