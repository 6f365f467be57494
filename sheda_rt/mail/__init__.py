"""Outgoing email: SMTP when configured, otherwise a file outbox."""
