"""Enhancement jobs as clients see them, and the webhook's payload as the service sends it."""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, StrictInt, field_validator, model_validator

from sheda_rt.database.ids import MAX_ID
from sheda_rt.errors import FieldError
from sheda_rt.responses import MediaUrl, ResponseModel, Timestamp

#: pending (accepted) -> processing (sent to the service / queued for Pillow) -> completed | failed | timeout
EnhancementStatus = Literal["pending", "processing", "completed", "failed", "timeout"]
LIVE = ["pending", "processing"]
ENDED = ("completed", "failed", "timeout")


class EnhancementJobOut(ResponseModel):
    """One enhancement of one listing image. The image itself shows the job's state as
    `enhancement_status` (and, once completed, the enhanced file as its `url`)."""

    id: int
    property_id: int
    image_id: int
    status: EnhancementStatus
    mode: Literal["service", "local"] = Field(description="service: the external enhancement service; local: Pillow on this server")
    original_url: MediaUrl = Field(description="The image as uploaded (kept)")
    enhanced_url: Optional[MediaUrl] = Field(description="The enhanced file once completed, else null")
    error: Optional[str] = Field(description="Why it failed or timed out, else null")
    created_at: Timestamp
    updated_at: Timestamp
    finished_at: Optional[Timestamp]


class EnhancementResult(BaseModel):
    """The webhook's JSON body (after its signature was checked):
    `{"job_id": 12, "status": "completed", "result_url": "https://svc.example/r/12.jpg"}` or
    `{"job_id": 12, "status": "failed", "error": "..."}`. Other fields are ignored."""

    model_config = ConfigDict(extra="ignore")

    job_id: StrictInt = Field(ge=1, le=MAX_ID)
    status: Literal["completed", "failed"]
    result_url: Optional[str] = Field(None, min_length=1, max_length=2048)
    error: Optional[str] = Field(None, description="The service's reason for a failure; kept to its first 500 characters")

    @field_validator("error", mode="after")
    @classmethod
    def _short_error(cls, value):
        # Cut, never refused: a 422 for a long reason (a stack trace) would refuse the failure report itself,
        # and the job would sit `processing` until the timeout sweep.
        return value[:500] if value is not None else None

    @model_validator(mode="after")
    def _result_when_completed(self):
        if self.status == "completed" and self.result_url is None:  # the 422 names the missing field, not the body
            raise FieldError("result_url", "a completed job needs its result_url")
        return self


class EnhancementWebhookAck(ResponseModel):
    received: bool
    duplicate: bool = Field(False, description="true when this X-Delivery-Id was handled before (nothing was done again)")
