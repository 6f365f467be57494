"""AI enhancement of listing photos: one job and one state machine, two ways of doing the work.

    pending --> processing --> completed | failed | timeout

`start` (the listing's agent or an admin) records a job (pending; 409 while the image has a
live one; 429 when the listing's agent already has ENHANCEMENT_MAX_LIVE_PER_AGENT live jobs, so one
agent with many listings cannot fill the lane others wait in) and moves it to processing as it hands
the work over:

- **service**: ENHANCEMENT_SERVICE_URL is set. The original file is POSTed to the service with
  the API key, as a durable queue job (`image.enhance.submit`, the enhancer's lane) the request runs
  at once and waits for at most ENHANCEMENT_SUBMIT_WAIT_SECONDS (a slower service: 202 at once, the
  upload goes on and is retried); the service later calls `POST /api/v1/webhooks/image-enhancement`. A webhook is
  believed only when `X-Signature: sha256=<hex>` is the HMAC-SHA256 of `<X-Timestamp>.<raw body>`
  keyed with ENHANCEMENT_WEBHOOK_SECRET (checked over the raw bytes, before anything is parsed,
  in constant time), and X-Timestamp is within 5 minutes of our clock either way: anything else
  is 401 with nothing changed, as is every webhook when no secret is configured. Each
  X-Delivery-Id is acted on once (a replay is 200 and does nothing; the same id arriving while
  another request acts on it is 503, deliver again). The result is downloaded
  only from the service's own origin (another host fails the job without a request), capped
  at ENHANCEMENT_MAX_RESULT_BYTES, and stored like an upload (decoded in full, re-encoded: a
  result that is not wholly a jpeg, png or webp image fails the job).
- **local**: no service configured. A durable queue job (`image.enhance`, sheda_rt/jobs/)
  runs Pillow (local.py) in a worker thread, never on the event loop, and ends the job the same
  way; a process that dies mid-run leaves its lease to lapse and another runs it again. The job
  runs in its own lane (a second JobRunner on the same queue, the context's `media_job_runner`;
  the main runner walks past its kind), since a runner runs one job at a time and a large photo
  holds it for seconds. A run that raises unexpectedly is retried; when the queue gives up, the
  job ends `failed`.

On completion the enhanced file becomes the image's `url` (what listings display) and
`enhanced_url`; the original stays as `original_url`. Every move of a job is one guarded
write (store.py), so webhooks, their redeliveries, other processes and the timeout sweep
racing on one job move it exactly once; each move is copied onto the image and announced as
`property.updated`. The sweep marks jobs still live ENHANCEMENT_TIMEOUT_HOURS after they
started as timeout.
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import re
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import Counter
from pydantic import ValidationError

from sheda_rt import client_input
from sheda_rt.clock import format_ts
from sheda_rt.enhancement.client import ServiceRefused, ServiceUnreachable
from sheda_rt.enhancement.local import enhance
from sheda_rt.enhancement.models import ENDED, LIVE, EnhancementResult
from sheda_rt.errors import (ApiError, Conflict, NotFound, RateLimited, ServiceUnavailable, TooLarge, Unauthorized,
                             UnsupportedMedia, ValidationFailed)
from sheda_rt.listings.service import property_view

if TYPE_CHECKING:
    from sheda_rt.clock import Clock
    from sheda_rt.enhancement.client import EnhancementClient
    from sheda_rt.enhancement.store import EnhancementStore
    from sheda_rt.jobs.runner import JobRunner
    from sheda_rt.listings.service import PropertyService
    from sheda_rt.listings.store import PropertyStore
    from sheda_rt.media.store import MediaStore

log = logging.getLogger("sheda.enhancement")

#: The durable queue's job kind for the in-process enhancer.
LOCAL_KIND = "image.enhance"
#: The durable queue's job kind of an upload to the enhancement service (same lane).
SUBMIT_KIND = "image.enhance.submit"
#: How far X-Timestamp may be from our clock, either way.
WEBHOOK_TOLERANCE_SECONDS = 300
WEBHOOK_PATH = "/api/v1/webhooks/image-enhancement"
#: Webhook delivery ids are kept this long (store.py says why that is enough).
DELIVERY_RETENTION = timedelta(days=7)
#: How long one request may act on a delivery before the same id may run again (its process died meanwhile):
#: beyond the result's download deadline (EnhancementClient.download_deadline) plus its decode.
DELIVERY_LEASE = timedelta(minutes=5)
ENDED_JOBS = Counter("sheda_image_enhancements_total", "Image enhancement jobs ended, by mode and end (completed, failed, timeout)",
                     ["mode", "status"])
#: Retry-After of a request beyond ENHANCEMENT_MAX_LIVE_PER_AGENT: when a job ends is not known (seconds in-process,
#: the service's own pace); a client also sees each end live (property.updated).
LIVE_CAP_RETRY_AFTER = 30
_DELIVERY_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_CONTENT_TYPES = {"jpg": "image/jpeg", "jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp"}


class EnhancementUnavailable(ServiceUnavailable):
    status, code = 503, "enhancement_service_unavailable"


class DeliveryInProgress(ServiceUnavailable):
    status, code = 503, "delivery_in_progress"


def job_view(doc: dict) -> dict:
    return {"id": doc["_id"], "property_id": doc["property_id"], "image_id": doc["image_id"], "status": doc["status"],
            "mode": doc["mode"], "original_url": doc["original_url"], "enhanced_url": doc.get("enhanced_url"),
            "error": doc.get("error"), "created_at": format_ts(doc["created_at"]), "updated_at": format_ts(doc["updated_at"]),
            "finished_at": format_ts(doc.get("finished_at"))}


def signature(secret: bytes, timestamp: str, raw_body: bytes) -> str:
    """The hex HMAC-SHA256 of `<timestamp>.<raw body>`: what X-Signature carries after `sha256=`."""
    return hmac.new(secret, timestamp.encode("ascii") + b"." + raw_body, hashlib.sha256).hexdigest()


class EnhancementService:
    def __init__(self, store: EnhancementStore, *, listings: PropertyService, properties: PropertyStore, media: MediaStore,
                 results: MediaStore,
                 client: EnhancementClient | None, runner: JobRunner, clock: Clock, webhook_secret: str | None,
                 callback_url: str | None, timeout_hours: float, max_edge: int, max_result_bytes: int,
                 max_live_per_agent: int = 10, submit_wait_seconds: float = 5.0):
        self.store = store
        self.listings = listings  # who may enhance (as who may manage the listing), and property.updated
        self.properties = properties  # the listing as stored (which enhanced file an image shows)
        self.media = media  # where the originals are read from
        self.results = results  # where enhanced files are stored: the same folder, its own byte cap
        self.client = client  # None: the in-process enhancer
        self.runner = runner  # the in-process enhancer's own lane on the durable queue (registers only its kind)
        self.clock = clock
        self.secret = webhook_secret.encode() if webhook_secret else None
        self.callback_url = callback_url
        self.timeout = timedelta(hours=timeout_hours)
        self.max_edge = max_edge
        self.max_result_bytes = max_result_bytes
        #: ENHANCEMENT_MAX_LIVE_PER_AGENT: one agent with many listings must not fill the enhancement lane (the
        #: in-process runner, or the service) while other agents' photos wait.
        self.max_live_per_agent = max_live_per_agent
        self.submit_wait = submit_wait_seconds  # ENHANCEMENT_SUBMIT_WAIT_SECONDS: how long POST .../enhance waits for the upload
        self._awaited: set[int] = set()  # jobs whose request still waits for the service's answer (on this process)
        self._uploads: set[asyncio.Future] = set()  # uploads running here past their request (kept referenced)
        runner.register(LOCAL_KIND, self.run_local)
        runner.register(SUBMIT_KIND, self.run_submit)

    @property
    def mode(self) -> str:
        return "service" if self.client is not None else "local"

    # ---- asking for an enhancement -------------------------------------------
    async def start(self, principal, property_id: int, image_id: int) -> dict:
        doc = await self.listings.managed(principal, property_id)  # 404 / 403 as for any change of the listing
        # as PATCH and a new image: the owner may work on an unlisted listing while it is available; 409
        # property_delisted when it is sold or rented, or hidden with its agent's deactivated account
        self.listings.editable(doc)
        image = next((i for i in doc.get("images", []) if i["id"] == image_id), None)
        if image is None:
            raise NotFound("No such image on this property", "image_not_found")
        original = image.get("original_url") or image["url"]
        now = self.clock.now()
        job = await self.store.insert({"property_id": property_id, "image_id": image_id, "requested_by": principal.user_id,
                                       "agent_id": doc["agent_id"], "status": "pending", "mode": self.mode,
                                       "original_url": original, "open_key": f"{property_id}:{image_id}",
                                       "created_at": now, "updated_at": now})
        if job is None:
            raise Conflict("This image is being enhanced already", "enhancement_in_progress")
        cap = self.max_live_per_agent
        if await self.store.live_of_agent(doc["agent_id"], cap + 1) > cap:
            # Counted with ours stored, so a burst of requests never lets more than the cap through (a racing pair
            # may both step back: ask again). Ours is withdrawn before anything was done for it.
            await self.store.discard_unstarted(job["_id"])
            raise RateLimited(f"This agent's listings already have {cap} photos being enhanced (at most {cap} at once): "
                              "ask again once one has finished (enhancement_status, property.updated)", LIVE_CAP_RETRY_AFTER)
        if await self.store.claim_image(property_id, image_id, job["_id"], original, now) is None:
            await self.store.transition(job["_id"], ["pending"], "failed", now, {"error": "the image was deleted", "finished_at": now})
            raise NotFound("No such image on this property", "image_not_found")
        moved = await self._move(job, ["pending"], "processing")
        if moved is None:  # ended in between (the sweep, with a timeout shorter than this request): nothing to hand over
            return job_view(await self.store.get(job["_id"]) or job)
        job = moved
        if self.client is None:
            await self.runner.enqueue(LOCAL_KIND, {"job_id": job["_id"]}, key=f"{LOCAL_KIND}:{job['_id']}")
            return job_view(job)
        # The upload is a durable queue job, run here at once (created claimed by this process: a process that dies
        # mid-upload lets its lease lapse and the lane runs it again). The request waits for the service's answer
        # at most ENHANCEMENT_SUBMIT_WAIT_SECONDS: a service that refuses or cannot be reached within it is the
        # documented 503 (the job failed); a slower one is answered 202 `processing` and the upload goes on, retried
        # by the queue if it then fails, instead of holding a phone's request up to the upload's 30 s read timeout.
        self._awaited.add(job["_id"])
        run = asyncio.ensure_future(self.runner.run_now(SUBMIT_KIND, f"{SUBMIT_KIND}:{job['_id']}", {"job_id": job["_id"]}))
        self._uploads.add(run)
        run.add_done_callback(self._uploads.discard)
        try:
            done, _ = await asyncio.wait({run}, timeout=self.submit_wait)
        finally:
            self._awaited.discard(job["_id"])
        if run in done and run.result()[1] == "not_sent":
            raise EnhancementUnavailable("The enhancement service did not take the image; try again later")
        return job_view(job)

    async def run_submit(self, queued: dict) -> str:
        """The durable upload of one job's original to the service (SUBMIT_KIND). "sent", "not_sent" (the job
        failed: the service refused it, the original is gone, or it could not be reached while the request still
        waited for the answer, or on the queue's last attempt), "not_live"; an unreachable service otherwise
        raises, and the queue tries again with backoff."""
        job = await self.store.get(int(queued["payload"]["job_id"]))
        if job is None or job["status"] != "processing":
            return "not_live"  # ended meanwhile (a webhook, the timeout sweep)
        if job.get("submitted_at") is not None:
            return "sent"  # a rerun after the service took it (the process died before the queue recorded it)
        original = job["original_url"]
        try:
            data = await asyncio.to_thread(self._read_media, original)
            ref = await self.client.submit(job_id=job["_id"], image=data, filename=Path(original).name,
                                           content_type=_CONTENT_TYPES.get(Path(original).suffix.lstrip("."), "application/octet-stream"),
                                           callback_url=self.callback_url)
        except (ServiceUnreachable, ServiceRefused, OSError) as exc:
            log.warning(json.dumps({"event": "enhancement_not_sent", "job": job["_id"], "error": str(exc)[:200]}))
            if isinstance(exc, ServiceUnreachable) and job["_id"] not in self._awaited and not self.runner.gives_up(queued, exc):
                raise
            await self._end(job, "failed", f"not sent to the enhancement service: {exc}"[:300])
            return "not_sent"
        await self.store.set_service_ref(job["_id"], ref, self.clock.now())
        return "sent"

    # ---- undoing one ------------------------------------------------------------
    async def undo(self, principal, property_id: int, image_id: int) -> dict:
        """The image shows its upload again (`url` = `original_url`, no `enhanced_url`, `enhancement_status` null) and
        the enhanced file is deleted; the listing as GET shows it. Who may: as for `start`. An image that shows no
        enhancement (never enhanced, undone already, or its last one failed before any completed) is answered
        unchanged; 409 `enhancement_in_progress` while a job is live (undo once it ended)."""
        for _attempt in range(3):
            doc = await self.listings.managed(principal, property_id)
            self.listings.editable(doc)
            image = next((i for i in doc.get("images", []) if i["id"] == image_id), None)
            if image is None:
                raise NotFound("No such image on this property", "image_not_found")
            if image.get("enhancement_status") in LIVE:
                raise Conflict("This image is being enhanced; undo it once that ended", "enhancement_in_progress")
            enhanced, original = image.get("enhanced_url"), image.get("original_url") or image["url"]
            if not enhanced:
                return property_view(doc, self.clock.now())
            after = await self.store.revert_image(property_id, image_id, enhanced, original, self.clock.now())
            if after is not None:
                if enhanced != original:
                    await self.results.delete(enhanced)
                await self.listings.announce(after, ["images"])
                return property_view(after, self.clock.now())
            # the image changed under the write (a new enhancement, a racing undo, a deletion): look again
        raise Conflict("The image kept changing; send the request again", "concurrent_update")

    def _read_media(self, url: str) -> bytes:
        """The stored file behind a /media/... URL (never outside the media folder)."""
        if not url.startswith(self.media.URL_PREFIX):
            raise FileNotFoundError(url)
        target = (self.media.root / url[len(self.media.URL_PREFIX):]).resolve()
        if self.media.root.resolve() not in target.parents:
            raise FileNotFoundError(url)
        return target.read_bytes()

    # ---- the state machine ----------------------------------------------------
    async def _move(self, job: dict, from_states: list[str], to_state: str, extra: dict | None = None) -> dict | None:
        """One guarded move of the job, then its copy on the image and `property.updated`.
        None when the job was not in `from_states` (someone else moved it first)."""
        moved = await self.store.transition(job["_id"], from_states, to_state, self.clock.now(), extra)
        if moved is None:
            return None
        if to_state in ENDED:
            ENDED_JOBS.labels(mode=job["mode"], status=to_state).inc()
        await self._copy(moved)
        return moved

    async def _copy(self, job: dict) -> None:
        """Show the job's state on its image (and, completed, its file as the image's url), then
        announce the listing. An ended job's `unmirrored` mark goes once this is done, so a copy a
        dying process never wrote is written by the sweep (`repair`)."""
        fields: dict = {"enhancement_status": job["status"]}
        if job["status"] == "completed":
            fields.update(url=job["enhanced_url"], enhanced_url=job["enhanced_url"])
        # The image may show the job one state behind (the copy of the previous move not written yet): any live state.
        after = await self.store.mirror(job["property_id"], job["image_id"], job["_id"], LIVE, fields, self.clock.now())
        if after is not None:
            await self.listings.announce(after, ["images"])
        if job["status"] in ENDED:
            await self.store.mirrored(job["_id"])

    async def _end(self, job: dict, to_state: str, error: str, from_states: list[str] | None = None) -> dict | None:
        now = self.clock.now()
        return await self._move(job, from_states or ["processing"], to_state, {"error": error, "finished_at": now})

    async def _complete(self, job: dict, data: bytes) -> str:
        """Store the enhanced bytes next to the original and make them the displayed image."""
        try:
            url = await self.results.save_image(data, "properties")
        except (UnsupportedMedia, TooLarge, ValidationFailed) as exc:
            await self._end(job, "failed", f"the result is not a usable image: {exc.detail}"[:300])
            return "not_an_image"
        listing = await self.properties.get(job["property_id"])
        image = next((i for i in (listing or {}).get("images", []) if i["id"] == job["image_id"]), {})
        previous = image.get("enhanced_url") if image.get("enhancement_job_id") == job["_id"] else None
        now = self.clock.now()
        done = await self._move(job, ["processing"], "completed", {"enhanced_url": url, "finished_at": now})
        if done is None:  # a racing webhook, another process or the sweep ended it first: ours is not needed
            await self.results.delete(url)
            return "already_ended"
        current = await self.properties.get(job["property_id"])
        shown = next((i for i in (current or {}).get("images", []) if i["id"] == job["image_id"]), None)
        if shown is None or shown.get("enhanced_url") != url:  # the image was deleted meanwhile
            await self.results.delete(url)
        elif previous and previous not in (url, job["original_url"]):
            await self.results.delete(previous)  # an earlier enhancement of this image, no longer shown
        return "completed"

    # ---- the in-process enhancer (durable queue job) ---------------------------
    async def run_local(self, queued: dict) -> str:
        job = await self.store.get(int(queued["payload"]["job_id"]))
        if job is None or job["status"] != "processing":
            return "not_live"  # ended meanwhile (timeout), or a rerun after a finished run
        try:
            return await self._enhance_here(job)
        except Exception as exc:
            # An unforeseen fault (the original unreadable on disk, the disk full, ...) is retried by the queue; once the
            # queue gives up, the image ends `failed` as a webhook's failure ends it (one guarded move), not `processing`
            # until the timeout sweep.
            if self.runner.gives_up(queued, exc):
                await self._end(job, "failed", f"the enhancement failed: {type(exc).__name__}: {exc}"[:300])
            raise

    async def _enhance_here(self, job: dict) -> str:
        try:
            original = await asyncio.to_thread(self._read_media, job["original_url"])
            data = await asyncio.to_thread(enhance, original, self.media.max_pixels, self.max_edge)
        except FileNotFoundError:
            await self._end(job, "failed", "the original file is missing")
            return "failed"
        except ApiError as exc:  # not an image Pillow can read back, or too large
            await self._end(job, "failed", exc.detail[:300])
            return "failed"
        return await self._complete(job, data)

    # ---- the service's webhook --------------------------------------------------
    def verify(self, raw_body: bytes, headers) -> str:
        """The delivery id of a webhook whose signature and timestamp hold; else 401."""
        refused = Unauthorized("Missing or invalid webhook signature", "bad_signature")
        if self.secret is None:
            raise refused
        given = headers.get("X-Signature") or ""
        stamp = headers.get("X-Timestamp") or ""
        delivery = headers.get("X-Delivery-Id") or ""
        if not (given.startswith("sha256=") and len(given) <= 128 and given.isascii()):
            raise refused
        if not (stamp.isascii() and stamp.isdigit() and len(stamp) <= 12) or not _DELIVERY_ID.match(delivery):
            raise refused
        if not hmac.compare_digest(signature(self.secret, stamp, raw_body), given[len("sha256="):].strip().lower()):
            raise refused
        if abs(self.clock.now().timestamp() - int(stamp)) > WEBHOOK_TOLERANCE_SECONDS:
            raise Unauthorized("The webhook's X-Timestamp is more than 5 minutes from now", "stale_webhook")
        return delivery

    async def webhook(self, raw_body: bytes, headers) -> dict:
        delivery = self.verify(raw_body, headers)
        body = client_input.parse_json(raw_body, "webhook")
        if not isinstance(body, dict):
            raise ValidationFailed.single("body", "must be a JSON object")
        try:
            result = EnhancementResult.model_validate(body)
        except ValidationError as exc:
            raise ValidationFailed.from_pydantic(exc)
        prior = await self.store.claim_delivery(delivery, result.job_id, self.clock.now(), DELIVERY_LEASE)
        if prior is not None:
            if prior.get("processed"):
                return {"received": True, "duplicate": True}
            # Another request (here or on another process) is acting on this id now: running it again at once would
            # fetch and store the result twice. Not 200: should that attempt fail, this delivery must come again.
            raise DeliveryInProgress("This delivery is being handled; deliver it again later", headers={"Retry-After": "30"},
                                     extra={"retry_after": 30})
        try:
            outcome = await self._apply(result)
        except Exception:  # a 503 (result unreachable) or a fault: the service's redelivery runs again at once
            await self.store.release_delivery(delivery, self.clock.now())
            raise
        await self.store.delivery_done(delivery, outcome, self.clock.now())
        log.info(json.dumps({"event": "enhancement_webhook", "job": result.job_id, "delivery": delivery, "outcome": outcome}))
        return {"received": True}

    async def _apply(self, result: EnhancementResult) -> str:
        job = await self.store.get(result.job_id)
        if job is None or job["mode"] != "service":
            return "unknown_job"
        if job["status"] != "processing":
            return f"already_{job['status']}"
        if result.status == "failed":
            await self._end(job, "failed", f"the enhancement service failed: {result.error or 'no reason given'}"[:300])
            return "failed"
        if self.client is None or not self.client.serves(result.result_url):
            await self._end(job, "failed", "the result is not on the enhancement service's host")
            return "refused_host"
        try:
            data = await self.client.download(result.result_url, self.max_result_bytes)
        except ServiceRefused as exc:
            await self._end(job, "failed", str(exc)[:300])
            return "refused_result"
        except ServiceUnreachable as exc:
            log.warning(json.dumps({"event": "enhancement_result_unreachable", "job": job["_id"], "error": str(exc)[:200]}))
            raise EnhancementUnavailable("The result could not be fetched; deliver again later")
        return await self._complete(job, data)

    # ---- the timeout sweep ------------------------------------------------------
    async def sweep(self, batch: int = 200) -> int:
        """Jobs still live ENHANCEMENT_TIMEOUT_HOURS after they started end as timeout; how many.
        Ended jobs whose image copy was never written (their process died in between) get it;
        webhook delivery ids older than DELIVERY_RETENTION go."""
        await self.store.prune_deliveries(self.clock.now() - DELIVERY_RETENTION)
        # A minute's grace: a live process writes its copy within milliseconds of the move.
        for job in await self.store.unmirrored(self.clock.now() - timedelta(minutes=1), batch):
            await self._copy(job)
        cutoff = self.clock.now() - self.timeout
        hours = self.timeout.total_seconds() / 3600
        ended = 0
        for status in LIVE:
            while True:
                jobs = await self.store.live_older_than(status, cutoff, batch)
                for job in jobs:
                    if await self._end(job, "timeout", f"no result within {hours:g} hours", from_states=[status]):
                        ended += 1
                if len(jobs) < batch:
                    break
        return ended
