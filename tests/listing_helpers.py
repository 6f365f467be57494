"""Shared steps for the listings / appointments / contracts tests: what an agent and a client do."""
from __future__ import annotations

import re
import uuid
from datetime import datetime, timedelta, timezone

from sheda_rt.appointments.models import WEEKDAYS


def another_server(sheda, tmp_path):
    """A second Server (own context, runners) on the test's database, not started: what a process of a newer
    version finds when it starts on data an older one wrote (its start runs the one-time backfills)."""
    from config import load_settings
    from handlers.app import make_app
    from sheda_rt.server import Server

    s = sheda.server.settings
    settings = load_settings(**{**s.model_dump(), "data_dir": tmp_path / "second", "jwt_secret": s.jwt_secret.get_secret_value()})
    return Server(settings, s.mongodb_uri, clock=sheda.ctx.clock, app_factory=make_app)


async def start_and_stop(server) -> None:
    """Start `server` (indexes, backfills, runners, listening) and shut it down again."""
    import tornado.netutil

    await server.start(tornado.netutil.bind_sockets(0, "127.0.0.1"))
    await server.shutdown()


def unfolded_location_facets(location: str) -> set[str]:
    """The location word facets versions before the folding stored (listings before FACETS_VERSION 4, projects
    before 2): words only lowercased (accents and "ß" kept, "İ" split into "i" and the rest)."""
    out: set[str] = set()
    for w in re.findall(r"[^\W_]+", location.lower()):
        out |= {"w:" + w} if len(w) < 3 else {"w:" + w[:n] for n in range(3, min(len(w), 20) + 1)}
    return out


def location_facets_keeping_dotless_i(location: str) -> set[str]:
    """The location word facets listings before FACETS_VERSION 5 and projects before 3 stored: words folded (accents,
    "ß", "İ") but the Turkish dotless "ı" kept ("w:kadıköy", which "kadikoy" never found)."""
    from sheda_rt.search import fold

    out: set[str] = set()
    for w in re.findall(r"[^\W_]+", fold(location)):
        out |= {"w:" + w} if len(w) < 3 else {"w:" + w[:n] for n in range(3, min(len(w), 20) + 1)}
    return out


def word() -> str:
    """A location word no other test uses, so searches can be scoped to one test's listings."""
    return "zq" + uuid.uuid4().hex[:10]


def listing(**over) -> dict:
    body = {"title": "2 bedroom flat", "description": "Bright and quiet", "price": "2500000.00", "location": "Lekki Phase 1, Lagos",
            "property_type": "apartment", "listing_type": "rent", "bedroom": 2, "bathroom": 2}
    body.update(over)
    return body


async def create_property(sheda, agent, **over) -> dict:
    r = await sheda.api.post("/api/v1/properties", listing(**over), token=agent.token)
    assert r.status == 201, r
    return r.json


async def set_bank(sheda, agent) -> None:
    r = await sheda.api.put("/api/v1/users/me/account-info",
                            {"account_name": "Ada Agent", "bank_name": "Sheda Bank", "account_number": "0123456789"}, token=agent.token)
    assert r.status in (200, 201), r


def next_slot(now: datetime, days_ahead: int = 1, hour: int = 10, minute: int = 0) -> datetime:
    day = (now + timedelta(days=days_ahead)).astimezone(timezone.utc)
    return day.replace(hour=hour, minute=minute, second=0, microsecond=0)


def iso(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


async def open_window(sheda, agent, when: datetime, start="08:00", end="18:00") -> dict:
    r = await sheda.api.post("/api/v1/availability", {"weekday": WEEKDAYS[when.weekday()], "start_time": start, "end_time": end},
                             token=agent.token)
    assert r.status == 201, r
    return r.json


async def book(sheda, client, property_id: int, when: datetime):
    return await sheda.api.post("/api/v1/appointments", {"property_id": property_id, "scheduled_at": iso(when)}, token=client.token)


async def confirmed_viewing(sheda, agent, client, prop: dict, when: datetime | None = None) -> dict:
    when = when or next_slot(sheda.ctx.clock.now())
    r = await book(sheda, client, prop["id"], when)
    assert r.status == 201, r
    c = await sheda.api.patch(f"/api/v1/appointments/{r.json['id']}/confirm", token=agent.token)
    assert c.status == 200, c
    return c.json


async def snapshot(sheda, collection: str, _id: int) -> dict | None:
    """A stored document without volatile nothing: used to prove a refused request changed nothing."""
    return await sheda.ctx.db[collection].find_one({"_id": _id})
