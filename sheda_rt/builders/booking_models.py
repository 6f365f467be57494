"""Request and response models for bookings, installments, receivables, construction progress
and construction updates (they validate input and are the OpenAPI schemas)."""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import ConfigDict, Field, StrictInt, model_validator

from sheda_rt.builders.models import CalendarDate, MediaPath, _Body
from sheda_rt.database.ids import MAX_ID
from sheda_rt.errors import FieldError
from sheda_rt.pagination import PageQuery
from sheda_rt.responses import MoneyText, Page, ResponseModel, Timestamp

BookingStatus = Literal["reserved", "active", "completed", "cancelled", "expired"]
InstallmentStatus = Literal["due", "overdue", "sent", "confirmed"]
Phase = Literal["foundation", "structure", "roofing", "finishing", "handover"]
PHASES = ("foundation", "structure", "roofing", "finishing", "handover")


class BookingCreate(_Body):
    unit_id: StrictInt = Field(ge=1, le=MAX_ID, description="An available unit of a published project")
    plan_id: StrictInt = Field(ge=1, le=MAX_ID, description="One of that project's payment plans")


class BookingQuery(PageQuery):
    model_config = ConfigDict(extra="forbid")

    status: Optional[BookingStatus] = None
    role: Optional[Literal["client", "builder"]] = Field(None, description="Only those where I am the client / the builder")


class PaymentSent(_Body):
    reference: str = Field(min_length=1, max_length=100, description="Your transfer's reference, for the builder to match")


class BookingCancel(_Body):
    reason: Optional[str] = Field(None, min_length=1, max_length=500,
                                  description="Required when the builder cancels; optional for the client")


class InstallmentView(ResponseModel):
    n: int = Field(description="1-based line number; line 1 is the booking payment (a plan's first line is always due 'booking')")
    label: str
    percent: str = Field(examples=["10.00"])
    due: str = Field(description="'booking', 'handover' or 'months:<N>', as in the plan (line 1 always 'booking'); "
                                 "'change:<days>' for an accepted "
                                 "change request's line (due that many days after acceptance)")
    due_date: Optional[Timestamp] = Field(description="booking: the hold's end (a later line's: no sooner than what was left "
                                                      "of the hold, at least an hour, after the booking payment's confirmation); "
                                                      "months:N: N calendar months after booking; "
                                                      "handover: the project's expected_completion (null when it has none)")
    amount: MoneyText = Field(description="kobo-exact; each line rounded down to the kobo, the remainder on the last line")
    status: InstallmentStatus
    reference: Optional[str] = Field(description="the client's payment reference, once sent")
    sent_at: Optional[Timestamp]
    confirmed_at: Optional[Timestamp]
    declined_at: Optional[Timestamp] = Field(description="the builder's last decline of this line")
    reminded_at: Optional[Timestamp] = Field(description="when the due-date reminder went out")


class BookingView(ResponseModel):
    id: int
    unit_id: int
    unit_number: str
    project_id: int
    project_name: str
    plan_id: int
    plan_name: str
    client_id: int
    builder_id: int
    price: MoneyText
    status: BookingStatus
    hold_until: Optional[Timestamp] = Field(description="while reserved and the booking payment is not sent: when the hold lapses")
    installments: list[InstallmentView]
    paid: MoneyText = Field(description="sum of confirmed lines")
    outstanding: MoneyText = Field(description="every line (the price plus accepted change requests) minus paid")
    cancel_reason: Optional[str]
    cancelled_by: Optional[int] = Field(description="user id; null when the system closed it")
    created_at: Timestamp
    updated_at: Timestamp


BookingPage = Page[BookingView]


class ReceivableTotals(ResponseModel):
    due: MoneyText = Field(description="unpaid lines not overdue, including those the client marked sent (awaiting your "
                                       "confirmation, even past their date)")
    overdue: MoneyText = Field(description="lines of active bookings past their due date that the client has not marked sent "
                                           "(status overdue, or still due until the booking job's next pass)")
    received: MoneyText = Field(description="confirmed lines")
    awaiting_confirmation: MoneyText = Field(description="lines the client marked sent (part of due)")


class ProjectReceivables(ReceivableTotals):
    project_id: int
    project_name: str
    bookings: int = Field(description="open and completed bookings counted")


class Receivables(ResponseModel):
    totals: ReceivableTotals
    projects: list[ProjectReceivables]


# ---- construction progress --------------------------------------------------------------------
class PhaseIn(_Body):
    phase: Phase
    percent: StrictInt = Field(ge=0, le=100, description="percent complete, 0-100")
    start_date: Optional[CalendarDate] = None
    end_date: Optional[CalendarDate] = None

    @model_validator(mode="after")
    def _dates(self):
        if self.start_date and self.end_date and self.end_date < self.start_date:
            raise FieldError("end_date", "end_date must not be before start_date")
        return self


class ProgressPut(_Body):
    phases: list[PhaseIn] = Field(min_length=1, max_length=len(PHASES), description=(
        "The phases to set (each at most once); phases left out keep their stored values"))

    @model_validator(mode="after")
    def _unique(self):
        names = [p.phase for p in self.phases]
        if len(set(names)) != len(names):
            raise ValueError("each phase at most once")
        return self


class PhaseView(ResponseModel):
    phase: Phase
    percent: int
    start_date: Optional[str] = Field(description="YYYY-MM-DD", json_schema_extra={"format": "date"})
    end_date: Optional[str] = Field(description="YYYY-MM-DD", json_schema_extra={"format": "date"})


class ProgressView(ResponseModel):
    project_id: int
    phases: list[PhaseView] = Field(description="always the five phases, in building order")
    overall_percent: int = Field(description="mean of the five phases' percents, rounded down")
    updated_at: Optional[Timestamp] = Field(description="null until the builder first sets it")


# ---- construction updates ---------------------------------------------------------------------
class UpdateCreate(_Body):
    title: str = Field(min_length=1, max_length=200)
    body: str = Field(min_length=1, max_length=10000)
    phase: Optional[Phase] = None
    percent: Optional[StrictInt] = Field(None, ge=0, le=100, description="with phase: also sets that phase's percent complete")
    image_ids: list[MediaPath] = Field(default_factory=list, max_length=10, description=(
        "uploaded images: the /media/... paths POST /projects/{id}/images (or the media upload) returned"))

    @model_validator(mode="after")
    def _percent_needs_phase(self):
        if self.percent is not None and self.phase is None:
            raise FieldError("percent", "percent needs a phase (the phase it sets)")  # the 422 names the field, not the body
        return self


class UpdateView(ResponseModel):
    id: int
    project_id: int
    builder_id: int
    title: str
    body: str
    phase: Optional[Phase]
    percent: Optional[int]
    images: list[str]
    created_at: Timestamp


UpdatePage = Page[UpdateView]
