"""Input no client may use to hurt the server or another client (issue 11, sections 1, 2 and
REST strictness): every string is valid for storage and the wire or refused, no input yields
a 500 or drops a socket, every number is bounded before the database, every request gets an
HTTP answer on a connection that survives the refusal, and REST is as strict as the socket."""
from __future__ import annotations

import asyncio
import json
import re

from sheda_rt.chat.store import conv_key
from sheda_rt.client_input import MAX_DEPTH
from tests.listing_helpers import create_property, listing
from tests.support import multipart

DEEP = "[" * 2000 + "]" * 2000
JSON = {"Content-Type": "application/json"}


def _port(sheda) -> int:
    return int(sheda.base_url.rsplit(":", 1)[1])


async def _json_operations(sheda) -> list[tuple[str, str]]:
    """Every (method, path) of the served OpenAPI document that takes a JSON body, ids filled in."""
    doc = (await sheda.api.get("/api/v1/openapi.json")).json
    return [(method.upper(), re.sub(r"\{[^}]+\}", "1", path))
            for path, item in doc["paths"].items() for method, op in item.items()
            if "application/json" in ((op.get("requestBody") or {}).get("content") or {})]


async def _everyone(sheda):
    return await sheda.signup("client"), await sheda.signup("agent"), await sheda.admin()


async def test_deep_json_and_lone_surrogates_are_client_errors_on_every_json_route(sheda):
    people = await _everyone(sheda)
    ops = await _json_operations(sheda)
    assert len(ops) >= 15, ops
    surrogate_value = b'{"message": "hi \\ud800 there", "username": "a", "password": "b"}'
    surrogate_key = b'{"\\udc00": 1}'
    reached = 0
    for method, path in ops:
        seen = set()
        for who in people:
            deep = await sheda.api.request(method, path, body=DEEP, headers=JSON, token=who.token)
            value = await sheda.api.request(method, path, body=surrogate_value, headers=JSON, token=who.token)
            key = await sheda.api.request(method, path, body=surrogate_key, headers=JSON, token=who.token)
            for r in (deep, value, key):
                assert r.status < 500, (method, path, r)
                assert set(r.json) >= {"detail", "code"}, (method, path, r)
            seen.add((deep.status, deep.json["code"]))
            if value.status == 422:
                assert value.json["errors"][0]["field"] == "message" and "surrogate" in value.json["errors"][0]["message"]
                assert key.status == 422 and key.json["errors"][0]["field"] == "\\udc00", key
                assert deep.status == 400 and deep.json["code"] == "invalid_json" and str(MAX_DEPTH) in deep.json["detail"]
        # A route none of the three may use (it needs an OTP or a builder token) stops at auth.
        assert (400, "invalid_json") in seen or {status for status, _ in seen} <= {401, 403}, (method, path, seen)
        reached += (400, "invalid_json") in seen
    assert reached >= 15, reached


async def test_nesting_at_the_limit_is_parsed_one_deeper_is_refused(sheda):
    ok = '{"username": "nobody", "password": "wrong-password", "x": ' + "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1) + "}"
    r = await sheda.api.post("/api/v1/auth/login", body=ok, headers=JSON)
    assert r.status == 401, r
    deeper = '{"username": "nobody", "password": "wrong-password", "x": ' + "[" * MAX_DEPTH + "]" * MAX_DEPTH + "}"
    r = await sheda.api.post("/api/v1/auth/login", body=deeper, headers=JSON)
    assert r.status == 400 and r.json["code"] == "invalid_json", r


