"""/api/v1/admin/jobs: the durable job queue as admins see it (failed jobs, what is pending)."""
from __future__ import annotations

from handlers.base import APIHandler
from handlers.routing import endpoint, route
from sheda_rt.accounts.auth import ADMIN
from sheda_rt.jobs.models import JobPage, JobQuery


class AdminJobsHandler(APIHandler):
    @endpoint("List background jobs (most recent first)", auth=ADMIN, query=JobQuery, response=JobPage, errors=(401, 403, 422),
              tags=("admin",))
    async def get(self, query: JobQuery):
        """`?status=failed` lists the jobs that gave up after JOB_MAX_ATTEMPTS attempts, each with its
        `last_error` and `attempts` (the default); `pending`, `running`, `done`, `cancelled` list the others. Sorted by `run_at` descending
        (for finished jobs, when they ended). Cursor pagination: `{"items": [...], "next_cursor": ...}`."""
        return await self.ctx.job_runner.admin_page(query)


default_handlers = [
    route("/api/v1/admin/jobs", AdminJobsHandler),
]
