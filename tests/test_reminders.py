"""Reaching people whose app is closed (issue 14 §3-4): rescheduling viewings, viewing reminders with
an .ics, rental contract reminders, chat email digests and the one-click unsubscribe link. Time moves
on the clock and the job runner is driven directly (no sleeping); mail is read from the server's mailer."""
from __future__ import annotations

import asyncio
from datetime import timedelta
from urllib.parse import urlsplit

import icalendar
import pytest

from sheda_rt.clock import format_ts
from tests.listing_helpers import book, confirmed_viewing, create_property, iso, next_slot, open_window, set_bank, snapshot
from tests.test_push import push, send, subscribed  # noqa: F401  (push is a fixture)

AP = "/api/v1/appointments"
SETTINGS = "/api/v1/users/me/notification-settings"


@pytest.fixture
def settings_overrides():
    # The tests run due jobs themselves after moving the clock: the background poll stays out of the way.
    return {"push_allow_local_endpoints": True, "job_poll_seconds": 3600}


def mails(sheda, user, subject_part: str = "") -> list:
    return [m for m in sheda.ctx.mailer.sent if m.to.lower() == user.email.lower() and subject_part in m.subject]


def ics_of(mail) -> icalendar.Event:
    [part] = [p for p in mail.message.iter_attachments() if p.get_content_type() == "text/calendar"]
    cal = icalendar.Calendar.from_ical(part.get_content() if isinstance(part.get_content(), str) else part.get_content().decode())
    [event] = cal.walk("VEVENT")
    return event


async def reminder_jobs(sheda, appointment_id: int) -> list[dict]:
    return await sheda.ctx.db["jobs"].find({"kind": "reminder.appointment", "payload.appointment_id": appointment_id}).to_list()


async def fresh(sheda, *users) -> None:
    """Log in again after the clock moved past the access tokens' life."""
    for user in users:
        r = await sheda.api.post("/api/v1/auth/login", {"username": user.username, "password": user.password})
        assert r.status == 200, r
        user.access_token = r.json["access_token"]


async def run(sheda) -> None:
    await sheda.ctx.job_runner.run_due()


async def viewing_setup(sheda, days_ahead: int = 3):
    agent = await sheda.signup("agent", full_name="Ada Agent")
    client = await sheda.signup("client", full_name="Chidi Client")
    prop = await create_property(sheda, agent, location="12 Admiralty Way, Lekki")
    when = next_slot(sheda.ctx.clock.now(), days_ahead=days_ahead, hour=10)
    await open_window(sheda, agent, when)
    await open_window(sheda, agent, when + timedelta(days=1))
    return agent, client, prop, when


