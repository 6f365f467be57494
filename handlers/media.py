"""Media: the seed's admin upload endpoint (a thin edge over MediaService, sheda_rt/media/service.py), and serving
stored files under /media/."""
from __future__ import annotations

import re

import tornado.web

from handlers.base import UPLOAD_BODY, APIHandler, StaticFiles
from handlers.routing import endpoint, route
from sheda_rt.accounts.auth import ADMIN
from sheda_rt.media.models import FileUploaded


class FileUploadHandler(APIHandler):
    @endpoint("Upload a media file (admins)", auth=ADMIN, upload="file", response=FileUploaded, status=201, errors=(413, 415),
              tags=("media",))
    async def post(self, type: str):
        """Path kept from the seed (outside /api/v1). `type` names the folder (1-40 of a-z 0-9 - _);
        the image goes in the multipart field `file`: decoded in full and stored re-encoded without
        metadata, like every upload (415 unless it is wholly a jpeg, png or webp image; only images are
        taken, no documents; 413 above MAX_UPLOAD_BYTES or MAX_IMAGE_PIXELS). 201 `{file_url}`;
        401 without a token, 403 for anyone but an active admin with the admin scope."""
        return await self.ctx.media_uploads.upload(self.uploaded_file("file"), type)


class MediaFileHandler(StaticFiles):
    """Files under DATA_DIR/media. Names are random, so long caching is safe; errors are JSON."""

    #: Only what the media store writes: `<folder>/<random hex>.<ext>`.
    names = re.compile(r"[a-z0-9_-]{1,40}/[A-Za-z0-9_-]{1,64}\.[a-z0-9]{1,5}")

    def initialize(self, **_):
        super().initialize(path=str(self.application.ctx.settings.media_dir))

    def set_extra_headers(self, path):
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Cache-Control", "public, max-age=31536000, immutable")


default_handlers = [
    route("/api/media/file-upload/{type}", FileUploadHandler, max_body=UPLOAD_BODY),
    tornado.web.URLSpec(r"/media/(.*)", MediaFileHandler),
]
