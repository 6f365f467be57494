"""/api/v1/properties/*, /api/v1/users/me/favourites: thin edges over PropertyService."""
from __future__ import annotations

from handlers.base import UPLOAD_BODY, APIHandler
from handlers.routing import endpoint, route
from sheda_rt.accounts.auth import AGENT, USER
from sheda_rt.listings.models import PropertyOut, StatusPatch  # [listing life cycle]
from sheda_rt.listings.models import (FavouriteItem, FavouriteOut, ImageAdded, ImagePatch, MyPropertiesQuery, PropertyCreate,
                                      PropertyOut, PropertyUpdate, SearchQuery)
from sheda_rt.pagination import PageQuery
from sheda_rt.responses import Page

TAGS = ("properties",)


class PropertiesHandler(APIHandler):
    @endpoint("Search listings (filters, sort, cursor)", query=SearchQuery, response=Page[PropertyOut], errors=(422,), tags=TAGS)
    async def get(self, query: SearchQuery):
        """Public. Returns `{items, next_cursor}`; pass `next_cursor` back as `cursor` for the next page
        (keyset pagination: inserts by others never cause repeats or skips). Only listed properties are
        returned, `status=available` unless asked otherwise. `price` is a decimal string ("2500000.00");
        price filters take a decimal string or an integer (naira). `location` matches words case-insensitively
        by prefix (3+ letters or a whole word); `near=lat,lng&radius_km=` limits to a circle (radius_km alone: 422), `bbox=minLng,minLat,
        maxLng,maxLat` to a box (not both); `q=` keywords must each be a whole word of the title, location or
        description (case- and accent-insensitive, at most 8 words); `category_id=` one category.
        Sorts: `newest` (default), `price_asc`, `price_desc`. A cursor only continues the sort it came from.
        Listings featured now (a paid promotion) come first, in the same sort, then the others; `newest` orders by
        the later of a listing's creation and its last paid bump."""
        return await self.ctx.properties.search(query)

    @endpoint("Create a listing (agents)", auth=AGENT, body=PropertyCreate, response=PropertyOut, status=201, errors=(401, 403, 422),
              tags=TAGS)
    async def post(self, body: PropertyCreate):
        """`price`: a decimal string with up to two decimals ("2500000.00") or an integer, in naira; a JSON float
        is a 422. Every response shows money as a two-decimal string. `geo` is optional `{lat, lng}`. A new
        listing is `available`; `status` then follows the contracts."""
        return await self.ctx.properties.create(self.principal, body)


class PropertyHandler(APIHandler):
    async def _optional_principal(self):
        header = self.request.headers.get("Authorization")
        return await self.ctx.auth.authenticate(header, USER) if header else None

    @endpoint("One listing", response=PropertyOut, errors=(401, 404), tags=TAGS)
    async def get(self, property_id: int):
        """Public. A delisted property is 404 except to its agent and admins (send the bearer token), and so is
        every listing of an agent whose account is deactivated (`hidden_reason` agent_inactive). Counts a
        view for the agent's analytics (once per viewer per day)."""
        return await self.ctx.properties.get(property_id, await self._optional_principal(), self.request.remote_ip)

    @endpoint("Change a listing (its agent or an admin)", auth=USER, body=PropertyUpdate, response=PropertyOut,
              errors=(401, 403, 404, 409, 422), tags=TAGS)
    async def patch(self, property_id: int, body: PropertyUpdate):
        """Any subset of the create fields; `geo: null` removes the map position. `status` cannot be set here
        (422): it follows confirm-payment and contract expiry. Needs an agent-scoped token of the owning agent,
        or an admin. An unlisted listing that is still available can be changed and stays unlisted (saved searches
        hear of it once it is listed again); 409 `property_delisted` for an unlisted sold or rented one (with
        `status`) or one hidden with its agent's deactivated account (with `hidden_reason`)."""
        return await self.ctx.properties.update(self.principal, property_id, body)

    @endpoint("Delist a listing (soft delete; its agent or an admin)", auth=USER, status=204, errors=(401, 403, 404), tags=TAGS)
    async def delete(self, property_id: int):
        """The listing disappears from search and is 404 to everyone but its agent and admins; it can no longer
        be booked, contracted or favourited. Existing contracts are not affected."""
        await self.ctx.properties.delist(self.principal, property_id)


