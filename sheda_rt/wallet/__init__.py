"""The wallet: naira balances kept as a double-entry ledger (issue 18 §2)."""
