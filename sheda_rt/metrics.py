"""Prometheus metrics, defined once. Features increment these; GET /metrics renders them."""
from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

HTTP_REQUESTS = Counter("sheda_http_requests_total", "HTTP requests", ["method", "route", "status"])
HTTP_LATENCY = Histogram("sheda_http_request_duration_seconds", "HTTP request latency", ["method", "route"],
                         buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
# livesum: with several workers, the total over the live ones (a dead worker's count is dropped).
OPEN_SOCKETS = Gauge("sheda_ws_open_sockets", "Open WebSocket connections", multiprocess_mode="livesum")
MESSAGES_STORED = Counter("sheda_chat_messages_stored_total", "Chat messages stored")
MESSAGES_DELIVERED = Counter("sheda_chat_messages_delivered_total", "Frames of type message handed to sockets")
BATCH_SIZE = Histogram("sheda_chat_batch_size", "Messages per group-commit insert_many",
                       buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000))
BROKER_PUBLISH_ERRORS = Counter("sheda_broker_publish_errors_total", "Failed publishes to the cross-process broker")
JOB_RUNS = Counter("sheda_job_runs_total", "Periodic job runs", ["job", "outcome"])
CONTRACTS_EXPIRED = Counter("sheda_contracts_expired_total", "Contracts expired by the job or an admin")
# [leads, analytics] business counters: rate() over an hour gives inquiries and views per hour.
INQUIRIES = Counter("sheda_inquiries_total", "Public inquiries stored (each became a lead)")
LISTING_VIEWS = Counter("sheda_listing_views_total", "Listing views counted (one per viewer per listing per day)")
