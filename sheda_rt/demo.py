"""`python run.py demo-data`: a small marketplace to try the API on, loaded only when asked.

Everything goes through the services the API uses (accounts, builders, projects, listings,
availability, chat), so ids, indexes, search facets and unit summaries are exactly what real
use would store. The demo accounts' usernames start with `demo_`; when they exist already the
command adds nothing (running it twice never duplicates anything).
"""
from __future__ import annotations

import secrets

from sheda_rt.accounts.auth import Principal
from sheda_rt.accounts.models import RegisterRequest
from sheda_rt.accounts.service import scopes_for
from sheda_rt.appointments.models import WindowCreate
from sheda_rt.builders.models import PaymentPlanCreate, ProjectCreate, UnitBatch
from sheda_rt.listings.models import PropertyCreate

PREFIX = "demo_"

BUILDERS = [
    {"username": "demo_builder_skyline", "full_name": "Skyline Homes", "company": "Skyline Homes Ltd", "rc": "RC 1000001",
     "project": {"name": "Skyline Gardens", "location": "Lekki Phase 1, Lagos", "geo": {"lat": 6.4474, "lng": 3.4723},
                 "status": "under_construction", "amenities": ["pool", "gym", "24h power"],
                 "description": "Two towers of apartments a short walk from the Lekki beach road."},
     "units": [("A-101", 1, "apartment", 2, "45000000"), ("A-102", 1, "apartment", 3, "62000000"),
               ("A-201", 2, "apartment", 2, "46500000"), ("PH-1", 10, "penthouse", 4, "150000000")]},
    {"username": "demo_builder_harbour", "full_name": "Harbour Estates", "company": "Harbour Estates Ltd", "rc": "RC 1000002",
     "project": {"name": "Harbour View Terraces", "location": "Wuse 2, Abuja", "geo": {"lat": 9.0765, "lng": 7.4818},
                 "status": "planning", "amenities": ["security", "playground"],
                 "description": "Terraced duplexes around a shared garden."},
     "units": [("T-1", 0, "terrace", 3, "85000000"), ("T-2", 0, "terrace", 3, "85000000"), ("T-3", 0, "duplex", 4, "120000000")]},
]

AGENTS = [
    {"username": "demo_agent_ada", "full_name": "Ada Okafor", "agency": "Ada Homes", "listings": [
        {"title": "2 bedroom flat in Yaba", "price": "1800000", "location": "Yaba, Lagos", "geo": {"lat": 6.5095, "lng": 3.3711},
         "property_type": "apartment", "listing_type": "rent", "bedroom": 2, "bathroom": 2, "running_water": True,
         "prepaid_meter": True},
        {"title": "Mini flat near Unilag", "price": "950000", "location": "Akoka, Lagos", "geo": {"lat": 6.5158, "lng": 3.3896},
         "property_type": "apartment", "listing_type": "rent", "bedroom": 1, "bathroom": 1, "wifi": True},
    ]},
    {"username": "demo_agent_tunde", "full_name": "Tunde Bello", "agency": "Bello Realty", "listings": [
        {"title": "4 bedroom detached duplex in Ikeja GRA", "price": "250000000", "location": "Ikeja GRA, Lagos",
         "geo": {"lat": 6.5833, "lng": 3.3500}, "property_type": "duplex", "listing_type": "sale", "bedroom": 4, "bathroom": 5,
         "furnished": True, "air_condition": True},
        {"title": "Plot of land in Ibeju-Lekki", "price": "15000000", "location": "Ibeju-Lekki, Lagos",
         "property_type": "land", "listing_type": "sale"},
    ]},
]

CLIENTS = [
    {"username": "demo_client_chioma", "full_name": "Chioma Eze"},
    {"username": "demo_client_musa", "full_name": "Musa Ibrahim"},
]

#: The agents' weekly viewing windows ('HH:MM' UTC).
WINDOWS = [("MONDAY", "09:00", "17:00"), ("WEDNESDAY", "09:00", "17:00"), ("SATURDAY", "10:00", "14:00")]

