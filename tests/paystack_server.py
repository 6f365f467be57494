"""A local Paystack for the tests: a tornado server on 127.0.0.1 that answers as Paystack's
documentation describes, and delivers webhooks signed with the test secret.

  POST /transaction/initialize  Bearer <secret>; {email, amount (integer kobo), reference (unique), currency,
                                callback_url, metadata} -> {status, message, data: {authorization_url, access_code, reference}}
  GET  /transaction/verify/{ref} -> {status, message, data: {id, status, reference, amount, currency, paid_at, ...}};
                                an unknown reference: 400 {status: false, message: "Transaction reference not found"}
  GET  /refund?transaction=<transaction id>&perPage=&page= -> {status, message: "Refunds retrieved", data: [{id,
                                integration, domain, transaction (the transaction's id), dispute, settlement, amount (kobo),
                                deducted_amount, currency, channel, fully_deducted, status: "pending" | "processing" |
                                "processed" | "failed", refunded_by, refunded_at, expected_at, customer_note, merchant_note,
                                createdAt}, ...], meta: {total, skipped, perPage, page, pageCount}}, newest first
  GET  /dispute/{id}            -> {status, message: "Dispute retrieved", data: {id, refund_amount (kobo or null),
                                currency, status: "awaiting-merchant-feedback" | "awaiting-bank-feedback" | "pending" |
                                "resolved", resolution: null | "merchant-accepted" | "declined", domain, transaction: {id,
                                reference, amount, currency, status, paid_at, ...}, transaction_reference, category,
                                merchant_bears_loss, resolvedAt, createdAt, ...}}; an unknown id: 404 {status: false,
                                message: "Dispute not found"}

A new transaction is "abandoned" (Paystack's word for "not paid yet") until the test plays the customer:
`pay()` / `fail()`. `deliver()` posts a `charge.success` event to our server as Paystack would.
Money going back: `refund()` refunds (part of) a paid transaction as the merchant's dashboard does (a full refund
leaves verify reporting "reversed"; GET /refund lists it) and returns its `refund.processed` body (`recorded=False`:
a body for a refund Paystack never made); `dispute_body()` is a chargeback's
`charge.dispute.create` / `.resolve` body, and GET /dispute/{id} shows the dispute as that event leaves it
(`recorded=False`: a body for a resolution Paystack never made). Their shapes are Paystack's documented ones
(see gateway.py).
"""
from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import secrets
from datetime import datetime, timezone

import tornado.httpserver
import tornado.netutil
import tornado.web
from tornado.httpclient import AsyncHTTPClient, HTTPRequest

SECRET = "sk_test_" + "5" * 40

_ids = itertools.count(4_099_260_000)


def sign(body: bytes, secret: str = SECRET) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha512).hexdigest()


class _Base(tornado.web.RequestHandler):
    def initialize(self, gateway):
        self.gateway = gateway

    def prepare(self):
        self.gateway.calls.append((self.request.method, self.request.path))
        if self.request.headers.get("Authorization") != f"Bearer {self.gateway.secret}":
            self.answer(401, {"status": False, "message": "Invalid key"})

    def answer(self, code: int, body: dict):
        self.set_status(code)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(body))


class _Initialize(_Base):
    async def post(self):
        try:
            body = json.loads(self.request.body)
        except ValueError:
            return self.answer(400, {"status": False, "message": "Invalid JSON"})
        email, amount, reference = body.get("email"), body.get("amount"), body.get("reference")
        if not isinstance(email, str) or "@" not in email:
            return self.answer(400, {"status": False, "message": "Invalid Email Address Passed"})
        if not isinstance(amount, int) or isinstance(amount, bool) or amount <= 0:
            return self.answer(400, {"status": False, "message": "Invalid Amount Sent"})
        if body.get("currency", "NGN") != "NGN":
            return self.answer(400, {"status": False, "message": "Currency not supported by merchant"})
        if not isinstance(reference, str) or reference in self.gateway.transactions:
            return self.answer(400, {"status": False, "message": "Duplicate Transaction Reference"})
        access_code = secrets.token_hex(8)
        self.gateway.transactions[reference] = {
            "id": next(_ids), "status": "abandoned", "reference": reference, "amount": amount, "currency": body.get("currency", "NGN"),
            "paid_at": None, "gateway_response": "The transaction was not completed", "channel": "card",
            "customer": {"email": email}, "metadata": body.get("metadata"), "callback_url": body.get("callback_url"),
        }
        self.gateway.initialized.append(body)
        if self.gateway.before_initialize_answer is not None:  # the test plays a customer faster than our server
            hook, self.gateway.before_initialize_answer = self.gateway.before_initialize_answer, None
            await hook(reference)
        self.answer(200, {"status": True, "message": "Authorization URL created", "data": {
            "authorization_url": f"{self.gateway.base_url}/checkout/{access_code}", "access_code": access_code, "reference": reference}})


