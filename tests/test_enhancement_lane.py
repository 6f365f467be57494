"""The in-process enhancer's own lane on the job queue (review of issue 16 §4): a Pillow run holds its runner
for seconds (one job at a time per runner), so it runs on a second runner of the same queue and the main
runner walks past its kind; other queued jobs never wait behind a photo. And a run that raises unexpectedly
ends the image `failed` once the queue gives up, instead of `processing` until the 48-hour timeout sweep.

The enhancement is held mid-run deterministically: its stored original is replaced by a named pipe, so the
worker thread's read blocks until the test writes the photo's bytes into it."""
from __future__ import annotations

import asyncio
import errno
import io
import os
from pathlib import Path

import pytest
from PIL import Image
from prometheus_client import REGISTRY

from tests.listing_helpers import create_property, word
from tests.support import multipart
from tests.test_image_enhancement import enhance_path, eventually, photo, shown_image


@pytest.fixture
def settings_overrides():
    # No enhancement service: Pillow in this process. Two attempts, no backoff, a quick poll: a failing run gives up
    # within a second or two of real time, with no clock moved.
    return {"enhancement_max_edge": 256, "job_max_attempts": 2, "job_backoff_seconds": 0, "job_poll_seconds": 0.2}


@pytest.fixture
def cleanup(sheda, io_loop):
    """The test database is shared: this test's queue jobs and live enhancements go with it."""
    made: dict = {"properties": []}
    yield made

    async def clean():
        await sheda.ctx.db["jobs"].delete_many({"kind": "image.enhance"})
        await sheda.ctx.db["jobs"].delete_many({"kind": "saved_search.match", "payload.property_id": {"$in": made["properties"]}})
        await sheda.ctx.db["image_enhancements"].delete_many({"status": {"$in": ["pending", "processing"]}})

    io_loop.run_sync(clean)


async def listing_with_image(sheda, agent, cleanup, **fields) -> tuple[dict, dict, Path]:
    """A listing with one uploaded photo, and where its original is stored."""
    prop = await create_property(sheda, agent, **fields)
    cleanup["properties"].append(prop["id"])
    body, headers = multipart("file", "room.png", photo(), "image/png")
    r = await sheda.api.post(f"/api/v1/properties/{prop['id']}/images", body=body, headers=headers, token=agent.token)
    assert r.status == 201, r
    image = r.json["image"]
    path = sheda.ctx.media.root / image["url"][len(sheda.ctx.media.URL_PREFIX):]
    assert path.is_file()
    return prop, image, path


def large_photo() -> bytes:
    """A 12-megapixel JPEG, as a phone takes it."""
    img = Image.linear_gradient("L").resize((4000, 3000)).convert("RGB")
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=90)
    return out.getvalue()


async def queue_job(sheda, key: str) -> dict | None:
    return await sheda.ctx.db["jobs"].find_one({"_id": key})


