"""`python run.py demo-data`: loads the demo marketplace through the services, once."""
from __future__ import annotations

import re

from tests.process_support import ServerProcess, run_cli


def _everything(server: ServerProcess, token: str) -> dict:
    """What a client sees of the demo data, to compare before and after a second run."""
    _, projects = server.request("GET", "/api/v1/projects?limit=100")
    _, properties = server.request("GET", "/api/v1/properties?limit=100")
    _, convs = server.request("GET", "/api/v1/chat/conversations", token=token)
    return {"projects": sorted((p["id"], p["name"], p["units_total"]) for p in projects["items"]),
            "properties": sorted((p["id"], p["title"]) for p in properties["items"]),
            "conversations": [(c["user_id"], c["last_message"]["message"]) for c in convs["items"]]}


def test_demo_data_loads_once_and_a_server_serves_it(tmp_path):
    data = tmp_path / "data"
    code, out, err = run_cli(data, "demo-data", timeout=120)
    assert code == 0, err
    assert "demo data loaded" in out and "demo_agent_ada" in out and "demo_client_chioma" in out
    password = re.search(r"password \(all of them\): (\S+)", out).group(1)

    server = ServerProcess(data)
    try:
        server.start()
        # Published projects of verified builders, with their units and a payment plan.
        status, page = server.request("GET", "/api/v1/projects?limit=100")
        assert status == 200
        projects = {p["name"]: p for p in page["items"]}
        assert set(projects) == {"Skyline Gardens", "Harbour View Terraces"}
        skyline = projects["Skyline Gardens"]
        assert skyline["published"] and skyline["unit_counts"]["available"] == 4 and skyline["price_range"]["min"] == "45000000.00"
        assert skyline["bedrooms"] == [2, 3, 4]
        # The search facets were stored too: the location filter finds it.
        status, found = server.request("GET", "/api/v1/projects?location=lekki")
        assert [p["name"] for p in found["items"]] == ["Skyline Gardens"]
        status, builder = server.request("GET", f"/api/v1/builders/{skyline['builder_id']}")
        assert status == 200 and builder["verified"] is True and builder["username"] == "demo_builder_skyline"
        status, plans = server.request("GET", f"/api/v1/projects/{skyline['id']}/payment-plans")
        assert status == 200 and [ln["percent"] for ln in plans["items"][0]["lines"]] == ["30.00", "40.00", "30.00"]

        # Agents' listings, each agent with viewing windows.
        status, page = server.request("GET", "/api/v1/properties?limit=100")
        assert status == 200 and len(page["items"]) == 4
        status, rentals = server.request("GET", "/api/v1/properties?listing_type=rent&location=yaba")
        assert [p["title"] for p in rentals["items"]] == ["2 bedroom flat in Yaba"]
        agent_id = rentals["items"][0]["agent_id"]
        status, windows = server.request("GET", f"/api/v1/agents/{agent_id}/availability")
        assert status == 200, windows
        assert len(windows if isinstance(windows, list) else windows["items"]) == 3

        # Every demo account logs in with the printed password; the client has the chat with the agent.
        for username in ("demo_builder_skyline", "demo_agent_ada", "demo_client_musa"):
            status, _ = server.request("POST", "/api/v1/auth/login", {"username": username, "password": password})
            assert status == 200, username
        status, tokens = server.request("POST", "/api/v1/auth/login", {"username": "demo_client_chioma", "password": password})
        assert status == 200
        before = _everything(server, tokens["access_token"])
        assert before["conversations"] == [(agent_id, "Yes it is. I can show it to you on Saturday morning.")]

        # A second run, against the running server's database, adds nothing.
        code, out, err = run_cli(data, "demo-data", timeout=120)
        assert code == 0, err
        assert "already loaded" in out and "nothing added" in out
        assert _everything(server, tokens["access_token"]) == before
    finally:
        server.stop()
        server.kill()


def test_demo_data_is_not_loaded_by_default_and_takes_a_password(tmp_path):
    data = tmp_path / "data"
    server = ServerProcess(data)
    try:
        server.start()
        status, page = server.request("GET", "/api/v1/projects")
        assert status == 200 and page["items"] == []
        code, out, err = run_cli(data, "demo-data", "--password", "my-demo-pass-1", timeout=120)
        assert code == 0 and "my-demo-pass-1" in out, err
        status, _ = server.request("POST", "/api/v1/auth/login", {"username": "demo_agent_tunde", "password": "my-demo-pass-1"})
        assert status == 200
    finally:
        server.stop()
        server.kill()