class _Verify(_Base):
    def get(self, reference):
        self.gateway.verified.append(reference)
        tx = self.gateway.transactions.get(reference)
        if tx is None:
            return self.answer(400, {"status": False, "message": "Transaction reference not found"})
        hook, self.gateway.around_verify_answer = self.gateway.around_verify_answer, None
        if hook is not None and hook("before") is False:
            return  # the caller died before the answer: nothing to send it to
        self.answer(200, {"status": True, "message": "Verification successful", "data": dict(tx)})
        if hook is not None:
            hook("after")


class _Refunds(_Base):
    def get(self):
        self.gateway.refund_lists.append(self.get_argument("transaction", None))
        if self.gateway.refunds_down:
            return self.answer(500, {"status": False, "message": "An error occurred"})
        items = [r for r in reversed(self.gateway.refunds)
                 if self.get_argument("transaction", None) in (None, str(r["transaction"]))]
        per_page, page = int(self.get_argument("perPage", "50")), int(self.get_argument("page", "1"))
        chunk = items[(page - 1) * per_page:page * per_page]
        self.answer(200, {"status": True, "message": "Refunds retrieved", "data": chunk, "meta": {
            "total": len(items), "skipped": (page - 1) * per_page, "perPage": per_page, "page": page,
            "pageCount": max(1, -(-len(items) // per_page))}})


class _Dispute(_Base):
    def get(self, dispute_id):
        self.gateway.dispute_fetches.append(dispute_id)
        if self.gateway.disputes_down:
            return self.answer(500, {"status": False, "message": "An error occurred"})
        dispute = self.gateway.disputes.get(dispute_id)
        if dispute is None:
            return self.answer(404, {"status": False, "message": "Dispute not found"})
        self.answer(200, {"status": True, "message": "Dispute retrieved", "data": dispute})


class FakePaystack:
    def __init__(self, secret: str = SECRET):
        self.secret = secret
        self.transactions: dict[str, dict] = {}
        self.initialized: list[dict] = []
        self.verified: list[str] = []
        self.calls: list[tuple[str, str]] = []
        self.before_initialize_answer = None
        #: Called with "before" (returning False: send no answer) and "after" the next verify answer
        #: (the kill -9 tests stop our server there).
        self.around_verify_answer = None
        self.webhook_url: str | None = None
        #: Refunds made (refund()), as GET /refund lists them; refunds_down: that route answers 500.
        self.refunds: list[dict] = []
        self.refund_lists: list[str | None] = []
        self.refunds_down = False
        #: Disputes by id (str), as GET /dispute/{id} shows them (dispute_body() records them); disputes_down: 500.
        self.disputes: dict[str, dict] = {}
        self.dispute_fetches: list[str] = []
        self.disputes_down = False
        self._http: tornado.httpserver.HTTPServer | None = None
        self.base_url = ""

    def start(self) -> str:
        app = tornado.web.Application([
            (r"/transaction/initialize", _Initialize, {"gateway": self}),
            (r"/transaction/verify/([^/]+)", _Verify, {"gateway": self}),
            (r"/refund", _Refunds, {"gateway": self}),
            (r"/dispute/([^/]+)", _Dispute, {"gateway": self}),
        ])
        sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
        self._http = tornado.httpserver.HTTPServer(app)
        self._http.add_sockets(sockets)
        self.base_url = f"http://127.0.0.1:{sockets[0].getsockname()[1]}"
        return self.base_url

    def stop(self) -> None:
        if self._http is not None:
            self._http.stop()

    # ---- the customer, at the checkout ---------------------------------------------
    def pay(self, reference: str, *, amount: int | None = None, currency: str | None = None) -> dict:
        tx = self.transactions[reference]
        tx.update(status="success", gateway_response="Successful", paid_at=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z"))
        if amount is not None:
            tx["amount"] = amount
        if currency is not None:
            tx["currency"] = currency
        return tx

    def fail(self, reference: str) -> dict:
        tx = self.transactions[reference]
        tx.update(status="failed", gateway_response="Declined")
        return tx

    # ---- money going back -------------------------------------------------------------
    def refund(self, reference: str, amount: int | None = None, *, status: str = "processed", recorded: bool = True) -> bytes:
        """Refund `amount` kobo (all of it by default) of a paid transaction; the `refund.<status>` webhook body.
        Paystack's refund events carry no transaction id: the payment is `transaction_reference`, the refund
        `refund_reference` (amounts sometimes as digit strings, as its own samples show). The refund is listed by
        GET /refund with that status unless `recorded` is False (then only the body exists: a refund never made)."""
        tx = self.transactions[reference]
        amount = tx["amount"] if amount is None else amount
        refund_reference = f"TRF_{secrets.token_hex(7)}"
        status_listed = status if recorded else None
        if status_listed == "processed":
            tx["refunded"] = tx.get("refunded", 0) + amount
            if tx["refunded"] >= tx["amount"]:
                tx["status"] = "reversed"
        if status_listed is not None:
            now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")
            self.refunds.append({
                "id": next(_ids), "integration": 412829, "domain": "test", "transaction": tx["id"], "dispute": None,
                "settlement": None, "amount": amount, "deducted_amount": amount, "currency": tx["currency"], "channel": "card",
                "fully_deducted": True, "status": status_listed, "refunded_by": "merchant@example.com",
                "refunded_at": now if status_listed == "processed" else None, "expected_at": now,
                "customer_note": f"Refund for transaction {reference}", "merchant_note": f"Refund for transaction {reference}",
                "createdAt": now})
        return json.dumps({"event": f"refund.{status}", "data": {
            "status": status, "transaction_reference": reference, "refund_reference": refund_reference,
            "amount": str(amount), "currency": tx["currency"], "processor": "mpgs_zen",
            "customer": {"first_name": None, "last_name": None, "email": tx["customer"]["email"]},
            "integration": 412829, "domain": "test"}}).encode()

    def dispute_body(self, reference: str, dispute_id: int, event: str = "charge.dispute.create", *,
                     resolution: str | None = None, refund_amount: int | None = None, recorded: bool = True) -> bytes:
        """A chargeback's event: data.id is the dispute's, the payment is data.transaction. GET /dispute/{id} then
        shows the dispute as this event leaves it (opened, or resolved with `resolution` and `refund_amount`) unless
        `recorded` is False (then only the body exists: Paystack never resolved it so)."""
        tx = self.transactions[reference]
        resolved = event == "charge.dispute.resolve"
        now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")
        data = {
            "id": dispute_id, "refund_amount": tx["amount"] if refund_amount is None else refund_amount,
            "currency": tx["currency"], "status": "resolved" if resolved else "awaiting-merchant-feedback",
            "resolution": resolution if resolved else None, "domain": "test", "category": "chargeback",
            "transaction": {k: tx[k] for k in ("id", "status", "reference", "amount", "currency", "paid_at")},
            "transaction_reference": None, "merchant_bears_loss": False, "resolvedAt": now if resolved else None,
            "createdAt": self.disputes.get(str(dispute_id), {}).get("createdAt", now)}
        if recorded:
            self.disputes[str(dispute_id)] = json.loads(json.dumps(data))
        return json.dumps({"event": event, "data": data}).encode()

    # ---- webhooks ------------------------------------------------------------------
    def event_body(self, reference: str, event: str = "charge.success", **data_over) -> bytes:
        data = dict(self.transactions[reference])
        data.update(data_over)
        return json.dumps({"event": event, "data": data}).encode()

    async def deliver(self, body: bytes, *, signature: str | None = None, headers: dict | None = None):
        """POST a webhook to our server as Paystack does: the raw body, signed unless told otherwise."""
        hdrs = {"Content-Type": "application/json", "x-paystack-signature": sign(body, self.secret) if signature is None else signature}
        if signature == "":
            del hdrs["x-paystack-signature"]
        hdrs.update(headers or {})
        req = HTTPRequest(self.webhook_url, method="POST", body=body, headers=hdrs, request_timeout=30)
        return await AsyncHTTPClient().fetch(req, raise_error=False)
