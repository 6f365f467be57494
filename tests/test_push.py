"""Push notifications (issue 14 §1-2, Web Push): devices, notification settings, the VAPID key,
and the dispatcher against a local push service that checks what a real one checks
(tests/push_service.py)."""
from __future__ import annotations

import base64
import json
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
    # The local push service is on 127.0.0.1 (allowed here only); the tests run due jobs themselves
    # after moving the clock, so the background poll is slowed out of the way.
    return {"push_allow_local_endpoints": True, "job_poll_seconds": 3600, "push_grace_seconds": 10}


LOCAL_REFUSED = {"push_allow_local_endpoints": False}


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


async def test_a_login_signed_out_for_a_reused_refresh_token_loses_its_devices(sheda):
    """A refresh token presented twice signs its login out (someone holds a copy): the devices registered
    by that login are deleted as a logout deletes them, or the copy's holder, or a phone nobody is signed
    in on, kept getting message text. The user's other logins keep theirs."""
    ada = await sheda.signup()
    phone = Subscriber(f"https://push.example.com/send/{os.urandom(6).hex()}")
    assert (await sheda.api.post(DEVICES, phone.body(), token=ada.token)).status == 201
    login = (await sheda.api.post("/api/v1/auth/login", {"username": ada.username, "password": ada.password})).json
    laptop = Subscriber(f"https://push.example.com/send/{os.urandom(6).hex()}")
    assert (await sheda.api.post(DEVICES, laptop.body(), token=login["access_token"])).status == 201
    assert (await sheda.api.post("/api/v1/auth/refresh", {"refresh_token": ada.refresh_token})).status == 200
    reused = await sheda.api.post("/api/v1/auth/refresh", {"refresh_token": ada.refresh_token})
    assert reused.status == 401 and reused.json["code"] == "refresh_reused", reused
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


@pytest.mark.parametrize("settings_overrides", [LOCAL_REFUSED])
async def test_bad_devices_are_422_and_store_nothing(sheda):
    ada = await sheda.signup()
    good = Subscriber(f"https://push.example.com/send/{os.urandom(6).hex()}").body()
    for bad in bad_bodies(good):
        r = await sheda.api.post(DEVICES, bad, token=ada.token)
        assert r.status == 422, (bad, r)
        assert r.json["code"] == "validation_error" and r.json["errors"], r
    assert await stored_devices(sheda, user_id=ada.id) == []
    assert (await sheda.api.post(DEVICES, good, token=ada.token)).status == 201


async def test_a_bad_device_422_names_the_fields_of_the_body_not_the_platform_union(sheda):
    """errors[].field is the body field at fault: pydantic's location starts with the `platform` union's
    tag (`fcm.token`, `webpush.subscription.keys.auth`), which is no field a client sent."""
    ada = await sheda.signup()
    for body, fields in (({"platform": "fcm", "token": ""}, ["token"]),
                         ({"platform": "apns", "token": "ab"}, ["token", "environment"]),
                         ({"platform": "webpush", "subscription": {"endpoint": "https://push.example.com/x",
                                                                   "keys": {"p256dh": "x"}}},
                          ["subscription.keys.p256dh", "subscription.keys.auth"]),
                         ({"platform": "sms", "token": "x"}, ["platform"]),
                         ({"token": "x"}, ["platform"])):
        r = await sheda.api.post(DEVICES, body, token=ada.token)
        assert r.status == 422 and [e["field"] for e in r.json["errors"]] == fields, (body, r)
    # a field that takes one of several forms: its own name, not the forms' (muted_until.datetime)
    bob = await sheda.signup()
    assert (await sheda.api.post("/api/v1/chats", {"receiver_id": bob.id, "message": "hi"}, token=ada.token)).status == 201
    r = await sheda.api.patch(f"/api/v1/chat/conversations/{bob.id}/settings", {"muted_until": "tomorrow"}, token=ada.token)
    assert r.status == 422 and {e["field"] for e in r.json["errors"]} == {"muted_until"}, r


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
    # Names the zone database holds that are no place's zone: the server's own (localtime), tzdata's placeholder
    # (Factory), posixrules, and the posix/ and right/ (leap-second) copies: the unknown zone's 422
    for zone in ("localtime", "posixrules", "Factory", "posix/Africa/Lagos", "right/Africa/Lagos"):
        r = await sheda.api.put(SETTINGS, {**wanted, "quiet_hours": {**wanted["quiet_hours"], "time_zone": zone}}, token=ada.token)
        assert r.status == 422 and r.json["code"] == "validation_error", (zone, r)
        assert [e["field"] for e in r.json["errors"]] == ["quiet_hours.time_zone"], (zone, r.json)
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


# ---- the dispatcher, against the local push service --------------------------------------------
import asyncio  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402

from tests.push_service import PushService  # noqa: E402
from tests.redis_support import redis_server  # noqa: E402,F401  (fixture)


@pytest.fixture
def push(sheda, io_loop):
    service = PushService()
    service.start()
    service.vapid_public_key = sheda.ctx.push.vapid.public_key_b64
    yield service
    service.stop()


async def subscribed(sheda, push, user) -> tuple[Subscriber, int]:
    endpoint_id = uuid.uuid4().hex
    sub = Subscriber(push.endpoint(endpoint_id))
    push.subscribers[endpoint_id] = sub
    r = await sheda.api.post(DEVICES, sub.body(), token=user.token)
    assert r.status == 201, r
    sub.endpoint_id = endpoint_id
    return sub, r.json["id"]


async def send(sheda, sender, receiver, *texts) -> list[int]:
    ws = await sheda.ws(sender.token)
    ids = []
    for text in texts:
        await ws.send({"receiver_id": receiver.id, "message": text})
        ids.append((await ws.wait_for(lambda f, n=len(ids): f.get("type") == "ack" and len(ws.of_type("ack")) > n))["id"])
    ws.close()
    return ids


