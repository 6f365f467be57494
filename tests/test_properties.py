"""Listings as clients and agents use them: create, read, change, delist, search, page, images, favourites."""
from __future__ import annotations

import asyncio

from bson.decimal128 import Decimal128

from tests.listing_helpers import (another_server, create_property, listing, location_facets_keeping_dotless_i, snapshot, start_and_stop,
                                   unfolded_location_facets, word)
from tests.support import JPEG_MAGIC, PNG_1PX, multipart

API = "/api/v1/properties"


async def test_agent_creates_and_anyone_reads_with_money_as_decimal_strings(sheda):
    agent = await sheda.signup("agent")
    prop = await create_property(sheda, agent, price="2500000.5", geo={"lat": 6.4474, "lng": 3.4553}, wifi=True)
    assert prop["price"] == "2500000.50"
    assert prop["status"] == "available" and prop["agent_id"] == agent.id and prop["images"] == []
    assert prop["geo"] == {"lat": 6.4474, "lng": 3.4553} and prop["wifi"] is True and prop["furnished"] is False
    assert prop["created_at"].endswith("Z") and len(prop["created_at"]) == 24
    stored = await snapshot(sheda, "properties", prop["id"])
    assert stored["price"] == Decimal128("2500000.50") and stored["price_minor"] == 250000050
    assert stored["geo"] == {"type": "Point", "coordinates": [3.4553, 6.4474]}
    r = await sheda.api.get(f"{API}/{prop['id']}")
    assert r.status == 200 and r.json == prop
    # integers are accepted as naira
    p2 = await create_property(sheda, agent, price=1500000)
    assert p2["price"] == "1500000.00"


async def test_bad_create_input_is_refused_and_nothing_is_stored(sheda):
    agent = await sheda.signup("agent")
    client = await sheda.signup("client")
    before = await sheda.ctx.db["properties"].count_documents({"agent_id": agent.id})
    bad = [
        {"price": 2500000.5},          # a JSON float
        {"price": "12.345"},           # three decimals
        {"price": "-5"}, {"price": "abc"}, {"price": True},
        {"bedroom": "3"},              # wrong type
        {"furnished": "yes"},
        {"property_type": "castle"}, {"listing_type": "lease"},
        {"title": ""}, {"geo": {"lat": 95, "lng": 3}}, {"geo": {"lat": "6", "lng": 3}},
        {"status": "sold"},            # unknown field
    ]
    for over in bad:
        r = await sheda.api.post(API, listing(**over), token=agent.token)
        assert r.status == 422, (over, r)
        assert r.json["code"] == "validation_error" and r.json["errors"][0]["field"], r.json
    r = await sheda.api.post(API, body=b"{not json", token=agent.token, headers={"Content-Type": "application/json"})
    assert r.status == 400
    assert (await sheda.api.post(API, listing())).status == 401
    r = await sheda.api.post(API, listing(), token=client.token)
    assert r.status == 403 and r.json["code"] == "insufficient_scope"
    assert await sheda.ctx.db["properties"].count_documents({"agent_id": {"$in": [agent.id, client.id]}}) == before


