"""Request and response models of the event stream's REST edge (GET /api/v1/events)."""
from __future__ import annotations

from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field

from sheda_rt.chat.frames import SYNC_PAGE_MAX
from sheda_rt.database.ids import MAX_ID
from sheda_rt.responses import ResponseModel


class EventsQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    after_seq: int = Field(0, ge=0, le=MAX_ID, description="The highest seq the client has (0: from the start of what is retained)")
    limit: int = Field(100, ge=1, le=SYNC_PAGE_MAX, description=f"Events per page (default 100, max {SYNC_PAGE_MAX})")
    epoch: Optional[str] = Field(None, min_length=1, max_length=64, description="The epoch of the previous page: another one answers 410 stream_reset")


class EventsPage(ResponseModel):
    """The same frames the socket delivers (each with `seq`), oldest first."""

    items: list[dict[str, Any]]
    last_seq: int = Field(description="Pass it as after_seq for the next page (equal to after_seq when items is empty)")
    more: bool
    epoch: str = Field(description="This data set's epoch; send it back as `epoch`")
