"""Projects' 3D models (issue 17 §4) as builders and visitors use them: real minimal glb, gltf and usdz files
made here are accepted and served with their content types; impostors (a renamed PNG, a zip without a USD
layer, a truncated glb, JSON that is not glTF 2.0) are 415 with nothing stored; only the project's builder
uploads and deletes; the size cap is 413."""
from __future__ import annotations

import io
import json
import struct
import zipfile

import pytest

from tests.support import PNG_1PX, multipart
from tests.test_builders import create_project, published_project, verified_builder

PROJECTS = "/api/v1/projects"
CAP = 4096


@pytest.fixture
def settings_overrides():
    return {"builder_model_max_bytes": CAP}


def glb(doc: dict | None = None, binary: bytes = b"\x00" * 12) -> bytes:
    """A glTF 2.0 binary: 12-byte header, a JSON chunk padded with spaces, a BIN chunk padded with zeros."""
    doc = doc or {"asset": {"version": "2.0", "generator": "sheda tests"}, "scene": 0, "scenes": [{"nodes": []}],
                  "buffers": [{"byteLength": len(binary)}]}
    text = json.dumps(doc).encode()
    text += b" " * (-len(text) % 4)
    binary += b"\x00" * (-len(binary) % 4)
    chunks = struct.pack("<II", len(text), 0x4E4F534A) + text + struct.pack("<II", len(binary), 0x004E4942) + binary
    return struct.pack("<4sII", b"glTF", 2, 12 + len(chunks)) + chunks


def gltf() -> bytes:
    return json.dumps({"asset": {"version": "2.0"}, "scenes": [{"nodes": [0]}], "nodes": [{"name": "unit"}]}).encode()


def usdz(first: str = "scene.usda", compression=zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=compression) as archive:
        archive.writestr(first, '#usda 1.0\n(defaultPrim = "Unit")\ndef Xform "Unit" {}\n' + " " * 200)
        archive.writestr("textures/wall.png", PNG_1PX)
    return buf.getvalue()


def a_zip_without_usd() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr("readme.txt", "no scene here")
    return buf.getvalue()


async def upload(sheda, user, project_id: int, content: bytes, filename: str = "model.glb", **extra):
    body, headers = multipart("file", filename, content, "application/octet-stream", extra=extra)
    return await sheda.api.request("POST", f"{PROJECTS}/{project_id}/models", body=body, headers=headers,
                                   token=user.token if user else None)


async def stored(sheda, *project_ids: int) -> tuple[int, set[str]]:
    """The models of these projects in the database, and the files on disk (the database outlives a test)."""
    root = sheda.ctx.settings.data_dir / "models"
    files = {p.name for p in root.iterdir()} if root.exists() else set()
    return await sheda.ctx.db["project_models"].count_documents({"project_id": {"$in": list(project_ids)}}), files


async def test_real_glb_gltf_and_usdz_are_accepted_listed_and_served_with_their_types(sheda):
    builder = await verified_builder(sheda)
    project = await published_project(sheda, builder)
    pid = project["id"]
    files = {"glb": glb(), "gltf": gltf(), "usdz": usdz()}
    types = {"glb": "model/gltf-binary", "gltf": "model/gltf+json", "usdz": "model/vnd.usdz+zip"}
    made = {}
    # Named wrongly on purpose: the kind comes from the bytes.
    for kind, name, unit_type in (("glb", "a.bin", None), ("gltf", "b.txt", "apartment"), ("usdz", "c.glb", "apartment")):
        r = await upload(sheda, builder, pid, files[kind], name, **({"unit_type": unit_type} if unit_type else {}))
        assert r.status == 201, r
        assert r.json["kind"] == kind and r.json["content_type"] == types[kind] and r.json["size"] == len(files[kind])
        assert r.json["unit_type"] == unit_type and r.json["project_id"] == pid
        made[kind] = r.json
    for kind, model in made.items():
        r = await sheda.api.get(model["url"])  # public: the project is published, no token
        assert r.status == 200, r
        assert r.headers["Content-Type"] == types[kind] and r.body == files[kind]
        assert r.headers["X-Content-Type-Options"] == "nosniff"
    r = await sheda.api.get(f"{PROJECTS}/{pid}/models")
    assert [m["kind"] for m in r.json["items"]] == ["glb", "gltf", "usdz"], r
    r = await sheda.api.get(f"{PROJECTS}/{pid}/models", params={"unit_type": "apartment"})
    assert [m["kind"] for m in r.json["items"]] == ["gltf", "usdz"], r
    assert (await sheda.api.get(f"{PROJECTS}/{pid}/models", params={"unit_type": "penthouse"})).json["items"] == []
    assert (await sheda.api.get(f"{PROJECTS}/{pid}/models", params={"unit_type": "castle"})).status == 422
    assert (await sheda.api.get(f"{PROJECTS}/{pid}")).json["models"] == {"total": 3, "kinds": ["glb", "gltf", "usdz"],
                                                                         "unit_types": ["apartment"]}
    assert (await upload(sheda, builder, pid, glb(), unit_type="castle")).status == 422
    # Deleted by its builder: gone from the list, the download and the disk.
    count, names = await stored(sheda, pid)
    assert count == 3 and len(names) == 3
    r = await sheda.api.delete(f"{PROJECTS}/{pid}/models/{made['glb']['id']}", token=builder.token)
    assert r.status == 204, r
    assert (await sheda.api.get(made["glb"]["url"])).status == 404
    count, names = await stored(sheda, pid)
    assert count == 2 and len(names) == 2
    assert (await sheda.api.get(f"{PROJECTS}/{pid}")).json["models"]["kinds"] == ["gltf", "usdz"]


