"""Chat attachments (issue 15 §1), as clients use them against the real server and database: upload
(kind judged by content, EXIF location stripped, thumbnail, 413/415 with nothing stored), send over
the socket and REST (delivered, history, sync, conversation list), private downloads (participants,
signed expiring links; a third user, an expired or altered link cannot), once-only use by the uploader,
and the cleanup of attachments never sent."""
from __future__ import annotations

import functools
import io
import json
from urllib.parse import parse_qs, urlencode, urlparse

import pytest
from PIL import Image

from sheda_rt.realtime import protocol
from tests.support import multipart
from tests.test_push import push, run_jobs, subscribed, until_jobs  # noqa: F401  (push: the local push service fixture)

UPLOAD = "/api/v1/chat/attachments"


@pytest.fixture
def settings_overrides():
    # Tokens outlive the links (1 h), so a moved clock expires the link, not the session.
    # The push scenario: the local push service is on 127.0.0.1, and it runs due jobs itself.
    return {"ws_rate_burst": 10_000, "ws_rate_per_second": 10_000, "access_token_minutes": 10_000,
            "push_allow_local_endpoints": True, "job_poll_seconds": 3600, "push_grace_seconds": 10,
            "chat_attachment_max_pending": 6}


def png(size=(400, 300), color="blue") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


@functools.lru_cache(maxsize=None)
def pdf() -> bytes:  # (once: Pillow writes the time into it)
    buf = io.BytesIO()
    Image.new("RGB", (100, 100), "white").save(buf, "PDF")  # a real PDF: %PDF-1.4 ... startxref N %%EOF
    return buf.getvalue()


def jpeg_with_gps() -> bytes:
    exif = Image.Exif()
    exif[0x010F] = "PhoneMaker"  # camera make
    exif[0x8825] = {1: "N", 2: (6.0, 27.0, 14.0), 3: "E", 4: (3.0, 24.0, 40.0)}  # GPSInfo: a house in Lagos
    buf = io.BytesIO()
    Image.new("RGB", (1200, 900), "green").save(buf, "JPEG", exif=exif)
    data = buf.getvalue()
    assert Image.open(io.BytesIO(data)).getexif().get_ifd(0x8825), "the test image must carry GPS EXIF"
    return data


async def upload(sheda, user, content: bytes, filename: str = "file.bin", content_type: str = "application/octet-stream"):
    body, headers = multipart("file", filename, content, content_type)
    return await sheda.api.post(UPLOAD, body=body, headers=headers, token=user.token)


async def uploaded(sheda, user, content: bytes | None = None, **kw) -> dict:
    resp = await upload(sheda, user, content if content is not None else png(), **kw)
    assert resp.status == 201, resp
    return resp.json


def path_of(url: str) -> str:
    parts = urlparse(url)
    return parts.path + ("?" + parts.query if parts.query else "")


async def fetch(sheda, url: str, token: str | None = None):
    return await sheda.api.get(path_of(url), token=token)


def stored_names(sheda) -> set[str]:
    root = sheda.ctx.settings.attachments_dir
    return {p.name for p in root.iterdir()} if root.exists() else set()


