"""What admins see of the job queue (GET /api/v1/admin/jobs)."""
from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

from sheda_rt.jobs.store import STATUSES
from sheda_rt.pagination import PageQuery
from sheda_rt.responses import Page, ResponseModel, Timestamp

JobStatus = Literal["pending", "running", "done", "failed", "cancelled"]
assert set(JobStatus.__args__) == set(STATUSES)


class JobQuery(PageQuery):
    model_config = ConfigDict(extra="forbid")
    status: JobStatus = Field("failed", description="Jobs in this state; failed ones gave up after JOB_MAX_ATTEMPTS attempts")


class JobLease(BaseModel):
    owner: str
    expires: Timestamp


class JobOut(ResponseModel):
    key: str = Field(description="The job's unique key: enqueuing the same key again never makes a second job")
    kind: str
    status: JobStatus
    attempts: int
    run_at: Timestamp = Field(description="pending: when it is due; running: when its lease expires; otherwise when it ended")
    created_at: Timestamp
    updated_at: Timestamp
    finished_at: Optional[Timestamp] = None
    last_error: Optional[str] = None
    lease: Optional[JobLease] = None
    payload: dict[str, Any]


class JobPage(Page[JobOut]):
    pass


def job_out(doc: dict) -> dict:
    out = {"key": doc["_id"], "kind": doc["kind"], "status": doc["status"], "attempts": doc.get("attempts", 0),
           "run_at": doc["run_at"], "created_at": doc["created_at"], "updated_at": doc.get("updated_at", doc["created_at"]),
           "finished_at": doc.get("finished_at"), "last_error": doc.get("last_error"), "payload": doc.get("payload") or {}}
    if doc.get("lease"):
        out["lease"] = {"owner": doc["lease"]["owner"], "expires": doc["lease"]["expires"]}
    return out
