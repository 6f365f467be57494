"""Paid promotions of a listing, bought by its agent from their wallet (issue 18 §2).

- `featured` for N days: the listing is listed first in every search (sheda_rt/promotions/featured.py)
  until `featured_until`; days bought while it is still featured add to the end of them.
- `bump`: the listing's `newest_at` becomes now, so it tops the newest-first order once (until newer
  listings or bumps pass it); its `created_at` stays what it was.

Who: the listing's own agent with an agent-scoped token (their wallet pays); it must be listed and
available (409 `property_not_available` otherwise: a sold, rented or unlisted one gains nothing).

Money and crash safety. A request carries an `Idempotency-Key`; per payer, a key names one promotion:

1. the promotion is stored `pending` under (payer, key) — a retry, or a racing duplicate, finds it;
2. the wallet is charged with the wallet key "promotion:<promotion id>" (WalletService.spend: once per
   user and key, whatever happens around it; 402 `insufficient_funds` deletes the pending promotion,
   so nothing is charged and nothing promoted, and the key may be used again after a top-up; a retry
   with the same key that was charging it at that moment, the wallet topped up meanwhile, puts the
   record back as it marks it applied, see _mark);
3. the listing is changed, guarded by the promotion's id kept in the listing's `promotion_ids` (so
   applying twice changes it once) and, for featured days, which add search facets, by its revision;
   `property.updated` is announced;
4. the promotion becomes `applied` with its outcome, which every retry with the key answers again.

A process that dies between 1 and 4 leaves a pending promotion. The promotions job (PromotionJob,
every PROMOTION_JOB_INTERVAL_MINUTES) finishes those whose charge exists (steps 2-4 again: the
charge is found, not repeated) and drops those without one after ABANDON_AFTER, and ends featured
listings whose days ran out. A retry by the client finishes a pending one at once (and one charged
at the very moment the job dropped it gets its record back, applied: see _mark).

Once charged, a promotion is applied even if the listing was sold or unlisted in the moment between
the check and the write: the money bought the placement, which comes back with the listing.

An admin's refund of the spend (WalletService.refund, wired to `refunded`) ends the promotion: its record
gets `refund` "refunding" (once), the listing records it in `withdrawn_promotion_ids` under its revision
while what is left of its featured days leaves `featured_until` (a promotion withdrawn before it applied
never applies: _apply and apply_bump check that list), then `refund` "refunded". A retry of the refund or
the job finishes one cut short.
"""
from __future__ import annotations

import logging
from datetime import timedelta
from decimal import Decimal
from typing import TYPE_CHECKING

from sheda_rt.clock import format_ts
from sheda_rt.errors import Conflict, Forbidden, NotFound, ValidationFailed
from sheda_rt.listings.money import format_money
from sheda_rt.promotions.models import PromotionCreate
from sheda_rt.wallet.service import InsufficientFunds

if TYPE_CHECKING:  # types only: the context wires these in
    from sheda_rt.clock import Clock
    from sheda_rt.listings.service import PropertyService
    from sheda_rt.listings.store import PropertyStore
    from sheda_rt.promotions.store import PromotionStore
    from sheda_rt.wallet.service import WalletService

log = logging.getLogger("sheda.promotions")

#: A pending promotion younger than this may still be in its request's hands; the job leaves it.
PENDING_GRACE = timedelta(minutes=1)
#: A pending promotion this old without a charge never got one (its request died first): dropped.
ABANDON_AFTER = timedelta(minutes=10)
#: Promotion ids a listing keeps (the guard against applying one twice needs only the recent ones).
KEEP_IDS = 50
APPLY_TRIES = 10


def to_kobo(naira: Decimal) -> int:
    return int((Decimal(naira) * 100).to_integral_value())


def promotion_view(doc: dict) -> dict:
    return {
        "id": doc["_id"],
        "property_id": doc["property_id"],
        "kind": doc["kind"],
        "days": doc.get("days"),
        "amount": format_money(Decimal(doc["amount_minor"]).scaleb(-2)),
        "currency": "NGN",
        "status": "refunded" if doc.get("refund") else doc["state"],
        "transaction_id": doc["transaction_id"],
        "featured_until": format_ts(doc["featured_until"]) if doc.get("featured_until") else None,
        "bumped_at": format_ts(doc["bumped_at"]) if doc.get("bumped_at") else None,
        "created_at": format_ts(doc["created_at"]),
        "applied_at": format_ts(doc["applied_at"]),
        "refunded_at": format_ts(doc.get("refunded_at")),
        "refund_transaction_id": doc.get("refund_transaction_id"),
    }


