"""What the server sends on the chat socket, as pydantic models (the SSE stream carries the
same frames, plus its own last `close`).

Clients parse these frames; the services build them as plain dicts where they happen
(frames.py, chat/service.py, the event stream, the domain services), because that is
the hot path and the dicts are encoded once for every socket. These models are the
written-down shape of those dicts: the AsyncAPI document (`sheda_rt/realtime/asyncapi.py`,
served at /api/v1/asyncapi.json) is generated from them and from `frames.INBOUND`, and
tests/test_asyncapi.py holds every frame a real server sends in a scenario to the model
of its `type`, undocumented fields included, so the document cannot drift from the wire.

Rules the models encode (README, "The chat socket"):
- Every frame is a JSON object with a `type`; a type may have several shapes (`sync.done`
  answers the message-id form of `sync` and the event-stream form differently).
- Durable frames (those with a `seq` field here) carry their position in the user's event
  stream and come back in a `sync` replay; the others are ephemeral and carry no `seq`.
- A field marked "sent only when set" is absent, never null, when it has no value.
- Clients must accept fields added later (the contract: add fields, never rename or drop
  one), so the models allow extras at run time; the test is what keeps them complete.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal, Optional, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sheda_rt.accounts.models import PublicBuilder
from sheda_rt.appointments.models import AppointmentOut
from sheda_rt.builders.booking_models import BookingView, ProgressView, UpdateView
from sheda_rt.builders.change_request_models import ChangeRequestView
from sheda_rt.builders.models import ProjectView
from sheda_rt.chat.frames import AttachmentView  # [attachments]
from sheda_rt.chat.frames import ReplyPreview
from sheda_rt.chat.models import MessageDeleted, MessageReaction, MessageUpdated, SenderInfo
from sheda_rt.chat.manage import ConversationSettings  # [manage]
from sheda_rt.contracts.models import ContractOut
from sheda_rt.leads.models import LeadOut
from sheda_rt.listings.models import PropertyOut
from sheda_rt.notifications.models import NotificationOut
from sheda_rt.responses import Timestamp

#: The position of a durable frame in the user's event stream (sheda_rt/realtime/stream.py).
Seq = Annotated[int, Field(ge=1, description="Position in the user's event stream: keep the highest and "
                                            "resume with {\"type\": \"sync\", \"after_seq\": <it>}")]


def _no_null_default(schema: dict) -> None:
    schema.pop("default", None)


def sometimes(description: str, **constraints: Any) -> Any:
    """A field that may be absent (not required in the schema). Its default is not validated,
    so unless its type allows null, a frame that sends null for it fails its model."""
    return Field(None, description=description, json_schema_extra=_no_null_default, **constraints)


class ServerFrame(BaseModel):
    """A frame the server sends. Extras are allowed: clients must ignore fields they do not know."""

    model_config = ConfigDict(extra="allow")


# ---- answers to this socket's own frames (ephemeral) ------------------------------------------
class AckFrame(ServerFrame):
    """Your message is stored: its id and time. A resend with the same client_msg_id gets the same ack."""

    type: Literal["ack"]
    client_msg_id: Optional[str] = Field(description="The message's client_msg_id, null when it had none")
    id: int
    created_at: Timestamp


class FieldError(BaseModel):
    field: str
    message: str


class ErrorFrame(ServerFrame):
    """A frame was refused or failed; the socket stays open unless the client is abusive."""

    type: Literal["error"]
    code: str = Field(description="invalid_json, invalid_frame, unknown_type, validation_error, self_message, "
                                  "receiver_not_found, receiver_inactive, property_not_found, not_listing_participant, blocked, "
                                  "rate_limited, store_failed, shutting_down, database_unavailable, invalid_token, "
                                  "unknown_channel, forbidden, too_many_subscriptions, internal_error, "
                                  "message_not_found, not_sender, edit_window_closed, invalid_reply, invalid_emoji, "
                                  "attachment_not_found, attachment_used, ...")
    detail: str = Field(description="For people")
    client_msg_id: str = sometimes("The refused message frame's client_msg_id, when it had one")
    errors: list[FieldError] = sometimes("validation_error only: what is wrong with which field")
    retry_after: float = sometimes("rate_limited and database_unavailable only: seconds to wait before resending", ge=0)
    channel: str = sometimes("Refused subscribe/unsubscribe only: the channel asked for")
    limit: int = sometimes("too_many_subscriptions only: the most channels one socket may watch")
    reason: str = sometimes("invalid_token only: why the token was refused (other_user, wrong_token_type, token_expired, ...)")


class PongFrame(ServerFrame):
    """The answer to ping."""

    type: Literal["pong"]


class SyncDoneMessages(ServerFrame):
    """The end of a page of `sync since`: send again from last_id while more."""

    type: Literal["sync.done"]
    since: int = Field(ge=0)
    last_id: int = Field(ge=0, description="The newest message id of this page (since when the page is empty)")
    count: int = Field(ge=0)
    more: bool


class SyncDoneEvents(ServerFrame):
    """The end of a page of `sync after_seq`: send again from last_seq while more."""

    type: Literal["sync.done"]
    after_seq: int = Field(ge=0)
    last_seq: int = Field(ge=0, description="The next after_seq (after_seq itself when nothing is newer)")
    count: int = Field(ge=0)
    more: bool
    epoch: str = Field(description="This data set's epoch: send it back as `epoch` to be told when it changes")


class SyncReset(ServerFrame):
    """The position cannot be resumed: refetch state over REST, then go on from last_seq."""

    type: Literal["sync.reset"]
    epoch: str
    reason: Literal["expired", "unknown_position", "epoch_changed"]
    last_seq: int = Field(ge=0)


class Subscribed(ServerFrame):
    """The socket now watches the channel (also when it already did)."""

    type: Literal["subscribed"]
    channel: str


class Unsubscribed(ServerFrame):
    """The socket no longer watches the channel (also when it did not)."""

    type: Literal["unsubscribed"]
    channel: str


class AuthOk(ServerFrame):
    """The token was renewed: the socket now closes (4401) when this expiry passes."""

    type: Literal["auth.ok"]
    expires_at: Timestamp


# ---- durable events (carry seq, replayed by sync) -----------------------------------------------
class MessageEvent(ServerFrame):
    """A chat message, to every socket of the receiver and the sender's other sockets (the seed's shape plus type)."""

    type: Literal["message"]
    id: int
    sender_info: SenderInfo
    receiver_id: int
    message: str
    created_at: Timestamp
    property_id: int = sometimes("The listing the message is about, when it has one")
    client_msg_id: str = sometimes("The sender's idempotency key, when it sent one")
    read_at: Optional[Timestamp] = sometimes("Replays only: when the receiver read it (null while unread)")
    attachments: list[AttachmentView] = sometimes("Files sent with the message, when it has some (signed, expiring links)")
    # [edits] sent only when set: replays show the message as it is now
    reply_to: int = sometimes("The message this one answers (same conversation)")
    reply_preview: ReplyPreview = sometimes("A short quote of the answered message, or its tombstone ({id, sender_id, deleted: true})")
    edited_at: Optional[Timestamp] = sometimes("Replays only: when the sender last edited it (never null)")
    deleted: bool = sometimes("Replays only: true for a message deleted for everyone (its message is empty)")
    reactions: dict[str, int] = sometimes("Replays only: {emoji: count}")
    my_reactions: list[str] = sometimes("Replays only: the emoji you reacted with")
    seq: Seq


class ReadEvent(ServerFrame):
    """reader_id read other_user_id's messages up to this id."""

    type: Literal["read"]
    reader_id: int
    other_user_id: int
    up_to: int = Field(ge=0)
    read_at: Timestamp
    seq: Seq


