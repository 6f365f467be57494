"""Search my messages (issue 15 §3): every query word must begin a word of the message,
case- and accent-insensitively ("cafe" finds "Café", "CAFÉ" finds "cafeteria"); newest first;
only conversations I am in; tombstones (`deleted`) and messages I deleted for myself
(`hidden_for`) never match.

Why no search index: the embedded database has no `$text`, and every index entry costs each
chat insert about 0.2 ms of its single core (sheda_rt/chat/store.py): a word index would cut
chat throughput by far more than the 15% the issue allows, and a second collection of words
would be a second write per message. So search reads what is already there, through the one
index messages have, (conv, _id), with nothing on the write path:

- My conversations (the `member` index; or just the pair with `with`) are walked newest first,
  each in windows of ids (a plain index range query per window, the only kind every engine
  serves from the index), and the words are matched here, on text folded the same way as the
  query (Unicode NFKD, combining marks stripped, casefold).
- The conversations are merged by id. A hit is final once every conversation still being
  walked has been read down below it (the frontier); the walk always advances the conversations
  whose windows are highest, a few concurrently.
- Work per request is bounded: after `max_examined` documents (and once every conversation has
  been read at least one window, so each page moves forward) the page ends with what is final,
  and `next_cursor` continues below the frontier. A rare word over a long history therefore
  comes back as several short pages, some of them empty with `more: true`; the client keeps
  asking while `more` is true (the cursor is the position, so nothing repeats or is skipped).
Cost is the documents read: about the chat history of the user down to the hits, which the
bench (bench/chat_search_bench.py) measures.
"""
from __future__ import annotations

import asyncio
import re
import unicodedata
from typing import TYPE_CHECKING, Awaitable, Callable, Optional

from pydantic import BaseModel, ConfigDict, Field

from sheda_rt.chat.frames import HistoryRow
from sheda_rt.chat.store import conv_key
from sheda_rt.database.ids import MAX_ID
from sheda_rt.errors import NotFound, ValidationFailed
from sheda_rt.pagination import decode_cursor, encode_cursor
from sheda_rt.responses import ResponseModel

if TYPE_CHECKING:
    from sheda_rt.chat.store import ConversationStore, MessageStore

MAX_QUERY_CHARS = 200
MAX_TERMS = 10
_WORD = re.compile(r"\w+")


def _strip_marks(text: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))


def fold(text: str) -> str:
    """Text as search compares it: compatibility-decomposed (NFKD), combining marks dropped,
    case-folded. ASCII needs only the case fold (most chat text: the fast path)."""
    if text.isascii():
        return text.lower()
    # Case folding can produce letters that decompose again (e.g. "İ" -> "i̇"): strip those too.
    return _strip_marks(_strip_marks(text).casefold())


def terms_of(q: str) -> list[str]:
    """The query's words, folded, without repeats; 422 when it has none."""
    terms = list(dict.fromkeys(_WORD.findall(fold(q))))
    if not terms:
        raise ValidationFailed.single("q", "must contain at least one letter or digit")
    if len(terms) > MAX_TERMS:
        raise ValidationFailed.single("q", f"must have at most {MAX_TERMS} words")
    return terms


def matcher(terms: list[str], me: int) -> Callable[[dict], bool]:
    """Whether a stored message is a hit for me: every term begins a word of its folded text."""
    patterns = [re.compile(r"(?<!\w)" + re.escape(t)) for t in terms]

    def match(d: dict) -> bool:
        if d.get("deleted") or me in (d.get("hidden_for") or ()):
            return False  # tombstones keep no text; deleted for me is gone from my history (chat/edits.py)
        text = d.get("message")
        if not text:
            return False
        folded = fold(text)
        return all(p.search(folded) for p in patterns)

    return match


class SearchQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    q: str = Field(min_length=1, max_length=MAX_QUERY_CHARS, description=(
        "Words to find; each must begin a word of the message (case and accents ignored)"))
    with_: Optional[int] = Field(None, alias="with", ge=1, le=MAX_ID, description="Only my conversation with this user")
    limit: int = Field(20, ge=1, le=100, description="Hits per page (max 100)")
    cursor: Optional[str] = Field(None, description="next_cursor of the previous page")


class SearchHit(HistoryRow):
    """A message as history shows it, plus the other person of its conversation."""

    model_config = ConfigDict(extra="allow")

    other_user_id: int


