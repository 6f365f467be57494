"""Viewing and contract reminders: jobs of the durable queue (sheda_rt/jobs/), one per party and
reminder, created when the thing they remind of becomes certain and cancelled when it stops being so.

- Viewings: 24 h and 1 h before a confirmed appointment, to the client and the agent (kind
  `reminder.appointment`). Confirming creates them (a reminder whose time has passed is not
  made: a viewing confirmed 3 h ahead gets only the 1 h one); cancelling or rejecting cancels them;
  rescheduling cancels them (the appointment is pending again) and confirming the new time creates
  new ones. Keys are `reminder:appointment:<id>:<24h|1h>:<user>:<start>`: the start is in the key,
  so a reminder of the old time that is running while the viewing moves can never stand in for the
  new one, and moving back to a time re-arms its cancelled job.
- Rental contracts: 30 and 7 days before an active rental's end_date, to client and agent (kind
  `reminder.contract`), created on activation, cancelled when it ends early.

A reminder is a push (through the push dispatcher's own `push.<platform>` jobs, so the push
settings, quiet hours and exactly-once per device apply) and an email (the viewing's with an
`.ics` attachment), each only when that kind is on in the user's notification settings. Inside the
user's quiet hours the whole reminder waits for them to end (not an attempt), unless they end after
the viewing started or the contract ended: then it is dropped. A job re-checks what it reminds of
when it runs (still confirmed, same time; still active, same end), so a cancel that lost a race
with the runner sends nothing. A process killed between the email and the job's end sends that
email again when the job is retried; the pushes are keyed and never repeat.
"""
from __future__ import annotations

import hashlib
import json
import logging
from datetime import datetime, timedelta
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from sheda_rt.clock import format_ts
from sheda_rt.jobs.runner import Defer
from sheda_rt.push.dispatch import quiet_until
from sheda_rt.push.provider import Notification
from sheda_rt.reminders.calendar import viewing_ics

if TYPE_CHECKING:
    from sheda_rt.accounts.users_store import UserStore
    from sheda_rt.appointments.store import AppointmentStore
    from sheda_rt.clock import Clock
    from sheda_rt.contracts.store import ContractStore
    from sheda_rt.jobs.runner import JobRunner
    from sheda_rt.listings.store import PropertyStore
    from sheda_rt.push.dispatch import Dispatcher
    from sheda_rt.push.service import PushService
    from sheda_rt.reminders.email import EmailSender

log = logging.getLogger("sheda.reminders")

APPOINTMENT_KIND = "reminder.appointment"
CONTRACT_KIND = "reminder.contract"
APPOINTMENT_BEFORE = {"24h": timedelta(hours=24), "1h": timedelta(hours=1)}
CONTRACT_BEFORE = {"30d": timedelta(days=30), "7d": timedelta(days=7)}


def _stamp(when: datetime) -> str:
    return when.strftime("%Y%m%dT%H%M%SZ")


def _human(when: datetime) -> str:
    return when.strftime("%A %d %B %Y, %H:%M UTC")


def appointment_key(appointment_id: int, which: str, user_id: int, scheduled_at: datetime) -> str:
    return f"reminder:appointment:{appointment_id}:{which}:{user_id}:{_stamp(scheduled_at)}"


def contract_key(contract_id: int, which: str, user_id: int, end_date: datetime) -> str:
    return f"reminder:contract:{contract_id}:{which}:{user_id}:{_stamp(end_date)}"


