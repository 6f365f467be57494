"""Topping a wallet up through the payment gateway: the `wallet_topup` PaymentTarget
(sheda_rt/payments/targets.py describes the protocol).

    POST /payments {purpose: "wallet_topup", target_id: <my user id>, amount: "5000.00"}
      -> the gateway's checkout; once the gateway verified the money:
    gateway:clearing -5000.00, wallet:<payer> +5000.00   (ledger key "topup:<payment reference>")

The credit is keyed by the payment's reference, so a webhook, the reconciliation job and a
redelivery racing in several processes credit it once. Only the payer's own wallet can be
topped up (target_id is the payer), and the payee is the platform (none).

One live checkout per (user, amount): `open_key` is "topup:<user>:<kobo>", so a double tap on
"top up 5,000" hands back the checkout already started instead of a second one, while a
top-up of another amount may run beside it, up to WALLET_TOPUP_MAX_PENDING checkouts pending at once
per user (`live_cap`; beyond, 429 rate_limited with Retry-After: each checkout is a gateway
transaction the reconciliation must verify, and a real user never has more than a few open).

Money the gateway gives back after the credit (a `refund.processed`, a chargeback resolved `merchant-accepted`)
is taken back from the wallet (`reverse`): a `topup_reversal` ledger transaction, once per gateway event,
never below zero (what was already spent is the shortfall, flagged for an admin).

The payer is told through the notification service (stored, on the event stream, pushed: an app that is closed
learns it too): `wallet.credited` when a top-up is credited (what it repaid of a debt included), `wallet.reversed`
when the gateway takes one back (its shortfall, now owed, included). Once per ledger entry whoever finishes it (a
webhook, its redelivery, the reconciliation, an admin's credit, in any process): the notification's key is the
entry's (the payment's reference, the gateway event), and it is sent after the entry is written, before the payment
is recorded applied, so a process dying in between leaves it to whoever finishes the payment.
"""
from __future__ import annotations

from decimal import Decimal

from typing import TYPE_CHECKING

from sheda_rt.errors import Conflict, Forbidden, ValidationFailed
from sheda_rt.listings.money import to_minor
from sheda_rt.payments.targets import Charge
from sheda_rt.wallet.service import CURRENCY, TOPUP_VOID, WalletService, naira, transaction_view

if TYPE_CHECKING:  # types only: the context wires it in
    from sheda_rt.notifications.service import NotificationService


_REFUNDED_BEFORE_CREDIT = ("The gateway gave this top-up back before it was credited: nothing can be credited for it; "
                           "dismiss it")


