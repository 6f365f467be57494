"""Account rules: registration, login, token pairs. Knows nothing about HTTP."""
from __future__ import annotations

from datetime import timedelta

from sheda_rt.clock import format_ts
from sheda_rt.errors import Unauthorized
from sheda_rt.accounts.passwords import hash_password, verify_password


def scopes_for(user: dict) -> list[str]:
    scopes = [user["user_type"]]
    if user.get("role") == "admin":
        scopes.append("admin")
    return scopes


def public_user(user: dict) -> dict:
    """What anyone may see of a user."""
    return {
        "id": user["_id"],
        "username": user["username"],
        "full_name": user.get("full_name"),
        "user_type": user["user_type"],
        "avatar_url": user.get("avatar_url"),
        "created_at": format_ts(user.get("created_at")),
    }


def private_user(user: dict) -> dict:
    """What the user sees of themselves."""
    return {
        **public_user(user),
        "email": user["email"],
        "phone": user.get("phone"),
        "role": user.get("role", "user"),
        "is_active": user.get("is_active", True),
        "is_verified": user.get("is_verified", False),
        "updated_at": format_ts(user.get("updated_at")),
    }


class AccountService:
    def __init__(self, ctx):
        self.ctx = ctx
        self.users = ctx.users
        self.tokens = ctx.tokens
        self.clock = ctx.clock
        self.settings = ctx.settings

    async def register(self, req, *, verified: bool = False, send_otp: bool = True) -> dict:
        now = self.clock.now()
        doc = {
            "username": req.username,
            "username_lc": req.username.lower(),
            "email": req.email.lower(),
            "phone": req.phone,
            "full_name": req.full_name,
            "password_hash": await hash_password(req.password, self.settings.bcrypt_rounds),
            "user_type": req.user_type,
            "role": "user",
            "is_active": True,
            "is_verified": verified,
            "created_at": now,
            "updated_at": now,
        }
        if doc["phone"] is None:
            del doc["phone"]
        return await self.users.insert(doc)

    def issue_pair(self, user: dict, family: str | None = None) -> dict:
        scopes = scopes_for(user)
        access_life = timedelta(minutes=self.settings.access_token_minutes)
        access, _ = self.tokens.issue(user["_id"], scopes, "access", access_life)
        refresh, claims = self.tokens.issue(user["_id"], scopes, "refresh", timedelta(days=self.settings.refresh_token_days),
                                            **({"fam": family} if family else {}))
        if not family:
            # A new login starts a new rotation family named after its first refresh token.
            refresh, claims = self.tokens.issue(user["_id"], scopes, "refresh", timedelta(days=self.settings.refresh_token_days), fam=claims["jti"])
        return {"access_token": access, "refresh_token": refresh, "token_type": "bearer", "expires_in": int(access_life.total_seconds())}

    async def login(self, identifier: str, password: str) -> dict:
        user = await self.users.find_login(identifier)
        ok = await verify_password(password, user.get("password_hash") if user else None)
        if not ok or user is None:
            raise Unauthorized("Incorrect username or password", "invalid_credentials")
        return self.issue_pair(user)
