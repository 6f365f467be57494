"""Blocking rules. While either of two users blocks the other, neither reaches the other:
messages are refused (`blocked`, never saying which side blocked), typing and presence are
not forwarded, and the client cannot book a viewing of the agent's listing (409 `blocked`).
What they already said stays readable (history, sync, the conversation list).

Why a cache, and why it is correct across processes
---------------------------------------------------
The chat asks `between(a, b)` for every message and typing notice; a database read each
would double the chat's reads. So each process keeps, per user, the set of people they
block or are blocked by (`relations`, both directions, so one entry answers a pair), for
RELATIONS_TTL. Blocking and unblocking write the database first and then send the control
op `blocks` with both users through the hub's control channel, which reaches every process
(this one synchronously, before the request is answered; the others through Redis), and
each drops both users' entries. A read that started before an invalidation arrived could
bring back the old answer after it: a generation counter, moved by every invalidation,
keeps such a read out of the cache (it is answered, not kept). While Redis is away the
control op is kept and replayed when it returns (sheda_rt/realtime/fanout_redis.py); the
TTL bounds how long another process can miss one. The control op alone is fire-and-forget:
another process may read it after the blocked user's next message reached it, so with
several processes a change is answered only once every process has applied it
(sheda_rt/blocks/confirm.py).
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Awaitable, Callable

from sheda_rt.blocks.store import BlockStore
from sheda_rt.chat.service import TTLCache
from sheda_rt.clock import format_ts
from sheda_rt.errors import BadRequest, Forbidden, NotFound

if TYPE_CHECKING:  # types only: the context wires these in
    from sheda_rt.accounts.users_store import UserStore
    from sheda_rt.blocks.confirm import ConfirmedInvalidation
    from sheda_rt.clock import Clock
    from sheda_rt.realtime.hub import Hub

log = logging.getLogger("sheda.blocks")

CONTROL_OP = "blocks"
BLOCKED_DETAIL = "You cannot contact this user"  # the same words whichever side blocked


class BlockService:
    RELATIONS_TTL = 60.0

    def __init__(self, store: BlockStore, *, users: UserStore, hub: Hub, clock: Clock,
                 confirm: ConfirmedInvalidation | None = None):
        self.store = store
        self.users = users  # the blocked user must exist; names in my list
        self.hub = hub  # the control channel: every process drops its cached relations on a change
        self.clock = clock
        self._relations = TTLCache(self.RELATIONS_TTL)
        self._generation = 0  # moved by every invalidation: a read older than it is not cached
        self.hub.control_listeners.append(self._on_control)
        # Several processes: a change is answered once every process has applied it (confirm.py).
        self.confirm = confirm
        if confirm is not None:
            confirm.on_apply(self._forget)

    # ---- the cache -----------------------------------------------------------
    def _on_control(self, message: dict) -> None:
        if message.get("op") == CONTROL_OP:
            self._forget(message.get("users") or ())

    def _forget(self, users) -> None:
        self._generation += 1
        for user_id in users:
            self._relations.forget(user_id)

    async def relations_of(self, user_ids) -> dict[int, frozenset[int]]:
        """{user: everyone they block or are blocked by}, from the cache or in one batch of reads."""
        out: dict[int, frozenset[int]] = {}
        missing = []
        for u in set(user_ids):
            hit = self._relations.get(u)
            if hit is None:
                missing.append(u)
            else:
                out[u] = hit
        if missing:
            generation = self._generation
            loaded = await self.store.related_many(missing)
            keep = generation == self._generation  # no block changed while we read
            for u, related in loaded.items():
                out[u] = frozenset(related)
                if keep:
                    self._relations.put(u, out[u])
        return out

    async def between(self, a: int, b: int) -> bool:
        """Whether a blocks b or b blocks a (no database read while a's relations are cached)."""
        hit = self._relations.get(a)
        if hit is None:
            hit = (await self.relations_of([a]))[a]
        return b in hit

    async def check(self, a: int, b: int) -> None:
        """Raise 403 `blocked` when either blocks the other (the chat's send path)."""
        if await self.between(a, b):
            raise Forbidden(BLOCKED_DETAIL, "blocked")

    def unblocked_peers(self, peers_of_many: Callable[[set[int]], Awaitable[dict[int, list[int]]]]):
        """`peers_of_many` (who shares a conversation with whom, for presence) without the
        pairs where either side blocks the other: presence is not told across a block."""
        async def peers(user_ids: set[int]) -> dict[int, list[int]]:
            found = await peers_of_many(user_ids)
            relations = await self.relations_of(found)
            return {u: [p for p in ps if p not in relations[u]] for u, ps in found.items()}
        return peers

    async def _changed(self, a: int, b: int) -> None:
        # Through the hub's control channel: this process at once, the others through Redis (kept
        # and replayed over an outage); then, with several processes, wait until all applied it.
        await self.hub.fanout.publish_control({"op": CONTROL_OP, "users": [a, b]})
        if self.confirm is not None:
            await self.confirm.everywhere([a, b])

    # ---- the routes ------------------------------------------------------------
    async def block(self, me: int, other: int) -> dict:
        if other == me:
            raise BadRequest("You cannot block yourself", "self_block")
        user = await self.users.get(other)
        if user is None:
            raise NotFound(f"No user with id {other}", "user_not_found")
        doc, new = await self.store.add(me, other, self.clock.now())
        if new:
            log.info('{"event": "user_blocked", "blocker": %d, "blocked": %d}', me, other)
        await self._changed(me, other)  # also when not new: a process that missed the first op catches up
        return self._view(doc, user)

    async def unblock(self, me: int, other: int) -> None:
        """Idempotent: unblocking someone not blocked is a 204 as well."""
        if await self.store.remove(me, other):
            log.info('{"event": "user_unblocked", "blocker": %d, "blocked": %d}', me, other)
        await self._changed(me, other)

    async def list_mine(self, me: int, page) -> dict:
        result = await self.store.page(me, page, lambda d: d)
        users = {u["_id"]: u for u in await self._users([d["blocked"] for d in result["items"]])}
        result["items"] = [self._view(d, users.get(d["blocked"])) for d in result["items"]]
        return result

    async def _users(self, ids: list[int]) -> list[dict]:
        found = await self.users.get_many(ids) if ids else {}
        return list(found.values())

    @staticmethod
    def _view(doc: dict, user: dict | None) -> dict:
        view = {"user_id": doc["blocked"], "created_at": format_ts(doc["created_at"])}
        if user is not None:
            view["username"] = user.get("username")
            view["avatar_url"] = user.get("avatar_url")
        return view
