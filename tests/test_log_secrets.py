"""No log line holds a token, a password or a one-time code.

A real `python run.py` at LOG_LEVEL=DEBUG takes what careless and hostile clients
send: tokens in query strings (REST and the chat socket), tokens in the browser
subprotocol, forged and wrong tokens, wrong passwords, wrong and right OTP codes,
the whole reset-password flow, unknown routes and malformed bodies with secrets
attached. Then its whole output is searched for every secret that went over the
wire. A fault inside a handler (Tornado's "Uncaught exception GET ...?token=..."
line with the request repr and the traceback) is checked in-process, with a
handler that fails on purpose, since the real routes are meant never to fail.
"""
from __future__ import annotations

import base64
import email
import json
import logging
import re
import secrets
import uuid
from pathlib import Path

import tornado.web
from tornado.httpclient import HTTPRequest
from tornado.websocket import WebSocketClosedError, WebSocketHandler, websocket_connect

from handlers.base import APIHandler
from tests.process_support import ServerProcess
from tests.support import Api


def otp_from_outbox(data_dir: Path, address: str) -> str:
    """The code in the newest mail to `address` (no SMTP_HOST: mails are .eml files in DATA_DIR/outbox)."""
    for path in sorted((data_dir / "outbox").glob("*.eml"), key=lambda p: p.stat().st_mtime_ns, reverse=True):
        msg = email.message_from_bytes(path.read_bytes())
        if msg["To"].lower() == address.lower():
            return re.search(r"\b(\d{6})\b", msg.get_content() if hasattr(msg, "get_content") else msg.get_payload()).group(1)
    raise AssertionError(f"no mail to {address}")


def forged_jwt() -> str:
    """Shaped like our tokens, signed with nobody's key."""
    def part(obj):
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()
    return f"{part({'alg': 'HS256', 'typ': 'JWT'})}.{part({'sub': '1', 'jti': uuid.uuid4().hex})}.{secrets.token_urlsafe(32)}"


def random_code(avoid: str) -> str:
    while True:
        code = f"{secrets.randbelow(1_000_000):06d}"
        if code != avoid:
            return code


def leaks(text: str, found_secrets: list[str]) -> list[str]:
    """Secrets that appear in text; 6-digit codes only as whole numbers (a uuid's hex may hold digit runs)."""
    out = []
    for secret in found_secrets:
        pattern = rf"(?<![0-9A-Za-z]){re.escape(secret)}(?![0-9A-Za-z])" if secret.isdigit() else re.escape(secret)
        if re.search(pattern, text):
            out.append(secret)
    return out


async def ws_attempt(url: str, subprotocols=None) -> tuple:
    """Connect, send a ping, and report how it went: ('open', first frame) or ('closed', code)."""
    try:
        conn = await websocket_connect(HTTPRequest(url, request_timeout=10), subprotocols=subprotocols)
    except Exception as exc:  # a refused upgrade
        return ("refused", str(exc))
    try:
        await conn.write_message(json.dumps({"type": "ping"}))
        msg = await conn.read_message()
        return ("open", msg) if msg is not None else ("closed", conn.close_code)
    except WebSocketClosedError:
        return ("closed", conn.close_code)
    finally:
        conn.close()


