#!/usr/bin/env python
"""Chat reads at scale: how long the chat's reads take over REST when the messages
collection is large and one conversation is long. Real server, embedded database.

    python bench/chat_reads_bench.py                      # 100,000 messages, one pair with 20,000 of them
    python bench/chat_reads_bench.py --messages 300000 --busy 50000 --repeat 30

Messages are inserted straight into the database (with the id counter moved past
them, as the server would have it): the busy pair's messages are interleaved with
everyone else's, and a listing-scoped thread is every 50th message of the pair.
Then, for the busy pair, each of these is timed `--repeat` times (p50/p99 ms):
- history: first page oldest-first, first page newest-first, a page 1,000 in
- thread: the listing thread's newest page
- conversations: the conversation list (last message and unread count per peer)
- read: a read receipt moving the watermark by a few messages (POST /chat/read), after
  one first receipt that marks nearly the whole conversation read (timed on its own)
- resend: a resend of a recent message with its client_msg_id (POST /chats)
- sync: a socket-less view of it, history since a recent id (newest-first page after it)
"""
from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import sys
import tempfile
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from chat_bench import ServerProcess, create_users, free_port, pct  # noqa: E402


def seed(uri: str, db_name: str, users: list[tuple[int, str]], total: int, busy: int, property_id: int) -> list[int]:
    """Insert `total` messages, `busy` of them between users[0] and users[1]; returns the busy pair's ids."""
    from pymongo import MongoClient

    from sheda_rt.chat.store import conv_key

    client = MongoClient(uri)
    db = client[db_name]
    db["properties"].insert_one({"_id": property_id, "agent_id": users[1][0], "title": "bench listing"})
    start = db["counters"].find_one({"_id": "messages"}) or {"seq": 0}
    first = int(start["seq"]) + 1
    a, b = users[0][0], users[1][0]
    others = [u for u, _ in users[2:]]
    every = max(1, total // max(1, busy))
    now = datetime.now(timezone.utc)
    busy_ids, docs, convs = [], [], {}
    for k in range(total):
        mid = first + k
        if k % every == 0 and len(busy_ids) < busy:
            s, r = (a, b) if len(busy_ids) % 2 else (b, a)
            doc = {"_id": mid, "sender_id": s, "receiver_id": r, "conv": conv_key(a, b), "message": f"busy {mid}",
                   "client_msg_id": f"busy-{mid}", "created_at": now}
            if len(busy_ids) % 50 == 0:
                doc["property_id"] = property_id
            busy_ids.append(mid)
        else:
            s, r = others[k % len(others)], others[(k * 7 + 1) % len(others)]
            if s == r:
                r = others[(k * 7 + 2) % len(others)]
            doc = {"_id": mid, "sender_id": s, "receiver_id": r, "conv": conv_key(s, r), "message": f"m {mid}", "created_at": now}
        convs[doc["conv"]] = (doc["sender_id"], doc["receiver_id"])
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
    return busy_ids


def call(port: int, method: str, path: str, token: str, body: dict | None = None) -> tuple[int, object]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method,
                                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def timed(repeat: int, fn) -> tuple[float, float]:
    times = []
    for i in range(repeat):
        t = time.perf_counter()
        fn(i)
        times.append((time.perf_counter() - t) * 1000)
    return pct(times, 50), pct(times, 99)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--busy", type=int, default=20_000, help="messages of the one long conversation")
    parser.add_argument("--users", type=int, default=2_000)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="sheda-reads-"))
    secret = secrets.token_urlsafe(48)
    port = free_port()
    server = ServerProcess(work, port, secret, 1, None, {"MONGODB_DB": "sheda_reads", "WS_RATE_BURST": "1000000",
                                                          "WS_RATE_PER_SECOND": "1000000"})
    try:
        server.ready()
        users = create_users(server.db_uri(), "sheda_reads", secret, args.users)
        property_id = 10**12 + secrets.randbelow(10**6)
        t = time.perf_counter()
        busy_ids = seed(server.db_uri(), "sheda_reads", users, args.messages, args.busy, property_id)
        print(f"setup: {args.messages:,} messages ({len(busy_ids):,} in one conversation) inserted in {time.perf_counter() - t:.1f}s",
              flush=True)
        (a, a_tok), (b, b_tok) = users[0], users[1]
        results = {"messages": args.messages, "busy": len(busy_ids)}

        def check(status, expected=200):
            assert status == expected, status

        from_b = [m for k, m in enumerate(busy_ids) if k % 2 == 0][-50:]  # b wrote the even ones (seed)
        t = time.perf_counter()
        first = call(port, "GET", "/api/v1/chat/conversations", a_tok)[1]["items"][0]["unread_count"]
        results["conversation list, first call (ms)"] = round((time.perf_counter() - t) * 1000, 1)
        t = time.perf_counter()
        check(call(port, "POST", "/api/v1/chat/read", a_tok, {"other_user_id": b, "up_to": busy_ids[-400]})[0])
        took = (time.perf_counter() - t) * 1000
        results["first read receipt (ms)"] = round(took, 1)
        print(f"first conversation list ({first:,} unread) {results['conversation list, first call (ms)']:,.1f} ms; "
              f"first read receipt (marks ~{first - 200:,} messages read) {took:,.1f} ms", flush=True)
        rows = [
            ("history oldest-first page", lambda i: check(call(port, "GET", f"/api/v1/chat/chat-history/{b}?limit=50", a_tok)[0])),
            ("history newest-first page", lambda i: check(call(port, "GET", f"/api/v1/chat/chat-history/{b}?limit=50&order=desc", a_tok)[0])),
            ("history page 1,000 in (desc)", lambda i: check(call(port, "GET", f"/api/v1/chat/chat-history/{b}?limit=50&offset=1000&order=desc", a_tok)[0])),
            ("listing thread newest page", lambda i: check(call(port, "GET", f"/api/v1/chat/threads/{property_id}/{b}?limit=20&order=desc", a_tok)[0])),
            ("conversation list", lambda i: check(call(port, "GET", "/api/v1/chat/conversations", a_tok)[0])),
            ("read receipt (+4 messages)", lambda i: check(call(port, "POST", "/api/v1/chat/read",
                                                              a_tok, {"other_user_id": b, "up_to": busy_ids[-400 + 4 * i]})[0])),
            ("resend of a recent message", lambda i: check(call(port, "POST", "/api/v1/chats", b_tok,
                                                              {"receiver_id": a, "message": "again",
                                                               "client_msg_id": f"busy-{from_b[i % len(from_b)]}"})[0])),
        ]
        for name, fn in rows:
            p50, p99 = timed(args.repeat, fn)
            results[name] = {"p50_ms": round(p50, 1), "p99_ms": round(p99, 1)}
            print(f"{name:32s} p50 {p50:8.1f} ms   p99 {p99:8.1f} ms", flush=True)
        print(json.dumps(results))
    finally:
        server.stop()
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
