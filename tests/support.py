"""What a client does, as small helpers: HTTP calls, sign-up, WebSocket sessions.

Tests talk to the real server on a real port over real HTTP and WebSockets;
the only shortcut is reading OTP codes from the server's mailer (what a user
would read from their inbox).
"""
from __future__ import annotations

import asyncio
import inspect
import json
import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import urlencode

from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from tornado.websocket import websocket_connect

from sheda_rt.clock import Clock


class OffsetClock(Clock):
    """Real time plus an offset tests can move forward (no sleeping)."""

    def __init__(self):
        self.offset = timedelta()

    def now(self) -> datetime:
        return super().now() + self.offset

    def advance(self, **delta) -> None:
        self.offset += timedelta(**delta)


@dataclass
class Response:
    status: int
    body: bytes
    headers: Any

    @property
    def json(self) -> Any:
        return json.loads(self.body) if self.body else None

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.body[:300]!r}>"


class Api:
    def __init__(self, base_url: str):
        self.base_url = base_url
        self.http = AsyncHTTPClient()

    async def request(self, method: str, path: str, *, json_body: Any = None, token: str | None = None,
                      body: bytes | str | None = None, headers: dict | None = None, params: dict | None = None) -> Response:
        hdrs = dict(headers or {})
        if token:
            hdrs["Authorization"] = f"Bearer {token}"
        if json_body is not None:
            body = json.dumps(json_body)
            hdrs.setdefault("Content-Type", "application/json")
        if body is None and method in ("POST", "PUT", "PATCH"):
            body = b""
        url = self.base_url + path + (("&" if "?" in path else "?") + urlencode(params, doseq=True) if params else "")
        req = HTTPRequest(url, method=method, headers=hdrs, body=body, allow_nonstandard_methods=True, request_timeout=60)
        resp = await self.http.fetch(req, raise_error=False)
        return Response(resp.code, resp.body or b"", resp.headers)

    async def get(self, path, **kw):
        return await self.request("GET", path, **kw)

    async def post(self, path, json=None, **kw):
        return await self.request("POST", path, json_body=json, **kw)

    async def put(self, path, json=None, **kw):
        return await self.request("PUT", path, json_body=json, **kw)

    async def patch(self, path, json=None, **kw):
        return await self.request("PATCH", path, json_body=json, **kw)

    async def delete(self, path, **kw):
        return await self.request("DELETE", path, **kw)


def multipart(field_name: str, filename: str, content: bytes, content_type: str = "application/octet-stream",
              extra: dict | None = None) -> tuple[bytes, dict]:
    boundary = uuid.uuid4().hex
    parts = []
    for key, value in (extra or {}).items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'.encode())
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{field_name}"; filename="{filename}"\r\n'
                 f"Content-Type: {content_type}\r\n\r\n".encode() + content + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), {"Content-Type": f"multipart/form-data; boundary={boundary}"}


# Small valid images for upload tests (made by Pillow, which the server decodes them with: an
# upload must decode in full, so a signature followed by padding no longer passes).
PNG_1PX = bytes.fromhex("89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c4890000000d49444154789c63f8cfc0d00000048101802c55ceb00000000049454e44ae426082")
JPEG_8PX = bytes.fromhex(
    "ffd8ffe000104a46494600010100000100010000ffdb0043000302020302020303030304030304050805050404050a070706080c0a0c0c0b0a0b0b0d"
    "0e12100d0e110e0b0b1016101113141515150c0f171816141812141514ffdb00430103040405040509050509140d0b0d141414141414141414141414"
    "1414141414141414141414141414141414141414141414141414141414141414141414141414ffc00011080008000803012200021101031101ffc400"
    "1f0000010501010101010100000000000000000102030405060708090a0bffc400b5100002010303020403050504040000017d010203000411051221"
    "31410613516107227114328191a1082342b1c11552d1f02433627282090a161718191a25262728292a3435363738393a434445464748494a53545556"
    "5758595a636465666768696a737475767778797a838485868788898a92939495969798999aa2a3a4a5a6a7a8a9aab2b3b4b5b6b7b8b9bac2c3c4c5c6"
    "c7c8c9cad2d3d4d5d6d7d8d9dae1e2e3e4e5e6e7e8e9eaf1f2f3f4f5f6f7f8f9faffc4001f0100030101010101010101010000000000000102030405"
    "060708090a0bffc400b51100020102040403040705040400010277000102031104052131061241510761711322328108144291a1b1c109233352f015"
    "6272d10a162434e125f11718191a262728292a35363738393a434445464748494a535455565758595a636465666768696a737475767778797a828384"
    "85868788898a92939495969798999aa2a3a4a5a6a7a8a9aab2b3b4b5b6b7b8b9bac2c3c4c5c6c7c8c9cad2d3d4d5d6d7d8d9dae2e3e4e5e6e7e8e9ea"
    "f2f3f4f5f6f7f8f9faffda000c03010002110311003f00f02a28a2bf323fb8cfffd9"
)
JPEG_MAGIC = JPEG_8PX  # the name older tests use


