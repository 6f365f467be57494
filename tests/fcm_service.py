"""A local FCM (HTTP v1) for the tests: a Tornado server on 127.0.0.1 with Google's OAuth2 token
endpoint and FCM's send endpoint, checking what the real ones check before they accept.

- `POST /token` (the service account's `token_uri`): the JWT bearer grant (RFC 7523):
  `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer`, and an `assertion` JWT signed RS256
  with the service account's private key (verified with its public key), header `kid` = the
  account's `private_key_id`, `iss` = its `client_email`, `aud` = this token endpoint, the
  firebase.messaging scope, `iat`/`exp` at most an hour apart and not expired. Answers
  `{access_token, expires_in, token_type}`, or 400 `invalid_grant`.
- `POST /v1/projects/{project}/messages:send`: `Authorization: Bearer` one of the tokens issued
  here (401 UNAUTHENTICATED otherwise, or once `revoke()`d), the account's project (403
  PERMISSION_DENIED otherwise), and a message of FCM's shape: only `message`, only known fields,
  exactly one target, `data` values all strings, `android.ttl` a duration, `android.priority`
  an enum name, `apns.headers` strings and `apns.payload.aps` an object (400 INVALID_ARGUMENT
  otherwise). A token not in `tokens` is 404 UNREGISTERED, as FCM answers for an uninstalled app.
`answers[token]` queues (status, error code, headers) to answer instead of 200.
"""
from __future__ import annotations

import json
import re
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs

import jwt
import tornado.netutil
import tornado.web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from tornado.httpserver import HTTPServer

SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
MESSAGE_FIELDS = {"name", "data", "notification", "android", "webpush", "apns", "fcm_options", "token", "topic", "condition"}
NOTIFICATION_FIELDS = {"title", "body", "image"}
ANDROID_FIELDS = {"collapse_key", "priority", "ttl", "restricted_package_name", "data", "notification", "fcm_options", "direct_boot_ok"}
ANDROID_NOTIFICATION_FIELDS = {"title", "body", "icon", "color", "sound", "tag", "click_action", "body_loc_key", "body_loc_args",
                               "title_loc_key", "title_loc_args", "channel_id", "ticker", "sticky", "event_time", "local_only",
                               "notification_priority", "default_sound", "default_vibrate_timings", "default_light_settings",
                               "vibrate_timings", "visibility", "notification_count", "light_settings", "image"}
APNS_FIELDS = {"headers", "payload", "fcm_options", "live_activity_token"}


@dataclass
class Received:
    token: str | None
    message: dict | None
    headers: dict
    refused: str | None = None


def service_account(project_id: str, token_uri: str) -> tuple[dict, rsa.RSAPrivateKey]:
    """A service-account key file as the Firebase console downloads it, with a fresh RSA key."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    email = f"firebase-adminsdk-test@{project_id}.iam.gserviceaccount.com"
    return {"type": "service_account", "project_id": project_id, "private_key_id": secrets.token_hex(20), "private_key": pem,
            "client_email": email, "client_id": str(secrets.randbelow(10**20)), "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": token_uri, "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
            "client_x509_cert_url": f"https://www.googleapis.com/robot/v1/metadata/x509/{email}", "universe_domain": "googleapis.com"}, key


def _error(status: int, code: str, message: str, fcm_code: str | None = None, field_name: str | None = None) -> dict:
    details = []
    if fcm_code:
        details.append({"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": fcm_code})
    if field_name:
        details.append({"@type": "type.googleapis.com/google.rpc.BadRequest",
                        "fieldViolations": [{"field": field_name, "description": message}]})
    return {"error": {"code": status, "message": message, "status": code, "details": details}}


def check_message(body: dict) -> str | None:
    """What FCM's request parser refuses (INVALID_ARGUMENT), or None."""
    if set(body) != {"message"} or not isinstance(body["message"], dict):
        return "the body is not {message}"
    m = body["message"]
    if set(m) - MESSAGE_FIELDS:
        return f"unknown message fields {sorted(set(m) - MESSAGE_FIELDS)}"
    if sum(k in m for k in ("token", "topic", "condition")) != 1:
        return "exactly one of token, topic, condition"
    if "token" in m and (not isinstance(m["token"], str) or not m["token"]):
        return "token is not a string"
    data = m.get("data", {})
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        return "data values must be strings"
    note = m.get("notification", {})
    if not isinstance(note, dict) or set(note) - NOTIFICATION_FIELDS or not all(isinstance(v, str) for v in note.values()):
        return "notification takes title, body, image (strings)"
    android = m.get("android", {})
    if not isinstance(android, dict) or set(android) - ANDROID_FIELDS:
        return "unknown android fields"
    if "ttl" in android and not re.fullmatch(r"\d+(\.\d{1,9})?s", str(android["ttl"])):
        return "android.ttl is not a duration"
    if "priority" in android and android["priority"] not in ("NORMAL", "HIGH"):
        return "android.priority is not NORMAL or HIGH"
    if "collapse_key" in android and not isinstance(android["collapse_key"], str):
        return "android.collapse_key is not a string"
    an = android.get("notification", {})
    if not isinstance(an, dict) or set(an) - ANDROID_NOTIFICATION_FIELDS:
        return "unknown android.notification fields"
    if "notification_count" in an and (not isinstance(an["notification_count"], int) or isinstance(an["notification_count"], bool)):
        return "android.notification.notification_count is not an integer"
    apns = m.get("apns", {})
    if not isinstance(apns, dict) or set(apns) - APNS_FIELDS:
        return "unknown apns fields"
    if not all(isinstance(v, str) for v in apns.get("headers", {}).values()):
        return "apns.headers values must be strings"
    if "payload" in apns and not isinstance(apns["payload"].get("aps"), dict):
        return "apns.payload.aps must be an object"
    return None


