"""Chat email digests: a user who has unread messages and has been offline for DIGEST_OFFLINE_MINUTES
gets one email saying who wrote, how many, and their first lines (not with previews off).

Every stored message calls `on_message_stored` (on the chat send path, so it only appends to a
list); a background flush makes one queue job per receiver, `digest:<user>` (kind `digest.chat`),
due DIGEST_OFFLINE_MINUTES later. Further messages while it is pending add nothing (a job waiting for
one conversation's window is brought forward for a message of another). When it runs:

- chat email off in the user's settings, or the user gone: done, nothing sent;
- online now (global presence), or offline for less than the threshold (`last_seen`), or inside
  quiet hours: the job waits (not an attempt) and looks again;
- otherwise one email covers every conversation with unread messages newer than the last digest
  told about (`chat_digests`, one document per user and conversation: `up_to`, `sent_at`), except
  conversations digested less than DIGEST_WINDOW_HOURS ago: those wait for their window to pass
  (the job is deferred to then), so a conversation gets at most one digest per window.
Reading the messages meanwhile (on any device) leaves nothing unread: nothing is sent.
"""
from __future__ import annotations

import asyncio
import json
import logging
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sheda_rt.chat.attachments import attachment_summary
from sheda_rt.chat.store import NEWS_FIELDS, is_news  # the one rule of what is still news (unread counts, pushes)
from sheda_rt.jobs.runner import Defer
from sheda_rt.jobs.store import PENDING, RUNNING
from sheda_rt.push.dispatch import quiet_until

if TYPE_CHECKING:
    from sheda_rt.accounts.users_store import UserStore
    from sheda_rt.chat.service import ChatService
    from sheda_rt.clock import Clock
    from sheda_rt.jobs.runner import JobRunner
    from sheda_rt.push.presence import Presence
    from sheda_rt.push.service import PushService
    from sheda_rt.reminders.email import EmailSender

log = logging.getLogger("sheda.reminders")

DIGEST_KIND = "digest.chat"
PREVIEW_LINES = 3
PREVIEW_CHARS = 140


# ---- what every digest email job does (chat digests here, saved-search digests in sheda_rt/saved_searches) ----
async def digest_recipient(users: UserStore, preferences: PushService, user_id: int, kind: str) -> tuple[dict | None, dict | None, dict | None]:
    """(user, settings, None) when a digest email of `kind` may go to this user; (None, None, outcome)
    when none must be sent: that kind of email is off in their settings, or they are gone or have
    no address."""
    prefs = await preferences.get_settings(user_id)
    if not prefs["email"][kind]:
        return None, None, {"outcome": f"{kind}_email_off"}
    user = await users.get(user_id)
    if user is None or not user.get("is_active", True) or not user.get("email"):
        return None, None, {"outcome": "no_address"}
    return user, prefs, None


def hold_for_quiet_hours(prefs: dict, now: datetime) -> None:
    """Inside the user's quiet hours the job waits for their end (Defer: not a failed attempt)."""
    held = quiet_until(now, prefs.get("quiet_hours"))
    if held is not None:
        raise Defer((held - now).total_seconds(), "quiet hours")


class DigestStore:
    """`chat_digests`: `_id` = "<user>:<conversation>", read and written by `_id` only (no index of its own)."""

    INDEXES: list = []

    def __init__(self, db):
        self.col = db["chat_digests"]

    async def ensure_indexes(self):
        return None

    async def of(self, user_id: int, convs: list[str]) -> dict[str, dict]:
        docs = await self.col.find({"_id": {"$in": [f"{user_id}:{c}" for c in convs]}}).to_list()
        return {d["_id"].split(":", 1)[1]: d for d in docs}

    async def record(self, user_id: int, conv: str, up_to: int, now: datetime) -> None:
        await self.col.update_one({"_id": f"{user_id}:{conv}"}, {"$set": {"up_to": up_to, "sent_at": now}}, upsert=True)


