"""Rate limits and failure counters, behind one interface.

`MemoryLimits` serves a single process. With REDIS_URL set, a Redis-backed
class with the same methods replaces it so limits hold across processes.
Callers never know which one they have.
"""
from __future__ import annotations

import math
import time
from collections import deque


class MemoryLimits:
    def __init__(self, monotonic=time.monotonic):
        self._now = monotonic
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, last refill time)
        self._failures: dict[str, deque] = {}

    async def take_token(self, key: str, burst: int, per_second: float) -> float:
        """Token bucket. 0.0 when allowed; otherwise seconds until a token is available."""
        now = self._now()
        tokens, last = self._buckets.get(key, (float(burst), now))
        tokens = min(float(burst), tokens + (now - last) * per_second)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1.0 - tokens) / per_second

    def forget_bucket(self, key: str) -> None:
        self._buckets.pop(key, None)

    async def record_failure(self, key: str, window_seconds: float) -> int:
        """Count a failure in a sliding window; returns failures now in the window."""
        now = self._now()
        q = self._failures.setdefault(key, deque())
        q.append(now)
        while q and q[0] <= now - window_seconds:
            q.popleft()
        return len(q)

    async def blocked_for(self, key: str, limit: int, window_seconds: float) -> int:
        """Seconds until `key` drops below `limit` failures (0 when not blocked)."""
        now = self._now()
        q = self._failures.get(key)
        if not q:
            return 0
        while q and q[0] <= now - window_seconds:
            q.popleft()
        if len(q) < limit:
            return 0
        return max(1, math.ceil(q[-limit] + window_seconds - now))

    async def clear_failures(self, key: str) -> None:
        self._failures.pop(key, None)

    async def forgive_failure(self, key: str) -> None:
        """Take back one failure (the newest): for attempts counted before they were judged."""
        q = self._failures.get(key)
        if q:
            q.pop()


class TokenBucket:
    """A token bucket owned by one object (a socket): no shared dict, no await."""

    __slots__ = ("burst", "per_second", "tokens", "last", "_now")

    def __init__(self, burst: int, per_second: float, monotonic=time.monotonic):
        self.burst, self.per_second, self._now = float(burst), per_second, monotonic
        self.tokens, self.last = float(burst), monotonic()

    def take(self) -> float:
        """0.0 when allowed; otherwise seconds until a token is available."""
        now = self._now()
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.per_second)
        self.last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.per_second


class BurstGuard:
    """How one socket answers frames its budget refused: a burst is throttled, only
    persistence is abuse.

    A mobile app flushing its offline outbox sends 40 frames at once. Counting every
    refused frame as a strike closed that socket (1008) in the middle of its own
    burst, before the acks of the stored half could be sent. Now:

    - retry_after is staggered: the k-th frame refused while earlier ones are still
      waiting gets a slot 1/rate after the previous one, so a client that resends each
      refused frame after its retry_after is accepted rather than refused again;
    - a refused frame is a strike only when it arrives while the client has been told
      to wait for more than GRACE seconds (time to read the refusal) and the wait has
      not passed: a client that keeps sending anyway. Frames of one burst arrive before
      the client could have read any answer, so a burst alone never strikes;
    - `strikes` strikes within WINDOW seconds is persistent abuse (close 1008).
    """

    GRACE = 1.0
    WINDOW = 10.0

    __slots__ = ("strikes_before_close", "_slot", "_told_at", "_strikes", "_now")

    def __init__(self, strikes_before_close: int, monotonic=time.monotonic):
        self.strikes_before_close = strikes_before_close
        self._now = monotonic
        self._slot = 0.0  # when the last frame told to wait may come back
        self._told_at = 0.0  # when this run of refusals began
        self._strikes: deque = deque()

    def refused(self, wait: float, per_second: float) -> tuple[float, bool]:
        """A frame was refused (`wait`: seconds until the budget has a token). Returns
        (retry_after for this frame, whether the socket is now persistently abusive)."""
        now = self._now()
        if now >= self._slot:  # nobody is waiting: a new run
            self._told_at = now
            self._slot = now + wait
        else:
            self._slot = max(self._slot + 1.0 / per_second, now + wait)
            if now - self._told_at > self.GRACE:
                self._strikes.append(now)
        while self._strikes and self._strikes[0] < now - self.WINDOW:
            self._strikes.popleft()
        return self._slot - now, len(self._strikes) >= self.strikes_before_close