class PromotionService:
    def __init__(self, store: PromotionStore, *, properties: PropertyStore, listings: PropertyService, wallet: WalletService,
                 clock: Clock, featured_price_per_day: Decimal,
                 bump_price: Decimal, featured_max_days: int):
        self.store = store
        self.properties = properties  # the listing's promotion fields, written under its revision
        self.listings = listings  # who may promote (managed), and property.updated (announce)
        self.wallet = wallet  # pays: spend once per promotion; `spent` answers the job's "was it charged?"
        self.clock = clock
        self.featured_kobo_per_day = to_kobo(featured_price_per_day)
        self.bump_kobo = to_kobo(bump_price)
        self.featured_max_days = featured_max_days

    @staticmethod
    def wallet_key(promotion_id: int) -> str:
        return f"promotion:{promotion_id}"

    def price(self, body: PromotionCreate) -> int:
        if body.kind == "bump":
            return self.bump_kobo
        if body.days > self.featured_max_days:
            raise ValidationFailed.single("days", f"at most {self.featured_max_days} days in one promotion")
        return self.featured_kobo_per_day * body.days

    # ---- buying --------------------------------------------------------------
    async def promote(self, principal, property_id: int, body: PromotionCreate, key: str) -> dict:
        """Buy `body` for the listing, once per (payer, key): a retry answers what the first did."""
        existing = await self.store.by_key(principal.user_id, key)
        if existing is not None:
            return await self._replay(existing, property_id, body)
        doc = await self.listings.visible(property_id, principal)
        if doc["agent_id"] != principal.user_id or "agent" not in principal.scopes:
            raise Forbidden("Only the listing's agent can promote it (their wallet pays)", "not_owner")
        if not doc.get("is_active", True) or doc["status"] != "available":
            state = doc["status"] if doc.get("is_active", True) else "unlisted"
            raise Conflict(f"A {state} listing cannot be promoted", "property_not_available", extra={"status": state})
        amount = self.price(body)
        promo = await self.store.insert_pending({
            "user_id": principal.user_id, "key": key, "property_id": property_id, "kind": body.kind, "days": body.days,
            "amount_minor": amount, "created_at": self.clock.now()})
        if promo is None:  # the same key in a request racing this one: both answer its promotion
            return await self._replay(await self.store.by_key(principal.user_id, key), property_id, body)
        return await self._complete(promo)

    async def _replay(self, promo: dict | None, property_id: int, body: PromotionCreate) -> dict:
        if promo is None:  # it was dropped meanwhile (its charge failed): this request's answer is that failure's
            raise Conflict("A request with this Idempotency-Key just failed; send it again", "idempotency_key_in_use")
        if (promo["property_id"], promo["kind"], promo.get("days")) != (property_id, body.kind, body.days):
            raise Conflict("This Idempotency-Key was already used for a different promotion", "idempotency_key_reused")
        if promo["state"] == "applied":  # refunded ones too: never bought again by their key
            return promotion_view(promo)
        return await self._complete(promo)

    async def _complete(self, promo: dict) -> dict:
        """Steps 2-4 of the module docstring for a pending promotion; safe to run twice at once."""
        what = f"Featured listing, {promo['days']} days" if promo["kind"] == "featured" else "Listing bump"
        try:
            charge = await self.wallet.spend(
                promo["user_id"], promo["amount_minor"], idempotency_key=self.wallet_key(promo["_id"]), kind="spend:promotion",
                memo=f"{what}: property {promo['property_id']}",
                refs={"promotion_id": promo["_id"], "property_id": promo["property_id"]})
        except InsufficientFunds:
            await self.store.discard_pending(promo["_id"])
            raise
        return await self._apply(promo, charge["id"])

    async def _apply(self, promo: dict, transaction_id: int) -> dict:
        if promo["kind"] == "bump":  # one atomic write, guarded by the promotion's id alone
            now = self.clock.now()
            updated = await self.properties.apply_bump(promo["property_id"], promo["_id"], now, KEEP_IDS)
            if updated is not None:
                await self.listings.announce(updated, ["bumped_at"])
                # this bump's moment (a racing later bump may already show on the listing)
                return await self._mark(promo, {**updated, "bumped_at": now}, transaction_id, now)
            doc = await self.properties.get(promo["property_id"])  # no match: applied already, or no such listing
            if doc is None:  # listings are never deleted; only a database edited by hand gets here
                raise NotFound("No such property", "property_not_found")
            return await self._mark(promo, doc, transaction_id, now)
        for _attempt in range(APPLY_TRIES):
            doc = await self.properties.get(promo["property_id"])
            if doc is None:  # listings are never deleted; only a database edited by hand gets here
                raise NotFound("No such property", "property_not_found")
            now = self.clock.now()
            if promo["_id"] in doc.get("promotion_ids", []) or promo["_id"] in doc.get("withdrawn_promotion_ids", []):
                # applied by a retry or the job already, or refunded (withdrawn) before it was applied
                return await self._mark(promo, doc, transaction_id, now)
            # Featured: the facets gain their "f:" copies, so the write names the revision it read.
            start = max(doc.get("featured_until") or now, now)
            changes = {"featured_until": start + timedelta(days=promo["days"])}
            updated = await self.properties.update_if_rev(doc["_id"], doc.get("rev", 1), {**doc, **changes}, changes, [],
                                                          push={"promotion_ids": promo["_id"]}, keep=KEEP_IDS)
            if updated is not None:
                await self.listings.announce(updated, ["featured_until"])
                return await self._mark(promo, updated, transaction_id, now)
        # Paid, not yet applied: the same Idempotency-Key again (or the job within a minute) finishes it.
        raise Conflict("The listing is being changed by someone else; send the same request again (you will not be "
                       "charged twice)", "concurrent_update")

    async def _mark(self, promo: dict, listing: dict, transaction_id: int, now) -> dict:
        fields = {"transaction_id": transaction_id, "applied_at": now}
        if promo["kind"] == "featured":
            fields["featured_until"] = listing.get("featured_until")
        else:
            fields["bumped_at"] = listing.get("bumped_at")
        done = await self.store.mark_applied(promo["_id"], fields)
        if done is None:
            # Charged, but dropped as never charged in that instant: a racing request with the same key got a 402
            # just before the wallet was topped up, or the job gave up on it. The charge names this promotion, so
            # its record comes back, applied (never a charge without its promotion, nor a 500).
            done = await self.store.restore_applied(promo, fields)
            log.warning('{"event": "promotion_restored", "promotion_id": %d, "transaction_id": %d}', promo["_id"],
                        transaction_id)
        if done is None:
            log.error('{"event": "promotion_charged_without_record", "promotion_id": %d, "transaction_id": %d}',
                      promo["_id"], transaction_id)
            raise Conflict("A request with this Idempotency-Key just failed; send it again", "idempotency_key_in_use")
        return promotion_view(done)

    # ---- an admin's refund ---------------------------------------------------------
    async def refunded(self, spend: dict, refund: dict) -> None:
        """The promotion's spend was refunded (WalletService.refund, after the money moved; again on every repeat
        of the request): the promotion ends. Its record's `refund` becomes "refunding" (once: a conditional write),
        the listing gives back what is left of it (_withdraw), and `refund` becomes "refunded". A request cut short
        between the steps is finished by asking for the refund again or by the promotions job."""
        promotion_id = (spend.get("refs") or {}).get("promotion_id")
        promo = await self.store.get(promotion_id) if isinstance(promotion_id, int) else None
        if promo is None:
            log.warning('{"event": "refund_without_promotion", "transaction_id": %d}', spend["_id"])
            return
        if promo.get("refund") is None:
            now = self.clock.now()
            # A pending one (its request still charging, or cut short) is ended before it ever applies: the
            # listing's withdrawn mark below keeps it from applying later (_apply, PropertyStore.apply_bump).
            await self.store.begin_refund(promo["_id"], {
                "refund_transaction_id": refund["_id"], "refunded_at": now,
                "transaction_id": promo.get("transaction_id", spend["_id"]), "applied_at": promo.get("applied_at", now)})
            promo = await self.store.get(promo["_id"])
        if promo is not None and promo.get("refund") == "refunding":
            await self._withdraw(promo)
            await self.store.finish_refund(promo["_id"])

    async def _withdraw(self, promo: dict) -> None:
        """The listing gives back a refunded promotion, once (its id joins `withdrawn_promotion_ids`, under the
        listing's revision, so a racing expiry, edit or second refund re-reads). Featured: the part of its days
        still ahead leaves `featured_until` (alone, the listing is no longer featured; stacked, the days bought
        after it move up); days already over, or a listing no longer featured, give back nothing. A bump's
        moment is not undone (newer listings pass it as ever); it is only kept from applying later."""
        for _attempt in range(APPLY_TRIES):
            doc = await self.properties.get(promo["property_id"])
            if doc is None or promo["_id"] in doc.get("withdrawn_promotion_ids", []):
                return
            now = self.clock.now()
            changes: dict = {}
            unset: list[str] = []
            until = doc.get("featured_until")
            if promo["kind"] == "featured" and until is not None and promo["_id"] in doc.get("promotion_ids", []):
                ends = promo.get("featured_until") or until  # where its purchase left the days
                left = max(timedelta(0), min(timedelta(days=promo["days"]), ends - now))
                if until - left <= now:
                    unset = ["featured_until"]
                elif left:
                    changes = {"featured_until": until - left}
            merged = {k: v for k, v in doc.items() if k not in unset} | changes
            updated = await self.properties.update_if_rev(doc["_id"], doc.get("rev", 1), merged, changes, unset,
                                                          push={"withdrawn_promotion_ids": promo["_id"]}, keep=KEEP_IDS)
            if updated is not None:
                if changes or unset:
                    await self.listings.announce(updated, ["featured_until"])
                return
        raise Conflict("The listing is being changed by someone else; send the same refund again (nothing is refunded "
                       "twice)", "concurrent_update")

    async def finish_refunds(self) -> int:
        """Refunds a request left half-way (the money back, the listing not yet given back): finished. How many."""
        finished = 0
        for promo in await self.store.refunding():
            try:
                await self._withdraw(promo)
            except Conflict:  # the next run tries again
                continue
            await self.store.finish_refund(promo["_id"])
            finished += 1
        return finished

    async def listing_promotions(self, principal, property_id: int, page) -> dict:
        """The promotions bought for a listing, newest first: for its agent and admins (403 `not_owner` otherwise;
        404 for an unlisted one, as everywhere, to anyone else)."""
        await self.listings.managed(principal, property_id)
        return await self.store.page(property_id, page, promotion_view)

    # ---- the job ---------------------------------------------------------------
    async def end_featured(self) -> int:
        """Listings whose featured days ran out stop being featured (announced). How many ended."""
        ended = 0
        now = self.clock.now()
        for doc in await self.properties.featured_over(now):
            for _attempt in range(APPLY_TRIES):
                if doc is None or doc.get("featured_until") is None or doc["featured_until"] > now:
                    break  # ended by another process, or featured for longer meanwhile
                merged = {k: v for k, v in doc.items() if k != "featured_until"}
                updated = await self.properties.update_if_rev(doc["_id"], doc.get("rev", 1), merged, {}, ["featured_until"])
                if updated is not None:
                    ended += 1
                    await self.listings.announce(updated, ["featured_until"])
                    break
                doc = await self.properties.get(doc["_id"])
        return ended

    async def finish_pending(self) -> dict:
        """Pending promotions left by a request that died: finished when charged, dropped when not."""
        now = self.clock.now()
        counts = {"finished": 0, "dropped": 0}
        for promo in await self.store.pending_before(now - PENDING_GRACE):
            charge = await self.wallet.spent(promo["user_id"], self.wallet_key(promo["_id"]))
            if charge is None:
                if promo["created_at"] <= now - ABANDON_AFTER:
                    await self.store.discard_pending(promo["_id"])
                    counts["dropped"] += 1
                continue
            try:
                await self._complete(promo)  # the charge is found, not repeated
                counts["finished"] += 1
            except (Conflict, InsufficientFunds):  # the next run tries again
                log.warning("pending promotion %s not finished this run", promo["_id"], exc_info=True)
        return counts