async def eventually(check, what: str = "the condition", timeout: float = 15.0, interval: float = 0.05):
    """Poll `check` (a function giving a value, or an awaitable of one) until it gives something true, and
    return that; fail naming `what` after `timeout` seconds. Tests wait for the state they need this way
    (work the server does in the background, another process, the database coming back), never for a time."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        assert loop.time() < deadline, f"still waiting for {what} after {timeout} s"
        await asyncio.sleep(interval)


async def walk_pages(api, path: str, token: str | None = None, limit: int = 2, **params) -> list[int]:
    """The ids of every item of a cursor-paged list, following `next_cursor` page by page (small pages: the
    walk crosses page boundaries), as a client scrolling to the end would."""
    seen, cursor = [], None
    while True:
        r = await api.get(path, token=token, params={"limit": limit, **params, **({"cursor": cursor} if cursor else {})})
        assert r.status == 200, r
        seen += [item["id"] for item in r.json["items"]]
        cursor = r.json["next_cursor"]
        if not cursor:
            return seen


def unique(prefix: str = "u") -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


@dataclass
class User:
    id: int
    username: str
    email: str
    password: str
    user_type: str
    access_token: str
    refresh_token: str
    data: dict = field(default_factory=dict)

    @property
    def token(self) -> str:
        return self.access_token


def otp_from_mail(mailer, email: str) -> str:
    mail = mailer.last_to(email)
    assert mail is not None, f"no mail was sent to {email}"
    match = re.search(r"\b(\d{6})\b", mail.body)
    assert match, f"no 6-digit code in: {mail.body!r}"
    return match.group(1)


class WsClient:
    """A WebSocket client that keeps every frame it receives, in order."""

    def __init__(self, conn):
        self.conn = conn
        self.frames: list[dict] = []
        self.closed = asyncio.get_running_loop().create_future()
        self._new = asyncio.Event()
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self):
        while True:
            msg = await self.conn.read_message()
            if msg is None:
                if not self.closed.done():
                    self.closed.set_result((self.conn.close_code, self.conn.close_reason))
                self._new.set()
                return
            self.frames.append(json.loads(msg))
            self._new.set()

    async def send(self, frame: Any) -> None:
        await self.conn.write_message(frame if isinstance(frame, (str, bytes)) else json.dumps(frame))

    async def wait_for(self, predicate, timeout: float = 5.0, start: int = 0) -> dict:
        """The first frame (from index `start`) matching predicate, waiting up to `timeout`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        checked = start
        while True:
            for i in range(checked, len(self.frames)):
                if predicate(self.frames[i]):
                    return self.frames[i]
            checked = max(checked, len(self.frames))
            remaining = deadline - loop.time()
            if remaining <= 0 or self.closed.done():
                raise AssertionError(f"no matching frame within {timeout}s; got {self.frames[start:]!r}")
            self._new.clear()
            try:
                await asyncio.wait_for(self._new.wait(), remaining)
            except asyncio.TimeoutError:
                pass

    async def wait_type(self, frame_type: str, timeout: float = 5.0, **match) -> dict:
        return await self.wait_for(lambda f: f.get("type") == frame_type and all(f.get(k) == v for k, v in match.items()), timeout)

    def of_type(self, frame_type: str) -> list[dict]:
        return [f for f in self.frames if f.get("type") == frame_type]

    async def wait_closed(self, timeout: float = 5.0) -> tuple:
        return await asyncio.wait_for(asyncio.shield(self.closed), timeout)

    def close(self, code: int = 1000):
        self.conn.close(code)


class ShedaClient:
    """A running server as a client sees it, plus the server context for assertions on what is stored."""

    def __init__(self, server, base_url: str):
        self.server = server
        self.ctx = server.ctx
        self.base_url = base_url
        self.api = Api(base_url)

    @property
    def ws_url(self) -> str:
        return self.base_url.replace("http://", "ws://") + "/api/v1/chat/ws"

    async def register(self, user_type: str = "client", **fields) -> tuple[Response, dict]:
        body = {"username": unique(user_type[0]), "email": f"{unique('e')}@example.com", "password": "correct-horse-1",
                "user_type": user_type, **fields}
        return await self.api.post("/api/v1/auth/register", body), body

    async def signup(self, user_type: str = "client", **fields) -> User:
        """register → read the OTP from the mail → verify-account → a logged-in user."""
        resp, body = await self.register(user_type, **fields)
        assert resp.status == 201, resp
        otp = otp_from_mail(self.ctx.mailer, body["email"])
        verified = await self.api.post("/api/v1/auth/verify-account", {"email": body["email"], "otp": otp})
        assert verified.status == 200, verified
        tokens = verified.json
        return User(id=resp.json["id"], username=body["username"], email=body["email"], password=body["password"],
                    user_type=user_type, access_token=tokens["access_token"], refresh_token=tokens["refresh_token"], data=resp.json)

    async def admin(self) -> User:
        user = await self.signup("client")
        await self.ctx.users.update(user.id, {"role": "admin"})  # what `run.py promote-admin` does
        login = await self.api.post("/api/v1/auth/login", {"username": user.username, "password": user.password})
        assert login.status == 200, login
        user.access_token, user.refresh_token = login.json["access_token"], login.json["refresh_token"]
        return user

    async def ws(self, token: str | None, *, query: bool = True, subprotocol: bool = False, headers: dict | None = None) -> WsClient:
        url = self.ws_url + (f"?token={token}" if token and query else "")
        hdrs = dict(headers or {})
        protocols = ["bearer", token] if subprotocol and token else None
        req = HTTPRequest(url, headers=hdrs, request_timeout=10)
        conn = await websocket_connect(req, subprotocols=protocols)
        return WsClient(conn)
