#!/usr/bin/env python
"""Auth benchmark: a real `python run.py` process on the embedded database, measured
over HTTP with concurrent clients.

    python bench/auth_bench.py                    # defaults: 20 users, 16 in flight, 5 s per phase
    python bench/auth_bench.py --concurrency 64 --seconds 10 --bcrypt-rounds 12

Prints one line per phase, then a JSON summary line:
- login:   POST /auth/login (JSON) per second and p50/p99 latency. bcrypt-bound by design:
           the cost (BCRYPT_ROUNDS, 12 by default) runs in worker threads off the event loop.
- me:      GET /users/me per second and p50/p99: the per-request price of authentication
           (JWT decode + user lookup and revocation check, concurrently, in one round trip).
- refresh: POST /auth/refresh per second and p50/p99: rotation (one conditional update,
           one insert, one revocation lookup per call), each user walking its own chain.

Users are inserted straight into the database with one precomputed bcrypt hash (so the
setup does not take minutes); everything measured goes through the HTTP API.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))] * 1000


async def phase(name: str, seconds: float, concurrency: int, make_call) -> dict:
    """Run `make_call(worker_index)` coroutines back to back in `concurrency` workers."""
    latencies: list[float] = []
    errors = 0
    stop_at = time.perf_counter() + seconds

    async def worker(i: int):
        nonlocal errors
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            ok = await make_call(i)
            if ok:
                latencies.append(time.perf_counter() - t0)
            else:
                errors += 1

    start = time.perf_counter()
    await asyncio.gather(*[worker(i) for i in range(concurrency)])
    elapsed = time.perf_counter() - start
    result = {"phase": name, "per_second": round(len(latencies) / elapsed, 1), "p50_ms": round(pct(latencies, 50), 2),
              "p99_ms": round(pct(latencies, 99), 2), "errors": errors, "concurrency": concurrency}
    print(f"{name:8s} {result['per_second']:9.1f}/s  p50 {result['p50_ms']:7.2f} ms  p99 {result['p99_ms']:7.2f} ms  "
          f"errors {errors}  (concurrency {concurrency})", flush=True)
    return result


async def run(args, base: str, mongo_uri: str) -> list[dict]:
    import bcrypt
    from pymongo import AsyncMongoClient
    from tornado.httpclient import AsyncHTTPClient, HTTPRequest

    password = "bench-password-1"
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(args.bcrypt_rounds)).decode()
    client = AsyncMongoClient(mongo_uri)
    db = client["sheda"]
    now = __import__("datetime").datetime.now(__import__("datetime").timezone.utc)
    users = [{"_id": 10_000_000 + i, "username": f"bench{i}", "username_lc": f"bench{i}", "email": f"bench{i}@example.com",
              "password_hash": hashed, "user_type": "client", "role": "user", "is_active": True, "is_verified": True,
              "created_at": now, "updated_at": now} for i in range(args.users)]
    await db.users.insert_many(users)
    await client.close()

    http = AsyncHTTPClient(max_clients=args.concurrency)

    async def call(method: str, path: str, body=None, token=None) -> tuple[int, dict | None]:
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        resp = await http.fetch(HTTPRequest(base + path, method=method, headers=headers,
                                            body=json.dumps(body) if body is not None else None), raise_error=False)
        return resp.code, (json.loads(resp.body) if resp.body else None)

    results = []

    async def login(i: int) -> bool:
        code, _ = await call("POST", "/api/v1/auth/login", {"username": f"bench{i % args.users}", "password": password})
        return code == 200
    # Failed-login throttling is per account and address; every login here succeeds.
    results.append(await phase("login", args.seconds, args.concurrency, login))

    pairs = []
    for i in range(args.concurrency):
        code, pair = await call("POST", "/api/v1/auth/login", {"username": f"bench{i % args.users}", "password": password})
        pairs.append(pair)

    async def me(i: int) -> bool:
        code, _ = await call("GET", "/api/v1/users/me", token=pairs[i]["access_token"])
        return code == 200
    results.append(await phase("me", args.seconds, args.concurrency, me))

    async def refresh(i: int) -> bool:
        code, pair = await call("POST", "/api/v1/auth/refresh", {"refresh_token": pairs[i]["refresh_token"]})
        if code == 200:
            pairs[i] = pair
        return code == 200
    results.append(await phase("refresh", args.seconds, args.concurrency, refresh))
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--bcrypt-rounds", type=int, default=12)
    args = parser.parse_args()

    data_dir = Path(tempfile.mkdtemp(prefix="sheda-auth-bench-"))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("MONGODB_URI", "REDIS_URL")}
    env.update({"DATA_DIR": str(data_dir), "PORT": str(port), "HOST": "127.0.0.1", "LOG_LEVEL": "WARNING",
                "BCRYPT_ROUNDS": str(args.bcrypt_rounds)})
    server = subprocess.Popen([sys.executable, str(ROOT / "run.py")], env=env, cwd=str(data_dir),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(base + "/health/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                print("server did not start:", server.stderr.read().decode()[-2000:], file=sys.stderr)
                return 1
            time.sleep(0.2)
        lock = json.loads((data_dir / "db.lock.json").read_text())
        mongo_uri = f"mongodb://127.0.0.1:{lock['port']}/?directConnection=true"
        results = asyncio.run(run(args, base, mongo_uri))
        print(json.dumps({"bench": "auth", "bcrypt_rounds": args.bcrypt_rounds, "results": results}))
        return 0
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(60)
            except subprocess.TimeoutExpired:
                server.kill()
        import shutil
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
