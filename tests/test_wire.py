"""One JSON encoder for everything on the wire (sheda_rt/wire.py): a socket frame carrying
a datetime gets the contract's timestamp format, exactly as a REST body would, and a value
the contract has no form for is refused where the frame is built instead of going out as
Python's str()."""
from __future__ import annotations

import json
from datetime import date, datetime, timezone
from decimal import Decimal

import pytest
from bson.decimal128 import Decimal128

from sheda_rt.wire import encode

WHEN = datetime(2025, 10, 16, 10, 0, 0, 123456, tzinfo=timezone.utc)


async def test_a_frame_published_to_a_socket_writes_dates_in_the_contracts_format(sheda):
    alice = await sheda.signup()
    ws = await sheda.ws(alice.token)
    try:
        # Any feature's event reaches sockets through the hub: what it encodes is what clients parse.
        await sheda.ctx.hub.publish_to_user(alice.id, {"type": "wire.check", "at": WHEN, "day": date(2025, 10, 16),
                                                       "amount": Decimal128("1500000.50")})
        frame = await ws.wait_type("wire.check")
        assert frame["at"] == "2025-10-16T10:00:00.123Z"  # was "2025-10-16 10:00:00.123456+00:00"
        assert frame["day"] == "2025-10-16" and frame["amount"] == "1500000.50"
    finally:
        ws.close()


def test_encoding_is_compact_utf8_and_refuses_what_the_contract_has_no_form_for():
    text = encode({"message": "Ẹ ku àárọ̀ 🏠", "price": Decimal("12.50"), "ids": (1, 2), "at": WHEN})
    assert text == '{"message":"Ẹ ku àárọ̀ 🏠","price":"12.50","ids":[1,2],"at":"2025-10-16T10:00:00.123Z"}'
    assert json.loads(text)["message"] == "Ẹ ku àárọ̀ 🏠"
    with pytest.raises(TypeError):
        encode({"x": object()})
