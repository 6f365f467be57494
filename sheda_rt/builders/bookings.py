"""Bookings of off-plan units and their installment schedules. Knows nothing about HTTP.

    POST /bookings (client)                       -> reserved  (unit available -> reserved, hold BOOKING_HOLD_HOURS)
    reserved --line 1 confirmed (builder)-->      active      (unit reserved -> booked)
    active   --every line confirmed-->            completed   (unit booked -> sold)
    reserved --cancel (client, or builder with a reason)--> cancelled (unit available)
    active   --cancel (builder with a reason)-->  cancelled   (unit available)
    reserved --hold lapsed (the job)-->           expired     (unit available)

Installment lines (line 1 is the booking payment, due when the hold ends):

    due | overdue --payment-sent {reference} (client)--> sent
    sent --confirm (builder)--> confirmed
    sent --decline (builder)--> due (overdue when its date has passed)
    due  --its date passed (the job)--> overdue

Correctness lives in the data: every move is one conditional update
(sheda_rt/database/transitions.py's `guarded_transition`) whose filter names the
expected states, the booking's for a booking move and the line's (`installments.<i>.status`,
with the booking's state in the same filter) for a line move, so of two racing requests
exactly one moves it. The unit is the exclusive thing: a booking is stored first, then
takes its unit with `available -> reserved` in one conditional update that records the
booking's id on the unit (two bookings racing for one unit: one takes it, the other's
booking document is deleted and it answers 409, on any number of processes). Later unit
moves (booked, sold, back to available) name that booking id in their filter, so a
booking only ever moves the unit it holds.

The hold pauses while the booking payment awaits the builder's answer (the client said it
is sent): `hold_until` is dropped and what was left of it kept; a decline gives it back (at
least an hour), so a builder's late answer does not expire a paid-in-good-faith booking.

Reminders and overdue marking are the periodic job's (`BookingJob`): each line's reminder
and each line's overdue move is a guarded update, so a notification goes out once however
many processes run the job, and a repeated pass changes nothing.

A booking and its unit are two documents: every booking move that moves the unit writes
`unit_synced: false` with it and sets it back once the unit has moved, so a process that
dies in between leaves a mark; the job finishes such moves (`sync_units`) after a minute.
"""
from __future__ import annotations

import logging
from datetime import datetime, time, timedelta, timezone
from decimal import Decimal
from typing import TYPE_CHECKING, Awaitable, Callable

from pymongo import ASCENDING, DESCENDING, IndexModel

from sheda_rt.builders.service import minor_text, split_price
from sheda_rt.clock import format_ts
from sheda_rt.contracts.service import add_months
from sheda_rt.database.transitions import guarded_transition
from sheda_rt.database.writes import update_then_get
from sheda_rt.errors import Conflict, Forbidden, NotFound, ValidationFailed
from sheda_rt.jobs.periodic import PeriodicTrigger
from sheda_rt.listings.money import format_money
from sheda_rt.listings.service import is_admin
from sheda_rt.metrics import JOB_RUNS
from sheda_rt.pagination import paginate

if TYPE_CHECKING:  # types only: the context wires these in
    from sheda_rt.builders.service import ProjectService
    from sheda_rt.builders.store import PaymentPlanStore, ProjectStore, UnitStore
    from sheda_rt.clock import Clock
    from sheda_rt.database.ids import IdAllocator
    from sheda_rt.notifications.service import NotificationService
    from sheda_rt.runtime_settings.models import RuntimeSettings

log = logging.getLogger("sheda.bookings")

OPEN = ["reserved", "active"]
UNPAID = ["due", "overdue"]
#: A declined booking payment gets back what was left of its hold, but at least this long.
MIN_HOLD_AFTER_DECLINE = timedelta(hours=1)
#: Bookings read per batch by the job's passes.
JOB_PAGE = 500
#: The unit state each booking state means.
UNIT_STATE = {"reserved": "reserved", "active": "booked", "completed": "sold", "cancelled": "available", "expired": "available"}
#: How long a booking's unit move may be in flight before the job finishes it.
UNSYNCED_GRACE = timedelta(minutes=1)


