"""Request models for availability windows and appointments. All times are UTC."""
from __future__ import annotations

import re
from datetime import datetime
from typing import Literal, Optional

from sheda_rt.database.ids import MAX_ID
from pydantic import BaseModel, ConfigDict, Field, StrictInt, field_validator, model_validator

from sheda_rt.client_input import iso_offset
from sheda_rt.clock import to_utc
from sheda_rt.errors import FieldError
from sheda_rt.pagination import PageQuery
from sheda_rt.responses import ResponseModel, Timestamp

WEEKDAYS = ("MONDAY", "TUESDAY", "WEDNESDAY", "THURSDAY", "FRIDAY", "SATURDAY", "SUNDAY")
Weekday = Literal["MONDAY", "TUESDAY", "WEDNESDAY", "THURSDAY", "FRIDAY", "SATURDAY", "SUNDAY"]
AppointmentStatus = Literal["pending", "confirmed", "rejected", "cancelled"]
_HHMM = re.compile(r"^([01][0-9]|2[0-3]):[0-5][0-9]$")
# An end may also be "24:00", the end of the day: windows are UTC, so an agent west or east of it whose
# hours run to (or past) midnight UTC needs the day's last slot, which no end up to "23:59" can hold.
_HHMM_END = re.compile(r"^(([01][0-9]|2[0-3]):[0-5][0-9]|24:00)$")
_ISO_DATE_TIME = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}")  # the rest is the parser's to judge


def minutes(hhmm: str) -> int:
    return int(hhmm[:2]) * 60 + int(hhmm[3:])


def _check_hhmm(value):
    if not isinstance(value, str) or not _HHMM.match(value):
        raise ValueError("must be a 24-hour UTC time 'HH:MM', e.g. '09:30'")
    return value


def _check_hhmm_end(value):
    if not isinstance(value, str) or not _HHMM_END.match(value):
        raise ValueError("must be a 24-hour UTC time 'HH:MM', e.g. '17:30', or '24:00' (the end of the day)")
    return value


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class WindowCreate(_Body):
    weekday: Weekday = Field(description="MONDAY … SUNDAY")
    start_time: str = Field(description="'HH:MM' UTC, inclusive", json_schema_extra={"pattern": _HHMM.pattern})
    end_time: str = Field(description="'HH:MM' UTC, exclusive; must be after start_time; '24:00' is the end of the day",
                          json_schema_extra={"pattern": _HHMM_END.pattern})

    _hhmm = field_validator("start_time", mode="before")(_check_hhmm)
    _hhmm_end = field_validator("end_time", mode="before")(_check_hhmm_end)

    @model_validator(mode="after")
    def _order(self):
        if minutes(self.start_time) >= minutes(self.end_time):
            raise FieldError("end_time", "start_time must be before end_time")
        return self


class WindowUpdate(_Body):
    weekday: Optional[Weekday] = None
    start_time: Optional[str] = Field(None, description="'HH:MM' UTC", json_schema_extra={"pattern": _HHMM.pattern})
    end_time: Optional[str] = Field(None, description="'HH:MM' UTC, or '24:00' (the end of the day)",
                                    json_schema_extra={"pattern": _HHMM_END.pattern})

    _hhmm = field_validator("start_time", mode="before")(_check_hhmm)
    _hhmm_end = field_validator("end_time", mode="before")(_check_hhmm_end)

    @model_validator(mode="after")
    def _some(self):
        if not self.model_fields_set:
            raise ValueError("send at least one of weekday, start_time, end_time")
        return self


class BookRequest(_Body):
    property_id: StrictInt = Field(ge=1, le=MAX_ID)
    scheduled_at: datetime = Field(description=(
        "Start of the viewing, ISO 8601 (any offset; stored and returned in UTC). It must be in the future, on a "
        "slot boundary (a multiple of APPOINTMENT_MINUTES after 00:00 UTC) and the whole slot inside one of the agent's windows"))

    @field_validator("scheduled_at", mode="before")
    @classmethod
    def _iso_text(cls, v):
        # A date and a time of day: the parser alone also takes "2025-10-16" (midnight) and "1760608800"
        # (Unix seconds in a string), which a client never means as a viewing's time.
        if not isinstance(v, str) or not _ISO_DATE_TIME.match(v):
            raise ValueError("must be an ISO 8601 date-time string, e.g. 2025-10-16T10:00:00Z")
        return iso_offset(v)  # "+01" is "+01:00"

    @field_validator("scheduled_at")
    @classmethod
    def _utc(cls, v):
        # A valid ISO text can still leave the representable range once moved to UTC
        # ("9999-12-31T23:30:00-05:00"): an input error, not a 500.
        try:
            return to_utc(v)
        except OverflowError:
            raise ValueError("is out of range") from None


class RescheduleRequest(_Body):
    scheduled_at: datetime = Field(description=(
        "The proposed new start, ISO 8601 (any offset; UTC stored). The rules of a booking: in the future, on a slot boundary, "
        "the whole slot inside one of the agent's windows and not held by another viewing"))

    _iso_text = field_validator("scheduled_at", mode="before")(BookRequest._iso_text.__func__)
    _utc = field_validator("scheduled_at")(BookRequest._utc.__func__)


class AppointmentQuery(PageQuery):
    model_config = ConfigDict(extra="forbid")
    status: Optional[AppointmentStatus] = None
    role: Optional[Literal["client", "agent"]] = Field(None, description="Only those where I am the client / the agent")


# ---- responses (the serializer validates every body through these; they are its schema) ----------
HHMM_PATTERN = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"


class WindowOut(ResponseModel):
    """A weekly availability window; times are 'HH:MM' UTC, start inclusive, end exclusive."""

    id: int
    agent_id: int
    weekday: Weekday
    start_time: str = Field(pattern=HHMM_PATTERN)
    end_time: str = Field(pattern=_HHMM_END.pattern, description="'HH:MM' UTC, exclusive; '24:00' is the end of the day")
    created_at: Timestamp
    updated_at: Timestamp


class AppointmentOut(ResponseModel):
    """A viewing: `scheduled_at` is the slot's start, `ends_at` its end (UTC)."""

    id: int
    property_id: int
    property_title: Optional[str]
    client_id: int
    agent_id: int
    scheduled_at: Timestamp
    ends_at: Timestamp
    status: AppointmentStatus
    cancelled_by: Optional[int] = Field(description="who cancelled (user id), once cancelled; null when the system closed it")
    cancel_reason: Optional[Literal["property_unavailable", "agent_inactive", "client_inactive"]] = Field(None, description=(
        "why the system cancelled it: the property was rented or sold, or that party's account was deactivated; "
        "null for a party's own cancel"))
    proposed_by: int = Field(description="who proposed the current time (the client for a booking, either party after a "
                                         "reschedule); while pending, the other party confirms or rejects it")
    rescheduled_at: Optional[Timestamp] = Field(None, description="when the time was last changed by a reschedule")
    created_at: Timestamp
    updated_at: Timestamp
