"""Image uploads for avatars, listing photos and admin media: one mechanism for all three.

Every upload is decoded in full and re-encoded (`images.reencode`, in a worker thread):
the type comes from decoding the content, never from its name, its first bytes or the
client's Content-Type, and what is stored is only the image, without metadata. Files
are written under DATA_DIR/media/<folder>/ with a random name whose extension is the
re-encoded format, so /media/<folder>/<name> is served with the Content-Type of the
bytes it holds. Only images are taken (no pdf or other documents): every route that
stores a file shows it as an image.
"""
from __future__ import annotations

import asyncio
import re
import uuid
from pathlib import Path

from sheda_rt.errors import TooLarge, ValidationFailed
from sheda_rt.media.images import reencode

_FOLDER = re.compile(r"^[a-z0-9_-]{1,40}$")


class MediaStore:
    URL_PREFIX = "/media/"
    DEFAULT_MAX_PIXELS = 40_000_000

    def __init__(self, root: Path, max_bytes: int, max_pixels: int = DEFAULT_MAX_PIXELS, decoders: int = 2):
        self.root = root
        self.max_bytes = max_bytes
        self.max_pixels = max_pixels
        # Decoding holds the whole bitmap in memory (40 megapixels: ~120 MB as RGB): a few
        # uploads at a time, the rest wait their turn rather than multiply the memory.
        self._decoding = asyncio.Semaphore(decoders)

    async def save_image(self, data: bytes, folder: str) -> str:
        """Decode, re-encode and store an image; returns its URL path (e.g. /media/avatars/ab12.png).
        413 over MAX_UPLOAD_BYTES or MAX_IMAGE_PIXELS, 415 unless the whole file is a jpeg, png or webp image."""
        if not _FOLDER.match(folder):
            raise ValidationFailed.single("type", "must be 1-40 lowercase letters, digits, - or _")
        if len(data) > self.max_bytes:
            raise TooLarge(f"File is {len(data)} bytes; the limit is {self.max_bytes} bytes")
        if not data:
            raise ValidationFailed.single("file", "is empty")
        async with self._decoding:
            image = await asyncio.to_thread(reencode, data, self.max_pixels)
        name = f"{uuid.uuid4().hex}.{image.extension}"
        target = self.root / folder / name
        await asyncio.to_thread(self._write, target, image.data)
        return f"{self.URL_PREFIX}{folder}/{name}"

    @staticmethod
    def _write(target: Path, data: bytes) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".part")
        tmp.write_bytes(data)
        tmp.replace(target)

    async def delete(self, url: str) -> None:
        if not url or not url.startswith(self.URL_PREFIX):
            return
        rel = url[len(self.URL_PREFIX):]
        target = (self.root / rel).resolve()
        if self.root.resolve() in target.parents:
            await asyncio.to_thread(target.unlink, True)
