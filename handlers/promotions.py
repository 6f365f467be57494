"""/api/v1/properties/{id}/promotions: a thin edge over PromotionService."""
from __future__ import annotations

from handlers.base import APIHandler
from handlers.routing import endpoint, route
from sheda_rt.accounts.auth import AGENT, USER
from sheda_rt.promotions.models import IDEMPOTENCY_HEADER, PromotionCreate, PromotionOut, PromotionQuery, idempotency_key
from sheda_rt.responses import Page

TAGS = ("promotions",)


class PromotionsHandler(APIHandler):
    @endpoint("Promote a listing: featured for N days, or a bump (its agent pays from their wallet)", auth=AGENT,
              body=PromotionCreate, response=PromotionOut, status=201, errors=(401, 402, 403, 404, 409, 422), tags=TAGS)
    async def post(self, property_id: int, body: PromotionCreate):
        """Header `Idempotency-Key` (required; 422 naming it when missing): a new unique value (e.g. a UUID) per
        promotion. A retry with the same key (and the same body) charges nothing more and answers the same 201 body;
        the same key with another body is 409 `idempotency_key_reused`.

        `{"kind": "featured", "days": N}` (N required, 1 to PROMOTION_FEATURED_MAX_DAYS) costs N x
        PROMOTION_FEATURED_PRICE_PER_DAY: the listing comes first in every search, in the search's own order,
        until `featured_until` (more days while featured extend it). `{"kind": "bump"}` costs PROMOTION_BUMP_PRICE:
        the listing goes to the top of the `newest` order once. The listing's own agent only (403 `not_owner`),
        listed and available (409 `property_not_available`). 402 `insufficient_funds` (with `balance` and
        `required`) when the wallet cannot pay: nothing charged, nothing promoted, and the same key may be sent
        again after a top-up. Watchers of `property:<id>` get `property.updated` when a promotion starts or ends."""
        key = idempotency_key(self.request.headers.get(IDEMPOTENCY_HEADER))
        return await self.ctx.promotions.promote(self.principal, property_id, body, key)

    @endpoint("A listing's promotions, newest first (its agent or an admin)", auth=USER, query=PromotionQuery,
              response=Page[PromotionOut], errors=(401, 403, 404, 422), tags=TAGS)
    async def get(self, property_id: int, query: PromotionQuery):
        """Cursor paginated: every promotion bought for the listing and applied, as its POST answered it
        (`featured_until` there is where that purchase left the listing's featured days); one an admin refunded
        says `status: "refunded"` with `refunded_at` and `refund_transaction_id`. 403 `not_owner` for
        anyone but the listing's agent and admins (an unlisted listing is 404 to them, as everywhere)."""
        return await self.ctx.promotions.listing_promotions(self.principal, property_id, query)


default_handlers = [
    route("/api/v1/properties/{property_id:int}/promotions", PromotionsHandler),
]
