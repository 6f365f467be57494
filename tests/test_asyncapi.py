"""The socket's machine-readable description (issue 13 §6): GET /api/v1/asyncapi.json is an
AsyncAPI 3.0 document generated from the models that parse client frames (frames.INBOUND)
and the models of server frames (sheda_rt/realtime/protocol.py). The scenario below runs a
real server through every kind of frame it can send without Redis (chat, receipts, typing,
presence, sync in both forms and its reset, channels, token renewal, refusals of every
flavour, notifications, appointment/contract/builder/project/lead events, announcements)
and holds each frame it received to the model of its type and to the served document's
schema: an undocumented type, a missing, mistyped or undocumented field fails the test, so
the document cannot drift from the wire. No AsyncAPI JSON schema ships in an installed
package here (and nothing is downloaded at test time), so the document's structure is
checked by hand against the 3.0 specification's required fields and reference rules.
"""
from __future__ import annotations

import json
import re

import pytest
from jsonschema import Draft7Validator
from pydantic import BaseModel, ValidationError
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

from sheda_rt.appointments.service import AppointmentService
from sheda_rt.chat.frames import INBOUND
from sheda_rt.contracts.service import ContractService
from sheda_rt.realtime import protocol
from tests.listing_helpers import create_property
from tests.test_builders import create_project
from tests.test_event_stream import every_kind_of_event

DOC = "/api/v1/asyncapi.json"
NAME = re.compile(r"^[a-zA-Z0-9.\-_]+$")  # keys of channels, operations and components (AsyncAPI 3.0)
DOC_URI = "urn:sheda:asyncapi"


@pytest.fixture
def settings_overrides():
    # Small limits, so one scenario reaches too_many_subscriptions and rate_limited. The client's
    # socket sends four messages (k1-k4) before its outbox of eight: a burst of 4 lets the four
    # through however fast the replies come back (no refill needed), and the eight always find
    # at most 4 tokens (at least 4 are refused). With 3, k4 was refused whenever the scenario ran
    # faster than the refill (5/s). The REST sends of every_kind_of_event draw from the same
    # per-user budget and wait out a 429's Retry-After, as a client would.
    return {"ws_max_subscriptions": 1, "ws_rate_burst": 4}


# ---- checking frames ---------------------------------------------------------------------------
def undocumented(value, path: str = "") -> list[str]:
    """Fields a validated frame carries that its models do not name, at any depth (the models
    allow extras at run time, as clients must; the test is what keeps them complete)."""
    found: list[str] = []
    if isinstance(value, BaseModel):
        found += [path + key for key in (value.__pydantic_extra__ or {})]
        for name in type(value).model_fields:
            found += undocumented(getattr(value, name), f"{path}{name}.")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            found += undocumented(item, f"{path}{i}.")
    elif isinstance(value, dict):
        for key, item in value.items():
            found += undocumented(item, f"{path}{key}.")
    return found


def document_validators(doc: dict) -> dict[str, list[Draft7Validator]]:
    """type -> validators of the served document's payload schemas of the messages the server sends."""
    registry = Registry().with_resource(DOC_URI, Resource(contents=doc, specification=DRAFT7))
    by_type: dict[str, list[Draft7Validator]] = {}
    for op in doc["operations"].values():
        if op["action"] != "send":
            continue
        for ref in op["messages"]:
            message = resolve(doc, resolve(doc, ref["$ref"])["$ref"])
            pointer = message["payload"]["$ref"]
            schema = resolve(doc, pointer)
            kind = schema["properties"]["type"]
            validator = Draft7Validator({"$ref": DOC_URI + pointer}, registry=registry)
            for value in ([kind["const"]] if "const" in kind else kind["enum"]):
                by_type.setdefault(value, []).append(validator)
    return by_type