# ---- rescheduling --------------------------------------------------------------------------------
async def test_reschedule_rules_and_the_other_party_confirms(sheda):
    agent, client, prop, when = await viewing_setup(sheda)
    r = await book(sheda, client, prop["id"], when)
    assert r.status == 201 and r.json["proposed_by"] == client.id, r
    aid = r.json["id"]
    assert (await sheda.api.patch(f"{AP}/{aid}/confirm", token=agent.token)).status == 200
    stranger = await sheda.signup("client")
    before = await snapshot(sheda, "appointments", aid)
    later = when + timedelta(hours=2)
    for token, body, status, code in (
        (stranger.token, {"scheduled_at": iso(later)}, 404, "appointment_not_found"),
        (client.token, {"scheduled_at": iso(when + timedelta(minutes=10))}, 422, "validation_error"),  # off the slot grid
        (client.token, {"scheduled_at": iso(sheda.ctx.clock.now() - timedelta(days=1))}, 422, "validation_error"),
        (client.token, {"scheduled_at": iso(when)}, 422, "validation_error"),  # the current time
        (client.token, {"scheduled_at": 12}, 422, "validation_error"),
        (client.token, {"scheduled_at": "9999-12-31T23:30:00-05:00"}, 422, "validation_error"),  # out of range in UTC
        (client.token, {"scheduled_at": iso(when.replace(hour=20))}, 409, "outside_availability"),
        (client.token, {"scheduled_at": iso(when + timedelta(days=2))}, 409, "outside_availability"),
        (None, {"scheduled_at": iso(later)}, 401, None),
    ):
        r = await sheda.api.patch(f"{AP}/{aid}/reschedule", body, token=token)
        assert r.status == status and (code is None or r.json["code"] == code), (body, r)
    # While either party blocks the other, no new time can be proposed (as no booking can be made).
    assert (await sheda.api.post(f"/api/v1/users/{agent.id}/block", token=client.token)).status == 201
    r = await sheda.api.patch(f"{AP}/{aid}/reschedule", {"scheduled_at": iso(later)}, token=agent.token)
    assert r.status == 409 and r.json["code"] == "blocked", r
    assert (await sheda.api.delete(f"/api/v1/users/{agent.id}/block", token=client.token)).status == 204
    assert await snapshot(sheda, "appointments", aid) == before  # nothing changed on refusal

    # The agent proposes a new time: pending again, for the client to confirm.
    r = await sheda.api.patch(f"{AP}/{aid}/reschedule", {"scheduled_at": iso(later)}, token=agent.token)
    assert r.status == 200, r
    assert r.json["status"] == "pending" and r.json["scheduled_at"] == format_ts(later) and r.json["proposed_by"] == agent.id
    assert r.json["rescheduled_at"] is not None
    note = await sheda.ctx.db["notifications"].find_one({"user_id": client.id, "kind": "appointment.rescheduled"})
    assert note is not None and note["data"]["appointment_id"] == aid
    stream = await sheda.api.get("/api/v1/events", params={"after_seq": 0}, token=client.token)
    assert stream.status == 200, stream
    assert any(e.get("type") == "appointment.rescheduled" and e["appointment"]["id"] == aid for e in stream.json["items"]), stream.json
    # The proposer cannot confirm their own proposal; the other party can.
    r = await sheda.api.patch(f"{AP}/{aid}/confirm", token=agent.token)
    assert r.status == 403 and r.json["code"] == "awaiting_other_party", r
    r = await sheda.api.patch(f"{AP}/{aid}/confirm", token=client.token)
    assert r.status == 200 and r.json["status"] == "confirmed" and r.json["scheduled_at"] == format_ts(later)
    # The old slot is free again: another client books it.
    other = await sheda.signup("client")
    assert (await book(sheda, other, prop["id"], when)).status == 201
    # A cancelled appointment cannot be rescheduled.
    assert (await sheda.api.delete(f"{AP}/{aid}", token=client.token)).status == 200
    r = await sheda.api.patch(f"{AP}/{aid}/reschedule", {"scheduled_at": iso(later + timedelta(hours=1))}, token=client.token)
    assert r.status == 409 and r.json["code"] == "wrong_state", r


async def test_a_client_rejecting_the_agents_new_time_is_told_to_the_agent_as_the_clients_refusal(sheda):
    agent, client, prop, when = await viewing_setup(sheda)
    aid = (await book(sheda, client, prop["id"], when)).json["id"]
    later = when + timedelta(hours=1)
    assert (await sheda.api.patch(f"{AP}/{aid}/reschedule", {"scheduled_at": iso(later)}, token=agent.token)).status == 200
    r = await sheda.api.patch(f"{AP}/{aid}/reject", token=client.token)
    assert r.status == 200 and r.json["status"] == "rejected", r
    note = await sheda.ctx.db["notifications"].find_one({"user_id": agent.id, "kind": "appointment.rejected"})
    assert note is not None and "client declined" in note["body"] and "agent declined" not in note["body"], note


async def test_reschedules_and_bookings_race_for_one_slot_and_exactly_one_wins(sheda):
    agent, client, prop, when = await viewing_setup(sheda)
    for round_ in range(3):
        clients = [await sheda.signup("client") for _ in range(3)]
        ids = []
        for i, c in enumerate(clients):
            r = await book(sheda, c, prop["id"], when.replace(hour=8) + timedelta(minutes=30 * (3 * round_ + i)))
            assert r.status == 201, r
            ids.append(r.json["id"])
        if round_ == 1:  # confirmed viewings race too
            for aid in ids:
                assert (await sheda.api.patch(f"{AP}/{aid}/confirm", token=agent.token)).status == 200
        late = await sheda.signup("client")
        slot = when.replace(hour=15 + round_)
        results = await asyncio.gather(
            *(sheda.api.patch(f"{AP}/{aid}/reschedule", {"scheduled_at": iso(slot)}, token=c.token) for aid, c in zip(ids, clients)),
            book(sheda, late, prop["id"], slot))
        codes = sorted(r.status for r in results)
        assert codes.count(409) == 3 and len([c for c in codes if c in (200, 201)]) == 1, [(r.status, r.json) for r in results]
        assert all(r.json["code"] == "slot_taken" for r in results if r.status == 409)
        held = await sheda.ctx.db["appointments"].count_documents({"agent_id": agent.id, "scheduled_at": slot,
                                                                  "status": {"$in": ["pending", "confirmed"]}})
        assert held == 1
        # The losers are unchanged: still at their own times.
        for r, aid in zip(results[:3], ids):
            if r.status == 409:
                assert (await sheda.ctx.db["appointments"].find_one({"_id": aid}))["scheduled_at"] != slot


