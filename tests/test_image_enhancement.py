"""AI enhancement of listing images (issue 16 §4), against a local enhancement service
(tests/enhancer_service.py) on a real port: the service gets the original with our API key and
calls the signed webhook; the listing then shows the enhanced file and keeps the original.
Forged, missing, stale and replayed webhooks, a server without a secret, a result on another
host or that is not an image, the timeout sweep with a moved clock, the in-process Pillow path
when no service is configured, and who may ask."""
from __future__ import annotations

import asyncio
import io
import json
import time
from pathlib import Path

import pytest
import tornado.netutil
from PIL import Image

from config import load_settings
from handlers.app import make_app
from sheda_rt.enhancement.service import DELIVERY_LEASE
from sheda_rt.server import Server
from tests.enhancer_service import API_KEY, SECRET, LocalEnhancer, sign
from tests.listing_helpers import create_property
from tests.support import eventually, multipart

WEBHOOK = "/api/v1/webhooks/image-enhancement"


@pytest.fixture
def enhancer(io_loop):
    service = LocalEnhancer()
    service.start()
    yield service
    service.stop()


@pytest.fixture
def settings_overrides(request, enhancer):
    """service (default): the local service with key and secret; `no_secret`: the service
    without a webhook secret; `local`: no service at all (Pillow in-process); `cap`: the service, at most 2 live
    jobs per agent; `slow`: the service, the request waiting only 0.3 s for its answer."""
    mode = getattr(request, "param", "service")
    if mode == "local":
        return {"enhancement_max_edge": 64}
    settings = {"enhancement_service_url": enhancer.jobs_url, "enhancement_api_key": API_KEY,
                "enhancement_webhook_secret": SECRET, "enhancement_callback_url": "https://api.example.com/hooks/enhanced", "access_token_minutes": 24 * 60 * 14}  # tokens outlive the moved clock
    if mode == "no_secret":
        del settings["enhancement_webhook_secret"]
    if mode == "cap":
        settings["enhancement_max_live_per_agent"] = 2
    # The local service answers at once: these tests wait for its answer (as a real request would, up to
    # ENHANCEMENT_SUBMIT_WAIT_SECONDS) however loaded the machine; `slow`: a short wait, for a service that holds.
    settings["enhancement_submit_wait_seconds"] = 0.3 if mode == "slow" else 60
    return settings


@pytest.fixture
def svc(io_loop, sheda, enhancer):
    enhancer.webhook_url = sheda.base_url + WEBHOOK
    yield enhancer
    # The database lives for the session: no job of this test stays live for another's sweep to find.
    io_loop.run_sync(lambda: sheda.ctx.db["image_enhancements"].delete_many({"status": {"$in": ["pending", "processing"]}}))