def check_frame(frame: dict, validators: dict) -> tuple[str | None, list[str]]:
    """(the model name it fits, problems): against protocol's models, then the served document."""
    text = json.dumps(frame)
    try:
        parsed = protocol.parse_outbound(text)
    except protocol.UnknownFrame as exc:
        return None, [f"{frame.get('type')!r}: {exc}"]
    except ValidationError as exc:
        return None, [f"{frame.get('type')!r} does not fit its model: {exc}"]
    problems = [f"{frame['type']!r} carries undocumented {field}" for field in undocumented(parsed)]
    if not any(v.is_valid(frame) for v in validators.get(frame["type"], ())):
        errors = [str(e.message) for v in validators.get(frame["type"], ()) for e in v.iter_errors(frame)][:3]
        problems.append(f"{frame['type']!r} does not fit the served document: {errors or 'no message of this type'}")
    return type(parsed).__name__, problems


# ---- the document ------------------------------------------------------------------------------
def resolve(doc: dict, ref: str):
    assert ref.startswith("#/"), f"not a local reference: {ref}"
    node = doc
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        assert isinstance(node, dict) and part in node, f"{ref} does not resolve"
        node = node[part]
    return node


def refs_in(node) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [r for v in node.values() for r in refs_in(v)]
    if isinstance(node, list):
        return [r for v in node for r in refs_in(v)]
    return []


def type_values(schema: dict) -> set[str]:
    kind = schema["properties"]["type"]
    return {kind["const"]} if "const" in kind else set(kind["enum"])


async def test_the_served_document_is_asyncapi_3_of_the_socket(sheda):
    r = await sheda.api.get(DOC)
    assert r.status == 200 and r.headers["Content-Type"].startswith("application/json"), r
    doc = r.json
    # Root: the 3.0 required fields.
    assert doc["asyncapi"] == "3.0.0"
    assert isinstance(doc["info"]["title"], str) and isinstance(doc["info"]["version"], str)
    assert doc["defaultContentType"] == "application/json"
    assert set(doc) <= {"asyncapi", "id", "info", "servers", "defaultContentType", "channels", "operations", "components"}
    # The server the client asked: this host, over ws, with the socket's two ways to send a token.
    host = sheda.base_url.split("://", 1)[1]
    server = doc["servers"]["sheda"]
    assert server["host"] == host and server["protocol"] == "ws"
    schemes = doc["components"]["securitySchemes"]
    assert [resolve(doc, s["$ref"]) for s in server["security"]] == [schemes["token"], schemes["bearerSubprotocol"]]
    assert schemes["token"] == {**schemes["token"], "type": "httpApiKey", "in": "query", "name": "token"}
    # One channel: the socket's address.
    assert list(doc["channels"]) == ["chat"]
    channel = doc["channels"]["chat"]
    assert channel["address"] == "/api/v1/chat/ws"
    assert channel["bindings"]["ws"]["query"]["properties"]["token"]["type"] == "string"
    # Every reference resolves, every name is one AsyncAPI allows.
    for ref in refs_in(doc):
        resolve(doc, ref)
    for section in (doc["channels"], doc["operations"], doc["components"]["messages"], doc["components"]["schemas"]):
        assert all(NAME.match(k) for k in section), [k for k in section if not NAME.match(k)]
    # Channel messages are the components' messages; each has a JSON payload schema in components.
    for name, ref in channel["messages"].items():
        assert ref == {"$ref": f"#/components/messages/{name}"}
        message = doc["components"]["messages"][name]
        assert message["contentType"] == "application/json" and message["payload"]["$ref"].startswith("#/components/schemas/")
    assert set(channel["messages"]) == set(doc["components"]["messages"])
    # Operations: send or receive on the channel, naming messages of that channel (3.0 requires it).
    received, sent = {}, {}
    for key, op in doc["operations"].items():
        assert op["action"] in ("send", "receive") and op["channel"] == {"$ref": "#/channels/chat"}, key
        assert op["messages"], key
        for ref in op["messages"] + op.get("reply", {}).get("messages", []):
            assert ref["$ref"].startswith("#/channels/chat/messages/"), (key, ref)
        for ref in op["messages"]:
            schema = resolve(doc, resolve(doc, resolve(doc, ref["$ref"])["$ref"])["payload"]["$ref"])
            for kind in type_values(schema):
                (sent if op["action"] == "send" else received).setdefault(kind, []).append(schema)
    # Every client frame the socket parses is a receive operation, its payload exactly the
    # schema of the model that parses it; every server frame is a send operation.
    assert set(received) == set(INBOUND)
    for kind, model in INBOUND.items():
        ours = model.model_json_schema(ref_template="#/components/schemas/{model}")
        ours.pop("$defs", None)
        assert received[kind] == [ours], kind
        assert set(protocol.REPLIES) >= {kind}, f"what answers {kind!r} is not documented (protocol.REPLIES)"
    assert set(sent) == set(protocol.OUTBOUND)
    assert [s["title"] for s in sent["sync.done"]] == ["SyncDoneMessages", "SyncDoneEvents"]
    ping = doc["operations"]["receive_ping"]["reply"]["messages"]
    assert {"$ref": "#/channels/chat/messages/PongFrame"} in ping
    # Payload schemas are JSON Schema draft 07 (AsyncAPI's default schema format): valid
    # against its meta-schema and free of later drafts' keywords.
    later = {"prefixItems", "$defs", "dependentRequired", "dependentSchemas", "unevaluatedProperties", "$anchor", "$dynamicRef"}
    for name, schema in doc["components"]["schemas"].items():
        Draft7Validator.check_schema(schema)
        assert not later & {k for node in walk(schema) for k in node}, name
    # Durable frames (seq) and ephemeral ones are told apart.
    tags = {name: {t["name"] for t in m.get("tags", ())} for name, m in doc["components"]["messages"].items()}
    assert tags["MessageEvent"] == {"durable"} and tags["TypingEvent"] == {"ephemeral"}
    # The OpenAPI document points to it.
    assert DOC in (await sheda.api.get("/api/v1/openapi.json")).json["info"]["description"]


