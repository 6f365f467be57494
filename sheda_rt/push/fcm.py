"""FCM HTTP v1: `POST {FCM_BASE_URL}/v1/projects/{project}/messages:send` with an OAuth2 access
token of a service account (google-auth).

The access token comes from the account's `token_uri` (the JWT bearer grant, RFC 7523: a JWT
signed RS256 with the account's private key) and is kept until google-auth finds it near expiry
(about 4 minutes before), so a process asks for one about once an hour, not once per push.
google-auth's refresh is blocking I/O, so it runs in a worker thread, one at a time; the sends
go through httpx.AsyncClient on the event loop.

What FCM answers, and what follows (https://firebase.google.com/docs/reference/fcm/rest/v1/ErrorCode):
- 404 / UNREGISTERED, INVALID_ARGUMENT naming `message.token`, SENDER_ID_MISMATCH (the token
  belongs to another Firebase project): the device is gone, deleted;
- 429 QUOTA_EXCEEDED, 5xx UNAVAILABLE/INTERNAL: retried after Retry-After (the queue's backoff
  without one);
- 401: our access token was refused (revoked, or expired early): dropped, and retried with a new one;
- any other 4xx: our request is wrong; retrying cannot help (the job fails, for admins).
"""
from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
from google.auth import exceptions as auth_exceptions
from google.auth import transport as auth_transport
from google.oauth2 import service_account

from config.settings import SettingsError
from sheda_rt.push.provider import Notification, PushResult, checked_url, json_or_empty, retry_after_seconds

SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
GONE_CODES = {"UNREGISTERED", "SENDER_ID_MISMATCH"}


class _Response(auth_transport.Response):
    def __init__(self, response: httpx.Response):
        self._response = response

    @property
    def status(self):
        return self._response.status_code

    @property
    def headers(self):
        return self._response.headers

    @property
    def data(self):
        return self._response.content


class _TokenTransport(auth_transport.Request):
    """google-auth's HTTP interface over a blocking httpx client (no `requests` dependency); used
    only from the refresh thread."""

    def __init__(self, timeout: float):
        self.http = httpx.Client(timeout=timeout, follow_redirects=False)

    def __call__(self, url, method="GET", body=None, headers=None, timeout=None, **kwargs):
        try:
            return _Response(self.http.request(method, url, content=body, headers=headers, timeout=timeout or self.http.timeout))
        except httpx.HTTPError as exc:
            raise auth_exceptions.TransportError(repr(exc)) from exc


def fcm_error(body: str) -> tuple[str, bool]:
    """(the error's code, whether it names the registration token) from FCM's error body."""
    error = json_or_empty(body).get("error")
    if not isinstance(error, dict):
        return "", False
    code, token_field = str(error.get("status") or ""), False
    for detail in error.get("details") or []:
        if not isinstance(detail, dict):
            continue
        if detail.get("errorCode"):
            code = str(detail["errorCode"])
        for violation in detail.get("fieldViolations") or []:
            if isinstance(violation, dict) and violation.get("field") == "message.token":
                token_field = True
    return code, token_field


def _data_strings(data: dict) -> dict[str, str]:
    """FCM's `data` takes string values only: nested values travel as JSON text."""
    return {k: v if isinstance(v, str) else json.dumps(v, separators=(",", ":")) for k, v in data.items() if v is not None}


