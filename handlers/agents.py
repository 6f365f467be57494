"""/api/v1/agents/{id}: an agent's public profile with their active listings, and their weekly windows."""
from __future__ import annotations

from handlers.base import APIHandler
from handlers.routing import endpoint, route
from sheda_rt.appointments.models import WindowOut
from sheda_rt.listings.models import AgentWithListings

TAGS = ("agents",)


class AgentHandler(APIHandler):
    @endpoint("An agent's profile with their available listings", response=AgentWithListings, errors=(404,), tags=TAGS)
    async def get(self, agent_id: int):
        """Public. The agent profile plus `listings`: up to 50 available, listed properties, newest first
        (GET /properties?agent_id= pages through all of them)."""
        profile = await self.ctx.accounts.public_agent(agent_id)
        return {**profile, "listings": await self.ctx.properties.agent_listings(agent_id)}


class AgentAvailabilityHandler(APIHandler):
    @endpoint("An agent's weekly availability windows", response=list[WindowOut], errors=(404,), tags=TAGS)
    async def get(self, agent_id: int):
        """Public. `[{id, weekday, start_time, end_time}]`, times 'HH:MM' UTC; a viewing slot must fit inside one."""
        await self.ctx.accounts.public_agent(agent_id)
        return await self.ctx.availability.list_for(agent_id)


default_handlers = [
    route("/api/v1/agents/{agent_id:int}", AgentHandler),
    route("/api/v1/agents/{agent_id:int}/availability", AgentAvailabilityHandler),
]
