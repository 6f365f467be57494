"""Agents' weekly availability windows and the viewings clients book inside them."""
