"""The chat socket's protocol as an AsyncAPI 3.0 document, generated from the models that
parse what clients send (`sheda_rt.chat.frames.INBOUND`, the socket's dispatch table) and
the models of what the server sends (`sheda_rt.realtime.protocol`). Served at
GET /api/v1/asyncapi.json beside the OpenAPI document of the REST routes.

AsyncAPI describes the application's side: the server *receives* client frames and
*sends* server frames. One channel, the socket (`/api/v1/chat/ws`); one message per
frame model; one operation per message, and each client frame's operation names the
frames that answer it on the same socket (`reply`). Payload schemas are pydantic's JSON
Schema, moved to `components.schemas` like the OpenAPI document's (pydantic writes
nothing for these models that JSON Schema draft 07, AsyncAPI's schema dialect, lacks;
tests/test_asyncapi.py checks that too).
"""
from __future__ import annotations

import copy
import inspect
import re

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from sheda_rt.chat.frames import INBOUND
from sheda_rt.realtime.protocol import OUTBOUND, REPLIES, SOCKET_FRAMES, frame_types, is_durable

SOCKET_PATH = "/api/v1/chat/ws"
CHANNEL = "chat"
_REF = "#/components/schemas/{model}"

_DESCRIPTION = """The chat socket of Sheda RT: chat, read receipts, typing, presence, the resumable \
event stream, channels of things and every domain event, on one WebSocket. Frames are JSON text \
objects with a `type` (a client's message frame may leave it out: the seed's \
`{"receiver_id", "message"}`).

- Connect with `?token=<access token>`, or the subprotocols `["bearer", <token>]`. A bad, expired \
or revoked token closes with 4401, a deactivated user with 4403. A user who already holds \
WS_MAX_SOCKETS_PER_USER sockets and event streams on the server process is refused before the \
upgrade: HTTP 429 `{"detail", "code": "too_many_sockets", "retry_after"}` with Retry-After.
- Durable frames carry `seq`, their position in your event stream (messages, read receipts, \
notifications, `appointment.*`, `contract.*`, `builder.*`, `project.*`, `lead.created`): keep the \
highest and after a reconnect send `{"type": "sync", "after_seq": <it>}`. The other frames are \
ephemeral (no `seq`, never replayed).
- A refused frame gets an `error` frame and the socket stays open. Close codes: 1007 a text frame \
that is not UTF-8, 1008 persistent abuse of the rate limit, 1009 frame over 64 KiB, 1013 slow \
consumer, 1001 server shutdown, 4000 \
closed by an administrator, 4401 token expired or logged out.
- Fields are added over time, never renamed or dropped: ignore the ones you do not know.

The same frames reach `GET /api/v1/events/stream` (Server-Sent Events) and `GET /api/v1/events` \
(REST replay). REST routes: `/api/v1/openapi.json`."""


#: For client frame models that carry no docstring of their own (frames.py).
_CLIENT_FALLBACK = {
    "read": "Mark the peer's messages to me as read, up to a message id: the peer's sockets get a read event.",
    "typing": "Tell the receiver you are typing (never stored; at most one per second per conversation is passed on).",
    "ping": "Keep-alive: answered with pong.",
}


def _text(model: type[BaseModel], kind: str, sent: bool) -> str:
    # The model's own docstring (not one inherited from a REST body model).
    own = model.__dict__.get("__doc__")
    if own:
        return inspect.cleandoc(own).replace("\n", " ")
    return _CLIENT_FALLBACK.get(kind, "") if not sent else ""


def _summary(text: str, kind: str) -> str:
    first = text.split(". ", 1)[0].rstrip(".")
    return first + "." if first else f"Frame `{kind}`."