async def test_only_the_owner_or_an_admin_changes_or_delists(sheda):
    owner = await sheda.signup("agent")
    other = await sheda.signup("agent")
    client = await sheda.signup("client")
    admin = await sheda.admin()
    prop = await create_property(sheda, owner)
    pid = prop["id"]
    stored = await snapshot(sheda, "properties", pid)

    r = await sheda.api.patch(f"{API}/{pid}", {"price": "999.00"}, token=other.token)
    assert r.status == 403 and r.json["code"] == "not_owner"
    assert (await sheda.api.patch(f"{API}/{pid}", {"price": "999.00"}, token=client.token)).status == 403
    assert (await sheda.api.delete(f"{API}/{pid}", token=other.token)).status == 403
    assert (await sheda.api.patch(f"{API}/{pid}", {"price": 99.5}, token=owner.token)).status == 422
    assert (await sheda.api.patch(f"{API}/{pid}", {}, token=owner.token)).status == 422
    for body, field in (({"status": "sold"}, "status"), ({"title": None}, "title"), ({"price": None}, "price")):
        r = await sheda.api.patch(f"{API}/{pid}", body, token=owner.token)  # the 422 names the field, not "body"
        assert r.status == 422 and [e["field"] for e in r.json["errors"]] == [field], (body, r.json)
    assert (await sheda.api.patch(f"{API}/999999999", {"title": "x"}, token=owner.token)).status == 404
    assert await snapshot(sheda, "properties", pid) == stored

    r = await sheda.api.patch(f"{API}/{pid}", {"price": "3000000", "location": "Ikoyi, Lagos", "geo": {"lat": 6.45, "lng": 3.43}},
                              token=owner.token)
    assert r.status == 200 and r.json["price"] == "3000000.00" and r.json["location"] == "Ikoyi, Lagos"
    doc = await snapshot(sheda, "properties", pid)
    assert "w:iko" in doc["facets"] and "w:lek" not in doc["facets"]
    r = await sheda.api.patch(f"{API}/{pid}", {"geo": None, "title": "Admin fixed"}, token=admin.token)
    assert r.status == 200 and r.json["geo"] is None and r.json["title"] == "Admin fixed"

    assert (await sheda.api.delete(f"{API}/{pid}", token=owner.token)).status == 204
    assert (await sheda.api.get(f"{API}/{pid}")).status == 404
    assert (await sheda.api.get(f"{API}/{pid}", token=client.token)).status == 404
    seen = await sheda.api.get(f"{API}/{pid}", token=owner.token)
    assert seen.status == 200 and seen.json["is_active"] is False
    assert (await sheda.api.get(f"{API}/{pid}", token=admin.token)).status == 200
    assert (await sheda.api.get(f"{API}/{pid}", token="garbage")).status == 401
    r = await sheda.api.get(API, params={"agent_id": owner.id})
    assert r.status == 200 and r.json["items"] == []


async def test_search_filters_each_narrow_the_result(sheda):
    agent = await sheda.signup("agent")
    w = word()
    a = await create_property(sheda, agent, location=f"{w} Lekki Phase 1", price="1000000", bedroom=1, bathroom=1,
                              property_type="apartment", listing_type="rent", wifi=True)
    b = await create_property(sheda, agent, location=f"{w} Ikoyi", price="5000000", bedroom=3, bathroom=2,
                              property_type="house", listing_type="rent", furnished=True)
    c = await create_property(sheda, agent, location=f"{w} Ajah", price="90000000", bedroom=4, bathroom=4,
                              property_type="land", listing_type="sale", air_condition=True, geo={"lat": 6.47, "lng": 3.57})

    async def ids(**params):
        r = await sheda.api.get(API, params={"location": w, **params})
        assert r.status == 200, r
        return {p["id"] for p in r.json["items"]}

    assert await ids() == {a["id"], b["id"], c["id"]}
    assert await ids(price_min="1000001") == {b["id"], c["id"]}
    assert await ids(price_max=5000000) == {a["id"], b["id"]}
    assert await ids(price_min="1000000.00", price_max="1000000.00") == {a["id"]}
    assert await ids(property_type="house") == {b["id"]}
    assert await ids(listing_type="sale") == {c["id"]}
    assert await ids(listing_type="rent", property_type="apartment") == {a["id"]}
    assert await ids(bedroom_min=3) == {b["id"], c["id"]}
    assert await ids(bathroom_min=2, bedroom_min=4) == {c["id"]}
    assert await ids(furnished="true") == {b["id"]}
    assert await ids(wifi="true") == {a["id"]}
    assert await ids(air_condition="false") == {a["id"], b["id"]}
    assert await ids(agent_id=agent.id) == {a["id"], b["id"], c["id"]}
    # location words: case-insensitive, word prefixes of 3+ letters, every word must match
    assert await ids(location=f"{w.upper()} LEKK") == {a["id"]}
    assert await ids(location=f"{w} phase 1") == {a["id"]}
    assert await ids(location=f"{w} ikoyi ajah") == set()
    assert await ids(location=f"{w} ek") == set()  # not a prefix
    assert await ids(near="6.47,3.57", radius_km=2) == {c["id"]}
    assert await ids(near="6.47,3.40", radius_km=2) == set()
    assert await ids(status="rented") == set()

    for bad in ({"price_min": "x"}, {"price_min": "10", "price_max": "5"}, {"sort": "cheapest"}, {"near": "6.4"},
                {"near": "91,3"}, {"radius_km": "0"}, {"limit": "0"}, {"limit": "101"}, {"bedroom_min": "-1"},
                {"status": "gone"}, {"cursor": "!!!"}, {"agent_id": "me"}, {"colour": "red"}):
        r = await sheda.api.get(API, params=bad)
        assert r.status == 422, (bad, r)
    # A cross-field rule names the query field it is about, not "body" (there is no body).
    for bad, field in (({"price_min": "10", "price_max": "5"}, "price_max"), ({"near": "6.4,3.4", "bbox": "3.3,6.4,3.6,6.5"}, "bbox"),
                       ({"radius_km": "2"}, "radius_km")):  # a radius alone was silently ignored
        r = await sheda.api.get(API, params=bad)
        assert r.status == 422 and [e["field"] for e in r.json["errors"]] == [field], (bad, r.json)


