"""/api/v1/properties/{id}/images/{image_id}/enhance, /api/v1/webhooks/image-enhancement:
thin edges over EnhancementService."""
from __future__ import annotations

from handlers.base import APIHandler
from handlers.routing import endpoint, route
from sheda_rt.accounts.auth import USER
from sheda_rt.enhancement.models import EnhancementJobOut, EnhancementWebhookAck
from sheda_rt.listings.models import PropertyOut
from sheda_rt.pagination import OpenQuery  # the webhook's URL is ENHANCEMENT_CALLBACK_URL, the operator's to choose

TAGS = ("properties",)


class ImageEnhanceHandler(APIHandler):
    @endpoint("Enhance a listing image (its agent or an admin)", auth=USER, response=EnhancementJobOut, status=202,
              errors=(401, 403, 404, 409, 429, 503), tags=TAGS)
    async def post(self, property_id: int, image_id: int):
        """Starts an enhancement of the image and answers 202 with the job (`processing`). With an enhancement
        service configured the original goes to it and the result arrives over its signed webhook; without one
        the server enhances it itself (auto-contrast, mild sharpening, the longest side brought to
        ENHANCEMENT_MAX_EDGE). The image shows the job as `enhancement_status` (pending, processing, completed,
        failed, timeout); once completed, its `url` is the enhanced file (`enhanced_url`) and `original_url` keeps
        the upload. Each change comes live as `property.updated` on `property:<id>`. 409 `enhancement_in_progress`
        while the image has a live job, `property_delisted` for an unlisted sold or rented listing or one hidden with its agent's deactivated
        account (an unlisted available one is enhanced, as it takes new images); 429 `rate_limited` with Retry-After
        when the listing's agent already has ENHANCEMENT_MAX_LIVE_PER_AGENT images being enhanced (nothing is started); 503
        `enhancement_service_unavailable` when the service refused the image or could not be reached within
        ENHANCEMENT_SUBMIT_WAIT_SECONDS (the job is failed: try again); a slower service is answered 202 at once and
        the upload goes on (retried by the job queue)."""
        return await self.ctx.enhancement.start(self.principal, property_id, image_id)

    @endpoint("Undo a listing image's enhancement: show the upload again (its agent or an admin)", auth=USER,
              response=PropertyOut, errors=(401, 403, 404, 409), tags=TAGS)
    async def delete(self, property_id: int, image_id: int):
        """The image shows the photo as uploaded again: its `url` is `original_url`, `enhanced_url` and
        `enhancement_status` are null (as for an image never enhanced) and the enhanced file is deleted; answers the
        listing, and watchers of `property:<id>` get `property.updated`. The image keeps its id, place and primary
        flag, and may be enhanced again later. An image showing no enhancement is answered unchanged. 409
        `enhancement_in_progress` while a job is live; 404 / 403 / 409 `property_delisted` as for enhancing it."""
        return await self.ctx.enhancement.undo(self.principal, property_id, image_id)


class EnhancementWebhookHandler(APIHandler):
    @endpoint("The enhancement service's results", response=EnhancementWebhookAck, query=OpenQuery,
              errors=(400, 401, 413, 422, 503), tags=TAGS)
    async def post(self):
        """For the enhancement service only. Headers: `X-Signature: sha256=<hex HMAC-SHA256 of "<X-Timestamp>.<raw
        body>" keyed with ENHANCEMENT_WEBHOOK_SECRET>`, `X-Timestamp` (unix seconds, within 5 minutes of ours) and
        `X-Delivery-Id`. A bad, missing or stale signature is 401 and changes nothing (every webhook is 401 when no
        secret is configured). Body: `{"job_id", "status": "completed", "result_url"}` or `{"job_id", "status":
        "failed", "error"}`. A delivery id seen before is 200 with `duplicate: true` and no effect. The result is
        fetched only from the service's own host (another host fails the job) and must be a jpeg, png or webp
        image within ENHANCEMENT_MAX_RESULT_BYTES (else the job fails). 503 when it could not be fetched, or
        `delivery_in_progress` while another request is handling the same X-Delivery-Id: deliver again. 413 for a
        body over MAX_JSON_BYTES."""
        return await self.ctx.enhancement.webhook(self.body_bytes, self.request.headers)


default_handlers = [
    route("/api/v1/properties/{property_id:int}/images/{image_id:int}/enhance", ImageEnhanceHandler),
    route("/api/v1/webhooks/image-enhancement", EnhancementWebhookHandler),
]
