"""Inquiries and the lead pipeline.

- Anyone (no account needed) sends an inquiry about a listed property, or about a builder's
  published project (optionally one of its units: off-plan sales); a signed-in
  sender's inquiry is linked to their account. At most INQUIRIES_PER_IP_PER_HOUR (a setting, 5) per
  client address in any sliding hour, counted in the shared limits (Redis when
  configured, so every process agrees); a refused attempt is taken back out of the
  count, so a client that waits its Retry-After gets through. Validation and the
  honeypot are in the request model: a refused inquiry stores nothing.
- Each inquiry is a lead of the listing's agent, or of the project's builder (stored in the
  same `agent_id`: the lead's owner, so one pipeline, one set of queries and indexes serve both),
  who hears of it live (`lead.created`) and through a stored notification (pushed like any).
  A listing lead has `property_id`; a project lead `project_id` and maybe `unit_id` (and no
  `property_id`): leads stored before projects took inquiries read as listing leads.
- A signed-in inquiry between an inquirer and an agent either of whom blocks the other is
  409 `blocked` (as a viewing is): it would put the inquirer's words in front of the agent and
  link them to an account the agent could not answer. Nothing is stored or counted.
- Agents and builders see and move their own leads, admins all of them. Status moves only along
  TRANSITIONS (models.py), guarded in the update's filter; a wrong one is 409.
- A lead from a registered user becomes a chat conversation with one call: the
  owner's first message goes through the chat service like any other message (tied to the
  listing for a listing lead; a plain conversation for a project lead: chat ties messages to
  listings only).
"""
from __future__ import annotations

from datetime import timedelta

from sheda_rt.chat.frames import history_row, sender_info
from sheda_rt.clock import format_ts
from sheda_rt.errors import Conflict, Forbidden, NotFound, RateLimited, ValidationFailed
from sheda_rt.leads.models import MAX_NOTES, TRANSITIONS
from sheda_rt.metrics import INQUIRIES

WINDOW_SECONDS = 3600
INQUIRIES_PER_IP_PER_HOUR = 5
#: A conversation start not recorded this long after it began was left by a process that died mid-send
#: (a send takes well under a second): the next request takes it over. Its message goes under the same
#: idempotency key (`lead-<id>`), so one the dead process stored within the resend window is not sent twice.
CLAIM_STALE_SECONDS = 60


def note_view(note: dict) -> dict:
    return {"id": note["id"], "author_id": note["author_id"], "text": note["text"], "created_at": format_ts(note["created_at"])}


def lead_view(doc: dict) -> dict:
    conv = doc.get("conversation") or {}
    return {
        "id": doc["_id"], "property_id": doc.get("property_id"), "project_id": doc.get("project_id"), "unit_id": doc.get("unit_id"),
        "agent_id": doc["agent_id"], "user_id": doc.get("user_id"),
        "name": doc["name"], "email": doc["email"], "phone": doc.get("phone"), "message": doc["message"], "status": doc["status"],
        "notes": [note_view(n) for n in doc.get("notes", [])],
        "conversation": ({"message_id": conv["message_id"], "started_at": format_ts(conv["started_at"])}
                         if "message_id" in conv else None),
        "created_at": format_ts(doc["created_at"]), "updated_at": format_ts(doc["updated_at"]),
    }


def _is_admin(principal) -> bool:
    return "admin" in principal.scopes and principal.user.get("role") == "admin"