async def test_near_search_matches_the_exact_circle_in_every_sort_and_page(sheda):
    import random

    from sheda_rt.listings.store import EARTH_RADIUS_KM

    agent = await sheda.signup("agent")
    rng = random.Random(7)
    w = word()
    centre = (45.3, -100.7)  # nowhere near any other test's listings
    for i in range(36):
        lat, lng = centre[0] + rng.uniform(-0.5, 0.5), centre[1] + rng.uniform(-0.7, 0.7)
        await create_property(sheda, agent, location=f"{w} plot {i}", price=str(rng.randint(1, 50) * 100_000),
                              geo={"lat": round(lat, 6), "lng": round(lng, 6)}, listing_type=rng.choice(["rent", "sale"]))
        sheda.ctx.clock.advance(seconds=20)  # distinct created_at (tokens last 30 minutes)
    await create_property(sheda, agent, location=f"{w} no position")
    col = sheda.ctx.db["properties"]

    async def walk(params: dict) -> list[dict]:
        seen, cursor = [], None
        for _ in range(40):
            r = await sheda.api.get(API, params={**params, "limit": 7, **({"cursor": cursor} if cursor else {})})
            assert r.status == 200, r
            seen.extend(r.json["items"])
            cursor = r.json["next_cursor"]
            if cursor is None:
                return seen
        raise AssertionError("too many pages")

    keys = {"newest": lambda p: (p["created_at"], p["id"]), "price_asc": lambda p: (float(p["price"]), p["id"]),
            "price_desc": lambda p: (float(p["price"]), p["id"])}
    for radius in (0.5, 3, 10, 25, 60, 100):
        for sort in ("newest", "price_asc", "price_desc"):
            for scoped in (True, False):
                lat, lng = centre[0] + rng.uniform(-0.3, 0.3), centre[1] + rng.uniform(-0.3, 0.3)
                params = {"near": f"{lat},{lng}", "radius_km": radius, "sort": sort, **({"location": w} if scoped else {})}
                got = await walk(params)
                # The database's own answer to the exact circle, without any index tricks:
                flt = {"geo": {"$geoWithin": {"$centerSphere": [[lng, lat], radius / EARTH_RADIUS_KM]}}, "status": "available",
                       "is_active": True}
                expected = {d["_id"] async for d in col.find(flt, projection={"_id": 1})}
                ids = [p["id"] for p in got]
                assert len(ids) == len(set(ids)), (params, "repeated")
                assert set(ids) == expected, (params, sorted(set(ids) ^ expected))
                order = [keys[sort](p) for p in got]
                assert order == sorted(order, reverse=sort != "price_asc"), params
    # Other filters still apply inside the circle.
    params = {"near": f"{centre[0]},{centre[1]}", "radius_km": 100, "location": w, "listing_type": "sale"}
    got = await walk(params)
    assert got and all(p["listing_type"] == "sale" for p in got)


async def test_near_search_across_the_antimeridian(sheda):
    agent = await sheda.signup("agent")
    w = word()
    east = await create_property(sheda, agent, location=f"{w} east", geo={"lat": -16.5, "lng": 179.99})
    west = await create_property(sheda, agent, location=f"{w} west", geo={"lat": -16.5, "lng": -179.99})
    r = await sheda.api.get(API, params={"near": "-16.5,179.999", "radius_km": 5})
    assert r.status == 200 and {p["id"] for p in r.json["items"]} == {east["id"], west["id"]}
    r = await sheda.api.get(API, params={"near": "-16.5,179.9", "radius_km": 5})
    assert r.status == 200 and {p["id"] for p in r.json["items"]} == set()


