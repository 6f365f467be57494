"""Saved searches: a user's own searches of listings (at most SAVED_SEARCHES_PER_USER, 20: a slot
each, store.py), each with an alert mode. Only their owner sees or changes one: anyone else gets 404, so ids leak nothing.

The filters are stored as validated by the GET /properties model (models.py) and matched later by
the plan that route would run (matcher.py); `alert_key` (store.py) is recomputed whenever the
filters or the alert mode change, so the alerts always look a search up under what it is now.
"""
from __future__ import annotations

import json
from typing import TYPE_CHECKING, Callable

from pydantic import ValidationError

from sheda_rt.clock import format_ts
from sheda_rt.errors import Conflict, NotFound, ValidationFailed
from sheda_rt.guided.areas import area_of
from sheda_rt.guided.service import exact_filters
from sheda_rt.search import geo_cells_covering, geo_cells_in_box, keyword_facet, keyword_words, location_words, word_facet
from sheda_rt.saved_searches.matcher import listing_matches
from sheda_rt.saved_searches.models import SavedGuidedAnswers, SavedSearchCreate, SavedSearchQuery, SavedSearchUpdate

if TYPE_CHECKING:
    from sheda_rt.categories.service import CategoryService
    from sheda_rt.clock import Clock
    from sheda_rt.guided.catalog import GuidedCatalog
    from sheda_rt.listings.models import SearchQuery
    from sheda_rt.saved_searches.store import SavedSearchStore
    from sheda_rt.search import SearchPlan

MAX_PER_USER = 20
#: Set in `meta` once every search filed under a location word or keyword is filed under the folded word
#: (refile_location_alerts). A new name whenever location_words or keyword_words changes, so the refiling runs again:
#: ".2", Turkish "ı" read as "i" in location words; ".3", in keywords (q=) too.
FOLDED_WORDS_MARKER = "saved_searches.alert_key_folded.3"


def saved_search_view(doc: dict) -> dict:
    return {"id": doc["_id"], "name": doc["name"], "query": doc["query"], "guided": doc.get("guided"), "alert": doc["alert"],
            "created_at": format_ts(doc["created_at"]), "updated_at": format_ts(doc["updated_at"])}


