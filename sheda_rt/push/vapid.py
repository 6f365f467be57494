"""The VAPID key pair (RFC 8292) this server signs Web Push requests with.

VAPID_PRIVATE_KEY (PEM, or the raw 32-byte key in base64url as web-push tools print it) when
set; otherwise a P-256 key generated once and kept in DATA_DIR/vapid_private_key.pem (0600),
so every process and every restart sign with the same key and browsers' subscriptions (made
with its public key) stay valid."""
from __future__ import annotations

import base64
import os
import secrets
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from py_vapid import Vapid02

from config.settings import SettingsError


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _from_setting(text: str) -> ec.EllipticCurvePrivateKey:
    text = text.strip()
    try:
        if "BEGIN" in text:
            key = serialization.load_pem_private_key(text.encode(), password=None)
        else:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            # a raw P-256 key is 32 bytes: a shorter value (any short word decodes) would sign with a guessable key
            key = ec.derive_private_key(int.from_bytes(raw, "big"), ec.SECP256R1()) if len(raw) == 32 else None
    except (ValueError, TypeError):  # binascii.Error is a ValueError; the key itself is never echoed
        key = None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise SettingsError("invalid setting VAPID_PRIVATE_KEY: must be a P-256 private key (PEM, or 32 bytes in base64url)")
    return key


def _kept(data_dir: Path) -> ec.EllipticCurvePrivateKey:
    path = data_dir / "vapid_private_key.pem"
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        tmp = path.with_name(f"vapid.{secrets.token_hex(6)}.tmp")  # one per writer: racing starts never share it
        tmp.write_bytes(pem)
        tmp.chmod(0o600)
        try:
            os.link(tmp, path)  # fails if another process won the race; then we read theirs
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
    return serialization.load_pem_private_key(path.read_bytes(), password=None)


class VapidKeys:
    def __init__(self, private_key: ec.EllipticCurvePrivateKey):
        self.vapid = Vapid02()
        self.vapid.private_key = private_key
        raw = private_key.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
        self.public_key_b64 = _b64url(raw)

    @classmethod
    def from_settings(cls, settings) -> "VapidKeys":
        configured = settings.vapid_private_key.get_secret_value() if settings.vapid_private_key else None
        return cls(_from_setting(configured) if configured else _kept(settings.data_dir))

    def headers(self, claims: dict) -> dict:
        """`Authorization: vapid t=<JWT>, k=<public key>` for these claims (aud, exp, sub)."""
        return self.vapid.sign(dict(claims))
