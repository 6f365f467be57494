"""The served OpenAPI document as a typed client sees it: valid 3.1, every success body typed,
every status a route really answers documented; real responses of the real routes match it
field for field; every response (docs, static files, media, 404s) carries X-Request-ID; media
URLs are absolute under PUBLIC_BASE_URL."""
from __future__ import annotations

import copy
import re

import jsonschema
import pytest
from openapi_spec_validator import validate as validate_openapi
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from tests.listing_helpers import book, create_property, iso, listing, next_slot, open_window, set_bank
from tests.support import PNG_1PX, multipart

BASE = "https://api.example.com"
JSON_BODY_ERRORS = {"400", "413", "415", "422"}


async def served_document(sheda) -> dict:
    r = await sheda.api.get("/api/v1/openapi.json")
    assert r.status == 200, r
    return r.json


def operations(doc: dict):
    for path, item in doc["paths"].items():
        for method, op in item.items():
            yield path, method, op


class Conformance:
    """Checks real responses against the served document. Every object schema that lists its
    properties is closed (additionalProperties: false) for the check, so a field the server
    sends but the document does not name fails too, not only a missing or mistyped one."""

    def __init__(self, doc: dict):
        self.doc = doc
        schemas = copy.deepcopy(doc["components"]["schemas"])
        for name, schema in schemas.items():
            if name != "Error":  # error bodies may carry extras (request_id, retry_after)
                self._close(schema)
        self.root = {"components": {"schemas": schemas}}
        self.registry = Registry().with_resource("urn:doc", Resource.from_contents(self.root, default_specification=DRAFT202012))
        self.seen: set[tuple[str, str, str]] = set()

    def _close(self, schema):
        if isinstance(schema, dict):
            if "properties" in schema and schema.get("additionalProperties", True) is True:
                schema["additionalProperties"] = False
            for value in schema.values():
                self._close(value)
        elif isinstance(schema, list):
            for value in schema:
                self._close(value)

    def check(self, resp, method: str, template: str, status: int | None = None):
        """`resp` (a tests.support.Response) is documented for (method, template) with its status,
        and its JSON body matches that status's schema. Returns the body."""
        if status is not None:
            assert resp.status == status, (method, template, resp)
        op = self.doc["paths"][template][method.lower()]
        answer = op["responses"].get(str(resp.status))
        assert answer is not None, f"{method} {template} answered {resp.status}, not documented: {resp!r}"
        assert resp.headers.get("X-Request-ID"), f"{method} {template}: no X-Request-ID"
        self.seen.add((method.lower(), template, str(resp.status)))
        content = answer.get("content")
        if not content:
            assert not resp.body, f"{method} {template} {resp.status} documents no body but sent {resp.body[:200]!r}"
            return None
        schema = content["application/json"]["schema"]
        schema = {"$ref": "urn:doc#" + schema["$ref"][1:]} if "$ref" in schema else self._rebase(copy.deepcopy(schema))
        body = resp.json
        errors = sorted(jsonschema.Draft202012Validator(schema, registry=self.registry).iter_errors(body), key=str)
        assert not errors, f"{method} {template} {resp.status}: body does not match the document:\n" + "\n".join(
            f"  at {list(e.absolute_path)}: {e.message[:300]}" for e in errors[:10])
        return body

    def _rebase(self, schema):
        if isinstance(schema, dict):
            if isinstance(schema.get("$ref"), str) and schema["$ref"].startswith("#/"):
                schema["$ref"] = "urn:doc#" + schema["$ref"][1:]
            for value in schema.values():
                self._rebase(value)
        elif isinstance(schema, list):
            for value in schema:
                self._rebase(value)
        return schema


# ---- the document -------------------------------------------------------------------------
def typed(schema: dict) -> bool:
    """A model ($ref), a choice of models, or an array of models: not a bare object."""
    if "$ref" in schema:
        return True
    if "anyOf" in schema or "oneOf" in schema:
        return all(typed(s) for s in schema.get("anyOf", schema.get("oneOf")))
    if schema.get("type") == "array":
        return typed(schema.get("items", {}))
    return False


