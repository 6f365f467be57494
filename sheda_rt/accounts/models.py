"""Request models for accounts (they validate input and generate the OpenAPI schemas)."""
from __future__ import annotations

import re
import unicodedata
from typing import Literal, Optional, Union

from typing import Annotated

from pydantic import BaseModel, ConfigDict, EmailStr, Field, StrictBool, StringConstraints, field_validator

from sheda_rt.accounts.passwords import password_problem
from sheda_rt.responses import MediaUrl, MoneyText, ResponseModel, Timestamp

USERNAME_RE = re.compile(r"^[A-Za-z0-9_.-]{3,32}$")
PHONE_RE = re.compile(r"^\+?[0-9]{7,15}$")
PHONE_HELP = "7-15 digits, optionally starting with +"


class Strict(BaseModel):
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)


# Passwords are taken byte for byte: stripping spaces would change what the user chose.
Password = Annotated[str, StringConstraints(strip_whitespace=False)]


# Embeddings, overrides and isolates reorder the text after them wherever it is shown ("Ada\u202eigolonhceT"
# reads "AdaTechnologi"...). The marks (U+200E, U+200F) and the joiners (U+200C, U+200D) only hint and join:
# names in Persian or Arabic need them, so they stay.
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def display_name(value: Optional[str]) -> Optional[str]:
    """A name other users see (full_name, agency_name, company_name): no control characters (line breaks,
    NUL), no bidirectional overrides, and at least one visible character (not only spaces or zero-width
    characters). Stored names are not touched: this checks input only."""
    if value is None:
        return None
    if any(unicodedata.category(c) == "Cc" or c in _BIDI_CONTROLS for c in value):
        raise ValueError("must not contain control characters (line breaks, tabs) or right-to-left overrides")
    if all(unicodedata.category(c)[0] in "CZ" for c in value):
        raise ValueError("must contain a visible character")
    return value


def _check_password(value: str) -> str:
    problem = password_problem(value)
    if problem:
        raise ValueError(problem)
    return value


class RegisterRequest(Strict):
    username: str = Field(description="3-32 letters, digits, _ . -, not a phone number (7-15 digits only); names that read as staff or the product's "
                                      "(admin, support, sheda... and look-alikes such as Adm1n) are refused with 422",
                          json_schema_extra={"pattern": USERNAME_RE.pattern})
    email: EmailStr
    password: Password = Field(description="8 to 72 bytes")
    user_type: Literal["client", "agent", "builder"]
    phone: Optional[str] = Field(None, description=PHONE_HELP, json_schema_extra={"pattern": PHONE_RE.pattern})
    full_name: Optional[str] = Field(None, max_length=120, description="blank (a form's empty box) is no name: null")

    @field_validator("full_name")
    @classmethod
    def _full_name(cls, v: Optional[str]) -> Optional[str]:
        return display_name(v or None)  # already stripped: "" and spaces are no name, as PATCH /users/me allows no empty one

    @field_validator("username")
    @classmethod
    def _username(cls, v: str) -> str:
        if not USERNAME_RE.match(v):
            raise ValueError("must be 3-32 letters, digits, _ . or -")
        if PHONE_RE.match(v):
            # Login tries the username before the phone: a username made of a phone number would
            # take over the login of whoever has (or later adds) that phone.
            raise ValueError("must not be a phone number (7-15 digits): login takes those as phone numbers")
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
    switch_to: Literal["client", "agent", "builder"]


class OtpToken(BaseModel):
    access_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int
    scope: Literal["otp"] = "otp"


# ---- profiles ---------------------------------------------------------------
def money_string(value):
    """Money is a decimal string with at most 2 decimal places ("150000.00"); never a float."""
    from decimal import Decimal, InvalidOperation

    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError('must be a decimal string such as "150000.00"')
    try:
        amount = Decimal(value.strip())
    except InvalidOperation:
        raise ValueError('must be a decimal string such as "150000.00"')
    if not amount.is_finite() or amount < 0:
        raise ValueError("must be a non-negative amount")
    if amount.as_tuple().exponent < -2:
        raise ValueError("must have at most 2 decimal places")
    if amount >= Decimal("1e15"):
        raise ValueError("is too large")
    return f"{amount:.2f}"


