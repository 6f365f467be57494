"""Guided search: three questions (what, budget, where) answered from live listings, and the
listings ranked by how well they fit the answers (sheda_rt/guided/service.py)."""