async def test_served_document_is_valid_openapi_31_with_every_success_typed(sheda):
    doc = await served_document(sheda)
    assert doc["openapi"].startswith("3.1")
    validate_openapi(doc)
    untyped = []
    for path, method, op in operations(doc):
        for status, answer in op["responses"].items():
            if not status.startswith("2"):
                continue
            for media, body in (answer.get("content") or {}).items():
                if media == "application/json" and not typed(body["schema"]):
                    untyped.append(f"{method.upper()} {path} {status}: {body['schema']}")
            if status != "204" and path.startswith("/api"):
                assert answer.get("content"), f"{method.upper()} {path} {status} documents no body"
    assert not untyped, "success bodies without a real schema:\n" + "\n".join(untyped)

    schemas = doc["components"]["schemas"]
    # Lists are documented as they are: pages for most, bare arrays where the contract keeps them.
    page = doc["paths"]["/api/v1/properties"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    page_schema = schemas[page["$ref"].rsplit("/", 1)[1]]
    assert set(page_schema["required"]) >= {"items", "next_cursor"}
    for path in ("/api/v1/chat/chat-history/{other_user_id}", "/api/v1/agents/{agent_id}/availability", "/api/v1/availability"):
        assert doc["paths"][path]["get"]["responses"]["200"]["content"]["application/json"]["schema"]["type"] == "array", path
    # /metrics is Prometheus text, not JSON.
    metrics = doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert list(metrics) == ["text/plain"]
    # The rules the server enforces are in the schemas: patterns, lengths, bounds, enums.
    prop = schemas["PropertyOut"]["properties"]
    assert prop["price"]["pattern"] and prop["created_at"]["format"] == "date-time"
    assert schemas["PropertyCreate"]["properties"]["title"]["maxLength"] == 200
    assert schemas["OtpRequest"]["properties"]["otp"]["pattern"]
    assert schemas["WindowOut"]["properties"]["weekday"]["enum"][0] == "MONDAY"
    assert schemas["WindowCreate"]["properties"]["start_time"]["pattern"] and schemas["RegisterRequest"]["properties"]["username"]["pattern"]
    profile = schemas["ProfileUpdate"]["properties"]  # each field as the per-type model validates it
    assert profile["bio"]["anyOf"][0]["maxLength"] == 2000 and profile["whatsapp"]["pattern"] and "enum" in str(profile["preferred_property_type"])
    user_id = doc["paths"]["/api/v1/users/{user_id}"]["get"]["parameters"][0]["schema"]
    assert user_id["minimum"] == 1 and user_id["maximum"] >= 10**17


async def test_every_route_documents_the_statuses_it_can_answer(sheda):
    doc = await served_document(sheda)
    missing = []
    for path, method, op in operations(doc):
        statuses = set(op["responses"])
        want = set()
        if "requestBody" in op:
            want |= JSON_BODY_ERRORS
        if any(p["in"] == "query" for p in op.get("parameters", [])):
            want.add("422")
        if op.get("security"):
            want |= {"401", "403"}
        if any(p["in"] == "path" for p in op.get("parameters", [])):
            want.add("404")
        if path.startswith("/api"):
            want.add("503")
        for status in sorted(want - statuses):
            missing.append(f"{method.upper()} {path}: {status}")
        for status, answer in op["responses"].items():
            assert "X-Request-ID" in answer.get("headers", {}), f"{method.upper()} {path} {status}: X-Request-ID not documented"
            if status in ("429", "503") and path.startswith("/api"):
                assert "Retry-After" in answer["headers"], f"{method.upper()} {path} {status}: Retry-After not documented"
            if not status.startswith("2") and path.startswith("/api"):
                # The error body; a 422 always names its fields and a 429 its wait.
                name = {"422": "ValidationFailure", "429": "RateLimitedError"}.get(status, "Error")
                assert answer["content"]["application/json"]["schema"] == {"$ref": f"#/components/schemas/{name}"}, (path, status)
    assert not missing, "statuses the server answers but the document leaves out:\n" + "\n".join(missing)

    paths = doc["paths"]
    # The idempotent replay of a chat message is a 200 with the same body as the 201.
    chats = paths["/api/v1/chats"]["post"]["responses"]
    assert chats["200"]["content"] == chats["201"]["content"]
    # Rate limits and refusals that only some routes have.
    assert "429" in paths["/api/v1/auth/login"]["post"]["responses"]
    assert "429" in paths["/api/v1/auth/send-otp"]["post"]["responses"]
    assert {"400", "413", "415", "422"} <= set(paths["/api/v1/users/me/avatar"]["put"]["responses"])
    assert "application/x-www-form-urlencoded" in paths["/api/v1/auth/login"]["post"]["requestBody"]["content"]
    # Readiness answers 503 with its own body (which check failed), not the error body.
    ready = paths["/health/ready"]["get"]["responses"]
    assert ready["503"]["content"] == ready["200"]["content"]


# ---- X-Request-ID everywhere ----------------------------------------------------------------
async def test_every_response_carries_a_request_id_static_docs_and_404s_included(sheda):
    user = await sheda.signup("client")
    body, headers = multipart("file", "me.png", PNG_1PX, "image/png")
    avatar = (await sheda.api.put("/api/v1/users/me/avatar", body=body, headers=headers, token=user.token)).json["avatar_url"]
    for path, status in [("/docs", 200), ("/docs/", 200), ("/docs/static/swagger-ui-bundle.js", 200), ("/docs/static/swagger-ui.css", 200),
                         ("/docs/static/no-such-file.js", 404), (avatar, 200), ("/media/avatars/nothing-here.png", 404),
                         ("/no/such/route", 404), ("/api/v1/nothing", 404), ("/health", 200), ("/health/ready", 200),
                         ("/metrics", 200), ("/api/v1/openapi.json", 200)]:
        r = await sheda.api.get(path)
        assert r.status == status, (path, r)
        assert re.fullmatch(r"[0-9a-f]{32}", r.headers.get("X-Request-ID", "")), (path, dict(r.headers))
        # A client's own id is echoed, so it can find its request in the server's log.
        mine = await sheda.api.get(path, headers={"X-Request-ID": "client-trace-42"})
        assert mine.headers.get("X-Request-ID") == "client-trace-42", path
    r = await sheda.api.post("/no/such/route", {"a": 1})
    assert r.status == 404 and r.headers.get("X-Request-ID")
    r = await sheda.api.request("PATCH", "/docs")
    assert r.status == 405 and r.headers.get("X-Request-ID")
    # The chat socket's upgrade answer too.
    ws = await sheda.ws(user.token, headers={"X-Request-ID": "socket-trace-7"})
    assert ws.conn.headers.get("X-Request-ID") == "socket-trace-7"
    ws.close()


async def test_docs_page_serves_swagger_ui_5_offline(sheda):
    """Swagger UI 4 cannot render OpenAPI 3.1 ("Unable to render this definition"). The page
    loads everything from this server (no CDN) and the bundle it loads is Swagger UI 5."""
    page = await sheda.api.get("/docs")
    assert page.status == 200 and page.headers["Content-Type"].startswith("text/html")
    html = page.body.decode()
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert assets and all(a.startswith("/docs/static/") for a in assets), assets
    assert "/api/v1/openapi.json" in html
    assert "validatorUrl: null" in html, "Swagger UI would fetch its validator badge from validator.swagger.io"
    for asset in assets:
        assert (await sheda.api.get(asset)).status == 200, asset
    bundle = (await sheda.api.get("/docs/static/swagger-ui-bundle.js")).body
    # Swagger UI 5 ships the OpenAPI 3.1 plugin (the 4.x bundle has no such code).
    assert b"OpenAPI 3.1" in bundle or b"oas31" in bundle


# ---- media URLs -----------------------------------------------------------------------------
@pytest.mark.parametrize("settings_overrides", [{"public_base_url": BASE + "/"}])
async def test_public_base_url_makes_every_media_url_absolute(sheda):
    agent = await sheda.signup("agent")
    body, headers = multipart("file", "me.png", PNG_1PX, "image/png")
    me = await sheda.api.put("/api/v1/users/me/avatar", body=body, headers=headers, token=agent.token)
    assert me.status == 200, me
    avatar = me.json["avatar_url"]
    assert avatar.startswith(BASE + "/media/avatars/"), avatar
    # The absolute URL names a file this server serves.
    assert (await sheda.api.get(avatar[len(BASE):])).status == 200
    assert (await sheda.api.get("/api/v1/users/me", token=agent.token)).json["avatar_url"] == avatar
    assert (await sheda.api.get(f"/api/v1/users/{agent.id}")).json["avatar_url"] == avatar

    prop = await create_property(sheda, agent)
    body, headers = multipart("file", "room.png", PNG_1PX, "image/png")
    added = await sheda.api.post(f"/api/v1/properties/{prop['id']}/images", body=body, headers=headers, token=agent.token)
    assert added.status == 201, added
    url = added.json["image"]["url"]
    assert url.startswith(BASE + "/media/properties/") and added.json["property"]["images"][0]["url"] == url
    assert (await sheda.api.get(f"/api/v1/properties/{prop['id']}")).json["images"][0]["url"] == url
    agent_page = await sheda.api.get(f"/api/v1/agents/{agent.id}")
    assert agent_page.json["avatar_url"] == avatar and agent_page.json["listings"][0]["images"][0]["url"] == url

    admin = await sheda.admin()
    body, headers = multipart("file", "banner.png", PNG_1PX, "image/png")
    up = await sheda.api.post("/api/media/file-upload/banner", body=body, headers=headers, token=admin.token)
    assert up.status == 201 and up.json["file_url"].startswith(BASE + "/media/banner/"), up

    # Chat: the socket's delivered frames, sync, and the REST answers carry the same absolute avatar.
    client = await sheda.signup("client")
    ws = await sheda.ws(client.token)
    sent = await sheda.api.post("/api/v1/chats", {"receiver_id": client.id, "message": "Hello"}, token=agent.token)
    assert sent.status == 201 and sent.json["sender_info"]["avatar_url"] == avatar, sent
    frame = await ws.wait_type("message")
    assert frame["sender_info"]["avatar_url"] == avatar, frame
    agent_ws = await sheda.ws(agent.token)
    await agent_ws.send({"receiver_id": client.id, "message": "Over the socket", "client_msg_id": "m2"})
    frame = await ws.wait_for(lambda f: f.get("type") == "message" and f.get("message") == "Over the socket")
    assert frame["sender_info"]["avatar_url"] == avatar, frame
    await ws.send({"type": "sync", "since": 0})
    await ws.wait_type("sync.done")
    synced = [f for f in ws.frames if f.get("type") == "message"]
    assert synced and all(f["sender_info"]["avatar_url"] == avatar for f in synced), synced
    convs = await sheda.api.get("/api/v1/chat/conversations", token=client.token)
    assert convs.json["items"][0]["peer"]["avatar_url"] == avatar, convs
    ws.close()
    agent_ws.close()

    # What is stored stays a path: the base can change without rewriting data.
    assert (await sheda.ctx.users.get(agent.id))["avatar_url"].startswith("/media/avatars/")


async def test_without_public_base_url_media_urls_are_paths(sheda):
    user = await sheda.signup("client")
    body, headers = multipart("file", "me.png", PNG_1PX, "image/png")
    r = await sheda.api.put("/api/v1/users/me/avatar", body=body, headers=headers, token=user.token)
    assert r.status == 200 and r.json["avatar_url"].startswith("/media/avatars/"), r


# ---- real responses match the document --------------------------------------------------------
async def test_real_responses_of_every_feature_match_the_document(sheda):
    """One client day through registration, profiles, listings, viewings, contracts, chat,
    notifications and administration; each answer is checked against the served document."""
    doc = await served_document(sheda)
    c = Conformance(doc)
    api = sheda.api

    resp, reg = await sheda.register("client")
    c.check(resp, "POST", "/api/v1/auth/register")
    for _ in range(8):  # a few codes per address, then 429 with retry_after
        sent = await api.post("/api/v1/auth/send-otp", {"email": reg["email"]})
        c.check(sent, "POST", "/api/v1/auth/send-otp")
        if sent.status == 429:
            break
    assert sent.status == 429 and sent.json["retry_after"] >= 1, sent
    c.check(await api.post("/api/v1/auth/register", reg), "POST", "/api/v1/auth/register")  # 409
    c.check(await api.post("/api/v1/auth/register", {"username": "x"}), "POST", "/api/v1/auth/register")  # 422

    client = await sheda.signup("client")
    agent = await sheda.signup("agent")
    login = await api.post("/api/v1/auth/login", {"username": client.username, "password": client.password})
    c.check(login, "POST", "/api/v1/auth/login")
    c.check(await api.post("/api/v1/auth/login", {"username": client.username, "password": "wrong-password-1"}), "POST",
            "/api/v1/auth/login")
    c.check(await api.post("/api/v1/auth/refresh", {"refresh_token": login.json["refresh_token"]}), "POST", "/api/v1/auth/refresh")

    c.check(await api.get("/api/v1/users/me", token=client.token), "GET", "/api/v1/users/me")
    c.check(await api.get("/api/v1/users/me"), "GET", "/api/v1/users/me")  # 401
    c.check(await api.patch("/api/v1/users/me", {"full_name": "Ada Client", "budget_min": "100.00"}, token=client.token),
            "PATCH", "/api/v1/users/me")
    c.check(await api.patch("/api/v1/users/me", {"agency_name": "Sheda Homes", "years_experience": 3}, token=agent.token),
            "PATCH", "/api/v1/users/me")
    body, headers = multipart("file", "me.png", PNG_1PX, "image/png")
    c.check(await api.put("/api/v1/users/me/avatar", body=body, headers=headers, token=agent.token), "PUT", "/api/v1/users/me/avatar")
    c.check(await api.get("/api/v1/users/me/account-info", token=agent.token), "GET", "/api/v1/users/me/account-info")  # 404
    c.check(await api.put("/api/v1/users/me/account-info", {"account_name": "Ada Agent", "bank_name": "Sheda Bank",
                                                             "account_number": "0123456789"}, token=agent.token),
            "PUT", "/api/v1/users/me/account-info")
    c.check(await api.get("/api/v1/users/me/account-info", token=agent.token), "GET", "/api/v1/users/me/account-info")
    c.check(await api.get(f"/api/v1/users/{client.id}"), "GET", "/api/v1/users/{user_id}")
    c.check(await api.get(f"/api/v1/users/{agent.id}"), "GET", "/api/v1/users/{user_id}")

    # Listings.
    created = await api.post("/api/v1/properties", listing(geo={"lat": 6.45, "lng": 3.47}), token=agent.token)
    prop = c.check(created, "POST", "/api/v1/properties", status=201)
    c.check(await api.post("/api/v1/properties", listing(price=2.5), token=agent.token), "POST", "/api/v1/properties")  # 422
    c.check(await api.get(f"/api/v1/properties/{prop['id']}"), "GET", "/api/v1/properties/{property_id}")
    c.check(await api.get("/api/v1/properties/999999999"), "GET", "/api/v1/properties/{property_id}")  # 404
    c.check(await api.patch(f"/api/v1/properties/{prop['id']}", {"title": "Renamed", "is_negotiable": True}, token=agent.token),
            "PATCH", "/api/v1/properties/{property_id}")
    body, headers = multipart("file", "room.png", PNG_1PX, "image/png")
    added = c.check(await api.post(f"/api/v1/properties/{prop['id']}/images", body=body, headers=headers, token=agent.token),
                    "POST", "/api/v1/properties/{property_id}/images", status=201)
    c.check(await api.patch(f"/api/v1/properties/{prop['id']}/images/{added['image']['id']}", {"is_primary": True},
                            token=agent.token), "PATCH", "/api/v1/properties/{property_id}/images/{image_id}")
    c.check(await api.get("/api/v1/properties", params={"limit": 2}), "GET", "/api/v1/properties")
    c.check(await api.get("/api/v1/properties", params={"limit": 0}), "GET", "/api/v1/properties")  # 422
    c.check(await api.post(f"/api/v1/properties/{prop['id']}/favourite", token=client.token), "POST",
            "/api/v1/properties/{property_id}/favourite")
    c.check(await api.post(f"/api/v1/properties/{prop['id']}/favourite", token=client.token), "POST",
            "/api/v1/properties/{property_id}/favourite")  # 409
    c.check(await api.get("/api/v1/users/me/favourites", token=client.token), "GET", "/api/v1/users/me/favourites")
    c.check(await api.get(f"/api/v1/agents/{agent.id}"), "GET", "/api/v1/agents/{agent_id}")
    gone = c.check(await api.post("/api/v1/properties", listing(), token=agent.token), "POST", "/api/v1/properties", status=201)
    c.check(await api.delete(f"/api/v1/properties/{gone['id']}", token=agent.token), "DELETE", "/api/v1/properties/{property_id}")

    # Viewings.
    when = next_slot(sheda.ctx.clock.now())
    window = await api.post("/api/v1/availability", {"weekday": ["MONDAY", "TUESDAY", "WEDNESDAY", "THURSDAY", "FRIDAY", "SATURDAY",
                                                                 "SUNDAY"][when.weekday()], "start_time": "08:00", "end_time": "18:00"},
                            token=agent.token)
    window = c.check(window, "POST", "/api/v1/availability", status=201)
    c.check(await api.patch(f"/api/v1/availability/{window['id']}", {"end_time": "19:00"}, token=agent.token), "PATCH",
            "/api/v1/availability/{window_id}")
    c.check(await api.get("/api/v1/availability", token=agent.token), "GET", "/api/v1/availability")
    c.check(await api.get(f"/api/v1/agents/{agent.id}/availability"), "GET", "/api/v1/agents/{agent_id}/availability")
    appt = c.check(await book(sheda, client, prop["id"], when), "POST", "/api/v1/appointments", status=201)
    c.check(await book(sheda, client, prop["id"], when), "POST", "/api/v1/appointments")  # 409 slot taken
    c.check(await api.get("/api/v1/appointments", token=client.token), "GET", "/api/v1/appointments")
    c.check(await api.get(f"/api/v1/appointments/{appt['id']}", token=agent.token), "GET", "/api/v1/appointments/{appointment_id}")
    c.check(await api.patch(f"/api/v1/appointments/{appt['id']}/confirm", token=agent.token), "PATCH",
            "/api/v1/appointments/{appointment_id}/confirm")
    second = await sheda.signup("client")  # the client has an open viewing of this property already (409 viewing_exists)
    other = c.check(await book(sheda, second, prop["id"], when.replace(hour=14)), "POST", "/api/v1/appointments", status=201)
    c.check(await api.patch(f"/api/v1/appointments/{other['id']}/reject", token=agent.token), "PATCH",
            "/api/v1/appointments/{appointment_id}/reject")
    third = c.check(await book(sheda, second, prop["id"], when.replace(hour=15)), "POST", "/api/v1/appointments", status=201)
    c.check(await api.delete(f"/api/v1/appointments/{third['id']}", token=second.token), "DELETE",
            "/api/v1/appointments/{appointment_id}")

    # Payment and contract.
    contract = c.check(await api.post(f"/api/v1/contracts/{prop['id']}", {"appointment_id": appt["id"], "term_months": 12},
                                      token=client.token), "POST", "/api/v1/contracts/{id}", status=201)
    c.check(await api.patch(f"/api/v1/contracts/{contract['id']}/payment-sent", token=client.token), "PATCH",
            "/api/v1/contracts/{contract_id}/payment-sent")
    c.check(await api.patch(f"/api/v1/contracts/{contract['id']}/decline-payment", token=agent.token), "PATCH",
            "/api/v1/contracts/{contract_id}/decline-payment")
    c.check(await api.patch(f"/api/v1/contracts/{contract['id']}/payment-sent", token=client.token), "PATCH",
            "/api/v1/contracts/{contract_id}/payment-sent")
    c.check(await api.patch(f"/api/v1/contracts/{contract['id']}/confirm-payment", token=agent.token), "PATCH",
            "/api/v1/contracts/{contract_id}/confirm-payment")
    c.check(await api.patch(f"/api/v1/contracts/{contract['id']}/cancel", token=client.token), "PATCH",
            "/api/v1/contracts/{contract_id}/cancel")  # 409: active
    c.check(await api.get("/api/v1/contracts", token=client.token), "GET", "/api/v1/contracts")
    c.check(await api.get(f"/api/v1/contracts/{contract['id']}", token=agent.token), "GET", "/api/v1/contracts/{id}")

    # Chat over REST.
    sent = await api.post("/api/v1/chats", {"receiver_id": agent.id, "message": "Hi", "client_msg_id": "k1"}, token=client.token)
    c.check(sent, "POST", "/api/v1/chats")
    replay = await api.post("/api/v1/chats", {"receiver_id": agent.id, "message": "Hi", "client_msg_id": "k1"}, token=client.token)
    assert replay.status == 200, replay
    c.check(replay, "POST", "/api/v1/chats")
    c.check(await api.post("/api/v1/chats", {"receiver_id": agent.id, "message": "About the flat", "property_id": prop["id"]},
                           token=client.token), "POST", "/api/v1/chats")
    c.check(await api.post("/api/v1/chats", {"receiver_id": client.id, "message": "Yes"}, token=agent.token), "POST", "/api/v1/chats")
    c.check(await api.get(f"/api/v1/chat/chat-history/{client.id}", token=agent.token), "GET",
            "/api/v1/chat/chat-history/{other_user_id}")
    c.check(await api.get(f"/api/v1/chats/{agent.id}", token=client.token), "GET", "/api/v1/chats/{user_id}")
    c.check(await api.get("/api/v1/chat/conversations", token=client.token), "GET", "/api/v1/chat/conversations")
    c.check(await api.post("/api/v1/chat/read", {"other_user_id": client.id, "up_to": 10**9}, token=agent.token), "POST",
            "/api/v1/chat/read")
    c.check(await api.post("/api/v1/chat/read", {"other_user_id": client.id, "up_to": 10**9}, token=agent.token), "POST",
            "/api/v1/chat/read")  # nothing new
    c.check(await api.get(f"/api/v1/chat/threads/{prop['id']}/{client.id}", token=agent.token), "GET",
            "/api/v1/chat/threads/{property_id}/{other_user_id}")

    # Notifications (the viewing and the contract made some).
    page = c.check(await api.get("/api/v1/notifications", token=agent.token), "GET", "/api/v1/notifications", status=200)
    assert page["items"], "the booking notified the agent"
    c.check(await api.patch(f"/api/v1/notifications/{page['items'][0]['id']}/read", token=agent.token), "PATCH",
            "/api/v1/notifications/{notification_id}/read")
    c.check(await api.post("/api/v1/notifications/read-all", token=agent.token), "POST", "/api/v1/notifications/read-all")

    # Administration and operations.
    admin = await sheda.admin()
    c.check(await api.get("/api/v1/admin/users", params={"limit": 3}, token=admin.token), "GET", "/api/v1/admin/users")
    c.check(await api.get("/api/v1/admin/users", token=client.token), "GET", "/api/v1/admin/users")  # 403
    c.check(await api.patch(f"/api/v1/admin/users/{client.id}", {"role": "moderator"}, token=admin.token), "PATCH",
            "/api/v1/admin/users/{user_id}")
    body, headers = multipart("file", "banner.png", PNG_1PX, "image/png")
    c.check(await api.post("/api/media/file-upload/banner", body=body, headers=headers, token=admin.token), "POST",
            "/api/media/file-upload/{type}")
    c.check(await api.get("/health"), "GET", "/health")
    c.check(await api.get("/health/ready"), "GET", "/health/ready")
    metrics = await api.get("/metrics")
    assert metrics.status == 200 and metrics.headers["Content-Type"].startswith("text/plain")
    c.check(await api.post("/api/v1/auth/logout", token=client.token), "POST", "/api/v1/auth/logout")

    # Nearly every operation was exercised with a success (the rest are in the feature tests).
    successes = {(m, p) for m, p, status in c.seen if status.startswith("2")}
    assert len(successes) >= 50, sorted(successes)
