"""Response models of the block routes (their schemas in the OpenAPI document)."""
from __future__ import annotations

from typing import Optional

from sheda_rt.responses import MediaUrl, ResponseModel, Timestamp


class BlockOut(ResponseModel):
    """A user I block. Blocking again answers the same (idempotent, the first `created_at` stands)."""

    user_id: int
    username: Optional[str] = None
    avatar_url: Optional[MediaUrl] = None
    created_at: Timestamp