async def test_a_lone_surrogate_in_a_message_fails_only_its_sender(sheda):
    """The bad message is refused before any batch; another user sending at the same moment
    has every message acked and stored, and nothing stored before is touched."""
    alice, bob, carol = await sheda.signup("client"), await sheda.signup("agent"), await sheda.signup("client")
    bad, good = await sheda.ws(alice.token), await sheda.ws(carol.token)
    await good.send({"receiver_id": bob.id, "message": "before", "client_msg_id": "g0"})
    await good.wait_type("ack", client_msg_id="g0")
    for round_ in range(5):
        frames = [f'{{"receiver_id": {bob.id}, "message": "x\\ud800", "client_msg_id": "b{round_}"}}',
                  f'{{"receiver_id": {bob.id}, "message": "ok", "client_msg_id": "\\udbff{round_}"}}',
                  DEEP]
        sends = [bad.send(f) for f in frames]
        sends += [good.send({"receiver_id": bob.id, "message": f"good {round_}-{i}", "client_msg_id": f"g{round_}-{i}"}) for i in range(3)]
        await asyncio.gather(*sends)
        for i in range(3):
            await good.wait_type("ack", client_msg_id=f"g{round_}-{i}")
        rest = await sheda.api.post("/api/v1/chats", body=f'{{"receiver_id": {bob.id}, "message": "rest \\udfff"}}'.encode(),
                                    headers=JSON, token=alice.token)
        assert rest.status == 422 and rest.json["errors"] == [{"field": "message", "message": rest.json["errors"][0]["message"]}], rest
    await bad.send({"type": "ping"})
    await bad.wait_type("pong")
    assert not bad.closed.done() and not good.closed.done()
    errors = bad.of_type("error")
    assert not [f for f in good.of_type("error")], good.frames
    # The text surrogate is named and the (valid) client_msg_id echoed; the bad id is not echoed.
    assert [f["client_msg_id"] for f in errors if f.get("errors", [{}])[0].get("field") == "message"] == [f"b{i}" for i in range(5)]
    assert len([f for f in errors if f.get("errors", [{}])[0].get("field") == "client_msg_id" and "client_msg_id" not in f]) == 5
    assert len([f for f in errors if f["code"] == "invalid_json"]) == 5
    assert not [f for f in errors if f["code"] in ("store_failed", "internal_error")]
    stored = await sheda.ctx.db["messages"].find({"conv": conv_key(carol.id, bob.id)}).to_list()
    assert sorted(d["client_msg_id"] for d in stored) == sorted(["g0"] + [f"g{r}-{i}" for r in range(5) for i in range(3)])
    assert not await sheda.ctx.db["messages"].find_one({"conv": conv_key(alice.id, bob.id)})


