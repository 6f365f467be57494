"""The chat wire format: what clients send (validated with pydantic) and what
they receive (built here, once, so the REST and WebSocket paths agree).

The shapes are promises to mobile clients (contract, section Chat): fields are
added, never renamed. Inbound frames are strict about types (`"receiver_id":
"12"` is a mistyped field, not an id) and ignore unknown keys, so a client that
still sends the old `sender_id` keeps working; the sender is always the token's
user. The REST bodies for the same acts (POST /chats, POST /chat/read) are the
same models minus `type`, so REST is exactly as strict as the socket.
"""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from sheda_rt.chat.edits import revision_fields
from sheda_rt.client_input import has_surrogate, wire_safe
from sheda_rt.clock import format_ts
from sheda_rt.database.ids import MAX_ID
from sheda_rt.pagination import StrictQuery
from sheda_rt.responses import public_media_url

MAX_MESSAGE_CHARS = 4000
MAX_ATTACHMENTS = 10  # [attachments] per message
SYNC_PAGE_MAX = 500
#: Chat history's `offset` (messages to skip). Bounded so it stays an int64 with the page added
#: (offset=9223372036854775807 was a 500 OverflowError); no conversation comes near it.
MAX_HISTORY_OFFSET = 1_000_000_000


class _Frame(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class SendMessageBody(_Frame):
    """POST /api/v1/chats, and the socket's message frame without `type`."""

    receiver_id: int = Field(ge=1, le=MAX_ID, description="The user the message is for")
    message: str = Field("", max_length=MAX_MESSAGE_CHARS,
                         description=f"Up to {MAX_MESSAGE_CHARS} characters, not only whitespace (may be empty when attachment_ids are sent)")
    client_msg_id: str | None = Field(None, min_length=1, max_length=128,
                                      description="Idempotency key: a resend with the same key stores nothing new")
    property_id: int | None = Field(None, ge=1, le=MAX_ID, description="Ties the message to a listing (agent and one other participant only)")
    attachment_ids: list[Annotated[int, Field(ge=1, le=MAX_ID)]] | None = Field(
        None, min_length=1, max_length=MAX_ATTACHMENTS,
        description=f"1 to {MAX_ATTACHMENTS} ids from POST /api/v1/chat/attachments, each uploaded by the sender and not sent before "
                    "(errors attachment_not_found, attachment_used)")
    reply_to: int | None = Field(None, ge=1, le=MAX_ID, description="Answers this message of the same conversation (else error invalid_reply)")


class SendFrame(SendMessageBody):
    """The seed's frame `{"receiver_id", "message"}`, optionally typed and keyed."""

    type: Literal["message"] = "message"


class ReadBody(_Frame):
    """POST /api/v1/chat/read, and the socket's read frame without `type`."""

    other_user_id: int = Field(ge=1, le=MAX_ID)
    up_to: int = Field(ge=0, le=MAX_ID, description="Mark this peer's messages to me with id <= up_to as read (capped at their newest message; the answer's up_to is the watermark reached, read_at null when nothing new was read)")


class ReadFrame(ReadBody):
    type: Literal["read"]


class EditFrame(_Frame):
    """The sender replaces a message's text within CHAT_EDIT_WINDOW_SECONDS: message.updated to both."""

    type: Literal["edit"]
    id: int = Field(ge=1, le=MAX_ID, description="The message to edit")
    message: str = Field(max_length=MAX_MESSAGE_CHARS, description=f"The new text: 1 to {MAX_MESSAGE_CHARS} characters")


class DeleteFrame(_Frame):
    """`for: everyone` (the sender, any time: a tombstone for both) or `me` (either participant:
    hidden from my history only). message.deleted to both (everyone) or to my sockets (me)."""

    type: Literal["delete"]
    id: int = Field(ge=1, le=MAX_ID, description="The message to delete")
    scope: Literal["everyone", "me"] = Field(alias="for", description="everyone or me")


class ReactBody(_Frame):
    """POST /api/v1/chat/messages/{id}/reactions: the react frame without type and id."""

    emoji: str = Field(max_length=16, description="👍 ❤️ 😂 😮 😢 🙏 (anything else: error invalid_emoji)")


class ReactFrame(ReactBody):
    """Toggle my reaction (one of 👍 ❤️ 😂 😮 😢 🙏) on a message: message.reaction to both."""

    type: Literal["react"]
    id: int = Field(ge=1, le=MAX_ID, description="The message to react to")


class ReceivedBody(_Frame):
    """POST /api/v1/chat/received, and the socket's received frame without `type`."""

    other_user_id: int = Field(ge=1, le=MAX_ID)
    up_to: int = Field(ge=0, le=MAX_ID, description="Their messages to me with id <= up_to (capped at their newest)")


class ReceivedFrame(ReceivedBody):
    """I have received this peer's messages to me up to an id: their sockets get `delivered`."""

    type: Literal["received"]


class EditBody(_Frame):
    """PATCH /api/v1/chat/messages/{id}: the edit frame without type and id."""

    message: str = Field(max_length=MAX_MESSAGE_CHARS, description=f"The new text: 1 to {MAX_MESSAGE_CHARS} characters")


class DeleteQuery(StrictQuery):
    # an unknown key is a 422 naming it (`?fro=me` must not be read as a delete with no scope given)
    scope: Literal["everyone", "me"] = Field(alias="for", description="everyone (the sender only) or me (either participant)")


class TypingFrame(_Frame):
    type: Literal["typing"]
    receiver_id: int = Field(ge=1, le=MAX_ID)


class SyncFrame(_Frame):
    """`since` (a message id): the seed's message catch-up. `after_seq` (a stream position):
    every durable event after it (sheda_rt/realtime/stream.py), answered with sync.done
    carrying last_seq, or sync.reset."""

    type: Literal["sync"]
    since: int = Field(0, ge=0, le=MAX_ID)
    after_seq: int | None = Field(None, ge=0, le=MAX_ID, description="Replay every durable event after this position")
    epoch: str | None = Field(None, min_length=1, max_length=64, description="The epoch of the last sync.done: a different one answers sync.reset")
    limit: int = Field(SYNC_PAGE_MAX, ge=1, le=SYNC_PAGE_MAX)


class PingFrame(_Frame):
    type: Literal["ping"]


class AuthFrame(_Frame):
    """Renew the socket's token before it expires: a fresh access token of the same user (from
    POST /auth/refresh). Answered with auth.ok and the new expiry; anything else is an error frame
    invalid_token and the socket still closes (4401) when its current token expires."""

    type: Literal["auth"]
    token: str = Field(min_length=1, max_length=4096, description="A new access token of the socket's user")


class SubscribeFrame(_Frame):
    """Watch a thing's channel (`property:42`): its live updates (property.updated), for as long
    as the socket is open. Answered with subscribed; refusals are error frames unknown_channel,
    forbidden or too_many_subscriptions (sheda_rt/realtime/channels.py)."""

    type: Literal["subscribe"]
    channel: str = Field(description="'<kind>:<id>', e.g. property:42")


class UnsubscribeFrame(_Frame):
    """Stop watching a channel; answered with unsubscribed even if it was not subscribed."""

    type: Literal["unsubscribe"]
    channel: str = Field(description="'<kind>:<id>', e.g. property:42")


# Every frame a client may send, by `type`: the socket parses with these models and dispatches
# each type to one handler (handlers/chat.py, ChatSocket.DISPATCH); the AsyncAPI document is
# generated from this table (sheda_rt/realtime/asyncapi.py).
INBOUND = {"message": SendFrame, "read": ReadFrame, "typing": TypingFrame, "sync": SyncFrame, "ping": PingFrame,
           "auth": AuthFrame, "subscribe": SubscribeFrame, "unsubscribe": UnsubscribeFrame,
           "edit": EditFrame, "delete": DeleteFrame, "react": ReactFrame, "received": ReceivedFrame}  # [edits]


# ---- REST queries --------------------------------------------------------------
class HistoryQuery(BaseModel):
    # Lenient on purpose, unlike every other list query (an unknown key is a 422 there): the seed's
    # history routes (chat-history, /chats/{id}, a listing's thread) ignore keys they do not take, as
    # they always did, so a client that adds a cache-buster (`?_=<time>`) keeps working.
    offset: int = Field(0, ge=0, le=MAX_HISTORY_OFFSET,
                        description="Messages to skip, counted from the oldest (or newest with order=desc)")
    limit: int = Field(100, ge=1, le=500, description="Messages to return (default 100, max 500)")
    order: Literal["asc", "desc"] = Field("asc", description="asc: chronological (oldest first, the default); desc: newest first")


class ConversationsQuery(StrictQuery):  # an unknown key is a 422 naming it, as on every list route (PageQuery)

    limit: int = Field(20, ge=1, le=100)
    cursor: str | None = Field(None, description="next_cursor of the previous page")
    archived: bool = Field(False, description="true: only the conversations I archived; false (default): the others")


class ReplyPreview(BaseModel):
    """The quote a reply shows of the message it answers: its text cut to 100 characters, or
    `deleted: true` (no text) once that message was deleted for everyone."""

    id: int
    sender_id: int
    message: str | None = Field(None, description="At most 100 characters; absent when deleted")
    deleted: bool | None = Field(None, description="true: the original was deleted for everyone")


class AttachmentView(BaseModel):
    """[attachments] A file sent with a message (or just uploaded): its links are signed and expire
    (CHAT_ATTACHMENT_URL_SECONDS, at least); fetch the message again for fresh ones."""

    id: int
    kind: Literal["image", "pdf"] = Field(description="Judged by the content: jpeg, png or webp images, or PDF")
    mime: str = Field(description="image/jpeg, image/png, image/webp or application/pdf")
    size: int = Field(ge=1, description="Bytes (of the stored file: images are re-encoded without metadata)")
    width: int | None = Field(None, ge=1, description="Images only")
    height: int | None = Field(None, ge=1, description="Images only")
    url: str = Field(description="GET it: a signed link (?exp=&sig=) usable without a token (e.g. in <img>) until it expires (403 after)")
    thumbnail_url: str | None = Field(None, description="Images only: a signed link to a thumbnail (at most 320 px)")


class HistoryRow(BaseModel):
    """One message as history returns it (the seed's shape, plus extras)."""

    id: int
    sender_id: int
    receiver_id: int
    message: str
    timestamp: str
    created_at: str
    read_at: str | None = None
    property_id: int | None = None
    client_msg_id: str | None = None
    attachments: list[AttachmentView] | None = Field(None, description="[attachments] sent only when the message has some")
    deleted: bool | None = Field(None, description="true on a message deleted for everyone (its text is empty)")
    # [edits] sent only when set (sheda_rt/chat/edits.py)
    edited_at: str | None = Field(None, description="When the sender last edited it")
    reply_to: int | None = Field(None, description="The message this one answers")
    reply_preview: ReplyPreview | None = Field(None, description="A short quote of the original (or its tombstone)")
    reactions: dict[str, int] | None = Field(None, description="{emoji: count}")
    my_reactions: list[str] | None = Field(None, description="The emoji I reacted with")


# ---- outbound ----------------------------------------------------------------
def sender_info(user: dict, media_base: str | None = None) -> dict:
    """The seed's sender_info; `media_base` is PUBLIC_BASE_URL (avatar_url absolute when set)."""
    return {"id": user["_id"], "username": user.get("username"), "avatar_url": public_media_url(user.get("avatar_url"), media_base)}


def message_frame(doc: dict, info: dict, viewer: int | None = None) -> dict:
    """A delivered message: the seed's payload plus `type` (and extras when set)."""
    frame = {
        "type": "message",
        "id": doc["_id"],
        "sender_info": info,
        "receiver_id": doc["receiver_id"],
        "message": doc["message"],
        "created_at": format_ts(doc["created_at"]),
    }
    if doc.get("property_id") is not None:
        frame["property_id"] = doc["property_id"]
    if doc.get("client_msg_id") is not None:
        frame["client_msg_id"] = doc["client_msg_id"]
    frame.update(revision_fields(doc, viewer))  # [edits]
    if doc.get("attachment_views"):  # [attachments] signed links, made by the service (sheda_rt/chat/attachments.py)
        frame["attachments"] = doc["attachment_views"]
    frame["seq"] = doc["_id"]  # its position in both users' event streams (sheda_rt/realtime/stream.py)
    return frame


def history_row(doc: dict, viewer: int | None = None) -> dict:
    ts = format_ts(doc["created_at"])
    row = {"id": doc["_id"], "sender_id": doc["sender_id"], "receiver_id": doc["receiver_id"], "message": doc["message"],
           "timestamp": ts, "created_at": ts, "read_at": format_ts(doc.get("read_at"))}
    if doc.get("property_id") is not None:
        row["property_id"] = doc["property_id"]
    if doc.get("client_msg_id") is not None:
        row["client_msg_id"] = doc["client_msg_id"]
    if doc.get("attachment_views"):  # [attachments]
        row["attachments"] = doc["attachment_views"]
    row.update(revision_fields(doc, viewer))  # [edits]
    return row


def ack_frame(doc: dict) -> dict:
    return {"type": "ack", "client_msg_id": doc.get("client_msg_id"), "id": doc["_id"], "created_at": format_ts(doc["created_at"])}


def echoable_key(client_msg_id) -> bool:
    """A client_msg_id an error frame can give back as the client sent it: a string (UTF-8-safe), or a JSON integer,
    which a key is not (strings only) but which JS clients keyed by `Date.now()` send: the error for it must still
    name the message it refuses, or the client cannot tell which queued send failed."""
    if isinstance(client_msg_id, str):
        return not has_surrogate(client_msg_id)
    return isinstance(client_msg_id, int) and not isinstance(client_msg_id, bool) and abs(client_msg_id) < 2 ** 63


def error_frame(code: str, detail: str, client_msg_id=None, **extra) -> dict:
    """An error frame that can always be sent: text echoing the client (a client_msg_id, a
    field name, a detail quoting input) is made UTF-8-safe. An error frame that could not be
    encoded used to drop the socket instead of answering it."""
    frame = {"type": "error", "code": code, "detail": _wire_safe(detail)}
    if echoable_key(client_msg_id):
        frame["client_msg_id"] = client_msg_id
    frame.update(_wire_safe(extra))
    return frame


def _wire_safe(value):
    if isinstance(value, str):
        return wire_safe(value)
    if isinstance(value, dict):
        return {wire_safe(k) if isinstance(k, str) else k: _wire_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_wire_safe(v) for v in value]
    return value