async def test_listings_stored_before_geo_cells_are_refaceted_at_startup(sheda):
    agent = await sheda.signup("agent")
    prop = await create_property(sheda, agent, location=f"{word()} old", geo={"lat": -33.9, "lng": 18.4})
    store = sheda.ctx.property_store
    # As an older version stored it: no grid-cell facets, and no marker of the newer facets.
    await store.col.update_one({"_id": prop["id"]}, {"$pull": {"facets": {"$regex": "^g"}}})
    await store.meta.delete_one({"_id": "properties.facets"})
    await store.col.insert_one({"_id": await sheda.ctx.ids.next("properties"), "title": "a half-written document"})  # must not stop a start
    assert (await sheda.api.get(API, params={"near": "-33.9,18.4", "radius_km": 1})).json["items"] == []
    assert await store.ensure_indexes() is None  # what every start runs
    r = await sheda.api.get(API, params={"near": "-33.9,18.4", "radius_km": 1})
    assert [p["id"] for p in r.json["items"]] == [prop["id"]]
    assert await store.refacet_if_stale() == 0  # once only


async def test_location_words_match_whatever_their_case_and_accents(sheda):
    """A location typed without its accents (or with them, or in capitals) finds the listing however its agent spelt
    it, as q= and the guided search do."""
    agent = await sheda.signup("agent")
    w = word()
    accented = await create_property(sheda, agent, location=f"Calle 5, Bogotá {w}")
    plain = await create_property(sheda, agent, location=f"Bogota Norte {w}")
    istanbul = await create_property(sheda, agent, location=f"İstanbul Merkez {w}")
    strasse = await create_property(sheda, agent, location=f"Straße 9 {w}")
    shouted = await create_property(sheda, agent, location=f"STRASSE 7 {w}")

    async def ids(location):
        r = await sheda.api.get(API, params={"location": f"{location} {w}"})
        assert r.status == 200, r
        return {p["id"] for p in r.json["items"]}

    for typed in ("bogota", "Bogotá", "BOGOTÁ", "bogo"):
        assert await ids(typed) == {accented["id"], plain["id"]}, typed
    for typed in ("istanbul", "İstanbul", "ISTANBUL", "İSTANBUL", "ista"):
        assert await ids(typed) == {istanbul["id"]}, typed
    for typed in ("strasse", "straße", "STRASSE", "STRAẞE", "Straße 9"):
        assert await ids(typed) == ({strasse["id"]} if typed.endswith("9") else {strasse["id"], shouted["id"]}), typed
    assert await ids("stanbul") == set()  # "İ" is a letter of the word, not a word of its own


async def test_listings_stored_before_location_words_were_folded_are_refaceted_at_a_start(sheda, tmp_path):
    """A listing stored by an older version carries its location words unfolded ("w:bogotá"): the first start of
    this version re-facets it, and writes only the listings whose facets change (not one in plain ASCII)."""
    from sheda_rt.listings.store import PropertyStore

    agent = await sheda.signup("agent")
    w = word()
    accented = await create_property(sheda, agent, location=f"Bogotá {w}")
    plain = await create_property(sheda, agent, location=f"Bogota {w}")
    col, meta = sheda.ctx.db["properties"], sheda.ctx.db["meta"]
    # As the older version wrote them: facets of words only lowercased, and its marker.
    for prop in (accented, plain):
        doc = await col.find_one({"_id": prop["id"]})
        old = {f for f in doc["facets"] if not f.startswith("w:")} | unfolded_location_facets(doc["location"])
        await col.update_one({"_id": prop["id"]}, {"$set": {"facets": sorted(old)}})
    await meta.update_one({"_id": "properties.facets"}, {"$set": {"version": 3}}, upsert=True)
    r = await sheda.api.get(API, params={"location": f"bogota {w}"})
    assert [p["id"] for p in r.json["items"]] == [plain["id"]]  # what the old data answers

    class WriteSpy:
        """The second server's listings collection, noting which listings bulk writes touch."""

        def __init__(self, target):
            self.target, self.written = target, set()

        def __getattr__(self, name):
            return getattr(self.target, name)

        async def bulk_write(self, ops, **kwargs):
            self.written |= {op._filter["_id"] for op in ops}
            return await self.target.bulk_write(ops, **kwargs)

    other = another_server(sheda, tmp_path)
    spy = other.ctx.property_store.col = WriteSpy(other.ctx.property_store.col)
    await start_and_stop(other)  # what every start runs
    assert accented["id"] in spy.written and plain["id"] not in spy.written
    for typed in ("bogota", "Bogotá", "BOGOTÁ"):
        r = await sheda.api.get(API, params={"location": f"{typed} {w}"})
        assert {p["id"] for p in r.json["items"]} == {accented["id"], plain["id"]}, typed
    assert (await meta.find_one({"_id": "properties.facets"}))["version"] == PropertyStore.FACETS_VERSION


