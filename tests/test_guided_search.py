"""Guided search (GET /search/guided/questions, POST /search/guided), as a signed-out client runs it.

Each test makes its listings in areas named by words no other test uses, and places them
around a random point far from every other test's listings, so other modules' listings
never change what these tests count or find."""
from __future__ import annotations

import asyncio
import math
import random

from sheda_rt.guided.models import GuidedAnswers, GuidedPageQuery
from sheda_rt.search import EARTH_RADIUS_KM
from tests.listing_helpers import create_property, word

QUESTIONS = "/api/v1/search/guided/questions"
SEARCH = "/api/v1/search/guided"
KM = math.pi * EARTH_RADIUS_KM / 180  # km per degree of latitude


def options(body: dict, question: str) -> dict[str, dict]:
    q = next(q for q in body["questions"] if q["id"] == question)
    return {o["id"]: o for o in q["options"]}


def somewhere() -> tuple[float, float]:
    """A point in the southern Atlantic no other test puts a listing near."""
    return random.uniform(-40, -30), random.uniform(-30, -10)


def north_of(point: tuple[float, float], km: float) -> dict:
    return {"lat": point[0] + km / KM, "lng": point[1]}


async def walk(sheda, answers: dict, limit: int, sort: str | None = None) -> list[dict]:
    """Every page of a guided search, following next_cursor."""
    seen, cursor = [], None
    for _ in range(50):
        params = {"limit": limit, **({"sort": sort} if sort else {}), **({"cursor": cursor} if cursor else {})}
        r = await sheda.api.post(SEARCH, {"answers": answers}, params=params)
        assert r.status == 200, r
        seen += r.json["items"]
        cursor = r.json["next_cursor"]
        if cursor is None:
            return seen
    raise AssertionError("too many pages")


async def test_questions_offer_what_the_live_listings_have_and_a_new_area_appears_after_a_refresh(sheda):
    agent = await sheda.signup("agent")
    w = word()
    for price, kind, listing_type in (("900000", "apartment", "rent"), ("1800000", "apartment", "rent"),
                                      ("4500000", "house", "rent"), ("60000000", "house", "sale")):
        await create_property(sheda, agent, location=f"3 Marina Road, {w} Gardens, Lagos", price=price, property_type=kind,
                              listing_type=listing_type)
    # the same area spelled otherwise: one area, its commonest spelling as the label
    await create_property(sheda, agent, location=f"{w.upper()}   GARDENS, Lagos", price="1200000")
    await create_property(sheda, agent, location=f"{w} Gardéns", price="1100000")
    area = f"{w}-gardens"

    r = await sheda.api.get(QUESTIONS)  # signed out; the first question loads the catalog
    assert r.status == 200, r
    assert [q["id"] for q in r.json["questions"]] == ["what", "budget", "where"]
    assert all(q["text"] for q in r.json["questions"])
    where = options(r.json, "where")
    assert where[area]["count"] == 6 and where[area]["label"] == f"{w} Gardens"
    what = options(r.json, "what")
    assert what["rent:apartment"]["label"] == "Apartment to rent" and what["sale:any"]["label"] == "Any home to buy"
    assert all(o["count"] > 0 for q in r.json["questions"] for o in q["options"])

    # answers so far narrow the other questions: this area's kinds, and its rentals' price bands
    r = await sheda.api.get(QUESTIONS, params={"where": area})
    assert r.status == 200, r
    assert {k: o["count"] for k, o in options(r.json, "what").items()} == {
        "rent:any": 5, "rent:apartment": 4, "rent:house": 1, "sale:any": 1, "sale:house": 1}
    r = await sheda.api.get(QUESTIONS, params={"where": area, "what": "rent:any"})
    budget = options(r.json, "budget")
    assert sum(o["count"] for o in budget.values()) == 5
    assert all(b.startswith("b:") for b in budget)
    assert options(r.json, "where")[area]["count"] == 5
    # each offered band finds exactly its count of this area's rentals
    for band, option in budget.items():
        found = await walk(sheda, {"what": "rent:any", "budget": band, "where": area}, limit=10)
        assert len([p for p in found if p["match"]["exact"]]) == option["count"], (band, option, found)

    # a listing in a new area: not offered until the catalog is refreshed, then offered with its count.
    # (Asked with where= so the check does not depend on the top MAX_AREAS areas: other test modules'
    # one-listing areas share the session database, and ties are ordered by label.)
    fresh = word()
    listing = await create_property(sheda, agent, location=f"{fresh} Court, Abuja", price="700000")
    assert (await sheda.api.get(QUESTIONS, params={"where": f"{fresh}-court"})).status == 422
    await sheda.ctx.guided_catalog.refresh()
    r = await sheda.api.get(QUESTIONS, params={"where": f"{fresh}-court"})
    assert r.status == 200 and options(r.json, "where")[f"{fresh}-court"]["count"] == 1, r
    # unlisted: gone at the next refresh; a request past GUIDED_REFRESH_SECONDS starts that refresh itself
    assert (await sheda.api.delete(f"/api/v1/properties/{listing['id']}", token=agent.token)).status == 204
    sheda.ctx.guided_catalog.refresh_seconds = 0
    for _ in range(100):
        r = await sheda.api.get(QUESTIONS, params={"where": f"{fresh}-court"})
        if r.status == 422:
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("the unlisted listing's area is still offered")


