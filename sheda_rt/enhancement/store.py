"""Where enhancement state lives: the jobs, the webhook deliveries seen, and the image's copy.

- `image_enhancements`: one document per enhancement. Its `status` is the state machine's
  one truth; every move is `guarded_transition` (the expected states in the write's filter), so
  a webhook, its redelivery, a second process and the timeout sweep racing on one job move it
  once. While a job is pending or processing it holds `open_key` ("<property>:<image>") under a
  unique partial index: a second enhance of the same image is 409 whoever asks, on any process.
  (status, created_at) serves the sweep's "live jobs started before X" (an index prefix plus one
  range: the embedded planner's rule).
- `enhancement_deliveries`: each webhook's X-Delivery-Id as `_id` (the unique index every
  collection has), so a replayed delivery collides on insert. Kept DELIVERY_RETENTION (7 days),
  far beyond the 5-minute window in which a captured delivery could be replayed at all (an
  older X-Timestamp is refused before its id is looked at); the sweep deletes older ones. A
  delivery being acted on holds a lease (`lease_until`): the same id arriving meanwhile, on
  any process, is not run a second time at once (503, deliver again); an attempt that fails
  releases it, and one whose process died lets it lapse.
- The listing's image carries a copy (`enhancement_status`, `enhancement_job_id`,
  `original_url`, `enhanced_url`, and `url` once completed) for the listing's readers. The copy
  is written after the job's move, by whoever made that move, with the job id and the states it
  may come from in the filter: a late write of an older job, or of an earlier state of this
  one, matches nothing. The move that ends a job marks it `unmirrored` in the same write and the
  mark goes once the copy is written, so a process dying between the two leaves a mark the
  sweep finds (a partial index holds only marked jobs) and the copy is written then.
"""
from __future__ import annotations

from pymongo import ASCENDING, IndexModel
from pymongo.errors import DuplicateKeyError

from sheda_rt.database.transitions import guarded_transition
from sheda_rt.database.writes import update_then_get
from sheda_rt.enhancement.models import LIVE


