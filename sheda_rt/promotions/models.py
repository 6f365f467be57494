"""Request and response models of promotions: they validate input and are the OpenAPI schemas."""
from __future__ import annotations

import re
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, StrictInt, model_validator

from sheda_rt.errors import FieldError, ValidationFailed
from sheda_rt.pagination import PageQuery
from sheda_rt.responses import MoneyText, ResponseModel, Timestamp

PromotionKind = Literal["featured", "bump"]
FEATURED_DAYS_CEILING = 365  # the model's bound; PROMOTION_FEATURED_MAX_DAYS (at most this) is the service's

IDEMPOTENCY_HEADER = "Idempotency-Key"
_KEY = re.compile(r"[\x21-\x7e]{1,200}")  # visible ASCII, as the header's IETF draft allows for a UUID or similar


def idempotency_key(value: str | None) -> str:
    """The request's Idempotency-Key header, checked (422 naming the header when missing or malformed)."""
    if value is None or not value.strip():
        raise ValidationFailed.single(IDEMPOTENCY_HEADER, "this header is required: a new unique value (e.g. a UUID) for "
                                                          "each promotion you buy; send the same value again when you retry, "
                                                          "and you are charged once")
    if not _KEY.fullmatch(value.strip()):
        raise ValidationFailed.single(IDEMPOTENCY_HEADER, "must be 1 to 200 visible ASCII characters (e.g. a UUID)")
    return value.strip()


class PromotionCreate(BaseModel):
    """`{"kind": "featured", "days": N}` lists the property first in search for N days (added to any featured
    days it still has); `{"kind": "bump"}` moves it to the top of the newest-first order once."""

    model_config = ConfigDict(extra="forbid")

    kind: PromotionKind
    days: Optional[StrictInt] = Field(None, ge=1, le=FEATURED_DAYS_CEILING,
                                      description="featured only, and required there: how many days (1 to PROMOTION_FEATURED_MAX_DAYS)")

    @model_validator(mode="after")
    def _days(self):
        # FieldError: the 422 names `days` (the field to fix), not the whole body
        if self.kind == "featured" and self.days is None:
            raise FieldError("days", "is required for a featured promotion")
        if self.kind == "bump" and self.days is not None:
            raise FieldError("days", "a bump has no days; send {\"kind\": \"bump\"}")
        return self


class PromotionQuery(PageQuery):
    model_config = ConfigDict(extra="forbid")


class PromotionOut(ResponseModel):
    """A paid promotion. The same Idempotency-Key again answers this same body, charging nothing more."""

    id: int
    property_id: int
    kind: PromotionKind
    days: Optional[int] = Field(description="featured: the days bought; null for a bump")
    amount: MoneyText = Field(description="what the wallet paid, naira")
    currency: Literal["NGN"]
    status: Literal["applied", "refunded"] = Field(description="applied: paid and in effect on the listing; refunded: an admin "
                                                   "refunded its spend and it ended (what was left of its featured days left the listing)")
    transaction_id: int = Field(description="the wallet ledger transaction that paid it (GET /wallet/transactions)")
    featured_until: Optional[Timestamp] = Field(description="featured: the listing is first in search until then (null for a bump)")
    bumped_at: Optional[Timestamp] = Field(description="bump: the moment the listing went to the top of 'newest' (null for featured)")
    created_at: Timestamp
    applied_at: Timestamp
    refunded_at: Optional[Timestamp] = Field(description="refunded: when an admin refunded it; null otherwise")
    refund_transaction_id: Optional[int] = Field(description="refunded: the ledger transaction that gave the money back; null otherwise")
