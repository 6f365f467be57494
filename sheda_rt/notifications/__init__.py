"""Stored notifications, each also pushed live to the user's sockets."""
