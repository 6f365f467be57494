"""Request and response models for categories."""
from __future__ import annotations

from typing import Optional

from pydantic import BaseModel, ConfigDict, Field, StrictStr, model_validator

from sheda_rt.errors import FieldError
from sheda_rt.pagination import PageQuery
from sheda_rt.responses import ResponseModel, Timestamp


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class CategoryCreate(_Body):
    name: StrictStr = Field(min_length=1, max_length=60, description="Unique, compared case- and accent-insensitively")
    description: StrictStr = Field("", max_length=500)


class CategoryUpdate(_Body):
    name: Optional[StrictStr] = Field(None, min_length=1, max_length=60)
    description: Optional[StrictStr] = Field(None, max_length=500)

    @model_validator(mode="after")
    def _something(self):
        if not self.model_fields_set:
            raise ValueError("send at least one field to change")
        for name in self.model_fields_set:
            if getattr(self, name) is None:
                raise FieldError(name, f"{name} cannot be null")  # the 422 names the field, not the body
        return self


class CategoryQuery(PageQuery):
    model_config = ConfigDict(extra="forbid")


class CategoryOut(ResponseModel):
    id: int
    name: str
    description: str
    listings: int = Field(description="listings (listed or not) that carry this category")
    created_at: Timestamp
    updated_at: Timestamp