async def test_kind_is_judged_by_content_and_refusals_store_nothing(sheda):
    alice = await sheda.signup("client")
    # A PNG named .pdf, sent as application/pdf, is an image.
    image = await uploaded(sheda, alice, png((400, 300)), filename="scan.pdf", content_type="application/pdf")
    assert image["kind"] == "image" and image["mime"] == "image/png"
    assert (image["width"], image["height"]) == (400, 300) and image["size"] > 0
    assert image["url"] and image["thumbnail_url"]
    # A real PDF named .jpg is a PDF, without a thumbnail or dimensions.
    document = await uploaded(sheda, alice, pdf(), filename="photo.jpg", content_type="image/jpeg")
    assert document["kind"] == "pdf" and document["mime"] == "application/pdf"
    assert "thumbnail_url" not in document and "width" not in document
    got = await fetch(sheda, document["url"])
    assert got.status == 200 and got.body == pdf() and got.headers["Content-Type"] == "application/pdf"
    files_before = stored_names(sheda)
    docs_before = await sheda.ctx.db["chat_attachments"].count_documents({"owner_id": alice.id})
    # A text file named .jpg, a PDF header on something that is not one, a truncated image: 415.
    for content, name in ((b"just some text, honestly a jpeg\n" * 10, "photo.jpg"), (b"%PDF-1.7\nnot really a pdf", "doc.pdf"),
                          (png()[:200], "cut.png")):
        refused = await upload(sheda, alice, content, filename=name, content_type="image/jpeg")
        assert refused.status == 415 and refused.json["code"] == "unsupported_media_type", refused
        assert refused.json["detail"]
    # 11 MB (over CHAT_ATTACHMENT_MAX_BYTES, 10 MB by default): 413 before anything is decoded.
    big = await upload(sheda, alice, b"\x89PNG\r\n\x1a\n" + b"\0" * (11 * 1024 * 1024), filename="big.png")
    assert big.status == 413 and big.json["code"] == "too_large", big
    # Not multipart: 415; no token: 401.
    assert (await sheda.api.post(UPLOAD, {"file": "x"}, token=alice.token)).status == 415
    body, headers = multipart("file", "a.png", png(), "image/png")
    assert (await sheda.api.post(UPLOAD, body=body, headers=headers)).status == 401
    assert stored_names(sheda) == files_before
    assert await sheda.ctx.db["chat_attachments"].count_documents({"owner_id": alice.id}) == docs_before == 2


async def test_exif_location_is_stripped_and_a_thumbnail_is_made(sheda):
    alice = await sheda.signup("client")
    original = jpeg_with_gps()
    att = await uploaded(sheda, alice, original, filename="IMG_0001.JPG", content_type="image/jpeg")
    assert att["kind"] == "image" and att["mime"] == "image/jpeg" and (att["width"], att["height"]) == (1200, 900)
    # What is stored (on disk, under DATA_DIR, not the public media folder) has no EXIF at all.
    doc = await sheda.ctx.db["chat_attachments"].find_one({"_id": att["id"]})
    on_disk = (sheda.ctx.settings.attachments_dir / doc["file"]).read_bytes()
    assert not (sheda.ctx.settings.media_dir / doc["file"]).exists()
    stored = Image.open(io.BytesIO(on_disk))
    assert not stored.getexif().get_ifd(0x8825) and len(stored.getexif()) == 0 and "exif" not in stored.info
    assert b"Exif" not in on_disk and b"PhoneMaker" not in on_disk
    # What the owner downloads is that file.
    got = await fetch(sheda, att["url"])
    assert got.status == 200 and got.body == on_disk and got.headers["Content-Type"] == "image/jpeg"
    assert got.headers["X-Content-Type-Options"] == "nosniff"
    # The thumbnail: at most 320 px, the aspect kept, no EXIF either.
    thumb = await fetch(sheda, att["thumbnail_url"])
    assert thumb.status == 200 and thumb.headers["Content-Type"] == "image/jpeg"
    small = Image.open(io.BytesIO(thumb.body))
    assert small.size == (320, 240) and len(small.getexif()) == 0


