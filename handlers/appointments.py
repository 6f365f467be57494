"""/api/v1/availability/*, /api/v1/appointments/*: thin edges over the appointment services.
All times are UTC."""
from __future__ import annotations

from handlers.base import APIHandler
from handlers.routing import endpoint, route
from sheda_rt.accounts.auth import AGENT, CLIENT, USER
from sheda_rt.appointments.models import (AppointmentOut, AppointmentQuery, BookRequest, RescheduleRequest, WindowCreate, WindowOut,
                                          WindowUpdate)
from sheda_rt.responses import Page

TAGS = ("appointments",)


class AvailabilityHandler(APIHandler):
    @endpoint("My weekly availability windows (agents)", auth=AGENT, response=list[WindowOut], errors=(401, 403), tags=TAGS)
    async def get(self):
        """Sorted MONDAY..SUNDAY, then by start_time. Times are 'HH:MM' UTC."""
        return await self.ctx.availability.list_for(self.principal.user_id)

    @endpoint("Add a weekly window (agents)", auth=AGENT, body=WindowCreate, response=WindowOut, status=201,
              errors=(401, 403, 409, 422), tags=TAGS)
    async def post(self, body: WindowCreate):
        """`{weekday: MONDAY..SUNDAY, start_time: "09:00", end_time: "12:00"}` in UTC; end_time may be "24:00", the
        end of the day (hours past midnight UTC are a window of the next weekday). start_time must be before
        end_time (422); a window overlapping another of yours on that weekday is a 409 (touching is fine)."""
        return await self.ctx.availability.create(self.principal.user_id, body)


class AvailabilityWindowHandler(APIHandler):
    @endpoint("Change one of my windows", auth=AGENT, body=WindowUpdate, response=WindowOut, errors=(401, 403, 404, 409, 422),
              tags=TAGS)
    async def patch(self, window_id: int, body: WindowUpdate):
        """Any of weekday, start_time, end_time; the result must still have start < end (422) and not overlap (409)."""
        return await self.ctx.availability.update(self.principal.user_id, window_id, body)

    @endpoint("Delete one of my windows", auth=AGENT, status=204, errors=(401, 403, 404), tags=TAGS)
    async def delete(self, window_id: int):
        """Existing appointments stay as they are."""
        await self.ctx.availability.delete(self.principal.user_id, window_id)


class AppointmentsHandler(APIHandler):
    @endpoint("Book a viewing (clients)", auth=CLIENT, body=BookRequest, response=AppointmentOut, status=201,
              errors=(401, 403, 404, 409, 422), tags=TAGS)
    async def post(self, body: BookRequest):
        """`{property_id, scheduled_at}` → 201 `pending`. A slot is APPOINTMENT_MINUTES long (default 30) and must
        start on a slot boundary (UTC, e.g. 10:00 or 10:30) in the future (422 otherwise). 404: no such listed
        property; 403: your own listing; 409 `property_unavailable` (rented/sold), 409 `agent_inactive` (the
        listing's agent account is deactivated), 409 `outside_availability`
        (the slot is not inside one of the agent's windows), 409 `slot_taken` (the agent already has a pending or
        confirmed viewing in that slot — of two simultaneous requests exactly one gets 201), 409 `viewing_exists`
        (you already have an open — pending or confirmed, upcoming — viewing of this property; the body's
        `appointment_id` names it: reschedule it instead), 409 `too_many_open_viewings` (you have
        APPOINTMENT_MAX_OPEN_PER_AGENT, default 5, open viewings with this agent)."""
        return await self.ctx.appointments.book(self.principal, body)

    @endpoint("My appointments (as client or agent)", auth=USER, query=AppointmentQuery, response=Page[AppointmentOut],
              errors=(401, 422), tags=TAGS)
    async def get(self, query: AppointmentQuery):
        """Newest booking first, cursor paginated; filter by `status` and by `role` (client|agent)."""
        return await self.ctx.appointments.list_mine(self.principal, query)


class AppointmentHandler(APIHandler):
    @endpoint("One of my appointments", auth=USER, response=AppointmentOut, errors=(401, 404), tags=TAGS)
    async def get(self, appointment_id: int):
        return await self.ctx.appointments.get(self.principal, appointment_id)

    @endpoint("Cancel an appointment (client or agent)", auth=USER, response=AppointmentOut, errors=(401, 404, 409), tags=TAGS)
    async def delete(self, appointment_id: int):
        """pending or confirmed → cancelled (409 from any other state); frees the slot. Returns the appointment."""
        return await self.ctx.appointments.cancel(self.principal, appointment_id)


class ConfirmHandler(APIHandler):
    @endpoint("Confirm a pending appointment (the party who did not propose its time)", auth=USER, response=AppointmentOut,
              errors=(401, 403, 404, 409), tags=TAGS)
    async def patch(self, appointment_id: int):
        """pending → confirmed; 409 from any other state. A booking is confirmed by its agent; a new time
        proposed with `/reschedule` by the other party (`proposed_by` is who proposed it). 403
        `awaiting_other_party` for the proposer (the client of a fresh booking). 409 `time_passed` once the
        proposed time has begun (reject it or propose another), 409 `property_unavailable` once the property
        is rented or sold, 409 `agent_inactive` / `client_inactive` once that party's account is deactivated. Creates the viewing's reminders (24 h and 1 h before, to both parties)."""
        return await self.ctx.appointments.confirm(self.principal, appointment_id)


class RejectHandler(APIHandler):
    @endpoint("Reject a pending appointment (the party who did not propose its time)", auth=USER, response=AppointmentOut,
              errors=(401, 403, 404, 409), tags=TAGS)
    async def patch(self, appointment_id: int):
        """pending → rejected (frees the slot); 409 from any other state; 403 `awaiting_other_party` for the
        party who proposed the time."""
        return await self.ctx.appointments.reject(self.principal, appointment_id)


class RescheduleHandler(APIHandler):
    @endpoint("Propose a new time for an appointment (client or agent)", auth=USER, body=RescheduleRequest, response=AppointmentOut,
              errors=(401, 403, 404, 409, 422), tags=TAGS)
    async def patch(self, appointment_id: int, body: RescheduleRequest):
        """`{scheduled_at}`: pending or confirmed → pending at the new time, `proposed_by` = you; the other
        party confirms (`/confirm`) or rejects it. The time follows the booking rules: 422 when not on a slot
        boundary, in the past, beyond a year or the current time; 409 `outside_availability`, 409 `slot_taken`
        (another viewing holds it: of simultaneous bookings and reschedules into one slot exactly one wins),
        409 `wrong_state` (rejected or cancelled), 409 `property_unavailable` (the property was rented or sold
        meanwhile: cancel the viewing instead), 409 `agent_inactive` / `client_inactive` (that party's account
        was deactivated), 404 for someone else's appointment. A refusal changes
        nothing. The other party gets `appointment.rescheduled` and a notification; a confirmed viewing's
        reminders are cancelled until the new time is confirmed."""
        return await self.ctx.appointments.reschedule(self.principal, appointment_id, body)


default_handlers = [
    route("/api/v1/availability", AvailabilityHandler),
    route("/api/v1/availability/{window_id:int}", AvailabilityWindowHandler),
    route("/api/v1/appointments", AppointmentsHandler),
    route("/api/v1/appointments/{appointment_id:int}", AppointmentHandler),
    route("/api/v1/appointments/{appointment_id:int}/confirm", ConfirmHandler),
    route("/api/v1/appointments/{appointment_id:int}/reject", RejectHandler),
    route("/api/v1/appointments/{appointment_id:int}/reschedule", RescheduleHandler),
]
