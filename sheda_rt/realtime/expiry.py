"""Token expiry for open connections: a socket (or an event stream) opened with an access
token is closed with 4401 once that token's `exp` passes by the server's clock, unless the
client renewed it on the connection.

One heap of (expires_at, user_id, conn_id) for every connection of the process and one
periodic sweep, instead of a timer per connection: a sweep that finds nothing due costs one
comparison, so 20k idle sockets cost nothing between expiries. Entries name connections by
id, not by reference, so a closed socket is not kept alive by its entry; they are never
removed when a connection closes or renews (a heap cannot remove cheaply) but are skipped
when popped: the connection is gone, or its `expires_at` is no longer the entry's (a renewal
pushed a newer entry). Closes and renewals are counted, and when stale entries make up most
of the heap it is rebuilt from the live connections, so churn (reconnects) cannot grow it
without bound and no sweep ever walks every connection otherwise.

The watch holds no reference to the hub: it is given a look-up (user_id, conn_id) ->
connection or None, and a listing of the live connections for the rebuild.
"""
from __future__ import annotations

import heapq
import logging
from typing import Callable, Iterable

from tornado.ioloop import PeriodicCallback

log = logging.getLogger("sheda.expiry")

CLOSE_TOKEN_EXPIRED = 4401  # the contract's "token no longer valid" close code


class ExpiryWatch:
    def __init__(self, clock, sweep_seconds: float, lookup: Callable, live: Callable[[], Iterable]):
        self.clock = clock
        self.sweep_seconds = sweep_seconds
        self._lookup = lookup  # (user_id, conn_id) -> the connection, or None once it closed
        self._live = live  # () -> every open connection (for the rebuild)
        self._heap: list[tuple[float, int, str]] = []
        self._stale = 0  # entries of connections that closed or renewed since (about: see dropped)
        self._periodic: PeriodicCallback | None = None

    def watch(self, conn) -> None:
        """Close `conn` when its `expires_at` (epoch seconds) passes. A connection without one
        (None) never expires."""
        expires_at = getattr(conn, "expires_at", None)
        if expires_at is None:
            return
        heapq.heappush(self._heap, (float(expires_at), conn.user_id, conn.conn_id))

    def renewed(self, conn, expires_at: float | None) -> None:
        """`conn` now expires at `expires_at` (a renewal): its earlier entry goes stale."""
        if getattr(conn, "expires_at", None) == expires_at:
            return  # the same expiry again (a resent token): its entry stands
        self.dropped(conn)
        conn.expires_at = expires_at
        self.watch(conn)

    def dropped(self, conn) -> None:
        """`conn` closed (or is being renewed): count its entry, if still queued, as stale."""
        expires_at = getattr(conn, "expires_at", None)
        if expires_at is not None and expires_at > self.clock.now().timestamp():
            self._stale += 1

    def start(self) -> None:
        if self._periodic is None:
            self._periodic = PeriodicCallback(self.sweep, self.sweep_seconds * 1000)
            self._periodic.start()

    def stop(self) -> None:
        if self._periodic is not None:
            self._periodic.stop()
            self._periodic = None

    def sweep(self) -> int:
        """Close every connection whose token has expired; returns how many were closed."""
        now = self.clock.now().timestamp()
        heap, closed = self._heap, 0
        while heap and heap[0][0] <= now:
            expires_at, user_id, conn_id = heapq.heappop(heap)
            conn = self._lookup(user_id, conn_id)
            if conn is None or getattr(conn, "expires_at", None) != expires_at:
                self._stale = max(0, self._stale - 1)
                continue  # closed meanwhile, or renewed (its newer entry is in the heap)
            try:
                conn.close_for(CLOSE_TOKEN_EXPIRED, "token expired")
                closed += 1
            except Exception:  # one connection's failure must not spare the others
                log.exception("closing an expired connection failed (user %s)", user_id)
        if self._stale > 1024 and 2 * self._stale > len(heap):
            self._heap, self._stale = [], 0
            for conn in self._live():
                self.watch(conn)
        return closed

    def __len__(self) -> int:
        return len(self._heap)
