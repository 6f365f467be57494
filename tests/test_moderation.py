"""Reports and the moderation queue (issue 15 §4): reporting rules, evidence that outlives a
deleted message, every moderator action, and who may take them."""
from __future__ import annotations

import pytest

from sheda_rt.chat.store import conv_key
from tests.listing_helpers import create_property

R = "/api/v1/reports"
Q = "/api/v1/moderation/reports"


@pytest.fixture
def settings_overrides():
    return {"ws_rate_burst": 10_000, "ws_rate_per_second": 10_000}


async def moderator(sheda):
    user = await sheda.signup("client")
    await sheda.ctx.users.update(user.id, {"role": "moderator"})  # what an admin's PATCH /admin/users/{id} does
    return user


async def say(sheda, sender, receiver, text: str) -> dict:
    r = await sheda.api.post("/api/v1/chats", {"receiver_id": receiver.id, "message": text}, token=sender.token)
    assert r.status == 201, r
    return r.json


async def report(sheda, who, target_type: str, target_id: int, reason: str = "spam", **extra):
    return await sheda.api.post(R, {"target_type": target_type, "target_id": target_id, "reason": reason, **extra}, token=who.token)


async def notifications(sheda, user) -> list[dict]:
    return (await sheda.api.get("/api/v1/notifications", token=user.token)).json["items"]


async def test_reporting_rules(sheda):
    alice, bob, eve = await sheda.signup("client"), await sheda.signup("agent"), await sheda.signup("client")
    prop = await create_property(sheda, bob)
    msg = await say(sheda, bob, alice, "Send the deposit to my personal account")

    first = await report(sheda, alice, "user", bob.id, "fraud", details="asks for money outside the app")
    assert first.status == 201, first
    body = first.json
    assert body["reporter_id"] == alice.id and body["target_type"] == "user" and body["target_id"] == bob.id
    assert body["reason"] == "fraud" and body["status"] == "open" and body["details"] == "asks for money outside the app"
    assert "evidence" not in body and body["created_at"].endswith("Z")
    dup = await report(sheda, alice, "user", bob.id, "spam")  # one open report per reporter per target
    assert dup.status == 409 and dup.json["code"] == "duplicate_report"
    assert (await report(sheda, eve, "user", bob.id)).status == 201  # another reporter may
    assert (await report(sheda, alice, "property", prop["id"], "inappropriate")).status == 201  # another target too
    assert (await report(sheda, alice, "message", msg["id"], "fraud")).status == 201

    cases = [
        ((alice, "user", alice.id), 400, "self_report"),
        ((alice, "user", 999_999_999), 404, "user_not_found"),
        ((alice, "message", 999_999_999), 404, "message_not_found"),
        ((alice, "property", 999_999_999), 404, "property_not_found"),
        ((eve, "message", msg["id"]), 403, "not_participant"),  # only the two participants
    ]
    for (who, kind, target), status, code in cases:
        r = await report(sheda, who, kind, target)
        assert (r.status, r.json["code"]) == (status, code), (kind, target, r)
    for bad in ({"target_type": "listing", "target_id": 1, "reason": "spam"}, {"target_type": "user", "target_id": bob.id, "reason": "rude"},
                {"target_type": "user", "target_id": "2", "reason": "spam"}, {"target_type": "user", "target_id": 0, "reason": "spam"},
                {"target_type": "user", "target_id": bob.id, "reason": "spam", "details": "x" * 2001},
                {"target_type": "user", "target_id": bob.id}):
        r = await sheda.api.post(R, bad, token=eve.token)
        assert r.status == 422, (bad, r)
    assert (await sheda.api.post(R, {"target_type": "user", "target_id": bob.id, "reason": "spam"})).status == 401
    assert await sheda.ctx.db["reports"].count_documents({"reporter_id": eve.id}) == 1

    # Once handled, the same reporter may report the same target again.
    mod = await moderator(sheda)
    assert (await sheda.api.patch(f"{Q}/{body['id']}", {"action": "dismiss", "note": "not enough"}, token=mod.token)).status == 200
    assert (await report(sheda, alice, "user", bob.id, "fraud")).status == 201


