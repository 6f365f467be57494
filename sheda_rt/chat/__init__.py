"""Chat: messages between two users, over the WebSocket first and REST second.

`frames` is the wire format (what clients send and receive), `store` the two
collections, `batcher` the group commit, `service` the rules. Handlers parse
and call the service; the hub delivers.
"""