async def test_send_with_attachments_over_socket_and_rest(sheda):
    alice, bob = await sheda.signup("client"), await sheda.signup("agent")
    photo, plan = await uploaded(sheda, alice, png((800, 600))), await uploaded(sheda, alice, pdf())
    a, b = await sheda.ws(alice.token), await sheda.ws(bob.token)
    # Over the socket, without text.
    await a.send({"receiver_id": bob.id, "attachment_ids": [photo["id"], plan["id"]], "client_msg_id": "k1"})
    ack = await a.wait_type("ack", client_msg_id="k1")
    got = await b.wait_type("message", id=ack["id"])
    assert got["message"] == ""
    assert [(x["id"], x["kind"], x["mime"]) for x in got["attachments"]] == [
        (photo["id"], "image", "image/png"), (plan["id"], "pdf", "application/pdf")]
    assert got["attachments"][0]["width"] == 800 and "thumbnail_url" in got["attachments"][0]
    assert "thumbnail_url" not in got["attachments"][1]
    protocol.parse_outbound(json.dumps(got))  # the documented frame (AsyncAPI) describes it
    # The peer downloads with the link, and with their own token.
    assert (await fetch(sheda, got["attachments"][0]["url"])).body == (await fetch(sheda, photo["url"])).body
    assert (await fetch(sheda, got["attachments"][1]["url"])).body == pdf()
    by_token = await sheda.api.get(f"{UPLOAD}/{plan['id']}", token=bob.token)
    assert by_token.status == 200 and by_token.body == pdf()
    assert (await sheda.api.get(f"{UPLOAD}/{photo['id']}/thumbnail", token=bob.token)).status == 200

    # Over REST, with text.
    third = await uploaded(sheda, alice, png((50, 50), "red"))
    sent = await sheda.api.post("/api/v1/chats", {"receiver_id": bob.id, "message": "the kitchen", "attachment_ids": [third["id"]]},
                                token=alice.token)
    assert sent.status == 201, sent
    assert [x["id"] for x in sent.json["attachments"]] == [third["id"]] and sent.json["message"] == "the kitchen"
    live = await b.wait_type("message", id=sent.json["id"])
    assert [x["id"] for x in live["attachments"]] == [third["id"]]

    # History (both sides), sync (both forms) and the conversation list show them.
    for user, other in ((alice, bob), (bob, alice)):
        rows = (await sheda.api.get(f"/api/v1/chat/chat-history/{other.id}", token=user.token)).json
        assert [[x["id"] for x in r.get("attachments", [])] for r in rows] == [[photo["id"], plan["id"]], [third["id"]]]
        assert all(x["url"] for r in rows for x in r["attachments"])
    listed = (await sheda.api.get("/api/v1/chat/conversations", token=bob.token)).json["items"][0]
    assert [x["id"] for x in listed["last_message"]["attachments"]] == [third["id"]]
    b2 = await sheda.ws(bob.token)
    await b2.send({"type": "sync", "since": 0})
    await b2.wait_type("sync.done")
    replayed = {f["id"]: f for f in b2.of_type("message")}
    assert [x["id"] for x in replayed[ack["id"]]["attachments"]] == [photo["id"], plan["id"]]
    await b2.send({"type": "sync", "after_seq": 0})
    done = await b2.wait_for(lambda f: f.get("type") == "sync.done" and "after_seq" in f)
    assert done["count"] >= 2
    events = [f for f in b2.of_type("message") if "seq" in f][2:]
    assert [[x["id"] for x in f["attachments"]] for f in events] == [[photo["id"], plan["id"]], [third["id"]]]
    for f in events:
        protocol.parse_outbound(json.dumps(f))
    # Text alone still works and carries no attachments key.
    await a.send({"receiver_id": bob.id, "message": "plain"})
    plain = await b.wait_type("message", message="plain")
    assert "attachments" not in plain
    # Neither text nor attachments: refused.
    await a.send({"receiver_id": bob.id, "message": "  ", "client_msg_id": "empty"})
    assert (await a.wait_type("error", client_msg_id="empty"))["code"] == "validation_error"


