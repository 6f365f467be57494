"""Request and query models for listings. They validate input and generate the OpenAPI schemas.

Body fields are strict about JSON types (`"bedroom": "3"` or `"furnished": "yes"` is a 422):
a client sending the wrong type has a bug we should tell them about. Query-string values are
text by nature and are parsed ("true", "3", "2500000.00").
"""
from __future__ import annotations

from typing import Literal, Optional

from sheda_rt.database.ids import MAX_ID
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, field_validator, model_validator

from sheda_rt.errors import FieldError
from sheda_rt.listings.money import Money, check_price_range
from sheda_rt.accounts.models import PublicAgent
from sheda_rt.pagination import PageQuery
from sheda_rt.responses import MediaUrl, MoneyText, ResponseModel, Timestamp
from sheda_rt.search import check_radius, keyword_words, parse_bbox, parse_near

PropertyType = Literal["apartment", "house", "duplex", "bungalow", "land", "shortlet", "shared apartment", "office", "shop", "warehouse"]
ListingType = Literal["rent", "sale"]
PropertyStatus = Literal["available", "rented", "sold"]
SortOrder = Literal["newest", "price_asc", "price_desc"]

AMENITIES = ("air_condition", "pop_ceiling", "floor_tiles", "running_water", "furniture", "prepaid_meter", "wifi")
FLAGS = ("furnished",) + AMENITIES

Q_MAX_CHARS, Q_MAX_WORDS = 200, 8  # bounds of a keyword search: each word is one more residual facet

LOCATION_HELP = "Free text address, e.g. 'Lekki Phase 1, Lagos'"


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class GeoPoint(_Body):
    lat: float = Field(ge=-90, le=90)
    lng: float = Field(ge=-180, le=180)

    @field_validator("lat", "lng", mode="before")
    @classmethod
    def _number(cls, v):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ValueError("must be a number")
        return v


class PropertyCreate(_Body):
    title: str = Field(min_length=1, max_length=200)
    description: str = Field("", max_length=5000)
    price: Money
    is_negotiable: StrictBool = False
    location: str = Field(min_length=1, max_length=300, description=LOCATION_HELP)
    geo: Optional[GeoPoint] = Field(None, description="Map position (WGS84); enables near= searches")
    property_type: PropertyType
    listing_type: ListingType
    bedroom: StrictInt = Field(0, ge=0, le=100)
    bathroom: StrictInt = Field(0, ge=0, le=100)
    furnished: StrictBool = False
    air_condition: StrictBool = False
    pop_ceiling: StrictBool = False
    floor_tiles: StrictBool = False
    running_water: StrictBool = False
    furniture: StrictBool = False
    prepaid_meter: StrictBool = False
    wifi: StrictBool = False
    category_id: Optional[StrictInt] = Field(None, ge=1, le=MAX_ID, description="One of GET /categories (422 when there is no such category)")


class PropertyUpdate(_Body):
    """Any subset of the fields. `status` is not here: it follows the contracts
    (confirm-payment makes a listing rented/sold, expiry makes it available again)."""

    title: Optional[str] = Field(None, min_length=1, max_length=200)
    description: Optional[str] = Field(None, max_length=5000)
    price: Optional[Money] = None
    is_negotiable: Optional[StrictBool] = None
    location: Optional[str] = Field(None, min_length=1, max_length=300)
    geo: Optional[GeoPoint] = Field(None, description="null removes the map position")
    property_type: Optional[PropertyType] = None
    listing_type: Optional[ListingType] = None
    bedroom: Optional[StrictInt] = Field(None, ge=0, le=100)
    bathroom: Optional[StrictInt] = Field(None, ge=0, le=100)
    furnished: Optional[StrictBool] = None
    air_condition: Optional[StrictBool] = None
    pop_ceiling: Optional[StrictBool] = None
    floor_tiles: Optional[StrictBool] = None
    running_water: Optional[StrictBool] = None
    furniture: Optional[StrictBool] = None
    prepaid_meter: Optional[StrictBool] = None
    wifi: Optional[StrictBool] = None
    category_id: Optional[StrictInt] = Field(None, ge=1, le=MAX_ID, description="null removes the category")

    @model_validator(mode="before")
    @classmethod
    def _no_status(cls, data):
        if isinstance(data, dict) and "status" in data:
            raise FieldError("status", "status cannot be set directly: it follows the contract flow (confirm-payment, expiry)")
        return data

    @model_validator(mode="after")
    def _not_null(self):
        for name in self.model_fields_set:
            if name not in ("geo", "category_id") and getattr(self, name) is None:
                raise FieldError(name, f"{name} cannot be null")  # the 422 names the field, not the body
        if not self.model_fields_set:
            raise ValueError("send at least one field to change")
        return self


