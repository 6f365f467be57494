"""Web Push delivery (RFC 8030) with aes128gcm payload encryption (RFC 8291, via pywebpush and
http_ece) and VAPID authentication (RFC 8292, via py-vapid).

The request goes through Tornado's HTTP client with GuardedResolver (netguard.py): a
subscription endpoint that resolves to a non-public address is never connected to, and
redirects are not followed."""
from __future__ import annotations

import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from pywebpush import WebPusher
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from tornado.simple_httpclient import SimpleAsyncHTTPClient

from sheda_rt.push.netguard import GuardedResolver


@dataclass
class PushResult:
    status: int
    retry_after: float | None = None
    body: str = ""

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def gone(self) -> bool:
        return self.status in (404, 410)

    @property
    def retryable(self) -> bool:
        return self.status == 429 or self.status >= 500


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(int(value.strip())))
    except ValueError:
        from email.utils import parsedate_to_datetime

        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


class WebPushProvider:
    def __init__(self, vapid, subject: str, *, allow_local: bool, timeout: float = 10.0):
        self.vapid = vapid
        self.subject = subject
        self.timeout = timeout
        self.http: AsyncHTTPClient = SimpleAsyncHTTPClient(force_instance=True, resolver=GuardedResolver(allow_local=allow_local))

    def request(self, device: dict, payload: bytes, *, ttl: int, topic: str | None = None, urgency: str = "normal") -> HTTPRequest:
        endpoint = device["endpoint"]
        pusher = WebPusher({"endpoint": endpoint, "keys": device["keys"]})
        body = pusher.encode(payload, content_encoding="aes128gcm")["body"]
        parts = urlsplit(endpoint)
        claims = {"aud": f"{parts.scheme}://{parts.netloc}", "exp": int(time.time()) + 12 * 3600, "sub": self.subject}
        headers = {"TTL": str(ttl), "Content-Encoding": "aes128gcm", "Content-Type": "application/octet-stream",
                   "Urgency": urgency, **self.vapid.headers(claims)}
        if topic:
            headers["Topic"] = topic  # a newer push with the same topic replaces one the service still holds
        return HTTPRequest(endpoint, method="POST", headers=headers, body=body, follow_redirects=False,
                           request_timeout=self.timeout, connect_timeout=self.timeout)

    async def send(self, device: dict, payload: bytes, *, ttl: int, topic: str | None = None) -> PushResult:
        """Raises OSError/HTTPClientError(599) for network failures (the queue retries those)."""
        response = await self.http.fetch(self.request(device, payload, ttl=ttl, topic=topic), raise_error=False)
        if response.code == 599:
            raise HTTPClientError(599, message=repr(response.error)[:200])
        return PushResult(response.code, _retry_after(response.headers.get("Retry-After")),
                          (response.body or b"")[:300].decode("utf-8", "replace"))

    def close(self) -> None:
        self.http.close()
