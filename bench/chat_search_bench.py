#!/usr/bin/env python
"""Chat search (GET /api/v1/chat/search) over a real server and the embedded database.

    python bench/chat_search_bench.py                         # 50,000 messages, the searcher in 40 conversations
    python bench/chat_search_bench.py --messages 200000 --mine 40000 --repeat 30

Messages are inserted straight into the database (the id counter moved past them, as the
server would have it). `--mine` of them are the searcher's, spread over `--peers`
conversations and interleaved with everyone else's. Their text is drawn from a small
vocabulary with accents and capitals; "apartment" is in about one message in three (common),
"Bourdillon" in one in 2,000 (rare), "zanzibar" in none (absent). Timed `--repeat` times each
(p50/p99 ms):
- the first page (limit 20) for a common word, a rare word, an absent word, and a common word
  with `with` (one conversation);
- a page in the middle of the common word's results (its cursor taken from a first walk);
- every page of a rare word (following next_cursor while more): pages and total time per walk.
Search adds nothing to the write path, so the chat benchmark's figures (../shared/perf) are
its cost on writes; these are its own.
"""
from __future__ import annotations

import argparse
import json
import random
import secrets
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from chat_bench import ServerProcess, create_users, free_port, pct  # noqa: E402

WORDS = ["the", "flat", "is", "still", "available", "viewing", "on", "Friday", "café", "Lekki", "Ikoyi", "price", "rent",
         "deposit", "keys", "agent", "réunion", "Ọjọ́", "garden", "parking", "NEPA", "generator", "water", "borehole"]


def text(rng: random.Random, k: int) -> str:
    words = rng.choices(WORDS, k=rng.randint(4, 14))
    if k % 3 == 0:
        words.insert(rng.randrange(len(words) + 1), rng.choice(["apartment", "Apartment", "APARTMENTS"]))
    if k % 2000 == 7:
        words.insert(rng.randrange(len(words) + 1), rng.choice(["Bourdillon", "bourdillon"]))
    return " ".join(words)


def seed(uri: str, db_name: str, users: list[tuple[int, str]], total: int, mine: int, peers: int) -> dict:
    from pymongo import MongoClient

    from sheda_rt.chat.store import conv_key

    rng = random.Random(7)
    client = MongoClient(uri)
    db = client[db_name]
    start = db["counters"].find_one({"_id": "messages"}) or {"seq": 0}
    first = int(start["seq"]) + 1
    me = users[0][0]
    my_peers = [u for u, _ in users[1:1 + peers]]
    others = [u for u, _ in users[1 + peers:]]
    every = max(1, total // max(1, mine))
    now = datetime.now(timezone.utc)
    docs, convs, counted = [], {}, {"mine": 0, "apartment": 0, "bourdillon": 0}
    for k in range(total):
        mid = first + k
        if k % every == 0 and counted["mine"] < mine:
            peer = my_peers[counted["mine"] % len(my_peers)]
            s, r = (me, peer) if rng.random() < 0.5 else (peer, me)
            body = text(rng, counted["mine"])
            counted["mine"] += 1
            counted["apartment"] += "partment" in body
            counted["bourdillon"] += "ourdillon" in body
        else:
            s = rng.choice(others)
            r = rng.choice([o for o in others[:50] if o != s])
            body = text(rng, k)
        doc = {"_id": mid, "sender_id": s, "receiver_id": r, "conv": conv_key(s, r), "message": body, "created_at": now}
        convs[doc["conv"]] = (s, r)
        docs.append(doc)
        if len(docs) == 5000:
            db["messages"].insert_many(docs, ordered=False)
            docs = []
    if docs:
        db["messages"].insert_many(docs, ordered=False)
    db["conversations"].insert_many([{"_id": c, "users": list(u), "created_at": now, "read_upto": {}} for c, u in convs.items()],
                                    ordered=False)
    db["counters"].update_one({"_id": "messages"}, {"$max": {"seq": first + total - 1}}, upsert=True)
    client.close()
    return counted


def get(port: int, path: str, token: str, **params) -> dict:
    url = f"http://127.0.0.1:{port}{path}?{urllib.parse.urlencode(params)}"
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=120) as resp:
        assert resp.status == 200, resp.status
        return json.loads(resp.read())


