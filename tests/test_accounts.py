"""Accounts scenarios: what a client does from sign-up to logout, and every way it can go wrong."""
from __future__ import annotations

import asyncio
import re
from datetime import timedelta

import pytest

from sheda_rt.errors import BadRequest
from tests.support import otp_from_mail, unique

AUTH = "/api/v1/auth"


async def _code(sheda, email: str) -> str:
    return otp_from_mail(sheda.ctx.mailer, email)


async def test_register_verify_login_me_refresh_logout(sheda):
    resp, body = await sheda.register("client", full_name="Ada Obi", phone="+2348012345678")
    assert resp.status == 201, resp
    user_id = resp.json["id"]
    assert isinstance(user_id, int)
    assert resp.json["is_verified"] is False and resp.json["email"] == body["email"] and resp.json["role"] == "user"
    assert "password_hash" not in resp.json and "password" not in resp.json
    code = await _code(sheda, body["email"])
    stored = await sheda.ctx.otps.get(user_id)
    assert stored is not None and code not in str(stored), "codes are stored hashed"

    # Not verified yet: the right password gets 403 email_unverified (a wrong one stays a plain 401).
    early = await sheda.api.post(f"{AUTH}/login", {"username": body["username"], "password": body["password"]})
    assert early.status == 403 and early.json["code"] == "email_unverified", early
    wrong = await sheda.api.post(f"{AUTH}/login", {"username": body["username"], "password": "not-the-password"})
    assert wrong.status == 401 and wrong.json["code"] == "invalid_credentials"

    verified = await sheda.api.post(f"{AUTH}/verify-account", {"email": body["email"], "otp": code})
    assert verified.status == 200, verified
    assert set(verified.json) >= {"access_token", "refresh_token", "token_type", "expires_in"}
    assert verified.json["token_type"] == "bearer"
    assert (await sheda.ctx.users.get(user_id))["is_verified"] is True
    again = await sheda.api.post(f"{AUTH}/verify-account", {"email": body["email"], "otp": code})
    assert again.status == 400 and again.json["code"] == "invalid_otp", "a code works once"

    # Login by username, email, phone; JSON and form.
    for ident in (body["username"], body["email"].upper(), "+2348012345678"):
        r = await sheda.api.post(f"{AUTH}/login", {"username": ident, "password": body["password"]})
        assert r.status == 200, (ident, r)
    form = await sheda.api.request("POST", f"{AUTH}/login", body=f"username={body['username']}&password={body['password']}",
                                   headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert form.status == 200, form
    pair = form.json
    claims = sheda.ctx.tokens.decode(pair["access_token"], "access")
    assert claims["sub"] == str(user_id) and claims["scopes"] == ["client"] and claims["jti"] and claims["exp"]

    me = await sheda.api.get("/api/v1/users/me", token=pair["access_token"])
    assert me.status == 200 and me.json["id"] == user_id and me.json["is_verified"] is True
    assert me.json["profile"] == {"preferred_location": None, "preferred_property_type": None, "budget_min": None, "budget_max": None}

    refreshed = await sheda.api.post(f"{AUTH}/refresh", {"refresh_token": pair["refresh_token"]})
    assert refreshed.status == 200, refreshed
    new = refreshed.json
    assert new["refresh_token"] != pair["refresh_token"] and new["access_token"] != pair["access_token"]
    assert (await sheda.api.get("/api/v1/users/me", token=new["access_token"])).status == 200

    out = await sheda.api.post(f"{AUTH}/logout", token=new["access_token"])
    assert out.status == 204, out
    after = await sheda.api.get("/api/v1/users/me", token=new["access_token"])
    assert after.status == 401 and after.json["code"] == "token_revoked"
    assert after.headers["WWW-Authenticate"].startswith("Bearer")
    # The refresh token of that session died with it.
    dead = await sheda.api.post(f"{AUTH}/refresh", {"refresh_token": new["refresh_token"]})
    assert dead.status == 401
    # Another login session is untouched.
    other = await sheda.api.post(f"{AUTH}/login", {"username": body["username"], "password": body["password"]})
    assert (await sheda.api.get("/api/v1/users/me", token=other.json["access_token"])).status == 200


async def test_reused_refresh_token_revokes_the_family(sheda):
    user = await sheda.signup("client")
    first = await sheda.api.post(f"{AUTH}/refresh", {"refresh_token": user.refresh_token})
    assert first.status == 200
    second = await sheda.api.post(f"{AUTH}/refresh", {"refresh_token": first.json["refresh_token"]})
    assert second.status == 200
    current = second.json
    assert (await sheda.api.get("/api/v1/users/me", token=current["access_token"])).status == 200
    ws = await sheda.ws(current["access_token"])
    await ws.send({"type": "ping"})
    await ws.wait_type("pong")

    # The thief replays the first refresh token: 401, and the legitimate session dies too.
    replay = await sheda.api.post(f"{AUTH}/refresh", {"refresh_token": user.refresh_token})
    assert replay.status == 401 and replay.json["code"] == "refresh_reused", replay
    assert (await ws.wait_closed())[0] == 4401
    for token in (current["access_token"], first.json["access_token"], user.access_token):
        r = await sheda.api.get("/api/v1/users/me", token=token)
        assert r.status == 401 and r.json["code"] == "token_revoked"
    assert (await sheda.api.post(f"{AUTH}/refresh", {"refresh_token": current["refresh_token"]})).status == 401

    # A fresh login is a new family and works.
    login = await sheda.api.post(f"{AUTH}/login", {"username": user.username, "password": user.password})
    assert login.status == 200
    assert (await sheda.api.get("/api/v1/users/me", token=login.json["access_token"])).status == 200


async def test_concurrent_refresh_with_one_token_only_one_wins(sheda):
    user = await sheda.signup("agent")
    results = await asyncio.gather(*[sheda.api.post(f"{AUTH}/refresh", {"refresh_token": user.refresh_token}) for _ in range(4)])
    statuses = sorted(r.status for r in results)
    assert statuses.count(200) == 1 and statuses.count(401) == 3, statuses


async def test_refresh_rejects_wrong_tokens(sheda):
    user = await sheda.signup("client")
    for bad in (user.access_token, "garbage", user.refresh_token + "x"):
        r = await sheda.api.post(f"{AUTH}/refresh", {"refresh_token": bad})
        assert r.status == 401, r
    r = await sheda.api.post(f"{AUTH}/refresh", {"refresh_token": user.access_token})
    assert r.json["detail"] == "Expected a refresh token", r  # was "Expected an refresh token"
    assert (await sheda.api.post(f"{AUTH}/refresh", {})).status == 422
    # A refresh token is not an access token.
    r = await sheda.api.get("/api/v1/users/me", token=user.refresh_token)
    assert r.status == 401 and r.json["code"] == "wrong_token_type"
    # None of that burned the real one.
    assert (await sheda.api.post(f"{AUTH}/refresh", {"refresh_token": user.refresh_token})).status == 200


async def test_expired_access_token_is_401(sheda, clock):
    user = await sheda.signup("client")
    clock.advance(minutes=sheda.ctx.settings.access_token_minutes + 1)
    r = await sheda.api.get("/api/v1/users/me", token=user.token)
    assert r.status == 401 and r.json["code"] == "token_expired"
    # The refresh token lives longer and still works.
    assert (await sheda.api.post(f"{AUTH}/refresh", {"refresh_token": user.refresh_token})).status == 200


async def test_otp_password_reset(sheda):
    user = await sheda.signup("client")
    assert (await sheda.api.post(f"{AUTH}/send-otp", {"email": user.email})).status == 202
    code = await _code(sheda, user.email)
    otp = await sheda.api.post(f"{AUTH}/verify-otp", {"email": user.email, "otp": code})
    assert otp.status == 200, otp
    assert otp.json["token_type"] == "bearer" and otp.json["expires_in"] == 300
    otp_token = otp.json["access_token"]
    assert sheda.ctx.tokens.decode(otp_token, "otp")["scopes"] == ["otp"]
    # The otp token is not an access token, and an access token cannot reset.
    assert (await sheda.api.get("/api/v1/users/me", token=otp_token)).status == 401
    assert (await sheda.api.put(f"{AUTH}/reset-password", {"password": "new-password-2"}, token=user.token)).status == 401

    short = await sheda.api.put(f"{AUTH}/reset-password", {"password": "short"}, token=otp_token)
    assert short.status == 422 and short.json["errors"][0]["field"] == "password"
    ws = await sheda.ws(user.token)
    await ws.send({"type": "ping"})
    await ws.wait_type("pong")
    reset = await sheda.api.put(f"{AUTH}/reset-password", {"password": "new-password-2"}, token=otp_token)
    assert reset.status == 204, reset
    # Signed out everywhere: tokens from before the reset are dead, sockets closed.
    assert (await ws.wait_closed())[0] == 4401
    r = await sheda.api.get("/api/v1/users/me", token=user.token)
    assert r.status == 401 and r.json["code"] == "token_revoked"
    assert (await sheda.api.post(f"{AUTH}/refresh", {"refresh_token": user.refresh_token})).status == 401
    twice = await sheda.api.put(f"{AUTH}/reset-password", {"password": "third-password-3"}, token=otp_token)
    assert twice.status == 401 and twice.json["code"] == "token_revoked"

    old = await sheda.api.post(f"{AUTH}/login", {"username": user.username, "password": user.password})
    assert old.status == 401
    new = await sheda.api.post(f"{AUTH}/login", {"username": user.username, "password": "new-password-2"})
    assert new.status == 200


async def test_otp_token_expires_after_five_minutes(sheda, clock):
    user = await sheda.signup("client")
    await sheda.api.post(f"{AUTH}/send-otp", {"email": user.email})
    otp = await sheda.api.post(f"{AUTH}/verify-otp", {"email": user.email, "otp": await _code(sheda, user.email)})
    clock.advance(minutes=5, seconds=1)
    r = await sheda.api.put(f"{AUTH}/reset-password", {"password": "new-password-2"}, token=otp.json["access_token"])
    assert r.status == 401 and r.json["code"] == "token_expired"


async def test_wrong_codes_burn_the_otp_after_five_tries(sheda):
    user = await sheda.signup("client")
    await sheda.api.post(f"{AUTH}/send-otp", {"email": user.email})
    code = await _code(sheda, user.email)
    wrong = f"{(int(code) + 1) % 1_000_000:06d}"
    for _ in range(5):
        r = await sheda.api.post(f"{AUTH}/verify-otp", {"email": user.email, "otp": wrong})
        assert r.status == 400 and r.json["code"] == "invalid_otp"
    # The sixth try is the right code, but the code is burnt.
    r = await sheda.api.post(f"{AUTH}/verify-otp", {"email": user.email, "otp": code})
    assert r.status == 400 and r.json["code"] == "invalid_otp"
    assert await sheda.ctx.otps.get(user.id) is None


async def test_wrong_codes_are_capped_per_account_across_new_codes(sheda):
    # Each code burns after 5 wrong tries, but a new code (send-otp) used to start the guessing over:
    # about 300 guesses an hour at anyone's password reset. Now 10 wrong codes per account within
    # LOGIN_WINDOW_MINUTES, whatever the codes, and the next try is a 429 (the right code too).
    user = await sheda.signup("client")
    for round_ in range(2):
        await sheda.api.post(f"{AUTH}/send-otp", {"email": user.email})
        code = await _code(sheda, user.email)
        wrong = f"{(int(code) + 1) % 1_000_000:06d}"
        for _ in range(5):
            r = await sheda.api.post(f"{AUTH}/verify-otp", {"email": user.email, "otp": wrong})
            assert r.status == 400 and r.json["code"] == "invalid_otp", (round_, r)
    assert (await sheda.api.post(f"{AUTH}/send-otp", {"email": user.email})).status == 202
    code = await _code(sheda, user.email)
    for path in ("verify-otp", "verify-account"):
        r = await sheda.api.post(f"{AUTH}/{path}", {"email": user.email, "otp": code})
        assert r.status == 429 and r.json["code"] == "rate_limited", (path, r)
        assert 0 < int(r.headers["Retry-After"]) <= 15 * 60
    assert await sheda.ctx.otps.get(user.id) is not None, "the refused try did not use the code up"
    # Another account is not affected; a right code clears that account's count.
    other = await sheda.signup("client")
    await sheda.api.post(f"{AUTH}/send-otp", {"email": other.email})
    code = await _code(sheda, other.email)
    assert (await sheda.api.post(f"{AUTH}/verify-otp", {"email": other.email, "otp": f"{(int(code) + 1) % 1_000_000:06d}"})).status == 400
    assert (await sheda.api.post(f"{AUTH}/verify-otp", {"email": other.email, "otp": code})).status == 200
    # The account can still log in with its password meanwhile.
    assert (await sheda.api.post(f"{AUTH}/login", {"username": user.username, "password": user.password})).status == 200


async def test_re_registering_a_pending_email_does_not_start_the_code_guessing_over(sheda):
    # Someone who registered an address they do not own could guess its verification codes, and register it
    # again (a new registration, new codes) each time the count ran out: a verified account on another's address.
    resp, body = await sheda.register("client")
    email = body["email"]
    for round_ in range(2):
        code = await _code(sheda, email)
        for _ in range(5):
            r = await sheda.api.post(f"{AUTH}/verify-account", {"email": email, "otp": f"{(int(code) + 1) % 1_000_000:06d}"})
            assert r.status == 400, (round_, r)
        again, _ = await sheda.register("client", email=email)
        assert again.status == 201 and again.json["id"] == resp.json["id"], again
    r = await sheda.api.post(f"{AUTH}/verify-account", {"email": email, "otp": await _code(sheda, email)})
    assert r.status == 429 and r.json["code"] == "rate_limited", r
    assert (await sheda.ctx.users.get(resp.json["id"]))["is_verified"] is False


async def test_otp_expires_after_ten_minutes_and_a_new_one_replaces_it(sheda, clock):
    resp, body = await sheda.register("agent")
    first = await _code(sheda, body["email"])
    clock.advance(minutes=10, seconds=1)
    r = await sheda.api.post(f"{AUTH}/verify-account", {"email": body["email"], "otp": first})
    assert r.status == 400 and r.json["code"] == "invalid_otp"
    assert (await sheda.ctx.users.get(resp.json["id"]))["is_verified"] is False
    assert (await sheda.api.post(f"{AUTH}/send-otp", {"email": body["email"]})).status == 202
    second = await _code(sheda, body["email"])
    if second != first:
        assert (await sheda.api.post(f"{AUTH}/verify-account", {"email": body["email"], "otp": first})).status == 400
    # Numbers are accepted too (a client that sends the code as a JSON number).
    r = await sheda.api.post(f"{AUTH}/verify-account", {"email": body["email"], "otp": int(second)})
    assert r.status == 200, r


async def test_send_otp_does_not_reveal_accounts(sheda):
    before = len(sheda.ctx.mailer.sent)
    r = await sheda.api.post(f"{AUTH}/send-otp", {"email": f"{unique('nobody')}@example.com"})
    assert r.status == 202
    assert len(sheda.ctx.mailer.sent) == before, "no mail for an unknown address"
    user = await sheda.signup("client")
    known = await sheda.api.post(f"{AUTH}/send-otp", {"email": user.email})
    assert known.status == 202 and known.json == r.json
    # Verifying a code for an unknown address answers like a wrong code.
    v = await sheda.api.post(f"{AUTH}/verify-otp", {"email": f"{unique('nobody')}@example.com", "otp": "123456"})
    assert v.status == 400 and v.json["code"] == "invalid_otp"
    for bad in ({}, {"email": "not-an-email"}, {"email": 5}):
        assert (await sheda.api.post(f"{AUTH}/send-otp", bad)).status == 422
    for bad in ({"email": user.email}, {"email": user.email, "otp": "12345"}, {"email": user.email, "otp": "abcdef"},
                {"email": user.email, "otp": 1234567}, {"email": user.email, "otp": True}):
        r = await sheda.api.post(f"{AUTH}/verify-otp", bad)
        assert r.status == 422 and r.json["errors"], (bad, r)


async def test_send_otp_is_rate_limited_per_address(sheda):
    user = await sheda.signup("client")
    statuses = [(await sheda.api.post(f"{AUTH}/send-otp", {"email": user.email})) for _ in range(6)]
    assert [r.status for r in statuses[:5]] == [202] * 5
    assert statuses[5].status == 429 and int(statuses[5].headers["Retry-After"]) >= 1


async def test_switch_account_changes_scopes(sheda):
    user = await sheda.signup("client")
    r = await sheda.api.post(f"{AUTH}/switch-account", {"switch_to": "agent"}, token=user.token)
    assert r.status == 200, r
    claims = sheda.ctx.tokens.decode(r.json["access_token"], "access")
    assert claims["scopes"] == ["agent"]
    me = await sheda.api.get("/api/v1/users/me", token=r.json["access_token"])
    assert me.json["user_type"] == "agent" and "agency_name" in me.json["profile"]
    # The agent scope opens agent routes; the old client token no longer carries a role scope that matches.
    assert (await sheda.api.get("/api/v1/users/me/account-info", token=r.json["access_token"])).status == 404
    old = await sheda.api.get("/api/v1/users/me/account-info", token=user.token)
    assert old.status == 403 and old.json["code"] == "insufficient_scope"
    # Refresh keeps the new type.
    ref = await sheda.api.post(f"{AUTH}/refresh", {"refresh_token": r.json["refresh_token"]})
    assert sheda.ctx.tokens.decode(ref.json["access_token"], "access")["scopes"] == ["agent"]
    bad = await sheda.api.post(f"{AUTH}/switch-account", {"switch_to": "landlord"}, token=r.json["access_token"])
    assert bad.status == 422
    assert (await sheda.ctx.users.get(user.id))["user_type"] == "agent"
    assert (await sheda.api.post(f"{AUTH}/switch-account", {"switch_to": "client"})).status == 401


async def test_switch_account_uses_up_the_refresh_token_so_a_copy_is_a_reuse(sheda):
    """The switch issues the login's next pair, as a refresh does: a copy of the refresh token taken before it
    (a thief's) came back later as a good token, and reuse detection never fired."""
    user = await sheda.signup("client")
    switched = await sheda.api.post(f"{AUTH}/switch-account", {"switch_to": "agent"}, token=user.token)
    assert switched.status == 200, switched
    ws = await sheda.ws(switched.json["access_token"])
    await ws.send({"type": "ping"})
    await ws.wait_type("pong")
    replay = await sheda.api.post(f"{AUTH}/refresh", {"refresh_token": user.refresh_token})
    assert replay.status == 401 and replay.json["code"] == "refresh_reused", replay
    # The whole login is signed out, the switch's pair with it, as after any reuse.
    assert (await ws.wait_closed())[0] == 4401
    me = await sheda.api.get("/api/v1/users/me", token=switched.json["access_token"])
    assert me.status == 401 and me.json["code"] == "token_revoked", me
    assert (await sheda.api.post(f"{AUTH}/refresh", {"refresh_token": switched.json["refresh_token"]})).status == 401

    # Without a copy the switched login lives on: its new refresh token works once, as any does.
    login = await sheda.api.post(f"{AUTH}/login", {"username": user.username, "password": user.password})
    again = await sheda.api.post(f"{AUTH}/switch-account", {"switch_to": "client"}, token=login.json["access_token"])
    assert again.status == 200, again
    fresh = await sheda.api.post(f"{AUTH}/refresh", {"refresh_token": again.json["refresh_token"]})
    assert fresh.status == 200, fresh
    assert sheda.ctx.tokens.decode(fresh.json["access_token"], "access")["scopes"] == ["client"]


async def test_login_throttle(sheda):
    user = await sheda.signup("client")
    for i in range(5):  # LOGIN_MAX_FAILURES wrong passwords each get 401; the next try is one too many
        r = await sheda.api.post(f"{AUTH}/login", {"username": user.username, "password": f"wrong-password-{i}"})
        assert r.status == 401
    sixth = await sheda.api.post(f"{AUTH}/login", {"username": user.email, "password": "wrong-password-6"})
    assert sixth.status == 429 and int(sixth.headers["Retry-After"]) > 0 and sixth.json["code"] == "rate_limited"
    # A made-up forwarding header does not buy a fresh address (no trusted proxy by default).
    spoofed = await sheda.api.post(f"{AUTH}/login", {"username": user.username, "password": user.password},
                                   headers={"X-Forwarded-For": "203.0.113.9", "X-Real-Ip": "203.0.113.9"})
    assert spoofed.status == 429
    # Now even the right password waits (by any of the account's names).
    right = await sheda.api.post(f"{AUTH}/login", {"username": user.username, "password": user.password})
    assert right.status == 429 and 0 < int(right.headers["Retry-After"]) <= 15 * 60
    # Another account from the same address is not affected.
    other = await sheda.signup("client")
    assert (await sheda.api.post(f"{AUTH}/login", {"username": other.username, "password": other.password})).status == 200


async def test_unknown_user_and_wrong_password_look_the_same(sheda):
    user = await sheda.signup("client")
    a = await sheda.api.post(f"{AUTH}/login", {"username": unique("ghost"), "password": "whatever-123"})
    b = await sheda.api.post(f"{AUTH}/login", {"username": user.username, "password": "whatever-123"})
    assert a.status == b.status == 401 and a.json == b.json


async def test_a_blank_full_name_at_registration_is_no_name(sheda):
    # A sign-up form's empty "full name" box came through as "" (or spaces, stripped to ""): stored as a name
    # PATCH /users/me refuses (min 1 character), shown as an empty name where apps fall back to the username on null.
    for blank in ("", "   "):
        resp, body = await sheda.register("client", full_name=blank)
        assert resp.status == 201 and resp.json["full_name"] is None, (blank, resp)
        assert (await sheda.ctx.users.get(resp.json["id"])).get("full_name") is None
        public = await sheda.api.get(f"/api/v1/users/{resp.json['id']}")
        assert public.json["full_name"] is None
        assert f"Hello {body['username']}," in sheda.ctx.mailer.last_to(body["email"]).body
    resp, _ = await sheda.register("client", full_name="  Ada Obi  ")
    assert resp.status == 201 and resp.json["full_name"] == "Ada Obi"


async def test_register_bad_input_stores_nothing(sheda):
    taken = await sheda.signup("client", phone="+2348099990000")
    count = await sheda.ctx.db.users.count_documents({})
    base = {"username": unique("c"), "email": f"{unique('e')}@example.com", "password": "correct-horse-1", "user_type": "client"}
    cases = [
        ({**base, "password": "short"}, 422, "password"),
        ({**base, "password": "é" * 37}, 422, "password"),  # 74 bytes: more than bcrypt takes, never truncated
        ({**base, "user_type": "landlord"}, 422, "user_type"),
        ({**base, "email": "nope"}, 422, "email"),
        ({**base, "username": "a b"}, 422, "username"),
        ({**base, "phone": "12"}, 422, "phone"),
        ({**base, "username": 12345}, 422, "username"),
        ({k: v for k, v in base.items() if k != "email"}, 422, "email"),
        ({**base, "username": taken.username.upper()}, 409, None),
        ({**base, "email": taken.email.upper()}, 409, None),
        ({**base, "phone": "+2348099990000"}, 409, None),
        ({**base, "username": "2348099990000"}, 422, "username"),  # would shadow a phone login
    ]
    for body, status, field in cases:
        r = await sheda.api.post(f"{AUTH}/register", body)
        assert r.status == status, (body, r)
        assert set(r.json) >= {"detail", "code"}
        if field:
            assert any(e["field"] == field for e in r.json["errors"]), r.json
    assert (await sheda.api.post(f"{AUTH}/register", {**base, "password": "x" * 72})).status == 201  # exactly 72 is fine
    # a phone-number username is refused, so the phone's owner still logs in with it
    local = await sheda.signup("client", phone="08099990001")
    r = await sheda.api.post(f"{AUTH}/register", {**base, "username": "08099990001", "email": f"{unique('e')}@example.com"})
    assert r.status == 422 and r.json["errors"][0]["field"] == "username", r
    login = await sheda.api.post(f"{AUTH}/login", {"username": "08099990001", "password": local.password})
    assert login.status == 200, login
    assert await sheda.ctx.db.users.count_documents({}) == count + 2
    # base's email is still unverified: registering it again replaces that registration (no new account)
    again = await sheda.api.post(f"{AUTH}/register", {**base, "username": unique("c")})
    assert again.status == 201, again
    assert await sheda.ctx.db.users.count_documents({}) == count + 2
    # a verified account's email is taken, whatever the username
    conflict = await sheda.api.post(f"{AUTH}/register", {**base, "email": taken.email, "username": unique("c")})
    assert conflict.status == 409 and conflict.json["code"] == "email_taken"


async def test_passwords_are_not_stripped_or_truncated(sheda):
    user = await sheda.signup("client", password="  spaced pass  ")
    assert (await sheda.api.post(f"{AUTH}/login", {"username": user.username, "password": "spaced pass"})).status == 401
    assert (await sheda.api.post(f"{AUTH}/login", {"username": user.username, "password": "  spaced pass  "})).status == 200


async def test_logout_closes_sockets_opened_with_that_token_only(sheda):
    user = await sheda.signup("client")
    other = await sheda.api.post(f"{AUTH}/login", {"username": user.username, "password": user.password})
    ws_this = await sheda.ws(user.token)
    ws_other = await sheda.ws(other.json["access_token"])
    await ws_this.send({"type": "ping"})
    await ws_this.wait_type("pong")
    assert (await sheda.api.post(f"{AUTH}/logout", token=user.token)).status == 204
    code, _ = await ws_this.wait_closed()
    assert code == 4401
    await ws_other.send({"type": "ping"})
    await ws_other.wait_type("pong")
    assert not ws_other.closed.done()
    # The revoked token cannot open a new socket either.
    again = await sheda.ws(user.token)
    assert (await again.wait_closed())[0] == 4401
    ws_other.close()


async def test_over_long_password_at_login_is_a_wrong_password_not_a_crash(sheda):
    user = await sheda.signup("client", password="x" * 72)
    for password in ("x" * 73, "x" * 72 + "é", "é" * 40):
        r = await sheda.api.post(f"{AUTH}/login", {"username": user.username, "password": password})
        assert r.status == 401 and r.json["code"] == "invalid_credentials", r
    r = await sheda.api.post(f"{AUTH}/login", {"username": user.username, "password": "x" * 72})
    assert r.status == 200


async def test_logout_closes_sockets_of_every_token_of_that_login(sheda):
    # A mobile client refreshes its access token but keeps the socket it opened with the
    # old one; logging out with the new token must still close that socket.
    user = await sheda.signup("client")
    login = (await sheda.api.post(f"{AUTH}/login", {"username": user.username, "password": user.password})).json
    ws_old = await sheda.ws(login["access_token"])
    ws_elsewhere = await sheda.ws(user.token)  # another login (another device)
    refreshed = (await sheda.api.post(f"{AUTH}/refresh", {"refresh_token": login["refresh_token"]})).json
    ws_new = await sheda.ws(refreshed["access_token"])
    for ws in (ws_old, ws_new, ws_elsewhere):
        await ws.send({"type": "ping"})
        await ws.wait_type("pong")
    assert (await sheda.api.post(f"{AUTH}/logout", token=refreshed["access_token"])).status == 204
    assert (await ws_old.wait_closed(1.0))[0] == 4401
    assert (await ws_new.wait_closed(1.0))[0] == 4401
    await ws_elsewhere.send({"type": "ping"})
    await ws_elsewhere.wait_type("pong")
    assert (await sheda.api.get("/api/v1/users/me", token=login["access_token"])).status == 401
    assert (await sheda.api.post(f"{AUTH}/refresh", {"refresh_token": refreshed["refresh_token"]})).status == 401
    assert (await sheda.api.get("/api/v1/users/me", token=user.token)).status == 200
    ws_elsewhere.close()


async def test_deactivation_closes_every_socket_with_4403(sheda):
    user = await sheda.signup("agent")
    admin = await sheda.admin()
    sockets = [await sheda.ws(user.token), await sheda.ws(user.token)]
    for ws in sockets:
        await ws.send({"type": "ping"})
        await ws.wait_type("pong")
    r = await sheda.api.patch(f"/api/v1/admin/users/{user.id}", {"is_active": False}, token=admin.token)
    assert r.status == 200
    for ws in sockets:
        assert (await ws.wait_closed())[0] == 4403
    assert (await (await sheda.ws(user.token)).wait_closed())[0] == 4403

    me = await sheda.signup("client")
    ws = await sheda.ws(me.token)
    await ws.send({"type": "ping"})
    await ws.wait_type("pong")
    assert (await sheda.api.delete("/api/v1/users/me", token=me.token)).status == 204
    assert (await ws.wait_closed())[0] == 4403


async def test_tokens_follow_the_server_clock(sheda, clock):
    """Time claims are judged by the server's clock: after it moves on (a day later), fresh
    tokens work and old short-lived ones have expired."""
    user = await sheda.signup("client")
    clock.advance(days=1)
    assert (await sheda.api.get("/api/v1/users/me", token=user.token)).status == 401
    login = await sheda.api.post(f"{AUTH}/login", {"username": user.username, "password": user.password})
    assert login.status == 200
    assert (await sheda.api.get("/api/v1/users/me", token=login.json["access_token"])).status == 200
    assert (await sheda.api.post(f"{AUTH}/refresh", {"refresh_token": login.json["refresh_token"]})).status == 200


async def test_registering_a_pending_email_replaces_the_squatters_registration(sheda):
    """Someone registers the victim's address with a password of their own and never verifies it
    (they cannot: the code goes to the victim). The victim's own registration replaces theirs."""
    admin = await sheda.admin()
    email = f"{unique('victim')}@example.com"
    squat = {"username": unique("sq"), "email": email, "password": "attacker-pass-1", "user_type": "builder",
             "phone": "+2348077770001", "full_name": "Not The Owner"}
    first = await sheda.api.post(f"{AUTH}/register", squat)
    assert first.status == 201, first
    user_id = first.json["id"]
    old_code = await _code(sheda, email)
    # An admin vetted the squatter's company before anyone noticed: it must not carry over.
    assert (await sheda.api.patch(f"/api/v1/admin/builders/{user_id}", {"verified": True}, token=admin.token)).status == 200

    mine = {"username": unique("vic"), "email": email.upper(), "password": "victim-pass-1", "user_type": "builder",
            "full_name": "Real Owner"}
    second = await sheda.api.post(f"{AUTH}/register", mine)
    assert second.status == 201, second
    assert second.json["id"] == user_id and second.json["username"] == mine["username"], second.json
    assert second.json["full_name"] == "Real Owner" and second.json["phone"] is None and second.json["is_verified"] is False
    assert second.json["profile"]["verified"] is False
    new_code = await _code(sheda, email)
    stored = await sheda.ctx.users.get(user_id)
    assert stored["username"] == mine["username"] and "builder_profile" not in stored and stored["role"] == "user"
    assert await sheda.ctx.db.users.count_documents({"email": email}) == 1

    # The squatter's code (mailed to the victim) no longer verifies anything.
    if old_code != new_code:
        r = await sheda.api.post(f"{AUTH}/verify-account", {"email": email, "otp": old_code})
        assert r.status == 400 and r.json["code"] == "invalid_otp", r
    verified = await sheda.api.post(f"{AUTH}/verify-account", {"email": email, "otp": new_code})
    assert verified.status == 200, verified

    # The squatter's password opens nothing, by any name; the owner's does.
    for ident in (squat["username"], email, squat["phone"]):
        r = await sheda.api.post(f"{AUTH}/login", {"username": ident, "password": squat["password"]})
        assert r.status == 401, (ident, r)
    login = await sheda.api.post(f"{AUTH}/login", {"username": email, "password": mine["password"]})
    assert login.status == 200, login
    me = await sheda.api.get("/api/v1/users/me", token=login.json["access_token"])
    assert me.json["id"] == user_id and me.json["username"] == mine["username"] and me.json["profile"]["verified"] is False
    # The squatter's username and phone were freed with their registration.
    reuse = await sheda.api.post(f"{AUTH}/register", {**squat, "email": f"{unique('e')}@example.com"})
    assert reuse.status == 201 and reuse.json["id"] != user_id, reuse

    # Now verified: the address is taken for good.
    late = await sheda.api.post(f"{AUTH}/register", {**squat, "username": unique("sq"), "phone": None})
    assert late.status == 409 and late.json["code"] == "email_taken", late
    assert (await sheda.api.post(f"{AUTH}/login", {"username": email, "password": mine["password"]})).status == 200


async def test_the_owner_replacing_a_pending_registration_sees_nothing_sent_to_the_old_registrant(sheda):
    """The id stays, the person changes: an admin's verdict on the squatter's company (a notification
    and its `builder.verified` event, with the squatter's name) and a message someone sent the pending
    account were shown to the owner who replaced it, in GET /notifications, the stream's replay and the
    conversation list."""
    admin, stranger = await sheda.admin(), await sheda.signup("client")
    email = f"{unique('victim')}@example.com"
    squat = {"username": unique("sq"), "email": email, "password": "attacker-pass-1", "user_type": "builder"}
    first = await sheda.api.post(f"{AUTH}/register", squat)
    assert first.status == 201, first
    user_id = first.json["id"]
    assert (await sheda.api.patch(f"/api/v1/admin/builders/{user_id}", {"verified": True}, token=admin.token)).status == 200
    sent = await sheda.api.post("/api/v1/chats", {"receiver_id": user_id, "message": "hello builder"}, token=stranger.token)
    assert sent.status == 201, sent
    assert await sheda.ctx.db.notifications.count_documents({"user_id": user_id}) == 1

    mine = {"username": unique("vic"), "email": email, "password": "victim-pass-1", "user_type": "client"}
    assert (await sheda.api.post(f"{AUTH}/register", mine)).json["id"] == user_id
    verified = await sheda.api.post(f"{AUTH}/verify-account", {"email": email, "otp": await _code(sheda, email)})
    assert verified.status == 200, verified
    token = verified.json["access_token"]
    notes = await sheda.api.get("/api/v1/notifications", token=token)
    assert notes.status == 200 and notes.json["items"] == [] and notes.json["unread_count"] == 0, notes.json
    replay = await sheda.api.get("/api/v1/events", token=token, params={"after_seq": 0})
    assert replay.status == 200 and replay.json["items"] == [], replay.json
    assert (await sheda.api.get("/api/v1/chat/conversations", token=token)).json["items"] == []
    assert (await sheda.api.get(f"/api/v1/chat/chat-history/{stranger.id}", token=token)).json == []
    # What the new account is sent from now on reaches it as usual; the sender kept their message.
    later = await sheda.api.post("/api/v1/chats", {"receiver_id": user_id, "message": "hello again"}, token=stranger.token)
    assert later.status == 201, later
    rows = (await sheda.api.get("/api/v1/chat/conversations", token=token)).json["items"]
    assert [(r["user_id"], r["last_message"]["message"], r["unread_count"]) for r in rows] == [(stranger.id, "hello again", 1)]
    history = (await sheda.api.get(f"/api/v1/chat/chat-history/{user_id}", token=stranger.token)).json
    assert [m["message"] for m in history] == ["hello builder", "hello again"]


async def test_replacing_a_pending_registration_keeps_other_accounts_names_and_the_mail_limit(sheda):
    other = await sheda.signup("client", phone="+2348077770002")
    resp, body = await sheda.register("client")
    assert resp.status == 201
    code = await _code(sheda, body["email"])
    # A username or phone of another account is still taken; nothing of the pending one changes.
    for clash, field in (({"username": other.username}, "username"), ({"phone": "+2348077770002"}, "phone")):
        r = await sheda.api.post(f"{AUTH}/register", {**body, "username": unique("c"), "password": "new-pass-123", **clash})
        assert r.status == 409 and r.json["code"] == f"{field}_taken", r
    assert (await sheda.ctx.users.get(resp.json["id"]))["username"] == body["username"]
    # Each replacement mails a code: together with send-otp, a few per address, then 429.
    statuses = []
    for _ in range(6):
        r = await sheda.api.post(f"{AUTH}/register", {**body, "username": unique("c")})
        statuses.append(r.status)
        if r.status == 429:
            assert int(r.headers["Retry-After"]) >= 1 and r.json["code"] == "rate_limited"
            break
    assert statuses[-1] == 429 and set(statuses[:-1]) == {201}, statuses
    assert (await sheda.api.post(f"{AUTH}/send-otp", {"email": body["email"]})).status == 429
    # The code of the first registration stopped working with the first replacement.
    r = await sheda.api.post(f"{AUTH}/verify-account", {"email": body["email"], "otp": code})
    assert r.status == 400 and r.json["code"] == "invalid_otp", r


async def test_a_stale_pending_registration_no_longer_holds_its_username_or_phone(sheda, clock):
    """Someone registers another person's phone number (or a wanted username) under an address of their own
    and never verifies: the owner got 409 phone_taken for ever. Past PENDING_REGISTRATION_HOURS (24) the
    next registration wanting them removes that registration, as a replacement by its email would (what was
    kept for it goes too); a fresh one still holds them, and a verified account is never touched."""
    admin = await sheda.admin()
    phone_squat = {"username": unique("sq"), "email": f"{unique('e')}@example.com", "password": "squatter-pass-1",
                   "user_type": "builder", "phone": "+2348077770011"}
    name_squat = {"username": unique("wanted"), "email": f"{unique('e')}@example.com", "password": "squatter-pass-2",
                  "user_type": "client"}
    ids = []
    for squat in (phone_squat, name_squat):
        r = await sheda.api.post(f"{AUTH}/register", squat)
        assert r.status == 201, r
        ids.append(r.json["id"])
    assert (await sheda.api.patch(f"/api/v1/admin/builders/{ids[0]}", {"verified": True}, token=admin.token)).status == 200
    assert await sheda.ctx.db.notifications.count_documents({"user_id": ids[0]}) == 1
    owner = {"username": name_squat["username"].upper(), "email": f"{unique('owner')}@example.com",
             "password": "owner-pass-123", "user_type": "client", "phone": phone_squat["phone"]}
    # Fresh pending registrations still hold them: two people registering at once do not take from each other.
    for clash, field in (({"username": unique("ow")}, "phone"), ({"phone": None}, "username")):
        r = await sheda.api.post(f"{AUTH}/register", {**owner, **clash})
        assert r.status == 409 and r.json["code"] == f"{field}_taken", r

    clock.advance(hours=25)
    mine = await sheda.api.post(f"{AUTH}/register", owner)
    assert mine.status == 201, mine
    assert mine.json["username"] == owner["username"] and mine.json["phone"] == phone_squat["phone"], mine.json
    for user_id in ids:
        assert await sheda.ctx.users.get(user_id) is None
    assert await sheda.ctx.db.notifications.count_documents({"user_id": ids[0]}) == 0
    verified = await sheda.api.post(f"{AUTH}/verify-account", {"email": owner["email"], "otp": await _code(sheda, owner["email"])})
    assert verified.status == 200, verified
    for squat in (phone_squat, name_squat):  # the squatters' passwords open nothing
        r = await sheda.api.post(f"{AUTH}/login", {"username": squat["email"], "password": squat["password"]})
        assert r.status == 401, r

    # However old, a verified account keeps its username and phone.
    clock.advance(hours=48)
    for clash, field in (({"username": unique("ow")}, "phone"), ({"phone": None}, "username")):
        r = await sheda.api.post(f"{AUTH}/register", {**owner, "email": f"{unique('e')}@example.com", **clash})
        assert r.status == 409 and r.json["code"] == f"{field}_taken", r
    assert (await sheda.ctx.users.get(mine.json["id"]))["is_verified"] is True


async def test_concurrent_re_registrations_of_one_pending_email_leave_one_consistent_account(sheda):
    resp, body = await sheda.register("client")
    assert resp.status == 201
    tries = [{**body, "username": unique("race"), "password": f"race-pass-{i}-xyz", "user_type": kind}
             for i, kind in enumerate(("agent", "builder", "client"))]
    results = await asyncio.gather(*[sheda.api.post(f"{AUTH}/register", t) for t in tries])
    assert all(r.status in (201, 409) for r in results) and any(r.status == 201 for r in results), results
    for r in results:
        if r.status == 409:
            assert r.json["code"] == "email_taken", r
        else:
            assert r.json["id"] == resp.json["id"]
    stored = await sheda.ctx.users.get(resp.json["id"])
    winner = next(t for t in tries if t["username"] == stored["username"])
    assert stored["user_type"] == winner["user_type"] and stored["username_lc"] == winner["username"].lower()
    assert await sheda.ctx.db.users.count_documents({"email": body["email"]}) == 1
    for t in tries + [body]:
        if t is not winner:
            assert await sheda.ctx.db.users.count_documents({"username_lc": t["username"].lower()}) == 0
    # One of the codes mailed (the newest live one) verifies the winner, whose password (and only it) then logs in.
    codes = [re.search(r"\b(\d{6})\b", m.body).group(1) for m in reversed(sheda.ctx.mailer.sent) if m.to.lower() == body["email"].lower()]
    for code in codes[:4]:
        verified = await sheda.api.post(f"{AUTH}/verify-account", {"email": body["email"], "otp": code})
        if verified.status == 200:
            break
    assert verified.status == 200, verified
    for t in tries + [body]:
        r = await sheda.api.post(f"{AUTH}/login", {"username": body["email"], "password": t["password"]})
        assert r.status == (200 if t is winner else 401), (t["username"], winner["username"], r)


async def test_verification_racing_a_re_registration_only_one_wins(sheda):
    resp, body = await sheda.register("client")
    code = await _code(sheda, body["email"])
    mine = {**body, "username": unique("vic"), "password": "owner-pass-123"}
    verify, register = await asyncio.gather(sheda.api.post(f"{AUTH}/verify-account", {"email": body["email"], "otp": code}),
                                            sheda.api.post(f"{AUTH}/register", mine))
    stored = await sheda.ctx.users.get(resp.json["id"])
    if verify.status == 200:  # the first registration was verified first: the second is refused, nothing mixed
        assert register.status == 409 and register.json["code"] == "email_taken", register
        assert stored["username"] == body["username"] and stored["is_verified"] is True
    else:  # replaced first: the old code proves nothing about the new registration
        assert verify.status == 400 and verify.json["code"] == "invalid_otp", verify
        assert register.status == 201 and stored["username"] == mine["username"] and stored["is_verified"] is False


async def test_a_verifier_that_read_the_registration_before_it_was_replaced_changes_nothing(sheda):
    """The slow side of the race above, made deterministic: a verification (or a code mailing) that
    read the pending registration, then lost the race to a re-registration."""
    resp, body = await sheda.register("client")
    stale = await sheda.ctx.users.get(resp.json["id"])
    again = await sheda.api.post(f"{AUTH}/register", {**body, "username": unique("vic"), "password": "owner-pass-123"})
    assert again.status == 201, again
    live = await sheda.ctx.otps.get(resp.json["id"])
    with pytest.raises(BadRequest):
        await sheda.ctx.accounts._mark_verified(stale)
    assert (await sheda.ctx.users.get(resp.json["id"]))["is_verified"] is False
    # a code issued for the old registration does not displace the new one's
    now = sheda.ctx.clock.now()
    assert await sheda.ctx.otps.issue(stale["_id"], "123456", now, now + timedelta(minutes=10), epoch=stale.get("token_epoch", 0)) is False
    assert (await sheda.ctx.otps.get(resp.json["id"]))["code_hash"] == live["code_hash"]
    assert not await sheda.ctx.otps.consume(stale["_id"], "123456", now, 5, epoch=stale.get("token_epoch", 0))
    verified = await sheda.api.post(f"{AUTH}/verify-account", {"email": body["email"], "otp": await _code(sheda, body["email"])})
    assert verified.status == 200, verified
