"""Notifications: stored for the user AND pushed live, in that order.

Every state change of an appointment or a contract calls `notify` for the other
party (the one who did not act). The stored copy is what GET /notifications
lists (a user who was offline sees it later); the live copy is a
`{"type": "notification", ...}` frame on every open socket of the user.
Domain events (`appointment.confirmed`, `contract.active`, ...) go out through
`publish_event`, to both parties, so every open screen can update itself.

Every stored notification is also pushed to the user's phones and browsers (the push dispatcher,
sheda_rt/push/dispatch.py: one job per device, none while the user has a socket or event stream
open, their notification settings and quiet hours applying), so a user whose app is closed learns a
client booked a viewing. Announcements (`notify_many`) push through one fan-out job instead
(sheda_rt/realtime/announcements.py).

Delivery is best effort: a broker hiccup is logged and never undoes or fails the
state change that caused it (the stored notification is the durable record).
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from sheda_rt.clock import format_ts
from sheda_rt.errors import NotFound

if TYPE_CHECKING:  # types only: the context wires these in (runtime imports here would make cycles)
    from sheda_rt.clock import Clock
    from sheda_rt.notifications.store import NotificationStore
    from sheda_rt.push.dispatch import Dispatcher
    from sheda_rt.realtime.stream import EventStream

log = logging.getLogger("sheda.notifications")


def notification_view(doc: dict) -> dict:
    return {
        "id": doc["_id"],
        "kind": doc["kind"],
        "title": doc["title"],
        "body": doc["body"],
        "data": doc.get("data") or {},
        "is_read": doc.get("is_read", False),
        "created_at": format_ts(doc["created_at"]),
        "read_at": format_ts(doc.get("read_at")),
    }


class NotificationService:
    def __init__(self, store: NotificationStore, *, clock: Clock, stream: EventStream, push: Dispatcher | None = None):
        self.store = store
        self.clock = clock
        self.stream = stream  # every notification and domain event gets a position in each user's stream
        self.push = push  # the push dispatcher: each stored notification goes to the user's devices while they are offline

    async def _push(self, user_ids, event: dict) -> None:
        """Through the event stream: stored with a position in each user's stream, then
        delivered (a client that was offline replays it with sync after_seq)."""
        try:
            await self.stream.publish(user_ids, event)
        except Exception:  # the state change already happened; the stored copy remains
            log.exception("event %r for users %s not published", event.get("type"), list(user_ids))

    async def notify(self, user_id: int, kind: str, title: str, body: str, data: dict | None = None, *, push: bool = True,
                     key: str | None = None) -> dict | None:
        """Store, publish, and push (unless `push` is False: a caller that pushes it its own way,
        saved-search alerts with their per-listing key). With `key`, once per key whoever calls (a retry, another
        process): None when a notification of that key was stored and published already (nothing published or pushed
        again). One stored by a process that died before publishing it (`unpublished` still on it) is published by the
        next caller with its key, once even when several race: its frame goes on the event stream under a unique
        `note` (its id), only the caller whose append stored it delivers the frame and pushes (the push jobs are keyed
        by the notification's id too), and it is then recorded published (one write more than an unkeyed one)."""
        fields = {"user_id": user_id, "kind": kind, "title": title, "body": body, "data": data or {},
                  "is_read": False, "created_at": self.clock.now()}
        if key is None:
            doc = await self.store.insert(fields)
            view = notification_view(doc)
            await self._push([user_id], {"type": "notification", **view})
        else:
            doc = await self.store.insert_once(dict(fields, key=key, unpublished=True))
            if doc is None:
                doc = await self.store.unpublished(key)
                if doc is None:
                    return None
            view = notification_view(doc)
            if not await self._publish_once(doc, view):
                return None
        if push and self.push is not None:
            self.push.on_notification(doc["user_id"], view)  # cheap: the checks and the job run in the background
        return view

    async def _publish_once(self, doc: dict, view: dict) -> bool:
        """The frame of keyed notification `doc` on the event stream once; False when another caller's is there
        already (that one delivers and pushes it). A stream failure of another kind is logged and the notification
        left unpublished for the next caller with its key (pushed all the same: its push jobs are made once)."""
        try:
            await self.stream.publish([doc["user_id"]], {"type": "notification", **view}, note=doc["_id"])
        except Exception:
            try:
                if await self.stream.events.has_note(doc["_id"]):
                    return False  # published by another caller
            except Exception:
                pass
            log.exception("notification %s for user %s not published", doc["_id"], doc["user_id"])
            return True
        try:
            await self.store.mark_published(doc["_id"], self.clock.now())
        except Exception:  # the next caller with its key finds its frame stored: nothing sent twice
            log.exception("notification %s not recorded published", doc["_id"])
        return True

    async def publish_event(self, user_ids, event: dict) -> None:
        """A domain event (`{"type": "contract.active", "contract": {...}}`) to each user's sockets."""
        await self._push(list(dict.fromkeys(user_ids)), event)  # one event, one position in each user's stream

    async def notify_many(self, user_ids, kind: str, title: str, body: str, data: dict | None = None) -> int:
        """Store the same notification for many users (an administrator's announcement to
        thousands), in a few round trips (ids reserved in one call, chunked insert_many).
        No per-user live frame is published: the caller sends one frame to everyone (the
        `announcement`), so these are for GET /notifications. Returns how many were stored."""
        fields = {"kind": kind, "title": title, "body": body, "data": data or {}, "is_read": False, "created_at": self.clock.now()}
        return await self.store.insert_for_users(list(dict.fromkeys(user_ids)), fields)

    async def list(self, user_id: int, unread: bool | None, page) -> dict:
        result = await self.store.page(user_id, unread, page, notification_view)
        result["unread_count"] = await self.store.unread_count(user_id)
        return result

    async def mark_read(self, user_id: int, notification_id: int) -> dict:
        doc = await self.store.mark_read(user_id, notification_id, self.clock.now())
        if doc is None:
            raise NotFound("No such notification", "notification_not_found")
        if self.push is not None:
            self.push.on_notifications_read(user_id)  # cheap: a badge update for the phones that show its push
        return notification_view(doc)

    async def mark_all_read(self, user_id: int) -> dict:
        marked = await self.store.mark_all_read(user_id, self.clock.now())
        if marked and self.push is not None:
            self.push.on_notifications_read(user_id)
        return {"marked_read": marked}

    async def forget_user(self, user_id: int) -> None:
        """A pending registration was replaced by its email's owner (AccountService.registration_replaced):
        what was sent to the old registrant (an announcement, an admin's verdict on their company) is not
        the new one's. Their `notification` frames leave the event stream with the rest of their events."""
        await self.store.delete_for_user(user_id)
