"""Guided search: the answers a client sends, the option ids they name, and the response shapes.

Option ids are short strings a client passes back as they came:
- what: `<rent|sale>:<kind>` where kind is a property type with spaces as hyphens
  (`rent:apartment`, `sale:shared-apartment`) or `any` (`rent:any`);
- budget: `b:<from>-<to>` in whole naira, a price band above `from` up to and including `to`
  (`b:0-2000000`, `b:2000000-5000000`), or `b:<from>-` with no upper end;
- where: an area's slug (`lekki-phase-1`), one of the areas the questions offer now; the area's name in any
  case or spacing ("Lekki Phase 1", " YABA ") is taken as its slug, made as the catalog makes ids.
What and budget ids say what they mean, so any well-formed one is answerable (a band
offered yesterday still works today); a where id needs the area's current listings
(its spellings and map position), so only an offered one is.
"""
from __future__ import annotations

import re
from typing import Literal, Optional, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator

from sheda_rt.guided.areas import WHERE_MAX, WHERE_PATTERN, check_where, where_id
from sheda_rt.listings.models import PropertyOut, PropertyType, SortOrder
from sheda_rt.listings.money import MAX_AMOUNT
from sheda_rt.pagination import PageQuery
from sheda_rt.responses import ResponseModel

KINDS = {t.replace(" ", "-"): t for t in get_args(PropertyType)}  # id spelling -> property_type
LISTING_TYPES = ("rent", "sale")
WHAT_PATTERN = r"^(rent|sale):(any|" + "|".join(sorted(KINDS)) + r")$"
BUDGET_PATTERN = r"^b:([0-9]{1,13})-([0-9]{1,13})?$"

_WHAT = re.compile(WHAT_PATTERN)
_BUDGET = re.compile(BUDGET_PATTERN)


def parse_what(option: str) -> tuple[str, str | None]:
    """`rent:apartment` -> ("rent", "apartment"); `sale:any` -> ("sale", None)."""
    match = _WHAT.fullmatch(option)
    if not match:
        raise ValueError(f"unknown option {option!r}: one of the what question's ids, like 'rent:apartment' or 'sale:any'")
    kind = match.group(2)
    return match.group(1), (None if kind == "any" else KINDS[kind])


def what_id(listing_type: str, property_type: str | None) -> str:
    return f"{listing_type}:{property_type.replace(' ', '-') if property_type else 'any'}"


def parse_budget(option: str) -> tuple[int, int | None]:
    """`b:2000000-5000000` -> (200000000, 500000000) in kobo: above the first, up to the second (None: no end)."""
    match = _BUDGET.fullmatch(option)
    if not match:
        raise ValueError(f"unknown option {option!r}: one of the budget question's ids, like 'b:0-2000000' or 'b:5000000-'")
    lo, hi = int(match.group(1)), (int(match.group(2)) if match.group(2) is not None else None)
    if lo > MAX_AMOUNT or (hi is not None and (hi <= lo or hi > MAX_AMOUNT)):
        raise ValueError(f"unknown option {option!r}: the band must run upwards within ₦{int(MAX_AMOUNT):,}")
    return lo * 100, (hi * 100 if hi is not None else None)


def budget_id(lo_kobo: int, hi_kobo: int | None) -> str:
    return f"b:{lo_kobo // 100}-{hi_kobo // 100 if hi_kobo is not None else ''}"


def _check_option(cls, v, info):
    """A readable 422 naming the option (the fields' patterns are for the document); a budget
    band must also run upwards within the money bounds, which no pattern says."""
    if isinstance(v, str):
        if info.field_name == "where":  # an area's name in any case or spacing is its id: "Yaba" is `yaba`
            v = where_id(v)
        {"what": parse_what, "budget": parse_budget, "where": check_where}[info.field_name](v)
    return v


class GuidedAnswers(BaseModel):
    """Each answer is optional: an unanswered question does not narrow the search."""

    model_config = ConfigDict(extra="forbid")

    what: Optional[str] = Field(None, max_length=40, pattern=WHAT_PATTERN,
                                description="Rent or buy and the kind of home: an id of the `what` question ('rent:apartment')")
    budget: Optional[str] = Field(None, max_length=40, pattern=BUDGET_PATTERN,
                                  description="A price band in naira: an id of the `budget` question ('b:0-2000000')")
    where: Optional[str] = Field(None, max_length=WHERE_MAX, pattern=WHERE_PATTERN,
                                 description="An area: an id of the `where` question ('lekki-phase-1'), or its name in any case ('Lekki Phase 1')")

    _known = field_validator("what", "budget", "where", mode="before")(_check_option)


class GuidedSearchBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    answers: GuidedAnswers = Field(default_factory=GuidedAnswers)


class GuidedPageQuery(PageQuery):
    """Pages as on GET /properties: `limit`, and `cursor` from the previous page's `next_cursor`."""

    model_config = ConfigDict(extra="forbid")

    sort: SortOrder = Field("price_asc", description=(
        "Order within each fit group (exact matches, then each kind of near miss); cheapest first by default, "
        "so the smallest overshoot comes first among those over budget"))


class QuestionsQuery(BaseModel):
    """Optional answers so far: the other questions' options and counts are then those of the
    listings that fit them (budget bands of rentals in Lekki, say)."""

    model_config = ConfigDict(extra="forbid")

    what: Optional[str] = Field(None, max_length=40, pattern=WHAT_PATTERN, description="An id of the `what` question")
    where: Optional[str] = Field(None, max_length=WHERE_MAX, pattern=WHERE_PATTERN, description="An id of the `where` question")

    _known = field_validator("what", "where", mode="before")(_check_option)


# ---- responses -------------------------------------------------------------------------------
class OptionOut(ResponseModel):
    id: str = Field(description="What to send back as the answer")
    label: str
    count: int = Field(description="Listings available now that fit this option (and the answers sent as query parameters)")


class QuestionOut(ResponseModel):
    id: Literal["what", "budget", "where"]
    text: str
    options: list[OptionOut]


class QuestionsOut(ResponseModel):
    questions: list[QuestionOut]
    as_of: str = Field(description="When the listings these options count were last read (they lag by up to "
                                   "GUIDED_REFRESH_SECONDS plus one refresh)")


class MatchOut(ResponseModel):
    exact: bool = Field(description="true when the listing fits every answer")
    reasons: list[str] = Field(description="For a near miss, how it misses: '₦200k over budget', '2 km outside Lekki'")


class GuidedItem(PropertyOut):
    """A listing as GET /properties returns it, plus how it fits the answers."""

    match: MatchOut
