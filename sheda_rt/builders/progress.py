"""Following construction: a project's progress phases and the builder's construction updates.

- Progress is one document per project in `project_progress` (`_id` = the project id) with
  the five phases (foundation, structure, roofing, finishing, handover), each with a percent
  complete and optional start/end dates. A PUT sets the phases it names and keeps the others.
- A construction update (`construction_updates`, index `(project_id, _id)`) is a title, a
  body, optionally a phase with its new percent (which also moves that phase) and images.
- Who hears about it: every client with an open or completed booking in the project gets a
  stored notification and a durable `project.update` event (NotificationService, through the
  event stream: a client that was offline replays it); whoever watches channel `project:<id>`
  gets an ephemeral `project.updated` (changes ["update"] or ["progress"]).
- Published projects' progress and updates are public, like the project; drafts' only to
  their builder and admins. Only the project's builder (builder scope) or an admin writes.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from pymongo import ASCENDING, DESCENDING, IndexModel

from sheda_rt.builders.booking_models import PHASES
from sheda_rt.clock import format_ts
from sheda_rt.pagination import paginate

if TYPE_CHECKING:  # types only: the context wires these in
    from sheda_rt.builders.bookings import BookingStore
    from sheda_rt.builders.service import ProjectService
    from sheda_rt.clock import Clock
    from sheda_rt.notifications.service import NotificationService

#: Bookings whose clients follow the project's construction.
FOLLOWING = ["reserved", "active", "completed"]


class ProgressStore:
    def __init__(self, db):
        self.col = db["project_progress"]

    async def ensure_indexes(self):
        return None

    async def get(self, project_id: int) -> dict | None:
        return await self.col.find_one({"_id": project_id})

    async def set_phases(self, project_id: int, phases: dict[str, dict], now) -> dict:
        """Set the named phases (one `$set` per phase: a racing PUT of other phases keeps its own)."""
        fields = {f"phases.{name}": value for name, value in phases.items()}
        await self.col.update_one({"_id": project_id}, {"$set": {**fields, "updated_at": now}}, upsert=True)
        return await self.get(project_id)


class UpdateStore:
    INDEXES = [IndexModel([("project_id", ASCENDING), ("_id", DESCENDING)], name="project_newest")]

    def __init__(self, db, ids):
        self.col = db["construction_updates"]
        self.ids = ids

    async def ensure_indexes(self):
        await self.col.create_indexes(self.INDEXES)

    async def insert(self, doc: dict) -> dict:
        doc = dict(doc, _id=await self.ids.next("construction_updates"))
        await self.col.insert_one(doc)
        return doc

    async def page(self, project_id: int, page, serialize) -> dict:
        return await paginate(self.col, {"project_id": project_id}, [("_id", DESCENDING)], page, serialize)


def progress_view(project_id: int, doc: dict | None) -> dict:
    stored = (doc or {}).get("phases") or {}
    phases = []
    for name in PHASES:
        p = stored.get(name) or {}
        phases.append({"phase": name, "percent": int(p.get("percent", 0)), "start_date": p.get("start_date"),
                       "end_date": p.get("end_date")})
    return {"project_id": project_id, "phases": phases, "overall_percent": sum(p["percent"] for p in phases) // len(PHASES),
            "updated_at": format_ts((doc or {}).get("updated_at"))}


def update_view(doc: dict) -> dict:
    return {"id": doc["_id"], "project_id": doc["project_id"], "builder_id": doc["builder_id"], "title": doc["title"],
            "body": doc["body"], "phase": doc.get("phase"), "percent": doc.get("percent"), "images": doc.get("images", []),
            "created_at": format_ts(doc["created_at"])}


class ProgressService:
    def __init__(self, progress: ProgressStore, updates: UpdateStore, *, projects: ProjectService, bookings: BookingStore,
                 notifications: NotificationService, clock: Clock):
        self.progress = progress
        self.updates = updates
        self.projects = projects  # visibility, who manages, and project.updated on the project's channel
        self.bookings = bookings  # whose clients follow the project
        self.notifications = notifications
        self.clock = clock

    async def get_progress(self, principal, project_id: int) -> dict:
        await self.projects.visible(project_id, principal)
        return progress_view(project_id, await self.progress.get(project_id))

    async def _set(self, project_id: int, phases: dict[str, dict]) -> dict:
        doc = await self.progress.set_phases(project_id, phases, self.clock.now())
        return progress_view(project_id, doc)

    async def put_progress(self, principal, project_id: int, body) -> dict:
        await self.projects.managed(principal, project_id)
        phases = {p.phase: {"percent": p.percent, "start_date": p.start_date.isoformat() if p.start_date else None,
                            "end_date": p.end_date.isoformat() if p.end_date else None} for p in body.phases}
        view = await self._set(project_id, phases)
        await self.projects.announce(project_id, ["progress"], progress=view)
        return view

    async def post_update(self, principal, project_id: int, body) -> dict:
        project = await self.projects.managed(principal, project_id)
        now = self.clock.now()
        doc = await self.updates.insert({
            "project_id": project_id, "builder_id": project["builder_id"], "author_id": principal.user_id, "title": body.title,
            "body": body.body, "phase": body.phase, "percent": body.percent, "images": list(dict.fromkeys(body.image_ids)),
            "created_at": now,
        })
        view = update_view(doc)
        parts: dict = {"update": view}
        changes = ["update"]
        if body.phase is not None and body.percent is not None:
            stored = ((await self.progress.get(project_id)) or {}).get("phases", {}).get(body.phase) or {}
            parts["progress"] = await self._set(project_id, {body.phase: {"percent": body.percent,
                                                                          "start_date": stored.get("start_date"),
                                                                          "end_date": stored.get("end_date")}})
            changes.append("progress")
        if project.get("state") == "published":  # a draft has no buyers; its channel is its builder's and admins'
            clients = [c for c in await self.bookings.clients_in_project(project_id, FOLLOWING) if c != project["builder_id"]]
            for client_id in clients:
                await self.notifications.notify(client_id, "project.update", f"{project['name']}: {body.title}",
                                                body.body[:280], {"project_id": project_id, "update_id": doc["_id"]})
            if clients:
                await self.notifications.publish_event(clients, {"type": "project.update", "project_id": project_id,
                                                                 "project_name": project["name"], "update": view})
        await self.projects.announce(project_id, changes, **parts)
        return view

    async def list_updates(self, principal, project_id: int, page) -> dict:
        await self.projects.visible(project_id, principal)
        return await self.updates.page(project_id, page, update_view)


__all__ = ["ProgressService", "ProgressStore", "UpdateStore"]
