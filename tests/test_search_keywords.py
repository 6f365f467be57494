"""Keyword (`q=`) and map-bounds (`bbox=`) search on GET /properties, as a client runs them."""
from __future__ import annotations

import asyncio
import random

import pytest

from tests.listing_helpers import create_property, word

API = "/api/v1/properties"


async def walk(sheda, params: dict, limit: int = 3) -> list[dict]:
    """Every page of a search, following next_cursor."""
    seen, cursor = [], None
    for _ in range(60):
        r = await sheda.api.get(API, params={**params, "limit": limit, **({"cursor": cursor} if cursor else {})})
        assert r.status == 200, (params, r)
        seen.extend(r.json["items"])
        cursor = r.json["next_cursor"]
        if cursor is None:
            return seen
    raise AssertionError("too many pages")


async def test_q_matches_whole_words_of_title_location_and_description_ignoring_case_and_accents(sheda):
    agent = await sheda.signup("agent")
    w = word()
    in_title = await create_property(sheda, agent, title=f"Pool house in Ìkòyí {w}", location="Banana Island, Lagos")
    in_location = await create_property(sheda, agent, title=f"Quiet flat {w}", location="12 Ikoyi Crescent, Lagos",
                                        description="Has a POOL and a gym")
    in_description = await create_property(sheda, agent, title=f"Duplex {w}", location="Lekki",
                                           description="Ten minutes from IKOYI; shared swimming pool.", listing_type="sale")
    poolside = await create_property(sheda, agent, title=f"Poolside {w}", location="Ajah", description="Near Ikoyi-bound road")

    async def ids(**params):
        return {p["id"] for p in await walk(sheda, params)}

    assert await ids(q=f"{w} ikoyi pool") == {in_title["id"], in_location["id"], in_description["id"]}
    assert await ids(q=f"IKÓYI {w.upper()} Pool") == {in_title["id"], in_location["id"], in_description["id"]}
    assert await ids(q=f"{w} crescent") == {in_location["id"]}
    assert await ids(q=f"{w} swimming") == {in_description["id"]}
    assert await ids(q=f"{w} poolside") == {poolside["id"]}  # whole words: "poolside" is not "pool"
    assert await ids(q=f"{w} ikoyi") == {in_title["id"], in_location["id"], in_description["id"], poolside["id"]}
    assert await ids(q=f"{w} pool gym") == {in_location["id"]}  # every word must match
    assert await ids(q=f"{w} the pool, in IKOYI!") == {in_title["id"], in_location["id"], in_description["id"]}  # common words ignored
    # combined with other filters and each sort
    assert await ids(q=f"{w} pool", listing_type="sale") == {in_description["id"]}
    assert await ids(q=f"{w} pool", location="lekk") == {in_description["id"]}
    assert await ids(q=f"{w} pool", agent_id=agent.id, listing_type="rent") == {in_title["id"], in_location["id"]}
    for sort in ("newest", "price_asc", "price_desc"):
        got = await walk(sheda, {"q": f"{w} ikoyi pool", "sort": sort}, limit=1)
        assert {p["id"] for p in got} == {in_title["id"], in_location["id"], in_description["id"]}
        assert len(got) == 3
    # an edit re-indexes the words; a delisted listing is no longer found
    r = await sheda.api.patch(f"{API}/{in_location['id']}", {"description": "No pool any more, but a tennis court"}, token=agent.token)
    assert r.status == 200, r
    assert await ids(q=f"{w} gym") == set()
    assert await ids(q=f"{w} tennis court") == {in_location["id"]}
    assert (await sheda.api.delete(f"{API}/{in_title['id']}", token=agent.token)).status == 204
    assert await ids(q=f"{w} ikoyi pool") == {in_location["id"], in_description["id"]}


async def test_a_long_description_costs_a_bounded_number_of_index_entries(sheda):
    from sheda_rt.search import KEYWORD_MAX_FACETS

    agent = await sheda.signup("agent")
    w = word()
    text = " ".join(f"word{i}" for i in range(600))
    prop = await create_property(sheda, agent, title=f"Big {w}", description=text[:5000])
    stored = await sheda.ctx.db["properties"].find_one({"_id": prop["id"]})
    keywords = [f for f in stored["facets"] if f.startswith("k:")]
    assert len(keywords) == KEYWORD_MAX_FACETS
    # the title's words come first, so they are always searchable
    assert {p["id"] for p in await walk(sheda, {"q": f"{w} big"})} == {prop["id"]}
    assert {p["id"] for p in await walk(sheda, {"q": f"{w} word3"})} == {prop["id"]}


