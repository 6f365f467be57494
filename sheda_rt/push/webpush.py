"""Web Push delivery (RFC 8030) with aes128gcm payload encryption (RFC 8291, via pywebpush and
http_ece) and VAPID authentication (RFC 8292, via py-vapid).

The request goes through Tornado's HTTP client with GuardedResolver (netguard.py): a
subscription endpoint that resolves to a non-public address is never connected to, and
redirects are not followed."""
from __future__ import annotations

import time
from urllib.parse import urlsplit

from pywebpush import WebPusher
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from tornado.simple_httpclient import SimpleAsyncHTTPClient

from sheda_rt.push.netguard import GuardedResolver
from sheda_rt.push.provider import Notification, PushResult, retry_after_seconds
from sheda_rt.wire import encode


class WebPushProvider:
    platform = "webpush"

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

    async def deliver(self, device: dict, note: Notification, *, ttl: int) -> PushResult:
        """The service worker gets the notification's data as JSON (title, body, badge and the rest)."""
        return await self.send(device, encode(note.data).encode(), ttl=ttl, topic=note.collapse_key)

    async def send(self, device: dict, payload: bytes, *, ttl: int, topic: str | None = None) -> PushResult:
        """Raises OSError/HTTPClientError(599) for network failures (the queue retries those)."""
        response = await self.http.fetch(self.request(device, payload, ttl=ttl, topic=topic), raise_error=False)
        if response.code == 599:
            raise HTTPClientError(599, message=repr(response.error)[:200])
        return PushResult(response.code, retry_after_seconds(response.headers.get("Retry-After")),
                          (response.body or b"")[:300].decode("utf-8", "replace"),
                          gone=response.code in (404, 410), retryable=response.code == 429 or response.code >= 500)

    def close(self) -> None:
        self.http.close()

    async def aclose(self) -> None:
        self.close()
