"""Which (sender_id, client_msg_id) keys a conversation has already stored: the
chat's idempotency window.

Why not a unique index: on the embedded database each index entry costs about
0.2 ms of its single core, and the unique (sender_id, client_msg_id) index was
one of two per message (batches of 100: 2,050 rows/s with both indexes, 3,440
with the conversation index alone). Resends come within seconds or minutes of
the original (a client that lost the ack reconnects and sends again), so a
bounded window is what exactly-once needs, as chat services generally do it:

- A resend is recognised when the original is among the newest
  CHAT_IDEMPOTENCY_MESSAGES keyed messages of its conversation and at most
  CHAT_IDEMPOTENCY_SECONDS old. Older resends are stored as new messages.
  A key is per sender and conversation: the same client_msg_id sent to another
  receiver is another message.
- In this process: `RecentKeys` below, per conversation. A conversation this
  process has not seen since it started (a restart, a kill -9) or has forgotten
  (memory is bounded) is first read back from the database: its newest keyed
  messages, through the conversation index. So a restart never lets a resend
  of an acked (hence stored) message be stored twice.
- Across processes (REDIS_URL): each new key is claimed in Redis (SET NX with
  the window as its expiry) in the same round trip that takes the commit turn
  (sheda_rt/realtime/turns.py). Turns are held until a batch is stored
  and published, so a key someone else claimed is either stored or its batch
  failed; the claimer's message is then looked up in the conversation.
- With Redis unreachable, every conversation of the batch is read back from the
  database before storing (slower, but nothing stored is stored twice except
  for two processes storing the same resend at the same instant).
"""
from __future__ import annotations

from collections import OrderedDict
from datetime import timedelta


class RecentKeys:
    """Per conversation, its newest keyed messages: key -> (value, created_at), where
    value is the stored message id, the in-flight Pending of a batch not yet
    stored (a resend then waits for that batch), or batcher.UNCERTAIN (its insert
    call failed without an answer: a resend reads the conversation back first). Bounded: at most `per_conv` keys
    per conversation and `max_entries` in all (whole conversations are forgotten,
    least recently used first, and read back from the database when they return)."""

    def __init__(self, window_seconds: float, per_conv: int, max_entries: int = 200_000):
        self.window = timedelta(seconds=window_seconds)
        self.per_conv = per_conv
        self.max_entries = max(max_entries, per_conv)
        self._convs: OrderedDict[str, OrderedDict] = OrderedDict()
        self._total = 0

    def knows(self, conv: str) -> bool:
        return conv in self._convs

    def learn(self, conv: str, entries: dict, now) -> None:
        """A conversation read back from the database (oldest first); what this process
        already holds for it wins."""
        known = self._convs.get(conv)
        fresh = OrderedDict()
        cutoff = now - self.window
        for key, (value, at) in entries.items():
            if at is None or at >= cutoff:
                fresh[key] = (value, at)
        if known:
            for key, entry in known.items():
                fresh.pop(key, None)
                fresh[key] = entry
            self._total -= len(known)
        while len(fresh) > self.per_conv:
            fresh.popitem(last=False)
        self._convs[conv] = fresh
        self._convs.move_to_end(conv)
        self._total += len(fresh)

    def find(self, conv: str, key, now):
        """The stored id or the in-flight Pending for key in conv, or None."""
        entries = self._convs.get(conv)
        if not entries:
            return None
        hit = entries.get(key)
        if hit is None:
            return None
        value, at = hit
        if at is not None and at < now - self.window:
            return None
        return value

    def put(self, conv: str, key, value, now) -> None:
        """Remember key (in flight or stored). Only for a conversation this process
        knows: one it forgot is read back from the database when needed."""
        entries = self._convs.get(conv)
        if entries is None:
            return
        if key in entries:
            entries[key] = (value, now)
            return
        entries[key] = (value, now)
        self._total += 1
        self._convs.move_to_end(conv)
        while len(entries) > self.per_conv:
            entries.popitem(last=False)
            self._total -= 1

    def forget(self, conv: str, key) -> None:
        """A key whose message was not stored (its batch failed): a resend is new."""
        entries = self._convs.get(conv)
        if entries is not None and entries.pop(key, None) is not None:
            self._total -= 1

    def clear(self) -> None:
        """Forget every conversation (each is read back from the database when next used)."""
        self._convs.clear()
        self._total = 0

    def trim(self) -> None:
        """Forget least recently used conversations beyond max_entries; called between
        batches only, so a conversation is never forgotten while a batch relies on it.
        Never one with a message in flight: read back from the database it would not
        show that message yet."""
        for _ in range(len(self._convs)):
            if self._total <= self.max_entries:
                return
            conv, entries = next(iter(self._convs.items()))
            if any(not isinstance(value, (int, str)) for value, _ in entries.values()):
                self._convs.move_to_end(conv)
                continue
            del self._convs[conv]
            self._total -= len(entries)