async def jobs_of(sheda, device_id: int) -> list[dict]:
    return await sheda.ctx.db["jobs"].find({"kind": "push.webpush", "payload.device_id": device_id}).to_list()


async def until_jobs(sheda, device_id: int, n: int = 1) -> list[dict]:
    """The dispatcher enqueues in the background right after delivery: wait for it (bounded)."""
    for _ in range(200):
        found = await jobs_of(sheda, device_id)
        if len(found) >= n:
            return found
        await asyncio.sleep(0.02)
    raise AssertionError(f"no push job for device {device_id}")


async def run_jobs(sheda) -> int:
    return await sheda.ctx.job_runner.run_due()


async def test_offline_user_gets_one_encrypted_web_push_after_the_grace_period(sheda, push):
    ada = await sheda.signup(full_name="Ada Obi")
    bob = await sheda.signup(full_name="Bob Eze")
    sub, device_id = await subscribed(sheda, push, ada)
    await send(sheda, bob, ada, "Is the flat still available?")
    [job] = await until_jobs(sheda, device_id)
    assert job["status"] == "pending"
    await run_jobs(sheda)
    assert push.received == []  # inside the grace period
    sheda.ctx.clock.advance(seconds=11)
    await run_jobs(sheda)
    [got] = push.accepted(sub.endpoint_id)
    assert [r.refused for r in push.received] == [None], push.received
    assert got.payload["title"] == "New message from Bob Eze"
    assert got.payload["body"] == "Is the flat still available?"
    assert got.payload["badge"] == 1 and got.payload["count"] == 1
    assert got.payload["conversation"] == {"other_user_id": bob.id}
    assert got.headers["Ttl"] and got.headers["Topic"] and len(got.headers["Topic"]) <= 32
    assert (await jobs_of(sheda, device_id))[0]["status"] == "done"
    sheda.ctx.clock.advance(seconds=60)
    await run_jobs(sheda)
    assert len(push.received) == 1  # exactly once


async def test_online_user_gets_no_push(sheda, push):
    ada = await sheda.signup()
    bob = await sheda.signup()
    sub, device_id = await subscribed(sheda, push, ada)
    ada_ws = await sheda.ws(ada.token)
    await send(sheda, bob, ada, "hello")
    await ada_ws.wait_type("message")
    await asyncio.sleep(0.2)  # let the dispatcher look
    assert await jobs_of(sheda, device_id) == []
    sheda.ctx.clock.advance(seconds=30)
    await run_jobs(sheda)
    assert push.received == []
    ada_ws.close()


async def test_messages_collapse_into_one_push_with_the_unread_total_as_badge(sheda, push):
    ada = await sheda.signup(full_name="Ada Obi")
    bob = await sheda.signup(full_name="Bob Eze")
    carol = await sheda.signup(full_name="Carol Ike")
    sub, device_id = await subscribed(sheda, push, ada)
    await send(sheda, bob, ada, "one", "two", "three")
    await send(sheda, carol, ada, "hi from carol")
    await until_jobs(sheda, device_id, 2)
    assert len(await jobs_of(sheda, device_id)) == 2  # one per conversation, not per message
    sheda.ctx.clock.advance(seconds=11)
    await run_jobs(sheda)
    got = {r.payload["conversation"]["other_user_id"]: r.payload for r in push.accepted(sub.endpoint_id)}
    assert len(push.received) == 2
    assert got[bob.id]["title"] == "3 new messages from Bob Eze" and got[bob.id]["body"] == "three" and got[bob.id]["count"] == 3
    assert got[carol.id]["title"] == "New message from Carol Ike"
    assert got[bob.id]["badge"] == got[carol.id]["badge"] == 4
    # later messages of a conversation whose push went out make a new push
    await send(sheda, bob, ada, "four")
    for _ in range(100):
        if any(j["status"] == "pending" for j in await jobs_of(sheda, device_id)):
            break
        await asyncio.sleep(0.02)
    sheda.ctx.clock.advance(seconds=11)
    await run_jobs(sheda)
    assert len(push.accepted(sub.endpoint_id)) == 3
    assert push.accepted(sub.endpoint_id)[-1].payload["title"] == "4 new messages from Bob Eze"


async def test_a_message_the_sending_push_already_counted_is_not_pushed_again(sheda, push):
    """A message stored while its conversation's push job is running gets a second job (key
    `push:<device>:<conv>:<message>`), in case the running one read the unread messages before it.
    When the running one counted it after all, the second must send nothing: the phone rang twice
    with the same "2 new messages". (Which of the two happened depends on timing, so the second job
    is made here as the dispatcher makes it, after the first push went out with the message counted.)"""
    ada = await sheda.signup()
    bob = await sheda.signup()
    sub, device_id = await subscribed(sheda, push, ada)
    first, second = await send(sheda, bob, ada, "one", "two")
    [job] = await until_jobs(sheda, device_id)
    sheda.ctx.clock.advance(seconds=11)
    await run_jobs(sheda)
    [got] = push.accepted(sub.endpoint_id)
    assert got.payload["count"] == 2 and got.payload["up_to"] == second
    await sheda.ctx.job_runner.enqueue("push.webpush", dict(job["payload"], first_id=second), key=f"{job['_id']}:{second}",
                                       run_at=sheda.ctx.clock.now())
    await run_jobs(sheda)
    assert len(push.accepted(sub.endpoint_id)) == 1
    assert (await sheda.ctx.db["jobs"].find_one({"_id": f"{job['_id']}:{second}"}))["result"]["outcome"] == "already_sent"
    # a message newer than what was pushed is pushed, by either job
    [third] = await send(sheda, bob, ada, "three")
    await sheda.ctx.job_runner.enqueue("push.webpush", dict(job["payload"], first_id=third), key=f"{job['_id']}:{third}",
                                       run_at=sheda.ctx.clock.now())
    await run_jobs(sheda)
    assert [r.payload["up_to"] for r in push.accepted(sub.endpoint_id)] == [second, third]


