"""/api/v1/reports (anyone signed in) and /api/v1/moderation/* (moderators and admins):
thin edges over ModerationService, which checks the role."""
from __future__ import annotations

from handlers.base import APIHandler
from handlers.routing import endpoint, route
from sheda_rt.accounts.auth import USER
from sheda_rt.moderation.models import ReportAction, ReportCreate, ReportOut, ReportQuery
from sheda_rt.pagination import PageQuery
from sheda_rt.responses import Page


class ReportsHandler(APIHandler):
    @endpoint("Report a message, a user or a listing", auth=USER, body=ReportCreate, response=ReportOut, status=201,
              errors=(400, 401, 403, 404, 409, 422), tags=("moderation",))
    async def post(self, body: ReportCreate):
        """`{target_type: message|user|property, target_id, reason: spam|harassment|fraud|inappropriate|other,
        details?}` (details at most 2000 characters). A message can be reported only by one of its two
        participants (403 `not_participant`); the report keeps frozen copies of it and of up to 20 messages
        around it (`evidence`), which stay when the messages are deleted. One open report per reporter per
        target: 409 `duplicate_report`. 404 `message_not_found` / `user_not_found` / `property_not_found`;
        400 `self_report` for reporting yourself."""
        return await self.ctx.moderation.report(self.principal.user_id, body)


class ModerationReportsHandler(APIHandler):
    @endpoint("The moderation queue (moderators and admins)", auth=USER, query=ReportQuery, response=Page[ReportOut],
              errors=(401, 403, 422), tags=("moderation",))
    async def get(self, query: ReportQuery):
        """`?status=open` (the default; oldest first) `|resolved|dismissed` (newest first), cursor pagination.
        403 `moderator_required` unless the caller's role is moderator or admin."""
        return await self.ctx.moderation.queue(self.principal.user, query.status, PageQuery(limit=query.limit, cursor=query.cursor))


class ModerationReportHandler(APIHandler):
    @endpoint("Handle a report (moderators and admins)", auth=USER, body=ReportAction, response=ReportOut,
              errors=(401, 403, 404, 409, 422), tags=("moderation",))
    async def patch(self, report_id: int, body: ReportAction):
        """`{action, note}`. `dismiss`: nothing is done, status `dismissed`. Otherwise the action is done and the
        status is `resolved`: `delete_message` (message reports: the message becomes a tombstone, `deleted: true`,
        its text gone; both participants get `message.deleted`), `delist_property` (property reports: unlisted as
        by its agent), `deactivate_user` (the reported user, the message's sender or the listing's agent: tokens
        stop working, sockets close with 4403; 403 `staff_account` for a moderator or admin). An action that does
        not fit the report's target is a 422 on `action`. Who acted, when, what and why are kept on the report
        (`handled_by`, `handled_at`, `action`, `note`) and logged; the reporter gets a `report.handled`
        notification. 409 `report_not_open` when it was handled already; 404 `report_not_found`;
        403 `moderator_required`."""
        return await self.ctx.moderation.act(self.principal.user, report_id, body)


default_handlers = [
    route("/api/v1/reports", ReportsHandler),
    route("/api/v1/moderation/reports", ModerationReportsHandler),
    route("/api/v1/moderation/reports/{report_id:int}", ModerationReportHandler),
]