class SearchPage(ResponseModel):
    """Hits newest first. `more`: ask again with `next_cursor` (a page may hold fewer hits than
    `limit`, even none, when the work bound of one request was reached)."""

    items: list[SearchHit]
    next_cursor: Optional[str]
    more: bool


class MessageSearch:
    """Named dependencies: the chat's two stores, a user look-up (for `with`) and how history
    presents stored messages to a user (ChatService.present_rows: reply quotes, attachment links,
    my reactions), so a hit looks exactly like the same message in history."""

    FIRST_WIDTH = 1024  # ids in a conversation's first window
    TARGET = 256  # documents a window should bring back (the next window's width aims at it)
    MIN_WIDTH = 64
    GROWTH = 16  # a window is at most this much wider than the last
    CONCURRENCY = 16  # conversations read at once

    def __init__(self, *, messages: MessageStore, conversations: ConversationStore,
                 user_exists: Callable[[int], Awaitable[Optional[dict]]],
                 present: Callable[[int, list[dict]], Awaitable[list[dict]]], max_examined: int = 5000):
        self.messages = messages
        self.present = present
        self.conversations = conversations
        self.user_exists = user_exists
        self.max_examined = max_examined

    async def search(self, me: int, query: SearchQuery) -> dict:
        terms = terms_of(query.q)
        below = None  # only ids < below (the cursor)
        if query.cursor:
            value = decode_cursor(query.cursor, 1)[0]
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_ID + 1:
                raise ValidationFailed.single("cursor", "is not a cursor this API issued")
            below = value
        if query.with_ is not None:
            if query.with_ != me and await self.user_exists(query.with_) is None:
                raise NotFound(f"No user with id {query.with_}", "user_not_found")
            convs = [conv_key(me, query.with_)] if query.with_ != me else []
        else:
            convs = [c["_id"] for c in await self.conversations.of_user(me)]
        top = await self.messages.newest_id()
        if below is not None:
            top = min(top, below - 1)
        hits, more_below = await self._walk(convs, top, matcher(terms, me), query.limit)
        items = [{**row, "other_user_id": row["receiver_id"] if row["sender_id"] == me else row["sender_id"]}
                 for row in await self.present(me, hits)]
        next_cursor = encode_cursor([more_below]) if more_below is not None else None
        return {"items": items, "next_cursor": next_cursor, "more": next_cursor is not None}

    async def _walk(self, convs: list[str], top: int, match: Callable[[dict], bool], limit: int) -> tuple[list[dict], int | None]:
        """The newest `limit` hits with id <= top, or fewer when the work bound is reached; and
        where the next page starts (ids below it), None when nothing is left."""
        floor = dict.fromkeys(convs, top)  # each conversation has been read down to (floor, top]
        width = dict.fromkeys(convs, self.FIRST_WIDTH)
        active = {c for c in convs if top > 0}
        hits: list[dict] = []
        examined = 0

        async def window(conv: str) -> None:
            nonlocal examined
            lo = max(0, floor[conv] - width[conv])
            seen = 0

            def keep(d: dict) -> bool:
                nonlocal seen
                seen += 1
                return match(d)

            hits.extend(await self.messages.scan(conv, newest_first=True, after=lo, upto=floor[conv], keep=keep))
            examined += seen
            floor[conv] = lo
            if lo <= 0:
                active.discard(conv)
            # The next window aims at TARGET documents at the density just seen.
            aim = width[conv] * self.TARGET // max(seen, 1)
            width[conv] = max(self.MIN_WIDTH, min(aim, width[conv] * self.GROWTH))

        while active:
            frontier = max(floor[c] for c in active)
            if sum(1 for h in hits if h["_id"] > frontier) >= limit:
                break
            if examined >= self.max_examined and frontier < top:  # bounded, and this page moved forward
                break
            batch = sorted(active, key=lambda c: floor[c], reverse=True)[:self.CONCURRENCY]
            await asyncio.gather(*(window(c) for c in batch))
        frontier = max((floor[c] for c in active), default=0)
        final = sorted((h for h in hits if h["_id"] > frontier), key=lambda h: h["_id"], reverse=True)
        if len(final) > limit or (len(final) == limit and active):
            page = final[:limit]
            return page, page[-1]["_id"]
        return final, (frontier + 1 if active else None)


__all__ = ["MessageSearch", "SearchHit", "SearchPage", "SearchQuery", "fold", "terms_of"]