class BookingStore:
    """The `bookings` collection: one document per booking with its schedule embedded (the
    lines move with the booking in one write). `parties` = [client_id, builder_id,
    "client:<id>", "builder:<id>"]: the plain ids serve "my bookings" and the tagged ones "my
    bookings as the builder", each an equality on one indexed field (the embedded planner uses
    an index only when every condition is one of its keys, so a separate `builder_id`
    condition would scan the collection)."""

    INDEXES = [
        IndexModel([("parties", ASCENDING), ("_id", DESCENDING)], name="parties_newest"),
        IndexModel([("parties", ASCENDING), ("status", ASCENDING), ("_id", DESCENDING)], name="parties_status"),
        IndexModel([("status", ASCENDING), ("hold_until", ASCENDING)], name="hold_due"),
        IndexModel([("status", ASCENDING), ("_id", ASCENDING)], name="status_walk"),
        IndexModel([("project_id", ASCENDING), ("status", ASCENDING)], name="project_status"),
        IndexModel([("unit_synced", ASCENDING), ("updated_at", ASCENDING)], name="unit_sync"),
    ]

    def __init__(self, db, ids):
        self.col = db["bookings"]
        self.ids = ids

    async def ensure_indexes(self):
        await self.col.create_indexes(self.INDEXES)

    async def new_id(self) -> int:
        return await self.ids.next("bookings")

    async def insert(self, doc: dict) -> dict:
        await self.col.insert_one(doc)
        return doc

    async def delete(self, booking_id: int) -> None:
        await self.col.delete_one({"_id": booking_id})

    async def get(self, booking_id: int) -> dict | None:
        return await self.col.find_one({"_id": booking_id})

    async def move(self, booking_id: int, from_states: list[str], to_state: str, now, *, who: dict | None = None,
                   extra: dict | None = None, unset: str | None = None) -> dict | None:
        return await guarded_transition(self.col, booking_id, from_states, to_state, now, who=who, extra=extra, unset=unset)

    async def move_line(self, booking_id: int, index: int, from_states: list[str], to_state: str, now, *, who: dict,
                        extra: dict | None = None, unset: str | None = None) -> dict | None:
        return await guarded_transition(self.col, booking_id, from_states, to_state, now, who=who, extra=extra, unset=unset,
                                        field=f"installments.{index}.status")

    async def add_line(self, booking_id: int, count: int, line: dict, now, *, who: dict) -> dict | None:
        """Append `line` to the schedule when it still has `count` lines and no line of the same
        change request (a change request's accepted quote): one conditional write, so it is added
        once and two lines never share a number. The booking after it, or None."""
        query = {"_id": booking_id, "installments": {"$size": count},
                 "installments.change_request_id": {"$ne": line["change_request_id"]}, **who}
        return await update_then_get(self.col, query, {"$push": {"installments": line}, "$set": {"updated_at": now}})

    async def page(self, user_id: int, status: str | None, role: str | None, page, serialize) -> dict:
        query: dict = {"parties": f"{role}:{user_id}" if role else user_id}
        if status:
            query["status"] = status
        return await paginate(self.col, query, [("_id", DESCENDING)], page, serialize)

    async def lapsed_holds(self, now, limit: int) -> list[int]:
        docs = await self.col.find({"status": "reserved", "hold_until": {"$lte": now}}, projection={"_id": 1},
                                   limit=limit).to_list()
        return [d["_id"] for d in docs]

    async def open_after(self, status: str, after_id: int, limit: int) -> list[dict]:
        return await self.col.find({"status": status, "_id": {"$gt": after_id}}, sort=[("_id", ASCENDING)],
                                   limit=limit).to_list()

    async def of_builder(self, builder_id: int, statuses: list[str]) -> list[dict]:
        return await self.col.find({"parties": f"builder:{builder_id}", "status": {"$in": statuses}}).to_list()

    async def mark_synced(self, booking_id: int, status: str) -> None:
        """The unit matches the booking in `status` (a later move left it unsynced again for itself)."""
        await self.col.update_one({"_id": booking_id, "status": status}, {"$set": {"unit_synced": True}})

    async def unsynced(self, before, limit: int) -> list[dict]:
        return await self.col.find({"unit_synced": False, "updated_at": {"$lte": before}}, limit=limit).to_list()

    async def clients_in_project(self, project_id: int, statuses: list[str]) -> list[int]:
        docs = await self.col.find({"project_id": project_id, "status": {"$in": statuses}}, projection={"client_id": 1}).to_list()
        return sorted({d["client_id"] for d in docs})

    async def has_client(self, project_id: int, client_id: int, statuses: list[str]) -> bool:
        return client_id in await self.clients_in_project(project_id, statuses)


def _money(kobo: int) -> str:
    return minor_text(kobo)


def line_view(line: dict) -> dict:
    return {
        # line 1 is the booking payment (a booking made on a plan stored before plans had to start with a
        # line due "booking" kept that plan's first `due`, but was always asked for it within the hold)
        "n": line["n"], "label": line["label"], "percent": line["percent"], "due": "booking" if line["n"] == 1 else line["due"],
        "due_date": format_ts(line.get("due_date")), "amount": _money(line["amount_minor"]), "status": line["status"],
        "reference": line.get("reference"), "sent_at": format_ts(line.get("sent_at")),
        "confirmed_at": format_ts(line.get("confirmed_at")), "declined_at": format_ts(line.get("declined_at")),
        "reminded_at": format_ts(line.get("reminded_at")),
    }


def booking_view(doc: dict) -> dict:
    paid = sum(ln["amount_minor"] for ln in doc["installments"] if ln["status"] == "confirmed")
    total = sum(ln["amount_minor"] for ln in doc["installments"])  # the price plus accepted change requests
    return {
        "id": doc["_id"], "unit_id": doc["unit_id"], "unit_number": doc["unit_number"], "project_id": doc["project_id"],
        "project_name": doc["project_name"], "plan_id": doc["plan_id"], "plan_name": doc["plan_name"],
        "client_id": doc["client_id"], "builder_id": doc["builder_id"], "price": _money(doc["price_minor"]),
        "status": doc["status"], "hold_until": format_ts(doc.get("hold_until")),
        "installments": [line_view(ln) for ln in doc["installments"]],
        "paid": _money(paid), "outstanding": _money(total - paid),
        "cancel_reason": doc.get("cancel_reason"), "cancelled_by": doc.get("cancelled_by"),
        "created_at": format_ts(doc["created_at"]), "updated_at": format_ts(doc["updated_at"]),
    }


