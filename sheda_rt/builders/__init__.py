"""Builders: off-plan projects, their units and payment plans (issue 17)."""