async def test_reading_on_another_device_cancels_the_pending_push(sheda, push):
    ada = await sheda.signup()
    bob = await sheda.signup()
    sub, device_id = await subscribed(sheda, push, ada)
    [mid] = await send(sheda, bob, ada, "are you there?")
    await until_jobs(sheda, device_id)
    r = await sheda.api.post("/api/v1/chat/read", {"other_user_id": bob.id, "up_to": mid}, token=ada.token)
    assert r.status == 200, r
    for _ in range(100):
        if (await jobs_of(sheda, device_id))[0]["status"] == "cancelled":
            break
        await asyncio.sleep(0.02)
    assert (await jobs_of(sheda, device_id))[0]["status"] == "cancelled"
    sheda.ctx.clock.advance(seconds=11)
    await run_jobs(sheda)
    assert push.received == []


async def badge_jobs(sheda, device_id: int) -> list[dict]:
    return [j for j in await jobs_of(sheda, device_id) if j["payload"].get("badge_update")]


async def until_badge_job(sheda, device_id: int) -> dict:
    """The read reaches the dispatcher in the background: wait for the update it makes (bounded)."""
    for _ in range(200):
        if found := [j for j in await badge_jobs(sheda, device_id) if j["status"] == "pending"]:
            return found[0]
        await asyncio.sleep(0.02)
    raise AssertionError(f"no pending badge update for device {device_id}: {await jobs_of(sheda, device_id)}")


async def test_a_read_elsewhere_sends_one_silent_badge_update_that_closes_the_shown_pushes(sheda, push):
    """The phone shows "3 new messages from Bob" and badge 4; Ada reads on the web (a socket, then REST): the
    phone gets ONE silent update (a burst of reads collapses), with the new unread total and the tags of the
    shown pushes now read, so its service worker closes them. A device that was sent no push gets none."""
    ada = await sheda.signup(full_name="Ada Obi")
    bob = await sheda.signup(full_name="Bob Eze")
    carol = await sheda.signup(full_name="Carol Ike")
    phone, phone_id = await subscribed(sheda, push, ada)
    *_, bob_last = await send(sheda, bob, ada, "one", "two", "three")
    [carol_last] = await send(sheda, carol, ada, "hi from carol")
    await until_jobs(sheda, phone_id, 2)
    sheda.ctx.clock.advance(seconds=11)
    await run_jobs(sheda)
    shown = {r.payload["conversation"]["other_user_id"]: r for r in push.accepted(phone.endpoint_id)}
    assert shown[bob.id].payload["badge"] == 4 and len(push.received) == 2
    for r in shown.values():  # the tag the service worker shows it under is the push's Topic (one per conversation)
        assert r.payload["tag"] == r.headers["Topic"]
    laptop, laptop_id = await subscribed(sheda, push, ada)  # registered after: it shows nothing

    ws = await sheda.ws(ada.token)
    await ws.send({"type": "read", "other_user_id": bob.id, "up_to": bob_last})
    job = await until_badge_job(sheda, phone_id)
    assert job["_id"] == f"push:{phone_id}:badge"
    ws.close()
    r = await sheda.api.post("/api/v1/chat/read", {"other_user_id": carol.id, "up_to": carol_last}, token=ada.token)
    assert r.status == 200, r
    await sheda.ctx.push.dispatch.drain()
    assert len(await badge_jobs(sheda, phone_id)) == 1 and await jobs_of(sheda, laptop_id) == []
    await run_jobs(sheda)
    assert len(push.received) == 2  # after the grace period only
    sheda.ctx.clock.advance(seconds=11)
    await run_jobs(sheda)
    [update] = push.accepted(phone.endpoint_id)[2:]
    assert update.payload["type"] == "badge" and update.payload["badge"] == 0, update.payload
    assert sorted(update.payload["clear"], key=lambda c: c["conversation"]["other_user_id"]) == [
        {"conversation": {"other_user_id": bob.id}, "tag": shown[bob.id].payload["tag"]},
        {"conversation": {"other_user_id": carol.id}, "tag": shown[carol.id].payload["tag"]}]
    assert "title" not in update.payload and "body" not in update.payload
    assert push.accepted(laptop.endpoint_id) == []
    [job] = await badge_jobs(sheda, phone_id)
    assert job["status"] == "done" and job["result"]["outcome"] == "sent" and job["result"]["cleared"] == 2
    # exactly once; and with nothing shown any more, a further read makes no update
    sheda.ctx.clock.advance(seconds=60)
    await run_jobs(sheda)
    assert len(push.received) == 3
    assert not (await sheda.ctx.db["push_devices"].find_one({"_id": phone_id})).get("shown")
    [again] = await send(sheda, bob, ada, "still there?")
    for _ in range(200):  # the conversation's push job, re-armed
        if any(j["status"] == "pending" for j in await jobs_of(sheda, phone_id)):
            break
        await asyncio.sleep(0.02)
    r = await sheda.api.post("/api/v1/chat/read", {"other_user_id": bob.id, "up_to": again}, token=ada.token)
    assert r.status == 200, r  # read before its push went out: the push is cancelled, and the phone shows nothing
    await sheda.ctx.push.dispatch.drain()
    sheda.ctx.clock.advance(seconds=60)
    await run_jobs(sheda)
    assert len(push.received) == 3 and [j["status"] for j in await badge_jobs(sheda, phone_id)] == ["done"]


