"""Profiles, avatars, bank details, public profiles, deactivation, and the admin surface."""
from __future__ import annotations

import uuid

import pytest

from sheda_rt.accounts.service import agent_profile
from sheda_rt.errors import Conflict
from tests.support import JPEG_MAGIC, PNG_1PX, multipart

ME = "/api/v1/users/me"


async def test_client_and_agent_profiles_carry_different_fields(sheda):
    client = await sheda.signup("client")
    r = await sheda.api.patch(ME, {"full_name": "Chi Ade", "preferred_location": "Lekki", "budget_min": "1500000",
                                   "budget_max": "2500000.5", "preferred_property_type": "apartment"}, token=client.token)
    assert r.status == 200, r
    assert r.json["full_name"] == "Chi Ade"
    assert r.json["profile"] == {"preferred_location": "Lekki", "preferred_property_type": "apartment",
                                 "budget_min": "1500000.00", "budget_max": "2500000.50"}
    # An agent field on a client: 422 naming the field, nothing stored.
    before = await sheda.ctx.users.get(client.id)
    bad = await sheda.api.patch(ME, {"agency_name": "Acme", "full_name": "Changed"}, token=client.token)
    assert bad.status == 422 and bad.json["errors"] == [{"field": "agency_name", "message": "is not a client profile field"}]
    for body in ({"budget_min": 100}, {"budget_min": "abc"}, {"budget_min": "1.234"}, {"budget_min": "-5"},
                 {"budget_min": "3000000"},  # more than budget_max
                 {"preferred_property_type": "castle"}, {"phone": "12"}, {"role": "admin"}, {"is_verified": True},
                 {"email": "x@example.com"}, {"full_name": ""}):
        r = await sheda.api.patch(ME, body, token=client.token)
        assert r.status == 422, (body, r)
    assert await sheda.ctx.users.get(client.id) == before

    agent = await sheda.signup("agent")
    r = await sheda.api.patch(ME, {"agency_name": "Acme Homes", "license_number": "LAG-123", "bio": "Ten years in Lekki.",
                                   "years_experience": 10, "whatsapp": "+2348000000001"}, token=agent.token)
    assert r.status == 200, r
    assert r.json["profile"]["agency_name"] == "Acme Homes" and r.json["profile"]["years_experience"] == 10
    bad = await sheda.api.patch(ME, {"budget_min": "10.00"}, token=agent.token)
    assert bad.status == 422 and bad.json["errors"][0]["field"] == "budget_min"
    assert (await sheda.api.patch(ME, {"years_experience": "many"}, token=agent.token)).status == 422
    assert (await sheda.api.patch(ME, {"years_experience": 200}, token=agent.token)).status == 422
    # null clears a field.
    r = await sheda.api.patch(ME, {"bio": None}, token=agent.token)
    assert r.status == 200 and r.json["profile"]["bio"] is None and r.json["profile"]["agency_name"] == "Acme Homes"

    # Public view: the agent profile shows, the client's budget does not.
    pub = await sheda.api.get(f"/api/v1/users/{agent.id}")
    assert pub.status == 200 and pub.json["agency_name"] == "Acme Homes" and "email" not in pub.json
    assert pub.json == agent_profile(await sheda.ctx.users.get(agent.id))
    pub_client = await sheda.api.get(f"/api/v1/users/{client.id}")
    assert pub_client.status == 200 and "budget_min" not in pub_client.json and "email" not in pub_client.json
    assert (await sheda.api.get("/api/v1/users/999999999")).status == 404
    assert (await sheda.api.get("/api/v1/users/abc")).status == 404


