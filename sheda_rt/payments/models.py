"""Request and response models for payments."""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt

from sheda_rt.database.ids import MAX_ID
from sheda_rt.pagination import PageQuery
from sheda_rt.responses import MoneyText, ResponseModel, Timestamp

#: What a payment pays for. Only "contract" is taken today; "installment" (the builder portal's
#: schedules) and "wallet_topup" (the wallet) are reserved for the flows that will use them.
Purpose = Literal["contract", "installment", "wallet_topup"]
PaymentStatus = Literal["initialized", "pending", "succeeded", "failed", "abandoned"]


class PaymentCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    purpose: Literal["contract"] = Field(description='What is paid for; "contract" (installments and wallet top-ups will follow)')
    target_id: StrictInt = Field(ge=1, le=MAX_ID, description="The contract's id (yours as its client, awaiting payment)")


class PaymentQuery(PageQuery):
    model_config = ConfigDict(extra="forbid")
    status: Optional[PaymentStatus] = None
    flagged: Optional[bool] = Field(None, description="Admins: true lists every payment flagged for review (anyone's)")


class PaymentFlag(ResponseModel):
    reason: str
    detail: str
    at: Timestamp


class PaymentOut(ResponseModel):
    """One attempt to pay through the gateway. `amount` is naira as a decimal string; the
    gateway is sent the same amount in kobo."""

    reference: str
    purpose: Purpose
    target_id: int
    amount: MoneyText
    currency: str
    payer_id: int
    payee_id: int
    status: PaymentStatus
    gateway: str
    checkout_url: Optional[str] = Field(description="Send the payer here (the gateway's checkout); null until the gateway gave one")
    access_code: Optional[str]
    applied: bool = Field(description="true once the payment's effect (the contract's activation) was carried out or settled")
    flagged: bool = Field(description="true when something did not match (amount, currency, an inactive contract): an admin looks")
    flags: list[PaymentFlag]
    paid_at: Optional[str] = Field(description="When the gateway says the money was taken (its own format)")
    created_at: Timestamp
    updated_at: Timestamp
    succeeded_at: Optional[Timestamp]
    failed_at: Optional[Timestamp]
    abandoned_at: Optional[Timestamp]


class WebhookAck(ResponseModel):
    received: StrictBool