Money = Annotated[Optional[str], Field(description='decimal string, e.g. "150000.00"', examples=["150000.00"])]
PROPERTY_TYPES = ("apartment", "land", "shortlet", "shared apartment", "house", "duplex", "office")


class ProfilePatch(BaseModel):
    """Fields every user may change. Unknown fields are refused (422), not silently dropped."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    full_name: Optional[str] = Field(None, min_length=1, max_length=120,
                                     description="a visible name: no line breaks, control characters or right-to-left overrides")
    phone: Optional[str] = Field(None, description="7-15 digits, optionally starting with +; null removes it",
                                 json_schema_extra={"pattern": PHONE_RE.pattern})

    _full_name = field_validator("full_name")(display_name)

    @field_validator("phone")
    @classmethod
    def _phone(cls, v: Optional[str]) -> Optional[str]:
        if v is not None and not PHONE_RE.match(v):
            raise ValueError("must be 7-15 digits, optionally starting with +")
        return v


class ClientProfilePatch(ProfilePatch):
    preferred_location: Optional[str] = Field(None, max_length=200)
    preferred_property_type: Optional[Literal[PROPERTY_TYPES]] = None
    budget_min: Money = None
    budget_max: Money = None

    _money = field_validator("budget_min", "budget_max", mode="before")(money_string)


class AgentProfilePatch(ProfilePatch):
    agency_name: Optional[str] = Field(None, max_length=120, description="a visible name, as full_name")
    license_number: Optional[str] = Field(None, max_length=64)
    bio: Optional[str] = Field(None, max_length=2000)
    years_experience: Optional[int] = Field(None, ge=0, le=80, strict=True)  # "5" or 5.0 is a 422, as on the socket
    whatsapp: Optional[str] = Field(None, description=PHONE_HELP, json_schema_extra={"pattern": PHONE_RE.pattern})
    office_address: Optional[str] = Field(None, max_length=300)

    _agency_name = field_validator("agency_name")(display_name)

    @field_validator("whatsapp")
    @classmethod
    def _whatsapp(cls, v: Optional[str]) -> Optional[str]:
        if v is not None and not PHONE_RE.match(v):
            raise ValueError("must be 7-15 digits, optionally starting with +")
        return v


class BuilderProfilePatch(ProfilePatch):
    """A builder's company details. `verified` and the logo are not here: an admin verifies
    (PATCH /admin/builders/{id}), the logo is an upload (PUT /builder/profile/logo)."""

    company_name: Optional[str] = Field(None, min_length=2, max_length=160, description="a visible name, as full_name")
    registration_number: Optional[str] = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9 /.-]{0,63}$",
                                               description="company registration number (e.g. RC 1234567)")
    website: Optional[str] = Field(None, pattern=r"^https?://[^\s/$.?#][^\s]{0,290}$", description="http(s) URL")
    about: Optional[str] = Field(None, max_length=5000)

    _company_name = field_validator("company_name")(display_name)


class ProfileUpdate(BaseModel):
    """PATCH /users/me body as documented: the common fields plus those of the caller's user_type
    (client: preferred_location, preferred_property_type, budget_min, budget_max; agent: agency_name,
    license_number, bio, years_experience, whatsapp, office_address; builder: company_name,
    registration_number, website, about). A field of another type, or
    an unknown one, is a 422. `null` clears a field."""

    # Extras are let through to the per-type check (which names them in its 422); the
    # document says what is accepted, with each field's rules as the per-type model that
    # validates it has them (_profile_fields_schema).
    model_config = ConfigDict(extra="allow", json_schema_extra=lambda schema, cls: _profile_fields_schema(schema))

    full_name: Optional[str] = None
    phone: Optional[str] = None
    preferred_location: Optional[str] = None
    preferred_property_type: Optional[str] = None
    budget_min: Money = None
    budget_max: Money = None
    agency_name: Optional[str] = None
    license_number: Optional[str] = None
    bio: Optional[str] = None
    years_experience: Optional[int] = Field(None, strict=True)
    whatsapp: Optional[str] = None
    office_address: Optional[str] = None
    company_name: Optional[str] = None
    registration_number: Optional[str] = None
    website: Optional[str] = None
    about: Optional[str] = None


def _profile_fields_schema(schema: dict) -> None:
    """ProfileUpdate's document: the common fields and each type's, with the lengths, patterns and
    enums of the per-type models (ClientProfilePatch, ...) that really validate them."""
    properties = {}
    for model in (ClientProfilePatch, AgentProfilePatch, BuilderProfilePatch):
        properties.update(model.model_json_schema()["properties"])
    schema["properties"] = properties
    schema["additionalProperties"] = False


CLIENT_PROFILE_FIELDS = ("preferred_location", "preferred_property_type", "budget_min", "budget_max")
AGENT_PROFILE_FIELDS = ("agency_name", "license_number", "bio", "years_experience", "whatsapp", "office_address")
BUILDER_PROFILE_FIELDS = ("company_name", "registration_number", "website", "about")


class AccountInfoRequest(Strict):
    account_name: str = Field(min_length=2, max_length=120)
    bank_name: str = Field(min_length=2, max_length=120)
    account_number: str = Field(description="10-digit account number (NUBAN); spaces and dashes are ignored")
    bank_code: Optional[str] = Field(None, pattern=r"^[0-9]{3,10}$")

    @field_validator("account_number", mode="before")
    @classmethod
    def _account_number(cls, v):
        if not isinstance(v, str):
            raise ValueError("must be a string of 10 digits")
        digits = re.sub(r"[\s-]", "", v)
        if not re.fullmatch(r"[0-9]{10}", digits):
            raise ValueError("must be 10 digits")
        return digits


class AdminUserQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    limit: int = Field(20, ge=1, le=100, description="Items per page (max 100)")
    cursor: Optional[str] = Field(None, description="next_cursor of the previous page")
    role: Optional[Literal["user", "admin", "moderator"]] = None
    user_type: Optional[Literal["client", "agent", "builder"]] = None
    is_active: Optional[bool] = None
    is_verified: Optional[bool] = None
    q: Optional[str] = Field(None, min_length=1, max_length=100, description="prefix of username or email")


class AdminUserPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Optional[Literal["user", "admin", "moderator"]] = None
    is_active: Optional[StrictBool] = None  # "no" is not a boolean in a JSON body


# ---- responses (the serializer validates every body through these; they are its schema) ----------
UserType = Literal["client", "agent", "builder"]


class PublicUser(ResponseModel):
    """What anyone may see of a user."""

    id: int
    username: str
    full_name: Optional[str]
    user_type: UserType
    avatar_url: Optional[MediaUrl]
    created_at: Optional[Timestamp]


class ClientProfile(ResponseModel):
    """A client's profile fields (null when unset)."""

    preferred_location: Optional[str]
    preferred_property_type: Optional[str]
    budget_min: Optional[MoneyText]
    budget_max: Optional[MoneyText]


