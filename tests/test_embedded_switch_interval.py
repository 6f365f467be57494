"""The embedded database's interpreter runs with a short switch interval (EMBEDDED_DB_SWITCH_INTERVAL_MS,
sheda_rt/database/embedded.py `child_env`, embedded_site/sitecustomize.py).

The database is its own process, whose code we never import: what we control is its
environment. These tests read the environment the running database process really got
(/proc/<pid>/environ) and start an interpreter with exactly that environment to see the
interval it ends up with.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from pymongo import MongoClient

from sheda_rt.database.embedded import SITE_DIR, EmbeddedDatabase

PROBE = "import sys; print(sys.getswitchinterval()); print(getattr(sys, 'other_site_ran', False))"


def environ_of(pid: int) -> dict:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def interpreter_with(env: dict) -> tuple[float, bool]:
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=60, check=True).stdout
    interval, other = out.split()
    return float(interval), other == "True"


def test_the_running_embedded_database_got_a_1_ms_switch_interval(embedded_db):
    env = environ_of(embedded_db.process.pid)
    assert env["SHEDA_EMBEDDED_SWITCH_INTERVAL_MS"] == "1.0"
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(SITE_DIR)
    assert interpreter_with(env) == (0.001, False)
    # ...and it serves (its own code ran after the sitecustomize).
    client = MongoClient(embedded_db.uri, serverSelectionTimeoutMS=10_000)
    try:
        assert client.admin.command("ping")["ok"] == 1
    finally:
        client.close()


def test_zero_leaves_the_interpreters_default_and_another_sitecustomize_still_runs(tmp_path):
    other = tmp_path / "other_site"
    other.mkdir()
    (other / "sitecustomize.py").write_text("import sys\nsys.other_site_ran = True\n")
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(other)}

    default = EmbeddedDatabase(tmp_path / "a", switch_interval_ms=0).child_env(base)
    assert "SHEDA_EMBEDDED_SWITCH_INTERVAL_MS" not in default and default["PYTHONPATH"] == str(other)
    assert interpreter_with(default) == (0.005, True)

    short = EmbeddedDatabase(tmp_path / "b", switch_interval_ms=2.5).child_env(base)
    assert short["PYTHONPATH"] == os.pathsep.join([str(SITE_DIR), str(other)])
    assert interpreter_with(short) == (0.0025, True)  # ours first, theirs still run

    # A malformed value set by hand is ignored (the interpreter's default), never a crash at start.
    assert interpreter_with(dict(short, SHEDA_EMBEDDED_SWITCH_INTERVAL_MS="fast")) == (0.005, True)
