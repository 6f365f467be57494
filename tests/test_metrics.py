"""GET /metrics as a Prometheus scraper sees it."""
from __future__ import annotations

from tests.redis_support import parse_metrics


async def scrape(sheda) -> dict:
    resp = await sheda.api.get("/metrics")
    assert resp.status == 200, resp
    return parse_metrics(resp.body.decode())


def count(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_is_prometheus_text_without_auth(sheda):
    resp = await sheda.api.get("/metrics")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    text = resp.body.decode()
    for family in ("sheda_http_requests_total", "sheda_http_request_duration_seconds", "sheda_ws_open_sockets",
                   "sheda_chat_messages_stored_total", "sheda_chat_messages_delivered_total", "sheda_chat_batch_size",
                   "sheda_broker_publish_errors_total", "sheda_job_runs_total", "sheda_contracts_expired_total"):
        assert f"# TYPE {family}" in text, family
    # A token is not needed, and a bad one does not matter either.
    assert (await sheda.api.get("/metrics", token="not-a-token")).status == 200


async def test_requests_are_counted_by_route_template_status_and_timed(sheda):
    before = await scrape(sheda)
    user = await sheda.signup("client")
    for _ in range(3):
        assert (await sheda.api.get(f"/api/v1/users/{user.id}", token=user.token)).status == 200
    assert (await sheda.api.get("/api/v1/users/999999999", token=user.token)).status == 404
    assert (await sheda.api.get("/api/v1/users/me")).status == 401
    assert (await sheda.api.get("/no/such/route/123")).status == 404
    after = await scrape(sheda)

    def delta(name, **labels):
        return count(after, name, **labels) - count(before, name, **labels)

    template = "/api/v1/users/{user_id:int}"
    assert delta("sheda_http_requests_total", method="GET", route=template, status="200") == 3
    assert delta("sheda_http_requests_total", method="GET", route=template, status="404") == 1
    assert delta("sheda_http_requests_total", method="GET", route="/api/v1/users/me", status="401") == 1
    assert delta("sheda_http_requests_total", method="POST", route="/api/v1/auth/register", status="201") == 1
    # Unknown paths share one label: raw paths would make the label set unbounded.
    assert delta("sheda_http_requests_total", method="GET", route="unmatched", status="404") == 1
    assert not any(dict(labels).get("route", "").startswith("/no/such") for _, labels in after)
    # No raw ids in any route label: every one is a template or "unmatched".
    routes = {dict(labels)["route"] for name, labels in after if name == "sheda_http_requests_total"}
    assert not any(part.isdigit() for r in routes for part in r.split("/")), routes
    # The latency histogram saw the same four requests on the template.
    assert delta("sheda_http_request_duration_seconds_count", method="GET", route=template) == 4
    assert delta("sheda_http_request_duration_seconds_bucket", method="GET", route=template, le="+Inf") == 4
    assert delta("sheda_http_request_duration_seconds_sum", method="GET", route=template) > 0


async def test_metrics_route_is_documented_as_public(sheda):
    spec = (await sheda.api.get("/api/v1/openapi.json")).json
    op = spec["paths"]["/metrics"]["get"]
    assert not op.get("security")
