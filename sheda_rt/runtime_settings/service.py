"""Runtime settings, the same on every process at once.

One database document (`runtime_settings`, _id "runtime") holds what administrators changed;
a key never changed takes its default from the static settings (BOOKING_HOLD_HOURS, ...).
Services ask `get()` (passed to them by name) on their hot paths, so each process keeps the
document in memory. A PATCH writes the database first, appends {who, when, changes} to
`runtime_settings_audit`, then sends the control op `runtime_settings` through the hub's
control channel, which reaches this process synchronously (before the PATCH is answered) and
the others through Redis: each drops its copy and reads the document again on next use. With
several processes the PATCH is answered only once every process has dropped its copy (the
blocks' ConfirmedInvalidation, sheda_rt/blocks/confirm.py, under its own name), so a request
to any process right after the answer sees the new values. A generation counter keeps a read that raced an invalidation out of the cache (it is answered,
not kept). While Redis is away the op is replayed when it returns; the copy is also re-read
at most every REFRESH_SECONDS, which bounds how long a process can miss one.
"""
from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from pymongo import ASCENDING, DESCENDING, ReturnDocument
from pymongo.operations import IndexModel

from sheda_rt.clock import format_ts
from sheda_rt.pagination import paginate
from sheda_rt.runtime_settings.models import RuntimeSettings

if TYPE_CHECKING:  # types only: the context wires these in
    from sheda_rt.clock import Clock
    from sheda_rt.blocks.confirm import ConfirmedInvalidation
    from sheda_rt.realtime.hub import Hub

log = logging.getLogger("sheda.runtime_settings")

CONTROL_OP = "runtime_settings"
DOC_ID = "runtime"
KEYS = tuple(RuntimeSettings.model_fields)


class RuntimeSettingsStore:
    def __init__(self, db, ids):
        self.ids = ids  # audit entries get integer ids (cursors carry ints, not ObjectIds)
        self.col = db["runtime_settings"]
        self.audit = db["runtime_settings_audit"]

    async def ensure_indexes(self) -> None:
        # The audit is read newest first by cursor: (when, _id) is its sort.
        await self.audit.create_indexes([IndexModel([("when", DESCENDING), ("_id", DESCENDING)], name="when_desc")])

    async def read(self) -> dict:
        return await self.col.find_one({"_id": DOC_ID}) or {}

    async def apply(self, changes: dict) -> dict:
        """Set `changes`; the document as it was before (an empty one the first time)."""
        before = await self.col.find_one_and_update({"_id": DOC_ID}, {"$set": changes}, upsert=True,
                                                     return_document=ReturnDocument.BEFORE)
        return before or {}

    async def record(self, entry: dict) -> None:
        await self.audit.insert_one({"_id": await self.ids.next("runtime_settings_audit"), **entry})

    async def audit_page(self, page, serialize) -> dict:
        return await paginate(self.audit, {}, [("when", DESCENDING), ("_id", DESCENDING)], page, serialize)


def audit_view(doc: dict) -> dict:
    return {"id": doc["_id"], "who": doc["who"], "when": format_ts(doc["when"]), "changes": doc["changes"]}


class RuntimeSettingsService:
    REFRESH_SECONDS = 5.0

    def __init__(self, store: RuntimeSettingsStore, *, defaults: dict, hub: Hub, clock: Clock,
                 confirm: ConfirmedInvalidation | None = None):
        self.store = store
        self.defaults = RuntimeSettings(**defaults)  # checked once at start: a bad static value fails loudly
        self.hub = hub  # the control channel: every process drops its copy on a change
        self.clock = clock
        self._cached: RuntimeSettings | None = None
        self._read_at = 0.0  # monotonic: the fallback refresh must not move with a test's clock
        self._generation = 0
        self.hub.control_listeners.append(self._on_control)
        self.confirm = confirm  # several processes: a change is answered once every process dropped its copy
        if confirm is not None:
            confirm.on_apply(lambda _: self._drop())

    def _on_control(self, message: dict) -> None:
        if message.get("op") == CONTROL_OP:
            self._drop()

    def _drop(self) -> None:
        self._generation += 1
        self._cached = None

    def _merge(self, doc: dict) -> RuntimeSettings:
        stored = {k: doc[k] for k in KEYS if k in doc}
        return self.defaults.model_copy(update=stored)

    async def get(self) -> RuntimeSettings:
        """The settings now: from memory, or one read when changed or older than REFRESH_SECONDS."""
        cached = self._cached
        if cached is not None and time.monotonic() - self._read_at < self.REFRESH_SECONDS:
            return cached
        generation = self._generation
        current = self._merge(await self.store.read())
        if generation == self._generation:  # no change announced while we read
            self._cached, self._read_at = current, time.monotonic()
        return current

    async def view(self) -> dict:
        return (await self.get()).model_dump()

    async def update(self, admin_id: int, patch) -> dict:
        """Apply the keys sent; audit what moved; every process sees it before this returns here."""
        sent = {k: getattr(patch, k) for k in patch.model_fields_set}
        if sent:
            before = self._merge(await self.store.apply(sent)).model_dump()
            changes = {k: [before[k], v] for k, v in sent.items() if before[k] != v}
            if changes:
                await self.store.record({"who": admin_id, "when": self.clock.now(), "changes": changes})
                log.info('{"event": "runtime_settings_changed", "admin": %d, "keys": %s}', admin_id, sorted(changes))
            # Also when nothing moved: a process that missed an earlier op catches up.
            await self.hub.fanout.publish_control({"op": CONTROL_OP})
            if self.confirm is not None:
                await self.confirm.everywhere([])
        return await self.view()

    async def audit(self, page) -> dict:
        return await self.store.audit_page(page, audit_view)

    async def status(self) -> dict:
        return {"maintenance_banner": (await self.get()).maintenance_banner}
