"""Fan-out: how an event published on this process reaches the sockets that should get it,
on this process and on the others.

The hub publishes through it and is handed back, through the callbacks given at `start`,
what it must deliver to its own sockets: `LocalFanout` (one process) calls them directly;
`RedisFanout` (sheda_rt/realtime/fanout_redis.py) delivers here first and publishes to
the other processes through Redis, whose subscribers call them there.
"""
from __future__ import annotations

from typing import Callable, Collection, Protocol

DeliverUser = Callable[[int, str, "str | None"], None]  # (user_id, text, exclude: a conn_id or None)
DeliverChannel = Callable[[str, str], None]  # (channel name, text)


class Fanout(Protocol):
    async def start(self, *, deliver_user: DeliverUser, deliver_channel: DeliverChannel,
                    on_control: Callable[[dict], None], last_seq: Callable[[], int],
                    users_here: Callable[[], Collection[int]]) -> None:
        """`deliver_user` / `deliver_channel`: hand an event to this process's sockets;
        `on_control`: a control message (revoke, broadcast, resync) for this process;
        `last_seq()`: the highest stream position delivered here (where clients resync from
        after an outage); `users_here()`: the users with a socket on this process."""

    async def stop(self) -> None: ...

    async def publish(self, user_id: int, text: str, exclude: str | None) -> None:
        """To every socket of user_id on every process (not to socket `exclude`)."""

    async def publish_channel(self, name: str, text: str) -> None:
        """To every socket watching channel `name` on every process."""

    async def publish_control(self, message: dict) -> None:
        """To every process's `on_control`, this one's first."""

    async def user_added(self, user_id: int, first_here: bool) -> None:
        """A socket of user_id opened here (events for the user must reach this process)."""

    async def user_removed(self, user_id: int, last_here: bool) -> None:
        """A socket of user_id closed here."""

    async def channel_added(self, name: str, first_here: bool) -> None:
        """A socket here started watching channel `name`."""

    async def channel_removed(self, name: str, last_here: bool) -> None:
        """A socket here stopped watching channel `name`."""


class LocalFanout:
    """Single-process delivery: publish is a direct call back into the hub's delivery."""

    def __init__(self):
        self._deliver_user: DeliverUser | None = None
        self._deliver_channel: DeliverChannel | None = None
        self._on_control: Callable[[dict], None] | None = None

    async def start(self, *, deliver_user, deliver_channel, on_control, last_seq=None, users_here=None) -> None:
        self._deliver_user, self._deliver_channel, self._on_control = deliver_user, deliver_channel, on_control

    async def stop(self) -> None:
        pass

    async def publish(self, user_id: int, text: str, exclude: str | None) -> None:
        self._deliver_user(user_id, text, exclude)

    async def publish_channel(self, name: str, text: str) -> None:
        self._deliver_channel(name, text)

    async def publish_control(self, message: dict) -> None:
        self._on_control(message)

    async def user_added(self, user_id: int, first_here: bool) -> None:
        """Nothing to subscribe to in one process."""

    async def user_removed(self, user_id: int, last_here: bool) -> None:
        pass

    async def channel_added(self, name: str, first_here: bool) -> None:
        pass

    async def channel_removed(self, name: str, last_here: bool) -> None:
        pass
