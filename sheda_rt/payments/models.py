"""Request and response models for payments."""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StringConstraints, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError
from typing_extensions import Annotated

from sheda_rt.database.ids import MAX_ID
from sheda_rt.listings.money import Money
from sheda_rt.pagination import PageQuery
from sheda_rt.responses import MoneyText, ResponseModel, Timestamp

#: What a payment pays for: a contract (its client pays the agent), one installment line of a builder
#: booking (its client pays the builder), a wallet top-up (anyone credits their own wallet).
Purpose = Literal["contract", "installment", "wallet_topup"]
PaymentStatus = Literal["initialized", "pending", "succeeded", "failed", "abandoned"]


class PaymentCreate(BaseModel):
    """What to pay. Each purpose takes its own fields, and a field another purpose takes is refused
    (422), so a client's mistake never pays something else."""

    model_config = ConfigDict(extra="forbid")

    purpose: Purpose = Field(description='"contract", "installment" (a builder booking\'s line) or "wallet_topup"')
    target_id: StrictInt = Field(ge=1, le=MAX_ID, description="contract: the contract's id (yours as its client, awaiting "
                                 "payment); installment: the booking's id (yours as its client); wallet_topup: your own user id")
    line: Optional[StrictInt] = Field(None, ge=1, le=1000, description="installment only (required): the line's number n, "
                                      "as GET /bookings/{id} lists it")
    amount: Optional[Money] = Field(None, description="wallet_topup only (required): naira to add, a decimal string")

    @model_validator(mode="after")
    def _fields_of_the_purpose(self):
        wants = {"contract": (), "installment": ("line",), "wallet_topup": ("amount",)}[self.purpose]
        errors = []
        for name in ("line", "amount"):
            given = getattr(self, name) is not None
            if name in wants and not given:
                errors.append((name, f"is required when purpose is {self.purpose}"))
            elif given and name not in wants:
                errors.append((name, f"is not taken when purpose is {self.purpose}"))
        if errors:  # one error per field, under its own name (422 errors: [{field, message}])
            raise ValidationError.from_exception_data(type(self).__name__, [
                InitErrorDetails(type=PydanticCustomError("purpose_fields", message), loc=(name,), input=getattr(self, name))
                for name, message in errors])
        return self


class PaymentQuery(PageQuery):
    model_config = ConfigDict(extra="forbid")
    status: Optional[PaymentStatus] = None
    flagged: Optional[bool] = Field(None, description="Admins: true lists every payment flagged for review (anyone's)")


class PaymentFlag(ResponseModel):
    reason: str
    detail: str
    at: Timestamp


class PaymentResolve(BaseModel):
    """An admin settles a flagged payment. `credit` (wallet top-ups): the payer's wallet gets what the gateway's
    verify says was paid, whatever was asked or any webhook said; `dismiss`: nothing is credited or applied;
    `reverse` (a credited wallet top-up): `amount` is taken back from the payer's wallet, as a refund or a lost
    chargeback takes it (a chargeback Paystack showed lost without an amount, a refund or dispute checked by hand)."""

    model_config = ConfigDict(extra="forbid")

    action: Literal["credit", "dismiss", "reverse"]
    reason: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=500)]
    amount: Optional[Money] = Field(None, description="reverse only (required): naira to take back from the payer's "
                                    "wallet, a decimal string; at most what the top-up credited less what was taken back")

    @model_validator(mode="after")
    def _amount_for_reverse_only(self):
        given = self.amount is not None
        if given == (self.action == "reverse"):
            return self
        message = "is required when action is reverse" if not given else f"is not taken when action is {self.action}"
        raise ValidationError.from_exception_data(type(self).__name__, [
            InitErrorDetails(type=PydanticCustomError("action_fields", message), loc=("amount",), input=self.amount)])


class PaymentResolution(ResponseModel):
    action: Literal["credit", "dismiss", "reverse"]
    reason: str
    by: int = Field(description="The admin's user id")
    at: Timestamp
    amount: Optional[MoneyText] = Field(description="credit: naira credited to the wallet, as the gateway verified it; "
                                        "reverse: naira taken back (the wallet's part and the shortfall); null for dismiss")
    transaction_id: Optional[int] = Field(description="credit: the ledger transaction that credited it; reverse: the "
                                          "topup_reversal that took it back; null for dismiss")
    shortfall: Optional[MoneyText] = Field(description="reverse: what the wallet no longer held of `amount`, now "
                                           "owed by the payer (repaid by their next top-ups); null otherwise")


class PaymentOut(ResponseModel):
    """One attempt to pay through the gateway. `amount` is naira as a decimal string; the
    gateway is sent the same amount in kobo."""

    reference: str
    purpose: Purpose
    target_id: int
    line: Optional[int] = Field(description="installment: the booking line's number n; null for other purposes")
    amount: MoneyText
    currency: str
    payer_id: int
    payee_id: Optional[int] = Field(description="Who is paid: the agent or the builder; null for a wallet top-up (the platform)")
    status: PaymentStatus
    gateway: str
    checkout_url: Optional[str] = Field(description="Send the payer here (the gateway's checkout); null until the gateway gave one")
    access_code: Optional[str]
    applied: bool = Field(description="true once the payment's effect (the contract active, the installment confirmed, the wallet credited) "
                         "was carried out or settled")
    flagged: bool = Field(description="true, until an admin settles it (`resolution`), when something did not match (amount, currency, an inactive contract or booking, a line already confirmed, an effect still not carried out 30 minutes after the success): an admin looks")
    flags: list[PaymentFlag]
    paid_at: Optional[str] = Field(description="When the gateway says the money was taken (its own format)")
    created_at: Timestamp
    updated_at: Timestamp
    succeeded_at: Optional[Timestamp]
    failed_at: Optional[Timestamp]
    abandoned_at: Optional[Timestamp]
    resolution: Optional[PaymentResolution] = Field(description="How an admin settled it once flagged "
                                                    "(POST /admin/payments/{reference}/resolve); null until then")


class WebhookAck(ResponseModel):
    received: StrictBool
