"""Chat attachments over REST: the upload, and the downloads (file and thumbnail) by signed link or
bearer token. Thin edges over AttachmentService (sheda_rt/chat/attachments.py)."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from handlers.base import APIHandler
from handlers.routing import endpoint, route
from sheda_rt.accounts.auth import USER
from sheda_rt.chat.frames import AttachmentView

#: Room for the multipart framing around one file of CHAT_ATTACHMENT_MAX_BYTES.
MULTIPART_OVERHEAD = 64 * 1024


class AttachmentUploadHandler(APIHandler):
    def _limit(self) -> int:
        # The attachments' own cap (default 10 MB), not MAX_UPLOAD_BYTES: a larger body is refused (413)
        # before it is read, and nothing is stored.
        return self.ctx.settings.chat_attachment_max_bytes + MULTIPART_OVERHEAD

    @endpoint("Upload a chat attachment (image or PDF) to send in a message", auth=USER, upload="file", response=AttachmentView,
              status=201, errors=(409, 413, 415), tags=("chat",), upload_types="a jpeg, png or webp image, or a PDF (judged by content)")
    async def post(self):
        """The file goes in the multipart field `file`. Its kind is judged by its content, never its name or
        Content-Type: jpeg, png and webp images are decoded in full and stored re-encoded (EXIF, GPS location,
        comments dropped) with a thumbnail; a PDF must start `%PDF-` and end with its trailer. Anything else is
        415, more than CHAT_ATTACHMENT_MAX_BYTES (default 10 MB) 413; 409 too_many_pending_attachments while the
        user has CHAT_ATTACHMENT_MAX_PENDING (50) uploads not sent yet. 201 with the attachment: send its `id` in a
        message's `attachment_ids` (once; only the uploader may). `url` and `thumbnail_url` are signed links
        for the uploader to show it meanwhile. Never sent within CHAT_ATTACHMENT_UNSENT_HOURS (a day), it is deleted."""
        return await self.ctx.chat_attachments.upload(self.principal.user_id, self.uploaded_file("file"))


class LinkQuery(BaseModel):
    # a key other than exp and sig is a 422 naming it, as on the other chat routes: a mistyped signature
    # key must not pass silently as a request for the bearer-token download
    model_config = ConfigDict(extra="forbid")

    exp: int | None = Field(None, ge=0, le=10**11, description="The signed link's expiry (seconds since the epoch)")
    sig: str | None = Field(None, min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_-]+$",
                            description="The signed link's signature (base64url)")


class AttachmentFileHandler(APIHandler):
    variant = "file"

    @endpoint("Download a chat attachment: by its signed link, or with a bearer token of a participant", query=LinkQuery,
              errors=(401, 403, 404, 422), tags=("chat",), content_type="application/octet-stream")
    async def get(self, attachment_id: int, query: LinkQuery):
        """With `exp` and `sig` (the `url` a message or the upload gave): no token needed, until the link
        expires (403 `link_expired`; an altered link 403 `invalid_link`). Without them: `Authorization: Bearer`
        of the uploader, or of one of the two users of the conversation it was sent in; anyone else 404.
        The body is the file, with its own Content-Type (image/jpeg, image/png, image/webp, application/pdf)."""
        await self._serve(attachment_id, query)

    async def _serve(self, attachment_id: int, query: LinkQuery) -> None:
        user_id = None
        if query.exp is None and query.sig is None:
            user_id = (await self.ctx.auth.authenticate(self.request.headers.get("Authorization"), USER)).user_id
        data, mime = await self.ctx.chat_attachments.open(attachment_id, self.variant, user_id=user_id, exp=query.exp,
                                                          sig=query.sig)
        self.set_header("Content-Type", mime)
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Content-Disposition", f'inline; filename="attachment-{attachment_id}'
                                               f'{"-thumbnail" if self.variant != "file" else ""}.{mime.rsplit("/", 1)[-1]}"')
        if user_id is None:  # a signed link: the same bytes until it expires (files never change)
            self.set_header("Cache-Control", "private, max-age=3600")
        else:
            self.set_header("Cache-Control", "private, no-cache")
        self.finish(data)


class AttachmentThumbnailHandler(AttachmentFileHandler):
    variant = "thumbnail"

    @endpoint("Download an image attachment's thumbnail (at most 320 px): signed link or bearer token, as the file",
              query=LinkQuery, errors=(401, 403, 404, 422), tags=("chat",), content_type="application/octet-stream")
    async def get(self, attachment_id: int, query: LinkQuery):
        """As GET /api/v1/chat/attachments/{id}, with the thumbnail's own signed link (`thumbnail_url`). A PDF
        has none (404). JPEG, or PNG when the image has transparency."""
        await self._serve(attachment_id, query)


default_handlers = [
    route("/api/v1/chat/attachments", AttachmentUploadHandler),
    route("/api/v1/chat/attachments/{attachment_id:int}", AttachmentFileHandler),
    route("/api/v1/chat/attachments/{attachment_id:int}/thumbnail", AttachmentThumbnailHandler),
]