class AgentProfile(ResponseModel):
    """An agent's profile fields (null when unset)."""

    agency_name: Optional[str]
    license_number: Optional[str]
    bio: Optional[str]
    years_experience: Optional[int]
    whatsapp: Optional[str]
    office_address: Optional[str]


class BuilderProfile(ResponseModel):
    """A builder's company profile (null when unset); `logo_url` is uploaded, `verified` set by an admin."""

    company_name: Optional[str]
    registration_number: Optional[str]
    website: Optional[str]
    about: Optional[str]
    logo_url: Optional[MediaUrl]
    verified: bool


class PublicAgent(PublicUser, AgentProfile):
    """An agent as anyone may see them: the public fields plus the agent profile."""


class PublicBuilder(PublicUser, BuilderProfile):
    """A builder as anyone may see them: the public fields plus the company profile."""


class PrivateUser(PublicUser):
    """What users see of themselves: everything but secrets, with the profile of the current user_type."""

    email: str
    phone: Optional[str]
    role: Literal["user", "admin", "moderator"]
    is_active: bool
    is_verified: bool
    updated_at: Optional[Timestamp]
    profile: Union[ClientProfile, AgentProfile, BuilderProfile] = Field(description="the fields of the current user_type")


class AdminUser(PrivateUser):
    last_login_at: Optional[Timestamp]


class AccountInfo(ResponseModel):
    """An agent's bank details, as shown to a client paying them."""

    account_name: str
    bank_name: str
    account_number: str
    bank_code: Optional[str]
    updated_at: Optional[Timestamp]
