"""Builder rules: verification, projects, units, payment plans. Knows nothing about HTTP.

- A builder is a user with `user_type: "builder"` (scope `builder`); the company profile
  lives in the user's `builder_profile` like the other types' profiles, and `verified`
  in it is set only by an admin. Only verified builders' projects can be published.
- A project is a draft, seen only by its builder and admins, until published. Its
  `status` moves planning → under_construction → completed, never backwards.
- The owning builder (with a builder-scoped token) or an admin changes a project, adds
  units, blocks and unblocks them, and adds payment plans.
- Units are added in batches of 1..500, all or nothing, unit_number unique within the
  project: the unique index enforces it, and a per-project batch lock makes racing
  batches take turns so that exactly one of two overlapping batches is stored, whole.
"""
from __future__ import annotations

import asyncio
import json
import logging
import uuid
from datetime import timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Awaitable, Callable

from sheda_rt.accounts.service import builder_profile
from sheda_rt.clock import format_ts
from sheda_rt.builders.models import (MAX_IMAGES, MAX_UNITS_PER_BATCH, PROJECT_STATUS_ORDER, UNIT_STATUSES, PaymentPlanCreate,
                                      ProjectCreate, ProjectQuery, ProjectUpdate, UnitBatch, UnitQuery)
from sheda_rt.errors import Conflict, Forbidden, NotFound, ValidationFailed
from sheda_rt.listings.money import format_money, to_decimal128, to_minor
from sheda_rt.listings.service import geo_view, is_admin
from sheda_rt.search import SearchPlan, location_words, word_facet
from sheda_rt.runtime_settings.models import DEFAULT_BOOKING_PERCENT

if TYPE_CHECKING:  # types only: the context wires these in (runtime imports here would make cycles)
    from sheda_rt.accounts.users_store import UserStore
    from sheda_rt.builders.store import PaymentPlanStore, ProjectStore, UnitBatchLocks, UnitStore
    from sheda_rt.clock import Clock
    from sheda_rt.media.store import MediaStore
    from sheda_rt.notifications.service import NotificationService
    from sheda_rt.realtime.channels import Channels
    from sheda_rt.runtime_settings.models import RuntimeSettings

log = logging.getLogger("sheda.builders")

MAX_UNITS_PER_PROJECT = 5000
MAX_PLANS_PER_PROJECT = 20
BUILDER_PAGE_PROJECTS = 50
#: `hidden_reason` of a published project taken off the lists because its builder's account was deactivated or
#: switched to another type (sheda_rt/builders/builder_status.py).
BUILDER_INACTIVE = "builder_inactive"
#: How long a unit batch may hold its project's lock (a crashed holder lets go after this).
BATCH_LOCK_SECONDS = 60
#: How long a batch waits for another batch on the same project before answering 409.
BATCH_WAIT_SECONDS = 20


def minor_text(kobo: int) -> str:
    """int64 kobo → "2500000.00"."""
    return format_money(Decimal(int(kobo)).scaleb(-2))


def split_price(price_minor: int, percents: list[Decimal]) -> list[int]:
    """A price split by percents that sum to 100, in kobo: every line but the last is rounded
    down to the kobo, the last takes the remainder, so the lines always add up to the price."""
    amounts = [int(Decimal(price_minor) * p / 100) for p in percents[:-1]]  # int() rounds toward zero: down, amounts > 0
    return amounts + [price_minor - sum(amounts)]


def zero_line(price_minor: int, lines: list[dict]) -> int | None:
    """The index of the first line of a plan (stored `lines`) that splits this price into 0.00, or None. Exact for
    every higher price too: a line but the last is its percent of the price rounded down, which never falls as the
    price rises, and the last (its percent > 0) takes at least a kobo. So the project's lowest unit price decides."""
    amounts = split_price(int(price_minor), [Decimal(ln["percent"]) for ln in lines])
    return next((i for i, amount in enumerate(amounts) if amount <= 0), None)


