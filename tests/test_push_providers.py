"""Push to phones (issue 14 §2): FCM HTTP v1 and APNs, against local servers that check what the
real services check (tests/fcm_service.py: the OAuth2 JWT bearer grant and the bearer token,
the project and the message's shape; tests/apns_service.py: HTTP/2 only, the ES256 provider
token, team, key id, topic, push type and device path). The dispatcher is the one Web Push uses
(tests/test_push.py): these scenarios check the provider chosen by the device's platform."""
from __future__ import annotations

import asyncio
import json
import os
import secrets
from types import SimpleNamespace

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.apns_service import ApnsService
from tests.fcm_service import FcmService
from tests.test_push import DEVICES, SETTINGS, send, stored_devices

TOPIC = "ng.sheda.app"
KEY_ID, TEAM_ID = "ABC123DEFG", "TEAM456XYZ"


@pytest.fixture
def fcm(io_loop):
    service = FcmService()
    service.start()
    yield service
    service.stop()


@pytest.fixture
def apns(io_loop):
    key = ec.generate_private_key(ec.SECP256R1())
    pair = SimpleNamespace(key=key, **{env: ApnsService(env, KEY_ID, TEAM_ID, TOPIC, key.public_key())
                                       for env in ("production", "sandbox")})
    io_loop.run_sync(pair.production.start)
    io_loop.run_sync(pair.sandbox.start)
    yield pair
    io_loop.run_sync(pair.production.stop)
    io_loop.run_sync(pair.sandbox.stop)


def p8(key: ec.EllipticCurvePrivateKey) -> bytes:
    """An APNs auth key as Apple hands it out: PKCS#8 PEM of a P-256 key."""
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


@pytest.fixture
def settings_overrides(fcm, apns, tmp_path):
    key_file = tmp_path / "AuthKey_ABC123DEFG.p8"
    key_file.write_bytes(p8(apns.key))
    return {"push_allow_local_endpoints": True, "job_poll_seconds": 3600, "push_grace_seconds": 10,
            "fcm_service_account_file": str(fcm.write_account(tmp_path / "service-account.json")), "fcm_base_url": fcm.origin,
            "apns_key_file": str(key_file), "apns_key_id": KEY_ID, "apns_team_id": TEAM_ID, "apns_topic": TOPIC,
            "apns_base_url": apns.production.origin, "apns_sandbox_base_url": apns.sandbox.origin}


def fcm_token() -> str:
    return secrets.token_urlsafe(16) + ":APA91b" + secrets.token_urlsafe(100)


async def phone(sheda, user, body: dict) -> int:
    r = await sheda.api.post(DEVICES, body, token=user.token)
    assert r.status == 201, r
    return r.json["id"]


async def fcm_phone(sheda, fcm, user, *, installed: bool = True) -> tuple[str, int]:
    token = fcm_token()
    if installed:
        fcm.tokens.add(token)
    return token, await phone(sheda, user, {"platform": "fcm", "token": token})


async def apns_phone(sheda, apns, user, environment: str = "production", *, installed: bool = True) -> tuple[str, int]:
    token = os.urandom(32).hex()
    if installed:
        getattr(apns, environment).tokens.add(token)
    return token, await phone(sheda, user, {"platform": "apns", "token": token, "environment": environment})


async def jobs_of(sheda, device_id: int) -> list[dict]:
    return await sheda.ctx.db["jobs"].find({"payload.device_id": device_id}).to_list()


async def until_jobs(sheda, *device_ids: int) -> None:
    for _ in range(200):
        if all([await jobs_of(sheda, d) for d in device_ids]):
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"no push job for devices {device_ids}")


async def until_status(sheda, device_id: int, status: str) -> None:
    for _ in range(200):
        if [j["status"] for j in await jobs_of(sheda, device_id)] == [status]:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"device {device_id}'s job is not {status}: {await jobs_of(sheda, device_id)}")


async def run_jobs(sheda) -> int:
    return await sheda.ctx.job_runner.run_due()


def counter(platform: str, outcome: str) -> float:
    from sheda_rt.push.dispatch import PUSHES

    return PUSHES.labels(provider=platform, outcome=outcome)._value.get()


