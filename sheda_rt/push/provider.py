"""What every push provider is to the dispatcher, and which providers this process has.

A provider turns one `Notification` into one request to its service for one device and says
how it went (`PushResult`): sent, the device is gone (delete it), retry later (429/5xx, after
Retry-After when given), or give up. The dispatcher (dispatch.py) picks the provider by the
device's platform and owns everything else (jobs, collapse, presence, quiet hours, metrics), so
the three providers differ only in how they render and authenticate the request:

- `webpush` (webpush.py): always on; the VAPID key is generated once when not configured;
- `fcm` (fcm.py): on with FCM_SERVICE_ACCOUNT_FILE or FCM_SERVICE_ACCOUNT_JSON;
- `apns` (apns.py): on with APNS_KEY_FILE, APNS_KEY_ID, APNS_TEAM_ID and APNS_TOPIC.

An unconfigured provider logs one line at start and its devices get no pushes (they stay
registered, so configuring it later reaches them). A half-configured one (APNS_KEY_FILE without
its ids, an unreadable service account, a base URL on a private address without
PUSH_ALLOW_LOCAL_ENDPOINTS) stops the start with a SettingsError: the operator meant it on.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Protocol

from config.settings import SettingsError
from sheda_rt.push.netguard import check_endpoint_url

log = logging.getLogger("sheda.push")


@dataclass(frozen=True)
class Notification:
    """One push, before a provider renders it for its platform."""

    title: str
    body: str | None  # None with previews off: no message text leaves the server
    badge: int  # the user's unread total
    collapse_key: str  # one per conversation (<= 32 characters): a newer push replaces one the service still holds
    data: dict = field(default_factory=dict)  # what the app reads (JSON-able): type, count, conversation, up_to...
    silent: bool = False  # a badge update (dispatch.py): shows nothing; FCM data-only, an APNs background push


@dataclass
class PushResult:
    status: int
    retry_after: float | None = None
    body: str = ""
    reason: str = ""  # the provider's error code (FCM errorCode/status, APNs reason)
    gone: bool = False  # the provider says this device will never take a push again: delete it
    retryable: bool = False  # 429/5xx, or our credentials needed renewing

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


def retry_after_seconds(value: str | None) -> float | None:
    """Retry-After as seconds from now: delta-seconds or an HTTP date (RFC 9110 §10.2.3)."""
    if not value:
        return None
    try:
        return max(0.0, float(int(value.strip())))
    except ValueError:
        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


def json_or_empty(text: str) -> dict:
    try:
        parsed = json.loads(text)
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


class Provider(Protocol):
    platform: str

    async def deliver(self, device: dict, note: Notification, *, ttl: int) -> PushResult:
        """Send `note` to `device`; raises for network failures (the queue retries those)."""

    async def aclose(self) -> None:
        """Close its connections (at shutdown)."""


def checked_url(name: str, url: str, *, allow_local: bool) -> str:
    """A provider URL from the settings obeys the endpoint rule too (netguard.py)."""
    try:
        check_endpoint_url(url, allow_local=allow_local)
    except ValueError as exc:
        raise SettingsError(f"{name} {exc} (PUSH_ALLOW_LOCAL_ENDPOINTS=true allows local ones for development)") from None
    return url.rstrip("/")


def build_providers(settings, vapid) -> dict[str, Provider]:
    """The providers this process pushes with, by platform; logs one line for each one that is off."""
    from sheda_rt.push.apns import ApnsProvider
    from sheda_rt.push.fcm import FcmProvider
    from sheda_rt.push.webpush import WebPushProvider

    providers: dict[str, Provider] = {
        "webpush": WebPushProvider(vapid, settings.vapid_subject, allow_local=settings.push_allow_local_endpoints)}
    for platform, build in (("fcm", FcmProvider.from_settings), ("apns", ApnsProvider.from_settings)):
        provider, why_off = build(settings)
        if provider is None:
            log.info(json.dumps({"event": "push_provider_off", "platform": platform, "reason": why_off}))
        else:
            providers[platform] = provider
    return providers
