"""/api/v1/builders/*, /api/v1/builder/*, /api/v1/projects/*, /api/v1/admin/builders/*:
thin edges over BuilderService and ProjectService."""
from __future__ import annotations

from handlers.base import UPLOAD_BODY, APIHandler
from handlers.routing import endpoint, route
from sheda_rt.accounts.auth import ADMIN, BUILDER, USER
from sheda_rt.builders.models import (BuilderPageView, BuilderVerify, BuilderView, PaymentPlanCreate, PaymentPlanList,
                                      PaymentPlanView, PlanQuery, ProjectCreate, ProjectPage, ProjectQuery, ProjectUpdate,
                                      ProjectDetailView, ProjectView, UnitBatch, UnitItems, UnitPage, UnitPatch, UnitQuery, UnitView)

TAGS = ("builders",)


class _MaybeSignedIn(APIHandler):
    async def optional_principal(self):
        """Public routes that show drafts to their builder and admins: a token is optional,
        but a bad one is still a 401 (the caller meant to be someone)."""
        header = self.request.headers.get("Authorization")
        return await self.ctx.auth.authenticate(header, USER) if header else None


class BuilderHandler(APIHandler):
    @endpoint("A builder's public page with their published projects", response=BuilderPageView, errors=(404,), tags=TAGS)
    async def get(self, builder_id: int):
        """Public. The company profile (company_name, registration_number, website, about, logo_url, verified)
        and `projects`: up to 50 published projects, newest first (GET /projects?builder_id= pages through all)."""
        return await self.ctx.builders.public_page(builder_id)


class BuilderLogoHandler(APIHandler):
    @endpoint("Upload my company logo (builders; jpeg, png or webp)", auth=BUILDER, upload="file", response=BuilderView,
              errors=(401, 403, 413, 415, 422), tags=TAGS)
    async def put(self):
        """multipart/form-data with the image in `file`; the type is read from the bytes. Returns the builder
        profile with the new `logo_url`. The other company fields are changed with PATCH /users/me."""
        return await self.ctx.builders.set_logo(self.principal.user, self.uploaded_file("file"))


class AdminBuilderHandler(APIHandler):
    @endpoint("Verify a builder (or withdraw it)", auth=ADMIN, body=BuilderVerify, response=BuilderView,
              errors=(401, 403, 404, 422), tags=("admin",) + TAGS)
    async def patch(self, user_id: int, body: BuilderVerify):
        """`{"verified": true|false}`. Only verified builders can publish projects. A change reaches the builder
        live (`builder.verified` / `builder.unverified` with the profile) and as a stored notification;
        published projects stay published when verification is withdrawn."""
        return await self.ctx.builders.set_verified(self.principal.user, user_id, body.verified)


class ProjectsHandler(_MaybeSignedIn):
    @endpoint("Search projects (filters, sort, cursor)", query=ProjectQuery, response=ProjectPage, errors=(401, 403, 422),
              tags=TAGS)
    async def get(self, query: ProjectQuery):
        """Public: published projects. `location` matches words by prefix as for listings; `near=lat,lng&radius_km=`;
        `status`, `builder_id`; `price_min`/`price_max`/`bedrooms`/`bedrooms_min` match projects with one available unit
        meeting all of them. Sorts: `newest`, `price_asc`/`price_desc` (by the lowest available unit price; projects
        with no available unit are left out of price sorts). `state=draft` lists drafts: a builder's own
        (`builder_id=<my id>`, with the token) or anyone's for admins, else 403 `drafts_forbidden`."""
        return await self.ctx.projects.search(query, await self.optional_principal())

    @endpoint("Create a project (builders): a draft", auth=BUILDER, body=ProjectCreate, status=201, response=ProjectView,
              errors=(401, 403, 422), tags=TAGS)
    async def post(self, body: ProjectCreate):
        """name, description, location, geo {lat,lng}, status (planning | under_construction | completed),
        launch_date and expected_completion ('YYYY-MM-DD'), amenities, images (uploaded /media/ paths or http(s)
        URLs). A new project is a draft, seen only by its builder and admins until published."""
        return await self.ctx.projects.create(self.principal, body)


class ProjectHandler(_MaybeSignedIn):
    @endpoint("One project, with unit counts by status and the price range", response=ProjectDetailView, errors=(401, 404),
              tags=TAGS)
    async def get(self, project_id: int):
        """Public once published; a draft is 404 to everyone but its builder and admins (send the token).
        `unit_counts` by status, `price_range` and `bedrooms` over the available units; `models`: its 3D models
        in summary (total, kinds, unit types)."""
        return await self.ctx.projects.get(project_id, await self.optional_principal())

    @endpoint("Change a project (its builder or an admin)", auth=USER, body=ProjectUpdate, response=ProjectView,
              errors=(401, 403, 404, 409, 422), tags=TAGS)
    async def patch(self, project_id: int, body: ProjectUpdate):
        """Any subset of the create fields. `status` only moves forward: planning → under_construction →
        completed (409 `status_backwards`). Needs the owning builder's builder-scoped token, or an admin."""
        return await self.ctx.projects.update(self.principal, project_id, body)


