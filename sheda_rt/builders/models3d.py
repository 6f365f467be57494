"""3D models of a project (issue 17 §4): glTF binary (.glb), glTF JSON (.gltf) and USDZ files that a
builder uploads for the project or for one of its unit types, served publicly once it is published.

What a file is comes from its bytes, never its name or the client's Content-Type (`sniff`):
- glb: the 12-byte header `glTF`, version 2, a length equal to the file's size, then chunks that
  fill the file exactly, the first a JSON chunk that parses to a glTF document (asset.version "2.0");
- gltf: the whole file is a JSON object whose `asset.version` is "2.0";
- usdz: a zip archive (read with the stdlib's zipfile, CRCs checked) whose first entry is a
  .usd/.usda/.usdc layer and whose entries are all stored uncompressed, as USDZ requires (a viewer
  maps them in place; a deflated "usdz" would not open in AR Quick Look).
Anything else is 415 and nothing is stored; more than BUILDER_MODEL_MAX_BYTES is 413. Files are
written under DATA_DIR/models with a random name, then the document (`project_models`); a failed
insert removes the file. The bytes are stored as sent: a model is served to viewers as the builder
made it (there is nothing to re-encode as with images), always with the Content-Type of its kind
and `nosniff`, so a browser never treats it as a page.
"""
from __future__ import annotations

import asyncio
import io
import json
import struct
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Optional

from pydantic import Field
from pymongo import ASCENDING, IndexModel

from sheda_rt.builders.models import UnitType
from sheda_rt.clock import format_ts
from sheda_rt.errors import Conflict, NotFound, TooLarge, UnsupportedMedia, ValidationFailed
from sheda_rt.responses import ResponseModel, Timestamp

if TYPE_CHECKING:
    from sheda_rt.builders.service import ProjectService
    from sheda_rt.clock import Clock
    from sheda_rt.database.ids import IdAllocator

ModelKind = Literal["glb", "gltf", "usdz"]
#: kind -> (Content-Type served, file extension)
KINDS = {"glb": ("model/gltf-binary", "glb"), "gltf": ("model/gltf+json", "gltf"), "usdz": ("model/vnd.usdz+zip", "usdz")}
#: Models per project: keeps one project's files on disk bounded (MAX * BUILDER_MODEL_MAX_BYTES).
MAX_MODELS_PER_PROJECT = 50
_REFUSED = ("3D models are glTF binary (.glb), glTF 2.0 JSON (.gltf) or USDZ files, judged by their content, "
            "not their name")
_GLB_MAGIC, _CHUNK_JSON = b"glTF", 0x4E4F534A  # 'JSON' little-endian
_USD_LAYERS = (".usd", ".usda", ".usdc")


def _is_gltf_document(doc) -> bool:
    asset = doc.get("asset") if isinstance(doc, dict) else None
    return isinstance(asset, dict) and asset.get("version") == "2.0"


def _glb(data: bytes) -> bool:
    if len(data) < 20 or data[:4] != _GLB_MAGIC:
        return False
    version, length = struct.unpack_from("<II", data, 4)
    if version != 2 or length != len(data):
        return False
    offset, first = 12, True
    while offset < length:  # the chunks must tile the file exactly: a truncated or padded file is refused
        if offset + 8 > length:
            return False
        chunk_length, chunk_type = struct.unpack_from("<II", data, offset)
        start, offset = offset + 8, offset + 8 + chunk_length
        if offset > length:
            return False
        if first:
            if chunk_type != _CHUNK_JSON:
                return False
            try:
                doc = json.loads(data[start:offset].decode("utf-8").rstrip(" "))  # padded with spaces to 4 bytes
            except (ValueError, RecursionError):
                return False
            if not _is_gltf_document(doc):
                return False
            first = False
    return not first


def _gltf(data: bytes) -> bool:
    if not data.lstrip()[:1] == b"{":
        return False
    try:
        return _is_gltf_document(json.loads(data.decode("utf-8-sig")))
    except (ValueError, RecursionError):
        return False


