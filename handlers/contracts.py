"""/api/v1/contracts/*: thin edges over ContractService."""
from __future__ import annotations

from handlers.base import APIHandler
from handlers.routing import endpoint, route
from sheda_rt.accounts.auth import ADMIN, AGENT, CLIENT, USER
from sheda_rt.contracts.models import ContractCreate, ContractOut, ContractQuery
from sheda_rt.responses import Page

TAGS = ("contracts",)


class ContractsHandler(APIHandler):
    @endpoint("My contracts (as client or agent)", response=Page[ContractOut], auth=USER, query=ContractQuery, errors=(401, 422), tags=TAGS)
    async def get(self, query: ContractQuery):
        """Newest first, cursor paginated; filter by `status` and `role` (client|agent)."""
        return await self.ctx.contracts.list_mine(self.principal, query)


class ContractHandler(APIHandler):
    """One path, two meanings kept from the seed: GET takes a contract id, POST a property id."""

    @endpoint("One contract (its parties or an admin)", response=ContractOut, auth=USER, errors=(401, 404), tags=TAGS)
    async def get(self, id: int):
        """`id` is the contract id. `amount` is a decimal string ("2500000.00")."""
        return await self.ctx.contracts.get(self.principal, id)

    @endpoint("Start paying for a property (clients with a confirmed viewing)", response=ContractOut, auth=CLIENT, body=ContractCreate,
              status=201, errors=(401, 403, 404, 409, 422), tags=TAGS)
    async def post(self, id: int, body: ContractCreate):
        """`id` is the PROPERTY id. → 201 contract `awaiting_payment` with `amount` (the listing price, decimal
        string), `contract_type` (rent|sale from the listing), for rentals `term_months` (required, 1-120; a 422 for
        sales) and a provisional `end_date`, and `account_details` (the agent's bank details to pay into).
        404: no such listed property, or the appointment is not yours; 422: the appointment is for another
        property; 409: the viewing is not confirmed, the property is rented/sold, the agent's account is deactivated
        (`agent_inactive`), the agent has no bank details (`agent_account_missing`), or you already have an open
        contract for it."""
        return await self.ctx.contracts.create(self.principal, id, body)


class PaymentSentHandler(APIHandler):
    @endpoint("I have made payment (the client)", response=ContractOut, auth=CLIENT, errors=(401, 403, 404, 409), tags=TAGS)
    async def patch(self, contract_id: int):
        """awaiting_payment → payment_pending; 409 from any other state."""
        return await self.ctx.contracts.payment_sent(self.principal, contract_id)


class ConfirmPaymentHandler(APIHandler):
    @endpoint("Accept the payment (the agent)", response=ContractOut, auth=AGENT, errors=(401, 403, 404, 409), tags=TAGS)
    async def patch(self, contract_id: int):
        """payment_pending → active; the property becomes rented (rent) or sold (sale) and the term starts now.
        Two contracts on one property can never both be active: the second confirm is a 409."""
        return await self.ctx.contracts.confirm_payment(self.principal, contract_id)


class DeclinePaymentHandler(APIHandler):
    @endpoint("Payment not received (the agent)", response=ContractOut, auth=AGENT, errors=(401, 403, 404, 409), tags=TAGS)
    async def patch(self, contract_id: int):
        """payment_pending → awaiting_payment again."""
        return await self.ctx.contracts.decline_payment(self.principal, contract_id)


class CancelHandler(APIHandler):
    @endpoint("Cancel before it is active (the client)", response=ContractOut, auth=CLIENT, errors=(401, 403, 404, 409), tags=TAGS)
    async def patch(self, contract_id: int):
        """awaiting_payment or payment_pending → cancelled; 409 once active, cancelled or expired."""
        return await self.ctx.contracts.cancel(self.principal, contract_id)


class ExpireHandler(APIHandler):
    @endpoint("Expire an active contract now (admins)", response=ContractOut, auth=ADMIN, errors=(401, 403, 404, 409), tags=TAGS)
    async def patch(self, contract_id: int):
        """What the periodic job does when end_date has passed: active → expired, the property available again.
        Admins may expire any active contract (also a sale). 409 unless active."""
        return await self.ctx.contracts.expire_by_admin(self.principal, contract_id)


default_handlers = [
    route("/api/v1/contracts", ContractsHandler),
    route("/api/v1/contracts/{id:int}", ContractHandler),
    route("/api/v1/contracts/{contract_id:int}/payment-sent", PaymentSentHandler),
    route("/api/v1/contracts/{contract_id:int}/confirm-payment", ConfirmPaymentHandler),
    route("/api/v1/contracts/{contract_id:int}/decline-payment", DeclinePaymentHandler),
    route("/api/v1/contracts/{contract_id:int}/cancel", CancelHandler),
    route("/api/v1/contracts/{contract_id:int}/expire", ExpireHandler),
]