class MessageUpdatedEvent(MessageUpdated, ServerFrame):
    """The sender edited a message: its new text, to every socket of both participants."""

    seq: Seq


class MessageDeletedEvent(MessageDeleted, ServerFrame):
    """A message was deleted: for everyone (to both participants; it is a tombstone now) or for
    the user only (`for: me`, to that user's sockets: hide it)."""

    seq: Seq


class MessageReactionEvent(MessageReaction, ServerFrame):
    """Someone toggled a reaction on a message (to both participants)."""

    seq: Seq


class ConversationSettingsEvent(ConversationSettings, ServerFrame):
    """I muted, unmuted, archived or unarchived my conversation with user_id (to my own sockets:
    my other devices follow). A new message un-archiving a conversation sends none."""

    type: Literal["conversation.settings"]
    seq: Seq


class DeliveredEvent(ServerFrame):
    """reader_id's devices received your messages to them up to this id."""

    type: Literal["delivered"]
    reader_id: int
    other_user_id: int
    up_to: int = Field(ge=0)
    delivered_at: Timestamp
    seq: Seq


class NotificationEvent(NotificationOut, ServerFrame):
    """A notification, as GET /api/v1/notifications lists it."""

    type: Literal["notification"]
    seq: Seq


class AppointmentEvent(ServerFrame):
    """A viewing changed state, to both parties."""

    type: Literal["appointment.booked", "appointment.confirmed", "appointment.rejected", "appointment.cancelled",
                  "appointment.rescheduled"]
    appointment: AppointmentOut
    seq: Seq


