"""/api/v1/agents/{id}: an agent's public profile with their active listings, and their weekly windows."""
from __future__ import annotations

from handlers.base import APIHandler
from handlers.routing import endpoint, route
from sheda_rt.accounts.service import agent_profile
from sheda_rt.appointments.models import WindowOut
from sheda_rt.errors import NotFound
from sheda_rt.listings.models import AgentWithListings

TAGS = ("agents",)


async def _agent(ctx, agent_id: int) -> dict:
    user = await ctx.users.get(agent_id)
    # Someone who switched to client keeps their agent profile and listings.
    is_agent = user is not None and (user.get("user_type") == "agent" or "agent_profile" in user)
    if not is_agent or not user.get("is_active", True):
        raise NotFound("No such agent", "agent_not_found")
    return user


class AgentHandler(APIHandler):
    @endpoint("An agent's profile with their available listings", response=AgentWithListings, errors=(404,), tags=TAGS)
    async def get(self, agent_id: int):
        """Public. The agent profile plus `listings`: up to 50 available, listed properties, newest first
        (GET /properties?agent_id= pages through all of them)."""
        user = await _agent(self.ctx, agent_id)
        return {**agent_profile(user), "listings": await self.ctx.properties.agent_listings(agent_id)}


class AgentAvailabilityHandler(APIHandler):
    @endpoint("An agent's weekly availability windows", response=list[WindowOut], errors=(404,), tags=TAGS)
    async def get(self, agent_id: int):
        """Public. `[{id, weekday, start_time, end_time}]`, times 'HH:MM' UTC; a viewing slot must fit inside one."""
        await _agent(self.ctx, agent_id)
        return await self.ctx.availability.list_for(agent_id)


default_handlers = [
    route("/api/v1/agents/{agent_id:int}", AgentHandler),
    route("/api/v1/agents/{agent_id:int}/availability", AgentAvailabilityHandler),
]