async def test_an_offline_user_gets_one_fcm_and_one_apns_push_with_valid_auth(sheda, fcm, apns):
    ada = await sheda.signup(full_name="Ada Obi")
    bob = await sheda.signup(full_name="Bob Eze")
    android, android_id = await fcm_phone(sheda, fcm, ada)
    iphone, iphone_id = await apns_phone(sheda, apns, ada)
    dev_build, dev_build_id = await apns_phone(sheda, apns, ada, "sandbox")
    sent_before = counter("fcm", "sent"), counter("apns", "sent")
    await send(sheda, bob, ada, "Is the flat still available?", "Can I view it Saturday?")
    await until_jobs(sheda, android_id, iphone_id, dev_build_id)
    assert {j["kind"] for d in (android_id, iphone_id, dev_build_id) for j in await jobs_of(sheda, d)} == {"push.fcm", "push.apns"}
    await run_jobs(sheda)
    assert fcm.received == [] and apns.production.received == []  # inside the grace period
    sheda.ctx.clock.advance(seconds=11)
    await run_jobs(sheda)

    # FCM: one grant (the JWT assertion verified), then one send with that bearer token
    assert fcm.grants == [(True, None)]
    [got] = fcm.received
    assert got.refused is None, got
    message = got.message
    assert message["token"] == android
    assert message["notification"] == {"title": "2 new messages from Bob Eze", "body": "Can I view it Saturday?"}
    assert message["data"]["type"] == "chat.message" and message["data"]["count"] == "2" and message["data"]["badge"] == "2"
    assert message["data"]["conversation"] == f'{{"other_user_id":{bob.id}}}'
    assert message["android"]["collapse_key"] and message["android"]["notification"]["notification_count"] == 2
    # APNs: one HTTP/2 request per device, each to its environment's service
    [ios] = apns.production.received
    assert ios.refused is None and ios.token == iphone, ios
    assert ios.payload["aps"]["alert"] == {"title": "2 new messages from Bob Eze", "body": "Can I view it Saturday?"}
    assert ios.payload["aps"]["badge"] == 2 and ios.payload["data"]["conversation"] == {"other_user_id": bob.id}
    assert ios.headers["apns-collapse-id"] == message["android"]["collapse_key"]  # one collapse key per conversation
    assert int(ios.headers["apns-expiration"]) > 0 and ios.headers["apns-push-type"] == "alert"
    assert [r.token for r in apns.sandbox.accepted()] == [dev_build] and len(apns.sandbox.received) == 1
    assert {j["status"] for d in (android_id, iphone_id, dev_build_id) for j in await jobs_of(sheda, d)} == {"done"}
    assert (counter("fcm", "sent") - sent_before[0], counter("apns", "sent") - sent_before[1]) == (1, 2)

    # exactly once; a later message is a new push, with the cached access token (no second grant)
    sheda.ctx.clock.advance(seconds=60)
    await run_jobs(sheda)
    assert len(fcm.received) == 1 and len(apns.production.received) == 1
    await send(sheda, bob, ada, "Hello again")
    for device_id in (android_id, iphone_id, dev_build_id):  # one job per device, re-armed one after another
        await until_status(sheda, device_id, "pending")
    sheda.ctx.clock.advance(seconds=11)
    await run_jobs(sheda)
    assert len(fcm.accepted(android)) == 2 and len(apns.production.accepted(iphone)) == 2
    assert fcm.grants == [(True, None)]
    assert fcm.accepted()[-1].message["notification"]["title"] == "3 new messages from Bob Eze"


async def test_previews_off_send_no_text_to_phones(sheda, fcm, apns):
    ada = await sheda.signup()
    bob = await sheda.signup()
    android, android_id = await fcm_phone(sheda, fcm, ada)
    iphone, iphone_id = await apns_phone(sheda, apns, ada)
    assert (await sheda.api.put(SETTINGS, {"previews": False}, token=ada.token)).status == 200
    await send(sheda, bob, ada, "my secret offer")
    await until_jobs(sheda, android_id, iphone_id)
    sheda.ctx.clock.advance(seconds=11)
    await run_jobs(sheda)
    [got] = fcm.accepted()
    [ios] = apns.production.accepted()
    assert "body" not in got.message["notification"] and "body" not in got.message["data"]
    assert "body" not in ios.payload["aps"]["alert"] and ios.payload["data"]["body"] is None
    assert "secret" not in repr(got.message) + repr(ios.payload)


