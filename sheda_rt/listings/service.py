"""Listing rules: who may create, change, delist and see a property; search; images; favourites.

- Agents create (agent scope). Only the owning agent (with an agent-scoped token)
  or an admin changes, delists, or manages images.
- A delisted property is 404 to everyone but its owner and admins, and can no
  longer be searched, booked, contracted or favourited.
- When an agent's account is deactivated (by them, an admin or a moderator), their listed
  listings are unlisted the same way, marked `hidden_reason` "agent_inactive"; reactivating the
  account lists exactly those again (ones the agent or staff unlisted stay unlisted). A durable job
  does it (sheda_rt/listings/agent_status.py).
- `status` follows the contracts and is never set over PATCH.
- The owner or an admin can unlist and list again (`set_active`); a sold or
  rented listing cannot come back (409) until a contract expiry makes it available.
- Every stored change of a listing (PATCH, price, images, unlisting and listing again, a
  contract's status) is announced as `property.updated` on channel `property:<id>` after the
  write (`announce`): the listing as GET returns it and the names of the fields that changed.
- A listing may carry a category (counted into it before the write, so a category
  in use is never deleted: sheda_rt/categories/store.py). Price changes are kept in
  `price_history` (the last PRICE_HISTORY entries).
"""
from __future__ import annotations

import logging
import secrets
from typing import TYPE_CHECKING

from sheda_rt.clock import format_ts
from sheda_rt.errors import Conflict, Forbidden, NotFound
from sheda_rt.listings.models import AMENITIES, FLAGS, PropertyCreate, PropertyUpdate, SearchQuery
from sheda_rt.listings.money import format_money, to_decimal128, to_minor
from sheda_rt.listings.store import SearchPlan, keyword_facet, keyword_words, location_words, word_facet
from sheda_rt.realtime.channels import UnknownChannel
from sheda_rt.responses import public_media_url

if TYPE_CHECKING:  # types only: the context wires these in (runtime imports here would make cycles)
    from sheda_rt.analytics.service import AnalyticsService
    from sheda_rt.categories.service import CategoryService
    from sheda_rt.clock import Clock
    from sheda_rt.database.ids import IdAllocator
    from sheda_rt.listings.store import FavouriteStore, PropertyStore
    from sheda_rt.media.store import MediaStore
    from sheda_rt.realtime.channels import Channels

log = logging.getLogger("sheda.listings")

MAX_IMAGES = 10
PRICE_HISTORY = 50
AGENT_INACTIVE = "agent_inactive"  # hidden_reason of a listing unlisted because its agent's account was deactivated


def alert_marker(reason: str) -> dict:
    """[saved searches] `alert_pending` of a listing, written in the same write as the change that alerts (a new
    listing, a relisting, a price drop): cleared once the change's alert job is queued (before the answer); the
    alerts' sweep queues the job of any marker still there, so a process dying between this write and queueing the
    job loses no alert (sheda_rt/saved_searches/job.py). `id` names the change's job."""
    return {"id": secrets.token_hex(8), "reason": reason}


def is_admin(principal) -> bool:
    return principal is not None and "admin" in principal.scopes and principal.user.get("role") == "admin"


def geo_view(geo: dict | None) -> dict | None:
    if not geo:
        return None
    lng, lat = geo["coordinates"]
    return {"lat": lat, "lng": lng}


