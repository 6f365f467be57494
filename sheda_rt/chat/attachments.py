"""Chat attachments: photos and PDFs sent in a conversation, private to its two participants.

Life of an attachment (collection `chat_attachments`, files under DATA_DIR/attachments):
- `upload`: the kind comes from the content, never from the name or the Content-Type. An image
  (jpeg, png, webp) is decoded in full and re-encoded by the media mechanism
  (`sheda_rt/media/images.reencode`: EXIF, GPS location, comments and XMP dropped) and gets a
  thumbnail; a file that starts `%PDF-` must also end like one (`startxref <offset>` then
  `%%EOF` in its last kilobyte). Anything else is 415; over CHAT_ATTACHMENT_MAX_BYTES 413.
  The file is written first, then the document (state `new`); a failed insert removes the file.
- `claim` (ChatService.submit, before the message enters its batch): ONE update of the message's
  attachments, filtered by `_id` only (the primary key serves it on every engine; any other
  condition in the filter makes the embedded database scan the collection), whose pipeline moves
  to `claimed` only documents that are the sender's and still `new`. `modified_count` says whether
  all were claimed; if not, the partial claim is given back and the refusal is explained
  (409 `attachment_used`, 404 `attachment_not_found` for an unknown id or someone else's, which
  are told apart by nobody). The claim records the conversation, so the peer may download from
  then on. A message that fails to be stored gives its claim back (`release`); a stored one marks
  its attachments `sent` with the message id, off the ack's path.
- Messages carry the attachments' metadata (`attachments: [{id, kind, mime, size, width?,
  height?}]`), so deliveries, history, sync and the conversation list read no extra document;
  URLs are made when a frame or row is built (`links`): signed, expiring, the same for every
  reader (one encoding is delivered to both sides).
- Download: `GET /api/v1/chat/attachments/{id}` (and `/thumbnail`) with `?exp=&sig=` (HMAC-SHA256
  of id, variant and expiry under a key derived from the server's JWT secret: any process of the
  deployment can check it) or a bearer token of the uploader or of one of the two participants.
  A third user is told 404; an expired or altered link 403.
- `AttachmentCleanupJob`: documents still `new` a day after upload are marked `deleting`, their
  files removed, then the documents (a crash in between is finished by the next run, on any
  process). A claim older than an hour whose message is not in the conversation (the process died
  between claim and store) is given back, so it ages out like any unsent upload.

A text-only message pays nothing of this: `submit` looks at attachments only when there are some.
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import io
import logging
import re
import secrets
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image
from pymongo import ASCENDING, IndexModel

from sheda_rt.errors import Conflict, Forbidden, NotFound, TooLarge, UnsupportedMedia, ValidationFailed
from sheda_rt.jobs.periodic import PeriodicTrigger
from sheda_rt.media.images import reencode

if TYPE_CHECKING:
    from sheda_rt.clock import Clock
    from sheda_rt.database.ids import IdAllocator

log = logging.getLogger("sheda.chat.attachments")

THUMBNAIL_PX = 320
PDF_MIME = "application/pdf"
_STARTXREF = re.compile(rb"startxref\s+(\d{1,12})\s+%%EOF\s*$")
_REFUSED = "Attachments are jpeg, png or webp images, or PDF documents (judged by their content, not their name)"
#: Signed links expire on a grid of this many seconds, so a link is the same for everyone (and every
#: history reload) for a while and a browser's image cache keeps working.
URL_GRID_SECONDS = 600


@dataclass(frozen=True)
class StoredFile:
    data: bytes
    kind: str  # image | pdf
    mime: str
    extension: str
    width: int | None = None
    height: int | None = None
    thumbnail: bytes | None = None
    thumbnail_mime: str | None = None


def attachment_summary(attachments) -> str:
    """A message's attachments in words, for previews of a message without text (a push, a digest
    email): "📷 Photo", "📷 3 photos", "📄 PDF", "📎 2 attachments"; "" when there are none."""
    kinds = [a.get("kind") for a in attachments or ()]
    if not kinds:
        return ""
    if set(kinds) == {"image"}:
        return "📷 Photo" if len(kinds) == 1 else f"📷 {len(kinds)} photos"
    if set(kinds) == {"pdf"}:
        return "📄 PDF" if len(kinds) == 1 else f"📄 {len(kinds)} PDFs"
    return f"📎 {len(kinds)} attachments"


def looks_like_pdf(data: bytes) -> bool:
    """`%PDF-1.x` / `%PDF-2.0` first, and a trailer at the end: `startxref <offset>` then
    `%%EOF`, with the offset inside the file. Enough to refuse a renamed text file or a
    truncated upload; nothing is rendered or run."""
    if not re.match(rb"%PDF-[12]\.[0-9]", data[:8]):
        return False
    match = _STARTXREF.search(data[-1024:])
    return match is not None and int(match.group(1)) < len(data)


def inspect(data: bytes, max_pixels: int) -> StoredFile:
    """What is stored for an uploaded file (blocking: run it in a worker thread)."""
    if data.startswith(b"%PDF-"):
        if not looks_like_pdf(data):
            raise UnsupportedMedia("This PDF is truncated or malformed: " + _REFUSED, "unsupported_media_type")
        return StoredFile(data, "pdf", PDF_MIME, "pdf")
    try:
        image = reencode(data, max_pixels)
    except UnsupportedMedia:
        raise UnsupportedMedia(_REFUSED, "unsupported_media_type")
    thumb, thumb_mime = thumbnail(image.data)
    return StoredFile(image.data, "image", image.content_type, image.extension, image.width, image.height, thumb, thumb_mime)


def thumbnail(data: bytes) -> tuple[bytes, str]:
    """At most THUMBNAIL_PX on its longer side: JPEG, or PNG when the image has transparency."""
    with Image.open(io.BytesIO(data)) as source:
        source.load()
        image = source.copy()
    # Palette and grey-with-alpha images are resampled in RGB(A): a palette thumbnail would be
    # resampled nearest-neighbour, and dropping `info` below would drop a palette's transparency.
    alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
    if alpha and image.mode != "RGBA":
        image = image.convert("RGBA")
    elif not alpha and image.mode not in ("L", "RGB"):
        image = image.convert("RGB")
    image.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
    image.info = {}
    out = io.BytesIO()
    if alpha:
        image.save(out, format="PNG", optimize=True)
        return out.getvalue(), "image/png"
    image.save(out, format="JPEG", quality=80)
    return out.getvalue(), "image/jpeg"


class AttachmentStore:
    """`chat_attachments`: {_id, owner_id, kind, mime, size, width?, height?, file, thumb?, thumb_mime?,
    created_at, state: new | claimed | sent | deleting, at (when the state began; a released claim
    goes back to created_at), conv?, claim?, message_id?}."""

    # The cleanup's queries are {state, at range} exactly (the embedded database uses an index only
    # when every condition of the filter is one of its keys). Claims and downloads go by _id.
    INDEXES = [IndexModel([("state", ASCENDING), ("at", ASCENDING)], name="state_at"),
               IndexModel([("owner_id", ASCENDING), ("state", ASCENDING)], name="owner_state")]  # the pending count

    def __init__(self, db):
        self.col = db["chat_attachments"]

    async def ensure_indexes(self):
        await self.col.create_indexes(self.INDEXES)

    async def insert(self, doc: dict) -> None:
        await self.col.insert_one(doc)

    async def get(self, attachment_id: int) -> dict | None:
        return await self.col.find_one({"_id": attachment_id})

    async def pending(self, owner_id: int) -> int:
        """How many of owner_id's uploads are not sent (nor claimed) yet."""
        return await self.col.count_documents({"owner_id": owner_id, "state": "new"})

    async def many(self, ids: list[int]) -> list[dict]:
        return await self.col.find({"_id": {"$in": ids}}).to_list(None)

    async def claim(self, ids: list[int], owner_id: int, conv: str, token: str, now, key: str | None = None) -> int:
        """Claim the owner's `new` attachments among `ids` for a message of `conv` (whose client_msg_id
        is `key`); how many were."""
        mine = {"$and": [{"$eq": ["$owner_id", owner_id]}, {"$eq": ["$state", "new"]}]}
        result = await self.col.update_many({"_id": {"$in": ids}}, [{"$set": {
            "state": {"$cond": [mine, "claimed", "$state"]},
            "claim": {"$cond": [mine, token, "$claim"]},
            "conv": {"$cond": [mine, conv, "$conv"]},
            "key": {"$cond": [mine, key, "$key"]},
            "at": {"$cond": [mine, now, "$at"]},
        }}])
        return result.modified_count

    async def release(self, ids: list[int], token: str) -> int:
        """Give back the attachments claimed with `token` (state new, its upload time again)."""
        ours = {"$and": [{"$eq": ["$claim", token]}, {"$eq": ["$state", "claimed"]}]}
        result = await self.col.update_many({"_id": {"$in": ids}}, [{"$set": {
            "state": {"$cond": [ours, "new", "$state"]},
            "at": {"$cond": [ours, "$created_at", "$at"]},
            "conv": {"$cond": [ours, None, "$conv"]},
            "claim": {"$cond": [ours, None, "$claim"]},
        }}])
        return result.modified_count

    async def mark_sent(self, ids: list[int], token: str, message_id: int, now) -> int:
        ours = {"$and": [{"$eq": ["$claim", token]}, {"$eq": ["$state", "claimed"]}]}
        result = await self.col.update_many({"_id": {"$in": ids}}, [{"$set": {
            "state": {"$cond": [ours, "sent", "$state"]},
            "message_id": {"$cond": [ours, message_id, "$message_id"]},
            "at": {"$cond": [ours, now, "$at"]},
        }}])
        return result.modified_count

    async def in_state_before(self, state: str, before, limit: int = 500) -> list[dict]:
        return await self.col.find({"state": state, "at": {"$lt": before}}).limit(limit).to_list(None)

    async def mark_deleting(self, before, now) -> int:
        result = await self.col.update_many({"state": "new", "at": {"$lt": before}}, {"$set": {"state": "deleting", "at": now}})
        return result.modified_count

    async def mark_ids_deleting(self, ids: list[int], now) -> int:
        result = await self.col.update_many({"_id": {"$in": ids}}, {"$set": {"state": "deleting", "at": now}})
        return result.modified_count

    async def deleting(self, limit: int = 500) -> list[dict]:
        return await self.col.find({"state": "deleting"}).limit(limit).to_list(None)

    async def delete(self, ids: list[int]) -> int:
        return (await self.col.delete_many({"_id": {"$in": ids}})).deleted_count


