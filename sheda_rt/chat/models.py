"""Response models of the chat REST routes (the socket's frames are in frames.py). The
serializer validates every body through these; they are its schema in the document."""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import ConfigDict, Field

from sheda_rt.chat.frames import HistoryRow
from sheda_rt.responses import MediaUrl, ResponseModel, Timestamp


class SenderInfo(ResponseModel):
    id: int
    username: Optional[str]
    avatar_url: Optional[MediaUrl]


class SentMessage(HistoryRow):
    """POST /chats: the stored message as history shows it, plus the seed's sender_info."""

    # Rebuilt when the avatar URL is made absolute: a field history adds must not be dropped.
    model_config = ConfigDict(extra="allow")

    sender_info: SenderInfo


class Peer(ResponseModel):
    id: int
    username: Optional[str]
    full_name: Optional[str]
    avatar_url: Optional[MediaUrl]
    user_type: Optional[str]
    is_active: bool
    last_seen: Optional[Timestamp]


class Conversation(ResponseModel):
    """One row per peer: who, the last message either way, and how many of theirs I have not read."""

    user_id: int
    peer: Peer
    last_message: HistoryRow
    unread_count: int = Field(ge=0)


class ReadReceipt(ResponseModel):
    """The read event (also sent to both users' sockets when something new was read): `up_to` is
    the watermark reached; `read_at` is null when nothing new was read."""

    type: Literal["read"]
    reader_id: int
    other_user_id: int
    up_to: int = Field(ge=0)
    read_at: Optional[Timestamp]
    seq: Optional[int] = Field(None, description="The receipt's position in both users' event streams (absent when nothing new was read)")
