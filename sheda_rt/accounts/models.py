"""Request models for accounts (they validate input and generate the OpenAPI schemas)."""
from __future__ import annotations

import re
from typing import Literal, Optional

from typing import Annotated

from pydantic import BaseModel, ConfigDict, EmailStr, Field, StringConstraints, field_validator

from sheda_rt.accounts.passwords import password_problem

USERNAME_RE = re.compile(r"^[A-Za-z0-9_.-]{3,32}$")
PHONE_RE = re.compile(r"^\+?[0-9]{7,15}$")


class Strict(BaseModel):
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)


# Passwords are taken byte for byte: stripping spaces would change what the user chose.
Password = Annotated[str, StringConstraints(strip_whitespace=False)]


def _check_password(value: str) -> str:
    problem = password_problem(value)
    if problem:
        raise ValueError(problem)
    return value


class RegisterRequest(Strict):
    username: str = Field(description="3-32 letters, digits, _ . -")
    email: EmailStr
    password: Password = Field(description="8 to 72 bytes")
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
    password: Password = Field(min_length=1, max_length=1024)


class TokenPair(BaseModel):
    access_token: str
    refresh_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int


def _otp_code(value):
    # Clients may send the code as a number; 012345 as a JSON number is 12345.
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1_000_000:
        return f"{value:06d}"
    return value


class EmailRequest(Strict):
    email: EmailStr


class OtpRequest(Strict):
    email: EmailStr
    otp: str = Field(pattern=r"^[0-9]{6}$", description="the 6-digit code from the email")

    _otp = field_validator("otp", mode="before")(_otp_code)


class RefreshRequest(Strict):
    refresh_token: str = Field(min_length=1, max_length=4096)


class ResetPasswordRequest(Strict):
    password: Password = Field(description="8 to 72 bytes")

    _password = field_validator("password")(_check_password)


class SwitchAccountRequest(Strict):
    switch_to: Literal["client", "agent"]


class OtpToken(BaseModel):
    access_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int
    scope: Literal["otp"] = "otp"