def property_view(doc: dict, now=None) -> dict:
    """The listing as clients see it. `now`: featured days over by then show `featured_until` null at once
    (search stops listing them first at that moment; the promotions job clears the field within a minute)."""
    view = {
        "id": doc["_id"],
        "title": doc["title"],
        "description": doc.get("description", ""),
        "price": format_money(doc["price"]),
        "is_negotiable": doc.get("is_negotiable", False),
        "location": doc["location"],
        "geo": geo_view(doc.get("geo")),
        "property_type": doc["property_type"],
        "listing_type": doc["listing_type"],
        "status": doc["status"],
        "is_active": doc.get("is_active", True),
        "hidden_reason": doc.get("hidden_reason"),
        "bedroom": doc.get("bedroom", 0),
        "bathroom": doc.get("bathroom", 0),
    }
    for flag in FLAGS:
        view[flag] = doc.get(flag, False)
    view["images"] = [{"id": i["id"], "url": i["url"], "is_primary": bool(i.get("is_primary")),
                       "original_url": i.get("original_url", i["url"]), "enhanced_url": i.get("enhanced_url"),  # [enhancement]
                       "enhancement_status": i.get("enhancement_status")} for i in doc.get("images", [])]
    view["agent_id"] = doc["agent_id"]
    view["category_id"] = doc.get("category_id")
    view["price_history"] = [{"old_price": format_money(c["old_price"]), "new_price": format_money(c["new_price"]),
                              "changed_at": format_ts(c["changed_at"])} for c in doc.get("price_history", [])]
    view["created_at"] = format_ts(doc["created_at"])
    view["updated_at"] = format_ts(doc["updated_at"])
    # [promotions] paid placement (sheda_rt/promotions/): featured in search until, last bump up "newest"
    featured = doc.get("featured_until")
    view["featured_until"] = format_ts(featured) if featured and (now is None or featured > now) else None
    view["bumped_at"] = format_ts(doc["bumped_at"]) if doc.get("bumped_at") else None
    return view


def _geo_doc(point) -> dict:
    return {"type": "Point", "coordinates": [point.lng, point.lat]}


