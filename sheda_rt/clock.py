"""The one clock of the process, and the one timestamp format of the contract.

Everything that asks "what time is it" asks a Clock, so tests can move time
(contract expiry, OTP lifetimes, throttling windows) without sleeping.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone


class Clock:
    def now(self) -> datetime:
        # MongoDB keeps milliseconds; truncating here means what we return equals what we store.
        now = datetime.now(timezone.utc)
        return now.replace(microsecond=now.microsecond // 1000 * 1000)


class ManualClock(Clock):
    """A clock that only moves when told to (tests, simulations)."""

    def __init__(self, start: datetime | None = None):
        self._now = start or Clock().now()

    def now(self) -> datetime:
        return self._now

    def advance(self, **delta) -> datetime:
        self._now += timedelta(**delta)
        return self._now

    def set(self, when: datetime) -> None:
        self._now = when


def format_ts(value: datetime | None) -> str | None:
    """ISO 8601 UTC with milliseconds and Z: 2025-10-16T10:00:00.000Z."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    value = value.astimezone(timezone.utc)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def to_utc(value: datetime) -> datetime:
    """Accept any ISO offset on input; naive means UTC."""
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)
