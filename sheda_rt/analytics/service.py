"""Agent analytics: what happened to each of an agent's listings, per day.

Views, favourites and inquiries are counted as they happen (`record`, called by the
listings and leads services) into daily counters; viewings booked and contracts are
read from the appointments and contracts themselves (the agent's own, through their
`parties` index), so those features need no hook. Counting never fails the request
that caused it: a counter that could not be written is logged and lost.
"""
from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from datetime import timedelta, timezone

from sheda_rt.analytics.models import MAX_DAYS
from sheda_rt.errors import ValidationFailed
from sheda_rt.metrics import LISTING_VIEWS

log = logging.getLogger("sheda.analytics")
KINDS = ("views", "favourites", "inquiries", "viewings", "contracts")


def day_of(when) -> str:
    """The UTC day of a timestamp (stored ones are UTC; a naive one is taken as UTC)."""
    return (when.astimezone(timezone.utc) if when.tzinfo else when).date().isoformat()


class AnalyticsService:
    def __init__(self, store, *, db, properties, clock):
        self.store = store
        self.appointments = db["appointments"]
        self.contracts = db["contracts"]
        self.properties = properties  # PropertyStore
        self.clock = clock

    async def record(self, prop: dict, counter: str) -> None:
        try:
            await self.store.bump(prop["_id"], prop["agent_id"], day_of(self.clock.now()), counter)
        except Exception:
            log.warning("could not count a %s of listing %s", counter, prop.get("_id"), exc_info=True)

    async def record_view(self, prop: dict, principal, client_ip: str | None) -> None:
        """One view per viewer per listing per day; the listing's own agent does not count."""
        if principal is not None:
            if principal.user_id == prop["agent_id"]:
                return
            viewer = f"u{principal.user_id}"
        elif client_ip:
            viewer = "a" + hashlib.sha256(client_ip.encode()).hexdigest()[:20]  # the address itself is not stored
        else:
            return
        now = self.clock.now()
        try:
            if await self.store.first_view(prop["_id"], day_of(now), viewer, now):
                LISTING_VIEWS.inc()
                await self.store.bump(prop["_id"], prop["agent_id"], day_of(now), "views")
        except Exception:
            log.warning("could not count a view of listing %s", prop["_id"], exc_info=True)

    async def for_agent(self, agent_id: int, query) -> dict:
        last = query.to or self.clock.now().date()
        first = query.from_ or (last - timedelta(days=29))
        if (last - first).days + 1 > MAX_DAYS or first > last:
            raise ValidationFailed.single("from", f"the range must be 1 to {MAX_DAYS} days")
        lo, hi = first.isoformat(), last.isoformat()
        cells: dict[int, dict[str, dict[str, int]]] = defaultdict(lambda: defaultdict(lambda: dict.fromkeys(KINDS, 0)))
        for row in await self.store.of_agent(agent_id, lo, hi):
            counts = cells[row["property_id"]][row["day"]]
            for kind in ("views", "favourites", "inquiries"):
                counts[kind] += int(row.get(kind, 0))
        for col, kind in ((self.appointments, "viewings"), (self.contracts, "contracts")):
            async for doc in col.find({"parties": agent_id}, projection={"agent_id": 1, "property_id": 1, "created_at": 1}):
                if doc.get("agent_id") != agent_id or doc.get("created_at") is None:
                    continue
                day = day_of(doc["created_at"])
                if lo <= day <= hi:
                    cells[doc["property_id"]][day][kind] += 1
        titles = await self.properties.get_many(cells.keys())
        listings = []
        grand = dict.fromkeys(KINDS, 0)
        for pid, days in cells.items():
            totals = dict.fromkeys(KINDS, 0)
            rows = []
            for day in sorted(days):
                rows.append({"day": day, **days[day]})
                for kind in KINDS:
                    totals[kind] += days[day][kind]
            for kind in KINDS:
                grand[kind] += totals[kind]
            listings.append({"property_id": pid, "title": (titles.get(pid) or {}).get("title", ""), "totals": totals, "days": rows})
        listings.sort(key=lambda item: (-item["totals"]["views"], item["property_id"]))
        return {"from_day": lo, "to_day": hi, "totals": grand, "listings": listings}
