"""Connections coming and going: the one place a socket (or an event stream) is registered
with the hub, its user's presence is announced, and it is let go of.

Every transport (the WebSocket, Server-Sent Events) calls `opened` once it is authenticated
and `closed` once it is gone; the server's shutdown calls `close_all` after the features
have drained (the chat's batches are stored and acked first).

Presence is announced in batches (`PresenceAnnouncer`): thousands of mobile sockets open or
drop together (a deploy, a network blip), and a few queries each would queue behind one
another for seconds. Changes within PRESENCE_WINDOW share one update_many of last_seen and
one query for everyone's peers.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable

from sheda_rt.clock import format_ts
from sheda_rt.errors import RateLimited
from sheda_rt.wire import encode

log = logging.getLogger("sheda.sessions")


class PresenceAnnouncer:
    PRESENCE_WINDOW = 0.005  # seconds: presence changes within it share their database work

    def __init__(self, *, clock, touch_last_seen: Callable[[list[int], object], Awaitable[None]],
                 peers_of_many: Callable[[set[int]], Awaitable[dict[int, list[int]]]],
                 publish: Callable[[int, str], Awaitable[None]], went_offline: Callable[[int], None] = lambda user_id: None):
        self.clock = clock
        self.touch_last_seen = touch_last_seen  # users store: last_seen for many users in one write
        self.peers_of_many = peers_of_many  # chat conversations: who shares a conversation with whom
        self.publish = publish  # hub.publish_encoded: presence is ephemeral (no seq)
        self.went_offline = went_offline  # e.g. the chat drops its cached profile (last_seen changed)
        self._pending: list[tuple[int, bool, object, bool]] = []
        self._done: asyncio.Future | None = None
        self._order = asyncio.Lock()  # batches are published one after another (online never overtakes offline)
        self._flushes: set[asyncio.Task] = set()  # kept until done (a task only the loop references can vanish)

    async def changed(self, user_id: int, online: bool, *, when=None, store: bool = True) -> None:
        """Tell the people user_id shares a conversation with that they came online or went
        offline (storing last_seen, unless `store` is false: a repeat of an announcement made
        `when`); returns once this change's batch is published."""
        self._pending.append((user_id, online, when or self.clock.now(), store))
        if self._done is None:
            loop = asyncio.get_running_loop()
            self._done = loop.create_future()
            loop.call_later(self.PRESENCE_WINDOW, self._start_flush)
        await asyncio.shield(self._done)

    def _start_flush(self) -> None:
        task = asyncio.ensure_future(self._flush())
        self._flushes.add(task)
        task.add_done_callback(self._flushes.discard)

    async def drain(self) -> None:
        """Shutdown: wait for the batches already cut (the database is closed next)."""
        while self._flushes or self._done is not None:
            if self._flushes:
                await asyncio.gather(*self._flushes, return_exceptions=True)
            else:
                await asyncio.sleep(self.PRESENCE_WINDOW)

    async def _flush(self) -> None:
        events, done = self._pending, self._done
        self._pending, self._done = [], None
        async with self._order:  # FIFO: batches are published in the order they were cut
            await self._publish(events, done)

    async def _publish(self, events: list, done: asyncio.Future) -> None:
        try:
            offline = {u: when for u, online, when, store in events if not online and store}
            if offline:
                await self.touch_last_seen(list(offline), max(offline.values()))
                for u in offline:
                    self.went_offline(u)
            peers = await self.peers_of_many({u for u, _, _, _ in events})
            for u, online, when, _ in events:  # in the order they happened
                text = encode({"type": "presence", "user_id": u, "online": online, "last_seen": format_ts(when)})
                for peer in peers.get(u, ()):
                    await self.publish(peer, text)
        except Exception as exc:
            done.set_exception(exc)
            done.exception()  # marked retrieved: the waiters may all have gone
        else:
            done.set_result(None)


class Sessions:
    """Dependencies by name: the hub (which sockets are where), the presence announcer,
    and `channels` (what a connection watches: dropped when it goes). `max_per_user`: the
    connections one user may hold in this process (`admit`); `retry_after`: the seconds a
    refused client is told to wait."""

    def __init__(self, *, hub, presence: PresenceAnnouncer, channels=None, max_per_user: int | None = None,
                 retry_after: int = 50):
        self.hub = hub
        self.presence = presence
        self.channels = channels
        self.max_per_user = max_per_user
        self.retry_after = retry_after
        self.stopping = False  # set by close_all(): connections closing at shutdown are not "going offline"
        if hasattr(hub, "vanished_listeners"):
            hub.vanished_listeners.append(self.vanished)

    def admit(self, user_id: int) -> None:
        """Raise 429 `too_many_sockets` if user_id already holds `max_per_user` connections
        here (sockets and event streams: the hub's registry is the count, nothing else keeps
        one). A transport calls it after its last await before `opened`, so the check and the
        registration happen in one step of the event loop: concurrent handshakes of one user
        cannot all pass it. Per process: behind a load balancer each process caps its own."""
        if self.max_per_user is not None and self.hub.count_of(user_id) >= self.max_per_user:
            raise RateLimited(f"Too many open connections for this user (at most {self.max_per_user}): close one, "
                              "or try again after Retry-After seconds", self.retry_after, "too_many_sockets")

    async def opened(self, conn) -> None:
        """Register an authenticated connection (synchronously, before the first await, so
        nothing addressed to its user is missed), then announce the user if they just came
        online anywhere."""
        if await self.hub.connected(conn):
            await self.presence.changed(conn.user_id, True)

    async def vanished(self, users: list[int], missed: dict | None = None) -> None:
        """Users whose process died (RedisPresence claimed its set): their sockets closed without
        anyone announcing it, so those not connected anywhere now are announced offline (and
        their last_seen stored), as their last socket closing would have. With `missed`
        ({user: when}): users whose presence changed here while Redis was away, so only this
        process's sockets heard of it: each is announced as they are now (offline ones with
        when they went, their last_seen already stored)."""
        if self.stopping:
            return
        if missed is not None:
            now = [(u, await self.hub.online_anywhere(u)) for u in users]
            await asyncio.gather(*(self.presence.changed(u, online, when=None if online else missed[u], store=False)
                                   for u, online in now))
            return
        gone = [u for u in users if not await self.hub.online_anywhere(u)]
        if gone:
            await asyncio.gather(*(self.presence.changed(u, False) for u in gone))  # one batch

    async def closed(self, conn) -> None:
        """Let go of a connection: its channels, its registration, and the user's presence
        if this was their last connection anywhere. Never raises."""
        if self.channels is not None:
            try:
                await self.channels.drop(conn)
            except Exception:
                log.exception("channels of conn %s not dropped", conn.conn_id)
        try:
            if await self.hub.disconnected(conn) and not self.stopping:
                await self.presence.changed(conn.user_id, False)
        except Exception:
            if not self.stopping:
                log.exception("presence update failed for user %s", conn.user_id)

    async def close_all(self, code: int = 1001, reason: str = "server shutting down") -> None:
        """Shutdown, after the features drained: every connection of this process is closed,
        and presence batches already cut are published before the database goes."""
        self.stopping = True
        # Not announced offline here (most reconnect to another process at once); a live process
        # announces those that did not, as it does a crashed process's users.
        self.hub.presence.leaving({conn.user_id for conn in self.hub.all_sockets()})
        for conn in self.hub.all_sockets():
            conn.close_for(code, reason)
        await self.presence.drain()