def walk(node):
    if isinstance(node, dict):
        yield node
        for v in node.values():
            yield from walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from walk(v)


def test_every_domain_event_kind_is_documented():
    """The appointment and contract services announce one event per transition they know:
    each is a documented frame type (the scenario cannot walk every transition)."""
    assert set(protocol.frame_types(protocol.AppointmentEvent)) == {f"appointment.{k}" for k in AppointmentService._TEXT}
    assert set(protocol.frame_types(protocol.ContractEvent)) == {f"contract.{k}" for k in ContractService._TEXT}


# ---- the scenario --------------------------------------------------------------------------------
async def test_every_frame_a_real_server_sends_fits_the_document(sheda):
    doc = (await sheda.api.get(DOC)).json
    validators = document_validators(doc)
    agent = await sheda.signup("agent")
    client = await sheda.signup("client")
    admin = await sheda.admin()
    a = await sheda.ws(agent.token)
    c = await sheda.ws(client.token)
    c2 = await sheda.ws(client.token)  # the client's second device
    sockets = [a, c, c2]

    # Chat: a keyed message (ack, delivered to the agent and the client's other device), the
    # seed's frame without type or key (ack with client_msg_id null), one tied to a listing.
    await c.send({"type": "message", "receiver_id": agent.id, "message": "Is it still available?", "client_msg_id": "k1"})
    first = await c.wait_type("ack")
    await a.wait_type("message", id=first["id"])
    await c2.wait_type("message", id=first["id"])
    await a.send({"receiver_id": client.id, "message": "Yes"})
    second = await a.wait_type("ack")
    assert second["client_msg_id"] is None
    await c.wait_type("message", id=second["id"])
    prop = await create_property(sheda, agent)
    await c.send({"receiver_id": agent.id, "message": "About this one", "property_id": prop["id"], "client_msg_id": "k2"})
    await a.wait_for(lambda f: f.get("type") == "message" and f.get("property_id") == prop["id"])
    # A read receipt, typing.
    await a.send({"type": "read", "other_user_id": client.id, "up_to": first["id"]})
    await c.wait_type("read")
    await c.send({"type": "typing", "receiver_id": agent.id})
    await a.wait_type("typing")
    # Presence: the client's devices go away, then one comes back.
    c2.close()
    c.close()
    await a.wait_type("presence", online=False)
    c = await sheda.ws(client.token)
    sockets.append(c)
    await a.wait_type("presence", online=True)
    await c.send({"type": "ping"})
    await c.wait_type("pong")
    # Sync: the message-id form, the event-stream form, and a position that cannot be resumed.
    await c.send({"type": "sync", "since": 0})
    await c.wait_for(lambda f: f.get("type") == "sync.done" and "since" in f)
    await c.send({"type": "sync", "after_seq": 0})
    await c.wait_for(lambda f: f.get("type") == "sync.done" and "after_seq" in f)
    await c.send({"type": "sync", "after_seq": 10 ** 15})
    await c.wait_type("sync.reset", reason="unknown_position")
    expected = {"ack", "error", "pong", "sync.done", "sync.reset", "message", "read", "typing", "presence", "notification",
                "appointment.booked", "appointment.confirmed", "contract.created", "contract.payment_sent", "contract.confirmed",
                "builder.verified", "builder.unverified", "project.published", "lead.created"}
    error_fields = {"client_msg_id", "errors", "retry_after"}
    # The scenario sends what the socket parses (frames.INBOUND) when it runs.
    if "subscribe" in INBOUND:
        # Channels: subscribed, an update, the socket's limit, an unknown channel, unsubscribed.
        await c.send({"type": "subscribe", "channel": f"property:{prop['id']}"})
        await c.wait_type("subscribed")
        assert (await sheda.api.patch(f"/api/v1/properties/{prop['id']}", {"price": "2600000.00"}, token=agent.token)).status == 200
        await c.wait_type("property.updated", property_id=prop["id"])
        other = await create_property(sheda, agent, title="Another flat")
        await c.send({"type": "subscribe", "channel": f"property:{other['id']}"})
        await c.wait_type("error", code="too_many_subscriptions")
        await c.send({"type": "subscribe", "channel": "galaxy:1"})
        await c.wait_type("error", code="unknown_channel")
        await c.send({"type": "unsubscribe", "channel": f"property:{prop['id']}"})
        await c.wait_type("unsubscribed")
        expected |= {"subscribed", "unsubscribed", "property.updated"}
        error_fields |= {"channel", "limit"}
    # A fresh token for the client (renewed on the socket when it can be).
    login = await sheda.api.post("/api/v1/auth/login", {"username": client.username, "password": client.password})
    assert login.status == 200, login
    if "auth" in INBOUND:
        await c.send({"type": "auth", "token": login.json["access_token"]})
        await c.wait_type("auth.ok")
        await c.send({"type": "auth", "token": agent.token})
        await c.wait_type("error", code="invalid_token", reason="other_user")
        expected.add("auth.ok")
        error_fields.add("reason")
    # Refusals: not JSON, an unknown type, a mistyped field (with the frame's key), a message to oneself.
    await c.send("{not json")
    await c.wait_type("error", code="invalid_json")
    await c.send({"type": "teleport"})
    await c.wait_type("error", code="unknown_type")
    await c.send({"receiver_id": "2", "message": "typed wrong", "client_msg_id": "k3"})
    await c.wait_type("error", code="validation_error", client_msg_id="k3")
    await c.send({"receiver_id": client.id, "message": "note to self", "client_msg_id": "k4"})
    await c.wait_type("error", code="self_message", client_msg_id="k4")
    # Domain events: notifications, appointment.*, contract.* (both parties' sockets).
    await every_kind_of_event(sheda, agent, client)
    await c.wait_type("contract.confirmed", timeout=10)
    await a.wait_type("contract.confirmed", timeout=10)
    # A lead for the agent.
    r = await sheda.api.post("/api/v1/inquiries", {"property_id": prop["id"], "name": "Ngozi", "email": "ngozi@example.com",
                                                   "message": "Can I see it on Saturday?"})
    assert r.status == 201, r
    await a.wait_type("lead.created")
    # A builder verified, publishing a project, then unverified.
    builder = await sheda.signup("builder")
    b = await sheda.ws(builder.token)
    sockets.append(b)
    assert (await sheda.api.patch(f"/api/v1/admin/builders/{builder.id}", {"verified": True}, token=admin.token)).status == 200
    await b.wait_type("builder.verified")
    project = await create_project(sheda, builder)
    assert (await sheda.api.post(f"/api/v1/projects/{project['id']}/publish", token=builder.token)).status == 200
    await b.wait_type("project.published")
    assert (await sheda.api.patch(f"/api/v1/admin/builders/{builder.id}", {"verified": False}, token=admin.token)).status == 200
    await b.wait_type("builder.unverified")
    # Announcements, to everyone and to one user type (where the server offers the route).
    if "/api/v1/admin/broadcast" in (await sheda.api.get("/api/v1/openapi.json")).json["paths"]:
        assert (await sheda.api.post("/api/v1/admin/broadcast", {"message": "Maintenance at 2am"}, token=admin.token)).status == 202
        await c.wait_type("announcement", message="Maintenance at 2am")
        assert (await sheda.api.post("/api/v1/admin/broadcast", {"message": "Agents: new dashboard", "user_type": "agent"},
                                     token=admin.token)).status == 202
        await a.wait_type("announcement", user_type="agent")
        expected.add("announcement")
    # An outbox flushed at once: over the burst, rate_limited with retry_after.
    keys = [f"burst{i}" for i in range(8)]
    for key in keys:
        await c.send({"receiver_id": agent.id, "message": "queued while offline", "client_msg_id": key})
    await c.wait_for(lambda f: len([g for g in c.frames if g.get("client_msg_id") in keys and g["type"] in ("ack", "error")]) == 8)
    await c.wait_type("error", code="rate_limited")

    # Every frame every socket received, and the REST replay's items (the same frames).
    frames = [f for ws in sockets for f in ws.frames]
    for user in (client, agent):
        token = login.json["access_token"] if user is client else user.token
        replay = await sheda.api.get("/api/v1/events", params={"after_seq": 0, "limit": 500}, token=token)
        assert replay.status == 200, replay
        frames += replay.json["items"]
    problems, shapes = [], set()
    for frame in frames:
        shape, wrong = check_frame(frame, validators)
        problems += wrong
        shapes.add(shape)
    assert not problems, "\n".join(dict.fromkeys(problems))
    seen = {f["type"] for f in frames}
    assert seen >= expected, expected - seen
    assert {"SyncDoneMessages", "SyncDoneEvents"} <= shapes
    errors = [f for f in frames if f["type"] == "error"]
    assert error_fields <= {k for f in errors for k in f}
    for ws in sockets:
        ws.close()


