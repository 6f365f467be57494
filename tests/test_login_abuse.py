"""Password guessing, credential stuffing, and names that impersonate staff.

- Per account and address: LOGIN_MAX_FAILURES (5) wrong passwords each get 401; the
  6th try gets 429 with Retry-After, the right password included.
- Per address, whatever the accounts: LOGIN_MAX_FAILURES_PER_IP (20) failed logins
  each get 401, the next gets 429; a successful login in between is not counted; a
  burst sent all at once gets no further than one sent in turn. Both with the
  in-process limits and with the Redis ones (shared by every process).
- Reserved usernames (admin, support, the product's name...) are refused at
  registration, whatever their case, separators or look-alike characters; the
  operator's `run.py create-user` may still create them.
"""
from __future__ import annotations

import asyncio
import secrets

import pytest

from config.settings import Settings
from tests.process_support import run_cli
from tests.redis_support import redis_server  # noqa: F401  (fixture)
from tests.support import otp_from_mail, unique

AUTH = "/api/v1/auth"
# The documented per-address limits of register and send-otp (the test servers' own settings raise them).
PER_IP_DEFAULTS = {name: Settings.model_fields[name].default for name in ("registrations_per_ip_per_hour", "otp_sends_per_ip_per_hour")}


@pytest.fixture(params=["memory", "redis"])
def settings_overrides(request):
    # The address comes from X-Forwarded-For, so each test is its own set of clients.
    overrides = {"trust_proxy_headers": True, **PER_IP_DEFAULTS}
    if request.param == "redis":
        overrides["redis_url"] = request.getfixturevalue("redis_server").url
    return overrides


def address() -> str:
    """A fresh client address (Redis keeps counts between tests of the module)."""
    return f"198.51.{secrets.randbelow(256)}.{secrets.randbelow(254) + 1}"


async def login(sheda, username: str, password: str, ip: str):
    return await sheda.api.post(f"{AUTH}/login", {"username": username, "password": password}, headers={"X-Forwarded-For": ip})


async def test_five_wrong_passwords_get_401_and_the_sixth_try_429(sheda):
    user = await sheda.signup("client")
    ip = address()
    for i in range(5):  # by username and by email: the same account
        r = await login(sheda, user.username if i % 2 else user.email, f"wrong-password-{i}", ip)
        assert r.status == 401 and r.json["code"] == "invalid_credentials", (i, r)
    sixth = await login(sheda, user.username, "wrong-password-6", ip)
    assert sixth.status == 429 and sixth.json["code"] == "rate_limited" and 0 < int(sixth.headers["Retry-After"]) <= 15 * 60
    right = await login(sheda, user.username, user.password, ip)
    assert right.status == 429, "the right password waits too"
    # Another address is not affected, nor another account from this one.
    assert (await login(sheda, user.username, user.password, address())).status == 200
    other = await sheda.signup("client")
    assert (await login(sheda, other.username, other.password, ip)).status == 200


async def test_four_wrong_then_the_right_password_logs_in_and_starts_over(sheda):
    user = await sheda.signup("client")
    ip = address()
    for i in range(4):
        assert (await login(sheda, user.username, f"wrong-password-{i}", ip)).status == 401
    assert (await login(sheda, user.username, user.password, ip)).status == 200
    for i in range(5):
        assert (await login(sheda, user.username, f"wrong-again-{i}", ip)).status == 401, i
    assert (await login(sheda, user.username, user.password, ip)).status == 429


async def test_one_address_trying_many_accounts_is_stopped(sheda):
    limit = sheda.ctx.settings.login_max_failures_per_ip
    assert limit == 20, "the documented default"
    real = await sheda.signup("client")
    ip = address()
    for i in range(limit - 1):  # a different name each time: no account's own throttle is reached
        r = await login(sheda, unique("victim"), f"Password-{i}", ip)
        assert r.status == 401, (i, r)
    # A user who logs in from the same address (an office, a NAT) does not use up the budget.
    assert (await login(sheda, real.username, real.password, ip)).status == 200
    assert (await login(sheda, unique("victim"), "Password-last", ip)).status == 401
    stopped = await login(sheda, unique("victim"), "Password-over", ip)
    assert stopped.status == 429 and stopped.json["code"] == "rate_limited" and int(stopped.headers["Retry-After"]) > 0
    assert (await login(sheda, real.username, real.password, ip)).status == 429, "the address is stopped, whatever the account"
    assert (await login(sheda, real.username, real.password, address())).status == 200