async def test_a_message_report_keeps_its_evidence_after_the_message_is_deleted(sheda):
    alice, bob = await sheda.signup("client"), await sheda.signup("agent")
    ids = []
    for i in range(30):
        sender, receiver = (bob, alice) if i % 2 else (alice, bob)
        ids.append((await say(sheda, sender, receiver, f"message {i}"))["id"])
    await say(sheda, alice, await sheda.signup("client"), "another conversation")  # not part of the evidence
    target = ids[15]  # from Bob
    a, b = await sheda.ws(alice.token), await sheda.ws(bob.token)

    r = await report(sheda, alice, "message", target, "harassment")
    assert r.status == 201, r
    evidence = r.json["evidence"]
    assert evidence["message"] == {"id": target, "sender_id": bob.id, "receiver_id": alice.id, "message": "message 15",
                                   "created_at": evidence["message"]["created_at"]}
    assert [m["id"] for m in evidence["context"]] == ids[5:15] + ids[16:26]  # the 20 around it, oldest first
    assert [m["message"] for m in evidence["context"]][:2] == ["message 5", "message 6"]

    # The sender hides it from his own history first: the moderator's delete still reaches it.
    assert (await sheda.api.delete(f"/api/v1/chat/messages/{target}", token=bob.token, params={"for": "me"})).status == 200
    mod = await moderator(sheda)
    done = await sheda.api.patch(f"{Q}/{r.json['id']}", {"action": "delete_message", "note": "threats"}, token=mod.token)
    assert done.status == 200, done
    assert done.json["status"] == "resolved" and done.json["action"] == "delete_message" and done.json["note"] == "threats"
    assert done.json["handled_by"] == mod.id and done.json["handled_at"].endswith("Z")

    # The message is a tombstone for both, and both were told.
    stored = await sheda.ctx.db["messages"].find_one({"_id": target})
    assert stored["deleted"] is True and stored["message"] == "" and stored["sender_id"] == bob.id
    assert stored["conv"] == conv_key(alice.id, bob.id) and stored["created_at"] is not None
    for ws in (a, b):
        await ws.wait_type("message.deleted", id=target, **{"for": "everyone"})
    history = await sheda.api.get(f"/api/v1/chats/{bob.id}", token=alice.token)
    row = next(m for m in history.json if m["id"] == target)
    assert row["message"] == "" and row["sender_id"] == bob.id and row["deleted"] is True
    assert "message 15" not in str(history.json)

    # ...and the evidence is intact, in the queue too.
    resolved = await sheda.api.get(Q, token=mod.token, params={"status": "resolved"})
    kept = next(i for i in resolved.json["items"] if i["id"] == r.json["id"])
    assert kept["evidence"] == evidence

    # The reporter is notified (stored, and live on their socket).
    note = await a.wait_for(lambda f: f.get("type") == "notification" and f.get("kind") == "report.handled")
    assert note["data"]["report_id"] == r.json["id"] and note["data"]["status"] == "resolved"
    assert any(n["kind"] == "report.handled" for n in await notifications(sheda, alice))
    assert not any(n["kind"] == "report.handled" for n in await notifications(sheda, bob))


async def test_every_action(sheda):
    alice, bob, carol = await sheda.signup("client"), await sheda.signup("agent"), await sheda.signup("client")
    prop = await create_property(sheda, bob)
    msg = await say(sheda, carol, alice, "buy followers")
    mod = await moderator(sheda)

    async def act(report_id, action, note="", who=mod):
        return await sheda.api.patch(f"{Q}/{report_id}", {"action": action, "note": note}, token=who.token)

    # delist_property: the listing is unlisted (404 to others), announced like an agent's unlisting.
    rp = (await report(sheda, alice, "property", prop["id"], "fraud")).json
    for wrong in ("delete_message",):
        refused = await act(rp["id"], wrong)
        assert refused.status == 422 and refused.json["errors"][0]["field"] == "action", refused
    assert (await sheda.api.get(f"/api/v1/properties/{prop['id']}", token=alice.token)).status == 200
    assert (await act(rp["id"], "delist_property", "fake listing")).json["status"] == "resolved"
    assert (await sheda.api.get(f"/api/v1/properties/{prop['id']}", token=alice.token)).status == 404
    again = await act(rp["id"], "dismiss")  # handled once only
    assert again.status == 409 and again.json["code"] == "report_not_open"

    # deactivate_user from a message report: the sender's account.
    rm = (await report(sheda, alice, "message", msg["id"], "spam")).json
    refused = await act(rm["id"], "delist_property")
    assert refused.status == 422
    c = await sheda.ws(carol.token)
    assert (await act(rm["id"], "deactivate_user", "spam bot")).json["action"] == "deactivate_user"
    assert (await c.wait_closed(5))[0] == 4403
    assert (await sheda.api.get("/api/v1/users/me", token=carol.token)).status == 403
    assert (await sheda.ctx.users.get(carol.id))["is_active"] is False

    # deactivate_user from a user report; staff accounts are not the queue's to deactivate.
    dave = await sheda.signup("client")
    ru = (await report(sheda, alice, "user", dave.id, "harassment")).json
    assert (await act(ru["id"], "deactivate_user")).status == 200
    assert (await sheda.api.get("/api/v1/users/me", token=dave.token)).status == 403
    other_mod = await moderator(sheda)
    rs = (await report(sheda, alice, "user", other_mod.id, "other")).json
    staff = await act(rs["id"], "deactivate_user")
    assert staff.status == 403 and staff.json["code"] == "staff_account"
    assert (await sheda.ctx.users.get(other_mod.id)).get("is_active", True) is True
    assert (await sheda.ctx.db["reports"].find_one({"_id": rs["id"]}))["status"] == "open"  # nothing changed

    # dismiss: nothing done, status dismissed; unknown report 404.
    rd = (await report(sheda, bob, "user", alice.id, "spam")).json
    dismissed = await act(rd["id"], "dismiss", "no evidence")
    assert dismissed.json["status"] == "dismissed" and dismissed.json["handled_by"] == mod.id
    assert (await sheda.api.get("/api/v1/users/me", token=alice.token)).status == 200
    assert (await act(999_999_999, "dismiss")).json["code"] == "report_not_found"
    # "note" is optional: a null (what many clients send for an empty optional field) is no note, not a 422.
    rn = (await report(sheda, bob, "user", dave.id, "spam")).json
    noted = await act(rn["id"], "dismiss", None)
    assert noted.status == 200 and noted.json["status"] == "dismissed" and noted.json["note"] == "", noted
    assert (await sheda.api.patch(f"{Q}/{rd['id']}", {"action": "ban"}, token=mod.token)).status == 422
    assert any(n["kind"] == "report.handled" and n["data"]["status"] == "dismissed" for n in await notifications(sheda, bob))


