"""The chat socket under generated frames (hypothesis).

One authenticated socket receives, one frame at a time: valid frames of every type
with edge values, the same frames with fields of the wrong type, numbers far outside
any range, lone UTF-16 surrogates (as JSON escapes, the only way they reach a
server), invalid JSON, deep nesting and binary frames. After each frame a ping:
the socket must still be open, answer the frame (an ack or an error for a message, a
`sync.done` or an error for a sync, a pong for a ping, an error for anything
invalid; a valid read receipt or typing event has nothing to answer), and never
with `internal_error` or `store_failed`, which would mean the server, not the
client, failed. At the end the database holds exactly the messages that were
acknowledged, as sent, and nothing else changed.

The rate limit is lifted for this module: it is what the frames are thrown at, not
the limiter (tests/test_chat_limits.py covers that). Frames stay under the 64 KiB
limit; the one over it is its own test, because that one is meant to close.
"""
from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, Phase, given, note, settings, strategies as st

from config.settings import Settings
from sheda_rt.database.ids import MAX_ID

# Every frame budget the server has (messages, and control frames where they have their own).
UNLIMITED = {name: value for name, value in {
    "ws_rate_burst": 1_000_000, "ws_rate_per_second": 1_000_000.0, "ws_control_burst": 1_000_000, "ws_control_per_second": 1_000_000.0,
}.items() if name in Settings.model_fields}
pytestmark = pytest.mark.parametrize("settings_overrides", [UNLIMITED])

FRAME_LIMIT = 64 * 1024
HUGE = [MAX_ID, MAX_ID + 1, 2**63, 2**64, 10**30, -(2**63) - 1, -1, 0]
# Collections a frame may change: the messages it stores, their conversations, the id counter.
# What accepted messages legitimately change: the messages, their pairs, the id counter, and the
# durable job queue (a message to a receiver who is offline arms their chat digest / push jobs).
CHANGED_BY_MESSAGES = {"messages", "conversations", "counters", "jobs"}


class Raw(str):
    """Frame text sent exactly as given (not a JSON value to encode)."""


class Binary(bytes):
    pass


def json_values(leaves=None):
    leaves = leaves or st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20),
                                 st.sampled_from(HUGE))
    return st.recursive(leaves, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                        max_leaves=12)


def ids(peer_id: int, me_id: int):
    return st.one_of(st.just(peer_id), st.just(me_id), st.integers(1, MAX_ID), st.sampled_from(HUGE))


def texts():
    # Everything hypothesis draws (any code point but surrogates, which str JSON cannot carry),
    # plus whitespace-only, the length edges and right-to-left / zero-width characters.
    return st.one_of(st.text(max_size=60), st.sampled_from(["", " ", "\n\t", "x" * 4000, "x" * 4001, "\u202e\u200b", "\x00"]))


def valid_frames(peer_id: int, me_id: int):
    message = st.fixed_dictionaries(
        {"receiver_id": ids(peer_id, me_id), "message": texts()},
        optional={"type": st.just("message"), "client_msg_id": st.text(min_size=1, max_size=128), "property_id": ids(peer_id, me_id),
                  "sender_id": ids(peer_id, me_id), "extra": json_values()})
    return st.one_of(
        message,
        st.fixed_dictionaries({"type": st.just("read"), "other_user_id": ids(peer_id, me_id), "up_to": st.integers(0, MAX_ID)}),
        st.fixed_dictionaries({"type": st.just("typing"), "receiver_id": ids(peer_id, me_id)}),
        st.fixed_dictionaries({"type": st.just("sync")}, optional={"since": st.integers(0, MAX_ID), "limit": st.integers(1, 500)}),
        st.just({"type": "ping"}),
    )


@st.composite
def mistyped(draw, peer_id: int, me_id: int):
    """A frame of a known type with one field replaced by any JSON value, or removed."""
    frame = dict(draw(valid_frames(peer_id, me_id)))
    key = draw(st.sampled_from(sorted(frame) + ["type"]))
    if draw(st.booleans()):
        frame[key] = draw(json_values())
    else:
        frame.pop(key, None)
    return frame