async def test_abusive_clients_leave_no_secret_in_the_server_log(tmp_path):
    server = ServerProcess(tmp_path / "data", LOG_LEVEL="DEBUG")
    server.start()
    used: list[str] = []  # every secret that goes over the wire
    try:
        api = Api(server.base_url)
        ws_base = server.base_url.replace("http://", "ws://") + "/api/v1/chat/ws"
        name, address, password = f"logs{uuid.uuid4().hex[:8]}", f"{uuid.uuid4().hex[:10]}@example.com", f"Pw-{uuid.uuid4().hex}"
        used.append(password)
        assert (await api.post("/api/v1/auth/register", {"username": name, "email": address, "password": password,
                                                         "user_type": "client"})).status == 201
        code = otp_from_outbox(server.data_dir, address)
        wrong_code = random_code(code)
        used += [code, wrong_code]
        assert (await api.post("/api/v1/auth/verify-account", {"email": address, "otp": wrong_code})).status == 400
        verified = await api.post("/api/v1/auth/verify-account", {"email": address, "otp": code})
        assert verified.status == 200, verified
        used += [verified.json["access_token"], verified.json["refresh_token"]]

        # Wrong passwords (JSON, form, one in the query too), for this account and for names that
        # have none; then the right password.
        for i in range(7):
            wrong = f"Wrong-{i}-{uuid.uuid4().hex}"
            used.append(wrong)
            who = name if i < 4 else f"nobody{uuid.uuid4().hex[:6]}" if i == 4 else "ghost-user"
            if i % 2:
                form = f"username={who}&password={wrong}"
                r = await api.request("POST", "/api/v1/auth/login", body=form,
                                      headers={"Content-Type": "application/x-www-form-urlencoded"})
            else:
                r = await api.post("/api/v1/auth/login", {"username": who, "password": wrong})
            assert r.status == 401, r
        # The password in the query too: a key login does not take, so a 422 naming it (no login is tried).
        wrong = f"Wrong-q-{uuid.uuid4().hex}"
        used.append(wrong)
        r = await api.request("POST", f"/api/v1/auth/login?password={wrong}", body=f"username={name}&password={wrong}",
                              headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert r.status == 422 and [e["field"] for e in r.json["errors"]] == ["password"], r
        login = await api.post("/api/v1/auth/login", {"username": name, "password": password})
        assert login.status == 200, login
        used += [login.json["access_token"], login.json["refresh_token"]]
        token = verified.json["access_token"]
        refresh = verified.json["refresh_token"]
        forged = forged_jwt()
        opaque = secrets.token_urlsafe(24)
        used += [forged, opaque]

        # Tokens where they do not belong, and tokens that are wrong.
        for path in (f"/api/v1/users/me?token={token}&access_token={token}&refresh_token={refresh}",
                     f"/api/v1/nothing-here?token={token}&otp={code}&password={password}&code={code}",
                     f"/api/v1/users/me?token={forged}"):
            r = await api.get(path, headers={"Authorization": f"Bearer {forged}"})
            assert r.status in (401, 404), r
        assert (await api.get("/api/v1/users/me", headers={"Authorization": f"Bearer {opaque}"})).status == 401
        assert (await api.get("/api/v1/users/me", headers={"Authorization": f"Token {token}"})).status == 401
        assert (await api.get("/api/v1/users/me", token=token)).status == 200
        r = await api.request("POST", f"/api/v1/no-such-route?token={token}", body=json.dumps({"password": password}),
                              headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"})
        assert r.status == 404, r
        # Bodies that used to make a handler fail (deep nesting, a NUL in a media path), with secrets attached.
        await api.request("POST", f"/api/v1/auth/login?token={token}", body="[" * 2000 + "]" * 2000,
                          headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"})
        await api.get(f"/media/%00?token={token}", headers={"Authorization": f"Bearer {token}"})
        malformed = await api.request("POST", "/api/v1/auth/login", body=f"--x\r\npassword={password}",
                                      headers={"Content-Type": "multipart/form-data; boundary=y"})
        assert malformed.status in (400, 422), malformed
        assert (await api.post("/api/v1/auth/refresh", {"refresh_token": forged})).status == 401

        # Rotation, then a reuse of the spent refresh token (logged as an event: the family, not the token).
        rotated = await api.post("/api/v1/auth/refresh", {"refresh_token": refresh})
        assert rotated.status == 200, rotated
        used += [rotated.json["access_token"], rotated.json["refresh_token"]]
        assert (await api.post("/api/v1/auth/refresh", {"refresh_token": refresh})).status == 401

        # The password reset flow: a code, a wrong code, the otp token, the new password, the token reused.
        assert (await api.post("/api/v1/auth/send-otp", {"email": address})).status == 202
        reset_code = otp_from_outbox(server.data_dir, address)
        wrong_reset = random_code(reset_code)
        used += [reset_code, wrong_reset]
        assert (await api.post("/api/v1/auth/verify-otp", {"email": address, "otp": wrong_reset})).status == 400
        otp = await api.post("/api/v1/auth/verify-otp", {"email": address, "otp": int(reset_code)})
        assert otp.status == 200, otp
        new_password = f"New-{uuid.uuid4().hex}"
        used += [otp.json["access_token"], new_password]
        reset = await api.put("/api/v1/auth/reset-password", {"password": new_password}, token=otp.json["access_token"])
        assert reset.status == 204, reset
        again = await api.put(f"/api/v1/auth/reset-password?token={otp.json['access_token']}", {"password": new_password},
                              token=otp.json["access_token"])
        assert again.status == 401
        fresh = await api.post("/api/v1/auth/login", {"username": name, "password": new_password})
        assert fresh.status == 200, fresh
        live = fresh.json["access_token"]
        used += [live, fresh.json["refresh_token"]]

        # The chat socket: the token in the query, in the subprotocol, forged, opaque, stale.
        assert (await ws_attempt(f"{ws_base}?token={live}"))[0] == "open"
        assert (await ws_attempt(ws_base, ["bearer", live]))[0] == "open"
        for attempt in (await ws_attempt(f"{ws_base}?token={forged}"), await ws_attempt(ws_base, ["bearer", forged]),
                        await ws_attempt(f"{ws_base}?token={opaque}"), await ws_attempt(f"{ws_base}?token={token}")):
            assert attempt[0] in ("closed", "refused"), attempt
    finally:
        server.stop()
        server.kill()

    log = server.log_path.read_text(errors="replace")
    assert len(used) >= 20
    assert not leaks(log, used), f"secrets in the server log: {leaks(log, used)}\n{log[-3000:]}"
    assert "$2b$" not in log, "a bcrypt hash (the driver's DEBUG command log) reached the log"
    # The requests did reach the log, with the secrets' places marked: the search above looked at something.
    assert "/api/v1/chat/ws" in log and '"status": 401' in log
    assert "token=[redacted]" in log, log[-3000:]


class _FailingHandler(APIHandler):
    """A bug on purpose: the exception text quotes what the handler was given, as real bugs do."""

    async def get(self):
        raise RuntimeError(f"could not handle {self.request.uri} with {dict(self.request.headers)}")


class _FailingSocket(WebSocketHandler):
    def select_subprotocol(self, subprotocols):
        return subprotocols[0] if subprotocols else None

    def open(self):
        raise RuntimeError(f"socket setup failed for {self.request.uri}, protocols {self.request.headers.get('Sec-WebSocket-Protocol')}")


async def test_a_handler_fault_is_logged_without_the_tokens_it_was_given(sheda):
    records: list[logging.LogRecord] = []
    formatter = logging.Formatter("%(levelname)s %(name)s %(message)s")

    class Keep(logging.Handler):  # attached after the server started: redaction must not depend on our handlers
        def emit(self, record):
            records.append(record)

    keep = Keep(level=logging.DEBUG)
    root = logging.getLogger()
    root.addHandler(keep)
    try:
        sheda.server.app.add_handlers(r".*", [(r"/test-only/fault", _FailingHandler), (r"/test-only/fault-ws", _FailingSocket)])
        user = await sheda.signup("client")
        r = await sheda.api.get(f"/test-only/fault?token={user.token}&password={user.password}",
                                headers={"Authorization": f"Bearer {user.refresh_token}", "Cookie": f"session={user.token}"})
        assert r.status == 500 and r.json["code"] == "internal_error"
        ws_url = sheda.base_url.replace("http://", "ws://") + "/test-only/fault-ws"
        for url, protocols in ((f"{ws_url}?token={user.token}", None), (ws_url, ["bearer", user.token])):
            await ws_attempt(url, protocols)
    finally:
        root.removeHandler(keep)

    text = "\n".join(formatter.format(r) for r in records)
    faults = [r for r in records if r.levelno >= logging.ERROR]
    assert len(faults) >= 2 and "Uncaught exception" in text and "RuntimeError" in text, text
    assert not leaks(text, [user.token, user.refresh_token, user.password]), text
    assert "token=[redacted]" in text and "[redacted]" in text


async def test_redaction_rules_keep_the_line_readable():
    from sheda_rt.logs import redact

    jwt = forged_jwt()
    line = redact(f'404 GET /x?token={jwt}&page=2&status_code=500 (1.2.3.4) {{"code": "not_found", "password": "pw1"}}')
    assert jwt not in line and "pw1" not in line
    assert "page=2" in line and "status_code=500" in line and '"code": "not_found"' in line
    assert redact("Authorization: Bearer abc\nHost: h") == "Authorization: [redacted]\nHost: h"
    assert "opaque99" not in redact("Sec-WebSocket-Protocol was bearer, opaque99")