async def test_only_participants_download_and_links_expire(sheda, clock):
    alice, bob, carol = await sheda.signup("client"), await sheda.signup("agent"), await sheda.signup("client")
    att = await uploaded(sheda, alice, png())
    file_path = f"{UPLOAD}/{att['id']}"
    # Before it is sent: the uploader only.
    assert (await sheda.api.get(file_path, token=alice.token)).status == 200
    assert (await sheda.api.get(file_path, token=bob.token)).status == 404
    sent = await sheda.api.post("/api/v1/chats", {"receiver_id": bob.id, "attachment_ids": [att["id"]]}, token=alice.token)
    assert sent.status == 201, sent
    url = sent.json["attachments"][0]["url"]
    for user in (alice, bob):
        assert (await sheda.api.get(file_path, token=user.token)).status == 200
        assert (await sheda.api.get(file_path + "/thumbnail", token=user.token)).status == 200
    # A third user: 404 (as if there were no such attachment), for the file and its thumbnail.
    for path in (file_path, file_path + "/thumbnail", f"{UPLOAD}/999999999"):
        refused = await sheda.api.get(path, token=carol.token)
        assert refused.status == 404 and refused.json["code"] == "attachment_not_found", refused
    assert (await sheda.api.get(file_path)).status == 401  # neither a link nor a token
    # An altered link: another id, another expiry, another signature, the file's signature on the thumbnail.
    query = parse_qs(urlparse(url).query)
    exp, sig = int(query["exp"][0]), query["sig"][0]
    other = await uploaded(sheda, alice, png((10, 10)))
    for path, params in ((f"{UPLOAD}/{other['id']}", {"exp": exp, "sig": sig}), (file_path, {"exp": exp + 600, "sig": sig}),
                         (file_path, {"exp": exp, "sig": sig[:-2] + ("AA" if sig[-2:] != "AA" else "BB")}),
                         (file_path + "/thumbnail", {"exp": exp, "sig": sig}), (file_path, {"sig": sig})):
        refused = await sheda.api.get(path + "?" + urlencode(params))
        assert refused.status == 403 and refused.json["code"] == "invalid_link", (path, params, refused)
    garbage = await sheda.api.get(file_path + "?" + urlencode({"exp": exp, "sig": "\u00c4\u0010\u00b9"}))
    assert garbage.status == 422, garbage  # not a signature at all (was a 500: found by schemathesis)
    # A key the link does not take is a 422 naming it, as on the other chat routes (it was ignored).
    for params in ({"exp": exp, "sig": sig, "v": "2"}, {"exp": exp, "signature": sig}):
        refused = await sheda.api.get(file_path + "?" + urlencode(params))
        assert refused.status == 422 and [e["field"] for e in refused.json["errors"]] == [next(iter(set(params) - {"exp", "sig"}))], refused
    assert (await fetch(sheda, url)).status == 200
    # Expired (by the server's clock): 403; history hands out a fresh link that works.
    clock.advance(hours=2)
    expired = await fetch(sheda, url)
    assert expired.status == 403 and expired.json["code"] == "link_expired", expired
    rows = (await sheda.api.get(f"/api/v1/chat/chat-history/{alice.id}", token=bob.token)).json
    fresh = rows[0]["attachments"][0]["url"]
    assert fresh != url and (await fetch(sheda, fresh)).status == 200


