"""The chat keeps "this receiver exists and is active" in memory (60 s), so a send needs no
database read. A deactivation or deletion on any process must still stop messages to that
user at once on every process: the revocation control message drops the entry."""
from __future__ import annotations

import asyncio
import uuid

import pytest

from tests.redis_support import Remote, ServerProcess, redis_server, running_pair, server_env, shared_dir  # noqa: F401


@pytest.fixture
def server_pair(embedded_db, redis_server, shared_dir):
    env = server_env(embedded_db, redis_server, shared_dir, f"sheda_rcache_{uuid.uuid4().hex[:8]}",
                     WS_RATE_BURST=10_000, WS_RATE_PER_SECOND=10_000)
    with running_pair(env, shared_dir) as pair:
        yield pair


async def test_a_receiver_deleted_on_another_process_is_refused_within_a_second(server_pair):
    a, b = server_pair
    ra, rb = Remote(a), Remote(b)
    alice, bob = await ra.signup("client"), await ra.signup("agent")
    alice_ws = await ra.ws(alice.token)
    k = uuid.uuid4().hex
    await alice_ws.send({"receiver_id": bob.id, "message": "hi", "client_msg_id": k})
    assert (await alice_ws.wait_type("ack", 10, client_msg_id=k))["type"] == "ack"  # bob is cached as active on a

    resp = await rb.api.delete("/api/v1/users/me", token=bob.token)
    assert resp.status in (200, 204), resp
    loop = asyncio.get_running_loop()
    start = loop.time()
    while True:
        k = uuid.uuid4().hex
        mark = len(alice_ws.frames)
        await alice_ws.send({"receiver_id": bob.id, "message": "still there?", "client_msg_id": k})
        answer = await alice_ws.wait_for(lambda f: f.get("client_msg_id") == k and f["type"] in ("ack", "error"), 10, mark)
        if answer["type"] == "error":
            assert answer["code"] == "receiver_inactive", answer
            break
        assert loop.time() - start < 1.0, "messages to a deleted user were still accepted after a second"
        await asyncio.sleep(0.05)
    rest = await ra.api.post("/api/v1/chats", {"receiver_id": bob.id, "message": "rest"}, token=alice.token)
    assert rest.status == 403 and rest.json["code"] == "receiver_inactive"
