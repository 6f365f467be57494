"""/api/v1/bookings/*, /api/v1/builder/receivables, /api/v1/projects/{id}/progress and /updates:
thin edges over BookingService and ProgressService (sheda_rt/builders/bookings.py, progress.py)."""
from __future__ import annotations

from handlers.base import APIHandler
from handlers.builders import _MaybeSignedIn
from handlers.routing import endpoint, route
from sheda_rt.accounts.auth import BUILDER, CLIENT, USER
from sheda_rt.builders.booking_models import (BookingCancel, BookingCreate, BookingPage, BookingQuery, BookingView, PaymentSent,
                                              ProgressPut, ProgressView, Receivables, UpdateCreate, UpdatePage, UpdateView)
from sheda_rt.pagination import PageQuery

TAGS = ("builders",)
LINE_ERRORS = (401, 403, 404, 409, 422)


class BookingsHandler(APIHandler):
    @endpoint("My bookings (as client or builder)", auth=USER, query=BookingQuery, response=BookingPage, errors=(401, 422),
              tags=TAGS)
    async def get(self, query: BookingQuery):
        """Newest first, cursor paginated; filter by `status` and `role` (client | builder)."""
        return await self.ctx.bookings.list_mine(self.principal, query)

    @endpoint("Book a unit (clients): it is reserved for you pending the booking payment", auth=CLIENT, body=BookingCreate,
              status=201, response=BookingView, errors=(401, 403, 404, 409, 422), tags=TAGS)
    async def post(self, body: BookingCreate):
        """`{unit_id, plan_id}` → 201 booking `reserved` with `hold_until` (now + BOOKING_HOLD_HOURS) and its
        `installments`: the unit's price split by the plan's lines (kobo-exact, the remainder on the last line),
        line 1 being the booking payment, due when the hold ends. The unit becomes `reserved`. Of two clients
        racing for one unit exactly one gets 201, the other 409 `unit_not_available` (also for a unit that is not
        available). 404 `unit_not_found` (no such unit, or its project is not published); 422 when the plan is
        not one of the unit's project's; 403 `own_unit` for the project's own builder; 409 `builder_inactive` when the
        builder's account is deactivated or switched to another type."""
        return await self.ctx.bookings.create(self.principal, body)


class BookingHandler(APIHandler):
    @endpoint("One booking (its client, its builder or an admin)", auth=USER, response=BookingView, errors=(401, 404), tags=TAGS)
    async def get(self, booking_id: int):
        return await self.ctx.bookings.get(self.principal, booking_id)


class PaymentSentHandler(APIHandler):
    @endpoint("I have paid this installment (the client)", auth=CLIENT, body=PaymentSent, response=BookingView,
              errors=LINE_ERRORS, tags=TAGS)
    async def post(self, booking_id: int, n: int, body: PaymentSent):
        """`{reference}`: line `n` due | overdue → sent. While the booking is `reserved` only line 1 (the booking
        payment) can be sent, and it pauses the hold; the other lines once the booking is `active`. 409
        `wrong_state` otherwise (`hold_expired` once the hold lapsed); 404 `installment_not_found`; 403 `not_client`
        for the builder."""
        return await self.ctx.bookings.payment_sent(self.principal, booking_id, n, body.reference)


class ConfirmHandler(APIHandler):
    @endpoint("Payment received (the builder)", auth=BUILDER, response=BookingView, errors=(401, 403, 404, 409), tags=TAGS)
    async def post(self, booking_id: int, n: int):
        """Line `n` sent → confirmed. Line 1 (the booking payment) makes the booking `active` and the unit `booked`;
        when every line is confirmed the booking is `completed` and the unit `sold`. 409 `wrong_state` unless the
        client marked it sent; 403 `not_builder` for the client."""
        return await self.ctx.bookings.confirm(self.principal, booking_id, n)


class DeclineHandler(APIHandler):
    @endpoint("Payment not received (the builder)", auth=BUILDER, response=BookingView, errors=(401, 403, 404, 409), tags=TAGS)
    async def post(self, booking_id: int, n: int):
        """Line `n` sent → due (overdue when its date has passed). For the booking payment the hold resumes with
        what was left of it when the client marked it sent (at least one hour)."""
        return await self.ctx.bookings.decline(self.principal, booking_id, n)


