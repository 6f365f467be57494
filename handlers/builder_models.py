"""/api/v1/projects/{id}/models*: projects' 3D models (glb, gltf, usdz). Thin edges over ModelService
(sheda_rt/builders/models3d.py)."""
from __future__ import annotations

from typing import Optional

from pydantic import BaseModel, ConfigDict, ValidationError

from handlers.builders import TAGS, _MaybeSignedIn
from handlers.routing import endpoint, route
from sheda_rt.accounts.auth import USER
from sheda_rt.builders.models import UnitType
from sheda_rt.builders.models3d import ModelList, ModelView
from sheda_rt.errors import UnsupportedMedia, ValidationFailed

#: Room for the multipart framing and the `unit_type` field around one file of BUILDER_MODEL_MAX_BYTES.
MULTIPART_OVERHEAD = 64 * 1024


class ModelForm(BaseModel):
    model_config = ConfigDict(extra="ignore")
    unit_type: Optional[UnitType] = None


class ModelQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    unit_type: Optional[UnitType] = None


class ProjectModelsHandler(_MaybeSignedIn):
    def _limit(self) -> int:
        # The models' own cap (default 50 MB), not MAX_UPLOAD_BYTES: a larger body is refused (413)
        # before it is read, and nothing is stored.
        return self.ctx.settings.builder_model_max_bytes + MULTIPART_OVERHEAD

    @endpoint("A project's 3D models", query=ModelQuery, response=ModelList, errors=(401, 404, 422), tags=TAGS)
    async def get(self, project_id: int, query: ModelQuery):
        """Public once published (a draft's only to its builder and admins). `?unit_type=` lists the models
        of one unit type; without it, all of them (the project's own have `unit_type: null`)."""
        return await self.ctx.project_models.list(await self.optional_principal(), project_id, query.unit_type)

    @endpoint("Upload a 3D model of a project or one of its unit types", auth=USER, upload="file", response=ModelView,
              status=201, errors=(401, 403, 404, 409, 413, 415, 422), tags=TAGS,
              upload_types="a glTF binary (.glb), glTF 2.0 JSON (.gltf) or USDZ file (judged by content)")
    async def post(self, project_id: int):
        """By the project's builder or an admin: multipart/form-data with the file in `file` and optionally
        `unit_type` (apartment, studio, penthouse, duplex, terrace, detached, shop; none: the whole project).
        The kind is judged by the content, never the name: a glb must have the `glTF` header, version 2, a
        length equal to its size and a parseable JSON chunk; a .gltf must be JSON with `asset.version` "2.0";
        a USDZ a zip whose first entry is a .usd/.usda/.usdc layer, all entries stored uncompressed. Anything
        else is 415, more than BUILDER_MODEL_MAX_BYTES (default 50 MB) 413, a 51st model 409 `too_many_models`;
        nothing is stored then. A .gltf is stored as sent: its buffers and images should be embedded (data:
        URIs), as external files are not uploaded with it."""
        content_type = self.request.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if content_type != "multipart/form-data":
            raise UnsupportedMedia("Send multipart/form-data with the model in the field 'file'", "multipart_required")
        fields, files = self.form_fields()
        if not files.get("file"):
            raise ValidationFailed.single("file", "is required (a multipart file field)")
        try:
            form = ModelForm.model_validate(fields)
        except ValidationError as exc:
            raise ValidationFailed.from_pydantic(exc)
        return await self.ctx.project_models.upload(self.principal, project_id, files["file"][0].body, form.unit_type)


class ProjectModelHandler(_MaybeSignedIn):
    @endpoint("Delete a 3D model (the project's builder or an admin)", auth=USER, status=204, errors=(401, 403, 404), tags=TAGS)
    async def delete(self, project_id: int, model_id: int):
        """204; the file is removed too."""
        await self.ctx.project_models.delete(self.principal, project_id, model_id)


class ProjectModelFileHandler(_MaybeSignedIn):
    @endpoint("Download a 3D model's file", errors=(401, 404), tags=TAGS, content_type="application/octet-stream")
    async def get(self, project_id: int, model_id: int):
        """Public once the project is published (a draft's only with its builder's or an admin's token). The
        body is the file as uploaded, with its kind's Content-Type: `model/gltf-binary`, `model/gltf+json` or
        `model/vnd.usdz+zip`."""
        model, public = await self.ctx.project_models.open(await self.optional_principal(), project_id, model_id)
        self.set_header("Content-Type", model.content_type)
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Content-Disposition", f'inline; filename="project-{project_id}-model-{model_id}.{model.extension}"')
        # A model's bytes never change (a new upload is a new id); a draft's are not for shared caches.
        self.set_header("Cache-Control", "public, max-age=3600" if public else "private, no-cache")
        self.finish(model.data)


default_handlers = [
    route("/api/v1/projects/{project_id:int}/models", ProjectModelsHandler),
    route("/api/v1/projects/{project_id:int}/models/{model_id:int}", ProjectModelHandler),
    route("/api/v1/projects/{project_id:int}/models/{model_id:int}/file", ProjectModelFileHandler),
]
