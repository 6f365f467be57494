"""Response models of the chat REST routes (the socket's frames are in frames.py). The
serializer validates every body through these; they are its schema in the document."""
from __future__ import annotations

from typing import Literal, Optional, Union

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
    last_message: HistoryRow = Field(description=(
        "The newest message I still see: a tombstone (deleted: true, message \"\") when it was deleted for everyone, "
        "never one I deleted for myself"))
    unread_count: int = Field(ge=0, description=(
        "The peer's messages after my read watermark, leaving out those deleted for everyone or by me for myself"))
    muted_until: Optional[Union[Literal["forever"], Timestamp]] = Field(
        None, description='My mute of this conversation: when it ends, "forever", or null (no pushes while muted; still counted unread)')
    archived: bool = Field(False, description="I archived it and nothing newer has arrived since")
    last_message_status: Optional[Literal["sent", "delivered", "read"]] = Field(
        None, description="My last message as the peer has it (from their delivered/read receipts); null when theirs is last")


class ReadReceipt(ResponseModel):
    """The read event (also sent to both users' sockets when something new was read): `up_to` is
    the watermark reached; `read_at` is null when nothing new was read."""

    type: Literal["read"]
    reader_id: int
    other_user_id: int
    up_to: int = Field(ge=0)
    read_at: Optional[Timestamp]
    seq: Optional[int] = Field(None, description="The receipt's position in both users' event streams (absent when nothing new was read)")


# ---- [edits] what happens to a message after it is sent (sheda_rt/chat/edits.py) --------------
class MessageUpdated(ResponseModel):
    """The sender edited a message (to both participants; the answer to PATCH /chat/messages/{id})."""

    type: Literal["message.updated"]
    id: int
    sender_id: int
    receiver_id: int
    message: str
    edited_at: Timestamp
    seq: int = Field(ge=1, description="Its position in both users' event streams")


class MessageDeleted(ResponseModel):
    """`for: everyone`: the sender deleted it for both (it is a tombstone now), to both participants;
    `for: me`: one participant hid it from their own history, to their sockets only."""

    type: Literal["message.deleted"]
    id: int
    sender_id: int
    receiver_id: int
    scope: Literal["everyone", "me"] = Field(alias="for")
    deleted_at: Timestamp
    seq: int = Field(ge=1, description="Its position in the event streams of the users told")


class MessageReaction(ResponseModel):
    """user_id turned a reaction on or off; counts are the message's reactions now ({emoji: count})."""

    type: Literal["message.reaction"]
    id: int
    sender_id: int
    receiver_id: int
    user_id: int
    emoji: str
    on: bool
    counts: dict[str, int]
    seq: int = Field(ge=1, description="Its position in both users' event streams")


class DeliveredReceipt(ResponseModel):
    """reader_id's devices have received other_user_id's messages to them up to this id (to the
    sender's sockets). `delivered_at` is null (and no seq) when nothing new was received."""

    type: Literal["delivered"]
    reader_id: int
    other_user_id: int
    up_to: int = Field(ge=0)
    delivered_at: Optional[Timestamp]
    seq: Optional[int] = Field(None, description="Its position in the sender's event stream (absent when nothing new)")
