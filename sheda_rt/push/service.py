"""PushService: devices, notification settings, and (dispatch.py) the dispatcher.

Rules kept here: a token or endpoint is one device (registering it again updates it and moves it
to the user who registered it last); a device belongs to the login family it was registered
under, and logging that family out deletes it; an endpoint must be https on a public address
unless PUSH_ALLOW_LOCAL_ENDPOINTS (netguard.py); bad input is a 422 with nothing stored."""
from __future__ import annotations

import json
import logging

from sheda_rt.errors import NotFound, ValidationFailed
from sheda_rt.pagination import PageQuery, decode_cursor, encode_cursor
from sheda_rt.push.models import DeviceIn, NotificationSettings, WebPushDeviceIn
from sheda_rt.push.netguard import check_endpoint_url
from sheda_rt.push.store import DeviceStore, PreferenceStore, token_key

log = logging.getLogger("sheda.push")


def device_out(doc: dict) -> dict:
    out = {"id": doc["_id"], "platform": doc["platform"], "created_at": doc["created_at"], "updated_at": doc["updated_at"]}
    if doc["platform"] == "webpush":
        out["endpoint"] = doc["endpoint"]
    else:
        out["token_hint"] = doc["token"][-8:]
    if doc.get("environment"):
        out["environment"] = doc["environment"]
    return out


DEFAULT_SETTINGS = NotificationSettings().model_dump()


class PushService:
    def __init__(self, settings, devices: DeviceStore, preferences: PreferenceStore, clock, vapid):
        self.settings = settings
        self.devices = devices
        self.preferences = preferences
        self.clock = clock
        self.vapid = vapid
        self.max_devices = settings.push_max_devices_per_user
        self.dispatch = None  # the Dispatcher (dispatch.py), set by the context once the job queue exists
        self.digests = None  # chat email digests (sheda_rt/reminders/digest.py), set by the context

    # ---- events from other features (cheap, never raise) --------------------
    def on_message_stored(self, doc: dict) -> None:
        """A chat message was stored and handed to the receiver's sockets."""
        if self.dispatch is not None:
            self.dispatch.on_message_stored(doc)
        if self.digests is not None:
            self.digests.on_message_stored(doc)

    def on_read(self, reader_id: int, other_id: int) -> None:
        """`reader_id` read `other_id`'s messages (a read receipt on any device)."""
        if self.dispatch is not None:
            self.dispatch.on_read(reader_id, other_id)

    def _devices_changed(self) -> None:
        if self.dispatch is not None:
            self.dispatch.forget_devices(None)

    # ---- devices -----------------------------------------------------------
    async def register(self, principal, body: DeviceIn) -> dict:
        device = body.root
        if isinstance(device, WebPushDeviceIn):
            sub = device.subscription
            try:
                check_endpoint_url(sub.endpoint, allow_local=self.settings.push_allow_local_endpoints)
            except ValueError as exc:
                raise ValidationFailed.single("subscription.endpoint", str(exc))
            key = token_key("webpush", sub.endpoint)
            fields = {"platform": "webpush", "endpoint": sub.endpoint,
                      "keys": {"p256dh": sub.keys.p256dh, "auth": sub.keys.auth}}
        else:
            key = token_key(device.platform, device.token)
            fields = {"platform": device.platform, "token": device.token}
            if device.platform == "apns":
                fields["environment"] = device.environment
        # fam: logging this login out deletes the device; ep: the token epoch it was registered under, so a
        # "sign out everywhere" (password reset, deactivation) ends its pushes too (the dispatcher deletes it)
        fields.update(user_id=principal.user_id, fam=principal.claims.get("fam"), ep=principal.claims.get("ep", 0))
        doc = await self.devices.upsert(key, fields, self.clock.now())
        await self._cap(principal.user_id)
        self._devices_changed()
        log.info(json.dumps({"event": "push_device_registered", "user_id": principal.user_id, "device_id": doc["_id"],
                             "platform": doc["platform"]}))
        return device_out(doc)

    async def _cap(self, user_id: int) -> None:
        """At most PUSH_MAX_DEVICES_PER_USER devices: the least recently registered go first."""
        docs = await self.devices.of_user(user_id)
        if len(docs) > self.max_devices:
            for doc in sorted(docs, key=lambda d: (d["updated_at"], d["_id"]))[: len(docs) - self.max_devices]:
                await self.devices.delete(user_id, doc["_id"])

    async def list(self, user_id: int, page: PageQuery) -> dict:
        """Oldest first, a page of `page.limit`. A user has at most PUSH_MAX_DEVICES_PER_USER devices, so all of
        them are read on the user's index and the page is cut here (a `_id` range in the query would make the
        embedded database scan the whole collection); the cursor is the pagination helper's (the last id)."""
        docs = await self.devices.of_user(user_id)
        if page.cursor:
            [after] = decode_cursor(page.cursor, 1)
            if not isinstance(after, int) or isinstance(after, bool):
                raise ValidationFailed.single("cursor", "is not a cursor for this listing")
            docs = [d for d in docs if d["_id"] > after]
        shown = docs[: page.limit]
        more = len(docs) > page.limit
        return {"items": [device_out(d) for d in shown], "next_cursor": encode_cursor([shown[-1]["_id"]]) if more else None}

    async def delete(self, user_id: int, device_id: int) -> None:
        if not await self.devices.delete(user_id, device_id):
            raise NotFound("No such device", "device_not_found")
        self._devices_changed()

    async def on_logout(self, user_id: int, fam: str | None) -> None:
        """Logging a login family out deletes the devices registered under it."""
        if fam:
            removed = await self.devices.delete_family(user_id, fam)
            self._devices_changed()
            if removed:
                log.info(json.dumps({"event": "push_devices_logged_out", "user_id": user_id, "count": removed}))

    # ---- settings ----------------------------------------------------------
    async def get_settings(self, user_id: int) -> dict:
        doc = await self.preferences.get(user_id)
        if doc is None:
            return dict(DEFAULT_SETTINGS)
        return {k: doc.get(k, DEFAULT_SETTINGS[k]) for k in DEFAULT_SETTINGS}

    async def put_settings(self, user_id: int, body: NotificationSettings) -> dict:
        data = body.model_dump()
        await self.preferences.put(user_id, data, self.clock.now())
        return data

    def vapid_public_key(self) -> dict:
        return {"public_key": self.vapid.public_key_b64}
