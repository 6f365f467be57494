"""Who is calling, and may they? The one auth check used by REST and WebSocket alike.

A Requirement says what a route needs; `AuthService.authenticate` turns an
`Authorization` header (or a raw token) into a Principal or raises 401/403:
- 401: no token, bad signature, expired, wrong token type, revoked (logout, a reused refresh
  token's family, or every token older than a password reset: the user's `token_epoch`).
- 403: a valid token that is not allowed: missing scope, an admin route without
  role admin, or a deactivated user (its tokens stop working at once).
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from sheda_rt.errors import Forbidden, Unauthorized


@dataclass(frozen=True)
class Requirement:
    """What a route needs from the caller's token."""

    any_scope: frozenset[str] = frozenset()  # at least one of these scopes (empty: any access token)
    admin: bool = False  # scope admin AND role admin AND active
    otp: bool = False  # a single-use otp-scoped token instead of an access token

    def describe(self) -> str:
        if self.admin:
            return "admin"
        if self.otp:
            return "otp"
        return " or ".join(sorted(self.any_scope)) or "user"


USER = Requirement()
CLIENT = Requirement(any_scope=frozenset({"client"}))
AGENT = Requirement(any_scope=frozenset({"agent"}))
BUILDER = Requirement(any_scope=frozenset({"builder"}))
ADMIN = Requirement(admin=True)
OTP = Requirement(otp=True)


@dataclass
class Principal:
    user: dict
    claims: dict
    scopes: frozenset[str] = field(default_factory=frozenset)

    @property
    def user_id(self) -> int:
        return self.user["_id"]

    @property
    def jti(self) -> str:
        return self.claims["jti"]


def bearer_token(header: str | None) -> str:
    if not header:
        raise Unauthorized("Missing bearer token", "missing_token")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("Authorization must be 'Bearer <token>'", "invalid_token")
    return token.strip()


def _still_held(scope: str, user: dict) -> bool:
    if scope in ("client", "agent", "builder"):
        return user.get("user_type") == scope
    if scope == "admin":
        return user.get("role") == "admin"
    return True


class SharedLookups:
    """The database reads of token checks that arrive together, done together: the user
    and revocation look-ups of every token checked in one event-loop turn go out as one
    `_id $in` query each, instead of two queries per token. When thousands of phones
    reconnect at once (a deploy, a network blip) that is a few queries per turn, not two
    per socket. Nothing is cached: every answer is read after its request arrived, as a
    query of its own would be, so a logout or a deactivation counts at once."""

    CHUNK = 200  # ids per $in (bounded lists: a database may match them one by one)

    def __init__(self, users, revocations):
        self.users = users
        self.revocations = revocations
        self._waiting: list[tuple[int, list[str], asyncio.Future]] = []

    def lookup(self, user_id: int, revocable: list[str]) -> asyncio.Future:
        """Future of (the user document or None, whether any of `revocable` is revoked)."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        if not self._waiting:
            loop.call_soon(lambda: asyncio.ensure_future(self._flush()))
        self._waiting.append((user_id, revocable, future))
        return future

    async def _flush(self) -> None:
        batch, self._waiting = self._waiting, []
        try:
            user_ids = list({u for u, _, _ in batch})
            token_ids = list({t for _, ids, _ in batch for t in ids})
            users, revoked = await asyncio.gather(
                asyncio.gather(*(self.users.get_many(user_ids[i:i + self.CHUNK]) for i in range(0, len(user_ids), self.CHUNK))),
                asyncio.gather(*(self.revocations.revoked_among(token_ids[i:i + self.CHUNK])
                                 for i in range(0, len(token_ids), self.CHUNK))),
            )
        except Exception as exc:
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        found = {k: v for part in users for k, v in part.items()}
        gone = set().union(*revoked)
        for user_id, ids, future in batch:
            if not future.done():
                user = found.get(user_id)  # a copy each: callers may change their principal's user
                future.set_result((dict(user) if user is not None else None, any(t in gone for t in ids)))


class AuthService:
    def __init__(self, tokens, users, revocations):
        self.tokens = tokens
        self.users = users
        self.revocations = revocations
        self.lookups = SharedLookups(users, revocations)

    async def authenticate(self, authorization: str | None, need: Requirement) -> Principal:
        return await self.authenticate_token(bearer_token(authorization), need)

    async def authenticate_token(self, token: str, need: Requirement) -> Principal:
        claims = self.tokens.decode(token, expected_type="otp" if need.otp else "access")
        user_id = int(claims["sub"])
        # The token itself (logout, single-use otp tokens) or its whole login family
        # (refresh-token reuse, logout) may be revoked: one query answers both, and it
        # runs concurrently with the user lookup (one round trip of latency, not two),
        # shared with the other token checks of this moment (SharedLookups).
        revocable = [claims["jti"]] + ([f"fam:{claims['fam']}"] if claims.get("fam") else [])
        user, revoked = await self.lookups.lookup(user_id, revocable)
        if user is None:
            raise Unauthorized("Token user no longer exists", "invalid_token")
        if revoked:
            raise Unauthorized("Token has been revoked", "token_revoked")
        if not user.get("is_active", True):
            raise Forbidden("This account is deactivated", "account_inactive")
        # Password reset and deactivation move the user's token epoch on: older tokens are dead.
        if claims.get("ep", 0) != user.get("token_epoch", 0):
            raise Unauthorized("Token has been revoked", "token_revoked")
        # A role scope counts only while it matches the account: after switch-account or a
        # demotion, older tokens keep working but no longer carry the old role's rights.
        scopes = frozenset(s for s in claims.get("scopes") or () if _still_held(s, user))
        if need.admin:
            if "admin" not in scopes or user.get("role") != "admin":
                raise Forbidden("Admin access required", "admin_required")
        elif need.any_scope and not (need.any_scope & scopes):
            raise Forbidden(f"This needs the {need.describe()} scope", "insufficient_scope")
        return Principal(user=user, claims=claims, scopes=scopes)
