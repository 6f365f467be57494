"""Images from clients are decoded in full and re-encoded; what a client sent is never stored.

Judging a file by its first bytes let anything through behind an image signature:
a PNG signature followed by HTML was accepted and served as `image/png`. Now every
upload is decoded by Pillow to its last pixel (a file that is not entirely a jpeg,
png or webp image is refused) and the pixels are encoded again in the same format, so
the stored file holds nothing but the image: trailing bytes, comments, XMP and EXIF
(camera serials, GPS location) are gone. The EXIF orientation is applied to the
pixels first, so a phone photo stands the way it was taken once its EXIF is dropped.
Colour profiles (ICC) and PNG transparency are kept: they are part of how the image
looks. Animated webp/png keep their first frame.

Decompression bombs: a few KB of PNG can declare 100,000 x 100,000 pixels (30 GB once
decoded). The size in the header is checked against MAX_IMAGE_PIXELS before any pixel
is decoded (413 `image_too_large`).

`reencode` blocks (decoding a 40-megapixel photo takes about a second of CPU): callers
run it in a worker thread, never on the event loop.
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, ImageOps

from sheda_rt.errors import TooLarge, UnsupportedMedia

#: Pillow format -> (our name, file extension, Content-Type it is served with).
FORMATS = {"JPEG": ("jpeg", "jpg", "image/jpeg"), "PNG": ("png", "png", "image/png"), "WEBP": ("webp", "webp", "image/webp")}

# Our own limit is checked on the header's size right after opening; Pillow's warning for
# images over its default limit (89 megapixels) would only repeat it in the log.
warnings.simplefilter("ignore", Image.DecompressionBombWarning)

_REFUSED = "Only jpeg, png and webp images are accepted, and the whole file must be the image"


@dataclass(frozen=True)
class CleanImage:
    data: bytes
    kind: str  # jpeg | png | webp
    extension: str
    content_type: str
    width: int
    height: int


def reencode(data: bytes, max_pixels: int) -> CleanImage:
    """Decode `data` completely and encode the pixels again in the same format.
    Raises UnsupportedMedia (415) for anything that is not wholly a jpeg, png or webp
    image, TooLarge (413) when it has more than `max_pixels` pixels."""
    try:
        source = Image.open(io.BytesIO(data), formats=list(FORMATS))
    except Image.DecompressionBombError:
        raise TooLarge(f"The image has more than {max_pixels} pixels", "image_too_large")
    except Exception:  # Pillow's plugins raise many types (OSError, SyntaxError, ValueError...) on bad input
        raise UnsupportedMedia(_REFUSED, "unsupported_media_type")
    with source:
        width, height = source.size
        if width * height > max_pixels:
            raise TooLarge(f"The image is {width} x {height} pixels; the limit is {max_pixels} pixels in all",
                           "image_too_large")
        kind, extension, content_type = FORMATS[source.format]
        try:
            source.load()  # every pixel: a truncated or corrupt stream fails here
            image = ImageOps.exif_transpose(source)  # a new image, upright, with the orientation tag gone
        except Exception:
            raise UnsupportedMedia(_REFUSED, "unsupported_media_type")
    # Keep only what changes how the image looks; the rest of the metadata stays behind.
    options: dict = {}
    if image.info.get("icc_profile"):
        options["icc_profile"] = image.info["icc_profile"]
    if kind == "png" and "transparency" in image.info:
        options["transparency"] = image.info["transparency"]
    image.info = {}
    if kind == "jpeg":
        if image.mode not in ("L", "RGB", "CMYK"):
            image = image.convert("RGB")
        options.update(quality=90)
    elif kind == "webp":
        if image.mode not in ("RGB", "RGBA"):
            image = image.convert("RGBA" if "A" in image.getbands() or "transparency" in options else "RGB")
        options.pop("transparency", None)
        options.update(quality=90)
    out = io.BytesIO()
    image.save(out, format=source.format, **options)
    return CleanImage(out.getvalue(), kind, extension, content_type, image.width, image.height)
