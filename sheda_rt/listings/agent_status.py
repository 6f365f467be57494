"""An agent's listings follow their account: deactivated (DELETE /users/me, an admin's PATCH
/admin/users/{id} {"is_active": false}, a moderator's `deactivate_user`) or no longer an agent
(switch-account to client or builder), every listed listing of theirs is unlisted with `hidden_reason`
"agent_inactive" (404 to everyone but admins, out of every search, the guided search's catalog,
favourites and saved-search alerts, as an unlisted one is); reactivated by an admin, or switched back to
agent, exactly those are listed again. Listings the agent or staff unlisted stay unlisted.

One durable job of the queue (sheda_rt/jobs/) per change of the account, kind `listings.agent_status`,
key `listings.agent_status:<user>:<nonce>`. It makes the listings match the account *as it is when the
job runs* (read again after its writes: a change racing the job is caught up by the same run), so jobs
may run in any order, again after a crash, or for nothing. The accounts service queues it *before* the
account's write, due JOB_DELAY later, and after the write brings it forward and runs it here (the request
waits for it up to WAIT_SECONDS, then it goes on in the background). A process dying between the account's
write and the run leaves the job pending: any process runs it when it falls due.

Accounts deactivated before listings followed them (df15726) kept their listings listed: the first start of
this version queues the same job, due at once, for each inactive user with a listing still listed
(`backfill_inactive`, once: a marker in `meta`), key `listings.agent_status:<user>:backfill`.
"""
from __future__ import annotations

import asyncio
import json
import logging
import uuid
from datetime import timedelta
from typing import TYPE_CHECKING

from pymongo.errors import DuplicateKeyError

from sheda_rt.jobs.runner import RetryLater

if TYPE_CHECKING:
    from sheda_rt.accounts.users_store import UserStore
    from sheda_rt.clock import Clock
    from sheda_rt.jobs.runner import JobRunner
    from sheda_rt.listings.service import PropertyService

log = logging.getLogger("sheda.listings")

KIND = "listings.agent_status"
JOB_DELAY = timedelta(seconds=30)  # the crash net: the job queued before the account's write falls due this much later
WAIT_SECONDS = 3.0  # the request waits this long for its run; a larger walk goes on in the background
ROUNDS = 4
BACKFILL_MARKER = "listings.agent_status.backfill"  # in `meta`: inactive accounts' listings were queued to follow


class AgentListingsFollow:
    def __init__(self, *, runner: JobRunner, listings: PropertyService, users: UserStore, clock: Clock, meta=None,
                 wait_seconds: float = WAIT_SECONDS):
        self.runner = runner
        self.listings = listings
        self.users = users
        self.clock = clock
        self.meta = meta  # the `meta` collection: the backfill's marker (None: no backfill)
        self.wait_seconds = wait_seconds
        runner.register(KIND, self.run)

    # ---- from the accounts service ---------------------------------------------
    async def changing(self, user_id: int) -> str:
        """Before the account's is_active is written: the job that makes the listings follow, due later."""
        key = f"{KIND}:{user_id}:{uuid.uuid4().hex[:12]}"
        await self.runner.enqueue(KIND, {"user_id": user_id}, key=key, run_at=self.clock.now() + JOB_DELAY)
        return key

    async def changed(self, key: str) -> None:
        """After the write: run the job now, here; waits for it up to wait_seconds. Never raises (the account is
        changed whatever happens here; the queued job is the fallback)."""
        await self.runner.run_here_after(KIND, key, self.wait_seconds)

    async def drain(self) -> None:
        await self.runner.settle(KIND)

    # ---- at a start ----------------------------------------------------------------
    async def backfill_inactive(self, batch: int = 200) -> int:
        """Once (BACKFILL_MARKER): queue the job, due now, for every inactive user with a listing still listed (an
        account deactivated before its listings followed it); any process's runner runs them. One pass over the
        users (the inactive ones' ids, `batch` at a time), one read on index agent_newest per inactive user. A start
        cut short leaves no marker: the next one queues again, under the same keys (nothing twice). Returns how
        many were queued."""
        if self.meta is None or await self.meta.find_one({"_id": BACKFILL_MARKER}) is not None:
            return 0
        queued = 0
        async for user in self.users.inactive_ids(batch):
            user_id = user["_id"]
            if await self.listings.store.agent_listing_ids(user_id, limit=1):
                _, created = await self.runner.enqueue(KIND, {"user_id": user_id}, key=f"{KIND}:{user_id}:backfill")
                queued += int(created)
        try:
            await self.meta.update_one({"_id": BACKFILL_MARKER}, {"$set": {"done": True}}, upsert=True)
        except DuplicateKeyError:  # another process's upsert won
            pass
        if queued:
            log.info(json.dumps({"event": "agent_listings_backfill", "queued": queued}))
        return queued

    # ---- the job -----------------------------------------------------------------
    async def _active(self, user_id: int) -> bool:
        """The listings are on the market while their agent's account is active and still an agent
        (switch-account to client or builder takes them along, switching back brings them back)."""
        user = await self.users.get(user_id)
        return user is not None and user.get("is_active", True) and user.get("user_type") == "agent"

    async def run(self, job: dict) -> dict:
        user_id = job["payload"]["user_id"]
        active = await self._active(user_id)
        for _ in range(ROUNDS):
            if active:
                count = await self.listings.restore_agent_listings(user_id)
            else:
                count = await self.listings.hide_agent_listings(user_id)
            now_active = await self._active(user_id)
            if now_active == active:  # nothing changed the account while we wrote: the listings follow it
                return {"outcome": "listed" if active else "hidden", "listings": count}
            active = now_active
        raise RetryLater(5, "the account keeps changing")