async def test_exact_matches_come_first_then_near_misses_with_their_reasons(sheda):
    agent = await sheda.signup("agent")
    w, v = word(), word()
    centre = somewhere()
    here = {"lat": centre[0], "lng": centre[1]}

    async def make(price, location=f"{w} Estate, Lagos", geo=here, **over):
        return (await create_property(sheda, agent, location=location, geo=geo, price=price, **over))["id"]

    exact_old = await make("1500000")
    exact_edge = await make("2000000")  # the band's top is in it
    over = await make("2200000")  # 10 % over
    await make("2400000")  # 20 % over: not a near miss
    await make("1000000", listing_type="sale")  # rent or buy is never bent
    await make("1000000", property_type="house")  # nor the kind of home
    no_position = await make("1000000", geo=None)  # in the area without a position: still an exact match
    outside = await make("1800000", location=f"{v} Court, Lagos", geo=north_of(centre, 2.5))
    outside_over = await make("2100000", location=f"{v} Court, Lagos", geo=north_of(centre, 2.6))
    await make("1800000", location=f"{v} Court, Lagos", geo=north_of(centre, 4.0))  # 3.5 km beyond the area's edge
    await make("1800000", location=f"{v} Court, Lagos", geo=north_of(centre, 2.5), listing_type="sale")
    await sheda.ctx.guided_catalog.refresh()

    answers = {"what": "rent:apartment", "budget": "b:0-2000000", "where": f"{w}-estate"}
    r = await sheda.api.post(SEARCH, {"answers": answers}, params={"sort": "newest"})
    assert r.status == 200, r
    items = r.json["items"]
    assert r.json["next_cursor"] is None
    ids = [p["id"] for p in items]
    assert ids == [no_position, exact_edge, exact_old, over, outside, outside_over], items
    assert [p["match"] for p in items] == [
        {"exact": True, "reasons": []}, {"exact": True, "reasons": []}, {"exact": True, "reasons": []},
        {"exact": False, "reasons": ["₦200k over budget"]},
        {"exact": False, "reasons": [f"2 km outside {w} Estate"]},
        {"exact": False, "reasons": ["₦100k over budget", f"2 km outside {w} Estate"]},
    ]
    # each item is the listing as GET /properties shows it, plus `match`
    listed = (await sheda.api.get(f"/api/v1/properties/{over}")).json
    assert {k: v for k, v in items[3].items() if k != "match"} == listed
    # the default order within the groups, cheapest first; the groups keep their rank
    cheapest = await walk(sheda, answers, limit=20)
    assert [p["id"] for p in cheapest] == [no_position, exact_old, exact_edge, over, outside, outside_over]
    # unanswered questions do not narrow: without a budget there are no budget misses
    found = await walk(sheda, {"what": "rent:apartment", "where": f"{w}-estate"}, limit=20)
    assert [p["match"]["reasons"] for p in found if not p["match"]["exact"]] == [[f"2 km outside {w} Estate"]] * 2
    assert len([p for p in found if p["match"]["exact"]]) == 5  # exact_old, exact_edge, over, 20 % over, no position
    # the open top band has no upper end to miss
    found = await walk(sheda, {"what": "rent:apartment", "budget": "b:2000000-", "where": f"{w}-estate"}, limit=20)
    assert [(p["price"], p["match"]["exact"]) for p in found] == [
        ("2200000.00", True), ("2400000.00", True), ("2100000.00", False)]


