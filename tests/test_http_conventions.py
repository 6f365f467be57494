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