async def test_a_notification_read_elsewhere_closes_its_push_even_in_quiet_hours(sheda, push):
    """A stored notification's push is shown; the agent marks all read on the web inside quiet hours: the phone
    gets the update then (it shows nothing, so quiet hours do not hold it), naming the notification."""
    from datetime import timedelta
    from zoneinfo import ZoneInfo

    agent, client, prop, when = await viewing_offer(sheda)
    sub, device_id = await subscribed(sheda, push, agent)
    booked = await book(sheda, client, prop["id"], when)
    assert booked.status == 201, booked
    await until_jobs(sheda, device_id)
    await run_jobs(sheda)
    [shown] = push.accepted(sub.endpoint_id)
    assert shown.payload["tag"] == shown.headers["Topic"]
    local = sheda.ctx.clock.now().astimezone(ZoneInfo("Africa/Lagos"))
    quiet = {"start": (local - timedelta(hours=1)).strftime("%H:%M"), "end": (local + timedelta(hours=2)).strftime("%H:%M"),
             "time_zone": "Africa/Lagos"}
    assert (await sheda.api.put(SETTINGS, {"quiet_hours": quiet, "push": {"appointments": False}}, token=agent.token)).status == 200
    r = await sheda.api.post("/api/v1/notifications/read-all", {}, token=agent.token)
    assert r.status == 200 and r.json["marked_read"] == 1, r
    await sheda.ctx.push.dispatch.drain()
    await until_badge_job(sheda, device_id)
    sheda.ctx.clock.advance(seconds=11)
    await run_jobs(sheda)
    [update] = push.accepted(sub.endpoint_id)[1:]
    assert update.payload == {"type": "badge", "badge": 0,
                              "clear": [{"notification_id": shown.payload["notification_id"], "tag": shown.payload["tag"]}]}


async def test_a_user_deactivated_while_a_push_waits_gets_nothing(sheda, push):
    # A message (or a reminder) queued in the grace period, then the account is deactivated
    # (by its owner here; an admin or moderator the same): the job must not reach the device.
    from datetime import timedelta

    from sheda_rt.push.provider import Notification
    ada = await sheda.signup()
    bob = await sheda.signup()
    sub, device_id = await subscribed(sheda, push, ada)
    await send(sheda, bob, ada, "are you there?")
    await until_jobs(sheda, device_id)
    await sheda.ctx.push.dispatch.notify(ada.id, "appointments", Notification("Viewing in one hour", "12 Bode St", 0, "appt-1",
                                                                              {"type": "appointment.reminder"}),
                                         "reminder:test", sheda.ctx.clock.now() + timedelta(hours=1))
    assert len(await jobs_of(sheda, device_id)) == 2
    assert (await sheda.api.delete("/api/v1/users/me", token=ada.token)).status in (200, 204)
    sheda.ctx.clock.advance(seconds=11)
    await run_jobs(sheda)
    assert push.received == []
    assert {j["status"] for j in await jobs_of(sheda, device_id)} == {"done"}


async def test_a_password_reset_signs_out_every_device_and_a_new_login_registers_again(sheda, push):
    # A reset signs the account out everywhere (whoever had the old password may hold a login): the
    # devices registered by those logins stop getting message text, as a logout's do, and are deleted.
    from tests.support import otp_from_mail
    ada = await sheda.signup()
    bob = await sheda.signup()
    sub, device_id = await subscribed(sheda, push, ada)
    assert (await sheda.api.post("/api/v1/auth/send-otp", {"email": ada.email})).status == 202
    otp = await sheda.api.post("/api/v1/auth/verify-otp", {"email": ada.email, "otp": otp_from_mail(sheda.ctx.mailer, ada.email)})
    reset = await sheda.api.put("/api/v1/auth/reset-password", {"password": "new-password-2"}, token=otp.json["access_token"])
    assert reset.status in (200, 204), reset
    await send(sheda, bob, ada, "private")
    await until_jobs(sheda, device_id)
    sheda.ctx.clock.advance(seconds=11)
    await run_jobs(sheda)
    assert push.received == []
    assert await stored_devices(sheda, _id=device_id) == []
    # signed in again, the browser registers its subscription again and gets pushes
    login = await sheda.api.post("/api/v1/auth/login", {"username": ada.username, "password": "new-password-2"})
    assert (await sheda.api.post(DEVICES, sub.body(), token=login.json["access_token"])).status == 201
    await send(sheda, bob, ada, "hello again")
    await until_jobs(sheda, (await stored_devices(sheda, user_id=ada.id))[0]["_id"])
    sheda.ctx.clock.advance(seconds=11)
    await run_jobs(sheda)
    assert [r.payload["body"] for r in push.accepted(sub.endpoint_id)] == ["hello again"]


async def test_a_message_deleted_in_the_grace_period_is_not_pushed(sheda, push):
    # Deleted for everyone (a tombstone) or by the receiver for themselves on another device: no
    # "New message" push for it; an older unread message of the conversation is what the push shows.
    ada = await sheda.signup()
    bob = await sheda.signup()
    sub, device_id = await subscribed(sheda, push, ada)
    [oops] = await send(sheda, bob, ada, "my PIN is 1234, oops")
    assert (await sheda.api.delete(f"/api/v1/chat/messages/{oops}?for=everyone", token=bob.token)).status == 200
    await until_jobs(sheda, device_id)
    sheda.ctx.clock.advance(seconds=11)
    await run_jobs(sheda)
    assert push.received == []
    first, spam = await send(sheda, bob, ada, "hello", "spam")
    assert (await sheda.api.delete(f"/api/v1/chat/messages/{spam}?for=me", token=ada.token)).status == 200
    for _ in range(100):
        if [j for j in await jobs_of(sheda, device_id) if j["status"] == "pending"]:
            break
        await asyncio.sleep(0.02)
    sheda.ctx.clock.advance(seconds=11)
    await run_jobs(sheda)
    [got] = push.accepted(sub.endpoint_id)
    assert got.payload["body"] == "hello" and got.payload["up_to"] == first and got.payload["count"] == 1


async def test_a_message_from_someone_blocked_in_the_grace_period_is_not_pushed(sheda, push):
    # Ada blocks Bob right after his message came (before its push was due): her phone must not then
    # show "New message from Bob" with his text; Carol's message is pushed as usual.
    ada = await sheda.signup()
    bob = await sheda.signup()
    carol = await sheda.signup()
    sub, device_id = await subscribed(sheda, push, ada)
    await send(sheda, bob, ada, "you will answer me")
    await send(sheda, carol, ada, "lunch?")
    await until_jobs(sheda, device_id, 2)
    assert (await sheda.api.post(f"/api/v1/users/{bob.id}/block", {}, token=ada.token)).status == 201
    sheda.ctx.clock.advance(seconds=11)
    await run_jobs(sheda)
    assert [r.payload["body"] for r in push.accepted(sub.endpoint_id)] == ["lunch?"]
    assert "blocked" in {j["result"]["outcome"] for j in await jobs_of(sheda, device_id)}


