"""Availability windows and viewing appointments.

Windows: an agent's weekly hours, per weekday, "HH:MM" UTC, start < end. Windows
of one agent on one weekday never overlap (409). The check is made race-safe
with an optimistic version per agent: read the version, check for overlaps,
write, then compare-and-set the version. A write whose compare-and-set loses was
concurrent with another accepted write: it is undone and tried again, and then
sees the winner (409). Of overlapping windows written at once exactly one is
kept, whatever order the database applies them in.

Appointments: a slot is APPOINTMENT_MINUTES long (setting, default 30) and starts
on a multiple of that many minutes after 00:00 UTC. A client books a slot in the
future, inside one of the agent's windows, for an available listed property that
is not their own. State machine (each transition names the expected state in its
update filter, so a transition from any other state is a 409):

    pending --confirm (the party who did not propose the time)--> confirmed
    pending --reject (the party who did not propose the time)--> rejected
    pending | confirmed --cancel (client or agent)--> cancelled
    pending | confirmed --reschedule (client or agent)--> pending, at the new time
    pending | confirmed --closed by the system (property rented or sold, a party's account deactivated;
                          sheda_rt/appointments/closing.py)--> cancelled, cancelled_by null, cancel_reason set

A time that has begun cannot be confirmed (409 `time_passed`: reject it or propose another), and
once the property is rented or sold no time is confirmed or proposed for viewing it (409
`property_unavailable`, as a booking of it is), nor with a party whose account was deactivated
(409 `agent_inactive` / `client_inactive`); cancelling and rejecting stay possible.

Rejected and cancelled appointments free their slot. A booking is the client's proposal, so
the agent confirms it; a reschedule is a proposal of whoever made it (`proposed_by`), and the
other party confirms or rejects it. Rescheduling moves the slot hold (`slot_key`) in the same
conditional write that changes the time, so it races bookings and other reschedules into that
slot on the same unique index: exactly one of them gets it, the others 409 `slot_taken` with
nothing changed.

Confirmed viewings have reminders (sheda_rt/reminders/): confirming creates them, cancelling,
rejecting and rescheduling cancel them.
"""
from __future__ import annotations

import asyncio
import random
from datetime import timedelta
from typing import TYPE_CHECKING

from sheda_rt.appointments.models import WEEKDAYS, BookRequest, WindowCreate, WindowUpdate, minutes
from sheda_rt.clock import format_ts, to_utc
from pymongo.errors import DuplicateKeyError

from sheda_rt.errors import Conflict, Forbidden, NotFound, ValidationFailed

if TYPE_CHECKING:  # types only: the context wires these in (runtime imports here would make cycles)
    from sheda_rt.accounts.service import AccountService
    from sheda_rt.appointments.store import AppointmentStore, AvailabilityStore
    from sheda_rt.blocks.service import BlockService
    from sheda_rt.clock import Clock
    from sheda_rt.listings.store import PropertyStore
    from sheda_rt.notifications.service import NotificationService
    from sheda_rt.reminders.service import ReminderService

BOOKING_HORIZON_DAYS = 365


def _hhmm(total: int) -> str:
    return f"{total // 60:02d}:{total % 60:02d}"


def window_view(doc: dict) -> dict:
    return {"id": doc["_id"], "agent_id": doc["agent_id"], "weekday": doc["weekday"],
            "start_time": _hhmm(doc["start_min"]), "end_time": _hhmm(doc["end_min"]),
            "created_at": format_ts(doc["created_at"]), "updated_at": format_ts(doc["updated_at"])}


def appointment_view(doc: dict) -> dict:
    return {
        "id": doc["_id"],
        "property_id": doc["property_id"],
        "property_title": doc.get("property_title"),
        "client_id": doc["client_id"],
        "agent_id": doc["agent_id"],
        "scheduled_at": format_ts(doc["scheduled_at"]),
        "ends_at": format_ts(doc["ends_at"]),
        "status": doc["status"],
        "cancelled_by": doc.get("cancelled_by"),
        "cancel_reason": doc.get("cancel_reason"),
        "proposed_by": doc.get("proposed_by", doc["client_id"]),
        "rescheduled_at": format_ts(doc.get("rescheduled_at")),
        "created_at": format_ts(doc["created_at"]),
        "updated_at": format_ts(doc["updated_at"]),
    }


