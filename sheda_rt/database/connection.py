"""The PyMongo async client, configured once."""
from __future__ import annotations

from datetime import timezone

from pymongo import AsyncMongoClient


def connect(uri: str, db_name: str):
    client = AsyncMongoClient(uri, tz_aware=True, tzinfo=timezone.utc, serverSelectionTimeoutMS=5000, connectTimeoutMS=5000)
    return client, client[db_name]
