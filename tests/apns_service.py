"""A local APNs for the tests: an HTTP/2-only server (h2 on asyncio, prior knowledge, no TLS) on
127.0.0.1 that checks what Apple checks before it accepts a push. One instance per environment:
a production token sent to the sandbox service (or the reverse) is a BadDeviceToken there, as
at Apple.

Per request (Apple's "Sending notification requests to APNs"):
- HTTP/2 only: an HTTP/1.1 request is not a connection preface and the connection is closed;
- `POST /3/device/<hex token>` (404 BadPath, 405 MethodNotAllowed otherwise);
- `authorization: bearer <JWT>`: ES256, header `kid` = the key id, verified with the .p8 key's
  public key, `iss` = the team id, `iat` within the last hour (403 MissingProviderToken,
  InvalidProviderToken, ExpiredProviderToken);
- `apns-topic` = the bundle id (400 MissingTopic / TopicDisallowed), `apns-push-type: alert` or
  `background` (400 InvalidPushType), `apns-collapse-id` at most 64 bytes (BadCollapseId), `apns-expiration`
  a UNIX time (BadExpirationDate), `apns-priority` 5 or 10, and 5 for a background push (BadPriority);
- a JSON body of at most 4 KB with an `aps` object (PayloadEmpty, PayloadTooLarge, BadMessage);
- a device token not in `tokens` is 400 BadDeviceToken.
`answers[token]` queues (status, reason, headers) to answer instead of 200.
"""
from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import jwt


@dataclass
class Received:
    token: str | None
    headers: dict
    payload: dict | None
    refused: str | None = None


@dataclass
class ApnsService:
    environment: str
    key_id: str
    team_id: str
    topic: str
    public_key: object
    tokens: set = field(default_factory=set)
    answers: dict = field(default_factory=dict)  # token -> [(status, reason, headers)]
    received: list = field(default_factory=list)
    http1_refused: int = 0
    port: int = 0
    server: asyncio.base_events.Server | None = None

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.server = await asyncio.get_running_loop().create_server(lambda: _H2Protocol(self), "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()

    def accepted(self, token: str | None = None) -> list[Received]:
        return [r for r in self.received if r.refused is None and (token is None or r.token == token)]

    def check(self, headers: dict, body: bytes) -> tuple[int, str | None, dict, Received]:
        rec = Received(None, headers, None)

        def refuse(status: int, reason: str, extra: dict | None = None):
            rec.refused = reason
            return status, reason, extra or {}, rec

        if headers.get(":method") != "POST":
            return refuse(405, "MethodNotAllowed")
        path = re.fullmatch(r"/3/device/([0-9a-fA-F]{64,200})", headers.get(":path", ""))
        if not path:
            return refuse(404, "BadPath")
        rec.token = path.group(1)
        auth = headers.get("authorization", "")
        if not auth.startswith("bearer "):
            return refuse(403, "MissingProviderToken")
        token = auth[7:]
        try:
            header = jwt.get_unverified_header(token)
            if header.get("alg") != "ES256" or header.get("kid") != self.key_id:
                return refuse(403, "InvalidProviderToken")
            claims = jwt.decode(token, self.public_key, algorithms=["ES256"], options={"require": ["iss", "iat"]})
        except jwt.PyJWTError:
            return refuse(403, "InvalidProviderToken")
        if claims["iss"] != self.team_id:
            return refuse(403, "InvalidProviderToken")
        if not time.time() - 3600 <= claims["iat"] <= time.time() + 60:
            return refuse(403, "ExpiredProviderToken")
        if "apns-topic" not in headers:
            return refuse(400, "MissingTopic")
        if headers["apns-topic"] != self.topic:
            return refuse(400, "TopicDisallowed")
        push_type = headers.get("apns-push-type")
        if push_type not in ("alert", "background"):  # (the other types need their own topics: not this app's)
            return refuse(400, "InvalidPushType")
        if len(headers.get("apns-collapse-id", "").encode()) > 64:
            return refuse(400, "BadCollapseId")
        if not headers.get("apns-expiration", "0").isdigit():
            return refuse(400, "BadExpirationDate")
        if headers.get("apns-priority", "10") not in ("5", "10"):
            return refuse(400, "BadPriority")
        if push_type == "background" and headers.get("apns-priority", "10") != "5":  # Apple: background pushes at 5 only
            return refuse(400, "BadPriority")
        if not body:
            return refuse(400, "PayloadEmpty")
        if len(body) > 4096:
            return refuse(413, "PayloadTooLarge")
        try:
            payload = json.loads(body)
        except ValueError:
            return refuse(400, "BadMessage")
        if not isinstance(payload, dict) or not isinstance(payload.get("aps"), dict):
            return refuse(400, "BadMessage")
        rec.payload = payload
        queued = self.answers.get(rec.token)
        if queued:
            status, reason, extra = queued.pop(0)
            return refuse(status, reason, extra)
        if rec.token not in self.tokens:
            return refuse(400, "BadDeviceToken")
        return 200, None, {}, rec


class _H2Protocol(asyncio.Protocol):
    def __init__(self, service: ApnsService):
        self.service = service
        self.conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
        self.streams: dict[int, tuple[dict, bytearray]] = {}
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport
        self.conn.initiate_connection()
        transport.write(self.conn.data_to_send())

    def data_received(self, data: bytes):
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError:  # e.g. an HTTP/1.1 request: not HTTP/2's preface
            self.service.http1_refused += 1
            self.transport.write(self.conn.data_to_send())
            self.transport.close()
            return
        for event in events:
            if isinstance(event, h2.events.RequestReceived):
                self.streams[event.stream_id] = (dict(event.headers), bytearray())
            elif isinstance(event, h2.events.DataReceived):
                self.streams[event.stream_id][1].extend(event.data)
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                self.respond(event.stream_id)
            elif isinstance(event, h2.events.ConnectionTerminated):
                self.transport.close()
        self.transport.write(self.conn.data_to_send())

    def respond(self, stream_id: int) -> None:
        headers, body = self.streams.pop(stream_id)
        status, reason, extra, received = self.service.check(headers, bytes(body))
        self.service.received.append(received)
        out = [(":status", str(status)), ("apns-id", str(uuid.uuid4()).upper())] + list(extra.items())
        if reason is None:
            self.conn.send_headers(stream_id, out, end_stream=True)
            return
        data = json.dumps({"reason": reason}).encode()
        self.conn.send_headers(stream_id, out + [("content-type", "application/json"), ("content-length", str(len(data)))])
        self.conn.send_data(stream_id, data, end_stream=True)
