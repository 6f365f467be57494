"""GET /api/v1/events: the resumable event stream over REST (the socket's `sync` with
`after_seq`, page for page). See sheda_rt/realtime/stream.py for the rule on `seq`."""
from __future__ import annotations

from handlers.base import APIHandler
from handlers.routing import endpoint, route
from sheda_rt.accounts.auth import USER
from sheda_rt.errors import ApiError
from sheda_rt.realtime.models import EventsPage, EventsQuery
from sheda_rt.realtime.stream import StreamReset


class StreamGone(ApiError):
    status, code = 410, "stream_reset"


class EventsHandler(APIHandler):
    @endpoint("My durable events after a position (messages, receipts, notifications, appointment.* / contract.* ...)",
              auth=USER, query=EventsQuery, response=EventsPage, errors=(401, 410, 422), tags=("realtime",))
    async def get(self, query: EventsQuery):
        """`{items: [frames as the socket sends them, each with seq], last_seq, more, epoch}`. When
        `after_seq` cannot be resumed (older than EVENT_RETENTION_DAYS, beyond anything this data set
        handed out, or `epoch` is not this data set's): 410 `{"code": "stream_reset", "epoch", "reason",
        "last_seq"}` — refetch state over REST, then continue from `last_seq`."""
        try:
            replay = await self.ctx.stream.replay(self.principal.user_id, query.after_seq, query.limit, query.epoch)
        except StreamReset as reset:
            raise StreamGone("This position cannot be resumed: refetch over REST, then continue from last_seq",
                             extra={"epoch": reset.epoch, "reason": reset.reason, "last_seq": reset.last_seq})
        return {"items": replay.frames, "last_seq": replay.last_seq, "more": replay.more, "epoch": replay.epoch}


default_handlers = [route("/api/v1/events", EventsHandler)]
