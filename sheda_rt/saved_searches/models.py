"""Request and response models of /api/v1/saved-searches.

A saved search's `query` is parsed by the very model GET /properties uses (SearchQuery), so a
filter means the same thing, and is refused for the same reasons, in both places. Only what makes
no sense in a stored search is refused on top: a page position (`cursor`), a status other than
`available` (alerts are about listings one can rent or buy), a query without any filter (it
would alert on every listing in the country) and a location without a word (it would never alert).
"""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from sheda_rt.errors import FieldError
from sheda_rt.guided.models import GuidedAnswers
from sheda_rt.listings.models import ListingType, PropertyType, SearchQuery, SortOrder
from sheda_rt.responses import MoneyText, ResponseModel, Timestamp
from sheda_rt.search import location_words

AlertMode = Literal["instant", "daily", "off"]
MAX_NAME = 100

#: Fields of SearchQuery that are about presenting a page, not about which listings match.
PAGE_FIELDS = ("cursor", "limit", "sort")


class SavedSearchQuery(SearchQuery):
    """The filters of GET /api/v1/properties (same names, same rules), as a JSON object."""

    @field_validator("location")
    @classmethod
    def _has_words(cls, value):
        # GET /properties answers such a location with no listings (sheda_rt/listings/service.py plan: facet "w:"); a
        # saved one would be a search that can never alert, kept silently in one of the user's 20 places.
        if value is not None and not location_words(value):
            raise ValueError("needs at least one word (letters or digits): a location of only spaces or punctuation "
                             "matches no listing")
        return value

    @model_validator(mode="after")
    def _storable(self):
        if self.cursor is not None:
            raise FieldError("cursor", "a saved search holds filters, not a page position: leave out cursor")
        if self.status != "available":
            raise FieldError("status", "alerts are about listings one can rent or buy: status can only be 'available'")
        if not (self.model_fields_set - set(PAGE_FIELDS) - {"status", "radius_km"}):
            raise ValueError("give at least one filter (e.g. location, listing_type, price_max)")
        return self

    def stored(self) -> dict:
        """What is kept: the filters as sent (normalised), without page fields and defaults left unsaid."""
        return self.model_dump(mode="json", exclude_unset=True, exclude={"cursor", "limit"})


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class SavedGuidedAnswers(GuidedAnswers):
    """Answers of the guided search (POST /api/v1/search/guided); at least one."""

    @model_validator(mode="after")
    def _some(self):
        if not (self.what or self.budget or self.where):
            raise ValueError("answer at least one of what, budget, where")
        return self


def _one_of(model, partial: bool):
    given = [name for name in ("query", "guided") if getattr(model, name) is not None]
    if len(given) > 1:
        raise ValueError("send query (filters) or guided (answers), not both")
    if not given and not partial:
        raise ValueError("send query (the filters of GET /properties) or guided (answers of the guided search)")


class SavedSearchCreate(_Body):
    name: str = Field(min_length=1, max_length=MAX_NAME, examples=["2-bed in Lekki under ₦3m"])
    query: Optional[SavedSearchQuery] = Field(None, description="The filters of GET /api/v1/properties, e.g. "
                                              "{\"location\": \"lekki\", \"listing_type\": \"rent\", \"price_max\": \"3000000\"}")
    guided: Optional[SavedGuidedAnswers] = Field(None, description=(
        "Instead of query: answers of the guided search ({\"what\": \"rent:apartment\", \"budget\": \"b:0-2000000\", "
        "\"where\": \"lekki\"}); alerts come for its exact matches (near misses never alert)"))
    alert: AlertMode = Field("instant", description="instant: a notification (socket, push) per new match; daily: one email a day "
                                                    "with the day's matches; off: no alerts")

    @model_validator(mode="after")
    def _which(self):
        _one_of(self, partial=False)
        return self


class SavedSearchUpdate(_Body):
    """Any subset of the fields; a new `query` replaces the old one whole."""

    name: Optional[str] = Field(None, min_length=1, max_length=MAX_NAME)
    query: Optional[SavedSearchQuery] = None
    guided: Optional[SavedGuidedAnswers] = Field(None, description="Replaces the filters with guided answers (and query the answers)")
    alert: Optional[AlertMode] = None

    @model_validator(mode="after")
    def _something(self):
        if not self.model_fields_set:
            raise ValueError("send at least one of name, query, guided, alert")
        for name in self.model_fields_set:
            if getattr(self, name) is None:
                raise FieldError(name, f"{name} cannot be null")  # the 422 names the field, not the body
        _one_of(self, partial=True)
        return self


class SavedFiltersOut(ResponseModel):
    """The stored filters: only those that were given (names and meaning as on GET /properties)."""

    price_min: Optional[MoneyText] = None
    price_max: Optional[MoneyText] = None
    property_type: Optional[PropertyType] = None
    listing_type: Optional[ListingType] = None
    status: Optional[Literal["available"]] = None
    bedroom_min: Optional[int] = None
    bathroom_min: Optional[int] = None
    furnished: Optional[bool] = None
    air_condition: Optional[bool] = None
    pop_ceiling: Optional[bool] = None
    floor_tiles: Optional[bool] = None
    running_water: Optional[bool] = None
    furniture: Optional[bool] = None
    prepaid_meter: Optional[bool] = None
    wifi: Optional[bool] = None
    location: Optional[str] = None
    near: Optional[str] = None
    radius_km: Optional[float] = None
    agent_id: Optional[int] = None
    sort: Optional[SortOrder] = None
    q: Optional[str] = None
    bbox: Optional[str] = None
    category_id: Optional[int] = None


class GuidedAnswersOut(ResponseModel):
    what: Optional[str] = None
    budget: Optional[str] = None
    where: Optional[str] = None


class SavedSearchOut(ResponseModel):
    id: int
    name: str
    query: SavedFiltersOut = Field(description="The filters it matches with (for guided answers: those of their exact matches)")
    guided: Optional[GuidedAnswersOut] = Field(None, description="The guided answers it was saved from; null for filters")
    alert: AlertMode
    created_at: Timestamp
    updated_at: Timestamp
