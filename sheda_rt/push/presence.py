"""Is a user connected anywhere? The hub answers: this process's sockets first, then the
global presence (sheda_rt/realtime/presence.py: with REDIS_URL, every live process's users in Redis). The push
dispatcher asks this before a push goes out; an unknown answer (Redis away) counts as
offline, so the push goes out (a duplicate beats a silent phone)."""
from __future__ import annotations


class Presence:
    def __init__(self, hub):
        self.hub = hub

    async def online_anywhere(self, user_id: int) -> bool:
        return await self.hub.online_anywhere(user_id)
