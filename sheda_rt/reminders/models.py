"""What the unsubscribe link sends and gets back."""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

from sheda_rt.responses import ResponseModel


class UnsubscribeQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # Optional here and required by the service, so a POST's bad body is reported before a missing token
    # (every JSON route answers a bad body the same way).
    token: Optional[str] = Field(None, max_length=200, description="The signed token of the link in the email (required)")


class OneClickForm(BaseModel):
    """RFC 8058: mail clients POST `List-Unsubscribe=One-Click` as a form; an empty body is fine too."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    list_unsubscribe: Optional[Literal["One-Click"]] = Field(None, alias="List-Unsubscribe")


class UnsubscribeOut(ResponseModel):
    kind: Literal["chat", "appointments", "contracts", "listings", "announcements"] = Field(
        description="The kind of email now off in the user's notification settings (email.<kind>)")
    email_enabled: bool = Field(description="Always false: that kind of email is off")