# ---- viewing reminders --------------------------------------------------------------------------
async def test_viewing_reminders_fire_once_24h_and_1h_before_with_a_calendar_file(sheda, push):
    agent, client, prop, when = await viewing_setup(sheda)
    sub, device_id = await subscribed(sheda, push, client)
    appt = await confirmed_viewing(sheda, agent, client, prop, when)
    jobs = await reminder_jobs(sheda, appt["id"])
    assert sorted((j["payload"]["which"], j["payload"]["user_id"], j["run_at"]) for j in jobs) == sorted(
        (w, u, when - d) for w, d in (("24h", timedelta(hours=24)), ("1h", timedelta(hours=1))) for u in (client.id, agent.id))
    await run(sheda)
    assert mails(sheda, client, "Reminder") == [] and mails(sheda, agent, "Reminder") == []

    sheda.ctx.clock.offset += (when - timedelta(hours=24)) - sheda.ctx.clock.now() + timedelta(seconds=1)
    await run(sheda)
    await run(sheda)  # the push job the reminder made
    for user in (client, agent):
        [mail] = mails(sheda, user, "Reminder")
        assert "tomorrow" in mail.subject and prop["title"] in mail.subject
        event = ics_of(mail)
        assert event.decoded("dtstart") == when and event.decoded("dtend") == when + timedelta(minutes=30)
        assert str(event["location"]) == "12 Admiralty Way, Lekki" and str(event["uid"]).startswith(f"appointment-{appt['id']}@")
        assert mail.headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert mail.headers["List-Unsubscribe"].startswith("<") and "/api/v1/email/unsubscribe?token=" in mail.headers["List-Unsubscribe"]
        assert mail.message["List-Unsubscribe"] == mail.headers["List-Unsubscribe"]
    # the confirmation itself reached the client's phone as a pushed notification, before the reminders
    [told] = [p for p in push.accepted(sub.endpoint_id) if p.payload["type"] == "appointment.confirmed"]
    assert told.payload["path"] == f"/appointments/{appt['id']}"
    reminders = lambda: [p for p in push.accepted(sub.endpoint_id) if p.payload["type"] == "appointment.reminder"]  # noqa: E731
    [got] = reminders()
    assert got.payload["type"] == "appointment.reminder" and got.payload["appointment_id"] == appt["id"]
    assert got.payload["title"] == "Viewing tomorrow"

    await run(sheda)  # once only
    assert len(mails(sheda, client, "Reminder")) == 1 and len(reminders()) == 1
    sheda.ctx.clock.advance(hours=23)
    await run(sheda)
    await run(sheda)
    for user in (client, agent):
        assert [m.subject for m in mails(sheda, user, "Reminder")][1:] == [f"Reminder: viewing of “{prop['title']}” in one hour"]
    assert [p.payload["title"] for p in reminders()] == ["Viewing tomorrow", "Viewing in one hour"]
    sheda.ctx.clock.advance(hours=2)
    await run(sheda)
    assert len(mails(sheda, client, "Reminder")) == 2


async def test_a_line_break_in_the_listings_title_does_not_stop_the_reminders(sheda):
    # The subject quotes the agent's title; a line break in it (a pasted title) made the Subject header
    # unwritable, so the viewing's reminders, the client's included, never went out.
    agent = await sheda.signup("agent")
    client = await sheda.signup("client")
    prop = await create_property(sheda, agent, title="Sunny flat\r\nBcc: someone@example.com")
    when = next_slot(sheda.ctx.clock.now(), days_ahead=3, hour=10)
    await open_window(sheda, agent, when)
    await confirmed_viewing(sheda, agent, client, prop, when)
    sheda.ctx.clock.offset += (when - timedelta(hours=24)) - sheda.ctx.clock.now() + timedelta(seconds=1)
    await run(sheda)
    for user in (client, agent):
        [mail] = mails(sheda, user, "Reminder")
        assert mail.message["Subject"] == "Reminder: viewing of “Sunny flat Bcc: someone@example.com” tomorrow", mail.message["Subject"]
        assert mail.message["Bcc"] is None and mail.message.get_all("To") == [user.email]
        assert "Sunny flat" in str(ics_of(mail)["summary"])


