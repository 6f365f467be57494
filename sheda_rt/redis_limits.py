"""Rate limits and failure counters in Redis: `MemoryLimits`' methods, shared by
every process using the same REDIS_URL (and MONGODB_DB, which names the keys).

Each operation is one Lua script, so a check-and-update is atomic across
processes, and time is Redis's own clock (`TIME`), so processes on hosts with
skewed clocks agree. Every key carries a TTL: an idle bucket or an old failure
window costs nothing.

- Token bucket: a hash {tokens, ts}; refilled lazily on each take.
- Failures: a sliding log in a sorted set (score = time), trimmed on each call;
  `blocked_for` answers when the oldest of the last `limit` failures leaves the
  window — the same numbers MemoryLimits gives.

If Redis is unreachable the call falls back to an in-process MemoryLimits:
limits still hold per process during an outage instead of failing every login
or every socket frame. After a failure Redis is not tried again for a second,
so an unreachable (not just refusing) Redis never makes each call wait for a
connect timeout.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid

from sheda_rt.limits import MemoryLimits

log = logging.getLogger("sheda.limits")

_NOW_SECONDS = """
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
"""

# KEYS[1] bucket. ARGV: burst, per_second. Returns seconds to wait ("0" when a token was taken).
_TAKE_TOKEN = _NOW_SECONDS + """
local burst = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil or ts == nil then tokens = burst; ts = now end
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens), 'ts', string.format('%.17g', now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return string.format('%.17g', wait)
"""

# KEYS[1] failure log. ARGV: window seconds, unique member. Returns failures in the window.
_RECORD_FAILURE = _NOW_SECONDS + """
local window = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
redis.call('ZADD', KEYS[1], now, ARGV[2])
redis.call('PEXPIRE', KEYS[1], math.ceil(window * 1000))
return redis.call('ZCARD', KEYS[1])
"""

# KEYS[1] failure log. ARGV: limit, window seconds. Returns whole seconds until below the limit.
_BLOCKED_FOR = _NOW_SECONDS + """
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) < limit then return 0 end
local oldest = redis.call('ZRANGE', KEYS[1], -limit, -limit, 'WITHSCORES')
return math.max(1, math.ceil(tonumber(oldest[2]) + window - now))
"""


class RedisLimits:
    RETRY_AFTER_FAILURE = 1.0  # seconds on the in-process fallback before trying Redis again

    def __init__(self, client, namespace: str):
        self.redis = client
        self.prefix = f"sheda:{namespace}:limit:"
        self.fallback = MemoryLimits()
        self._take = client.register_script(_TAKE_TOKEN)
        self._record = client.register_script(_RECORD_FAILURE)
        self._blocked = client.register_script(_BLOCKED_FOR)
        self._warned = False
        self._skip_until = 0.0

    def _use_redis(self) -> bool:
        return time.monotonic() >= self._skip_until

    def _degraded(self, exc: Exception) -> None:
        self._skip_until = time.monotonic() + self.RETRY_AFTER_FAILURE
        if not self._warned:
            log.warning(json.dumps({"event": "limits_fallback_to_memory", "error": repr(exc)[:200]}))
            self._warned = True

    async def take_token(self, key: str, burst: int, per_second: float) -> float:
        """Token bucket. 0.0 when allowed; otherwise seconds until a token is available."""
        if not self._use_redis():
            return await self.fallback.take_token(key, burst, per_second)
        try:
            wait = float(await self._take(keys=[self.prefix + "tb:" + key], args=[burst, repr(float(per_second))]))
        except Exception as exc:
            self._degraded(exc)
            return await self.fallback.take_token(key, burst, per_second)
        self._warned = False
        return wait

    def forget_bucket(self, key: str) -> None:
        """Drop a bucket now (it would also expire once full). Best effort, never blocks."""
        self.fallback.forget_bucket(key)
        try:
            task = asyncio.get_running_loop().create_task(self.redis.delete(self.prefix + "tb:" + key))
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
        except RuntimeError:
            pass

    async def record_failure(self, key: str, window_seconds: float) -> int:
        """Count a failure in a sliding window; returns failures now in the window."""
        if not self._use_redis():
            return await self.fallback.record_failure(key, window_seconds)
        try:
            return int(await self._record(keys=[self.prefix + "fail:" + key], args=[repr(float(window_seconds)), uuid.uuid4().hex]))
        except Exception as exc:
            self._degraded(exc)
            return await self.fallback.record_failure(key, window_seconds)

    async def blocked_for(self, key: str, limit: int, window_seconds: float) -> int:
        """Seconds until `key` drops below `limit` failures (0 when not blocked)."""
        if not self._use_redis():
            return await self.fallback.blocked_for(key, limit, window_seconds)
        try:
            return int(await self._blocked(keys=[self.prefix + "fail:" + key], args=[limit, repr(float(window_seconds))]))
        except Exception as exc:
            self._degraded(exc)
            return await self.fallback.blocked_for(key, limit, window_seconds)

    async def clear_failures(self, key: str) -> None:
        await self.fallback.clear_failures(key)
        if not self._use_redis():
            return
        try:
            await self.redis.delete(self.prefix + "fail:" + key)
        except Exception as exc:
            self._degraded(exc)

    async def forgive_failure(self, key: str) -> None:
        """Take back one failure (the newest): for attempts counted before they were judged."""
        if not self._use_redis():
            return await self.fallback.forgive_failure(key)
        try:
            await self.redis.zpopmax(self.prefix + "fail:" + key)
        except Exception as exc:
            self._degraded(exc)
            await self.fallback.forgive_failure(key)