class AttachmentService:
    """Uploads, claims, links and downloads of chat attachments (no Tornado here).

    Dependencies by name: the store, the id allocator, the clock, the files' folder, the signing
    secret (the server's JWT secret; a key for links is derived from it), and the settings' limits."""

    def __init__(self, *, store: AttachmentStore, ids: IdAllocator, clock: Clock, root: Path, secret: str, max_bytes: int,
                 max_pixels: int, url_seconds: int, max_pending: int = 50, public_base_url: str | None = None, decoders: int = 2):
        self.store = store
        self.ids = ids
        self.clock = clock
        self.root = root
        self.max_bytes = max_bytes
        self.max_pixels = max_pixels
        self.url_seconds = url_seconds
        self.max_pending = max_pending  # unsent uploads per user: a day of 10 MB uploads is bounded per account
        self.base = public_base_url or ""
        self._key = hmac.new(secret.encode(), b"sheda chat attachment links", hashlib.sha256).digest()
        self._decoding = asyncio.Semaphore(decoders)  # a decoded 40-megapixel photo is ~120 MB
        self._tasks: set = set()

    # ---- upload ----------------------------------------------------------------------
    async def upload(self, owner_id: int, data: bytes) -> dict:
        """Store a file for `owner_id`; the attachment as the upload route answers it."""
        if len(data) > self.max_bytes:
            raise TooLarge(f"The file is {len(data)} bytes; attachments may have at most {self.max_bytes} bytes")
        if not data:
            raise ValidationFailed.single("file", "is empty")
        if await self.store.pending(owner_id) >= self.max_pending:
            raise Conflict(f"You have {self.max_pending} attachments uploaded and not sent: send or wait for them to expire first",
                           "too_many_pending_attachments")
        async with self._decoding:
            stored = await asyncio.to_thread(inspect, data, self.max_pixels)
        name = uuid.uuid4().hex
        doc = {"owner_id": owner_id, "kind": stored.kind, "mime": stored.mime, "size": len(stored.data),
               "file": f"{name}.{stored.extension}", "state": "new", "conv": None, "claim": None, "message_id": None}
        if stored.width is not None:
            doc.update(width=stored.width, height=stored.height)
        files = [(doc["file"], stored.data)]
        if stored.thumbnail is not None:
            doc.update(thumb=f"{name}.thumb.{'png' if stored.thumbnail_mime == 'image/png' else 'jpg'}",
                       thumb_mime=stored.thumbnail_mime)
            files.append((doc["thumb"], stored.thumbnail))
        await asyncio.to_thread(self._write, files)
        try:
            doc["_id"] = await self.ids.next("chat_attachments")
            doc["created_at"] = doc["at"] = self.clock.now()
            await self.store.insert(doc)
        except BaseException:
            await asyncio.to_thread(self._unlink, [f for f, _ in files])
            raise
        return self.view(doc)

    def _write(self, files: list[tuple[str, bytes]]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        for name, data in files:
            tmp = self.root / f"{name}.part"
            tmp.write_bytes(data)
            tmp.replace(self.root / name)

    def _unlink(self, names: list[str]) -> None:
        for name in names:
            if name:
                (self.root / name).unlink(missing_ok=True)

    # ---- links -----------------------------------------------------------------------
    def _sign(self, attachment_id: int, variant: str, exp: int) -> str:
        mac = hmac.new(self._key, f"{attachment_id}:{variant}:{exp}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()

    def link(self, attachment_id: int, variant: str = "file") -> str:
        """A signed, expiring URL (at least url_seconds, on a URL_GRID_SECONDS grid)."""
        now = int(self.clock.now().timestamp())
        exp = -(-(now + self.url_seconds) // URL_GRID_SECONDS) * URL_GRID_SECONDS
        path = f"/api/v1/chat/attachments/{attachment_id}" + ("/thumbnail" if variant == "thumbnail" else "")
        return f"{self.base}{path}?exp={exp}&sig={self._sign(attachment_id, variant, exp)}"

    def view(self, meta: dict) -> dict:
        """An attachment as clients see it (messages carry `meta` without URLs: `id` or `_id`)."""
        aid = meta.get("id", meta.get("_id"))
        out = {"id": aid, "kind": meta["kind"], "mime": meta["mime"], "size": meta["size"]}
        if meta.get("width") is not None:
            out.update(width=meta["width"], height=meta["height"])
        out["url"] = self.link(aid)
        if meta.get("thumb") or meta.get("has_thumbnail"):
            out["thumbnail_url"] = self.link(aid, "thumbnail")
        return out

    @staticmethod
    def message_meta(doc: dict) -> dict:
        """What a message stores of each attachment (enough for `view`, no URLs, no file names)."""
        meta = {"id": doc["_id"], "kind": doc["kind"], "mime": doc["mime"], "size": doc["size"]}
        if doc.get("width") is not None:
            meta.update(width=doc["width"], height=doc["height"])
        if doc.get("thumb"):
            meta["has_thumbnail"] = True
        return meta

    # ---- claims (ChatService.submit) -------------------------------------------------
    async def claim(self, owner_id: int, ids: list[int], conv: str, key: str | None = None) -> tuple[str | None, list[dict]]:
        """Claim `ids` for a message of `owner_id` in `conv` whose client_msg_id is `key`: (claim token,
        the message's metadata). Raises 409 attachment_used or 404 attachment_not_found, with nothing
        claimed. A resend (the same key, the same conversation, every attachment already claimed by
        that message) gets (None, metadata): it goes on without a claim, and the chat's resend window
        answers it with the stored message."""
        if len(set(ids)) != len(ids):
            raise ValidationFailed.single("attachment_ids", "must not repeat an id")
        token = secrets.token_hex(8)
        claimed = await self.store.claim(ids, owner_id, conv, token, self.clock.now(), key)
        docs = None
        if claimed != len(ids):
            if claimed:
                await self.store.release(ids, token)
            docs = {d["_id"]: d for d in await self.store.many(ids)}
            for aid in ids:
                doc = docs.get(aid)
                if doc is None or doc["owner_id"] != owner_id or doc["state"] == "deleting":
                    raise NotFound(f"No attachment {aid} of yours", "attachment_not_found")
            if not claimed and key is not None and all(docs[aid]["state"] in ("claimed", "sent") and docs[aid].get("key") == key
                                                      and docs[aid].get("conv") == conv for aid in ids):
                return None, [self.message_meta(docs[aid]) for aid in ids]
            used = [aid for aid in ids if docs[aid]["state"] != "new"]
            raise Conflict(f"Attachment {used[0] if used else ids[0]} was already sent in a message", "attachment_used")
        docs = {d["_id"]: d for d in await self.store.many(ids)}
        return token, [self.message_meta(docs[aid]) for aid in ids]

    def settle(self, ids: list[int], token: str, future: asyncio.Future) -> None:
        """Once the message's future resolves: mark its attachments sent, or give them back."""
        def done(f: asyncio.Future) -> None:
            if f.cancelled() or f.exception() is not None:
                work = self.store.release(ids, token)
            else:
                work = self.store.mark_sent(ids, token, f.result()[0]["_id"], self.clock.now())
            task = asyncio.ensure_future(work)
            self._tasks.add(task)
            task.add_done_callback(self._settled)

        future.add_done_callback(done)

    def _settled(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:  # the cleanup job settles it later
            log.warning("attachment claim not settled: %r", task.exception())

    async def drain(self) -> None:
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # ---- downloads -------------------------------------------------------------------
    async def open(self, attachment_id: int, variant: str, *, user_id: int | None = None, exp: int | None = None,
                   sig: str | None = None) -> tuple[bytes, str]:
        """(bytes, Content-Type) of an attachment or its thumbnail, for a signed link (exp, sig) or a
        participant (user_id: the uploader, or one of the two users of the conversation it was sent in)."""
        if user_id is None:
            if exp is None or sig is None:
                raise Forbidden("A signed link (exp and sig) or a bearer token is required", "invalid_link")
            # Bytes, not str: compare_digest refuses a str with non-ASCII characters (a 500 schemathesis found).
            if not hmac.compare_digest(self._sign(attachment_id, variant, exp).encode(), sig.encode("utf-8", "replace")):
                raise Forbidden("This link is not valid", "invalid_link")
            if exp < self.clock.now().timestamp():
                raise Forbidden("This link has expired: fetch the message again for a fresh one", "link_expired")
        doc = await self.store.get(attachment_id)
        if doc is None or doc["state"] == "deleting":
            raise NotFound("No such attachment", "attachment_not_found")
        if user_id is not None and user_id != doc["owner_id"] and not _in_conv(user_id, doc.get("conv")):
            raise NotFound("No such attachment", "attachment_not_found")
        name, mime = (doc["file"], doc["mime"]) if variant == "file" else (doc.get("thumb"), doc.get("thumb_mime"))
        if not name:
            raise NotFound("This attachment has no thumbnail", "attachment_not_found")
        try:
            data = await asyncio.to_thread((self.root / name).read_bytes)
        except FileNotFoundError:
            raise NotFound("No such attachment", "attachment_not_found")
        return data, mime

    async def discard(self, ids: list[int]) -> int:
        """Delete attachments now (their message was deleted for everyone): marked `deleting` first,
        so no download or claim sees them and the cleanup job finishes what a crash interrupts."""
        await self.store.mark_ids_deleting(ids, self.clock.now())
        docs = await self.store.many(ids)
        await asyncio.to_thread(self._unlink, [n for d in docs if d["state"] == "deleting" for n in (d.get("file"), d.get("thumb"))])
        return await self.store.delete([d["_id"] for d in docs if d["state"] == "deleting"])

    # ---- cleanup ---------------------------------------------------------------------
    async def cleanup(self, *, unsent_after: timedelta, stale_claim_after: timedelta, find_message) -> int:
        """Delete uploads never sent after `unsent_after` (files, then documents); settle claims older
        than `stale_claim_after` (`find_message(conv, attachment_id)` -> message id or None). Returns
        how many attachments were deleted."""
        now = self.clock.now()
        for doc in await self.store.in_state_before("claimed", now - stale_claim_after):
            message_id = await find_message(doc["conv"], doc["_id"]) if doc.get("conv") else None
            if message_id is not None:
                await self.store.mark_sent([doc["_id"]], doc["claim"], message_id, now)
            else:
                await self.store.release([doc["_id"]], doc["claim"])
        await self.store.mark_deleting(now - unsent_after, now)
        deleted = 0
        while True:
            docs = await self.store.deleting()
            if not docs:
                return deleted
            await asyncio.to_thread(self._unlink, [n for d in docs for n in (d.get("file"), d.get("thumb"))])
            deleted += await self.store.delete([d["_id"] for d in docs])


def _in_conv(user_id: int, conv: str | None) -> bool:
    return conv is not None and str(user_id) in conv.split(":")


class AttachmentCleanupJob(PeriodicTrigger):
    """Deletes attachments never sent a day after their upload (and settles claims a crashed process
    left), every CHAT_ATTACHMENT_CLEANUP_MINUTES, on every process (each step is idempotent)."""

    name = "chat_attachment_cleanup"

    def __init__(self, attachments: AttachmentService, messages, *, unsent_hours: float, interval_minutes: float):
        super().__init__(interval_minutes * 60_000)
        self.attachments = attachments
        self.messages = messages  # MessageStore: where a stale claim's message would be
        self.unsent_after = timedelta(hours=unsent_hours)

    async def _message_with(self, conv: str, attachment_id: int) -> int | None:
        """The id of the message of `conv` carrying the attachment (a rare walk: crashes only)."""
        docs = await self.messages.scan(conv, newest_first=True, need=1, projection={"attachments": 1},
                                        keep=lambda d: any(a.get("id") == attachment_id for a in d.get("attachments") or ()))
        return docs[0]["_id"] if docs else None

    async def run(self) -> int:
        return await self.attachments.cleanup(unsent_after=self.unsent_after, stale_claim_after=timedelta(hours=1),
                                              find_message=self._message_with)
