"""/api/v1/notifications/*: what happened while you were away (each was also pushed live)."""
from __future__ import annotations

from typing import Optional

from pydantic import ConfigDict

from handlers.base import APIHandler
from handlers.routing import endpoint, route
from sheda_rt.accounts.auth import USER
from sheda_rt.notifications.models import MarkedRead, NotificationOut, NotificationPage
from sheda_rt.pagination import PageQuery

TAGS = ("notifications",)


class NotificationQuery(PageQuery):
    model_config = ConfigDict(extra="forbid")
    unread: Optional[bool] = None


class NotificationsHandler(APIHandler):
    @endpoint("My notifications, newest first", auth=USER, query=NotificationQuery, response=NotificationPage, errors=(401, 422),
              tags=TAGS)
    async def get(self, query: NotificationQuery):
        """`{items: [{id, kind, title, body, data, is_read, created_at, read_at}], next_cursor, unread_count}`;
        `?unread=true` lists only unread ones. `kind` is the event (`appointment.booked`, `contract.expired`, ...).
        Each notification was also sent live on the chat socket as `{"type": "notification", ...same fields}`."""
        return await self.ctx.notifications.list(self.principal.user_id, query.unread, query)


class ReadHandler(APIHandler):
    @endpoint("Mark one notification read", auth=USER, response=NotificationOut, errors=(401, 404), tags=TAGS)
    async def patch(self, notification_id: int):
        """Idempotent; 404 for someone else's notification."""
        return await self.ctx.notifications.mark_read(self.principal.user_id, notification_id)


class ReadAllHandler(APIHandler):
    @endpoint("Mark all my notifications read", auth=USER, response=MarkedRead, errors=(401,), tags=TAGS)
    async def post(self):
        """Returns `{marked_read: n}`."""
        return await self.ctx.notifications.mark_all_read(self.principal.user_id)


default_handlers = [
    route("/api/v1/notifications", NotificationsHandler),
    route("/api/v1/notifications/read-all", ReadAllHandler),
    route("/api/v1/notifications/{notification_id:int}/read", ReadHandler),
]