def _geo_doc(point) -> dict:
    return {"type": "Point", "coordinates": [point.lng, point.lat]}


def project_view(doc: dict) -> dict:
    counts = {status: 0 for status in UNIT_STATUSES}
    counts.update(doc.get("unit_counts") or {})
    low, high = doc.get("price_minor"), doc.get("price_max_minor")
    return {
        "id": doc["_id"],
        "builder_id": doc["builder_id"],
        "name": doc["name"],
        "description": doc.get("description", ""),
        "location": doc["location"],
        "geo": geo_view(doc.get("geo")),
        "status": doc["status"],
        "launch_date": doc.get("launch_date"),
        "expected_completion": doc.get("expected_completion"),
        "amenities": doc.get("amenities", []),
        "images": doc.get("images", []),
        "published": doc.get("state") == "published",
        "published_at": format_ts(doc.get("published_at")),
        "hidden_reason": doc.get("hidden_reason"),
        "unit_counts": counts,
        "units_total": sum(counts.values()),
        "price_range": {"min": minor_text(low), "max": minor_text(high)} if low is not None and high is not None else None,
        "bedrooms": sorted({a["b"] for a in doc.get("avail", [])}),
        "created_at": format_ts(doc["created_at"]),
        "updated_at": format_ts(doc["updated_at"]),
    }


def unit_view(doc: dict) -> dict:
    return {
        "id": doc["_id"],
        "project_id": doc["project_id"],
        "unit_number": doc["unit_number"],
        "floor": doc["floor"],
        "type": doc["type"],
        "bedrooms": doc["bedrooms"],
        "bathrooms": doc.get("bathrooms", 0),
        "area_sqm": doc["area_sqm"],
        "price": format_money(doc["price"]),
        "status": doc["status"],
        "created_at": format_ts(doc["created_at"]),
        "updated_at": format_ts(doc["updated_at"]),
    }


def plan_view(doc: dict, unit: dict | None = None) -> dict:
    """Line 1 is the booking payment, due at booking: a plan stored before plans had to start with one
    (its first line due later) is booked that way too, so it shows that way."""
    lines = [{"label": ln["label"], "percent": ln["percent"], "due": "booking" if i == 0 else ln["due"]}
             for i, ln in enumerate(doc["lines"])]
    view = {"id": doc["_id"], "project_id": doc["project_id"], "name": doc["name"], "lines": lines,
            "created_at": format_ts(doc["created_at"])}
    if unit is not None:
        amounts = split_price(int(unit["price_minor"]), [Decimal(ln["percent"]) for ln in lines])
        view["schedule"] = [{**ln, "amount": minor_text(a)} for ln, a in zip(lines, amounts)]
    return view


def unit_summary(units: list[dict]) -> tuple[dict, list[str]]:
    """What a project shows of its units: counts by status, the price range and the
    (price, bedrooms) pairs of the available ones (what the project filters match)."""
    counts = {status: 0 for status in UNIT_STATUSES}
    avail: set[tuple[int, int]] = set()
    for unit in units:
        counts[unit["status"]] = counts.get(unit["status"], 0) + 1
        if unit["status"] == "available":
            avail.add((int(unit["price_minor"]), int(unit["bedrooms"])))
    summary: dict = {"unit_counts": counts, "avail": [{"p": p, "b": b} for p, b in sorted(avail)]}
    if avail:
        prices = [p for p, _ in avail]
        summary.update(price_minor=min(prices), price_max_minor=max(prices))
        return summary, []
    return summary, ["price_minor", "price_max_minor"]


