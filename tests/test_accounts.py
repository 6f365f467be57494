"""Accounts scenarios: what a client does from sign-up to logout."""
from __future__ import annotations

from tests.support import otp_from_mail


async def test_register_verify_login_me_refresh_logout(sheda):
    resp, body = await sheda.register("client", full_name="Ada Obi")
    assert resp.status == 201, resp
    assert resp.json["is_verified"] is False and resp.json["email"] == body["email"]
    code = otp_from_mail(sheda.ctx.mailer, body["email"])
    stored = await sheda.ctx.otps.get(resp.json["id"])
    assert stored is not None and code not in str(stored), "codes are stored hashed"

    verified = await sheda.api.post("/api/v1/auth/verify-account", {"email": body["email"], "otp": code})
    assert verified.status == 200, verified
    assert set(verified.json) >= {"access_token", "refresh_token", "token_type", "expires_in"}
    assert (await sheda.ctx.users.get(resp.json["id"]))["is_verified"] is True
    again = await sheda.api.post("/api/v1/auth/verify-account", {"email": body["email"], "otp": code})
    assert again.status == 400 and again.json["code"] == "invalid_otp", "a code works once"