def handover_date(project: dict) -> datetime | None:
    """A handover line falls due on the project's expected_completion (00:00 UTC), when it has one."""
    text = project.get("expected_completion")
    if not text:
        return None
    return datetime.combine(datetime.fromisoformat(text).date(), time(0), tzinfo=timezone.utc)


class BookingService:
    def __init__(self, store: BookingStore, *, projects: ProjectService, project_store: ProjectStore, units: UnitStore,
                 plans: PaymentPlanStore, notifications: NotificationService, clock: Clock, hold_hours: float,
                 reminder_days: float, runtime_settings: Callable[[], Awaitable[RuntimeSettings]] | None = None,
                 builder_active: Callable[[int], Awaitable[bool]] | None = None):
        self.store = store
        self.projects = projects  # unit summaries after unit moves
        self.project_store = project_store
        self.units = units
        self.plans = plans
        self.notifications = notifications  # stored notifications and durable booking.* events
        self.clock = clock
        self.hold = timedelta(hours=hold_hours)
        # The runtime settings now: a new booking's hold is booking_hold_hours as an admin set it
        # (GET|PATCH /api/v1/admin/settings); None: `hold_hours` (BOOKING_HOLD_HOURS).
        self.runtime_settings = runtime_settings
        self.reminder = timedelta(days=reminder_days)
        # Whether a builder's account is active and still a builder's (AccountService.is_active_as): units of one
        # deactivated, or switched to another type (no builder scope to confirm payments with), are not bookable.
        self.builder_active = builder_active
        # Told of every cancelled booking before its unit is handed back (set by the context to the payments'
        # refund flag: lines paid through the gateway, then the booking cancelled, mean a refund is due).
        # Idempotent; a process dying before it ran leaves the booking unsynced, and sync_units runs it.
        self.on_cancelled: Callable[[dict], Awaitable[object]] | None = None

    # ---- create ------------------------------------------------------------
    async def create(self, principal, body) -> dict:
        unit = await self.units.get(body.unit_id)
        project = await self.project_store.get(unit["project_id"]) if unit else None
        if unit is None or project is None or project.get("state") != "published":
            raise NotFound("No such unit", "unit_not_found")
        plan = await self.plans.get(body.plan_id)
        if plan is None or plan["project_id"] != project["_id"]:
            raise ValidationFailed.single("plan_id", "is not a payment plan of this unit's project")
        if project["builder_id"] == principal.user_id:
            raise Forbidden("A builder cannot book their own unit", "own_unit")
        if self.builder_active is not None and not await self.builder_active(project["builder_id"]):
            # Nobody could confirm its payments or answer its changes: the unit would be held for nothing.
            raise Conflict("This project's builder account is not active; its units cannot be booked", "builder_inactive")
        if unit["status"] != "available":
            raise Conflict(f"The unit is {unit['status']}", "unit_not_available")
        now = self.clock.now()
        hold = timedelta(hours=(await self.runtime_settings()).booking_hold_hours) if self.runtime_settings else self.hold
        hold_until = now + hold
        amounts = split_price(int(unit["price_minor"]), [Decimal(ln["percent"]) for ln in plan["lines"]])
        for ln, amount in zip(plan["lines"], amounts):
            if amount <= 0:
                # A 0.00 line could be paid neither through the gateway (no charge of nothing) nor meaningfully by
                # transfer: refused before anything is stored or the unit held.
                raise ValidationFailed.single("plan_id", f"splits this unit's price ({_money(int(unit['price_minor']))}) into "
                                                         f"a line of 0.00 ({ln['label']!r}, {ln['percent']}%); choose another plan")
        lines = []
        for i, (ln, amount) in enumerate(zip(plan["lines"], amounts)):
            due = ln["due"]
            if i == 0:
                # The booking payment: within the hold. A plan must start with a line due "booking"
                # (PaymentPlanCreate); one stored before that rule is booked the same way, and says so.
                due, due_date = "booking", hold_until
            elif ln["due"].startswith("months:"):
                due_date = add_months(now, int(ln["due"].split(":")[1]))
            elif ln["due"] == "handover":
                due_date = handover_date(project)
            else:  # a later line due "booking": with the booking payment
                due_date = hold_until
            lines.append({"n": i + 1, "label": ln["label"], "percent": ln["percent"], "due": due, "due_date": due_date,
                          "amount_minor": amount, "status": "due"})
        booking_id = await self.store.new_id()
        doc = await self.store.insert({
            "_id": booking_id, "unit_id": unit["_id"], "unit_number": unit["unit_number"], "project_id": project["_id"],
            "project_name": project["name"], "plan_id": plan["_id"], "plan_name": plan["name"],
            "client_id": principal.user_id, "builder_id": project["builder_id"],
            "parties": [principal.user_id, project["builder_id"], f"client:{principal.user_id}", f"builder:{project['builder_id']}"],
            "price_minor": int(unit["price_minor"]),
            "status": "reserved", "hold_until": hold_until, "installments": lines, "unit_synced": False,
            "created_at": now, "updated_at": now,
        })
        # The guard: available -> reserved in one conditional update naming this booking.
        try:
            taken = await self.units.hold(unit["_id"], booking_id, now)
        except Exception:
            await self.store.delete(booking_id)
            raise
        if taken is None:
            await self.store.delete(booking_id)
            current = await self.units.get(unit["_id"])
            raise Conflict(f"The unit is {(current or unit)['status']}", "unit_not_available")
        await self.store.mark_synced(booking_id, "reserved")
        await self.projects.refresh_summary(project["_id"])
        await self.projects.announce(project["_id"], ["units"])
        await self._announce(doc, "created", actor=principal.user_id)
        return booking_view(doc)

    # ---- reading -----------------------------------------------------------
    def _party(self, principal, doc: dict | None) -> bool:
        return doc is not None and (principal.user_id in (doc["client_id"], doc["builder_id"]) or is_admin(principal))

    async def get(self, principal, booking_id: int) -> dict:
        doc = await self.store.get(booking_id)
        if not self._party(principal, doc):
            raise NotFound("No such booking", "booking_not_found")
        return booking_view(doc)

    async def list_mine(self, principal, query) -> dict:
        return await self.store.page(principal.user_id, query.status, query.role, query, booking_view)

    async def _as(self, principal, booking_id: int, role: str) -> dict:
        """The booking if it is this user's (404 otherwise); 403 when they are its other side."""
        doc = await self.store.get(booking_id)
        if doc is None or principal.user_id not in (doc["client_id"], doc["builder_id"]):
            raise NotFound("No such booking", "booking_not_found")
        if doc[f"{role}_id"] != principal.user_id:
            raise Forbidden(f"Only the booking's {role} can do that", f"not_{role}")
        return doc

    @staticmethod
    def _line(doc: dict, n: int) -> int:
        if not 1 <= n <= len(doc["installments"]):
            raise NotFound(f"No installment {n} in this booking", "installment_not_found")
        return n - 1

    @staticmethod
    def _wrong(doc: dict, i: int | None, expected: str) -> Conflict:
        state = f"the booking is {doc['status']}" + (f", installment {i + 1} is {doc['installments'][i]['status']}" if i is not None else "")
        return Conflict(f"Not now: {state}; this needs {expected}", "wrong_state")

    # ---- installments ------------------------------------------------------
    async def payment_sent(self, principal, booking_id: int, n: int, reference: str) -> dict:
        doc = await self._as(principal, booking_id, "client")
        i = self._line(doc, n)
        # While reserved only the booking payment (line 1) can be sent; the rest once the unit is booked.
        states = ["reserved"] if i == 0 else ["active"]
        now = self.clock.now()
        extra: dict = {f"installments.{i}.reference": reference, f"installments.{i}.sent_at": now}
        unset = None
        if doc["status"] == "reserved" and i == 0 and doc.get("hold_until") is not None:
            extra["hold_left_seconds"] = max((doc["hold_until"] - now).total_seconds(), 0.0)
            unset = "hold_until"  # the hold pauses while the builder checks the payment
        who = {"client_id": principal.user_id, "status": {"$in": states}}
        if unset:  # a lapsed hold cannot be paid into: the job is about to expire it
            who["hold_until"] = {"$gt": now}
        after = await self.store.move_line(booking_id, i, UNPAID, "sent", now, who=who, extra=extra, unset=unset)
        if after is None:
            current = await self.store.get(booking_id) or doc
            if current["status"] == "reserved" and i == 0 and current.get("hold_until") and current["hold_until"] <= now:
                raise Conflict("The hold on this unit has lapsed", "hold_expired")
            raise self._wrong(current, i, "an open booking and an unpaid line" + (" (the booking payment first)" if i else ""))
        await self._announce(after, "payment_sent", actor=principal.user_id, n=n)
        return booking_view(after)

    async def decline(self, principal, booking_id: int, n: int) -> dict:
        doc = await self._as(principal, booking_id, "builder")
        i = self._line(doc, n)
        now = self.clock.now()
        due_date = doc["installments"][i].get("due_date")
        back = "overdue" if (i > 0 and due_date is not None and due_date <= now) else "due"
        extra: dict = {f"installments.{i}.declined_at": now}
        if i == 0 and doc["status"] == "reserved":
            left = timedelta(seconds=float(doc.get("hold_left_seconds") or 0))
            extra["hold_until"] = now + max(left, MIN_HOLD_AFTER_DECLINE)
            extra[f"installments.{i}.due_date"] = extra["hold_until"]
        after = await self.store.move_line(booking_id, i, ["sent"], back, now,
                                           who={"builder_id": principal.user_id, "status": {"$in": OPEN}}, extra=extra)
        if after is None:
            raise self._wrong(await self.store.get(booking_id) or doc, i, "an open booking and a line the client marked sent")
        await self._announce(after, "payment_declined", actor=principal.user_id, n=n)
        return booking_view(after)

    async def confirm(self, principal, booking_id: int, n: int) -> dict:
        doc = await self._as(principal, booking_id, "builder")
        i = self._line(doc, n)
        now = self.clock.now()
        who: dict = {"builder_id": principal.user_id, "status": "reserved" if i == 0 else "active"}
        extra: dict = {f"installments.{i}.confirmed_at": now}
        if i == 0:
            extra.update(status="active", booked_at=now, unit_synced=False)  # the booking payment confirmed: the unit is booked
            extra.update(self._later_booking_lines(doc, now))
        after = await self.store.move_line(booking_id, i, ["sent"], "confirmed", now, who=who, extra=extra)
        if after is None:
            current = await self.store.get(booking_id) or doc
            # A retry after a process died between confirming the last line and completing the booking: finish it.
            current = await self._complete_if_paid(current)
            raise self._wrong(current, i,
                              "a line the client marked sent, on " + ("a reserved booking" if i == 0 else "an active booking"))
        return booking_view(await self._confirmed(after, i, actor=principal.user_id))

    @staticmethod
    def _later_booking_lines(doc: dict, now) -> dict:
        """The due dates to set, with the booking payment's confirmation, on later unpaid lines: those due
        "booking" (with it, at the hold's end), a change accepted while reserved (its days from the acceptance),
        a months:N line a long hold outlasted. They can be paid only once the booking is active: when the
        builder confirms after their date (the hold paused while they checked), they would be overdue at once. So
        each falls due no sooner than what was left of the hold (when the booking payment was sent; or now,
        for a gateway payment of an unpaused hold), at least MIN_HOLD_AFTER_DECLINE, after the confirmation.
        Handover lines keep following the project's expected_completion (the booking job sets them)."""
        if doc.get("hold_until") is not None:
            left = doc["hold_until"] - now
        else:
            left = timedelta(seconds=float(doc.get("hold_left_seconds") or 0))
        earliest = now + max(left, MIN_HOLD_AFTER_DECLINE)
        return {f"installments.{j}.due_date": earliest for j, ln in enumerate(doc["installments"])
                if j > 0 and ln["due"] != "handover" and ln["status"] in UNPAID
                and ln.get("due_date") is not None and ln["due_date"] < earliest}

    async def _confirmed(self, after: dict, i: int, actor: int | None) -> dict:
        """What follows a line's move to confirmed (by the builder or a gateway payment): line 1
        books the unit, both sides hear of it, and the last line completes the booking."""
        if i == 0:
            await self._move_unit(after, ["reserved"], "booked")
        await self._announce(after, "payment_confirmed", actor=actor, n=i + 1)
        return await self._complete_if_paid(after)

    async def _complete_if_paid(self, after: dict) -> dict:
        return await self._complete(after) or after

    async def _complete(self, after: dict) -> dict | None:
        """active -> completed when every line of `after` is confirmed: the booking as stored after it (this call's
        completion, or another caller's that got there first), or None when there was nothing to complete."""
        if after["status"] == "active" and all(ln["status"] == "confirmed" for ln in after["installments"]):
            # Only the schedule seen all confirmed: a change request's line added meanwhile keeps it open.
            now = self.clock.now()
            done = await self.store.move(after["_id"], ["active"], "completed", now,
                                         who={"installments": {"$size": len(after["installments"])}},
                                         extra={"completed_at": now, "unit_synced": False})
            if done is not None:  # exactly once, whichever confirmation saw the last line
                await self._move_unit(done, ["booked", "reserved"], "sold")
                await self._announce(done, "completed", actor=None)
                return done
            return await self.store.get(after["_id"]) or after  # completed by another caller meanwhile: as stored
        return None

    # ---- installments paid through the payment gateway (sheda_rt/payments/installments.py) ----
    async def gateway_line(self, principal, booking_id: int, n: int) -> tuple[dict, dict]:
        """(booking, line) when `principal` may pay line n through the gateway now: the booking's
        client, a line due or overdue (a line marked sent awaits the builder's answer to a bank
        transfer: paying it again could pay twice), line 1 while reserved and its hold not lapsed,
        the others once the booking is active. NotFound / Forbidden / Conflict otherwise."""
        doc = await self._as(principal, booking_id, "client")
        if "client" not in principal.scopes:
            raise Forbidden("Pay with the client's own account", "insufficient_scope")
        i = self._line(doc, n)
        line = doc["installments"][i]
        if i == 0 and doc["status"] == "reserved" and doc.get("hold_until") and doc["hold_until"] <= self.clock.now():
            raise Conflict("The hold on this unit has lapsed", "hold_expired")
        if line["status"] not in UNPAID or doc["status"] != ("reserved" if i == 0 else "active"):
            raise self._wrong(doc, i, "an open booking and a line due or overdue" + (" (the booking payment first)" if i else ""))
        if line["amount_minor"] <= 0:  # a booking stored before 0.00 lines were refused: no gateway charges nothing
            raise Conflict(f"Installment {n} is 0.00: there is nothing to pay through the gateway; mark it sent "
                           "(POST .../payment-sent) and the builder confirms it", "nothing_to_pay")
        return doc, line

    async def confirm_gateway_payment(self, booking_id: int, n: int, reference: str) -> tuple[str, dict | None]:
        """A payment gateway verified the client's payment of line n: the same move as the builder's
        confirm (line 1 makes the booking active and books the unit; the last line completes it;
        events and notifications to both), from any unpaid state, since the client may have marked
        it sent meanwhile. One conditional write, so racing the builder's confirm it is confirmed
        once. (outcome, booking): "confirmed" (this call), "already_confirmed" (the line was confirmed
        before: by this payment, `paid_by` says, or by the builder), "not_payable" (no such booking
        or line, or the booking is cancelled, expired or still reserved for a later line), or
        "in_progress" (the booking kept moving under us: ask again later)."""
        doc = None
        for _ in range(3):  # a lost race is read again
            doc = await self.store.get(booking_id)
            if doc is None or not 1 <= n <= len(doc["installments"]):
                return "not_payable", doc
            i = n - 1
            line = doc["installments"][i]
            if line["status"] == "confirmed":
                if line.get("paid_by") == reference:  # ours: finish a completion a crash may have left undone
                    doc = await self._complete_if_paid(doc)
                return "already_confirmed", doc
            if doc["status"] != ("reserved" if i == 0 else "active"):
                return "not_payable", doc
            now = self.clock.now()
            extra: dict = {f"installments.{i}.confirmed_at": now, f"installments.{i}.paid_by": reference}
            if i == 0:  # the booking payment: the unit is booked and the hold is over
                extra.update(status="active", booked_at=now, unit_synced=False)
                extra.update(self._later_booking_lines(doc, now))
            after = await self.store.move_line(booking_id, i, UNPAID + ["sent"], "confirmed", now,
                                               who={"status": doc["status"]}, extra=extra,
                                               unset="hold_until" if i == 0 else None)
            if after is not None:
                return "confirmed", await self._confirmed(after, i, actor=None)
        return "in_progress", doc

    # ---- cancellation ------------------------------------------------------
    async def cancel(self, principal, booking_id: int, reason: str | None) -> dict:
        doc = await self.store.get(booking_id)
        if doc is None or principal.user_id not in (doc["client_id"], doc["builder_id"]):
            raise NotFound("No such booking", "booking_not_found")
        if principal.user_id == doc["builder_id"] and "builder" in principal.scopes:
            role, states = "builder", OPEN
            if not reason:
                raise ValidationFailed.single("reason", "is required when the builder cancels")
        elif principal.user_id == doc["client_id"] and "client" in principal.scopes:
            role, states = "client", ["reserved"]  # only before the booking payment is confirmed
        else:
            raise Forbidden("Cancel with the client's or the builder's own account", "insufficient_scope")
        now = self.clock.now()
        # Only while a line is still unpaid, in the same conditional write: a confirmation of the last line (the
        # builder's, or a gateway payment's) racing this cancel either lands first, and this matches nothing (the
        # booking completes), or lands on a cancelled booking and matches nothing itself; never both.
        who = {f"{role}_id": principal.user_id, "installments.status": {"$in": UNPAID + ["sent"]}}
        after = await self.store.move(booking_id, states, "cancelled", now, who=who,
                                      extra={"cancelled_at": now, "cancelled_by": principal.user_id, "cancel_reason": reason,
                                             "unit_synced": False},
                                      unset="hold_until")
        if after is None:
            current = await self.store.get(booking_id) or doc
            if current["status"] == "active" and all(ln["status"] == "confirmed" for ln in current["installments"]):
                # Paid in full, its completion not written yet (in flight, or a process died before it): finish it.
                current = await self._complete_if_paid(current)
            hint = "reserved (before the booking payment is confirmed)" if role == "client" else "reserved or active"
            raise self._wrong(current, None, hint + ", with a line still unpaid")
        if self.on_cancelled is not None:
            await self.on_cancelled(after)
        await self._move_unit(after, ["reserved", "booked"], "available")
        await self._announce(after, "cancelled", actor=principal.user_id, reason=reason)
        return booking_view(after)

    # ---- the unit follows its booking ---------------------------------------
    async def _move_unit(self, booking: dict, from_states: list[str], to_state: str) -> None:
        """Move the unit this booking holds, then mark the booking synced. The booking's move set
        `unit_synced: false` in its own write, so a process that dies in between leaves a mark
        the job finds (`sync_units`) and finishes."""
        moved = await self.units.move_held(booking["unit_id"], booking["_id"], from_states, to_state, self.clock.now())
        await self.store.mark_synced(booking["_id"], booking["status"])
        if moved is not None:
            await self.projects.refresh_summary(booking["project_id"])
            await self.projects.announce(booking["project_id"], ["units"])

    async def sync_units(self) -> int:
        """Finish what a dead process left half-done: bookings whose unit move did not happen
        (left for at least UNSYNCED_GRACE, so a request still in flight is not raced). A reserved
        booking that never got its unit (the process died between storing it and taking the
        unit) takes it now, or, when someone else has it, is cancelled. Returns how many."""
        fixed = 0
        for doc in await self.store.unsynced(self.clock.now() - UNSYNCED_GRACE, JOB_PAGE):
            target = UNIT_STATE[doc["status"]]
            if target == "reserved":
                unit = await self.units.get(doc["unit_id"])
                held = unit is not None and unit.get("booking_id") == doc["_id"]
                if held or await self.units.hold(doc["unit_id"], doc["_id"], self.clock.now()) is not None:
                    await self.store.mark_synced(doc["_id"], "reserved")
                    await self.projects.refresh_summary(doc["project_id"])
                else:
                    now = self.clock.now()
                    closed = await self.store.move(doc["_id"], ["reserved"], "cancelled", now, who={"unit_synced": False},
                                                   extra={"cancelled_at": now, "cancelled_by": None,
                                                          "cancel_reason": "the unit was taken meanwhile", "unit_synced": True},
                                                   unset="hold_until")
                    if closed is not None:
                        await self._announce(closed, "cancelled", actor=None, reason="the unit was taken meanwhile")
            else:
                if doc["status"] == "cancelled" and self.on_cancelled is not None:
                    await self.on_cancelled(doc)  # its cancel may have died before this, as before the unit move
                await self._move_unit(doc, [s for s in ("reserved", "booked", "sold") if s != target], target)
            fixed += 1
        return fixed

    # ---- the periodic job ----------------------------------------------------
    async def expire_holds(self) -> int:
        """reserved -> expired for every lapsed hold (exactly once each), the unit freed."""
        expired = 0
        while True:
            ids = await self.store.lapsed_holds(self.clock.now(), JOB_PAGE)
            progressed = 0
            for booking_id in ids:
                now = self.clock.now()
                doc = await self.store.move(booking_id, ["reserved"], "expired", now, who={"hold_until": {"$lte": now}},
                                            extra={"expired_at": now, "unit_synced": False}, unset="hold_until")
                if doc is None:
                    continue
                expired += 1
                progressed += 1
                await self._move_unit(doc, ["reserved"], "available")
                await self._announce(doc, "expired", actor=None)
            if len(ids) < JOB_PAGE or not progressed:
                return expired

    async def mark_due_lines(self) -> tuple[int, int, int]:
        """Reminders for lines falling due within BOOKING_REMINDER_DAYS, and due -> overdue for
        lines past their date, on active bookings; each at most once (guarded). An active booking
        whose every line is confirmed is completed (a process died between confirming its last
        line and completing it: nothing else would, a confirm of that line again is 409).
        (reminded, overdue, completed)."""
        reminded = overdue = completed = 0
        after_id = 0
        handovers: dict[int, datetime | None] = {}  # project id -> its expected_completion, read once per pass
        while True:
            docs = await self.store.open_after("active", after_id, JOB_PAGE)
            for doc in docs:
                now = self.clock.now()
                if all(ln["status"] == "confirmed" for ln in doc["installments"]):
                    done = await self._complete(doc)
                    completed += 1 if done is not None and done["status"] == "completed" else 0
                    continue
                if doc["project_id"] not in handovers:
                    handovers[doc["project_id"]] = handover_date(await self.project_store.get(doc["project_id"]) or {})
                doc = await self._follow_handover(doc, handovers[doc["project_id"]], now)
                for i, line in enumerate(doc["installments"]):
                    due_date = line.get("due_date")
                    if line["status"] != "due" or due_date is None:
                        continue
                    if due_date <= now:
                        moved = await self.store.move_line(doc["_id"], i, ["due"], "overdue", now, who={"status": "active"},
                                                           extra={f"installments.{i}.overdue_at": now})
                        if moved is not None:
                            overdue += 1
                            await self._announce(moved, "installment_overdue", actor=None, n=i + 1)
                    elif due_date <= now + self.reminder and not line.get("reminded_at"):
                        moved = await self.store.move_line(
                            doc["_id"], i, ["due"], "due", now,
                            who={"status": "active", f"installments.{i}.reminded_at": {"$exists": False}},
                            extra={f"installments.{i}.reminded_at": now})
                        if moved is not None:
                            reminded += 1
                            await self._announce(moved, "installment_due", actor=None, n=i + 1)
            if len(docs) < JOB_PAGE:
                return reminded, overdue, completed
            after_id = docs[-1]["_id"]

    async def _follow_handover(self, doc: dict, when: datetime | None, now) -> dict:
        """Unpaid handover lines fall due on the project's expected_completion as it is now: when
        the builder moved it, the line moves (back to due, its reminder to go out again)."""
        for i, line in enumerate(doc["installments"]):
            if i == 0 or line["due"] != "handover" or line["status"] not in UNPAID or line.get("due_date") == when:
                continue
            moved = await self.store.move_line(doc["_id"], i, UNPAID, "due", now,
                                               who={"status": "active", f"installments.{i}.due_date": line.get("due_date")},
                                               extra={f"installments.{i}.due_date": when}, unset=f"installments.{i}.reminded_at")
            doc = moved or doc
        return doc

    async def run_due(self) -> dict:
        expired = await self.expire_holds()
        reminded, overdue, completed = await self.mark_due_lines()
        synced = await self.sync_units()
        return {"expired": expired, "reminded": reminded, "overdue": overdue, "completed": completed, "units_synced": synced}

    # ---- receivables -------------------------------------------------------
    async def receivables(self, principal) -> dict:
        """What the builder is owed, per project: received (confirmed), overdue (what the client is late
        with: a line `overdue`, or still `due` on an active booking past its date, which the job marks on
        its next pass), due (every other unpaid line), and awaiting_confirmation: lines the client marked
        `sent`, counted in due, never overdue (the client has paid as far as they know; the builder's
        decline puts a line past its date back in overdue). A reserved booking's lines are never overdue:
        its booking payment is due within the hold (which pauses while it is sent), and a lapsed hold
        expires the booking."""
        now = self.clock.now()
        per: dict[int, dict] = {}
        for doc in await self.store.of_builder(principal.user_id, ["reserved", "active", "completed"]):
            row = per.setdefault(doc["project_id"], {"project_id": doc["project_id"], "project_name": doc["project_name"],
                                                     "bookings": 0, "due": 0, "overdue": 0, "received": 0,
                                                     "awaiting_confirmation": 0})
            row["bookings"] += 1
            for line in doc["installments"]:
                amount, status = line["amount_minor"], line["status"]
                if status == "confirmed":
                    row["received"] += amount
                    continue
                late = status == "overdue" or (status == "due" and doc["status"] == "active"
                                               and line.get("due_date") is not None and line["due_date"] <= now)
                row["overdue" if late else "due"] += amount
                if status == "sent":
                    row["awaiting_confirmation"] += amount
        for project_id, row in per.items():  # each project as it is named now (a booking keeps the name it was made under)
            project = await self.project_store.get(project_id)
            if project is not None:
                row["project_name"] = project["name"]
        keys = ("due", "overdue", "received", "awaiting_confirmation")
        totals = {k: sum(r[k] for r in per.values()) for k in keys}
        projects = [{**r, **{k: _money(r[k]) for k in keys}} for _, r in sorted(per.items())]
        return {"totals": {k: _money(v) for k, v in totals.items()}, "projects": projects}

    # ---- announcements -----------------------------------------------------
    _TEXT = {
        "created": ("Unit reserved", "Unit {unit} in {project} is reserved until {hold}; the booking payment is {first}."),
        "payment_sent": ("Payment sent", "The client says installment {n} ({amount}) for unit {unit} in {project} is paid."),
        "payment_confirmed": ("Payment confirmed", "Installment {n} ({amount}) for unit {unit} in {project} is confirmed."),
        "payment_declined": ("Payment not received", "The builder has not received installment {n} ({amount}) for unit {unit} in {project}."),
        "installment_due": ("Installment due soon", "Installment {n} ({amount}) for unit {unit} in {project} is due on {date}."),
        "installment_overdue": ("Installment overdue", "Installment {n} ({amount}) for unit {unit} in {project} was due on {date}."),
        "completed": ("Unit paid in full", "Unit {unit} in {project} is paid in full and sold."),
        "cancelled": ("Booking cancelled", "The booking of unit {unit} in {project} was cancelled{reason}."),
        "expired": ("Reservation lapsed", "The hold on unit {unit} in {project} lapsed before the booking payment was confirmed."),
    }

    async def _announce(self, doc: dict, what: str, actor: int | None, n: int | None = None, reason: str | None = None) -> None:
        """A stored notification to each party that did not act, and one durable `booking.<what>`
        event to both (every open screen of either updates itself)."""
        view = booking_view(doc)
        line = view["installments"][n - 1] if n else None
        title, text = self._TEXT[what]
        body = text.format(unit=doc["unit_number"], project=doc["project_name"], hold=view["hold_until"], n=n,
                           first=format_money(Decimal(doc["installments"][0]["amount_minor"]).scaleb(-2)),
                           amount=line["amount"] if line else "", date=(line["due_date"] or "")[:10] if line else "",
                           reason=f": {reason}" if reason else "")
        kind = f"booking.{what}"
        data = {"booking_id": doc["_id"], "project_id": doc["project_id"], "unit_id": doc["unit_id"], "status": doc["status"]}
        if n:
            data["installment"] = n
        parties = [doc["client_id"], doc["builder_id"]]
        for user_id in [p for p in parties if p != actor]:
            await self.notifications.notify(user_id, kind, title, body, data)
        frame: dict = {"type": kind, "booking": view}
        if n:
            frame["installment"] = n
        await self.notifications.publish_event(parties, frame)


