"""Request, query and response models for builders, projects, units and payment plans.

They validate input (every number and string bounded, JSON types strict in bodies) and
generate the OpenAPI schemas. Money uses the listings' `Money` (decimal string or
integer naira in, two-decimal string out).
"""
from __future__ import annotations

import re
from datetime import date
from decimal import Decimal
from typing import Annotated, Literal, Optional

from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, StrictInt, WithJsonSchema,
                      field_validator, model_validator)

from sheda_rt.accounts.models import PublicBuilder
from sheda_rt.database.ids import MAX_ID
from sheda_rt.errors import FieldError
from sheda_rt.listings.models import GeoPoint
from sheda_rt.listings.money import Money, check_price_range
from sheda_rt.pagination import PageQuery
from sheda_rt.responses import MediaUrl, MoneyText, Page, ResponseModel, Timestamp
from sheda_rt.search import check_radius, parse_near

ProjectStatus = Literal["planning", "under_construction", "completed"]
#: A project's status only moves forward along this order.
PROJECT_STATUS_ORDER = ("planning", "under_construction", "completed")
UnitType = Literal["apartment", "studio", "penthouse", "duplex", "terrace", "detached", "shop"]
UnitStatus = Literal["available", "reserved", "booked", "sold", "blocked"]
UNIT_STATUSES = ("available", "reserved", "booked", "sold", "blocked")
ProjectSort = Literal["newest", "price_asc", "price_desc"]

MAX_UNITS_PER_BATCH = 500
MAX_IMAGES = 20
MAX_AMENITIES = 50
MAX_PLAN_LINES = 24
MAX_PLAN_MONTHS = 120


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


def _calendar_date(value):
    """A JSON date is a 'YYYY-MM-DD' string (a number is not a date), between 1990 and 2100."""
    if isinstance(value, date):
        parsed = value
    elif isinstance(value, str) and re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", value.strip()):
        try:
            parsed = date.fromisoformat(value.strip())
        except ValueError:
            raise ValueError("is not a calendar date") from None
    else:
        raise ValueError("must be a date string 'YYYY-MM-DD'")
    if not 1990 <= parsed.year <= 2100:
        raise ValueError("must be between 1990 and 2100")
    return parsed


CalendarDate = Annotated[date, BeforeValidator(_calendar_date),
                         WithJsonSchema({"type": "string", "format": "date", "examples": ["2027-06-30"]})]
Amenity = Annotated[str, Field(min_length=1, max_length=60)]
def _no_dot_segments(value: str) -> str:
    """A /media/... path names a file under /media: no '.' or '..' segment (the pattern's characters allow them, and
    '/media/../api/...' resolves to another route in every client)."""
    if value.startswith("/media/") and any(part in (".", "..") for part in value.split("/")):
        raise ValueError("must be an uploaded file's /media/... path, without '.' or '..' segments")
    return value


ImageUrl = Annotated[str, Field(max_length=500, pattern=r"^(/media/[A-Za-z0-9_./-]{1,200}|https?://[^\s]{1,480})$",
                                description="an uploaded file's /media/... path (no '.' or '..' segments) or an http(s) URL"),
                     AfterValidator(_no_dot_segments)]
#: An uploaded file only (a construction update's image_ids, a change request's attachment_ids): the /media/... path an
#: upload returned, never an outside URL (those lists name uploads; an outside address shown to the buyers as one
#: of the builder's files could be anything, and changes under them).
MediaPath = Annotated[str, Field(max_length=210, pattern=r"^/media/[A-Za-z0-9_./-]{1,200}$",
                                 description="an uploaded file's /media/... path (no '.' or '..' segments)"),
                      AfterValidator(_no_dot_segments)]
UnitNumber = Annotated[str, Field(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9][A-Za-z0-9 /._-]{0,31}$",
                                  description="unique within the project, compared exactly (e.g. 'A-101')")]


def _positive_area(value):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError("must be a number")
    return value


