"""The server's own voice on the sockets: an administrator's announcement to everyone
(or to one type of user), and closing one user's sockets.

Announcement
------------
`POST /api/v1/admin/broadcast {message, user_type?}`:
1. a notification (kind `announcement`) is stored for every targeted user: every
   active user, or every active user of `user_type`. One read of the users' ids and a
   few chunked inserts (`NotificationService.notify_many`), not a round trip per user.
   No per-user `notification` frame is sent for these: the announcement frame is the
   live part, and GET /notifications is where a user who was offline reads it;
2. then one frame `{"type": "announcement", "message", "user_type"?, "created_at"}` goes
   to every open socket of those users, on every process (a control message through
   the broker: each process encodes it once and hands it to its own sockets). It is
   ephemeral: no `seq`, never replayed.
3. then ONE push job (`push.announcement`, sheda_rt/push/dispatch.py) that, in the background, walks
   the registered devices and pushes the announcement to the targeted users who are offline then,
   each user's `push.announcements` switch (notification settings) and quiet hours applying.
Storing comes first, so a client that reacts to the frame by listing its notifications
finds it there. The answer counts what is known when it is given: `notified` (stored),
and `delivered_sockets`, the sockets of the process that took the request; sockets on
other processes get it as the control message reaches them and are not counted.

Disconnect
----------
`POST /api/v1/admin/users/{id}/disconnect` closes every socket of that user on every
process with close code 4000 ("disconnected by an administrator"). Nothing else
changes: the user's tokens stay valid and the client may reconnect (to keep someone
out, deactivate them with PATCH /admin/users/{id}).
"""
from __future__ import annotations

import logging
import uuid
from typing import Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator

from sheda_rt.accounts.models import UserType
from sheda_rt.clock import format_ts
from sheda_rt.errors import NotFound
from sheda_rt.responses import ResponseModel

log = logging.getLogger("sheda.realtime")

#: Close code of sockets closed by POST /admin/users/{id}/disconnect (4000-4999: the application's own).
CLOSE_BY_ADMIN = 4000
CLOSE_BY_ADMIN_REASON = "disconnected by an administrator"
MAX_ANNOUNCEMENT_CHARS = 2000


class BroadcastBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    message: str = Field(min_length=1, max_length=MAX_ANNOUNCEMENT_CHARS,
                         description=f"1 to {MAX_ANNOUNCEMENT_CHARS} characters, not only whitespace")
    user_type: Optional[UserType] = Field(None, description="Only users of this type (default: everyone)")

    @field_validator("message")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be only whitespace")
        return value


class BroadcastResult(ResponseModel):
    notified: int = Field(ge=0, description="users a notification (kind `announcement`) was stored for")
    delivered_sockets: int = Field(ge=0, description=(
        "sockets of the process that took this request the frame was handed to; sockets on other "
        "processes get it too but cannot be counted when this answer is sent"))


class DisconnectResult(ResponseModel):
    user_id: int
    close_code: int = Field(description=f"{CLOSE_BY_ADMIN}: the code the user's sockets are closed with")


class RealtimeAdmin:
    """The rules above. Depends on the hub (delivery and session control on every process),
    the users store (who is targeted, who exists), notifications and the clock."""

    def __init__(self, hub, users, notifications, clock, push=None):
        self.hub = hub
        self.users = users
        self.notifications = notifications
        self.clock = clock
        self.push = push  # the push dispatcher (one fan-out job per announcement)

    async def broadcast(self, message: str, user_type: str | None = None) -> dict:
        frame: dict = {"type": "announcement", "message": message}
        if user_type is not None:
            frame["user_type"] = user_type
        frame["created_at"] = format_ts(self.clock.now())
        targets = await self.users.active_ids(user_type)
        notified = await self.notifications.notify_many(targets, "announcement", "Announcement", message,
                                                        {"user_type": user_type} if user_type else {})
        delivered = await self.hub.broadcast(frame, user_type)
        if self.push is not None:
            try:
                await self.push.announce("Announcement", message, user_type, uuid.uuid4().hex)
            except Exception:  # stored and delivered live already: the push is extra reach
                log.exception("announcement push not queued")
        return {"notified": notified, "delivered_sockets": delivered}

    async def disconnect(self, user_id: int) -> dict:
        if await self.users.get(user_id) is None:
            raise NotFound("No such user", "user_not_found")
        await self.hub.revoke_sessions(user_id, code=CLOSE_BY_ADMIN, reason=CLOSE_BY_ADMIN_REASON)
        return {"user_id": user_id, "close_code": CLOSE_BY_ADMIN}