async def test_location_words_read_turkish_dotless_i_as_i_also_in_listings_stored_before(sheda, tmp_path):
    """"kadikoy" finds "Kadıköy": the dotless "ı" is a letter (the accent fold kept it), but people type "i". A listing
    stored by the previous version carries "w:kadıköy": the first start of this version re-facets it."""
    from sheda_rt.listings.store import PropertyStore

    agent = await sheda.signup("agent")
    w = word()
    dotless = await create_property(sheda, agent, location=f"Moda, Kadıköy {w}")
    plain = await create_property(sheda, agent, location=f"Kadikoy {w}")

    async def ids(location):
        r = await sheda.api.get(API, params={"location": f"{location} {w}"})
        assert r.status == 200, r
        return {p["id"] for p in r.json["items"]}

    for typed in ("kadikoy", "Kadıköy", "kadıköy", "KADIKÖY", "KADIKOY", "kadı", "kadi"):
        assert await ids(typed) == {dotless["id"], plain["id"]}, typed
    # As the previous version wrote it: "ı" kept in its location facets, and its marker.
    col, meta = sheda.ctx.db["properties"], sheda.ctx.db["meta"]
    doc = await col.find_one({"_id": dotless["id"]})
    old = {f for f in doc["facets"] if not f.startswith("w:")} | location_facets_keeping_dotless_i(doc["location"])
    await col.update_one({"_id": dotless["id"]}, {"$set": {"facets": sorted(old)}})
    await meta.update_one({"_id": "properties.facets"}, {"$set": {"version": 4}}, upsert=True)
    assert await ids("kadikoy") == {plain["id"]}  # what the old data answers
    await start_and_stop(another_server(sheda, tmp_path))  # what every start runs
    assert await ids("kadikoy") == {dotless["id"], plain["id"]}
    assert (await meta.find_one({"_id": "properties.facets"}))["version"] == PropertyStore.FACETS_VERSION


async def test_keywords_read_turkish_dotless_i_as_i_also_in_listings_stored_before(sheda, tmp_path):
    """q=kadikoy finds "Kadıköy" as location=kadikoy does (keywords fold "ı" to "i", stored and typed alike). A
    listing stored by the previous version carries "k:kadıköy": the first start of this version re-facets it."""
    import re

    from sheda_rt.listings.store import PropertyStore
    from sheda_rt.search import STOP_WORDS, fold

    agent = await sheda.signup("agent")
    w = word()
    dotless = await create_property(sheda, agent, title=f"Flat in Kadıköy {w}", location="Moda, Kadıköy")
    plain = await create_property(sheda, agent, title=f"Flat in Kadikoy {w}", location="Kadikoy")

    async def ids(q):
        r = await sheda.api.get(API, params={"q": f"{q} {w}"})
        assert r.status == 200, r
        return {p["id"] for p in r.json["items"]}

    for typed in ("kadikoy", "Kadıköy", "kadıköy", "KADIKÖY", "KADIKOY"):
        assert await ids(typed) == {dotless["id"], plain["id"]}, typed
    # As the previous version wrote it: "ı" kept in its keyword facets, and its marker.
    col, meta = sheda.ctx.db["properties"], sheda.ctx.db["meta"]
    doc = await col.find_one({"_id": dotless["id"]})
    old = {f for f in doc["facets"] if not f.startswith("k:")}
    old |= {"k:" + k[:20] for t in (doc["title"], doc["location"], doc["description"]) for k in re.findall(r"[^\W_]+", fold(t))
            if k not in STOP_WORDS}
    assert "k:kadıkoy" in old
    await col.update_one({"_id": dotless["id"]}, {"$set": {"facets": sorted(old)}})
    await meta.update_one({"_id": "properties.facets"}, {"$set": {"version": 5}}, upsert=True)
    assert await ids("kadikoy") == {plain["id"]}  # what the old data answers
    await start_and_stop(another_server(sheda, tmp_path))  # what every start runs
    assert await ids("kadikoy") == {dotless["id"], plain["id"]}
    assert (await meta.find_one({"_id": "properties.facets"}))["version"] == PropertyStore.FACETS_VERSION