async def test_every_client_string_is_valid_utf8_or_refused(sheda):
    agent = await sheda.signup("agent")
    # Query strings: invalid UTF-8 was silently turned into U+FFFD; now the field is named.
    r = await sheda.api.get("/api/v1/properties?location=lek%FFki")
    assert r.status == 422 and r.json["errors"][0]["field"] == "location", r
    # Form fields (the seed's login form).
    r = await sheda.api.post("/api/v1/auth/login", body=b"username=a%FF&password=b",
                             headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status == 422 and r.json["errors"][0]["field"] == "username", r
    # Path parameters: Tornado refuses invalid UTF-8 in them with a JSON 400.
    r = await sheda.api.post("/api/media/file-upload/%FF", token=agent.token)
    assert r.status == 400, r
    # Multipart file names cannot hold a lone surrogate after decoding; a RFC 2231 name with
    # an invalid sequence is decoded with replacement characters and stored nowhere.
    body, headers = multipart("file", "x.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 32, "image/png")
    r = await sheda.api.put("/api/v1/users/me/avatar", body=body.replace(b'filename="x.png"', b"filename*=UTF-8''%ED%A0%80.png"),
                            headers=headers, token=agent.token)
    assert r.status < 500, r


async def test_every_number_is_bounded_before_the_database(sheda):
    agent, client = await sheda.signup("agent"), await sheda.signup("client")
    for price in ("1e26", "1e30", "99999999999999999999999999999", 10**30, "1" * 40, "NaN", "-Infinity", "2500000.001"):
        r = await sheda.api.post("/api/v1/properties", listing(price=price), token=agent.token)
        assert r.status == 422 and r.json["errors"][0]["field"] == "price", (price, r)
    prop = await create_property(sheda, agent)
    before = await sheda.ctx.db["properties"].find_one({"_id": prop["id"]})
    for price in ("1e26", "1" * 30, 10**30):
        r = await sheda.api.patch(f"/api/v1/properties/{prop['id']}", {"price": price}, token=agent.token)
        assert r.status == 422, r
    assert await sheda.ctx.db["properties"].find_one({"_id": prop["id"]}) == before  # nothing stored changed
    for query in ("price_max=1e30", "price_min=1e26", "price_max=NaN", "limit=9223372036854775807", "bedroom_min=1e400",
                  "radius_km=1e400&near=6.5,3.4", "agent_id=99999999999999999999"):
        r = await sheda.api.get(f"/api/v1/properties?{query}")
        assert r.status == 422, (query, r)
    for offset in ("9223372036854775807", "1e3", "-1", "1000000001"):
        r = await sheda.api.get(f"/api/v1/chat/chat-history/{agent.id}?offset={offset}", token=client.token)
        assert r.status == 422 and r.json["errors"][0]["field"] == "offset", (offset, r)
    r = await sheda.api.get(f"/api/v1/chat/chat-history/{agent.id}?offset=1000000000", token=client.token)
    assert r.status == 200 and r.json == [], r
    doc = (await sheda.api.get("/api/v1/openapi.json")).json
    history = doc["paths"]["/api/v1/chat/chat-history/{other_user_id}"]["get"]["parameters"]
    offset = next(p for p in history if p["name"] == "offset")
    assert offset["schema"].get("maximum") == 1_000_000_000, offset
    r = await sheda.api.get(f"/api/v1/users/{10**18 + 1}")
    assert r.status in (404, 422), r
    # A cursor is client input too: a forged one holding a lone surrogate or an absurd number.
    import base64
    for path, forged in (("/api/v1/notifications", b'["\\ud800"]'), ("/api/v1/appointments", b'["x\\udfff"]'),
                         ("/api/v1/notifications", b'[1e400]'), ("/api/v1/notifications", b"[" * 500 + b"]" * 500),
                         ("/api/v1/properties", b'["newest", "\\ud800", 1]')):
        cursor = base64.urlsafe_b64encode(forged).decode().rstrip("=")
        r = await sheda.api.get(f"{path}?cursor={cursor}", token=client.token)
        assert r.status == 422 and r.json["errors"][0]["field"] == "cursor", (forged, r)


async def test_odd_static_paths_are_404_not_500(sheda):
    for path in ("/media/%00", "/media/a%00b.png", "/media/avatars/%00.png", "/media/" + "a" * 5000, "/media/%2e%2e/%2e%2e/etc/passwd",
                 "/media/..%2f..%2fetc%2fpasswd", "/media/", "/media/avatars/", "/media/%FF", "/media/%5c..%5cx", "/media/a\\b",
                 "/docs/static/%00", "/docs/static/a%00b.js", "/docs/static/" + "a" * 5000, "/docs/static/%FF",
                 "/docs/static/..%2f..%2fetc%2fpasswd", "/docs/static/", "/docs/static/.%2e/.%2e/x"):
        for method in ("GET", "HEAD"):
            r = await sheda.api.request(method, path)
            assert r.status in (400, 403, 404), (method, path, r)
            if method == "GET":
                assert r.json["code"] in ("not_found", "forbidden", "bad_request"), (path, r)


async def _read_response(reader) -> tuple[int, dict, bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
    body = await asyncio.wait_for(reader.readexactly(int(headers.get("content-length", 0))), 10)
    return int(lines[0].split()[1]), headers, body


async def test_refusals_keep_the_connection_usable(sheda):
    """A POST with a body to a route that does not exist (and other refusals before the body
    is read) is answered on a kept-alive connection that then serves the next request."""
    user = await sheda.signup("client")
    reader, writer = await asyncio.open_connection("127.0.0.1", _port(sheda))
    try:
        payload = b'{"x": "' + b"y" * 200_000 + b'"}'  # over the JSON limit's sibling routes? no: 200 KB < 1 MiB
        for i in range(30):
            target = ("POST /api/v1/no/such/route", "PROPFIND /api/v1/chats", "DELETE /api/v1/auth/login")[i % 3]
            writer.write(f"{target} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
            writer.write(f"GET /api/v1/users/me HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {user.token}\r\n\r\n".encode())
            await writer.drain()
            status, headers, body = await _read_response(reader)
            assert status in (404, 405) and json.loads(body)["code"] in ("not_found", "method_not_allowed"), (target, status, body)
            status, _, body = await _read_response(reader)
            assert status == 200 and json.loads(body)["id"] == user.id
    finally:
        writer.close()


async def test_a_30_mb_body_gets_a_real_413(sheda):
    user = await sheda.signup("client")
    size = 30 * 1024 * 1024
    for path in ("/api/v1/chats", "/api/v1/no/such/route"):
        reader, writer = await asyncio.open_connection("127.0.0.1", _port(sheda))
        try:
            writer.write(f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {user.token}\r\n"
                         f"Content-Type: application/json\r\nContent-Length: {size}\r\n\r\n".encode())
            chunk = b" " * (1 << 20)
            for _ in range(30):  # the client sends all of it before reading, as most clients do
                writer.write(chunk)
                await writer.drain()
            status, headers, body = await _read_response(reader)
            assert status == 413 and json.loads(body)["code"] == "too_large" and headers["connection"] == "close", (status, body)
            assert headers.get("x-request-id")
        finally:
            writer.close()
    assert (await sheda.api.get("/api/v1/users/me", token=user.token)).status == 200


async def test_rest_is_as_strict_as_the_socket(sheda):
    alice, bob = await sheda.signup("client"), await sheda.signup("agent")
    for bad in ({"receiver_id": str(bob.id), "message": "hi"}, {"receiver_id": float(bob.id), "message": "hi"},
                {"receiver_id": True, "message": "hi"}, {"receiver_id": bob.id, "message": 5},
                {"receiver_id": bob.id, "message": "hi", "property_id": "3"}):
        r = await sheda.api.post("/api/v1/chats", bad, token=alice.token)
        assert r.status == 422 and r.json["code"] == "validation_error", (bad, r)
    for bad in ({"other_user_id": bob.id, "up_to": False}, {"other_user_id": str(bob.id), "up_to": 1}, {"other_user_id": bob.id, "up_to": 1.0}):
        r = await sheda.api.post("/api/v1/chat/read", bad, token=alice.token)
        assert r.status == 422 and r.json["code"] == "validation_error", (bad, r)
    ws = await sheda.ws(alice.token)
    await ws.send({"type": "read", "other_user_id": bob.id, "up_to": False})
    frame = await ws.wait_type("error")
    assert frame["code"] == "validation_error"
    # A JS client keyed by Date.now() sends a number: still a 422/error (keys are strings), but the error names the
    # message it refuses, so the client knows which queued send failed (it did not: no client_msg_id at all).
    await ws.send({"receiver_id": bob.id, "message": "numbered", "client_msg_id": 1733000000123})
    frame = await ws.wait_for(lambda f: f.get("type") == "error" and f.get("client_msg_id") == 1733000000123)
    assert frame["code"] == "validation_error" and [e["field"] for e in frame["errors"]] == ["client_msg_id"], frame
    for odd in (True, 2 ** 70):  # not a key a client could have meant: nothing echoed
        start = len(ws.frames)
        await ws.send({"receiver_id": bob.id, "message": "odd", "client_msg_id": odd})
        frame = await ws.wait_for(lambda f: f.get("type") == "error", start=start)
        assert frame["code"] == "validation_error" and "client_msg_id" not in frame, frame
    body = json.dumps({"receiver_id": bob.id, "message": "hi"})
    for ctype in ("text/plain", "application/x-www-form-urlencoded", None, "application/json; charset=latin-1", "application/jsonx"):
        r = await sheda.api.post("/api/v1/chats", body=body, headers={"Content-Type": ctype} if ctype else {}, token=alice.token)
        assert r.status == 415 and r.json["code"] == "unsupported_media_type" and r.json["detail"], (ctype, r)
    r = await sheda.api.post("/api/v1/chats", body=body, headers={"Content-Type": "application/json; charset=UTF-8"}, token=alice.token)
    assert r.status == 201, r
    # The seed's login keeps its form; JSON there is strict too.
    r = await sheda.api.post("/api/v1/auth/login", body=f"username={alice.username}&password={alice.password}",
                             headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status == 200, r
    r = await sheda.api.post("/api/v1/auth/login", body=json.dumps({"username": alice.username, "password": alice.password}),
                             headers={"Content-Type": "text/plain"})
    assert r.status == 415, r
    stored = await sheda.ctx.db["messages"].find({"conv": conv_key(alice.id, bob.id)}).to_list()
    assert [d["message"] for d in stored] == ["hi"]
    # Every JSON body is strict, not only the chat's: an agent's profile too.
    for value in ("5", 5.0, True):
        r = await sheda.api.patch("/api/v1/users/me", {"years_experience": value}, token=bob.token)
        assert r.status == 422 and r.json["errors"][0]["field"] == "years_experience", (value, r)
    assert (await sheda.api.patch("/api/v1/users/me", {"years_experience": 5}, token=bob.token)).status == 200


async def test_the_socket_route_answers_odd_requests_in_json(sheda):
    r = await sheda.api.get("/api/v1/chat/ws")  # not a WebSocket request
    assert r.status == 400 and r.json["code"] == "websocket_required", r
    r = await sheda.api.request("POST", "/api/v1/chat/ws", body=b"{}")
    assert r.status == 405 and r.json["code"] == "method_not_allowed", r
    # Handshakes Tornado refuses itself, in plain text or with no body at all, before this socket's
    # code runs: a proxy that drops `Connection: Upgrade`, a version other than 13, no key.
    upgrade = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
               "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
    for changed, status, code in (({"Connection": "keep-alive"}, 400, "websocket_required"),
                                  ({"Sec-WebSocket-Version": "12"}, 426, "upgrade_required"),
                                  # the old drafts 7 and 8: Tornado 6.5+ speaks only 13 (its 426 has no body)
                                  ({"Sec-WebSocket-Version": "8"}, 426, "upgrade_required"),
                                  ({"Sec-WebSocket-Version": "7"}, 426, "upgrade_required"),
                                  ({"Sec-WebSocket-Key": ""}, 400, "bad_request")):
        r = await sheda.api.get("/api/v1/chat/ws", headers={**upgrade, **changed})
        assert r.status == status and r.json["code"] == code and r.json["detail"], (changed, r)
        assert r.headers["Content-Type"].startswith("application/json"), (changed, r.headers)
        if status == 426:
            assert r.headers["Sec-WebSocket-Version"] == "13"
    ws = await sheda.ws("%FF%FE")  # a token that is not even UTF-8 is a bad token
    code, _ = await ws.wait_closed()
    assert code == 4401


async def test_every_decimal_the_client_sends_is_bounded_before_arithmetic(sheda):
    """Money and percents of the builder portal: 27+ digits reached Decimal.quantize (a 500)."""
    from tests.test_builders import PROJECTS, add_units, create_project, unit, verified_builder

    builder = await verified_builder(sheda)
    project = await create_project(sheda, builder)
    for price in ("1e26", "1" * 30, 10**30):
        r = await sheda.api.post(f"{PROJECTS}/{project['id']}/units", {"units": [unit("X1", price=price)]}, token=builder.token)
        assert r.status == 422, (price, r)
    await add_units(sheda, builder, project["id"], [unit("P1")])
    for percent in ("1e26", "9e99", "1E+1000000", "-1e30"):
        plan = {"name": "Bad", "lines": [{"label": "All", "percent": percent, "due": "booking"}]}
        r = await sheda.api.post(f"{PROJECTS}/{project['id']}/payment-plans", plan, token=builder.token)
        assert r.status == 422 and r.json["code"] == "validation_error", (percent, r)
    for query in ("price_min=1e26", "price_max=1e30"):
        r = await sheda.api.get(f"{PROJECTS}?{query}")
        assert r.status == 422, (query, r)


async def test_headers_over_the_limit_get_a_json_431_and_the_connection_survives(sheda):
    """Tornado closes a connection whose headers are over its cap without a word; the
    client then cannot tell a refusal from a network fault. Up to 1 MiB of headers (far past
    MAX_HEADER_BYTES, 64 KiB) the answer is the contract's JSON error, on a connection the
    client can go on using; on the socket route too."""
    user = await sheda.signup("client")
    reader, writer = await asyncio.open_connection("127.0.0.1", _port(sheda))
    try:
        for path in ("/api/v1/users/me", "/api/v1/no/such/route", "/api/v1/chat/ws"):
            big = "x" * (200 * 1024)
            writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {user.token}\r\nX-Big: {big}\r\n\r\n".encode())
            status, headers, body = await _read_response(reader)
            assert status == 431 and json.loads(body)["code"] == "headers_too_large", (path, status, body)
            assert headers.get("x-request-id")
        # The same connection still carries an ordinary request.
        writer.write(f"GET /api/v1/users/me HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {user.token}\r\n\r\n".encode())
        status, _, body = await _read_response(reader)
        assert status == 200 and json.loads(body)["id"] == user.id
    finally:
        writer.close()
    # Just under the limit is an ordinary request.
    ok = await sheda.api.get("/api/v1/users/me", token=user.token, headers={"X-Big": "y" * (60 * 1024)})
    assert ok.status == 200, ok
