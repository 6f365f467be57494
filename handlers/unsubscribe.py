"""/api/v1/email/unsubscribe: the one-click unsubscribe link of every email (no login: the token is signed)."""
from __future__ import annotations

from handlers.base import APIHandler
from handlers.routing import endpoint, route
from sheda_rt.reminders.models import OneClickForm, UnsubscribeOut, UnsubscribeQuery

TAGS = ("email",)


class UnsubscribeHandler(APIHandler):
    @endpoint("Turn one kind of email off (the link in the email)", query=UnsubscribeQuery, response=UnsubscribeOut,
              errors=(422,), tags=TAGS)
    async def get(self, query: UnsubscribeQuery):
        """`?token=` from the email's link: turns that kind of email (chat digests, viewing or contract
        reminders) off in the user's notification settings (`email.<kind>: false`). No login: the token is
        an HMAC over the user id and the kind; a tampered or made-up token is 422 with nothing changed."""
        return await self.ctx.unsubscribe.unsubscribe(query.token)

    @endpoint("One-click unsubscribe (RFC 8058, what mail clients send)", query=UnsubscribeQuery, body=OneClickForm, form=True,
              response=UnsubscribeOut, errors=(400, 415, 422), tags=TAGS)
    async def post(self, query: UnsubscribeQuery, body: OneClickForm):
        """The `List-Unsubscribe` header's URL, POSTed with the form `List-Unsubscribe=One-Click` as the
        `List-Unsubscribe-Post` header asks: the same as following the link."""
        return await self.ctx.unsubscribe.unsubscribe(query.token)


default_handlers = [
    route("/api/v1/email/unsubscribe", UnsubscribeHandler),
]