async def test_previews_off_sends_no_text(sheda, push):
    ada = await sheda.signup()
    bob = await sheda.signup()
    sub, device_id = await subscribed(sheda, push, ada)
    assert (await sheda.api.put(SETTINGS, {"previews": False}, token=ada.token)).status == 200
    await send(sheda, bob, ada, "my secret offer")
    await until_jobs(sheda, device_id)
    sheda.ctx.clock.advance(seconds=11)
    await run_jobs(sheda)
    [got] = push.accepted(sub.endpoint_id)
    assert got.payload["body"] is None and "secret" not in json.dumps(got.payload)


async def test_quiet_hours_hold_the_push_until_they_end(sheda, push):
    from datetime import timedelta
    from zoneinfo import ZoneInfo

    ada = await sheda.signup()
    bob = await sheda.signup()
    sub, device_id = await subscribed(sheda, push, ada)
    local = sheda.ctx.clock.now().astimezone(ZoneInfo("Africa/Lagos"))
    start, end = (local - timedelta(hours=1)).strftime("%H:%M"), (local + timedelta(hours=2)).strftime("%H:%M")
    quiet = {"start": start, "end": end, "time_zone": "Africa/Lagos"}
    assert (await sheda.api.put(SETTINGS, {"quiet_hours": quiet}, token=ada.token)).status == 200
    await send(sheda, bob, ada, "late night question")
    await until_jobs(sheda, device_id)
    sheda.ctx.clock.advance(seconds=11)
    await run_jobs(sheda)
    assert push.received == []
    [job] = await jobs_of(sheda, device_id)
    assert job["status"] == "pending" and job["attempts"] == 0  # held, not failed
    assert timedelta(hours=1, minutes=50) < job["run_at"] - job["updated_at"] <= timedelta(hours=2)  # until the quiet hours end
    sheda.ctx.clock.advance(hours=2)
    await run_jobs(sheda)
    [got] = push.accepted(sub.endpoint_id)
    assert got.payload["body"] == "late night question"


async def test_gone_device_is_deleted_and_429_retries_after_retry_after(sheda, push):
    ada = await sheda.signup()
    bob = await sheda.signup()
    gone, gone_id = await subscribed(sheda, push, ada)
    busy, busy_id = await subscribed(sheda, push, ada)
    push.answers[gone.endpoint_id] = [(410, {})]
    push.answers[busy.endpoint_id] = [(429, {"Retry-After": "120"})]
    await send(sheda, bob, ada, "ping")
    await until_jobs(sheda, gone_id)
    await until_jobs(sheda, busy_id)
    sheda.ctx.clock.advance(seconds=11)
    await run_jobs(sheda)
    assert [d["_id"] for d in await stored_devices(sheda, user_id=ada.id)] == [busy_id]  # 410: deleted
    assert (await jobs_of(sheda, gone_id))[0]["status"] == "done"
    [job] = await jobs_of(sheda, busy_id)
    assert job["status"] == "pending" and (job["run_at"] - job["updated_at"]).total_seconds() == 120
    sheda.ctx.clock.advance(seconds=60)
    await run_jobs(sheda)
    assert push.accepted() == []  # not before Retry-After
    sheda.ctx.clock.advance(seconds=61)
    await run_jobs(sheda)
    [got] = push.accepted()
    assert got.endpoint_id == busy.endpoint_id and got.payload["body"] == "ping"
    assert len(push.received) == 3  # 410, 429, then the one accepted


async def test_a_chat_push_retried_past_its_ttl_expires_instead_of_arriving_late(sheda, push):
    """The push service answers 5xx (an outage): the push is retried, and once PUSH_TTL_SECONDS have passed since
    the newest message it tells of, it is dropped (outcome expired), as a stored notification's push is: no "New
    message" hours late. A message that came meanwhile is still fresh news and is pushed."""
    ada = await sheda.signup()
    bob = await sheda.signup()
    cy = await sheda.signup()
    sub, device_id = await subscribed(sheda, push, ada)
    push.answers[sub.endpoint_id] = [(503, {}), (503, {"Retry-After": "60"})]
    await send(sheda, bob, ada, "are you there?")
    await until_jobs(sheda, device_id)
    sheda.ctx.clock.advance(seconds=11)
    await run_jobs(sheda)
    [job] = await jobs_of(sheda, device_id)
    assert job["status"] == "pending" and job["attempts"] == 1, job  # 503: retried
    sheda.ctx.clock.advance(seconds=sheda.ctx.settings.push_ttl_seconds)  # the outage outlasted the TTL
    await run_jobs(sheda)
    [job] = await jobs_of(sheda, device_id)
    assert job["status"] == "done" and job["result"]["outcome"] == "expired", job
    assert push.accepted() == [] and len(push.received) == 1  # never sent again once stale
    # Another conversation's push, retried within the TTL of its newest message, is still sent
    async def signed_in_again(user):  # the clock moved past the access token's life
        login = await sheda.api.post("/api/v1/auth/login", {"username": user.username, "password": user.password})
        assert login.status == 200, login
        user.access_token = login.json["access_token"]

    await signed_in_again(cy)
    await send(sheda, cy, ada, "first")
    await until_jobs(sheda, device_id, 2)
    sheda.ctx.clock.advance(seconds=11)
    await run_jobs(sheda)  # 503, Retry-After 60
    sheda.ctx.clock.advance(seconds=sheda.ctx.settings.push_ttl_seconds - 100)
    await signed_in_again(cy)
    await send(sheda, cy, ada, "second")  # collapses into the pending push
    sheda.ctx.clock.advance(seconds=200)  # past the first message's TTL, within the second's
    await run_jobs(sheda)
    [got] = push.accepted(sub.endpoint_id)
    assert got.payload["count"] == 2 and got.payload["body"] == "second", got.payload