class PropertyStatusHandler(APIHandler):
    @endpoint("Unlist or list again (its agent or an admin)", auth=USER, body=StatusPatch, response=PropertyOut,
              errors=(401, 403, 404, 409, 422), tags=TAGS)
    async def patch(self, property_id: int, body: StatusPatch):
        """`{"active": false}` unlists (as DELETE does), `{"active": true}` lists it again; both are idempotent.
        A sold or rented property cannot be listed again: 409 `property_not_available`."""
        return await self.ctx.properties.set_active(self.principal, property_id, body.active)


class PropertyImagesHandler(APIHandler):
    @endpoint("Add an image (multipart field `file`)", auth=USER, upload="file", response=ImageAdded, status=201,
              errors=(401, 403, 404, 409, 413, 415, 422), tags=TAGS)
    async def post(self, property_id: int):
        """jpeg, png or webp, decoded in full and stored re-encoded without metadata (415 otherwise); at most
        MAX_UPLOAD_BYTES and MAX_IMAGE_PIXELS (413) and at most 10 images per
        listing (409 `too_many_images`); an unlisted listing takes images while it is available (409 `property_delisted`
        as for PATCH). The first image becomes primary; send form field `is_primary=true` to make the new one
        primary. Returns `{image, property}`."""
        data = self.uploaded_file("file")
        fields, _ = self.form_fields()
        primary = fields.get("is_primary", "").strip().lower() in ("1", "true", "yes")
        return await self.ctx.properties.add_image(self.principal, property_id, data, primary)


class PropertyImageHandler(APIHandler):
    @endpoint("Make an image the primary one", auth=USER, body=ImagePatch, response=PropertyOut, errors=(401, 403, 404, 422),
              tags=TAGS)
    async def patch(self, property_id: int, image_id: int, body: ImagePatch):
        """`{"is_primary": true}`: this image becomes primary and the previous primary is unset."""
        return await self.ctx.properties.set_primary(self.principal, property_id, image_id)

    @endpoint("Delete an image", auth=USER, status=204, errors=(401, 403, 404), tags=TAGS)
    async def delete(self, property_id: int, image_id: int):
        """If it was the primary image, the first remaining image becomes primary."""
        await self.ctx.properties.delete_image(self.principal, property_id, image_id)


class FavouriteHandler(APIHandler):
    @endpoint("Add to my favourites", auth=USER, response=FavouriteOut, status=201, errors=(401, 404, 409), tags=TAGS)
    async def post(self, property_id: int):
        """409 if it is already a favourite."""
        return await self.ctx.properties.add_favourite(self.principal, property_id)

    @endpoint("Remove from my favourites", auth=USER, status=204, errors=(401, 404), tags=TAGS)
    async def delete(self, property_id: int):
        await self.ctx.properties.remove_favourite(self.principal, property_id)


class MyFavouritesHandler(APIHandler):
    @endpoint("My favourites, newest first", auth=USER, query=PageQuery, response=Page[FavouriteItem], errors=(401, 422), tags=TAGS)
    async def get(self, query: PageQuery):
        """`{items: [{id, property_id, created_at, property}], next_cursor}`; `property` is null once it is delisted."""
        return await self.ctx.properties.list_favourites(self.principal, query)


class MyPropertiesHandler(APIHandler):
    @endpoint("My listings in every state, newest first (agents)", auth=AGENT, query=MyPropertiesQuery,
              response=Page[PropertyOut], errors=(401, 403, 422), tags=TAGS)
    async def get(self, query: MyPropertiesQuery):
        """The caller's own listings whatever their state: listed or unlisted (`is_active`; `hidden_reason`
        agent_inactive while hidden with a deactivated account), available, sold or rented, each as GET
        /properties/{id} shows it to its agent. `status=` and `listed=true|false` narrow it. A cursor page
        (`limit`, `cursor` = the previous page's `next_cursor`)."""
        return await self.ctx.properties.my_listings(self.principal, query)


default_handlers = [
    route("/api/v1/properties", PropertiesHandler),
    route("/api/v1/properties/{property_id:int}", PropertyHandler),
    route("/api/v1/properties/{property_id:int}/status", PropertyStatusHandler),
    route("/api/v1/properties/{property_id:int}/images", PropertyImagesHandler, max_body=UPLOAD_BODY),
    route("/api/v1/properties/{property_id:int}/images/{image_id:int}", PropertyImageHandler),
    route("/api/v1/properties/{property_id:int}/favourite", FavouriteHandler),
    route("/api/v1/users/me/favourites", MyFavouritesHandler),
    route("/api/v1/users/me/properties", MyPropertiesHandler),
]