async def test_sorts_and_cursor_pages_never_repeat_or_skip_while_others_insert(sheda):
    agent = await sheda.signup("agent")
    w = word()
    prices = [700, 300, 500, 100, 900, 300, 800, 200, 600, 400, 1000, 50]
    created = []
    for i, price in enumerate(prices):
        created.append(await create_property(sheda, agent, location=f"{w} town", price=str(price * 1000), title=f"p{i}"))
        sheda.ctx.clock.advance(minutes=1)

    async def walk(sort: str, limit: int, insert_between: bool) -> list[dict]:
        seen, cursor, pages = [], None, 0
        while True:
            params = {"location": w, "sort": sort, "limit": limit, **({"cursor": cursor} if cursor else {})}
            r = await sheda.api.get(API, params=params)
            assert r.status == 200, r
            seen.extend(r.json["items"])
            cursor = r.json["next_cursor"]
            pages += 1
            if insert_between:  # someone lists more while we page: a new newest, a cheapest and a dearest
                await create_property(sheda, agent, location=f"{w} town", price="10", title="late-cheap")
                await create_property(sheda, agent, location=f"{w} town", price="99000000", title="late-dear")
            if cursor is None:
                return seen
            assert pages < 50

    newest = await walk("newest", 5, insert_between=False)
    assert [p["id"] for p in newest] == [p["id"] for p in reversed(created)]
    asc = await walk("price_asc", 4, insert_between=False)
    keys = [(float(p["price"]), p["id"]) for p in asc]
    assert keys == sorted(keys) and len(asc) == len(prices)
    desc = await walk("price_desc", 3, insert_between=False)
    keys = [(-float(p["price"]), -p["id"]) for p in desc]
    assert keys == sorted(keys) and len(desc) == len(prices)

    # With inserts between pages: every original listing exactly once, in order, no repeats at all.
    for sort, limit in (("newest", 4), ("price_asc", 5), ("price_desc", 5)):
        seen = await walk(sort, limit, insert_between=True)
        ids = [p["id"] for p in seen]
        assert len(ids) == len(set(ids)), f"{sort}: repeated items"
        assert {p["id"] for p in created} <= set(ids), f"{sort}: skipped items"
        if sort == "newest":
            assert [p["id"] for p in seen if p["title"].startswith("p")] == [p["id"] for p in reversed(created)]

    # a cursor belongs to its sort
    r = await sheda.api.get(API, params={"location": w, "sort": "newest", "limit": 2})
    r2 = await sheda.api.get(API, params={"location": w, "sort": "price_asc", "cursor": r.json["next_cursor"]})
    assert r2.status == 422 and r2.json["errors"][0]["field"] == "cursor"


async def test_forged_cursors_are_422_not_500(sheda):
    import base64
    import json as _json

    def forge(values) -> str:
        return base64.urlsafe_b64encode(_json.dumps(values).encode()).decode().rstrip("=")

    agent = await sheda.signup("agent")
    w = word()
    for i in range(3):
        await create_property(sheda, agent, location=f"{w} town", price=str(1000 * (i + 1)))
    page = await sheda.api.get(API, params={"location": w, "sort": "price_asc", "limit": 1})
    assert page.status == 200 and page.json["next_cursor"]
    forged = [
        ("price_asc", forge([{"$dec": "x"}, 1])),
        ("price_asc", forge([{"$dec": "NaN"}, 1])),
        ("price_asc", forge([{"$dec": "1e999999"}, 1])),
        ("price_asc", forge([{"$gt": 1}, 1])),
        ("price_asc", forge([{"$dec": "-5"}, 1])),
        ("price_asc", forge([{"$dec": "100"}, 2**70])),
        ("newest", forge([{"$dt": "2026-01-01T00:00:00"}, 1])),   # naive
        ("newest", forge([{"$dt": "0001-01-01T00:00:00+00:00"}, 1])),
        ("newest", forge([{"$dt": 5}, 1])),
        ("newest", forge([[[[[[[1]]]]]], 1])),
        ("newest", forge({"a": 1})),
        ("newest", "%%%not-base64"),
        ("newest", forge([1])),
    ]
    for sort, cursor in forged:
        r = await sheda.api.get(API, params={"location": w, "sort": sort, "cursor": cursor})
        assert r.status == 422 and r.json["errors"][0]["field"] == "cursor", (sort, cursor, r)
    again = await sheda.api.get(API, params={"location": w, "sort": "price_asc", "limit": 1, "cursor": page.json["next_cursor"]})
    assert again.status == 200 and len(again.json["items"]) == 1


