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

    pending --confirm (agent)--> confirmed
    pending --reject (agent)--> rejected
    pending | confirmed --cancel (client or agent)--> cancelled

Rejected and cancelled appointments free their slot.
"""
from __future__ import annotations

import asyncio
import random
from datetime import timedelta
from typing import TYPE_CHECKING

from sheda_rt.appointments.models import WEEKDAYS, BookRequest, WindowCreate, WindowUpdate, minutes
from sheda_rt.clock import format_ts, to_utc
from sheda_rt.errors import Conflict, Forbidden, NotFound, ValidationFailed

if TYPE_CHECKING:  # types only: the context wires these in (runtime imports here would make cycles)
    from sheda_rt.appointments.store import AppointmentStore, AvailabilityStore
    from sheda_rt.clock import Clock
    from sheda_rt.listings.store import PropertyStore
    from sheda_rt.notifications.service import NotificationService

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
                 notifications: NotificationService, clock: Clock, slot_minutes: int):
        self.store = store
        self.windows = windows
        self.properties = properties
        self.notifications = notifications
        self.clock = clock
        self.slot_minutes = slot_minutes  # APPOINTMENT_MINUTES: a slot's length and the grid slots start on

    async def book(self, principal, body: BookRequest) -> dict:
        now = self.clock.now()
        at = to_utc(body.scheduled_at)
        slot = self.slot_minutes
        start = at.hour * 60 + at.minute
        if at.second or at.microsecond or start % slot:
            raise ValidationFailed.single("scheduled_at", f"must start on a {slot}-minute slot boundary (UTC), e.g. 10:00 or 10:{slot:02d}"
                                          if slot < 60 else f"must start on a {slot}-minute slot boundary (UTC)")
        if at <= now:
            raise ValidationFailed.single("scheduled_at", "must be in the future")
        if at > now + timedelta(days=BOOKING_HORIZON_DAYS):
            raise ValidationFailed.single("scheduled_at", f"must be within {BOOKING_HORIZON_DAYS} days")
        prop = await self.properties.get(body.property_id)
        if prop is None or not prop.get("is_active", True):
            raise NotFound("No such property", "property_not_found")
        if prop["agent_id"] == principal.user_id:
            raise Forbidden("You cannot book a viewing of your own property", "own_property")
        if prop["status"] != "available":
            raise Conflict(f"This property is {prop['status']} and cannot be booked", "property_unavailable")
        agent_id = prop["agent_id"]
        weekday = WEEKDAYS[at.weekday()]
        if start + slot > 24 * 60 or await self.windows.covering(agent_id, weekday, start, start + slot) is None:
            raise Conflict("The agent is not available then; see GET /agents/{id}/availability", "outside_availability")
        doc = await self.store.insert({
            "property_id": prop["_id"], "property_title": prop["title"], "client_id": principal.user_id, "agent_id": agent_id,
            "parties": [principal.user_id, agent_id], "scheduled_at": at, "ends_at": at + timedelta(minutes=slot),
            "status": "pending", "slot_key": f"{agent_id}:{at.strftime('%Y-%m-%dT%H:%M')}",
            "created_at": now, "updated_at": now,
        })
        await self._announce(doc, "booked", actor=principal.user_id)
        return appointment_view(doc)

    async def get(self, principal, appointment_id: int) -> dict:
        doc = await self.store.get(appointment_id)
        from sheda_rt.listings.service import is_admin

        if doc is None or (principal.user_id not in (doc["client_id"], doc["agent_id"]) and not is_admin(principal)):
            raise NotFound("No such appointment", "appointment_not_found")
        return appointment_view(doc)

    async def confirm(self, principal, appointment_id: int) -> dict:
        doc = await self.store.transition_as(appointment_id, principal.user_id, "agent", ["pending"], "confirmed", self.clock.now())
        await self._announce(doc, "confirmed", actor=principal.user_id)
        return appointment_view(doc)

    async def reject(self, principal, appointment_id: int) -> dict:
        doc = await self.store.transition_as(appointment_id, principal.user_id, "agent", ["pending"], "rejected",
                                             self.clock.now(), release_hold=True)
        await self._announce(doc, "rejected", actor=principal.user_id)
        return appointment_view(doc)

    async def cancel(self, principal, appointment_id: int) -> dict:
        expected = ["pending", "confirmed"]
        doc = await self.store.transition_as(appointment_id, principal.user_id, None, expected, "cancelled",
                                             self.clock.now(), extra={"cancelled_by": principal.user_id}, release_hold=True)
        await self._announce(doc, "cancelled", actor=principal.user_id)
        return appointment_view(doc)

    async def list_mine(self, principal, query) -> dict:
        return await self.store.page(principal.user_id, query.status, query.role, query, appointment_view)

    _TEXT = {
        "booked": ("New viewing request", "A client asked to view “{title}” on {when}."),
        "confirmed": ("Viewing confirmed", "Your viewing of “{title}” on {when} is confirmed."),
        "rejected": ("Viewing declined", "The agent declined your viewing of “{title}” on {when}."),
        "cancelled": ("Viewing cancelled", "The viewing of “{title}” on {when} was cancelled."),
    }

    async def _announce(self, doc: dict, what: str, actor: int) -> None:
        view = appointment_view(doc)
        other = doc["agent_id"] if actor == doc["client_id"] else doc["client_id"]
        title, body = self._TEXT[what]
        kind = f"appointment.{what}"
        await self.notifications.notify(other, kind, title, body.format(title=doc.get("property_title"), when=view["scheduled_at"]),
                                        {"appointment_id": doc["_id"], "property_id": doc["property_id"], "status": doc["status"]})
        await self.notifications.publish_event([other, actor], {"type": kind, "appointment": view})
