"""Tornado REST and WebSocket handlers: thin edges that parse, authorize and serialize."""