async def test_devices_the_providers_report_gone_are_deleted(sheda, fcm, apns):
    ada = await sheda.signup()
    bob = await sheda.signup()
    _, uninstalled_id = await fcm_phone(sheda, fcm, ada, installed=False)  # 404 UNREGISTERED
    bad, bad_id = await fcm_phone(sheda, fcm, ada)
    fcm.answers[bad] = [(400, "INVALID_ARGUMENT", {})]  # naming message.token
    kept, kept_id = await fcm_phone(sheda, fcm, ada)
    old_iphone, old_iphone_id = await apns_phone(sheda, apns, ada)
    apns.production.answers[old_iphone] = [(410, "Unregistered", {})]
    _, stale_id = await apns_phone(sheda, apns, ada, installed=False)  # 400 BadDeviceToken
    gone_before = counter("fcm", "gone"), counter("apns", "gone")
    await send(sheda, bob, ada, "ping")
    await until_jobs(sheda, uninstalled_id, bad_id, kept_id, old_iphone_id, stale_id)
    sheda.ctx.clock.advance(seconds=11)
    await run_jobs(sheda)
    assert [d["_id"] for d in await stored_devices(sheda, user_id=ada.id)] == [kept_id]
    for device_id in (uninstalled_id, bad_id, old_iphone_id, stale_id):
        [job] = await jobs_of(sheda, device_id)
        assert job["status"] == "done" and job["result"]["outcome"] == "device_gone", job
    assert {r.refused for r in apns.production.received} == {"Unregistered", "BadDeviceToken"}
    assert [r.token for r in fcm.accepted()] == [kept]
    assert (counter("fcm", "gone") - gone_before[0], counter("apns", "gone") - gone_before[1]) == (2, 2)


async def test_429_and_5xx_are_retried_after_retry_after(sheda, fcm, apns):
    ada = await sheda.signup()
    bob = await sheda.signup()
    android, android_id = await fcm_phone(sheda, fcm, ada)
    iphone, iphone_id = await apns_phone(sheda, apns, ada)
    fcm.answers[android] = [(429, "QUOTA_EXCEEDED", {"Retry-After": "120"})]
    apns.production.answers[iphone] = [(503, "ServiceUnavailable", {})]  # no Retry-After: the queue's backoff
    await send(sheda, bob, ada, "ping")
    await until_jobs(sheda, android_id, iphone_id)
    sheda.ctx.clock.advance(seconds=11)
    await run_jobs(sheda)
    [job] = await jobs_of(sheda, android_id)
    assert job["status"] == "pending" and (job["run_at"] - job["updated_at"]).total_seconds() == 120, job
    assert "QUOTA_EXCEEDED" in job["last_error"]
    [ios_job] = await jobs_of(sheda, iphone_id)
    backoff = sheda.ctx.job_runner.backoff(1)
    assert ios_job["status"] == "pending" and (ios_job["run_at"] - ios_job["updated_at"]).total_seconds() == backoff
    assert [d["_id"] for d in await stored_devices(sheda, user_id=ada.id)] == [android_id, iphone_id]  # kept
    sheda.ctx.clock.advance(seconds=max(backoff, 1) + 1)
    await run_jobs(sheda)
    assert [r.token for r in apns.production.accepted()] == [iphone]
    assert fcm.accepted() == []  # not before Retry-After
    sheda.ctx.clock.advance(seconds=120)
    await run_jobs(sheda)
    [got] = fcm.accepted()
    assert got.token == android and got.message["notification"]["body"] == "ping"
    assert len(fcm.received) == 2 and len(apns.production.received) == 2


async def test_a_refused_access_token_is_renewed_and_the_push_retried(sheda, fcm, apns):
    ada = await sheda.signup()
    bob = await sheda.signup()
    android, android_id = await fcm_phone(sheda, fcm, ada)
    await send(sheda, bob, ada, "first")
    await until_jobs(sheda, android_id)
    sheda.ctx.clock.advance(seconds=11)
    await run_jobs(sheda)
    assert len(fcm.accepted()) == 1 and len(fcm.grants) == 1
    fcm.revoke()  # e.g. the key was rotated: FCM answers 401 to the token we hold
    await send(sheda, bob, ada, "second")
    await until_status(sheda, android_id, "pending")
    sheda.ctx.clock.advance(seconds=11)
    await run_jobs(sheda)
    assert [r.refused for r in fcm.received] == [None, "no valid bearer token"]
    sheda.ctx.clock.advance(seconds=sheda.ctx.job_runner.backoff(1) + 1)
    await run_jobs(sheda)
    assert [r.refused for r in fcm.received] == [None, "no valid bearer token", None]
    assert [ok for ok, _ in fcm.grants] == [True, True]


