"""GET /metrics: Prometheus text exposition, and the request hook that feeds the
HTTP metrics.

No authentication, like /health: scrapers rarely carry tokens and the figures
name no user. Keep the port private or filter /metrics at the proxy if that
matters. Under `--processes N` the figures are the sum over all workers
(prometheus_client multiprocess mode; the open-sockets gauge sums the live workers), so any
worker answers for the whole server.
"""
from __future__ import annotations

import os

from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from handlers.base import APIHandler
from handlers.routing import endpoint, route
from sheda_rt.metrics import HTTP_LATENCY, HTTP_REQUESTS
from sheda_rt.pagination import OpenQuery  # scrapers add their own keys (e.g. a federation's match[])


def observe_request(handler) -> None:
    """Called by the application's `log_request`: count and time every finished HTTP request by
    its route template (never the raw path: ids would explode the label set)."""
    route_label = getattr(handler, "route_template", None) or "unmatched"
    method = handler.request.method
    HTTP_REQUESTS.labels(method, route_label, str(handler.get_status())).inc()
    HTTP_LATENCY.labels(method, route_label).observe(handler.request.request_time())


def _registry():
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return registry
    return REGISTRY


class MetricsHandler(APIHandler):
    @endpoint("Prometheus metrics (text format 0.0.4; no authentication)", content_type="text/plain", query=OpenQuery,
              tags=("operations",))
    async def get(self):
        """HTTP requests by route template and status, request latency, open sockets, chat messages
        stored and delivered, batch sizes, broker publish errors, job runs, contracts expired; business
        figures: active listings by listing type (sampled), inquiries and listing views (counters)."""
        self.ctx.listing_gauges.update()  # cheap: from the search's facet sample, never a count
        self.set_header("Content-Type", CONTENT_TYPE_PLAIN_0_0_4)  # what generate_latest writes
        self.finish(generate_latest(_registry()))


default_handlers = [
    route("/metrics", MetricsHandler),
]
