"""/api/v1/devices, /api/v1/users/me/notification-settings, /api/v1/push/vapid-public-key:
where a user's pushes go and which ones they want."""
from __future__ import annotations

from handlers.base import APIHandler
from handlers.routing import endpoint, route
from sheda_rt.accounts.auth import USER
from sheda_rt.push.models import DeviceIn, DeviceList, DeviceOut, DeviceQuery, NotificationSettings, NotificationSettingsOut, VapidKeyOut

TAGS = ("push",)


class DevicesHandler(APIHandler):
    @endpoint("Register this device for push notifications", auth=USER, body=DeviceIn, response=DeviceOut, status=201,
              errors=(401, 422), tags=TAGS)
    async def post(self, body: DeviceIn):
        """`{platform: "webpush", subscription: {endpoint, keys: {p256dh, auth}}}` (PushSubscription.toJSON()),
        `{platform: "fcm", token}` or `{platform: "apns", token, environment: sandbox|production}`.
        Registering the same token (or endpoint) again updates that device, and moves it to the user
        who registered it last. The device belongs to this login: logging it out deletes the device.
        422 with nothing stored for keys that are not a P-256 point / 16-byte secret, an endpoint that is
        not https on a public address, an unknown platform or a token over 4 KB."""
        return await self.ctx.push.register(self.principal, body)

    @endpoint("My devices", auth=USER, query=DeviceQuery, response=DeviceList, errors=(401, 422), tags=TAGS)
    async def get(self, query: DeviceQuery):
        """`{items: [{id, platform, endpoint | token_hint, environment?, created_at, updated_at}], next_cursor}`,
        oldest first, `?limit=` (default 20, max 100) a page, `?cursor=` the next one (next_cursor null: the
        last page); at most PUSH_MAX_DEVICES_PER_USER devices (registering one more drops the least recently
        registered). 422 for an unknown query key, a bad limit or a cursor this listing did not issue."""
        return await self.ctx.push.list(self.principal.user_id, query)


class DeviceHandler(APIHandler):
    @endpoint("Remove one of my devices", auth=USER, status=204, errors=(401, 404), tags=TAGS)
    async def delete(self, device_id: int):
        """404 `device_not_found` for someone else's device or one already removed."""
        await self.ctx.push.delete(self.principal.user_id, device_id)


class NotificationSettingsHandler(APIHandler):
    @endpoint("My notification settings", auth=USER, response=NotificationSettingsOut, errors=(401,), tags=TAGS)
    async def get(self):
        """`{push: {chat, appointments, contracts, listings, announcements}, email: {...}, previews, quiet_hours}`;
        everything on and no quiet hours until set. `push.<kind>` turns off the pushes of that kind: chat messages;
        viewings (appointment.*); contracts, builder bookings and change requests; listings (saved-search alerts,
        inquiries, project updates); administrators' announcements."""
        return await self.ctx.push.get_settings(self.principal.user_id)

    @endpoint("Replace my notification settings", auth=USER, body=NotificationSettings, response=NotificationSettingsOut,
              errors=(401, 422), tags=TAGS)
    async def put(self, body: NotificationSettings):
        """The whole document (omitted fields take their defaults). `quiet_hours`:
        `{start: "22:00", end: "07:00", time_zone: "Africa/Lagos"}` (an IANA zone) or null; pushes due
        inside them are held until they end. `previews: false` sends pushes without message text."""
        return await self.ctx.push.put_settings(self.principal.user_id, body)


class VapidKeyHandler(APIHandler):
    @endpoint("The VAPID public key for Web Push subscriptions", response=VapidKeyOut, tags=TAGS)
    async def get(self):
        """Pass `public_key` as `applicationServerKey` to `PushManager.subscribe()`."""
        return self.ctx.push.vapid_public_key()


default_handlers = [
    route("/api/v1/devices", DevicesHandler),
    route("/api/v1/devices/{device_id:int}", DeviceHandler),
    route("/api/v1/users/me/notification-settings", NotificationSettingsHandler),
    route("/api/v1/push/vapid-public-key", VapidKeyHandler),
]