async def test_names_others_see_have_no_invisible_or_reordering_characters(sheda):
    # A full name of only a zero-width space showed as no name at all, "\u202e" (right-to-left override) turned the
    # rest of a name around in every app that shows it (spoofing), and a NUL or a line break broke layouts.
    # Names that need a joiner or a direction mark (Persian, Arabic) keep them.
    agent = await sheda.signup("agent")
    bad = ["\u200b", "\u200b\u00a0\u200d", "Ada\u202eigolonhceT", "\u2067Ada\u2069", "Ada\nObi", "Ada\x00Obi", "Ada\x7f"]
    for value in bad:
        resp, _ = await sheda.register("client", full_name=value)
        assert resp.status == 422 and resp.json["errors"][0]["field"] == "full_name", (value, resp)
        for field in ("full_name", "agency_name"):
            r = await sheda.api.patch(ME, {field: value}, token=agent.token)
            assert r.status == 422 and r.json["errors"][0]["field"] == field, (field, value, r)
    builder = await sheda.signup("builder")
    r = await sheda.api.patch(ME, {"company_name": "Sky\u202eline"}, token=builder.token)
    assert r.status == 422 and r.json["errors"][0]["field"] == "company_name", r
    assert (await sheda.ctx.users.get(agent.id)).get("full_name") is None, "nothing was stored"
    for good in ("\u0645\u06cc\u200c\u0631\u0627", "\u200f\u0639\u0644\u064a Ada", "Zo\u00eb O'Brien-Obi"):
        r = await sheda.api.patch(ME, {"full_name": good, "agency_name": good}, token=agent.token)
        assert r.status == 200 and r.json["full_name"] == good, (good, r)
        resp, _ = await sheda.register("client", full_name=good)
        assert resp.status == 201 and resp.json["full_name"] == good, (good, resp)


async def test_phone_change_conflict(sheda):
    a = await sheda.signup("client", phone="+2348111111111")
    b = await sheda.signup("client")
    r = await sheda.api.patch(ME, {"phone": "+2348111111111"}, token=b.token)
    assert r.status == 409 and r.json["code"] == "phone_taken"
    assert (await sheda.ctx.users.get(b.id)).get("phone") is None
    r = await sheda.api.patch(ME, {"phone": None}, token=a.token)
    assert r.status == 200 and r.json["phone"] is None
    assert (await sheda.api.patch(ME, {"phone": "+2348111111111"}, token=b.token)).status == 200


async def test_avatar_upload(sheda):
    user = await sheda.signup("client")
    body, headers = multipart("file", "me.png", PNG_1PX, "image/png")
    r = await sheda.api.put(f"{ME}/avatar", body=body, headers=headers, token=user.token)
    assert r.status == 200, r
    url = r.json["avatar_url"]
    assert url.startswith("/media/avatars/") and url.endswith(".png")
    served = await sheda.api.get(url)
    assert served.status == 200 and served.body == PNG_1PX and served.headers["Content-Type"] == "image/png"
    # Chat's sender_info and public profiles show it.
    assert (await sheda.api.get(f"/api/v1/users/{user.id}")).json["avatar_url"] == url

    # The type comes from the content: a "png" that is text is a 415, a jpeg named .txt is fine.
    body, headers = multipart("file", "evil.png", b"<script>alert(1)</script>", "image/png")
    r = await sheda.api.put(f"{ME}/avatar", body=body, headers=headers, token=user.token)
    assert r.status == 415 and r.json["code"] == "unsupported_media_type"
    body, headers = multipart("photo", "me.png", PNG_1PX)
    r = await sheda.api.put(f"{ME}/avatar", body=body, headers=headers, token=user.token)
    assert r.status == 422 and r.json["errors"][0]["field"] == "file"
    r = await sheda.api.put(f"{ME}/avatar", {"file": "x"}, token=user.token)
    assert r.status == 415
    assert (await sheda.ctx.users.get(user.id))["avatar_url"] == url, "failed uploads change nothing"

    body, headers = multipart("file", "x.txt", JPEG_MAGIC)
    r = await sheda.api.put(f"{ME}/avatar", body=body, headers=headers, token=user.token)
    assert r.status == 200 and r.json["avatar_url"].endswith(".jpg")
    assert (await sheda.api.get(url)).status == 404, "the replaced avatar is removed"
    missing = await sheda.api.get("/media/avatars/nothing-here.png")
    assert missing.status == 404 and missing.json["code"] == "not_found"
    assert (await sheda.api.get("/media/../jwt_secret")).status in (403, 404)
    assert (await sheda.api.put(f"{ME}/avatar", body=body, headers=headers)).status == 401