class AvailabilityService:
    def __init__(self, store: AvailabilityStore, *, clock: Clock):
        self.store = store
        self.clock = clock

    ATTEMPTS = 8

    @staticmethod
    async def _backoff() -> None:
        await asyncio.sleep(random.uniform(0.001, 0.02))

    @staticmethod
    def _busy() -> Conflict:
        return Conflict("Your windows are being changed by another request; try again", "concurrent_update")

    @staticmethod
    def _overlap_error(weekday: str) -> Conflict:
        return Conflict(f"This window overlaps another of your {weekday} windows", "window_overlap")

    async def create(self, agent_id: int, body: WindowCreate) -> dict:
        start, end = minutes(body.start_time), minutes(body.end_time)
        for _ in range(self.ATTEMPTS):
            seen = await self.store.version(agent_id)
            if await self.store.overlapping(agent_id, body.weekday, start, end, -1):
                raise self._overlap_error(body.weekday)
            now = self.clock.now()
            doc = await self.store.insert({"agent_id": agent_id, "weekday": body.weekday, "start_min": start, "end_min": end,
                                           "created_at": now, "updated_at": now})
            if await self.store.bump(agent_id, seen):
                return window_view(doc)
            await self.store.delete_if(doc["_id"], {"start_min": start, "end_min": end})
            await self._backoff()
        raise self._busy()

    async def list_for(self, agent_id: int) -> list[dict]:
        return [window_view(d) for d in await self.store.of_agent(agent_id)]

    async def _own(self, agent_id: int, window_id: int) -> dict:
        doc = await self.store.get(window_id)
        if doc is None or doc["agent_id"] != agent_id:
            raise NotFound("No such availability window", "window_not_found")
        return doc

    async def update(self, agent_id: int, window_id: int, body: WindowUpdate) -> dict:
        for _ in range(self.ATTEMPTS):
            seen = await self.store.version(agent_id)
            doc = await self._own(agent_id, window_id)
            weekday = body.weekday or doc["weekday"]
            start = minutes(body.start_time) if body.start_time else doc["start_min"]
            end = minutes(body.end_time) if body.end_time else doc["end_min"]
            if start >= end:
                raise ValidationFailed.single("end_time", "must be after start_time")
            if await self.store.overlapping(agent_id, weekday, start, end, window_id):
                raise self._overlap_error(weekday)
            before = {"weekday": doc["weekday"], "start_min": doc["start_min"], "end_min": doc["end_min"]}
            after = {"weekday": weekday, "start_min": start, "end_min": end}
            updated = await self.store.replace_fields(window_id, before, {**after, "updated_at": self.clock.now()})
            if updated is not None:
                if await self.store.bump(agent_id, seen):
                    return window_view(updated)
                await self.store.replace_fields(window_id, after, before)
            await self._backoff()
        raise self._busy()

    async def delete(self, agent_id: int, window_id: int) -> None:
        await self._own(agent_id, window_id)
        if not await self.store.delete(window_id, agent_id):
            raise NotFound("No such availability window", "window_not_found")


