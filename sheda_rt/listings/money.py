"""Money on the wire and in storage.

Decision (documented in the API): amounts travel as decimal strings with two
decimals ("2500000.00") in every response; requests may send a decimal string
or an integer (naira). A JSON float is refused with 422, because 0.1 + 0.2 is
not how anybody wants rent computed.

Storage keeps two fields: `price` as Decimal128 (the exact amount, numeric for
anyone reading the database) and `price_minor`, the same amount as an int64 in
kobo. Search filters and sorts use `price_minor`: it is exact too, and the
embedded database compares int64 about ten times faster than Decimal128
(measured: sorting 16,000 documents by a Decimal128 field took 12 s, by an
int64 field 1 s), which matters for every sorted search page.
"""
from __future__ import annotations

import re
from decimal import Decimal
from typing import Annotated, Any

from bson.decimal128 import Decimal128
from bson.int64 import Int64
from pydantic import BeforeValidator, WithJsonSchema

from sheda_rt.errors import FieldError

CENT = Decimal("0.01")
MAX_AMOUNT = Decimal("1000000000000")  # one trillion naira: anything above is a typo


#: Digits (at most 13: MAX_AMOUNT has 13), optionally a point and one or two decimals. The same
#: pattern is the documented one, so the OpenAPI schema says exactly what is accepted.
MONEY_TEXT_PATTERN = r"^[0-9]{1,13}(\.[0-9]{1,2})?$"
_MONEY_TEXT = re.compile(MONEY_TEXT_PATTERN[1:-1])


def parse_money(value: Any) -> Decimal:
    """A positive amount with at most two decimals, from a decimal string or an integer.

    Every bound is checked before any Decimal arithmetic: `"1e26"` or `price_max=1e30`
    used to reach `quantize`, which raises decimal.InvalidOperation past 28 digits (a 500).
    Strings must look like the documented pattern (digits, optionally a point and one or
    two decimals), so what the OpenAPI schema promises is what is accepted."""
    if isinstance(value, bool) or isinstance(value, float):
        raise ValueError("must be a decimal string like \"2500000.00\" or an integer, never a JSON float")
    if isinstance(value, Decimal):
        amount = value
    elif isinstance(value, int):
        if value <= 0:
            raise ValueError("must be greater than 0")
        if value > MAX_AMOUNT:
            raise ValueError(f"must be at most {MAX_AMOUNT}")
        return Decimal(value).quantize(CENT)
    elif isinstance(value, str):
        if not _MONEY_TEXT.fullmatch(value):
            if value.startswith("-") and _MONEY_TEXT.fullmatch(value[1:]):
                raise ValueError("must be greater than 0")
            if re.fullmatch(r"[0-9]{1,13}\.[0-9]{3,}", value):
                raise ValueError("has more than two decimals")
            if re.fullmatch(r"[0-9]{14,}(\.[0-9]*)?", value):
                raise ValueError(f"must be at most {MAX_AMOUNT}")
            raise ValueError("must be a decimal string like \"2500000.00\" (digits, at most two decimals)")
        amount = Decimal(value)
    else:
        raise ValueError("must be a decimal string or an integer")
    if not amount.is_finite():
        raise ValueError("must be a finite amount")
    if amount <= 0:
        raise ValueError("must be greater than 0")
    if amount > MAX_AMOUNT:
        raise ValueError(f"must be at most {MAX_AMOUNT}")
    # Now at most 13 integer digits: quantize cannot overflow the 28-digit context.
    if amount != amount.quantize(CENT, rounding="ROUND_DOWN"):
        raise ValueError("has more than two decimals")
    return amount.quantize(CENT)


Money = Annotated[
    Decimal,
    BeforeValidator(parse_money),
    WithJsonSchema({"anyOf": [{"type": "string", "pattern": MONEY_TEXT_PATTERN, "maxLength": 16},
                              {"type": "integer", "minimum": 1, "maximum": int(MAX_AMOUNT)}],
                    "description": f"Naira as a decimal string (\"2500000.00\") or an integer, more than 0 and at most "
                                   f"{int(MAX_AMOUNT):,}; JSON floats are rejected",
                    "examples": ["2500000.00"]}),
]


def check_price_range(price_min: Decimal | None, price_max: Decimal | None) -> None:
    """The price_min/price_max filters of a search (listings, projects, units): a range that can hold
    nothing is the client's mistake, reported under price_max (422)."""
    if price_min is not None and price_max is not None and price_min > price_max:
        raise FieldError("price_max", "price_min must not exceed price_max")


def to_decimal128(amount: Decimal) -> Decimal128:
    return Decimal128(amount.quantize(CENT))


def to_minor(amount: Decimal) -> Int64:
    """Naira → kobo as an int64 (exact: amounts have at most two decimals)."""
    return Int64(int((amount.quantize(CENT) * 100).to_integral_value()))


def format_money(value: Any) -> str | None:
    """Decimal128 / Decimal / int → "2500000.00"."""
    if value is None:
        return None
    if isinstance(value, Decimal128):
        value = value.to_decimal()
    return str(Decimal(value).quantize(CENT))