async def test_cancelling_cancels_and_rescheduling_moves_the_reminders(sheda):
    agent, client, prop, when = await viewing_setup(sheda)
    cancelled = await confirmed_viewing(sheda, agent, client, prop, when)
    other_prop = await create_property(sheda, agent, location="12 Admiralty Way, Lekki")  # one open viewing per property
    moved = await confirmed_viewing(sheda, agent, client, other_prop, when + timedelta(hours=1))
    assert (await sheda.api.delete(f"{AP}/{cancelled['id']}", token=agent.token)).status == 200
    assert {j["status"] for j in await reminder_jobs(sheda, cancelled["id"])} == {"cancelled"}

    new_time = when + timedelta(days=1, hours=2)
    assert (await sheda.api.patch(f"{AP}/{moved['id']}/reschedule", {"scheduled_at": iso(new_time)}, token=client.token)).status == 200
    assert {j["status"] for j in await reminder_jobs(sheda, moved["id"])} == {"cancelled"}  # pending again: no reminders
    assert (await sheda.api.patch(f"{AP}/{moved['id']}/confirm", token=agent.token)).status == 200
    live = [j for j in await reminder_jobs(sheda, moved["id"]) if j["status"] == "pending"]
    assert sorted(j["run_at"] for j in live) == sorted([new_time - timedelta(hours=24)] * 2 + [new_time - timedelta(hours=1)] * 2)

    # Past the old times: nothing for the cancelled viewing, nothing at the moved one's old time.
    sheda.ctx.clock.offset += (when - timedelta(minutes=30)) - sheda.ctx.clock.now()
    await run(sheda)
    assert mails(sheda, client, "Reminder") == [] and mails(sheda, agent, "Reminder") == []
    sheda.ctx.clock.offset += (new_time - timedelta(hours=24)) - sheda.ctx.clock.now() + timedelta(seconds=1)
    await run(sheda)
    [mail] = mails(sheda, client, "Reminder")
    assert ics_of(mail).decoded("dtstart") == new_time and int(ics_of(mail)["sequence"]) == 1


async def test_reminders_respect_email_settings_and_quiet_hours(sheda):
    agent, client, prop, when = await viewing_setup(sheda)
    # The client wants no viewing emails; the agent is asleep (quiet hours around the 24 h reminder).
    r = await sheda.api.put(SETTINGS, {"email": {"appointments": False}}, token=client.token)
    assert r.status == 200, r
    start = (when - timedelta(hours=25)).strftime("%H:%M")
    end = (when - timedelta(hours=22)).strftime("%H:%M")
    r = await sheda.api.put(SETTINGS, {"quiet_hours": {"start": start, "end": end, "time_zone": "UTC"}}, token=agent.token)
    assert r.status == 200, r
    await confirmed_viewing(sheda, agent, client, prop, when)
    sheda.ctx.clock.offset += (when - timedelta(hours=24)) - sheda.ctx.clock.now() + timedelta(seconds=1)
    await run(sheda)
    assert mails(sheda, client, "Reminder") == [] and mails(sheda, agent, "Reminder") == []  # off / held
    sheda.ctx.clock.advance(hours=2, minutes=1)  # quiet hours over
    await run(sheda)
    [mail] = mails(sheda, agent, "Reminder")
    assert "tomorrow" in mail.subject
    assert mails(sheda, client, "Reminder") == []


# ---- contract reminders -------------------------------------------------------------------------
async def test_rental_contract_reminders_30_and_7_days_before_the_end(sheda):
    agent, client, prop, when = await viewing_setup(sheda, days_ahead=1)
    await set_bank(sheda, agent)
    appt = await confirmed_viewing(sheda, agent, client, prop, when)
    contracts = []
    for term in (3, 3):
        r = await sheda.api.post(f"/api/v1/contracts/{prop['id']}", {"appointment_id": appt["id"], "term_months": term}, token=client.token)
        if r.status != 201:
            break
        contracts.append(r.json)
    cid = contracts[0]["id"]
    assert (await sheda.api.patch(f"/api/v1/contracts/{cid}/payment-sent", token=client.token)).status == 200
    r = await sheda.api.patch(f"/api/v1/contracts/{cid}/confirm-payment", token=agent.token)
    assert r.status == 200, r
    doc = await sheda.ctx.db["contracts"].find_one({"_id": cid})
    end = doc["end_date"]
    jobs = await sheda.ctx.db["jobs"].find({"kind": "reminder.contract", "payload.contract_id": cid}).to_list()
    assert sorted((j["payload"]["which"], j["payload"]["user_id"], j["run_at"]) for j in jobs) == sorted(
        (w, u, end - d) for w, d in (("30d", timedelta(days=30)), ("7d", timedelta(days=7))) for u in (client.id, agent.id))

    sheda.ctx.clock.offset += (end - timedelta(days=30)) - sheda.ctx.clock.now() + timedelta(seconds=1)
    await run(sheda)
    await run(sheda)
    for user in (client, agent):
        [mail] = mails(sheda, user, "ends in")
        assert mail.subject == f"Your rental of “{prop['title']}” ends in 30 days" and "List-Unsubscribe" in mail.headers
    # Ended early by an admin: the 7-day reminders are cancelled and never sent.
    admin = await sheda.admin()
    assert (await sheda.api.patch(f"/api/v1/contracts/{cid}/expire", token=admin.token)).status == 200
    jobs = await sheda.ctx.db["jobs"].find({"kind": "reminder.contract", "payload.contract_id": cid}).to_list()
    assert sorted(j["status"] for j in jobs) == ["cancelled", "cancelled", "done", "done"]
    sheda.ctx.clock.advance(days=24)
    await run(sheda)
    assert len(mails(sheda, client, "ends in")) == 1


