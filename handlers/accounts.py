"""/api/v1/auth/* and /api/v1/users/*: thin edges over AccountService."""
from __future__ import annotations

from handlers.base import APIHandler
from handlers.routing import endpoint, route
from sheda_rt.accounts.auth import USER
from sheda_rt.accounts.models import LoginRequest, RegisterRequest, TokenPair
from sheda_rt.accounts.service import private_user


class RegisterHandler(APIHandler):
    @endpoint("Register a client or agent; an OTP is emailed", body=RegisterRequest, status=201, errors=(409, 422), tags=("auth",))
    async def post(self, body: RegisterRequest):
        return private_user(await self.ctx.accounts.register(body))


class LoginHandler(APIHandler):
    @endpoint("Log in with username, email or phone (form or JSON)", body=LoginRequest, form=True, response=TokenPair,
              errors=(401, 422, 429), tags=("auth",))
    async def post(self, body: LoginRequest):
        return await self.ctx.accounts.login(body.username, body.password)


class MeHandler(APIHandler):
    @endpoint("My profile", auth=USER, tags=("users",))
    async def get(self):
        return private_user(self.principal.user)


default_handlers = [
    route("/api/v1/auth/register", RegisterHandler),
    route("/api/v1/auth/login", LoginHandler),
    route("/api/v1/users/me", MeHandler),
]