async def test_pages_follow_the_ranking_without_repeats_or_skips(sheda):
    agent = await sheda.signup("agent")
    w, v = word(), word()
    centre = somewhere()
    here = {"lat": centre[0], "lng": centre[1]}
    for i in range(4):
        await create_property(sheda, agent, location=f"{w} Close", geo=here, price=str(1_000_000 + i * 10_000))
        await create_property(sheda, agent, location=f"{w} Close", geo=here, price=str(5_200_000 + i * 10_000))
        await create_property(sheda, agent, location=f"{v}, Lagos", geo=north_of(centre, 1.5), price=str(4_000_000 + i))
        await create_property(sheda, agent, location=f"{v}, Lagos", geo=north_of(centre, 1.6), price=str(5_100_000 + i))
    await sheda.ctx.guided_catalog.refresh()
    answers = {"what": "rent:any", "budget": "b:0-5000000", "where": f"{w}-close"}
    whole = await walk(sheda, answers, limit=100)
    assert len(whole) == 16
    groups = [(p["match"]["exact"], len(p["match"]["reasons"])) for p in whole]
    assert groups == [(True, 0)] * 4 + [(False, 1)] * 8 + [(False, 2)] * 4
    for limit in (1, 3, 4, 5):
        assert [p["id"] for p in await walk(sheda, answers, limit=limit)] == [p["id"] for p in whole], limit

    # a listing made between pages: never a repeat nor a skip of what was there
    r = await sheda.api.post(SEARCH, {"answers": answers}, params={"limit": 6})
    first = r.json["items"]
    await create_property(sheda, agent, location=f"{w} Close", geo=here, price="1500000")
    await sheda.ctx.guided_catalog.refresh()
    rest, cursor = [], r.json["next_cursor"]
    while cursor:
        r = await sheda.api.post(SEARCH, {"answers": answers}, params={"limit": 6, "cursor": cursor})
        rest += r.json["items"]
        cursor = r.json["next_cursor"]
    assert [p["id"] for p in first + rest] == [p["id"] for p in whole]

    # a cursor belongs to its answers and order
    r = await sheda.api.post(SEARCH, {"answers": answers}, params={"limit": 2})
    other = {**answers, "budget": "b:0-4000000"}
    bad = await sheda.api.post(SEARCH, {"answers": other}, params={"limit": 2, "cursor": r.json["next_cursor"]})
    assert bad.status == 422 and bad.json["errors"][0]["field"] == "cursor", bad
    bad = await sheda.api.post(SEARCH, {"answers": answers}, params={"limit": 2, "sort": "newest", "cursor": r.json["next_cursor"]})
    assert bad.status == 422, bad
    assert (await sheda.api.post(SEARCH, {"answers": answers}, params={"cursor": "garbage!"})).status == 422