class BuilderService:
    """Builders as accounts: the public page, the logo, verification by an admin."""

    def __init__(self, projects: ProjectService, *, users: UserStore, notifications: NotificationService, media: MediaStore,
                 clock: Clock):
        self.users = users
        self.projects = projects
        self.notifications = notifications  # verification changes: a stored notification and an event to the builder
        self.media = media  # logos
        self.clock = clock

    async def builder_user(self, user_id: int) -> dict:
        user = await self.users.get(user_id)
        # Someone who switched to another type keeps their company profile and projects.
        is_builder = user is not None and (user.get("user_type") == "builder" or "builder_profile" in user)
        if not is_builder or not user.get("is_active", True):
            raise NotFound("No such builder", "builder_not_found")
        return user

    async def public_page(self, builder_id: int) -> dict:
        user = await self.builder_user(builder_id)
        page = await self.projects.search(ProjectQuery(builder_id=builder_id, limit=BUILDER_PAGE_PROJECTS), None)
        return {**builder_profile(user), "projects": page["items"]}

    async def set_logo(self, user: dict, data: bytes) -> dict:
        url = await self.media.save_image(data, "builders")
        updated = await self.users.update(user["_id"], {"builder_profile.logo_url": url, "updated_at": self.clock.now()})
        old = (user.get("builder_profile") or {}).get("logo_url")
        if old:
            await self.media.delete(old)
        return builder_profile(updated)

    async def set_verified(self, admin: dict, user_id: int, verified: bool) -> dict:
        """Only a change is written, announced (a `builder.verified` / `builder.unverified` event and
        a stored notification to the builder) and logged; repeating it changes nothing."""
        user = await self.builder_user(user_id)
        now = self.clock.now()
        # The expected value in the filter: of two admins racing, one changes it and announces it.
        changed = await self.users.update_if(
            user_id, {"builder_profile.verified": {"$ne": verified}},
            {"builder_profile.verified": verified, "builder_profile.verified_at": now,
             "builder_profile.verified_by": admin["_id"], "updated_at": now})
        view = builder_profile(changed or await self.users.get(user_id) or user)
        if changed is not None:
            log.info(json.dumps({"event": "builder_verification", "admin_id": admin["_id"], "builder_id": user_id,
                                 "verified": verified}))
            notes = self.notifications
            if verified:
                await notes.notify(user_id, "builder_verified", "Your company is verified",
                                   "You can now publish your projects.", {"builder_id": user_id})
            else:
                await notes.notify(user_id, "builder_unverified", "Your company verification was withdrawn",
                                   "Published projects stay visible; new projects cannot be published.", {"builder_id": user_id})
            await notes.publish_event([user_id], {"type": "builder.verified" if verified else "builder.unverified",
                                                  "builder": view})
        return view