class PropertyService:
    def __init__(self, store: PropertyStore, favourites: FavouriteStore, *, clock: Clock, ids: IdAllocator, media: MediaStore,
                 channels: Channels, categories: CategoryService, analytics: AnalyticsService, public_base_url: str | None):
        self.store = store
        self.favourites = favourites
        self.clock = clock
        self.ids = ids  # image ids
        self.media = media  # listing photos
        self.channels = channels  # property.updated on property:<id>
        self.categories = categories  # a listing's category is counted in before the write
        self.analytics = analytics  # views and favourites, for the agent's counters
        self.public_base_url = public_base_url  # PUBLIC_BASE_URL: media URLs in announced listings are absolute under it
        # [saved searches] awaited with (listing, "new" | "relisted" | "price_drop") once such a change is stored and before
        # the answer (sheda_rt/saved_searches/job.py: it queues the alert matching); set by the context, None: no alerts
        self.listing_alerts = None

    # ---- access ------------------------------------------------------------
    @staticmethod
    def can_manage(principal, doc: dict) -> bool:
        owner = principal.user_id == doc["agent_id"] and "agent" in principal.scopes
        return owner or is_admin(principal)

    async def visible(self, property_id: int, principal=None) -> dict:
        """The listing if this caller may see it: delisted ones only for their owner and admins."""
        doc = await self.store.get(property_id)
        if doc is None:
            raise NotFound("No such property", "property_not_found")
        if not doc.get("is_active", True):
            if principal is None or not (principal.user_id == doc["agent_id"] or is_admin(principal)):
                raise NotFound("No such property", "property_not_found")
        return doc

    async def authorize_watch(self, user_id: int, property_id: int) -> None:
        """Who may watch channel `property:<id>`: anyone signed in, for a listed property; an
        unlisted one only its agent, as over REST, where it is a 404 to everyone else (so it is
        an unknown channel here, not a forbidden one: its existence is not told)."""
        doc = await self.store.get(property_id)
        if doc is None or not (doc.get("is_active", True) or doc["agent_id"] == user_id):
            raise UnknownChannel(f"No channel 'property:{property_id}': no such property")

    # ---- live updates (channel property:<id>) -------------------------------
    async def announce(self, after: dict | None, changes: list[str], view: dict | None = None) -> None:
        """`property.updated` to whoever watches this listing, on every process, once the change
        is stored. Never fails the caller: the change is stored, and a watcher that missed the
        event (Redis away) refetches over REST when it resubscribes."""
        if after is None or not changes:
            return
        view = view or property_view(after, self.clock.now())
        base = self.public_base_url
        if base:  # the listing exactly as GET shows it: media URLs absolute under PUBLIC_BASE_URL
            view = {**view, "images": [{**i, **{k: public_media_url(i[k], base) for k in ("url", "original_url", "enhanced_url")}}
                                       for i in view["images"]]}
        frame = {"type": "property.updated", "property_id": view["id"], "property": view, "changes": changes}
        try:
            await self.channels.publish("property", view["id"], frame)
        except Exception:
            log.exception("property.updated for %s not published", view["id"])

    async def _changed(self, before: dict | None, after: dict | None) -> dict | None:
        """Announce what differs between two versions of a listing; returns the new view."""
        if after is None:
            return None
        now = self.clock.now()
        view = property_view(after, now)
        old = property_view(before, now) if before is not None else {}
        await self.announce(after, [k for k, v in view.items() if k != "updated_at" and old.get(k) != v], view)
        return view

    @staticmethod
    def editable(doc: dict) -> bool:
        """Whether a listing the caller manages may be changed (PATCH, a new image); True when it is listed.
        An unlisted one may be fixed before it is listed again while it is available; not one hidden because
        its agent's account is deactivated (it follows the account), nor a sold or rented one (it cannot be
        listed again anyway): 409 `property_delisted`."""
        if doc.get("is_active", True):
            return True
        if doc.get("hidden_reason"):
            raise Conflict("This listing is hidden while its agent's account is deactivated and cannot be changed",
                           "property_delisted", extra={"hidden_reason": doc["hidden_reason"]})
        if doc["status"] != "available":
            raise Conflict(f"An unlisted {doc['status']} listing cannot be changed", "property_delisted",
                           extra={"status": doc["status"]})
        return False

    async def managed(self, principal, property_id: int) -> dict:
        doc = await self.visible(property_id, principal)
        if not self.can_manage(principal, doc):
            raise Forbidden("Only the listing's agent or an admin can change it", "not_owner")
        return doc

    # ---- CRUD --------------------------------------------------------------
    async def create(self, principal, body: PropertyCreate) -> dict:
        now = self.clock.now()
        fields = body.model_dump(exclude={"price", "geo"})
        doc = {
            **fields,
            "price": to_decimal128(body.price),
            "price_minor": to_minor(body.price),
            "status": "available",
            "is_active": True,
            "images": [],
            "agent_id": principal.user_id,
            "created_at": now,
            "updated_at": now,
        }
        if body.geo is not None:
            doc["geo"] = _geo_doc(body.geo)
        if self.listing_alerts is not None:
            doc["alert_pending"] = alert_marker("new")
        if body.category_id is None:
            doc.pop("category_id", None)
            return await self._alert(await self.store.insert(doc), "new", property_view)
        await self.categories.take(body.category_id)
        try:
            stored = await self.store.insert(doc)
        except BaseException:
            await self.categories.release(body.category_id)
            raise
        return await self._alert(stored, "new", property_view)

    async def _alert(self, doc: dict, reason: str, view):
        """Saved-search alerts hear of a stored new listing, relisting or price drop; returns `view(doc)`."""
        if self.listing_alerts is not None:
            await self.listing_alerts(doc, reason)
        return view(doc)

    async def get(self, property_id: int, principal=None, client_ip: str | None = None) -> dict:
        """One listing; counts a view of a listed one (once per viewer per day, sheda_rt/analytics)."""
        doc = await self.visible(property_id, principal)
        if doc.get("is_active", True):
            await self.analytics.record_view(doc, principal, client_ip)
        return property_view(doc, self.clock.now())

    async def update(self, principal, property_id: int, body: PropertyUpdate) -> dict:
        for _attempt in range(5):
            doc = await self.managed(principal, property_id)
            listed = self.editable(doc)
            changes: dict = {}
            unset: list[str] = []
            history = None
            now = self.clock.now()
            for name in body.model_fields_set:
                value = getattr(body, name)
                if name == "price":
                    changes["price"], changes["price_minor"] = to_decimal128(value), to_minor(value)
                    if changes["price_minor"] != doc.get("price_minor"):
                        history = {"old_price": doc["price"], "new_price": changes["price"], "changed_at": now}
                elif name in ("geo", "category_id") and value is None:
                    unset.append(name)
                elif name == "geo":
                    changes["geo"] = _geo_doc(value)
                else:
                    changes[name] = value
            changes["updated_at"] = now
            # An unlisted listing's drop alerts nobody: it is off the market (its relisting alerts, "relisted").
            # The write names the revision read, and unlisting and listing again take one, so the listing is
            # still in the state read here when the write lands.
            dropped = listed and history is not None and changes["price_minor"] < doc.get("price_minor", changes["price_minor"])
            if dropped and self.listing_alerts is not None:
                changes["alert_pending"] = alert_marker("price_drop")
            merged = {**{k: v for k, v in doc.items() if k not in unset}, **changes}
            old_cat, new_cat = doc.get("category_id"), merged.get("category_id")
            moved = old_cat != new_cat
            if moved and new_cat is not None:
                await self.categories.take(new_cat)
            try:
                updated = await self.store.update_if_rev(property_id, doc.get("rev", 1), merged, changes, unset,
                                                         push={"price_history": history} if history else None,
                                                         keep=PRICE_HISTORY)
            except BaseException:
                if moved and new_cat is not None:
                    await self.categories.release(new_cat)
                raise
            if updated is not None:
                if moved and old_cat is not None:
                    await self.categories.release(old_cat)
                view = await self._changed(doc, updated)
                if dropped:
                    return await self._alert(updated, "price_drop", lambda _doc: view)
                return view
            if moved and new_cat is not None:  # someone else changed it first: undo our count, read again
                await self.categories.release(new_cat)
        raise Conflict("The listing is being changed by someone else; try again", "concurrent_update")

    async def set_active(self, principal, property_id: int, active: bool) -> dict:
        """Unlist (active=false) or list again (active=true); both idempotent. Listing again needs
        status `available`: the filter of the write says so, so a contract taking the property at
        the same moment leaves it unlisted and the caller gets 409."""
        doc = await self.managed(principal, property_id)
        now = self.clock.now()
        if not active:
            if doc.get("is_active", True) or doc.get("hidden_reason"):  # unlisting a hidden one keeps it unlisted
                await self._changed(doc, await self.store.delist(property_id, now))
            return property_view(await self.store.get(property_id))
        if doc.get("is_active", True):
            return property_view(doc)
        updated = await self.store.relist(property_id, now,
                                          {"alert_pending": alert_marker("relisted")} if self.listing_alerts is not None else None)
        if updated is not None:
            view = await self._changed(doc, updated)
            return await self._alert(updated, "relisted", lambda _doc: view)
        current = await self.store.get(property_id)
        if current is None:
            raise NotFound("No such property", "property_not_found")
        if current.get("is_active", True):  # someone else listed it again meanwhile
            return property_view(current)
        raise Conflict(f"A {current['status']} property cannot be listed again", "property_not_available",
                       extra={"status": current["status"]})

    async def delist(self, principal, property_id: int) -> None:
        doc = await self.managed(principal, property_id)
        after = await self.store.delist(property_id, self.clock.now())
        if doc.get("is_active", True):  # deleting an unlisted one again changes nothing worth telling
            await self._changed(doc, after)

    async def take_down(self, property_id: int) -> bool:
        """A moderator unlists a reported listing (sheda_rt/moderation/service.py): as its agent's
        unlisting, announced to watchers; idempotent. False when there is no such listing."""
        doc = await self.store.get(property_id)
        if doc is None:
            return False
        if doc.get("is_active", True) or doc.get("hidden_reason"):
            await self._changed(doc, await self.store.delist(property_id, self.clock.now()))
        return True

    # ---- an agent's account deactivated or reactivated (sheda_rt/listings/agent_status.py) ---------------
    async def hide_agent_listings(self, agent_id: int, batch: int = 100) -> int:
        """Unlist every listed listing of the agent, marked `hidden_reason` agent_inactive, each announced as
        an unlisting is; returns how many. Idempotent: a run cut short leaves the rest listed and the next run
        goes on with them (the hidden ones no longer match)."""
        return await self._walk_agent(agent_id, None, batch,
                                      lambda pid, now: self.store.delist(pid, now, hidden_reason=AGENT_INACTIVE))

    async def restore_agent_listings(self, agent_id: int, batch: int = 100) -> int:
        """List again exactly the agent's listings hidden by hide_agent_listings; returns how many. No
        saved-search alert: they are not new on the market, they were off it while the account was closed."""
        return await self._walk_agent(agent_id, AGENT_INACTIVE, batch,
                                      lambda pid, now: self.store.relist(pid, now, hidden_reason=AGENT_INACTIVE))

    async def _walk_agent(self, agent_id: int, hidden_reason: str | None, batch: int, write) -> int:
        done, seen = 0, set()
        while True:
            ids = [i for i in await self.store.agent_listing_ids(agent_id, hidden_reason=hidden_reason, limit=batch)
                   if i not in seen]
            if not ids:
                return done
            seen.update(ids)
            before = await self.store.get_many(ids)
            for pid in ids:
                after = await write(pid, self.clock.now())  # conditional: None when someone changed it meanwhile
                if after is not None:
                    done += 1
                    await self._changed(before.get(pid), after)

    # ---- search ------------------------------------------------------------
    def plan(self, q: SearchQuery) -> SearchPlan:
        """Turn filters into a SearchPlan: pick the driving facet, the rest is residual."""
        residual: dict = {"is_active": True}
        if q.listing_type:
            residual["listing_type"] = q.listing_type
        if q.property_type:
            residual["property_type"] = q.property_type
        if q.agent_id is not None:
            residual["agent_id"] = q.agent_id
        if q.bedroom_min is not None:
            residual["bedroom"] = {"$gte": q.bedroom_min}
        if q.bathroom_min is not None:
            residual["bathroom"] = {"$gte": q.bathroom_min}
        for flag in FLAGS:
            value = getattr(q, flag)
            if value is not None:
                residual[flag] = value
        if q.category_id is not None:
            residual["category_id"] = q.category_id
        words = location_words(q.location) if q.location else []
        keywords = sorted(set(keyword_words(q.q)), key=len, reverse=True) if q.q else []  # the model refuses a q without any
        wanted = [keyword_facet(w) for w in keywords]
        if q.location and not words:
            # Only punctuation: nothing can match a location with no words.
            wanted.append("w:")
        else:
            wanted += [word_facet(w) for w in words]
        if wanted:
            residual["facets"] = {"$all": wanted}

        # The driving facet: any condition of the request can drive (all of them are also in the residual);
        # the rarest by the facet sample does, else the first of this order (a usual proxy for rarity).
        candidates: list[str] = []
        if q.agent_id is not None:
            candidates.append(f"a:{q.agent_id}")
        candidates += [keyword_facet(w) for w in keywords]  # longest first
        candidates += [word_facet(w) for w in sorted(set(words), key=len, reverse=True)]
        if q.category_id is not None:
            candidates.append(f"c:{q.category_id}")
        if q.listing_type and q.property_type:
            candidates.append(f"l:{q.listing_type}|t:{q.property_type}")
        elif q.listing_type:
            candidates.append(f"l:{q.listing_type}")
        elif q.property_type:
            candidates.append(f"t:{q.property_type}")
        if q.location and not words:
            facet = "w:"  # matches no listing: an index lookup that finds nothing, not a scan
        elif candidates:
            facet = self.store.stats.pick(candidates)
        else:
            facet = "*"
        near = None
        if q.near_point is not None:
            near = (*q.near_point, q.radius_km)
        return SearchPlan(
            status=q.status, sort=q.sort, limit=q.limit, facet=facet, near=near, bbox=q.bbox_box,
            price_min=int(to_minor(q.price_min)) if q.price_min is not None else None,
            price_max=int(to_minor(q.price_max)) if q.price_max is not None else None,
            residual=residual, cursor=q.cursor, keywords=tuple(keyword_facet(w) for w in keywords),
        )

    async def search(self, q: SearchQuery, trace: list | None = None) -> dict:
        return await self.store.search(self.plan(q), self.clock.now(), property_view, trace=trace)

    async def agent_listings(self, agent_id: int, limit: int = 50) -> list[dict]:
        """An agent's available listings, newest first (the agent profile page)."""
        page = await self.search(SearchQuery(agent_id=agent_id, limit=min(limit, 100)))
        return page["items"]

    async def my_listings(self, principal, query) -> dict:
        """The caller's own listings in every state, newest first (GET /users/me/properties)."""
        now = self.clock.now()
        return await self.store.agent_page(principal.user_id, query, lambda doc: property_view(doc, now),
                                           status=query.status, listed=query.listed)

    # ---- images ------------------------------------------------------------
    async def add_image(self, principal, property_id: int, data: bytes, make_primary: bool = False) -> dict:
        doc = await self.managed(principal, property_id)
        listed = self.editable(doc)
        if len(doc.get("images", [])) >= MAX_IMAGES:
            raise Conflict(f"A property has at most {MAX_IMAGES} images", "too_many_images")
        url = await self.media.save_image(data, "properties")
        image = {"id": await self.ids.next("property_images"), "url": url, "is_primary": False}
        # The write expects the listing still as read (listed, or unlisted and editable)
        state = {"is_active": True} if listed else {"is_active": False, "status": "available", "hidden_reason": None}
        updated = await self.store.push_image(property_id, image, MAX_IMAGES, state)
        if updated is None:  # another upload took the last place (or it was unlisted, listed or hidden) meanwhile
            await self.media.delete(url)
            raise Conflict(f"A property has at most {MAX_IMAGES} images", "too_many_images")
        if make_primary:
            updated = await self.store.set_primary(property_id, image["id"], self.clock.now()) or updated
        view = await self._changed(doc, updated)
        return {"image": next(i for i in view["images"] if i["id"] == image["id"]), "property": view}

    async def set_primary(self, principal, property_id: int, image_id: int) -> dict:
        doc = await self.managed(principal, property_id)
        updated = await self.store.set_primary(property_id, image_id, self.clock.now())
        if updated is None:
            raise NotFound("No such image on this property", "image_not_found")
        return await self._changed(doc, updated)

    async def delete_image(self, principal, property_id: int, image_id: int) -> None:
        await self.managed(principal, property_id)
        before = await self.store.pull_image(property_id, image_id)
        if before is None:
            raise NotFound("No such image on this property", "image_not_found")
        await self._changed(before, await self.store.ensure_primary(property_id))
        removed = next((i for i in before.get("images", []) if i["id"] == image_id), None)
        if removed:  # the displayed file, and the upload and enhanced file behind it when they differ
            for url in {removed["url"], removed.get("original_url"), removed.get("enhanced_url")} - {None}:
                await self.media.delete(url)

    # ---- favourites --------------------------------------------------------
    async def add_favourite(self, principal, property_id: int) -> dict:
        doc = await self.visible(property_id, principal)
        if not doc.get("is_active", True):
            raise NotFound("No such property", "property_not_found")
        fav = await self.favourites.add(principal.user_id, property_id, self.clock.now())
        await self.analytics.record(doc, "favourites")
        return {"id": fav["_id"], "property_id": property_id, "created_at": format_ts(fav["created_at"])}

    async def remove_favourite(self, principal, property_id: int) -> None:
        if not await self.favourites.remove(principal.user_id, property_id):
            raise NotFound("This property is not in your favourites", "not_favourite")

    async def list_favourites(self, principal, page) -> dict:
        result = await self.favourites.page(principal.user_id, page)
        props = await self.store.get_many(f["property_id"] for f in result["items"])
        items = []
        for fav in result["items"]:
            prop = props.get(fav["property_id"])
            visible = prop is not None and (prop.get("is_active", True) or prop["agent_id"] == principal.user_id)
            items.append({"id": fav["_id"], "property_id": fav["property_id"], "created_at": format_ts(fav["created_at"]),
                          "property": property_view(prop) if visible else None})
        return {"items": items, "next_cursor": result["next_cursor"]}


__all__ = ["PropertyService", "property_view", "is_admin", "AMENITIES", "MAX_IMAGES"]
