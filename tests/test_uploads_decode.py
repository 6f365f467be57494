"""Uploads are decoded in full and re-encoded, on every upload route.

Avatars (PUT /users/me/avatar), listing photos (POST /properties/{id}/images) and
admin media (POST /api/media/file-upload/{type}) share one mechanism, so each
scenario runs against all three:
- a PNG signature followed by HTML is refused (415), and HTML after a real image is
  not served back;
- a JPEG carrying GPS coordinates, a camera serial and a comment comes back without
  any of them, standing upright (its EXIF orientation applied to the pixels);
- valid jpeg, png (with transparency) and webp images round-trip with their pixels,
  served with the Content-Type of the bytes served;
- a decompression bomb (a tiny PNG declaring 100,000 x 100,000 pixels) is a 413 and
  nothing is stored; undecodable and truncated files are 415.
"""
from __future__ import annotations

import io
import struct
import zlib

import pytest
from PIL import ExifTags, Image

from tests.listing_helpers import create_property
from tests.support import multipart

ROUTES = ("avatar", "listing", "media")


async def uploader(sheda, route: str):
    """A function that uploads bytes over `route` and returns (status, url or None, response)."""
    if route == "avatar":
        user = await sheda.signup("client")

        async def upload(content: bytes, filename: str = "photo.jpg"):
            body, headers = multipart("file", filename, content, "image/jpeg")
            r = await sheda.api.put("/api/v1/users/me/avatar", body=body, headers=headers, token=user.token)
            return r.status, (r.json or {}).get("avatar_url") if r.status == 200 else None, r
        return upload
    if route == "listing":
        agent = await sheda.signup("agent")
        prop = await create_property(sheda, agent)

        async def upload(content: bytes, filename: str = "photo.jpg"):
            body, headers = multipart("file", filename, content, "image/jpeg")
            r = await sheda.api.post(f"/api/v1/properties/{prop['id']}/images", body=body, headers=headers, token=agent.token)
            return r.status, r.json["image"]["url"] if r.status == 201 else None, r
        return upload
    admin = await sheda.admin()

    async def upload(content: bytes, filename: str = "photo.jpg"):
        body, headers = multipart("file", filename, content, "image/jpeg")
        r = await sheda.api.post("/api/media/file-upload/gallery", body=body, headers=headers, token=admin.token)
        return r.status, r.json["file_url"] if r.status == 201 else None, r
    return upload


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def gradient(width: int, height: int, mode: str = "RGB") -> Image.Image:
    image = Image.new(mode, (width, height))
    image.putdata([((x * 255) // max(1, width - 1), (y * 255) // max(1, height - 1), 90, 200)[:len(mode)]
                   for y in range(height) for x in range(width)])
    return image


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid PNG header declaring width x height 8-bit greyscale pixels, and a few rows of data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = zlib.compress(b"\x00" * (width + 1) * 4)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", rows) + png_chunk(b"IEND", b"")


async def fetch(sheda, url: str):
    served = await sheda.api.get(url)
    assert served.status == 200, served
    return served


@pytest.mark.parametrize("route", ROUTES)
async def test_html_behind_an_image_signature_is_refused_or_dropped(sheda, route):
    upload = await uploader(sheda, route)
    html = b"<html><body><script>alert(document.cookie)</script></body></html>"
    for polyglot in (b"\x89PNG\r\n\x1a\n" + html, b"\xff\xd8\xff\xe0" + html, b"RIFF\x00\x00\x00\x00WEBPVP8 " + html):
        status, url, r = await upload(polyglot, "x.png")
        assert status == 415 and r.json["code"] == "unsupported_media_type", (polyglot[:12], r)
    # A real image with a page appended: the image is kept, the page is not.
    status, url, r = await upload(encode(gradient(16, 16), "PNG") + html, "x.png")
    assert status in (200, 201), r
    served = await fetch(sheda, url)
    assert b"<script" not in served.body and b"<html" not in served.body
    assert served.headers["Content-Type"] == "image/png" and Image.open(io.BytesIO(served.body)).format == "PNG"
    assert served.headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize("route", ROUTES)
async def test_a_photo_loses_its_location_and_stands_upright(sheda, route):
    upload = await uploader(sheda, route)
    photo = gradient(40, 20)  # landscape as stored; EXIF orientation 6 says "rotate to portrait"
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    exif[ExifTags.Base.Make] = "PhoneCo"
    exif[ExifTags.Base.BodySerialNumber] = "SERIAL-8675309"
    exif[ExifTags.Base.GPSInfo] = {
        ExifTags.GPS.GPSLatitudeRef: "N", ExifTags.GPS.GPSLatitude: (6.0, 26.0, 12.5),
        ExifTags.GPS.GPSLongitudeRef: "E", ExifTags.GPS.GPSLongitude: (3.0, 25.0, 44.25),
    }
    sent = encode(photo, "JPEG", quality=95, exif=exif.tobytes(), comment=b"home address: 12 Admiralty Way")
    assert Image.open(io.BytesIO(sent)).getexif().get_ifd(ExifTags.IFD.GPSInfo), "the photo sent has a location"

    status, url, r = await upload(sent)
    assert status in (200, 201), r
    served = await fetch(sheda, url)
    assert served.headers["Content-Type"] == "image/jpeg"
    got = Image.open(io.BytesIO(served.body))
    assert got.format == "JPEG" and got.size == (20, 40), "orientation applied to the pixels"
    assert not got.getexif(), f"EXIF left: {dict(got.getexif())}"
    assert "comment" not in got.info and "exif" not in got.info
    for secret in (b"SERIAL-8675309", b"PhoneCo", b"Admiralty", b"Exif\x00\x00"):
        assert secret not in served.body


@pytest.mark.parametrize("route", ROUTES)
async def test_valid_images_round_trip_with_the_content_type_of_their_bytes(sheda, route):
    upload = await uploader(sheda, route)
    cases = [
        ("PNG", encode(gradient(24, 12, "RGBA"), "PNG"), "image/png", ".png"),
        ("JPEG", encode(gradient(24, 12), "JPEG", quality=95), "image/jpeg", ".jpg"),
        ("WEBP", encode(gradient(24, 12), "WEBP", lossless=True), "image/webp", ".webp"),
    ]
    for fmt, content, content_type, suffix in cases:
        status, url, r = await upload(content, "named-wrongly.gif")  # the name plays no part
        assert status in (200, 201), (fmt, r)
        assert url.endswith(suffix), url
        served = await fetch(sheda, url)
        assert served.headers["Content-Type"] == content_type
        got = Image.open(io.BytesIO(served.body))
        sent = Image.open(io.BytesIO(content))
        assert got.format == fmt and got.size == sent.size == (24, 12) and got.mode == sent.mode
        if fmt == "PNG":  # lossless both ways: the very same pixels, transparency included
            assert list(got.getdata()) == list(sent.getdata())
        else:
            corner = got.getpixel((23, 11))
            assert all(abs(a - b) < 24 for a, b in zip(corner, sent.getpixel((23, 11)))), (fmt, corner)


@pytest.mark.parametrize("route", ROUTES)
async def test_bombs_and_undecodable_files_are_refused_and_nothing_is_stored(sheda, route):
    upload = await uploader(sheda, route)
    media = sheda.ctx.settings.media_dir
    before = sorted(p.name for p in media.rglob("*") if p.is_file()) if media.exists() else []
    bomb = png_bomb()
    assert len(bomb) < 2000
    status, _, r = await upload(bomb, "bomb.png")
    assert status == 413 and r.json["code"] == "image_too_large" and "pixels" in r.json["detail"], r
    whole = encode(gradient(64, 64), "PNG")
    for bad in (whole[: len(whole) // 2], encode(gradient(8, 8), "GIF"), b"%PDF-1.7\n1 0 obj\n<<>>\nendobj\n",
                b"GIF89a" + b"\x00" * 50, b"\xff\xd8\xff\xe0" + b"\x00" * 200 + b"\xff\xd9"):
        status, _, r = await upload(bad, "x.jpg")
        assert status == 415 and r.json["code"] == "unsupported_media_type", (bad[:8], r)
    after = sorted(p.name for p in media.rglob("*") if p.is_file()) if media.exists() else []
    assert after == before


@pytest.mark.parametrize("settings_overrides", [{"max_image_pixels": 10_000}])
async def test_the_pixel_limit_is_a_setting(sheda):
    upload = await uploader(sheda, "avatar")
    assert (await upload(encode(gradient(100, 100), "PNG"), "a.png"))[0] == 200
    status, _, r = await upload(encode(gradient(101, 100), "PNG"), "b.png")
    assert status == 413 and r.json["code"] == "image_too_large", r