async def test_two_servers_deliver_each_push_once(sheda, push, tmp_path):
    from tests.test_jobs import second_server

    # Every process signs with the same VAPID key (one DATA_DIR, or VAPID_PRIVATE_KEY): a second key would be
    # refused by the push service, for subscriptions are bound to the key they were made with.
    other = await second_server(sheda, tmp_path, vapid_private_key=(tmp_path / "vapid_private_key.pem").read_text())
    try:
        ada = await sheda.signup()
        subs = [await subscribed(sheda, push, ada) for _ in range(3)]
        senders = [await sheda.signup() for _ in range(4)]
        for s in senders:
            await send(sheda, s, ada, f"from {s.username}")
        for _, device_id in subs:
            await until_jobs(sheda, device_id, len(senders))
        sheda.ctx.clock.advance(seconds=11)
        await asyncio.gather(run_jobs(sheda), other.ctx.job_runner.run_due(), run_jobs(sheda), other.ctx.job_runner.run_due())
        per_device = {}
        for r in push.accepted():
            per_device[r.endpoint_id] = per_device.get(r.endpoint_id, 0) + 1
        assert per_device == {sub.endpoint_id: len(senders) for sub, _ in subs}, per_device
        assert len(push.received) == len(subs) * len(senders)
    finally:
        await other.shutdown()


async def test_presence_on_another_process_through_redis(sheda, push, tmp_path, redis_server):
    """Two processes sharing Redis (two Servers here): a receiver whose only socket is on the other
    process is online (no push); once that socket closes, the next message is pushed, once."""
    from tests.support import ShedaClient
    from tests.test_jobs import second_server

    vapid = (tmp_path / "vapid_private_key.pem").read_text()
    a = await second_server(sheda, tmp_path / "a", redis_url=redis_server.url, vapid_private_key=vapid)
    b = await second_server(sheda, tmp_path / "b", redis_url=redis_server.url, vapid_private_key=vapid)
    try:
        on_a, on_b = ShedaClient(a, f"http://127.0.0.1:{a.ports[0]}"), ShedaClient(b, f"http://127.0.0.1:{b.ports[0]}")
        ada = await sheda.signup()
        bob = await sheda.signup()
        sub, device_id = await subscribed(sheda, push, ada)
        ada_ws = await on_b.ws(ada.token)
        [first] = await send(on_a, bob, ada, "seen live on the other process")
        await ada_ws.wait_for(lambda f: f.get("type") == "message" and f.get("id") == first)
        await asyncio.sleep(0.3)  # let process a's dispatcher look
        assert await jobs_of(sheda, device_id) == []
        ada_ws.close()
        await ada_ws.wait_closed()
        for _ in range(100):  # b announces the last socket gone
            if not await a.ctx.push.dispatch.presence.online_anywhere(ada.id):
                break
            await asyncio.sleep(0.05)
        await send(on_a, bob, ada, "now she is away")
        await until_jobs(sheda, device_id)
        sheda.ctx.clock.advance(seconds=11)
        await asyncio.gather(a.ctx.job_runner.run_due(), b.ctx.job_runner.run_due(), run_jobs(sheda))
        [got] = push.accepted(sub.endpoint_id)
        assert got.payload["body"] == "now she is away" and len(push.received) == 1
    finally:
        await a.shutdown()
        await b.shutdown()


async def test_a_process_killed_mid_push_leaves_it_to_another_which_sends_it_once(sheda, push, tmp_path, embedded_db):
    """`python run.py` takes the push job and dies (kill -9) while the push service has the request
    unanswered; its lease lapses and this server sends the push, once."""
    import signal

    from tests.redis_support import Remote, ServerProcess, server_env

    ada = await sheda.signup()
    bob = await sheda.signup()
    sub, device_id = await subscribed(sheda, push, ada)
    push.hold.add(sub.endpoint_id)
    env = server_env(embedded_db, None, tmp_path, sheda.server.settings.mongodb_db,
                     JWT_SECRET=sheda.server.settings.jwt_secret.get_secret_value(), PUSH_ALLOW_LOCAL_ENDPOINTS="true",
                     PUSH_GRACE_SECONDS="0", JOB_POLL_SECONDS="0.2", JOB_LEASE_SECONDS="5")
    proc = ServerProcess(env, tmp_path, "doomed").start()
    try:
        await send(Remote(proc), bob, ada, "sent while a process dies")
        for _ in range(300):  # the other process claimed the job and is mid-request
            if push.received:
                break
            await asyncio.sleep(0.05)
        assert [r.refused for r in push.received] == ["held, never answered"], proc.log()
        [job] = await jobs_of(sheda, device_id)
        assert job["status"] == "running" and job["lease"]["owner"] != sheda.ctx.job_runner.owner
        proc.signal(signal.SIGKILL)
        proc.wait()
    finally:
        proc.stop()
    await run_jobs(sheda)
    assert (await jobs_of(sheda, device_id))[0]["status"] == "running" and push.accepted() == []  # its lease has not lapsed yet
    sheda.ctx.clock.advance(seconds=6)
    await run_jobs(sheda)
    [got] = push.accepted(sub.endpoint_id)
    assert got.payload["body"] == "sent while a process dies"
    [job] = await jobs_of(sheda, device_id)
    assert job["status"] == "done" and job["attempts"] == 2
    sheda.ctx.clock.advance(seconds=60)
    await run_jobs(sheda)
    assert len(push.accepted()) == 1


