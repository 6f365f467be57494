"""Image uploads for avatars, listing photos and admin media.

The type is read from the file's first bytes (jpeg, png, webp), never from its
name or the client's Content-Type. Files are written under DATA_DIR/media/<folder>/
with a random name and served at /media/<folder>/<name>.
"""
from __future__ import annotations

import asyncio
import re
import uuid
from pathlib import Path

from sheda_rt.errors import TooLarge, UnsupportedMedia, ValidationFailed

_FOLDER = re.compile(r"^[a-z0-9_-]{1,40}$")


def sniff_image(data: bytes) -> str | None:
    """'jpeg' | 'png' | 'webp' from magic bytes, else None."""
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


class MediaStore:
    URL_PREFIX = "/media/"

    def __init__(self, root: Path, max_bytes: int):
        self.root = root
        self.max_bytes = max_bytes

    def _check(self, data: bytes) -> str:
        if len(data) > self.max_bytes:
            raise TooLarge(f"File is {len(data)} bytes; the limit is {self.max_bytes} bytes")
        if not data:
            raise ValidationFailed.single("file", "is empty")
        kind = sniff_image(data)
        if kind is None:
            raise UnsupportedMedia("Only jpeg, png and webp images are accepted", "unsupported_media_type")
        return kind

    async def save_image(self, data: bytes, folder: str) -> str:
        """Validate and store an image; returns its URL path (e.g. /media/avatars/ab12.png)."""
        if not _FOLDER.match(folder):
            raise ValidationFailed.single("type", "must be 1-40 lowercase letters, digits, - or _")
        kind = self._check(data)
        name = f"{uuid.uuid4().hex}.{'jpg' if kind == 'jpeg' else kind}"
        target = self.root / folder / name
        await asyncio.to_thread(self._write, target, data)
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