class ReminderService:
    def __init__(self, *, runner: JobRunner, appointments: AppointmentStore, contracts: ContractStore, properties: PropertyStore,
                 users: UserStore, preferences: PushService, push: Dispatcher | None, email: EmailSender, clock: Clock,
                 calendar_domain: str):
        self.runner = runner
        self.appointments = appointments
        self.contracts = contracts
        self.properties = properties
        self.users = users
        self.preferences = preferences  # notification settings (email and push kinds, quiet hours)
        self.push = push  # the push dispatcher; None: no pushes
        self.email = email
        self.clock = clock
        self.calendar_domain = calendar_domain  # the .ics UID's domain
        runner.register(APPOINTMENT_KIND, self.run_appointment)
        runner.register(CONTRACT_KIND, self.run_contract)

    # ---- scheduling (called by the appointment and contract services) -------------
    # Called after the state change is stored: a failure here (the database away) is logged and never
    # turns the confirmed/cancelled answer into an error the client would retry into a 409.
    async def appointment_confirmed(self, doc: dict) -> None:
        await self._best_effort(self._appointment_confirmed(doc), "appointment", doc["_id"])

    async def appointment_closed(self, doc: dict) -> None:
        """Cancelled, rejected, or moved to another time (`doc` as it was before)."""
        await self._best_effort(self._appointment_closed(doc), "appointment", doc["_id"])

    async def contract_active(self, doc: dict) -> None:
        await self._best_effort(self._contract_active(doc), "contract", doc["_id"])

    async def contract_ended(self, doc: dict) -> None:
        await self._best_effort(self._contract_ended(doc), "contract", doc["_id"])

    @staticmethod
    async def _best_effort(work, what: str, record_id: int) -> None:
        try:
            await work
        except Exception as exc:
            log.warning(json.dumps({"event": "reminders_not_scheduled", what: record_id, "error": repr(exc)[:200]}))

    async def _appointment_confirmed(self, doc: dict) -> None:
        now = self.clock.now()
        for which, before in APPOINTMENT_BEFORE.items():
            run_at = doc["scheduled_at"] - before
            if run_at <= now:
                continue
            for user_id in (doc["client_id"], doc["agent_id"]):
                payload = {"appointment_id": doc["_id"], "which": which, "user_id": user_id, "scheduled_at": format_ts(doc["scheduled_at"])}
                await self.runner.enqueue(APPOINTMENT_KIND, payload, key=appointment_key(doc["_id"], which, user_id, doc["scheduled_at"]),
                                          run_at=run_at, rearm=True)

    async def _appointment_closed(self, doc: dict) -> None:
        for which in APPOINTMENT_BEFORE:
            for user_id in (doc["client_id"], doc["agent_id"]):
                await self.runner.cancel(appointment_key(doc["_id"], which, user_id, doc["scheduled_at"]))

    async def _contract_active(self, doc: dict) -> None:
        if doc.get("contract_type") != "rent" or not doc.get("end_date"):
            return
        now = self.clock.now()
        for which, before in CONTRACT_BEFORE.items():
            run_at = doc["end_date"] - before
            if run_at <= now:
                continue
            for user_id in (doc["client_id"], doc["agent_id"]):
                payload = {"contract_id": doc["_id"], "which": which, "user_id": user_id, "end_date": format_ts(doc["end_date"])}
                await self.runner.enqueue(CONTRACT_KIND, payload, key=contract_key(doc["_id"], which, user_id, doc["end_date"]),
                                          run_at=run_at, rearm=True)

    async def _contract_ended(self, doc: dict) -> None:
        if not doc.get("end_date"):
            return
        for which in CONTRACT_BEFORE:
            for user_id in (doc["client_id"], doc["agent_id"]):
                await self.runner.cancel(contract_key(doc["_id"], which, user_id, doc["end_date"]))

    # ---- the jobs ----------------------------------------------------------------
    async def _hold(self, prefs: dict, until: datetime) -> dict | None:
        """Quiet hours: wait for their end (raises Defer), or drop when they outlast `until`."""
        now = self.clock.now()
        if now >= until:
            return {"outcome": "expired"}
        held = quiet_until(now, prefs.get("quiet_hours"))
        if held is None:
            return None
        if held >= until:
            return {"outcome": "expired_in_quiet_hours"}
        raise Defer((held - now).total_seconds(), "quiet hours")

    async def _reach(self, job: dict, user: dict, prefs: dict, category: str, note: Notification, until: datetime,
                     subject: str, body: str, attachments=()) -> dict:
        pushes = 0
        if self.push is not None and prefs["push"].get(category, True):
            pushes = await self.push.notify(user["_id"], category, note, job["_id"], until)
        emailed = False
        if prefs["email"].get(category, True):
            emailed = await self.email.send(user, category, subject, body, attachments)
        log.info(json.dumps({"event": "reminder_sent", "job": job["_id"], "pushes": pushes, "email": emailed}))
        return {"outcome": "sent", "pushes": pushes, "email": emailed}

    async def run_appointment(self, job: dict) -> dict:
        p = job["payload"]
        doc = await self.appointments.get(p["appointment_id"])
        if doc is None or doc["status"] != "confirmed" or format_ts(doc["scheduled_at"]) != p["scheduled_at"]:
            return {"outcome": "stale"}
        user = await self.users.get(p["user_id"])
        prefs = await self.preferences.get_settings(p["user_id"])
        held = await self._hold(prefs, doc["scheduled_at"])
        if held is not None:
            return held
        title = doc.get("property_title") or "a property"
        when = _human(doc["scheduled_at"])
        soon = "tomorrow" if p["which"] == "24h" else "in one hour"
        prop = await self.properties.get(doc["property_id"]) or {}
        location = prop.get("location")
        other = doc["agent_id"] if p["user_id"] == doc["client_id"] else doc["client_id"]
        other_user = await self.users.get(other) or {}
        with_whom = other_user.get("full_name") or other_user.get("username") or "the other party"
        note = Notification(title=f"Viewing {soon}", body=f"“{title}” at {doc['scheduled_at'].strftime('%H:%M')} UTC",
                            badge=0, collapse_key=hashlib.sha256(f"appointment:{doc['_id']}".encode()).hexdigest()[:32],
                            data={"type": "appointment.reminder", "appointment_id": doc["_id"], "which": p["which"],
                                  "scheduled_at": p["scheduled_at"]})
        body = (f"Your viewing of “{title}” is {soon}: {when}"
                + (f", at {location}" if location else "") + f", with {with_whom}.\n\n"
                "The attached calendar file adds it to your calendar.")
        ics = viewing_ics(doc, location=location, now=self.clock.now(), domain=self.calendar_domain)
        return await self._reach(job, user, prefs, "appointments", note, doc["scheduled_at"],
                                 f"Reminder: viewing of “{title}” {soon}", body, [ics])

    async def run_contract(self, job: dict) -> dict:
        p = job["payload"]
        doc = await self.contracts.get(p["contract_id"])
        if doc is None or doc["status"] != "active" or not doc.get("end_date") or format_ts(doc["end_date"]) != p["end_date"]:
            return {"outcome": "stale"}
        user = await self.users.get(p["user_id"])
        prefs = await self.preferences.get_settings(p["user_id"])
        held = await self._hold(prefs, doc["end_date"])
        if held is not None:
            return held
        title = doc.get("property_title") or "your rental"
        days = 30 if p["which"] == "30d" else 7
        note = Notification(title=f"Rental ends in {days} days", body=f"“{title}” ends on {doc['end_date'].strftime('%d %B %Y')}",
                            badge=0, collapse_key=hashlib.sha256(f"contract:{doc['_id']}".encode()).hexdigest()[:32],
                            data={"type": "contract.reminder", "contract_id": doc["_id"], "which": p["which"], "end_date": p["end_date"]})
        body = (f"The rental contract for “{title}” ends in {days} days, on {_human(doc['end_date'])}.\n\n"
                "Talk to the other party in the app if it should be renewed.")
        return await self._reach(job, user, prefs, "contracts", note, doc["end_date"],
                                 f"Your rental of “{title}” ends in {days} days", body)


def calendar_domain(public_base_url: str | None) -> str:
    return (urlsplit(public_base_url).hostname if public_base_url else None) or "sheda.local"
