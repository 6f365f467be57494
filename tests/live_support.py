"""A server as an operator runs it, with users made the way real ones are.

`python run.py` as a real process on a real port (schemathesis and Playwright's sync
API block, so the server cannot share the test's event loop), on the session's
embedded database under a database name of its own. Users register over REST, read
the OTP from the mail outbox and verify; admins are promoted with `run.py promote-admin`.
"""
from __future__ import annotations

import email
import json
import re
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

from tests.process_support import ServerProcess, run_cli

PASSWORD = "correct-horse-1"


@dataclass
class Identity:
    id: int
    username: str
    email: str
    user_type: str
    access_token: str
    refresh_token: str


class LiveServer:
    """One `python run.py` on the session's embedded database (its own database name)."""

    def __init__(self, root: Path, mongodb_uri: str, **env):
        self.data_dir = root / "data"
        self.env = {"MONGODB_URI": mongodb_uri, "MONGODB_DB": "sheda_live_" + uuid.uuid4().hex[:8],
                    "JWT_SECRET": "live-secret-" + "x" * 32, **env}
        self.process = ServerProcess(self.data_dir, **self.env)
        self._seen_mail: dict[str, str] = {}

    @property
    def base_url(self) -> str:
        return self.process.base_url

    def start(self) -> "LiveServer":
        self.process.start()
        return self

    def stop(self) -> None:
        try:
            self.process.stop()
        finally:
            self.process.kill()

    def request(self, method: str, path: str, body: dict | None = None, token: str | None = None) -> tuple[int, dict]:
        return self.process.request(method, path, body, token)

    def otp_for(self, address: str) -> str:
        """The newest 6-digit code mailed to `address` (the outbox holds one .eml per mail)."""
        outbox = self.data_dir / "outbox"
        for path in sorted(outbox.glob("*.eml")):
            if path.name not in self._seen_mail:
                msg = email.message_from_bytes(path.read_bytes())
                body = msg.get_payload(decode=True) if not msg.is_multipart() else msg.get_payload(0).get_payload(decode=True)
                self._seen_mail[path.name] = f"{msg['To']}\n{(body or b'').decode('utf-8', 'replace')}"
        for text in reversed([self._seen_mail[name] for name in sorted(self._seen_mail)]):
            to, _, body = text.partition("\n")
            if to.strip().lower() == address.lower():
                match = re.search(r"\b(\d{6})\b", body)
                if match:
                    return match.group(1)
        raise AssertionError(f"no OTP mailed to {address}")

    def signup(self, user_type: str = "client") -> Identity:
        name = user_type[0] + uuid.uuid4().hex[:12]
        address = f"{name}@example.com"
        status, created = self.request("POST", "/api/v1/auth/register", {
            "username": name, "email": address, "password": PASSWORD, "user_type": user_type})
        assert status == 201, (status, created)
        status, tokens = self.request("POST", "/api/v1/auth/verify-account", {"email": address, "otp": self.otp_for(address)})
        assert status == 200, (status, tokens)
        return Identity(created["id"], name, address, user_type, tokens["access_token"], tokens["refresh_token"])

    def login(self, who: Identity) -> Identity:
        status, tokens = self.request("POST", "/api/v1/auth/login", {"username": who.username, "password": PASSWORD})
        assert status == 200, (status, tokens)
        return Identity(who.id, who.username, who.email, who.user_type, tokens["access_token"], tokens["refresh_token"])

    def admin(self) -> Identity:
        """A client promoted by the operator's command, then logged in again for the admin scope."""
        user = self.signup("client")
        code, out, err = run_cli(self.data_dir, "promote-admin", user.username, env_extra=self.env)
        assert code == 0 and "is now an admin" in out, (code, out, err)
        return self.login(user)


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as resp:
        return json.loads(resp.read())
