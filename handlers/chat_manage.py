"""/api/v1/chat/conversations/{peer_id}/settings (mute, archive) and /api/v1/chat/search: thin
edges over ConversationManager and MessageSearch (sheda_rt/chat/manage.py, search.py)."""
from __future__ import annotations

from handlers.base import APIHandler
from handlers.routing import endpoint, route
from sheda_rt.accounts.auth import USER
from sheda_rt.chat.manage import ConversationSettings, ConversationSettingsIn
from sheda_rt.chat.search import SearchPage, SearchQuery

TAGS = ("chat",)


class ConversationSettingsHandler(APIHandler):
    @endpoint("My mute and archive settings of a conversation", auth=USER, response=ConversationSettings,
              errors=(401, 404), tags=TAGS)
    async def get(self, peer_id: int):
        """404 `conversation_not_found` when I never talked with that user."""
        return await self.ctx.chat_manage.get(self.principal.user_id, peer_id)

    @endpoint("Mute or archive a conversation (for me only)", auth=USER, body=ConversationSettingsIn,
              response=ConversationSettings, errors=(401, 404, 422), tags=TAGS)
    async def patch(self, peer_id: int, body: ConversationSettingsIn):
        """`{muted_until: "2025-10-16T10:00:00Z" | "forever" | null, archived: true | false}`; a field
        left out stays as it is. A muted conversation still counts in unread totals but sends no
        push notifications until the mute ends. An archived one leaves the default conversation list
        (`?archived=true` lists it) and comes back by itself when a newer message arrives, either way.
        404 `conversation_not_found` when I never talked with that user."""
        return await self.ctx.chat_manage.update(self.principal.user_id, peer_id, body)


class ChatSearchHandler(APIHandler):
    @endpoint("Search my messages", auth=USER, query=SearchQuery, response=SearchPage, errors=(401, 404, 422), tags=TAGS)
    async def get(self, query: SearchQuery):
        """Messages of my conversations (or only the one `with` a user) in which every word of `q`
        begins a word, ignoring case and accents ("cafe" finds "Café"); newest first. Deleted
        messages never match. A page may hold fewer than `limit` hits, even none, when one request's
        work bound is reached: keep asking with `next_cursor` while `more` is true.
        404 `user_not_found` for an unknown `with`; 422 for a `q` without letters or digits."""
        return await self.ctx.chat_search.search(self.principal.user_id, query)


default_handlers = [
    route("/api/v1/chat/conversations/{peer_id:int}/settings", ConversationSettingsHandler),
    route("/api/v1/chat/search", ChatSearchHandler),
]