async def test_ids_beyond_64_bits_are_422(sheda):
    agent, client = await sheda.signup("agent"), await sheda.signup("client")
    for method, path, body in (
        ("post", "/api/v1/appointments", {"property_id": 2**70, "scheduled_at": "2030-01-01T10:00:00Z"}),
        ("post", "/api/v1/chats", {"receiver_id": 10**19, "message": "hi"}),
    ):
        r = await getattr(sheda.api, method)(path, body, token=client.token)
        assert r.status == 422 and r.json["code"] == "validation_error", (path, r)
    r = await sheda.api.get(API, params={"agent_id": str(2**70)})
    assert r.status == 422 and r.json["errors"][0]["field"] == "agent_id"
    for path in (f"{API}/{2**70}", f"/api/v1/users/{10**30}", f"/api/v1/agents/{2**64}/availability"):
        r = await sheda.api.get(path, token=agent.token)
        assert r.status in (404, 422) and "code" in r.json, (path, r)


async def test_images_upload_primary_cap_and_delete(sheda):
    agent = await sheda.signup("agent")
    other = await sheda.signup("agent")
    prop = await create_property(sheda, agent)
    url = f"{API}/{prop['id']}/images"

    body, headers = multipart("file", "a.png", PNG_1PX, "image/png")
    r = await sheda.api.post(url, body=body, headers=headers, token=agent.token)
    assert r.status == 201, r
    first = r.json["image"]
    assert first["is_primary"] is True and first["url"].startswith("/media/properties/")
    served = await sheda.api.get(first["url"])
    assert served.status == 200 and served.body == PNG_1PX

    body, headers = multipart("file", "b.jpg", JPEG_MAGIC, "image/jpeg", extra={"is_primary": "true"})
    r = await sheda.api.post(url, body=body, headers=headers, token=agent.token)
    assert r.status == 201 and r.json["image"]["is_primary"] is True
    second = r.json["image"]
    imgs = r.json["property"]["images"]
    assert [i["is_primary"] for i in imgs] == [False, True]

    stored = await snapshot(sheda, "properties", prop["id"])
    for content, status in ((b"GIF89a" + b"\x00" * 50, 415), (b"not an image at all", 415)):
        body, headers = multipart("file", "x.png", content, "image/png")
        r = await sheda.api.post(url, body=body, headers=headers, token=agent.token)
        assert r.status == status, r
    body, headers = multipart("file", "a.png", PNG_1PX, "image/png")
    assert (await sheda.api.post(url, body=body, headers=headers, token=other.token)).status == 403
    assert (await sheda.api.post(url, body=body, headers=headers)).status == 401
    assert (await sheda.api.post(url, {"file": "x"}, token=agent.token)).status == 415
    body, headers = multipart("other", "a.png", PNG_1PX, "image/png")
    assert (await sheda.api.post(url, body=body, headers=headers, token=agent.token)).status == 422
    assert await snapshot(sheda, "properties", prop["id"]) == stored

    r = await sheda.api.patch(f"{url}/{first['id']}", {"is_primary": True}, token=agent.token)
    assert r.status == 200 and [i["is_primary"] for i in r.json["images"]] == [True, False]
    assert (await sheda.api.patch(f"{url}/999999", {"is_primary": True}, token=agent.token)).status == 404
    assert (await sheda.api.patch(f"{url}/{first['id']}", {"is_primary": False}, token=agent.token)).status == 422

    r = await sheda.api.delete(f"{url}/{first['id']}", token=agent.token)
    assert r.status == 204
    got = (await sheda.api.get(f"{API}/{prop['id']}")).json["images"]
    assert [(i["id"], i["is_primary"]) for i in got] == [(second["id"], True)]
    assert (await sheda.api.get(first["url"])).status == 404
    assert (await sheda.api.delete(f"{url}/{first['id']}", token=agent.token)).status == 404