async def test_an_undocumented_frame_fails_the_check(sheda):
    """The check above can fail: a type the protocol does not describe, a missing field, a
    field the model does not name, a null where a value is promised."""
    doc = (await sheda.api.get(DOC)).json
    validators = document_validators(doc)
    good = {"type": "typing", "user_id": 1, "sender_id": 1, "receiver_id": 2}
    assert check_frame(good, validators) == ("TypingEvent", [])
    assert check_frame({"type": "teleported"}, validators)[1]
    assert check_frame({k: v for k, v in good.items() if k != "receiver_id"}, validators)[1]
    assert check_frame({**good, "mood": "excited"}, validators)[1]
    assert check_frame({**good, "seq": 4}, validators)[1]  # an ephemeral frame never carries a position
    ack = {"type": "ack", "client_msg_id": None, "id": 3, "created_at": "2025-10-16T10:00:00.000Z"}
    assert check_frame(ack, validators) == ("AckFrame", [])
    assert check_frame({**ack, "created_at": "2025-10-16 10:00:00"}, validators)[1]
    message = {"type": "message", "id": 3, "sender_info": {"id": 1, "username": "ada", "avatar_url": None}, "receiver_id": 2,
               "message": "hi", "created_at": "2025-10-16T10:00:00.000Z", "seq": 3}
    assert check_frame(message, validators) == ("MessageEvent", [])
    assert check_frame({**message, "property_id": None}, validators)[1]  # absent when unset, never null
    assert check_frame({k: v for k, v in message.items() if k != "seq"}, validators)[1]  # durable: seq is required