def _message(model: type[BaseModel], payload: dict, sent: bool) -> dict:
    kinds = frame_types(model)
    text = _text(model, kinds[0], sent)
    message = {
        "name": model.__name__,
        "title": ", ".join(kinds),
        "summary": _summary(text, kinds[0]),
        "contentType": "application/json",
        "payload": payload,
    }
    if text:
        message["description"] = text
    if sent:
        message["tags"] = [{"name": "durable" if is_durable(model) else "ephemeral"}]
    return message


def _op_key(prefix: str, name: str) -> str:
    return prefix + "_" + re.sub(r"[^A-Za-z0-9_]+", "_", name)


def build_asyncapi(version: str = "1.0.0") -> dict:
    """The document, without `servers` (those depend on the host asked: `with_server`)."""
    inbound = list(dict.fromkeys(INBOUND.values()))
    outbound = list(SOCKET_FRAMES)
    refs, defs = models_json_schema([(m, "validation") for m in inbound + outbound], ref_template=_REF)
    schemas = dict(defs.get("$defs", {}))
    messages: dict = {}
    names: dict[type, str] = {}
    for model in inbound + outbound:
        sent = model in outbound
        name = refs[(model, "validation")]["$ref"].rsplit("/", 1)[1]
        names[model] = name
        messages[name] = _message(model, refs[(model, "validation")], sent)

    def in_channel(model: type) -> dict:
        return {"$ref": f"#/channels/{CHANNEL}/messages/{names[model]}"}

    operations: dict = {}
    for kind, model in INBOUND.items():
        answers = [m for t in ("error", *REPLIES.get(kind, ())) for m in OUTBOUND.get(t, ())]
        operations[_op_key("receive", kind)] = {
            "action": "receive",
            "channel": {"$ref": f"#/channels/{CHANNEL}"},
            "title": f"Client sends {kind}",
            "summary": _summary(_text(model, kind, False), kind),
            "messages": [in_channel(model)],
            "reply": {"channel": {"$ref": f"#/channels/{CHANNEL}"},
                      "messages": [in_channel(m) for m in dict.fromkeys(answers)]},
        }
    for model in outbound:
        operations[_op_key("send", names[model])] = {
            "action": "send",
            "channel": {"$ref": f"#/channels/{CHANNEL}"},
            "title": f"Server sends {', '.join(frame_types(model))}",
            "summary": _summary(_text(model, frame_types(model)[0], True), frame_types(model)[0]),
            "messages": [in_channel(model)],
        }
    return {
        "asyncapi": "3.0.0",
        "info": {"title": "Sheda RT chat socket", "version": version, "description": _DESCRIPTION},
        "defaultContentType": "application/json",
        "channels": {
            CHANNEL: {
                "address": SOCKET_PATH,
                "title": "The chat socket",
                "description": "One socket per signed-in device; everything addressed to the user arrives on it.",
                "messages": {name: {"$ref": f"#/components/messages/{name}"} for name in messages},
                "bindings": {"ws": {"method": "GET", "bindingVersion": "0.1.0", "query": {
                    "type": "object",
                    "properties": {"token": {"type": "string", "description": "An access token (or send the "
                                                                               "subprotocols bearer, <token>)"}}}}},
            },
        },
        "operations": operations,
        "components": {
            "schemas": schemas,
            "messages": messages,
            "securitySchemes": {
                "token": {"type": "httpApiKey", "name": "token", "in": "query",
                          "description": "An access token (JWT) as the `token` query parameter"},
                "bearerSubprotocol": {"type": "httpApiKey", "name": "Sec-WebSocket-Protocol", "in": "header",
                                      "description": "Browsers: the subprotocols [\"bearer\", <access token>]"},
            },
        },
    }


def with_server(document: dict, host: str, protocol: str = "ws") -> dict:
    """The document with the server a client asked it from (`host` as in its Host header)."""
    served = copy.copy(document)
    served["servers"] = {"sheda": {
        "host": host, "protocol": protocol, "description": "This server",
        "security": [{"$ref": "#/components/securitySchemes/token"},
                     {"$ref": "#/components/securitySchemes/bearerSubprotocol"}],
    }}
    return served
