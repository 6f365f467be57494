"""/api/v1/inquiries (public) and /api/v1/leads (agents, builders, admins): thin edges over LeadService."""
from __future__ import annotations

from handlers.base import APIHandler
from handlers.routing import endpoint, route
from sheda_rt.accounts.auth import USER, Requirement
from sheda_rt.leads.models import (ConversationStart, InquiryCreate, InquiryOut, LeadConversationOut, LeadOut, LeadPatch, LeadQuery,
                                   NoteCreate, NoteOut)
from sheda_rt.responses import Page

TAGS = ("leads",)
#: Who owns leads: agents (listings) and builders (projects).
LEAD_OWNER = Requirement(any_scope=frozenset({"agent", "builder"}))


class InquiriesHandler(APIHandler):
    @endpoint("Ask about a listing or a project (no account needed)", body=InquiryCreate, response=InquiryOut, status=201,
              errors=(401, 404, 409, 422, 429), tags=TAGS)
    async def post(self, body: InquiryCreate):
        """`{property_id, name, email, phone?, message}` about a listing, or `{project_id, unit_id?, ...}` about a
        builder's published project (and one of its units): exactly one of property_id and project_id (422 naming
        the field otherwise; a unit_id of another project is a 422 naming unit_id; an unknown or unpublished
        project is a 404; 409 `builder_inactive` while the project's builder account is deactivated or switched to
        another type: nobody would read the lead). Send the bearer token when signed in: the inquiry is then linked to the account, and
        the agent or builder can answer it in chat. At most INQUIRIES_PER_IP_PER_HOUR (5) per client address in
        any hour (429 with Retry-After). `website` is a honeypot: leave it out or empty (anything in it is a 422
        and nothing is stored). The listing's agent, or the project's builder, gets it as a lead (`lead.created`
        on their sockets and a notification)."""
        header = self.request.headers.get("Authorization")
        principal = await self.ctx.auth.authenticate(header, USER) if header else None
        return await self.ctx.leads.inquire(body, principal, self.request.remote_ip or "-")


class LeadsHandler(APIHandler):
    @endpoint("My leads (agents, builders), or all leads (admins), newest first", auth=USER, query=LeadQuery, response=Page[LeadOut],
              errors=(401, 403, 422), tags=TAGS)
    async def get(self, query: LeadQuery):
        """`?status=new|contacted|qualified|won|lost`, `?project_id=` (the leads about one project), cursor pages."""
        return await self.ctx.leads.list(self.principal, query)


class LeadHandler(APIHandler):
    @endpoint("One lead (its agent or builder, or an admin)", auth=USER, response=LeadOut, errors=(401, 404), tags=TAGS)
    async def get(self, lead_id: int):
        return await self.ctx.leads.get(self.principal, lead_id)

    @endpoint("Move a lead along the pipeline", auth=USER, body=LeadPatch, response=LeadOut, errors=(401, 404, 409, 422), tags=TAGS)
    async def patch(self, lead_id: int, body: LeadPatch):
        """new → contacted → qualified → won; `lost` from any open state; won and lost are final. Any other
        move is 409 `invalid_transition` (with the current `status` and what is `allowed`); asking for the state
        it is already in changes nothing."""
        return await self.ctx.leads.move(self.principal, lead_id, body.status)


class LeadNotesHandler(APIHandler):
    @endpoint("Add a note to a lead", auth=USER, body=NoteCreate, response=NoteOut, status=201, errors=(401, 404, 409, 422), tags=TAGS)
    async def post(self, lead_id: int, body: NoteCreate):
        """`{text}` (at most 2,000 characters; at most 200 notes per lead, then 409)."""
        return await self.ctx.leads.add_note(self.principal, lead_id, body.text)


class LeadConversationHandler(APIHandler):
    @endpoint("Answer a registered inquirer in chat (the lead's agent or builder)", auth=LEAD_OWNER, body=ConversationStart,
              response=LeadConversationOut, status=201, errors=(401, 403, 404, 409, 422, 429), tags=TAGS)
    async def post(self, lead_id: int, body: ConversationStart):
        """Sends `message` as the agent's (or builder's) first chat message to the inquirer, tied to the listing
        (a project lead's is a plain conversation, without `property_id`), delivered live like any message; a `new`
        lead becomes `contacted`. Once per lead (409 `conversation_exists`); 409
        `inquirer_not_registered` when the inquiry came without an account. The message spends the agent's
        chat message budget like any other (429 `rate_limited` with Retry-After beyond it; nothing is sent and
        the lead can be answered again)."""
        return await self.ctx.leads.start_conversation(self.principal, lead_id, body.message)


default_handlers = [
    route("/api/v1/inquiries", InquiriesHandler),
    route("/api/v1/leads", LeadsHandler),
    route("/api/v1/leads/{lead_id:int}", LeadHandler),
    route("/api/v1/leads/{lead_id:int}/notes", LeadNotesHandler),
    route("/api/v1/leads/{lead_id:int}/conversation", LeadConversationHandler),
]
