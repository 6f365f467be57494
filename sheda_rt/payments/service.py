"""Paying through a gateway, and what a payment does once the gateway confirms it.

    POST /payments (the target's payer)     -> initialized (stored first) -> pending (the gateway gave a checkout)
    pending | initialized --verified success--> succeeded -> its target's effect (a contract active, an installment
                                                             confirmed, a wallet credited)
    pending | initialized --verified failure--> failed
    pending | initialized --30 minutes, the gateway says abandoned / never heard of it--> abandoned

The gateway is the truth about money, and only what its verify endpoint says moves a
payment: a webhook is a signed hint to go and ask. A verified success therefore wins
over an earlier failed or abandoned (the customer retried on the same checkout);
succeeded is final. A payment is never applied when the amount, currency or reference
the gateway reports differ from what we initialized: it is flagged for an admin.

What is paid for is a PaymentTarget per purpose (sheda_rt/payments/targets.py): it says
who may pay what to whom (`charge`) and carries out a verified payment's effect
(`apply`); everything else here is the same for every purpose.

Exactly once, across processes: each status change is a conditional write naming the
expected states, and each target's effect is one too (the contract's activation takes
the property with a conditional write first, ContractService._activate; an installment
line moves to confirmed under a filter naming its unpaid states), so a webhook, the
reconciliation job and a manual confirmation racing on one target apply it once.
`applied` records that the effect was carried out; a success whose effect could not
be (a crash, or the agent's confirmation of the same contract half-way) stays
`applied: false` and the reconciliation job finishes it.
"""
from __future__ import annotations

import logging
import math
import re
import secrets
from datetime import timedelta
from decimal import Decimal

from bson.decimal128 import Decimal128

from sheda_rt.clock import format_ts
from sheda_rt.errors import Conflict, NotFound, RateLimited, ServiceUnavailable, Unauthorized, ValidationFailed
from sheda_rt.listings.money import format_money, to_minor
from sheda_rt.listings.service import is_admin
from sheda_rt.payments.gateway import ABANDONED, FAILED, NOT_FOUND, SUCCESS, GatewayError
from sheda_rt.payments.store import LIVE_STATES
from sheda_rt.payments.targets import PaymentTarget

log = logging.getLogger("sheda.payments")

#: What a payment reference may look like (ours are shd_ and 24 hex digits; Paystack allows these characters).
REFERENCE = re.compile(r"[A-Za-z0-9_.=-]{1,100}")
#: A payment still initialized or pending after this long is verified by the reconciliation job.
STALE_AFTER = timedelta(minutes=30)
#: An attempt still `initialized` this long after it began never got the gateway's answer (its process died
#: in between; the gateway call times out long before): a new POST for the same target replaces it.
INITIALIZE_LOST_AFTER = timedelta(minutes=2)
#: A success whose effect still answers "in progress" this long after the gateway confirmed it is not waiting
#: for a confirmation half-way (those take a moment): something is stuck (a process killed between a contract
#: activation's two writes leaves the property held and the contract open), so an admin is told.
STUCK_AFTER = timedelta(minutes=30)
#: States a verified success may move a payment from (a retry on the same checkout after a failure).
SUCCEEDABLE = LIVE_STATES + ["failed", "abandoned"]


class PaymentsNotConfigured(ServiceUnavailable):
    code = "payments_not_configured"


class GatewayUnavailable(ServiceUnavailable):
    code = "gateway_unavailable"


class ReversalUnconfirmed(ServiceUnavailable):
    """A signed refund.processed that Paystack's refund list does not (yet) show processed (`refund_unconfirmed`), or a
    lost chargeback its dispute does not show (`dispute_unconfirmed`): nothing moves, and the 503 makes Paystack
    deliver it again."""
    code = "refund_unconfirmed"


class _CapExceeded(Exception):
    """An admin's reversal asked for more than the top-up has left to take back (what it credited less every reversal
    reserved so far): `left` kobo."""

    def __init__(self, left: int):
        super().__init__(left)
        self.left = left


def _over_cap(amount_minor: int, left: int) -> Conflict:
    return Conflict(f"At most {format_money(Decimal(max(left, 0)).scaleb(-2))} NGN of this top-up is left to take back "
                    f"(what it credited less what was taken back); {format_money(Decimal(amount_minor).scaleb(-2))} was asked",
                    "reversal_exceeds_credit", extra={"reversible": format_money(Decimal(max(left, 0)).scaleb(-2))})


class _DisputeAmountUnknown(Exception):
    """Paystack shows the dispute lost on this payment (resolved merchant-accepted) but no `refund_amount` (its schema
    allows null, and its docs do not say what null means): no amount can be confirmed, and a redelivery would show the
    same, so an admin decides (_confirm_reversal)."""


def payment_view(doc: dict) -> dict:
    return {
        "reference": doc["reference"],
        "purpose": doc["purpose"],
        "target_id": doc["target_id"],
        "line": doc.get("line"),
        "amount": format_money(doc["amount"]),
        "currency": doc["currency"],
        "payer_id": doc["payer_id"],
        "payee_id": doc["payee_id"],
        "status": doc["status"],
        "gateway": doc["gateway"],
        "checkout_url": doc.get("checkout_url"),
        "access_code": doc.get("access_code"),
        "applied": bool(doc.get("applied")),
        "flagged": bool(doc.get("flagged")),
        "flags": [{"reason": f["reason"], "detail": f["detail"], "at": format_ts(f["at"])} for f in doc.get("flags", [])],
        "paid_at": doc.get("paid_at"),
        "created_at": format_ts(doc["created_at"]),
        "updated_at": format_ts(doc["updated_at"]),
        "succeeded_at": format_ts(doc.get("succeeded_at")),
        "failed_at": format_ts(doc.get("failed_at")),
        "abandoned_at": format_ts(doc.get("abandoned_at")),
        "resolution": resolution_view(doc.get("resolution")),
    }


