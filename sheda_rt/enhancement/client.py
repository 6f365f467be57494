"""The external enhancement service, as this server speaks to it.

  POST <ENHANCEMENT_SERVICE_URL>   X-API-Key: <ENHANCEMENT_API_KEY>
       multipart/form-data: image (the original file), job_id (ours), callback_url (when we know it)
       -> any 2xx (a JSON body's `id`, when there is one, is kept as the service's own id)
  later, the service: POST /api/v1/webhooks/image-enhancement (signed; see service.py)
  GET  <result_url>                the enhanced file, on the service's own host

Results are fetched only from the configured service's origin (scheme, host and port), with
redirects off (a redirect could point anywhere), a byte cap checked on the header and on
the stream, and a deadline on the whole download, so a webhook can never make this server
fetch from another host, fill its memory or hold a request open for as long as the host likes.
"""
from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import httpx

DEFAULT_PORTS = {"http": 80, "https": 443}


class ServiceUnreachable(Exception):
    """The service could not be reached, or answered 5xx: worth trying again later."""


class ServiceRefused(Exception):
    """The service answered, and the answer cannot succeed (a 4xx, a result that is not there or too big)."""


def origin(url: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of `url`, or None when it has userinfo or is not a URL both urllib and
    httpx (which fetches it) read the same way: the check and the request must never disagree on
    the host, and a URL httpx cannot send (a control character: httpx.InvalidURL, not an
    HTTPError) must fail the job, not the webhook with a 500."""
    try:
        parts = urlsplit(url)
        scheme, host, port = parts.scheme.lower(), (parts.hostname or "").lower(), parts.port
        sent = httpx.URL(url)
    except (ValueError, httpx.InvalidURL):  # a port that is not a number, a bracketed host that is not an address
        return None
    if scheme not in DEFAULT_PORTS or not host or parts.username or parts.password or sent.userinfo:
        return None
    if (sent.scheme, sent.host.lower(), sent.port or DEFAULT_PORTS[scheme]) != (scheme, host, port or DEFAULT_PORTS[scheme]):
        return None
    return scheme, host, port or DEFAULT_PORTS[scheme]


class EnhancementClient:
    def __init__(self, service_url: str, api_key: str | None, timeout: float = 30.0, download_deadline: float = 120.0):
        self.service_url = service_url
        # httpx's timeout bounds each read, not the whole body: a result sent a few bytes at a time would hold
        # the webhook (and its delivery's lease, service.DELIVERY_LEASE) for ever without this deadline.
        self.download_deadline = download_deadline
        self.origin = origin(service_url)
        self._headers = {"X-API-Key": api_key} if api_key else {}
        self._timeout = timeout
        self._client: httpx.AsyncClient | None = None

    def _http(self) -> httpx.AsyncClient:
        # Made on first use, inside the running loop (an AsyncClient belongs to the loop it first ran on).
        if self._client is None:
            self._client = httpx.AsyncClient(headers=self._headers, timeout=self._timeout, follow_redirects=False)
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def submit(self, *, job_id: int, image: bytes, filename: str, content_type: str, callback_url: str | None) -> str | None:
        """Hand the image over; the service's own job id when it tells one."""
        data = {"job_id": str(job_id)}
        if callback_url:
            data["callback_url"] = callback_url
        try:
            resp = await self._http().post(self.service_url, data=data, files={"image": (filename, image, content_type)})
        except httpx.HTTPError as exc:
            raise ServiceUnreachable(f"enhancement service unreachable: {type(exc).__name__}") from None
        if resp.status_code >= 500:
            raise ServiceUnreachable(f"enhancement service answered {resp.status_code}")
        if not 200 <= resp.status_code < 300:
            raise ServiceRefused(f"enhancement service refused the job ({resp.status_code})")
        try:
            body = resp.json()
        except ValueError:
            return None
        ref = body.get("id") if isinstance(body, dict) else None
        return str(ref)[:100] if isinstance(ref, (str, int)) and not isinstance(ref, bool) else None

    def serves(self, url: str) -> bool:
        """Is `url` on the configured service's origin (the only place results are fetched from)?"""
        return self.origin is not None and origin(url) == self.origin

    async def download(self, url: str, max_bytes: int) -> bytes:
        """The result's bytes. ServiceRefused for another origin, a status other than 200 or more
        than `max_bytes`; ServiceUnreachable when it could not be fetched (try again later)."""
        if not self.serves(url):
            raise ServiceRefused("the result is not on the enhancement service's host")
        try:
            # identity only: httpx inflates each compressed piece whole before the cap sees it (a 64 KB gzip piece can
            # be 64 MB), and an image gains nothing from being compressed again.
            async with asyncio.timeout(self.download_deadline), \
                    self._http().stream("GET", url, headers={"Accept-Encoding": "identity"}) as resp:
                if resp.status_code >= 500:
                    raise ServiceUnreachable(f"the result answered {resp.status_code}")
                if resp.status_code != 200:
                    raise ServiceRefused(f"the result answered {resp.status_code}")
                encoding = resp.headers.get("Content-Encoding", "identity").strip().lower()
                if encoding not in ("", "identity"):
                    raise ServiceRefused(f"the result was sent {encoding[:40]}-encoded; only identity is accepted")
                declared = resp.headers.get("Content-Length", "")
                if declared.isdigit() and int(declared) > max_bytes:
                    raise ServiceRefused(f"the result is {declared} bytes; the limit is {max_bytes}")
                chunks, size = [], 0
                async for chunk in resp.aiter_bytes():
                    size += len(chunk)
                    if size > max_bytes:
                        raise ServiceRefused(f"the result is over {max_bytes} bytes")
                    chunks.append(chunk)
        except httpx.HTTPError as exc:
            raise ServiceUnreachable(f"the result could not be fetched: {type(exc).__name__}") from None
        except TimeoutError:
            raise ServiceUnreachable(f"the result took over {self.download_deadline:g} s to download") from None
        return b"".join(chunks)
