"""Running several: `run.py --processes N`, and separate instances sharing one
Redis and one database behaving as one server. Every server here is a real
`python run.py` process; clients use REST and WebSockets on their ports."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

from tests.redis_support import (  # noqa: F401  (module fixtures)
    ROOT, Remote, ServerProcess, clean_env, parse_metrics, pid_alive, redis_server, running_pair, server_env, server_pair,
    shared_dir,
)


def test_processes_without_redis_is_refused_with_one_line(tmp_path):
    env = {**clean_env(), "DATA_DIR": str(tmp_path), "PORT": "0"}
    done = subprocess.run([sys.executable, "run.py", "--processes", "2"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "REDIS_URL" in lines[0] and "--processes" in lines[0], done.stderr
    assert not (tmp_path / "db.lock.json").exists()  # refused before starting anything


def get_json(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


async def test_processes_2_share_one_port_with_one_database_and_stop_on_sigterm(redis_server, tmp_path):
    # No MONGODB_URI: the parent starts the embedded database once; the workers use it.
    env = server_env(None, redis_server, tmp_path, "sheda_workers")
    server = ServerProcess(env, tmp_path, "workers", args=("--processes", "2")).start(timeout=120)
    try:
        lock = json.loads((tmp_path / "db.lock.json").read_text())
        db_pid = lock["pid"]
        assert pid_alive(db_pid)
        # Both workers are up: the log has two "listening" lines with different pids on the one port.
        deadline = time.monotonic() + 30
        while True:
            listening = [json.loads(line) for line in server.log().splitlines() if '"event": "listening"' in line]
            if len({rec["pid"] for rec in listening}) == 2 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert len({rec["pid"] for rec in listening}) == 2 and {p for rec in listening for p in rec["ports"]} == {server.port}
        worker_pids = {rec["pid"] for rec in listening}

        remote = Remote(server)
        user = await remote.signup("client")  # register + OTP + verify, spread over the workers
        for _ in range(6):
            me = await remote.api.get("/api/v1/users/me", token=user.token)
            assert me.status == 200 and me.json["id"] == user.id
        status, ready = get_json(server.base_url + "/health/ready")
        assert status == 200 and ready["checks"] == {"database": "ok", "redis": "ok"}

        # /metrics on any worker is the sum over all of them.
        first = parse_metrics((await remote.api.get("/metrics")).body.decode())
        key = ("sheda_http_requests_total", (("method", "GET"), ("route", "/api/v1/users/me"), ("status", "200")))
        assert first[key] == 6
        # Open sockets: one total over the live workers, whichever worker holds them.
        sockets = [await remote.ws(user.token) for _ in range(3)]
        for ws in sockets:
            await ws.send({"type": "ping"})
            await ws.wait_type("pong")
        gauges = {labels: v for (name, labels), v in (await remote.metrics()).items() if name == "sheda_ws_open_sockets"}
        assert gauges == {(): 3}, gauges
        for ws in sockets:
            ws.close()

        server.signal(signal.SIGTERM)
        assert server.wait(60) == 0
        assert not any(pid_alive(p) for p in worker_pids)
        deadline = time.monotonic() + 10
        while pid_alive(db_pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not pid_alive(db_pid), "the embedded database outlived the server"
        assert not (tmp_path / "db.lock.json").exists()
        log = server.log()
        assert log.count('"event": "stopped"') == 2 and '"event": "embedded_db_stopped"' in log
    finally:
        server.stop()


async def test_a_crashed_worker_is_replaced(redis_server, tmp_path, embedded_db):
    env = server_env(embedded_db, redis_server, tmp_path, "sheda_workers_crash")
    server = ServerProcess(env, tmp_path, "crashy", args=("--processes", "2")).start()
    try:
        def workers():
            return [json.loads(line)["pid"] for line in server.log().splitlines() if '"event": "worker_started"' in line]

        deadline = time.monotonic() + 30
        while len(workers()) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        victim = workers()[0]
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while len(workers()) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(workers()) == 3 and victim not in workers()[2:]
        for _ in range(4):
            status, _body = get_json(server.base_url + "/health")
            assert status == 200
    finally:
        assert server.stop() == 0


async def test_separate_instances_share_the_login_throttle(server_pair):
    a, b = (Remote(s) for s in server_pair)
    user = await a.signup("client")
    # LOGIN_MAX_FAILURES (5) wrong passwords get 401, the 6th try 429, alternating between the two processes.
    for n in range(6):
        process = (a, b)[n % 2]
        resp = await process.api.post("/api/v1/auth/login", {"username": user.username, "password": "wrong-password-1"})
        assert resp.status == (401 if n < 5 else 429), (n, resp)
    for process in (a, b):
        resp = await process.api.post("/api/v1/auth/login", {"username": user.username, "password": user.password})
        assert resp.status == 429 and int(resp.headers["Retry-After"]) > 0, resp
        assert resp.json["code"] == "rate_limited"


async def test_logout_on_one_instance_revokes_the_token_on_the_other(server_pair):
    a, b = (Remote(s) for s in server_pair)
    user = await a.signup("agent")
    login = await b.api.post("/api/v1/auth/login", {"username": user.username, "password": user.password})
    assert login.status == 200
    token = login.json["access_token"]
    assert (await a.api.get("/api/v1/users/me", token=token)).status == 200
    assert (await b.api.post("/api/v1/auth/logout", token=token)).status in (200, 204)
    resp = await a.api.get("/api/v1/users/me", token=token)
    assert resp.status == 401 and resp.headers.get("WWW-Authenticate", "").startswith("Bearer")
    assert (await a.api.get("/api/v1/users/me", token=user.token)).status == 200  # other sessions unaffected


async def test_peers_see_the_users_of_a_killed_instance_go_offline(redis_server, tmp_path, embedded_db):
    # kill -9 leaves nobody to announce its sockets closing: a live instance claims the dead one's
    # presence set (after 3 heartbeats) and tells the peers of those not connected elsewhere.
    # Before, Alice was never sent `presence` offline and showed Bob online until she reloaded.
    env = server_env(embedded_db, redis_server, tmp_path, f"sheda_mp_{uuid.uuid4().hex[:8]}")
    with running_pair(env, tmp_path, names=("live", "doomed")) as (live, doomed):
        a, b = Remote(live), Remote(doomed)
        alice, bob, carol = await a.signup("client"), await b.signup("agent"), await a.signup("agent")
        alice_ws = await a.ws(alice.token)
        for sender in (bob, carol):  # both share a conversation with Alice
            resp = await a.api.post("/api/v1/chats", {"receiver_id": alice.id, "message": "hello"}, token=sender.token)
            assert resp.status in (200, 201), resp
        bob_ws = await b.ws(bob.token)
        carol_on_a, carol_on_b = await a.ws(carol.token), await b.ws(carol.token)
        for ws in (bob_ws, carol_on_a, carol_on_b):
            await ws.send({"type": "ping"})
            await ws.wait_type("pong")
        seen = len(alice_ws.frames)

        doomed.process.kill()
        doomed.process.wait(10)
        gone = await alice_ws.wait_for(lambda f: f.get("type") == "presence" and f.get("user_id") == bob.id, 30, start=seen)
        assert gone["online"] is False and gone["last_seen"], gone
        query = await a.api.get(f"/api/v1/presence?user_ids={bob.id},{carol.id}", token=alice.token)
        assert query.status == 200, query
        assert query.json["items"] == [{"user_id": bob.id, "online": False, "last_seen": gone["last_seen"]},
                                       {"user_id": carol.id, "online": True, "last_seen": None}], query.json
        # Carol still has a socket on the live instance: she was not announced offline.
        resp = await a.api.post("/api/v1/chats", {"receiver_id": alice.id, "message": "still here"}, token=carol.token)
        await alice_ws.wait_type("message", 10, id=resp.json["id"])
        await asyncio.sleep(0)
        assert not [f for f in alice_ws.frames[seen:] if f.get("type") == "presence" and f.get("user_id") == carol.id]
        assert not carol_on_a.closed.done()


async def test_peers_see_the_users_of_a_stopped_instance_go_offline_unless_they_reconnect(redis_server, tmp_path, embedded_db):
    # A deploy (SIGTERM) closes sockets with 1001 and does not announce them offline, since most
    # clients reconnect to another instance at once. Those connected elsewhere stay online without
    # a flicker; the others are announced offline by a live instance, as a crash's users are.
    # Before, nobody announced them: Bob showed online to Alice until she reloaded.
    env = server_env(embedded_db, redis_server, tmp_path, f"sheda_mp_{uuid.uuid4().hex[:8]}")
    with running_pair(env, tmp_path, names=("staying", "deployed")) as (staying, deployed):
        a, b = Remote(staying), Remote(deployed)
        alice, bob, carol = await a.signup("client"), await b.signup("agent"), await a.signup("agent")
        alice_ws = await a.ws(alice.token)
        for sender in (bob, carol):
            resp = await a.api.post("/api/v1/chats", {"receiver_id": alice.id, "message": "hello"}, token=sender.token)
            assert resp.status in (200, 201), resp
        bob_ws, carol_ws, carol_on_a = await b.ws(bob.token), await b.ws(carol.token), await a.ws(carol.token)
        for ws in (bob_ws, carol_ws, carol_on_a):
            await ws.send({"type": "ping"})
            await ws.wait_type("pong")
        seen = len(alice_ws.frames)

        deployed.signal(signal.SIGTERM)
        assert (await carol_ws.wait_closed(30))[0] == 1001
        assert deployed.wait(60) == 0
        gone = await alice_ws.wait_for(lambda f: f.get("type") == "presence" and f.get("user_id") == bob.id, 30, start=seen)
        assert gone["online"] is False and gone["last_seen"], gone
        query = await a.api.get(f"/api/v1/presence?user_ids={bob.id},{carol.id}", token=alice.token)
        assert [(i["user_id"], i["online"]) for i in query.json["items"]] == [(bob.id, False), (carol.id, True)], query.json
        resp = await a.api.post("/api/v1/chats", {"receiver_id": alice.id, "message": "still here"}, token=carol.token)
        await alice_ws.wait_type("message", 10, id=resp.json["id"])
        assert not [f for f in alice_ws.frames[seen:] if f.get("type") == "presence" and f.get("user_id") == carol.id
                    and not f["online"]]


async def test_an_instance_that_stalled_past_its_heartbeats_announces_its_users_again(redis_server, tmp_path, embedded_db):
    # An instance frozen for longer than 3 heartbeats looks dead: a live one announces its users
    # offline and takes its presence set. Once it runs again it writes its set back (before, its
    # users stayed offline for GET /presence while connected) and announces them online again.
    env = server_env(embedded_db, redis_server, tmp_path, f"sheda_mp_{uuid.uuid4().hex[:8]}")
    with running_pair(env, tmp_path, names=("live", "frozen")) as (live, frozen):
        a, b = Remote(live), Remote(frozen)
        alice, bob = await a.signup("client"), await b.signup("agent")
        alice_ws = await a.ws(alice.token)
        resp = await a.api.post("/api/v1/chats", {"receiver_id": alice.id, "message": "hello"}, token=bob.token)
        assert resp.status == 201, resp
        bob_ws = await b.ws(bob.token)
        await alice_ws.wait_for(lambda f: f.get("type") == "presence" and f.get("user_id") == bob.id and f["online"], 10)
        seen = len(alice_ws.frames)

        def told(online):
            return lambda f: f.get("type") == "presence" and f.get("user_id") == bob.id and f["online"] is online
        frozen.signal(signal.SIGSTOP)
        try:
            await alice_ws.wait_for(told(False), 30, start=seen)
        finally:
            frozen.signal(signal.SIGCONT)
        await alice_ws.wait_for(told(True), 30, start=seen)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while True:  # its set is written back
            query = await a.api.get(f"/api/v1/presence?user_ids={bob.id}", token=alice.token)
            if query.json["items"][0]["online"]:
                break
            assert loop.time() < deadline, query.json
            await asyncio.sleep(0.2)
        await bob_ws.send({"type": "ping"})
        await bob_ws.wait_type("pong", 10)
