"""Alerts of saved searches: a listing change becomes a durable job, the job finds the searches it
matches and alerts each of their users once per listing, ever.

Flow
----
1. The listings service writes a new listing, a listing put back on the market (`relisted`) or a
   lower price (`price_drop`) together with a marker on the listing itself, `alert_pending: {id,
   reason}` (listings/service.py `alert_marker`), then calls `listing_changed(listing, reason)`
   before it answers. That enqueues one job of the durable queue (sheda_rt/jobs/), key
   `saved_search.match:<listing>:<marker id>` (one per change, so a retried call adds nothing),
   and starts running it in this process at once. Once the job is queued the marker is cleared
   (still before the answer, so the stored listing does not change after it). A process dying
   between the listing's write and the enqueue leaves the marker: PendingAlertSweep (every
   SWEEP_SECONDS, in every process) queues the job of each marker still there under the same key
   and clears it, so that change alerts too. After the enqueue, a dying process leaves the job
   pending (or its lease lapses) and any process runs it.
   The job carries the change's number (`change`, store.py CHANGES), counted after the listing's
   write and before the enqueue (by the sweep: when it queues the job).
2. The job reads the listing as it is then (no longer listed or available: nothing to do), looks up
   the searches filed under any of the listing's facets (one `$in` on an index: store.py), skips
   searches saved after the change was counted (`change <= alerts_after`: the listing was stored
   before the search, so a job still queued or running when the search was saved never alerts it;
   a job or search from before the count alerts as it always did), the agent's own, users who block the agent or are blocked by them (sheda_rt/blocks: neither
   reaches the other) and deactivated users, and checks each candidate's full filters with the
   plan GET /properties would run (matcher.py).
3. Per user (several of their searches may match: one alert; `instant` wins over `daily`), the
   alert document `<user>:<listing>` is inserted (all of a job's in one unordered write): the
   unique `_id` is the guard that makes one alert per user per listing across every change, job
   and process. The process that inserted it
   delivers it; a job that finds it there already does nothing, unless it is its own from an
   attempt that died before delivering (then it delivers now).
4. `instant`: a stored notification (kind `saved_search.match`), live on the user's sockets and
   event stream (`{"type": "notification", ...}`), and a push to their devices through the push
   dispatcher (category `listings`, keyed by listing, so a retry never pushes twice).
   `daily`: the alert waits as `queued`; the user's digest job for that day is armed (AlertDigests).
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from pydantic import ValidationError

from sheda_rt.jobs.periodic import PeriodicTrigger
from sheda_rt.listings.money import format_money
from sheda_rt.push.provider import Notification
from sheda_rt.reminders.digest import digest_recipient, hold_for_quiet_hours
from sheda_rt.saved_searches.matcher import UnknownFilter
from sheda_rt.saved_searches.store import AlertStore

if TYPE_CHECKING:
    from sheda_rt.accounts.users_store import UserStore
    from sheda_rt.blocks.service import BlockService
    from sheda_rt.clock import Clock
    from sheda_rt.jobs.runner import JobRunner
    from sheda_rt.listings.store import PropertyStore
    from sheda_rt.notifications.service import NotificationService
    from sheda_rt.push.dispatch import Dispatcher
    from sheda_rt.push.service import PushService
    from sheda_rt.reminders.email import EmailSender
    from sheda_rt.saved_searches.service import SavedSearchService
    from sheda_rt.saved_searches.store import PendingAlerts, SavedSearchStore

log = logging.getLogger("sheda.saved_searches")

MATCH_KIND = "saved_search.match"
DIGEST_KIND = "saved_search.digest"
REASONS = ("new", "relisted", "price_drop")
DIGEST_MAX_ITEMS = 200
DELIVERY_CONCURRENCY = 16
SWEEP_SECONDS = 60.0  # how often each process looks for listing changes whose match job was never queued
SWEEP_BATCH = 200


def _price(doc: dict) -> str:
    return "₦" + format(int(round(float(format_money(doc["price"])))), ",")


def describe(doc: dict, reason: str) -> str:
    """One line about a matching listing, as the notification and the digest say it."""
    what = {"new": "New", "relisted": "Back on the market", "price_drop": "Price drop"}[reason]
    return f"{what}: “{doc['title']}”, {_price(doc)}, {doc['location']}"


class ListingAlerts:
    def __init__(self, *, runner: JobRunner, searches: SavedSearchStore, saved: SavedSearchService, alerts: AlertStore,
                 listings: PropertyStore, notifications: NotificationService, push: Dispatcher | None, digests: AlertDigests,
                 clock: Clock, push_ttl_seconds: float, pending: PendingAlerts, users: UserStore, blocks: BlockService | None):
        self.runner = runner
        self.searches = searches
        self.saved = saved  # the filters' matcher
        self.alerts = alerts
        self.listings = listings
        self.notifications = notifications
        self.push = push  # the push dispatcher; None: no pushes
        self.digests = digests
        self.clock = clock
        self.push_ttl = timedelta(seconds=push_ttl_seconds)
        self.pending = pending  # the listings' alert_pending markers
        self.users = users  # deactivated users are not alerted
        self.blocks = blocks  # None: no blocking in this configuration
        runner.register(MATCH_KIND, self.run)

    # ---- from the listings service ------------------------------------------------
    async def listing_changed(self, listing: dict, reason: str) -> None:
        """Record the change as a job (awaited: durable before the caller answers), then run it here
        in the background. Never raises: the listing is stored whatever happens to its alerts."""
        try:
            payload, key = self.job_of(listing, reason, await self.searches.next_change())
            await self.runner.enqueue(MATCH_KIND, payload, key=key)
        except Exception as exc:  # the marker stays on the listing: the sweep queues the job
            log.warning(json.dumps({"event": "saved_search_match_not_queued", "property_id": listing["_id"], "error": repr(exc)[:200]}))
            return
        if payload["marker"]:
            try:
                await self.pending.clear(listing["_id"], payload["marker"])
            except Exception as exc:  # the sweep clears it (the job exists: queueing it again adds nothing)
                log.warning(json.dumps({"event": "saved_search_marker_not_cleared", "property_id": listing["_id"],
                                        "error": repr(exc)[:200]}))
        self.runner.run_soon(MATCH_KIND, key, payload)

    @staticmethod
    def job_of(listing: dict, reason: str, change: int) -> tuple[dict, str]:
        """(payload, key) of a change's match job: named by the listing's marker (the sweep names it alike), or by
        its revision for a listing written without one. `change`: the change's number (store.py CHANGES)."""
        marker = listing.get("alert_pending")
        marker_id = marker.get("id") if isinstance(marker, dict) and isinstance(marker.get("id"), str) else None
        payload = {"property_id": listing["_id"], "rev": listing.get("rev", 1), "reason": reason, "marker": marker_id,
                   "change": change}
        return payload, f"{MATCH_KIND}:{listing['_id']}:{marker_id or listing.get('rev', 1)}"

    async def drain(self) -> None:
        await self.runner.settle(MATCH_KIND)

    # ---- the job ------------------------------------------------------------------
    async def run(self, job: dict) -> dict:
        p = job["payload"]
        doc = await self.listings.get(p["property_id"])
        if doc is None or not doc.get("is_active", True) or doc.get("status") != "available":
            return {"outcome": "not_listed"}
        chosen: dict[int, dict] = {}  # user -> the search that alerts them (an instant one when any)
        candidates = 0
        change = p.get("change")  # None: a job queued before changes were counted
        cursor = self.searches.alerting(doc.get("facets") or [])
        try:
            async for search in cursor:
                candidates += 1
                uid = search["user_id"]
                if uid == doc["agent_id"] or search.get("alert") not in ("instant", "daily"):
                    continue
                if isinstance(change, int) and isinstance(search.get("alerts_after"), int) and change <= search["alerts_after"]:
                    continue  # the change was stored before the search was saved
                if uid in chosen and (chosen[uid]["alert"] == "instant" or search["alert"] == "daily"):
                    continue
                try:
                    if self.saved.matches(search["query"], doc, search.get("match_extra"), (search.get("guided") or {}).get("where")):
                        chosen[uid] = search
                except (ValidationError, UnknownFilter, ValueError) as exc:  # a search stored under older rules: never matches
                    log.warning(json.dumps({"event": "saved_search_unmatchable", "saved_search_id": search["_id"],
                                            "error": repr(exc)[:200]}))
        finally:
            await cursor.close()
        await self._drop_unreachable(chosen, doc["agent_id"])
        now = self.clock.now()
        claimed = await self.alerts.claim_many([{
            "_id": AlertStore.key(uid, doc["_id"]), "user_id": uid, "property_id": doc["_id"], "saved_search_id": search["_id"],
            "search_name": search["name"], "reason": p["reason"], "mode": search["alert"],
            "status": "pending" if search["alert"] == "instant" else "queued", "job": job["_id"], "created_at": now}
            for uid, search in chosen.items()])
        # Deliveries overlap (bounded): the event stream stores concurrent events in one group commit, so a
        # listing that alerts hundreds of users costs a few batches, not hundreds of round trips in a row.
        gate = asyncio.Semaphore(DELIVERY_CONCURRENCY)

        async def deliver(alert: dict) -> bool:
            async with gate:
                return await self._deliver(job, doc, alert)

        alerted = sum(await asyncio.gather(*(deliver(a) for a in claimed)))
        return {"outcome": "matched", "candidates": candidates, "matched": len(chosen), "alerted": alerted}

    async def _drop_unreachable(self, chosen: dict[int, dict], agent_id: int) -> None:
        """No alert (and no claim: should that change, a later change of the listing alerts them) for a user who blocks
        the agent or is blocked by them, as no message passes between them, nor for a deactivated or deleted user."""
        if not chosen:
            return
        if self.blocks is not None:
            related = (await self.blocks.relations_of([agent_id])).get(agent_id, frozenset())
            for uid in [u for u in chosen if u in related]:
                del chosen[uid]
        ids, users = list(chosen), {}
        for i in range(0, len(ids), 200):  # the embedded database matches an $in by walking its list: chunks
            users.update(await self.users.get_many(ids[i:i + 200]))
        for uid in [u for u in chosen if u not in users or not users[u].get("is_active", True)]:
            del chosen[uid]

    async def _deliver(self, job: dict, doc: dict, alert: dict) -> bool:
        if alert.get("existing") and alert.get("job") != job["_id"]:
            return False  # alerted already (another change, job or process): once per user per listing
        uid, pid = alert["user_id"], doc["_id"]
        now = self.clock.now()
        if alert["status"] == "queued":
            await self.digests.arm(uid)
            return True
        if alert["status"] != "pending":
            return False  # this job's own, delivered by an attempt that died before it finished
        note = await self.notifications.notify(uid, "saved_search.match", f"New match for “{alert['search_name']}”",
                                               describe(doc, alert["reason"]),
                                               {"property_id": pid, "saved_search_id": alert["saved_search_id"],
                                                "reason": alert["reason"]}, push=False)  # pushed below, once per listing
        pushes = 0
        if self.push is not None:
            push = Notification(title=f"New match for “{alert['search_name']}”", body=describe(doc, alert["reason"]), badge=0,
                                collapse_key=hashlib.sha256(f"saved_search:{pid}".encode()).hexdigest()[:32],
                                data={"type": "saved_search.match", "property_id": pid, "saved_search_id": alert["saved_search_id"],
                                      "reason": alert["reason"], "path": f"/properties/{pid}"})
            try:
                pushes = await self.push.notify(uid, "listings", push, f"saved_search:{pid}", now + self.push_ttl)
            except Exception as exc:  # the stored notification is the record; the push is extra reach
                log.warning(json.dumps({"event": "saved_search_push_failed", "user_id": uid, "error": repr(exc)[:200]}))
        await self.alerts.settle(uid, alert["_id"], "pending", {"status": "sent", "notification_id": note["id"], "sent_at": now,
                                                                "pushes": pushes})
        return True