# ---- builders -----------------------------------------------------------------
class BuilderVerify(_Body):
    verified: StrictBool = Field(description="true: the builder may publish projects; false takes that back")


# ---- projects -----------------------------------------------------------------
class ProjectCreate(_Body):
    name: str = Field(min_length=1, max_length=200)
    description: str = Field("", max_length=10000)
    location: str = Field(min_length=1, max_length=300, description="Free text address, e.g. 'Lekki Phase 1, Lagos'")
    geo: Optional[GeoPoint] = Field(None, description="Map position (WGS84); enables near= searches")
    status: ProjectStatus = "planning"
    launch_date: Optional[CalendarDate] = None
    expected_completion: Optional[CalendarDate] = None
    amenities: list[Amenity] = Field(default_factory=list, max_length=MAX_AMENITIES)
    images: list[ImageUrl] = Field(default_factory=list, max_length=MAX_IMAGES)

    @model_validator(mode="after")
    def _dates(self):
        if self.launch_date and self.expected_completion and self.expected_completion < self.launch_date:
            raise FieldError("expected_completion", "expected_completion must not be before launch_date")
        return self


class ProjectUpdate(_Body):
    """Any subset of the create fields. `status` only moves forward (planning → under_construction →
    completed; 409 `status_backwards` otherwise); `geo: null` removes the map position."""

    name: Optional[str] = Field(None, min_length=1, max_length=200)
    description: Optional[str] = Field(None, max_length=10000)
    location: Optional[str] = Field(None, min_length=1, max_length=300)
    geo: Optional[GeoPoint] = Field(None, description="null removes the map position")
    status: Optional[ProjectStatus] = None
    launch_date: Optional[CalendarDate] = None
    expected_completion: Optional[CalendarDate] = None
    amenities: Optional[list[Amenity]] = Field(None, max_length=MAX_AMENITIES)
    images: Optional[list[ImageUrl]] = Field(None, max_length=MAX_IMAGES)

    @model_validator(mode="after")
    def _not_null(self):
        if not self.model_fields_set:
            raise ValueError("send at least one field to change")
        for name in self.model_fields_set:
            if name not in ("geo", "launch_date", "expected_completion") and getattr(self, name) is None:
                raise FieldError(name, f"{name} cannot be null")  # the 422 names the field, not the body
        return self


class ProjectQuery(PageQuery):
    """GET /projects filters, all optional. Published projects unless `state=draft` (your own, or any for admins)."""

    model_config = ConfigDict(extra="forbid")

    location: Optional[str] = Field(None, min_length=1, max_length=100, description=(
        "Case- and accent-insensitive word match on the location: every word must start a word of the project's "
        "location (3+ letters, or the whole word), as for listings"))
    near: Optional[str] = Field(None, description="'lat,lng': only projects within radius_km of this point")
    radius_km: float = Field(5.0, gt=0, le=100, description="Radius for near=, kilometres (default 5, max 100)")
    status: Optional[ProjectStatus] = None
    builder_id: Optional[int] = Field(None, ge=1, le=MAX_ID)
    price_min: Optional[Money] = Field(None, description="Has an available unit at this price or more (naira)")
    price_max: Optional[Money] = Field(None, description="Has an available unit at this price or less (naira)")
    bedrooms: Optional[int] = Field(None, ge=0, le=20, description="Has an available unit with exactly this many bedrooms")
    bedrooms_min: Optional[int] = Field(None, ge=0, le=20, description="Has an available unit with at least this many bedrooms")
    state: Literal["published", "draft"] = "published"
    sort: ProjectSort = Field("newest", description="newest (created), price_asc / price_desc (by the lowest available unit price)")

    _near = field_validator("near")(parse_near)

    @model_validator(mode="after")
    def _range(self):
        check_price_range(self.price_min, self.price_max)
        check_radius(self)
        return self

    @property
    def near_point(self) -> tuple[float, float] | None:
        if self.near is None:
            return None
        lat, lng = (float(p) for p in self.near.split(","))
        return lat, lng