class WalletTopupTarget:
    purpose = "wallet_topup"

    def __init__(self, *, wallet: WalletService, min_naira: int, max_naira: int, max_pending: int = 5,
                 notifications: NotificationService | None = None):
        self.wallet = wallet
        self.notifications = notifications  # the payer is told of every credit and reversal (wallet.credited, wallet.reversed)
        self.min = Decimal(min_naira)
        self.max = Decimal(max_naira)
        self.max_pending = max_pending  # WALLET_TOPUP_MAX_PENDING: live checkouts per user (PaymentService.create)

    async def charge(self, principal, body) -> Charge:
        if body.target_id != principal.user_id:
            raise Forbidden("You can top up only your own wallet: target_id is your user id", "not_your_wallet")
        amount: Decimal = body.amount
        if amount < self.min:
            raise ValidationFailed.single("amount", f"must be at least {self.min:.2f}")
        if amount > self.max:
            raise ValidationFailed.single("amount", f"must be at most {self.max:.2f}")
        return Charge(amount=amount, currency=CURRENCY, payee_id=None,
                      open_key=f"topup:{principal.user_id}:{int(to_minor(amount))}",
                      metadata={"purpose": self.purpose, "target_id": principal.user_id}, parties=[principal.user_id],
                      live_cap=self.max_pending)

    async def credit_verified(self, payment: dict, amount_minor: int, *, admin_id: int, reason: str) -> dict:
        """An admin settles a flagged top-up: the payer's wallet gets `amount_minor`, what the gateway verified, under
        the payment's own ledger key, so never on top of a credit already made for it (that one is returned)."""
        tx, _created = await self.wallet.credit_topup(
            payment["payer_id"], amount_minor, reference=payment["reference"],
            refs={"resolved_by": admin_id, "reason": reason}, memo=f"Wallet top-up, settled by an admin: {reason}")
        if tx["kind"] == TOPUP_VOID:  # checked before the claim (voided); a refund voiding it meanwhile ends here
            raise Conflict(_REFUNDED_BEFORE_CREDIT, "refunded_before_credit")
        await self.wallet.repay_owed(payment["payer_id"], payment["reference"])
        await self._tell_credited(payment["reference"])
        return tx

    async def voided(self, payment: dict) -> bool:
        """Was this top-up refunded before its credit (its ledger key holds a void)? Then no credit may be made for it."""
        entry = await self.wallet.ledger.by_key(f"topup:{payment['reference']}")
        return entry is not None and entry["kind"] == TOPUP_VOID

    async def void(self, payment: dict, amount_minor: int, *, source: str, why: str) -> bool:
        """The gateway gave `amount_minor` of this top-up back and no credit was found to take it from: the refund takes
        the top-up's ledger key (WalletService.void_topup), so the credit never comes. True when the key holds the void
        (now or before); False when a credit holds it (written meanwhile): the caller takes that credit back."""
        tx, _created = await self.wallet.void_topup(
            payment["reference"], refs={"gateway_event": source, "reason": why, "amount": naira(amount_minor)},
            memo=f"Wallet top-up given back by the gateway ({why}) before it was credited: never credited")
        return tx["kind"] == TOPUP_VOID

    async def credited(self, payment: dict) -> int | None:
        """What this top-up credited the wallet, in kobo (None: no credit made): the cap on its reversals."""
        return await self.wallet.topup_credited(payment["reference"])

    async def reversed_so_far(self, payment: dict) -> tuple[int, list[dict]]:
        """What the ledger already took back of this top-up (reversals made before reservations were recorded)."""
        return await self.wallet.topup_reversals(payment["reference"])

    async def reversal(self, source: str) -> dict | None:
        """The top-up reversal made for `source` (a gateway event, or an admin's `admin:<reference>`), as the wallet shows it."""
        tx = await self.wallet.ledger.by_key(f"topup_reversal:{source}")
        return None if tx is None else transaction_view(tx)

    async def reverse(self, payment: dict, amount_minor: int, *, source: str, why: str,
                      refs: dict | None = None) -> tuple[str, tuple[str, str] | None]:
        """The gateway gave `amount_minor` of this top-up back to the payer (`why`: "refund" or "chargeback"; "admin": an
        admin takes it back, POST /admin/payments/{reference}/resolve `reverse`, `refs` naming them): the
        wallet gives it back, once per gateway event (`source`), never below zero (WalletService.reverse_topup).
        The caller reserved `amount_minor` on the payment first (PaymentService._reserve_reversal: the cap across processes).
        (outcome, flag for an admin or None)."""
        tx, created, shortfall = await self.wallet.reverse_topup(
            payment["reference"], amount_minor, source=source,
            memo="Wallet top-up taken back by an admin" if why == "admin" else f"Wallet top-up reversed by the gateway ({why})",
            refs={"gateway_event": source, "reason": why, **(refs or {})})
        if tx is None:
            if await self.wallet.ledger.by_key(f"topup:{payment['reference']}") is None:
                return "not_credited", ("topup_reversed_uncredited",
                                        f"the gateway reports a {why} of {naira(amount_minor)} NGN for a top-up this server has "
                                        "not credited: it will not be")
            return "already_reversed", None
        await self._tell_reversed(payment["reference"], source, why)
        if shortfall:
            return "reversed_short", ("topup_reversal_shortfall",
                                      f"the gateway took back {naira(amount_minor)} NGN ({why}); the wallet held only "
                                      f"{naira(amount_minor - shortfall)}: user {payment['payer_id']} owes {naira(shortfall)} NGN "
                                      f"(ledger transaction {tx['id']})")
        return ("reversed" if created else "already_reversed"), None

    async def apply(self, payment: dict) -> tuple[str, tuple[str, str] | None]:
        if payment["currency"] != CURRENCY:  # never initialized so; a wallet holds naira only
            return "wrong_currency", ("topup_wrong_currency", f"a {payment['currency']} top-up cannot credit a naira wallet")
        tx, credited = await self.wallet.credit_topup(payment["payer_id"], int(payment["amount_minor"]),
                                                      reference=payment["reference"])
        if tx["kind"] == TOPUP_VOID:  # a refund took the key first (its process may have died before recording it)
            why = tx["refs"].get("reason", "refund")
            return "reversed_before_credit", ("topup_reversed_uncredited",
                                              f"the gateway reports a {why} of {tx['refs'].get('amount', '?')} NGN for a "
                                              "top-up this server has not credited: it will not be")
        # What the user owes (reversals the wallet could not pay) is repaid first; before the payment is recorded
        # applied, so a process dying in between leaves it to whoever finishes the apply (once: its key).
        await self.wallet.repay_owed(payment["payer_id"], payment["reference"])
        await self._tell_credited(payment["reference"])
        return ("credited" if credited else "already_credited"), None

    # ---- telling the payer ----------------------------------------------------------
    async def _tell_credited(self, reference: str) -> None:
        """`wallet.credited` to the payer, once per top-up (key `wallet.credited:<reference>`, its credit's)."""
        notice = await self.wallet.topup_notice(reference) if self.notifications is not None else None
        if notice is None:
            return
        body = f"{notice['amount']} NGN was added to your wallet."
        if notice["repaid"] != "0.00":
            body += f" {notice['repaid']} NGN of it repaid what you owed after a top-up was taken back"
            body += f" ({notice['owed']} NGN still owed)." if notice["owed"] != "0.00" else "."
        body += f" Balance: {notice['balance']} NGN."
        data = {"reference": reference, **{k: notice[k] for k in ("amount", "balance", "repaid", "owed")}}
        await self.notifications.notify(notice["user_id"], "wallet.credited", "Wallet topped up", body, data,
                                        key=f"wallet.credited:{reference}")

    async def _tell_reversed(self, reference: str, source: str, why: str) -> None:
        """`wallet.reversed` to the payer, once per reversal (key `wallet.reversed:<gateway event>`, its ledger entry's)."""
        notice = await self.wallet.reversal_notice(source) if self.notifications is not None else None
        if notice is None:
            return
        how = {"refund": "refunded", "chargeback": "charged back", "admin": "taken back by an admin"}.get(why, "reversed")
        body = f"A top-up of yours was {how}: {notice['amount']} NGN went back through the payment gateway"
        if notice["shortfall"] != "0.00":
            body += (f". Your wallet held only {notice['taken']} NGN of it: you owe {notice['shortfall']} NGN, repaid first "
                     "from your next top-up")
        body += f". Balance: {notice['balance']} NGN."
        data = {"reference": reference, "reason": why,
                **{k: notice[k] for k in ("amount", "balance", "taken", "shortfall", "owed")}}
        await self.notifications.notify(notice["user_id"], "wallet.reversed", "Top-up taken back", body, data,
                                        key=f"wallet.reversed:{source}")