class SavedSearchService:
    def __init__(self, store: SavedSearchStore, *, plan: Callable[[SearchQuery], SearchPlan], clock: Clock,
                 guided_catalog: GuidedCatalog | None = None, max_per_user: int = MAX_PER_USER,
                 categories: CategoryService | None = None):
        self.store = store
        self.categories = categories  # a category_id filter must name a category (as a listing's must)
        self.plan = plan  # PropertyService.plan: the filters of GET /properties as a SearchPlan
        self.guided_catalog = guided_catalog  # the guided search's areas (their spellings): where an answer's area is
        self.clock = clock
        self.max_per_user = max_per_user

    # ---- matching (the alerts' job asks) -------------------------------------------
    def plan_of(self, query: dict) -> SearchPlan:
        if "near" not in query:  # kept before radius_km needed near= (it was ignored then, and is now refused)
            query = {k: v for k, v in query.items() if k != "radius_km"}
        return self.plan(SavedSearchQuery.model_validate(query))

    def matches(self, query: dict, listing: dict, extra: str | None = None, where: str | None = None) -> bool:
        """Would GET /properties with these stored filters list this stored listing? `extra`: the stored
        further condition of guided answers (their area), as JSON. `where`: the guided answers' area, which
        then replaces `extra`: the listing's area (`area_of` its location, as the guided catalog files it)
        must be that one. The stored regex knows only the area's spellings of the moment the search was
        saved, so "Obalende, Lagos" written after a search of `obalende` saved when only "Ọbalende" was
        listed never alerted, though the guided search lists it as an exact match."""
        if where is not None:
            area = area_of(listing.get("location") or "")
            if area is None or area[0] != where:
                return False
            extra = None
        return listing_matches(self.plan_of(query), listing, json.loads(extra) if extra else None)

    async def guided_exact(self, answers: SavedGuidedAnswers) -> tuple[dict, dict | None]:
        """Guided answers as (GET /properties filters, extra condition or None) of their *exact* matches, as
        the guided search builds its first group (sheda_rt/guided/service.py `_groups`): rent or buy and
        the kind as listing_type/property_type, the budget band as price_min (above) / price_max (up to),
        the area as its words (keywords) plus the case-insensitive regex of its spellings on `location`.
        Near misses never alert. tests/test_saved_searches.py checks this against POST /search/guided's
        exact items, so a change of the guided rules cannot drift silently."""
        area = None
        if answers.where:
            area = (await self.guided_catalog.current()).areas.get(answers.where) if self.guided_catalog else None
            if area is None:
                raise ValidationFailed.single("guided.where", f"unknown option {answers.where!r}: no listings in such an area now; "
                                                              "GET /api/v1/search/guided/questions lists the areas")
        return exact_filters(answers, area)  # the guided search's own rules: one definition of "fits every answer"

    async def _filters(self, body) -> dict:
        """The stored form of a body's query or guided answers: {query, guided, match_extra?}."""
        if body.guided is None:
            if body.query.category_id is not None and self.categories is not None:
                try:
                    await self.categories.get(body.query.category_id)
                except NotFound:  # GET /properties lists nothing for it: a search that could never alert
                    raise ValidationFailed.single("query.category_id", "no such category") from None
            return {"query": body.query.stored(), "guided": None}
        filters, extra = await self.guided_exact(body.guided)
        try:
            query = SavedSearchQuery.model_validate(filters)
        except ValidationError:  # e.g. only a budget from 0 with no end: nothing would narrow the alerts
            raise ValidationFailed.single("guided", "these answers narrow nothing down; answer what, where or a bounded budget") from None
        out = {"query": query.stored(), "guided": body.guided.model_dump(exclude_none=True)}
        if extra is not None:  # a MongoDB condition ($regex): kept as text, so no stored key starts with "$"
            out["match_extra"] = json.dumps(extra)
        return out

    def alert_key(self, query: dict, alert: str) -> str | list[str] | None:
        """What this search is filed under for alerts (None when they are off): the facet the search
        itself would be driven by, which every matching listing carries; for a circle or box whose
        driver is only the listing or property type (or nothing), the grid cells that cover it instead
        (at most 4; a listing inside carries one of them), so a map search is not read for every listing."""
        if alert == "off":
            return None
        plan = self.plan_of(query)
        if plan.facet == "*" or plan.facet.startswith(("l:", "t:")):
            cells = None
            if plan.near is not None:
                cells = geo_cells_covering(*plan.near)
            elif plan.bbox is not None:
                cells = geo_cells_in_box(*plan.bbox)
            if cells:
                return cells
        return plan.facet

    async def refile_location_alerts(self) -> int:
        """Once (a marker in `meta`), at a start: searches saved before location words were folded (accents, "ß",
        "İ"; then Turkish "ı" as "i", in keywords too: sheda_rt/search.py) are filed under the facet of their word as
        typed ("w:bogotá", "k:kadıköy"), which no listing carries since the listings were re-faceted ("w:bogota"), so
        they would never alert again. Each is filed under what alert_key gives now; one already filed under a word
        its location or q gives now (plain ASCII: nearly all) is not written. Returns how many were filed again."""
        if await self.store.marked(FOLDED_WORDS_MARKER):
            return 0
        refiled = 0
        async for doc in self.store.filed_under_words():
            query, old_key = doc.get("query") or {}, doc["alert_key"]
            if old_key in ({word_facet(w) for w in location_words(query.get("location") or "")}
                           | {keyword_facet(w) for w in keyword_words(query.get("q") or "")}):
                continue
            try:
                key = self.alert_key(query, doc.get("alert", "off"))
            except ValidationError:  # filters GET /properties refuses now: left alone (an edit asks for them again)
                continue
            if key is not None and key != old_key and await self.store.refile(doc["_id"], old_key, key):
                refiled += 1
        await self.store.mark(FOLDED_WORDS_MARKER)
        return refiled

    # ---- CRUD ----------------------------------------------------------------------
    async def _own(self, principal, search_id: int) -> dict:
        doc = await self.store.get(principal.user_id, search_id)
        if doc is None:
            raise NotFound("No such saved search", "saved_search_not_found")
        return doc

    async def create(self, principal, body: SavedSearchCreate) -> dict:
        filters = await self._filters(body)
        key = self.alert_key(filters["query"], body.alert)
        now = self.clock.now()
        doc = {"user_id": principal.user_id, "name": body.name, **filters, "alert": body.alert, "created_at": now, "updated_at": now,
               # read before the insert: a listing change counted later may have been stored after the search, so it
               # alerts; one counted up to here was stored before, and its job (perhaps still to run) passes it by
               "alerts_after": await self.store.changes_so_far()}
        if key is not None:
            doc["alert_key"] = key
        stored = await self.store.insert(doc, self.max_per_user)
        if stored is None:
            raise Conflict(f"At most {self.max_per_user} saved searches per user; delete one first", "too_many_saved_searches",
                           extra={"limit": self.max_per_user})
        return saved_search_view(stored)

    async def list(self, principal, page) -> dict:
        return await self.store.page(principal.user_id, page, saved_search_view)

    async def get(self, principal, search_id: int) -> dict:
        return saved_search_view(await self._own(principal, search_id))

    async def update(self, principal, search_id: int, body: SavedSearchUpdate) -> dict:
        doc = await self._own(principal, search_id)
        fields: dict = {"updated_at": self.clock.now()}
        if "name" in body.model_fields_set:
            fields["name"] = body.name
        unset = []
        if body.query is not None or body.guided is not None:
            fields.update(await self._filters(body))
            if "match_extra" not in fields:
                unset.append("match_extra")
        if "alert" in body.model_fields_set:
            fields["alert"] = body.alert
        refiltered = "query" in fields and any(fields.get(k) != doc.get(k) for k in ("query", "guided", "match_extra"))
        turned_on = fields.get("alert", "off") != "off" and doc.get("alert", "off") == "off"
        if refiltered or turned_on:
            # as at creation: a listing change counted up to here was stored before the search looked like this, so it
            # never alerts under the new filters (or the alerts just turned on); one counted later does
            fields["alerts_after"] = await self.store.changes_so_far()
        if "query" in fields or "alert" in fields:  # a rename alone keeps what the search is filed under
            try:
                key = self.alert_key(fields.get("query", doc["query"]), fields.get("alert", doc["alert"]))
            except ValidationError:  # filters stored under older rules of GET /properties, which refuse them now
                raise ValidationFailed.single("query", "the saved filters no longer pass GET /properties' rules; "
                                                       "send them again as query to turn alerts on") from None
            if key is None:
                unset.append("alert_key")
            else:
                fields["alert_key"] = key
        updated = await self.store.update(principal.user_id, search_id, fields, unset)
        if updated is None:  # deleted meanwhile
            raise NotFound("No such saved search", "saved_search_not_found")
        return saved_search_view(updated)

    async def delete(self, principal, search_id: int) -> None:
        if not await self.store.delete(principal.user_id, search_id):
            raise NotFound("No such saved search", "saved_search_not_found")
