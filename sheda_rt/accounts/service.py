"""Account rules: registration, one-time codes, login, token rotation, logout,
password reset, switching between client and agent. Knows nothing about HTTP.

Token families: a login (or a verify-account) starts a family `fam`; every
access and refresh token issued from it carries `fam`. A refresh uses up its
refresh token and issues a new pair in the same family. If a used refresh token
comes back, someone holds a copy: the whole family is revoked (one denylist
entry `fam:<id>`), which kills the copy, the legitimate holder's current
tokens, and every access token of the family, in one stroke.
"""
from __future__ import annotations

import json
import logging
import uuid
from datetime import datetime, timedelta, timezone
from decimal import Decimal

from typing import TYPE_CHECKING, Awaitable, Callable

from pydantic import ValidationError

from sheda_rt.accounts.models import (AGENT_PROFILE_FIELDS, BUILDER_PROFILE_FIELDS, CLIENT_PROFILE_FIELDS, AgentProfilePatch,
                                      BuilderProfilePatch, ClientProfilePatch)
from sheda_rt.accounts.otp_store import new_code
from sheda_rt.accounts.passwords import hash_password, verify_password
from sheda_rt.accounts.usernames import RESERVED_MESSAGE, is_reserved
from sheda_rt.accounts.users_store import epoch_is
from sheda_rt.clock import format_ts
from sheda_rt.errors import BadRequest, Conflict, Forbidden, NotFound, RateLimited, Unauthorized, ValidationFailed

if TYPE_CHECKING:  # types only: the context wires these in (runtime imports here would make cycles)
    from config.settings import Settings
    from sheda_rt.accounts.bank_store import AccountInfoStore
    from sheda_rt.accounts.otp_store import OtpStore
    from sheda_rt.accounts.refresh_store import RefreshTokenStore
    from sheda_rt.accounts.revocations_store import RevocationStore
    from sheda_rt.accounts.tokens import TokenCodec
    from sheda_rt.accounts.users_store import UserStore
    from sheda_rt.clock import Clock
    from sheda_rt.limits import MemoryLimits
    from sheda_rt.mail.mailer import Mailer
    from sheda_rt.media.store import MediaStore
    from sheda_rt.push.service import PushService
    from sheda_rt.realtime.hub import Hub
    from sheda_rt.redis_limits import RedisLimits

log = logging.getLogger("sheda.accounts")

OTP_MAX_ATTEMPTS = 5
# Wrong codes per account within LOGIN_WINDOW_MINUTES, over every code mailed meanwhile (two codes' worth of tries).
OTP_MAX_FAILURES_PER_ACCOUNT = 2 * OTP_MAX_ATTEMPTS
# send-otp: a few mails per address, then one a minute (mail bombing, SMTP quota).
OTP_SEND_BURST, OTP_SEND_PER_SECOND = 5, 1 / 60
# Per client address, over every address mailed: REGISTRATIONS_PER_IP_PER_HOUR, OTP_SENDS_PER_IP_PER_HOUR.
PER_IP_WINDOW_SECONDS = 3600


# Each user type keeps its own profile fields (and patch model) under `<type>_profile`.
PROFILE_FIELDS = {"client": CLIENT_PROFILE_FIELDS, "agent": AGENT_PROFILE_FIELDS, "builder": BUILDER_PROFILE_FIELDS}
PROFILE_PATCHES = {"client": ClientProfilePatch, "agent": AgentProfilePatch, "builder": BuilderProfilePatch}


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


def _profile(user: dict, user_type: str | None = None) -> dict:
    """The profile fields of one user type (the current one by default), null when unset."""
    kind = user_type or user["user_type"]
    stored = user.get(f"{kind}_profile") or {}
    view = {name: stored.get(name) for name in PROFILE_FIELDS[kind]}
    if kind == "builder":  # set by an upload and by an admin, never by PATCH
        view["logo_url"] = stored.get("logo_url")
        view["verified"] = bool(stored.get("verified"))
    return view


def private_user(user: dict) -> dict:
    """What the user sees of themselves: everything but secrets, with the profile of their
    current user_type (each type keeps its own profile, so switching back restores it)."""
    return {
        **public_user(user),
        "email": user["email"],
        "phone": user.get("phone"),
        "role": user.get("role", "user"),
        "is_active": user.get("is_active", True),
        "is_verified": user.get("is_verified", False),
        "updated_at": format_ts(user.get("updated_at")),
        "profile": _profile(user),
    }


