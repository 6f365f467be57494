"""Blocking: who may not reach whom (chat, typing, presence, viewings)."""
