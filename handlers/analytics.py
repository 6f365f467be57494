"""/api/v1/agents/me/analytics: an agent's listings, per day."""
from __future__ import annotations

from handlers.base import APIHandler
from handlers.routing import endpoint, route
from sheda_rt.accounts.auth import AGENT
from sheda_rt.analytics.models import AgentAnalytics, AnalyticsQuery


class MyAnalyticsHandler(APIHandler):
    @endpoint("My listings' views, favourites, inquiries, viewings and contracts per day (agents)", auth=AGENT,
              query=AnalyticsQuery, response=AgentAnalytics, errors=(401, 403, 422), tags=("agents",))
    async def get(self, query: AnalyticsQuery):
        """`?from=YYYY-MM-DD&to=YYYY-MM-DD` (UTC days, inclusive; default the last 30 days, at most 366). A view is
        one viewer (account, or address when signed out) per listing per day, the agent's own views excluded."""
        return await self.ctx.analytics.for_agent(self.principal.user_id, query)


default_handlers = [route("/api/v1/agents/me/analytics", MyAnalyticsHandler)]
