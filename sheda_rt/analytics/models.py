"""Query and response models of the agent analytics."""
from __future__ import annotations

from datetime import date

from pydantic import BaseModel, ConfigDict, Field, model_validator

from sheda_rt.errors import FieldError
from sheda_rt.responses import ResponseModel

MAX_DAYS = 366


class AnalyticsQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    from_: date | None = Field(None, alias="from", description="First day (UTC, YYYY-MM-DD); default: 29 days before `to`")
    to: date | None = Field(None, description="Last day, inclusive (UTC); default: today")

    @model_validator(mode="after")
    def _range(self):
        if self.from_ is not None and self.to is not None:
            if self.from_ > self.to:
                raise FieldError("to", "from must not be after to")
            if (self.to - self.from_).days + 1 > MAX_DAYS:
                raise FieldError("to", f"at most {MAX_DAYS} days at once")
        return self


class Counts(ResponseModel):
    views: int = Field(description="distinct viewers (account, or address when signed out) per listing per day")
    favourites: int = Field(description="times added to someone's favourites")
    inquiries: int
    viewings: int = Field(description="viewings booked (appointments requested)")
    contracts: int = Field(description="contracts started")


class DayCounts(Counts):
    day: str = Field(description="YYYY-MM-DD (UTC)")


class ListingAnalytics(ResponseModel):
    property_id: int
    title: str
    totals: Counts
    days: list[DayCounts] = Field(description="days with any activity, oldest first")


class AgentAnalytics(ResponseModel):
    from_day: str = Field(description="YYYY-MM-DD, the range's first day")
    to_day: str = Field(description="YYYY-MM-DD, its last day (inclusive)")
    totals: Counts
    listings: list[ListingAnalytics] = Field(description="listings with any activity in the range, most viewed first")