async def test_bad_q_and_bbox_are_422(sheda):
    bad = [
        {"q": "x" * 10_240},                       # 10 KB
        {"q": " ".join(f"w{i}" for i in range(9))},  # 9 words
        {"q": "the in of"},                         # nothing searchable
        {"q": "!!! ..."},
        {"q": ""},
        {"bbox": "3.3,6.4,3.5"}, {"bbox": "a,b,c,d"}, {"bbox": "3.3,6.4,3.5,6.5,1"},
        {"bbox": "3.5,6.4,3.3,6.5"},               # minLng > maxLng (across the antimeridian)
        {"bbox": "3.3,6.5,3.5,6.4"},               # minLat > maxLat
        {"bbox": "3.3,-91,3.5,6.4"}, {"bbox": "-181,6.4,3.5,6.5"}, {"bbox": "nan,6.4,3.5,6.5"}, {"bbox": "inf,6.4,3.5,6.5"},
        {"bbox": "1" * 10_000},
        {"bbox": "3.3,6.4,3.5,6.5", "near": "6.45,3.4"},
        {"category_id": "0"}, {"category_id": "x"},
    ]
    for params in bad:
        r = await sheda.api.get(API, params=params)
        assert r.status == 422, (params, r)
        assert r.json["code"] == "validation_error" and r.json["errors"], r
    r = await sheda.api.get(API, params={"bbox": "170,0,-170,1"})
    assert r.status == 422 and "antimeridian" in r.json["detail"]


async def test_bbox_matches_the_exact_box_in_every_sort_and_page(sheda):
    agent = await sheda.signup("agent")
    rng = random.Random(11)
    w = word()
    centre = (-42.1, 150.3)  # nowhere near any other test's listings
    for i in range(30):
        lat, lng = centre[0] + rng.uniform(-1.5, 1.5), centre[1] + rng.uniform(-1.5, 1.5)
        await create_property(sheda, agent, title=f"{w} plot {i}", location=f"{w} plot {i}", price=str(rng.randint(1, 50) * 100_000),
                              description=rng.choice(["garden", "garden pool", "pool"]),
                              geo={"lat": round(lat, 6), "lng": round(lng, 6)}, listing_type=rng.choice(["rent", "sale"]))
        sheda.ctx.clock.advance(seconds=20)
    edge = await create_property(sheda, agent, title=f"{w} edge", location=f"{w} edge", geo={"lat": -42.0, "lng": 150.0})
    await create_property(sheda, agent, title=f"{w} nowhere", location=f"{w} nowhere")
    col = sheda.ctx.db["properties"]
    keys = {"newest": lambda p: (p["created_at"], p["id"]), "price_asc": lambda p: (float(p["price"]), p["id"]),
            "price_desc": lambda p: (float(p["price"]), p["id"])}
    boxes = [(150.0, -42.0, 150.5, -41.5), (149.9, -42.3, 150.02, -42.0), (148.0, -44.0, 152.0, -40.0), (150.0, -42.0, 150.0, -42.0),
             (148.5, -43.7, 151.9, -40.4)]
    for _ in range(4):
        a, b = sorted(rng.uniform(148.5, 152) for _ in range(2))
        c, d = sorted(rng.uniform(-43.8, -40.5) for _ in range(2))
        boxes.append((a, c, b, d))
    combos = [(box, sort) for box in boxes for sort in ("newest", "price_asc", "price_desc")]
    stats = sheda.ctx.property_store.stats
    for n, (box, sort) in enumerate(combos + combos):
        if n == len(combos):
            # The second pass: drivers and price slices chosen from a sample of every listing (exact shares).
            stats.sample_size = 1_000_000
            await stats.refresh()
        for extra in ({}, {"q": f"{w} pool"}, {"listing_type": "sale", "location": w}):
            params = {"bbox": ",".join(map(str, box)), "sort": sort, **extra}
            got = await walk(sheda, params, limit=4)
            min_lng, min_lat, max_lng, max_lat = box
            flt = {"geo.coordinates.0": {"$gte": min_lng, "$lte": max_lng}, "geo.coordinates.1": {"$gte": min_lat, "$lte": max_lat},
                   "status": "available", "is_active": True, "agent_id": agent.id}
            expected = []
            async for doc in col.find(flt):
                if "q" in extra and "pool" not in doc["description"].split():
                    continue
                if "listing_type" in extra and doc["listing_type"] != "sale":
                    continue
                expected.append(doc["_id"])
            ids = [p["id"] for p in got]
            assert len(ids) == len(set(ids)), (params, "repeated")
            assert set(ids) == set(expected), (params, sorted(set(ids) ^ set(expected)))
            order = [keys[sort](p) for p in got]
            assert order == sorted(order, reverse=sort != "price_asc"), params
    r = await sheda.api.get(API, params={"bbox": "150,-42,150,-42"})
    assert [p["id"] for p in r.json["items"]] == [edge["id"]]  # a box's edges are inside it