@dataclass
class FcmService:
    project_id: str = "sheda-test-project"
    tokens: set = field(default_factory=set)  # registration tokens of installed apps
    answers: dict = field(default_factory=dict)  # token -> [(status, error code, headers)]
    received: list = field(default_factory=list)  # send requests
    grants: list = field(default_factory=list)  # (accepted, why not) per token request
    port: int = 0
    server: HTTPServer | None = None
    account: dict = field(default_factory=dict)
    issued: dict = field(default_factory=dict)  # access token -> expiry (time.time())

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def token_uri(self) -> str:
        return f"{self.origin}/token"

    def start(self) -> None:
        app = tornado.web.Application([(r"/token", _TokenHandler, {"service": self}),
                                       (r"/v1/projects/([^/]+)/messages:send", _SendHandler, {"service": self})])
        sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
        self.port = sockets[0].getsockname()[1]
        self.server = HTTPServer(app)
        self.server.add_sockets(sockets)
        self.account, key = service_account(self.project_id, self.token_uri)
        self.public_key = key.public_key()

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()

    def write_account(self, path: Path) -> Path:
        path.write_text(json.dumps(self.account))
        path.chmod(0o600)
        return path

    def accepted(self, token: str | None = None) -> list[Received]:
        return [r for r in self.received if r.refused is None and (token is None or r.token == token)]

    def revoke(self) -> None:
        """Every access token issued so far stops working (as when a key is rotated)."""
        self.issued.clear()

    def grant(self, form: dict) -> tuple[int, dict, str | None]:
        if form.get("grant_type") != GRANT:
            return 400, {"error": "unsupported_grant_type"}, "not the JWT bearer grant"
        assertion = form.get("assertion", "")
        try:
            header = jwt.get_unverified_header(assertion)
            if header.get("alg") != "RS256" or header.get("kid") != self.account["private_key_id"]:
                raise jwt.InvalidTokenError("alg is not RS256 or kid is not the account's private_key_id")
            claims = jwt.decode(assertion, self.public_key, algorithms=["RS256"], audience=self.token_uri,
                                issuer=self.account["client_email"], options={"require": ["iss", "aud", "iat", "exp"]})
        except jwt.PyJWTError as exc:
            return 400, {"error": "invalid_grant", "error_description": str(exc)}, f"assertion refused: {exc}"
        if SCOPE not in str(claims.get("scope", "")).split():
            return 400, {"error": "invalid_scope"}, "no firebase.messaging scope"
        if not 0 < claims["exp"] - claims["iat"] <= 3600:
            return 400, {"error": "invalid_grant", "error_description": "Invalid JWT: exp - iat over an hour"}, "lifetime over an hour"
        access = "ya29.test-" + secrets.token_urlsafe(24)
        self.issued[access] = time.time() + 3600
        return 200, {"access_token": access, "expires_in": 3599, "token_type": "Bearer"}, None

    def send(self, project: str, headers, raw: bytes) -> tuple[int, dict, dict, Received]:
        auth = headers.get("Authorization", "")
        access = auth[7:] if auth.startswith("Bearer ") else ""
        if self.issued.get(access, 0) <= time.time():
            rec = Received(None, None, dict(headers), "no valid bearer token")
            return 401, _error(401, "UNAUTHENTICATED", "Request had invalid authentication credentials."), {}, rec
        if project != self.project_id:
            rec = Received(None, None, dict(headers), f"project {project} is not the account's")
            return 403, _error(403, "PERMISSION_DENIED", "Permission denied on resource project"), {}, rec
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        problem = check_message(body) if isinstance(body, dict) else "the body is not a JSON object"
        if problem:
            return 400, _error(400, "INVALID_ARGUMENT", problem, "INVALID_ARGUMENT"), {}, Received(None, None, dict(headers), problem)
        message = body["message"]
        token = message.get("token")
        rec = Received(token, message, dict(headers))
        queued = self.answers.get(token)
        if queued:
            status, code, extra = queued.pop(0)
            rec.refused = f"answered {status} {code}"
            field_name = "message.token" if code == "INVALID_ARGUMENT" else None
            return status, _error(status, code, f"answered {code}", code, field_name), extra, rec
        if token not in self.tokens:
            rec.refused = "unregistered token"
            return 404, _error(404, "NOT_FOUND", "Requested entity was not found.", "UNREGISTERED"), {}, rec
        return 200, {"name": f"projects/{project}/messages/{len(self.received) + 1}"}, {}, rec


class _TokenHandler(tornado.web.RequestHandler):
    def initialize(self, service: FcmService):
        self.service = service

    def post(self):
        if not self.request.headers.get("Content-Type", "").startswith("application/x-www-form-urlencoded"):
            status, body, refused = 400, {"error": "invalid_request"}, "not a form"
        else:
            form = {k: v[0] for k, v in parse_qs(self.request.body.decode()).items()}
            status, body, refused = self.service.grant(form)
        self.service.grants.append((refused is None, refused))
        self.set_status(status)
        self.finish(body)


class _SendHandler(tornado.web.RequestHandler):
    def initialize(self, service: FcmService):
        self.service = service

    def post(self, project: str):
        status, body, headers, received = self.service.send(project, self.request.headers, self.request.body)
        self.service.received.append(received)
        self.set_status(status)
        for name, value in headers.items():
            self.set_header(name, value)
        self.finish(body)
