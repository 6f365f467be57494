"""A listing's area, for the guided search's `where`: derived from its location text alone.

The area is the part of the location before its last comma ("Lekki Phase 1, Lagos" -> "Lekki
Phase 1"; "12 Admiralty Way, Lekki, Lagos" -> "Lekki"), or the whole location when it has no
comma. Its id is the area's words folded (case and accents dropped, sheda_rt/search.py `fold`)
and joined by hyphens: "Ìkòyí" and "IKOYI" are both `ikoyi`.

Not a facet of its own (which would drive a search in an area through exactly its listings):
adding facets re-facets every stored listing at the next start, and the embedded database
rewrites all ~80 index entries of each (measured: 26 ms per listing, 525 s at 20,000, even
with $addToSet of only the new ones), so the guided search drives by the area's words instead
(sheda_rt/guided/service.py).
"""
from __future__ import annotations

import functools
import re

from sheda_rt.search import fold, keyword_words

WHERE_PATTERN = r"^[^\W_]+(-[^\W_]+)*$"
WHERE_MAX = 80
#: More words than any place name has: the area's regex (sheda_rt/guided/catalog.py `Area.pattern`) spends ~13
#: characters between two words, and 36 one-letter words passed the embedded database's 1,000 (a 500).
WHERE_MAX_WORDS = 24
_WHERE = re.compile(WHERE_PATTERN)
_WORD = re.compile(r"[^\W_]+")  # a word, as sheda_rt/search.py splits text


def where_id(text: str) -> str:
    """The id of an area named `text`: its words folded and joined by hyphens, as the catalog makes ids from
    locations, so "Yaba", " yaba " and "Lekki Phase 1" answer as `yaba` and `lekki-phase-1`. Text with no
    word, or far too long to be an area, comes back as sent (check_where then refuses it)."""
    if len(text) > 4 * WHERE_MAX:
        return text
    words = _WORD.findall(text)
    return _slug(words) if words else text


def _slug(words) -> str:
    return "-".join(fold(w) for w in words)


def check_where(option: str) -> str:
    if len(option) > WHERE_MAX or not _WHERE.fullmatch(option):
        raise ValueError(f"unknown option {option!r}: one of the where question's ids, like 'lekki-phase-1'")
    return option


def area_of(location: str) -> tuple[str, tuple[str, ...], str] | None:
    """(id, spelling: the area's words as written, label) of a location's area; None when it has none to offer."""
    parts = (location or "").split(",")
    return _area_of_segment(parts[-2] if len(parts) >= 2 else parts[0])


@functools.lru_cache(maxsize=8192)
def _area_of_segment(segment: str) -> tuple[str, tuple[str, ...], str] | None:
    # cached: every listing write and a catalog's full read derive areas, and areas repeat (folding each
    # word's characters was most of the 2.5 s of Python a full read of 100,000 listings took)
    spelling = tuple(_WORD.findall(segment))
    if not spelling or len(spelling) > WHERE_MAX_WORDS:
        return None
    slug = _slug(spelling)
    if len(slug) > WHERE_MAX or not _WHERE.fullmatch(slug):  # too long, or folds to something not letters and digits
        return None
    if not keyword_words(" ".join(slug.split("-"))):  # only common words ("The"): not an area anyone names
        return None
    return slug, spelling, " ".join(segment.split())

