"""Request and response models for inquiries and leads."""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, EmailStr, Field, StrictInt, StrictStr, field_validator, model_validator

from sheda_rt.accounts.models import display_name
from sheda_rt.errors import FieldError
from sheda_rt.chat.frames import HistoryRow
from sheda_rt.database.ids import MAX_ID
from sheda_rt.pagination import PageQuery
from sheda_rt.responses import ResponseModel, Timestamp

LeadStatus = Literal["new", "contacted", "qualified", "won", "lost"]

#: status -> the statuses it may move to. `lost` is reachable from every open state (a buyer can walk away at
#: any point); `won` only from `qualified`; `won` and `lost` are final.
TRANSITIONS: dict[str, frozenset[str]] = {
    "new": frozenset({"contacted", "lost"}),
    "contacted": frozenset({"qualified", "lost"}),
    "qualified": frozenset({"won", "lost"}),
    "won": frozenset(),
    "lost": frozenset(),
}
MAX_NOTES = 200


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class InquiryCreate(_Body):
    """About a listing (`property_id`) or a builder's project (`project_id`, optionally one of its units): exactly one."""

    property_id: Optional[StrictInt] = Field(None, ge=1, le=MAX_ID, description="a listing; its agent gets the lead")
    project_id: Optional[StrictInt] = Field(None, ge=1, le=MAX_ID, description="a published project; its builder gets the lead")
    unit_id: Optional[StrictInt] = Field(None, ge=1, le=MAX_ID, description="with project_id only: a unit of that project")
    name: StrictStr = Field(min_length=1, max_length=100,
                            description="shown to the agent (lead, notification): a visible name, no line breaks, control characters or "
                                        "right-to-left overrides, as full_name")
    email: EmailStr = Field(max_length=254)
    phone: Optional[StrictStr] = Field(None, pattern=r"^\+?[0-9][0-9 ()-]{5,22}$", description="digits, spaces, ( ) - and a leading +")
    message: StrictStr = Field(min_length=2, max_length=2000)
    website: Optional[StrictStr] = Field(None, max_length=300, description=(
        "Honeypot: a form hides this field from people; anything in it marks a bot and the inquiry is refused (422)"))

    _name = field_validator("name")(display_name)

    @field_validator("website")
    @classmethod
    def _honeypot(cls, v):
        if v:
            raise ValueError("must be left empty")
        return v

    @model_validator(mode="after")
    def _one_subject(self):
        if self.property_id is not None and self.project_id is not None:
            raise FieldError("project_id", "send property_id (a listing) or project_id (a project), not both")
        if self.property_id is None and self.project_id is None:
            raise FieldError("property_id", "send property_id (a listing) or project_id (a project)")
        if self.unit_id is not None and self.project_id is None:
            raise FieldError("unit_id", "a unit is asked about with its project_id")
        return self


class LeadQuery(PageQuery):
    model_config = ConfigDict(extra="forbid")
    status: Optional[LeadStatus] = None
    project_id: Optional[int] = Field(None, ge=1, le=MAX_ID, description="only the leads about this project")


class LeadPatch(_Body):
    status: LeadStatus


class NoteCreate(_Body):
    text: StrictStr = Field(min_length=1, max_length=2000)


class ConversationStart(_Body):
    message: StrictStr = Field(min_length=1, max_length=2000, description="The agent's first chat message to the inquirer")


# ---- responses --------------------------------------------------------------------------------------
class InquiryOut(ResponseModel):
    id: int = Field(description="also the id of the lead it became")
    property_id: Optional[int] = Field(description="the listing asked about; null for a project inquiry")
    project_id: Optional[int] = Field(description="the project asked about; null for a listing inquiry")
    unit_id: Optional[int] = Field(description="the project's unit asked about, if any")
    created_at: Timestamp


class NoteOut(ResponseModel):
    id: int
    author_id: int
    text: str
    created_at: Timestamp


class LeadConversation(ResponseModel):
    message_id: int
    started_at: Timestamp


class LeadOut(ResponseModel):
    id: int
    property_id: Optional[int] = Field(description="the listing asked about; null for a project lead")
    project_id: Optional[int] = Field(description="the project asked about; null for a listing lead")
    unit_id: Optional[int] = Field(description="the project's unit asked about, if any")
    agent_id: int = Field(description="who the lead belongs to: the listing's agent, or the project's builder")
    user_id: Optional[int] = Field(description="the inquirer's account when they were signed in, else null")
    name: str
    email: str
    phone: Optional[str]
    message: str
    status: LeadStatus
    notes: list[NoteOut]
    conversation: Optional[LeadConversation] = Field(description="set once the agent started a chat from the lead")
    created_at: Timestamp
    updated_at: Timestamp


class LeadConversationOut(ResponseModel):
    lead: LeadOut
    message: HistoryRow
