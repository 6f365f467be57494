"""The `users` collection. Ids are integers from the id allocator; usernames and
emails are unique case-insensitively (stored lower-cased alongside)."""
from __future__ import annotations

import re

from pymongo import ASCENDING, IndexModel, UpdateMany
from pymongo.errors import DuplicateKeyError

from sheda_rt.database.writes import update_then_get

from sheda_rt.errors import Conflict
from sheda_rt.pagination import paginate


def epoch_is(epoch: int) -> dict:
    """Filter: the user's token epoch is still `epoch` (0 also matches documents that never had one)."""
    return {"token_epoch": epoch} if epoch else {"token_epoch": {"$in": [0, None]}}


def _taken(exc: DuplicateKeyError) -> Conflict:
    key = str(exc.details.get("keyPattern") or exc.details.get("errmsg") or exc)
    field = "email" if "email" in key else "phone" if "phone" in key else "username"
    return Conflict(f"That {field} is already registered", f"{field}_taken")


class UserStore:
    INDEXES = [
        IndexModel([("username_lc", ASCENDING)], unique=True, name="username_unique"),
        IndexModel([("email", ASCENDING)], unique=True, name="email_unique"),
        IndexModel([("phone", ASCENDING)], unique=True, name="phone_unique",
                   partialFilterExpression={"phone": {"$type": "string"}}),
        IndexModel([("created_at", ASCENDING), ("_id", ASCENDING)], name="created"),
        IndexModel([("role", ASCENDING), ("_id", ASCENDING)], name="role"),
    ]

    def __init__(self, db, ids):
        self.col = db["users"]
        self.ids = ids

    async def ensure_indexes(self):
        await self.col.create_indexes(self.INDEXES)

    async def insert(self, doc: dict) -> dict:
        doc = dict(doc)
        doc["_id"] = await self.ids.next("users")
        try:
            await self.col.insert_one(doc)
        except DuplicateKeyError as exc:
            raise _taken(exc)
        return doc

    async def replace_pending(self, pending: dict, doc: dict) -> dict | None:
        """Overwrite a registration that was never verified with a new one (`doc`), keeping its id
        and email: one conditional replace of the whole document, so nothing of the old one is left
        (old username freed, profiles, flags) and the token epoch moves on. It applies only while the
        account is still unverified, active and unchanged since `pending` was read (same epoch):
        of racing re-registrations, or a verification racing one, exactly one wins. The new document,
        or None when it no longer matched; 409 `username_taken`/`phone_taken` when another account
        has them."""
        epoch = pending.get("token_epoch", 0)
        flt = {"_id": pending["_id"], "email": pending["email"], "is_verified": {"$ne": True},
               "is_active": {"$ne": False}, **epoch_is(epoch)}
        new = {**doc, "_id": pending["_id"], "email": pending["email"], "token_epoch": epoch + 1}
        try:
            result = await self.col.replace_one(flt, new)
        except DuplicateKeyError as exc:
            raise _taken(exc)
        return new if result.matched_count == 1 else None

    async def holder_of(self, field: str, value: str) -> dict | None:
        """The account holding a unique `username_lc` or `phone`."""
        return await self.col.find_one({field: value})

    async def remove_stale_pending(self, pending: dict, created_before) -> bool:
        """Delete a registration that was never verified and was made before `created_before`, only while it
        is still that registration (unverified, active, same token epoch: neither verified, deactivated nor
        replaced by its email's owner since `pending` was read). True when this call deleted it."""
        flt = {"_id": pending["_id"], "is_verified": {"$ne": True}, "is_active": {"$ne": False},
               "created_at": {"$lte": created_before}, **epoch_is(pending.get("token_epoch", 0))}
        return (await self.col.delete_one(flt)).deleted_count == 1

    async def get(self, user_id: int) -> dict | None:
        return await self.col.find_one({"_id": user_id})

    async def get_many(self, user_ids) -> dict[int, dict]:
        ids = list(set(user_ids))
        return {d["_id"]: d async for d in self.col.find({"_id": {"$in": ids}})}

    async def find_login(self, identifier: str) -> dict | None:
        """Login accepts a username, an email or a phone number: one equality look-up per
        unique index, in that order (a single $or of the three is a collection scan on the
        embedded database: 0.5 s at 30k users). The phone is only tried for identifiers
        with no letters in them."""
        ident = identifier.strip()
        user = await self.col.find_one({"username_lc": ident.lower()})
        if user is None and "@" in ident:
            user = await self.col.find_one({"email": ident.lower()})
        if user is None and ident and not any(c.isalpha() for c in ident):
            user = await self.col.find_one({"phone": ident})
        return user

    async def find_by_email(self, email: str) -> dict | None:
        return await self.col.find_one({"email": email.strip().lower()})

    IN_CHUNK = 200  # ids per $in: a database may match $in by scanning the list, per document

    async def active_ids(self, user_type: str | None = None) -> list[int]:
        """Ids of every active user (of `user_type`, if given): the audience of an
        administrator's announcement. One pass over the collection, ids only; no index is
        kept for it (it would cost every sign-up, for a rare administrative read)."""
        query: dict = {"is_active": {"$ne": False}}
        if user_type is not None:
            query["user_type"] = user_type
        return [doc["_id"] async for doc in self.col.find(query, projection={"_id": 1})]

    def inactive_ids(self, batch: int = 500):
        """Ids of every deactivated user, as a cursor read `batch` at a time: one pass over the collection (no
        index on is_active, as for active_ids), for a backfill at a start."""
        return self.col.find({"is_active": False}, projection={"_id": 1}, batch_size=batch)

    async def touch_last_seen(self, user_ids: list[int], when) -> None:
        """One round trip for many users going offline together (a network blip drops thousands)."""
        if not user_ids:
            return
        step = self.IN_CHUNK
        await self.col.bulk_write([UpdateMany({"_id": {"$in": user_ids[i:i + step]}}, {"$set": {"last_seen": when}})
                                   for i in range(0, len(user_ids), step)], ordered=False)

    async def set_fields(self, user_id: int, changes: dict) -> None:
        """A write whose result nobody reads (last_login_at on every login): update_one, which
        every engine serves from the _id index (find_one_and_update may scan on some)."""
        await self.col.update_one({"_id": user_id}, {"$set": changes})

    async def update_if(self, user_id: int, expected: dict, changes: dict) -> dict | None:
        """Apply `changes` only while the user still matches `expected`; the user after the
        write, or None when it did not match (of racing callers exactly one gets the document)."""
        return await update_then_get(self.col, {"_id": user_id, **expected}, {"$set": changes})

    async def update(self, user_id: int, changes: dict, unset: list[str] | None = None) -> dict | None:
        update: dict = {}
        if changes:
            update["$set"] = changes
        if unset:
            update["$unset"] = {k: "" for k in unset}
        if not update:
            return await self.get(user_id)
        try:
            return await update_then_get(self.col, {"_id": user_id}, update)
        except DuplicateKeyError as exc:
            raise _taken(exc)

    async def revoke_all_tokens(self, user_id: int, changes: dict, expected: dict | None = None) -> dict | None:
        """Apply `changes` and move the user's token epoch on: every token issued before carries the
        old epoch and is refused from now on (the auth check compares it with the loaded user).
        `expected`: only while the user still matches it (None when it did not)."""
        return await update_then_get(self.col, {"_id": user_id, **(expected or {})},
                                     {"$set": changes, "$inc": {"token_epoch": 1}})

    async def has_active_admin(self) -> bool:
        """Whether any admin is active. The admins are read on the `role` index (the embedded database plans an
        index only when every field of the filter is in it); is_active (absent: active) is checked here."""
        cursor = self.col.find({"role": "admin"}, projection={"is_active": 1})
        try:
            async for doc in cursor:
                if doc.get("is_active", True):
                    return True
        finally:
            await cursor.close()
        return False

    async def restore_admin(self, user_id: int, now, token_epoch: int | None = None) -> dict | None:
        """Make the user an active admin again unless they are one already (None then): the undo of a
        demotion or deactivation that left no active admin (AccountService.admin_update). `token_epoch`: the
        epoch the deactivation moved on to; while it is still the user's, it goes back (their tokens live again)."""
        flt = {"_id": user_id, "$or": [{"role": {"$ne": "admin"}}, {"is_active": False}]}
        update = {"$set": {"role": "admin", "is_active": True, "updated_at": now}}
        if token_epoch is not None:
            restored = await update_then_get(self.col, {**flt, "token_epoch": token_epoch}, {**update, "$inc": {"token_epoch": -1}})
            if restored is not None:
                return restored
        return await update_then_get(self.col, flt, update)

    async def page(self, page, serialize, *, role=None, user_type=None, is_active=None, is_verified=None, prefix=None) -> dict:
        """Newest first, keyset-paginated; `prefix` matches the start of the username or email."""
        query: dict = {}
        for name, value in (("role", role), ("user_type", user_type), ("is_active", is_active), ("is_verified", is_verified)):
            if value is not None:
                query[name] = value
        if prefix:
            pattern = "^" + re.escape(prefix.lower())
            query["$or"] = [{"username_lc": {"$regex": pattern}}, {"email": {"$regex": pattern}}]
        return await paginate(self.col, query, [("_id", -1)], page, serialize)
