"""/api/v1/users/*: my profile, avatar, bank details, public profiles. Thin edges over AccountService."""
from __future__ import annotations

from handlers.base import UPLOAD_BODY, APIHandler
from handlers.routing import endpoint, route
from sheda_rt.accounts.auth import AGENT, USER
from typing import Union

from sheda_rt.accounts.models import (AccountInfo, AccountInfoRequest, PrivateUser, ProfileUpdate, PublicAgent, PublicBuilder,
                                      PublicUser)
from sheda_rt.accounts.service import private_user
from sheda_rt.errors import NotFound


class MeHandler(APIHandler):
    @endpoint("My profile", auth=USER, response=PrivateUser, tags=("users",))
    async def get(self):
        """Private fields plus `profile`, the fields of the current user_type."""
        return private_user(self.principal.user)

    @endpoint("Update my profile", auth=USER, body=ProfileUpdate, response=PrivateUser, errors=(409,), tags=("users",))
    async def patch(self, body: ProfileUpdate):
        """Every user: full_name, phone (409 `phone_taken` if another account has it). Clients also:
        preferred_location, preferred_property_type, budget_min, budget_max (decimal strings, min <= max).
        Agents also: agency_name, license_number, bio, years_experience, whatsapp, office_address.
        Any other field, including the other type's, is a 422 and nothing is changed. `null` clears."""
        user = await self.ctx.accounts.update_profile(self.principal.user, body.model_dump(exclude_unset=True))
        return private_user(user)

    @endpoint("Deactivate my account", auth=USER, status=204, errors=(409,), tags=("users",))
    async def delete(self):
        """Sets is_active=false: every token of the account gets 403 `account_inactive` from now on
        and open WebSockets close with 4403. The data stays (an admin can reactivate). An agent's listed
        listings leave the market with the account (404 to all but admins, `hidden_reason` agent_inactive)
        and come back when an admin reactivates it. An admin gets 409 `self_change_refused`, as when
        deactivating themselves through PATCH /admin/users/{id} (so the last admin cannot lock everyone
        out): another admin demotes them first."""
        await self.ctx.accounts.close_own_account(self.principal.user)


class AvatarHandler(APIHandler):
    @endpoint("Upload my avatar (jpeg, png or webp)", auth=USER, upload="file", response=PrivateUser, errors=(413, 415),
              tags=("users",))
    async def put(self):
        """multipart/form-data with the image in `file`. The image is decoded in full and stored
        re-encoded, without its metadata (EXIF, GPS; its orientation applied): 415 unless the whole
        file is a jpeg/png/webp image, 413 above MAX_UPLOAD_BYTES or MAX_IMAGE_PIXELS (`image_too_large`).
        Returns my profile with the new avatar_url (served under /media/avatars/)."""
        user = await self.ctx.accounts.set_avatar(self.principal.user, self.uploaded_file("file"))
        return private_user(user)


class AccountInfoHandler(APIHandler):
    @endpoint("My bank details (agents)", auth=AGENT, response=AccountInfo, errors=(404,), tags=("users",))
    async def get(self):
        """404 `account_info_not_found` until set. Shown to a client paying this agent."""
        info = await self.ctx.accounts.account_info(self.principal.user_id)
        if info is None:
            raise NotFound("No account details are set", "account_info_not_found")
        return info

    @endpoint("Set my bank details (agents)", auth=AGENT, body=AccountInfoRequest, response=AccountInfo, tags=("users",))
    async def put(self, body: AccountInfoRequest):
        """Replaces the details: account_name, bank_name, account_number (10 digits), bank_code (optional)."""
        return await self.ctx.accounts.put_account_info(self.principal.user_id, body.model_dump())

    @endpoint("Remove my bank details (agents)", auth=AGENT, status=204, errors=(404,), tags=("users",))
    async def delete(self):
        await self.ctx.accounts.delete_account_info(self.principal.user_id)


class UserHandler(APIHandler):
    @endpoint("A user's public profile", response=Union[PublicAgent, PublicBuilder, PublicUser], errors=(404,), tags=("users",))
    async def get(self, user_id: int):
        """id, username, full_name, user_type, avatar_url, created_at; agents add their agent profile.
        404 for unknown and deactivated users."""
        return await self.ctx.accounts.public_user(user_id)


default_handlers = [
    route("/api/v1/users/me", MeHandler),
    route("/api/v1/users/me/avatar", AvatarHandler, max_body=UPLOAD_BODY),
    route("/api/v1/users/me/account-info", AccountInfoHandler),
    route("/api/v1/users/{user_id:int}", UserHandler),
]
