"""Following an unsubscribe link: the signed token says whose email of which kind to turn off."""
from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING

from sheda_rt.errors import ValidationFailed
from sheda_rt.push.models import NotificationSettings

if TYPE_CHECKING:
    from sheda_rt.push.service import PushService
    from sheda_rt.reminders.unsubscribe import UnsubscribeLinks

log = logging.getLogger("sheda.reminders")


class UnsubscribeService:
    def __init__(self, *, links: UnsubscribeLinks, preferences: PushService):
        self.links = links
        self.preferences = preferences  # notification settings

    def check(self, token: str | None) -> str:
        """The kind of email a genuine token turns off (what the link's page asks about; nothing changes);
        422 for a missing token or one that is not one we signed (tampered, truncated, another kind)."""
        if not token:
            raise ValidationFailed.single("token", "is required (the token of the link in the email)")
        found = self.links.verify(token)
        if found is None:
            raise ValidationFailed.single("token", "is not a valid unsubscribe link")
        return found[1]

    async def unsubscribe(self, token: str | None) -> dict:
        """422 as `check`; else the kind is off in the user's settings (idempotent: twice is fine)."""
        self.check(token)
        user_id, kind = self.links.verify(token)
        current = await self.preferences.get_settings(user_id)
        current["email"] = dict(current["email"], **{kind: False})
        await self.preferences.put_settings(user_id, NotificationSettings.model_validate(current))
        log.info(json.dumps({"event": "email_unsubscribed", "user_id": user_id, "kind": kind}))
        return {"kind": kind, "email_enabled": False}