async def test_a_replaced_pending_registration_and_a_password_reset_leave_the_failed_logins_behind(sheda):
    # Someone registered the owner's address and never verified it. The owner tries their own password on
    # it (401s, then 429), registers the address themselves (the pending registration is replaced, same id:
    # 08d26d0) and verifies it. The old registration's failures were theirs, not the new account's: it
    # logged in at once (it answered 429 for the rest of the window).
    email = f"{unique('owner')}@example.com"
    squat = await sheda.api.post(f"{AUTH}/register", {"username": unique("sq"), "email": email, "password": "attacker-pass-1",
                                                      "user_type": "client"})
    assert squat.status == 201, squat
    ip = address()
    for i in range(5):
        assert (await login(sheda, email, "owner-pass-1", ip)).status == 401, i
    assert (await login(sheda, email, "owner-pass-1", ip)).status == 429
    mine = {"username": unique("own"), "email": email, "password": "owner-pass-1", "user_type": "client"}
    again = await sheda.api.post(f"{AUTH}/register", mine)
    assert again.status == 201 and again.json["id"] == squat.json["id"], again
    verified = await sheda.api.post(f"{AUTH}/verify-account", {"email": email, "otp": otp_from_mail(sheda.ctx.mailer, email)})
    assert verified.status == 200, verified
    assert (await login(sheda, email, mine["password"], ip)).status == 200
    # The new account's own count works as any account's.
    for i in range(5):
        assert (await login(sheda, mine["username"], f"wrong-password-{i}", ip)).status == 401, i
    assert (await login(sheda, mine["username"], mine["password"], ip)).status == 429
    # A password reset (the owner proved the mailbox and chose a new password) starts the count over too.
    assert (await sheda.api.post(f"{AUTH}/send-otp", {"email": email})).status == 202
    otp = await sheda.api.post(f"{AUTH}/verify-otp", {"email": email, "otp": otp_from_mail(sheda.ctx.mailer, email)})
    assert otp.status == 200, otp
    reset = await sheda.api.put(f"{AUTH}/reset-password", {"password": "owner-pass-2"}, token=otp.json["access_token"])
    assert reset.status == 204, reset
    assert (await login(sheda, mine["username"], "owner-pass-2", ip)).status == 200


async def test_a_burst_of_guesses_gets_no_further_than_guesses_in_turn(sheda):
    limit = sheda.ctx.settings.login_max_failures_per_ip
    ip = address()
    results = await asyncio.gather(*(login(sheda, unique("stuffed"), f"Password-{i}", ip) for i in range(limit + 10)))
    statuses = sorted(r.status for r in results)
    assert statuses == [401] * limit + [429] * 10, statuses