class AppointmentService:
    def __init__(self, store: AppointmentStore, *, windows: AvailabilityStore, properties: PropertyStore,
                 notifications: NotificationService, clock: Clock, slot_minutes: int,
                 reminders: ReminderService | None = None, blocks: BlockService | None = None,
                 accounts: AccountService | None = None, max_open_per_agent: int = 5):
        self.store = store
        self.max_open_per_agent = max_open_per_agent  # APPOINTMENT_MAX_OPEN_PER_AGENT: one client's open viewings with one agent
        self.accounts = accounts  # a deactivated agent's listings stay visible, but nobody could answer a booking
        self.blocks = blocks  # [blocks] no new viewing between a client and an agent while either blocks the other
        self.windows = windows
        self.properties = properties
        self.notifications = notifications
        self.clock = clock
        self.slot_minutes = slot_minutes  # APPOINTMENT_MINUTES: a slot's length and the grid slots start on
        self.reminders = reminders  # viewing reminders: made on confirm, cancelled on cancel/reject/reschedule

    def _check_time(self, scheduled_at) -> tuple:
        """The slot rules every proposed time obeys (422): on the grid, in the future, within the horizon."""
        now = self.clock.now()
        at = to_utc(scheduled_at)
        slot = self.slot_minutes
        start = at.hour * 60 + at.minute
        if at.second or at.microsecond or start % slot:
            raise ValidationFailed.single("scheduled_at", f"must start on a {slot}-minute slot boundary (UTC), e.g. 10:00 or 10:{slot:02d}"
                                          if slot < 60 else f"must start on a {slot}-minute slot boundary (UTC)")
        if at <= now:
            raise ValidationFailed.single("scheduled_at", "must be in the future")
        if at > now + timedelta(days=BOOKING_HORIZON_DAYS):
            raise ValidationFailed.single("scheduled_at", f"must be within {BOOKING_HORIZON_DAYS} days")
        return at, start, now

    async def _check_window(self, agent_id: int, at, start: int) -> None:
        """409 unless the whole slot is inside one of the agent's windows."""
        slot = self.slot_minutes
        weekday = WEEKDAYS[at.weekday()]
        if start + slot > 24 * 60 or await self.windows.covering(agent_id, weekday, start, start + slot) is None:
            raise Conflict("The agent is not available then; see GET /agents/{id}/availability", "outside_availability")

    @staticmethod
    def _slot_key(agent_id: int, at) -> str:
        return f"{agent_id}:{at.strftime('%Y-%m-%dT%H:%M')}"

    async def book(self, principal, body: BookRequest) -> dict:
        at, start, now = self._check_time(body.scheduled_at)
        slot = self.slot_minutes
        prop = await self.properties.get(body.property_id)
        if prop is None or not prop.get("is_active", True):
            raise NotFound("No such property", "property_not_found")
        if prop["agent_id"] == principal.user_id:
            raise Forbidden("You cannot book a viewing of your own property", "own_property")
        if prop["status"] != "available":
            raise Conflict(f"This property is {prop['status']} and cannot be booked", "property_unavailable")
        agent_id = prop["agent_id"]
        if self.blocks is not None and await self.blocks.between(principal.user_id, agent_id):
            raise Conflict("You cannot book a viewing with this agent", "blocked")  # never says which side blocked
        if self.accounts is not None and not await self.accounts.is_active(agent_id):
            raise Conflict("This listing's agent account is not active; no viewing can be booked", "agent_inactive")
        await self._check_window(agent_id, at, start)
        await self._check_open_limits(principal.user_id, agent_id, prop["_id"], now, None)
        doc = await self.store.insert({
            "property_id": prop["_id"], "property_title": prop["title"], "client_id": principal.user_id, "agent_id": agent_id,
            "parties": [principal.user_id, agent_id], "scheduled_at": at, "ends_at": at + timedelta(minutes=slot),
            "status": "pending", "slot_key": self._slot_key(agent_id, at), "proposed_by": principal.user_id,
            "created_at": now, "updated_at": now,
        })
        try:  # concurrent bookings all passed the check above: each looks again with itself stored, and goes if over
            await self._check_open_limits(principal.user_id, agent_id, prop["_id"], now, doc["_id"])
        except Conflict:
            await self.store.discard(doc["_id"])  # never announced to anyone
            raise
        await self._announce(doc, "booked", actor=principal.user_id)
        return appointment_view(doc)

    async def _check_open_limits(self, client_id: int, agent_id: int, property_id: int, now, own_id: int | None) -> None:
        """409 when the client already has an open (pending or confirmed, still upcoming) viewing of this
        property (`viewing_exists`, with its `appointment_id`: reschedule that one instead), or
        APPOINTMENT_MAX_OPEN_PER_AGENT of them across this agent's listings (`too_many_open_viewings`): one
        client cannot hold an agent's whole calendar. Checked before the insert and again after it, counting
        every other open one (`own_id` is the new booking): of concurrent bookings the last to look sees all
        of them, so the limits hold (under such a race all of them may be refused). The client's open
        viewings are few: the `parties_status` index serves it."""
        open_ = await self.store.open_of_client(client_id, agent_id, now, own_id, self.max_open_per_agent + 50)
        same = next((d for d in open_ if d["property_id"] == property_id), None)
        if same is not None:
            raise Conflict("You already have an open viewing of this property; reschedule or cancel it instead",
                           "viewing_exists", extra={"appointment_id": same["_id"]})
        if len(open_) >= self.max_open_per_agent:
            raise Conflict(f"You already have {self.max_open_per_agent} open viewings with this agent; "
                           "wait for one to take place, or cancel one", "too_many_open_viewings")

    async def get(self, principal, appointment_id: int) -> dict:
        doc = await self.store.get(appointment_id)
        from sheda_rt.listings.service import is_admin

        if doc is None or (principal.user_id not in (doc["client_id"], doc["agent_id"]) and not is_admin(principal)):
            raise NotFound("No such appointment", "appointment_not_found")
        return appointment_view(doc)

    @staticmethod
    def _responder(user_id: int) -> dict:
        """The filter part "this user answers the pending proposal": a party who did not propose its
        time (bookings stored before `proposed_by` existed are the client's proposals)."""
        return {"parties": user_id, "$or": [{"proposed_by": {"$exists": True, "$ne": user_id}},
                                            {"proposed_by": {"$exists": False}, "agent_id": user_id}]}

    async def _check_can_agree(self, appointment: dict) -> None:
        """409 when the viewing's property was rented or sold meanwhile: nobody can take it, so no new
        time is agreed for viewing it (booking it is refused the same way); nor when either party's
        account was deactivated. An unlisted one stays open: its agent may unlist it to stop new
        bookings and still keep the viewings they have."""
        prop = await self.properties.get(appointment["property_id"])
        if prop is not None and prop.get("status", "available") != "available":
            raise Conflict(f"This property is {prop['status']}; cancel the viewing instead", "property_unavailable")
        # A closed or banned account answers nothing: no time is agreed with it (as no viewing is booked with it).
        if self.accounts is not None:
            for side in ("agent", "client"):
                if not await self.accounts.is_active(appointment[f"{side}_id"]):
                    raise Conflict(f"The {side}'s account is not active; cancel the viewing instead", f"{side}_inactive")

    async def _answer(self, principal, appointment_id: int, to_state: str) -> dict:
        """confirm / reject: pending -> to_state, by the party who did not propose the time. A time that
        has already begun can only be rejected (or rescheduled): confirming it would agree to a viewing
        that can no longer take place as proposed (the filter names the time, so a confirm racing the
        clock cannot slip through)."""
        user_id = principal.user_id
        now = self.clock.now()
        who = self._responder(user_id)
        if to_state == "confirmed":
            current = await self.store.get(appointment_id)
            if (current is not None and current["status"] == "pending" and user_id in (current["client_id"], current["agent_id"])
                    and current.get("proposed_by", current["client_id"]) != user_id):
                await self._check_can_agree(current)
            who = {**who, "scheduled_at": {"$gt": now}}
        doc = await self.store.transition(appointment_id, who, ["pending"], to_state, now, release_hold=to_state == "rejected")
        if doc is None:
            current = await self.store.get(appointment_id)
            if current is None or user_id not in (current["client_id"], current["agent_id"]):
                raise NotFound("No such appointment", "appointment_not_found")
            if current["status"] != "pending":
                raise Conflict(f"The appointment is {current['status']}; this needs it pending", "wrong_state")
            if current.get("proposed_by", current["client_id"]) == user_id:
                raise Forbidden("You proposed this time; the other party confirms or rejects it", "awaiting_other_party")
            if to_state == "confirmed" and current["scheduled_at"] <= now:
                raise Conflict("The proposed time has passed; propose a new one with /reschedule, or reject it", "time_passed")
            raise Conflict("The appointment changed meanwhile; read it again", "concurrent_update")
        return doc

    async def confirm(self, principal, appointment_id: int) -> dict:
        doc = await self._answer(principal, appointment_id, "confirmed")
        await self._announce(doc, "confirmed", actor=principal.user_id)
        if self.reminders is not None:
            await self.reminders.appointment_confirmed(doc)
        return appointment_view(doc)

    async def reject(self, principal, appointment_id: int) -> dict:
        doc = await self._answer(principal, appointment_id, "rejected")
        await self._announce(doc, "rejected", actor=principal.user_id)
        return appointment_view(doc)

    async def cancel(self, principal, appointment_id: int) -> dict:
        expected = ["pending", "confirmed"]
        doc = await self.store.transition_as(appointment_id, principal.user_id, None, expected, "cancelled",
                                             self.clock.now(), extra={"cancelled_by": principal.user_id}, release_hold=True)
        await self._announce(doc, "cancelled", actor=principal.user_id)
        if self.reminders is not None:
            await self.reminders.appointment_closed(doc)
        return appointment_view(doc)

    # ---- closed by the system (sheda_rt/appointments/closing.py) ------------------------------------
    _CLOSED_WHY = {"property_unavailable": "the property is no longer available",
                   "agent_inactive": "the agent's account is no longer active",
                   "client_inactive": "the client's account is no longer active"}

    async def close_open(self, party_id: int, reason: str | None, *, property_id: int | None = None,
                         keep_client: int | None = None, as_agent: bool = False, recover: bool = False, batch: int = 200) -> int:
        """Cancel every open viewing still ahead of `party_id` (of one property when given; only those where
        they are the agent with `as_agent`; never those of `keep_client`): `cancelled_by` null, `cancel_reason` = `reason`, or for a deactivated account the side
        it is on (agent_inactive / client_inactive). Frees the slots, cancels the reminders, tells the other
        party. Returns how many it closed; safe to run again (a closed one is not open any more; with
        `recover`, a run after one that failed, one whose party was not told yet is told now)."""
        if recover:
            for doc in await self.store.closed_unannounced(party_id, property_id, batch):
                await self._announce_closed(doc)
        closed = 0
        while True:
            now = self.clock.now()
            found = [d for d in await self.store.open_of_party(party_id, now, property_id, batch, as_agent=as_agent)
                     if keep_client is None or d["client_id"] != keep_client]
            if not found:
                return closed
            for current in found:
                why = reason or ("agent_inactive" if current["agent_id"] == party_id else "client_inactive")
                doc = await self.store.transition(current["_id"], {}, ["pending", "confirmed"], "cancelled", now,
                                                  {"cancelled_by": None, "cancel_reason": why, "close_notice_pending": True},
                                                  release_hold=True)
                if doc is None:  # a party cancelled, rejected or moved it meanwhile: the next round sees it as it is
                    continue
                closed += 1
                if self.reminders is not None:
                    await self.reminders.appointment_closed(current)
                await self._announce_closed(doc)

    async def _announce_closed(self, doc: dict) -> None:
        why = doc.get("cancel_reason")
        other = doc["agent_id"] if why == "client_inactive" else doc["client_id"]
        view = appointment_view(doc)
        body = f"The viewing of “{doc.get('property_title')}” on {view['scheduled_at']} was cancelled: {self._CLOSED_WHY.get(why, why)}."
        await self.notifications.notify(other, "appointment.cancelled", "Viewing cancelled", body,
                                        {"appointment_id": doc["_id"], "property_id": doc["property_id"], "status": doc["status"]})
        await self.notifications.publish_event([doc["client_id"], doc["agent_id"]], {"type": "appointment.cancelled", "appointment": view})
        await self.store.announced(doc["_id"])

    async def reschedule(self, principal, appointment_id: int, body) -> dict:
        """Either party proposes a new time: pending | confirmed -> pending at the new time, for the
        other party to confirm. The rules of a booking (422 for the time; 409 outside the agent's
        windows or a taken slot); the slot hold moves in the same conditional write as the time."""
        user_id = principal.user_id
        current = await self.store.get(appointment_id)
        if current is None or user_id not in (current["client_id"], current["agent_id"]):
            raise NotFound("No such appointment", "appointment_not_found")
        if current["status"] not in ("pending", "confirmed"):
            raise Conflict(f"The appointment is {current['status']}; this needs it pending or confirmed", "wrong_state")
        at, start, now = self._check_time(body.scheduled_at)
        await self._check_can_agree(current)
        if at == current["scheduled_at"]:
            raise ValidationFailed.single("scheduled_at", "is the appointment's current time")
        if self.blocks is not None and await self.blocks.between(current["client_id"], current["agent_id"]):
            raise Conflict("You cannot arrange a viewing with this user", "blocked")  # never says which side blocked
        await self._check_window(current["agent_id"], at, start)
        changes = {"status": "pending", "scheduled_at": at, "ends_at": at + timedelta(minutes=self.slot_minutes),
                   "slot_key": self._slot_key(current["agent_id"], at), "proposed_by": user_id, "rescheduled_at": now,
                   "updated_at": now, "reschedules": int(current.get("reschedules", 0)) + 1}
        try:
            doc = await self.store.move(appointment_id, {"status": current["status"], "scheduled_at": current["scheduled_at"],
                                                         "parties": user_id}, changes)
        except DuplicateKeyError:
            raise Conflict(*self.store.HOLD_TAKEN)
        if doc is None:  # another move of this appointment (a cancel, a reschedule, a confirm) came first
            raise Conflict("The appointment changed meanwhile; read it again", "concurrent_update")
        if self.reminders is not None and current["status"] == "confirmed":
            await self.reminders.appointment_closed(current)
        await self._announce(doc, "rescheduled", actor=user_id)
        return appointment_view(doc)

    async def list_mine(self, principal, query) -> dict:
        return await self.store.page(principal.user_id, query.status, query.role, query, appointment_view)

    _TEXT = {
        "booked": ("New viewing request", "A client asked to view “{title}” on {when}."),
        "confirmed": ("Viewing confirmed", "Your viewing of “{title}” on {when} is confirmed."),
        "rejected": ("Viewing declined", "The agent declined your viewing of “{title}” on {when}."),
        "cancelled": ("Viewing cancelled", "The viewing of “{title}” on {when} was cancelled."),
        "rescheduled": ("New time proposed", "A new time was proposed for the viewing of “{title}”: {when}. Please confirm it."),
    }

    # One event type per key of _TEXT (tests/test_asyncapi.py); this is only a wording: after the
    # agent proposed a new time, it is the client who rejects it (and the agent who is told).
    _REJECTED_BY_CLIENT = ("Viewing declined", "The client declined the proposed time for the viewing of “{title}”: {when}.")

    async def _announce(self, doc: dict, what: str, actor: int) -> None:
        view = appointment_view(doc)
        other = doc["agent_id"] if actor == doc["client_id"] else doc["client_id"]
        title, body = self._REJECTED_BY_CLIENT if what == "rejected" and actor == doc["client_id"] else self._TEXT[what]
        kind = f"appointment.{what}"
        await self.notifications.notify(other, kind, title, body.format(title=doc.get("property_title"), when=view["scheduled_at"]),
                                        {"appointment_id": doc["_id"], "property_id": doc["property_id"], "status": doc["status"]})
        await self.notifications.publish_event([other, actor], {"type": kind, "appointment": view})
