"""Saved searches and their alerts: a user keeps up to 20 searches of listings and hears of new
matches (a new listing, one listed again, a price drop) at once or in a daily email."""
