"""/api/v1/search/guided*: the guided search's questions and answers (sheda_rt/guided/)."""
from __future__ import annotations

from handlers.base import APIHandler
from handlers.routing import endpoint, route
from sheda_rt.guided.models import GuidedItem, GuidedPageQuery, GuidedSearchBody, QuestionsOut, QuestionsQuery
from sheda_rt.responses import Page

TAGS = ("search",)


class GuidedQuestionsHandler(APIHandler):
    @endpoint("The guided search's three questions, with options from the live listings", query=QuestionsQuery,
              response=QuestionsOut, errors=(422, 503), tags=TAGS)
    async def get(self, query: QuestionsQuery):
        """Public. `what` (rent or buy, and the kind of home), `budget` (price bands cut from the prices of the
        available listings) and `where` (the areas that have available listings, most first, at most 100), each
        option with how many available listings fit it. Send answers given so far as `what=` / `where=` to get
        the other questions' options and counts for them (e.g. the budget bands of rentals in one area). Counts
        come from a catalog each server refreshes in the background: they lag new listings by up to
        GUIDED_REFRESH_SECONDS (default 30) plus one refresh; `as_of` says when it was read. The first question
        after a server starts reads every listing (about 12 s at 100,000 on the embedded database): it waits up
        to 5 s, then is a 503 `warming_up` with Retry-After. An unknown option is a 422 naming the parameter."""
        return await self.ctx.guided.questions(query.what, query.where)


class GuidedSearchHandler(APIHandler):
    @endpoint("Listings ranked by how well they fit the guided answers", query=GuidedPageQuery, body=GuidedSearchBody,
              response=Page[GuidedItem], errors=(422, 503), tags=TAGS)
    async def post(self, query: GuidedPageQuery, body: GuidedSearchBody):
        """Public. `{"answers": {"what", "budget", "where"}}`, each an option id of GET /search/guided/questions and
        each optional. Exact matches come first, then near misses: up to 15 % over the budget in the area, then
        within budget but up to 3 km outside the area, then both; `what` is never bent. Each item is the listing
        as GET /properties returns it plus `match: {exact, reasons}` ("₦200k over budget", "2 km outside Lekki").
        Pages as on GET /properties: `?limit=` and `?cursor=` (the previous page's `next_cursor`, with the same
        answers and `sort`); `sort` orders each group (price_asc, the default: the smallest overshoot first among
        those over budget; newest; price_desc). An unknown option is a 422 naming the field (`answers.where`);
        nothing is stored. 503 `warming_up` as for the questions (the ranking counts with the same catalog)."""
        return await self.ctx.guided.search(body.answers, query)


default_handlers = [
    route("/api/v1/search/guided/questions", GuidedQuestionsHandler),
    route("/api/v1/search/guided", GuidedSearchHandler),
]
