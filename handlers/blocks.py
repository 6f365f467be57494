"""/api/v1/users/{id}/block and /api/v1/users/me/blocks: thin edges over BlockService."""
from __future__ import annotations

from handlers.base import APIHandler
from handlers.routing import endpoint, route
from sheda_rt.accounts.auth import USER
from sheda_rt.blocks.models import BlockOut
from sheda_rt.pagination import PageQuery
from sheda_rt.responses import Page


class BlockHandler(APIHandler):
    @endpoint("Block a user", auth=USER, response=BlockOut, status=201, errors=(400, 401, 404), tags=("blocks",))
    async def post(self, user_id: int):
        """Idempotent: blocking again answers 201 with the first block. While either of two users
        blocks the other: messages between them are refused (socket error frame `blocked`, REST
        403 `blocked`, neither saying which side blocked), typing and presence are not forwarded
        either way, the client cannot book a viewing of the agent's listings (409 `blocked`);
        their conversation stays readable (history, sync). 400 `self_block`, 404 `user_not_found`."""
        return await self.ctx.blocks.block(self.principal.user_id, user_id)

    @endpoint("Unblock a user", auth=USER, status=204, errors=(401,), tags=("blocks",))
    async def delete(self, user_id: int):
        """Idempotent (204 also when not blocked). A block the other user made stays."""
        await self.ctx.blocks.unblock(self.principal.user_id, user_id)


class MyBlocksHandler(APIHandler):
    @endpoint("The users I block (newest first)", auth=USER, query=PageQuery, response=Page[BlockOut], errors=(401, 422),
              tags=("blocks",))
    async def get(self, query: PageQuery):
        """Cursor pagination: `{"items": [...], "next_cursor": ...}`. Only my own blocks: who blocks me is never told."""
        return await self.ctx.blocks.list_mine(self.principal.user_id, query)


default_handlers = [
    route("/api/v1/users/me/blocks", MyBlocksHandler),
    route("/api/v1/users/{user_id:int}/block", BlockHandler),
]
