"""Public inquiries about listings, and the lead pipeline they feed for agents."""
