"""The resumable event stream: every durable frame carries a seq, and `sync after_seq` (or
GET /api/v1/events) replays exactly what a socket got live, in order, once; positions that
cannot be resumed answer sync.reset (410 over REST)."""
from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from tests.listing_helpers import confirmed_viewing, create_property, next_slot, open_window, set_bank
from tests.support import unique

CT = "/api/v1/contracts"


def durable(frames: list[dict]) -> list[dict]:
    return [f for f in frames if "seq" in f]


def comparable(frame: dict) -> dict:
    # A replayed message says whether it was read since (read_at); the live copy could not.
    return {k: v for k, v in frame.items() if k != "read_at"}


async def replay_ws(sheda, user, after_seq: int, limit: int, **extra) -> tuple[list[dict], dict, int]:
    """Sync page by page over a fresh socket; (frames, the last sync.done, pages)."""
    ws = await sheda.ws(user.token)
    out, pages, after = [], 0, after_seq
    try:
        while True:
            start = len(ws.frames)
            await ws.send({"type": "sync", "after_seq": after, "limit": limit, **extra})
            done = await ws.wait_for(lambda f: f.get("type") in ("sync.done", "sync.reset"), start=start)
            if done["type"] == "sync.reset":
                return out, done, pages
            page = [f for f in ws.frames[start:] if f.get("type") not in ("sync.done", "presence")]
            assert len(page) == done["count"] and done["after_seq"] == after
            out += page
            pages += 1
            after = done["last_seq"]
            if not done["more"]:
                return out, done, pages
    finally:
        ws.close()


async def replay_rest(sheda, user, after_seq: int, limit: int) -> list[dict]:
    out, after = [], after_seq
    while True:
        r = await sheda.api.get("/api/v1/events", params={"after_seq": after, "limit": limit}, token=user.token)
        assert r.status == 200, r
        out += r.json["items"]
        after = r.json["last_seq"]
        if not r.json["more"]:
            return out


async def send_chat(sheda, sender, receiver_id: int, message: str):
    """A REST send as a client makes it: a 429 is waited out for its Retry-After and sent again
    (REST and socket messages share one per-user budget, and a caller may have spent it)."""
    for _ in range(5):
        r = await sheda.api.post("/api/v1/chats", {"receiver_id": receiver_id, "message": message}, token=sender.token)
        if r.status != 429:
            assert r.status == 201, r
            return r
        assert r.json["code"] == "rate_limited" and int(r.headers["Retry-After"]) >= 1, r
        await asyncio.sleep(int(r.headers["Retry-After"]))
    raise AssertionError(f"still rate limited after five waits: {r}")


async def every_kind_of_event(sheda, agent, client) -> None:
    """Messages both ways, a read receipt, a viewing booked and confirmed (notifications and
    appointment.*), a contract created and paid for (contract.*)."""
    await set_bank(sheda, agent)
    prop = await create_property(sheda, agent, listing_type="rent", price="900000.00")
    when = next_slot(sheda.ctx.clock.now(), days_ahead=1, hour=10)
    await open_window(sheda, agent, when, "09:00", "17:00")
    first = await send_chat(sheda, agent, client.id, "hello, still available?")
    await send_chat(sheda, client, agent.id, "yes, when can I see it?")
    read = await sheda.api.post("/api/v1/chat/read", {"other_user_id": agent.id, "up_to": first.json["id"]}, token=client.token)
    assert read.status == 200 and read.json["seq"] > first.json["id"], read
    appt = await confirmed_viewing(sheda, agent, client, prop, when)
    r = await sheda.api.post(f"{CT}/{prop['id']}", {"appointment_id": appt["id"], "term_months": 12}, token=client.token)
    assert r.status == 201, r
    paid = await sheda.api.patch(f"{CT}/{r.json['id']}/payment-sent", token=client.token)
    assert paid.status == 200, paid
    assert (await sheda.api.patch(f"{CT}/{r.json['id']}/confirm-payment", token=agent.token)).status == 200