class PendingAlertSweep(PeriodicTrigger):
    """Queues the match job of every listing change whose marker is still there: the process that wrote the change
    died before queueing the job (or the queue was away then), or before clearing the marker. The job's key is the
    one the writer would have used, so a change whose job exists already adds nothing; once the job is queued the
    marker goes."""

    name = "saved_search_sweep"

    def __init__(self, alerts: ListingAlerts, pending: PendingAlerts, runner: JobRunner, interval_seconds: float = SWEEP_SECONDS,
                 batch: int = SWEEP_BATCH):
        super().__init__(interval_seconds * 1000)
        self.alerts = alerts
        self.pending = pending
        self.runner = runner
        self.batch = batch

    async def run(self) -> int:
        queued = 0
        for doc in await self.pending.left(self.batch):
            marker = doc.get("alert_pending")
            if not isinstance(marker, dict) or marker.get("reason") not in REASONS or not isinstance(marker.get("id"), str):
                await self.pending.clear(doc["_id"], marker.get("id") if isinstance(marker, dict) else None)
                continue
            payload, key = self.alerts.job_of(doc, marker["reason"], await self.alerts.searches.next_change())
            _job, created = await self.runner.enqueue(MATCH_KIND, payload, key=key)
            if created:
                queued += 1
                log.info(json.dumps({"event": "saved_search_match_swept", "job": key}))
            await self.pending.clear(doc["_id"], marker["id"])
        return queued