async def test_the_local_push_service_refuses_what_a_real_one_would(sheda, push):
    """The checks of tests/push_service.py can fail: another VAPID key, a wrong audience, an expired
    JWT, a payload encrypted for another subscription are each refused; the server's own request passes."""
    from cryptography.hazmat.primitives.asymmetric import ec as _ec
    from tornado.httpclient import AsyncHTTPClient

    from sheda_rt.push.vapid import VapidKeys
    from sheda_rt.push.webpush import WebPushProvider

    endpoint_id = uuid.uuid4().hex
    sub = Subscriber(push.endpoint(endpoint_id))
    push.subscribers[endpoint_id] = sub
    device = {"endpoint": sub.endpoint, "keys": {"p256dh": sub.p256dh, "auth": b64(sub.auth)}}
    ours = WebPushProvider(sheda.ctx.push.vapid, "mailto:ops@example.com", allow_local=True)
    stranger = WebPushProvider(VapidKeys(_ec.generate_private_key(_ec.SECP256R1())), "mailto:x@example.com", allow_local=True)
    http = AsyncHTTPClient()

    assert (await ours.send(device, b'{"ok":1}', ttl=60)).status == 201
    assert (await stranger.send(device, b'{"ok":1}', ttl=60)).status == 403  # not the key the subscription was made with

    request = ours.request(device, b"x", ttl=60)
    bad_aud = dict(request.headers)
    bad_aud.update(sheda.ctx.push.vapid.headers({"aud": "https://push.example.com", "exp": int(time.time()) + 60,
                                                  "sub": "mailto:ops@example.com"}))
    expired = dict(request.headers)
    expired.update(sheda.ctx.push.vapid.headers({"aud": push.origin, "exp": int(time.time()) - 60, "sub": "mailto:ops@example.com"}))
    other = Subscriber(sub.endpoint)
    wrong_keys = ours.request({"endpoint": sub.endpoint, "keys": {"p256dh": other.p256dh, "auth": b64(other.auth)}}, b"x", ttl=60)
    for headers, body, status in ((bad_aud, request.body, 403), (expired, request.body, 403),
                                  (dict(wrong_keys.headers), wrong_keys.body, 400)):
        r = await http.fetch(sub.endpoint, method="POST", headers=headers, body=body, raise_error=False)
        assert r.code == status, (r.code, r.body)
    assert len(push.accepted()) == 1
    ours.close()
    stranger.close()


async def test_sending_refuses_endpoints_that_resolve_to_private_addresses(sheda):
    """Registration checks the URL; sending checks the resolved address (a public-looking name pointed
    at 127.0.0.1 later must not be connected to)."""
    from sheda_rt.push.webpush import WebPushProvider

    guarded = WebPushProvider(sheda.ctx.push.vapid, "mailto:ops@example.com", allow_local=False)
    sub = Subscriber("https://localhost:9/push/x")  # a name that resolves to loopback (/etc/hosts)
    device = {"endpoint": sub.endpoint, "keys": {"p256dh": sub.p256dh, "auth": b64(sub.auth)}}
    with pytest.raises(Exception) as refused:
        await guarded.send(device, b"x", ttl=60)
    assert "public address" in str(refused.value)
    guarded.close()


# ---- stored notifications reach devices too (appointments, contracts, bookings, announcements) ---------------
from tests.listing_helpers import book, create_property, next_slot, open_window  # noqa: E402


async def viewing_offer(sheda):
    agent = await sheda.signup("agent", full_name="Ada Agent")
    client = await sheda.signup("client", full_name="Chidi Client")
    prop = await create_property(sheda, agent)
    when = next_slot(sheda.ctx.clock.now(), days_ahead=3, hour=10)
    await open_window(sheda, agent, when)
    return agent, client, prop, when


async def test_a_booked_viewing_is_pushed_to_the_offline_agent_once(sheda, push):
    agent, client, prop, when = await viewing_offer(sheda)
    sub, device_id = await subscribed(sheda, push, agent)
    r = await book(sheda, client, prop["id"], when)
    assert r.status == 201, r
    [job] = await until_jobs(sheda, device_id)
    assert job["payload"]["category"] == "appointments"
    await run_jobs(sheda)
    [got] = push.accepted(sub.endpoint_id)
    assert [x.refused for x in push.received] == [None], push.received
    [stored] = (await sheda.api.get("/api/v1/notifications", token=agent.token)).json["items"]
    assert stored["kind"] == "appointment.booked"
    p = got.payload
    assert p["title"] == stored["title"] == "New viewing request" and p["body"] == stored["body"] and prop["title"] in p["body"]
    assert p["type"] == p["kind"] == "appointment.booked" and p["notification_id"] == stored["id"]
    assert p["appointment_id"] == r.json["id"] and p["property_id"] == prop["id"] and p["path"] == f"/appointments/{r.json['id']}"
    assert isinstance(p["badge"], int)
    sheda.ctx.clock.advance(seconds=60)
    await run_jobs(sheda)
    assert len(push.received) == 1  # exactly once
    # the client (the one who acted) is not told: nothing queued for their device either
    _, client_device = await subscribed(sheda, push, client)
    assert await jobs_of(sheda, client_device) == []


async def test_a_notification_is_not_pushed_to_an_agent_online_on_a_socket(sheda, push):
    agent, client, prop, when = await viewing_offer(sheda)
    sub, device_id = await subscribed(sheda, push, agent)
    ws = await sheda.ws(agent.token)
    booked = await book(sheda, client, prop["id"], when)
    assert booked.status == 201, booked
    frame = await ws.wait_type("notification")
    assert frame["kind"] == "appointment.booked"
    await asyncio.sleep(0.2)  # let the dispatcher look
    assert await jobs_of(sheda, device_id) == []
    # offline when it was stored, online when it is due: the socket had it, no push
    ws.close()
    await asyncio.sleep(0.2)
    r = await sheda.api.delete(f"/api/v1/appointments/{booked.json['id']}", token=client.token)
    assert r.status == 200, r
    [job] = await until_jobs(sheda, device_id)
    ws = await sheda.ws(agent.token)
    await run_jobs(sheda)
    assert push.received == []
    [job] = await jobs_of(sheda, device_id)
    assert job["status"] == "done" and job["result"]["outcome"] == "online"
    ws.close()