# ---- chat digests and unsubscribe ---------------------------------------------------------------
async def test_a_digest_leaves_out_messages_deleted_before_it(sheda):
    # Deleted for everyone by the sender, or by the reader for themselves on another device: not in
    # the count nor the lines, and a conversation with nothing else unread is not mailed about.
    ada = await sheda.signup(full_name="Ada Obi")
    bob = await sheda.signup(full_name="Bob Eze")
    eve = await sheda.signup(full_name="Eve Ife")
    [oops] = await send(sheda, ada, bob, "wrong chat, my PIN is 1234")
    assert (await sheda.api.delete(f"/api/v1/chat/messages/{oops}?for=everyone", token=ada.token)).status == 200
    hello, spam = await send(sheda, eve, bob, "Hello from Eve", "buy followers")
    assert (await sheda.api.delete(f"/api/v1/chat/messages/{spam}?for=me", token=bob.token)).status == 200
    await asyncio.sleep(0.05)
    sheda.ctx.clock.advance(minutes=16)
    await run(sheda)
    [digest] = mails(sheda, bob, "unread")
    assert digest.subject == "1 unread message from Eve Ife", digest.subject
    assert "Ada" not in digest.body and "buy followers" not in digest.body and "> Hello from Eve" in digest.body


async def test_a_digest_leaves_out_whom_the_reader_blocked_meanwhile(sheda):
    # Bob blocks Ada after her messages came: no email about her (no push either); Eve's are still mailed.
    ada = await sheda.signup(full_name="Ada Obi")
    bob = await sheda.signup(full_name="Bob Eze")
    eve = await sheda.signup(full_name="Eve Ife")
    await send(sheda, ada, bob, "you will answer me")
    await send(sheda, eve, bob, "Hello from Eve")
    assert (await sheda.api.post(f"/api/v1/users/{ada.id}/block", {}, token=bob.token)).status == 201
    for _ in range(200):  # the digest is armed in the background after the messages are stored
        if await sheda.ctx.db["jobs"].find_one({"_id": f"digest:{bob.id}"}):
            break
        await asyncio.sleep(0.02)
    sheda.ctx.clock.advance(minutes=16)
    await run(sheda)
    [digest] = mails(sheda, bob, "unread")
    assert digest.subject == "1 unread message from Eve Ife", digest.subject
    assert "Ada" not in digest.body and "answer me" not in digest.body


