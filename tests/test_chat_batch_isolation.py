"""One bad message never fails the others of its group-commit batch: a message the
database refuses, one whose id turns out to be taken, or one the driver cannot
encode fails alone (its sender gets an error frame); every other message of the
batch is stored, delivered and acked."""
from __future__ import annotations

import asyncio

import pytest

from sheda_rt.chat.frames import sender_info
from sheda_rt.chat.store import conv_key
from sheda_rt.errors import ValidationFailed


@pytest.fixture
def settings_overrides():
    # A 250 ms window: frames sent together are stored with one insert_many (even on a busy machine).
    return {"ws_rate_burst": 10_000, "ws_rate_per_second": 10_000, "chat_batch_window_ms": 250}


async def people(sheda, n: int):
    users = [await sheda.signup("client") for _ in range(n)]
    return users, [await sheda.ws(u.token) for u in users]


def recording(store):
    """Observe the sizes of the real inserts (to prove the messages shared a batch)."""
    sizes, real = [], store.insert_batch

    async def insert(docs):
        sizes.append(len(docs))
        return await real(docs)

    store.insert_batch = insert
    return sizes, real


async def test_a_message_the_database_refuses_fails_alone(sheda):
    users, sockets = await people(sheda, 6)
    db = sheda.ctx.db
    store = sheda.ctx.chat.messages
    # A real database-side refusal of one document: a validator that only "poison" fails.
    await db.command("collMod", "messages", validator={"message": {"$ne": "poison"}}, validationAction="error")
    sizes, real = recording(store)
    try:
        await asyncio.gather(*(ws.send({"receiver_id": users[(i + 1) % 6].id, "message": "poison" if i == 2 else f"m{i}",
                                        "client_msg_id": f"iso{i}"}) for i, ws in enumerate(sockets)))
        answers = [await ws.wait_for(lambda f, i=i: f.get("client_msg_id") == f"iso{i}" and f["type"] in ("ack", "error"))
                   for i, ws in enumerate(sockets)]
    finally:
        store.insert_batch = real
        await db.command("collMod", "messages", validator={}, validationAction="error")
    assert max(sizes) == 6, sizes  # all six in one insert_many
    assert answers[2]["type"] == "error" and answers[2]["code"] == "store_failed", answers[2]
    for i, answer in enumerate(answers):
        if i == 2:
            continue
        assert answer["type"] == "ack", answer
        receiver = sockets[(i + 1) % 6]
        got = await receiver.wait_type("message", message=f"m{i}")
        assert got["id"] == answer["id"]
    assert sockets[3].of_type("message") == []  # the refused one was never delivered
    stored = await db["messages"].find({"message": {"$in": [f"m{i}" for i in range(6)] + ["poison"]},
                                        "sender_id": {"$in": [u.id for u in users]}}).to_list()
    assert sorted(d["message"] for d in stored) == sorted(f"m{i}" for i in range(6) if i != 2)


async def test_a_message_whose_id_is_taken_fails_alone_and_its_resend_is_stored(sheda):
    """An id already in use (a restored backup, a counter moved back by hand, another writer):
    the database refuses that one document with a duplicate key."""
    users, sockets = await people(sheda, 6)
    db = sheda.ctx.db
    taken = await sheda.ctx.ids.current("messages") + 3  # the third id the next batch will get
    await db["messages"].insert_one({"_id": taken, "conv": "0:0", "sender_id": 0, "receiver_id": 0, "message": "squatter"})
    store = sheda.ctx.chat.messages
    sizes, real = recording(store)
    try:
        await asyncio.gather(*(ws.send({"receiver_id": users[(i + 1) % 6].id, "message": f"t{i}", "client_msg_id": f"tk{i}"})
                               for i, ws in enumerate(sockets)))
        answers = [await ws.wait_for(lambda f, i=i: f.get("client_msg_id") == f"tk{i}" and f["type"] in ("ack", "error"))
                   for i, ws in enumerate(sockets)]
    finally:
        store.insert_batch = real
    assert max(sizes) == 6, sizes
    failed = [i for i, a in enumerate(answers) if a["type"] == "error"]
    assert len(failed) == 1 and answers[failed[0]]["code"] == "store_failed", answers
    acked = [a["id"] for a in answers if a["type"] == "ack"]
    assert len(acked) == 5 and taken not in acked
    for i, answer in enumerate(answers):
        if answer["type"] == "ack":
            assert (await sockets[(i + 1) % 6].wait_type("message", message=f"t{i}"))["id"] == answer["id"]
    # The client sends the failed one again with the same key: stored now, with a new id.
    (i,) = failed
    await sockets[i].send({"receiver_id": users[(i + 1) % 6].id, "message": f"t{i}", "client_msg_id": f"tk{i}"})
    again = await sockets[i].wait_type("ack", client_msg_id=f"tk{i}")
    assert again["id"] > max(acked)
    assert (await sockets[(i + 1) % 6].wait_type("message", message=f"t{i}"))["id"] == again["id"]
    assert await db["messages"].count_documents({"conv": conv_key(users[i].id, users[(i + 1) % 6].id)}) == 1


async def test_a_message_the_driver_cannot_encode_fails_alone(sheda):
    """Text that cannot be encoded as UTF-8 (a lone surrogate) fails the whole insert_many in
    the driver before anything is sent. The socket and REST refuse such text before it gets
    here; this hands one to the group commit directly, as any other caller could."""
    users, sockets = await people(sheda, 4)
    store = sheda.ctx.chat.messages
    sizes, real = recording(store)
    batcher = sheda.ctx.chat.batcher
    try:
        await asyncio.gather(*(ws.send({"receiver_id": users[(i + 1) % 4].id, "message": f"e{i}", "client_msg_id": f"en{i}"})
                               for i, ws in enumerate(sockets)))
        # Within the batch the socket frames opened:
        bad = batcher.submit({"sender_id": users[0].id, "receiver_id": users[1].id, "conv": conv_key(users[0].id, users[1].id),
                              "message": "bad \ud800 text", "client_msg_id": "en-bad"},
                             origin=None, info=sender_info({"_id": users[0].id}))
        answers = [await ws.wait_for(lambda f, i=i: f.get("client_msg_id") == f"en{i}" and f["type"] in ("ack", "error"))
                   for i, ws in enumerate(sockets)]
        with pytest.raises(ValidationFailed):
            await bad
    finally:
        store.insert_batch = real
    assert sizes[:2] == [5, 4], sizes  # all five in one insert_many, which then stored the four
    assert all(a["type"] == "ack" for a in answers), answers
    for i, answer in enumerate(answers):
        assert (await sockets[(i + 1) % 4].wait_type("message", message=f"e{i}"))["id"] == answer["id"]
    # Sending the same key again with good text works (the failed one left no trace).
    ok = await batcher.submit({"sender_id": users[0].id, "receiver_id": users[1].id, "conv": conv_key(users[0].id, users[1].id),
                               "message": "good text", "client_msg_id": "en-bad"}, origin=None, info=sender_info({"_id": users[0].id}))
    assert ok[0]["message"] == "good text" and ok[1] is False
