"""/api/v1/categories: public list and read, admin create/update/delete."""
from __future__ import annotations

from handlers.base import APIHandler
from handlers.routing import endpoint, route
from sheda_rt.accounts.auth import ADMIN
from sheda_rt.categories.models import CategoryCreate, CategoryOut, CategoryQuery, CategoryUpdate
from sheda_rt.responses import Page

TAGS = ("categories",)


class CategoriesHandler(APIHandler):
    @endpoint("List categories (oldest first)", query=CategoryQuery, response=Page[CategoryOut], errors=(422,), tags=TAGS)
    async def get(self, query: CategoryQuery):
        """Public. `{items, next_cursor}`; each item says how many listings carry it (`listings`)."""
        return await self.ctx.categories.list(query)

    @endpoint("Create a category (admins)", auth=ADMIN, body=CategoryCreate, response=CategoryOut, status=201,
              errors=(401, 403, 409, 422), tags=TAGS)
    async def post(self, body: CategoryCreate):
        """`{name, description?}`; names are unique ignoring case, accents and repeated spaces (409 `category_exists`)."""
        return await self.ctx.categories.create(body)


class CategoryHandler(APIHandler):
    @endpoint("One category", response=CategoryOut, errors=(404,), tags=TAGS)
    async def get(self, category_id: int):
        return await self.ctx.categories.get(category_id)

    @endpoint("Rename or describe a category (admins)", auth=ADMIN, body=CategoryUpdate, response=CategoryOut,
              errors=(401, 403, 404, 409, 422), tags=TAGS)
    async def patch(self, category_id: int, body: CategoryUpdate):
        return await self.ctx.categories.update(category_id, body)

    @endpoint("Delete an unused category (admins)", auth=ADMIN, status=204, errors=(401, 403, 404, 409), tags=TAGS)
    async def delete(self, category_id: int):
        """409 `category_in_use` while any listing (listed or not) carries it."""
        await self.ctx.categories.delete(category_id)


default_handlers = [
    route("/api/v1/categories", CategoriesHandler),
    route("/api/v1/categories/{category_id:int}", CategoryHandler),
]
