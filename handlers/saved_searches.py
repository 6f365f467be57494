"""/api/v1/saved-searches: a user's saved searches of listings and their alert modes (thin edges over SavedSearchService)."""
from __future__ import annotations

from handlers.base import APIHandler
from handlers.routing import endpoint, route
from sheda_rt.accounts.auth import USER
from sheda_rt.pagination import PageQuery
from sheda_rt.responses import Page
from sheda_rt.saved_searches.models import SavedSearchCreate, SavedSearchOut, SavedSearchUpdate

TAGS = ("saved searches",)


class SavedSearchesHandler(APIHandler):
    @endpoint("My saved searches, newest first", auth=USER, query=PageQuery, response=Page[SavedSearchOut], errors=(401, 422),
              tags=TAGS)
    async def get(self, query: PageQuery):
        return await self.ctx.saved_searches.list(self.principal, query)

    @endpoint("Save a search (at most 20 per user)", auth=USER, body=SavedSearchCreate, response=SavedSearchOut, status=201,
              errors=(401, 409, 422, 503), tags=TAGS)
    async def post(self, body: SavedSearchCreate):
        """`{name, query, alert}`. `query` takes the filters of GET /api/v1/properties as a JSON object, checked by
        the same rules (a bad filter is a 422 naming `query.<filter>`), without `cursor`, with at least one filter,
        and `status` only `available`. Or, instead of `query`, `guided`: answers of the guided search (`{what, budget,
        where}`, at least one; the area must be offered now, else 422 `guided.where`; 503 `warming_up` while the
        server reads the listings for the guided search the first time): alerts come for its exact matches. `alert`: `instant` (default) notifies at once (a `notification` frame of kind
        `saved_search.match` on the socket and event stream, stored in GET /notifications, and a push of category
        `listings`) when a listing that matches is created, listed again or drops its price; `daily` collects the
        day's matches into one email; `off` keeps the search without alerts. One alert per user per listing, ever,
        never for the user's own listings nor for those of an agent the user blocks or is blocked by. A `location`
        without a word (only spaces or punctuation) matches nothing: 422 `query.location`. A 21st search is 409 `too_many_saved_searches`."""
        return await self.ctx.saved_searches.create(self.principal, body)


class SavedSearchHandler(APIHandler):
    @endpoint("One of my saved searches", auth=USER, response=SavedSearchOut, errors=(401, 404), tags=TAGS)
    async def get(self, search_id: int):
        """Someone else's search is 404 `saved_search_not_found`, as an unknown id."""
        return await self.ctx.saved_searches.get(self.principal, search_id)

    @endpoint("Rename a saved search, change its filters or alert mode", auth=USER, body=SavedSearchUpdate, response=SavedSearchOut,
              errors=(401, 404, 422, 503), tags=TAGS)
    async def patch(self, search_id: int, body: SavedSearchUpdate):
        """Any of `name`, `query` or `guided` (either replaces the filters whole), `alert`."""
        return await self.ctx.saved_searches.update(self.principal, search_id, body)

    @endpoint("Delete a saved search", auth=USER, status=204, errors=(401, 404), tags=TAGS)
    async def delete(self, search_id: int):
        await self.ctx.saved_searches.delete(self.principal, search_id)


default_handlers = [
    route("/api/v1/saved-searches", SavedSearchesHandler),
    route("/api/v1/saved-searches/{search_id:int}", SavedSearchHandler),
]