async def test_listings_stored_before_keywords_are_refaceted_at_startup(sheda):
    agent = await sheda.signup("agent")
    w = word()
    prop = await create_property(sheda, agent, title=f"Old listing {w}", description="Seaside cottage")
    store = sheda.ctx.property_store
    # As an older version stored it: no keyword facets, and no marker of the newer facets.
    await store.col.update_one({"_id": prop["id"]}, {"$pull": {"facets": {"$regex": "^k:"}}})
    await store.meta.delete_one({"_id": "properties.facets"})
    assert (await sheda.api.get(API, params={"q": f"{w} cottage"})).json["items"] == []
    assert await store.ensure_indexes() is None  # what every start runs
    r = await sheda.api.get(API, params={"q": f"{w} cottage"})
    assert [p["id"] for p in r.json["items"]] == [prop["id"]]


async def test_the_rarest_condition_drives_the_search_by_the_facet_sample(sheda):
    """Which condition drives decides how many listings the database reads, never what is found:
    once the sample says a keyword is rarer than the grid cells (or another keyword), it drives."""
    from sheda_rt.listings.models import SearchQuery

    agent = await sheda.signup("agent")
    w, rare = word(), word()
    expected = set()
    for i in range(12):
        prop = await create_property(sheda, agent, title=f"{w} home {i}", description=f"garden {rare if i < 2 else ''}",
                                     geo={"lat": 61.5 + i * 0.001, "lng": -150.1 + i * 0.001})
        if i < 2:
            expected.add(prop["id"])
    stats = sheda.ctx.property_store.stats
    stats.sample_size = 1_000_000  # every listing of the test database: the shares are exact, not a sample's luck
    await stats.refresh()
    finder = sheda.ctx.property_store.finder
    postings, finder.postings = finder.postings, None  # the index drivers alone (what the keyword postings may bypass)
    try:
        for params in ({"q": f"{w} {rare}"}, {"q": f"{rare} {w}"}, {"q": f"{w} {rare}", "bbox": "-150.2,61.4,-150.0,61.6"},
                       {"q": rare, "near": "61.5,-150.1", "radius_km": 10}):
            trace: list = []
            page = await sheda.ctx.properties.search(SearchQuery.model_validate(params), trace=trace)
            assert {p["id"] for p in page["items"]} == expected, params
            # (featured listings' segment is driven by the same facet, prefixed "f:": sheda_rt/promotions/featured.py)
            assert {p[0]["$match"]["facets"].removeprefix("f:") for p in trace} == {f"k:{rare}"}, (params, trace[0][0])
    finally:
        finder.postings = postings
    # With the postings, two words on few listings together are fetched by id: exactly those listings.
    # (The featured segment, with few featured listings, keeps its prefixed driver: promotions/featured.py.)
    trace = []
    page = await sheda.ctx.properties.search(SearchQuery.model_validate({"q": f"{w} {rare}"}), trace=trace)
    assert {p["id"] for p in page["items"]} == expected
    by_id = [p for p in trace if "_id" in p[0]["$match"]]
    assert by_id and all(set(p[0]["$match"]["_id"]["$in"]) == expected for p in by_id), trace
    r = await sheda.api.get(API, params={"q": f"{w} {rare}", "bbox": "-150.2,61.4,-150.0,61.6"})
    assert {p["id"] for p in r.json["items"]} == expected