class ContractEvent(ServerFrame):
    """A contract changed state, to both parties."""

    type: Literal["contract.created", "contract.payment_sent", "contract.confirmed", "contract.declined",
                  "contract.cancelled", "contract.expired"]
    contract: ContractOut
    seq: Seq


class BuilderEvent(ServerFrame):
    """An administrator verified the builder's company, or withdrew it."""

    type: Literal["builder.verified", "builder.unverified"]
    builder: PublicBuilder
    seq: Seq


class ProjectPublished(ServerFrame):
    """The builder's project is published."""

    type: Literal["project.published"]
    project: ProjectView
    seq: Seq


class BookingEvent(ServerFrame):
    """A booking or one of its installments changed (to its client and its builder): created, a line marked
    sent / confirmed / declined, a reminder of a line falling due, a line gone overdue, paid in full, cancelled,
    or the hold lapsed."""

    type: Literal["booking.created", "booking.payment_sent", "booking.payment_confirmed", "booking.payment_declined",
                  "booking.installment_due", "booking.installment_overdue", "booking.completed", "booking.cancelled",
                  "booking.expired"]
    booking: BookingView
    installment: int = sometimes("The line (1-based) the event is about, for line events")
    seq: Seq


class ChangeRequestEvent(ServerFrame):
    """A change request on a booking moved (to its client and its builder): asked for, quoted, accepted (with
    the booking, whose schedule gained the change's line), completed, withdrawn or rejected."""

    type: Literal["change_request.requested", "change_request.quoted", "change_request.accepted",
                  "change_request.completed", "change_request.withdrawn", "change_request.rejected"]
    change_request: ChangeRequestView
    booking: BookingView = sometimes("accepted only: the booking with the change's installment line")
    seq: Seq


class ProjectUpdateEvent(ServerFrame):
    """The builder posted a construction update on a project you have a booking in."""

    type: Literal["project.update"]
    project_id: int
    project_name: str
    update: UpdateView
    seq: Seq


class LeadCreated(ServerFrame):
    """Someone asked about one of the agent's listings, or one of the builder's projects (`lead.project_id`)."""

    type: Literal["lead.created"]
    lead: LeadOut
    seq: Seq


# ---- ephemeral events (no seq, never replayed) ---------------------------------------------------
class TypingEvent(ServerFrame):
    """user_id is typing to you (at most one per second per conversation)."""

    type: Literal["typing"]
    user_id: int
    sender_id: int = Field(description="Same as user_id")
    receiver_id: int


class PresenceEvent(ServerFrame):
    """Someone you share a conversation with came online or went offline."""

    type: Literal["presence"]
    user_id: int
    online: bool
    last_seen: Timestamp


class Announcement(ServerFrame):
    """An administrator's broadcast (also stored as a notification of kind announcement)."""

    type: Literal["announcement"]
    message: str
    user_type: str = sometimes("The user type it was sent to, when the broadcast named one")
    created_at: Timestamp