async def test_who_may_moderate(sheda):
    user, mod, admin = await sheda.signup("client"), await moderator(sheda), await sheda.admin()
    target = await sheda.signup("agent")
    reports = [(await report(sheda, user, "user", target.id)).json]
    for who in (user, target):  # ordinary users: neither the queue nor an action
        listing = await sheda.api.get(Q, token=who.token)
        assert listing.status == 403 and listing.json["code"] == "moderator_required"
        acting = await sheda.api.patch(f"{Q}/{reports[0]['id']}", {"action": "dismiss", "note": ""}, token=who.token)
        assert acting.status == 403 and acting.json["code"] == "moderator_required"
    assert (await sheda.api.get(Q)).status == 401

    # Moderators and admins both see the queue (oldest first) and act.
    extra = await sheda.signup("client")
    reports.append((await report(sheda, extra, "user", target.id)).json)
    for who in (mod, admin):
        page = await sheda.api.get(Q, token=who.token, params={"status": "open"})
        assert page.status == 200
        ids = [i["id"] for i in page.json["items"]]
        assert ids.index(reports[0]["id"]) < ids.index(reports[1]["id"])
    assert (await sheda.api.patch(f"{Q}/{reports[0]['id']}", {"action": "dismiss", "note": "ok"}, token=mod.token)).status == 200
    handled = await sheda.api.patch(f"{Q}/{reports[1]['id']}", {"action": "dismiss", "note": "ok"}, token=admin.token)
    assert handled.status == 200 and handled.json["handled_by"] == admin.id
    open_ids = [i["id"] for i in (await sheda.api.get(Q, token=mod.token)).json["items"]]
    assert reports[0]["id"] not in open_ids and reports[1]["id"] not in open_ids
    dismissed = await sheda.api.get(Q, token=mod.token, params={"status": "dismissed", "limit": 1})
    assert dismissed.json["items"][0]["id"] == reports[1]["id"] and dismissed.json["next_cursor"]  # newest first, paged
    nxt = await sheda.api.get(Q, token=mod.token, params={"status": "dismissed", "limit": 1, "cursor": dismissed.json["next_cursor"]})
    assert nxt.json["items"][0]["id"] == reports[0]["id"]
    assert (await sheda.api.get(Q, token=mod.token, params={"status": "closed"})).status == 422

    # Moderators cannot change roles (or anything else on the admin routes); admins can.
    promote = await sheda.api.patch(f"/api/v1/admin/users/{user.id}", {"role": "moderator"}, token=mod.token)
    assert promote.status == 403 and promote.json["code"] == "admin_required"
    assert (await sheda.api.patch(f"/api/v1/admin/users/{mod.id}", {"role": "admin"}, token=mod.token)).status == 403
    assert (await sheda.api.get("/api/v1/admin/users", token=mod.token)).status == 403
    assert (await sheda.ctx.users.get(user.id))["role"] == "user"
    promoted = await sheda.api.patch(f"/api/v1/admin/users/{user.id}", {"role": "moderator"}, token=admin.token)
    assert promoted.status == 200 and promoted.json["role"] == "moderator"
    assert (await sheda.api.get(Q, token=user.token)).status == 200  # at once: the role is read with the token
    demoted = await sheda.api.patch(f"/api/v1/admin/users/{user.id}", {"role": "user"}, token=admin.token)
    assert demoted.status == 200
    assert (await sheda.api.get(Q, token=user.token)).status == 403
