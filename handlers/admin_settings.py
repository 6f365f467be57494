"""/api/v1/admin/settings: runtime settings (admins), their audit, and the public status
the apps read the maintenance banner from."""
from __future__ import annotations

from handlers.base import APIHandler
from handlers.routing import endpoint, route
from sheda_rt.accounts.auth import ADMIN
from sheda_rt.responses import Page
from sheda_rt.runtime_settings.models import (RuntimeSettings, RuntimeSettingsPatch, SettingsAuditEntry, SettingsAuditQuery,
                                              Status)

TAGS = ("admin",)


class AdminSettingsHandler(APIHandler):
    @endpoint("Runtime settings (admins)", auth=ADMIN, response=RuntimeSettings, errors=(401, 403), tags=TAGS)
    async def get(self):
        """Every key, with its static default (BOOKING_HOLD_HOURS, ...) until an admin changed it."""
        return await self.ctx.runtime_settings.view()

    @endpoint("Change runtime settings (admins)", auth=ADMIN, body=RuntimeSettingsPatch, response=RuntimeSettings,
              errors=(401, 403, 422), tags=TAGS)
    async def patch(self, body: RuntimeSettingsPatch):
        """Only the keys sent change (unknown keys: 422, nothing changed). Every process uses the new
        values once this answers. Each change is audited (GET /api/v1/admin/settings/audit)."""
        return await self.ctx.runtime_settings.update(self.principal.user_id, body)


class AdminSettingsAuditHandler(APIHandler):
    @endpoint("Runtime settings changes, newest first (admins)", auth=ADMIN, query=SettingsAuditQuery,
              response=Page[SettingsAuditEntry], errors=(401, 403, 422), tags=TAGS)
    async def get(self, query: SettingsAuditQuery):
        """`{items: [{id, who, when, changes: {key: [old, new]}}], next_cursor}`."""
        return await self.ctx.runtime_settings.audit(query)


class StatusHandler(APIHandler):
    @endpoint("Service status for the apps", response=Status, tags=("operations",))
    async def get(self):
        """Public. `maintenance_banner`: text to show while set, else null."""
        return await self.ctx.runtime_settings.status()


default_handlers = [
    route("/api/v1/admin/settings", AdminSettingsHandler),
    route("/api/v1/admin/settings/audit", AdminSettingsAuditHandler),
    route("/api/v1/status", StatusHandler),
]
