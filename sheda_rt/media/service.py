"""The admin media upload (the seed's `POST /api/media/file-upload/{type}`) over the one media store.

The route reaches the store through this service, as every route does (route -> handler -> service ->
store). What an upload may be (its folder name, its size and pixels, an image and nothing else) is the
store's one check, shared with avatars, listing photos and builder logos (store.py), so it holds whichever
route stores the file."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sheda_rt.media.store import MediaStore


class MediaService:
    def __init__(self, store: MediaStore):
        self.store = store

    async def upload(self, data: bytes, folder: str) -> dict:
        """An admin's image stored under `folder`: `{file_url}` (a /media/... path). 422 for a folder name that is
        not 1-40 of a-z 0-9 - _ or an empty file, 413 over MAX_UPLOAD_BYTES or MAX_IMAGE_PIXELS, 415 unless the
        whole file is a jpeg, png or webp image (store.py save_image)."""
        return {"file_url": await self.store.save_image(data, folder)}
