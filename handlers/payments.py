"""/api/v1/payments/*, /api/v1/webhooks/paystack: thin edges over PaymentService."""
from __future__ import annotations

from handlers.base import APIHandler
from handlers.routing import Reply, endpoint, route
from sheda_rt.accounts.auth import CLIENT, USER
from sheda_rt.payments.models import PaymentCreate, PaymentOut, PaymentQuery, WebhookAck
from sheda_rt.responses import Page

TAGS = ("payments",)


class PaymentsHandler(APIHandler):
    @endpoint("Pay for a contract through the gateway (the contract's client)", response=PaymentOut, auth=CLIENT,
              body=PaymentCreate, status=201, also={200: "The contract already has a live payment: that one"},
              errors=(401, 403, 404, 409, 422, 503), tags=TAGS)
    async def post(self, body: PaymentCreate):
        """`{purpose: "contract", target_id}` → 201 with our `reference` and the gateway's `checkout_url`: send the
        payer there. The contract must be yours (404 otherwise; 403 for its agent) and awaiting payment
        (awaiting_payment or payment_pending; 409 `wrong_state`). A contract with a live payment (initialized or
        pending) answers 200 with it instead of starting another. 503 `payments_not_configured` when the server has
        no gateway (pay by bank transfer: PATCH /contracts/{id}/payment-sent); 503 `gateway_unavailable` when the
        gateway did not answer. The contract becomes active when the gateway confirms the payment."""
        payment, created = await self.ctx.payments.create(self.principal, body)
        return payment if created else Reply(payment, 200)

    @endpoint("My payments (as payer or payee)", response=Page[PaymentOut], auth=USER, query=PaymentQuery, errors=(401, 422),
              tags=TAGS)
    async def get(self, query: PaymentQuery):
        """Newest first, cursor paginated; filter by `status`. Admins: `flagged=true` lists every payment flagged for
        review (an amount or currency that did not match, a payment for a contract that could no longer be paid)."""
        return await self.ctx.payments.list_mine(self.principal, query)


class PaymentHandler(APIHandler):
    @endpoint("One payment (its payer, its payee or an admin)", response=PaymentOut, auth=USER, errors=(401, 404), tags=TAGS)
    async def get(self, reference: str):
        """`reference` is ours (`shd_...`), as POST /payments returned it."""
        return await self.ctx.payments.get(self.principal, reference)


class PaystackWebhookHandler(APIHandler):
    @endpoint("Paystack's event deliveries", response=WebhookAck, errors=(401, 503), tags=TAGS)
    async def post(self):
        """For Paystack only. The body is read raw: `x-paystack-signature` must be the hex HMAC-SHA512 of exactly these
        bytes keyed with our secret key, else 401 and nothing is stored (also 401 for everything when no gateway is
        configured). Each event is handled once (a redelivery → 200, no effect). A `charge.success` is confirmed with
        Paystack's verify endpoint before the contract moves; an amount or currency that differs from what we
        initialized flags the payment for an admin instead. 503 when Paystack could not be asked (it delivers again)."""
        return await self.ctx.payments.webhook(self.body_bytes, self.request.headers)


default_handlers = [
    route("/api/v1/payments", PaymentsHandler),
    route("/api/v1/payments/{reference:str}", PaymentHandler),
    route("/api/v1/webhooks/paystack", PaystackWebhookHandler),
]