def _usdz(data: bytes) -> bool:
    if data[:4] != b"PK\x03\x04":  # the first entry's local header first: the archive starts with its layer
        return False
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            entries = sorted(archive.infolist(), key=lambda e: e.header_offset)  # in file order, not the directory's
            if not entries or entries[0].header_offset != 0 or not entries[0].filename.lower().endswith(_USD_LAYERS):
                return False
            if any(e.compress_type != zipfile.ZIP_STORED or e.flag_bits & 0x1 for e in entries):
                return False  # compressed or encrypted: not a USDZ
            return archive.testzip() is None  # every entry's CRC: a truncated or altered archive fails
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError, EOFError, NotImplementedError):
        return False


def sniff(data: bytes) -> str:
    """The kind of a model file ("glb", "gltf" or "usdz"); UnsupportedMedia (415) for anything else.
    Blocking for large files (a USDZ's CRCs are checked): run it in a worker thread."""
    if data[:4] == _GLB_MAGIC:
        if _glb(data):
            return "glb"
        raise UnsupportedMedia("This glTF binary is truncated or malformed: " + _REFUSED, "unsupported_media_type")
    if data[:2] == b"PK":
        if _usdz(data):
            return "usdz"
        raise UnsupportedMedia("This zip archive is not a USDZ (a .usd/.usda/.usdc first entry, all entries stored "
                               "uncompressed): " + _REFUSED, "unsupported_media_type")
    if _gltf(data):
        return "gltf"
    raise UnsupportedMedia(_REFUSED, "unsupported_media_type")


class ModelView(ResponseModel):
    id: int
    project_id: int
    unit_type: Optional[UnitType] = Field(description="the unit type it shows; null: the whole project")
    kind: ModelKind = Field(description="glb (glTF binary), gltf (glTF JSON) or usdz")
    content_type: str = Field(description="what the file is served as: model/gltf-binary, model/gltf+json or model/vnd.usdz+zip")
    size: int = Field(description="bytes")
    url: str = Field(description="where the file is downloaded (public once the project is published)")
    created_at: Timestamp


class ModelList(ResponseModel):
    items: list[ModelView] = Field(description="oldest first")


def model_view(doc: dict) -> dict:
    return {"id": doc["_id"], "project_id": doc["project_id"], "unit_type": doc.get("unit_type"), "kind": doc["kind"],
            "content_type": KINDS[doc["kind"]][0], "size": doc["size"],
            "url": f"/api/v1/projects/{doc['project_id']}/models/{doc['_id']}/file", "created_at": format_ts(doc["created_at"])}


class ModelStore:
    """`project_models`: {_id, project_id, builder_id, unit_type (None: the project), kind, size, file, created_at}."""

    # Listings filter {project_id} or {project_id, unit_type}: every condition is a key of this index
    # (the embedded database uses an index only then).
    INDEXES = [IndexModel([("project_id", ASCENDING), ("unit_type", ASCENDING), ("_id", ASCENDING)], name="project_unit_type")]

    def __init__(self, db):
        self.col = db["project_models"]

    async def ensure_indexes(self):
        await self.col.create_indexes(self.INDEXES)

    async def insert(self, doc: dict) -> None:
        await self.col.insert_one(doc)

    async def get(self, project_id: int, model_id: int) -> dict | None:
        doc = await self.col.find_one({"_id": model_id})
        return doc if doc is not None and doc["project_id"] == project_id else None

    async def count(self, project_id: int) -> int:
        return await self.col.count_documents({"project_id": project_id})

    async def list(self, project_id: int, unit_type: str | None) -> list[dict]:
        query: dict = {"project_id": project_id}
        if unit_type is not None:
            query["unit_type"] = unit_type
        return await self.col.find(query).sort("_id", ASCENDING).limit(MAX_MODELS_PER_PROJECT * 2).to_list(None)

    async def summary(self, project_id: int) -> dict:
        """{total, kinds, unit_types} of a project's models (at most MAX_MODELS_PER_PROJECT: one indexed read)."""
        docs = await self.col.find({"project_id": project_id}, {"kind": 1, "unit_type": 1}).to_list(None)
        return {"total": len(docs), "kinds": sorted({d["kind"] for d in docs}),
                "unit_types": sorted({d["unit_type"] for d in docs if d.get("unit_type")})}

    async def delete(self, model_id: int) -> bool:
        return (await self.col.delete_one({"_id": model_id})).deleted_count == 1