def agent_profile(user: dict) -> dict:
    """An agent as anyone may see them: public fields plus the agent profile
    (agency_name, license_number, bio, years_experience, whatsapp, office_address).
    GET /agents/{id} adds the agent's active listings to this."""
    return {**public_user(user), **_profile(user, "agent")}


def builder_profile(user: dict) -> dict:
    """A builder as anyone may see them: public fields plus the company profile (company_name,
    registration_number, website, about, logo_url, verified). GET /builders/{id} adds projects."""
    return {**public_user(user), **_profile(user, "builder")}


def public_profile(user: dict) -> dict:
    """GET /users/{id}: agents and builders show their profile; a client's preferences and budget stay private."""
    if user["user_type"] == "agent":
        return agent_profile(user)
    return builder_profile(user) if user["user_type"] == "builder" else public_user(user)


def admin_user(user: dict) -> dict:
    return {**private_user(user), "last_login_at": format_ts(user.get("last_login_at"))}


def account_info_view(doc: dict) -> dict:
    return {"account_name": doc["account_name"], "bank_name": doc["bank_name"], "account_number": doc["account_number"],
            "bank_code": doc.get("bank_code"), "updated_at": format_ts(doc.get("updated_at"))}


_INVALID_OTP = "The code is wrong or has expired (after 5 wrong tries it stops working): request a new one"


