"""Response model of the media upload route."""
from __future__ import annotations

from sheda_rt.responses import MediaUrl, ResponseModel


class FileUploaded(ResponseModel):
    file_url: MediaUrl