async def test_image_size_cap_is_413(sheda):
    agent = await sheda.signup("agent")
    prop = await create_property(sheda, agent)
    big = PNG_1PX + b"\x00" * (sheda.ctx.settings.max_upload_bytes + 10)
    body, headers = multipart("file", "big.png", big, "image/png")
    r = await sheda.api.post(f"{API}/{prop['id']}/images", body=body, headers=headers, token=agent.token)
    assert r.status == 413, r
    assert (await snapshot(sheda, "properties", prop["id"]))["images"] == []


async def test_at_most_ten_images_even_when_uploads_race(sheda):
    agent = await sheda.signup("agent")
    prop = await create_property(sheda, agent)
    url = f"{API}/{prop['id']}/images"

    async def upload():
        body, headers = multipart("file", "a.png", PNG_1PX, "image/png")
        return await sheda.api.post(url, body=body, headers=headers, token=agent.token)

    results = await asyncio.gather(*(upload() for _ in range(14)))
    statuses = sorted(r.status for r in results)
    assert statuses == [201] * 10 + [409] * 4, statuses
    doc = await snapshot(sheda, "properties", prop["id"])
    assert len(doc["images"]) == 10 and sum(1 for i in doc["images"] if i["is_primary"]) == 1
    files = list((sheda.ctx.settings.media_dir / "properties").glob("*"))
    assert len(files) == 10  # refused uploads leave no file behind


async def test_favourites_add_duplicate_remove_list(sheda):
    agent = await sheda.signup("agent")
    client = await sheda.signup("client")
    props = [await create_property(sheda, agent, title=f"fav{i}") for i in range(3)]
    for p in props:
        r = await sheda.api.post(f"{API}/{p['id']}/favourite", token=client.token)
        assert r.status == 201 and r.json["property_id"] == p["id"]
    r = await sheda.api.post(f"{API}/{props[0]['id']}/favourite", token=client.token)
    assert r.status == 409 and r.json["code"] == "already_favourite"
    assert (await sheda.api.post(f"{API}/999999999/favourite", token=client.token)).status == 404
    assert (await sheda.api.post(f"{API}/{props[0]['id']}/favourite")).status == 401
    assert await sheda.ctx.db["favourites"].count_documents({"user_id": client.id}) == 3

    page1 = await sheda.api.get("/api/v1/users/me/favourites", params={"limit": 2}, token=client.token)
    assert page1.status == 200 and [f["property_id"] for f in page1.json["items"]] == [props[2]["id"], props[1]["id"]]
    page2 = await sheda.api.get("/api/v1/users/me/favourites", params={"limit": 2, "cursor": page1.json["next_cursor"]}, token=client.token)
    assert [f["property"]["id"] for f in page2.json["items"]] == [props[0]["id"]] and page2.json["next_cursor"] is None
    # An unknown query key is refused naming it, as GET /properties does (it was a silent 200).
    r = await sheda.api.get("/api/v1/users/me/favourites", params={"limit": 2, "foo": "1"}, token=client.token)
    assert r.status == 422 and [e["field"] for e in r.json["errors"]] == ["foo"], r.json

    assert (await sheda.api.delete(f"{API}/{props[1]['id']}/favourite", token=client.token)).status == 204
    assert (await sheda.api.delete(f"{API}/{props[1]['id']}/favourite", token=client.token)).status == 404
    await sheda.api.delete(f"{API}/{props[2]['id']}", token=agent.token)
    assert (await sheda.api.post(f"{API}/{props[2]['id']}/favourite", token=agent.token)).status == 404
    r = await sheda.api.get("/api/v1/users/me/favourites", token=client.token)
    assert [(f["property_id"], f["property"] is None) for f in r.json["items"]] == [(props[2]["id"], True), (props[0]["id"], False)]


async def test_agent_profile_lists_active_listings(sheda):
    agent = await sheda.signup("agent")
    keep = await create_property(sheda, agent, title="keep")
    gone = await create_property(sheda, agent, title="gone")
    await sheda.api.delete(f"{API}/{gone['id']}", token=agent.token)
    r = await sheda.api.get(f"/api/v1/agents/{agent.id}")
    assert r.status == 200 and r.json["id"] == agent.id and r.json["username"] == agent.username
    assert [p["id"] for p in r.json["listings"]] == [keep["id"]]
    client = await sheda.signup("client")
    assert (await sheda.api.get(f"/api/v1/agents/{client.id}")).status == 404
    assert (await sheda.api.get("/api/v1/agents/999999999")).status == 404
    assert (await sheda.api.get("/api/v1/agents/abc")).status == 404
