"""Change requests: a booking's client asks for a change to their unit, its builder quotes it,
and an accepted quote becomes a line of the booking's installment schedule. Knows nothing about HTTP.

    POST (client, booking reserved | active)   -> requested
    requested         --quote {cost, days} (builder, booking open)--> quoted   (a new quote replaces the old one)
    quoted            --accept (client)-->              accepted (a line "Change: <category>" is added)
    accepted          --complete (builder)-->           completed
    requested | quoted --withdraw (client)-->           withdrawn
    requested | quoted --reject {reason} (builder)-->   rejected

Every move is one guarded update (sheda_rt/database/transitions.py) naming the expected
states and the acting party, so of two racing moves exactly one happens. The schedule line
is added by one conditional `$push` on the booking whose filter says the booking is still
open, has no line for this change request yet, and still has the number of lines it was
read with (so two changes accepted at once cannot both take the same line number): it is
added once however often accept is retried or raced. The line falls due `days` after
acceptance (when the builder said the change would be done) and is paid like any other
line (payment-sent / confirm; reminders and overdue from the booking job).
"""
from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, NoReturn

from pymongo import ASCENDING, DESCENDING, IndexModel

from sheda_rt.builders.bookings import OPEN, booking_view
from sheda_rt.builders.service import minor_text
from sheda_rt.clock import format_ts
from sheda_rt.database.transitions import guarded_transition
from sheda_rt.errors import Conflict, Forbidden, NotFound
from sheda_rt.listings.money import format_money, to_minor
from sheda_rt.listings.service import is_admin

if TYPE_CHECKING:
    from sheda_rt.builders.bookings import BookingStore
    from sheda_rt.clock import Clock
    from sheda_rt.notifications.service import NotificationService

#: A change's payment line is retried this often when other lines were added meanwhile.
LINE_RETRIES = 20


class ChangeRequestStore:
    INDEXES = [IndexModel([("booking_id", ASCENDING), ("_id", DESCENDING)], name="booking_newest")]

    def __init__(self, db, ids):
        self.col = db["change_requests"]
        self.ids = ids

    async def ensure_indexes(self):
        await self.col.create_indexes(self.INDEXES)

    async def insert(self, doc: dict) -> dict:
        doc = dict(doc, _id=await self.ids.next("change_requests"))
        await self.col.insert_one(doc)
        return doc

    async def get(self, cr_id: int) -> dict | None:
        return await self.col.find_one({"_id": cr_id})

    async def of_booking(self, booking_id: int) -> list[dict]:
        return await self.col.find({"booking_id": booking_id}, sort=[("_id", DESCENDING)]).to_list()

    async def set_installment(self, cr_id: int, n: int) -> None:
        await self.col.update_one({"_id": cr_id}, {"$set": {"installment": n}})

    async def move(self, cr_id: int, from_states: list[str], to_state: str, now, who: dict, extra: dict | None = None):
        return await guarded_transition(self.col, cr_id, from_states, to_state, now, who=who, extra=extra)


def change_request_view(doc: dict) -> dict:
    cost = doc.get("cost_minor")
    return {
        "id": doc["_id"], "booking_id": doc["booking_id"], "project_id": doc["project_id"], "unit_id": doc["unit_id"],
        "client_id": doc["client_id"], "builder_id": doc["builder_id"], "category": doc["category"],
        "description": doc["description"], "attachments": doc.get("attachments", []), "status": doc["status"],
        "cost": minor_text(cost) if cost is not None else None, "days": doc.get("days"),
        "installment": doc.get("installment"), "reject_reason": doc.get("reject_reason"),
        **{k: format_ts(doc.get(k)) for k in ("quoted_at", "accepted_at", "completed_at", "withdrawn_at", "rejected_at")},
        "created_at": format_ts(doc["created_at"]), "updated_at": format_ts(doc["updated_at"]),
    }