class EnhancementStore:
    INDEXES = [
        IndexModel([("open_key", ASCENDING)], unique=True, name="one_live_enhancement_per_image",
                   partialFilterExpression={"open_key": {"$exists": True}}),
        IndexModel([("status", ASCENDING), ("created_at", ASCENDING), ("_id", ASCENDING)], name="status_age"),
        IndexModel([("unmirrored", ASCENDING), ("finished_at", ASCENDING)], name="unmirrored",
                   partialFilterExpression={"unmirrored": {"$exists": True}}),
        # The live jobs on one agent's listings (ENHANCEMENT_MAX_LIVE_PER_AGENT): only live jobs hold open_key.
        IndexModel([("agent_id", ASCENDING)], name="live_per_agent", partialFilterExpression={"open_key": {"$exists": True}}),
    ]

    def __init__(self, db, ids):
        self.col = db["image_enhancements"]
        self.deliveries = db["enhancement_deliveries"]
        self.properties = db["properties"]  # only the enhancement fields of one image (see the module's docstring)
        self.ids = ids

    async def ensure_indexes(self):
        await self.col.create_indexes(self.INDEXES)
        await self.deliveries.create_indexes([IndexModel([("received_at", ASCENDING)], name="received_at")])

    # ---- jobs --------------------------------------------------------------
    async def insert(self, doc: dict) -> dict | None:
        """The new job, or None when the image already has a live one (open_key taken)."""
        doc = dict(doc, _id=await self.ids.next("image_enhancements"))
        try:
            await self.col.insert_one(doc)
        except DuplicateKeyError:
            return None
        return doc

    async def get(self, job_id: int) -> dict | None:
        return await self.col.find_one({"_id": job_id})

    async def live_of_agent(self, agent_id: int, limit: int) -> int:
        """How many live jobs (up to `limit`) the listings of `agent_id` have. Jobs stored before `agent_id` was
        recorded are not counted (they end by their result or the timeout sweep)."""
        return len(await self.col.find({"agent_id": agent_id, "open_key": {"$exists": True}}, projection={"_id": 1},
                                        limit=limit).to_list())

    async def discard_unstarted(self, job_id: int) -> None:
        """Delete a job refused before anything was done for it (still pending, its image never claimed)."""
        await self.col.delete_one({"_id": job_id, "status": "pending"})

    async def transition(self, job_id: int, from_states: list[str], to_state: str, now, extra: dict | None = None) -> dict | None:
        """from_states -> to_state in one conditional write (None when it was not in them). An
        ended job (completed, failed, timeout) lets go of its image (open_key is dropped) and is
        marked `unmirrored` until its image shows the end (`mirrored`)."""
        ends = to_state not in ("pending", "processing")
        if ends:
            extra = {**(extra or {}), "unmirrored": True, "finished_at": (extra or {}).get("finished_at", now)}
        return await guarded_transition(self.col, job_id, from_states, to_state, now, extra=extra,
                                        unset="open_key" if ends else None)

    async def mirrored(self, job_id: int) -> None:
        await self.col.update_one({"_id": job_id}, {"$unset": {"unmirrored": ""}})

    async def unmirrored(self, before, limit: int) -> list[dict]:
        """Ended jobs whose image copy was not written (finished before `before`)."""
        return await self.col.find({"unmirrored": True, "finished_at": {"$lte": before}}, limit=limit).to_list()

    async def set_service_ref(self, job_id: int, ref: str | None, now) -> None:
        """The service took the job (`submitted_at`), with its own id when it told one."""
        await self.col.update_one({"_id": job_id}, {"$set": {"service_ref": ref, "submitted_at": now}})

    async def live_older_than(self, status: str, cutoff, limit: int) -> list[dict]:
        return await self.col.find({"status": status, "created_at": {"$lte": cutoff}},
                                   sort=[("created_at", ASCENDING), ("_id", ASCENDING)], limit=limit).to_list()

    # ---- webhook deliveries ------------------------------------------------
    async def claim_delivery(self, delivery_id: str, job_id: int, now, lease) -> dict | None:
        """None when the caller is to act on this delivery: it is new, or an earlier attempt neither
        finished it nor holds it (released after a 503, or its process died and its lease lapsed).
        Else the record of the earlier attempt: processed, or being acted on now by another request
        (on any process), which must not run it a second time at once."""
        until = now + lease
        try:
            await self.deliveries.insert_one({"_id": delivery_id, "job_id": job_id, "received_at": now, "processed": False,
                                              "lease_until": until})
            return None
        except DuplicateKeyError:
            pass
        taken = await self.deliveries.update_one({"_id": delivery_id, "processed": False, "lease_until": {"$lte": now}},
                                                 {"$set": {"lease_until": until}})
        if taken.matched_count == 1:
            return None
        return await self.deliveries.find_one({"_id": delivery_id}) or {"_id": delivery_id, "processed": True}

    async def release_delivery(self, delivery_id: str, now) -> None:
        """An attempt that failed before finishing lets go, so the service's next delivery runs at once."""
        await self.deliveries.update_one({"_id": delivery_id, "processed": False}, {"$set": {"lease_until": now}})

    async def prune_deliveries(self, before) -> int:
        return (await self.deliveries.delete_many({"received_at": {"$lt": before}})).deleted_count

    async def delivery_done(self, delivery_id: str, outcome: str, now) -> None:
        await self.deliveries.update_one({"_id": delivery_id}, {"$set": {"processed": True, "outcome": outcome, "done_at": now}})

    # ---- the image's copy --------------------------------------------------
    async def claim_image(self, property_id: int, image_id: int, job_id: int, original_url: str, now) -> dict | None:
        """The image now shows this job (pending). None when the listing or image is gone."""
        return await update_then_get(
            self.properties, {"_id": property_id, "images.id": image_id},
            {"$set": {"images.$.enhancement_job_id": job_id, "images.$.enhancement_status": "pending",
                      "images.$.original_url": original_url, "updated_at": now}})

    async def revert_image(self, property_id: int, image_id: int, enhanced_url: str, original_url: str, now) -> dict | None:
        """Undo: the image shows its upload again and no enhancement, only while it still shows `enhanced_url` with
        no live job (a new enhancement claimed it, or the image went: nothing matches). The listing after, or None."""
        match = {"id": image_id, "enhanced_url": enhanced_url, "enhancement_status": {"$nin": list(LIVE)}}
        return await update_then_get(
            self.properties, {"_id": property_id, "images": {"$elemMatch": match}},
            {"$set": {"images.$.url": original_url, "images.$.original_url": original_url, "images.$.enhanced_url": None,
                      "images.$.enhancement_status": None, "images.$.enhancement_job_id": None, "updated_at": now}})

    async def mirror(self, property_id: int, image_id: int, job_id: int, from_states: list[str], fields: dict, now) -> dict | None:
        """Copy a job's move onto its image: only while the image still shows this job in one
        of `from_states`. The listing after the write, or None (image gone, or superseded)."""
        match = {"id": image_id, "enhancement_job_id": job_id, "enhancement_status": {"$in": from_states}}
        return await update_then_get(
            self.properties, {"_id": property_id, "images": {"$elemMatch": match}},
            {"$set": {**{f"images.$.{k}": v for k, v in fields.items()}, "updated_at": now}})
