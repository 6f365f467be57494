"""Chat attachments across processes (issue 15 §1): two `python run.py` sharing one DATA_DIR, one
database and one Redis. A file uploaded through one process is sent, delivered, listed and
downloaded through the other (files under DATA_DIR, metadata in the database, links signed with
the deployment's secret), and its once-only use holds across them."""
from __future__ import annotations

import io
from urllib.parse import urlparse

from PIL import Image

from tests.redis_support import Remote, redis_server, server_pair, shared_dir  # noqa: F401  (module fixtures)
from tests.support import multipart


def png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), "orange").save(buf, "PNG")
    return buf.getvalue()


def path_of(url: str) -> str:
    parts = urlparse(url)
    return parts.path + "?" + parts.query


async def test_upload_on_one_process_send_and_download_on_the_other(server_pair):
    a, b = (Remote(s) for s in server_pair)
    alice, bob, carol = await a.signup("client"), await b.signup("agent"), await a.signup("client")
    body, headers = multipart("file", "room.png", png(), "image/png")
    up = await a.api.post("/api/v1/chat/attachments", body=body, headers=headers, token=alice.token)
    assert up.status == 201, up
    att = up.json
    alice_b, bob_a = await b.ws(alice.token), await a.ws(bob.token)
    # Sent through B, delivered on A; the link B signed works on A and B, without a token.
    await alice_b.send({"receiver_id": bob.id, "message": "the room", "attachment_ids": [att["id"]], "client_msg_id": "m1"})
    ack = await alice_b.wait_type("ack", 10, client_msg_id="m1")
    got = await bob_a.wait_type("message", 10, id=ack["id"])
    link = got["attachments"][0]
    assert link["id"] == att["id"] and link["kind"] == "image" and (link["width"], link["height"]) == (64, 48)
    original = (await a.api.get(path_of(att["url"]))).body
    for remote in (a, b):
        for url in (link["url"], link["thumbnail_url"]):
            assert (await remote.api.get(path_of(url))).status == 200
        assert (await remote.api.get(path_of(link["url"]))).body == original
        # The participants' tokens work on either process; a third user's does not.
        assert (await remote.api.get(f"/api/v1/chat/attachments/{att['id']}", token=bob.token)).status == 200
        assert (await remote.api.get(f"/api/v1/chat/attachments/{att['id']}", token=carol.token)).status == 404
    # History on A shows it; a second use through A is refused (claimed through B).
    rows = (await a.api.get(f"/api/v1/chat/chat-history/{alice.id}", token=bob.token)).json
    assert [x["id"] for x in rows[-1]["attachments"]] == [att["id"]]
    again = await a.api.post("/api/v1/chats", {"receiver_id": bob.id, "attachment_ids": [att["id"]]}, token=alice.token)
    assert again.status == 409 and again.json["code"] == "attachment_used", again
