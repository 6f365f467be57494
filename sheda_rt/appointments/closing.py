"""Open viewings close when nobody can take part in them any more: their property was rented or sold (a
contract became active), or the account of one of their parties was deactivated (DELETE /users/me, an
admin's PATCH /admin/users/{id} {"is_active": false}, a moderator's `deactivate_user`), or an agent switched
to client or builder (then only the viewings they are the agent of). Every open
(pending or confirmed) viewing still ahead of such a property or account is cancelled with
`cancelled_by: null` and a `cancel_reason` ("property_unavailable", "agent_inactive", "client_inactive"),
its slot freed and its reminders cancelled (a reminder of a viewing that is no longer confirmed is never
sent anyway); the other party gets `appointment.cancelled` and a notification saying why. The property's
new tenant or buyer (the client of the contract that took it) keeps their viewings.

One durable job of the queue (sheda_rt/jobs/) per change, kind `appointments.close`, key
`appointments.close:<property|user>:<id>:<nonce>`, queued *before* the change's write, due JOB_DELAY later,
and brought forward and run after it (JobRunner.run_here_after; the request waits for it up to WAIT_SECONDS), as listings follow
their agent's account (sheda_rt/listings/agent_status.py). It closes what the property or account is
*when it runs*: a job whose change did not happen (a contract that lost its property) closes nothing, and
running again closes nothing twice. A viewing closed by a run that died before telling the other party
keeps `close_notice_pending` (a field of closed viewings only), and the job's next run (a retry) tells them.

The viewings of a property are found among its agent's open viewings, a user's among their own, on index
`parties_status` (explain(): IXSCAN, keys examined = that party's open viewings): no index of its own,
nothing added to any write.
"""
from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sheda_rt.accounts.users_store import UserStore
    from sheda_rt.appointments.service import AppointmentService
    from sheda_rt.clock import Clock
    from sheda_rt.contracts.store import ContractStore
    from sheda_rt.jobs.runner import JobRunner
    from sheda_rt.listings.store import PropertyStore


KIND = "appointments.close"
JOB_DELAY = timedelta(seconds=30)  # the crash net: the job queued before the change's write falls due this much later
WAIT_SECONDS = 3.0


class ViewingsClosing:
    def __init__(self, *, runner: JobRunner, appointments: AppointmentService, properties: PropertyStore,
                 contracts: ContractStore, users: UserStore, clock: Clock, wait_seconds: float = WAIT_SECONDS):
        self.runner = runner
        self.appointments = appointments
        self.properties = properties
        self.contracts = contracts
        self.users = users
        self.clock = clock
        self.wait_seconds = wait_seconds
        runner.register(KIND, self.run)

    # ---- from the contracts and accounts services ------------------------------
    async def changing(self, *, property_id: int | None = None, user_id: int | None = None) -> str:
        """Before the write that may end a property's or an account's viewings: their closing job, due later."""
        what, ident = ("property", property_id) if property_id is not None else ("user", user_id)
        key = f"{KIND}:{what}:{ident}:{uuid.uuid4().hex[:12]}"
        await self.runner.enqueue(KIND, {f"{what}_id": ident}, key=key, run_at=self.clock.now() + JOB_DELAY)
        return key

    async def changed(self, key: str) -> None:
        """After the write: run the job now, here, waiting for it up to wait_seconds. Never raises."""
        await self.runner.run_here_after(KIND, key, self.wait_seconds)

    async def drain(self) -> None:
        await self.runner.settle(KIND)

    # ---- the job -----------------------------------------------------------------
    async def run(self, job: dict) -> dict:
        payload = job["payload"]
        recover = job.get("attempts", 1) > 1  # an earlier run failed: maybe after closing, before telling
        if "property_id" in payload:
            return await self._property(payload["property_id"], recover)
        return await self._user(payload["user_id"], recover)

    async def _property(self, property_id: int, recover: bool) -> dict:
        prop = await self.properties.get(property_id)
        if prop is None or prop.get("status", "available") == "available":
            return {"outcome": "available", "closed": 0}
        contract = await self.contracts.get(prop["contract_id"]) if prop.get("contract_id") else None
        keep = contract["client_id"] if contract is not None else None
        closed = await self.appointments.close_open(prop["agent_id"], "property_unavailable", property_id=property_id,
                                                    keep_client=keep, recover=recover)
        return {"outcome": prop["status"], "closed": closed}

    async def _user(self, user_id: int, recover: bool) -> dict:
        user = await self.users.get(user_id)
        if user is not None and user.get("is_active", True):
            if user.get("user_type") == "agent":
                return {"outcome": "active", "closed": 0}
            # An agent who switched to client or builder: nobody can answer their viewings as the agent any
            # more (their listings left the market with them); those where they are the client stay.
            closed = await self.appointments.close_open(user_id, "agent_inactive", as_agent=True, recover=recover)
            return {"outcome": "not_agent", "closed": closed}
        closed = await self.appointments.close_open(user_id, None, recover=recover)
        return {"outcome": "inactive", "closed": closed}


class AccountFollowers:
    """What the accounts service calls around a change of an account's is_active or user_type (its
    `listings_follow`): the agent's listings follow the account (sheda_rt/listings/agent_status.py), and so do
    a builder's projects (`add`ed by the builders' install: sheda_rt/builders/builder_status.py), and the viewings
    of a deactivated account close. Each queues its own durable job before the write and runs it after."""

    def __init__(self, listings, viewings: ViewingsClosing):
        self.followers = [listings]  # AccountFollow instances (listings/agent_status.py)
        self.viewings = viewings

    def add(self, follower) -> None:
        self.followers.append(follower)

    async def changing(self, user_id: int) -> tuple[str, ...]:
        keys = [await f.changing(user_id) for f in self.followers]
        return (*keys, await self.viewings.changing(user_id=user_id))

    async def changed(self, keys: tuple[str, ...]) -> None:
        await asyncio.gather(*(f.changed(k) for f, k in zip(self.followers, keys)), self.viewings.changed(keys[-1]))
