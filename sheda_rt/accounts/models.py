"""Request models for accounts (they validate input and generate the OpenAPI schemas)."""
from __future__ import annotations

import re
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, EmailStr, Field, field_validator

from sheda_rt.accounts.passwords import password_problem

USERNAME_RE = re.compile(r"^[A-Za-z0-9_.-]{3,32}$")
PHONE_RE = re.compile(r"^\+?[0-9]{7,15}$")


class Strict(BaseModel):
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)


def _check_password(value: str) -> str:
    problem = password_problem(value)
    if problem:
        raise ValueError(problem)
    return value


class RegisterRequest(Strict):
    username: str = Field(description="3-32 letters, digits, _ . -")
    email: EmailStr
    password: str = Field(description="8 to 72 bytes")
    user_type: Literal["client", "agent"]
    phone: Optional[str] = None
    full_name: Optional[str] = Field(None, max_length=120)

    @field_validator("username")
    @classmethod
    def _username(cls, v: str) -> str:
        if not USERNAME_RE.match(v):
            raise ValueError("must be 3-32 letters, digits, _ . or -")
        return v

    @field_validator("phone")
    @classmethod
    def _phone(cls, v: Optional[str]) -> Optional[str]:
        if v is not None and not PHONE_RE.match(v):
            raise ValueError("must be 7-15 digits, optionally starting with +")
        return v

    _password = field_validator("password")(_check_password)


class LoginRequest(Strict):
    username: str = Field(min_length=1, max_length=254, description="username, email or phone")
    password: str = Field(min_length=1, max_length=1024)


class TokenPair(BaseModel):
    access_token: str
    refresh_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int