class BookingJob(PeriodicTrigger):
    """Every BOOKING_JOB_INTERVAL_MINUTES (and once at start): lapsed holds expire, lines
    falling due get reminders, lines past their date go overdue, active bookings paid in full
    complete (a process died before it completed them). Each period's pass is one job
    of the durable queue (key `booking_due:<period>`), so however many processes tick it runs
    once; the moves inside are guarded, so a repeated pass changes nothing. Tests call
    `service.run_due()` (or `run()`) directly with a moved clock."""

    name = "booking_due"

    def __init__(self, bookings: BookingService, interval_minutes: float, queue, clock):
        super().__init__(interval_minutes * 60_000)
        self.bookings = bookings
        self.queue = queue
        self.clock = clock
        queue.register(self.name, self._handle)

    def period_key(self) -> str:
        return f"{self.name}:{int(self.clock.now().timestamp() * 1000 // self.interval_ms)}"

    async def run(self) -> dict | None:
        ran, result = await self.queue.run_now(self.name, self.period_key())
        return result if ran else None

    async def _handle(self, job: dict) -> dict:
        try:
            result = await self.bookings.run_due()
        except Exception:
            JOB_RUNS.labels(job=self.name, outcome="error").inc()
            raise
        JOB_RUNS.labels(job=self.name, outcome="ok").inc()
        if any(result.values()):
            log.info('{"event": "booking_due", "expired": %d, "reminded": %d, "overdue": %d, "completed": %d, "units_synced": %d}',
                     result["expired"], result["reminded"], result["overdue"], result["completed"], result["units_synced"])
        return result


__all__ = ["BookingStore", "BookingService", "BookingJob", "booking_view"]
