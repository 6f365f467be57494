"""Bursts are not abuse (issue 11, section 3): a mobile app flushing its offline outbox is
throttled with retry_after and every stored message is acknowledged; pings and read
receipts have their own budget; only a client that keeps sending after it was told to
wait is closed (1008), and even then after the acks of what was stored."""
from __future__ import annotations

import asyncio

import pytest
from tornado.websocket import WebSocketClosedError

from sheda_rt.chat.store import conv_key


async def _stored(sheda, a, b) -> list[dict]:
    return await sheda.ctx.db["messages"].find({"conv": conv_key(a.id, b.id)}).to_list()


def _answered(ws, ids: set[str]) -> set[str]:
    return {f.get("client_msg_id") for f in ws.frames if f.get("type") in ("ack", "error")} & ids


async def test_an_outbox_flush_of_40_is_throttled_not_closed_and_every_stored_message_is_acked(sheda):
    alice, bob = await sheda.signup("client"), await sheda.signup("agent")
    ws = await sheda.ws(alice.token)
    ids = {f"out{i}" for i in range(40)}
    await asyncio.gather(*(ws.send({"receiver_id": bob.id, "message": f"offline {i}", "client_msg_id": f"out{i}"}) for i in range(40)))
    await ws.wait_for(lambda f: _answered(ws, ids) == ids, timeout=10)
    assert not ws.closed.done()
    acked = {f["client_msg_id"] for f in ws.of_type("ack")}
    limited = [f for f in ws.of_type("error") if f["code"] == "rate_limited"]
    assert len(acked) >= 20 and len(acked) + len(limited) == 40, ws.frames
    assert {d["client_msg_id"] for d in await _stored(sheda, alice, bob)} == acked  # every stored message was acked
    # retry_after is staggered: a client resending each frame after its own retry_after is not refused again.
    waits = [f["retry_after"] for f in limited]
    assert all(w > 0 for w in waits) and waits == sorted(waits) and len(set(waits)) == len(waits), waits

    loop = asyncio.get_running_loop()
    pending = {f["client_msg_id"]: f["retry_after"] for f in limited}
    for _ in range(5):  # the budget is the user's; a resend refused again gets a new slot
        if not pending:
            break
        start, seen = loop.time(), len(ws.frames)
        for cmid, wait in sorted(pending.items(), key=lambda kv: kv[1]):
            await asyncio.sleep(max(0.0, start + wait - loop.time()))
            await ws.send({"receiver_id": bob.id, "message": f"offline {cmid[3:]}", "client_msg_id": cmid})
        await ws.wait_for(lambda f: _answered_since(ws, seen, set(pending)) == set(pending), timeout=10)
        pending = {f["client_msg_id"]: f["retry_after"] for f in ws.frames[seen:]
                   if f.get("type") == "error" and f["code"] == "rate_limited"}
    assert not pending and not ws.closed.done()
    stored = await _stored(sheda, alice, bob)
    assert sorted(d["client_msg_id"] for d in stored) == sorted(ids)  # all 40, each once
    assert {f["client_msg_id"] for f in ws.of_type("ack")} == ids


def _answered_since(ws, start: int, ids: set[str]) -> set[str]:
    return {f.get("client_msg_id") for f in ws.frames[start:] if f.get("type") in ("ack", "error")} & ids


async def test_pings_and_read_receipts_do_not_spend_the_message_budget(sheda):
    alice, bob = await sheda.signup("client"), await sheda.signup("agent")
    from_bob = await sheda.ws(bob.token)
    await from_bob.send({"receiver_id": alice.id, "message": "hello", "client_msg_id": "h"})
    hello = await from_bob.wait_type("ack", client_msg_id="h")
    ws = await sheda.ws(alice.token)
    for _ in range(40):
        await ws.send({"type": "ping"})
    for _ in range(10):
        await ws.send({"type": "read", "other_user_id": bob.id, "up_to": hello["id"]})
    for _ in range(5):
        await ws.send({"type": "typing", "receiver_id": bob.id})
    await ws.wait_for(lambda f: len(ws.of_type("pong")) == 40)
    ids = {f"m{i}" for i in range(20)}  # the whole message burst is still there
    for i in range(20):
        await ws.send({"receiver_id": bob.id, "message": f"reply {i}", "client_msg_id": f"m{i}"})
    await ws.wait_for(lambda f: _answered(ws, ids) == ids)
    assert {f["client_msg_id"] for f in ws.of_type("ack")} == ids, ws.of_type("error")
    assert not [f for f in ws.of_type("error")], ws.of_type("error")


async def test_a_burst_of_control_frames_is_throttled_not_closed(sheda):
    alice = await sheda.signup("client")
    ws = await sheda.ws(alice.token)
    for _ in range(150):  # far over the control budget (60), all at once
        await ws.send({"type": "ping"})
    await ws.wait_for(lambda f: len(ws.of_type("pong")) + len(ws.of_type("error")) == 150)
    limited = [f for f in ws.of_type("error") if f["code"] == "rate_limited"]
    assert limited and all(f["retry_after"] > 0 for f in limited)
    assert not ws.closed.done()
    await asyncio.sleep(max(f["retry_after"] for f in limited[:1]))
    await ws.send({"type": "ping"})
    await ws.wait_for(lambda f: len(ws.of_type("pong")) + len(ws.of_type("error")) == 151)
    assert ws.frames[-1]["type"] == "pong"


# A long group-commit window keeps accepted messages waiting to be stored when the close decision
# comes, which is what must not lose their acks.
@pytest.mark.parametrize("settings_overrides", [{"chat_batch_window_ms": 2500.0}])
async def test_sending_on_after_being_told_to_wait_is_abuse_and_closes_1008_after_the_acks(sheda):
    alice, bob = await sheda.signup("client"), await sheda.signup("agent")
    ws = await sheda.ws(alice.token)
    sent = 0
    try:
        for i in range(400):  # 40 frames/s against 5/s, ignoring every retry_after
            await ws.send({"receiver_id": bob.id, "message": f"flood {i}", "client_msg_id": f"f{i}"})
            sent += 1
            await asyncio.sleep(0.025)
            if ws.closed.done():
                break
    except WebSocketClosedError:
        pass
    code, reason = await ws.wait_closed(timeout=15)
    assert code == 1008 and "rate" in reason
    assert sent < 400  # closed well before the flood ended
    await asyncio.sleep(sheda.ctx.settings.chat_batch_window_ms / 1000 + 1.0)  # whatever was accepted is stored by now
    acked = {f["client_msg_id"] for f in ws.of_type("ack")}
    stored = {d["client_msg_id"] for d in await _stored(sheda, alice, bob)}
    assert stored and stored == acked, (sorted(stored - acked), sorted(acked - stored))
