"""One-click unsubscribe links (RFC 8058): every email we send names a link that turns that kind
of email off without a login.

The token is `<user id>.<kind>.<signature>`, the signature an HMAC-SHA256 (truncated to 128 bits)
over "unsubscribe", the user id and the kind, keyed with a key derived from the JWT secret (so
processes sharing the secret share links, and a link cannot be made for another user or another
kind). Tokens do not expire: an unsubscribe link in a year-old mail must still work, and all it
can ever do is turn one kind of email off for one user.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
from urllib.parse import quote

from sheda_rt.push.models import KINDS

PATH = "/api/v1/email/unsubscribe"


class UnsubscribeLinks:
    def __init__(self, secret: str, base_url: str):
        self._key = hashlib.sha256(b"sheda email unsubscribe\n" + secret.encode()).digest()
        self.base_url = base_url.rstrip("/")

    def _sign(self, user_id: int, kind: str) -> str:
        mac = hmac.new(self._key, f"unsubscribe\n{user_id}\n{kind}".encode(), hashlib.sha256).digest()[:16]
        return base64.urlsafe_b64encode(mac).decode().rstrip("=")

    def token(self, user_id: int, kind: str) -> str:
        return f"{user_id}.{kind}.{self._sign(user_id, kind)}"

    def verify(self, token: str) -> tuple[int, str] | None:
        """(user id, kind) of a genuine token; None for anything else."""
        parts = token.split(".")
        if len(parts) != 3 or not parts[0].isascii() or not parts[0].isdigit() or len(parts[0]) > 19 or parts[1] not in KINDS:
            return None
        user_id = int(parts[0])
        if not hmac.compare_digest(parts[2], self._sign(user_id, parts[1])):
            return None
        return user_id, parts[1]

    def url(self, user_id: int, kind: str) -> str:
        return f"{self.base_url}{PATH}?token={quote(self.token(user_id, kind))}"

    def headers(self, user_id: int, kind: str) -> dict:
        """RFC 2369 List-Unsubscribe with the RFC 8058 one-click POST marker."""
        return {"List-Unsubscribe": f"<{self.url(user_id, kind)}>", "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}