async def test_every_durable_event_is_replayed_in_order_exactly_once(sheda):
    agent = await sheda.signup("agent")
    client = await sheda.signup("client")
    watcher = await sheda.ws(client.token)  # the client's phone, online the whole time
    await every_kind_of_event(sheda, agent, client)
    await watcher.wait_type("contract.confirmed", timeout=10)
    live = durable(watcher.frames)
    kinds = {f["type"] for f in live}
    assert {"message", "read", "notification", "appointment.booked", "appointment.confirmed", "contract.created",
            "contract.payment_sent", "contract.confirmed"} <= kinds, kinds
    seqs = [f["seq"] for f in live]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), seqs  # increasing on the socket
    # Ephemeral frames never carry one.
    assert all("seq" not in f for f in watcher.frames if f["type"] in ("presence", "typing", "pong"))

    # A second device that was offline throughout catches up from 0, in pages of 3: the
    # same frames, same order, each once.
    replayed, done, pages = await replay_ws(sheda, client, 0, 3)
    assert done["type"] == "sync.done" and done["more"] is False and pages >= 3
    assert [comparable(f) for f in replayed] == [comparable(f) for f in live]
    assert done["last_seq"] == live[-1]["seq"] and done["epoch"]
    # Over REST, the same.
    assert [comparable(f) for f in await replay_rest(sheda, client, 0, 4)] == [comparable(f) for f in live]
    # From the middle: exactly the rest.
    middle = live[len(live) // 2]["seq"]
    rest, _, _ = await replay_ws(sheda, client, middle, 500)
    assert [f["seq"] for f in rest] == [s for s in seqs if s > middle]
    # Nothing after the newest position; last_seq stays where the client is.
    empty, done, _ = await replay_ws(sheda, client, live[-1]["seq"], 10)
    assert empty == [] and done["last_seq"] == live[-1]["seq"] and done["more"] is False
    # The other party's stream holds its own view (its notifications, not the client's).
    theirs = await replay_rest(sheda, agent, 0, 500)
    assert {"notification", "appointment.booked", "message", "read"} <= {f["type"] for f in theirs}
    assert not {f["seq"] for f in theirs if f["type"] == "notification"} & {f["seq"] for f in live if f["type"] == "notification"}
    watcher.close()


async def test_an_offline_user_gets_what_they_missed_after_reconnecting(sheda):
    agent = await sheda.signup("agent")
    client = await sheda.signup("client")
    ws = await sheda.ws(client.token)
    assert (await sheda.api.post("/api/v1/chats", {"receiver_id": client.id, "message": "one"}, token=agent.token)).status == 201
    seen = (await ws.wait_type("message"))["seq"]
    ws.close()
    await ws.wait_closed()
    await every_kind_of_event(sheda, agent, client)  # while the client is away
    missed, done, _ = await replay_ws(sheda, client, seen, 500)
    assert missed and all(f["seq"] > seen for f in missed)
    assert {"message", "notification", "appointment.confirmed", "contract.created"} <= {f["type"] for f in missed}
    # What the server stored for the client, and nothing else, in order.
    stored = await replay_rest(sheda, client, 0, 500)
    assert [f["seq"] for f in missed] == [f["seq"] for f in stored if f["seq"] > seen]


async def test_bad_sync_frames_are_error_frames_and_the_socket_stays(sheda):
    user = await sheda.signup("client")
    ws = await sheda.ws(user.token)
    for bad in ({"type": "sync", "after_seq": -1}, {"type": "sync", "after_seq": "5"}, {"type": "sync", "after_seq": 2 ** 70},
                {"type": "sync", "after_seq": 0, "limit": 0}, {"type": "sync", "after_seq": 0, "epoch": ""}):
        start = len(ws.frames)
        await ws.send(bad)
        err = await ws.wait_for(lambda f: f.get("type") == "error", start=start)
        assert err["code"] == "validation_error", (bad, err)
    await ws.send({"type": "ping"})
    await ws.wait_type("pong")
    for params in ({"after_seq": -1}, {"after_seq": "x"}, {"limit": 501}, {"nope": 1}):
        r = await sheda.api.get("/api/v1/events", params=params, token=user.token)
        assert r.status == 422 and r.json["code"] == "validation_error", (params, r)
    assert (await sheda.api.get("/api/v1/events")).status == 401


@pytest.fixture
def settings_overrides():
    # Its own database: pruning and epochs here must not touch the other tests' streams.
    return {"mongodb_db": "sheda_" + unique("stream")}


async def test_positions_that_cannot_be_resumed_answer_sync_reset(sheda):
    agent = await sheda.signup("agent")
    client = await sheda.signup("client")
    assert (await sheda.api.post("/api/v1/chats", {"receiver_id": client.id, "message": "hi"}, token=agent.token)).status == 201
    read = await sheda.api.post("/api/v1/chat/read", {"other_user_id": agent.id, "up_to": 10 ** 9}, token=client.token)
    old_event = read.json["seq"]
    page = await sheda.api.get("/api/v1/events", params={"after_seq": 0}, token=client.token)
    epoch, head = page.json["epoch"], page.json["last_seq"]
    assert head == old_event

    # Another data set's epoch (e.g. the client last synced against a restored backup).
    frames, done, _ = await replay_ws(sheda, client, head, 10, epoch="someotherepoch")
    assert done["type"] == "sync.reset" and done["reason"] == "epoch_changed" and done["epoch"] == epoch and frames == []
    _, done, _ = await replay_ws(sheda, client, head, 10, epoch=epoch)
    assert done["type"] == "sync.done"
    # A position this data set never handed out (the data directory is older than the client).
    _, done, _ = await replay_ws(sheda, client, head + 1000, 10)
    assert done == {"type": "sync.reset", "epoch": epoch, "reason": "unknown_position", "last_seq": head}
    r = await sheda.api.get("/api/v1/events", params={"after_seq": head + 1000}, token=client.token)
    assert r.status == 410 and r.json["code"] == "stream_reset" and r.json["reason"] == "unknown_position", r

    # Retention: events older than EVENT_RETENTION_DAYS are pruned by the job; a position
    # before the cut is told to start over, one after it goes on.
    sheda.ctx.clock.advance(days=31)
    for who in (agent, client):  # a month later: signed in again
        login = await sheda.api.post("/api/v1/auth/login", {"username": who.username, "password": who.password})
        who.access_token = login.json["access_token"]
    assert (await sheda.api.post("/api/v1/chats", {"receiver_id": agent.id, "message": "back"}, token=client.token)).status == 201
    new = await sheda.api.post("/api/v1/chat/read", {"other_user_id": client.id, "up_to": 10 ** 9}, token=agent.token)
    assert await sheda.ctx.event_retention.run() == old_event + 1
    assert await sheda.ctx.db["events"].count_documents({"_id": old_event}) == 0
    assert await sheda.ctx.db["events"].count_documents({"_id": new.json["seq"]}) == 1
    _, done, _ = await replay_ws(sheda, client, 0, 10)
    assert done["type"] == "sync.reset" and done["reason"] == "expired" and done["last_seq"] == new.json["seq"]
    r = await sheda.api.get("/api/v1/events", params={"after_seq": old_event - 1}, token=client.token)
    assert r.status == 410 and r.json["reason"] == "expired"
    frames, done, _ = await replay_ws(sheda, client, old_event, 10)
    assert done["type"] == "sync.done" and [f["type"] for f in frames] == ["message", "read"]
    # Messages themselves are kept forever: the seed's sync by message id still has the old one.
    ws = await sheda.ws(client.token)
    await ws.send({"type": "sync", "since": 0})
    await ws.wait_type("sync.done")
    assert [f["message"] for f in ws.of_type("message")] == ["hi", "back"]
    # Running the job again with nothing old is a no-op.
    assert await sheda.ctx.event_retention.run() == 0
    ws.close()
