"""Push notifications (issue 14 §1-2, Web Push): devices, notification settings, the VAPID key,
and the dispatcher against a local push service that checks what a real one checks
(tests/push_service.py)."""
from __future__ import annotations

import base64
import os

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

DEVICES = "/api/v1/devices"
SETTINGS = "/api/v1/users/me/notification-settings"


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


class Subscriber:
    """A browser's push subscription: its own P-256 key pair and auth secret (RFC 8291)."""

    def __init__(self, endpoint: str):
        self.private_key = ec.generate_private_key(ec.SECP256R1())
        self.auth = os.urandom(16)
        self.endpoint = endpoint

    @property
    def p256dh(self) -> str:
        return b64(self.private_key.public_key().public_bytes(serialization.Encoding.X962,
                                                              serialization.PublicFormat.UncompressedPoint))

    def body(self) -> dict:
        return {"platform": "webpush", "subscription": {"endpoint": self.endpoint, "keys": {"p256dh": self.p256dh, "auth": b64(self.auth)}}}


@pytest.fixture
def settings_overrides():
    return {"push_allow_local_endpoints": False}


async def stored_devices(sheda, **flt) -> list[dict]:
    return await sheda.ctx.db["push_devices"].find(flt).to_list()


async def test_register_list_update_move_and_delete_devices(sheda):
    ada = await sheda.signup()
    bob = await sheda.signup()
    web = Subscriber(f"https://push.example.com/send/{os.urandom(6).hex()}")
    r = await sheda.api.post(DEVICES, web.body(), token=ada.token)
    assert r.status == 201, r
    web_id = r.json["id"]
    assert r.json["platform"] == "webpush" and r.json["endpoint"] == web.endpoint
    fcm_token = "f" + os.urandom(40).hex() + ":APA91b"
    r = await sheda.api.post(DEVICES, {"platform": "fcm", "token": fcm_token}, token=ada.token)
    assert r.status == 201 and r.json["token_hint"] == fcm_token[-8:] and "token" not in r.json, r
    apns = os.urandom(32).hex()
    r = await sheda.api.post(DEVICES, {"platform": "apns", "token": apns, "environment": "sandbox"}, token=ada.token)
    assert r.status == 201 and r.json["environment"] == "sandbox", r
    listed = (await sheda.api.get(DEVICES, token=ada.token)).json["items"]
    assert [d["platform"] for d in listed] == ["webpush", "fcm", "apns"]

    # the same endpoint again (new keys: the browser re-subscribed) updates that device, no duplicate
    again = Subscriber(web.endpoint)
    r = await sheda.api.post(DEVICES, again.body(), token=ada.token)
    assert r.status == 201 and r.json["id"] == web_id
    [doc] = await stored_devices(sheda, endpoint=web.endpoint)
    assert doc["keys"]["p256dh"] == again.p256dh
    # a token moves to the user who registered it last
    r = await sheda.api.post(DEVICES, {"platform": "fcm", "token": fcm_token}, token=bob.token)
    assert r.status == 201
    assert [d["platform"] for d in (await sheda.api.get(DEVICES, token=ada.token)).json["items"]] == ["webpush", "apns"]
    assert [d["platform"] for d in (await sheda.api.get(DEVICES, token=bob.token)).json["items"]] == ["fcm"]
    assert len(await stored_devices(sheda, token=fcm_token)) == 1

    # delete: mine only
    assert (await sheda.api.delete(f"{DEVICES}/{web_id}", token=bob.token)).status == 404
    assert (await sheda.api.delete(f"{DEVICES}/{web_id}", token=ada.token)).status == 204
    assert (await sheda.api.delete(f"{DEVICES}/{web_id}", token=ada.token)).status == 404
    assert await stored_devices(sheda, endpoint=web.endpoint) == []
    assert (await sheda.api.get(DEVICES)).status == 401


async def test_logout_removes_the_devices_of_that_login_only(sheda):
    ada = await sheda.signup()
    phone = Subscriber(f"https://push.example.com/send/{os.urandom(6).hex()}")
    assert (await sheda.api.post(DEVICES, phone.body(), token=ada.token)).status == 201
    # a second login of the same user (another browser) with its own device
    login = (await sheda.api.post("/api/v1/auth/login", {"username": ada.username, "password": ada.password})).json
    laptop = Subscriber(f"https://push.example.com/send/{os.urandom(6).hex()}")
    assert (await sheda.api.post(DEVICES, laptop.body(), token=login["access_token"])).status == 201
    assert (await sheda.api.post("/api/v1/auth/logout", token=ada.token)).status in (200, 204)
    left = await stored_devices(sheda, user_id=ada.id)
    assert [d["endpoint"] for d in left] == [laptop.endpoint]