class CancelHandler(APIHandler):
    @endpoint("Cancel a booking (the client before the booking payment is confirmed; the builder with a reason)", auth=USER,
              body=BookingCancel, response=BookingView, errors=(401, 403, 404, 409, 422), tags=TAGS)
    async def post(self, booking_id: int, body: BookingCancel):
        """`{reason?}`. The client (client scope) cancels a `reserved` booking; the builder (builder scope) a
        `reserved` or `active` one and must give `reason` (422 without). The unit is available again. 409
        `wrong_state` otherwise."""
        return await self.ctx.bookings.cancel(self.principal, booking_id, body.reason)


class ReceivablesHandler(APIHandler):
    @endpoint("What my buyers owe me, per project (builders)", auth=BUILDER, response=Receivables, errors=(401, 403), tags=TAGS)
    async def get(self):
        """Over reserved, active and completed bookings: `due` (unpaid and not overdue, including lines the client
        marked sent), `overdue` (lines of active bookings past their date and not marked sent), `received`
        (confirmed) and `awaiting_confirmation` (marked sent by the client, not yet confirmed; also counted in due),
        per project and in total; decimal strings."""
        return await self.ctx.bookings.receivables(self.principal)


class ProgressHandler(_MaybeSignedIn):
    @endpoint("A project's construction progress", response=ProgressView, errors=(401, 404), tags=TAGS)
    async def get(self, project_id: int):
        """The five phases (foundation, structure, roofing, finishing, handover) with percent complete and dates;
        public once published (drafts: builder, admins)."""
        return await self.ctx.construction.get_progress(await self.optional_principal(), project_id)

    @endpoint("Set construction progress (its builder or an admin)", auth=USER, body=ProgressPut, response=ProgressView,
              errors=(401, 403, 404, 422), tags=TAGS)
    async def put(self, project_id: int, body: ProgressPut):
        """`{"phases": [{phase, percent, start_date?, end_date?}]}`: the phases named (each at most once) are set,
        the others kept. Watchers of `project:<id>` get `project.updated` with changes ["progress"]."""
        return await self.ctx.construction.put_progress(self.principal, project_id, body)


class UpdatesHandler(_MaybeSignedIn):
    @endpoint("A project's construction updates, newest first", query=PageQuery, response=UpdatePage, errors=(401, 404, 422),
              tags=TAGS)
    async def get(self, project_id: int, query: PageQuery):
        return await self.ctx.construction.list_updates(await self.optional_principal(), project_id, query)

    @endpoint("Post a construction update (its builder or an admin)", auth=USER, body=UpdateCreate, status=201,
              response=UpdateView, errors=(401, 403, 404, 422), tags=TAGS)
    async def post(self, project_id: int, body: UpdateCreate):
        """`{title, body, phase?, percent?, image_ids?}` (percent needs phase and also sets that phase's progress;
        image_ids are uploaded /media/... paths). Every client with a booking in the published project gets a stored
        notification (kind `project.update`) and a durable `project.update` event; watchers of `project:<id>` get
        `project.updated` with changes ["update"] (and "progress" when it moved a phase)."""
        return await self.ctx.construction.post_update(self.principal, project_id, body)


default_handlers = [
    route("/api/v1/bookings", BookingsHandler),
    route("/api/v1/bookings/{booking_id:int}", BookingHandler),
    route("/api/v1/bookings/{booking_id:int}/installments/{n:int}/payment-sent", PaymentSentHandler),
    route("/api/v1/bookings/{booking_id:int}/installments/{n:int}/confirm", ConfirmHandler),
    route("/api/v1/bookings/{booking_id:int}/installments/{n:int}/decline", DeclineHandler),
    route("/api/v1/bookings/{booking_id:int}/cancel", CancelHandler),
    route("/api/v1/builder/receivables", ReceivablesHandler),
    route("/api/v1/projects/{project_id:int}/progress", ProgressHandler),
    route("/api/v1/projects/{project_id:int}/updates", UpdatesHandler),
]
