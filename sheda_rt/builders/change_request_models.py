"""Request and response models for change requests on bookings (they validate input and are the
OpenAPI schemas)."""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, StrictInt

from sheda_rt.builders.booking_models import BookingView
from sheda_rt.builders.models import MediaPath, _Body
from sheda_rt.listings.money import Money
from sheda_rt.responses import MoneyText, ResponseModel, Timestamp

ChangeCategory = Literal["layout", "finishes", "fixtures", "electrical", "plumbing", "other"]
ChangeStatus = Literal["requested", "quoted", "accepted", "completed", "withdrawn", "rejected"]
#: Longest a quoted change may take (ten years): keeps the due date a real date.
MAX_DAYS = 3650


class ChangeRequestCreate(_Body):
    category: ChangeCategory
    description: str = Field(min_length=1, max_length=2000)
    attachment_ids: list[MediaPath] = Field(default_factory=list, max_length=10, description=(
        "uploaded images or files: the /media/... paths the media upload returned"))


class ChangeQuote(_Body):
    cost: Money = Field(description="naira, decimal string (two decimals at most)")
    days: StrictInt = Field(ge=0, le=MAX_DAYS, description="days the change takes once accepted; its installment falls due then")


class ChangeAccept(_Body):
    cost: Optional[Money] = Field(None, description=(
        "the quoted cost the client is agreeing to, as shown to them; when sent and the builder has quoted another cost "
        "since, 409 quote_changed (with the current `cost`) and nothing changes. Without it the current quote is accepted"))


class ChangeReject(_Body):
    reason: str = Field(min_length=1, max_length=500)


class ChangeRequestView(ResponseModel):
    id: int
    booking_id: int
    project_id: int
    unit_id: int
    client_id: int
    builder_id: int
    category: ChangeCategory
    description: str
    attachments: list[str]
    status: ChangeStatus
    cost: Optional[MoneyText] = Field(description="the builder's quote, once quoted")
    days: Optional[int] = Field(description="the quoted duration in days, once quoted")
    installment: Optional[int] = Field(description="the booking's installment line (1-based) the accepted quote added")
    reject_reason: Optional[str]
    quoted_at: Optional[Timestamp]
    accepted_at: Optional[Timestamp]
    completed_at: Optional[Timestamp]
    withdrawn_at: Optional[Timestamp]
    rejected_at: Optional[Timestamp]
    created_at: Timestamp
    updated_at: Timestamp


class ChangeRequestList(ResponseModel):
    items: list[ChangeRequestView] = Field(description="the booking's change requests, newest first")


class ChangeRequestResult(ChangeRequestView):
    """A change request after a move; `booking` once an accepted quote changed the schedule."""

    booking: Optional[BookingView] = Field(None, description="accept only: the booking with its new installment line")