class StatusPatch(_Body):
    active: StrictBool = Field(description="false unlists (hidden from search, 404 to others); true lists it again")


class ImagePatch(_Body):
    is_primary: Literal[True] = Field(description="Make this the primary image (the previous primary is unset)")


class MyPropertiesQuery(PageQuery):
    """GET /users/me/properties filters: the caller's own listings in every state unless narrowed."""

    model_config = ConfigDict(extra="forbid")

    status: Optional[PropertyStatus] = Field(None, description="Only listings in this status")
    listed: Optional[bool] = Field(None, description="true: only listed ones; false: only unlisted ones (by you, "
                                   "staff, or hidden while your account was deactivated)")


class SearchQuery(PageQuery):
    """GET /properties filters. All optional; results are available, listed properties unless `status` says otherwise."""

    model_config = ConfigDict(extra="forbid")

    price_min: Optional[Money] = Field(None, description="Lowest price, naira (inclusive)")
    price_max: Optional[Money] = Field(None, description="Highest price, naira (inclusive)")
    property_type: Optional[PropertyType] = None
    listing_type: Optional[ListingType] = None
    status: PropertyStatus = "available"
    bedroom_min: Optional[int] = Field(None, ge=0, le=100)
    bathroom_min: Optional[int] = Field(None, ge=0, le=100)
    furnished: Optional[bool] = None
    air_condition: Optional[bool] = None
    pop_ceiling: Optional[bool] = None
    floor_tiles: Optional[bool] = None
    running_water: Optional[bool] = None
    furniture: Optional[bool] = None
    prepaid_meter: Optional[bool] = None
    wifi: Optional[bool] = None
    location: Optional[str] = Field(None, min_length=1, max_length=100, description=(
        "Case- and accent-insensitive word match on the location: every word you type must start a word of the "
        "listing's location (at least 3 letters, or the whole word), e.g. 'lekk ph' finds 'Lekki Phase 1', "
        "'bogota' finds 'Bogotá'"))
    near: Optional[str] = Field(None, description="'lat,lng' — only listings within radius_km of this point")
    radius_km: float = Field(5.0, gt=0, le=100, description="Radius for near=, kilometres (default 5, max 100; only with near=)")
    agent_id: Optional[int] = Field(None, ge=1, le=MAX_ID)
    sort: SortOrder = "newest"
    q: Optional[str] = Field(None, min_length=1, max_length=Q_MAX_CHARS, description=(
        f"Keywords: every word must be a whole word of the title, location or description, case- and "
        f"accent-insensitive ('ikoyi pool' finds 'Pool house in Ìkòyí'); at most {Q_MAX_WORDS} words, "
        f"{Q_MAX_CHARS} characters; common words ('the', 'in', ...) are ignored"))
    bbox: Optional[str] = Field(None, max_length=120, description=(
        "'minLng,minLat,maxLng,maxLat' — only listings whose map position is inside this box (not with near=; "
        "boxes across the antimeridian are refused: send two searches)"))
    category_id: Optional[int] = Field(None, ge=1, le=MAX_ID, description="Only listings of this category")

    _near = field_validator("near")(parse_near)
    _bbox = field_validator("bbox")(parse_bbox)

    @field_validator("q")
    @classmethod
    def _q(cls, v):
        if v is None:
            return v
        words = keyword_words(v)
        if not words:
            raise ValueError("needs at least one word that is not a common word like 'the' or 'in'")
        if len(set(words)) > Q_MAX_WORDS:
            raise ValueError(f"at most {Q_MAX_WORDS} words")
        return v

    @model_validator(mode="after")
    def _range(self):
        check_price_range(self.price_min, self.price_max)
        if self.near is not None and self.bbox is not None:
            raise FieldError("bbox", "send near= or bbox=, not both")
        check_radius(self)
        return self

    @property
    def bbox_box(self) -> tuple[float, float, float, float] | None:
        if self.bbox is None:
            return None
        min_lng, min_lat, max_lng, max_lat = (float(p) for p in self.bbox.split(","))
        return min_lng, min_lat, max_lng, max_lat

    @property
    def near_point(self) -> tuple[float, float] | None:
        if self.near is None:
            return None
        lat, lng = (float(p) for p in self.near.split(","))
        return lat, lng


