"""/api/v1/users/*: profiles. Thin edges over AccountService."""
from __future__ import annotations

from handlers.base import APIHandler
from handlers.routing import endpoint, route
from sheda_rt.accounts.auth import USER
from sheda_rt.accounts.service import private_user


class MeHandler(APIHandler):
    @endpoint("My profile", auth=USER, tags=("users",))
    async def get(self):
        return private_user(self.principal.user)


default_handlers = [
    route("/api/v1/users/me", MeHandler),
]
