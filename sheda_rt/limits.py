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
