"""Runtime settings: what an administrator may change while every process runs
(GET|PATCH /api/v1/admin/settings). One typed model for what is stored and served, one
for a change (unknown keys refused, every key optional)."""
from __future__ import annotations

import re
from decimal import Decimal
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema, field_validator, model_validator

from sheda_rt.errors import FieldError
from sheda_rt.pagination import PageQuery
from sheda_rt.responses import ResponseModel, Timestamp

# No static setting carries it: the booking line builders most often start a plan with.
DEFAULT_BOOKING_PERCENT = "10.00"

_PERCENT_TEXT = re.compile(r"[0-9]{1,3}(\.[0-9]{1,2})?")


def _percent_text(value) -> str:
    """'10.00': 0..100, at most two decimals, a string (money rules: never a JSON float).
    The shape is checked before any Decimal arithmetic, so no input can make it raise."""
    if not isinstance(value, str) or not _PERCENT_TEXT.fullmatch(value.strip()):
        raise ValueError('must be a decimal string like "10.00" (at most two decimals)')
    amount = Decimal(value.strip())
    if not Decimal(0) <= amount <= Decimal(100):
        raise ValueError("must be from 0 to 100")
    return str(amount.quantize(Decimal("0.01")))


PercentText = Annotated[str, BeforeValidator(_percent_text),
                        WithJsonSchema({"type": "string", "pattern": r"^\d{1,3}(\.\d{1,2})?$", "examples": ["10.00"],
                                        "description": "percent, 0..100, two decimals"})]
# strict: a JSON number only (`true` was a 1-hour hold, "6" six hours), as every body field is.
HoldHours = Annotated[float, Field(gt=0, le=24 * 90, strict=True,
                                   description="hours a new booking reserves its unit (BOOKING_HOLD_HOURS until changed)")]
MaxUnits = Annotated[int, Field(ge=1, le=100_000, strict=True, description="units one project may hold; one more is 409 too_many_units")]
Banner = Annotated[str | None, Field(max_length=500, description="shown by the apps while set (GET /api/v1/status); null hides it")]


class RuntimeSettings(ResponseModel):
    booking_hold_hours: HoldHours
    booking_percent: PercentText = Field(description="default booking percentage of a unit's price: the booking line of a "
                                                     "payment plan created without lines")
    max_units_per_project: MaxUnits
    maintenance_banner: Banner = None


class RuntimeSettingsPatch(BaseModel):
    """Only the keys sent change; `maintenance_banner: null` clears the banner."""
    model_config = ConfigDict(extra="forbid")

    booking_hold_hours: HoldHours | None = None
    booking_percent: PercentText | None = None
    max_units_per_project: MaxUnits | None = None
    maintenance_banner: Banner = None

    @field_validator("maintenance_banner")
    @classmethod
    def _blank_banner_is_none(cls, value: str | None) -> str | None:
        # The apps show the banner while it is not null: "" or spaces would be an empty bar. Blank clears it.
        return value if value is None or value.strip() else None

    @model_validator(mode="after")
    def _only_the_banner_clears(self):
        # None means "not sent" for the others: an explicit null would otherwise be dropped silently.
        nulls = sorted(k for k in self.model_fields_set if k != "maintenance_banner" and getattr(self, k) is None)
        if nulls:
            raise FieldError(nulls[0], f"{', '.join(nulls)} cannot be null")  # the 422 names a field, not the body
        return self


class SettingsAuditEntry(ResponseModel):
    id: int
    who: int = Field(description="the admin's user id")
    when: Timestamp
    changes: dict[str, list] = Field(description="{key: [old, new]} for every key the change moved")


class SettingsAuditQuery(PageQuery):
    model_config = ConfigDict(extra="forbid")


class Status(ResponseModel):
    maintenance_banner: str | None
