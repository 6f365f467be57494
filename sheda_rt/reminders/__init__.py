"""Reaching people whose app is closed, by email and push: viewing and contract reminders and chat digests, all on the durable job queue."""