async def test_account_info_for_agents(sheda):
    agent = await sheda.signup("agent")
    path = f"{ME}/account-info"
    r = await sheda.api.get(path, token=agent.token)
    assert r.status == 404 and r.json["code"] == "account_info_not_found"
    for bad in ({"account_name": "Ada", "bank_name": "GTBank", "account_number": "12345"},
                {"account_name": "Ada", "bank_name": "GTBank", "account_number": 123456789},
                {"account_name": "Ada", "bank_name": "GTBank", "account_number": "12345678901"},
                {"account_name": "Ada", "bank_name": "GTBank"},
                {"account_name": "", "bank_name": "GTBank", "account_number": "0123456789"}):
        r = await sheda.api.put(path, bad, token=agent.token)
        assert r.status == 422, (bad, r)
    assert await sheda.ctx.account_info.get(agent.id) is None
    r = await sheda.api.put(path, {"account_name": "Ada Obi", "bank_name": "GTBank", "account_number": "0123 456-789"},
                            token=agent.token)
    assert r.status == 200 and r.json["account_number"] == "0123456789"
    assert await sheda.ctx.accounts.account_info(agent.id) == (await sheda.api.get(path, token=agent.token)).json
    # Not in any profile view.
    assert "account_number" not in str((await sheda.api.get(ME, token=agent.token)).json)
    client = await sheda.signup("client")
    assert (await sheda.api.get(path, token=client.token)).status == 403
    assert (await sheda.api.put(path, {"account_name": "Ada Obi", "bank_name": "GTBank", "account_number": "0123456789"},
                                token=client.token)).status == 403
    assert (await sheda.api.get(path)).status == 401
    assert (await sheda.api.delete(path, token=agent.token)).status == 204
    assert await sheda.ctx.accounts.account_info(agent.id) is None
    assert (await sheda.api.delete(path, token=agent.token)).status == 404


async def test_deactivation_kills_tokens_and_sockets(sheda):
    user = await sheda.signup("client")
    other_session = await sheda.api.post("/api/v1/auth/login", {"username": user.username, "password": user.password})
    r = await sheda.api.delete(ME, token=user.token)
    assert r.status == 204
    assert (await sheda.ctx.users.get(user.id))["is_active"] is False
    for token in (user.token, other_session.json["access_token"]):
        r = await sheda.api.get(ME, token=token)
        assert r.status == 403 and r.json["code"] == "account_inactive"
    refresh = await sheda.api.post("/api/v1/auth/refresh", {"refresh_token": user.refresh_token})
    assert refresh.status == 403
    login = await sheda.api.post("/api/v1/auth/login", {"username": user.username, "password": user.password})
    assert login.status == 403 and login.json["code"] == "account_inactive"
    assert (await sheda.api.get(f"/api/v1/users/{user.id}")).status == 404