class ChatDigests:
    def __init__(self, *, runner: JobRunner, store: DigestStore, chat: ChatService, presence: Presence, users: UserStore,
                 preferences: PushService, email: EmailSender, clock: Clock, offline_minutes: float, window_hours: float):
        self.runner = runner
        self.store = store
        self.chat = chat
        self.presence = presence
        self.users = users
        self.preferences = preferences
        self.email = email
        self.clock = clock
        self.offline = timedelta(minutes=offline_minutes)
        self.window = timedelta(hours=window_hours)
        self._pending: list[tuple[int, int]] = []
        self._flushing: asyncio.Task | None = None
        self._armed: dict[int, datetime] = {}  # receiver -> when their pending digest job is due (skip re-enqueueing)
        runner.register(DIGEST_KIND, self.run)

    # ---- from the chat path --------------------------------------------------------
    def on_message_stored(self, doc: dict) -> None:
        """Called once per stored message; cheap and never raises."""
        if len(self._pending) < 100_000:
            self._pending.append((doc["receiver_id"], doc["_id"]))
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.ensure_future(self._flush())

    async def drain(self) -> None:
        if self._flushing is not None:
            await asyncio.gather(self._flushing, return_exceptions=True)

    async def _flush(self) -> None:
        await asyncio.sleep(0)
        while self._pending:
            batch, self._pending = self._pending, []
            firsts = dict(reversed(batch))  # receiver -> their first message of the batch
            for receiver, message_id in firsts.items():
                try:
                    await self._arm(receiver, message_id)
                except Exception as exc:  # the database away: this digest is lost, the chat is not
                    log.warning(json.dumps({"event": "digest_enqueue_failed", "user_id": receiver, "error": repr(exc)[:200]}))

    async def _arm(self, receiver: int, message_id: int) -> None:
        now = self.clock.now()
        due = self._armed.get(receiver)
        if due is not None and due > now:
            return
        run_at = now + self.offline
        key = f"digest:{receiver}"
        job, created = await self.runner.enqueue(DIGEST_KIND, {"user_id": receiver}, key=key, run_at=run_at, rearm=True)
        due = run_at
        if not created and job is not None and job["status"] == RUNNING:
            # Being sent right now (it may have read the unread counts before this message): one more, later.
            await self.runner.enqueue(DIGEST_KIND, {"user_id": receiver}, key=f"{key}:{message_id}", run_at=run_at)
        elif not created and job is not None and job["status"] == PENDING and job["run_at"] > run_at:
            # Waiting for another conversation's window: this message's conversation must not wait with it.
            await self.runner.bring_forward(key, run_at)
        elif job is not None and job["status"] == PENDING:
            due = job["run_at"]
        if len(self._armed) > 100_000:
            self._armed.clear()
        self._armed[receiver] = due

    # ---- the job -------------------------------------------------------------------
    async def run(self, job: dict) -> dict:
        user_id = job["payload"]["user_id"]
        user, prefs, outcome = await digest_recipient(self.users, self.preferences, user_id, "chat")
        if outcome is not None:
            return outcome
        now = self.clock.now()
        if await self.presence.online_anywhere(user_id):
            raise Defer(self.offline.total_seconds(), "online")
        last_seen = user.get("last_seen")
        if last_seen is not None and now - last_seen < self.offline:
            raise Defer((last_seen + self.offline - now).total_seconds(), "recently online")
        hold_for_quiet_hours(prefs, now)
        ready, wait = await self._unread(user_id, now)
        sent = 0
        if ready:
            await self._send(user, ready, prefs["previews"])
            for item in ready:
                await self.store.record(user_id, item["conv"], item["newest"], now)
            sent = len(ready)
        if wait is not None:
            raise Defer(wait.total_seconds(), f"digested {sent} conversation(s); others inside their window")
        return {"outcome": "sent" if sent else "nothing_unread", "conversations": sent}

    async def _unread(self, user_id: int, now: datetime) -> tuple[list[dict], timedelta | None]:
        """Conversations with unread messages not yet digested: (those to send now, how long until the
        next of the others leaves its window, or None)."""
        messages = self.chat.messages
        found = []
        for c in await self.chat.conversations.of_user(user_id):
            if self.chat.conversations.muted_until(c, user_id, now) is not None:
                continue  # muted (chat/manage.py): no push, and no email either
            peer = next((u for u in c["users"] if u != user_id), user_id)
            if self.chat.blocks is not None and await self.chat.blocks.between(user_id, peer):
                continue  # either blocks the other: no email about them either (as no push)
            mark = int((c.get("read_upto") or {}).get(str(user_id), 0))
            newest = await messages.scan(c["_id"], newest_first=True, need=1, after=mark, projection=NEWS_FIELDS,
                                         keep=lambda d, peer=peer: is_news(d, peer, user_id))
            if newest:
                found.append({"conv": c["_id"], "peer": peer, "mark": mark, "newest": newest[0]["_id"]})
        told = await self.store.of(user_id, [f["conv"] for f in found]) if found else {}
        ready, wait = [], None
        for item in found:
            last = told.get(item["conv"])
            if last is not None and last["up_to"] >= item["newest"]:
                continue  # already told about everything unread there
            if last is not None and last["sent_at"] + self.window > now:
                left = last["sent_at"] + self.window - now
                wait = left if wait is None else min(wait, left)
                continue
            ready.append(item)
        return ready, wait

    async def _send(self, user: dict, ready: list[dict], previews: bool) -> None:
        messages = self.chat.messages
        sections, total, names = [], 0, []
        for item in ready:
            brief = await self.chat.user_brief(item["peer"]) or {}
            name = brief.get("full_name") or brief.get("username") or "someone"
            count = await messages.count_from(item["conv"], item["peer"], item["mark"], user["_id"])
            total += count
            names.append(name)
            lines = [f"{name}: {count} new message{'s' if count != 1 else ''}"]
            if previews:
                first = await messages.scan(item["conv"], newest_first=False, need=PREVIEW_LINES, after=item["mark"],
                                            keep=lambda d, peer=item["peer"]: is_news(d, peer, user["_id"]))
                for m in first:
                    text = (m.get("message") or "").splitlines()[0] if m.get("message") else attachment_summary(m.get("attachments"))
                    lines.append(f"  > {text[:PREVIEW_CHARS]}{'…' if len(text) > PREVIEW_CHARS else ''}")
                if count > len(first):
                    lines.append(f"  … and {count - len(first)} more")
            sections.append("\n".join(lines))
        who = names[0] if len(names) == 1 else f"{len(names)} people"
        subject = f"{total} unread message{'s' if total != 1 else ''} from {who}"
        body = "While you were away:\n\n" + "\n\n".join(sections) + "\n\nOpen the app to reply."
        await self.email.send(user, "chat", subject, body)
        log.info(json.dumps({"event": "digest_sent", "user_id": user["_id"], "conversations": len(ready), "messages": total}))