class ProjectImagesHandler(APIHandler):
    @endpoint("Add an image to a project (multipart field `file`)", auth=USER, upload="file", status=201,
              response=ProjectView, errors=(401, 403, 404, 409, 413, 415, 422), tags=TAGS)
    async def post(self, project_id: int):
        """By its builder or an admin: jpeg, png or webp, recognised from the bytes; at most MAX_UPLOAD_BYTES (413)
        and 20 images per project (409 `too_many_images`). Its /media/projects/ URL is appended to `images`;
        PATCH `images` reorders or drops them. Returns the project."""
        return await self.ctx.projects.add_image(self.principal, project_id, self.uploaded_file("file"))


class ProjectPublishHandler(APIHandler):
    @endpoint("Publish a draft project", auth=USER, response=ProjectView, errors=(401, 403, 404, 409), tags=TAGS)
    async def post(self, project_id: int):
        """By its builder or an admin. 403 `builder_not_verified` unless an admin has verified the builder;
        409 `already_published`. The builder's sockets get `project.published`."""
        return await self.ctx.projects.publish(self.principal, project_id)


class ProjectUnitsHandler(_MaybeSignedIn):
    @endpoint("A project's units (filters, cursor)", query=UnitQuery, response=UnitPage, errors=(401, 404, 422), tags=TAGS)
    async def get(self, project_id: int, query: UnitQuery):
        """Ordered by unit_number (as text). Filters: status, type, floor, bedrooms, price_min/price_max (naira)."""
        return await self.ctx.projects.list_units(await self.optional_principal(), project_id, query)

    @endpoint("Add 1 to 500 units at once, all or nothing", auth=USER, body=UnitBatch, status=201, response=UnitItems,
              errors=(401, 403, 404, 409, 422), tags=TAGS)
    async def post(self, project_id: int, body: UnitBatch):
        """`{"units": [{unit_number, floor, type, bedrooms, bathrooms?, area_sqm, price}]}`. A unit_number that the
        project already has, or that appears twice in the batch, is a 409 `duplicate_unit_number` (with
        `unit_numbers`) and nothing is stored; of two batches racing for the same numbers exactly one is stored, whole.
        At most 5,000 units per project (409 `too_many_units`). A price a payment plan of the project would split
        into a line of 0.00 is a 422 naming `units.<n>.price`, nothing stored. New units are `available`."""
        return await self.ctx.projects.add_units(self.principal, project_id, body)


class ProjectUnitHandler(_MaybeSignedIn):
    @endpoint("One unit", response=UnitView, errors=(401, 404), tags=TAGS)
    async def get(self, project_id: int, unit_id: int):
        return await self.ctx.projects.get_unit(await self.optional_principal(), project_id, unit_id)

    @endpoint("Block or unblock a unit (its builder or an admin)", auth=USER, body=UnitPatch, response=UnitView,
              errors=(401, 403, 404, 409, 422), tags=TAGS)
    async def patch(self, project_id: int, unit_id: int, body: UnitPatch):
        """`{"status": "blocked"}` takes an available unit off sale, `{"status": "available"}` puts a blocked one
        back. Reserved, booked and sold units follow their bookings: 409 `unit_not_available`."""
        return await self.ctx.projects.set_unit_status(self.principal, project_id, unit_id, body.status)


class PaymentPlansHandler(_MaybeSignedIn):
    @endpoint("A project's payment plans", query=PlanQuery, response=PaymentPlanList, errors=(401, 404, 422), tags=TAGS)
    async def get(self, project_id: int, query: PlanQuery):
        """Oldest first. With `?unit_id=` each plan carries `schedule`: the unit's price split by the lines,
        each amount rounded down to the kobo and the remainder on the last line, so they add up to the price."""
        return await self.ctx.projects.list_plans(await self.optional_principal(), project_id, query.unit_id)

    @endpoint("Add a payment plan (its builder or an admin)", auth=USER, body=PaymentPlanCreate, status=201,
              response=PaymentPlanView, errors=(401, 403, 404, 409, 422), tags=TAGS)
    async def post(self, project_id: int, body: PaymentPlanCreate):
        """`{"name", "lines": [{"label", "percent": "10.00", "due": "booking" | "handover" | "months:<N>"}]}`:
        1 to 24 lines whose percents (two decimals at most, never a JSON float) sum to exactly 100, else 422.
        The first line is the booking payment, paid within the booking's hold: it must be due `booking` (422
        naming `lines.0.due` otherwise). A line that would split the price of a unit of the project (not sold) into
        0.00 is a 422 naming `lines.<n>.percent` (`lines` for the default plan). At most 20 plans per project (409
        `too_many_plans`)."""
        return await self.ctx.projects.add_plan(self.principal, project_id, body)


default_handlers = [
    route("/api/v1/builders/{builder_id:int}", BuilderHandler),
    route("/api/v1/builder/profile/logo", BuilderLogoHandler, max_body=UPLOAD_BODY),
    route("/api/v1/admin/builders/{user_id:int}", AdminBuilderHandler),
    route("/api/v1/projects", ProjectsHandler),
    route("/api/v1/projects/{project_id:int}", ProjectHandler),
    route("/api/v1/projects/{project_id:int}/images", ProjectImagesHandler, max_body=UPLOAD_BODY),
    route("/api/v1/projects/{project_id:int}/publish", ProjectPublishHandler),
    route("/api/v1/projects/{project_id:int}/units", ProjectUnitsHandler),
    route("/api/v1/projects/{project_id:int}/units/{unit_id:int}", ProjectUnitHandler),
    route("/api/v1/projects/{project_id:int}/payment-plans", PaymentPlansHandler),
]