async def test_listings_written_since_the_catalog_was_read_are_ranked_as_they_are_now(sheda):
    """The groups in the area are fetched by the ids the catalog holds for them plus every listing
    written since its last read: a listing made, repriced or unlisted after that read is found (or
    not) exactly where it belongs now, before any refresh."""
    catalog = sheda.ctx.guided_catalog
    kept = catalog.refresh_seconds
    catalog.refresh_seconds = 3600  # no refresh during this test: only the writes since the read count
    try:
        agent = await sheda.signup("agent")
        w = word()
        stays = (await create_property(sheda, agent, location=f"{w} Mews", price="1000000"))["id"]
        goes_over = (await create_property(sheda, agent, location=f"{w} Mews", price="1100000"))["id"]
        unlisted = (await create_property(sheda, agent, location=f"{w} Mews", price="1200000"))["id"]
        comes_in = (await create_property(sheda, agent, location=f"{w} Mews", price="9000000"))["id"]
        over_then_gone = (await create_property(sheda, agent, location=f"{w} Mews", price="2200000"))["id"]
        await create_property(sheda, agent, location=f"{w} Mews", price="300000", listing_type="sale")
        await catalog.refresh()
        answers = {"what": "rent:apartment", "budget": "b:0-2000000", "where": f"{w}-mews"}
        assert [p["id"] for p in await walk(sheda, answers, limit=10)] == [stays, goes_over, unlisted, over_then_gone]

        new = (await create_property(sheda, agent, location=f"{w} Mews", price="1500000"))["id"]
        assert (await sheda.api.patch(f"/api/v1/properties/{goes_over}", {"price": "2100000"}, token=agent.token)).status == 200
        assert (await sheda.api.patch(f"/api/v1/properties/{comes_in}", {"price": "1300000"}, token=agent.token)).status == 200
        for gone in (unlisted, over_then_gone):
            assert (await sheda.api.patch(f"/api/v1/properties/{gone}/status", {"active": False}, token=agent.token)).status == 200
        found = await walk(sheda, answers, limit=2)
        assert [(p["id"], p["match"]["exact"]) for p in found] == [
            (stays, True), (comes_in, True), (new, True), (goes_over, False)], found
        assert found[-1]["match"]["reasons"] == ["₦100k over budget"]

        # The over-budget group after a full page held one listing at the last read (over_then_gone),
        # unlisted since: no cursor to an empty page.
        assert (await sheda.api.patch(f"/api/v1/properties/{goes_over}/status", {"active": False}, token=agent.token)).status == 200
        r = await sheda.api.post(SEARCH, {"answers": answers}, params={"limit": 3})
        assert [p["id"] for p in r.json["items"]] == [stays, comes_in, new] and r.json["next_cursor"] is None, r.json
    finally:
        catalog.refresh_seconds = kept


async def test_a_listing_spelling_its_area_otherwise_is_in_the_area_before_any_refresh(sheda):
    """An area is its words folded: "Ọ<word>" and "O<word>" are one. A listing written after the catalog's
    last read, spelling its area in a way no listing did then, is an exact match at once (it used to be
    ranked "outside" its own area until the next refresh)."""
    catalog = sheda.ctx.guided_catalog
    kept = catalog.refresh_seconds
    catalog.refresh_seconds = 3600  # no refresh during this test: only the writes since the read count
    try:
        agent = await sheda.signup("agent")
        w = word()
        point = somewhere()
        first = (await create_property(sheda, agent, location=f"1 Road, Ọ{w}, Lagos", price="1000000", geo=north_of(point, 0)))["id"]
        await catalog.refresh()
        plain = (await create_property(sheda, agent, location=f"2 Road, O{w.upper()}, Lagos", price="1100000",
                                       geo=north_of(point, 0.2)))["id"]
        other = (await create_property(sheda, agent, location=f"3 Road, Old O{w}, Lagos", price="1200000",
                                       geo=north_of(point, 0.1)))["id"]
        found = await walk(sheda, {"where": f"o{w}"}, limit=10)
        assert [(p["id"], p["match"]["exact"]) for p in found] == [(first, True), (plain, True), (other, False)], found
    finally:
        catalog.refresh_seconds = kept

