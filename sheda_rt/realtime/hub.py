"""The hub: every open socket, by user, and `publish_to_user`, the only way an
event reaches a socket.

The hub owns which users have sockets here (and which sockets watch which channels) and
coordinates two parts that know nothing of it, each in-process or in Redis behind one
narrow interface, given the hub's callbacks when it starts:
- fan-out (sheda_rt/realtime/fanout.py, fanout_redis.py): events are serialized once per
  publish, and the same text is handed to every socket of the user, on every process. The
  in-process fan-out hands it straight back to `deliver_local`; the Redis one also publishes
  it so every process's hub delivers to the sockets it holds.
- presence (sheda_rt/realtime/presence.py): whether a user's socket is their first or last
  one anywhere.
The chat's commit turns (sheda_rt/realtime/turns.py) are not the hub's: the chat batcher
takes them.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable, Protocol

from sheda_rt.clock import Clock
from sheda_rt.metrics import MESSAGES_DELIVERED
from sheda_rt.realtime.expiry import ExpiryWatch
from sheda_rt.realtime.fanout import Fanout, LocalFanout
from sheda_rt.realtime.presence import LocalPresence, Presence
from sheda_rt.wire import encode

log = logging.getLogger("sheda.hub")

def _seq_of(text: str) -> int:
    """The `seq` of an encoded durable frame (spliced in last by the stream), or 0."""
    try:
        return int(text[text.rindex('"seq":') + 6:-1])
    except ValueError:  # a nested "seq", not the frame's
        return 0


# Chat message frames are encoded with "type" first, so delivery can count them
# without parsing (see sheda_rt.chat.frames.message_frame).
_MESSAGE_PREFIX = '{"type":"message"'


class Connection(Protocol):
    conn_id: str
    user_id: int
    jti: str  # the token the socket was opened with (logout of that token closes it)
    fam: str | None  # its login family (logout or a reused refresh token closes every socket of it)
    user_type: str | None  # its user's type when it opened: broadcasts to one type of user (Hub.broadcast)
    # When its token expires: epoch seconds by the server's clock (the token's `exp`), None for
    # never. The hub closes it then with 4401 "token expired" (sheda_rt/realtime/expiry.py) unless
    # renewed through `Hub.renew_expiry`, which is the only way to change it once registered.
    expires_at: float | None

    def deliver(self, text: str) -> None:
        """Queue a frame for this socket without blocking."""

    def close_for(self, code: int, reason: str) -> None:
        """Close the socket from the server side."""


class Hub:
    def __init__(self, fanout: Fanout | None = None, presence: Presence | None = None, *, clock: Clock | None = None,
                 expiry_sweep_seconds: float = 1.0):
        self.fanout: Fanout = fanout or LocalFanout()
        self.presence: Presence = presence or LocalPresence()
        self._sockets: dict[int, dict[str, Connection]] = {}
        # The highest stream position delivered through this hub (sockets here or not): where
        # clients must sync from after the fan-out lost its link (see the "resync" control op).
        self.last_seq = 0
        # Channels of things (sheda_rt/realtime/channels.py decides who may watch what):
        # channel -> the sockets here watching it, and socket -> its channels.
        self._watchers: dict[str, dict[str, Connection]] = {}
        self._watching: dict[str, set[str]] = {}
        # Called with every control message this process handles (e.g. the chat
        # service drops a deactivated user from its cache on "revoke").
        self.control_listeners: list[Callable[[dict], None]] = []
        # Called with the users of another process that died (presence claimed its set; they
        # may be online elsewhere by now): sessions tells their peers they went offline. With
        # `missed` ({user: when}): users whose presence changed here while Redis was away.
        self.vanished_listeners: list[Callable[[list[int], dict | None], Awaitable[None]]] = []
        # Token expiry of every connection here: one heap, one sweep (sheda_rt/realtime/expiry.py).
        self.expiry = ExpiryWatch(clock or Clock(), expiry_sweep_seconds, self._connection, self.all_sockets)

    async def start(self) -> None:
        await self.presence.start(users_here=self._users_here, vanished=self._vanished)
        await self.fanout.start(deliver_user=self.deliver_local, deliver_channel=self.deliver_channel_local,
                                on_control=self.handle_control, last_seq=lambda: self.last_seq, users_here=self._users_here)
        self.expiry.start()

    async def stop(self) -> None:
        self.expiry.stop()
        await self.fanout.stop()  # queued events reach the others first
        await self.presence.stop()

    async def _vanished(self, users: list[int], missed: dict | None = None) -> None:
        for listener in self.vanished_listeners:
            await listener(users, missed)

    def _users_here(self):
        """The users with a socket on this process (what fan-out subscribes to, presence announces)."""
        return self._sockets.keys()

    # ---- registry ----------------------------------------------------------
    def add(self, conn: Connection) -> bool:
        """Register a socket; True if it is the user's first one here."""
        conns = self._sockets.setdefault(conn.user_id, {})
        conns[conn.conn_id] = conn
        self.expiry.watch(conn)
        return len(conns) == 1

    def remove(self, conn: Connection) -> bool:
        """Forget a socket; True if it was the user's last one here."""
        conns = self._sockets.get(conn.user_id)
        if not conns or conns.pop(conn.conn_id, None) is None:
            return False
        self.expiry.dropped(conn)
        if not conns:
            del self._sockets[conn.user_id]
            return True
        return False

    async def connected(self, conn: Connection) -> bool:
        """Register a socket; True if the user just came online (first socket on any process)."""
        first_here = self.add(conn)
        await self.fanout.user_added(conn.user_id, first_here)
        return await self.presence.user_added(conn.user_id, first_here)

    async def disconnected(self, conn: Connection) -> bool:
        """Forget a socket; True if the user just went offline (last socket on any process)."""
        last_here = self.remove(conn)
        await self.fanout.user_removed(conn.user_id, last_here)
        return await self.presence.user_removed(conn.user_id, last_here)

    # ---- session control ---------------------------------------------------
    async def revoke_sessions(self, user_id: int, *, jti: str | None = None, fam: str | None = None, code: int = 4401,
                              reason: str = "token revoked") -> None:
        """Close the user's sockets on every process: all of them, or only those opened
        with token `jti` or with any token of login family `fam`. Logout uses 4401 with
        both (the refresh rotation may have opened sockets with older access tokens of
        the same login); deactivation and password resets 4403/4401 for all."""
        await self.fanout.publish_control({"op": "revoke", "user_id": user_id, "jti": jti, "fam": fam, "code": code,
                                           "reason": reason})

    async def profile_changed(self, user_id: int, fields: dict) -> None:
        """Fields of the user that their sockets stamp on what they send (the `sender_info` of
        their messages: `avatar_url`) changed: every socket of theirs, on every process, takes
        the new values, so a socket opened before the change does not keep announcing the old
        avatar (whose file is deleted) until it reconnects."""
        await self.fanout.publish_control({"op": "profile", "user_id": user_id, "fields": fields})

    def handle_control(self, message: dict) -> None:
        for listener in self.control_listeners:
            try:
                listener(message)
            except Exception:
                log.exception("control listener failed")
        if message.get("op") == "revoke":
            jti, fam = message.get("jti"), message.get("fam")
            for conn in self.sockets_of(message["user_id"]):
                everything = jti is None and fam is None
                if everything or conn.jti == jti or (fam is not None and getattr(conn, "fam", None) == fam):
                    conn.close_for(message["code"], message["reason"])
        elif message.get("op") == "resync":
            # A process could not reach the others for a while (Redis outage): durable events
            # after this position may not have reached sockets here live. Clients sync from
            # the lower of this and the last seq they have (sheda_rt/realtime/stream.py).
            text = encode({"type": "sync.hint", "after_seq": int(message["after_seq"]), "reason": "broker_outage"})
            for conn in self.all_sockets():
                conn.deliver(text)
        elif message.get("op") == "broadcast":
            self._deliver_broadcast(message["frame"], message.get("user_type"))
        elif message.get("op") == "profile":
            for conn in self.sockets_of(message["user_id"]):
                refresh = getattr(conn, "profile_changed", None)  # connections that send nothing have none
                if refresh is not None:
                    refresh(message["fields"])

    async def broadcast(self, frame: dict, user_type: str | None = None) -> int:
        """Deliver `frame` to every socket on every process (only sockets of users of
        `user_type`, when given): a control message, so each process encodes it once for
        its own sockets. Returns how many sockets of this process it was handed to; the
        other processes' count is not known here (they deliver when the message reaches them)."""
        here = sum(1 for conn in self.all_sockets() if self._broadcast_to(conn, user_type))
        await self.fanout.publish_control({"op": "broadcast", "frame": frame, "user_type": user_type})
        return here

    @staticmethod
    def _broadcast_to(conn: Connection, user_type: str | None) -> bool:
        # A connection that does not know its user's type (none set) gets only unfiltered broadcasts.
        return user_type is None or getattr(conn, "user_type", None) == user_type

    def _deliver_broadcast(self, frame: dict, user_type: str | None) -> None:
        text = encode(frame)
        for conn in self.all_sockets():
            if self._broadcast_to(conn, user_type):
                conn.deliver(text)

    # ---- token expiry ------------------------------------------------------
    def renew_expiry(self, conn: Connection, expires_at: float | None) -> None:
        """The client renewed `conn`'s token on the connection: it now closes at `expires_at`
        (epoch seconds) instead. The caller has checked the new token (same user, valid)."""
        self.expiry.renewed(conn, expires_at)

    def _connection(self, user_id: int, conn_id: str) -> Connection | None:
        return self._sockets.get(user_id, {}).get(conn_id)

    def sockets_of(self, user_id: int) -> list[Connection]:
        return list(self._sockets.get(user_id, {}).values())

    def count_of(self, user_id: int) -> int:
        """How many connections (sockets, event streams) of user_id are registered here."""
        return len(self._sockets.get(user_id, ()))

    def all_sockets(self) -> list[Connection]:
        return [conn for conns in self._sockets.values() for conn in conns.values()]

    def is_connected_here(self, user_id: int) -> bool:
        return user_id in self._sockets

    async def online_anywhere(self, user_id: int) -> bool:
        """Whether user_id has an open socket on any process (this one first, then the
        global presence)."""
        return self.is_connected_here(user_id) or await self.presence.online_elsewhere(user_id)

    @property
    def connection_count(self) -> int:
        return sum(len(c) for c in self._sockets.values())

    # ---- delivery ----------------------------------------------------------
    async def publish_to_user(self, user_id: int, event: dict, exclude: str | None = None) -> None:
        """Deliver `event` to every open socket of `user_id`, on any process.
        `exclude` names one socket (the sender's) that should not get it."""
        text = encode(event)
        await self.fanout.publish(user_id, text, exclude)

    async def publish_encoded(self, user_id: int, text: str, exclude: str | None = None) -> None:
        """`publish_to_user` for an event already encoded as JSON text: a message goes
        to the receiver and to the sender's other sockets, encoded once for both."""
        await self.fanout.publish(user_id, text, exclude)

    def deliver_local(self, user_id: int, text: str, exclude: str | None = None) -> None:
        if text.endswith("}") and '"seq":' in text[-24:]:  # a durable frame: "seq" is spliced in last
            seq = _seq_of(text)
            if seq > self.last_seq:
                self.last_seq = seq
        conns = self._sockets.get(user_id)
        if not conns:
            return
        delivered = 0
        for conn_id, conn in list(conns.items()):
            if conn_id != exclude:
                conn.deliver(text)
                delivered += 1
        if delivered and text.startswith(_MESSAGE_PREFIX):
            MESSAGES_DELIVERED.inc(delivered)

    # ---- channels of things ------------------------------------------------
    def channels_of(self, conn: Connection) -> set[str]:
        return self._watching.get(conn.conn_id, set())

    async def watch(self, conn: Connection, name: str) -> None:
        """`conn` gets the events of channel `name` (idempotent); on the channel's first
        watcher here the fan-out subscribes to it across processes."""
        watchers = self._watchers.setdefault(name, {})
        if conn.conn_id in watchers:
            return
        watchers[conn.conn_id] = conn
        self._watching.setdefault(conn.conn_id, set()).add(name)
        await self.fanout.channel_added(name, len(watchers) == 1)

    async def unwatch(self, conn: Connection, name: str) -> None:
        """Stop `conn` getting channel `name` (idempotent); the fan-out unsubscribes after the last."""
        watchers = self._watchers.get(name)
        if not watchers or watchers.pop(conn.conn_id, None) is None:
            return
        mine = self._watching.get(conn.conn_id)
        if mine is not None:
            mine.discard(name)
            if not mine:
                del self._watching[conn.conn_id]
        last = not watchers
        if last:
            del self._watchers[name]
        await self.fanout.channel_removed(name, last)

    async def unwatch_all(self, conn: Connection) -> None:
        """A closed socket's channels are dropped (together: the fan-out's unsubscribes then
        batch instead of taking turns one channel at a time)."""
        names = list(self._watching.get(conn.conn_id, ()))
        if names:
            await asyncio.gather(*(self.unwatch(conn, name) for name in names))

    def watched_here(self, name: str) -> bool:
        return name in self._watchers

    async def publish_channel(self, name: str, event: dict) -> None:
        """Deliver `event` to every socket watching channel `name`, on any process. Channel
        events are ephemeral: no seq, no replay."""
        text = encode(event)
        await self.fanout.publish_channel(name, text)

    def deliver_channel_local(self, name: str, text: str) -> None:
        for conn in list(self._watchers.get(name, {}).values()):
            conn.deliver(text)