class SyncHint(ServerFrame):
    """Events may have missed this socket live (Redis was away): sync after_seq from the lower of this and your own seq."""

    type: Literal["sync.hint"]
    after_seq: int = Field(ge=0)
    reason: str = Field(description="broker_outage")


class PropertyUpdated(ServerFrame):
    """Channel property:<id>: the listing changed (to sockets that subscribed)."""

    type: Literal["property.updated"]
    property_id: int
    property: PropertyOut = Field(description="The listing exactly as GET /api/v1/properties/{id} returns it")
    changes: list[str] = Field(description="The listing's fields that differ (never updated_at)")


class ProjectUpdated(ServerFrame):
    """Channel project:<id>: the project, its units, its progress or its construction feed changed."""

    type: Literal["project.updated"]
    project_id: int
    changes: list[str] = Field(description="What changed: project, units, progress, update")
    project: ProjectView = Field(description="The project as GET /api/v1/projects/{id} returns it")
    update: UpdateView = sometimes("changes has update: the new construction update")
    progress: ProgressView = sometimes("changes has progress: the project's progress now")


#: Every frame the socket sends, in the order the document lists them.
SOCKET_FRAMES: tuple[type[ServerFrame], ...] = (
    AckFrame, ErrorFrame, PongFrame, SyncDoneMessages, SyncDoneEvents, SyncReset, Subscribed, Unsubscribed, AuthOk,
    MessageEvent, ReadEvent, MessageUpdatedEvent, MessageDeletedEvent, MessageReactionEvent, DeliveredEvent, ConversationSettingsEvent, NotificationEvent, AppointmentEvent, ContractEvent, BuilderEvent, ProjectPublished, BookingEvent, ChangeRequestEvent, ProjectUpdateEvent, LeadCreated,
    TypingEvent, PresenceEvent, Announcement, SyncHint, PropertyUpdated, ProjectUpdated,
)


def frame_types(model: type[BaseModel]) -> tuple[str, ...]:
    """The `type` values a model describes."""
    return get_args(model.model_fields["type"].annotation)


def is_durable(model: type[BaseModel]) -> bool:
    return "seq" in model.model_fields


#: type -> the shapes a frame of that type may have.
OUTBOUND: dict[str, tuple[type[ServerFrame], ...]] = {}
for _model in SOCKET_FRAMES:
    for _type in frame_types(_model):
        OUTBOUND[_type] = OUTBOUND.get(_type, ()) + (_model,)

#: What the server answers on the same socket to each client frame type (besides `error`,
#: which any frame can get). `sync` answers with the durable frames it replays.
_DURABLE = tuple(t for m in SOCKET_FRAMES if is_durable(m) for t in frame_types(m))
REPLIES: dict[str, tuple[str, ...]] = {
    "message": ("ack",),
    "read": (),
    "typing": (),
    "sync": ("sync.done", "sync.reset") + _DURABLE,
    "ping": ("pong",),
    "auth": ("auth.ok",),
    "subscribe": ("subscribed",),
    "unsubscribe": ("unsubscribed",),
    # [edits] the change itself comes as a durable event (message.updated, message.deleted, message.reaction,
    # delivered to the peer) on every socket of the users it concerns, this one included
    "edit": ("message.updated",),
    "delete": ("message.deleted",),
    "react": ("message.reaction",),
    "received": (),
}


class UnknownFrame(ValueError):
    """A frame whose type the protocol does not describe."""


class _Typed(BaseModel):
    type: str


def parse_outbound(text: str | bytes) -> ServerFrame:
    """A server frame as wire text, checked strictly against the model of its type (the first
    of its shapes it fits). Raises UnknownFrame for an undocumented type, ValidationError otherwise."""
    kind = _Typed.model_validate_json(text).type
    shapes = OUTBOUND.get(kind)
    if not shapes:
        raise UnknownFrame(f"no server frame of type {kind!r} is documented")
    failures = []
    for model in shapes:
        try:
            return model.model_validate_json(text, strict=True)
        except ValidationError as exc:
            failures.append(exc)
    raise failures[0]
