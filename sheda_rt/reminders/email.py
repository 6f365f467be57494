"""Every email this package sends goes through `EmailSender`: to an active user with an address,
with the unsubscribe link for its kind at the bottom and in the List-Unsubscribe headers."""
from __future__ import annotations

import json
import logging

from sheda_rt.reminders.unsubscribe import UnsubscribeLinks

log = logging.getLogger("sheda.reminders")

KIND_NAMES = {"chat": "chat message", "appointments": "viewing", "contracts": "contract", "listings": "saved search alert"}


class EmailSender:
    def __init__(self, mailer, links: UnsubscribeLinks):
        self.mailer = mailer
        self.links = links

    async def send(self, user: dict | None, kind: str, subject: str, body: str, attachments=()) -> bool:
        """False (nothing sent) for a missing or deactivated user or one without an address."""
        if user is None or not user.get("is_active", True) or not user.get("email"):
            return False
        url = self.links.url(user["_id"], kind)
        footer = (f"\n\n--\nYou get this because {KIND_NAMES.get(kind, kind)} emails are on in your Sheda notification settings."
                  f"\nTurn them off with one click: {url}\n")
        await self.mailer.send(user["email"], subject, body + footer, headers=self.links.headers(user["_id"], kind),
                               attachments=attachments)
        log.info(json.dumps({"event": "email_sent", "kind": kind, "user_id": user["_id"]}))
        return True
