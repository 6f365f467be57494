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

A builder's published projects follow their account the same way, through this same class (AccountFollow) with a
job kind of their own, `projects.builder_status` (sheda_rt/builders/builder_status.py).
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


class AccountFollow:
    """What an account owns on the market following the account: one durable job kind per kind of thing (see the
    module's text). Shared by the agents' listings (AgentListingsFollow, below) and the builders' projects
    (sheda_rt/builders/builder_status.py): each says its job kind, the account type that keeps its things
    listed, how to hide and restore one account's things, and which accounts a first start catches up."""

    kind: str = KIND
    user_type: str = "agent"
    marker: str = BACKFILL_MARKER
    counted: str = "listings"  # the job result's name for how many changed

    def __init__(self, *, runner: JobRunner, users: UserStore, clock: Clock, meta=None, wait_seconds: float = WAIT_SECONDS):
        self.runner = runner
        self.users = users
        self.clock = clock
        self.meta = meta  # the `meta` collection: the backfill's marker (None: no backfill)
        self.wait_seconds = wait_seconds
        runner.register(self.kind, self.run)

    # ---- what a kind of thing says -----------------------------------------------
    async def hide(self, user_id: int) -> int:
        raise NotImplementedError

    async def restore(self, user_id: int) -> int:
        raise NotImplementedError

    async def behind(self, batch: int):
        """The ids of the accounts a first start queues the job for (their things may not follow them yet)."""
        raise NotImplementedError
        yield

    # ---- from the accounts service ---------------------------------------------
    async def changing(self, user_id: int) -> str:
        """Before the account's is_active (or user_type) is written: the job that makes its things follow, due later."""
        key = f"{self.kind}:{user_id}:{uuid.uuid4().hex[:12]}"
        await self.runner.enqueue(self.kind, {"user_id": user_id}, key=key, run_at=self.clock.now() + JOB_DELAY)
        return key

    async def changed(self, key: str) -> None:
        """After the write: run the job now, here; waits for it up to wait_seconds. Never raises (the account is
        changed whatever happens here; the queued job is the fallback)."""
        await self.runner.run_here_after(self.kind, key, self.wait_seconds)

    async def drain(self) -> None:
        await self.runner.settle(self.kind)

    # ---- at a start ----------------------------------------------------------------
    async def backfill_inactive(self, batch: int = 200) -> int:
        """Once (the marker in `meta`): queue the job, due now, for every account `behind` names (one whose things
        stayed listed before they followed it); any process's runner runs them. A start cut short leaves no marker:
        the next one queues again, under the same keys (nothing twice). Returns how many were queued."""
        if self.meta is None or await self.meta.find_one({"_id": self.marker}) is not None:
            return 0
        queued = 0
        async for user_id in self.behind(batch):
            _, created = await self.runner.enqueue(self.kind, {"user_id": user_id}, key=f"{self.kind}:{user_id}:backfill")
            queued += int(created)
        try:
            await self.meta.update_one({"_id": self.marker}, {"$set": {"done": True}}, upsert=True)
        except DuplicateKeyError:  # another process's upsert won
            pass
        if queued:
            log.info(json.dumps({"event": "account_follow_backfill", "kind": self.kind, "queued": queued}))
        return queued

    # ---- the job -----------------------------------------------------------------
    async def _active(self, user_id: int) -> bool:
        """The things are on the market while their account is active and still of the type (switch-account to
        another type takes them along, switching back brings them back)."""
        user = await self.users.get(user_id)
        return user is not None and user.get("is_active", True) and user.get("user_type") == self.user_type

    async def run(self, job: dict) -> dict:
        user_id = job["payload"]["user_id"]
        active = await self._active(user_id)
        for _ in range(ROUNDS):
            count = await (self.restore(user_id) if active else self.hide(user_id))
            now_active = await self._active(user_id)
            if now_active == active:  # nothing changed the account while we wrote: the things follow it
                return {"outcome": "listed" if active else "hidden", self.counted: count}
            active = now_active
        raise RetryLater(5, "the account keeps changing")


class AgentListingsFollow(AccountFollow):
    """An agent's listings (kind listings.agent_status)."""

    def __init__(self, *, runner: JobRunner, listings: PropertyService, users: UserStore, clock: Clock, meta=None,
                 wait_seconds: float = WAIT_SECONDS):
        self.listings = listings
        super().__init__(runner=runner, users=users, clock=clock, meta=meta, wait_seconds=wait_seconds)

    async def hide(self, user_id: int) -> int:
        return await self.listings.hide_agent_listings(user_id)

    async def restore(self, user_id: int) -> int:
        return await self.listings.restore_agent_listings(user_id)

    async def behind(self, batch: int = 200):
        """Inactive users with a listing still listed: one pass over the users (the inactive ones' ids, `batch` at
        a time), one read on index agent_newest per inactive user."""
        async for user in self.users.inactive_ids(batch):
            if await self.listings.store.agent_listing_ids(user["_id"], limit=1):
                yield user["_id"]