async def test_an_area_spelt_in_many_cases_is_searched_whole(sheda):
    """Forty spellings of one area differing in case (typed by forty agents) made its regex longer than the
    embedded database takes (1,000 characters): every guided search of the area was a 500."""
    agent = await sheda.signup("agent")
    w, rng = word(), random.Random(7)
    spellings = set()
    while len(spellings) < 40:
        spellings.add("".join(c.upper() if rng.random() < 0.5 else c for c in f"{w} gardens"))
    ids = {(await create_property(sheda, agent, location=f"{i} Road, {s}, Lagos", price="1000000"))["id"]
           for i, s in enumerate(sorted(spellings))}
    await sheda.ctx.guided_catalog.refresh()
    found = await walk(sheda, {"where": f"{w}-gardens"}, limit=100)
    assert {p["id"] for p in found if p["match"]["exact"]} == ids
    # An "area" of 36 one-letter words (no place is named so) is not offered: its regex, too, passed the cap.
    letters = "abcdefghijklmnopqrstuvwxyzabcdefghij"
    await create_property(sheda, agent, location=f"{' '.join(letters.upper())}, Lagos", price="1000000")
    await sheda.ctx.guided_catalog.refresh()
    r = await sheda.api.post(SEARCH, {"answers": {"where": "-".join(letters)}})
    assert r.status == 422 and [e["field"] for e in r.json["errors"]] == ["answers.where"], r

async def test_unknown_options_are_422_naming_the_field(sheda):
    agent = await sheda.signup("agent")
    w = word()
    await create_property(sheda, agent, location=f"{w} Heights, Lagos", price="900000")
    await sheda.ctx.guided_catalog.refresh()
    before = await sheda.ctx.db["properties"].count_documents({})
    for answers, field in (({"what": "rent:castle"}, "answers.what"), ({"what": "lease:apartment"}, "answers.what"),
                           ({"budget": "b:5000000-2000000"}, "answers.budget"), ({"budget": "cheap"}, "answers.budget"),
                           ({"budget": "b:0-99999999999999"}, "answers.budget"), ({"where": "atlantis-zq"}, "answers.where"),
                           ({"where": "no spaces"}, "answers.where"), ({"where": 5}, "answers.where"),
                           ({"when": "now"}, "answers.when")):
        r = await sheda.api.post(SEARCH, {"answers": answers})
        assert r.status == 422, (answers, r)
        assert r.json["code"] == "validation_error" and r.json["errors"][0]["field"] == field, (answers, r.json)
    for params, field in (({"where": "atlantis-zq"}, "where"), ({"what": "sale:castle"}, "what")):
        r = await sheda.api.get(QUESTIONS, params=params)
        assert r.status == 422 and r.json["errors"][0]["field"] == field, (params, r)
    assert (await sheda.api.post(SEARCH, {"answers": {"where": f"{w}-heights"}}, params={"limit": 0})).status == 422
    assert await sheda.ctx.db["properties"].count_documents({}) == before
    # a well-formed band that was never offered is answered: it says what it means
    r = await sheda.api.post(SEARCH, {"answers": {"budget": "b:850000-950000", "where": f"{w}-heights"}})
    assert r.status == 200 and [p["price"] for p in r.json["items"]] == ["900000.00"], r
    # signed in works the same
    r = await sheda.api.post(SEARCH, {"answers": {"where": f"{w}-heights"}}, token=agent.token)
    assert r.status == 200 and len(r.json["items"]) == 1, r
    # The area's name in another case or spacing is the same area (it was a 422: only the lowercase id was taken)
    for where in (f"{w.capitalize()} Heights", f"  {w.upper()}   heights ", f"{w}-HEIGHTS"):
        r = await sheda.api.post(SEARCH, {"answers": {"where": where}})
        assert r.status == 200 and [p["match"]["exact"] for p in r.json["items"]] == [True], (where, r)
        r = await sheda.api.get(QUESTIONS, params={"where": where})
        assert r.status == 200, (where, r)
    r = await sheda.api.post(SEARCH, {"answers": {"where": "Atlantis ZQ"}})
    assert r.status == 422 and r.json["errors"][0]["field"] == "answers.where", r


def _collscan(stage: dict) -> bool:
    children = ([stage["inputStage"]] if "inputStage" in stage else []) + list(stage.get("inputStages", []))
    return stage.get("stage") == "COLLSCAN" or any(_collscan(c) for c in children)


def _winning_plan(explained: dict) -> dict:
    if "queryPlanner" in explained:
        return explained["queryPlanner"]["winningPlan"]
    return next(s["$cursor"]["queryPlanner"]["winningPlan"] for s in explained["stages"] if "$cursor" in s)


