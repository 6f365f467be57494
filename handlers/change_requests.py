"""/api/v1/bookings/{id}/change-requests/*: thin edges over ChangeRequestService
(sheda_rt/builders/change_requests.py)."""
from __future__ import annotations

from handlers.base import APIHandler
from handlers.routing import endpoint, route
from sheda_rt.accounts.auth import BUILDER, CLIENT, USER
from sheda_rt.builders.change_request_models import (ChangeAccept, ChangeQuote, ChangeReject, ChangeRequestCreate,
                                                     ChangeRequestList, ChangeRequestResult, ChangeRequestView)

TAGS = ("builders",)
MOVE_ERRORS = (401, 403, 404, 409)


class ChangeRequestsHandler(APIHandler):
    @endpoint("A booking's change requests (its client, its builder or an admin)", auth=USER,
              response=ChangeRequestList, errors=(401, 404, 422), tags=TAGS)
    async def get(self, booking_id: int):
        """Newest first. 404 `booking_not_found` for anyone else."""
        return await self.ctx.change_requests.list(self.principal, booking_id)

    @endpoint("Ask for a change to my unit (the booking's client)", auth=CLIENT, body=ChangeRequestCreate, status=201,
              response=ChangeRequestView, errors=(401, 403, 404, 409, 422), tags=TAGS)
    async def post(self, booking_id: int, body: ChangeRequestCreate):
        """`{category, description, attachment_ids?}` → 201 `requested`; the builder gets a notification and both a
        `change_request.requested` event. 409 `wrong_state` unless the booking is reserved or active; 403 `not_client`
        for the builder; 404 `booking_not_found` for strangers."""
        return await self.ctx.change_requests.create(self.principal, booking_id, body)


class QuoteHandler(APIHandler):
    @endpoint("Quote a change (the booking's builder)", auth=BUILDER, body=ChangeQuote, response=ChangeRequestView,
              errors=(401, 403, 404, 409, 422), tags=TAGS)
    async def post(self, booking_id: int, cr_id: int, body: ChangeQuote):
        """`{cost, days}`: requested | quoted → quoted (a new quote replaces the old), while the booking is reserved or
        active (409 `wrong_state` once it is closed: the client could not accept it)."""
        return await self.ctx.change_requests.quote(self.principal, booking_id, cr_id, body)


class AcceptHandler(APIHandler):
    @endpoint("Accept the quote (the booking's client)", auth=CLIENT, body=ChangeAccept, response=ChangeRequestResult,
              errors=MOVE_ERRORS + (422,), tags=TAGS)
    async def post(self, booking_id: int, cr_id: int, body: ChangeAccept):
        """quoted → accepted, and the booking's schedule gains a line `Change: <category>` of the quoted cost, due `days`
        after now (`due` = `change:<days>`), paid like any other line. Of two racing accepts exactly one gets 200 and
        the line is added once. The response carries the updated `booking`. `{cost?}`: the quote the client saw; a
        builder's re-quote since then is 409 `quote_changed` (with the current `cost`), so nobody accepts a price they
        were not shown."""
        return await self.ctx.change_requests.accept(self.principal, booking_id, cr_id, body.cost)


class WithdrawHandler(APIHandler):
    @endpoint("Withdraw a change request (the booking's client)", auth=CLIENT, response=ChangeRequestView, errors=MOVE_ERRORS,
              tags=TAGS)
    async def post(self, booking_id: int, cr_id: int):
        """requested | quoted → withdrawn."""
        return await self.ctx.change_requests.withdraw(self.principal, booking_id, cr_id)


class CompleteHandler(APIHandler):
    @endpoint("The change is done (the booking's builder)", auth=BUILDER, response=ChangeRequestView, errors=MOVE_ERRORS,
              tags=TAGS)
    async def post(self, booking_id: int, cr_id: int):
        """accepted → completed."""
        return await self.ctx.change_requests.complete(self.principal, booking_id, cr_id)


class RejectHandler(APIHandler):
    @endpoint("Decline a change request (the booking's builder)", auth=BUILDER, body=ChangeReject, response=ChangeRequestView,
              errors=(401, 403, 404, 409, 422), tags=TAGS)
    async def post(self, booking_id: int, cr_id: int, body: ChangeReject):
        """`{reason}`: requested | quoted → rejected."""
        return await self.ctx.change_requests.reject(self.principal, booking_id, cr_id, body.reason)


BASE = "/api/v1/bookings/{booking_id:int}/change-requests"
default_handlers = [
    route(BASE, ChangeRequestsHandler),
    route(BASE + "/{cr_id:int}/quote", QuoteHandler),
    route(BASE + "/{cr_id:int}/accept", AcceptHandler),
    route(BASE + "/{cr_id:int}/withdraw", WithdrawHandler),
    route(BASE + "/{cr_id:int}/complete", CompleteHandler),
    route(BASE + "/{cr_id:int}/reject", RejectHandler),
]