class ProjectService:
    def __init__(self, projects: ProjectStore, units: UnitStore, locks: UnitBatchLocks, plans: PaymentPlanStore, *,
                 users: UserStore, notifications: NotificationService, media: MediaStore, clock: Clock,
                 channels: Channels | None = None, runtime_settings: Callable[[], Awaitable[RuntimeSettings]] | None = None):
        self.store = projects
        # The runtime settings now (max_units_per_project); None: MAX_UNITS_PER_PROJECT (e.g. the benchmark).
        self.runtime_settings = runtime_settings
        self.units = units
        self.locks = locks
        self.plans = plans
        self.users = users  # whether a project's builder is verified (an admin publishing it)
        self.notifications = notifications  # project.published to the builder
        self.media = media  # project images
        self.clock = clock
        self.channels = channels  # project.updated on channel project:<id> (None: nobody watches, e.g. the benchmark)
        # [builders] the 3D models' summary shown by GET /projects/{id} (set by the context: the model
        # service depends on this one, so it cannot be a constructor argument)
        self.model_summary = None

    # ---- access ------------------------------------------------------------
    @staticmethod
    def owns(principal, doc: dict) -> bool:
        return principal is not None and principal.user_id == doc["builder_id"] and "builder" in principal.scopes

    async def visible(self, project_id: int, principal=None, *, hidden: bool = False) -> dict:
        """The project if this caller may see it: drafts only for their builder and admins (404 for others), and so
        is a published one hidden because its builder's account left (`hidden_reason`, builders/builder_status.py),
        unless `hidden` (the caller answers for an inactive builder itself: an inquiry's 409 builder_inactive)."""
        doc = await self.store.get(project_id)
        if doc is None:
            raise NotFound("No such project", "project_not_found")
        if doc.get("state") != "published" or (doc.get("hidden_reason") and not hidden):
            if principal is None or not (principal.user_id == doc["builder_id"] or is_admin(principal)):
                raise NotFound("No such project", "project_not_found")
        return doc

    async def managed(self, principal, project_id: int) -> dict:
        doc = await self.visible(project_id, principal)
        if not (self.owns(principal, doc) or is_admin(principal)):
            raise Forbidden("Only the project's builder or an admin can change it", "not_owner")
        return doc

    async def authorize_watch(self, user_id: int, project_id: int) -> None:
        """Who may watch channel `project:<id>`: any signed-in user, once the project is
        published (its page, units and construction feed are public over REST, so the channel
        tells nobody more); a draft only its builder and admins, as over REST, where it is a
        404 to everyone else (so here an unknown channel, not a forbidden one)."""
        from sheda_rt.realtime.channels import UnknownChannel

        doc = await self.store.get(project_id)
        if doc is not None and (doc.get("state") != "published" or doc.get("hidden_reason")) and doc["builder_id"] != user_id:
            user = await self.users.get(user_id)
            if not (user and user.get("role") == "admin"):
                doc = None
        if doc is None:
            raise UnknownChannel(f"No channel 'project:{project_id}': no such project")

    async def announce(self, project_id: int, changes: list[str], **parts) -> None:
        """`project.updated` to whoever watches `project:<id>`, on every process, after the change
        is stored: `changes` says what changed ("project", "units", "progress", "update"), `parts`
        carries the new state (`project` is always the project as GET shows it). Ephemeral and
        best effort, like property.updated: never fails the change that caused it."""
        if self.channels is None:
            return
        try:
            doc = await self.store.get(project_id)
            if doc is None:
                return
            frame = {"type": "project.updated", "project_id": project_id, "changes": changes, "project": project_view(doc),
                     **parts}
            await self.channels.publish("project", project_id, frame)
        except Exception:
            log.exception("project.updated for %s not published", project_id)

    # ---- projects ----------------------------------------------------------
    async def create(self, principal, body: ProjectCreate) -> dict:
        now = self.clock.now()
        doc = {
            "builder_id": principal.user_id,
            "name": body.name,
            "description": body.description,
            "location": body.location,
            "status": body.status,
            "amenities": list(dict.fromkeys(body.amenities)),
            "images": list(dict.fromkeys(body.images)),
            "state": "draft",
            "unit_counts": {status: 0 for status in UNIT_STATUSES},
            "avail": [],
            "created_at": now,
            "updated_at": now,
        }
        for name in ("launch_date", "expected_completion"):
            value = getattr(body, name)
            if value is not None:
                doc[name] = value.isoformat()
        if body.geo is not None:
            doc["geo"] = _geo_doc(body.geo)
        return project_view(await self.store.insert(doc))

    async def get(self, project_id: int, principal=None) -> dict:
        view = project_view(await self.visible(project_id, principal))
        if self.model_summary is not None:
            view["models"] = await self.model_summary(project_id)
        return view

    async def update(self, principal, project_id: int, body: ProjectUpdate) -> dict:
        for _attempt in range(5):
            doc = await self.managed(principal, project_id)
            changes: dict = {}
            unset: list[str] = []
            for name in body.model_fields_set:
                value = getattr(body, name)
                if name == "geo":
                    if value is None:
                        unset.append("geo")
                    else:
                        changes["geo"] = _geo_doc(value)
                elif name in ("launch_date", "expected_completion"):
                    if value is None:
                        unset.append(name)
                    else:
                        changes[name] = value.isoformat()
                elif name in ("amenities", "images"):
                    changes[name] = list(dict.fromkeys(value))
                else:
                    changes[name] = value
            if "status" in changes:
                old, new = PROJECT_STATUS_ORDER.index(doc["status"]), PROJECT_STATUS_ORDER.index(changes["status"])
                if new < old:
                    raise Conflict(f"A project's status never goes back: it is {doc['status']}", "status_backwards")
            merged = {**doc, **changes}
            for name in unset:
                merged.pop(name, None)
            launch, done = merged.get("launch_date"), merged.get("expected_completion")
            if launch and done and done < launch:  # ISO dates compare as text
                raise ValidationFailed.single("expected_completion", "must not be before launch_date")
            changes["updated_at"] = self.clock.now()
            updated = await self.store.update_if_rev(project_id, doc.get("rev", 1), merged, changes, unset)
            if updated is not None:
                await self.announce(project_id, ["project"])
                return project_view(updated)
        raise Conflict("The project is being changed by someone else; try again", "concurrent_update")

    async def add_image(self, principal, project_id: int, data: bytes) -> dict:
        """An uploaded image (jpeg, png or webp, read from the bytes) appended to `images`."""
        doc = await self.managed(principal, project_id)
        if len(doc.get("images", [])) >= MAX_IMAGES:
            raise Conflict(f"A project has at most {MAX_IMAGES} images", "too_many_images")
        url = await self.media.save_image(data, "projects")
        updated = await self.store.push_image(project_id, url, MAX_IMAGES, self.clock.now())
        if updated is None:  # another upload took the last place meanwhile
            await self.media.delete(url)
            raise Conflict(f"A project has at most {MAX_IMAGES} images", "too_many_images")
        return project_view(updated)

    async def publish(self, principal, project_id: int) -> dict:
        """Drafts of verified builders only (403 `builder_not_verified`, whoever asks); 409 when
        it is already published."""
        doc = await self.managed(principal, project_id)
        builder = principal.user if principal.user_id == doc["builder_id"] else await self.users.get(doc["builder_id"])
        if not (builder and (builder.get("builder_profile") or {}).get("verified")):
            raise Forbidden("Only verified builders can publish projects; an admin verifies the company first",
                            "builder_not_verified")
        updated = await self.store.publish(project_id, self.clock.now())
        if updated is None:
            raise Conflict("This project is already published", "already_published")
        view = project_view(updated)
        await self.notifications.publish_event([doc["builder_id"]], {"type": "project.published", "project": view})
        return view

    # ---- a builder's account left or came back (sheda_rt/builders/builder_status.py) --------------------------
    async def hide_builder_projects(self, builder_id: int, batch: int = 100) -> int:
        """Take every published project of the builder off the public lists, marked `hidden_reason`
        builder_inactive; returns how many. Idempotent: a run cut short leaves the rest and the next goes on."""
        return await self._walk_builder(builder_id, None, batch, lambda pid, now: self.store.hide(pid, now, BUILDER_INACTIVE))

    async def restore_builder_projects(self, builder_id: int, batch: int = 100) -> int:
        """Exactly the builder's projects hidden by hide_builder_projects back on the lists; returns how many."""
        return await self._walk_builder(builder_id, BUILDER_INACTIVE, batch,
                                        lambda pid, now: self.store.unhide(pid, now, BUILDER_INACTIVE))

    async def _walk_builder(self, builder_id: int, hidden_reason: str | None, batch: int, write) -> int:
        done, seen = 0, set()
        while True:
            ids = [i for i in await self.store.builder_project_ids(builder_id, hidden_reason=hidden_reason, limit=batch)
                   if i not in seen]
            if not ids:
                return done
            seen.update(ids)
            for pid in ids:
                if await write(pid, self.clock.now()) is not None:  # conditional: None when it changed meanwhile
                    done += 1
                    await self.announce(pid, ["project"])

    def plan(self, q: ProjectQuery) -> SearchPlan:
        """Filters → a SearchPlan: the most selective facet drives, the rest is residual."""
        # A project hidden with its builder's account is in no list (drafts are never hidden).
        residual: dict = {"hidden_reason": {"$exists": False}}
        if q.builder_id is not None:
            residual["builder_id"] = q.builder_id
        if q.status is not None:
            residual["status"] = q.status
        words = location_words(q.location) if q.location else []
        if q.location and not words:
            residual["facets"] = {"$all": ["w:"]}  # only punctuation: matches nothing
        elif words:
            residual["facets"] = {"$all": [word_facet(w) for w in words]}
        # One available unit must match every unit filter at once: a pair in `avail`.
        pair: dict = {}
        if q.price_min is not None:
            pair.setdefault("p", {})["$gte"] = int(to_minor(q.price_min))
        if q.price_max is not None:
            pair.setdefault("p", {})["$lte"] = int(to_minor(q.price_max))
        if q.bedrooms is not None:
            pair["b"] = q.bedrooms
        elif q.bedrooms_min is not None:
            pair["b"] = {"$gte": q.bedrooms_min}
        if pair:
            residual["avail"] = {"$elemMatch": pair}
        # Any condition can drive (all are in the residual too): the rarest by the facet sample,
        # else the first of this order.
        candidates = [f"b:{q.builder_id}"] if q.builder_id is not None else []
        candidates += [word_facet(w) for w in sorted(set(words), key=len, reverse=True)]
        if q.status is not None:
            candidates.append(f"s:{q.status}")
        if q.location and not words:
            facet = "w:"  # matches no project: an index lookup that finds nothing, not a scan
        elif candidates:
            facet = self.store.stats.pick(candidates)
        else:
            facet = "*"
        near = (*q.near_point, q.radius_km) if q.near_point is not None else None
        # A unit at most price_max means the project's lowest available price (the sort key) is at
        # most price_max too: a bound the driver can use. price_min says nothing about the lowest.
        price_max = int(to_minor(q.price_max)) if q.price_max is not None else None
        # A price sort lists only projects with a lowest price (something available): an unbounded slice (the
        # whole range, when the sample holds one price of the driving facet) would take those without one too,
        # first. `price_minor >= 0` is what having one means, and the driver's index range can say it.
        price_min = 0 if q.sort != "newest" else None
        return SearchPlan(status=q.state, sort=q.sort, limit=q.limit, facet=facet, near=near, residual=residual, cursor=q.cursor,
                          price_min=price_min, price_max=price_max)

    async def search(self, q: ProjectQuery, principal, trace: list | None = None) -> dict:
        if q.state == "draft" and not is_admin(principal):
            if principal is None or q.builder_id != principal.user_id:
                raise Forbidden("Drafts are listed only to their builder (builder_id=<your id>) and admins", "drafts_forbidden")
        return await self.store.search(self.plan(q), self.clock.now(), project_view, trace=trace)

    # ---- units -------------------------------------------------------------
    async def refresh_summary(self, project_id: int) -> dict | None:
        """Recompute the project's unit summary; retried until it is written from a fresh read."""
        for _attempt in range(20):
            doc = await self.store.get(project_id)
            if doc is None:
                return None
            summary, unset = unit_summary(await self.units.for_summary(project_id))
            if await self.store.set_summary(project_id, doc.get("summary_rev", 0), summary, unset):
                return await self.store.get(project_id)
        log.warning(json.dumps({"event": "unit_summary_contended", "project_id": project_id}))
        return None

    async def _hold_batch_lock(self, project_id: int, token: str) -> str | None:
        """Wait for the project's batch lock; returns the token of a lapsed holder it took over."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + BATCH_WAIT_SECONDS
        delay = 0.01
        while True:
            now = self.clock.now()
            taken, lapsed = await self.locks.acquire(project_id, token, now, now + timedelta(seconds=BATCH_LOCK_SECONDS))
            if taken:
                return lapsed
            if loop.time() >= deadline:
                raise Conflict("Another batch of units is being added to this project; try again", "units_busy")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.2)

    async def add_units(self, principal, project_id: int, body: UnitBatch) -> dict:
        await self.managed(principal, project_id)
        numbers = [u.unit_number for u in body.units]
        repeated = sorted({n for n in numbers if numbers.count(n) > 1}) if len(set(numbers)) != len(numbers) else []
        if repeated:
            raise Conflict("A unit_number appears more than once in this batch", "duplicate_unit_number",
                           extra={"unit_numbers": repeated[:50]})
        plans = await self.plans.for_project(project_id, MAX_PLANS_PER_PROJECT)
        for n, u in enumerate(body.units):  # a 0.00 line nothing could pay: the booking would be refused (bookings.py)
            for plan in plans:
                if (i := zero_line(to_minor(u.price), plan["lines"])) is not None:
                    ln = plan["lines"][i]
                    raise ValidationFailed.single(f"units.{n}.price", f"payment plan {plan['name']!r} would split this price into a "
                                                                      f"line of 0.00 ({ln['label']!r}, {ln['percent']}%): nothing could pay it")
        token = uuid.uuid4().hex
        lapsed = await self._hold_batch_lock(project_id, token)
        # While this is True the lock is kept when we leave: what this batch may have stored is
        # removed by the batch that takes the lock over once it lapses.
        leftovers = False
        try:
            if lapsed:  # a batch died holding the lock (or lost the database mid-insert): what it stored goes
                await self.units.delete_batch(project_id, lapsed)
            most = (await self.runtime_settings()).max_units_per_project if self.runtime_settings else MAX_UNITS_PER_PROJECT
            if await self.units.count(project_id) + len(numbers) > most:
                raise Conflict(f"A project has at most {most} units", "too_many_units")
            taken = await self.units.taken_numbers(project_id, numbers)
            if taken:
                raise Conflict("These unit numbers already exist in this project; nothing was added", "duplicate_unit_number",
                               extra={"unit_numbers": sorted(taken)[:50]})
            now = self.clock.now()
            docs = [{
                "project_id": project_id, "unit_number": u.unit_number, "floor": u.floor, "type": u.type,
                "bedrooms": u.bedrooms, "bathrooms": u.bathrooms, "area_sqm": u.area_sqm,
                "price": to_decimal128(u.price), "price_minor": to_minor(u.price), "status": "available",
                "batch": token, "created_at": now, "updated_at": now,
            } for u in body.units]
            leftovers = True
            try:
                stored = await self.units.insert_batch(docs)
            except Exception:
                await self.units.delete_batch(project_id, token)  # if this fails too, leftovers stays True
                leftovers = False
                raise
            leftovers = False
            if stored is None:
                raise Conflict("A unit number was taken meanwhile; nothing was added", "duplicate_unit_number")
        finally:
            if not leftovers:
                await self.locks.release(project_id, token)
        await self.refresh_summary(project_id)
        await self.announce(project_id, ["units"])
        return {"items": [unit_view(d) for d in stored]}

    async def unit_in(self, project_id: int, unit_id: int) -> dict:
        unit = await self.units.get(unit_id)
        if unit is None or unit["project_id"] != project_id:
            raise NotFound("No such unit in this project", "unit_not_found")
        return unit

    async def get_unit(self, principal, project_id: int, unit_id: int) -> dict:
        await self.visible(project_id, principal)
        return unit_view(await self.unit_in(project_id, unit_id))

    async def set_unit_status(self, principal, project_id: int, unit_id: int, status: str) -> dict:
        """available ↔ blocked, by the builder or an admin; 409 `unit_not_available` for units
        that are reserved, booked or sold (those follow the bookings)."""
        await self.managed(principal, project_id)
        unit = await self.unit_in(project_id, unit_id)
        if unit["status"] == status:
            return unit_view(unit)
        expected = "blocked" if status == "available" else "available"
        updated = None
        if unit["status"] == expected:
            updated = await self.units.set_status(unit_id, project_id, expected, status, self.clock.now())
        if updated is None:
            current = (await self.units.get(unit_id) or unit)["status"]
            raise Conflict(f"The unit is {current}: only available units can be blocked and blocked ones unblocked",
                           "unit_not_available")
        await self.refresh_summary(project_id)
        await self.announce(project_id, ["units"])
        return unit_view(updated)

    async def list_units(self, principal, project_id: int, q: UnitQuery, trace: list | None = None) -> dict:
        await self.visible(project_id, principal)
        residual: dict = {}
        for name in ("status", "type", "floor", "bedrooms"):
            value = getattr(q, name)
            if value is not None:
                residual[name] = value
        price: dict = {}
        if q.price_min is not None:
            price["$gte"] = to_minor(q.price_min)
        if q.price_max is not None:
            price["$lte"] = to_minor(q.price_max)
        if price:
            residual["price_minor"] = price
        return await self.units.page(project_id, residual, q.limit, q.cursor, unit_view, trace=trace)

    # ---- payment plans -----------------------------------------------------
    async def add_plan(self, principal, project_id: int, body: PaymentPlanCreate) -> dict:
        await self.managed(principal, project_id)
        if len(await self.plans.for_project(project_id, MAX_PLANS_PER_PROJECT)) >= MAX_PLANS_PER_PROJECT:
            raise Conflict(f"A project has at most {MAX_PLANS_PER_PROJECT} payment plans", "too_many_plans")
        if body.lines is not None:
            lines = [{"label": ln.label, "percent": str(ln.percent), "due": ln.due} for ln in body.lines]
        else:
            lines = await self.default_plan_lines()
        # A line splitting a unit's price into 0.00 nothing could pay (the booking would be refused: bookings.py); the
        # lowest price of a unit not sold yet decides for all (zero_line).
        lowest = await self.units.lowest_price(project_id)
        if lowest is not None and (i := zero_line(lowest, lines)) is not None:
            raise ValidationFailed.single(f"lines.{i}.percent" if body.lines is not None else "lines",
                                          f"splits the price of a unit of this project ({minor_text(lowest)}) into a line of 0.00 "
                                          f"({lines[i]['label']!r}, {lines[i]['percent']}%): nothing could pay it")
        doc = await self.plans.insert({"project_id": project_id, "name": body.name, "lines": lines, "created_at": self.clock.now()})
        return plan_view(doc)

    async def default_plan_lines(self) -> list[dict]:
        """A plan sent without lines: the runtime `booking_percent` (admin settings; DEFAULT_BOOKING_PERCENT
        until changed) due at booking, so it is line 1, the booking payment, and the balance at handover. Taken
        when the plan is made: a later change of the setting leaves existing plans (and their bookings) alone."""
        percent = Decimal((await self.runtime_settings()).booking_percent if self.runtime_settings else DEFAULT_BOOKING_PERCENT)
        if percent == 0:  # line 1 is always the booking payment: a plan must start with one (PaymentPlanCreate)
            raise ValidationFailed.single("lines", "required while the default booking percentage (admin settings) is 0")
        lines = [{"label": "Booking", "percent": str(percent), "due": "booking"}]
        if percent < 100:
            lines.append({"label": "Balance", "percent": str(Decimal(100) - percent), "due": "handover"})
        return lines

    async def list_plans(self, principal, project_id: int, unit_id: int | None) -> dict:
        await self.visible(project_id, principal)
        unit = await self.unit_in(project_id, unit_id) if unit_id is not None else None
        docs = await self.plans.for_project(project_id, MAX_PLANS_PER_PROJECT)
        return {"items": [plan_view(d, unit) for d in docs]}


__all__ = ["BuilderService", "ProjectService", "split_price", "zero_line", "MAX_UNITS_PER_BATCH"]
