"""APNs over HTTP/2 with token authentication: `POST {base}/3/device/{token}`, where the base is
APNS_BASE_URL for devices registered with environment=production and APNS_SANDBOX_BASE_URL for
sandbox ones (a development build's token is valid only on the sandbox service).

The provider token is a JWT signed ES256 with the .p8 key (header `kid` = APNS_KEY_ID, claims
`iss` = APNS_TEAM_ID and `iat`). Apple refuses one older than an hour and answers
TooManyProviderTokenUpdates to one renewed more often than every 20 minutes, so it is made once
and reused for 50 minutes. Its `iat` is real time, not the server's clock: Apple checks it
against its own.

APNs speaks HTTP/2 only: httpx with http2=True and http1=False (h2, ALPN on https; prior
knowledge on an http:// test server).

What APNs answers, and what follows (Apple's "Handling notification responses from APNs"):
- 410 Unregistered, 400 BadDeviceToken, 400 DeviceTokenNotForTopic (a token of another app):
  the device is gone, deleted;
- 429 TooManyRequests, 500/503: retried after Retry-After, else the queue's backoff;
- 403 ExpiredProviderToken/InvalidProviderToken: our JWT is made anew, and the push retried;
- any other 4xx: our request is wrong (the job fails, for admins).

A badge update (`Notification.silent`, dispatch.py) is a background push: `apns-push-type: background`,
`apns-priority: 5` (Apple refuses a background push at priority 10), `aps: {content-available: 1, badge}`.
"""
from __future__ import annotations

import time
from pathlib import Path

import httpx
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from config.settings import SettingsError
from sheda_rt.push.provider import Notification, PushResult, checked_url, json_or_empty, retry_after_seconds
from sheda_rt.wire import encode

TOKEN_SECONDS = 50 * 60
GONE_REASONS = {"Unregistered", "BadDeviceToken", "DeviceTokenNotForTopic"}
TOKEN_REASONS = {"ExpiredProviderToken", "InvalidProviderToken"}


class ApnsProvider:
    platform = "apns"

    def __init__(self, key: ec.EllipticCurvePrivateKey, *, key_id: str, team_id: str, topic: str, base_urls: dict[str, str],
                 timeout: float = 10.0):
        self.key, self.key_id, self.team_id, self.topic = key, key_id, team_id, topic
        self.base_urls = base_urls  # environment -> base URL
        self.http = httpx.AsyncClient(http1=False, http2=True, timeout=timeout, follow_redirects=False)
        self._token: tuple[float, str] | None = None

    @classmethod
    def from_settings(cls, settings) -> tuple["ApnsProvider | None", str]:
        if settings.apns_key_file is None:
            return None, "APNS_KEY_FILE is not set"
        missing = [name for name in ("apns_key_id", "apns_team_id", "apns_topic") if not getattr(settings, name)]
        if missing:
            raise SettingsError(f"APNS_KEY_FILE is set but {', '.join(m.upper() for m in missing)} not")
        try:
            key = serialization.load_pem_private_key(Path(settings.apns_key_file).read_bytes(), password=None)
        except OSError as exc:
            raise SettingsError(f"APNS_KEY_FILE cannot be read: {exc.strerror or exc}") from None
        except (ValueError, TypeError):
            raise SettingsError("APNS_KEY_FILE is not a PEM private key (the .p8 file from Apple)") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
            raise SettingsError("APNS_KEY_FILE must be a P-256 (ES256) key, as Apple's .p8 keys are")
        allow = settings.push_allow_local_endpoints
        urls = {"production": checked_url("APNS_BASE_URL", settings.apns_base_url, allow_local=allow),
                "sandbox": checked_url("APNS_SANDBOX_BASE_URL", settings.apns_sandbox_base_url, allow_local=allow)}
        return cls(key, key_id=settings.apns_key_id, team_id=settings.apns_team_id, topic=settings.apns_topic, base_urls=urls), ""

    def provider_token(self) -> str:
        now = time.time()
        if self._token is None or now - self._token[0] >= TOKEN_SECONDS:
            token = jwt.encode({"iss": self.team_id, "iat": int(now)}, self.key, algorithm="ES256", headers={"kid": self.key_id})
            self._token = (now, token)
        return self._token[1]

    def payload(self, note: Notification) -> dict:
        if note.silent:  # a background push: no alert, no sound; the badge and what the app reads
            return {"aps": {"content-available": 1, "badge": note.badge}, "data": note.data}
        alert = {"title": note.title}
        if note.body is not None:
            alert["body"] = note.body
        return {"aps": {"alert": alert, "badge": note.badge, "sound": "default", "thread-id": note.collapse_key},
                "data": note.data}

    def headers(self, note: Notification, *, ttl: int) -> dict:
        if note.silent:  # Apple: a background push is apns-push-type background with apns-priority 5
            return {"authorization": f"bearer {self.provider_token()}", "apns-topic": self.topic, "apns-push-type": "background",
                    "apns-priority": "5", "apns-expiration": str(int(time.time()) + ttl) if ttl else "0"}
        return {"authorization": f"bearer {self.provider_token()}", "apns-topic": self.topic, "apns-push-type": "alert",
                "apns-priority": "10", "apns-collapse-id": note.collapse_key,
                # 0: deliver now or never; otherwise APNs keeps it (the newest per collapse id) until then
                "apns-expiration": str(int(time.time()) + ttl) if ttl else "0"}

    async def deliver(self, device: dict, note: Notification, *, ttl: int) -> PushResult:
        base = self.base_urls[device.get("environment") or "production"]
        response = await self.http.post(f"{base}/3/device/{device['token']}", content=encode(self.payload(note)).encode(),
                                        headers=self.headers(note, ttl=ttl))
        status, body = response.status_code, response.text[:300]
        if status == 200:
            return PushResult(status, body=response.headers.get("apns-id", ""))
        reason = str(json_or_empty(body).get("reason") or "")
        if status == 403 and reason in TOKEN_REASONS:
            self._token = None  # made anew for the retry
            return PushResult(status, None, body, reason, retryable=True)
        gone = status == 410 or reason in GONE_REASONS
        return PushResult(status, retry_after_seconds(response.headers.get("Retry-After")), body, reason,
                          gone=gone, retryable=not gone and (status == 429 or status >= 500))

    async def aclose(self) -> None:
        await self.http.aclose()