async def test_admin_routes(sheda):
    user = await sheda.signup("client")
    admin = await sheda.admin()
    # 401 without token, 403 for a non-admin, 403 for an admin role without the admin scope in the token.
    assert (await sheda.api.get("/api/v1/admin/users")).status == 401
    r = await sheda.api.get("/api/v1/admin/users", token=user.token)
    assert r.status == 403 and r.json["code"] == "admin_required"
    stale = await sheda.signup("agent")
    await sheda.ctx.users.update(stale.id, {"role": "admin"})
    assert (await sheda.api.get("/api/v1/admin/users", token=stale.token)).status == 403

    page = await sheda.api.get("/api/v1/admin/users", token=admin.token, params={"limit": 2})
    assert page.status == 200 and len(page.json["items"]) == 2 and page.json["next_cursor"]
    assert page.json["items"][0]["id"] > page.json["items"][1]["id"]
    nxt = await sheda.api.get("/api/v1/admin/users", token=admin.token, params={"limit": 2, "cursor": page.json["next_cursor"]})
    assert nxt.status == 200 and nxt.json["items"][0]["id"] < page.json["items"][1]["id"]
    found = await sheda.api.get("/api/v1/admin/users", token=admin.token, params={"q": user.username[:8].upper(), "user_type": "client"})
    assert [u["id"] for u in found.json["items"]] == [user.id]
    admins = await sheda.api.get("/api/v1/admin/users", token=admin.token, params={"role": "admin", "limit": 100})
    assert all(u["role"] == "admin" for u in admins.json["items"])
    for bad in ({"limit": 0}, {"limit": 101}, {"role": "king"}, {"is_active": "maybe"}, {"cursor": "!!"}, {"sort": "x"}):
        r = await sheda.api.get("/api/v1/admin/users", token=admin.token, params=bad)
        assert r.status == 422, (bad, r)

    # PATCH: role and is_active; bad input changes nothing.
    target = f"/api/v1/admin/users/{user.id}"
    before = await sheda.ctx.users.get(user.id)
    for bad in ({}, {"role": "king"}, {"is_active": "no"}, {"email": "x@example.com"}):
        r = await sheda.api.patch(target, bad, token=admin.token)
        assert r.status == 422, (bad, r)
    assert await sheda.ctx.users.get(user.id) == before
    assert (await sheda.api.patch("/api/v1/admin/users/999999999", {"role": "moderator"}, token=admin.token)).status == 404
    assert (await sheda.api.patch(target, {"role": "moderator"}, token=user.token)).status == 403
    r = await sheda.api.patch(target, {"role": "moderator"}, token=admin.token)
    assert r.status == 200 and r.json["role"] == "moderator"
    me = f"/api/v1/admin/users/{admin.id}"
    assert (await sheda.api.patch(me, {"is_active": False}, token=admin.token)).status == 409
    assert (await sheda.api.patch(me, {"role": "user"}, token=admin.token)).status == 409

    r = await sheda.api.patch(target, {"is_active": False}, token=admin.token)
    assert r.status == 200 and r.json["is_active"] is False
    assert (await sheda.api.get(ME, token=user.token)).status == 403
    r = await sheda.api.patch(target, {"is_active": True}, token=admin.token)
    assert r.status == 200 and r.json["is_active"] is True
    # Reactivated, but the tokens from before the deactivation stay dead; a new login works.
    old = await sheda.api.get(ME, token=user.token)
    assert old.status == 401 and old.json["code"] == "token_revoked"
    login = await sheda.api.post("/api/v1/auth/login", {"username": user.username, "password": user.password})
    assert (await sheda.api.get(ME, token=login.json["access_token"])).status == 200

    # A demoted admin loses admin rights at once, even with a token that says admin.
    assert (await sheda.api.patch(f"/api/v1/admin/users/{stale.id}", {"role": "user"}, token=admin.token)).status == 200


