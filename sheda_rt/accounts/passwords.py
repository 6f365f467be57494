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


async def verify_password(password: str, hashed: str | None, rounds: int = 12) -> bool:
    """True only for the right password. A password no account can have (over 72
    bytes: registration refuses those) and an unusable stored hash are wrong
    passwords, not errors; they cost the same bcrypt work as a real check, at the
    configured cost, so unknown users and wrong passwords look alike."""
    secret = password.encode("utf-8")
    if hashed and len(secret) <= MAX_BYTES:
        try:
            return await asyncio.to_thread(bcrypt.checkpw, secret, hashed.encode())
        except ValueError:  # not a bcrypt hash (an account created without a password)
            return False
    # (the dummy hash is made on first use, in the worker thread: never on the event loop)
    await asyncio.to_thread(lambda: bcrypt.checkpw(b"timing-equaliser", _dummy_hash(rounds)))
    return False


_DUMMY_HASHES: dict[int, bytes] = {}


def _dummy_hash(rounds: int) -> bytes:
    if rounds not in _DUMMY_HASHES:
        _DUMMY_HASHES[rounds] = bcrypt.hashpw(b"not-a-real-password", bcrypt.gensalt(rounds))
    return _DUMMY_HASHES[rounds]
