"""A builder's published projects follow their account, as an agent's listings do (sheda_rt/listings/agent_status.py,
whose AccountFollow this is, with a job kind of its own): deactivated (DELETE /users/me, an admin's PATCH
/admin/users/{id} {"is_active": false}, a moderator's `deactivate_user`) or no longer a builder (switch-account to
client or agent), every published project of theirs is marked `hidden_reason` "builder_inactive": out of GET
/projects and the builder's page, and 404 (project, units, plans, progress, 3D models, its channel) to all but its
builder and admins, as a draft is. `state` stays published; reactivated by an admin, or switched back to builder,
exactly those come back.

Durable job kind `projects.builder_status`, key `projects.builder_status:<user>:<nonce>`, queued before the
account's write and run after it (AccountFollow). Projects published before this version whose builder had already
left: the first start queues the job, due at once, for each such builder (`backfill_inactive`, once: marker
`projects.builder_status.backfill` in `meta`), key `projects.builder_status:<user>:backfill`.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from sheda_rt.listings.agent_status import WAIT_SECONDS, AccountFollow

if TYPE_CHECKING:
    from sheda_rt.accounts.users_store import UserStore
    from sheda_rt.builders.service import ProjectService
    from sheda_rt.clock import Clock
    from sheda_rt.jobs.runner import JobRunner


class BuilderProjectsFollow(AccountFollow):
    kind = "projects.builder_status"
    user_type = "builder"
    marker = "projects.builder_status.backfill"
    counted = "projects"

    def __init__(self, *, runner: JobRunner, projects: ProjectService, users: UserStore, clock: Clock, meta=None,
                 wait_seconds: float = WAIT_SECONDS):
        self.projects = projects
        super().__init__(runner=runner, users=users, clock=clock, meta=meta, wait_seconds=wait_seconds)

    async def hide(self, user_id: int) -> int:
        return await self.projects.hide_builder_projects(user_id)

    async def restore(self, user_id: int) -> int:
        return await self.projects.restore_builder_projects(user_id)

    async def behind(self, batch: int = 200):
        """Builders of a published project still listed whose account is deactivated or of another type: one pass
        over the published projects' builder ids, one account read per builder."""
        seen: set[int] = set()
        async for doc in self.projects.store.published_builder_ids(batch):
            builder_id = doc["builder_id"]
            if builder_id in seen:
                continue
            seen.add(builder_id)
            if not await self._active(builder_id):
                yield builder_id