class FcmProvider:
    platform = "fcm"

    def __init__(self, account: dict, *, base_url: str, allow_local: bool, timeout: float = 10.0):
        self.project = account.get("project_id")
        if not self.project:
            raise SettingsError("the FCM service account has no project_id")
        token_uri = checked_url("the FCM service account's token_uri", account.get("token_uri") or "", allow_local=allow_local)
        self.url = f"{checked_url('FCM_BASE_URL', base_url, allow_local=allow_local)}/v1/projects/{self.project}/messages:send"
        try:
            credentials = service_account.Credentials.from_service_account_info(account, scopes=[SCOPE])
        except (ValueError, KeyError) as exc:
            raise SettingsError(f"the FCM service account is not usable: {exc}") from None
        # The assertion's audience is the endpoint it is sent to (RFC 7523 §3): Google's token_uri in
        # production (what google-auth puts there anyway), the local one in tests.
        self.credentials = credentials.with_claims({"aud": token_uri})
        self.transport = _TokenTransport(timeout)
        self.http = httpx.AsyncClient(timeout=timeout, follow_redirects=False)
        self._refreshing = asyncio.Lock()

    @classmethod
    def from_settings(cls, settings) -> tuple["FcmProvider | None", str]:
        if settings.fcm_service_account_json is not None:
            text, source = settings.fcm_service_account_json.get_secret_value(), "FCM_SERVICE_ACCOUNT_JSON"
        elif settings.fcm_service_account_file is not None:
            path = Path(settings.fcm_service_account_file)
            try:
                text, source = path.read_text(), "FCM_SERVICE_ACCOUNT_FILE"
            except OSError as exc:
                raise SettingsError(f"FCM_SERVICE_ACCOUNT_FILE cannot be read: {exc.strerror or exc}") from None
        else:
            return None, "FCM_SERVICE_ACCOUNT_FILE and FCM_SERVICE_ACCOUNT_JSON are not set"
        try:
            account = json.loads(text)
        except ValueError:
            raise SettingsError(f"{source} is not JSON (a Firebase service-account key file)") from None
        if not isinstance(account, dict) or account.get("type") != "service_account":
            raise SettingsError(f"{source} is not a service-account key (type must be service_account)")
        return cls(account, base_url=settings.fcm_base_url, allow_local=settings.push_allow_local_endpoints), ""

    async def access_token(self) -> str:
        if not self.credentials.valid:
            async with self._refreshing:  # one refresh at a time; the others wait and use its token
                if not self.credentials.valid:
                    await asyncio.to_thread(self.credentials.refresh, self.transport)
        return self.credentials.token

    def message(self, device: dict, note: Notification, *, ttl: int) -> dict:
        if note.silent:  # a badge update: data only (no `notification`, nothing shown), a background push on iOS
            return {"message": {
                "token": device["token"],
                "data": _data_strings(note.data),
                # a high-priority data message that shows nothing is deprioritised by Android: normal
                "android": {"collapse_key": note.collapse_key, "ttl": f"{ttl}s", "priority": "NORMAL"},
                "apns": {"headers": {"apns-push-type": "background", "apns-priority": "5"},
                         "payload": {"aps": {"content-available": 1, "badge": note.badge}}},
            }}
        notification = {"title": note.title}
        if note.body is not None:
            notification["body"] = note.body
        return {"message": {
            "token": device["token"],
            "notification": notification,
            "data": _data_strings(note.data),
            "android": {"collapse_key": note.collapse_key, "ttl": f"{ttl}s", "priority": "HIGH",
                        "notification": {"tag": note.collapse_key, "notification_count": note.badge}},
            # FCM relays to iOS apps through APNs: the same collapse and badge there
            "apns": {"headers": {"apns-collapse-id": note.collapse_key},
                     "payload": {"aps": {"badge": note.badge, "thread-id": note.collapse_key}}},
        }}

    async def deliver(self, device: dict, note: Notification, *, ttl: int) -> PushResult:
        try:
            token = await self.access_token()
        except auth_exceptions.RefreshError as exc:  # the token endpoint refused or is away: retried later
            return PushResult(503, None, f"access token refused: {exc}"[:300], "token_refresh_failed", retryable=True)
        response = await self.http.post(self.url, json=self.message(device, note, ttl=ttl),
                                        headers={"Authorization": f"Bearer {token}"})
        status, body = response.status_code, response.text[:1000]
        if 200 <= status < 300:
            return PushResult(status, body=body[:300])
        code, about_token = fcm_error(body)
        if status == 401:
            self.credentials.token = None  # not valid any more: the next delivery gets a new one
            return PushResult(status, None, body[:300], code, retryable=True)
        gone = status == 404 or code in GONE_CODES or (code == "INVALID_ARGUMENT" and about_token)
        return PushResult(status, retry_after_seconds(response.headers.get("Retry-After")), body[:300], code,
                          gone=gone, retryable=not gone and (status == 429 or status >= 500))

    async def aclose(self) -> None:
        await self.http.aclose()
        self.transport.http.close()