async def test_q_with_filters_returns_exactly_the_naive_answer_in_every_sort_and_page(sheda):
    """The keyword search as a brute-force filter over this test's listings defines it: every word
    of q among the folded words of title, location and description, plus the other filters, in the
    sort's order (ties by id), cut into pages by the cursor. Checked without a facet sample, with an
    exhaustive one, and with a tiny one (drivers and slices then come from a few listings' luck)."""
    from sheda_rt.search import keyword_words

    agent = await sheda.signup("agent")
    w = word()
    rng = random.Random(16)
    vocab = ["pool", "garden", "gym", "ocean", "sauna", "quiet", "Gàrden", "POOL"]  # accents and case fold onto the same words
    areas = ["Lekki Phase 1", "Ikoyi", "Ìkòyí Crescent", "Yaba"]
    created = []
    for i in range(48):
        words = rng.choices(vocab, weights=[6, 5, 3, 2, 1, 4, 1, 1], k=rng.randint(1, 5))
        prop = await create_property(
            sheda, agent, title=f"{w} home {i}", description=" ".join(words), location=f"{rng.randint(1, 40)} {rng.choice(areas)}",
            listing_type=rng.choice(["rent", "sale"]), furnished=rng.random() < 0.4, price=str(rng.choice([1, 2, 3, 5, 8]) * 500_000))
        created.append(prop)
        sheda.ctx.clock.advance(seconds=rng.choice([1, 2, 10]))
    for prop in created[::9]:  # unlisted: never found
        assert (await sheda.api.delete(f"{API}/{prop['id']}", token=agent.token)).status == 204
    docs = await sheda.ctx.db["properties"].find({"agent_id": agent.id}).to_list()
    assert len(docs) == 48

    def naive(params: dict) -> list[int]:
        wanted = set(keyword_words(params["q"]))
        hits = [d for d in docs if d["status"] == "available" and d.get("is_active", True)
                and wanted <= set(keyword_words(" ".join([d["title"], d["location"], d.get("description", "")])))
                and ("listing_type" not in params or d["listing_type"] == params["listing_type"])
                and ("furnished" not in params or d["furnished"] == (params["furnished"] == "true"))]
        sort = params.get("sort", "newest")
        if sort == "newest":
            hits.sort(key=lambda d: (d.get("newest_at") or d["created_at"], d["_id"]), reverse=True)
        else:
            hits.sort(key=lambda d: (d["price_minor"], d["_id"]), reverse=sort == "price_desc")
        return [d["_id"] for d in hits]

    queries = []
    for q in ("pool", "garden pool", "ocean sauna", "gym garden quiet", "pool ikoyi", "IKOYI gàrden pool", "lekki quiet", "sauna"):
        for extra in ({}, {"listing_type": "sale"}, {"furnished": "true"}, {"listing_type": "rent", "furnished": "false"}):
            for sort in ("newest", "price_asc", "price_desc"):
                queries.append({"q": f"{w} {q}", "sort": sort, **extra})
    stats = sheda.ctx.property_store.stats
    old_size = stats.sample_size
    nonempty = 0
    try:
        for sample in (None, 1_000_000, 40):
            if sample is not None:
                stats.sample_size = sample
                await stats.refresh()
            for params in queries:
                got = [p["id"] for p in await walk(sheda, params, limit=4)]
                expected = naive(params)
                assert got == expected, (sample, params, got, expected)
                nonempty += bool(expected)
    finally:
        stats.sample_size = old_size
        await stats.refresh()
    assert nonempty > len(queries)  # most of them find something: the comparison is not between empty lists
    # Both ways were compared above: few listings with every word are fetched by id, a lone word walks a driver.
    from sheda_rt.listings.models import SearchQuery

    assert naive({"q": f"{w} sauna"})
    for q, by_id in ((f"{w} sauna", True), (w, False)):
        trace: list = []
        await sheda.ctx.properties.search(SearchQuery.model_validate({"q": q}), trace=trace)
        assert any("_id" in p[0]["$match"] for p in trace) == by_id, (q, trace)


