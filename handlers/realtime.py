"""The real-time layer's REST routes: presence on request, and the administrators'
announcement and disconnect (sheda_rt/realtime/presence_query.py, announcements.py)."""
from __future__ import annotations

from handlers.base import APIHandler
from handlers.routing import endpoint, route
from sheda_rt.accounts.auth import ADMIN, USER
from sheda_rt.realtime.announcements import BroadcastBody, BroadcastResult, DisconnectResult
from sheda_rt.realtime.presence_query import PresenceAsk, PresenceList


class PresenceHandler(APIHandler):
    @endpoint("Who of these is online now, and when each was last seen", auth=USER, query=PresenceAsk, response=PresenceList,
              errors=(401, 422), tags=("chat",))
    async def get(self, query: PresenceAsk):
        """`?user_ids=1,2,3` (at most 100) → `{items: [{user_id, online, last_seen}]}`, in the order asked, only for
        people you share a conversation with: other ids (strangers, unknown ids, your own) are left out, never
        reported as offline. `online`: an open socket on any server process; `last_seen`: when their last socket
        closed (null if never). Live changes come on the socket as `presence` frames."""
        return await self.ctx.presence_query.of(self.principal.user_id, query.ids)


class BroadcastHandler(APIHandler):
    @endpoint("Announce something to every connected user (or one type of user)", auth=ADMIN, body=BroadcastBody,
              response=BroadcastResult, status=202, tags=("admin",))
    async def post(self, body: BroadcastBody):
        """`{message, user_type?}`. Stores a notification (kind `announcement`) for every active user (of `user_type`),
        then sends `{"type": "announcement", "message", "user_type"?, "created_at"}` to every open socket of those users
        on every server process (ephemeral: no `seq`, never replayed; offline users read the notification, and
        their devices get a push unless their `push.announcements` setting is off: one background job fans it out).
        202: `notified` users got the stored notification; `delivered_sockets` counts only the sockets of the process
        that answered (the others deliver as the message reaches them)."""
        return await self.ctx.realtime_admin.broadcast(body.message, body.user_type)


class DisconnectHandler(APIHandler):
    @endpoint("Close every socket of a user, on every process", auth=ADMIN, response=DisconnectResult, status=202,
              errors=(404,), tags=("admin",))
    async def post(self, user_id: int):
        """Closes the user's sockets with close code 4000 ("disconnected by an administrator") on every server process
        (202: the other processes close theirs as the signal reaches them). Tokens stay valid and the client may
        reconnect; to keep a user out, deactivate them (PATCH /admin/users/{id}). 404 for an unknown user."""
        return await self.ctx.realtime_admin.disconnect(user_id)


default_handlers = [
    route("/api/v1/presence", PresenceHandler),
    route("/api/v1/admin/broadcast", BroadcastHandler),
    route("/api/v1/admin/users/{user_id:int}/disconnect", DisconnectHandler),
]
