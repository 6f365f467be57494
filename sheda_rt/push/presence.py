"""Is a user connected anywhere? This process's sockets first, then (with REDIS_URL) the
global presence the Redis broker keeps (sheda_rt/realtime/redis_broker.py: one set of users per
live process, `<prefix>presence:<process id>`, live processes in the `<prefix>procs` sorted set
scored by their last heartbeat). Read-only here: the broker owns those keys."""
from __future__ import annotations

import json
import logging

log = logging.getLogger("sheda.push")

# KEYS: procs zset. ARGV: presence key prefix, ttl ms, user id. 1 when a live process holds the user.
_ONLINE_ANYWHERE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for _, p in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], now - tonumber(ARGV[2]), '+inf')) do
  if redis.call('SISMEMBER', ARGV[1] .. p, ARGV[3]) == 1 then return 1 end
end
return 0
"""


class Presence:
    def __init__(self, hub):
        self.hub = hub
        broker = hub.broker
        self._redis = getattr(broker, "redis", None)
        self._script = self._redis.register_script(_ONLINE_ANYWHERE) if self._redis is not None else None

    async def online_anywhere(self, user_id: int) -> bool:
        if self.hub.is_connected_here(user_id):
            return True
        if self._script is None:
            return False
        broker = self.hub.broker
        if not getattr(broker, "up", True):
            return False  # Redis away: unknown, so the push goes out (a duplicate beats a silent phone)
        try:
            return bool(await self._script(keys=[broker._procs_key], args=[broker._presence_prefix, broker.ttl_ms, user_id]))
        except Exception as exc:
            log.info(json.dumps({"event": "push_presence_failed", "error": repr(exc)[:200]}))
            return False
