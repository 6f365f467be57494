"""Response models of the notification routes. The serializer validates every body through
these; they are its schema in the document."""
from __future__ import annotations

from typing import Any, Optional

from pydantic import Field

from sheda_rt.responses import Page, ResponseModel, Timestamp


class NotificationOut(ResponseModel):
    """What happened (`kind`, e.g. `appointment.booked`), also pushed live as `{"type": "notification", ...}`."""

    id: int
    kind: str
    title: str
    body: str
    data: dict[str, Any]
    is_read: bool
    created_at: Timestamp
    read_at: Optional[Timestamp]


class NotificationPage(Page[NotificationOut]):
    unread_count: int = Field(ge=0, description="all my unread notifications, not only this page's")


class MarkedRead(ResponseModel):
    marked_read: int = Field(ge=0, description="how many were unread and are now read")