class ChangeRequestService:
    def __init__(self, store: ChangeRequestStore, *, bookings: BookingStore, notifications: NotificationService, clock: Clock):
        self.store = store
        self.bookings = bookings
        self.notifications = notifications
        self.clock = clock

    # ---- who may --------------------------------------------------------------
    async def _booking(self, principal, booking_id: int, role: str | None) -> dict:
        """The booking when the user is its `role` (None: either party, or an admin reading).
        Strangers get 404 as for the booking itself; the other party 403."""
        doc = await self.bookings.get(booking_id)
        party = doc is not None and principal.user_id in (doc["client_id"], doc["builder_id"])
        if not party and not (role is None and doc is not None and is_admin(principal)):
            raise NotFound("No such booking", "booking_not_found")
        if role is not None and doc[f"{role}_id"] != principal.user_id:
            raise Forbidden(f"Only the booking's {role} can do that", f"not_{role}")
        return doc

    async def _refused(self, booking_id: int, cr_id: int, expected: list[str]) -> NoReturn:
        doc = await self.store.get(cr_id)
        if doc is None or doc["booking_id"] != booking_id:
            raise NotFound("No such change request", "change_request_not_found")
        raise Conflict(f"The change request is {doc['status']}; this needs it {' or '.join(expected)}", "wrong_state")

    async def _move(self, principal, booking_id: int, cr_id: int, role: str, from_states: list[str], to_state: str,
                    extra: dict | None = None) -> tuple[dict, dict]:
        booking = await self._booking(principal, booking_id, role)
        now = self.clock.now()
        doc = await self.store.move(cr_id, from_states, to_state, now, {"booking_id": booking_id, f"{role}_id": principal.user_id},
                                    {f"{to_state}_at": now, **(extra or {})})
        if doc is None:
            await self._refused(booking_id, cr_id, from_states)
        return booking, doc

    # ---- reading ----------------------------------------------------------------
    async def list(self, principal, booking_id: int) -> dict:
        await self._booking(principal, booking_id, None)
        return {"items": [change_request_view(d) for d in await self.store.of_booking(booking_id)]}

    # ---- moves ------------------------------------------------------------------
    async def create(self, principal, booking_id: int, body) -> dict:
        booking = await self._booking(principal, booking_id, "client")
        if booking["status"] not in OPEN:
            raise Conflict(f"The booking is {booking['status']}; changes can be asked for on a reserved or active one",
                           "wrong_state")
        now = self.clock.now()
        doc = await self.store.insert({
            "booking_id": booking_id, "project_id": booking["project_id"], "unit_id": booking["unit_id"],
            "client_id": booking["client_id"], "builder_id": booking["builder_id"], "category": body.category,
            "description": body.description, "attachments": list(dict.fromkeys(body.attachment_ids)),
            "status": "requested", "created_at": now, "updated_at": now,
        })
        await self._announce(booking, doc, "requested", actor=principal.user_id)
        return change_request_view(doc)

    async def quote(self, principal, booking_id: int, cr_id: int, body) -> dict:
        booking = await self._booking(principal, booking_id, "builder")
        if booking["status"] not in OPEN:  # a quote the client could never accept (accept needs an open booking)
            raise Conflict(f"The booking is {booking['status']}; changes can be quoted on a reserved or active one",
                           "wrong_state")
        booking, doc = await self._move(principal, booking_id, cr_id, "builder", ["requested", "quoted"], "quoted",
                                        {"cost_minor": int(to_minor(body.cost)), "days": body.days})
        await self._announce(booking, doc, "quoted", actor=principal.user_id)
        return change_request_view(doc)

    async def withdraw(self, principal, booking_id: int, cr_id: int) -> dict:
        booking, doc = await self._move(principal, booking_id, cr_id, "client", ["requested", "quoted"], "withdrawn")
        await self._announce(booking, doc, "withdrawn", actor=principal.user_id)
        return change_request_view(doc)

    async def reject(self, principal, booking_id: int, cr_id: int, reason: str) -> dict:
        booking, doc = await self._move(principal, booking_id, cr_id, "builder", ["requested", "quoted"], "rejected",
                                        {"reject_reason": reason})
        await self._announce(booking, doc, "rejected", actor=principal.user_id)
        return change_request_view(doc)

    async def complete(self, principal, booking_id: int, cr_id: int) -> dict:
        booking, doc = await self._move(principal, booking_id, cr_id, "builder", ["accepted"], "completed")
        await self._announce(booking, doc, "completed", actor=principal.user_id)
        return change_request_view(doc)

    async def accept(self, principal, booking_id: int, cr_id: int, cost: Decimal | None = None) -> dict:
        """`cost`: the quote the client saw. The builder may quote again until it is accepted, so the
        acceptance names that cost in its guarded write: a re-quote in between is 409 quote_changed."""
        booking = await self._booking(principal, booking_id, "client")
        if booking["status"] not in OPEN:
            raise Conflict(f"The booking is {booking['status']}; its schedule cannot change", "wrong_state")
        now = self.clock.now()
        who: dict = {"booking_id": booking_id, "client_id": principal.user_id}
        if cost is not None:
            who["cost_minor"] = int(to_minor(cost))
        doc = await self.store.move(cr_id, ["quoted"], "accepted", now, who, {"accepted_at": now})
        if doc is None:
            current = await self.store.get(cr_id)
            if (cost is not None and current is not None and current["booking_id"] == booking_id
                    and current["status"] == "quoted" and current.get("cost_minor") != who["cost_minor"]):
                raise Conflict(f"The builder has quoted {minor_text(current['cost_minor'])} since; accept that quote if you "
                               "agree to it", "quote_changed", extra={"cost": minor_text(current["cost_minor"])})
            await self._refused(booking_id, cr_id, ["quoted"])
        after = await self._add_line(doc, now)
        if after is None:  # the booking closed between the check and the line: the acceptance is undone
            await self.store.move(cr_id, ["accepted"], "quoted", self.clock.now(), {"installment": {"$exists": False}},
                                  {"accepted_at": None})
            raise Conflict("The booking closed meanwhile; its schedule cannot change", "wrong_state")
        n = next(ln["n"] for ln in after["installments"] if ln.get("change_request_id") == cr_id)
        await self.store.set_installment(cr_id, n)
        doc = {**doc, "installment": n}
        await self._announce(after, doc, "accepted", actor=principal.user_id, booking_changed=True)
        return {**change_request_view(doc), "booking": booking_view(after)}

    async def _add_line(self, cr: dict, now) -> dict | None:
        """The accepted quote's line on the booking, added at most once; the booking after it (None
        when the booking is no longer open)."""
        for _ in range(LINE_RETRIES):
            booking = await self.bookings.get(cr["booking_id"])
            if booking is None:
                return None
            if any(ln.get("change_request_id") == cr["_id"] for ln in booking["installments"]):
                return booking  # already added (a retried request)
            if booking["status"] not in OPEN:
                return None
            count = len(booking["installments"])
            share = (Decimal(cr["cost_minor"]) * 100 / Decimal(booking["price_minor"])).quantize(Decimal("0.01"))
            line = {"n": count + 1, "label": f"Change: {cr['category']}", "percent": str(share), "due": f"change:{cr['days']}",
                    "due_date": now + timedelta(days=cr["days"]), "amount_minor": cr["cost_minor"], "status": "due",
                    "change_request_id": cr["_id"]}
            after = await self.bookings.add_line(cr["booking_id"], count, line, now, who={"status": {"$in": OPEN}})
            if after is not None:
                return after
        raise Conflict("The booking's schedule kept changing; try again", "wrong_state")

    # ---- announcements ------------------------------------------------------------
    _TEXT = {
        "requested": ("Change requested", "The client asked for a {category} change to unit {unit} in {project}."),
        "quoted": ("Change quoted", "The builder quoted {cost} and {days} days for your {category} change to unit {unit}."),
        "accepted": ("Change accepted", "The client accepted your quote for the {category} change to unit {unit} in {project}."),
        "completed": ("Change completed", "The {category} change to unit {unit} in {project} is done."),
        "withdrawn": ("Change withdrawn", "The client withdrew the {category} change request for unit {unit} in {project}."),
        "rejected": ("Change rejected", "The builder declined the {category} change to unit {unit}: {reason}"),
    }

    async def _announce(self, booking: dict, doc: dict, what: str, actor: int, booking_changed: bool = False) -> None:
        """A stored notification to the party that did not act, and one durable
        `change_request.<what>` event to both."""
        title, text = self._TEXT[what]
        cost = doc.get("cost_minor")
        body = text.format(category=doc["category"], unit=booking["unit_number"], project=booking["project_name"],
                           cost=format_money(Decimal(cost).scaleb(-2)) if cost is not None else "", days=doc.get("days"),
                           reason=doc.get("reject_reason") or "")
        kind = f"change_request.{what}"
        data = {"change_request_id": doc["_id"], "booking_id": doc["booking_id"], "project_id": doc["project_id"],
                "status": doc["status"]}
        parties = [doc["client_id"], doc["builder_id"]]
        for user_id in [p for p in parties if p != actor]:
            await self.notifications.notify(user_id, kind, title, body, data)
        frame: dict = {"type": kind, "change_request": change_request_view(doc)}
        if booking_changed:
            frame["booking"] = booking_view(booking)
        await self.notifications.publish_event(parties, frame)


__all__ = ["ChangeRequestStore", "ChangeRequestService", "change_request_view"]
