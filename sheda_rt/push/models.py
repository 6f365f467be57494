"""Devices and notification settings: what clients send and get back.

A subscription's keys are checked here, not when the first push fails: `p256dh` must be a
base64url P-256 public point (65 bytes, uncompressed, on the curve) and `auth` 16 bytes, as
RFC 8291 requires; an endpoint must be an https URL on a public address (checked again against
the resolved address when sending, see netguard.py)."""
from __future__ import annotations

import base64
import binascii
import re
import zoneinfo
from typing import Annotated, Literal, Optional, Union

from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, RootModel

from sheda_rt.pagination import PageQuery
from sheda_rt.push.netguard import check_endpoint_url
from sheda_rt.responses import ResponseModel, Timestamp

MAX_TOKEN_CHARS = 4096
_B64URL = r"^[A-Za-z0-9_-]+={0,2}$"


def b64url_decode(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise ValueError("is not base64url") from None


def _p256dh(value: str) -> str:
    raw = b64url_decode(value)
    if len(raw) != 65 or raw[0] != 4:
        raise ValueError("must be an uncompressed P-256 public key (65 bytes, base64url)")
    try:
        ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), raw)
    except ValueError:
        raise ValueError("is not a point on the P-256 curve") from None
    return value.rstrip("=")


def _auth(value: str) -> str:
    if len(b64url_decode(value)) != 16:
        raise ValueError("must be a 16-byte auth secret (base64url)")
    return value.rstrip("=")


def _endpoint(value: str) -> str:
    check_endpoint_url(value, allow_local=True)  # the shape; the address rule is the service's (a setting)
    return value


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class SubscriptionKeys(Strict):
    p256dh: Annotated[str, Field(min_length=80, max_length=100, pattern=_B64URL), AfterValidator(_p256dh)]
    auth: Annotated[str, Field(min_length=16, max_length=32, pattern=_B64URL), AfterValidator(_auth)]


class WebPushSubscription(Strict):
    endpoint: Annotated[str, Field(min_length=12, max_length=2048, pattern=r"^https?://[^\s]+$",
                                   description="The push service URL from PushSubscription.toJSON(); https on a public address"),
                        AfterValidator(_endpoint)]
    keys: SubscriptionKeys
    expirationTime: Optional[Annotated[int, Field(ge=0, le=2**53)]] = Field(None, description="As the browser gives it; not used")


class WebPushDeviceIn(Strict):
    platform: Literal["webpush"]
    subscription: WebPushSubscription


class FcmDeviceIn(Strict):
    platform: Literal["fcm"]
    token: str = Field(min_length=1, max_length=MAX_TOKEN_CHARS, pattern=r"^[A-Za-z0-9_:.\-]+$")


class ApnsDeviceIn(Strict):
    platform: Literal["apns"]
    token: str = Field(min_length=64, max_length=200, pattern=r"^[0-9a-fA-F]+$", description="The device token, hex")
    environment: Literal["sandbox", "production"]


class DeviceIn(RootModel):
    """`{platform: "webpush", subscription: {endpoint, keys: {p256dh, auth}}}`, `{platform: "fcm", token}` or
    `{platform: "apns", token, environment: sandbox|production}`."""

    root: Annotated[Union[WebPushDeviceIn, FcmDeviceIn, ApnsDeviceIn], Field(discriminator="platform")]


class DeviceOut(ResponseModel):
    id: int
    platform: Literal["webpush", "fcm", "apns"]
    endpoint: Optional[str] = Field(None, description="webpush: the subscription's endpoint")
    token_hint: Optional[str] = Field(None, description="fcm/apns: the token's last 8 characters")
    environment: Optional[Literal["sandbox", "production"]] = None
    created_at: Timestamp
    updated_at: Timestamp


class DeviceQuery(PageQuery):
    model_config = ConfigDict(extra="forbid")


class DeviceList(ResponseModel):
    items: list[DeviceOut]
    next_cursor: Optional[str] = Field(description="Pass back as ?cursor= for the next page; null on the last page")


# ---- notification settings -------------------------------------------------
KINDS = ("chat", "appointments", "contracts", "listings", "announcements")


class KindSwitches(Strict):
    chat: bool = True
    appointments: bool = True
    contracts: bool = True
    listings: bool = True
    announcements: bool = True


#: Names the zone database holds (zoneinfo loads them) that are no place's time zone: `localtime` is the server's
#: own, whatever the machine is set to; `Factory` is tzdata's placeholder ("-00"); `posixrules` a build default; and
#: the `posix/` and `right/` trees are copies of the real zones (`right/` counting leap seconds: 27 s off).
_NOT_PLACES = {"localtime", "factory", "posixrules"}


def _time_zone(value: str) -> str:
    name = value.casefold()  # (a case-insensitive file system loads `LocalTime` as well)
    if name in _NOT_PLACES or name.startswith(("posix/", "right/")):
        raise ValueError("is not an IANA time zone (e.g. Africa/Lagos)")
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError("is not an IANA time zone (e.g. Africa/Lagos)") from None
    return value


_HHMM = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"


class QuietHours(Strict):
    start: str = Field(pattern=_HHMM, examples=["22:00"])
    end: str = Field(pattern=_HHMM, examples=["07:00"])
    time_zone: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_+\-/]+$", examples=["Africa/Lagos"]),
                         AfterValidator(_time_zone)]


class NotificationSettings(Strict):
    """Every field has a default, so `{}` is all on, previews on, no quiet hours. Pushes inside quiet
    hours are held until they end (not dropped, unless their time to live runs out first)."""

    push: KindSwitches = Field(default_factory=KindSwitches)
    email: KindSwitches = Field(default_factory=KindSwitches)
    previews: bool = True
    quiet_hours: Optional[QuietHours] = None


class KindSwitchesOut(ResponseModel):
    chat: bool
    appointments: bool
    contracts: bool
    listings: bool
    announcements: bool


class QuietHoursOut(ResponseModel):
    start: str
    end: str
    time_zone: str


class NotificationSettingsOut(ResponseModel):
    push: KindSwitchesOut
    email: KindSwitchesOut
    previews: bool
    quiet_hours: Optional[QuietHoursOut]


class VapidKeyOut(ResponseModel):
    public_key: str = Field(description="The VAPID application server key, base64url (uncompressed P-256 point): "
                                        "pass it as applicationServerKey to PushManager.subscribe()")


HHMM = re.compile(_HHMM)