async def test_a_notification_read_on_another_device_while_its_push_is_held_is_not_pushed(sheda, push):
    """Quiet hours hold a notification's push; the agent reads it on the web meanwhile (no socket left
    open): when the quiet hours end the phone must not light up with what was already seen, as a chat
    read receipt cancels a message's push. An unread one is still pushed then."""
    from datetime import timedelta
    from zoneinfo import ZoneInfo

    agent, client, prop, when = await viewing_offer(sheda)
    sub, device_id = await subscribed(sheda, push, agent)
    local = sheda.ctx.clock.now().astimezone(ZoneInfo("Africa/Lagos"))
    quiet = {"start": (local - timedelta(hours=1)).strftime("%H:%M"), "end": (local + timedelta(hours=2)).strftime("%H:%M"),
             "time_zone": "Africa/Lagos"}
    assert (await sheda.api.put(SETTINGS, {"quiet_hours": quiet}, token=agent.token)).status == 200
    booked = await book(sheda, client, prop["id"], when)
    assert booked.status == 201, booked
    await until_jobs(sheda, device_id)
    await run_jobs(sheda)
    assert push.received == []  # held
    [note] = (await sheda.api.get("/api/v1/notifications", token=agent.token)).json["items"]
    assert (await sheda.api.patch(f"/api/v1/notifications/{note['id']}/read", {}, token=agent.token)).status == 200
    assert (await sheda.api.delete(f"/api/v1/appointments/{booked.json['id']}", token=client.token)).status == 200
    await until_jobs(sheda, device_id, 2)
    sheda.ctx.clock.advance(hours=2, minutes=1)
    await run_jobs(sheda)
    [got] = push.accepted(sub.endpoint_id)
    assert got.payload["kind"] == "appointment.cancelled", got.payload  # the unread one only
    outcomes = {j["payload"]["note"]["data"]["notification_id"]: j["result"]["outcome"] for j in await jobs_of(sheda, device_id)}
    assert outcomes[note["id"]] == "read", outcomes


async def test_a_deactivated_agent_gets_no_notification_push(sheda, push):
    agent, client, prop, when = await viewing_offer(sheda)
    sub, device_id = await subscribed(sheda, push, agent)
    assert (await book(sheda, client, prop["id"], when)).status == 201
    await until_jobs(sheda, device_id)
    assert (await sheda.api.delete("/api/v1/users/me", token=agent.token)).status in (200, 204)
    await run_jobs(sheda)
    assert push.received == []
    [job] = await jobs_of(sheda, device_id)
    assert job["status"] == "done" and job["result"]["outcome"] == "user_inactive"


async def test_announcements_push_only_to_users_whose_push_announcements_is_on(sheda, push):
    admin = await sheda.admin()
    ada = await sheda.signup("builder")
    sub, device_id = await subscribed(sheda, push, ada)
    kinds = {"chat": True, "appointments": True, "contracts": True, "listings": True}
    try:
        assert (await sheda.api.put(SETTINGS, {"push": {**kinds, "announcements": False}}, token=ada.token)).status == 200
        r = await sheda.api.post("/api/v1/admin/broadcast", {"message": "Maintenance at 2am", "user_type": "builder"}, token=admin.token)
        assert r.status == 202, r
        await run_jobs(sheda)  # the fan-out job
        [job] = await until_jobs(sheda, device_id)
        await run_jobs(sheda)
        assert push.accepted(sub.endpoint_id) == []
        assert (await jobs_of(sheda, device_id))[0]["result"]["outcome"] == "announcements_pushes_off"

        assert (await sheda.api.put(SETTINGS, {"push": {**kinds, "announcements": True}}, token=ada.token)).status == 200
        r = await sheda.api.post("/api/v1/admin/broadcast", {"message": "Back online", "user_type": "builder"}, token=admin.token)
        assert r.status == 202, r
        await run_jobs(sheda)
        await until_jobs(sheda, device_id, 2)
        await run_jobs(sheda)
        [got] = push.accepted(sub.endpoint_id)
        assert got.payload["title"] == "Announcement" and got.payload["body"] == "Back online"
        assert got.payload["kind"] == "announcement" and got.payload["path"] == "/notifications"
        assert got.payload["user_type"] == "builder"
        # one fan-out job per announcement, not one per user
        fanouts = await sheda.ctx.db["jobs"].find({"kind": "push.announcement"}).to_list()
        assert len(fanouts) >= 2 and all(j["status"] == "done" for j in fanouts)
    finally:
        # devices of users left by other tests in the shared database got jobs too: leave none behind
        await sheda.ctx.db["jobs"].delete_many({"$or": [{"kind": "push.announcement"}, {"_id": {"$regex": ":announcement:"}}]})


async def test_devices_list_is_a_cursor_page_and_refuses_unknown_query_keys(sheda):
    ada = await sheda.signup()
    ids = []
    for _ in range(3):
        r = await sheda.api.post(DEVICES, Subscriber(f"https://push.example.com/send/{os.urandom(6).hex()}").body(), token=ada.token)
        ids.append(r.json["id"])
    r = await sheda.api.get(DEVICES, token=ada.token)
    assert r.status == 200 and [d["id"] for d in r.json["items"]] == ids and r.json["next_cursor"] is None, r
    r = await sheda.api.get(f"{DEVICES}?limit=2", token=ada.token)
    assert [d["id"] for d in r.json["items"]] == ids[:2] and r.json["next_cursor"], r
    r = await sheda.api.get(f"{DEVICES}?limit=2&cursor={r.json['next_cursor']}", token=ada.token)
    assert [d["id"] for d in r.json["items"]] == ids[2:] and r.json["next_cursor"] is None, r
    for bad in ("limit=0", "limit=101", "limit=x", "cursor=nope", "page=2", "cursor=WyJ4Il0"):
        r = await sheda.api.get(f"{DEVICES}?{bad}", token=ada.token)
        assert r.status == 422 and r.json["code"] == "validation_error", (bad, r)
