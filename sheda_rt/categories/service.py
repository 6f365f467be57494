"""Category rules: anyone reads, admins create, rename and delete; one in use is kept (409)."""
from __future__ import annotations

from sheda_rt.clock import format_ts
from sheda_rt.errors import Conflict, NotFound, ValidationFailed
from sheda_rt.search import fold


def category_view(doc: dict) -> dict:
    return {"id": doc["_id"], "name": doc["name"], "description": doc.get("description", ""), "listings": doc.get("uses", 0),
            "created_at": format_ts(doc["created_at"]), "updated_at": format_ts(doc["updated_at"])}


def name_key(name: str) -> str:
    """Names are unique up to case, accents and spacing ("Student  Housing" = "student housing")."""
    return " ".join(fold(name).split())


class CategoryService:
    def __init__(self, store, clock):
        self.store = store
        self.clock = clock

    async def list(self, page) -> dict:
        return await self.store.page(page, category_view)

    async def get(self, category_id: int) -> dict:
        doc = await self.store.get(category_id)
        if doc is None:
            raise NotFound("No such category", "category_not_found")
        return category_view(doc)

    async def create(self, body) -> dict:
        now = self.clock.now()
        doc = await self.store.insert({"name": body.name, "key": name_key(body.name), "description": body.description,
                                       "created_at": now, "updated_at": now})
        return category_view(doc)

    async def update(self, category_id: int, body) -> dict:
        changes = {name: getattr(body, name) for name in body.model_fields_set}
        if "name" in changes:
            changes["key"] = name_key(changes["name"])
        changes["updated_at"] = self.clock.now()
        doc = await self.store.update(category_id, changes)
        if doc is None:
            raise NotFound("No such category", "category_not_found")
        return category_view(doc)

    async def delete(self, category_id: int) -> None:
        if await self.store.delete_unused(category_id):
            return
        doc = await self.store.get(category_id)
        if doc is None:
            raise NotFound("No such category", "category_not_found")
        raise Conflict(f"The category is used by {doc.get('uses', 0)} listing(s); move them to another category first",
                       "category_in_use", extra={"listings": doc.get("uses", 0)})

    # ---- for the listings service ---------------------------------------------
    async def take(self, category_id: int, field: str = "category_id") -> None:
        """Count a listing into the category before it is written; 422 when there is no such category."""
        if not await self.store.use(category_id):
            raise ValidationFailed.single(field, "no such category")

    async def release(self, category_id: int) -> None:
        await self.store.release(category_id)
