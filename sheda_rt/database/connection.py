"""The PyMongo async client, configured once.

Writes are acknowledged only once they are journaled (and, on a replica set,
on a majority): `w="majority", journal=True`. Everything we acknowledge to a
client (a chat ack, a 201) must survive the database process crashing right
after; with the server's in-memory acknowledgement the embedded database lost
the writes of the last ~0.3 s to a kill -9 (measured). A URI that sets `w` or
`journal` itself keeps its own choice.
"""
from __future__ import annotations

from datetime import timezone
from urllib.parse import parse_qsl, urlsplit

from pymongo import AsyncMongoClient


def write_concern_options(uri: str) -> dict:
    """Our durable default, unless the URI chose a write concern."""
    chosen = {k.lower() for k, _ in parse_qsl(urlsplit(uri).query)}
    if chosen & {"w", "journal"}:
        return {}
    return {"w": "majority", "journal": True}


def connect(uri: str, db_name: str):
    client = AsyncMongoClient(uri, tz_aware=True, tzinfo=timezone.utc, serverSelectionTimeoutMS=5000, connectTimeoutMS=5000,
                              **write_concern_options(uri))
    return client, client[db_name]