def timed(repeat: int, fn) -> tuple[float, float]:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return pct(times, 50), pct(times, 99)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--mine", type=int, default=10_000, help="messages of the searcher (over --peers conversations)")
    parser.add_argument("--peers", type=int, default=40)
    parser.add_argument("--users", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="sheda-search-"))
    secret = secrets.token_urlsafe(48)
    port = free_port()
    server = ServerProcess(work, port, secret, 1, None, {"MONGODB_DB": "sheda_search"})
    try:
        server.ready()
        users = create_users(server.db_uri(), "sheda_search", secret, args.users)
        t = time.perf_counter()
        counted = seed(server.db_uri(), "sheda_search", users, args.messages, args.mine, args.peers)
        print(f"setup: {args.messages:,} messages, {counted['mine']:,} of them the searcher's over {args.peers} conversations "
              f"({counted['apartment']:,} with 'apartment', {counted['bourdillon']} with 'Bourdillon'), "
              f"inserted in {time.perf_counter() - t:.1f}s", flush=True)
        token, peer = users[0][1], users[1][0]
        results: dict = {"messages": args.messages, **counted}

        walk = []  # the common word's cursors, to time a page in the middle
        cursor = None
        for _ in range(10):
            page = get(port, "/api/v1/chat/search", token, q="apartment", **({"cursor": cursor} if cursor else {}))
            walk.append(cursor)
            cursor = page["next_cursor"]
            if not cursor:
                break
        middle = walk[len(walk) // 2] or ""

        rows = [
            ("common word, first page", lambda: get(port, "/api/v1/chat/search", token, q="apartment")),
            ("common word, a page further", lambda: get(port, "/api/v1/chat/search", token, q="apartment", cursor=middle)),
            ("common word, with one peer", lambda: get(port, "/api/v1/chat/search", token, q="apartment", **{"with": peer})),
            ("two words, accents (cafe reunion)", lambda: get(port, "/api/v1/chat/search", token, q="CAFE reunion")),
            ("rare word, first page", lambda: get(port, "/api/v1/chat/search", token, q="bourdillon")),
            ("absent word, first page", lambda: get(port, "/api/v1/chat/search", token, q="zanzibar")),
        ]
        for name, fn in rows:
            p50, p99 = timed(args.repeat, fn)
            results[name] = {"p50_ms": round(p50, 1), "p99_ms": round(p99, 1)}
            print(f"{name:36s} p50 {p50:8.1f} ms   p99 {p99:8.1f} ms", flush=True)

        for word in ("bourdillon", "zanzibar"):
            pages, hits, per_page, totals = 0, 0, [], []
            for _ in range(max(1, args.repeat // 4)):
                t0 = time.perf_counter()
                cursor, pages, hits = None, 0, 0
                while True:
                    t = time.perf_counter()
                    page = get(port, "/api/v1/chat/search", token, q=word, limit=20, **({"cursor": cursor} if cursor else {}))
                    per_page.append((time.perf_counter() - t) * 1000)
                    pages += 1
                    hits += len(page["items"])
                    cursor = page["next_cursor"]
                    if not page["more"]:
                        break
                totals.append((time.perf_counter() - t0) * 1000)
            results[f"every page of '{word}'"] = {"pages": pages, "hits": hits, "page_p50_ms": round(pct(per_page, 50), 1),
                                                   "page_p99_ms": round(pct(per_page, 99), 1), "walk_p50_ms": round(pct(totals, 50), 1)}
            print(f"every page of '{word}': {pages} pages, {hits} hits; per page p50 {pct(per_page, 50):.1f} ms "
                  f"p99 {pct(per_page, 99):.1f} ms; whole walk p50 {pct(totals, 50):.1f} ms", flush=True)
        print(json.dumps(results))
    finally:
        server.stop()
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
