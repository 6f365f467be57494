"""Payment gateways behind one small interface.

The payment flows (sheda_rt/payments/service.py) speak only `PaymentGateway`:
`initialize` (a checkout for an amount in minor units), `verify` (what the
gateway says about a reference now) and `verify_webhook_signature` / `parse_webhook`
(is this delivery really from the gateway, and what does it report). Another gateway
(Flutterwave, say) is one more class here and one more webhook route; the flows do
not change.

Paystack, as documented:
  POST {base}/transaction/initialize  {email, amount (kobo, integer), reference, callback_url, currency, metadata}
       Authorization: Bearer <secret key>
       -> {status: true, message, data: {authorization_url, access_code, reference}}
  GET  {base}/transaction/verify/{reference}
       -> {status: true, data: {status: "success"|"failed"|"abandoned"|"ongoing"|..., amount, currency, reference, id,
          paid_at, ...}}; an unknown reference: 400 {status: false, message: "Transaction reference not found"}
  Webhooks: POST {event: "charge.success", data: {id, reference, amount, currency, status, ...}} with
       x-paystack-signature = hex HMAC-SHA512 of the raw body keyed with the secret key. Paystack sends no
       event id of its own; an event is identified by its name and the transaction id (`charge.success:302961`).
  GET  {base}/refund?transaction=<transaction id>&perPage=&page=
       -> {status: true, message: "Refunds retrieved", data: [{id, transaction (the transaction's id), amount (kobo),
          currency, status: "pending"|"processing"|"processed"|"failed"|..., ...}], meta: {total, perPage, page, pageCount}}
       A refund event names no refund id (GET /refund/:id needs one), so a refund is confirmed by this list: what
       Paystack shows processed for the transaction (its id from verify), items of other transactions ignored.
  GET  {base}/dispute/{id}
       -> {status: true, message: "Dispute retrieved", data: {id, refund_amount (kobo, or null), currency, status:
          "awaiting-merchant-feedback"|"awaiting-bank-feedback"|"pending"|"resolved"|..., resolution: null |
          "merchant-accepted" | "declined", transaction: {id, reference, amount, currency, ...}, ...}}; an unknown id:
          404 {status: false, message}. A lost chargeback is confirmed by it: a dispute event names its dispute's id.
  Money going back (signed the same way):
       refund.processed  {data: {status: "processed", transaction_reference, refund_reference, amount (kobo, an
                         integer or a digit string), currency, ...}}: identified by the refund's `id` when the body
                         carries one, else its `refund_reference` (`refund.processed:132013318360`); refund.pending,
                         .processing, .failed and .needs-attention are the same shape (nothing has moved yet).
       charge.dispute.create / .remind / .resolve  {data: {id (the dispute), refund_amount, currency, status,
                         resolution: null | "merchant-accepted" | "declined", transaction: {id, reference, amount, ...}}}:
                         identified by the event name and the dispute id; the payment is `transaction.reference`.
"""
from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import quote

import httpx

from sheda_rt import client_input
from sheda_rt.errors import ApiError

#: Verification statuses the flows act on; everything else the gateway says (ongoing, pending,
#: processing, queued) means "not decided yet".
SUCCESS, FAILED, ABANDONED, NOT_FOUND, UNDECIDED = "success", "failed", "abandoned", "not_found", "undecided"


class GatewayError(Exception):
    """The gateway could not be asked, or refused the request (network, 5xx, a 4xx we did not expect)."""


@dataclass
class Checkout:
    authorization_url: str
    access_code: str | None
    reference: str


@dataclass
class Verification:
    status: str  # one of SUCCESS, FAILED, ABANDONED, NOT_FOUND, UNDECIDED
    reference: str
    amount_minor: int | None = None
    currency: str | None = None
    transaction_id: Any = None
    paid_at: str | None = None
    gateway_status: str | None = None
    gateway_response: str | None = None
    channel: str | None = None


@dataclass
class WebhookEvent:
    event_id: str  # unique per event: a redelivery carries the same one
    kind: str  # "charge.success", ...
    reference: str | None
    amount_minor: int | None
    currency: str | None
    data: dict = field(default_factory=dict)


@dataclass
class Dispute:
    """A chargeback as the gateway shows it now."""
    id: str
    status: str | None
    resolution: str | None  # None (open), "merchant-accepted" (the payer got the money back), "declined"
    refund_amount_minor: int | None
    currency: str | None
    transaction_id: Any
    transaction_reference: str | None


