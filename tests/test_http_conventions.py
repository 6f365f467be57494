"""HTTP conventions every route shares: JSON errors, size limits, CORS, request ids, auth
headers, the OpenAPI document and the docs page."""
from __future__ import annotations

import asyncio
import json
import re

import pytest
from openapi_spec_validator import validate

ORIGIN = "https://app.sheda.example"


@pytest.fixture
def settings_overrides():
    return {"cors_origins": f"{ORIGIN}, https://admin.sheda.example", "max_json_bytes": 4096, "max_upload_bytes": 8192}


async def raw_http(port: int, request: bytes, *, wait: float = 5.0) -> tuple[int, dict, bytes]:
    """Send bytes as they are (chunked bodies, lying Content-Length) and read one response."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), wait)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
        body = await asyncio.wait_for(reader.readexactly(int(headers.get("content-length", 0))), wait)
        return status, headers, body
    finally:
        writer.close()


def _port(sheda) -> int:
    return int(sheda.base_url.rsplit(":", 1)[1])


async def test_malformed_json_and_wrong_types(sheda):
    r = await sheda.api.post("/api/v1/auth/login", body=b'{"username": "x", "password":', headers={"Content-Type": "application/json"})
    assert r.status == 400 and r.json == {"detail": "Body is not valid JSON", "code": "invalid_json"}
    r = await sheda.api.post("/api/v1/auth/login", body=b"\xff\xfe\x00", headers={"Content-Type": "application/json"})
    assert r.status == 400 and r.json["code"] == "invalid_json"
    r = await sheda.api.post("/api/v1/auth/login", body=b"[1, 2]", headers={"Content-Type": "application/json"})
    assert r.status == 422 and r.json["errors"] == [{"field": "body", "message": "must be a JSON object"}]
    r = await sheda.api.post("/api/v1/auth/login", {"username": ["a"], "password": {"x": 1}})
    assert r.status == 422 and r.json["code"] == "validation_error"
    assert {e["field"] for e in r.json["errors"]} == {"username", "password"}
    assert all(set(e) == {"field", "message"} for e in r.json["errors"])


async def test_malformed_multipart_is_a_400(sheda):
    user = await sheda.signup("client")
    garbage = b"--b0undary\r\nthis is not a part header\r\n\r\nxx\r\n--b0undary--\r\n"
    headers = {"Content-Type": "multipart/form-data; boundary=b0undary"}
    r = await sheda.api.put("/api/v1/users/me/avatar", body=garbage, headers=headers, token=user.token)
    assert r.status == 400 and r.json["code"] == "invalid_form", r
    r = await sheda.api.post("/api/v1/auth/login", body=garbage, headers=headers)
    assert r.status == 400 and r.json["code"] == "invalid_form", r
    me = await sheda.api.get("/api/v1/users/me", token=user.token)
    assert me.status == 200 and not me.json.get("avatar_url")


async def test_oversized_body_is_a_json_413(sheda):
    user = await sheda.signup("client")
    big = json.dumps({"username": "x" * 5000, "password": "y"})
    r = await sheda.api.post("/api/v1/auth/login", body=big, headers={"Content-Type": "application/json"})
    assert r.status == 413 and r.json["code"] == "too_large"

    # Content-Length announced too big: refused before any byte of the body is read.
    req = (f"POST /api/v1/auth/logout HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {user.token}\r\n"
           f"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n").encode()
    status, headers, body = await raw_http(_port(sheda), req)
    assert status == 413 and json.loads(body)["code"] == "too_large" and headers["content-type"].startswith("application/json")

    # Chunked, no length: refused once the limit is crossed, and the handler never runs
    # (this is a logout: the token must still work afterwards).
    chunk = b"x" * 3000
    chunks = b"".join(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n" for _ in range(3)) + b"0\r\n\r\n"
    req = (f"POST /api/v1/auth/logout HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {user.token}\r\n"
           f"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n").encode() + chunks
    status, headers, body = await raw_http(_port(sheda), req)
    assert status == 413 and json.loads(body)["code"] == "too_large"
    await asyncio.sleep(0.2)
    assert (await sheda.api.get("/api/v1/users/me", token=user.token)).status == 200
    # Same, but the body only ends after the 413 arrived (the client keeps sending).
    reader, writer = await asyncio.open_connection("127.0.0.1", _port(sheda))
    writer.write(req[: -len(b"0\r\n\r\n")])
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert b" 413 " in head.split(b"\r\n")[0]
    try:
        writer.write(b"0\r\n\r\n")
        await writer.drain()
    except ConnectionError:
        pass
    writer.close()
    await asyncio.sleep(0.2)
    assert (await sheda.api.get("/api/v1/users/me", token=user.token)).status == 200

    # Uploads get MAX_UPLOAD_BYTES; a bigger file is a JSON 413 from the upload route.
    from tests.support import PNG_1PX, multipart
    body, headers = multipart("file", "big.png", PNG_1PX + b"\0" * 9000, "image/png")
    r = await sheda.api.put("/api/v1/users/me/avatar", body=body, headers=headers, token=user.token)
    assert r.status == 413 and r.json["code"] == "too_large"
    assert (await sheda.ctx.users.get(user.id)).get("avatar_url") is None


async def test_unknown_route_and_wrong_method(sheda):
    for path in ("/nope", "/api/v1/nothing/here", "/api/v1/users/me/whatever"):
        r = await sheda.api.get(path)
        assert r.status == 404 and r.json["code"] == "not_found" and r.headers["Content-Type"].startswith("application/json")
    r = await sheda.api.request("DELETE", "/api/v1/auth/login")
    assert r.status == 405 and r.json["code"] == "method_not_allowed"
    assert "POST" in r.headers["Allow"]
    r = await sheda.api.request("PATCH", "/health")
    assert r.status == 405 and r.json["code"] == "method_not_allowed"


async def test_cors_preflight_and_simple_requests(sheda):
    pre = await sheda.api.request("OPTIONS", "/api/v1/users/me", headers={
        "Origin": ORIGIN, "Access-Control-Request-Method": "PATCH", "Access-Control-Request-Headers": "authorization, content-type"})
    assert pre.status == 204
    assert pre.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "PATCH" in pre.headers["Access-Control-Allow-Methods"]
    assert "authorization" in pre.headers["Access-Control-Allow-Headers"].lower()
    r = await sheda.api.get("/health", headers={"Origin": ORIGIN})
    assert r.headers["Access-Control-Allow-Origin"] == ORIGIN and "Origin" in r.headers["Vary"]

    refused = await sheda.api.request("OPTIONS", "/api/v1/users/me", headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "PATCH"})
    assert "Access-Control-Allow-Origin" not in refused.headers and "Access-Control-Allow-Methods" not in refused.headers
    r = await sheda.api.get("/health", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in r.headers
    # Errors carry CORS headers too, so a browser client can read them.
    r = await sheda.api.get("/api/v1/users/me", headers={"Origin": ORIGIN})
    assert r.status == 401 and r.headers["Access-Control-Allow-Origin"] == ORIGIN


async def test_request_id_echoed_or_generated(sheda):
    r = await sheda.api.get("/health", headers={"X-Request-ID": "abc-123"})
    assert r.headers["X-Request-ID"] == "abc-123"
    r = await sheda.api.get("/api/v1/users/me", headers={"X-Request-ID": "err-456"})
    assert r.status == 401 and r.headers["X-Request-ID"] == "err-456"
    r1, r2 = await sheda.api.get("/health"), await sheda.api.get("/nope")
    assert re.fullmatch(r"[0-9a-f]{32}", r1.headers["X-Request-ID"]) and r1.headers["X-Request-ID"] != r2.headers["X-Request-ID"]


async def test_bearer_errors(sheda):
    user = await sheda.signup("client")
    cases = [({}, "missing_token"), ({"Authorization": "Basic abc"}, "invalid_token"), ({"Authorization": "Bearer"}, "invalid_token"),
             ({"Authorization": "Bearer not.a.jwt"}, "invalid_token"), ({"Authorization": f"Bearer {user.token}x"}, "invalid_token")]
    for headers, code in cases:
        r = await sheda.api.get("/api/v1/users/me", headers=headers)
        assert r.status == 401 and r.json["code"] == code, (headers, r)
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
    # A token signed with another key.
    import jwt
    forged = jwt.encode({"sub": str(user.id), "scopes": ["client", "admin"], "typ": "access", "exp": 4102444800, "jti": "x"},
                        "another-secret-of-enough-length-123456", algorithm="HS256")
    assert (await sheda.api.get("/api/v1/admin/users", token=forged)).status == 401
    none_alg = jwt.encode({"sub": str(user.id), "scopes": ["admin"], "typ": "access", "exp": 4102444800, "jti": "y"}, None, algorithm="none")
    assert (await sheda.api.get("/api/v1/admin/users", token=none_alg)).status == 401


async def test_password_length_limits(sheda):
    base = {"email": "pw@example.com", "user_type": "client"}
    for pw, ok in (("1234567", False), ("12345678", True), ("a" * 72, True), ("a" * 73, False), ("ü" * 36, True), ("ü" * 37, False)):
        from tests.support import unique
        r = await sheda.api.post("/api/v1/auth/register", {**base, "username": unique("p"), "email": f"{unique('p')}@example.com", "password": pw})
        assert (r.status == 201) is ok, (pw, r)
        if not ok:
            assert r.status == 422 and r.json["errors"][0]["field"] == "password"


async def test_openapi_document(sheda):
    r = await sheda.api.get("/api/v1/openapi.json")
    assert r.status == 200
    spec = r.json
    validate(spec)
    assert spec["openapi"].startswith("3.1")
    documented = 0
    for urlspec in sheda.server.app.routes:
        handler = getattr(urlspec, "handler_class", None)
        template = getattr(urlspec, "name", None)
        for method in ("get", "post", "put", "patch", "delete"):
            if getattr(getattr(handler, method, None), "endpoint_doc", None) is None:
                continue
            path = re.sub(r"\{(\w+)(?::\w+)?\}", r"{\1}", template)
            assert method in spec["paths"].get(path, {}), f"{method.upper()} {path} is missing from the OpenAPI document"
            documented += 1
    assert documented >= 25
    login = spec["paths"]["/api/v1/auth/login"]["post"]
    assert "application/x-www-form-urlencoded" in login["requestBody"]["content"]
    # the login also takes the form as multipart/form-data (a browser's FormData), so the document says so too
    assert "multipart/form-data" in login["requestBody"]["content"]
    assert "429" in login["responses"]
    assert "database_unavailable" in login["responses"]["503"]["description"]
    admin = spec["paths"]["/api/v1/admin/users"]["get"]
    assert admin["x-required-auth"] == "admin" and admin["security"] == [{"bearer": []}]
    assert any(p["name"] == "cursor" for p in admin["parameters"])
    avatar = spec["paths"]["/api/v1/users/me/avatar"]["put"]
    assert "multipart/form-data" in avatar["requestBody"]["content"]
    assert "/api/media/file-upload/{type}" in spec["paths"]


async def test_docs_page_and_assets(sheda):
    r = await sheda.api.get("/docs")
    assert r.status == 200 and r.headers["Content-Type"].startswith("text/html") and b"swagger-ui-bundle.js" in r.body
    for asset in ("/docs/static/swagger-ui-bundle.js", "/docs/static/swagger-ui.css"):
        a = await sheda.api.get(asset)
        assert a.status == 200 and len(a.body) > 10_000, asset


async def test_health(sheda):
    assert (await sheda.api.get("/health")).json == {"status": "ok"}
    r = await sheda.api.get("/health/ready")
    assert r.status == 200 and r.json["status"] == "ready" and r.json["checks"]["database"] == "ok"


async def test_every_route_refuses_a_query_key_it_does_not_take_but_protocol_keys_pass(sheda):
    """One rule for every route (handlers/routing.py: a method without a query model takes none): a key the route
    does not take is a 422 naming it, checked before the method runs, so nothing is read or changed. It was
    ignored on every route without a query model (a typo'd `?for=everyone` did the default). Keys that belong to
    someone else's protocol still pass: the socket's and the event stream's token and lastEventId, the chat
    history's cache-buster, the unsubscribe link's token, probes, scrapers, webhooks, files and the documents."""
    import httpx

    from tests.support import PNG_1PX, multipart

    def refused(r, key):
        return (r.status == 422 and r.json["code"] == "validation_error" and [e["field"] for e in r.json["errors"]] == [key]
                and all(isinstance(e["message"], str) and e["message"] for e in r.json["errors"]))

    user, agent, builder = await sheda.signup("client"), await sheda.signup("agent"), await sheda.signup("builder")
    ss = "/api/v1/saved-searches"
    search = (await sheda.api.post(ss, {"name": "Mine", "query": {"location": "Lekki"}, "alert": "off"}, token=user.token)).json
    one = f"{ss}/{search['id']}"
    # GET of one item, or of the caller's own things
    for path, who in (("/api/v1/users/me", user), (one, user), ("/api/v1/availability", agent), ("/api/v1/builder/receivables", builder)):
        r = await sheda.api.get(path, token=who.token, params={"for": "everyone"})
        assert refused(r, "for"), (path, r)
        assert (await sheda.api.get(path, token=who.token)).status == 200, path
    # PATCH, DELETE and POST with a body: refused before anything changes
    r = await sheda.api.patch(f"/api/v1/users/me?fulname=x", {"full_name": "Changed Name"}, token=user.token)
    assert refused(r, "fulname"), r
    r = await sheda.api.patch(f"{one}?alerts=instant", {"name": "Renamed"}, token=user.token)
    assert refused(r, "alerts"), r
    r = await sheda.api.delete(f"{one}?confirm=yes", token=user.token)
    assert refused(r, "confirm"), r
    assert (await sheda.api.get(one, token=user.token)).json == search  # neither the rename nor the delete happened
    assert (await sheda.api.get("/api/v1/users/me", token=user.token)).json.get("full_name") != "Changed Name"
    r = await sheda.api.post(f"{ss}?dry_run=1", {"name": "Other", "query": {"location": "Ikoyi"}, "alert": "off"}, token=user.token)
    assert refused(r, "dry_run"), r
    assert [s["id"] for s in (await sheda.api.get(ss, token=user.token)).json["items"]] == [search["id"]]
    r = await sheda.api.post("/api/v1/auth/login?remember=1", {"username": user.username, "password": user.password})
    assert refused(r, "remember"), r
    # a route with keys of its own names the unknown one only
    r = await sheda.api.get(ss, token=user.token, params={"limit": 5, "lmit": 5})
    assert refused(r, "lmit"), r
    assert (await sheda.api.delete(one, token=user.token)).status == 204

    # Keys of other protocols still pass.
    for path in ("/health?probe=lb", "/health/ready?probe=k8s", "/metrics?name[]=http_requests_total", "/docs/?x=1",
                 "/api/v1/openapi.json?v=2", "/api/v1/asyncapi.json?v=2"):
        assert (await sheda.api.get(path)).status == 200, path
    for hook in ("/api/v1/webhooks/paystack?source=dashboard", "/api/v1/webhooks/image-enhancement?source=x"):
        r = await sheda.api.post(hook, {"event": "charge.success"})
        assert r.status == 401, (hook, r)  # unsigned: refused on its signature, never on the key
    assert (await sheda.api.get(f"/api/v1/chats/{agent.id}", token=user.token, params={"_": "1733000000"})).status == 200
    # A web client's cache-buster (jQuery's `cache: false` adds `?_=<time>` to every GET) passes on every read, lists
    # and single items alike, and changes nothing about the answer; a write never gets one, so there it is refused.
    for path, who in (("/api/v1/users/me", user), ("/api/v1/availability", agent), (ss, user), ("/api/v1/properties", user)):
        plain = await sheda.api.get(path, token=who.token)
        busted = await sheda.api.get(path, token=who.token, params={"_": "1733000000123"})
        assert busted.status == 200 and busted.json == plain.json, (path, busted)
    r = await sheda.api.patch("/api/v1/users/me?_=1733000000123", {"full_name": "Busted"}, token=user.token)
    assert refused(r, "_"), r
    token = sheda.ctx.unsubscribe.links.token(user.id, "chat")
    r = await sheda.api.get("/api/v1/email/unsubscribe", params={"token": token})
    assert r.status == 200 and r.headers["Content-Type"].startswith("text/html"), r
    body, headers = multipart("file", "a.png", PNG_1PX, "image/png")
    avatar = (await sheda.api.put("/api/v1/users/me/avatar", body=body, headers=headers, token=user.token)).json["avatar_url"]
    assert (await sheda.api.get(f"{avatar}?v=2")).status == 200
    ws = await sheda.ws(user.token)  # ?token= on the handshake
    ws.close()
    async with httpx.AsyncClient(base_url=sheda.base_url, timeout=10) as client:
        async with client.stream("GET", "/api/v1/events/stream", params={"token": user.token, "lastEventId": 0, "r": 1}) as stream:
            assert stream.status_code == 200 and stream.headers["content-type"].startswith("text/event-stream")

    # The document says so: a 422 on every route that refuses keys, none where every key passes.
    paths = (await sheda.api.get("/api/v1/openapi.json")).json["paths"]
    for path, method in (("/api/v1/users/me", "get"), ("/api/v1/users/me", "patch"), ("/api/v1/saved-searches/{search_id}", "delete"),
                         ("/api/v1/availability", "get"), ("/api/v1/builder/receivables", "get")):
        assert "422" in paths[path][method]["responses"], (path, method)
    for path, method in (("/health", "get"), ("/health/ready", "get"), ("/metrics", "get"), ("/api/v1/webhooks/paystack", "post")):
        assert "422" not in paths[path][method]["responses"], (path, method)
