"""Accounts: users, passwords, OTPs, tokens and the auth check every route uses."""