def photo(width: int = 40, height: int = 30) -> bytes:
    """A dull gradient (grey 90..160): something auto-contrast visibly changes."""
    img = Image.new("RGB", (width, height))
    img.putdata([(90 + (x * 70) // width, 100, 90 + (y * 70) // height) for y in range(height) for x in range(width)])
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


async def listing_with_image(sheda, agent, data: bytes | None = None) -> tuple[dict, dict]:
    prop = await create_property(sheda, agent)
    body, headers = multipart("file", "room.png", data or photo(), "image/png")
    r = await sheda.api.post(f"/api/v1/properties/{prop['id']}/images", body=body, headers=headers, token=agent.token)
    assert r.status == 201, r
    return prop, r.json["image"]


def enhance_path(prop: dict, image: dict) -> str:
    return f"/api/v1/properties/{prop['id']}/images/{image['id']}/enhance"


async def shown_image(sheda, prop: dict, image: dict) -> dict:
    """The image as the public listing shows it."""
    r = await sheda.api.get(f"/api/v1/properties/{prop['id']}")
    assert r.status == 200, r
    return next(i for i in r.json["images"] if i["id"] == image["id"])


async def stored_listing(sheda, prop: dict) -> dict:
    return await sheda.ctx.db["properties"].find_one({"_id": prop["id"]})


async def media_file(sheda, url: str) -> bytes:
    r = await sheda.api.get(url)
    assert r.status == 200, (url, r)
    return r.body


def media_files(sheda) -> set[str]:
    folder = Path(sheda.ctx.settings.media_dir) / "properties"
    return {p.name for p in folder.iterdir()} if folder.exists() else set()


def stop_queue(ctx) -> None:
    """The moved clock must not make other tests' queued jobs due here: both of the queue's runners (the main one and
    the in-process enhancer's lane) stop polling."""
    ctx.job_runner.stop()
    ctx.media_job_runner.stop()


async def started(sheda, agent, svc) -> tuple[dict, dict, dict]:
    """A listing image with a job at the service (which does not answer by itself)."""
    svc.auto_complete = False
    prop, image = await listing_with_image(sheda, agent)
    r = await sheda.api.post(enhance_path(prop, image), token=agent.token)
    assert r.status == 202 and r.json["status"] == "processing", r
    return prop, image, r.json


# ---- the external service ------------------------------------------------------------------
async def test_service_gets_the_job_calls_the_signed_webhook_and_the_listing_shows_the_enhanced_image(sheda, svc):
    agent = await sheda.signup("agent")
    prop, image = await listing_with_image(sheda, agent)
    watcher = await sheda.signup("client")
    ws = await sheda.ws(watcher.token)
    await ws.send({"type": "subscribe", "channel": f"property:{prop['id']}"})
    await ws.wait_type("subscribed")
    assert image["enhancement_status"] is None and image["enhanced_url"] is None and image["original_url"] == image["url"]
    original_bytes = await media_file(sheda, image["url"])

    r = await sheda.api.post(enhance_path(prop, image), token=agent.token)
    assert r.status == 202, r
    job = r.json
    assert job["status"] == "processing" and job["mode"] == "service" and job["image_id"] == image["id"]
    assert job["original_url"] == image["url"] and job["enhanced_url"] is None
    # The service got the original file with our API key and our job id.
    sent = svc.job(job["id"])
    assert svc.job_headers[-1]["X-Api-Key"] == API_KEY
    assert sent["image"] == original_bytes and sent["content_type"] == "image/png"
    assert sent["callback_url"] == "https://api.example.com/hooks/enhanced"

    # It calls the signed webhook by itself; the listing's watchers see the enhanced image.
    frame = await ws.wait_for(lambda f: f.get("type") == "property.updated"
                              and f["property"]["images"][0]["enhancement_status"] == "completed", timeout=15)
    assert "images" in frame["changes"]
    assert (await svc.background[-1]).code == 200  # the service's webhook call, answered
    shown = await shown_image(sheda, prop, image)
    assert shown == frame["property"]["images"][0]
    assert shown["enhancement_status"] == "completed" and shown["url"] == shown["enhanced_url"] != image["url"]
    assert shown["original_url"] == image["url"] and shown["is_primary"] is True
    # The original is kept; the enhanced file is the service's image, stored re-encoded next to it.
    assert await media_file(sheda, shown["original_url"]) == original_bytes
    enhanced = Image.open(io.BytesIO(await media_file(sheda, shown["url"])))
    assert enhanced.format == "PNG" and enhanced.size == (80, 60)
    assert shown["url"].startswith("/media/properties/")
    stored = (await stored_listing(sheda, prop))["images"][0]
    assert stored["enhancement_job_id"] == job["id"] and stored["url"] == shown["url"]
    metrics = (await sheda.api.get("/metrics")).body.decode()
    assert 'sheda_image_enhancements_total{mode="service",status="completed"}' in metrics
    ws.close()


async def test_re_enhancing_while_processing_is_409_and_after_the_end_starts_afresh(sheda, svc):
    agent = await sheda.signup("agent")
    prop, image, job = await started(sheda, agent, svc)
    assert (await shown_image(sheda, prop, image))["enhancement_status"] == "processing"
    again = await asyncio.gather(*(sheda.api.post(enhance_path(prop, image), token=agent.token) for _ in range(3)))
    assert [r.status for r in again] == [409] * 3 and again[0].json["code"] == "enhancement_in_progress"
    assert len(svc.jobs) == 1
    r = await svc.complete(job["id"])
    assert r.code == 200
    first = await shown_image(sheda, prop, image)
    # A second enhancement starts from the original, and replaces the first enhanced file.
    r = await sheda.api.post(enhance_path(prop, image), token=agent.token)
    assert r.status == 202 and r.json["original_url"] == image["url"], r
    assert svc.jobs[-1]["image"] == await media_file(sheda, image["url"])
    assert (await svc.complete(r.json["id"])).code == 200
    second = await shown_image(sheda, prop, image)
    assert second["enhancement_status"] == "completed" and second["url"] != first["url"]
    assert (await sheda.api.get(first["url"])).status == 404  # no longer shown: deleted
    assert second["original_url"] == image["url"] and (await sheda.api.get(image["url"])).status == 200


async def test_deleting_an_enhanced_image_deletes_its_original_and_enhanced_files(sheda, svc):
    agent = await sheda.signup("agent")
    prop, image, job = await started(sheda, agent, svc)
    assert (await svc.complete(job["id"])).code == 200
    shown = await shown_image(sheda, prop, image)
    assert shown["url"] != shown["original_url"]
    r = await sheda.api.delete(f"/api/v1/properties/{prop['id']}/images/{image['id']}", token=agent.token)
    assert r.status == 204, r
    for url in (shown["url"], shown["original_url"]):
        assert (await sheda.api.get(url)).status == 404, url


async def test_undo_shows_the_upload_again_deletes_the_enhanced_file_and_the_image_may_be_enhanced_again(sheda, svc):
    """An agent who does not like the enhanced photo gets the one they uploaded back, in the same place (id,
    primary flag), without uploading it again."""
    agent = await sheda.signup("agent")
    prop, image, job = await started(sheda, agent, svc)
    undo = enhance_path(prop, image)
    r = await sheda.api.delete(undo, token=agent.token)  # not while the job is live
    assert r.status == 409 and r.json["code"] == "enhancement_in_progress", r
    assert (await svc.complete(job["id"])).code == 200
    enhanced = await shown_image(sheda, prop, image)
    assert enhanced["enhancement_status"] == "completed" and enhanced["url"] != image["url"]
    other_agent, client = await sheda.signup("agent"), await sheda.signup("client")
    for who in (other_agent, client):
        r = await sheda.api.delete(undo, token=who.token)
        assert r.status == 403 and r.json["code"] == "not_owner", r
    assert (await sheda.api.delete(undo)).status == 401
    r = await sheda.api.delete(enhance_path(prop, {"id": image["id"] + 10**9}), token=agent.token)
    assert r.status == 404 and r.json["code"] == "image_not_found", r
    watcher = await sheda.signup("client")
    ws = await sheda.ws(watcher.token)
    await ws.send({"type": "subscribe", "channel": f"property:{prop['id']}"})
    await ws.wait_type("subscribed")

    r = await sheda.api.delete(undo, token=agent.token)
    assert r.status == 200, r
    shown = next(i for i in r.json["images"] if i["id"] == image["id"])
    assert shown == {**image, "is_primary": True} and shown["url"] == shown["original_url"] == image["url"], shown
    assert shown["enhanced_url"] is None and shown["enhancement_status"] is None
    assert await shown_image(sheda, prop, image) == shown
    frame = await ws.wait_for(lambda f: f.get("type") == "property.updated", timeout=15)
    assert frame["property"]["images"][0] == shown and "images" in frame["changes"]
    assert (await sheda.api.get(enhanced["url"])).status == 404  # the enhanced file is gone; the upload stays
    assert (await sheda.api.get(image["url"])).status == 200
    again = await sheda.api.delete(undo, token=agent.token)  # nothing left to undo: the listing, unchanged
    assert again.status == 200 and next(i for i in again.json["images"] if i["id"] == image["id"]) == shown
    # It may be enhanced again, from the upload.
    r = await sheda.api.post(undo, token=agent.token)
    assert r.status == 202 and r.json["original_url"] == image["url"], r
    assert (await svc.complete(r.json["id"])).code == 200
    assert (await shown_image(sheda, prop, image))["enhancement_status"] == "completed"
    ws.close()


async def test_only_the_listings_agent_or_an_admin_may_enhance(sheda, svc):
    svc.auto_complete = False
    agent = await sheda.signup("agent")
    prop, image = await listing_with_image(sheda, agent)
    other_agent, client = await sheda.signup("agent"), await sheda.signup("client")
    for who in (other_agent, client):
        r = await sheda.api.post(enhance_path(prop, image), token=who.token)
        assert r.status == 403 and r.json["code"] == "not_owner", r
    assert (await sheda.api.post(enhance_path(prop, image))).status == 401
    assert (await sheda.api.post(enhance_path({"id": 10**15}, image), token=agent.token)).status == 404
    r = await sheda.api.post(enhance_path(prop, {"id": image["id"] + 10**9}), token=agent.token)
    assert r.status == 404 and r.json["code"] == "image_not_found"
    assert svc.jobs == [] and (await shown_image(sheda, prop, image))["enhancement_status"] is None
    # Someone else's unlisted listing is not even confirmed to exist.
    assert (await sheda.api.patch(f"/api/v1/properties/{prop['id']}/status", {"active": False}, token=agent.token)).status == 200
    assert (await sheda.api.post(enhance_path(prop, image), token=other_agent.token)).status == 404
    assert (await sheda.api.patch(f"/api/v1/properties/{prop['id']}/status", {"active": True}, token=agent.token)).status == 200
    admin = await sheda.admin()
    r = await sheda.api.post(enhance_path(prop, image), token=admin.token)
    assert r.status == 202 and svc.job(r.json["id"])


async def test_a_service_that_refuses_the_job_fails_it_with_503_and_the_image_can_be_tried_again(sheda, svc):
    agent = await sheda.signup("agent")
    prop, image = await listing_with_image(sheda, agent)
    svc.refuse_jobs = 500
    r = await sheda.api.post(enhance_path(prop, image), token=agent.token)
    assert r.status == 503 and r.json["code"] == "enhancement_service_unavailable", r
    assert (await shown_image(sheda, prop, image))["enhancement_status"] == "failed"
    svc.refuse_jobs, svc.auto_complete = None, False
    assert (await sheda.api.post(enhance_path(prop, image), token=agent.token)).status == 202


@pytest.mark.parametrize("settings_overrides", ["cap"], indirect=True)
async def test_one_agent_cannot_fill_the_enhancement_lane_beyond_the_per_agent_cap(sheda, svc):
    """An agent with many listings could start any number of enhancements and fill the lane other agents wait in.
    Now at most ENHANCEMENT_MAX_LIVE_PER_AGENT (2 here) live at once per listing agent, whoever asks: beyond, 429
    rate_limited with Retry-After and nothing started; another agent is not affected; a finished job frees a place."""
    svc.auto_complete = False
    agent, other, admin = await sheda.signup("agent"), await sheda.signup("agent"), await sheda.admin()
    images = [await listing_with_image(sheda, agent) for _ in range(4)]
    first = []
    for prop, image in images[:2]:
        r = await sheda.api.post(enhance_path(prop, image), token=agent.token)
        assert r.status == 202, r
        first.append(r.json)
    prop, image = images[2]
    for who in (agent, admin):  # an admin's request on the agent's listing counts toward the agent's lane too
        r = await sheda.api.post(enhance_path(prop, image), token=who.token)
        assert r.status == 429 and r.json["code"] == "rate_limited" and int(r.headers["Retry-After"]) >= 1, r
        assert r.json["detail"] and r.json["retry_after"] >= 1
    assert (await shown_image(sheda, prop, image))["enhancement_status"] is None
    assert len(svc.jobs) == 2 and await sheda.ctx.db["image_enhancements"].count_documents({"image_id": image["id"]}) == 0
    # The same image again is still 409 (it is live), not 429.
    r = await sheda.api.post(enhance_path(*images[0]), token=agent.token)
    assert r.status == 409 and r.json["code"] == "enhancement_in_progress", r
    # Another agent's photos are not held up.
    r = await sheda.api.post(enhance_path(*await listing_with_image(sheda, other)), token=other.token)
    assert r.status == 202, r
    # A job that ended frees its place.
    assert (await svc.complete(first[0]["id"])).code == 200
    r = await sheda.api.post(enhance_path(prop, image), token=agent.token)
    assert r.status == 202, r
    # A burst never passes the cap.
    burst = await sheda.signup("agent")
    many = [await listing_with_image(sheda, burst) for _ in range(5)]
    results = await asyncio.gather(*(sheda.api.post(enhance_path(p, i), token=burst.token) for p, i in many))
    assert {r.status for r in results} <= {202, 429} and sum(r.status == 202 for r in results) <= 2, results
    live = await sheda.ctx.db["image_enhancements"].count_documents({"agent_id": burst.id, "status": {"$in": ["pending", "processing"]}})
    assert live == sum(r.status == 202 for r in results)


@pytest.mark.parametrize("settings_overrides", ["slow"], indirect=True)
async def test_a_slow_service_never_holds_the_request_and_the_upload_goes_on_retried_by_the_queue(sheda, svc):
    """A slow enhancement service held POST .../enhance until the upload's 30 s read timeout, then 503: phones gave
    up first. Now the request waits at most ENHANCEMENT_SUBMIT_WAIT_SECONDS and answers 202 `processing`; the
    upload, a durable queue job, goes on, and when the service then fails it is retried, not the job failed."""
    agent = await sheda.signup("agent")
    prop, image = await listing_with_image(sheda, agent)
    svc.hold_jobs = asyncio.Event()
    r = await sheda.api.post(enhance_path(prop, image), token=agent.token)
    assert r.status == 202 and r.json["status"] == "processing", r
    assert svc.jobs == []  # the service has not answered yet
    assert (await shown_image(sheda, prop, image))["enhancement_status"] == "processing"
    svc.hold_jobs.set()  # it takes the job, then calls the webhook by itself
    done = await eventually(lambda: _shown_if(sheda, prop, image, "completed"), "the enhancement completed")
    assert done["url"] == done["enhanced_url"] != image["url"] and svc.job(r.json["id"])["image"] == await media_file(sheda, image["url"])

    # Slow, then failing (5xx): the job stays processing and the queue uploads it again.
    prop2, image2 = await listing_with_image(sheda, agent)
    svc.hold_jobs, svc.refuse_jobs = asyncio.Event(), 503
    r = await sheda.api.post(enhance_path(prop2, image2), token=agent.token)
    assert r.status == 202 and r.json["status"] == "processing", r
    svc.hold_jobs.set()
    key = f"image.enhance.submit:{r.json['id']}"
    jobs = sheda.ctx.db["jobs"]
    queued = await eventually(lambda: jobs.find_one({"_id": key, "status": "pending", "last_error": {"$exists": True}}),
                              "the upload queued for another try")
    assert "503" in queued["last_error"]
    assert (await shown_image(sheda, prop2, image2))["enhancement_status"] == "processing"
    svc.refuse_jobs = None
    assert await sheda.ctx.media_job_runner.bring_forward(key, sheda.ctx.clock.now())  # its backoff, without waiting it out
    await eventually(lambda: _shown_if(sheda, prop2, image2, "completed"), "the retried upload completed")
    assert (await jobs.find_one({"_id": key}))["status"] == "done"


async def _shown_if(sheda, prop, image, status):
    shown = await shown_image(sheda, prop, image)
    return shown if shown["enhancement_status"] == status else None


# ---- webhooks that must change nothing --------------------------------------------------------
async def test_forged_missing_and_stale_signatures_are_401_and_change_nothing(sheda, svc):
    agent = await sheda.signup("agent")
    prop, image, job = await started(sheda, agent, svc)
    result_url = svc.put_result(photo(20, 20))
    body = svc.body_for(job["id"], result_url=result_url)
    before = await stored_listing(sheda, prop)
    now = int(time.time())
    attempts = [
        {"secret": "not-the-shared-secret-at-all"},  # forged
        {"signature": sign(body + b" ", str(now))},  # signed over other bytes
        {"signature": sign(body, str(now - 1))},  # the timestamp sent is not the one signed
        {"signature": "sha256=" + "0" * 64},
        {"signature": sign(body, str(now))[len("sha256="):]},  # without its scheme
        {"signature": "sha256=ünïcode"},
        {"drop": ("X-Signature",)},  # missing
        {"drop": ("X-Timestamp",)},
        {"drop": ("X-Delivery-Id",)},
        {"timestamp": "soon"},
        {"timestamp": str(now - 301)},  # stale: signed correctly, 5 minutes and a second old
        {"timestamp": str(now + 330)},  # from the future (30 s of slack for a slow machine)
    ]
    for attempt in attempts:
        r = await svc.deliver(body, **attempt)
        assert r.code == 401, (attempt, r.code, r.body)
    assert svc.fetches == []  # the result was never fetched
    assert await stored_listing(sheda, prop) == before
    assert (await shown_image(sheda, prop, image))["enhancement_status"] == "processing"
    assert await sheda.ctx.db["enhancement_deliveries"].count_documents({"job_id": job["id"]}) == 0
    # The same body, signed as the service signs it, goes through (so the refusals above were the signature's).
    r = await svc.deliver(body, timestamp=str(int(time.time()) - 240))
    assert r.code == 200 and svc.fetches == [result_url.rsplit("/", 1)[1]]
    assert (await shown_image(sheda, prop, image))["enhancement_status"] == "completed"


async def test_a_replayed_delivery_id_is_200_with_no_effect(sheda, svc):
    agent = await sheda.signup("agent")
    prop, image, job = await started(sheda, agent, svc)
    body = svc.body_for(job["id"], result_url=svc.put_result(photo(20, 20)))
    r = await svc.deliver(body, delivery_id="dlv-replay-1")
    assert r.code == 200 and (await shown_image(sheda, prop, image))["enhancement_status"] == "completed"
    # The next enhancement of the image, then an old delivery id replayed with a new, validly signed body about it.
    r = await sheda.api.post(enhance_path(prop, image), token=agent.token)
    assert r.status == 202
    second = r.json
    before, fetched = await stored_listing(sheda, prop), list(svc.fetches)
    replay = svc.body_for(second["id"], result_url=svc.put_result(photo(24, 24)))
    for _ in range(2):
        r = await svc.deliver(replay, delivery_id="dlv-replay-1")
        assert r.code == 200 and r.body and b'"duplicate":true' in r.body.replace(b" ", b""), r.body
    assert svc.fetches == fetched and await stored_listing(sheda, prop) == before
    assert (await shown_image(sheda, prop, image))["enhancement_status"] == "processing"


@pytest.mark.parametrize("settings_overrides", ["no_secret"], indirect=True)
async def test_without_a_webhook_secret_every_webhook_is_401(sheda, svc):
    agent = await sheda.signup("agent")
    prop, image, job = await started(sheda, agent, svc)
    body = svc.body_for(job["id"], result_url=svc.put_result(photo(20, 20)))
    before = await stored_listing(sheda, prop)
    for attempt in ({}, {"secret": ""}, {"drop": ("X-Signature",)}):
        r = await svc.deliver(body, **attempt)
        assert r.code == 401, (attempt, r.body)
    assert svc.fetches == [] and await stored_listing(sheda, prop) == before


async def test_a_result_on_another_host_fails_the_job_without_fetching_it(sheda, svc):
    agent = await sheda.signup("agent")
    prop, image, job = await started(sheda, agent, svc)
    files = media_files(sheda)
    port = svc.base_url.rsplit(":", 1)[1]
    name = svc.put_result(photo(20, 20)).rsplit("/", 1)[1]
    # The same server under another name, another port, another scheme: all another origin.
    r = await svc.deliver(svc.body_for(job["id"], result_url=f"http://localhost:{port}/results/{name}"))
    assert r.code == 200
    assert svc.fetches == [] and media_files(sheda) == files
    shown = await shown_image(sheda, prop, image)
    assert shown["enhancement_status"] == "failed" and shown["url"] == image["url"] and shown["enhanced_url"] is None
    stored = await sheda.ctx.enhancement_store.get(job["id"])
    assert stored["status"] == "failed" and "host" in stored["error"]
    # Failed ends the job: a new one may start.
    assert (await sheda.api.post(enhance_path(prop, image), token=agent.token)).status == 202


def gif() -> bytes:
    out = io.BytesIO()
    Image.new("P", (20, 20)).save(out, format="GIF")
    return out.getvalue()


@pytest.mark.parametrize("content, content_type", [
    (b"<html><body>not an image</body></html>", "image/png"),
    (photo(20, 20)[:60], "image/png"),  # a truncated PNG
    (gif(), "image/png"),  # an image, but not one of ours (jpeg, png, webp)
], ids=["html", "truncated_png", "gif"])
async def test_a_result_that_is_not_an_image_fails_the_job_and_stores_nothing(sheda, svc, content, content_type):
    agent = await sheda.signup("agent")
    prop, image, job = await started(sheda, agent, svc)
    files = media_files(sheda)
    r = await svc.deliver(svc.body_for(job["id"], result_url=svc.put_result(content, content_type)))
    assert r.code == 200 and len(svc.fetches) == 1
    shown = await shown_image(sheda, prop, image)
    assert shown["enhancement_status"] == "failed" and shown["url"] == image["url"] and shown["enhanced_url"] is None
    assert media_files(sheda) == files


async def test_the_service_reporting_a_failure_and_bad_bodies(sheda, svc):
    agent = await sheda.signup("agent")
    prop, image, job = await started(sheda, agent, svc)
    for bad in (b"[1]", b"{", b'{"job_id": "1", "status": "completed", "result_url": "x"}',
                svc.body_for(job["id"])):  # completed without a result
        r = await svc.deliver(bad)
        assert r.code in (400, 422), (bad, r.code)
    assert (await shown_image(sheda, prop, image))["enhancement_status"] == "processing"
    r = await svc.deliver(svc.body_for(job["id"]))  # the service's developer is told which field is missing
    assert r.code == 422 and [e["field"] for e in json.loads(r.body)["errors"]] == ["result_url"], r.body
    r = await svc.deliver(svc.body_for(job["id"], "failed", error="model overloaded"))
    assert r.code == 200
    assert (await shown_image(sheda, prop, image))["enhancement_status"] == "failed"
    assert "model overloaded" in (await sheda.ctx.enhancement_store.get(job["id"]))["error"]
    # A late success for the failed job changes nothing.
    r = await svc.deliver(svc.body_for(job["id"], result_url=svc.put_result(photo(20, 20))))
    assert r.code == 200 and svc.fetches == []
    assert (await shown_image(sheda, prop, image))["enhancement_status"] == "failed"


# ---- the timeout sweep --------------------------------------------------------------------
async def test_the_sweep_times_out_jobs_older_than_48_hours_and_a_late_webhook_changes_nothing(sheda, svc):
    stop_queue(sheda.ctx)
    agent = await sheda.signup("agent")
    prop, image, job = await started(sheda, agent, svc)
    sheda.ctx.clock.advance(hours=47)
    young_prop, young_image, young = await started(sheda, agent, svc)
    assert await sheda.ctx.enhancement_sweep.run() == 0
    sheda.ctx.clock.advance(hours=1, minutes=1)
    assert await sheda.ctx.enhancement_sweep.run() == 1
    assert await sheda.ctx.enhancement_sweep.run() == 0  # once
    shown = await shown_image(sheda, prop, image)
    assert shown["enhancement_status"] == "timeout" and shown["url"] == image["url"]
    assert (await shown_image(sheda, young_prop, young_image))["enhancement_status"] == "processing"
    # The service answers after all, too late (signed for our moved clock): nothing changes, nothing is fetched.
    late = svc.body_for(job["id"], result_url=svc.put_result(photo(20, 20)))
    r = await svc.deliver(late, timestamp=str(int(sheda.ctx.clock.now().timestamp())))
    assert r.code == 200 and svc.fetches == []
    assert (await shown_image(sheda, prop, image))["enhancement_status"] == "timeout"
    # The image is free for a new enhancement.
    assert (await sheda.api.post(enhance_path(prop, image), token=agent.token)).status == 202
    # Delivery ids are kept a week (a replay needs a fresh signed timestamp anyway), then swept.
    late_id = (await sheda.ctx.db["enhancement_deliveries"].find_one({"job_id": job["id"]}))["_id"]
    sheda.ctx.clock.advance(days=6)
    await sheda.ctx.enhancement_sweep.run()
    assert await sheda.ctx.db["enhancement_deliveries"].find_one({"_id": late_id})
    sheda.ctx.clock.advance(days=1, minutes=1)
    await sheda.ctx.enhancement_sweep.run()
    assert await sheda.ctx.db["enhancement_deliveries"].find_one({"_id": late_id}) is None


async def test_an_end_whose_image_copy_a_dying_process_never_wrote_is_shown_by_the_sweep(sheda, svc):
    stop_queue(sheda.ctx)
    agent = await sheda.signup("agent")
    prop, image, job = await started(sheda, agent, svc)
    # The first of an end's two writes, as a process that died right after it leaves it.
    assert await sheda.ctx.enhancement_store.transition(job["id"], ["processing"], "failed", sheda.ctx.clock.now(),
                                                        {"error": "the process died"})
    assert (await shown_image(sheda, prop, image))["enhancement_status"] == "processing"
    await sheda.ctx.enhancement_sweep.run()  # within a minute a live process may still be writing it
    assert (await shown_image(sheda, prop, image))["enhancement_status"] == "processing"
    sheda.ctx.clock.advance(minutes=2)
    await sheda.ctx.enhancement_sweep.run()
    assert (await shown_image(sheda, prop, image))["enhancement_status"] == "failed"
    assert "unmirrored" not in await sheda.ctx.enhancement_store.get(job["id"])


# ---- racing ends, two processes ------------------------------------------------------------------
async def test_racing_webhooks_and_sweeps_on_two_servers_end_each_job_once(sheda, svc):
    """A second Server (own context) on the same database and DATA_DIR, as a second process: the same
    delivery to both, another delivery of the same result, and (every other round, 49 hours later) both
    sweeps, at once. Each job ends once, and the listing shows that end with exactly its file."""
    s = sheda.server.settings
    other = Server(load_settings(**s.model_dump()), s.mongodb_uri, clock=sheda.ctx.clock, app_factory=make_app)
    port = (await other.start(tornado.netutil.bind_sockets(0, "127.0.0.1")))[0]
    for server in (sheda.server, other):
        stop_queue(server.ctx)
    try:
        agent = await sheda.signup("agent")
        ends = set()
        for round_ in range(4):
            prop, image, job = await started(sheda, agent, svc)
            files = media_files(sheda)
            body = svc.body_for(job["id"], result_url=svc.put_result(photo(30, 30)))
            if round_ % 2:  # every other round the sweeps race the deliveries; else the deliveries race each other
                sheda.ctx.clock.advance(hours=49)
            stamp = str(int(sheda.ctx.clock.now().timestamp()))
            a, b, c, swept_a, swept_b = await asyncio.gather(
                svc.deliver(body, timestamp=stamp, delivery_id=f"dlv-race-{job['id']}"),
                svc.deliver(body, timestamp=stamp, delivery_id=f"dlv-race-{job['id']}", url=f"http://127.0.0.1:{port}{WEBHOOK}"),
                svc.deliver(body, timestamp=stamp, url=f"http://127.0.0.1:{port}{WEBHOOK}"),
                sheda.ctx.enhancement_sweep.run(), other.ctx.enhancement_sweep.run())
            # The same id on both at once: one acts on it; the other is a 200 duplicate after it, or 503
            # delivery_in_progress during it (deliver again), never a second run.
            assert c.code == 200 and sorted((a.code, b.code)) in ([200, 200], [200, 503]), (a.code, b.code, c.code)
            if 503 in (a.code, b.code):
                assert b'"delivery_in_progress"' in (a if a.code == 503 else b).body
            stored = await sheda.ctx.enhancement_store.get(job["id"])
            shown = await shown_image(sheda, prop, image)
            assert shown["enhancement_status"] == stored["status"] in ("completed", "timeout")
            ends.add(stored["status"])
            new_files = media_files(sheda) - files
            if stored["status"] == "completed":
                assert swept_a + swept_b == 0
                assert shown["url"] == shown["enhanced_url"] == stored["enhanced_url"]
                assert new_files == {shown["url"].rsplit("/", 1)[1]}  # the losers' copies were deleted
            else:
                assert swept_a + swept_b == 1 and shown["url"] == image["url"] and new_files == set()
        assert "completed" in ends
    finally:
        await other.shutdown()


# ---- no service: Pillow in this process ---------------------------------------------------------
@pytest.mark.parametrize("settings_overrides", ["local"], indirect=True)
async def test_without_a_service_pillow_enhances_in_process_through_the_same_states(sheda):
    agent = await sheda.signup("agent")
    try:
        prop, image = await listing_with_image(sheda, agent, photo(200, 100))
        ws = await sheda.ws(agent.token)
        await ws.send({"type": "subscribe", "channel": f"property:{prop['id']}"})
        await ws.wait_type("subscribed")
        r = await sheda.api.post(enhance_path(prop, image), token=agent.token)
        assert r.status == 202 and r.json["mode"] == "local" and r.json["status"] == "processing", r
        frame = await ws.wait_for(lambda f: f.get("type") == "property.updated"
                                  and f["property"]["images"][0]["enhancement_status"] == "completed", timeout=15)
        shown = await shown_image(sheda, prop, image)
        assert shown == frame["property"]["images"][0]
        assert shown["url"] == shown["enhanced_url"] != image["url"] and shown["original_url"] == image["url"]
        with Image.open(io.BytesIO(await media_file(sheda, shown["url"]))) as enhanced:
            assert enhanced.size == (64, 32)  # the longest side brought to ENHANCEMENT_MAX_EDGE (64 here)
            low, high = enhanced.convert("L").getextrema()
        with Image.open(io.BytesIO(await media_file(sheda, image["url"]))) as original:
            assert original.size == (200, 100)
            o_low, o_high = original.convert("L").getextrema()
        assert high - low > o_high - o_low + 40  # auto-contrast stretched the dull range
        job = await sheda.ctx.enhancement_store.get(r.json["id"])
        assert job["status"] == "completed" and job["mode"] == "local"
        ws.close()
    finally:
        await sheda.ctx.db["jobs"].delete_many({"kind": "image.enhance"})


# ---- review (R2): bad results, deliveries racing, deletions during a job ------------------------
@pytest.mark.parametrize("bad", ["\x00", "\x7f", "\x01"], ids=["nul", "del", "soh"])
async def test_a_signed_result_url_httpx_cannot_send_fails_the_job_instead_of_a_500(sheda, svc, bad):
    """urllib reads the service's origin in such a URL, httpx refuses it (InvalidURL, not an HTTPError): it was a
    500 on every redelivery and the job sat processing until the timeout."""
    agent = await sheda.signup("agent")
    prop, image, job = await started(sheda, agent, svc)
    name = svc.put_result(photo(20, 20)).rsplit("/", 1)[1]
    r = await svc.deliver(svc.body_for(job["id"], result_url=f"{svc.base_url}/results/{bad}{name}"))
    assert r.code == 200, (r.code, r.body)
    assert svc.fetches == []
    assert (await shown_image(sheda, prop, image))["enhancement_status"] == "failed"
    assert "host" in (await sheda.ctx.enhancement_store.get(job["id"]))["error"]


async def test_the_same_delivery_arriving_while_another_request_handles_it_is_not_run_twice(sheda, svc):
    """The same X-Delivery-Id at once (a service's retry after its own timeout, or two processes): the second is 503
    delivery_in_progress while the first fetches; once the first is done, the id is a 200 duplicate. One fetch."""
    agent = await sheda.signup("agent")
    prop, image, job = await started(sheda, agent, svc)
    body = svc.body_for(job["id"], result_url=svc.put_result(photo(20, 20)))
    svc.hold_results = asyncio.Event()
    first = asyncio.ensure_future(svc.deliver(body, delivery_id="dlv-at-once-%d" % job["id"]))
    await eventually(lambda: asyncio.sleep(0, len(svc.fetches) == 1), "the first delivery's fetch")
    second = asyncio.ensure_future(svc.deliver(body, delivery_id="dlv-at-once-%d" % job["id"]))
    await eventually(lambda: asyncio.sleep(0, second.done() or len(svc.fetches) > 1), "the second delivery")
    svc.hold_results.set()
    a, b = await first, await second
    assert a.code == 200 and b"duplicate\":true" not in a.body
    assert b.code == 503 and b'"delivery_in_progress"' in b.body and b.headers.get("Retry-After"), (b.code, b.body)
    assert len(svc.fetches) == 1
    again = await svc.deliver(body, delivery_id="dlv-at-once-%d" % job["id"])
    assert again.code == 200 and b'"duplicate":true' in again.body
    assert len(svc.fetches) == 1 and (await shown_image(sheda, prop, image))["enhancement_status"] == "completed"


async def test_a_delivery_that_failed_runs_again_at_once_and_one_whose_process_died_after_its_lease(sheda, svc):
    stop_queue(sheda.ctx)
    agent = await sheda.signup("agent")
    # The result could not be fetched (503): the same delivery, sent again, runs at once.
    prop, image, job = await started(sheda, agent, svc)
    body = svc.body_for(job["id"], result_url=svc.put_result(photo(20, 20)))
    svc.result_status = 503
    r = await svc.deliver(body, delivery_id=f"dlv-retry-{job['id']}")
    assert r.code == 503 and b'"enhancement_service_unavailable"' in r.body, r.body
    assert (await shown_image(sheda, prop, image))["enhancement_status"] == "processing"
    svc.result_status = None
    assert (await svc.deliver(body, delivery_id=f"dlv-retry-{job['id']}")).code == 200
    assert (await shown_image(sheda, prop, image))["enhancement_status"] == "completed"
    # A process took a delivery and died: its id is held for the lease, then runs again.
    prop, image, job = await started(sheda, agent, svc)
    body = svc.body_for(job["id"], result_url=svc.put_result(photo(20, 20)))
    dead = f"dlv-dead-{job['id']}"
    assert await sheda.ctx.enhancement_store.claim_delivery(dead, job["id"], sheda.ctx.clock.now(), DELIVERY_LEASE) is None
    stamp = lambda: str(int(sheda.ctx.clock.now().timestamp()))  # noqa: E731 (signed for the moved clock)
    r = await svc.deliver(body, delivery_id=dead, timestamp=stamp())
    assert r.code == 503 and b'"delivery_in_progress"' in r.body
    assert (await shown_image(sheda, prop, image))["enhancement_status"] == "processing"
    sheda.ctx.clock.advance(minutes=6)
    r = await svc.deliver(body, delivery_id=dead, timestamp=stamp())
    assert r.code == 200 and b"duplicate" not in r.body.replace(b'"duplicate":false', b"")
    assert (await shown_image(sheda, prop, image))["enhancement_status"] == "completed"


async def test_a_slow_result_download_ends_at_its_deadline_with_503_and_a_later_delivery_completes(sheda, svc):
    """httpx's timeout bounds each read; a result sent a few bytes at a time held the webhook open for as long as
    the host liked."""
    agent = await sheda.signup("agent")
    prop, image, job = await started(sheda, agent, svc)
    body = svc.body_for(job["id"], result_url=svc.put_result(photo(200, 150)))
    client = sheda.ctx.enhancement_client
    deadline, client.download_deadline = client.download_deadline, 0.5
    try:
        svc.dribble = 0.1  # 502 bytes in 16-byte pieces: 3 s, each piece well within httpx's read timeout
        r = await svc.deliver(body)
        assert r.code == 503 and b'"enhancement_service_unavailable"' in r.body, (r.code, r.body)
        assert (await shown_image(sheda, prop, image))["enhancement_status"] == "processing"
    finally:
        client.download_deadline, svc.dribble = deadline, None
    assert (await svc.deliver(body)).code == 200
    assert (await shown_image(sheda, prop, image))["enhancement_status"] == "completed"


async def test_a_long_failure_reason_is_kept_short_not_refused(sheda, svc):
    agent = await sheda.signup("agent")
    prop, image, job = await started(sheda, agent, svc)
    r = await svc.deliver(svc.body_for(job["id"], "failed", error="Traceback: " + "x" * 4000))
    assert r.code == 200, (r.code, r.body)
    assert (await shown_image(sheda, prop, image))["enhancement_status"] == "failed"
    stored = await sheda.ctx.enhancement_store.get(job["id"])
    assert "Traceback" in stored["error"] and len(stored["error"]) <= 500


async def test_bad_webhook_bodies_are_4xx_with_detail_and_code_and_the_413_is_documented(sheda, svc):
    agent = await sheda.signup("agent")
    prop, image, job = await started(sheda, agent, svc)
    huge = b'{"job_id": %d, "status": "failed", "error": "%s"}' % (job["id"], b"x" * (sheda.ctx.settings.max_json_bytes + 10))
    cases = [(huge, 413), (b"not json", 400), (b"null", 422), (b'{"job_id": true, "status": "failed"}', 422),
             (b'{"job_id": 1.0, "status": "failed"}', 422), (b'{"job_id": 10000000000000000000000, "status": "failed"}', 422),
             (svc.body_for(job["id"], "done"), 422), (svc.body_for(job["id"], result_url=["x"]), 422),
             (svc.body_for(job["id"], "failed", error={"why": 1}), 422)]
    for raw, status in cases:
        r = await svc.deliver(raw)
        assert r.code == status, (raw[:80], r.code, r.body[:200])
        if status != 413 or r.body:
            err = json.loads(r.body)
            assert err["code"] and err["detail"], err
    assert (await shown_image(sheda, prop, image))["enhancement_status"] == "processing" and svc.fetches == []
    doc = (await sheda.api.get("/api/v1/openapi.json")).json
    assert "413" in doc["paths"][WEBHOOK]["post"]["responses"]


async def test_deleting_the_image_or_delisting_the_listing_during_a_job_never_breaks_the_webhook_or_the_sweep(sheda, svc):
    stop_queue(sheda.ctx)
    agent = await sheda.signup("agent")
    # The image deleted while the service works: the result is not kept anywhere.
    prop, image, job = await started(sheda, agent, svc)
    assert (await sheda.api.delete(f"/api/v1/properties/{prop['id']}/images/{image['id']}", token=agent.token)).status == 204
    files = media_files(sheda)
    r = await svc.deliver(svc.body_for(job["id"], result_url=svc.put_result(photo(20, 20))))
    assert r.code == 200 and media_files(sheda) == files
    assert (await sheda.api.get(f"/api/v1/properties/{prop['id']}")).json["images"] == []
    # The listing delisted while the service works: its image still shows the result.
    prop, image, job = await started(sheda, agent, svc)
    assert (await sheda.api.delete(f"/api/v1/properties/{prop['id']}", token=agent.token)).status == 204
    assert (await svc.deliver(svc.body_for(job["id"], result_url=svc.put_result(photo(20, 20))))).code == 200
    stored = (await stored_listing(sheda, prop))["images"][0]
    assert stored["enhancement_status"] == "completed" and stored["url"] == stored["enhanced_url"]
    # The image deleted, then the job times out: the sweep ends it and touches no listing.
    prop, image, job = await started(sheda, agent, svc)
    assert (await sheda.api.delete(f"/api/v1/properties/{prop['id']}/images/{image['id']}", token=agent.token)).status == 204
    sheda.ctx.clock.advance(hours=49)
    assert await sheda.ctx.enhancement_sweep.run() >= 1
    assert (await sheda.ctx.enhancement_store.get(job["id"]))["status"] == "timeout"
    assert "unmirrored" not in await sheda.ctx.enhancement_store.get(job["id"])


@pytest.mark.parametrize("status", [301, 302, 307, 308])
async def test_a_result_that_redirects_elsewhere_is_not_followed_and_fails_the_job(sheda, svc, status):
    agent = await sheda.signup("agent")
    prop, image, job = await started(sheda, agent, svc)
    port = svc.base_url.rsplit(":", 1)[1]
    name = svc.put_result(photo(20, 20)).rsplit("/", 1)[1]
    # The service's own result answers with a redirect to the same file under another origin (localhost).
    svc.result_status, svc.redirect_to = status, f"http://localhost:{port}/results/{name}"
    try:
        r = await svc.deliver(svc.body_for(job["id"], result_url=f"{svc.base_url}/results/{name}"))
    finally:
        svc.result_status = svc.redirect_to = None
    assert r.code == 200 and svc.fetches == [name]  # one request: the redirect was not followed
    assert (await shown_image(sheda, prop, image))["enhancement_status"] == "failed"
    assert str(status) in (await sheda.ctx.enhancement_store.get(job["id"]))["error"]


@pytest.mark.parametrize("form", [
    "http://127.0.0.1:{port}@localhost:{port}/results/{name}",  # the service's origin as userinfo of another host
    "http://user@127.0.0.1:{port}/results/{name}",  # userinfo on the right host: refused all the same
    "http://localhost:{port}\\@127.0.0.1:{port}/results/{name}",  # read differently by parsers
    "http://127.0.0.1:{port}\\@localhost:{port}/results/{name}",
    "http://127.0.0.1:{other}/results/{name}",  # another port
    "https://127.0.0.1:{port}/results/{name}",  # another scheme
    "http://[::ffff:127.0.0.1]:{port}/results/{name}",  # the same address, written otherwise
    "http://2130706433:{port}/results/{name}",
    "http://127.1:{port}/results/{name}",
    "//127.0.0.1:{port}/results/{name}",  # no scheme
    "file:///etc/passwd",
], ids=lambda f: f.split("/results")[0])
async def test_result_urls_that_are_not_exactly_the_services_origin_fail_without_a_request(sheda, svc, form):
    agent = await sheda.signup("agent")
    prop, image, job = await started(sheda, agent, svc)
    port = int(svc.base_url.rsplit(":", 1)[1])
    name = svc.put_result(photo(20, 20)).rsplit("/", 1)[1]
    url = form.format(port=port, other=port + 1 if port < 65535 else port - 1, name=name)
    r = await svc.deliver(svc.body_for(job["id"], result_url=url))
    assert r.code == 200, (r.code, r.body)
    assert svc.fetches == []
    assert (await shown_image(sheda, prop, image))["enhancement_status"] == "failed"


@pytest.mark.parametrize("stamp", ["9" * 12, "9" * 40, "-1", "+1700000000", "1700000000.5", "1e9", "170000000\u00b2", "0x65", "0"])
async def test_odd_timestamps_are_401_never_a_500(sheda, svc, stamp):
    agent = await sheda.signup("agent")
    prop, image, job = await started(sheda, agent, svc)
    body = svc.body_for(job["id"], result_url=svc.put_result(photo(20, 20)))
    r = await svc.deliver(body, timestamp=stamp)  # signed over the odd timestamp itself
    assert r.code == 401 and json.loads(r.body)["code"] in ("bad_signature", "stale_webhook"), (r.code, r.body)
    assert svc.fetches == [] and (await shown_image(sheda, prop, image))["enhancement_status"] == "processing"


async def test_enhancement_responses_match_the_openapi_document(sheda, svc):
    """The 202 job, the webhook's acknowledgements (first, duplicate) and its errors (401, 413, 422, 503 twice),
    the enhance route's 409, and the listing's image fields, against the served document."""
    from tests.test_openapi_typed import Conformance, served_document
    conf = Conformance(await served_document(sheda))
    enhance_t = "/api/v1/properties/{property_id}/images/{image_id}/enhance"
    agent = await sheda.signup("agent")
    svc.auto_complete = False
    prop, image = await listing_with_image(sheda, agent)
    job = conf.check(await sheda.api.post(enhance_path(prop, image), token=agent.token), "POST", enhance_t, 202)
    conf.check(await sheda.api.post(enhance_path(prop, image), token=agent.token), "POST", enhance_t, 409)

    async def hook(raw: bytes, delivery: str, **headers):
        stamp = str(int(time.time()))
        signed = {"Content-Type": "application/json", "X-Timestamp": stamp, "X-Delivery-Id": delivery,
                  "X-Signature": sign(raw, stamp)}
        return await sheda.api.post(WEBHOOK, body=raw, headers={**signed, **headers})

    name = svc.put_result(photo(20, 20))
    body = svc.body_for(job["id"], result_url=name)
    conf.check(await hook(body, "dlv-doc-1", **{"X-Signature": "sha256=" + "0" * 64}), "POST", WEBHOOK, 401)
    conf.check(await hook(b'{"job_id": "x"}', "dlv-doc-2"), "POST", WEBHOOK, 422)
    conf.check(await hook(b"x" * (sheda.ctx.settings.max_json_bytes + 1), "dlv-doc-3"), "POST", WEBHOOK, 413)
    svc.result_status = 503
    conf.check(await hook(body, "dlv-doc-4"), "POST", WEBHOOK, 503)
    svc.result_status = None
    await sheda.ctx.enhancement_store.claim_delivery("dlv-doc-5", job["id"], sheda.ctx.clock.now(), DELIVERY_LEASE)
    conf.check(await hook(body, "dlv-doc-5"), "POST", WEBHOOK, 503)  # delivery_in_progress
    assert conf.check(await hook(body, "dlv-doc-4"), "POST", WEBHOOK, 200) == {"received": True}
    assert conf.check(await hook(body, "dlv-doc-4"), "POST", WEBHOOK, 200) == {"received": True, "duplicate": True}
    listing = conf.check(await sheda.api.get(f"/api/v1/properties/{prop['id']}"), "GET", "/api/v1/properties/{property_id}", 200)
    assert listing["images"][0]["enhancement_status"] == "completed"


async def test_a_result_over_the_byte_cap_fails_the_job_as_the_bytes_arrive_not_after_the_whole_body(sheda, svc):
    agent = await sheda.signup("agent")
    service = sheda.ctx.enhancement
    cap, service.max_result_bytes = service.max_result_bytes, 4096
    try:
        # Declared too big (Content-Length): refused before reading the body.
        prop, image, job = await started(sheda, agent, svc)
        files = media_files(sheda)
        r = await svc.deliver(svc.body_for(job["id"], result_url=svc.put_result(b"\0" * 5000)))
        assert r.code == 200 and (await shown_image(sheda, prop, image))["enhancement_status"] == "failed"
        assert "limit is 4096" in (await sheda.ctx.enhancement_store.get(job["id"]))["error"]
        # No length, sent in pieces: 5,000 bytes arrive and the sender stalls; the download stops at the cap there,
        # without waiting for a body that might never end.
        prop, image, job = await started(sheda, agent, svc)
        files = media_files(sheda)
        svc.stall_after = 5000
        hook = asyncio.ensure_future(svc.deliver(svc.body_for(job["id"], result_url=svc.put_result(b"\0" * 20000))))
        await eventually(lambda: asyncio.sleep(0, hook.done()), "the webhook's answer while the result stalls")
        assert hook.result().code == 200 and not svc.stall.is_set()
        assert (await shown_image(sheda, prop, image))["enhancement_status"] == "failed"
        assert "over 4096 bytes" in (await sheda.ctx.enhancement_store.get(job["id"]))["error"]
        assert media_files(sheda) == files
    finally:
        service.max_result_bytes, svc.stall_after = cap, None
        svc.stall.set()


async def test_a_compressed_result_is_refused_so_the_cap_counts_what_arrives(sheda, svc):
    """Downloads ask for identity; a result sent gzip-encoded anyway fails the job (httpx inflates each piece whole
    before the cap sees it: 16 MB of zeros is a 16 KB gzip)."""
    agent = await sheda.signup("agent")
    prop, image, job = await started(sheda, agent, svc)
    files = media_files(sheda)
    svc.gzip_results = True
    try:
        r = await svc.deliver(svc.body_for(job["id"], result_url=svc.put_result(photo(20, 20))))
    finally:
        svc.gzip_results = False
    assert r.code == 200 and len(svc.fetches) == 1
    assert (await shown_image(sheda, prop, image))["enhancement_status"] == "failed"
    assert "gzip" in (await sheda.ctx.enhancement_store.get(job["id"]))["error"] and media_files(sheda) == files
