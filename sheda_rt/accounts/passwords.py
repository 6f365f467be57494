"""bcrypt hashing. bcrypt silently ignores bytes past 72, so longer passwords are
rejected at validation (422) instead of being truncated behind the user's back."""
from __future__ import annotations

import asyncio

import bcrypt

MIN_BYTES, MAX_BYTES = 8, 72


def password_problem(password: str) -> str | None:
    size = len(password.encode("utf-8"))
    if size < MIN_BYTES:
        return f"must be at least {MIN_BYTES} bytes"
    if size > MAX_BYTES:
        return f"must be at most {MAX_BYTES} bytes (bcrypt ignores anything longer)"
    return None


async def hash_password(password: str, rounds: int = 12) -> str:
    # bcrypt is deliberately slow (~50-250 ms); keep it off the event loop.
    return await asyncio.to_thread(lambda: bcrypt.hashpw(password.encode("utf-8"), bcrypt.gensalt(rounds)).decode())


async def verify_password(password: str, hashed: str | None) -> bool:
    if not hashed:
        # Same cost as a real check, so unknown users and wrong passwords look alike.
        await asyncio.to_thread(bcrypt.checkpw, b"timing-equaliser", _DUMMY_HASH)
        return False
    return await asyncio.to_thread(bcrypt.checkpw, password.encode("utf-8"), hashed.encode())


_DUMMY_HASH = bcrypt.hashpw(b"not-a-real-password", bcrypt.gensalt())