async def test_an_online_user_gets_no_phone_push(sheda, fcm, apns):
    ada = await sheda.signup()
    bob = await sheda.signup()
    _, android_id = await fcm_phone(sheda, fcm, ada)
    _, iphone_id = await apns_phone(sheda, apns, ada)
    ada_ws = await sheda.ws(ada.token)
    await send(sheda, bob, ada, "hello")
    await ada_ws.wait_type("message")
    await asyncio.sleep(0.2)  # let the dispatcher look
    assert await jobs_of(sheda, android_id) == [] and await jobs_of(sheda, iphone_id) == []
    sheda.ctx.clock.advance(seconds=30)
    await run_jobs(sheda)
    assert fcm.received == [] and apns.production.received == [] and fcm.grants == []
    ada_ws.close()


async def test_reading_on_another_device_cancels_the_phone_pushes(sheda, fcm, apns):
    ada = await sheda.signup()
    bob = await sheda.signup()
    _, android_id = await fcm_phone(sheda, fcm, ada)
    _, iphone_id = await apns_phone(sheda, apns, ada)
    cancelled_before = counter("fcm", "cancelled"), counter("apns", "cancelled")
    [mid] = await send(sheda, bob, ada, "are you there?")
    await until_jobs(sheda, android_id, iphone_id)
    r = await sheda.api.post("/api/v1/chat/read", {"other_user_id": bob.id, "up_to": mid}, token=ada.token)
    assert r.status == 200, r
    await until_status(sheda, android_id, "cancelled")
    await until_status(sheda, iphone_id, "cancelled")
    sheda.ctx.clock.advance(seconds=11)
    await run_jobs(sheda)
    assert fcm.received == [] and apns.production.received == []
    assert (counter("fcm", "cancelled") - cancelled_before[0], counter("apns", "cancelled") - cancelled_before[1]) == (1, 1)


async def test_a_read_elsewhere_sends_phones_a_silent_badge_update(sheda, fcm, apns):
    """Phones showing a chat push get one silent update when the user reads on a socket: FCM a data-only
    message (no `notification`), APNs a background push (push type background, priority 5, content-available,
    the badge), each naming the tag of the push they showed. A phone that was sent no push gets none."""
    ada = await sheda.signup(full_name="Ada Obi")
    bob = await sheda.signup(full_name="Bob Eze")
    android, android_id = await fcm_phone(sheda, fcm, ada)
    iphone, iphone_id = await apns_phone(sheda, apns, ada)
    _, last = await send(sheda, bob, ada, "one", "two")
    await until_jobs(sheda, android_id, iphone_id)
    sheda.ctx.clock.advance(seconds=11)
    await run_jobs(sheda)
    [shown] = fcm.accepted(android)
    [ios_shown] = apns.production.accepted(iphone)
    tag = shown.message["android"]["notification"]["tag"]
    assert shown.message["data"]["tag"] == tag == ios_shown.headers["apns-collapse-id"] == ios_shown.payload["data"]["tag"]
    _, later_id = await apns_phone(sheda, apns, ada)  # registered after the push: shows nothing

    ws = await sheda.ws(ada.token)
    await ws.send({"type": "read", "other_user_id": bob.id, "up_to": last})
    for device_id in (android_id, iphone_id):
        for _ in range(200):
            if any(j["_id"] == f"push:{device_id}:badge" for j in await jobs_of(sheda, device_id)):
                break
            await asyncio.sleep(0.02)
    ws.close()
    await sheda.ctx.push.dispatch.drain()
    assert await jobs_of(sheda, later_id) == []
    sheda.ctx.clock.advance(seconds=11)
    await run_jobs(sheda)
    clear = [{"conversation": {"other_user_id": bob.id}, "tag": tag}]
    [_, update] = fcm.accepted(android)
    m = update.message
    assert "notification" not in m and m["token"] == android
    assert m["data"] == {"type": "badge", "badge": "0", "clear": json.dumps(clear, separators=(",", ":"))}
    assert m["android"]["priority"] == "NORMAL" and "notification" not in m["android"]
    assert m["apns"]["headers"] == {"apns-push-type": "background", "apns-priority": "5"}
    assert m["apns"]["payload"] == {"aps": {"content-available": 1, "badge": 0}}
    [_, ios] = apns.production.accepted(iphone)
    assert ios.headers["apns-push-type"] == "background" and ios.headers["apns-priority"] == "5"
    assert ios.payload == {"aps": {"content-available": 1, "badge": 0}, "data": {"type": "badge", "badge": 0, "clear": clear}}
    assert len(fcm.received) == 2 and len(apns.production.received) == 2
    sheda.ctx.clock.advance(seconds=60)
    await run_jobs(sheda)
    assert len(fcm.received) == 2 and len(apns.production.received) == 2  # once