async def test_only_the_uploader_only_once(sheda):
    alice, bob, carol = await sheda.signup("client"), await sheda.signup("agent"), await sheda.signup("client")
    a = await sheda.ws(alice.token)
    c = await sheda.ws(carol.token)
    first, second = await uploaded(sheda, alice), await uploaded(sheda, alice, png((20, 20)))
    count = lambda: sheda.ctx.db["messages"].count_documents({})  # noqa: E731
    await a.send({"receiver_id": bob.id, "message": "once", "attachment_ids": [first["id"]], "client_msg_id": "once"})
    first_ack = await a.wait_type("ack", client_msg_id="once")
    before = await count()
    # A resend of that message (same client_msg_id, its ack was lost) gets the same ack, not a refusal.
    mark = len(a.frames)
    await a.send({"receiver_id": bob.id, "message": "once", "attachment_ids": [first["id"]], "client_msg_id": "once"})
    resent = await a.wait_for(lambda f: f.get("client_msg_id") == "once", start=mark)
    assert resent["type"] == "ack" and resent["id"] == first_ack["id"], resent
    # A second use: over the socket and over REST; alone or beside an unused one (which stays unused).
    await a.send({"receiver_id": bob.id, "message": "twice", "attachment_ids": [first["id"]], "client_msg_id": "twice"})
    assert (await a.wait_type("error", client_msg_id="twice"))["code"] == "attachment_used"
    again = await sheda.api.post("/api/v1/chats", {"receiver_id": carol.id, "attachment_ids": [second["id"], first["id"]]},
                                 token=alice.token)
    assert again.status == 409 and again.json["code"] == "attachment_used", again
    # Someone else's id, or one that does not exist: not found (carol cannot tell them apart).
    await c.send({"receiver_id": bob.id, "message": "mine?", "attachment_ids": [second["id"]], "client_msg_id": "steal"})
    stolen = await c.wait_type("error", client_msg_id="steal")
    assert stolen["code"] == "attachment_not_found"
    protocol.parse_outbound(json.dumps(stolen))
    missing = await sheda.api.post("/api/v1/chats", {"receiver_id": bob.id, "attachment_ids": [987654321]}, token=carol.token)
    assert missing.status == 404 and missing.json["code"] == "attachment_not_found"
    foreign = await sheda.api.post("/api/v1/chats", {"receiver_id": bob.id, "attachment_ids": [second["id"]]}, token=carol.token)
    assert (foreign.status, foreign.json["code"]) == (404, "attachment_not_found")
    assert missing.json["detail"].replace("987654321", "N") == foreign.json["detail"].replace(str(second["id"]), "N")
    # A repeated id, more than 10: 422.
    assert (await sheda.api.post("/api/v1/chats", {"receiver_id": bob.id, "attachment_ids": [second["id"]] * 2},
                                 token=alice.token)).status == 422
    assert (await sheda.api.post("/api/v1/chats", {"receiver_id": bob.id, "attachment_ids": list(range(1, 12))},
                                 token=alice.token)).status == 422
    # A message refused for another reason claims nothing either.
    assert (await sheda.api.post("/api/v1/chats", {"receiver_id": alice.id, "attachment_ids": [second["id"]]},
                                 token=alice.token)).status == 400
    assert await count() == before  # nothing stored by any refusal
    # The unused one is still the uploader's to send, once.
    ok = await sheda.api.post("/api/v1/chats", {"receiver_id": carol.id, "attachment_ids": [second["id"]]}, token=alice.token)
    assert ok.status == 201, ok
    assert (await sheda.api.get(f"{UPLOAD}/{second['id']}", token=carol.token)).status == 200
    # Sent to carol: bob (not in that conversation) cannot fetch it with his token.
    assert (await sheda.api.get(f"{UPLOAD}/{second['id']}", token=bob.token)).status == 404
    docs = {d["_id"]: d for d in await sheda.ctx.db["chat_attachments"].find({"owner_id": alice.id}).to_list(None)}
    await sheda.ctx.chat_attachments.drain()  # the "sent" marks are written after the ack
    docs = {d["_id"]: d for d in await sheda.ctx.db["chat_attachments"].find({"owner_id": alice.id}).to_list(None)}
    assert docs[first["id"]]["state"] == docs[second["id"]]["state"] == "sent"
    assert docs[second["id"]]["message_id"] == ok.json["id"]


