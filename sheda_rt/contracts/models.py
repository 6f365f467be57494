"""Request models for contracts."""
from __future__ import annotations

from typing import Literal, Optional

from sheda_rt.database.ids import MAX_ID
from pydantic import BaseModel, ConfigDict, Field, StrictInt

from sheda_rt.pagination import PageQuery

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
