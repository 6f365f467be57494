"""The push dispatcher: a chat message to a user with no open socket anywhere becomes, after
PUSH_GRACE_SECONDS, one push per device, through the durable job queue. The device's platform
picks the provider (provider.py: Web Push, FCM, APNs; a platform whose provider is not
configured gets no pushes); everything below is the same for all three.

- One job per (device, conversation), key `push:<device id>:<conversation>`: further messages
  of the conversation while it is pending collapse into it ("3 new messages from Ada"; the
  badge is the user's unread total), and a device's retries never resend to another device.
  The job reads what is unread when it runs, so it sends what is true then.
- A read receipt cancels the pending jobs of that conversation; a job that runs anyway finds
  nothing unread and sends nothing. A user online again when it runs gets nothing (their
  sockets have it).
- A user deactivated since the job was made gets nothing (outcome user_inactive); a device registered
  before a sign-out everywhere (password reset, deactivation) is deleted (device_signed_out).
- Previews off: no message text in the payload. Quiet hours: the job is deferred to their end
  (not an attempt). Every push is dropped (outcome expired) once it is PUSH_TTL_SECONDS old, by
  the newest message it tells of, whatever held it (quiet hours ending past that, or a provider's
  5xx/429 retried that long: no "New message" hours after an outage); stored notifications'
  pushes alike, from when they were stored (`_hold_or_expire`, one check for both). What is sent
  asks the provider to keep it only for what is left of that.
- The provider's answer: 2xx done; a device the provider reports gone (404/410, FCM
  UNREGISTERED, APNs BadDeviceToken/Unregistered) is deleted; 429/5xx retried after Retry-After
  (else the queue's backoff); any other 4xx gives up (failed, for admins).
- Job kinds are `push.<platform>`, so a process runs only the platforms it has a provider for.

Stored notifications (a viewing booked, a payment confirmed, ...: NotificationService.notify) come
through `on_notification`: one job per device (key `push:<device>:note:<id>`) for a user offline
then, which sends nothing if the user is online when it runs. An administrator's announcement is one
`push.announcement` job that fans out to the devices of the offline users it targets.

Badge updates (silent): a visible push sent to a device is recorded on it (`shown`: its tag, what reading it
means, and the badge sent). When the user reads elsewhere (a chat read receipt from a socket or REST, a
notification marked read, read-all), each of the user's devices with such a record gets ONE job, key
`push:<device>:badge`, after PUSH_GRACE_SECONDS (further reads collapse into it), that sends
`{type: "badge", badge, clear: [{conversation: {other_user_id}, tag} | {notification_id, tag}]}` silently (Web
Push data, FCM data-only, APNs background push): the new unread total, and each shown push now read, by the tag
it was shown with. Nothing is sent when nothing changed. Sent whether or not the user is online (a socket is
not a device: the phone's stale notification is there either way), inside quiet hours (it shows nothing) and
whatever the per-kind switches say, unless every push switch is off.

`on_message_stored` is called on the chat send path for every stored message, so it only
appends to a list; the checks (presence, devices) and the enqueueing run in a background task.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import zoneinfo
from datetime import datetime, timedelta, timezone

from prometheus_client import Counter, Gauge

from sheda_rt.chat.attachments import attachment_summary
from sheda_rt.chat.store import NEWS_FIELDS, conv_key, is_news
from sheda_rt.clock import to_utc
from sheda_rt.jobs.runner import Defer, GiveUp, RetryLater
from sheda_rt.jobs.store import RUNNING
from sheda_rt.push.provider import Notification, Provider

log = logging.getLogger("sheda.push")

PUSHES = Counter("sheda_pushes_total", "Push notifications by provider and outcome (sent, failed, gone, cancelled, skipped, expired)",
                 ["provider", "outcome"])
# Every process sees the same queue: the largest report is the value.
PUSH_QUEUE_DEPTH = Gauge("sheda_push_queue_depth", "Pushes waiting in the job queue (pending, due or not), by provider",
                         ["provider"], multiprocess_mode="max")
PUSH_OLDEST_DUE_SECONDS = Gauge("sheda_push_oldest_due_seconds", "How long the oldest due push has waited past its run_at, by provider",
                                ["provider"], multiprocess_mode="max")
DEVICE_CACHE_SECONDS = 10.0


ANNOUNCEMENT_KIND = "push.announcement"

# A stored notification's kind (its prefix before the dot) -> the switch of the notification settings
# (`push.<category>`) that turns its push off. Kinds not listed (builder verification, a handled report)
# concern the account itself and have no switch: they always push.
CATEGORY = {"appointment": "appointments", "contract": "contracts", "booking": "contracts", "change_request": "contracts",
            "lead": "listings", "project": "listings", "saved_search": "listings", "announcement": "announcements"}


def category_of(kind: str) -> str:
    return CATEGORY.get(kind.split(".", 1)[0], "account")


def deep_link(kind: str, data: dict) -> str:
    """The app screen a notification opens: the resource's path as under /api/v1 (e.g. `/appointments/12`, `/wallet`),
    or `/notifications` when it names none."""
    if kind.startswith("wallet."):  # a top-up credited or taken back: the wallet
        return "/wallet"
    for key, path in (("appointment_id", "/appointments/{}"), ("contract_id", "/contracts/{}"), ("booking_id", "/bookings/{}"),
                      ("lead_id", "/leads/{}"), ("project_id", "/projects/{}"), ("property_id", "/properties/{}")):
        if isinstance(data.get(key), int):
            return path.format(data[key])
    return "/notifications"


def kind_of(platform: str) -> str:
    return f"push.{platform}"


def job_key(device_id: int, conv: str) -> str:
    return f"push:{device_id}:{conv}"


def collapse_of(key: str) -> str:
    """A push's collapse key and tag: at most 32 characters (RFC 8030's Topic; APNs allows 64)."""
    return hashlib.sha256(key.encode()).hexdigest()[:32]


BADGE_COLLAPSE = collapse_of("badge")  # a newer badge update replaces one the provider still holds


def quiet_until(now: datetime, quiet: dict | None) -> datetime | None:
    """The end of the quiet hours `now` is inside (UTC), or None when outside them."""
    if not quiet or quiet["start"] == quiet["end"]:
        return None
    tz = zoneinfo.ZoneInfo(quiet["time_zone"])
    local = now.astimezone(tz)
    sh, sm = map(int, quiet["start"].split(":"))
    eh, em = map(int, quiet["end"].split(":"))
    t, start, end = (local.hour, local.minute), (sh, sm), (eh, em)
    inside = start <= t < end if start < end else (t >= start or t < end)
    if not inside:
        return None
    until = local.replace(hour=eh, minute=em, second=0, microsecond=0)
    if until <= local:
        until = (local + timedelta(days=1)).replace(hour=eh, minute=em, second=0, microsecond=0)
        until = until.replace(tzinfo=tz)  # re-resolve the offset on that day (DST)
    return until.astimezone(timezone.utc)


class Dispatcher:
    def __init__(self, settings, service, chat, presence, runner, providers: dict[str, Provider], clock):
        self.settings = settings
        self.service = service  # PushService: devices and settings
        self.chat = chat
        self.presence = presence
        self.runner = runner
        self.providers = providers  # platform -> provider
        self.clock = clock
        self.grace = timedelta(seconds=settings.push_grace_seconds)
        self._pending: list[dict] = []
        self._flushing: asyncio.Task | None = None
        self._device_cache: dict[int, tuple[float, list[dict]]] = {}
        self._platforms = {kind_of(platform): platform for platform in providers}
        for kind in self._platforms:
            runner.register(kind, self.run)
        self._notes: list[tuple[int, dict]] = []  # stored notifications waiting for their push jobs
        self._noting: asyncio.Task | None = None
        self._reads: set[asyncio.Task] = set()  # reads' cancels and badge updates being enqueued
        self.notifications = None  # the NotificationStore (set by the context): a notification read meanwhile is not pushed
        runner.register(ANNOUNCEMENT_KIND, self.run_announcement)
        runner.observers.append(self.observe)

    # ---- from the chat service ---------------------------------------------
    def on_message_stored(self, doc: dict) -> None:
        """Called once per stored and delivered message; cheap and never raises."""
        if len(self._pending) < 100_000:
            self._pending.append({"_id": doc["_id"], "sender_id": doc["sender_id"], "receiver_id": doc["receiver_id"]})
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.ensure_future(self._flush())

    def on_read(self, reader_id: int, other_id: int) -> None:
        """A read receipt: cancel the reader's pending pushes of that conversation; a badge update for the
        reader's devices that show a push."""
        self._track(asyncio.ensure_future(self._cancel(reader_id, other_id)))

    def on_notifications_read(self, user_id: int) -> None:
        """A notification marked read, or all of them: a badge update for the user's devices that show a push."""
        self._track(asyncio.ensure_future(self._badge_soon(user_id)))

    def _track(self, task: asyncio.Task) -> None:
        self._reads.add(task)  # kept for drain (and from the garbage collector) until done
        task.add_done_callback(self._reads.discard)

    async def _badge_soon(self, user_id: int) -> None:
        """One pending badge update per device that shows a visible push (`shown`), after the grace period: a burst
        of reads collapses into it. A device's update being sent right now may have looked before this read: one
        more then (its own key, collapsing too)."""
        try:
            if not await self._devices(user_id):  # no device (most readers in a busy chat): no read of the database
                return
            now = self.clock.now()
            for device in await self.service.devices.of_user(user_id):  # not the cache: `shown` changes with every push
                if device["platform"] not in self.providers or not device.get("shown"):
                    continue
                kind, key = kind_of(device["platform"]), job_key(device["_id"], "badge")
                payload = {"user_id": user_id, "device_id": device["_id"], "badge_update": True, "read_at": now.isoformat()}
                job, created = await self.runner.enqueue(kind, payload, key=key, run_at=now + self.grace, rearm=True)
                if not created and job is not None and job["status"] == RUNNING:
                    await self.runner.enqueue(kind, payload, key=f"{key}:again", run_at=now + self.grace, rearm=True)
        except Exception as exc:
            log.info(json.dumps({"event": "push_badge_enqueue_failed", "user_id": user_id, "error": repr(exc)[:200]}))

    async def drain(self) -> None:
        await asyncio.gather(*(t for t in (self._flushing, self._noting, *self._reads) if t is not None), return_exceptions=True)

    async def _devices(self, user_id: int) -> list[dict]:
        """The user's devices this process has a provider for."""
        loop = asyncio.get_running_loop()
        hit = self._device_cache.get(user_id)
        if hit is not None and hit[0] > loop.time():
            return hit[1]
        devices = [d for d in await self.service.devices.of_user(user_id) if d["platform"] in self.providers]
        if len(self._device_cache) > 50_000:
            self._device_cache.clear()
        self._device_cache[user_id] = (loop.time() + DEVICE_CACHE_SECONDS, devices)
        return devices

    def forget_devices(self, user_id: int | None) -> None:
        """Registrations change rarely and may move a device between users: forget them all."""
        if user_id is None:
            self._device_cache.clear()
        else:
            self._device_cache.pop(user_id, None)

    async def _flush(self) -> None:
        await asyncio.sleep(0)  # let the rest of the batch arrive
        while self._pending:
            batch, self._pending = self._pending, []
            # One job per receiver and conversation is enough: the first message of each.
            firsts: dict[tuple[int, int], dict] = {}
            for m in batch:
                firsts.setdefault((m["receiver_id"], m["sender_id"]), m)
            for (receiver, sender), m in firsts.items():
                try:
                    await self._maybe_enqueue(receiver, sender, m["_id"])
                except Exception as exc:  # the database away: this push is lost, the chat is not
                    log.warning(json.dumps({"event": "push_enqueue_failed", "user_id": receiver, "error": repr(exc)[:200]}))

    async def _maybe_enqueue(self, receiver: int, sender: int, message_id: int) -> None:
        devices = await self._devices(receiver)
        if not devices or await self.presence.online_anywhere(receiver):
            return
        conv = conv_key(receiver, sender)
        run_at = self.clock.now() + self.grace
        payload = {"user_id": receiver, "other_id": sender, "conv": conv, "first_id": message_id,
                   "first_at": self.clock.now().isoformat()}
        for device in devices:
            kind = kind_of(device["platform"])
            job, created = await self.runner.enqueue(kind, dict(payload, device_id=device["_id"]), key=job_key(device["_id"], conv),
                                                     run_at=run_at, rearm=True)
            if not created and job is not None and job["status"] == RUNNING and job["payload"].get("first_id") != message_id:
                # Sending right now (it may have counted before this message): one more, later.
                await self.runner.enqueue(kind, dict(payload, device_id=device["_id"]),
                                          key=f"{job_key(device['_id'], conv)}:{message_id}", run_at=run_at)

    async def _cancel(self, reader: int, other: int) -> None:
        try:
            devices = await self._devices(reader)
            conv = conv_key(reader, other)
            for device in devices:
                if await self.runner.cancel(job_key(device["_id"], conv)):
                    PUSHES.labels(provider=device["platform"], outcome="cancelled").inc()
        except Exception as exc:
            log.info(json.dumps({"event": "push_cancel_failed", "user_id": reader, "error": repr(exc)[:200]}))
        await self._badge_soon(reader)

    # ---- the job -----------------------------------------------------------
    async def unread(self, user_id: int, other_id: int) -> tuple[int, dict | None, int]:
        """(how many of other's messages to user are unread, the newest of them, the user's unread total)."""
        messages = self.chat.messages
        conv = conv_key(user_id, other_id)
        counts, watermark = [], 0
        for c in await self.chat.conversations.of_user(user_id):
            peer = next((u for u in c["users"] if u != user_id), user_id)
            mark = int((c.get("read_upto") or {}).get(str(user_id), 0))
            if c["_id"] == conv:
                watermark = mark
            counts.append(messages.count_from(c["_id"], peer, mark, user_id))  # the badge: what the conversation list counts
        totals = await asyncio.gather(*counts)
        # A message deleted for everyone (a tombstone) or deleted by the user for themselves is not news
        news = await messages.scan(conv, newest_first=True, after=watermark, projection=NEWS_FIELDS,
                                   keep=lambda d: is_news(d, other_id, user_id))
        latest = await messages.get(conv, news[0]["_id"]) if news else None
        if latest is None:
            return 0, None, sum(totals)
        return len(news), latest, sum(totals)

    async def run(self, job: dict):
        p = job["payload"]
        if p.get("badge_update"):
            return await self._run_badge(job)
        if "note" in p:
            return await self._run_note(job)
        user_id, other_id, device_id = p["user_id"], p["other_id"], p["device_id"]
        platform = self._platforms[job["kind"]]
        device = await self.service.devices.get(device_id)
        if device is None or device["user_id"] != user_id or device["platform"] != platform:
            return {"outcome": "device_gone"}
        if (signed_out := await self._signed_out(device)) is not None:
            return signed_out
        prefs = await self.service.get_settings(user_id)
        if not prefs["push"]["chat"]:
            PUSHES.labels(provider=platform, outcome="skipped").inc()
            return {"outcome": "chat_pushes_off"}
        if await self.chat.conversations.muted(p["conv"], user_id, self.clock.now()):  # asked when sending: a mute set in the grace period counts
            PUSHES.labels(provider=platform, outcome="skipped").inc()
            return {"outcome": "muted"}
        if self.chat.blocks is not None and await self.chat.blocks.between(user_id, other_id):  # blocked in the grace period
            PUSHES.labels(provider=platform, outcome="skipped").inc()
            return {"outcome": "blocked"}
        if await self.presence.online_anywhere(user_id):
            PUSHES.labels(provider=platform, outcome="skipped").inc()
            return {"outcome": "online"}
        count, latest, badge = await self.unread(user_id, other_id)
        if not count:
            PUSHES.labels(provider=platform, outcome="cancelled").inc()
            return {"outcome": "read"}
        main_key = job_key(device_id, p["conv"])
        if job["_id"] != main_key:
            # The "one more, later" of a message that came while the conversation's push was sending: that push
            # may have counted it already (it read the unread messages after the message was stored); then nothing is new.
            main = await self.runner.store.get(main_key)
            told = ((main or {}).get("result") or {}).get("up_to")
            if isinstance(told, int) and told >= latest["_id"]:
                PUSHES.labels(provider=platform, outcome="cancelled").inc()
                return {"outcome": "already_sent"}
        # Its age is its newest message's (a message that collapsed into a push retried for long is still news)
        newest = datetime.fromisoformat(p["first_at"])
        if isinstance(latest.get("created_at"), datetime):
            newest = max(newest, to_utc(latest["created_at"]))
        expires_at = newest + timedelta(seconds=self.settings.push_ttl_seconds)
        if (stale := self._hold_or_expire(platform, expires_at, prefs.get("quiet_hours"))) is not None:
            return stale
        note = await self._notification(p["conv"], other_id, count, latest, badge, prefs["previews"])
        return await self._send(job, device, note, {"count": count, "up_to": latest["_id"]}, expires_at,
                                shown={"conversation": {"other_user_id": other_id}})

    def _hold_or_expire(self, platform: str, expires_at: datetime, quiet: dict | None) -> dict | None:
        """The one age check of every push (chat, stored notifications, reminders): the job's outcome when it
        is too old to send (`expired`: `expires_at` passed, e.g. while a provider answered 5xx/429;
        `expired_in_quiet_hours`: the quiet hours end at or after it); Defer to their end (not an attempt)
        while they hold it; None: send now."""
        now = self.clock.now()
        held = quiet_until(now, quiet)
        if now >= expires_at or (held is not None and held >= expires_at):
            PUSHES.labels(provider=platform, outcome="expired").inc()
            return {"outcome": "expired_in_quiet_hours" if held is not None else "expired"}
        if held is not None:
            raise Defer((held - now).total_seconds(), "quiet hours")
        return None

    async def _signed_out(self, device: dict) -> dict | None:
        """A job's outcome when its device must get nothing: the user was deactivated (by themselves, an
        admin or a moderator) after the job was made, or every login of theirs was signed out since the
        device was registered (password reset, deactivation: the token epoch moved on), which deletes
        the device as logging its own login out does. None: send."""
        user = await self.chat.users.get(device["user_id"])
        if user is None or not user.get("is_active", True):
            PUSHES.labels(provider=device["platform"], outcome="skipped").inc()
            return {"outcome": "user_inactive"}
        if "ep" in device and device["ep"] != user.get("token_epoch", 0):
            await self.service.devices.delete_signed_out(device["_id"], device["ep"])
            self.forget_devices(device["user_id"])
            PUSHES.labels(provider=device["platform"], outcome="gone").inc()
            return {"outcome": "device_signed_out"}
        return None

    async def _send(self, job: dict, device: dict, note: Notification, sent: dict, expires_at: datetime, shown: dict | None = None):
        """One notification to one device, and what the provider's answer means for the job. The provider keeps
        it (TTL) only until `expires_at`, when this server would have dropped it too. `shown`: what reading this
        visible push means (`clear` of a later badge update), recorded on the device once it is sent."""
        platform, user_id, device_id = device["platform"], device["user_id"], device["_id"]
        ttl = max(1, math.ceil((expires_at - self.clock.now()).total_seconds()))
        try:
            result = await self.providers[platform].deliver(device, note, ttl=ttl)
        except Exception as exc:
            PUSHES.labels(provider=platform, outcome="failed").inc()
            raise RetryLater(self.runner.backoff(job.get("attempts", 1)), f"network: {exc!r}"[:200])
        if result.ok:
            PUSHES.labels(provider=platform, outcome="sent").inc()
            if shown is not None:
                try:  # sent: a failure to record it must not send it again (the job stays done)
                    await self.service.devices.record_shown(device_id, note.collapse_key, {
                        "user_id": user_id, "clear": shown, "at": self.clock.now()}, note.badge)
                except Exception as exc:
                    log.warning(json.dumps({"event": "push_shown_not_recorded", "device_id": device_id, "error": repr(exc)[:200]}))
            return {"outcome": "sent", "status": result.status, **sent}
        if result.gone:
            await self.service.devices.delete_gone(device["_id"], device["token_key"])
            self.forget_devices(user_id)
            PUSHES.labels(provider=platform, outcome="gone").inc()
            log.info(json.dumps({"event": "push_device_gone", "user_id": user_id, "device_id": device_id, "platform": platform,
                                 "status": result.status, "reason": result.reason}))
            return {"outcome": "device_gone", "status": result.status, "reason": result.reason}
        PUSHES.labels(provider=platform, outcome="failed").inc()
        answered = f"{platform} answered {result.status} {result.reason}".rstrip()
        if result.retryable:
            delay = result.retry_after if result.retry_after is not None else self.runner.backoff(job.get("attempts", 1))
            raise RetryLater(delay, answered)
        raise GiveUp(f"{answered}: {result.body[:200]}")

    async def _notification(self, conv: str, other_id: int, n: int, latest: dict, badge: int, previews: bool) -> Notification:
        brief = await self.chat.user_brief(other_id) or {}
        name = brief.get("full_name") or brief.get("username") or "someone"
        title = f"New message from {name}" if n == 1 else f"{n} new messages from {name}"
        body = (latest["message"] or attachment_summary(latest.get("attachments")))[:200] if previews else None  # [attachments]
        # One collapse key per conversation, at most 32 characters (RFC 8030's Topic; APNs allows 64); also the
        # notification's `tag`, by which a badge update tells the app which shown notification to close
        collapse = collapse_of(conv)
        data = {"type": "chat.message", "title": title, "count": n, "badge": badge,
                "conversation": {"other_user_id": other_id}, "up_to": latest["_id"], "body": body, "tag": collapse}
        return Notification(title=title, body=body, badge=badge, collapse_key=collapse, data=data)

    # ---- other features' notifications (reminders) ---------------------------
    async def notify(self, user_id: int, category: str, note: Notification, key: str, expires_at: datetime) -> int:
        """Push a ready-made notification (a viewing or contract reminder) to each of the user's
        devices, through the same jobs as chat pushes (kind push.<platform>, key
        `push:<device>:<key>`, so a repeated call never sends twice). When the job runs, the
        user's push switch for `category` and quiet hours apply as for chat, and the badge is the
        unread chat total then; a push still held at `expires_at` (e.g. the viewing's start) is
        dropped. Returns how many jobs were made."""
        made = 0
        payload = {"user_id": user_id, "category": category, "expires_at": expires_at.isoformat(),
                   "note": {"title": note.title, "body": note.body, "collapse_key": note.collapse_key, "data": note.data}}
        for device in await self._devices(user_id):
            kind, key_ = kind_of(device["platform"]), job_key(device["_id"], key)
            job, created = await self.runner.enqueue(kind, dict(payload, device_id=device["_id"]), key=key_)
            if not created and job is not None and job["payload"].get("user_id") != user_id:
                # That key's push was another account's, before the device moved to this one: this user's is their own
                _, created = await self.runner.enqueue(kind, dict(payload, device_id=device["_id"]), key=f"{key_}:user:{user_id}")
            made += created
        return made

    # ---- stored notifications (sheda_rt/notifications/service.py) -------------------
    def on_notification(self, user_id: int, view: dict) -> None:
        """A notification was stored for `user_id` (and sent as a frame to their open sockets and
        streams). Cheap and never raises: the checks (devices, presence) and the enqueueing run in a
        background task, as for chat messages."""
        if len(self._notes) < 100_000:
            self._notes.append((user_id, view))
        if self._noting is None or self._noting.done():
            self._noting = asyncio.ensure_future(self._flush_notes())

    async def _flush_notes(self) -> None:
        await asyncio.sleep(0)  # let the rest of the batch arrive
        while self._notes:
            batch, self._notes = self._notes, []
            for user_id, view in batch:
                try:
                    devices = await self._devices(user_id)
                    if devices and not await self.presence.online_anywhere(user_id):
                        await self._enqueue_note(user_id, devices, view["kind"], view["title"], view["body"], view["data"],
                                                 f"note:{view['id']}", view["id"])
                except Exception as exc:  # the database away: this push is lost, the notification is stored
                    log.warning(json.dumps({"event": "push_enqueue_failed", "user_id": user_id, "error": repr(exc)[:200]}))

    async def _enqueue_note(self, user_id: int, devices: list[dict], kind: str, title: str, body: str, data: dict, key: str,
                            notification_id: int | None) -> int:
        """One job per device (kind push.<platform>, key `push:<device>:<key>`: made once however often
        this runs), sent only if the user is still offline when it runs (their open socket or stream
        got the notification frame), within PUSH_TTL_SECONDS."""
        push_data = {**data, "type": kind, "kind": kind, "notification_id": notification_id, "path": deep_link(kind, data)}
        collapse = collapse_of(key)
        note = {"title": title, "body": body[:200], "collapse_key": collapse, "data": {**push_data, "tag": collapse}}
        payload = {"user_id": user_id, "category": category_of(kind), "unless_online": True,
                   "expires_at": (self.clock.now() + timedelta(seconds=self.settings.push_ttl_seconds)).isoformat(), "note": note}
        made = 0
        for device in devices:
            _, created = await self.runner.enqueue(kind_of(device["platform"]), dict(payload, device_id=device["_id"]),
                                                   key=job_key(device["_id"], key))
            made += created
        return made

    async def announce(self, title: str, body: str, user_type: str | None, key: str) -> None:
        """An administrator's announcement: ONE job (push.announcement), whatever the audience's size;
        it walks the registered devices, not the users, so the request that broadcast stays cheap."""
        await self.runner.enqueue(ANNOUNCEMENT_KIND, {"title": title, "body": body, "user_type": user_type},
                                  key=f"push:announcement:{key}")

    async def run_announcement(self, job: dict) -> dict:
        """Push jobs for every device (of a platform this process pushes to) of an active user of the
        announcement's audience who is offline now. Their keys carry this job's, so a retried run makes
        no second push; each user's `push.announcements` switch and quiet hours apply when theirs runs."""
        p = job["payload"]
        by_user: dict[int, list[dict]] = {}
        for device in await self.service.devices.every(list(self.providers)):
                by_user.setdefault(device["user_id"], []).append(device)
        ids, made = sorted(by_user), 0
        for i in range(0, len(ids), 200):  # the embedded database matches an $in by walking its list: chunks
            users = await self.chat.users.get_many(ids[i:i + 200])
            for uid in ids[i:i + 200]:
                user = users.get(uid)
                if user is None or not user.get("is_active", True) or (p["user_type"] and user.get("user_type") != p["user_type"]):
                    continue
                if await self.presence.online_anywhere(uid):
                    continue  # the announcement frame reached them
                made += await self._enqueue_note(uid, by_user[uid], "announcement", p["title"], p["body"],
                                                 {"user_type": p["user_type"]} if p["user_type"] else {}, job["_id"].removeprefix("push:"), None)
        return {"outcome": "fanned_out", "users": len(ids), "pushes": made}

    async def _run_note(self, job: dict):
        p = job["payload"]
        platform = self._platforms[job["kind"]]
        device = await self.service.devices.get(p["device_id"])
        if device is None or device["user_id"] != p["user_id"] or device["platform"] != platform:
            return {"outcome": "device_gone"}
        if (signed_out := await self._signed_out(device)) is not None:
            return signed_out
        prefs = await self.service.get_settings(p["user_id"])
        if not prefs["push"].get(p["category"], True):
            PUSHES.labels(provider=platform, outcome="skipped").inc()
            return {"outcome": f"{p['category']}_pushes_off"}
        if p.get("unless_online") and await self.presence.online_anywhere(p["user_id"]):  # their socket/stream had it
            PUSHES.labels(provider=platform, outcome="skipped").inc()
            return {"outcome": "online"}
        note_id = p["note"]["data"].get("notification_id")
        if isinstance(note_id, int) and self.notifications is not None and await self.notifications.is_read(p["user_id"], note_id):
            # read on another device while the push was held (quiet hours, a provider's Retry-After): as a chat read receipt
            PUSHES.labels(provider=platform, outcome="cancelled").inc()
            return {"outcome": "read"}
        expires_at = datetime.fromisoformat(p["expires_at"])
        if (stale := self._hold_or_expire(platform, expires_at, prefs.get("quiet_hours"))) is not None:
            return stale
        n = p["note"]
        _, _, badge = await self.unread(p["user_id"], p["user_id"])  # the badge stays the unread chat total, not 0
        note = Notification(title=n["title"], body=n["body"], badge=badge, collapse_key=n["collapse_key"],
                            data=dict(n["data"], title=n["title"], body=n["body"], badge=badge))
        shown = {"notification_id": note_id} if isinstance(note_id, int) else None  # an announcement has none to read
        return await self._send(job, device, note, {}, expires_at, shown=shown)

    # ---- badge updates (silent) ------------------------------------------------
    async def _conv_unread(self, user_id: int, other_id: int) -> int:
        """How many of other's messages to user a chat push would tell of now (unread, not deleted)."""
        conv = conv_key(user_id, other_id)
        c = await self.chat.conversations.get(conv)
        if c is None:
            return 0
        mark = int((c.get("read_upto") or {}).get(str(user_id), 0))
        news = await self.chat.messages.scan(conv, newest_first=True, after=mark, projection=NEWS_FIELDS,
                                             keep=lambda d: is_news(d, other_id, user_id))
        return len(news)

    async def _run_badge(self, job: dict):
        """One silent update of a device: the unread total now, and the visible pushes it shows that are read now."""
        p = job["payload"]
        user_id, platform = p["user_id"], self._platforms[job["kind"]]
        device = await self.service.devices.get(p["device_id"])
        if device is None or device["user_id"] != user_id or device["platform"] != platform:
            return {"outcome": "device_gone"}
        if (signed_out := await self._signed_out(device)) is not None:
            return signed_out
        prefs = await self.service.get_settings(user_id)
        if not any(prefs["push"].values()):  # every push off: nothing of ours is on the phone to correct
            PUSHES.labels(provider=platform, outcome="skipped").inc()
            return {"outcome": "pushes_off"}
        expires_at = datetime.fromisoformat(p["read_at"]) + timedelta(seconds=self.settings.push_ttl_seconds)
        if (stale := self._hold_or_expire(platform, expires_at, None)) is not None:  # quiet hours do not hold it
            return stale
        done: dict[str, dict] = {}  # the shown entries to drop: read now, or another account's (a device that moved)
        clear: list[dict] = []
        for tag, entry in sorted((device.get("shown") or {}).items(), key=lambda kv: str(kv[1].get("at"))):
            what = entry.get("clear") or {}
            if entry.get("user_id") != user_id:
                done[tag] = entry
                continue
            if "conversation" in what:
                read = not await self._conv_unread(user_id, what["conversation"]["other_user_id"])
            elif "notification_id" in what:
                read = self.notifications is None or await self.notifications.is_read(user_id, what["notification_id"])
            else:
                read = True
            if read:
                done[tag] = entry
                clear.append({**what, "tag": tag})
        _, _, badge = await self.unread(user_id, user_id)
        if not clear and badge == device.get("badge"):
            if done:
                await self.service.devices.record_badge(device["_id"], badge, done)
            PUSHES.labels(provider=platform, outcome="skipped").inc()
            return {"outcome": "unchanged", "badge": badge}
        note = Notification(title="", body=None, badge=badge, collapse_key=BADGE_COLLAPSE, silent=True,
                            data={"type": "badge", "badge": badge, "clear": clear})
        result = await self._send(job, device, note, {"badge": badge, "cleared": len(clear)}, expires_at)
        if result.get("outcome") == "sent":
            try:  # sent: a failure to record it must not send it again (the next read's update clears them then)
                await self.service.devices.record_badge(device["_id"], badge, done)
            except Exception as exc:
                log.warning(json.dumps({"event": "push_badge_not_recorded", "device_id": device["_id"], "error": repr(exc)[:200]}))
        return result

    # ---- metrics -----------------------------------------------------------
    async def observe(self, pending: list[dict], now: datetime) -> None:
        """Queue depth and the oldest due push's wait, by provider, from the pending jobs the job
        runner read for its own gauges (kind and run_at, oldest first)."""
        depth = dict.fromkeys(self.providers, 0)
        oldest = dict.fromkeys(self.providers, 0.0)
        for doc in pending:
            platform = self._platforms.get(doc["kind"])
            if platform is None:
                continue
            if depth[platform] == 0 and doc["run_at"] <= now:  # oldest first: the first one of a provider is its oldest
                oldest[platform] = (now - doc["run_at"]).total_seconds()
            depth[platform] += 1
        for platform in self.providers:
            PUSH_QUEUE_DEPTH.labels(provider=platform).set(depth[platform])
            PUSH_OLDEST_DUE_SECONDS.labels(provider=platform).set(oldest[platform])