class AccountService:
    def __init__(self, *, users: UserStore, tokens: TokenCodec, otps: OtpStore, refresh_tokens: RefreshTokenStore,
                 revocations: RevocationStore, account_info: AccountInfoStore, clock: Clock, settings: Settings,
                 mailer: Mailer, limits: MemoryLimits | RedisLimits, hub: Hub, push: PushService, media: MediaStore):
        self.users = users
        self.tokens = tokens
        self.otps = otps
        self.refresh_tokens = refresh_tokens
        self.revocations = revocations
        self.bank = account_info
        self.clock = clock
        self.settings = settings
        self.mailer = mailer
        self.limits = limits  # send-otp and login throttles, shared by every process when Redis is configured
        self.hub = hub  # closes the sockets of revoked logins
        self.push = push  # a logged-out login's devices are deleted
        self.media = media  # avatars
        # [listings] set by the context (sheda_rt/listings/agent_status.py): an account deactivated or reactivated takes
        # its listings off the market or puts them back, through a durable job queued before the write (`changing`)
        # and run after it (`changed`). None: listings do not follow (tests of accounts alone).
        self.listings_follow = None
        # Set by the context: coroutine functions (user_id) run when a pending registration is replaced by its
        # email's owner (`_replace_pending`). The id stays; what other features keep under it for the old
        # registrant (notifications, their events in the stream, messages sent to them) goes, so the new
        # registrant starts as a fresh account would.
        self.registration_replaced: list[Callable[[int], Awaitable[object]]] = []

    # ---- registration and one-time codes -----------------------------------
    async def register(self, req, *, verified: bool = False, send_otp: bool = True, operator: bool = False,
                       ip: str | None = None) -> dict:
        """`operator`: the command line may take reserved names (see accounts/usernames.py); clients may not.
        `ip`: a client's address, of which at most REGISTRATIONS_PER_IP_PER_HOUR registrations are taken in
        any hour (429 beyond: each mails a code to the address it names); None (the command line): no limit.

        An email whose account was never verified (and is active) does not block its owner: anyone
        can register any address, and whoever squatted it would otherwise keep a password on the
        owner's account once the owner verifies it by mail. Registering that email again replaces the
        pending registration (same id; username, password, type, phone, name all new; the old username
        freed; earlier codes and tokens void; a new code mailed), answered like a fresh registration.
        It shares the send-otp throttle of the address (it mails a code). A verified or deactivated
        account's email stays a 409 `email_taken`, and so does losing a race to a verification or to
        another re-registration of the same email. A username or phone held by someone else's pending
        registration older than PENDING_REGISTRATION_HOURS is freed for this one (`_remove_stale_holder`)."""
        if not operator and is_reserved(req.username):
            raise ValidationFailed.single("username", RESERVED_MESSAGE)
        if ip is None:
            return await self._register(req, verified=verified, send_otp=send_otp)
        key = f"register-ip:{ip}"
        await self._take_ip_slot(key, self.settings.registrations_per_ip_per_hour, "registrations")
        try:
            return await self._register(req, verified=verified, send_otp=send_otp)
        except BaseException:  # nothing registered, nothing mailed: the address keeps its slot
            await self.limits.forgive_failure(key)
            raise

    async def _take_ip_slot(self, key: str, limit: int, what: str) -> None:
        """One of `limit` slots of a client address over the last hour, counted before the work (so a burst
        gets no further than requests in turn), else 429 with the wait until the oldest leaves the hour."""
        if await self.limits.record_failure(key, PER_IP_WINDOW_SECONDS) > limit:
            await self.limits.forgive_failure(key)
            wait = await self.limits.blocked_for(key, limit, PER_IP_WINDOW_SECONDS)
            raise RateLimited(f"Too many {what} from this address; try again later", wait or 1)

    async def _register(self, req, *, verified: bool, send_otp: bool) -> dict:
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
        pending, looked = None, False
        # Each pass clears at most one conflict: the email's own pending registration (replaced), or a stale
        # pending registration of someone else holding the username or the phone (removed); else the 409.
        for _ in range(4):
            try:
                user = await (self.users.insert(doc) if pending is None else self._replace_pending(pending, doc))
                break
            except Conflict as exc:
                if not looked:  # whichever key the database named, the email's own pending registration comes first
                    looked = True
                    pending = await self.users.find_by_email(doc["email"])
                    if pending is not None and (pending.get("is_verified") or not pending.get("is_active", True)):
                        raise
                    if pending is not None:
                        if send_otp:  # each replacement mails a code: no more mail to the address than send-otp allows
                            wait = await self.limits.take_token(f"send-otp:{doc['email']}", OTP_SEND_BURST, OTP_SEND_PER_SECOND)
                            if wait > 0:
                                raise RateLimited("Too many codes requested for this address; try again later", int(wait) + 1)
                        continue
                if exc.code not in ("username_taken", "phone_taken") or not await self._remove_stale_holder(exc.code, doc):
                    raise
        else:
            raise Conflict("That username or phone is already registered", "username_taken")
        if send_otp:
            await self._mail_code(user, "Verify your Sheda account")
        return user

    async def _replace_pending(self, pending: dict, doc: dict) -> dict:
        user = await self.users.replace_pending(pending, doc)
        if user is None:  # verified, deactivated or re-registered by someone else since we read it
            raise Conflict("That email is already registered", "email_taken")
        # Earlier codes were issued at the old token epoch: none of them matches any more; so do the old
        # registration's failed logins (their key carries the epoch: `_login_key`).
        log.info(json.dumps({"event": "pending_registration_replaced", "user_id": user["_id"]}))
        await self._forget_registrant(user["_id"])
        return user

    async def _forget_registrant(self, user_id: int) -> None:
        # Before the answer: a failure here is an error the client retries, and the retry replaces (or finds
        # removed) the registration again and runs these again.
        for forget in self.registration_replaced:
            await forget(user_id)

    async def _remove_stale_holder(self, code: str, doc: dict) -> bool:
        """A registration never verified holds its username and phone only for PENDING_REGISTRATION_HOURS:
        past that, someone else registering either removes it (its registrant, who never proved their
        address, registers again) and what was kept for it goes as on a replacement. A fresh one keeps
        them (409), so two people registering at once never take from each other; a verified or
        deactivated account is never touched. True when the holder was removed (try again)."""
        field = "phone" if code == "phone_taken" else "username_lc"
        if doc.get(field) is None:
            return False
        cutoff = self.clock.now() - timedelta(hours=self.settings.pending_registration_hours)
        holder = await self.users.holder_of(field, doc[field])
        if holder is None:
            return True  # gone since the insert failed: try again
        if holder.get("is_verified") or not holder.get("is_active", True) or (holder.get("created_at") or cutoff) > cutoff:
            return False
        if not await self.users.remove_stale_pending(holder, cutoff):
            return False  # verified, replaced or re-registered since it was read
        log.info(json.dumps({"event": "stale_registration_removed", "user_id": holder["_id"], "field": field}))
        await self._forget_registrant(holder["_id"])
        return True

    async def _mail_code(self, user: dict, subject: str) -> None:
        code = new_code()
        now = self.clock.now()
        minutes = self.settings.otp_minutes
        if not await self.otps.issue(user["_id"], code, now, now + timedelta(minutes=minutes), epoch=user.get("token_epoch", 0)):
            return  # the registration was replaced since `user` was read: its code would be dead, the new one is mailed
        body = (f"Hello {user.get('full_name') or user['username']},\n\n"
                f"Your Sheda verification code is {code}\n\n"
                f"It works once and expires in {minutes} minutes. If you did not ask for it, ignore this email.\n")
        try:
            await self.mailer.send(user["email"], subject, body)
        except Exception as exc:  # the account exists either way; the user can ask for another code
            log.error(json.dumps({"event": "mail_failed", "user_id": user["_id"], "error": f"{type(exc).__name__}: {exc}"}))

    async def send_otp(self, email: str, ip: str | None = None) -> None:
        """Mail a fresh code (replacing any earlier one). Unknown or deactivated addresses
        get the same answer and nothing is sent, so this cannot probe for accounts (and count alike
        against the client address's OTP_SENDS_PER_IP_PER_HOUR: one client mailing many people)."""
        email = email.lower()
        key = f"send-otp-ip:{ip}" if ip is not None else None
        if key is not None:
            await self._take_ip_slot(key, self.settings.otp_sends_per_ip_per_hour, "codes requested")
        wait = await self.limits.take_token(f"send-otp:{email}", OTP_SEND_BURST, OTP_SEND_PER_SECOND)
        if wait > 0:
            if key is not None:  # nothing mailed: the client address keeps its slot
                await self.limits.forgive_failure(key)
            raise RateLimited("Too many codes requested for this address; try again later", int(wait) + 1)
        user = await self.users.find_by_email(email)
        if user is None or not user.get("is_active", True):
            return
        await self._mail_code(user, "Your Sheda code")

    async def _use_code(self, email: str, code: str) -> dict:
        """The account whose live code `code` is (it is used up), else 400 `invalid_otp`. A code burns after
        OTP_MAX_ATTEMPTS wrong tries, but a new one is a send-otp away: so wrong codes are also counted per
        account, whatever the code, and past OTP_MAX_FAILURES_PER_ACCOUNT within LOGIN_WINDOW_MINUTES the
        next try is a 429 (the right code too), as a login is. Counted before the check, forgiven on success
        (a burst of guesses gets no further than guesses in turn)."""
        user = await self.users.find_by_email(email)
        if user is None:
            raise BadRequest(_INVALID_OTP, "invalid_otp")
        epoch = user.get("token_epoch", 0)
        # Per account, not per epoch (unlike the login's count): re-registering a pending email moves the epoch
        # on and mails new codes, and must not start the guessing of its codes over.
        key, window = f"otp-fail:{user['_id']}", self.settings.login_window_minutes * 60
        if wait := await self.limits.blocked_for(key, OTP_MAX_FAILURES_PER_ACCOUNT, window):
            raise RateLimited("Too many wrong codes for this account; try again later", wait)
        if await self.limits.record_failure(key, window) > OTP_MAX_FAILURES_PER_ACCOUNT:
            raise RateLimited("Too many wrong codes for this account; try again later",
                              await self.limits.blocked_for(key, OTP_MAX_FAILURES_PER_ACCOUNT, window))
        if not await self.otps.consume(user["_id"], code, self.clock.now(), OTP_MAX_ATTEMPTS, epoch=epoch):
            raise BadRequest(_INVALID_OTP, "invalid_otp")
        await self.limits.clear_failures(key)
        if not user.get("is_active", True):
            raise Forbidden("This account is deactivated", "account_inactive")
        return user

    async def verify_account(self, email: str, code: str) -> dict:
        """A right code marks the email verified and logs the user in (a new token family)."""
        user = await self._use_code(email, code)
        if not user.get("is_verified"):
            user = await self._mark_verified(user)
        await self.users.set_fields(user["_id"], {"last_login_at": self.clock.now()})  # a login, as the password's is
        return await self.issue_pair(user)

    async def _mark_verified(self, user: dict) -> dict:
        """Only the registration the code was mailed for: if it was replaced meanwhile (its token
        epoch moved on), the code proves nothing about the new one."""
        verified = await self.users.update_if(user["_id"], {"is_verified": {"$ne": True}, **epoch_is(user.get("token_epoch", 0))},
                                              {"is_verified": True, "updated_at": self.clock.now()})
        if verified is None:
            raise BadRequest(_INVALID_OTP, "invalid_otp")
        return verified

    async def verify_otp(self, email: str, code: str) -> dict:
        """A right code gives a short, single-use token with scope `otp` (for reset-password).
        Reading the code from the mailbox also proves the address, so it marks it verified."""
        user = await self._use_code(email, code)
        if not user.get("is_verified"):
            user = await self._mark_verified(user)
        life = timedelta(minutes=self.settings.otp_token_minutes)
        token, _ = self.tokens.issue(user["_id"], ["otp"], "otp", life, ep=user.get("token_epoch", 0))
        return {"access_token": token, "token_type": "bearer", "expires_in": int(life.total_seconds()), "scope": "otp"}

    async def reset_password(self, principal, password: str) -> None:
        """Uses up the otp token (its jti is revoked first, atomically: a second use is a 401), sets
        the password, and signs the account out everywhere: whoever knew the old password may hold
        tokens, so every token issued before stops working (401) and open sockets close with 4401."""
        claims = principal.claims
        expires = self._exp(claims)
        if not await self.revocations.revoke(claims["jti"], expires, reason="otp_used"):
            raise Unauthorized("This reset token was already used", "token_revoked")
        password_hash = await hash_password(password, self.settings.bcrypt_rounds)
        await self.users.revoke_all_tokens(principal.user_id, {"password_hash": password_hash, "updated_at": self.clock.now()})
        await self.hub.revoke_sessions(principal.user_id, code=4401, reason="password changed")

    # ---- tokens ------------------------------------------------------------
    def _exp(self, claims: dict) -> datetime:
        return datetime.fromtimestamp(claims["exp"], tz=timezone.utc)

    async def issue_pair(self, user: dict, family: str | None = None) -> dict:
        fam = family or uuid.uuid4().hex
        scopes = scopes_for(user)
        access_life = timedelta(minutes=self.settings.access_token_minutes)
        refresh_life = timedelta(days=self.settings.refresh_token_days)
        epoch = user.get("token_epoch", 0)
        access, _ = self.tokens.issue(user["_id"], scopes, "access", access_life, fam=fam, ep=epoch)
        refresh, claims = self.tokens.issue(user["_id"], scopes, "refresh", refresh_life, fam=fam, ep=epoch)
        await self.refresh_tokens.record(claims["jti"], user["_id"], fam, self.clock.now(), self._exp(claims))
        return {"access_token": access, "refresh_token": refresh, "token_type": "bearer",
                "expires_in": int(access_life.total_seconds())}

    def _login_key(self, user: dict | None, identifier: str, ip: str) -> str:
        # Per account (whichever name it was reached by) and client address, and per token epoch: a
        # replaced pending registration (the new registrant must not inherit a lockout the old one's
        # failed logins ran up) or a password reset (the owner proved the mailbox and chose a new
        # password) starts a fresh count. Epoch 0 keeps the key it always had.
        epoch = user.get("token_epoch", 0) if user else 0
        who = (f"{user['_id']}.{epoch}" if epoch else str(user["_id"])) if user else "unknown:" + identifier.strip().lower()
        return f"login:{who}:{ip}"

    @staticmethod
    def _login_ip_key(ip: str) -> str:
        # Per client address, whatever the account: one address trying many accounts.
        return f"login-ip:{ip}"

    async def login(self, identifier: str, password: str, ip: str = "-") -> dict:
        """Unknown user and wrong password get the same 401. Two throttles, over the sliding
        LOGIN_WINDOW_MINUTES, each answered 429 with Retry-After (even for the right password):
        - per account and address: LOGIN_MAX_FAILURES wrong tries each get 401, the next gets 429;
        - per address, whatever the accounts (credential stuffing): LOGIN_MAX_FAILURES_PER_IP
          failed logins each get 401, the next gets 429. A successful login clears the account's
          count, not the address's (a stuffing run that finds one right password goes on counting).
        A deactivated account gets 403 `account_inactive` and an unverified one 403
        `email_unverified`, but only once the password was right, so neither reveals anything to
        someone guessing."""
        user = await self.users.find_login(identifier)
        limits = self.limits
        window = self.settings.login_window_minutes * 60
        account_key, ip_key = self._login_key(user, identifier, ip), self._login_ip_key(ip)
        throttles = ((account_key, self.settings.login_max_failures), (ip_key, self.settings.login_max_failures_per_ip))
        for key, limit in throttles:  # `limit` failures already in the window: this try is one too many
            wait = await limits.blocked_for(key, limit, window)
            if wait:
                raise RateLimited("Too many failed logins; try again later", wait)
        # The attempt counts as a failure *before* the slow bcrypt check and is forgiven on
        # success: concurrent guesses each take a place in the window, so no burst of
        # them gets past the limit by racing the check above.
        for key, limit in throttles:
            if await limits.record_failure(key, window) > limit:
                raise RateLimited("Too many failed logins; try again later", await limits.blocked_for(key, limit, window))
        ok = await verify_password(password, user.get("password_hash") if user else None, self.settings.bcrypt_rounds)
        if not ok or user is None:
            raise Unauthorized("Incorrect username or password", "invalid_credentials")
        await limits.clear_failures(account_key)
        await limits.forgive_failure(ip_key)
        if not user.get("is_active", True):
            raise Forbidden("This account is deactivated", "account_inactive")
        if not user.get("is_verified", False):
            raise Forbidden("Verify your email first: use the code we sent (POST /auth/send-otp sends a new one)",
                            "email_unverified")
        await self.users.set_fields(user["_id"], {"last_login_at": self.clock.now()})
        return await self.issue_pair(user)

    async def refresh(self, refresh_token: str) -> dict:
        claims = self.tokens.decode(refresh_token, expected_type="refresh")
        fam = claims.get("fam")
        if not fam:
            raise Unauthorized("Invalid token", "invalid_token")
        if await self.revocations.any_revoked([claims["jti"], f"fam:{fam}"]):
            raise Unauthorized("Token has been revoked", "token_revoked")
        user_id = int(claims["sub"])
        state = await self.refresh_tokens.mark_used(claims["jti"], self.clock.now())
        if state == "reused":
            await self.revoke_family(user_id, fam, reason="refresh_reused")
            log.warning(json.dumps({"event": "refresh_token_reused", "user_id": user_id, "fam": fam}))
            raise Unauthorized("This refresh token was already used; the session has been signed out", "refresh_reused")
        if state != "ok":
            raise Unauthorized("Invalid token", "invalid_token")
        user = await self.users.get(user_id)
        if user is None:
            raise Unauthorized("Token user no longer exists", "invalid_token")
        if not user.get("is_active", True):
            raise Forbidden("This account is deactivated", "account_inactive")
        if claims.get("ep", 0) != user.get("token_epoch", 0):
            raise Unauthorized("Token has been revoked", "token_revoked")
        return await self.issue_pair(user, family=fam)

    async def revoke_family(self, user_id: int, fam: str, reason: str) -> None:
        # Outlives every token of the family: the newest refresh token lives refresh_token_days.
        until = self.clock.now() + timedelta(days=self.settings.refresh_token_days, minutes=self.settings.access_token_minutes)
        await self.revocations.revoke(f"fam:{fam}", until, reason=reason)
        await self.hub.revoke_sessions(user_id, fam=fam, code=4401, reason="session revoked")
        await self.push.on_logout(user_id, fam)  # [push] a login signed out: its devices go with it, as on logout

    async def logout(self, principal) -> None:
        """Revokes the bearer token and its login family (so its refresh token dies with it),
        and closes the sockets opened with any token of that login."""
        claims = principal.claims
        await self.revocations.revoke(claims["jti"], self._exp(claims), reason="logout")
        if claims.get("fam"):
            until = self.clock.now() + timedelta(days=self.settings.refresh_token_days, minutes=self.settings.access_token_minutes)
            await self.revocations.revoke(f"fam:{claims['fam']}", until, reason="logout")
        await self.hub.revoke_sessions(principal.user_id, jti=claims["jti"], fam=claims.get("fam"), code=4401,
                                           reason="logged out")
        await self.push.on_logout(principal.user_id, claims.get("fam"))  # [push] this login's devices go with it

    async def switch_account(self, principal, switch_to: str) -> dict:
        """Become a client, an agent or a builder: user_type changes and a new pair (same family) carries
        the new scope. Older tokens stay valid but lose the old role's scope at once: the auth
        check only honours a client/agent scope that matches the current user_type. The new pair is a
        rotation, as a refresh is: the login's refresh token (any not used yet in the family) is used up
        first, so a copy of it presented later is a reuse and revokes the family (`refresh`). An agent's listed
        listings leave the market when they stop being an agent and come back when they are one again
        (listings/agent_status.py), as with a deactivation; a builder's published projects likewise
        (builders/builder_status.py)."""
        user = principal.user
        if user["user_type"] != switch_to:
            # [listings, builders] an agent's listings and a builder's projects leave the market with the type and
            # come back with it (every switch leaves or takes up agent or builder)
            follow = await self.listings_follow.changing(user["_id"]) if self.listings_follow is not None else None
            user = await self.users.update(user["_id"], {"user_type": switch_to, "updated_at": self.clock.now()})
            if follow is not None:
                await self.listings_follow.changed(follow)
        fam = principal.claims.get("fam")
        if fam:
            await self.refresh_tokens.mark_family_used(fam, self.clock.now())
        return await self.issue_pair(user, family=fam)

    # ---- profiles ----------------------------------------------------------
    async def update_profile(self, user: dict, fields: dict) -> dict:
        """Apply a PATCH: common fields plus those of the user's current type; anything else is a
        422 naming the field. Explicit nulls clear a field."""
        model = PROFILE_PATCHES[user["user_type"]]
        try:
            patch = model.model_validate(fields)
        except ValidationError as exc:
            errors = []
            for err in exc.errors(include_url=False):
                field = ".".join(str(p) for p in err["loc"]) or "body"
                message = (f"is not a {user['user_type']} profile field" if err["type"] == "extra_forbidden" else err["msg"])
                errors.append({"field": field, "message": message})
            raise ValidationFailed(errors, detail="; ".join(f"{e['field']}: {e['message']}" for e in errors[:3]))
        given = patch.model_dump(exclude_unset=True)
        kind = user["user_type"]
        names = PROFILE_FIELDS[kind]
        changes: dict = {}
        unset: list[str] = []
        for name, value in given.items():
            path = f"{kind}_profile.{name}" if name in names else name
            if value is None:
                unset.append(path)
            else:
                changes[path] = value
        if kind == "client":
            merged = {**(user.get("client_profile") or {}), **{k: v for k, v in given.items() if k in names}}
            lo, hi = merged.get("budget_min"), merged.get("budget_max")
            if lo is not None and hi is not None and Decimal(lo) > Decimal(hi):
                raise ValidationFailed.single("budget_min", "must not be more than budget_max")
        if not changes and not unset:
            return user
        changes["updated_at"] = self.clock.now()
        return await self.users.update(user["_id"], changes, unset)

    async def deactivate(self, user_id: int, reason: str = "account deactivated") -> dict:
        """is_active=false: every token of the user gets 403 at once and open sockets close with 4403.
        The tokens stay dead if the account is reactivated later (the token epoch moves on). Their listed
        listings are unlisted (`hidden_reason` agent_inactive) until the account is reactivated."""
        follow = await self.listings_follow.changing(user_id) if self.listings_follow is not None else None
        user = await self.users.revoke_all_tokens(user_id, {"is_active": False, "updated_at": self.clock.now()})
        await self.hub.revoke_sessions(user_id, code=4403, reason=reason)
        if follow is not None:
            await self.listings_follow.changed(follow)
        return user

    async def close_own_account(self, user: dict) -> None:
        """DELETE /users/me: deactivate, as `deactivate` does. An admin is refused (409), as on
        PATCH /admin/users/{id}: the last admin must not lock everyone out by accident; another
        admin demotes them first."""
        if user.get("role") == "admin":
            raise Conflict("An admin cannot deactivate their own account; another admin can demote you first",
                           "self_change_refused")
        await self.deactivate(user["_id"])

    async def set_avatar(self, user: dict, data: bytes) -> dict:
        url = await self.media.save_image(data, "avatars")
        updated = await self.users.update(user["_id"], {"avatar_url": url, "updated_at": self.clock.now()})
        await self.hub.profile_changed(user["_id"], {"avatar_url": url})  # open sockets stamp it on their messages
        if user.get("avatar_url"):
            await self.media.delete(user["avatar_url"])
        return updated

    async def is_active(self, user_id: int) -> bool:
        """The account exists and is not deactivated (by its owner, an admin or a moderator)."""
        user = await self.users.get(user_id)
        return user is not None and user.get("is_active", True)

    async def is_active_as(self, user_id: int, user_type: str) -> bool:
        """is_active, and the account is still of this type (switch-account takes a type's scope away)."""
        user = await self.users.get(user_id)
        return user is not None and user.get("is_active", True) and user.get("user_type") == user_type

    async def public_user(self, user_id: int) -> dict:
        user = await self.users.get(user_id)
        if user is None or not user.get("is_active", True):
            raise NotFound("No such user", "user_not_found")
        return public_profile(user)

    async def public_agent(self, agent_id: int) -> dict:
        """An active agent's public profile (GET /agents/{id}). Someone who switched to client or builder
        keeps their agent profile and listings, so they are still found; 404 agent_not_found otherwise."""
        user = await self.users.get(agent_id)
        is_agent = user is not None and (user.get("user_type") == "agent" or "agent_profile" in user)
        if not is_agent or not user.get("is_active", True):
            raise NotFound("No such agent", "agent_not_found")
        return agent_profile(user)

    # ---- bank details (agents) ---------------------------------------------
    async def account_info(self, user_id: int) -> dict | None:
        """The agent's bank details as shown to a paying client, or None when not set."""
        doc = await self.bank.get(user_id)
        return account_info_view(doc) if doc else None

    async def put_account_info(self, user_id: int, fields: dict) -> dict:
        return account_info_view(await self.bank.put(user_id, fields, self.clock.now()))

    async def delete_account_info(self, user_id: int) -> None:
        if not await self.bank.delete(user_id):
            raise NotFound("No account details are set", "account_info_not_found")

    # ---- administration ----------------------------------------------------
    async def list_users(self, query) -> dict:
        return await self.users.page(query, admin_user, role=query.role, user_type=query.user_type, is_active=query.is_active,
                                     is_verified=query.is_verified, prefix=query.q)

    async def admin_update(self, admin: dict, user_id: int, role: str | None, is_active: bool | None) -> dict:
        """Change a user's role or active flag. Admins cannot demote or deactivate themselves
        (409), so the last admin cannot lock everyone out by accident.

        At least one active admin remains also when admins change each other at the same moment (each
        authenticated before the other's write), with single-document writes only:
        1. the write is conditional on the role and is_active just read (changed in between: read again), so
           "this write took an active admin away" is exact (a write that read a non-admin cannot take one away);
        2. after such a write the admins are read; if none is active, the target is made an active admin again,
           conditionally (only while it is not one), and the answer is 409 `last_admin`. Deactivated and
           restored, the target's token epoch goes back too (unless it moved on since), so their tokens live
           again; their sockets are closed only after the check.
        A and B, the only active admins, demote each other (wA/wB the writes, cA/cB the checks that follow them):
        - wA cA wB cB: cA sees A active (200); cB sees nobody, undoes wB: A stays admin, B's request is 409.
        - wA wB cA cB (or cB cA): both see nobody, both undo: both remain admins, both get 409.
        - wA wB cA(undo wA) cB: cB sees B restored (200): B stays admin, A's request is 409.
        Never none: the last check to run comes after every write that took an admin away (each precedes its own
        check); if it sees an active admin, no later write removes them, and if it sees none, it restores its
        target (undos only ever add admins)."""
        if role is None and is_active is None:
            raise ValidationFailed.single("body", "give role and/or is_active")
        if user_id == admin["_id"] and ((role is not None and role != "admin") or is_active is False):
            raise Conflict("You cannot demote or deactivate yourself", "self_change_refused")
        for _ in range(5):
            user = await self.users.get(user_id)
            if user is None:
                raise NotFound("No such user", "user_not_found")
            was_active = user.get("is_active", True)
            changes: dict = {}
            if role is not None and role != user.get("role"):
                changes["role"] = role
            if is_active is not None and is_active != was_active:
                changes["is_active"] = is_active
            if not changes:
                return admin_user(user)
            changes["updated_at"] = self.clock.now()
            removes_admin = user.get("role") == "admin" and was_active and (
                changes.get("role", "admin") != "admin" or changes.get("is_active") is False)
            expected = {"role": user.get("role"), "is_active": {"$ne": False} if was_active else False}
            # [listings] deactivated: their listings go off the market; reactivated: those come back
            follow = await self.listings_follow.changing(user_id) if "is_active" in changes and self.listings_follow else None
            if changes.get("is_active") is False:
                updated = await self.users.revoke_all_tokens(user_id, changes, expected)
            else:
                updated = await self.users.update_if(user_id, expected, changes)
            if updated is not None:
                break
            if follow is not None:  # the queued job follows whatever the account is now
                await self.listings_follow.changed(follow)
        else:
            raise Conflict("The user is being changed by someone else; try again", "user_changed")
        if removes_admin and not await self.users.has_active_admin():
            await self.users.restore_admin(user_id, self.clock.now(),
                                           updated.get("token_epoch") if changes.get("is_active") is False else None)
            if follow is not None:
                await self.listings_follow.changed(follow)
            raise Conflict("This would leave no active admin (another admin was demoted or deactivated at the same "
                           "moment); nothing changed", "last_admin")
        log.info(json.dumps({"event": "admin_user_update", "admin_id": admin["_id"], "user_id": user_id,
                             "changes": {k: v for k, v in changes.items() if k != "updated_at"}}))
        if changes.get("is_active") is False:
            await self.hub.revoke_sessions(user_id, code=4403, reason="account deactivated")
        if follow is not None:
            await self.listings_follow.changed(follow)
        return admin_user(updated)
