"""The database going away under a running server, as a client sees it.

- Unreachable: REST answers 503 `database_unavailable` with Retry-After (not a
  500), a socket frame gets an error frame and the socket stays open, a message
  is not acked; once the database is back, the same sockets work, a resend with
  the same client_msg_id is stored once, and nothing stored before was lost.
- The embedded database dying under `python run.py` (one process, or workers
  behind their supervisor): it is started again on the same port and storage,
  the open sockets carry on, nothing is lost.
"""
from __future__ import annotations

import json
import os
import signal
import tempfile
import uuid
from pathlib import Path

from sheda_rt.database.embedded import EmbeddedDatabase
from tests.redis_support import Remote, ServerProcess, pid_alive, redis_server, server_env  # noqa: F401  (fixture)
from tests.support import eventually


async def ready_status(api) -> int:
    return (await api.get("/health/ready")).status


async def wait_until(predicate, timeout: float, what: str):
    return await eventually(predicate, what, timeout=timeout, interval=0.2)


async def _is(coro, want) -> bool:
    return (await coro) == want


async def send(ws, receiver_id: int, text: str, cid: str | None = None) -> dict:
    cid = cid or uuid.uuid4().hex
    start = len(ws.frames)
    await ws.send({"receiver_id": receiver_id, "message": text, "client_msg_id": cid})
    return await ws.wait_for(lambda f: f.get("client_msg_id") == cid and f.get("type") in ("ack", "error"), 20, start)


async def history(remote, me, other) -> list[dict]:
    resp = await remote.api.get(f"/api/v1/chat/chat-history/{other.id}", token=me.token, params={"limit": 100})
    assert resp.status == 200, resp
    return resp.json


async def test_an_unreachable_database_is_a_503_and_an_error_frame_and_nothing_is_lost(tmp_path):
    db = EmbeddedDatabase(Path(tempfile.mkdtemp(prefix="sheda-fault-db-", dir=tmp_path)))
    db.start()
    server = ServerProcess(server_env(db, None, tmp_path, "sheda_faults"), tmp_path, "faults")
    try:
        server.start()
        remote = Remote(server)
        alice, bob = await remote.signup("client"), await remote.signup("agent")
        alice_ws, bob_ws = await remote.ws(alice.token), await remote.ws(bob.token)
        first = await send(alice_ws, bob.id, "before the outage")
        assert first["type"] == "ack"
        await bob_ws.wait_type("message", 10, id=first["id"])

        # The database process dies (no watchdog: this server was given a MONGODB_URI).
        os.kill(db.process.pid, signal.SIGKILL)
        db.process.wait()

        resp = await remote.api.get("/api/v1/chat/conversations", token=alice.token)
        assert resp.status == 503, resp
        assert resp.json["code"] == "database_unavailable" and resp.json["detail"]
        assert resp.headers.get("Retry-After") == "5"
        assert await ready_status(remote.api) == 503
        try:  # a new socket: the upgrade is refused the HTTP way, 503, so the client retries
            await remote.ws(alice.token)
            raise AssertionError("a socket opened while the database was unreachable")
        except Exception as exc:  # tornado's HTTPClientError for a non-101 answer
            assert getattr(exc, "code", None) == 503, repr(exc)

        start = len(alice_ws.frames)
        await alice_ws.send({"type": "sync", "since": 0})
        err = await alice_ws.wait_for(lambda f: f.get("type") == "error", 20, start)
        assert err["code"] == "database_unavailable" and err["retry_after"] == 5

        cid = uuid.uuid4().hex
        lost = await send(alice_ws, bob.id, "during the outage", cid)
        assert lost["type"] == "error" and lost["code"] in ("store_failed", "database_unavailable"), lost
        assert not alice_ws.closed.done() and not bob_ws.closed.done(), "sockets stay open through the outage"

        # Back on the same port and storage: the same sockets carry on.
        assert db.recover()
        await wait_until(lambda: _is(ready_status(remote.api), 200), 30, "ready again")
        again = await send(alice_ws, bob.id, "during the outage", cid)
        assert again["type"] == "ack", again
        delivered = await bob_ws.wait_type("message", 10, id=again["id"])
        assert delivered["message"] == "during the outage"
        resent = await send(alice_ws, bob.id, "during the outage", cid)
        assert resent["type"] == "ack" and resent["id"] == again["id"], "a resend stores nothing new"

        rows = await history(remote, bob, alice)
        assert [r["message"] for r in sorted(rows, key=lambda r: r["id"])] == ["before the outage", "during the outage"]
        assert len([f for f in bob_ws.of_type("message") if f["id"] == again["id"]]) == 1
        assert "Traceback" not in server.log_path.read_text()
    finally:
        server.stop()
        db.stop()


async def test_the_embedded_database_is_restarted_when_it_dies_and_nothing_is_lost(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    await crash_and_recover(ServerProcess(server_env(None, None, data, "sheda_watchdog"), data, "watchdog"), data)


async def test_with_workers_the_supervisor_restarts_the_embedded_database(tmp_path, redis_server):
    data = tmp_path / "data"
    data.mkdir()
    env = server_env(None, redis_server, data, "sheda_watchdog_mp")
    await crash_and_recover(ServerProcess(env, data, "workers", args=("--processes", "2")), data)


async def crash_and_recover(server: ServerProcess, data: Path) -> None:
    try:
        server.start(timeout=120)
        remote = Remote(server)
        await wait_until(lambda: _is(ready_status(remote.api), 200), 30, "ready")
        alice, bob = await remote.signup("client"), await remote.signup("agent")
        alice_ws, bob_ws = await remote.ws(alice.token), await remote.ws(bob.token)
        first = await send(alice_ws, bob.id, "before the crash")
        assert first["type"] == "ack"

        lock = json.loads((data / "db.lock.json").read_text())
        os.kill(lock["pid"], signal.SIGKILL)

        async def restarted():
            try:
                now = json.loads((data / "db.lock.json").read_text())
            except (OSError, ValueError):
                return False
            return now["pid"] != lock["pid"] and pid_alive(now["pid"]) and await ready_status(remote.api) == 200

        await wait_until(restarted, 60, "the embedded database restarted")
        now = json.loads((data / "db.lock.json").read_text())
        assert now["port"] == lock["port"], "same port: the driver reconnects by itself"

        second = await send(alice_ws, bob.id, "after the crash")
        assert second["type"] == "ack" and second["id"] > first["id"], second
        await bob_ws.wait_type("message", 10, id=second["id"])
        assert not alice_ws.closed.done() and not bob_ws.closed.done()
        rows = await history(remote, alice, bob)
        assert [r["message"] for r in sorted(rows, key=lambda r: r["id"])] == ["before the crash", "after the crash"]
        login = await remote.api.post("/api/v1/auth/login", {"username": bob.username, "password": bob.password})
        assert login.status == 200, login

        assert server.stop() == 0
        assert not pid_alive(now["pid"]), "the restarted database stops with the server"
        log = server.log_path.read_text()
        assert "embedded_db_exited" in log and "embedded_db_restarted" in log and "Traceback" not in log
    finally:
        server.stop()