async def release(pipe: Path, timeout: float = 5.0) -> None:
    """Whoever is blocked opening the pipe to read gets end-of-file (the run then fails: an empty original), so no
    worker thread stays blocked after a failing test."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        try:
            os.close(os.open(pipe, os.O_WRONLY | os.O_NONBLOCK))
            return
        except OSError as exc:
            if exc.errno != errno.ENXIO:  # ENXIO: no reader yet
                return
        await asyncio.sleep(0.05)


async def test_a_running_enhancement_of_a_large_photo_never_holds_up_other_queued_jobs(sheda, cleanup):
    agent, buyer = await sheda.signup("agent"), await sheda.signup("client")
    area = word()
    prop, image, original = await listing_with_image(sheda, agent, cleanup, location=area)
    original.unlink()
    os.mkfifo(original)  # the enhancer's read of the original blocks until the photo is written into the pipe
    fed = False
    try:
        r = await sheda.api.post(enhance_path(prop, image), token=agent.token)
        assert r.status == 202 and r.json["mode"] == "local" and r.json["status"] == "processing", r
        enhance_key = f"image.enhance:{r.json['id']}"
        await eventually(lambda: _status_is(sheda, enhance_key, "running"), "the enhancement job claimed and running")
        # Meanwhile a buyer saves a search this listing matches, and a match job for the listing is queued
        # (as a listing change whose process died before running it leaves one): the main runner's poll runs it.
        ws = await sheda.ws(buyer.token)
        r = await sheda.api.post("/api/v1/saved-searches", {"name": "Near work", "query": {"location": area}, "alert": "instant"},
                                 token=buyer.token)
        assert r.status == 201, r
        match_key = f"saved_search.match:{prop['id']}:lane"
        await sheda.ctx.job_runner.enqueue("saved_search.match", {"property_id": prop["id"], "rev": 1, "reason": "new"}, key=match_key)
        frame = await ws.wait_type("notification", timeout=15, kind="saved_search.match")
        assert frame["data"]["property_id"] == prop["id"]
        await eventually(lambda: _status_is(sheda, match_key, "done"), "the match job done")
        # ... all while the enhancement is still at work.
        assert (await queue_job(sheda, enhance_key))["status"] == "running"
        assert (await shown_image(sheda, prop, image))["enhancement_status"] == "processing"
        # The photo arrives: the enhancement finishes in its lane, through the same states.
        fed = True
        await asyncio.to_thread(original.write_bytes, large_photo())

        async def completed():
            shown = await shown_image(sheda, prop, image)
            return shown if shown["enhancement_status"] == "completed" else None
        shown = await eventually(completed, "the enhancement completed", timeout=60)
        assert shown["url"] == shown["enhanced_url"] != image["url"]
        with Image.open(io.BytesIO((await sheda.api.get(shown["url"])).body)) as enhanced:
            assert enhanced.size == (256, 192)  # 4000 x 3000 brought to ENHANCEMENT_MAX_EDGE
        assert (await queue_job(sheda, enhance_key))["status"] == "done"
        ws.close()
    finally:
        if not fed:
            await release(original)
        original.unlink(missing_ok=True)


async def _status_is(sheda, key: str, status: str) -> bool:
    job = await queue_job(sheda, key)
    return job is not None and job["status"] == status


def ended(status: str) -> float:
    return REGISTRY.get_sample_value("sheda_image_enhancements_total", {"mode": "local", "status": status}) or 0.0


async def test_a_run_that_raises_unexpectedly_ends_the_image_failed_once_the_queue_gives_up(sheda, cleanup):
    """The stored original broken on disk (a directory where the file was): reading it raises IsADirectoryError, which
    the enhancer does not expect. The queue retries it (the image stays `processing` meanwhile) and gives up after
    JOB_MAX_ATTEMPTS (2 here); then the image shows `failed`, moved once."""
    agent = await sheda.signup("agent")
    prop, image, original = await listing_with_image(sheda, agent, cleanup)
    original.unlink()
    original.mkdir()
    failed_before = ended("failed")
    try:
        ws = await sheda.ws(agent.token)
        await ws.send({"type": "subscribe", "channel": f"property:{prop['id']}"})
        await ws.wait_type("subscribed")
        r = await sheda.api.post(enhance_path(prop, image), token=agent.token)
        assert r.status == 202 and r.json["status"] == "processing", r
        enhance_key = f"image.enhance:{r.json['id']}"
        await eventually(lambda: _status_is(sheda, enhance_key, "failed"), "the queue giving up on the enhancement")
        queued = await queue_job(sheda, enhance_key)
        assert queued["attempts"] == 2 and "IsADirectoryError" in queued["last_error"], queued
        shown = await shown_image(sheda, prop, image)
        assert shown["enhancement_status"] == "failed" and shown["url"] == image["url"]
        stored = await sheda.ctx.enhancement_store.get(r.json["id"])
        assert stored["status"] == "failed" and "IsADirectoryError" in stored["error"] and stored["finished_at"]
        await ws.wait_for(lambda f: f.get("type") == "property.updated"
                          and f["property"]["images"][0]["enhancement_status"] == "failed", timeout=5)
        assert ended("failed") == failed_before + 1  # one move to failed
        # Admins see the lane's failed job in the one queue listing, with its last error.
        admin = await sheda.admin()
        listed, cursor = [], None
        while not listed:  # other tests' failed jobs (some at moved clocks) may come first
            params = {"status": "failed", "limit": 100, **({"cursor": cursor} if cursor else {})}
            r = await sheda.api.get("/api/v1/admin/jobs", params=params, token=admin.token)
            assert r.status == 200, r
            listed = [j for j in r.json["items"] if j["key"] == enhance_key]
            cursor = r.json["next_cursor"]
            assert listed or cursor, "the failed enhancement job is not listed"
        [listed] = listed
        assert listed["kind"] == "image.enhance" and "IsADirectoryError" in listed["last_error"], listed
        ws.close()
    finally:
        original.rmdir()