PLAN = {"name": "30/40/30 over 12 months", "lines": [
    {"label": "Deposit", "percent": "30.00", "due": "booking"},
    {"label": "Mid-construction", "percent": "40.00", "due": "months:6"},
    {"label": "Handover", "percent": "30.00", "due": "handover"},
]}


def usernames() -> list[str]:
    return [a["username"] for a in BUILDERS + AGENTS + CLIENTS]


def _principal(user: dict) -> Principal:
    """The demo accounts act as themselves (what their own tokens would allow)."""
    return Principal(user=user, claims={}, scopes=frozenset(scopes_for(user)))


async def _register(ctx, username: str, full_name: str, user_type: str, password: str) -> dict:
    req = RegisterRequest(username=username, email=f"{username}@example.com", password=password, user_type=user_type,
                          full_name=full_name)
    return await ctx.accounts.register(req, verified=True, send_otp=False)


async def load_demo_data(ctx, password: str | None = None) -> str:
    """Load the demo data unless its accounts exist; returns what to print."""
    existing = [name for name in usernames() if await ctx.users.find_login(name) is not None]
    if existing:
        return (f"demo data already loaded ({len(existing)} demo accounts: {', '.join(existing)}); nothing added.\n"
                f"Their password is the one the first run printed.")
    password = password or secrets.token_urlsafe(9)
    projects = units = listings = 0

    for spec in BUILDERS:
        user = await _register(ctx, spec["username"], spec["full_name"], "builder", password)
        user = await ctx.accounts.update_profile(user, {"company_name": spec["company"], "registration_number": spec["rc"]})
        # No admin account is involved: the operator running this command verifies the demo companies.
        await ctx.builders.set_verified({"_id": None}, user["_id"], True)
        me = _principal(await ctx.users.get(user["_id"]))
        project = await ctx.projects.create(me, ProjectCreate.model_validate(spec["project"]))
        batch = UnitBatch.model_validate({"units": [
            {"unit_number": n, "floor": floor, "type": kind, "bedrooms": beds, "bathrooms": beds, "area_sqm": 40.0 + 25 * beds,
             "price": price} for n, floor, kind, beds, price in spec["units"]]})
        units += len((await ctx.projects.add_units(me, project["id"], batch))["items"])
        await ctx.projects.add_plan(me, project["id"], PaymentPlanCreate.model_validate(PLAN))
        await ctx.projects.publish(me, project["id"])
        projects += 1

    first_listing: dict | None = None
    agent_ids = []
    for spec in AGENTS:
        user = await _register(ctx, spec["username"], spec["full_name"], "agent", password)
        await ctx.accounts.update_profile(user, {"agency_name": spec["agency"], "years_experience": 5})
        me = _principal(user)
        agent_ids.append(user["_id"])
        for body in spec["listings"]:
            listing = await ctx.properties.create(me, PropertyCreate.model_validate(body))
            first_listing = first_listing or listing
            listings += 1
        for weekday, start, end in WINDOWS:
            await ctx.availability.create(user["_id"], WindowCreate(weekday=weekday, start_time=start, end_time=end))

    clients = [await _register(ctx, spec["username"], spec["full_name"], "client", password) for spec in CLIENTS]
    # A conversation about the first listing: a client asks, its agent answers.
    agent = await ctx.users.get(first_listing["agent_id"])
    await ctx.chat.send(clients[0], agent["_id"], f"Hello, is the {first_listing['title']} still available?",
                        property_id=first_listing["id"])
    await ctx.chat.send(agent, clients[0]["_id"], "Yes it is. I can show it to you on Saturday morning.",
                        property_id=first_listing["id"])

    lines = [f"demo data loaded: {len(BUILDERS)} verified builders, {projects} published projects ({units} units, "
             f"a payment plan each), {len(AGENTS)} agents, {listings} listings with viewing windows, {len(CLIENTS)} clients, "
             "2 chat messages.",
             f"usernames: {', '.join(usernames())}",
             f"password (all of them): {password}"]
    return "\n".join(lines)
