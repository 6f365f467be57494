"""Request and response models of the report and moderation routes (their schemas in the document)."""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

from sheda_rt.database.ids import MAX_ID
from sheda_rt.responses import ResponseModel, Timestamp

TargetType = Literal["message", "user", "property"]
Reason = Literal["spam", "harassment", "fraud", "inappropriate", "other"]
Status = Literal["open", "resolved", "dismissed"]
Action = Literal["dismiss", "delete_message", "delist_property", "deactivate_user"]

MAX_DETAILS = 2000


class ReportCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)  # "2" is not an id, as on the socket

    target_type: TargetType
    target_id: int = Field(ge=1, le=MAX_ID, description="the message, user or property id")
    reason: Reason
    details: Optional[str] = Field(None, max_length=MAX_DETAILS, description=f"at most {MAX_DETAILS} characters")


class ReportQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: Status = Field("open", description="open (the queue, oldest first), resolved or dismissed (newest first)")
    limit: int = Field(20, ge=1, le=100, description="Items per page (max 100)")
    cursor: Optional[str] = Field(None, description="next_cursor of the previous page")


class ReportAction(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    action: Action = Field(description="dismiss (nothing done; status dismissed), or one done on the target "
                                       "(status resolved): delete_message (message reports), delist_property "
                                       "(property reports), deactivate_user (the reported user, the message's "
                                       "sender, or the listing's agent)")
    note: Optional[str] = Field("", max_length=MAX_DETAILS, description="why, for the log (kept on the report); null is no note")


class EvidenceMessage(ResponseModel):
    """A frozen copy of a message as it was when reported."""

    id: int
    sender_id: int
    receiver_id: int
    message: str
    created_at: Timestamp
    property_id: Optional[int] = None


class Evidence(ResponseModel):
    """What a message report keeps: the message and up to 20 messages around it in its
    conversation (10 before, 10 after), copied when reported, so deleting them later does
    not destroy the evidence."""

    message: EvidenceMessage
    context: list[EvidenceMessage]


class ReportOut(ResponseModel):
    id: int
    reporter_id: int
    target_type: TargetType
    target_id: int
    reason: Reason
    details: Optional[str] = None
    status: Status
    created_at: Timestamp
    evidence: Optional[Evidence] = Field(None, description="message reports only")
    action: Optional[Action] = Field(None, description="what a moderator did (set when handled)")
    note: Optional[str] = None
    handled_by: Optional[int] = Field(None, description="the moderator or admin who handled it")
    handled_at: Optional[Timestamp] = None
