"""Installments of builder bookings paid through the gateway (purpose "installment").

    POST /payments {purpose: "installment", target_id: <booking>, line: n}   (the booking's client)
        line n due or overdue; line 1 while the booking is reserved (hold not lapsed), later lines once active
    verified success --> the line confirmed exactly as the builder's confirm does
        (BookingService.confirm_gateway_payment: line 1 activates the booking, the last completes it)

A line marked sent (the client says a bank transfer is on its way) cannot be started
here: the builder answers that first (a decline puts it back to due), so the client is
not charged twice for one line. A checkout started before the client marked the line sent
still confirms it when the gateway verifies the money: the money is real; the payment is
flagged `installment_also_sent` (the transfer may arrive too: a possible double payment).
"""
from __future__ import annotations

from decimal import Decimal
from typing import TYPE_CHECKING

from sheda_rt.payments.targets import Charge, also_sent

if TYPE_CHECKING:  # types only: the context wires these in
    from sheda_rt.builders.bookings import BookingService


class InstallmentPaymentTarget:
    purpose = "installment"

    def __init__(self, *, bookings: BookingService):
        self.bookings = bookings

    async def charge(self, principal, body) -> Charge:
        booking, line = await self.bookings.gateway_line(principal, body.target_id, body.line)
        n = line["n"]
        return Charge(amount=Decimal(line["amount_minor"]).scaleb(-2).quantize(Decimal("0.01")), currency="NGN",
                      payee_id=booking["builder_id"], open_key=f"installment:{booking['_id']}:{n}",
                      metadata={"purpose": "installment", "target_id": booking["_id"], "line": n},
                      parties=[booking["client_id"], booking["builder_id"]], record={"line": n})

    async def apply(self, payment: dict) -> tuple[str, tuple[str, str] | None]:
        n = payment["line"]
        outcome, booking = await self.bookings.confirm_gateway_payment(payment["target_id"], n, payment["reference"])
        if outcome == "already_confirmed":
            line = booking["installments"][n - 1]
            if line.get("paid_by") != payment["reference"]:
                return outcome, ("installment_already_confirmed",
                                 f"installment {n} was already confirmed (by the builder, or paid by another payment): "
                                 "the client may have paid twice")
        elif outcome == "not_payable":
            status = (booking or {}).get("status", "missing")
            return outcome, ("installment_not_payable", f"paid, but the booking is {status}: a refund is due")
        elif outcome == "confirmed":
            # Confirmed from `sent`: the client had also said a bank transfer for this line is on its way (its
            # sent_at is after any decline). The money here is real, so the line is confirmed, but the builder
            # may be receiving that transfer too: the same double payment as a builder's confirm before us
            # (installment_already_confirmed), in the other order, so an admin looks as well.
            line = booking["installments"][n - 1]
            if also_sent(line, "sent_at"):
                return outcome, ("installment_also_sent",
                                 f"installment {n} was marked paid by bank transfer (reference {line.get('reference')!r}) "
                                 "before this payment confirmed it: the client may have paid twice")
        return outcome, None