async def test_keyword_postings_are_filled_at_startup_and_used_only_once_complete(sheda):
    """Listings stored before the postings existed are posted by the first start of this version
    (ensure_indexes); until the marker says so, searches walk the index drivers and miss nothing."""
    from bson import Int64

    from sheda_rt.listings.models import SearchQuery
    from sheda_rt.search import FacetPostings

    agent = await sheda.signup("agent")
    w, other = word(), word()
    props = [await create_property(sheda, agent, title=f"{w} {other} flat {i}") for i in range(3)]
    store = sheda.ctx.property_store
    # As an older version left it: no bits for these listings' words, no marker.
    for prop in props:
        block, slot, bit = FacetPostings._slot(prop["id"])
        for facet in (f"k:{w}", f"k:{other}"):
            await store.postings.col.update_one({"_id": f"{facet}|{block}"}, {"$bit": {f"b{slot}": {"and": Int64(~(1 << bit))}}})
    await store.meta.delete_one({"_id": "properties.postings"})
    store.postings._ready, store.postings._checked_at = False, None
    expected = {p["id"] for p in props}
    try:
        trace: list = []
        page = await sheda.ctx.properties.search(SearchQuery.model_validate({"q": f"{w} {other}"}), trace=trace)
        assert {p["id"] for p in page["items"]} == expected
        assert all("_id" not in p[0]["$match"] for p in trace)  # not by id: the postings are not known complete
    finally:
        assert await store.ensure_indexes() is None  # what every start runs: posts every listing, sets the marker
    assert await store.postings.ready()
    trace = []
    page = await sheda.ctx.properties.search(SearchQuery.model_validate({"q": f"{w} {other}"}), trace=trace)
    assert {p["id"] for p in page["items"]} == expected
    assert any("_id" in p[0]["$match"] for p in trace)


@pytest.mark.parametrize("settings_overrides", [{"search_keyword_postings": False}])
async def test_with_keyword_postings_switched_off_writes_post_nothing_and_search_walks_the_drivers(sheda):
    from sheda_rt.listings.models import SearchQuery

    agent = await sheda.signup("agent")
    w = word()
    props = [await create_property(sheda, agent, title=f"{w} flat {i}", description="garden pool" if i % 2 else "garden")
             for i in range(4)]
    store = sheda.ctx.property_store
    assert await store.meta.find_one({"_id": "properties.postings"}) is None  # the next start with them on posts everything again
    assert await store.postings.col.count_documents({"_id": {"$regex": f"^k:{w}\\|"}}) == 0
    trace: list = []
    page = await sheda.ctx.properties.search(SearchQuery.model_validate({"q": f"{w} pool"}), trace=trace)
    assert {p["id"] for p in page["items"]} == {props[1]["id"], props[3]["id"]}
    assert trace and all("_id" not in p[0]["$match"] for p in trace)


async def test_listings_posted_at_once_by_many_writers_all_keep_their_bits(sheda):
    """Bits are only ever set, by one update of a listing's posting documents, or an upsert for a word
    new to its block: writers racing on the same new word must all end up in it."""
    from sheda_rt.search import FacetPostings

    postings = sheda.ctx.property_store.postings
    agent = await sheda.signup("agent")
    for _ in range(2):
        await create_property(sheda, agent)
    w = word()  # on no listing: bits for it under other listings' ids only cost a fetch, never a result
    top = await sheda.ctx.ids.current("properties")
    ids = sorted(random.Random(3).sample(range(1, top + 1), min(40, top)))
    await asyncio.gather(*(postings.add([(i, [f"k:{w}", "k:shared"])]) for i in ids))
    slots, fewest = await postings.slots([f"k:{w}"])
    assert FacetPostings.ids(slots) == ids and fewest == len(ids)


