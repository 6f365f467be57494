"""A local Web Push service for the tests: a Tornado server on 127.0.0.1 that checks what a real
push service checks before it accepts a push, and decrypts what it accepted with the subscriber's
private key, as the browser would.

Per request (RFC 8030 / 8291 / 8292):
- `Authorization: vapid t=<JWT>, k=<key>`: k is the server's VAPID public key (the one GET
  /api/v1/push/vapid-public-key serves, which the subscription was made with); the JWT is ES256,
  signed by that key (verified with pyjwt), `aud` is this endpoint's origin, `exp` is in the future
  and at most 24 h away, `sub` is a mailto: or https: URL;
- `TTL` is present, `Content-Encoding: aes128gcm`, and the body decrypts (http_ece, the library
  pywebpush encrypts with) with the subscription's private key and auth secret.
A request that fails any check is answered 400/401/403 as a real service would, and recorded as
refused. `answers[endpoint id]` queues status codes (with headers) to answer instead of 201.
"""
from __future__ import annotations

import asyncio
import base64
import json
import time
from dataclasses import dataclass, field

import http_ece
import jwt
import tornado.netutil
import tornado.web
from cryptography.hazmat.primitives.asymmetric import ec
from tornado.httpserver import HTTPServer


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass
class Received:
    endpoint_id: str
    headers: dict
    payload: dict | None
    refused: str | None = None


@dataclass
class PushService:
    vapid_public_key: str = ""
    subscribers: dict = field(default_factory=dict)  # endpoint id -> tests.test_push.Subscriber
    answers: dict = field(default_factory=dict)  # endpoint id -> [(status, headers)]
    received: list = field(default_factory=list)
    hold: set = field(default_factory=set)  # endpoint ids whose pushes are never answered (a sender dies mid-request)
    port: int = 0
    server: HTTPServer | None = None

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def endpoint(self, endpoint_id: str) -> str:
        return f"{self.origin}/push/{endpoint_id}"

    def accepted(self, endpoint_id: str | None = None) -> list[Received]:
        return [r for r in self.received if r.refused is None and r.payload is not None
                and (endpoint_id is None or r.endpoint_id == endpoint_id)]

    def start(self) -> None:
        app = tornado.web.Application([(r"/push/([A-Za-z0-9_-]+)", _PushHandler, {"service": self})])
        sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
        self.port = sockets[0].getsockname()[1]
        self.server = HTTPServer(app)
        self.server.add_sockets(sockets)

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()

    def check(self, endpoint_id: str, headers, body: bytes) -> tuple[int, str | None, dict | None]:
        auth = headers.get("Authorization", "")
        if not auth.lower().startswith("vapid "):
            return 401, "no vapid authorization", None
        params = dict(part.strip().split("=", 1) for part in auth[6:].split(",") if "=" in part)
        token, key = params.get("t"), params.get("k")
        if not token or not key:
            return 401, "vapid t= or k= missing", None
        if key.rstrip("=") != self.vapid_public_key:
            return 403, "k is not the key the subscription was made with", None
        public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), _unb64(key))
        try:
            claims = jwt.decode(token, public, algorithms=["ES256"], audience=self.origin, options={"require": ["exp", "aud"]})
        except jwt.PyJWTError as exc:
            return 403, f"vapid jwt refused: {exc}", None
        if not (time.time() < claims["exp"] <= time.time() + 24 * 3600):
            return 403, "exp not within 24 h", None
        if not str(claims.get("sub", "")).startswith(("mailto:", "https:")):
            return 403, "sub is not mailto: or https:", None
        if "TTL" not in headers:
            return 400, "TTL header missing", None
        if headers.get("Content-Encoding") != "aes128gcm":
            return 415, "not aes128gcm", None
        sub = self.subscribers.get(endpoint_id)
        if sub is None:
            return 404, "no such subscription", None
        try:
            plain = http_ece.decrypt(body, private_key=sub.private_key, auth_secret=sub.auth, version="aes128gcm")
        except Exception as exc:  # a payload the browser could not decrypt
            return 400, f"payload does not decrypt: {exc!r}", None
        return 201, None, json.loads(plain)


class _PushHandler(tornado.web.RequestHandler):
    def initialize(self, service: PushService):
        self.service = service

    async def post(self, endpoint_id: str):
        status, refused, payload = self.service.check(endpoint_id, self.request.headers, self.request.body)
        if endpoint_id in self.service.hold:
            # Taken in but never answered: not delivered (a real service delivers once it has answered 201).
            self.service.received.append(Received(endpoint_id, dict(self.request.headers), payload, "held, never answered"))
            self.service.hold.discard(endpoint_id)
            await asyncio.Event().wait()
        self.service.received.append(Received(endpoint_id, dict(self.request.headers), payload, refused))
        if refused is None:
            queued = self.service.answers.get(endpoint_id)
            if queued:
                status, headers = queued.pop(0)
                for name, value in headers.items():
                    self.set_header(name, value)
                self.service.received[-1].refused = f"answered {status}"
        self.set_status(status)
        if status == 201:
            self.set_header("Location", f"/message/{len(self.service.received)}")
        self.finish(refused or "")