class LeadService:
    def __init__(self, store, *, properties, notifications, chat, limits, ids, clock, analytics=None,
                 per_ip_per_hour: int = INQUIRIES_PER_IP_PER_HOUR, blocks=None, projects=None, builder_active=None):
        self.store = store
        # Whether a project's builder can still read a lead (account active and still a builder), as bookings ask.
        self.builder_active = builder_active
        self.blocks = blocks
        self.properties = properties
        self.projects = projects  # builders' projects (None: only listings take inquiries, e.g. a benchmark)
        self.notifications = notifications
        self.chat = chat
        self.limits = limits
        self.ids = ids
        self.clock = clock
        self.per_ip_per_hour = per_ip_per_hour
        self.analytics = analytics

    # ---- inquiries ---------------------------------------------------------------
    async def _subject(self, body) -> dict:
        """What is asked about, as the lead records it: the owner (`agent_id`), the ids, the title the
        notification names, and the listing for its analytics. An unlisted listing or an unknown or
        unpublished project is a 404 (to its owner too: nobody inquires about a draft); a project whose
        builder's account is deactivated or no longer a builder's a 409 builder_inactive; a unit of
        another project a 422 naming unit_id."""
        if body.property_id is not None:
            prop = await self.properties.visible(body.property_id)  # unlisted or unknown: 404
            return {"owner": prop["agent_id"], "ids": {"property_id": prop["_id"]}, "title": prop["title"], "listing": prop,
                    "own": ("This is your own listing", "own_listing"), "blocked": "You cannot contact this listing's agent"}
        if self.projects is None:
            raise NotFound("No such project", "project_not_found")
        # no principal: a draft is a 404 to everyone here; one hidden with its builder's account is answered below
        project = await self.projects.visible(body.project_id, hidden=True)
        if self.builder_active is not None and not await self.builder_active(project["builder_id"]):
            # A listing leaves the listings with its agent's account; a project stays published, but nobody could read
            # or answer the lead (as its units cannot be booked): refused, nothing stored or counted.
            raise Conflict("This project's builder account is not active: nobody would read the inquiry", "builder_inactive")
        ids, title = {"project_id": project["_id"]}, project["name"]
        if body.unit_id is not None:
            try:
                unit = await self.projects.unit_in(project["_id"], body.unit_id)
            except NotFound:
                raise ValidationFailed.single("unit_id", "is not a unit of this project") from None
            ids["unit_id"] = unit["_id"]
            title = f"{title}, unit {unit['unit_number']}"
        return {"owner": project["builder_id"], "ids": ids, "title": title, "listing": None,
                "own": ("This is your own project", "own_project"), "blocked": "You cannot contact this project's builder"}

    async def inquire(self, body, principal, client_ip: str) -> dict:
        subject = await self._subject(body)
        owner = subject["owner"]
        if principal is not None and principal.user_id == owner:
            raise Conflict(*subject["own"])
        if principal is not None and self.blocks is not None and await self.blocks.between(principal.user_id, owner):
            raise Conflict(subject["blocked"], "blocked")  # never says which side blocked
        key = f"inquiry:ip:{client_ip}"
        if await self.limits.record_failure(key, WINDOW_SECONDS) > self.per_ip_per_hour:
            await self.limits.forgive_failure(key)
            wait = await self.limits.blocked_for(key, self.per_ip_per_hour, WINDOW_SECONDS)
            raise RateLimited(f"At most {self.per_ip_per_hour} inquiries per hour from one address; try again later", wait or 1)
        now = self.clock.now()
        doc = {**subject["ids"], "agent_id": owner, "user_id": principal.user_id if principal else None,
               "name": body.name, "email": body.email, "phone": body.phone, "message": body.message, "status": "new",
               "notes": [], "conversation": None, "created_at": now, "updated_at": now}
        try:
            doc = await self.store.insert(doc)
        except BaseException:
            await self.limits.forgive_failure(key)
            raise
        INQUIRIES.inc()
        view = lead_view(doc)
        if self.analytics is not None and subject["listing"] is not None:
            await self.analytics.record(subject["listing"], "inquiries")
        await self.notifications.notify(owner, "lead.created", "New inquiry",
                                        f"{body.name} asked about \u201c{subject['title']}\u201d",
                                        {"lead_id": doc["_id"], **subject["ids"]})
        await self.notifications.publish_event([owner], {"type": "lead.created", "lead": view})
        return {"id": doc["_id"], "property_id": view["property_id"], "project_id": view["project_id"], "unit_id": view["unit_id"],
                "created_at": view["created_at"]}

    # ---- leads -------------------------------------------------------------------
    async def _lead(self, principal, lead_id: int) -> dict:
        """The lead if this caller may see it (its agent or an admin); 404 otherwise, so lead ids leak nothing."""
        doc = await self.store.get(lead_id)
        if doc is None or not (_is_admin(principal) or doc["agent_id"] == principal.user_id):
            raise NotFound("No such lead", "lead_not_found")
        return doc

    async def list(self, principal, query) -> dict:
        if _is_admin(principal):
            agent_id = None
        elif "agent" in principal.scopes or "builder" in principal.scopes:
            agent_id = principal.user_id
        else:
            raise Forbidden("Leads belong to agents and builders (and admins)", "insufficient_scope")
        return await self.store.page(agent_id, query.status, query, lead_view, project_id=query.project_id)

    async def get(self, principal, lead_id: int) -> dict:
        return lead_view(await self._lead(principal, lead_id))

    async def move(self, principal, lead_id: int, to_status: str) -> dict:
        doc = await self._lead(principal, lead_id)
        current = doc["status"]
        if current == to_status:
            return lead_view(doc)
        if to_status not in TRANSITIONS[current]:
            raise Conflict(f"A {current} lead cannot become {to_status}", "invalid_transition",
                           extra={"status": current, "allowed": sorted(TRANSITIONS[current])})
        updated = await self.store.move(lead_id, current, to_status, principal.user_id, self.clock.now())
        if updated is None:  # someone moved it between our read and our write
            now_doc = await self.store.get(lead_id)
            if now_doc is not None and now_doc["status"] == to_status:
                return lead_view(now_doc)
            raise Conflict("The lead was changed meanwhile; reload it", "invalid_transition",
                           extra={"status": now_doc["status"] if now_doc else None})
        return lead_view(updated)

    async def add_note(self, principal, lead_id: int, text: str) -> dict:
        await self._lead(principal, lead_id)
        now = self.clock.now()
        note = {"id": await self.ids.next("lead_notes"), "author_id": principal.user_id, "text": text, "created_at": now}
        if await self.store.add_note(lead_id, note, MAX_NOTES, now) is None:
            raise Conflict(f"A lead has at most {MAX_NOTES} notes", "too_many_notes")
        return note_view(note)

    async def start_conversation(self, principal, lead_id: int, message: str) -> dict:
        """The owner's first chat message to a registered inquirer, tied to the listing (a project lead's is a
        plain conversation: chat ties messages to listings only); once per lead."""
        doc = await self._lead(principal, lead_id)
        if doc["agent_id"] != principal.user_id:
            raise Forbidden("Only the lead's agent or builder can write to the inquirer", "not_lead_agent")
        if doc.get("user_id") is None:
            raise Conflict("The inquirer has no account to chat with; answer by email or phone", "inquirer_not_registered")
        now = self.clock.now()
        if not await self.store.claim_conversation(lead_id, now, now - timedelta(seconds=CLAIM_STALE_SECONDS)):
            raise Conflict("This lead already has a conversation", "conversation_exists")
        # The avatar as every chat frame has it: absolute under PUBLIC_BASE_URL (a phone cannot resolve a bare path).
        info = sender_info(principal.user, self.chat.settings.public_base_url)
        try:
            stored, _ = await self.chat.send(principal.user, doc["user_id"], message, client_msg_id=f"lead-{lead_id}",
                                             property_id=doc.get("property_id"), info=info)
        except BaseException:
            await self.store.release_conversation(lead_id)
            raise
        now = self.clock.now()
        updated = await self.store.set_conversation(lead_id, stored["_id"], now)
        if updated["status"] == "new":
            updated = await self.store.move(lead_id, "new", "contacted", principal.user_id, now) or await self.store.get(lead_id)
        return {"lead": lead_view(updated), "message": {**history_row(stored), "sender_info": info}}
