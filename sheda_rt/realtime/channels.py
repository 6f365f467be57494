"""Channels of things: a socket watches `property:42` and gets that listing's live updates.

The user streams (hub.publish_to_user) carry what is addressed to a person; a channel
carries what happens to a thing, to whoever is watching it right now. This module holds
the rules of watching, independent of the transport:

- A channel's name is `<kind>:<id>`: a registered kind, a colon, a positive integer id
  written without leading zeros (one name per thing, so two spellings can never be two
  subscriptions to the same listing).
- Each kind registers one `authorize(user_id, thing_id)` coroutine that returns when the
  user may watch the thing and raises otherwise: `UnknownChannel` when the thing does not
  exist *for this user* (a hidden listing is as absent as over REST, where it is a 404),
  `Forbidden` when it exists but is not theirs to watch. Adding a kind is one `register`.
- A socket watches at most `max_per_socket` channels (WS_MAX_SUBSCRIPTIONS): every watched
  channel is hub memory and, with Redis, a subscription of this process.
- Subscribing twice and unsubscribing what is not subscribed both succeed (idempotent): a
  client replaying its subscriptions after a reconnect needs no bookkeeping of answers.

Events on a channel are ephemeral (no seq, never replayed): a reconnecting client
subscribes again and refetches the thing over REST.
"""
from __future__ import annotations

import re
from typing import Awaitable, Callable

from sheda_rt.database.ids import MAX_ID
from sheda_rt.errors import ApiError

#: kind name -> authorize(user_id, thing_id); raises UnknownChannel or Forbidden to refuse.
Authorize = Callable[[int, int], Awaitable[None]]

_NAME = re.compile(r"([a-z][a-z0-9_]{0,31}):([1-9][0-9]{0,17})")


class UnknownChannel(ApiError):
    status, code = 404, "unknown_channel"


class TooManySubscriptions(ApiError):
    status, code = 429, "too_many_subscriptions"


def _shown(name) -> str:
    text = repr(name)
    return text if len(text) <= 80 else text[:77] + "..."


class Channels:
    def __init__(self, hub, max_per_socket: int):
        self.hub = hub
        self.max_per_socket = max_per_socket
        self._kinds: dict[str, Authorize] = {}

    def register(self, kind: str, authorize: Authorize) -> None:
        if not _NAME.fullmatch(f"{kind}:1"):
            raise ValueError(f"bad channel kind {kind!r}")
        self._kinds[kind] = authorize

    @property
    def kinds(self) -> list[str]:
        return sorted(self._kinds)

    @staticmethod
    def name(kind: str, thing_id: int) -> str:
        return f"{kind}:{thing_id}"

    def parse(self, name: str) -> tuple[str, int]:
        """(kind, id) of a well-formed channel name of a registered kind; UnknownChannel otherwise."""
        match = _NAME.fullmatch(name) if isinstance(name, str) else None
        if match is None:
            raise UnknownChannel(f"Channel {_shown(name)} is not a channel name: expected '<kind>:<id>', "
                                 f"kinds {', '.join(self.kinds)}", extra={"channel": name})
        kind, thing_id = match.group(1), int(match.group(2))
        if kind not in self._kinds or thing_id > MAX_ID:
            raise UnknownChannel(f"No channel {_shown(name)}: kinds are {', '.join(self.kinds)}", extra={"channel": name})
        return kind, thing_id

    async def subscribe(self, conn, name: str) -> str:
        """Let socket `conn` (its user: conn.user_id) watch channel `name`; returns the name."""
        kind, thing_id = self.parse(name)
        if name in self.hub.channels_of(conn):
            return name
        if len(self.hub.channels_of(conn)) >= self.max_per_socket:
            raise TooManySubscriptions(f"A socket watches at most {self.max_per_socket} channels; unsubscribe one first",
                                       extra={"channel": name, "limit": self.max_per_socket})
        try:
            await self._kinds[kind](conn.user_id, thing_id)
        except ApiError as exc:
            exc.extra.setdefault("channel", name)
            raise
        await self.hub.watch(conn, name)
        return name

    async def unsubscribe(self, conn, name: str) -> str:
        self.parse(name)
        await self.hub.unwatch(conn, name)
        return name

    async def drop(self, conn) -> None:
        """Everything a closed socket watched."""
        await self.hub.unwatch_all(conn)

    async def publish(self, kind: str, thing_id: int, event: dict) -> None:
        """Send `event` to everyone watching `<kind>:<id>`, on every process."""
        await self.hub.publish_channel(self.name(kind, thing_id), event)
