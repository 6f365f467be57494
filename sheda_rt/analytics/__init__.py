"""Listing analytics for agents: views, favourites, inquiries, viewings and contracts per day."""