def bad_bodies(good: dict) -> list:
    sub = good["subscription"]
    keys = sub["keys"]
    off_curve = b64(b"\x04" + b"\x01" * 64)
    return [
        {"platform": "sms", "token": "x"},
        {"platform": "fcm", "token": "a" * 4097},
        {"platform": "fcm", "token": ""},
        {"platform": "fcm", "token": "has spaces"},
        {"platform": "apns", "token": "ab" * 32},  # no environment
        {"platform": "apns", "token": "ab" * 32, "environment": "staging"},
        {"platform": "apns", "token": "zz" * 32, "environment": "sandbox"},
        {"platform": "webpush"},
        {"platform": "webpush", "subscription": {**sub, "keys": {**keys, "p256dh": off_curve}}},
        {"platform": "webpush", "subscription": {**sub, "keys": {**keys, "p256dh": b64(os.urandom(33))}}},
        {"platform": "webpush", "subscription": {**sub, "keys": {**keys, "p256dh": keys["p256dh"][:-3] + "!!!"}}},
        {"platform": "webpush", "subscription": {**sub, "keys": {**keys, "auth": b64(os.urandom(15))}}},
        {"platform": "webpush", "subscription": {**sub, "keys": {"auth": keys["auth"]}}},
        {"platform": "webpush", "subscription": {**sub, "endpoint": "http://push.example.com/x"}},
        {"platform": "webpush", "subscription": {**sub, "endpoint": "https://127.0.0.1/x"}},
        {"platform": "webpush", "subscription": {**sub, "endpoint": "https://10.1.2.3/x"}},
        {"platform": "webpush", "subscription": {**sub, "endpoint": "https://169.254.169.254/latest/meta-data"}},
        {"platform": "webpush", "subscription": {**sub, "endpoint": "https://[::1]:8443/x"}},
        {"platform": "webpush", "subscription": {**sub, "endpoint": "https://localhost/x"}},
        {"platform": "webpush", "subscription": {**sub, "endpoint": "https://metadata.google.internal/x"}},
        {"platform": "webpush", "subscription": {**sub, "endpoint": "https://user:pw@push.example.com/x"}},
        {"platform": "webpush", "subscription": {**sub, "endpoint": "https://push.example.com/" + "a" * 2100}},
        {"platform": "webpush", "subscription": {**sub, "extra": 1}},
        {"platform": "webpush", "subscription": sub, "token": "x"},
    ]


async def test_bad_devices_are_422_and_store_nothing(sheda):
    ada = await sheda.signup()
    good = Subscriber(f"https://push.example.com/send/{os.urandom(6).hex()}").body()
    for bad in bad_bodies(good):
        r = await sheda.api.post(DEVICES, bad, token=ada.token)
        assert r.status == 422, (bad, r)
        assert r.json["code"] == "validation_error" and r.json["errors"], r
    assert await stored_devices(sheda, user_id=ada.id) == []
    assert (await sheda.api.post(DEVICES, good, token=ada.token)).status == 201


async def test_notification_settings(sheda):
    ada = await sheda.signup()
    r = await sheda.api.get(SETTINGS, token=ada.token)
    assert r.status == 200, r
    kinds = {"chat": True, "appointments": True, "contracts": True, "listings": True, "announcements": True}
    assert r.json == {"push": kinds, "email": kinds, "previews": True, "quiet_hours": None}
    wanted = {"push": {**kinds, "listings": False}, "email": {**kinds, "chat": False}, "previews": False,
              "quiet_hours": {"start": "22:00", "end": "07:00", "time_zone": "Africa/Lagos"}}
    r = await sheda.api.put(SETTINGS, wanted, token=ada.token)
    assert r.status == 200 and r.json == wanted, r
    assert (await sheda.api.get(SETTINGS, token=ada.token)).json == wanted
    bob = await sheda.signup()
    assert (await sheda.api.get(SETTINGS, token=bob.token)).json["previews"] is True  # mine only
    for bad in ({**wanted, "quiet_hours": {**wanted["quiet_hours"], "time_zone": "Mars/Olympus"}},
                {**wanted, "quiet_hours": {**wanted["quiet_hours"], "time_zone": "../../etc/passwd"}},
                {**wanted, "quiet_hours": {**wanted["quiet_hours"], "start": "24:00"}},
                {**wanted, "quiet_hours": {**wanted["quiet_hours"], "end": "7:00"}},
                {**wanted, "push": {**kinds, "chat": "yes"}},
                {**wanted, "push": {**kinds, "sms": True}},
                {**wanted, "previews": 1},
                {**wanted, "extra": True}):
        r = await sheda.api.put(SETTINGS, bad, token=ada.token)
        assert r.status == 422, (bad, r)
    assert (await sheda.api.get(SETTINGS, token=ada.token)).json == wanted  # nothing stored by the refused ones
    r = await sheda.api.put(SETTINGS, {}, token=ada.token)
    assert r.status == 200 and r.json["quiet_hours"] is None and r.json["previews"] is True


async def test_vapid_public_key_is_generated_once_and_kept(sheda, tmp_path):
    r = await sheda.api.get("/api/v1/push/vapid-public-key")
    assert r.status == 200, r
    raw = base64.urlsafe_b64decode(r.json["public_key"] + "==")
    ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), raw)  # a real P-256 point
    kept = tmp_path / "vapid_private_key.pem"
    assert kept.exists() and (kept.stat().st_mode & 0o777) == 0o600
    from sheda_rt.push.vapid import VapidKeys

    assert VapidKeys.from_settings(sheda.server.settings).public_key_b64 == r.json["public_key"]  # a restart signs alike
