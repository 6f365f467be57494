"""The durable job queue: jobs live in the `jobs` collection, not in memory (see runner.py)."""
