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
OPLOG_TRIMMED = Histogram("sheda_embedded_oplog_trimmed_rows", "Oplog entries the embedded database dropped per trim this process asked for",
                          buckets=(0, 10, 50, 100, 200, 500, 1000, 5000, 20000, 100000))
BROKER_PUBLISH_ERRORS = Counter("sheda_broker_publish_errors_total", "Failed publishes to the cross-process broker")
JOB_RUNS = Counter("sheda_job_runs_total", "Periodic job runs", ["job", "outcome"])
CONTRACTS_EXPIRED = Counter("sheda_contracts_expired_total", "Contracts expired by the job or an admin")
# [leads, analytics] business counters: rate() over an hour gives inquiries and views per hour.
INQUIRIES = Counter("sheda_inquiries_total", "Public inquiries stored (each became a lead)")
LISTING_VIEWS = Counter("sheda_listing_views_total", "Listing views counted (one per viewer per listing per day)")

# Business gauges (issue 16 §2). Inquiries and views per hour need no gauge: PromQL
# `sum(increase(sheda_inquiries_total[1h]))` and `sum(increase(sheda_listing_views_total[1h]))`
# (the counters are summed over workers, dead ones included, and increase() absorbs restarts).
# mostrecent: every process estimates the same collection; the latest scrape's figure is the value.
ACTIVE_LISTINGS = Gauge("sheda_listings_active", "Listings search shows (available and listed), by listing type; estimated from "
                        "the search's facet sample (exact up to its 2,000 listings), refreshed at most every 10 minutes",
                        ["listing_type"], multiprocess_mode="mostrecent")
LISTING_TYPES = ("rent", "sale")


class ListingGauges:
    """Sets ACTIVE_LISTINGS when /metrics is scraped, from the listings' facet sample
    (sheda_rt/search.py FacetStats, which the search keeps anyway: ~2,000 listings read by
    `_id` at most every 10 minutes, in the background).

    Why not a count: the embedded database counts by reading every document (~10 s of its
    one core at 100,000 listings), and even on MongoDB a scrape every 15 s should not walk an
    index of every active listing. A uniform sample of the ids is off by about 1% of the total
    at 100,000 listings, exact below 2,000, and costs nothing per scrape."""

    def __init__(self, stats, listing_types=LISTING_TYPES):
        self.stats = stats
        self.listing_types = tuple(listing_types)

    def update(self) -> None:
        self.stats.refresh_soon()
        for lt in self.listing_types:
            facet = f"l:{lt}"
            n = self.stats.estimate(lambda row: row.get("status") == "available" and row.get("is_active", True) is not False
                                    and facet in row["facets"])
            if n is not None:  # no sample yet (the first scrape starts one): no figure rather than a wrong 0
                ACTIVE_LISTINGS.labels(listing_type=lt).set(n)