# ---- responses (the serializer validates every body through these; they are its schema) ----------
class GeoOut(ResponseModel):
    lat: float
    lng: float


class ImageOut(ResponseModel):
    id: int
    url: MediaUrl
    is_primary: bool
    # [enhancement] `url` is what listings display: the enhanced file once an enhancement completed
    original_url: MediaUrl = Field(description="The image as uploaded (kept when an enhancement replaces `url`)")
    enhanced_url: Optional[MediaUrl] = Field(description="The last completed enhancement's file; null before one")
    enhancement_status: Optional[Literal["pending", "processing", "completed", "failed", "timeout"]] = Field(
        description="The image's latest enhancement (POST .../images/{image_id}/enhance); null when never enhanced")


class PriceChangeOut(ResponseModel):
    old_price: MoneyText
    new_price: MoneyText
    changed_at: Timestamp


class PropertyOut(ResponseModel):
    """A listing. `price` is a decimal string with two decimals (naira)."""

    id: int
    title: str
    description: str
    price: MoneyText
    is_negotiable: bool
    location: str
    geo: Optional[GeoOut]
    property_type: PropertyType
    listing_type: ListingType
    status: PropertyStatus
    is_active: bool = Field(description=(
        "false once delisted (only its agent and admins still see it), also while its agent's account is deactivated"))
    hidden_reason: Optional[Literal["agent_inactive"]] = Field(None, description=(
        "agent_inactive: unlisted because its agent's account was deactivated (admins see it); reactivating the "
        "account lists it again. null otherwise, including a listing its agent or staff unlisted"))
    bedroom: int
    bathroom: int
    furnished: bool
    air_condition: bool
    pop_ceiling: bool
    floor_tiles: bool
    running_water: bool
    furniture: bool
    prepaid_meter: bool
    wifi: bool
    images: list[ImageOut]
    agent_id: int
    category_id: Optional[int] = Field(description="null when the listing has no category")
    price_history: list[PriceChangeOut] = Field(description="price changes, oldest first (the last 50)")
    created_at: Timestamp
    updated_at: Timestamp
    featured_until: Optional[Timestamp] = Field(None, description=(
        "A paid featured promotion: listed first in search until then; null when not featured"))
    bumped_at: Optional[Timestamp] = Field(None, description=(
        "The last paid bump, which moved the listing to the top of the newest-first order; null when never bumped"))


class ImageAdded(ResponseModel):
    image: ImageOut
    property: PropertyOut


class FavouriteOut(ResponseModel):
    id: int
    property_id: int
    created_at: Timestamp


class FavouriteItem(FavouriteOut):
    property: Optional[PropertyOut] = Field(description="null once the listing is delisted")


class AgentWithListings(PublicAgent):
    """An agent's public profile plus up to 50 of their available listings, newest first."""

    listings: list[PropertyOut]
