"""/api/v1/admin/*: user administration. Needs the admin scope, role admin and an active account."""
from __future__ import annotations

from handlers.base import APIHandler
from handlers.routing import endpoint, route
from sheda_rt.accounts.auth import ADMIN
from sheda_rt.accounts.models import AdminUser, AdminUserPatch, AdminUserQuery
from sheda_rt.responses import Page


class AdminUsersHandler(APIHandler):
    @endpoint("List users (newest first)", auth=ADMIN, query=AdminUserQuery, response=Page[AdminUser], tags=("admin",))
    async def get(self, query: AdminUserQuery):
        """Filters: role, user_type, is_active, is_verified, q (prefix of username or email).
        Cursor pagination: `{"items": [...], "next_cursor": ...}`."""
        return await self.ctx.accounts.list_users(query)


class AdminUserHandler(APIHandler):
    @endpoint("Change a user's role or active flag", auth=ADMIN, body=AdminUserPatch, response=AdminUser, errors=(404, 409),
              tags=("admin",))
    async def patch(self, user_id: int, body: AdminUserPatch):
        """`{role?: user|admin|moderator, is_active?: bool}`. Deactivating closes the user's sockets (4403)
        and their tokens get 403 at once. A role change takes effect on the user's next login or refresh
        (the admin scope is issued then). 409 when an admin demotes or deactivates themselves (`self_change_refused`),
        or when the change would leave no active admin (`last_admin`: another admin was demoted at the same moment).
        Deactivating an agent unlists their listed listings (`hidden_reason` agent_inactive: 404 to all but
        admins, in no search); reactivating lists exactly those again (ones unlisted by the agent or staff stay
        unlisted)."""
        return await self.ctx.accounts.admin_update(self.principal.user, user_id, body.role, body.is_active)


default_handlers = [
    route("/api/v1/admin/users", AdminUsersHandler),
    route("/api/v1/admin/users/{user_id:int}", AdminUserHandler),
]
