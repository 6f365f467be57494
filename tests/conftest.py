"""Test fixtures: one embedded database process for the session; per test a real
Sheda RT server on a free port of 127.0.0.1, in the test's event loop."""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
import tornado.netutil

from config import load_settings
from handlers.app import make_app
from sheda_rt.database.embedded import EmbeddedDatabase
from sheda_rt.server import Server
from tests.support import OffsetClock, ShedaClient


@pytest.fixture(scope="session")
def embedded_db():
    root = Path(tempfile.mkdtemp(prefix="sheda-test-db-"))
    db = EmbeddedDatabase(root)
    db.start()
    yield db
    db.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def settings_overrides():
    """Override in a test module (or parametrize) to change settings for its servers."""
    return {}


@pytest.fixture
def clock():
    return OffsetClock()


@pytest.fixture
def sheda(io_loop, embedded_db, tmp_path, clock, settings_overrides):
    settings = load_settings(**{
        "data_dir": tmp_path, "mongodb_uri": embedded_db.uri, "mongodb_db": "sheda_test", "host": "127.0.0.1", "port": 0,
        "jwt_secret": "test-secret-" + "x" * 32, "bcrypt_rounds": 4, "shutdown_grace_seconds": 2,
        # every test signs its users up from 127.0.0.1 (some dozens in one test): tests of the per-address limits set them
        "registrations_per_ip_per_hour": 100_000, "otp_sends_per_ip_per_hour": 100_000, **settings_overrides,
    })
    server = Server(settings, embedded_db.uri, clock=clock, app_factory=make_app)
    sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
    port = io_loop.run_sync(lambda: server.start(sockets))[0]
    client = ShedaClient(server, f"http://127.0.0.1:{port}")
    yield client
    io_loop.run_sync(server.shutdown, timeout=30)