async def test_every_read_walks_an_index_never_the_collection(sheda):
    """The embedded planner scans the whole collection unless a filter is index-shaped: every
    pipeline a guided search runs, and the catalog's reads, are explained here."""
    agent = await sheda.signup("agent")
    w, v = word(), word()
    centre = somewhere()
    await create_property(sheda, agent, location=f"{w} Park", geo={"lat": centre[0], "lng": centre[1]}, price="1000000")
    await create_property(sheda, agent, location=f"{v} Park", geo=north_of(centre, 1), price="1100000")
    catalog = sheda.ctx.guided_catalog
    await catalog.refresh()
    trace: list = []
    for answers in ({"what": "rent:apartment", "budget": "b:0-1000000", "where": f"{w}-park"}, {"where": f"{w}-park"},
                    {"budget": "b:500000-1000000"}, {"what": "sale:any"}, {}):
        for sort in ("newest", "price_asc"):
            await sheda.ctx.guided.search(GuidedAnswers(**answers), GuidedPageQuery(limit=1, sort=sort), trace=trace)
    assert len(trace) >= 20
    db = sheda.ctx.db
    for pipeline in trace:
        explained = await db.command("explain", {"aggregate": "properties", "pipeline": pipeline, "cursor": {}},
                                     verbosity="queryPlanner")
        assert not _collscan(_winning_plan(explained)), (pipeline, _winning_plan(explained))
    # a refresh reads what changed since the last one through the updated_at index (only the first, and one an
    # hour, read the whole collection on purpose)
    flt = {"updated_at": {"$gte": catalog._since}}
    explained = await db.command("explain", {"find": "properties", "filter": flt}, verbosity="queryPlanner")
    assert not _collscan(_winning_plan(explained)), (flt, explained)


async def test_the_first_question_after_a_start_is_503_while_the_listings_are_read(sheda, monkeypatch):
    """A server reads every listing before its first answer (seconds at 100,000 on the embedded
    database): a question that cannot wait for it is told to come back, and the read goes on."""
    import sheda_rt.guided.catalog as catalog_module

    monkeypatch.setattr(catalog_module, "FIRST_READ_WAIT", 0)  # this server's first read never finishes in time
    r = await sheda.api.get(QUESTIONS)
    assert r.status == 503 and r.json["code"] == "warming_up" and r.headers["Retry-After"] == "5", r
    r = await sheda.api.post(SEARCH, {"answers": {"what": "rent:any"}})
    assert r.status == 503 and r.json["code"] == "warming_up", r
    for _ in range(200):  # the read started by the first question finishes by itself
        r = await sheda.api.get(QUESTIONS)
        if r.status == 200:
            break
        await asyncio.sleep(0.05)
    assert r.status == 200 and r.json["as_of"], r


async def test_many_writes_since_the_catalog_was_read_are_read_into_it_first(sheda, monkeypatch):
    """More listings written since the catalog's read than a search fetches by id: the catalog
    reads them once, then the groups are counted and read by id again, exact as before."""
    import sheda_rt.guided.service as guided

    catalog = sheda.ctx.guided_catalog
    kept = catalog.refresh_seconds
    catalog.refresh_seconds = 3600
    try:
        agent = await sheda.signup("agent")
        w = word()
        await create_property(sheda, agent, location=f"{w} Terrace", price="1000000")
        await catalog.refresh()
        as_of = catalog.as_of
        monkeypatch.setattr(guided, "CANDIDATES_MAX", 3)
        made = [(await create_property(sheda, agent, location=f"{w} Terrace", price=str(1_100_000 + i)))["id"] for i in range(4)]
        over = (await create_property(sheda, agent, location=f"{w} Terrace", price="2100000"))["id"]  # a group it counted none of
        answers = {"what": "rent:apartment", "budget": "b:0-2000000", "where": f"{w}-terrace"}
        found = await walk(sheda, answers, limit=10)
        assert catalog.as_of != as_of  # read again by the search itself
        assert [p["id"] for p in found][1:] == made + [over] and [p["match"]["exact"] for p in found] == [True] * 5 + [False]
    finally:
        catalog.refresh_seconds = kept