async def test_queue_gauges_by_provider(sheda, fcm, apns):
    """sheda_push_queue_depth and sheda_push_oldest_due_seconds, refreshed with the job runner's gauges."""
    from sheda_rt.push.dispatch import PUSH_OLDEST_DUE_SECONDS, PUSH_QUEUE_DEPTH

    ada = await sheda.signup()
    bob = await sheda.signup()
    carol = await sheda.signup()
    _, android_id = await fcm_phone(sheda, fcm, ada)
    _, iphone_id = await apns_phone(sheda, apns, ada)
    await send(sheda, bob, ada, "one")
    await send(sheda, carol, ada, "two")
    for device_id in (android_id, iphone_id):
        for _ in range(200):
            if len(await jobs_of(sheda, device_id)) == 2:
                break
            await asyncio.sleep(0.02)
    await sheda.ctx.job_runner.observe()
    assert PUSH_QUEUE_DEPTH.labels(provider="fcm")._value.get() == 2 and PUSH_QUEUE_DEPTH.labels(provider="apns")._value.get() == 2
    assert PUSH_OLDEST_DUE_SECONDS.labels(provider="fcm")._value.get() == 0  # not due yet (grace period)
    sheda.ctx.clock.advance(seconds=40)
    await sheda.ctx.job_runner.observe()
    assert 29 <= PUSH_OLDEST_DUE_SECONDS.labels(provider="apns")._value.get() <= 31
    r = await sheda.api.get("/metrics")
    assert 'sheda_push_queue_depth{provider="fcm"} 2.0' in r.body.decode(), r
    await run_jobs(sheda)
    await sheda.ctx.job_runner.observe()
    assert PUSH_QUEUE_DEPTH.labels(provider="fcm")._value.get() == 0 and PUSH_OLDEST_DUE_SECONDS.labels(provider="apns")._value.get() == 0
    assert len(fcm.accepted()) == 2 and len(apns.production.accepted()) == 2