async def test_offline_user_gets_one_digest_per_window_and_unsubscribes_with_one_click(sheda):
    ada = await sheda.signup(full_name="Ada Obi")
    bob = await sheda.signup(full_name="Bob Eze")
    eve = await sheda.signup(full_name="Eve Ife")
    await send(sheda, ada, bob, "Is the flat still available?", "Second line\nwith a second row", "Third")
    await send(sheda, eve, bob, "Hello from Eve")
    await asyncio.sleep(0.05)  # the digest is armed in the background after the messages are stored
    await run(sheda)
    assert mails(sheda, bob, "unread") == []  # not offline long enough yet
    sheda.ctx.clock.advance(minutes=14)
    await run(sheda)
    assert mails(sheda, bob, "unread") == []
    sheda.ctx.clock.advance(minutes=2)
    await run(sheda)
    [digest] = mails(sheda, bob, "unread")
    assert digest.subject == "4 unread messages from 2 people"
    assert "Ada Obi: 3 new messages" in digest.body and "Eve Ife: 1 new message" in digest.body
    assert "> Is the flat still available?" in digest.body and "> Second line" in digest.body and "with a second row" not in digest.body
    assert "> Hello from Eve" in digest.body
    await run(sheda)
    assert len(mails(sheda, bob, "unread")) == 1  # once

    # More from Ada within the window: no second digest until the window has passed.
    await send(sheda, ada, bob, "Are you there?")
    await asyncio.sleep(0.05)
    sheda.ctx.clock.advance(minutes=20)
    await run(sheda)
    assert len(mails(sheda, bob, "unread")) == 1
    # Someone new writes meanwhile: their conversation does not wait for Ada's window.
    zed = await sheda.signup(full_name="Zed Uche")
    await send(sheda, zed, bob, "Hi from Zed")
    await asyncio.sleep(0.05)
    sheda.ctx.clock.advance(minutes=16)
    await run(sheda)
    zeds = mails(sheda, bob, "unread")[1:]
    assert [m.subject for m in zeds] == ["1 unread message from Zed Uche"] and "Ada" not in zeds[0].body
    sheda.ctx.clock.advance(hours=3)
    await run(sheda)
    second = mails(sheda, bob, "unread")[2]
    assert second.subject == "4 unread messages from Ada Obi" and "Eve" not in second.body and "Zed" not in second.body

    # Previews off: who and how many, no text.
    await fresh(sheda, ada, bob, eve)
    r = await sheda.api.put(SETTINGS, {"previews": False}, token=bob.token)
    assert r.status == 200
    await send(sheda, eve, bob, "Secret text")
    await asyncio.sleep(0.05)
    sheda.ctx.clock.advance(hours=4)
    await run(sheda)
    third = mails(sheda, bob, "unread")[3]
    assert "Eve Ife: 2 new messages" in third.body and "Secret text" not in third.body and "Hello from Eve" not in third.body

    # The unsubscribe link works without a login; a tampered one is refused and changes nothing.
    await fresh(sheda, ada, bob)
    link = third.headers["List-Unsubscribe"].strip("<>")
    assert link in third.body
    path = urlsplit(link)
    token = path.query.split("token=", 1)[1]
    for bad in (token[:-2] + ("AA" if token[-2:] != "AA" else "BB"), token.replace(f"{bob.id}.", f"{ada.id}.", 1),
                token.replace(".chat.", ".contracts.", 1), "garbage", ""):
        r = await sheda.api.get(path.path, params={"token": bad})
        assert r.status == 422, (bad, r)
    assert (await sheda.api.get(path.path)).status == 422  # no token at all
    assert (await sheda.api.get(SETTINGS, token=bob.token)).json["email"]["chat"] is True
    # Following the link (what mail scanners do to every link) only shows a page asking to confirm
    # (tests/test_browser.py clicks its button); the mail names the RFC 8058 one-click POST.
    page = await sheda.api.get(f"{path.path}?{path.query}")
    assert page.status == 200 and page.headers["Content-Type"].startswith("text/html"), page
    assert '<form method="post"' in page.body.decode() and b'name="List-Unsubscribe" value="One-Click"' in page.body, page
    assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"] and page.headers["Referrer-Policy"] == "no-referrer"
    assert (await sheda.api.get(SETTINGS, token=bob.token)).json["email"]["chat"] is True
    assert third.message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    r = await sheda.api.request("POST", f"{path.path}?{path.query}", body="List-Unsubscribe=One-Click",
                                headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status == 200 and r.json == {"kind": "chat", "email_enabled": False}, r
    settings = (await sheda.api.get(SETTINGS, token=bob.token)).json
    assert settings["email"]["chat"] is False and settings["email"]["appointments"] is True and settings["previews"] is False
    assert (await sheda.api.get(f"{path.path}?{path.query}")).status == 200  # the link again: still off, fine
    r = await sheda.api.request("POST", f"{path.path}?{path.query}", body="", headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status == 200 and r.json == {"kind": "chat", "email_enabled": False}, r  # twice (an empty body) is fine
    for bad in (token[:-2] + ("AA" if token[-2:] != "AA" else "BB"), ""):
        r = await sheda.api.request("POST", f"{path.path}?token={bad}", body="List-Unsubscribe=One-Click",
                                    headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert r.status == 422 and r.json["code"] == "validation_error", r

    # Chat email off: no more digests.
    await send(sheda, ada, bob, "Hello again")
    await asyncio.sleep(0.05)
    sheda.ctx.clock.advance(hours=4)
    await run(sheda)
    assert len(mails(sheda, bob, "unread")) == 4


async def test_reading_before_the_threshold_means_no_digest(sheda):
    ada = await sheda.signup(full_name="Ada Obi")
    bob = await sheda.signup(full_name="Bob Eze")
    [mid] = await send(sheda, ada, bob, "Ping")
    await asyncio.sleep(0.05)
    ws = await sheda.ws(bob.token)
    await ws.send({"type": "read", "other_user_id": ada.id, "up_to": mid})
    await asyncio.sleep(0.2)
    ws.close()
    await asyncio.sleep(0.2)
    sheda.ctx.clock.advance(minutes=30)
    await run(sheda)
    assert mails(sheda, bob, "unread") == []


# ---- viewings nobody can take part in any more are closed ------------------------------------------
async def test_a_rented_property_closes_the_other_clients_viewings_and_their_reminders(sheda):
    # Confirmed viewings of a rented (or sold) property stayed confirmed and their reminders still went out. Once a
    # contract takes it, every other client's open viewing still ahead is cancelled (cancelled_by null,
    # cancel_reason property_unavailable), the client told, the slot freed; the buyer keeps theirs.
    agent, client, prop, when = await viewing_setup(sheda)
    await set_bank(sheda, agent)
    buyer = await sheda.signup("client")
    waiting = await sheda.signup("client")
    other_prop = await create_property(sheda, agent)
    confirmed = await confirmed_viewing(sheda, agent, client, prop, when)
    pending = (await book(sheda, waiting, prop["id"], when + timedelta(minutes=30))).json
    elsewhere = await confirmed_viewing(sheda, agent, waiting, other_prop, when + timedelta(hours=2))
    viewing = await confirmed_viewing(sheda, agent, buyer, prop, when + timedelta(hours=1))
    assert {j["status"] for j in await reminder_jobs(sheda, confirmed["id"])} == {"pending"}
    client_ws = await sheda.ws(client.token)
    contract = (await sheda.api.post(f"/api/v1/contracts/{prop['id']}", {"appointment_id": viewing["id"], "term_months": 12},
                                   token=buyer.token)).json
    assert (await sheda.api.patch(f"/api/v1/contracts/{contract['id']}/payment-sent", token=buyer.token)).status == 200
    r = await sheda.api.patch(f"/api/v1/contracts/{contract['id']}/confirm-payment", token=agent.token)
    assert r.status == 200 and r.json["status"] == "active", r
    await sheda.ctx.viewings_closing.drain()

    for appt, who in ((confirmed, client), (pending, waiting)):
        got = (await sheda.api.get(f"{AP}/{appt['id']}", token=who.token)).json
        assert (got["status"], got["cancelled_by"], got["cancel_reason"]) == ("cancelled", None, "property_unavailable"), got
        assert "slot_key" not in await snapshot(sheda, "appointments", appt["id"])
        [note] = [n for n in (await sheda.api.get("/api/v1/notifications", token=who.token)).json["items"]
                  if n["kind"] == "appointment.cancelled"]
        assert "no longer available" in note["body"] and note["data"]["appointment_id"] == appt["id"]
    event = await client_ws.wait_type("appointment.cancelled")
    assert event["appointment"]["id"] == confirmed["id"] and event["appointment"]["cancel_reason"] == "property_unavailable"
    assert {j["status"] for j in await reminder_jobs(sheda, confirmed["id"])} == {"cancelled"}
    assert (await sheda.api.get(f"{AP}/{viewing['id']}", token=buyer.token)).json["status"] == "confirmed"
    kept = (await sheda.api.get(f"{AP}/{elsewhere['id']}", token=waiting.token)).json
    assert kept["status"] == "confirmed" and kept["cancel_reason"] is None  # another listing's viewing stays
    [job] = await sheda.ctx.db["jobs"].find({"kind": "appointments.close", "payload.property_id": prop["id"]}).to_list()
    assert job["status"] == "done" and job["result"]["closed"] == 2, job

    # Past the reminders' times: none for the closed viewing, even if its job had been left behind.
    await sheda.ctx.db["jobs"].update_many({"kind": "reminder.appointment", "payload.appointment_id": confirmed["id"]},
                                           {"$set": {"status": "pending"}})
    sheda.ctx.clock.offset += (when - timedelta(minutes=30)) - sheda.ctx.clock.now()
    await run(sheda)
    assert mails(sheda, client, "Reminder") == []
    # the job run again (another process, a restart) closes and tells nothing twice
    assert await sheda.ctx.viewings_closing.run(job) == {"outcome": "rented", "closed": 0}
    await fresh(sheda, client)
    notes = (await sheda.api.get("/api/v1/notifications", token=client.token)).json["items"]
    assert len([n for n in notes if n["kind"] == "appointment.cancelled"]) == 1


async def test_a_deactivated_account_closes_its_viewings_through_a_durable_job(sheda):
    # The agent closes their account: every open viewing with them still ahead is cancelled
    # (cancel_reason agent_inactive) and the client told; a deactivated client's viewings likewise
    # (client_inactive, the agent told). The job is queued before the account's write, so a process
    # dying in between leaves it to any process; one that died after closing but before telling the
    # other party tells them on its next run.
    agent, client, prop, when = await viewing_setup(sheda)
    other_agent = await sheda.signup("agent")
    other_prop = await create_property(sheda, other_agent)
    await open_window(sheda, other_agent, when)
    mine = await confirmed_viewing(sheda, agent, client, prop, when)
    theirs = await confirmed_viewing(sheda, other_agent, client, other_prop, when + timedelta(minutes=30))
    assert (await sheda.api.delete("/api/v1/users/me", token=agent.token)).status == 204
    await sheda.ctx.viewings_closing.drain()
    got = (await sheda.api.get(f"{AP}/{mine['id']}", token=client.token)).json
    assert (got["status"], got["cancelled_by"], got["cancel_reason"]) == ("cancelled", None, "agent_inactive"), got
    assert {j["status"] for j in await reminder_jobs(sheda, mine["id"])} == {"cancelled"}
    [note] = [n for n in (await sheda.api.get("/api/v1/notifications", token=client.token)).json["items"]
              if n["kind"] == "appointment.cancelled"]
    assert "agent's account" in note["body"]
    assert (await sheda.api.get(f"{AP}/{theirs['id']}", token=client.token)).json["status"] == "confirmed"

    # The client is banned by an admin; the closing run dies after closing, before telling the agent.
    admin = await sheda.admin()
    closing = sheda.ctx.viewings_closing
    real = closing.appointments._announce_closed

    async def dies(doc):
        raise RuntimeError("process killed")
    closing.appointments._announce_closed = dies
    try:
        assert (await sheda.api.patch(f"/api/v1/admin/users/{client.id}", {"is_active": False}, token=admin.token)).status == 200
        await closing.drain()
    finally:
        closing.appointments._announce_closed = real
    stored = await snapshot(sheda, "appointments", theirs["id"])
    assert stored["status"] == "cancelled" and stored["cancel_reason"] == "client_inactive" and stored["close_notice_pending"] is True
    assert not [n for n in (await sheda.api.get("/api/v1/notifications", token=other_agent.token)).json["items"]
                if n["kind"] == "appointment.cancelled"]
    [job] = await sheda.ctx.db["jobs"].find({"kind": "appointments.close", "payload.user_id": client.id}).to_list()
    assert job["status"] == "pending", job  # failed once: retried later, by any process
    sheda.ctx.clock.offset += job["run_at"] - sheda.ctx.clock.now() + timedelta(seconds=1)
    await run(sheda)
    await fresh(sheda, other_agent)
    [note] = [n for n in (await sheda.api.get("/api/v1/notifications", token=other_agent.token)).json["items"]
              if n["kind"] == "appointment.cancelled"]
    assert "client's account" in note["body"] and note["data"]["appointment_id"] == theirs["id"]
    assert "close_notice_pending" not in await snapshot(sheda, "appointments", theirs["id"])


async def test_an_agent_switching_to_client_closes_the_viewings_they_are_the_agent_of(sheda):
    # switch-account away from agent takes the listings off the market (listings/agent_status.py), but the viewings
    # booked with them stayed confirmed with nobody left to answer them as the agent, reminders included. They close
    # as a deactivated agent's do (agent_inactive, the client told); a viewing the agent booked as a client stays.
    agent, client, prop, when = await viewing_setup(sheda)
    other_agent = await sheda.signup("agent")
    other_prop = await create_property(sheda, other_agent)
    await open_window(sheda, other_agent, when)
    theirs = await confirmed_viewing(sheda, agent, client, prop, when)
    switched = await sheda.api.post("/api/v1/auth/switch-account", {"switch_to": "client"}, token=agent.token)
    assert switched.status == 200, switched
    agent.access_token = switched.json["access_token"]
    await sheda.ctx.viewings_closing.drain()
    got = (await sheda.api.get(f"{AP}/{theirs['id']}", token=client.token)).json
    assert (got["status"], got["cancelled_by"], got["cancel_reason"]) == ("cancelled", None, "agent_inactive"), got
    assert {j["status"] for j in await reminder_jobs(sheda, theirs["id"])} == {"cancelled"}
    [note] = [n for n in (await sheda.api.get("/api/v1/notifications", token=client.token)).json["items"]
              if n["kind"] == "appointment.cancelled"]
    assert note["data"]["appointment_id"] == theirs["id"]
    # Now a client, they book a viewing of another agent's listing. Back to agent and to client again: only the
    # viewings they are the agent of close, so the one they booked as a client stays.
    mine = await confirmed_viewing(sheda, other_agent, agent, other_prop, when + timedelta(minutes=30))
    for to in ("agent", "client"):
        r = await sheda.api.post("/api/v1/auth/switch-account", {"switch_to": to}, token=agent.token)
        assert r.status == 200, r
        agent.access_token = r.json["access_token"]
        await sheda.ctx.viewings_closing.drain()
    jobs = await sheda.ctx.db["jobs"].find({"kind": "appointments.close", "payload.user_id": agent.id}).to_list()
    assert len(jobs) == 3 and {j["status"] for j in jobs} == {"done"}, jobs
    got = (await sheda.api.get(f"{AP}/{mine['id']}", token=other_agent.token)).json
    assert got["status"] == "confirmed" and got["cancel_reason"] is None, got