@dataclass(frozen=True)
class ModelFile:
    data: bytes
    content_type: str
    extension: str


class ModelService:
    """Uploads, listings, downloads and deletion of projects' 3D models. Who may see or change a
    project is the project service's rule (`visible`, `managed`): drafts are 404 to strangers,
    another builder's project 403."""

    def __init__(self, *, store: ModelStore, projects: ProjectService, ids: IdAllocator, clock: Clock, root: Path,
                 max_bytes: int):
        self.store = store
        self.projects = projects
        self.ids = ids
        self.clock = clock
        self.root = root
        self.max_bytes = max_bytes

    async def upload(self, principal, project_id: int, data: bytes, unit_type: str | None) -> dict:
        project = await self.projects.managed(principal, project_id)
        if len(data) > self.max_bytes:
            raise TooLarge(f"The file is {len(data)} bytes; 3D models may have at most {self.max_bytes} bytes")
        if not data:
            raise ValidationFailed.single("file", "is empty")
        if await self.store.count(project_id) >= MAX_MODELS_PER_PROJECT:
            raise Conflict(f"A project has at most {MAX_MODELS_PER_PROJECT} 3D models; delete one first", "too_many_models")
        kind = await asyncio.to_thread(sniff, data)
        name = f"{uuid.uuid4().hex}.{KINDS[kind][1]}"
        await asyncio.to_thread(self._write, name, data)
        doc = {"project_id": project_id, "builder_id": project["builder_id"], "unit_type": unit_type, "kind": kind,
               "size": len(data), "file": name}
        try:
            doc["_id"] = await self.ids.next("project_models")
            doc["created_at"] = self.clock.now()
            await self.store.insert(doc)
        except BaseException:
            await asyncio.to_thread((self.root / name).unlink, True)
            raise
        return model_view(doc)

    def _write(self, name: str, data: bytes) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f"{name}.part"
        tmp.write_bytes(data)
        tmp.replace(self.root / name)

    async def list(self, principal, project_id: int, unit_type: str | None) -> dict:
        await self.projects.visible(project_id, principal)
        return {"items": [model_view(d) for d in await self.store.list(project_id, unit_type)]}

    async def _model(self, project_id: int, model_id: int) -> dict:
        doc = await self.store.get(project_id, model_id)
        if doc is None:
            raise NotFound("No such 3D model in this project", "model_not_found")
        return doc

    async def open(self, principal, project_id: int, model_id: int) -> tuple[ModelFile, bool]:
        """The file, and whether it is public (the project is published)."""
        project = await self.projects.visible(project_id, principal)
        doc = await self._model(project_id, model_id)
        try:
            data = await asyncio.to_thread((self.root / doc["file"]).read_bytes)
        except FileNotFoundError:  # deleted meanwhile
            raise NotFound("No such 3D model in this project", "model_not_found")
        content_type, extension = KINDS[doc["kind"]]
        return ModelFile(data, content_type, extension), project.get("state") == "published" and not project.get("hidden_reason")

    async def delete(self, principal, project_id: int, model_id: int) -> None:
        await self.projects.managed(principal, project_id)
        doc = await self._model(project_id, model_id)
        if await self.store.delete(model_id):
            await asyncio.to_thread((self.root / doc["file"]).unlink, True)
