"""Sockets obey token expiry (issue 13, section 3): a socket opened with an access token is
closed with 4401 when that token expires by the server's clock, unless the client renewed it
on the socket with {"type": "auth", "token"} (answered auth.ok); a refused renewal is an error
frame invalid_token and the old expiry stands.

The clock is moved, never slept on. After a move, `hub.expiry.sweep()` is called once so the
"still open" checks do not depend on when the periodic sweep (WS_EXPIRY_SWEEP_SECONDS) happens
to run; the first test relies on the periodic sweep alone.
"""
from __future__ import annotations

from datetime import datetime, timezone

import jwt
import pytest

from sheda_rt.clock import format_ts
from tests.support import otp_from_mail

AUTH = "/api/v1/auth"


def exp_of(token: str) -> int:
    return jwt.decode(token, options={"verify_signature": False})["exp"]


async def still_open(ws) -> None:
    """The socket answers a ping and was not closed."""
    await ws.send({"type": "ping"})
    before = len(ws.of_type("pong"))
    await ws.wait_for(lambda f: f.get("type") == "pong" and len(ws.of_type("pong")) > before)
    assert not ws.closed.done()


async def login(sheda, user) -> dict:
    r = await sheda.api.post(f"{AUTH}/login", {"username": user.username, "password": user.password})
    assert r.status == 200, r
    return r.json


async def test_expiry_closes_the_socket_with_4401_and_spares_another_users_socket(sheda, clock):
    minutes = sheda.ctx.settings.access_token_minutes
    alice = await sheda.signup("client")
    clock.advance(minutes=minutes - 10)
    bob = await sheda.signup("agent")  # his token expires 20 minutes after hers
    a, b = await sheda.ws(alice.token), await sheda.ws(bob.token)
    await still_open(a)

    clock.advance(minutes=10, seconds=1)  # past alice's exp only; no sweep called: the periodic one closes it
    assert await a.wait_closed(10) == (4401, "token expired")
    await still_open(b)
    # Bob's socket still gets what is sent to him.
    carol = await sheda.signup("client")
    r = await sheda.api.post("/api/v1/chats", {"receiver_id": bob.id, "message": "hi bob"}, token=carol.token)
    assert r.status == 201, r
    await b.wait_type("message", id=r.json["id"])

    clock.advance(minutes=20)
    assert await b.wait_closed(10) == (4401, "token expired")


async def test_renewal_keeps_the_socket_open_past_the_old_expiry_until_the_new_one(sheda, clock):
    minutes = sheda.ctx.settings.access_token_minutes
    alice = await sheda.signup("client")
    ws = await sheda.ws(alice.token)
    clock.advance(minutes=minutes - 10)
    refreshed = await sheda.api.post(f"{AUTH}/refresh", {"refresh_token": alice.refresh_token})
    assert refreshed.status == 200, refreshed
    fresh = refreshed.json["access_token"]

    await ws.send({"type": "auth", "token": fresh})
    ok = await ws.wait_type("auth.ok")
    assert ok == {"type": "auth.ok", "expires_at": format_ts(datetime.fromtimestamp(exp_of(fresh), tz=timezone.utc))}
    assert ok["expires_at"].endswith(".000Z")

    clock.advance(minutes=10, seconds=1)  # past the first token's exp
    sheda.ctx.hub.expiry.sweep()
    await still_open(ws)
    # Still a working socket: it sends and is acked.
    bob = await sheda.signup("agent")
    await ws.send({"type": "message", "receiver_id": bob.id, "message": "renewed", "client_msg_id": "r1"})
    await ws.wait_type("ack", client_msg_id="r1")

    clock.advance(minutes=minutes - 10)  # past the renewed token's exp
    assert await ws.wait_closed(10) == (4401, "token expired")


async def test_after_renewal_logging_out_the_new_token_closes_the_socket(sheda, clock):
    alice = await sheda.signup("client")
    ws = await sheda.ws(alice.token)
    other_login = await login(sheda, alice)  # another login family than the socket's first token
    await ws.send({"type": "auth", "token": other_login["access_token"]})
    await ws.wait_type("auth.ok")
    out = await sheda.api.post(f"{AUTH}/logout", token=other_login["access_token"])
    assert out.status == 204, out
    assert await ws.wait_closed(5) == (4401, "logged out")


async def _bad_token(sheda, kind: str, alice, alice_first_token: str, alice_login: dict) -> str:
    if kind == "other_user":
        return (await sheda.signup("client")).token
    if kind == "refresh":
        return alice_login["refresh_token"]
    if kind == "otp":
        assert (await sheda.api.post(f"{AUTH}/send-otp", {"email": alice.email})).status == 202
        r = await sheda.api.post(f"{AUTH}/verify-otp", {"email": alice.email, "otp": otp_from_mail(sheda.ctx.mailer, alice.email)})
        assert r.status == 200 and r.json["scope"] == "otp", r
        return r.json["access_token"]
    if kind == "revoked":
        other = await login(sheda, alice)
        assert (await sheda.api.post(f"{AUTH}/logout", token=other["access_token"])).status == 204
        return other["access_token"]
    if kind == "expired":
        return alice_first_token
    if kind == "garbage":
        return "not-a-token"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind, reason", [
    ("other_user", "other_user"),
    ("refresh", "wrong_token_type"),
    ("otp", "wrong_token_type"),
    ("revoked", "token_revoked"),
    ("expired", "token_expired"),
    ("garbage", "invalid_token"),
])
async def test_a_refused_renewal_is_an_error_frame_and_the_old_expiry_stands(sheda, clock, kind, reason):
    minutes = sheda.ctx.settings.access_token_minutes
    alice = await sheda.signup("client")
    first_token = alice.token  # expires `minutes` from now
    clock.advance(minutes=minutes - 10)
    current = await login(sheda, alice)  # the socket's token: expires 10 minutes after the first
    ws = await sheda.ws(current["access_token"])
    clock.advance(minutes=10, seconds=1)  # the first token has expired; the socket's has not
    sheda.ctx.hub.expiry.sweep()
    await still_open(ws)

    bad = await _bad_token(sheda, kind, alice, first_token, current)
    await ws.send({"type": "auth", "token": bad})
    err = await ws.wait_type("error")
    assert err["code"] == "invalid_token" and err["reason"] == reason, err
    assert "detail" in err and bad not in err["detail"]
    assert ws.of_type("auth.ok") == []
    await still_open(ws)

    # The socket's own token still rules: it closes when that one expires.
    clock.advance(minutes=minutes - 10)
    closed = sheda.ctx.hub.expiry.sweep()
    assert closed >= 1
    assert await ws.wait_closed(5) == (4401, "token expired")


async def test_the_auth_frame_is_validated_like_any_other_frame(sheda):
    alice = await sheda.signup("client")
    ws = await sheda.ws(alice.token)
    await ws.send({"type": "auth"})
    err = await ws.wait_type("error")
    assert err["code"] == "validation_error" and any(e["field"].endswith("token") for e in err["errors"]), err
    await ws.send({"type": "auth", "token": 12345})
    await ws.wait_for(lambda f: f.get("type") == "error" and f is not err)
    await still_open(ws)
