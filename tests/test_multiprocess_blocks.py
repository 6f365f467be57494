"""Blocking across processes (issue 15 §4): two `python run.py` instances sharing one Redis
and one database. Each process answers "is this pair blocked?" from its own cache; a block
or unblock made through one process must count on the other at once (the control op
`blocks` drops the cached answers everywhere), with the cache warm on both."""
from __future__ import annotations

import uuid
from datetime import datetime, timezone

from sheda_rt.appointments.models import WEEKDAYS
from tests.listing_helpers import listing, next_slot, iso
import pytest

from tests.redis_support import Remote, ServerProcess, redis_server, running_pair, server_env, shared_dir  # noqa: F401  (module fixtures)

ROUNDS = 12  # Bob spends three messages a round (a refused frame, a refused and an accepted REST send)


@pytest.fixture(scope="module")
def server_pair(embedded_db, redis_server, shared_dir):
    """redis_support's pair, with a message budget for ROUNDS rounds at full speed: a user's messages
    share one budget whatever the transport (a burst of 20 by default), and each round spends three."""
    env = server_env(embedded_db, redis_server, shared_dir, f"sheda_mp_{uuid.uuid4().hex[:8]}",
                     WS_RATE_BURST=10_000, WS_RATE_PER_SECOND=10_000)
    with running_pair(env, shared_dir) as pair:
        yield pair


async def send(ws, receiver_id: int, text: str) -> dict:
    cid = uuid.uuid4().hex
    await ws.send({"receiver_id": receiver_id, "message": text, "client_msg_id": cid})
    return await ws.wait_for(lambda f: f.get("type") in ("ack", "error") and f.get("client_msg_id") == cid, 10)


async def test_a_block_made_through_one_process_counts_on_the_other_at_once(server_pair):
    a, b = (Remote(s) for s in server_pair)
    alice, bob = await a.signup("client"), await b.signup("agent")
    alice_a, bob_b = await a.ws(alice.token), await b.ws(bob.token)
    # Both caches warm: each process has answered "not blocked" for this pair.
    assert (await send(bob_b, alice.id, "hello from B"))["type"] == "ack"
    assert (await send(alice_a, bob.id, "hello from A"))["type"] == "ack"

    for round_ in range(ROUNDS):
        blocked = await a.api.post(f"/api/v1/users/{bob.id}/block", token=alice.token)
        assert blocked.status == 201, blocked
        refused = await send(bob_b, alice.id, f"round {round_}: refused?")
        assert refused["type"] == "error" and refused["code"] == "blocked", (round_, refused)
        rest = await b.api.post("/api/v1/chats", {"receiver_id": alice.id, "message": "x"}, token=bob.token)
        assert rest.status == 403 and rest.json["code"] == "blocked"
        unblocked = await a.api.delete(f"/api/v1/users/{bob.id}/block", token=alice.token)
        assert unblocked.status == 204
        accepted = await b.api.post("/api/v1/chats", {"receiver_id": alice.id, "message": f"round {round_}: accepted"},
                                    token=bob.token)
        assert accepted.status == 201, (round_, accepted)
        await alice_a.wait_type("message", 10, message=f"round {round_}: accepted")

    # Blocked through B, a viewing booked through A is refused; so is typing across processes.
    prop = (await b.api.post("/api/v1/properties", listing(), token=bob.token)).json
    when = next_slot(datetime.now(timezone.utc), days_ahead=2, hour=9)
    assert (await b.api.post("/api/v1/availability", {"weekday": WEEKDAYS[when.weekday()], "start_time": "08:00",
                                                      "end_time": "18:00"}, token=bob.token)).status == 201
    assert (await b.api.post(f"/api/v1/users/{alice.id}/block", token=bob.token)).status == 201
    booking = await a.api.post("/api/v1/appointments", {"property_id": prop["id"], "scheduled_at": iso(when)}, token=alice.token)
    assert booking.status == 409 and booking.json["code"] == "blocked", booking
    assert (await send(alice_a, bob.id, "from A while B blocks"))["code"] == "blocked"
    start = len(bob_b.frames)
    await alice_a.send({"type": "typing", "receiver_id": bob.id})
    await bob_b.send({"type": "ping"})
    await bob_b.wait_for(lambda f: f.get("type") == "pong", start=start)
    assert (await b.api.delete(f"/api/v1/users/{alice.id}/block", token=bob.token)).status == 204
    await alice_a.send({"type": "typing", "receiver_id": bob.id})
    typing = await bob_b.wait_for(lambda f: f.get("type") == "typing", 10, start=start)
    assert typing["user_id"] == alice.id
    assert len([f for f in bob_b.frames[start:] if f.get("type") == "typing"]) == 1  # only the one sent after unblocking
    booked = await a.api.post("/api/v1/appointments", {"property_id": prop["id"], "scheduled_at": iso(when)}, token=alice.token)
    assert booked.status == 201, booked
