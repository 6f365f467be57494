"""Reports and the moderation queue.

Anyone signed in reports a message (only one of its two participants), a user or a listing,
with a reason. A message report keeps frozen copies of the message and of up to 20 messages
around it (10 before, 10 after) in its conversation, so a sender deleting them later (or a
moderator doing so) does not destroy the evidence. One open report per reporter per target
(the store's partial unique index; 409 `duplicate_report`).

Moderators and admins (role `moderator` or `admin`; a moderator has no admin scope and
cannot change roles: the admin routes refuse them) list the queue and act on a report once:
`dismiss` (status dismissed) or one action done on the target through the service that owns
it (status resolved): `delete_message` (the chat's delete for everyone), `delist_property` (the
listings service, announced to watchers as an agent's unlisting is), `deactivate_user` (the
accounts service: tokens dead, sockets closed with 4403). Who did what, when and why is kept
on the report (`handled_by`, `handled_at`, `action`, `note`) and logged, and the reporter
gets a notification (stored and in their event stream).
"""
from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING

from sheda_rt.clock import format_ts
from sheda_rt.errors import BadRequest, Conflict, Forbidden, NotFound, ValidationFailed
from sheda_rt.moderation.store import DuplicateReport, ReportStore

if TYPE_CHECKING:  # types only: the context wires these in
    from sheda_rt.accounts.service import AccountService
    from sheda_rt.accounts.users_store import UserStore
    from sheda_rt.chat.edits import MessageActions
    from sheda_rt.chat.service import ChatService
    from sheda_rt.clock import Clock
    from sheda_rt.listings.service import PropertyService
    from sheda_rt.listings.store import PropertyStore
    from sheda_rt.moderation.models import ReportAction, ReportCreate
    from sheda_rt.notifications.service import NotificationService

log = logging.getLogger("sheda.moderation")

MODERATOR_ROLES = frozenset({"moderator", "admin"})
EVIDENCE_AROUND = 10  # messages kept before and after a reported one (20 around it)

# Which action applies to which kind of report.
_ACTION_TARGETS = {"delete_message": {"message"}, "delist_property": {"property"},
                   "deactivate_user": {"message", "user", "property"}}


def is_moderator(user: dict) -> bool:
    return user.get("role") in MODERATOR_ROLES and user.get("is_active", True)


def _frozen(doc: dict) -> dict:
    """A message as reported: the fields a moderator judges by, copied (not referenced)."""
    row = {"id": doc["_id"], "sender_id": doc["sender_id"], "receiver_id": doc["receiver_id"],
           "message": doc.get("message", ""), "created_at": format_ts(doc["created_at"])}
    if doc.get("property_id") is not None:
        row["property_id"] = doc["property_id"]
    return row


def report_view(doc: dict) -> dict:
    view = {"id": doc["_id"], "reporter_id": doc["reporter_id"], "target_type": doc["target_type"],
            "target_id": doc["target_id"], "reason": doc["reason"], "details": doc.get("details"), "status": doc["status"],
            "created_at": format_ts(doc["created_at"])}
    if doc.get("evidence") is not None:
        view["evidence"] = doc["evidence"]
    if doc["status"] != "open":
        view.update(action=doc.get("action"), note=doc.get("note"), handled_by=doc.get("handled_by"),
                    handled_at=format_ts(doc.get("handled_at")))
    return view