def resolution_view(res: dict | None) -> dict | None:
    if res is None:
        return None
    return {"action": res["action"], "reason": res["reason"], "by": res["by"], "at": format_ts(res["at"]),
            "amount": res.get("amount"), "transaction_id": res.get("transaction_id"), "shortfall": res.get("shortfall")}


class PaymentService:
    def __init__(self, store, gateway, *, targets: dict[str, PaymentTarget], users, clock, callback_url: str | None,
                 reconcile_every: timedelta = timedelta(minutes=5)):
        self.store = store
        self.reconcile_every = reconcile_every  # PAYMENT_RECONCILE_INTERVAL_MINUTES: when a stale attempt is closed at the latest
        self.gateway = gateway  # None: no gateway configured, the manual flow only
        self.targets = targets  # purpose -> what a payment of it pays for (sheda_rt/payments/targets.py)
        self.users = users
        self.clock = clock
        self.callback_url = callback_url
        #: Called with a reference whose charge.success the gateway's verify did not confirm yet (wired in the
        #: context to PaymentReverification.schedule, sheda_rt/payments/reconcile.py): it asks again soon.
        self.on_undecided = None

    # ---- starting a payment --------------------------------------------------
    async def create(self, principal, body) -> tuple[dict, bool]:
        """(the payment, created now?). A target with a live attempt gets that attempt back."""
        if self.gateway is None:
            raise PaymentsNotConfigured("No payment gateway is configured; pay by bank transfer "
                                        "(PATCH /contracts/{id}/payment-sent, POST /bookings/{id}/installments/{n}/payment-sent)")
        target = self.targets.get(body.purpose)
        if target is None:
            raise ValidationFailed.single("purpose", f"{body.purpose} payments are not taken by this server")
        charge = await target.charge(principal, body)
        open_key = charge.open_key
        live = await self.store.live_for(open_key)
        if live is not None and live["status"] == "initialized" and live["created_at"] <= self.clock.now() - INITIALIZE_LOST_AFTER:
            # Its process died between storing it and the gateway's answer: nobody ever saw a checkout
            # for it, so nobody can have paid it. Close it and start afresh.
            await self.store.transition(live["_id"], ["initialized"], "abandoned", self.clock.now(),
                                        {"abandoned_at": self.clock.now(), "failure": "initialize_lost"}, close=True)
            live = await self.store.live_for(open_key)
        if live is not None:
            return payment_view(live), False
        if charge.live_cap is not None:  # refused before anything is stored or sent to the gateway
            await self._within_cap(principal.user_id, body.purpose, charge.live_cap)
        payer = await self.users.get(principal.user_id)
        now = self.clock.now()
        doc = await self.store.insert({
            **charge.record,
            "reference": f"shd_{secrets.token_hex(12)}", "purpose": body.purpose, "target_id": body.target_id,
            "amount": Decimal128(charge.amount), "amount_minor": int(to_minor(charge.amount)), "currency": charge.currency,
            "payer_id": principal.user_id, "payee_id": charge.payee_id, "parties": list(charge.parties),
            "status": "initialized", "gateway": self.gateway.name, "open_key": open_key,
            "applied": False, "flagged": False, "flags": [], "created_at": now, "updated_at": now,
        })
        if doc is None:  # a simultaneous POST for the same target stored its attempt first
            live = await self.store.live_for(open_key)
            if live is None:
                raise Conflict(f"Another payment for this {body.purpose} just finished; look at it again", "payment_in_progress")
            return payment_view(live), False
        if charge.live_cap is not None and len(await self.store.live_of_payer(
                principal.user_id, body.purpose, charge.live_cap + 1)) > charge.live_cap:
            # Counted again with ours stored (a burst of POSTs may all have passed the check above): more than the
            # cap, ours is withdrawn before the gateway hears of it. Whichever of them counts last sees all the
            # others stored, so never more than the cap go on (a racing pair may both step back: ask again).
            await self.store.discard_unstarted(doc["_id"])
            raise RateLimited(f"Another top-up checkout took your last free place (at most {charge.live_cap} pending); "
                              "ask again", 1)
        try:
            checkout = await self.gateway.initialize(
                reference=doc["reference"], amount_minor=doc["amount_minor"], currency=doc["currency"], email=payer["email"],
                callback_url=self.callback_url, metadata=dict(charge.metadata))
        except GatewayError as exc:
            log.warning("gateway initialize failed for %s: %s", doc["reference"], exc)
            await self.store.transition(doc["_id"], ["initialized"], "failed", self.clock.now(),
                                        {"failed_at": self.clock.now(), "failure": "gateway_unavailable"}, close=True)
            raise GatewayUnavailable("The payment gateway could not start the payment; try again shortly",
                                     headers={"Retry-After": "30"}, extra={"retry_after": 30})
        fields = {"checkout_url": checkout.authorization_url, "access_code": checkout.access_code}
        moved = await self.store.transition(doc["_id"], ["initialized"], "pending", self.clock.now(), fields)
        if moved is None:
            # The gateway's webhook (the customer was fast) settled it before its answer reached us:
            # keep the checkout details, not the status.
            await self.store.set_fields(doc["_id"], fields)
        return payment_view(await self.store.get(doc["reference"])), True

    async def _within_cap(self, payer_id: int, purpose: str, cap: int) -> None:
        """429 rate_limited when the payer already holds `cap` live attempts of `purpose` (a wallet top-up's
        WALLET_TOPUP_MAX_PENDING). Retry-After: when the oldest is closed at the latest (verified by the
        reconciliation once STALE_AFTER old, abandoned if never paid); paying one frees its place at once."""
        live = await self.store.live_of_payer(payer_id, purpose, cap)
        if len(live) < cap:
            return
        frees_at = live[0]["created_at"] + STALE_AFTER + self.reconcile_every
        wait = math.ceil((frees_at - self.clock.now()).total_seconds())
        raise RateLimited(f"You already have {cap} {purpose} checkouts pending (at most {cap}): finish one of them "
                          f"(GET /payments?status=pending) or wait until unpaid ones expire", max(1, wait))

    # ---- reading -------------------------------------------------------------
    async def get(self, principal, reference: str) -> dict:
        # Paystack's reference alphabet, bounded: anything else is no payment of ours, unasked.
        doc = await self.store.get(reference) if REFERENCE.fullmatch(reference) else None
        if doc is None or (principal.user_id not in doc.get("parties", ()) and not is_admin(principal)):
            raise NotFound("No such payment", "payment_not_found")
        return payment_view(doc)

    async def list_mine(self, principal, query) -> dict:
        if query.flagged and is_admin(principal):
            flt: dict = {"flagged": True}
        else:
            flt = {"parties": principal.user_id}
            if query.flagged is not None:
                flt["flagged"] = query.flagged
        if query.status:
            flt["status"] = query.status
        return await self.store.page(flt, query, payment_view)

    # ---- an admin settles a flagged payment ------------------------------------
    async def resolve(self, principal, reference: str, body) -> tuple[dict, bool]:
        """(the payment, settled now?). `credit` (a purpose whose target can: wallet top-ups) credits what the
        gateway's verify says was paid, asked now, never a figure from a request or a webhook; `dismiss` records
        that nothing is owed (a live attempt is closed failed; a succeeded one unapplied stays so, applied).
        Once: the first action is claimed on the payment before anything moves, the same action again (a retry,
        a second admin) finishes it or answers it, another is 409 already_resolved; the credit's ledger key is
        the payment's own, so it never adds to a credit already made."""
        payment = await self.store.get(reference) if REFERENCE.fullmatch(reference) else None
        if payment is None:
            raise NotFound("No such payment", "payment_not_found")
        asked = int(to_minor(body.amount)) if body.amount is not None else None  # reverse: kobo to take back
        claimed = payment.get("resolution")
        if claimed is not None and (claimed["action"] != body.action or claimed.get("requested_minor") != asked):
            raise Conflict(f"An admin already settled this payment ({self._settled_as(claimed)})", "already_resolved")
        if claimed is not None and claimed.get("done"):
            return payment_view(payment), False
        if claimed is None and not payment.get("flagged"):
            raise Conflict("This payment is not flagged: nothing for an admin to settle", "not_flagged")
        amount_minor = None
        if body.action == "credit":
            amount_minor = await self._released_if_voided(payment, self._verified_for_credit(payment))
        elif body.action == "reverse":
            await self._check_reversible(payment, asked)
        now = self.clock.now()
        claim = {"action": body.action, "reason": body.reason, "by": principal.user_id, "at": now}
        if asked is not None:
            claim["requested_minor"] = asked
        payment, won = await self.store.claim_resolution(payment["_id"], claim)
        claimed = payment["resolution"]
        if claimed["action"] != body.action or claimed.get("requested_minor") != asked:  # another admin's other action won
            raise Conflict(f"An admin already settled this payment ({self._settled_as(claimed)})", "already_resolved")
        if claimed.get("done"):
            return payment_view(payment), False
        if body.action == "reverse":
            fields = await self._admin_reversal(payment, asked, claimed)
        elif body.action == "credit":
            tx = await self._released_if_voided(payment, self.targets[payment["purpose"]].credit_verified(
                payment, amount_minor, admin_id=claimed["by"], reason=claimed["reason"]))
            credited = next(line["amount"] for line in tx["lines"] if line["account"] != "gateway:clearing")
            fields = {"resolution.amount": credited, "resolution.transaction_id": tx["id"], "status": "succeeded",
                      "applied": True, "outcome": "credited_by_admin", "succeeded_at": payment.get("succeeded_at") or now}
        else:
            await self.store.transition(payment["_id"], LIVE_STATES, "failed", now, {"failed_at": now, "failure": "dismissed"},
                                        close=True)
            fields = {} if payment.get("applied") or payment["status"] != "succeeded" else {"applied": True, "outcome": "dismissed"}
        await self.store.finish_resolution(payment["_id"], body.action, fields, now)
        log.info('{"event": "payment_resolved", "reference": "%s", "action": "%s", "by": %d}', reference, body.action,
                 claimed["by"])
        # The claim's winner answers 201; the same action racing it (or finishing one a crash cut short) 200.
        return payment_view(await self.store.get(reference)), won

    @staticmethod
    def _settled_as(claimed: dict) -> str:
        if claimed["action"] == "reverse" and claimed.get("requested_minor") is not None:
            return f"reverse of {format_money(Decimal(int(claimed['requested_minor'])).scaleb(-2))}"
        return claimed["action"]

    async def _check_reversible(self, payment: dict, amount_minor: int) -> None:
        """409 unless this is a wallet top-up credited to its payer with at least `amount_minor` left to take back
        (checked again by the reservation itself, which alone is exact across processes)."""
        target = self.targets.get(payment["purpose"])
        if payment["purpose"] != "wallet_topup" or not hasattr(target, "reverse"):
            raise Conflict(f"A {payment['purpose']} payment credited no wallet: nothing to take back; dismiss it",
                           "not_reversible")
        credited = await target.credited(payment)
        if credited is None:
            raise Conflict("This top-up was never credited to the wallet: nothing to take back; dismiss it", "not_credited")
        current = await self.store.get(payment["reference"]) or payment
        taken = current.get("reversed_minor")
        if taken is None:
            taken, _entries = await target.reversed_so_far(payment)
        if amount_minor > credited - int(taken):
            raise _over_cap(amount_minor, credited - int(taken))

    async def _admin_reversal(self, payment: dict, amount_minor: int, claimed: dict) -> dict:
        """Take `amount_minor` of a credited top-up back from its payer's wallet for an admin's claimed `reverse`: the
        path a refund or a lost chargeback takes (reserved on the payment under the cap first, then a topup_reversal
        entry never taking the wallet below zero, the rest owed, wallet.reversed told once), under one source per
        payment (`admin:<reference>`), so a retry or a racing double click finds that same reservation and entry.
        All of the amount or nothing: what is left is less (a gateway reversal reserved meanwhile), 409 and the claim
        is given up. The resolution's fields."""
        target = self.targets[payment["purpose"]]
        source = f"admin:{payment['reference']}"
        try:
            reserved = await self._reserve_reversal(payment, target, amount_minor, source, "admin", whole=True)
        except _CapExceeded as exc:
            await self.store.release_resolution(payment["_id"], "reverse")
            raise _over_cap(amount_minor, exc.left)
        if reserved is None:
            await self.store.release_resolution(payment["_id"], "reverse")
            raise Conflict("This top-up was never credited to the wallet: nothing to take back; dismiss it", "not_credited")
        await target.reverse(payment, reserved, source=source, why="admin",  # its shortfall is the resolution's, not a flag
                             refs={"resolved_by": claimed["by"], "note": claimed["reason"]})
        tx = await target.reversal(source)
        if tx is None:  # never expected: the ledger's own cap (reversals made before reservations) refused it
            await self.store.release_resolution(payment["_id"], "reverse")
            raise _over_cap(amount_minor, 0)
        return {"resolution.amount": format_money(Decimal(reserved).scaleb(-2)), "resolution.transaction_id": tx["id"],
                "resolution.shortfall": tx["refs"].get("shortfall", "0.00")}

    async def _released_if_voided(self, payment: dict, step):
        """Await a step of an admin's credit; when it finds the top-up refunded before any credit (409
        refunded_before_credit: its ledger key holds a void, for good), a credit claimed on the payment and not
        carried out (this request's, after a refund landed between its check and its credit; or one a crash cut
        short) is given up, so a dismiss can settle the payment: the claim would otherwise hold it, every credit
        409 refunded_before_credit and every dismiss 409 already_resolved, flagged for ever."""
        try:
            return await step
        except Conflict as exc:
            if exc.code == "refunded_before_credit":
                await self.store.release_resolution(payment["_id"], "credit")
            raise

    async def _verified_for_credit(self, payment: dict) -> int:
        """What the gateway says was paid for this payment, in kobo, when it can be credited (409 otherwise)."""
        target = self.targets.get(payment["purpose"])
        if not hasattr(target, "credit_verified"):
            raise Conflict(f"A {payment['purpose']} payment cannot be credited; dismiss it", "not_creditable")
        if hasattr(target, "voided") and await target.voided(payment):
            raise Conflict("The gateway gave this top-up back before it was credited: nothing can be credited for it; "
                           "dismiss it", "refunded_before_credit")
        if self.gateway is None:
            raise PaymentsNotConfigured("No payment gateway is configured: nothing can be verified")
        try:
            v = await self.gateway.verify(payment["reference"])
        except GatewayError as exc:
            log.warning("verify failed for %s: %s", payment["reference"], exc)
            raise GatewayUnavailable("Could not verify the payment with the gateway; try again shortly",
                                     headers={"Retry-After": "30"}, extra={"retry_after": 30})
        if v.status != SUCCESS or v.reference != payment["reference"]:
            raise Conflict(f"The gateway does not report this payment paid ({v.gateway_status or v.status}): nothing to "
                           "credit; dismiss it", "not_paid", extra={"gateway_status": v.gateway_status or v.status})
        if v.currency != payment["currency"] or not v.amount_minor or v.amount_minor <= 0:
            raise Conflict(f"The gateway verified {v.amount_minor} {v.currency} (kobo): not creditable to a "
                           f"{payment['currency']} wallet; dismiss it", "not_creditable")
        return v.amount_minor

    # ---- the gateway's webhook ---------------------------------------------
    async def webhook(self, raw_body: bytes, headers) -> dict:
        """A delivery from the gateway. The signature is checked over the raw bytes before
        anything else; a bad or missing one (or no gateway at all) is a 401 and nothing is stored."""
        if self.gateway is None or not self.gateway.verify_webhook_signature(raw_body, headers):
            raise Unauthorized("Missing or invalid webhook signature", "bad_signature")
        event = self.gateway.parse_webhook(raw_body)
        if event is None:
            log.warning("signed webhook without an event we can identify (%d bytes)", len(raw_body))
            return {"received": True}
        now = self.clock.now()
        prior = await self.store.record_event({"_id": event.event_id, "gateway": self.gateway.name, "kind": event.kind,
                                               "reference": event.reference, "received_at": now, "processed": False,
                                               "body": raw_body.decode("utf-8", "replace")[:65536]})
        if prior is not None and prior.get("processed"):
            return {"received": True}  # a redelivery: handled the first time
        outcome = await self._handle_event(event)
        if outcome == "undecided":
            # Paystack sent charge.success before its verify says so (still abandoned / ongoing / pending for a
            # moment). Not processed: a redelivery of this event is handled afresh, and the reference is verified
            # again within minutes rather than by the 30-minute reconciliation (a line 1's hold may be lapsing).
            # Still 200: the signature says Paystack sent it, and an error would only make it retry sooner.
            if self.on_undecided is not None:
                await self.on_undecided(event.reference)
            return {"received": True}
        await self.store.event_done(event.event_id, outcome, self.clock.now())
        return {"received": True}

    async def _handle_event(self, event) -> str:
        if event.kind == "refund.processed" or event.kind.startswith("charge.dispute."):
            return await self._money_back(event)
        if event.kind != "charge.success":
            return "ignored"
        payment = await self.store.get(event.reference) if event.reference else None
        if payment is None:
            return "unknown_reference"
        if payment.get("resolution") is not None:
            return "resolved"  # an admin settled it: nothing more moves it
        if event.amount_minor != payment["amount_minor"] or event.currency != payment["currency"]:
            await self._flag(payment, "webhook_mismatch",
                             f"the webhook reports {event.amount_minor} {event.currency} (kobo); we initialized "
                             f"{payment['amount_minor']} {payment['currency']}")
            return "flagged"
        try:
            return await self.settle(payment)
        except GatewayError as exc:
            # Not processed: the event stays unprocessed, the gateway retries the delivery (a 503), and a
            # redelivery is handled afresh; the reconciliation job covers a gateway that stops retrying.
            log.warning("verify failed for %s: %s", payment["reference"], exc)
            raise GatewayUnavailable("Could not verify the payment with the gateway; deliver again later",
                                     headers={"Retry-After": "60"}, extra={"retry_after": 60})

    async def _money_back(self, event) -> str:
        """The gateway gave (or may give) a succeeded payment's money back to the payer: `refund.processed`, or a
        chargeback (`charge.dispute.*`). A signed event is the gateway's word, not its money: a refund is checked against
        the gateway's refund list, a lost chargeback against its dispute, before a top-up's money moves (_confirm_reversal).
        A dispute opened flags the payment (`gateway_dispute`: an admin answers it on
        Paystack's dashboard; nothing moves yet); one resolved `merchant-accepted` (the payer got the money back)
        and a processed refund are reversals: a top-up's target takes the money back from the wallet (`reverse`),
        any other purpose's payment is flagged `refunded_by_gateway` (the contract or installment it paid still
        counts as paid: an admin decides). A dispute resolved otherwise (`declined`: the platform kept the money)
        changes nothing."""
        payment = await self.store.get(event.reference) if event.reference else None
        if payment is None:
            return "unknown_reference"
        why = "refund" if event.kind.startswith("refund.") else "chargeback"
        if event.kind in ("charge.dispute.create", "charge.dispute.remind"):
            await self._flag(payment, "gateway_dispute", f"the payer disputed this payment with their bank (Paystack dispute "
                                                         f"{event.event_id.rsplit(':', 1)[-1]}): answer it on Paystack")
            return "dispute_flagged"
        if event.kind != "refund.processed":
            if event.kind != "charge.dispute.resolve" or event.data.get("resolution") != "merchant-accepted":
                return "ignored"  # declined (the platform kept the money), or a dispute event with nothing to do
        amount_minor = event.amount_minor if event.amount_minor else payment["amount_minor"]
        if (event.currency or payment["currency"]) != payment["currency"] or not 0 < amount_minor <= payment["amount_minor"]:
            await self._flag(payment, "reversal_mismatch", f"the gateway reports a {why} of {event.amount_minor} "
                                                           f"{event.currency} (kobo); the payment was {payment['amount_minor']} "
                                                           f"{payment['currency']}: nothing was taken back")
            return "flagged"
        target = self.targets.get(payment["purpose"])
        if payment["purpose"] != "wallet_topup" or not hasattr(target, "reverse"):
            await self._flag(payment, "refunded_by_gateway",
                             f"the gateway gave {format_money(Decimal(amount_minor).scaleb(-2))} {payment['currency']} back to the payer "
                             f"({why}); the {payment['purpose']} still counts it paid")
            return "flagged"
        if not await self._confirm_reversal(payment, amount_minor, event, why):
            return "flagged"
        outcome, flag = await self._reverse_topup(payment, target, amount_minor, event.event_id, why)
        if outcome == "not_credited":
            # Refunded before its credit was made (a success whose effect a crash left to the reconciliation, or an
            # apply in flight): the credit must never come now. The refund takes the top-up's own ledger key first
            # (a void entry, target.void), so whichever of the two writes that key first decides, in any process and
            # whatever dies when: a credit found there is taken back below; a void means no apply ever credits (its
            # credit_topup finds the void, and an apply the reconciliation finishes records it so, flagged). Then the
            # payment is recorded with it as its effect, flagged (a redelivery records it if this process dies first).
            if await target.void(payment, amount_minor, source=event.event_id, why=why):
                now = self.clock.now()
                if await self.store.mark_applied(payment["_id"], "reversed_before_credit",
                                                 {"reason": flag[0], "detail": flag[1], "at": now}, now,
                                                 {"reversed_before_credit": {"source": event.event_id,
                                                                             "amount_minor": amount_minor, "why": why}}):
                    log.warning('{"event": "payment_flagged", "reference": "%s", "reason": "%s"}', payment["reference"], flag[0])
                return "topup_reversed_before_credit"
            outcome, flag = await self._reverse_topup(payment, target, amount_minor, event.event_id, why)
        if flag is not None:
            await self._flag(payment, *flag)
        log.info('{"event": "payment_reversed", "reference": "%s", "outcome": "%s"}', payment["reference"], outcome)
        return f"topup_{outcome}"

    async def _confirm_reversal(self, payment: dict, amount_minor: int, event, why: str) -> bool:
        """A signed refund.processed or lost chargeback is the gateway's word, not yet its money: before a top-up's money
        is taken back, the gateway's API must show it (a refund: _refund_unconfirmed; a chargeback: _dispute_unconfirmed).
        True when it does. Otherwise the payment is flagged `refund_unconfirmed` / `dispute_unconfirmed` (once) and this
        is a 503 of that code: nothing moves, and the gateway delivers the event again (what it shows a moment late is
        taken back then). The gateway unreachable: 503 gateway_unavailable, likewise. A dispute the gateway shows lost on
        this payment without an amount (`refund_amount: null`) is flagged `dispute_amount_unknown` (once) and False:
        nothing moves, the event is handled (200), and an admin decides; a redelivery would show the same for ever."""
        check, name = ((self._refund_unconfirmed, "refund") if why == "refund" else (self._dispute_unconfirmed, "dispute"))
        try:
            unconfirmed = await check(payment, amount_minor, event)
        except GatewayError as exc:
            log.warning("%s check failed for %s: %s", name, payment["reference"], exc)
            raise GatewayUnavailable(f"Could not confirm the {why} with the gateway; deliver again later",
                                     headers={"Retry-After": "60"}, extra={"retry_after": 60})
        except _DisputeAmountUnknown as exc:
            await self._flag(payment, "dispute_amount_unknown",
                             f"the gateway shows {exc} lost (merchant-accepted) on this payment without a refund_amount: "
                             "nothing was taken back; see the dispute on Paystack and settle the wallet")
            return False
        if unconfirmed is None:
            return True
        await self._flag(payment, f"{name}_unconfirmed",
                         f"the gateway sent a {why} of {format_money(Decimal(amount_minor).scaleb(-2))} {payment['currency']} "
                         f"{unconfirmed}: nothing was taken back")
        raise ReversalUnconfirmed(f"The gateway does not show this {why} {'processed' if why == 'refund' else 'lost'}; "
                                  "deliver it again later", f"{name}_unconfirmed",
                                  headers={"Retry-After": "300"}, extra={"retry_after": 300})

    async def _refund_unconfirmed(self, payment: dict, amount_minor: int, event) -> str | None:
        """None when the refunds the gateway shows processed for this payment's transaction (gateway.refunded) cover this
        refund's amount and every other refund reserved on the payment so far; else what it shows instead. A refund
        event names no refund id to fetch, so the transaction's refunds are summed."""
        shown = await self.gateway.refunded(payment["reference"])
        current = await self.store.get(payment["reference"]) or payment
        before = sum(int(r["amount_minor"]) for r in current.get("reversals") or ()
                     if r.get("why") == "refund" and r["source"] != event.event_id)
        refunded = shown[0] if shown is not None and shown[1] in (None, payment["currency"]) else 0
        if refunded >= before + amount_minor:
            return None
        return (f"that its refund list does not show processed ({format_money(Decimal(refunded).scaleb(-2))} refunded in "
                f"all, {format_money(Decimal(before).scaleb(-2))} taken back before)")

    async def _dispute_unconfirmed(self, payment: dict, amount_minor: int, event) -> str | None:
        """None when the gateway shows the event's dispute (gateway.dispute: the same id) on this payment's transaction
        (its reference, and its id when verify gave us one), resolved `merchant-accepted`, for this amount in this
        currency; else what it shows instead."""
        dispute_id = str(event.data.get("id"))
        d = await self.gateway.dispute(dispute_id)
        if d is None or d.id != dispute_id:
            return f"(dispute {dispute_id}) that it does not know"
        known_id = payment.get("transaction_id")
        if d.transaction_reference != payment["reference"] or (
                known_id is not None and str(d.transaction_id) != str(known_id)):
            return f"(dispute {dispute_id}) that it shows on another transaction ({d.transaction_reference})"
        if d.status != "resolved" or d.resolution != "merchant-accepted":
            return f"(dispute {dispute_id}) that it shows {d.status or 'without a status'}, {d.resolution or 'unresolved'}"
        if d.refund_amount_minor is None:
            raise _DisputeAmountUnknown(f"dispute {dispute_id}")
        if d.refund_amount_minor != amount_minor or (d.currency or payment["currency"]) != payment["currency"]:
            shown = "no amount" if d.refund_amount_minor is None else format_money(Decimal(d.refund_amount_minor).scaleb(-2))
            return f"(dispute {dispute_id}) that it shows lost for {shown} {d.currency or ''}".rstrip()
        return None

    async def _reverse_topup(self, payment: dict, target, amount_minor: int, source: str, why: str) -> tuple[str, tuple | None]:
        """Reserve, then take back: (outcome, flag or None). "not_credited" when no credit was made to take back,
        "already_reversed" when the reversals reserved before took all of it."""
        reserved = await self._reserve_reversal(payment, target, amount_minor, source, why)
        if reserved is None:
            return "not_credited", ("topup_reversed_uncredited",
                                    f"the gateway reports a {why} of {format_money(Decimal(amount_minor).scaleb(-2))} NGN for a "
                                    "top-up this server has not credited: it will not be")
        if reserved == 0:
            return "already_reversed", None
        return await target.reverse(payment, reserved, source=source, why=why)

    async def _reserve_reversal(self, payment: dict, target, amount_minor: int, source: str, why: str, *,
                                whole: bool = False) -> int | None:
        """What the gateway event `source` may take back of this top-up, reserved on the payment before any ledger
        entry: kobo (0: earlier reversals took all of it), or None when no credit was made.

        The cap on all reversals of one top-up together (a refund and a lost chargeback of the same money are two
        events, delivered at once to different processes) is the payment document's `reversed_minor`, moved only by
        one conditional write: `{reversed_minor <= credited - amount, no reservation of this event} + $inc` (at most
        what is left; when another reservation won in between, it is read again and retried). The reservation is
        keyed by the event, so a redelivery finds it and takes that same amount, never a second one; a process dying
        between the reservation and the ledger entry leaves it `reversal_open`, completed by the redelivery
        (the ledger entry's key is the event's, so it is written once) or by the reconciliation job. A payment
        reversed before reservations were recorded starts from what its ledger entries took back. `whole` (an admin's
        reversal): all of `amount_minor` or nothing, _CapExceeded when less is left."""
        credited = await target.credited(payment)
        if credited is None:
            return None
        for _attempt in range(1000):  # each failed write is another event's reservation won: bounded by the events
            current = await self.store.get(payment["reference"])
            mine = next((r for r in current.get("reversals") or () if r["source"] == source), None)
            if mine is not None:
                return int(mine["amount_minor"])
            if current.get("reversed_minor") is None:
                total, entries = await target.reversed_so_far(payment)
                await self.store.start_reversals(payment["_id"], total, entries)
                continue
            take = min(amount_minor, credited - int(current["reversed_minor"]))
            if whole and take < amount_minor:
                raise _CapExceeded(credited - int(current["reversed_minor"]))
            if take <= 0:
                return 0
            entry = {"source": source, "amount_minor": take, "why": why, "at": self.clock.now()}
            if await self.store.reserve_reversal(payment["_id"], entry, credited - take):
                return take
        raise RuntimeError(f"reversal of {payment['reference']} by {source}: the payment kept changing")

    async def _complete_reversals(self, payment: dict) -> str:
        """The reconciliation's part: post the ledger entry of every reversal reserved on this payment (each is
        written once, by its event's key: one already there is found), flag a shortfall, then mark the payment done
        unless a reservation was added meanwhile."""
        target = self.targets.get(payment["purpose"])
        if target is None or not hasattr(target, "reverse"):
            return "no_target"
        reservations = list(payment.get("reversals") or ())
        made = 0
        for r in reservations:
            if int(r["amount_minor"]) <= 0:
                continue
            outcome, flag = await target.reverse(payment, int(r["amount_minor"]), source=r["source"], why=r.get("why", "refund"))
            if flag is not None:
                await self._flag(payment, *flag)
            made += outcome in ("reversed", "reversed_short")
        await self.store.close_reversals(payment["_id"], len(reservations))
        return "reversal_completed" if made else "reversal_checked"

    # ---- what the gateway says, applied ----------------------------------------
    async def settle(self, payment: dict, *, stale: bool = False) -> str:
        """Ask the gateway about this payment and apply its answer. `stale`: the attempt is past
        STALE_AFTER (reconciliation), so "abandoned" or "never heard of it" close it."""
        v = await self.gateway.verify(payment["reference"])
        now = self.clock.now()
        await self.store.set_fields(payment["_id"], {"last_verified_at": now, "gateway_status": v.gateway_status})
        if v.status == SUCCESS:
            if v.amount_minor != payment["amount_minor"] or v.currency != payment["currency"] or v.reference != payment["reference"]:
                await self._flag(payment, "verify_mismatch",
                                 f"the gateway verified {v.amount_minor} {v.currency} (kobo) for {v.reference!r}; we "
                                 f"initialized {payment['amount_minor']} {payment['currency']} for {payment['reference']!r}")
                return "flagged"
            await self.store.transition(payment["_id"], SUCCEEDABLE, "succeeded", now, {
                "succeeded_at": now, "paid_at": v.paid_at, "transaction_id": v.transaction_id, "channel": v.channel,
                "gateway_response": v.gateway_response}, close=True)
            current = await self.store.get(payment["reference"])
            if current["status"] == "succeeded" and not current.get("applied"):
                return await self.apply(current)
            return "already_succeeded"
        if v.status == FAILED:
            moved = await self.store.transition(payment["_id"], LIVE_STATES, "failed", now,
                                                {"failed_at": now, "gateway_response": v.gateway_response}, close=True)
            return "failed" if moved else "unchanged"
        if stale and (v.status == ABANDONED or v.status == NOT_FOUND):
            moved = await self.store.transition(payment["_id"], LIVE_STATES, "abandoned", now,
                                                {"abandoned_at": now, "gateway_response": v.gateway_response}, close=True)
            return "abandoned" if moved else "unchanged"
        return "undecided"

    async def apply(self, payment: dict) -> str:
        """Carry out a succeeded payment's effect through its purpose's target. Idempotent: the
        target moves its record at most once, and only the writer that records `applied` raises a flag, in
        that same write."""
        target = self.targets.get(payment["purpose"])
        if target is None:  # a purpose this server no longer wires: left for an admin, unapplied
            log.warning("no payment target for %s (%s)", payment["reference"], payment["purpose"])
            return "no_target"
        outcome, flag = await target.apply(payment)
        if outcome == "in_progress":  # the reconciliation job looks again, after the ones tried less recently
            await self.store.set_fields(payment["_id"], {"apply_tried_at": self.clock.now()})
            succeeded_at = payment.get("succeeded_at")
            if succeeded_at is not None and succeeded_at <= self.clock.now() - STUCK_AFTER:
                await self._flag(payment, "effect_stuck", f"paid, but its {payment['purpose']} has not moved for "
                                                          f"{int(STUCK_AFTER.total_seconds() // 60)} minutes: an admin looks")
            return "in_progress"
        now = self.clock.now()
        raised = None if flag is None else {"reason": flag[0], "detail": flag[1], "at": now}
        if not await self.store.mark_applied(payment["_id"], outcome, raised, now):
            if outcome == "credited":  # our credit is new, yet the payment was recorded applied meanwhile
                await self._undo_credit_after_reversal(payment, target)
            return "already_applied"
        if flag is not None:
            log.warning('{"event": "payment_flagged", "reference": "%s", "reason": "%s"}', payment["reference"], flag[0])
        return f"{payment['purpose']}_{outcome}"

    async def _undo_credit_after_reversal(self, payment: dict, target) -> None:
        """A top-up's credit written after a refund recorded the payment reversed before its credit (the apply read
        the payment before that write): the payer has the money back, so the credit is taken back under the
        refund's own event (its reservation makes it once, whoever of the two gets there)."""
        current = await self.store.get(payment["reference"])
        undo = current.get("reversed_before_credit") if current.get("outcome") == "reversed_before_credit" else None
        if undo is None or not hasattr(target, "reverse"):
            return
        outcome, flag = await self._reverse_topup(current, target, int(undo["amount_minor"]), undo["source"], undo.get("why", "refund"))
        if flag is not None:
            await self._flag(current, *flag)
        log.warning('{"event": "payment_reversed", "reference": "%s", "outcome": "%s"}', payment["reference"], outcome)

    async def booking_cancelled(self, booking: dict) -> int:
        """A booking was cancelled: every installment of it already paid through the gateway (and applied: an
        unapplied one is flagged installment_not_payable when applied) is money the platform took for a unit
        the client no longer gets, so each is flagged `booking_cancelled` for an admin (a refund is due), once.
        How many were flagged now."""
        flagged = 0
        for payment in await self.store.of_target("installment", booking["_id"], "succeeded"):
            if not payment.get("applied"):
                continue
            detail = (f"installment {payment.get('line')} was paid ({payment_view(payment)['amount']} NGN), then the booking "
                      f"was cancelled ({booking.get('cancel_reason') or 'no reason given'}): a refund is due")
            if await self._flag(payment, "booking_cancelled", detail):
                flagged += 1
        return flagged

    async def _flag(self, payment: dict, reason: str, detail: str) -> bool:
        if await self.store.flag(payment["_id"], {"reason": reason, "detail": detail, "at": self.clock.now()}, self.clock.now()):
            log.warning('{"event": "payment_flagged", "reference": "%s", "reason": "%s"}', payment["reference"], reason)
            return True
        return False

    # ---- reconciliation ------------------------------------------------------
    async def reverify(self, reference: str) -> str:
        """Verify one payment again now (a charge.success arrived before the gateway's verify agreed) and apply
        the answer, as a webhook would; "undecided" when the gateway still has not decided. A payment settled
        meanwhile, or flagged for an admin, is left alone. GatewayError propagates (the caller retries)."""
        payment = await self.store.get(reference)
        if payment is None or payment["status"] not in SUCCEEDABLE or payment.get("flagged") or payment.get("resolution"):
            return "settled"
        return await self.settle(payment)

    async def reconcile(self, batch: int = 200) -> dict:
        """What the periodic job does: verify every attempt initialized or pending for more than
        STALE_AFTER (its webhook may be lost) and apply the answer, then finish any success whose
        effect is not recorded. Safe in several processes at once (conditional writes)."""
        counts: dict[str, int] = {}
        if self.gateway is None:
            return counts
        for payment in await self.store.stale(self.clock.now() - STALE_AFTER, batch):
            try:
                outcome = await self.settle(payment, stale=True)
            except GatewayError as exc:  # the gateway is down: the next run asks again
                log.warning("reconcile: verify failed for %s: %s", payment["reference"], exc)
                outcome = "gateway_unavailable"
            counts[outcome] = counts.get(outcome, 0) + 1
        for payment in await self.store.unapplied(batch):
            outcome = await self.apply(payment)
            counts[outcome] = counts.get(outcome, 0) + 1
        for payment in await self.store.open_reversals(batch):  # a reversal reserved, its ledger entry maybe missing
            outcome = await self._complete_reversals(payment)
            counts[outcome] = counts.get(outcome, 0) + 1
        return counts