class PaymentGateway(Protocol):
    name: str

    async def initialize(self, *, reference: str, amount_minor: int, currency: str, email: str,
                         callback_url: str | None, metadata: dict) -> Checkout: ...

    async def verify(self, reference: str) -> Verification: ...

    def verify_webhook_signature(self, raw_body: bytes, headers) -> bool: ...

    async def refunded(self, reference: str) -> tuple[int, str | None] | None: ...

    async def dispute(self, dispute_id: str) -> Dispute | None: ...

    def parse_webhook(self, raw_body: bytes) -> WebhookEvent | None: ...


def _int_or_none(value: Any) -> int | None:
    """Paystack documents amounts as integers in kobo; a digit string is read the same way."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 18:
        return int(value)
    return None


def _text_or_none(value: Any, limit: int = 200) -> str | None:
    return value[:limit] if isinstance(value, str) else None


class PaystackGateway:
    name = "paystack"

    _VERIFIED = {"success": SUCCESS, "failed": FAILED, "reversed": FAILED, "abandoned": ABANDONED}

    def __init__(self, secret_key: str, base_url: str, timeout: float = 15.0):
        self._secret = secret_key.encode()
        self._base = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {secret_key}", "Content-Type": "application/json"}
        self._timeout = timeout
        self._client: httpx.AsyncClient | None = None

    def _http(self) -> httpx.AsyncClient:
        # Made on first use, inside the running loop (an AsyncClient belongs to the loop it first ran on).
        if self._client is None:
            self._client = httpx.AsyncClient(base_url=self._base, headers=self._headers, timeout=self._timeout)
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _call(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        try:
            resp = await self._http().request(method, path, json=body)
        except httpx.HTTPError as exc:
            raise GatewayError(f"paystack unreachable: {type(exc).__name__}") from None
        try:
            payload = resp.json()
        except ValueError:
            raise GatewayError(f"paystack answered {resp.status_code} without JSON") from None
        if not isinstance(payload, dict):
            raise GatewayError(f"paystack answered {resp.status_code} with a non-object")
        return resp.status_code, payload

    async def initialize(self, *, reference: str, amount_minor: int, currency: str, email: str,
                         callback_url: str | None, metadata: dict) -> Checkout:
        body = {"email": email, "amount": amount_minor, "reference": reference, "currency": currency, "metadata": metadata}
        if callback_url:
            body["callback_url"] = callback_url
        status, payload = await self._call("POST", "/transaction/initialize", body)
        data = payload.get("data")
        if status != 200 or payload.get("status") is not True or not isinstance(data, dict) \
                or not isinstance(data.get("authorization_url"), str):
            raise GatewayError(f"paystack refused initialize ({status}): {_text_or_none(payload.get('message'))}")
        return Checkout(authorization_url=data["authorization_url"], access_code=_text_or_none(data.get("access_code")),
                        reference=_text_or_none(data.get("reference")) or reference)

    async def verify(self, reference: str) -> Verification:
        status, payload = await self._call("GET", f"/transaction/verify/{quote(reference, safe='')}")
        if status in (400, 404) and payload.get("status") is False:
            return Verification(status=NOT_FOUND, reference=reference, gateway_response=_text_or_none(payload.get("message")))
        data = payload.get("data")
        if status != 200 or payload.get("status") is not True or not isinstance(data, dict):
            raise GatewayError(f"paystack refused verify ({status}): {_text_or_none(payload.get('message'))}")
        gateway_status = _text_or_none(data.get("status"), 40)
        return Verification(
            status=self._VERIFIED.get(gateway_status or "", UNDECIDED), reference=_text_or_none(data.get("reference")) or "",
            amount_minor=_int_or_none(data.get("amount")), currency=_text_or_none(data.get("currency"), 8),
            transaction_id=data.get("id") if isinstance(data.get("id"), (int, str)) else None,
            paid_at=_text_or_none(data.get("paid_at") or data.get("paidAt"), 40), gateway_status=gateway_status,
            gateway_response=_text_or_none(data.get("gateway_response")), channel=_text_or_none(data.get("channel"), 40))

    #: Refund list pages read at most (newest first; a refund event comes right after its refund is processed).
    REFUND_PAGES = 5

    async def refunded(self, reference: str) -> tuple[int, str | None] | None:
        """What Paystack shows refunded (status `processed`) of the transaction paid under `reference`: (kobo in all,
        the transaction's currency), or None when Paystack does not know the reference. Two calls: verify (the
        transaction's id) then the refunds listed for that id (only items naming that id are counted, whether or not
        the filter is honoured). GatewayError when Paystack cannot be asked."""
        v = await self.verify(reference)
        if v.status == NOT_FOUND or v.transaction_id is None:
            return None
        total = 0
        for page in range(1, self.REFUND_PAGES + 1):
            status, payload = await self._call(
                "GET", f"/refund?transaction={quote(str(v.transaction_id), safe='')}&perPage=100&page={page}")
            data = payload.get("data")
            if status != 200 or payload.get("status") is not True or not isinstance(data, list):
                raise GatewayError(f"paystack refused the refund list ({status}): {_text_or_none(payload.get('message'))}")
            for item in data:
                if not isinstance(item, dict) or item.get("status") != "processed":
                    continue
                transaction = item.get("transaction")
                if isinstance(transaction, dict):
                    transaction = transaction.get("id")
                if str(transaction) != str(v.transaction_id) or (item.get("currency") or v.currency) != v.currency:
                    continue
                total += _int_or_none(item.get("amount")) or 0
            meta = payload.get("meta") if isinstance(payload.get("meta"), dict) else {}
            if not isinstance(meta.get("pageCount"), int) or page >= meta["pageCount"]:
                break
        return total, v.currency

    async def dispute(self, dispute_id: str) -> Dispute | None:
        """The dispute `dispute_id` as Paystack shows it now (GET /dispute/:id), or None when Paystack does not know
        it. GatewayError when Paystack cannot be asked."""
        status, payload = await self._call("GET", f"/dispute/{quote(str(dispute_id), safe='')}")
        if status in (400, 404) and payload.get("status") is False:
            return None
        data = payload.get("data")
        if status != 200 or payload.get("status") is not True or not isinstance(data, dict):
            raise GatewayError(f"paystack refused the dispute ({status}): {_text_or_none(payload.get('message'))}")
        transaction = data.get("transaction") if isinstance(data.get("transaction"), dict) else {}
        return Dispute(
            id=str(data.get("id")) if _is_ident(data.get("id")) else "", status=_text_or_none(data.get("status"), 40),
            resolution=_text_or_none(data.get("resolution"), 40), refund_amount_minor=_int_or_none(data.get("refund_amount")),
            currency=_text_or_none(data.get("currency"), 8) or _text_or_none(transaction.get("currency"), 8),
            transaction_id=transaction.get("id") if _is_ident(transaction.get("id")) else None,
            transaction_reference=_text_or_none(transaction.get("reference"), 100) or _text_or_none(data.get("transaction_reference"), 100))

    def verify_webhook_signature(self, raw_body: bytes, headers) -> bool:
        """Over the raw bytes as received, before anything is parsed; constant-time comparison."""
        given = headers.get("x-paystack-signature") or ""
        if not given or len(given) > 256 or not given.isascii():
            return False
        expected = hmac.new(self._secret, raw_body, hashlib.sha512).hexdigest()
        return hmac.compare_digest(expected, given.strip().lower())

    def parse_webhook(self, raw_body: bytes) -> WebhookEvent | None:
        """The event of a signed body; None when it is not one we can identify (it is still
        acknowledged: the signature says Paystack sent it, and a retry would say the same)."""
        try:
            # The one client-input decoder: bounded depth, no lone surrogates (which could not be stored).
            body = client_input.parse_json(raw_body, "webhook")
        except ApiError:
            return None
        if not isinstance(body, dict) or not isinstance(body.get("event"), str) or not isinstance(body.get("data"), dict):
            return None
        data = body["data"]
        kind = body["event"][:64]
        reference, amount = data.get("reference"), data.get("amount")
        ident = data.get("id")
        if kind.startswith("refund."):  # the refund's own id (or reference); the payment is transaction_reference
            reference = data.get("transaction_reference")
            if not _is_ident(ident):
                ident = data.get("refund_reference")
        elif kind.startswith("charge.dispute."):  # data.id is the dispute's; the payment is data.transaction
            transaction = data.get("transaction") if isinstance(data.get("transaction"), dict) else {}
            reference, amount = transaction.get("reference"), data.get("refund_amount")
        if not _is_ident(ident):
            return None
        return WebhookEvent(event_id=f"{kind}:{ident}", kind=kind, reference=_text_or_none(reference, 100),
                            amount_minor=_int_or_none(amount), currency=_text_or_none(data.get("currency"), 8),
                            data=data)


def _is_ident(value: Any) -> bool:
    return isinstance(value, (int, str)) and not isinstance(value, bool) and 0 < len(str(value)) <= 64


def gateway_from_settings(settings) -> PaymentGateway | None:
    """The configured gateway, or None: then the manual bank-transfer flow is the only one."""
    if settings.paystack_secret_key is None:
        return None
    return PaystackGateway(settings.paystack_secret_key.get_secret_value(), settings.paystack_base_url)
