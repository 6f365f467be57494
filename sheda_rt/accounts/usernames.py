"""Reserved usernames: names that read as the product's or its staff's.

A user called `admin`, `support` or `sheda_official` can message anyone and ask for
a password or a payment; people believe such a name. So these are refused at
registration, and so is anything that *looks* like them: the comparison is on a
skeleton of the name, not the name itself.

Skeleton (applied alike to the reserved words and to the candidate):
1. Unicode NFKC and casefold: fullwidth and mathematical letters, and case, go away.
2. Every non-ASCII character that Unicode lists as confusable with a Latin letter or
   digit becomes that character (Cyrillic `Ѕ`, Greek `ο`...): the Unicode confusables
   data, through `confusable_homoglyphs`.
3. Separators (`_ . -`, spaces) are dropped: `s.u.p.p.o.r.t` is `support`.
4. Digits and signs read as letters become those letters (`0`->o, `1`->l, `5`->s,
   `@`->a ...), and shapes that pass for one another collapse (`i`/`l`, `rn`/`m`,
   `vv`/`w`): `Adm1n` and `adrnin` are `admin`.
A name is reserved when its skeleton, or the skeleton of the name without trailing
digits (`admin2`, `support24`), is a reserved word, or the product's name joined to
a staff word either way round (`sheda_support`, `admin-sheda`).

Only registration checks this; the operator's `run.py create-user` may create any of them.
"""
from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

from confusable_homoglyphs import confusables

PRODUCT_NAMES = ("sheda", "shedart", "sheda_rt", "shedarealty", "shedahomes")
STAFF_WORDS = (
    "admin", "administrator", "admins", "root", "superuser", "sysadmin", "system", "moderator", "mod", "mods",
    "support", "help", "helpdesk", "helpline", "customercare", "customerservice", "care", "service", "security",
    "safety", "trust", "abuse", "staff", "team", "official", "verified", "verify", "verification", "api", "bot",
    "billing", "payments", "payment", "accounts", "account", "finance", "legal", "compliance", "info", "contact",
    "noreply", "no-reply", "postmaster", "webmaster", "hostmaster", "owner", "ceo", "founder", "hq", "news",
    "announcements", "notifications", "null", "undefined", "anonymous",
)
RESERVED_WORDS = PRODUCT_NAMES + STAFF_WORDS

_SEPARATORS = re.compile(r"[\s_.\-]+")
# Glyphs read as letters in names (leetspeak), then shapes that pass for one another.
_AS_LETTERS = str.maketrans({"0": "o", "1": "l", "2": "z", "3": "e", "4": "a", "5": "s", "6": "b", "7": "t", "8": "b",
                             "9": "g", "@": "a", "$": "s", "!": "l", "|": "l", "+": "t", "i": "l"})
_LOOKALIKE_PAIRS = (("rn", "m"), ("vv", "w"), ("cl", "d"))


@lru_cache(maxsize=4096)
def _latin(ch: str) -> str:
    """The ASCII letter or digit Unicode lists `ch` as confusable with, else `ch`."""
    found = confusables.is_confusable(ch, greedy=True, preferred_aliases=["latin"]) or []
    for entry in found:
        for glyph in entry["homoglyphs"]:
            if glyph["c"].isascii() and glyph["c"].isalnum():
                return glyph["c"].lower()
    return ch


def skeleton(name: str) -> str:
    """What `name` looks like, for comparison only (never stored or shown)."""
    text = unicodedata.normalize("NFKC", name).casefold()
    text = "".join(ch if ch.isascii() else _latin(ch) for ch in text)
    text = unicodedata.normalize("NFKC", text).casefold()
    text = _SEPARATORS.sub("", text).translate(_AS_LETTERS)
    for pair, single in _LOOKALIKE_PAIRS:
        text = text.replace(pair, single)
    return text


def _reserved_skeletons() -> frozenset[str]:
    words = {skeleton(w) for w in RESERVED_WORDS}
    products = {skeleton(p) for p in PRODUCT_NAMES}
    staff = {skeleton(w) for w in STAFF_WORDS}
    joined = {p + s for p in products for s in staff} | {s + p for p in products for s in staff}
    return frozenset(words | joined)


_RESERVED = _reserved_skeletons()


def is_reserved(name: str) -> bool:
    """True when `name` reads as the product's or a staff account's name (see the module doc)."""
    stripped = unicodedata.normalize("NFKC", name).rstrip("0123456789")
    return skeleton(name) in _RESERVED or (bool(stripped) and skeleton(stripped) in _RESERVED)


RESERVED_MESSAGE = "is reserved: it reads as a Sheda staff or product name (such as admin or support); choose another"
