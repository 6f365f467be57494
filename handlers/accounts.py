"""/api/v1/auth/*: thin edges over AccountService."""
from __future__ import annotations

from handlers.base import APIHandler
from handlers.routing import endpoint, route
from sheda_rt.accounts.auth import OTP, USER
from sheda_rt.accounts.models import (EmailRequest, LoginRequest, OtpRequest, OtpToken, RefreshRequest, RegisterRequest,
                                      PrivateUser, ResetPasswordRequest, SwitchAccountRequest, TokenPair)
from sheda_rt.accounts.service import private_user
from sheda_rt.responses import Detail


class RegisterHandler(APIHandler):
    @endpoint("Register a client, agent or builder; an OTP is emailed", body=RegisterRequest, response=PrivateUser, status=201,
              errors=(409, 422, 429), tags=("auth",))
    async def post(self, body: RegisterRequest):
        """Creates an unverified account and emails a 6-digit code (valid OTP_MINUTES, 10 by default).
        Usernames that read as staff or the product (admin, support, sheda, Adm1n...) are a 422 on `username`.
        Confirm it with POST /auth/verify-account. 409 with code `username_taken`, `email_taken` or
        `phone_taken` when one is already registered. An email whose account was never verified is not
        taken: registering it again replaces that pending registration (same id; the new username,
        password, user_type, phone and full_name; its old username is freed, earlier codes stop working,
        a new one is mailed) and answers 201 as a fresh registration. Such a replacement mails a code,
        so it counts against the address's send-otp limit (429 with Retry-After beyond it). A verified or
        deactivated account's email stays 409 `email_taken`. A username or phone held by another pending
        registration older than PENDING_REGISTRATION_HOURS (24) is not taken: that registration is removed.
        At most REGISTRATIONS_PER_IP_PER_HOUR (20) registrations per client address in any hour (429 with
        Retry-After beyond; refused ones do not count)."""
        return private_user(await self.ctx.accounts.register(body, ip=self.request.remote_ip or "-"))


class SendOtpHandler(APIHandler):
    @endpoint("Email a new 6-digit code", body=EmailRequest, response=Detail, status=202, errors=(429,), tags=("auth",))
    async def post(self, body: EmailRequest):
        """Always 202, whether or not the address has an account (no account probing). A new code
        replaces the previous one. A few requests per address, then about one a minute (429); and at most
        OTP_SENDS_PER_IP_PER_HOUR (30) requests per client address in any hour, whatever the addresses (429)."""
        await self.ctx.accounts.send_otp(body.email, ip=self.request.remote_ip or "-")
        return {"detail": "If this address has an account, a code is on its way"}


class VerifyAccountHandler(APIHandler):
    @endpoint("Confirm the email with its code; logs in", body=OtpRequest, response=TokenPair, errors=(400, 403, 429),
              tags=("auth",))
    async def post(self, body: OtpRequest):
        """A right code marks the account verified and returns a token pair. Codes work once, expire
        after OTP_MINUTES, and stop working after 5 wrong tries: 400 `invalid_otp` in every such case.
        10 wrong codes for one account within LOGIN_WINDOW_MINUTES (15), whichever codes they were meant
        for, and the next try gets 429 with Retry-After (the right code too); verify-otp counts alike."""
        return await self.ctx.accounts.verify_account(body.email, body.otp)


class LoginHandler(APIHandler):
    @endpoint("Log in with username, email or phone (form or JSON)", body=LoginRequest, form=True, response=TokenPair,
              errors=(401, 403, 422, 429), tags=("auth",))
    async def post(self, body: LoginRequest):
        """401 `invalid_credentials` for an unknown user and a wrong password alike. Within
        LOGIN_WINDOW_MINUTES (15): 5 wrong passwords for one account from one address each get 401 and
        the 6th try 429 with Retry-After (even for the right password); 20 failed logins from one
        address, whatever the accounts, likewise (LOGIN_MAX_FAILURES, LOGIN_MAX_FAILURES_PER_IP).
        Unverified accounts get 403 `email_unverified` and deactivated ones 403 `account_inactive`,
        both only after the password was right."""
        return await self.ctx.accounts.login(body.username, body.password, self.request.remote_ip or "-")


class RefreshHandler(APIHandler):
    @endpoint("Trade a refresh token for a new pair (rotation)", body=RefreshRequest, response=TokenPair,
              errors=(401, 403), tags=("auth",))
    async def post(self, body: RefreshRequest):
        """Each refresh token works once. Presenting one that was already used revokes its whole
        login family (every access and refresh token descended from that login): 401 `refresh_reused`."""
        return await self.ctx.accounts.refresh(body.refresh_token)


class LogoutHandler(APIHandler):
    @endpoint("Revoke the bearer token and its session", auth=USER, status=204, tags=("auth",))
    async def post(self):
        """The bearer token and the refresh token of the same login stop working; WebSockets opened
        with this token close with 4401."""
        await self.ctx.accounts.logout(self.principal)


class VerifyOtpHandler(APIHandler):
    @endpoint("Trade an emailed code for a 5-minute single-use `otp` token", body=OtpRequest, response=OtpToken,
              errors=(400, 403, 429), tags=("auth",))
    async def post(self, body: OtpRequest):
        """Use the returned token as the bearer of PUT /auth/reset-password. 400 `invalid_otp` for a wrong,
        used, expired or burnt code (5 wrong tries burn one). A new code does not start the guessing over:
        10 wrong codes for one account within LOGIN_WINDOW_MINUTES (15), and the next try gets 429 with
        Retry-After (the right code too); verify-account counts alike."""
        return await self.ctx.accounts.verify_otp(body.email, body.otp)


class ResetPasswordHandler(APIHandler):
    @endpoint("Set a new password with an `otp` token", auth=OTP, body=ResetPasswordRequest, status=204, tags=("auth",))
    async def put(self, body: ResetPasswordRequest):
        """The otp token is used up (a second use is 401). The account is signed out everywhere:
        every token issued before the reset gets 401 and open sockets close with 4401."""
        await self.ctx.accounts.reset_password(self.principal, body.password)


class SwitchAccountHandler(APIHandler):
    @endpoint("Become a client, an agent or a builder", auth=USER, body=SwitchAccountRequest, response=TokenPair, tags=("auth",))
    async def post(self, body: SwitchAccountRequest):
        """Changes user_type and returns a new pair whose scope is the new type. Older tokens keep
        working for shared routes but lose the old type's scope at once. The new pair is a rotation, as a
        refresh is: the login's refresh token is used up, and presenting it later is 401 `refresh_reused`
        (the login is signed out). An agent who becomes a client or
        a builder takes their listed listings off the market (`hidden_reason` agent_inactive, as a deactivated
        agent's) and gets exactly those back on switching to agent again."""
        return await self.ctx.accounts.switch_account(self.principal, body.switch_to)


default_handlers = [
    route("/api/v1/auth/register", RegisterHandler),
    route("/api/v1/auth/send-otp", SendOtpHandler),
    route("/api/v1/auth/verify-account", VerifyAccountHandler),
    route("/api/v1/auth/login", LoginHandler),
    route("/api/v1/auth/refresh", RefreshHandler),
    route("/api/v1/auth/logout", LogoutHandler),
    route("/api/v1/auth/verify-otp", VerifyOtpHandler),
    route("/api/v1/auth/reset-password", ResetPasswordHandler),
    route("/api/v1/auth/switch-account", SwitchAccountHandler),
]
