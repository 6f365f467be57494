"""Paid promotions of listings (issue 18 §2): featured for N days, or a bump to the top of "newest"."""
