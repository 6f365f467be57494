"""/api/v1/email/unsubscribe: the unsubscribe link of every email (no login: the token is signed).

GET, what following the link in the email does, only shows a small page asking to confirm (its form
POSTs): mail scanners and link previewers open every link of a mail, and a GET that unsubscribed switched
users' emails off behind their backs (RFC 8058 section 1). POST unsubscribes: the page's button, or a
mail provider's one-click POST of the `List-Unsubscribe` URL (`List-Unsubscribe=One-Click`). The links in
emails already sent are the same URL, so they still lead to unsubscribing, through the page."""
from __future__ import annotations

from html import escape
from urllib.parse import quote

from handlers.base import APIHandler
from handlers.routing import endpoint, route
from sheda_rt.reminders.email import KIND_NAMES
from sheda_rt.reminders.models import OneClickForm, UnsubscribeOut, UnsubscribeQuery

TAGS = ("email",)

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex"><title>{title}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:32rem;margin:3rem auto;padding:0 1rem;color:#222}}
button{{font-size:1rem;padding:.6rem 1.2rem;cursor:pointer}}</style></head>
<body><main><h1>{title}</h1>{content}</main></body></html>
"""
# No script, no styles or images from elsewhere, never framed (no clickjacking of the button), the
# form posts here only, and the token in the URL is not sent on as a Referer.
_HEADERS = {"Content-Type": "text/html; charset=utf-8", "Cache-Control": "no-store", "Referrer-Policy": "no-referrer",
            "X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; "
                                       "base-uri 'none'"}


def _kind_name(kind: str) -> str:
    return KIND_NAMES.get(kind, kind)


class UnsubscribeHandler(APIHandler):
    def _page(self, title: str, content: str) -> None:
        for name, value in _HEADERS.items():
            self.set_header(name, value)
        self.finish(_PAGE.format(title=escape(title), content=content))

    def _wants_html(self) -> bool:
        """A browser's form submission (the page's button) gets a page back; a mail provider's one-click
        POST and API clients get the JSON body."""
        accept = self.request.headers.get("Accept", "")
        return "text/html" in accept and "application/json" not in accept

    @endpoint("The unsubscribe link's page: asks to confirm (changes nothing)", query=UnsubscribeQuery, errors=(422,), tags=TAGS,
              content_type="text/html")
    async def get(self, query: UnsubscribeQuery):
        """`?token=` from the email's link: an HTML page naming the kind of email (chat digests, viewing or
        contract reminders, saved-search alerts) with one button, a form that POSTs here (below). Opening
        the link changes nothing, so mail scanners that open every link no longer switch emails off. A
        tampered or made-up token is 422 (JSON)."""
        kind = self.ctx.unsubscribe.check(query.token)
        name = escape(_kind_name(kind))
        action = escape(f"?token={quote(query.token, safe='')}", quote=True)
        self._page(f"Turn off {_kind_name(kind)} emails?", (
            f"<p>You will no longer get {name} emails from Sheda. You can turn them on again in the app's notification settings.</p>"
            f'<form method="post" action="{action}"><input type="hidden" name="List-Unsubscribe" value="One-Click">'
            f'<button type="submit" id="unsubscribe">Turn off {name} emails</button></form>'))

    @endpoint("Turn one kind of email off (the page's button; RFC 8058 one-click)", query=UnsubscribeQuery, body=OneClickForm,
              form=True, response=UnsubscribeOut, errors=(400, 415, 422), tags=TAGS)
    async def post(self, query: UnsubscribeQuery, body: OneClickForm):
        """The `List-Unsubscribe` header's URL, POSTed with the form `List-Unsubscribe=One-Click` as the
        `List-Unsubscribe-Post` header asks (what mail providers' unsubscribe button sends), or the link's
        page's button: turns that kind of email off in the user's notification settings (`email.<kind>:
        false`) → `{kind, email_enabled: false}`; a browser's form submission (Accept text/html) gets a page
        saying so. Idempotent. No login: the token is an HMAC over the user id and the kind; a tampered or
        made-up token is 422 with nothing changed."""
        result = await self.ctx.unsubscribe.unsubscribe(query.token)
        if self._wants_html():
            name = escape(_kind_name(result["kind"]))
            return self._page("You are unsubscribed", (
                f"<p id=\"done\">You will no longer get {name} emails from Sheda. "
                "You can turn them on again in the app's notification settings.</p>"))
        return result


default_handlers = [
    route("/api/v1/email/unsubscribe", UnsubscribeHandler),
]
