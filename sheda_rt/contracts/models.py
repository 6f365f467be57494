"""Request models for contracts."""
from __future__ import annotations

from typing import Literal, Optional

from sheda_rt.database.ids import MAX_ID
from pydantic import BaseModel, ConfigDict, Field, StrictInt

from sheda_rt.pagination import PageQuery
from sheda_rt.responses import MoneyText, ResponseModel, Timestamp

ContractStatus = Literal["awaiting_payment", "payment_pending", "active", "cancelled", "expired"]


class ContractCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    appointment_id: StrictInt = Field(ge=1, le=MAX_ID, description="Your CONFIRMED viewing of this property")
    term_months: Optional[StrictInt] = Field(None, ge=1, le=120, description=(
        "Rentals only, and required for them: the lease length in months (1-120). Sending it for a sale is a 422."))


class ContractQuery(PageQuery):
    model_config = ConfigDict(extra="forbid")
    status: Optional[ContractStatus] = None
    role: Optional[Literal["client", "agent"]] = Field(None, description="Only those where I am the client / the agent")


# ---- responses (the serializer validates every body through these; they are its schema) ----------
class AccountDetails(ResponseModel):
    """The agent's bank details to pay into (copied onto the contract when it starts)."""

    account_name: str
    bank_name: str
    account_number: str
    bank_code: Optional[str] = None


class ContractOut(ResponseModel):
    """A rent or sale contract. `amount` is a decimal string (naira); dates are UTC."""

    id: int
    property_id: int
    property_title: Optional[str]
    client_id: int
    agent_id: int
    appointment_id: Optional[int]
    contract_type: Literal["rent", "sale"]
    amount: MoneyText
    currency: str
    term_months: Optional[int] = Field(description="rentals: the lease length; null for sales")
    status: ContractStatus
    is_active: bool
    start_date: Optional[Timestamp]
    end_date: Optional[Timestamp]
    account_details: Optional[AccountDetails]
    created_at: Timestamp
    updated_at: Timestamp
    payment_sent_at: Optional[Timestamp]
    activated_at: Optional[Timestamp]
    cancelled_at: Optional[Timestamp]
    expired_at: Optional[Timestamp]