@st.composite
def with_surrogate(draw, peer_id: int, me_id: int):
    """A lone UTF-16 surrogate escape in one string of a valid frame (key or value)."""
    frame = draw(valid_frames(peer_id, me_id))
    surrogate = draw(st.sampled_from(["\\ud800", "\\udfff", "\\udbff", "x\\ud83d", "\\ude00y"]))
    text = json.dumps(frame)
    target = draw(st.sampled_from(["message", "client_msg_id", "type", "key"]))
    if target == "key":
        return Raw(text[:-1] + f', "k{surrogate}": 1}}' if text != "{}" else f'{{"k{surrogate}": 1}}')
    if target in frame and isinstance(frame[target], str):
        return Raw(text.replace(json.dumps(frame[target]), json.dumps(frame[target])[:-1] + surrogate + '"', 1))
    return Raw(text[:-1] + f', "{target}": "{surrogate}"}}')


def raw_texts():
    depth = st.integers(1, 20_000)
    return st.one_of(
        st.text(max_size=200).map(Raw),
        st.sampled_from(["", "null", "1", "[]", '"ping"', "{", "}", '{"type":', "NaN", "Infinity", "-Infinity", '{"type": NaN}',
                         '{"type": "ping", "type": "sync"}', '{"receiver_id": 1e400, "message": "x"}',
                         '{"type": "sync", "since": 1e400}', '{"type": "read", "other_user_id": -Infinity, "up_to": NaN}',
                         '{"receiver_id": ' + "9" * 4000 + ', "message": "x"}']).map(Raw),
        depth.map(lambda n: Raw("[" * n + "]" * n)),
        depth.map(lambda n: Raw('{"a":' * min(n, FRAME_LIMIT // 6) + "1" + "}" * min(n, FRAME_LIMIT // 6))),
        depth.map(lambda n: Raw('{"type": "sync", "x": ' + "[" * n + "]" * n + "}")),
    )


def binaries(peer_id: int, me_id: int):
    return st.one_of(st.binary(max_size=200).map(Binary),
                     valid_frames(peer_id, me_id).map(lambda f: Binary(json.dumps(f).encode())),
                     st.sampled_from([b"\xff\xfe", b'{"type": "ping"}\xff', b'"\xed\xa0\x80"']).map(Binary))


def frames(peer_id: int, me_id: int):
    return st.one_of(valid_frames(peer_id, me_id), mistyped(peer_id, me_id), with_surrogate(peer_id, me_id), raw_texts(),
                     binaries(peer_id, me_id), json_values().filter(lambda v: not isinstance(v, dict)))


def parse(data: str | bytes):
    """The frame as the server's JSON parser reads it (None when it cannot)."""
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        return None


def wire(frame) -> str | bytes:
    if isinstance(frame, (Raw, Binary)):
        return frame
    return json.dumps(frame)


async def collection_counts(sheda) -> dict[str, int]:
    db = sheda.ctx.db
    return {name: await db[name].count_documents({}) for name in sorted(await db.list_collection_names())}


def test_generated_frames_are_answered_and_change_nothing_else(sheda, io_loop):
    run = io_loop.run_sync
    me, peer = run(lambda: sheda.signup("client")), run(lambda: sheda.signup("agent"))
    state = {"socket": run(lambda: sheda.ws(me.token)), "reconnects": 0, "thrown": 0}
    counts_before = run(lambda: collection_counts(sheda))
    acked: dict[int, dict] = {}  # message id -> the frame it was acked for

    async def throw(frame) -> None:
        ws = state["socket"]
        if ws.closed.done():  # a failed example closed it: later examples need a socket
            state["socket"] = ws = await sheda.ws(me.token)
            state["reconnects"] += 1
        data = wire(frame)
        assert len(data) < FRAME_LIMIT
        parsed = parse(data)
        kind = parsed.get("type", "message") if isinstance(parsed, dict) else None
        kind = kind if isinstance(kind, str) else None
        start = len(ws.frames)
        await ws.conn.write_message(data, binary=isinstance(data, bytes))
        await ws.send({"type": "ping"})
        # Frames are handled in order: everything the frame is answered with at once comes
        # before the pong of the ping behind it. A ping frame is answered with a pong itself,
        # unless it was refused (an error first): then the first pong is the one behind it.
        end = start
        for _ in range(2):
            pong = await ws.wait_for(lambda f: f.get("type") == "pong", timeout=10, start=end)
            end = next(i for i in range(end, len(ws.frames)) if ws.frames[i] is pong) + 1
            if kind != "ping" or any(f.get("type") == "error" for f in ws.frames[start:end]):
                break
        answers = ws.frames[start:end - 1]
        if kind == "message" and not any(f.get("type") == "error" for f in answers):
            # Not refused on arrival: the ack (or a store error) comes when the batch is
            # stored, possibly after the pong.
            cmid = parsed.get("client_msg_id")
            mine = (lambda f: f.get("client_msg_id") == cmid) if isinstance(cmid, str) else (lambda f: f.get("client_msg_id") is None)
            await ws.wait_for(lambda f: f.get("type") in ("ack", "error") and mine(f), timeout=10, start=start)
            answers = [f for f in ws.frames[start:] if f is not pong]
        assert not ws.closed.done(), f"socket closed {ws.closed.result()} after {data!r:.300}"
        errors = [f for f in answers if f.get("type") == "error"]
        for error in errors:
            assert isinstance(error.get("code"), str) and isinstance(error.get("detail"), str), error
            assert error["code"] not in ("internal_error", "store_failed"), f"{error} for {data!r:.300}"
        if kind in ("read", "typing"):
            return  # a valid receipt or typing event is answered to the other user, not to the sender
        expected = {"message": ("ack", "error"), "sync": ("sync.done", "error"), "ping": ("pong", "error")}.get(kind, ("error",))
        assert any(f.get("type") in expected for f in answers), f"no answer to {data!r:.300}: {answers}"
        for ack in (f for f in answers if f.get("type") == "ack"):
            acked.setdefault(ack["id"], parsed)  # a resend is acked with the first one's id

    # No shrinking: a failing frame is printed as sent (note below), and shrinking replays
    # a frame that got no answer hundreds of times, 10 s each.
    @settings(max_examples=300, deadline=None, database=None, phases=[Phase.explicit, Phase.generate],
              suppress_health_check=list(HealthCheck), print_blob=False)
    @given(frame=frames(peer.id, me.id))
    def throw_one(frame):
        note(f"sent {type(frame).__name__}: {wire(frame)!r:.2000}")
        state["thrown"] += 1
        run(lambda: throw(frame), timeout=30)

    throw_one()
    assert state["thrown"] == 300 and state["reconnects"] == 0

    # Stored: exactly the acknowledged messages, as sent; every other collection as it was.
    async def stored_messages():
        return await sheda.ctx.db["messages"].find({"sender_id": me.id}).to_list(None)
    stored = {doc["_id"]: doc for doc in run(stored_messages)}
    assert sorted(stored) == sorted(acked)
    for _id, frame in acked.items():
        doc = stored[_id]
        assert (doc["receiver_id"], doc["message"], doc.get("client_msg_id")) == (
            frame["receiver_id"], frame["message"], frame.get("client_msg_id")), (doc, frame)
    counts_after = run(lambda: collection_counts(sheda))
    unchanged = {k: v for k, v in counts_before.items() if k not in CHANGED_BY_MESSAGES}
    assert {k: counts_after.get(k) for k in unchanged} == unchanged
    state["socket"].close()


async def test_a_frame_over_the_limit_closes_with_1009_and_stores_nothing(sheda):
    me, peer = await sheda.signup("client"), await sheda.signup("agent")
    ws = await sheda.ws(me.token)
    await ws.send({"receiver_id": peer.id, "message": "x" * FRAME_LIMIT, "client_msg_id": "big"})
    assert (await ws.wait_closed(timeout=10))[0] == 1009
    assert await sheda.ctx.db["messages"].count_documents({"sender_id": me.id}) == 0
