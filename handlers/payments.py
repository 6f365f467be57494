"""/api/v1/payments/*, /api/v1/webhooks/paystack, /api/v1/admin/payments/{reference}/resolve: thin edges over PaymentService."""
from __future__ import annotations

from handlers.base import APIHandler
from handlers.routing import Reply, endpoint, route
from sheda_rt.accounts.auth import ADMIN, USER
from sheda_rt.payments.models import PaymentCreate, PaymentOut, PaymentQuery, PaymentResolve, WebhookAck
from sheda_rt.pagination import OpenQuery  # the webhook's URL is whatever the operator registered with Paystack
from sheda_rt.responses import Page

TAGS = ("payments",)


class PaymentsHandler(APIHandler):
    @endpoint("Pay through the gateway: a contract, a booking's installment, or a wallet top-up", response=PaymentOut,
              auth=USER, body=PaymentCreate, status=201, also={200: "The target already has a live payment: that one"},
              errors=(401, 403, 404, 409, 422, 429, 503), tags=TAGS)
    async def post(self, body: PaymentCreate):
        """→ 201 with our `reference` and the gateway's `checkout_url`: send the payer there. By `purpose`:
        `{"purpose": "contract", "target_id": <contract>}`: the contract's client (404 for others; 403 for its agent),
        while it awaits payment (awaiting_payment or payment_pending; else 409 `wrong_state`); it becomes active when
        the gateway confirms the payment. `{"purpose": "installment", "target_id": <booking>, "line": n}`: the
        booking's client pays line n's amount to the builder (404 `booking_not_found` / `installment_not_found`, 403
        for the builder); the line must be due or overdue (409 `wrong_state` when it is sent, i.e. a bank transfer
        awaits the builder's answer, or confirmed), line 1 while the booking is reserved and its hold has not lapsed
        (409 `hold_expired`), later lines once it is active. The confirmed payment confirms the line as the builder's
        confirm does (line 1 makes the booking active, the last one completes it). `{"purpose": "wallet_topup",
        "target_id": <your user id>, "amount": "5000.00"}`: credits your wallet (at most WALLET_TOPUP_MAX_PENDING top-up
        checkouts pending at once: another amount beyond is 429 `rate_limited` with Retry-After). `line` is required for installments
        and `amount` for top-ups, and refused elsewhere (422). A target with a live payment (initialized or pending)
        answers 200 with it instead of starting another. 503 `payments_not_configured` when the server has no gateway
        (pay by bank transfer: PATCH /contracts/{id}/payment-sent, POST /bookings/{id}/installments/{n}/payment-sent);
        503 `gateway_unavailable` when the gateway did not answer."""
        payment, created = await self.ctx.payments.create(self.principal, body)
        return payment if created else Reply(payment, 200)

    @endpoint("My payments (as payer or payee)", response=Page[PaymentOut], auth=USER, query=PaymentQuery, errors=(401, 422),
              tags=TAGS)
    async def get(self, query: PaymentQuery):
        """Newest first, cursor paginated; filter by `status`. Admins: `flagged=true` lists every payment flagged for
        review (an amount or currency that did not match, a contract or booking that could no longer be paid, an
        installment already confirmed, a success whose effect could still not be carried out 30 minutes on)."""
        return await self.ctx.payments.list_mine(self.principal, query)


class PaymentHandler(APIHandler):
    @endpoint("One payment (its payer, its payee or an admin)", response=PaymentOut, auth=USER, errors=(401, 404), tags=TAGS)
    async def get(self, reference: str):
        """`reference` is ours (`shd_...`), as POST /payments returned it."""
        return await self.ctx.payments.get(self.principal, reference)


