"""[edits] REST for what happens to a message after it is sent: the socket's edit, delete, react
and received frames do the same (sheda_rt/chat/edits.py has the rules). Clients on the SSE
fallback, which cannot send frames, act through these."""
from __future__ import annotations

from handlers.base import APIHandler
from handlers.routing import endpoint, route
from sheda_rt.accounts.auth import USER
from sheda_rt.chat.frames import DeleteQuery, EditBody, ReactBody, ReceivedBody
from sheda_rt.chat.models import DeliveredReceipt, MessageDeleted, MessageReaction, MessageUpdated


class MessageHandler(APIHandler):
    @endpoint("Edit my message (within CHAT_EDIT_WINDOW_SECONDS of sending): message.updated to both participants",
              auth=USER, body=EditBody, response=MessageUpdated, errors=(401, 403, 404, 409, 422, 429), tags=("chat",))
    async def patch(self, message_id: int, body: EditBody):
        """403 `not_sender` (the receiver's message), 403 `blocked` (either of us blocks the other),
        404 `message_not_found` (unknown, another conversation's, deleted, or hidden for me), 409
        `edit_window_closed`, 422 empty text, 429 `rate_limited` with Retry-After (edits and reactions over
        REST spend one per-user budget, WS_CONTROL_BURST then WS_CONTROL_PER_SECOND).
        Answers the event both participants' sockets get (with its seq)."""
        await self.ctx.chat.spend_action_budget(self.principal.user_id)
        return await self.ctx.chat_edits.edit(self.principal.user_id, message_id, body.message)

    @endpoint("Delete a message: for=everyone (the sender: a tombstone for both) or for=me (hidden from my history)",
              auth=USER, query=DeleteQuery, response=MessageDeleted, errors=(401, 403, 404, 422), tags=("chat",))
    async def delete(self, message_id: int, query: DeleteQuery):
        """for=everyone: only the sender (403 `not_sender`), any time; the text, reactions and
        attachments are removed and a tombstone (`deleted: true`) stays; message.deleted to both.
        for=me: either participant; history, sync and the conversation list leave it out for me;
        message.deleted (`for: me`) to my sockets. 404 `message_not_found` otherwise."""
        return await self.ctx.chat_edits.delete(self.principal.user_id, message_id, query.scope)


class ReactionHandler(APIHandler):
    @endpoint("Toggle my reaction on a message (one of 👍 ❤️ 😂 😮 😢 🙏): message.reaction to both participants",
              auth=USER, body=ReactBody, response=MessageReaction, errors=(401, 403, 404, 422, 429), tags=("chat",))
    async def post(self, message_id: int, body: ReactBody):
        """`on` says whether my reaction is now set; `counts` are the message's reactions. 404
        `message_not_found` (unknown, another conversation's, deleted, hidden for me), 403 `blocked` (either of
        us blocks the other), 422 `invalid_emoji`, 429 `rate_limited` with Retry-After (the edits' budget)."""
        await self.ctx.chat.spend_action_budget(self.principal.user_id)
        return await self.ctx.chat_edits.react(self.principal.user_id, message_id, body.emoji)


class ReceivedHandler(APIHandler):
    @endpoint("Say my devices received a peer's messages up to an id (same as the socket's received frame)", auth=USER,
              body=ReceivedBody, response=DeliveredReceipt, errors=(400, 401, 422), tags=("chat",))
    async def post(self, body: ReceivedBody):
        """The peer's sockets get `delivered` when the watermark moved; `delivered_at` is null (no
        event) when nothing new was received. 400 `self_message`."""
        return await self.ctx.chat_edits.received(self.principal.user_id, body.other_user_id, body.up_to)


default_handlers = [
    route("/api/v1/chat/messages/{message_id:int}", MessageHandler),
    route("/api/v1/chat/messages/{message_id:int}/reactions", ReactionHandler),
    route("/api/v1/chat/received", ReceivedHandler),
]