# Its own database: the shared one holds other tests' admins, and this is about the last one.
@pytest.mark.parametrize("settings_overrides", [{"mongodb_db": "sheda_admins_" + uuid.uuid4().hex[:8]}])
async def test_two_admins_demoting_each_other_leave_an_admin(sheda):
    # Only self-demotion was refused: A and B, the only admins, demoting (or deactivating) each other at the same
    # moment left no admin at all (only the CLI recovers). Driven in order: A's request is authenticated (its
    # principal loaded), B's demotion of A lands, then A's write demotes B.
    a, b = await sheda.admin(), await sheda.admin()
    for change in ({"role": "user"}, {"is_active": False}):
        stale_a = await sheda.ctx.users.get(a.id)
        assert stale_a["role"] == "admin"
        r = await sheda.api.patch(f"/api/v1/admin/users/{a.id}", {"role": "user"}, token=b.token)
        assert r.status == 200 and r.json["role"] == "user", r
        with pytest.raises(Conflict) as err:
            await sheda.ctx.accounts.admin_update(stale_a, b.id, change.get("role"), change.get("is_active"))
        assert err.value.code == "last_admin", err.value.detail
        kept = await sheda.ctx.users.get(b.id)
        assert kept["role"] == "admin" and kept.get("is_active", True) is True
        assert (await sheda.api.get("/api/v1/admin/users", token=b.token)).status == 200
        # B promotes A back for the next round (with another admin left, demotions go through as before).
        assert (await sheda.api.patch(f"/api/v1/admin/users/{a.id}", {"role": "admin"}, token=b.token)).status == 200
    r = await sheda.api.patch(f"/api/v1/admin/users/{a.id}", {"is_active": False}, token=b.token)
    assert r.status == 200 and r.json["is_active"] is False, r


async def test_verifying_the_account_is_a_login_the_admin_list_shows(sheda):
    # verify-account logs in (it answers a token pair), but last_login_at stayed null until a password login:
    # a user who verified and then lived on refresh tokens looked, to admins, as if they never signed in.
    admin = await sheda.admin()
    user = await sheda.signup("client")
    found = await sheda.api.get("/api/v1/admin/users", token=admin.token, params={"q": user.username})
    assert found.status == 200 and [u["id"] for u in found.json["items"]] == [user.id]
    assert found.json["items"][0]["last_login_at"] is not None


async def test_an_admin_cannot_close_their_own_account(sheda):
    # PATCH /admin/users/{me} {"is_active": false} is a 409 so the last admin cannot lock everyone out;
    # DELETE /users/me did it anyway (the app's "close my account" button).
    admin = await sheda.admin()
    r = await sheda.api.delete(ME, token=admin.token)
    assert r.status == 409 and r.json["code"] == "self_change_refused", r
    me = await sheda.api.get(ME, token=admin.token)
    assert me.status == 200 and me.json["is_active"] is True
    assert (await sheda.api.get("/api/v1/admin/users", token=admin.token)).status == 200
    # Demoted by another admin, the same person may close their account as anyone may.
    other = await sheda.admin()
    assert (await sheda.api.patch(f"/api/v1/admin/users/{admin.id}", {"role": "user"}, token=other.token)).status == 200
    assert (await sheda.api.delete(ME, token=admin.token)).status == 204
    assert (await sheda.ctx.users.get(admin.id))["is_active"] is False


async def test_media_upload_admin_only(sheda):
    user = await sheda.signup("agent")
    admin = await sheda.admin()
    body, headers = multipart("file", "banner.png", PNG_1PX, "image/png")
    assert (await sheda.api.post("/api/media/file-upload/banner", body=body, headers=headers)).status == 401
    r = await sheda.api.post("/api/media/file-upload/banner", body=body, headers=headers, token=user.token)
    assert r.status == 403
    r = await sheda.api.post("/api/media/file-upload/banner", body=body, headers=headers, token=admin.token)
    assert r.status == 201, r
    assert r.json["file_url"].startswith("/media/banner/")
    assert (await sheda.api.get(r.json["file_url"])).body == PNG_1PX
    bad_type = await sheda.api.post("/api/media/file-upload/Bad..Type", body=body, headers=headers, token=admin.token)
    assert bad_type.status == 422
    body, headers = multipart("file", "a.png", b"GIF89a....", "image/png")
    assert (await sheda.api.post("/api/media/file-upload/banner", body=body, headers=headers, token=admin.token)).status == 415