async def test_keyword_ids_whose_words_an_edit_removed_never_take_a_place_on_the_page(sheda):
    """The id path reads candidates' sort keys without testing the words, then fetches them in that
    order against the whole search: candidates whose bits outlived their words (an edit removed the
    word; bits are never cleared) are the newest, cheapest and dearest here, so each page must skip
    them and read on. Every sort, page size and filter gives exactly the listings that still carry
    both words, and the search went by id."""
    from sheda_rt.listings.models import SearchQuery

    agent = await sheda.signup("agent")
    w, v = word(), word()
    rng = random.Random(5)
    both = []
    for i in range(36):  # w alone, v alone, both: each word on 24 listings, both words on 12 (ids win: 12² <= 6 x 24)
        words = [w] if i < 12 else [v] if i < 24 else [w, v]
        prop = await create_property(sheda, agent, title=f"{' '.join(words)} flat {i}", listing_type=rng.choice(["rent", "sale"]),
                                     price=str(1_000_000 + i * 10_000 + rng.randint(0, 9_000)))
        if len(words) == 2:
            both.append(prop)
        sheda.ctx.clock.advance(seconds=1)
    # The newest four, and the two cheapest and two dearest of the rest, lose `v` (their bits stay).
    stale = both[-4:] + sorted(both[:-4], key=lambda p: float(p["price"]))[:2] + sorted(both[:-4], key=lambda p: -float(p["price"]))[:2]
    for i, prop in enumerate(stale):
        price = "500000" if i in (4, 5) else "9000000" if i in (6, 7) else prop["price"]
        r = await sheda.api.patch(f"{API}/{prop['id']}", {"title": f"{w} flat edited", "price": price}, token=agent.token)
        assert r.status == 200, r
    gone = {p["id"] for p in stale}
    docs = await sheda.ctx.db["properties"].find({"_id": {"$in": [p["id"] for p in both]}}).to_list()
    for params in ({}, {"listing_type": "sale"}, {"listing_type": "rent"}):
        for sort in ("newest", "price_asc", "price_desc"):
            hits = [d for d in docs if d["_id"] not in gone and all(d[k] == val for k, val in params.items())]
            if sort == "newest":
                hits.sort(key=lambda d: (d["newest_at"], d["_id"]), reverse=True)
            else:
                hits.sort(key=lambda d: (d["price_minor"], d["_id"]), reverse=sort == "price_desc")
            for limit in (5, 6):
                got = [p["id"] for p in await walk(sheda, {"q": f"{w} {v}", "sort": sort, **params}, limit=limit)]
                assert got == [d["_id"] for d in hits], (params, sort, limit)
    trace: list = []
    page = await sheda.ctx.properties.search(SearchQuery.model_validate({"q": f"{w} {v}", "limit": 5}), trace=trace)
    by_id = [p for p in trace if "_id" in p[0]["$match"]]  # (the featured segment's own search runs first)
    assert by_id and all("_id" in p[0]["$match"] or p[0]["$match"]["facets"].startswith("f:") for p in trace), trace
    assert len(by_id) == 3, by_id  # the sort keys, then the whole listings twice: the first fetch met 4 stale ones
    assert len(page["items"]) == 4 and page["next_cursor"] is None
    assert not gone & {p["id"] for p in page["items"]}


async def test_bbox_with_a_word_keeps_the_word_when_grid_cells_drive(sheda):
    """When the box's grid cells drive (the word is on more listings than the cells), the word is
    tested on what the cells yield; only a driving word is left out of the tests, since its driver
    yields only its listings."""
    from sheda_rt.listings.models import SearchQuery

    agent = await sheda.signup("agent")
    w, other = word(), word()
    rng = random.Random(12)
    centre = (37.3, -120.4)  # nowhere near any other test's listings
    made = []
    for i in range(10):
        made.append(await create_property(sheda, agent, title=f"{w if i % 2 else other} lot {i}", price=str(rng.randint(1, 50) * 100_000),
                                          geo={"lat": centre[0] + rng.uniform(-0.01, 0.01), "lng": centre[1] + rng.uniform(-0.01, 0.01)}))
        sheda.ctx.clock.advance(seconds=5)
    for i in range(20):  # the word is commoner than the box's cells
        await create_property(sheda, agent, title=f"{w} elsewhere {i}")
    box = f"{centre[1] - 0.02},{centre[0] - 0.02},{centre[1] + 0.02},{centre[0] + 0.02}"
    keys = {"newest": lambda p: (p["created_at"], p["id"]), "price_asc": lambda p: (float(p["price"]), p["id"]),
            "price_desc": lambda p: (float(p["price"]), p["id"])}
    stats = sheda.ctx.property_store.stats
    old_size = stats.sample_size
    try:
        stats.sample_size = 1_000_000
        await stats.refresh()
        for sort, key in keys.items():
            expected = sorted((p for p in made if w in p["title"]), key=key, reverse=sort != "price_asc")
            got = await walk(sheda, {"bbox": box, "q": w, "sort": sort}, limit=2)
            assert [p["id"] for p in got] == [p["id"] for p in expected], sort
        trace: list = []
        await sheda.ctx.properties.search(SearchQuery.model_validate({"bbox": box, "q": w}), trace=trace)
        assert any(p[0]["$match"]["facets"].startswith("g") for p in trace), trace  # the cells drove: the case this checks
    finally:
        stats.sample_size = old_size
        await stats.refresh()
