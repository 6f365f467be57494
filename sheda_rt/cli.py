"""The run.py commands that manage accounts without the HTTP API."""
from __future__ import annotations

import asyncio
import sys

from pydantic import ValidationError
from pymongo.errors import PyMongoError

from sheda_rt.accounts.models import RegisterRequest
from sheda_rt.database.embedded import EmbeddedDatabaseError
from sheda_rt.errors import ApiError
from sheda_rt.server import database_uri


async def _promote_admin(ctx, who: str) -> str:
    user = await ctx.users.find_login(who)
    if user is None:
        raise ApiError(f"no user with email or username {who!r}", "not_found")
    await ctx.users.update(user["_id"], {"role": "admin", "updated_at": ctx.clock.now()})
    return f"user {user['_id']} ({user['username']}) is now an admin (the admin scope comes with their next login)"


async def _create_user(ctx, args) -> str:
    req = RegisterRequest(username=args.username, email=args.email, password=args.password, user_type=args.user_type,
                          phone=args.phone, full_name=args.full_name)
    user = await ctx.accounts.register(req, verified=True, send_otp=False, operator=True)  # operators may take reserved names
    if args.admin:
        await ctx.users.update(user["_id"], {"role": "admin"})
    return f"created user {user['_id']} ({user['username']}, {user['user_type']}{', admin' if args.admin else ''})"


async def _run(settings, uri: str, args) -> str:
    from sheda_rt.context import AppContext

    ctx = AppContext(settings, uri)
    if args.command == "demo-data":  # sends chat messages and events: the stream and hub run, and drain before closing
        from sheda_rt.demo import load_demo_data

        await ctx.start()
        try:
            return await load_demo_data(ctx, args.password)
        finally:
            await ctx.drain()
            await ctx.close()
    try:
        await ctx.ensure_indexes()
        if args.command == "promote-admin":
            return await _promote_admin(ctx, args.who)
        return await _create_user(ctx, args)
    finally:
        await ctx.client.close()


def run_command(settings, args) -> int:
    try:
        uri, embedded = database_uri(settings)
    except EmbeddedDatabaseError as exc:
        print(f"sheda: {exc}", file=sys.stderr)
        return 2
    try:
        print(asyncio.run(_run(settings, uri, args)))
        return 0
    except ValidationError as exc:
        err = exc.errors()[0]
        print(f"sheda: {'.'.join(map(str, err['loc']))}: {err['msg']}", file=sys.stderr)
        return 2
    except ApiError as exc:
        print(f"sheda: {exc.detail}", file=sys.stderr)
        return 1
    except PyMongoError as exc:
        print(f"sheda: database error: {type(exc).__name__}: {str(exc).splitlines()[0].split(' (configured timeouts')[0][:300]}", file=sys.stderr)
        return 2
    finally:
        if embedded is not None:
            embedded.stop()