IMPOSTORS = [
    ("png_renamed.glb", PNG_1PX),
    ("no_usd.usdz", a_zip_without_usd()),
    ("deflated.usdz", usdz(compression=zipfile.ZIP_DEFLATED)),
    ("usd_not_first.usdz", usdz(first="textures/a.png")),
    ("truncated.glb", glb()[:-4]),
    ("wrong_version.glb", glb()[:4] + struct.pack("<I", 1) + glb()[8:]),
    ("bad_json_chunk.glb", glb({"asset": {"version": "2.0"}}).replace(b'"asset"', b'"asset\x00')),
    ("no_version.gltf", json.dumps({"asset": {"generator": "x"}, "scenes": []}).encode()),
    ("gltf1.gltf", json.dumps({"asset": {"version": "1.0"}}).encode()),
    ("cut.gltf", gltf()[:-3]),
]


@pytest.mark.parametrize("name, content", IMPOSTORS, ids=[name for name, _ in IMPOSTORS])
async def test_impostors_are_415_and_nothing_is_stored(sheda, name, content):
    builder = await verified_builder(sheda)
    pid = (await published_project(sheda, builder))["id"]
    r = await upload(sheda, builder, pid, content, name)
    assert r.status == 415 and r.json["code"] == "unsupported_media_type", r
    assert await stored(sheda, pid) == (0, set())


async def test_only_the_projects_builder_or_an_admin_uploads_and_deletes(sheda):
    admin = await sheda.admin()
    builder = await verified_builder(sheda, admin)
    other = await verified_builder(sheda, admin)
    client = await sheda.signup("client")
    published = (await published_project(sheda, builder))["id"]
    draft = (await create_project(sheda, builder))["id"]
    r = await upload(sheda, other, published, glb())
    assert r.status == 403 and r.json["code"] == "not_owner", r
    assert (await upload(sheda, client, published, glb())).status == 403
    assert (await upload(sheda, other, draft, glb())).status == 404  # another's draft: not even seen
    assert (await upload(sheda, None, published, glb())).status == 401
    assert await stored(sheda, published, draft) == (0, set())
    # A draft's models are its builder's until it is published.
    mine = (await upload(sheda, builder, draft, gltf())).json
    assert (await sheda.api.get(mine["url"])).status == 404
    assert (await sheda.api.get(f"{PROJECTS}/{draft}/models")).status == 404
    r = await sheda.api.get(mine["url"], token=builder.token)
    assert r.status == 200 and r.headers["Content-Type"] == "model/gltf+json"
    # Not another project's model through this one's path.
    assert (await sheda.api.get(f"{PROJECTS}/{published}/models/{mine['id']}/file")).status == 404
    theirs = (await upload(sheda, admin, published, usdz())).json  # an admin may
    assert (await sheda.api.delete(f"{PROJECTS}/{published}/models/{theirs['id']}", token=other.token)).status == 403
    assert (await sheda.api.get(theirs["url"])).status == 200
    assert (await sheda.api.delete(f"{PROJECTS}/{published}/models/{theirs['id']}", token=builder.token)).status == 204


async def test_over_the_cap_is_413_and_nothing_is_stored(sheda):
    builder = await verified_builder(sheda)
    pid = (await published_project(sheda, builder))["id"]
    big = glb(binary=b"\x01" * CAP)  # a valid glb, one BIN chunk over BUILDER_MODEL_MAX_BYTES
    r = await upload(sheda, builder, pid, big)
    assert r.status == 413, r
    huge = glb(binary=b"\x01" * (CAP + 200 * 1024))  # past the multipart allowance: refused before it is read
    r = await upload(sheda, builder, pid, huge)
    assert r.status == 413, r
    assert await stored(sheda, pid) == (0, set())
    assert (await upload(sheda, builder, pid, glb(binary=b"\x01" * (CAP - 400)))).status == 201