# ---- units --------------------------------------------------------------------
class UnitIn(_Body):
    unit_number: UnitNumber
    floor: StrictInt = Field(ge=-5, le=300)
    type: UnitType
    bedrooms: StrictInt = Field(ge=0, le=20)
    bathrooms: StrictInt = Field(0, ge=0, le=20)
    area_sqm: Annotated[float, BeforeValidator(_positive_area)] = Field(gt=0, le=100000, description="floor area, m²")
    price: Money


class UnitBatch(_Body):
    units: list[UnitIn] = Field(min_length=1, max_length=MAX_UNITS_PER_BATCH,
                                description=f"1 to {MAX_UNITS_PER_BATCH} units, stored all together or not at all")


class UnitPatch(_Body):
    status: Literal["available", "blocked"] = Field(
        description="blocked takes an available unit off sale; available puts a blocked one back")


class UnitQuery(PageQuery):
    model_config = ConfigDict(extra="forbid")

    status: Optional[UnitStatus] = None
    type: Optional[UnitType] = None
    floor: Optional[int] = Field(None, ge=-5, le=300)
    bedrooms: Optional[int] = Field(None, ge=0, le=20)
    price_min: Optional[Money] = Field(None, description="naira, inclusive")
    price_max: Optional[Money] = Field(None, description="naira, inclusive")

    @model_validator(mode="after")
    def _range(self):
        check_price_range(self.price_min, self.price_max)
        return self


# ---- payment plans ------------------------------------------------------------
_PERCENT_TEXT = re.compile(r"[0-9]{1,3}(\.[0-9]{1,2})?")


def _percent(value) -> Decimal:
    """'10.00' or 10: more than 0, at most 100, at most two decimals; never a JSON float.
    The shape and bounds are checked before any Decimal arithmetic (a 29-digit integer
    would make quantize raise: a 500)."""
    if isinstance(value, bool) or isinstance(value, float):
        raise ValueError('must be a decimal string like "10.00" or an integer, never a JSON float')
    if isinstance(value, int):
        if not 0 < value <= 100:
            raise ValueError("must be more than 0 and at most 100")
        return Decimal(value).quantize(Decimal("0.01"))
    if not isinstance(value, str) or not _PERCENT_TEXT.fullmatch(value.strip()):
        raise ValueError('must be a decimal string like "10.00" (at most two decimals)')
    amount = Decimal(value.strip())
    if not Decimal(0) < amount <= Decimal(100):
        raise ValueError("must be more than 0 and at most 100")
    return amount.quantize(Decimal("0.01"))


Percent = Annotated[Decimal, BeforeValidator(_percent),
                    WithJsonSchema({"anyOf": [{"type": "string", "pattern": r"^\d{1,3}(\.\d{1,2})?$"}, {"type": "integer"}],
                                    "examples": ["10.00"], "description": "percent of the unit price, two decimals"})]
Due = Annotated[str, Field(pattern=r"^(booking|handover|months:([1-9]|[1-9][0-9]|1[01][0-9]|120))$",
                           description="'booking', 'handover', or 'months:<N>' (N = 1..120 months after booking)")]


class PlanLine(_Body):
    label: str = Field(min_length=1, max_length=80)
    percent: Percent
    due: Due


class PaymentPlanCreate(_Body):
    name: str = Field(min_length=1, max_length=80)
    lines: Optional[list[PlanLine]] = Field(None, min_length=1, max_length=MAX_PLAN_LINES, description=(
        "The first line is the booking payment and must be due 'booking' (it is paid within the booking's hold). "
        "Left out: the default plan, a 'Booking' line of the runtime booking_percent (admin settings) due at "
        "booking and the 'Balance' due at handover"))

    @model_validator(mode="after")
    def _sums_to_100(self):
        if self.lines is None:
            return self
        if self.lines[0].due != "booking":
            # A booking holds its unit until line 1 is paid: a plan without a booking payment would have its
            # first line (due months or handover later) asked for within the hold all the same.
            raise FieldError("lines.0.due", "the first line is the booking payment: it must be due 'booking'")
        total = sum((line.percent for line in self.lines), Decimal(0))
        if total != Decimal(100):
            raise FieldError("lines", f"the lines' percents must sum to exactly 100 (they sum to {total})")
        return self


class PlanQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    unit_id: Optional[int] = Field(None, ge=1, le=MAX_ID, description="add each plan's schedule for this unit's price")


# ---- responses (validated on the way out by the endpoint; they are the OpenAPI schemas) ----
#: A builder as anyone may see them: the public user fields and the company profile.
BuilderView = PublicBuilder


class GeoView(ResponseModel):
    lat: float
    lng: float


class PriceRange(ResponseModel):
    min: MoneyText = Field(description="lowest available unit price")
    max: MoneyText = Field(description="highest available unit price")


class UnitCounts(ResponseModel):
    available: int
    reserved: int
    booked: int
    sold: int
    blocked: int


class ProjectView(ResponseModel):
    id: int
    builder_id: int
    name: str
    description: str
    location: str
    geo: Optional[GeoView]
    status: ProjectStatus
    launch_date: Optional[str] = Field(description="YYYY-MM-DD", json_schema_extra={"format": "date"})
    expected_completion: Optional[str] = Field(description="YYYY-MM-DD", json_schema_extra={"format": "date"})
    amenities: list[str]
    images: list[str] = Field(description="/media/... paths or http(s) URLs")
    published: bool
    published_at: Optional[Timestamp]
    hidden_reason: Optional[Literal["builder_inactive"]] = Field(None, description=(
        "builder_inactive: published, but off every public list and 404 to all but its builder and admins while "
        "the builder's account is deactivated or switched to another type; null otherwise"))
    unit_counts: UnitCounts
    units_total: int
    price_range: Optional[PriceRange] = Field(description="over available units; null when none is available")
    bedrooms: list[int] = Field(description="bedroom counts of the available units, ascending")
    created_at: Timestamp
    updated_at: Timestamp


class ProjectModelsSummary(ResponseModel):
    total: int = Field(description="3D models of the project and its unit types (GET /projects/{id}/models lists them)")
    kinds: list[Literal["glb", "gltf", "usdz"]] = Field(description="the kinds among them")
    unit_types: list[UnitType] = Field(description="unit types that have a model of their own")


class ProjectDetailView(ProjectView):
    models: ProjectModelsSummary


class BuilderPageView(BuilderView):
    projects: list[ProjectView] = Field(description="up to 50 published projects, newest first")


class UnitView(ResponseModel):
    id: int
    project_id: int
    unit_number: str
    floor: int
    type: UnitType
    bedrooms: int
    bathrooms: int
    area_sqm: float
    price: MoneyText
    status: UnitStatus
    created_at: Timestamp
    updated_at: Timestamp


class UnitItems(ResponseModel):
    """The units of one batch, in the order sent."""

    items: list[UnitView]


class ScheduleLine(ResponseModel):
    label: str
    percent: str = Field(examples=["10.00"])
    due: str
    amount: MoneyText = Field(description="kobo-exact; each line rounded down to the kobo, the remainder on the last line")


class PlanLineView(ResponseModel):
    label: str
    percent: str = Field(examples=["10.00"])
    due: str


class PaymentPlanView(ResponseModel):
    id: int
    project_id: int
    name: str
    lines: list[PlanLineView]
    created_at: Timestamp
    schedule: Optional[list[ScheduleLine]] = Field(None, description="only with ?unit_id=: the unit's price split by the lines")


class PaymentPlanList(ResponseModel):
    items: list[PaymentPlanView]


ProjectPage = Page[ProjectView]
UnitPage = Page[UnitView]