async def test_one_address_registering_or_mailing_many_people_is_stopped(sheda):
    """register and send-otp mail whatever address they are given: one client could have the server mail
    hundreds of people (spam from the product's own domain, its mail quota spent). Per client address: at
    most REGISTRATIONS_PER_IP_PER_HOUR registrations and OTP_SENDS_PER_IP_PER_HOUR send-otp requests in any
    hour, then 429 with Retry-After; across processes with Redis."""
    assert PER_IP_DEFAULTS == {"registrations_per_ip_per_hour": 20, "otp_sends_per_ip_per_hour": 30}, "the documented defaults"
    settings = sheda.ctx.settings
    assert (settings.registrations_per_ip_per_hour, settings.otp_sends_per_ip_per_hour) == (20, 30)
    xff = {"X-Forwarded-For": address()}

    def someone() -> dict:
        return {"username": unique("m"), "email": f"{unique('m')}@example.com", "password": "correct-horse-1", "user_type": "client"}

    taken = await sheda.api.post(f"{AUTH}/register", {**someone(), "username": "x" + unique()}, headers=xff)
    assert taken.status == 201, taken
    # A refused registration (nothing stored, nothing mailed) does not use up the address's budget.
    refused = await sheda.api.post(f"{AUTH}/register", {**someone(), "username": taken.json["username"]}, headers=xff)
    assert refused.status == 409, refused
    for i in range(settings.registrations_per_ip_per_hour - 1):
        r = await sheda.api.post(f"{AUTH}/register", someone(), headers=xff)
        assert r.status == 201, (i, r)
    body = someone()
    over = await sheda.api.post(f"{AUTH}/register", body, headers=xff)
    assert over.status == 429 and over.json["code"] == "rate_limited", over
    assert 0 < int(over.headers["Retry-After"]) <= 3600
    assert await sheda.ctx.db.users.count_documents({"email": body["email"]}) == 0
    assert sheda.ctx.mailer.last_to(body["email"]) is None
    assert (await sheda.api.post(f"{AUTH}/register", body, headers={"X-Forwarded-For": address()})).status == 201

    xff = {"X-Forwarded-For": address()}  # a fresh address for send-otp
    for i in range(settings.otp_sends_per_ip_per_hour):  # unknown addresses count alike: nothing tells them apart
        r = await sheda.api.post(f"{AUTH}/send-otp", {"email": f"{unique('o')}@example.com"}, headers=xff)
        assert r.status == 202, (i, r)
    over = await sheda.api.post(f"{AUTH}/send-otp", {"email": body["email"]}, headers=xff)
    assert over.status == 429 and over.json["code"] == "rate_limited" and 0 < int(over.headers["Retry-After"]) <= 3600, over
    assert (await sheda.api.post(f"{AUTH}/send-otp", {"email": body["email"]}, headers={"X-Forwarded-For": address()})).status == 202


@pytest.mark.parametrize("settings_overrides", [{}], indirect=False)
@pytest.mark.parametrize("name", [
    "admin", "ADMIN", "Admin", "Adm1n", "adm1n", "adrnin", "administrator", "support", "s.u.p.p.o.r.t", "Support_24",
    "moderator", "m0derator", "root", "r00t", "system", "sheda", "SHEDA", "sheda_rt", "Sheda-RT", "shedart", "sh3da",
    "sheda_support", "support.sheda", "sheda-official", "help", "he1p", "security", "api", "staff", "official",
    "5upport", "admin2",
])
async def test_reserved_usernames_are_refused(sheda, name):
    before = await sheda.ctx.db.users.count_documents({})
    resp, _ = await sheda.register("client", username=name)
    assert resp.status == 422, (name, resp)
    assert resp.json["errors"][0]["field"] == "username" and "reserved" in resp.json["errors"][0]["message"]
    assert await sheda.ctx.db.users.count_documents({}) == before


@pytest.mark.parametrize("settings_overrides", [{}], indirect=False)
async def test_names_that_only_contain_a_reserved_word_are_fine(sheda):
    for name in ("modupe", "helper", "rooted", "admiral", "shedrack", "stafford", "apinke", "sheda_fan"):
        resp, _ = await sheda.register("client", username=f"{name}{secrets.randbelow(10**6)}x")
        assert resp.status == 201, (name, resp)


@pytest.mark.parametrize("settings_overrides", [{}], indirect=False)
async def test_look_alike_letters_are_refused(sheda):
    from sheda_rt.accounts.usernames import is_reserved

    # Cyrillic Ѕ/е, fullwidth letters: refused by the API (usernames are ASCII) and reserved by their look.
    for name in ("Ѕheda", "ѕhеda", "Ａｄｍｉｎ", "ѕupport"):
        resp, _ = await sheda.register("client", username=name)
        assert resp.status == 422 and resp.json["errors"][0]["field"] == "username", (name, resp)
        assert is_reserved(name), name
    # Nor can a username be changed into one later: PATCH /users/me takes no username.
    user = await sheda.signup("client")
    r = await sheda.api.patch("/api/v1/users/me", {"username": "admin"}, token=user.token)
    assert r.status == 422
    assert (await sheda.ctx.users.get(user.id))["username"] == user.username


def test_the_operator_may_create_a_reserved_name(tmp_path):
    code, out, err = run_cli(tmp_path / "data", "create-user", "--username", "support", "--email", "support@example.com",
                             "--password", "support-pass-1", "--admin")
    assert code == 0 and "created user" in out and "support" in out, err