async def test_attachments_never_sent_are_deleted_after_a_day(sheda, clock):
    alice, bob = await sheda.signup("client"), await sheda.signup("agent")
    kept, dropped, dropped_pdf = await uploaded(sheda, alice), await uploaded(sheda, alice), await uploaded(sheda, alice, pdf())
    sent = await sheda.api.post("/api/v1/chats", {"receiver_id": bob.id, "attachment_ids": [kept["id"]]}, token=alice.token)
    assert sent.status == 201
    await sheda.ctx.chat_attachments.drain()
    col = sheda.ctx.db["chat_attachments"]
    mine = {"owner_id": alice.id}
    files = {d["_id"]: [d["file"]] + ([d["thumb"]] if d.get("thumb") else []) for d in await col.find(mine).to_list(None)}
    root = sheda.ctx.settings.attachments_dir
    # Within the day nothing goes.
    clock.advance(hours=23)
    await sheda.ctx.chat_attachment_cleanup.run()
    assert await col.count_documents(mine) == 3
    assert all((root / name).exists() for names in files.values() for name in names)
    clock.advance(days=2)
    assert await sheda.ctx.chat_attachment_cleanup.run() >= 2  # (the database is shared with other tests' leftovers)
    assert {d["_id"] for d in await col.find(mine).to_list(None)} == {kept["id"]}
    for aid in (dropped["id"], dropped_pdf["id"]):
        assert not any((root / name).exists() for name in files[aid])
        assert (await sheda.api.get(f"{UPLOAD}/{aid}", token=alice.token)).status == 404
    assert all((root / name).exists() for name in files[kept["id"]])
    assert (await sheda.api.get(f"{UPLOAD}/{kept['id']}", token=bob.token)).status == 200
    # A deleted attachment cannot be sent any more.
    late = await sheda.api.post("/api/v1/chats", {"receiver_id": bob.id, "attachment_ids": [dropped["id"]]}, token=alice.token)
    assert late.status == 404 and late.json["code"] == "attachment_not_found"


async def test_deleting_the_message_for_everyone_deletes_its_files(sheda):
    alice, bob = await sheda.signup("client"), await sheda.signup("agent")
    photo, document = await uploaded(sheda, alice), await uploaded(sheda, alice, pdf())
    sent = await sheda.api.post("/api/v1/chats", {"receiver_id": bob.id, "message": "oops", "attachment_ids": [photo["id"], document["id"]]},
                                token=alice.token)
    assert sent.status == 201
    links = [x["url"] for x in sent.json["attachments"]] + [sent.json["attachments"][0]["thumbnail_url"]]
    for url in links:
        assert (await fetch(sheda, url)).status == 200
    col = sheda.ctx.db["chat_attachments"]
    names = [n for d in await col.find({"_id": {"$in": [photo["id"], document["id"]]}}).to_list(None)
             for n in (d["file"], d.get("thumb")) if n]
    root = sheda.ctx.settings.attachments_dir
    assert len(names) == 3 and all((root / n).exists() for n in names)
    deleted = await sheda.api.delete(f"/api/v1/chat/messages/{sent.json['id']}?for=everyone", token=alice.token)
    assert deleted.status == 200, deleted
    # The files and their documents are gone: links, tokens and a new message all meet nothing.
    assert not any((root / n).exists() for n in names)
    assert await col.count_documents({"_id": {"$in": [photo["id"], document["id"]]}}) == 0
    for url in links:
        assert (await fetch(sheda, url)).status == 404
    for user in (alice, bob):
        assert (await sheda.api.get(f"{UPLOAD}/{photo['id']}", token=user.token)).status == 404
    rows = (await sheda.api.get(f"/api/v1/chat/chat-history/{alice.id}", token=bob.token)).json
    assert rows[-1]["deleted"] is True and "attachments" not in rows[-1]