class PaymentResolveHandler(APIHandler):
    @endpoint("Settle a flagged payment (admins): credit what the gateway verified, take an amount back, or dismiss it", response=PaymentOut,
              auth=ADMIN, body=PaymentResolve, status=201, also={200: "Already settled so: the payment as it was settled"},
              errors=(401, 403, 404, 409, 422, 503), tags=("admin",))
    async def post(self, reference: str, body: PaymentResolve):
        """For a payment `GET /payments?flagged=true` lists. `{"action": "credit", "reason"}` (wallet top-ups): the
        gateway is asked now, and the payer's wallet is credited what it verifies was paid (never an amount from a
        request or a webhook), in a ledger transaction naming the admin and the reason (`refs.resolved_by`); the
        payment becomes succeeded and applied (409 `not_paid` when the gateway does not report it paid,
        `not_creditable` for another purpose or currency, `refunded_before_credit` for a top-up the gateway gave
        back before it was credited; 503 `gateway_unavailable`). `{"action": "dismiss",
        "reason"}`: nothing is credited; a live attempt is closed failed. Either way `resolution` records who, when,
        why (and for a credit, `amount` and `transaction_id`), `flagged` becomes false, and nothing moves the
        payment again. `{"action": "reverse", "amount": "1500.00", "reason"}` (a credited wallet top-up, e.g. flagged
        `dispute_amount_unknown`, or `refund_unconfirmed` / `dispute_unconfirmed` checked by hand): `amount` is taken
        back from the payer's wallet as a gateway refund takes it (a `topup_reversal` entry, `refs.resolved_by` and
        `note`; never below zero, what the wallet no longer holds is owed, `resolution.shortfall`, repaid by later
        top-ups; `wallet.reversed` sent once); 409 `not_reversible` for another purpose, `not_credited` for a top-up
        never credited, `reversal_exceeds_credit` (with `reversible`) when more is asked than the top-up credited less
        what was taken back; `amount` is required for reverse and refused otherwise (422). Once: the same action
        (for reverse, the same amount) again answers 200; another is 409 `already_resolved`; 409
        `not_flagged` for a payment that is not flagged; 404 `payment_not_found`."""
        payment, created = await self.ctx.payments.resolve(self.principal, reference, body)
        return payment if created else Reply(payment, 200)


class PaystackWebhookHandler(APIHandler):
    @endpoint("Paystack's event deliveries", response=WebhookAck, query=OpenQuery, errors=(401, 503), tags=TAGS)
    async def post(self):
        """For Paystack only. The body is read raw: `x-paystack-signature` must be the hex HMAC-SHA512 of exactly these
        bytes keyed with our secret key, else 401 and nothing is stored (also 401 for everything when no gateway is
        configured). Each event is handled once (a redelivery → 200, no effect). A `charge.success` is confirmed with
        Paystack's verify endpoint before the payment's effect (contract, installment, wallet); an amount or currency that differs from what we
        initialized flags the payment for an admin instead. A `refund.processed` is first confirmed with Paystack's
        refund list (503 `refund_unconfirmed` and the payment flagged when Paystack does not show it processed: it
        delivers again), a chargeback lost (`charge.dispute.resolve`, `merchant-accepted`) with Paystack's dispute (503
        `dispute_unconfirmed` and the payment flagged unless it shows that dispute on this payment resolved
        `merchant-accepted` for that amount; one it shows lost without an amount, `refund_amount: null`, is flagged
        `dispute_amount_unknown` for an admin and answered 200, nothing moved). A confirmed `refund.processed` or lost chargeback takes a top-up's money back from the wallet (a `topup_reversal`
        ledger entry, never below zero: a shortfall is flagged `topup_reversal_shortfall`); a dispute opened flags the
        payment `gateway_dispute`; for a contract or installment, a refund or lost chargeback flags it
        `refunded_by_gateway`. 503 when Paystack could not be asked (it delivers again)."""
        return await self.ctx.payments.webhook(self.body_bytes, self.request.headers)


default_handlers = [
    route("/api/v1/payments", PaymentsHandler),
    route("/api/v1/payments/{reference:str}", PaymentHandler),
    route("/api/v1/webhooks/paystack", PaystackWebhookHandler),
    route("/api/v1/admin/payments/{reference:str}/resolve", PaymentResolveHandler),
]
