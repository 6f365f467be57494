"""The embedded database's operation log, under `python run.py` (sheda_rt/database/embedded.py):

- while chat messages are stored, the server has the log trimmed in small slices (a trim after
  every EMBEDDED_OPLOG_TRIM_ROWS chat writes) instead of the database dropping ~1,000 entries
  at once after every 1,000 writes (one 22 ms stall each, once the log is full);
- at start, before anyone is served, what is past the cap is dropped;
- nothing stored is lost either way.
"""
from __future__ import annotations

import json
import uuid
from pathlib import Path

from pymongo import MongoClient

from tests.redis_support import Remote, ServerProcess, server_env
from tests.support import eventually

DB = "sheda_oplog"


def oplog_entries(data: Path) -> int:
    port = json.loads((data / "db.lock.json").read_text())["port"]
    client = MongoClient(f"mongodb://127.0.0.1:{port}/?directConnection=true", serverSelectionTimeoutMS=10_000)
    try:
        return client.local["oplog.rs"].count_documents({})
    finally:
        client.close()


def stored_between(data: Path, conv: str) -> list[str]:
    port = json.loads((data / "db.lock.json").read_text())["port"]
    client = MongoClient(f"mongodb://127.0.0.1:{port}/?directConnection=true", serverSelectionTimeoutMS=10_000)
    try:
        return [d["message"] for d in client[DB].messages.find({"conv": conv}).sort("_id", 1)]
    finally:
        client.close()


async def send(ws, receiver_id: int, text: str) -> dict:
    cid = uuid.uuid4().hex
    start = len(ws.frames)
    await ws.send({"receiver_id": receiver_id, "message": text, "client_msg_id": cid})
    return await ws.wait_for(lambda f: f.get("client_msg_id") == cid and f.get("type") in ("ack", "error"), 20, start)


async def test_the_oplog_is_trimmed_in_small_slices_and_at_start_and_nothing_is_lost(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    common = {"WS_RATE_BURST": 10_000, "WS_RATE_PER_SECOND": 10_000}
    server = ServerProcess(server_env(None, None, data, DB, EMBEDDED_OPLOG_MAX_ENTRIES=300, EMBEDDED_OPLOG_TRIM_ROWS=20,
                                      **common), data, "oplog")
    try:
        server.start(timeout=120)
        remote = Remote(server)
        alice, bob = await remote.signup("client"), await remote.signup("agent")
        alice_ws = await remote.ws(alice.token)
        texts = [f"m{i}" for i in range(1000)]
        for text in texts:  # one at a time: 1,000 writes, three times the cap
            assert (await send(alice_ws, bob.id, text))["type"] == "ack"
        metrics = await remote.metrics()
        trims = metrics[("sheda_embedded_oplog_trimmed_rows_count", ())]
        assert trims >= 5, trims
        # While the log was not full, trims dropped nothing and came 10 times rarer; then each
        # dropped a slice: the writes since the one before (at least 20 chat writes, at most what
        # 0.1 s or, at the change, 200 writes brought), never ~1,000 at once.
        assert metrics[("sheda_embedded_oplog_trimmed_rows_bucket", (("le", "500.0"),))] == trims
        assert metrics[("sheda_embedded_oplog_trimmed_rows_sum", ())] >= 600  # what passed the cap was dropped
        # The database trims by itself only after 1,000 writes: without the slices it would hold them
        # all. (The writes of the last 0.1 s may wait for the next slice, or the idle one after 10 s.)
        await eventually(lambda: oplog_entries(data) <= 300 + 25, "the oplog trimmed to its cap", timeout=15, interval=0.25)
        conv = ":".join(str(i) for i in sorted((alice.id, bob.id)))
        assert stored_between(data, conv) == texts
        assert server.stop() == 0
    finally:
        server.stop()

    # Started again with a smaller cap: the excess is dropped before the first request is served.
    again = ServerProcess(server_env(None, None, data, DB, EMBEDDED_OPLOG_MAX_ENTRIES=100, EMBEDDED_OPLOG_TRIM_ROWS=20,
                                     **common), data, "oplog-again")
    try:
        again.start(timeout=120)
        log = again.log_path.read_text()
        assert "embedded_oplog_trimmed" in log, log[-3000:]
        trimmed = [json.loads(line[line.index("{"):]) for line in log.splitlines() if "embedded_oplog_trimmed" in line]
        assert trimmed[0]["rows"] >= 100
        await eventually(lambda: oplog_entries(data) <= 100 + 25, "the oplog trimmed to its cap", timeout=15, interval=0.25)  # (+ what starting wrote, until a trim)
        assert stored_between(data, conv) == texts
        assert again.stop() == 0
    finally:
        again.stop()