async def test_a_message_that_fails_to_be_stored_gives_its_attachments_back(sheda):
    alice, bob = await sheda.signup("client"), await sheda.signup("agent")
    photo = await uploaded(sheda, alice)
    # The next message id is taken (a restored backup, another writer): the database refuses the message.
    taken = await sheda.ctx.ids.current("messages") + 1
    await sheda.ctx.db["messages"].insert_one({"_id": taken, "conv": "0:0", "sender_id": 0, "receiver_id": 0, "message": "squatter"})
    failed = await sheda.api.post("/api/v1/chats", {"receiver_id": bob.id, "attachment_ids": [photo["id"]], "client_msg_id": "f1"},
                                  token=alice.token)
    assert failed.status == 503 and failed.json["code"] == "store_failed", failed
    await sheda.ctx.chat_attachments.drain()  # the claim is given back once the batch has answered
    doc = await sheda.ctx.db["chat_attachments"].find_one({"_id": photo["id"]})
    assert doc["state"] == "new" and doc["conv"] is None
    assert (await sheda.api.get(f"{UPLOAD}/{photo['id']}", token=bob.token)).status == 404  # not sent: not bob's to see
    # Sent again: stored this time, and the attachment goes with it.
    again = await sheda.api.post("/api/v1/chats", {"receiver_id": bob.id, "attachment_ids": [photo["id"]], "client_msg_id": "f1"},
                                 token=alice.token)
    assert again.status == 201 and [x["id"] for x in again.json["attachments"]] == [photo["id"]], again
    assert (await sheda.api.get(f"{UPLOAD}/{photo['id']}", token=bob.token)).status == 200


async def test_a_push_for_a_message_without_text_names_its_attachments(sheda, push):
    ada, bob = await sheda.signup(full_name="Ada Obi"), await sheda.signup(full_name="Bob Eze")
    sub, device_id = await subscribed(sheda, push, ada)
    photos = [await uploaded(sheda, bob), await uploaded(sheda, bob, png((30, 30)))]
    sent = await sheda.api.post("/api/v1/chats", {"receiver_id": ada.id, "attachment_ids": [p["id"] for p in photos]}, token=bob.token)
    assert sent.status == 201
    await until_jobs(sheda, device_id)
    sheda.ctx.clock.advance(seconds=11)
    await run_jobs(sheda)
    [got] = push.accepted(sub.endpoint_id)
    assert got.payload["title"] == "New message from Bob Eze" and got.payload["body"] == "📷 2 photos"


async def test_a_transparent_image_keeps_its_transparency_in_the_thumbnail(sheda):
    alice = await sheda.signup("client")
    buf = io.BytesIO()
    logo = Image.new("P", (640, 640), 0)
    logo.putpalette([255, 255, 255, 200, 0, 0] + [0] * 762)
    logo.paste(1, (160, 160, 480, 480))
    logo.save(buf, "PNG", transparency=0)  # a palette image whose colour 0 is transparent
    att = await uploaded(sheda, alice, buf.getvalue(), filename="logo.png", content_type="image/png")
    thumb = await fetch(sheda, att["thumbnail_url"])
    assert thumb.status == 200 and thumb.headers["Content-Type"] == "image/png"
    small = Image.open(io.BytesIO(thumb.body)).convert("RGBA")
    assert small.size == (320, 320)
    assert small.getpixel((5, 5))[3] == 0 and small.getpixel((160, 160)) == (200, 0, 0, 255)


async def test_unsent_uploads_per_user_are_capped(sheda):
    alice, bob = await sheda.signup("client"), await sheda.signup("agent")
    limit = sheda.ctx.settings.chat_attachment_max_pending
    pending = [await uploaded(sheda, alice, png((8 + i, 8))) for i in range(limit)]
    refused = await upload(sheda, alice, png())
    assert refused.status == 409 and refused.json["code"] == "too_many_pending_attachments", refused
    assert await sheda.ctx.db["chat_attachments"].count_documents({"owner_id": alice.id}) == limit
    await uploaded(sheda, bob)  # another user's own count
    # Sending one frees a place.
    sent = await sheda.api.post("/api/v1/chats", {"receiver_id": bob.id, "attachment_ids": [pending[0]["id"]]}, token=alice.token)
    assert sent.status == 201
    await uploaded(sheda, alice)