async def test_the_local_services_refuse_what_the_real_ones_would(sheda, fcm, apns):
    """The checks of tests/fcm_service.py and tests/apns_service.py can fail: another key, another
    audience, team, topic or project, a bad message, HTTP/1.1 to APNs are each refused."""
    import time

    import httpx
    import jwt as pyjwt

    from sheda_rt.push.apns import ApnsProvider
    from sheda_rt.push.provider import Notification

    note = Notification(title="t", body="b", badge=1, collapse_key="c" * 32, data={"type": "test"})
    from tests.fcm_service import GRANT, SCOPE, service_account

    # FCM: an assertion signed by another key, or for another audience, gets no access token

    _, stranger_key = service_account(fcm.project_id, fcm.token_uri)
    claims = {"iss": fcm.account["client_email"], "aud": fcm.token_uri, "scope": SCOPE, "iat": int(time.time()),
              "exp": int(time.time()) + 3600}
    kid = {"kid": fcm.account["private_key_id"]}
    async with httpx.AsyncClient() as http:
        for key, aud in ((stranger_key, fcm.token_uri), (fcm.account["private_key"], "https://oauth2.googleapis.com/token")):
            assertion = pyjwt.encode(dict(claims, aud=aud), key, algorithm="RS256", headers=kid)
            r = await http.post(fcm.token_uri, data={"grant_type": GRANT, "assertion": assertion})
            assert r.status_code == 400 and r.json()["error"] == "invalid_grant", r.text
        assertion = pyjwt.encode(claims, fcm.account["private_key"], algorithm="RS256", headers=kid)
        access = (await http.post(fcm.token_uri, data={"grant_type": GRANT, "assertion": assertion})).json()["access_token"]
        token = fcm_token()
        fcm.tokens.add(token)
        good = sheda.ctx.push_providers["fcm"].message({"token": token}, note, ttl=60)
        send_url = f"{fcm.origin}/v1/projects/{fcm.project_id}/messages:send"
        bearer = {"Authorization": f"Bearer {access}"}
        assert (await http.post(send_url, json=good, headers={"Authorization": "Bearer ya29.forged"})).status_code == 401
        assert (await http.post(send_url.replace(fcm.project_id, "another-project"), json=good, headers=bearer)).status_code == 403
        bad_data = {"message": dict(good["message"], data={"count": 2})}
        assert (await http.post(send_url, json=bad_data, headers=bearer)).status_code == 400
        assert (await http.post(send_url, json=good, headers=bearer)).status_code == 200
        # APNs: HTTP/1.1 is not spoken at all
        with pytest.raises(httpx.HTTPError):
            await http.post(f"{apns.production.origin}/3/device/{'ab' * 32}", json={"aps": {}})
        assert apns.production.http1_refused == 1
    # APNs: another key, another team, another topic are refused; ours passes
    iphone = os.urandom(32).hex()
    apns.production.tokens.add(iphone)
    urls = {"production": apns.production.origin, "sandbox": apns.sandbox.origin}
    made = [ApnsProvider(ec.generate_private_key(ec.SECP256R1()), key_id=KEY_ID, team_id=TEAM_ID, topic=TOPIC, base_urls=urls),
            ApnsProvider(apns.key, key_id=KEY_ID, team_id="OTHERTEAM1", topic=TOPIC, base_urls=urls),
            ApnsProvider(apns.key, key_id="OTHERKEY12", team_id=TEAM_ID, topic=TOPIC, base_urls=urls),
            ApnsProvider(apns.key, key_id=KEY_ID, team_id=TEAM_ID, topic="com.example.other", base_urls=urls)]
    try:
        answers = [await p.deliver({"token": iphone, "environment": "production"}, note, ttl=60) for p in made]
        assert [(a.status, a.reason) for a in answers] == [(403, "InvalidProviderToken")] * 3 + [(400, "TopicDisallowed")]
        assert not any(a.gone for a in answers) and all(a.retryable for a in answers[:3])
        ours = await sheda.ctx.push_providers["apns"].deliver({"token": iphone, "environment": "production"}, note, ttl=60)
        assert ours.ok and apns.production.accepted(iphone)
        # a background push (a badge update) must be priority 5, as at Apple
        provider = sheda.ctx.push_providers["apns"]
        silent = Notification(title="", body=None, badge=0, collapse_key="c" * 32, data={"type": "badge"}, silent=True)
        async with httpx.AsyncClient(http1=False, http2=True) as h2:
            url = f"{apns.production.origin}/3/device/{iphone}"
            body = json.dumps(provider.payload(silent))
            r = await h2.post(url, content=body, headers=dict(provider.headers(silent, ttl=60), **{"apns-priority": "10"}))
            assert r.status_code == 400 and r.json()["reason"] == "BadPriority", r.text
            r = await h2.post(url, content=body, headers=provider.headers(silent, ttl=60))
            assert r.status_code == 200, r.text
    finally:
        for p in made:
            await p.aclose()


async def test_unconfigured_providers_are_off_and_misconfigured_ones_stop_the_start(tmp_path, caplog):
    """No FCM or APNs settings: only Web Push, one log line for each provider that is off, and
    their devices are not pushed to. A half configuration or a private base URL is a SettingsError."""
    import logging

    from config import SettingsError, load_settings
    from sheda_rt.push.provider import build_providers
    from sheda_rt.push.vapid import VapidKeys

    base = {"data_dir": tmp_path, "jwt_secret": "x" * 40}
    settings = load_settings(**base)
    vapid = VapidKeys.from_settings(settings)
    with caplog.at_level(logging.INFO, logger="sheda.push"):
        providers = build_providers(settings, vapid)
    assert set(providers) == {"webpush"}
    off = [r.getMessage() for r in caplog.records if "push_provider_off" in r.getMessage()]
    assert len(off) == 2 and any('"fcm"' in m for m in off) and any('"apns"' in m for m in off), off
    await providers["webpush"].aclose()

    key_file = tmp_path / "AuthKey.p8"
    key_file.write_bytes(p8(ec.generate_private_key(ec.SECP256R1())))
    apns_ok = {"apns_key_file": str(key_file), "apns_key_id": KEY_ID, "apns_team_id": TEAM_ID, "apns_topic": TOPIC}
    for bad in ({"apns_key_file": str(key_file), "apns_key_id": KEY_ID},  # no team id nor topic
                {**apns_ok, "apns_base_url": "https://127.0.0.1:8443"},  # a private target without PUSH_ALLOW_LOCAL_ENDPOINTS
                {"fcm_service_account_json": '{"type": "authorized_user"}'},
                {"fcm_service_account_file": str(tmp_path / "missing.json")}):
        with pytest.raises(SettingsError):
            build_providers(load_settings(**base, **bad), vapid)
    on = build_providers(load_settings(**base, **apns_ok), vapid)
    assert set(on) == {"webpush", "apns"}
    for provider in on.values():
        await provider.aclose()