class AlertDigests:
    """`daily` alerts: one email a day with the day's matches, at SAVED_SEARCH_DIGEST_HOUR (UTC).

    The first queued alert of a user arms their digest job for the next such hour (key
    `saved_search.digest:<user>:<date>`, so every later alert of that day finds it armed). The job
    is the chat digests' mechanism (sheda_rt/reminders/digest.py): nothing when the user turned
    `listings` emails off (their queued alerts are dropped) or has no address, held through quiet
    hours, sent through the one EmailSender with the unsubscribe link. It lists what is queued when
    it runs (at most DIGEST_MAX_ITEMS; more: the next day's digest) and marks those `emailed`.
    A process killed between the email and that mark sends it again when the job is retried.
    """

    def __init__(self, *, runner: JobRunner, alerts: AlertStore, searches: SavedSearchStore, listings: PropertyStore, users: UserStore,
                 preferences: PushService, email: EmailSender, clock: Clock, hour_utc: int, blocks: BlockService | None = None):
        self.runner = runner
        self.blocks = blocks  # a block made since a match was queued leaves that agent's listings out of the email
        self.alerts = alerts
        self.searches = searches  # a queued match of a search deleted or switched off since is not emailed
        self.listings = listings
        self.users = users
        self.preferences = preferences
        self.email = email
        self.clock = clock
        self.hour_utc = hour_utc
        self._armed: set[str] = set()  # digest job keys this process enqueued (a later day has another key)
        runner.register(DIGEST_KIND, self.run)

    def next_run(self, now: datetime) -> datetime:
        due = now.replace(hour=self.hour_utc, minute=0, second=0, microsecond=0)
        return due if due > now else due + timedelta(days=1)

    async def arm(self, user_id: int) -> None:
        """The user's digest job of the next digest hour exists (idempotent by its key); a key this
        process armed already is not written again."""
        due = self.next_run(self.clock.now())
        key = f"{DIGEST_KIND}:{user_id}:{due.date().isoformat()}"
        if key in self._armed:
            return
        await self.runner.enqueue(DIGEST_KIND, {"user_id": user_id}, key=key, run_at=due)
        if len(self._armed) > 100_000:
            self._armed.clear()
        self._armed.add(key)

    async def run(self, job: dict) -> dict:
        user_id = job["payload"]["user_id"]
        now = self.clock.now()
        user, prefs, outcome = await digest_recipient(self.users, self.preferences, user_id, "listings")
        queued = await self.alerts.queued(user_id, DIGEST_MAX_ITEMS)
        more = len(queued) >= DIGEST_MAX_ITEMS  # perhaps more than one email's worth: tomorrow's takes the rest
        if outcome is not None:
            await self.alerts.mark(user_id, [a["_id"] for a in queued], "queued", {"status": "dropped", "dropped_at": now})
            return outcome
        hold_for_quiet_hours(prefs, now)
        alerting = await self.searches.alerting_ids(user_id)
        gone = [a["_id"] for a in queued if a["saved_search_id"] not in alerting]
        if gone:  # deleting a search, or PATCH alert off, stops its alerts, the ones waiting for this email too
            await self.alerts.mark(user_id, gone, "queued", {"status": "dropped", "dropped_at": now})
            queued = [a for a in queued if a["saved_search_id"] in alerting]
        if not queued:
            if more:
                await self.arm(user_id)
            return {"outcome": "nothing_queued"}
        listings = await self.listings.get_many(a["property_id"] for a in queued)
        related = (await self.blocks.relations_of([user_id])).get(user_id, frozenset()) if self.blocks is not None else frozenset()
        lines = []
        for a in queued:
            doc = listings.get(a["property_id"])
            if doc is None or not doc.get("is_active", True) or doc.get("status") != "available":
                continue  # gone since it matched: not worth an email line
            if doc["agent_id"] in related:
                continue  # blocked either way since it matched, as no alert is made across a block
            lines.append(f"• {describe(doc, a['reason'])}\n  (your search “{a['search_name']}”, listing #{doc['_id']})")
        if lines:
            subject = f"{len(lines)} new match{'es' if len(lines) != 1 else ''} for your saved searches"
            body = "Today's listings that match your saved searches:\n\n" + "\n\n".join(lines) + "\n\nOpen the app to see them."
            await self.email.send(user, "listings", subject, body)
        await self.alerts.mark(user_id, [a["_id"] for a in queued], "queued", {"status": "emailed", "emailed_at": now})
        if more:
            await self.arm(user_id)
        log.info(json.dumps({"event": "saved_search_digest", "user_id": user_id, "matches": len(lines)}))
        return {"outcome": "sent" if lines else "nothing_listed", "matches": len(lines)}