class ModerationService:
    def __init__(self, store: ReportStore, *, users: UserStore, properties: PropertyStore, chat: ChatService,
                 messages: MessageActions, listings: PropertyService, accounts: AccountService,
                 notifications: NotificationService, clock: Clock):
        self.store = store
        self.users = users  # reported users exist; the target of deactivate_user
        self.properties = properties  # reported listings exist; their agent
        self.chat = chat  # a reported message and its neighbours
        self.messages = messages  # delete_message: the sender's delete for everyone (sheda_rt/chat/edits.py)
        self.listings = listings  # delist_property
        self.accounts = accounts  # deactivate_user
        self.notifications = notifications  # the reporter hears the outcome
        self.clock = clock

    # ---- reporting -------------------------------------------------------------
    async def report(self, reporter: int, body: ReportCreate) -> dict:
        doc = {"reporter_id": reporter, "target_type": body.target_type, "target_id": body.target_id, "reason": body.reason,
               "status": "open", "created_at": self.clock.now()}
        if body.details is not None:
            doc["details"] = body.details
        if body.target_type == "message":
            message, around = await self.chat.message_around(body.target_id, EVIDENCE_AROUND)
            if message is None:
                raise NotFound(f"No message with id {body.target_id}", "message_not_found")
            if reporter not in (message["sender_id"], message["receiver_id"]):
                raise Forbidden("Only a participant of the conversation can report a message", "not_participant")
            doc["evidence"] = {"message": _frozen(message), "context": [_frozen(m) for m in around]}
            doc["target_user_id"] = message["sender_id"]
        elif body.target_type == "user":
            if body.target_id == reporter:
                raise BadRequest("You cannot report yourself", "self_report")
            if await self.users.get(body.target_id) is None:
                raise NotFound(f"No user with id {body.target_id}", "user_not_found")
            doc["target_user_id"] = body.target_id
        else:
            prop = await self.properties.get(body.target_id)
            if prop is None:
                raise NotFound(f"No property with id {body.target_id}", "property_not_found")
            doc["target_user_id"] = prop["agent_id"]
        try:
            stored = await self.store.insert(doc)
        except DuplicateReport:
            raise Conflict("You already reported this and it is still open", "duplicate_report") from None
        log.info(json.dumps({"event": "report_created", "report_id": stored["_id"], "reporter_id": reporter,
                             "target_type": body.target_type, "target_id": body.target_id, "reason": body.reason}))
        return report_view(stored)

    # ---- the queue ---------------------------------------------------------------
    @staticmethod
    def require_moderator(user: dict) -> None:
        if not is_moderator(user):
            raise Forbidden("Moderator or admin access required", "moderator_required")

    async def queue(self, user: dict, status: str, page) -> dict:
        self.require_moderator(user)
        return await self.store.page(status, page, report_view)

    async def act(self, user: dict, report_id: int, body: ReportAction) -> dict:
        self.require_moderator(user)
        report = await self.store.get(report_id)
        if report is None:
            raise NotFound(f"No report with id {report_id}", "report_not_found")
        if report["status"] != "open":
            raise Conflict(f"This report is {report['status']} already", "report_not_open", extra={"status": report["status"]})
        if body.action != "dismiss":
            if report["target_type"] not in _ACTION_TARGETS[body.action]:
                raise ValidationFailed.single("action", f"{body.action} does not apply to a {report['target_type']} report")
            await self._do(user, report, body.action)
        now = self.clock.now()
        status = "dismissed" if body.action == "dismiss" else "resolved"
        handled = await self.store.handle(report_id, status, {"action": body.action, "note": body.note or "",
                                                             "handled_by": user["_id"], "handled_at": now})
        if handled is None:  # another moderator handled it meanwhile (every action is idempotent)
            current = await self.store.get(report_id)
            raise Conflict("This report was handled meanwhile", "report_not_open",
                           extra={"status": current["status"] if current else None})
        log.info(json.dumps({"event": "report_handled", "report_id": report_id, "moderator_id": user["_id"],
                             "role": user.get("role"), "action": body.action, "target_type": report["target_type"],
                             "target_id": report["target_id"]}))
        await self.notifications.notify(
            report["reporter_id"], "report.handled", "Your report was reviewed",
            "Thank you: we took action on what you reported." if status == "resolved"
            else "Thank you: we reviewed what you reported and took no action.",
            {"report_id": report_id, "status": status, "target_type": report["target_type"], "target_id": report["target_id"]})
        return report_view(handled)

    async def _do(self, moderator: dict, report: dict, action: str) -> None:
        if action == "delete_message":
            await self.messages.remove(report["target_id"])  # a tombstone already: nothing more to remove
        elif action == "delist_property":
            if not await self.listings.take_down(report["target_id"]):
                raise NotFound("The reported listing no longer exists", "property_not_found")
        elif action == "deactivate_user":
            target = await self.users.get(report["target_user_id"])
            if target is None:
                raise NotFound("The reported user no longer exists", "user_not_found")
            if target.get("role") in MODERATOR_ROLES:
                # Staff accounts are an admin's to change (PATCH /admin/users/{id}), not the queue's.
                raise Forbidden("A moderator or admin account cannot be deactivated from the queue", "staff_account")
            if target.get("is_active", True):
                await self.accounts.deactivate(target["_id"], reason="account deactivated by a moderator")
