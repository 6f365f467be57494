"""The fuzzing gate: schemathesis against the served OpenAPI document.

Every operation of `/api/v1/openapi.json` gets generated requests, valid ones and
invalid ones, sent to `python run.py` on a real port as a client, an agent, a builder
and an admin (public operations without a token). Every answer must be something the
document promises: no 5xx, a documented status, the documented content type and
headers, a body that matches the documented schema. Zero failures are allowed; a
failure names the operation, the role, the check and a curl command that reproduces it.

Identities are made per operation, so one operation's destructive requests (logout,
deactivation, a password reset, an admin deactivating ids it guessed) never take the
token another operation runs with; the admin (promoted with `run.py promote-admin`)
logs in again for each operation and is replaced when an operation deactivated it.
Path ids are often the ids of real records those identities own (a listing, a window,
viewings, a contract, a project and its unit, a category), so the fuzzer also reaches the success
paths and their response schemas, not only 404s. The auth operations go last: fuzzing
the login runs into the login throttle, which must not stop the admin's own logins.
The server has a payment gateway (the tests' local Paystack), as in production.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings, strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance, response_headers_conformance, response_schema_conformance, status_code_conformance,
)

from tests.live_support import Identity, LiveServer
from tests.paystack_server import SECRET, FakePaystack

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance]
# Requests per operation and role, valid and invalid ones together: ~90 operations x
# (up to 4 roles) keeps the whole gate within a few minutes on two shared cores.
EXAMPLES = 10


# Operations whose body names a record: real bodies to send besides the generated ones.
BODY_IDS = {"POST /api/v1/payments": [lambda world: {"purpose": "contract", "target_id": world.ids["contract_id"][0]}]}


@pytest.fixture(scope="module")
def paystack():
    """The local Paystack of tests/paystack_server.py, on an event loop of its own in a thread
    (this module's requests block), so POST /payments goes through a real checkout start
    instead of answering 503 payments_not_configured."""
    loop = asyncio.new_event_loop()
    gateway = FakePaystack()
    started = concurrent.futures.Future()

    def serve():
        asyncio.set_event_loop(loop)
        loop.call_soon(lambda: started.set_result(gateway.start()))
        loop.run_forever()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    started.result(timeout=10)
    yield gateway
    loop.call_soon_threadsafe(gateway.stop)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


@pytest.fixture(scope="module")
def fuzz_server(embedded_db, tmp_path_factory, paystack):
    server = LiveServer(tmp_path_factory.mktemp("fuzz"), embedded_db.uri, PAYSTACK_SECRET_KEY=SECRET,
                       PAYSTACK_BASE_URL=paystack.base_url, PAYMENT_CALLBACK_URL="https://app.example.com/paid").start()
    yield server
    server.stop()


@dataclass
class World:
    """Who calls an operation, and the real records whose ids its path may name."""
    client: Identity
    agent: Identity
    builder: Identity
    admin: Identity
    ids: dict[str, list[int]] = field(default_factory=dict)
    bodies: dict[str, list[dict]] = field(default_factory=dict)  # operation label -> real bodies to send too

    @property
    def roles(self) -> dict[str, str]:
        return {"client": self.client.access_token, "agent": self.agent.access_token, "builder": self.builder.access_token,
                "admin": self.admin.access_token}


def created(server: LiveServer, path: str, body: dict, who: Identity) -> dict:
    status, answer = server.request("POST", path, body, token=who.access_token)
    assert status == 201, (path, status, answer)
    return answer


def make_world(server: LiveServer, admin: Identity, *, records: bool) -> World:
    """Fresh users for one operation; with `records`, a listing, an availability window, a
    booked viewing, a conversation, a project with a unit, and a category."""
    world = World(server.signup("client"), server.signup("agent"), server.signup("builder"), admin)
    if not records:
        return world
    client, agent, builder = world.client, world.agent, world.builder
    prop = created(server, "/api/v1/properties", {
        "title": "2 bedroom flat", "description": "Bright and quiet", "price": "2500000.00", "location": "Lekki Phase 1, Lagos",
        "property_type": "apartment", "listing_type": "rent", "bedroom": 2, "bathroom": 2}, agent)
    day = datetime.now(timezone.utc) + timedelta(days=2)
    weekday = ("MONDAY", "TUESDAY", "WEDNESDAY", "THURSDAY", "FRIDAY", "SATURDAY", "SUNDAY")[day.weekday()]
    window = created(server, "/api/v1/availability", {"weekday": weekday, "start_time": "08:00", "end_time": "18:00"}, agent)
    when = day.replace(hour=10, minute=0, second=0, microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")
    appointment = created(server, "/api/v1/appointments", {"property_id": prop["id"], "scheduled_at": when}, client)
    # A second viewing, of a second listing (one open viewing per client and property), confirmed, and the
    # rental contract the client opens from it.
    rented = created(server, "/api/v1/properties", {
        "title": "3 bedroom flat", "description": "Near the lagoon", "price": "3500000.00", "location": "Lekki Phase 1, Lagos",
        "property_type": "apartment", "listing_type": "rent", "bedroom": 3, "bathroom": 2}, agent)
    later = (day + timedelta(days=7)).replace(hour=11, minute=0, second=0, microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")
    viewing = created(server, "/api/v1/appointments", {"property_id": rented["id"], "scheduled_at": later}, client)
    status, answer = server.request("PATCH", f"/api/v1/appointments/{viewing['id']}/confirm", token=agent.access_token)
    assert status == 200, answer
    status, answer = server.request("PUT", "/api/v1/users/me/account-info",
                                    {"account_name": "Ada Agent", "bank_name": "Sheda Bank", "account_number": "0123456789"},
                                    token=agent.access_token)
    assert status in (200, 201), answer
    contract = created(server, f"/api/v1/contracts/{rented['id']}", {"appointment_id": viewing["id"], "term_months": 12}, client)
    created(server, "/api/v1/chats", {"receiver_id": agent.id, "message": "Is it still available?"}, client)
    project = created(server, "/api/v1/projects", {"name": "Palm Court", "location": "Lekki, Lagos"}, builder)
    units = created(server, f"/api/v1/projects/{project['id']}/units", {"units": [
        {"unit_number": "A-101", "floor": 1, "type": "apartment", "bedrooms": 2, "area_sqm": 85.5, "price": "45000000.00"}]}, builder)
    unit_ids = [unit["id"] for unit in units["items"]]
    category = created(server, "/api/v1/categories", {"name": "category " + builder.username}, admin)
    users = [client.id, agent.id, builder.id]
    world.ids = {"property_id": [prop["id"]], "window_id": [window["id"]], "appointment_id": [appointment["id"], viewing["id"]],
                 "user_id": users, "other_user_id": users, "agent_id": [agent.id], "builder_id": [builder.id],
                 "project_id": [project["id"]], "unit_id": unit_ids, "category_id": [category["id"]],
                 "contract_id": [contract["id"]],
                 "id": [prop["id"], contract["id"]]}  # /contracts/{id}: a property to POST, a contract to GET
    world.bodies = {label: [make(world) for make in makers] for label, makers in BODY_IDS.items()}
    return world


def strategies_for(operation, world: World) -> list:
    names = [p.name for p in operation.path_parameters]
    known = {name: world.ids[name] for name in names if name in world.ids}
    found = []
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
        try:
            found.append(operation.as_strategy(generation_mode=mode))
            if known and mode is GenerationMode.POSITIVE:
                # Real ids, so requests get past the 404 to the operation's own rules.
                for combo in itertools.product(*known.values()):
                    found.append(operation.as_strategy(generation_mode=mode, path_parameters=dict(zip(known, combo))))
            if mode is GenerationMode.POSITIVE:
                found.extend(operation.as_strategy(generation_mode=mode, body=body) for body in world.bodies.get(operation.label, []))
        except Exception as exc:  # an operation a mode cannot express (nothing to negate): nothing to send
            if mode is GenerationMode.POSITIVE:
                raise AssertionError(f"{operation.label}: schemathesis cannot generate requests: {exc!r}")
    return found


class Findings:
    def __init__(self):
        self.items: dict[tuple, str] = {}
        self.requests = 0

    def add(self, key: tuple, text: str) -> None:
        self.items.setdefault(key, text)

    def report(self) -> str:
        return "\n\n".join(f"[{' | '.join(map(str, key))}]\n{text}" for key, text in self.items.items())


def fuzz_operation(server: LiveServer, operation, role: str, token: str | None, world: World, findings: Findings,
                   session: requests.Session) -> None:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    strategy = st.one_of(strategies_for(operation, world))

    @settings(max_examples=EXAMPLES, deadline=None, database=None, phases=[Phase.explicit, Phase.generate],
              suppress_health_check=list(HealthCheck), print_blob=False)
    @given(case=strategy)
    def run(case):
        findings.requests += 1
        try:
            response = case.call(base_url=server.base_url, session=session, headers=headers, timeout=30)
        except requests.RequestException as exc:
            findings.add((operation.label, role, "no HTTP answer", type(exc).__name__),
                         f"{exc}\n{case.as_curl_command(headers=headers)}")
            return
        try:
            case.validate_response(response, checks=CHECKS, headers=headers)
        except FailureGroup as group:
            for failure in group.exceptions:
                findings.add((operation.label, role, failure.title, response.status_code),
                             f"{failure.message}\nbody: {response.text[:400]}\n{case.as_curl_command(headers=headers)}")

    run()


def test_every_operation_answers_as_documented(fuzz_server, paystack):
    schema = schemathesis.openapi.from_url(fuzz_server.base_url + "/api/v1/openapi.json")
    operations = sorted((result.ok() for result in schema.get_all_operations()), key=lambda op: op.path.startswith("/api/v1/auth/"))
    assert len(operations) > 40
    admin = fuzz_server.admin()
    findings = Findings()
    session = requests.Session()
    for operation in operations:
        try:
            admin = fuzz_server.login(admin)  # a session of its own for each operation
        except AssertionError:  # the last operation deactivated or renamed this admin: promote another
            admin = fuzz_server.admin()
        world = make_world(fuzz_server, admin, records=bool(list(operation.path_parameters)) or operation.label in BODY_IDS)
        secured = bool(operation.definition.raw.get("security"))
        # An event stream never ends for a caller it accepts, so only its refusals are fuzzed here
        # (without a token); tests/test_sse.py reads it with a streaming client.
        streams = "text/event-stream" in (operation.definition.raw["responses"].get("200", {}).get("content") or {})
        for role, token in (world.roles if secured and not streams else {"anonymous": None}).items():
            fuzz_operation(fuzz_server, operation, role, token, world, findings, session)
    print(f"{len(operations)} operations, {findings.requests} requests, {len(paystack.initialized)} checkouts started")
    assert paystack.initialized, "no payment reached the gateway: the seeded contract's checkout never ran"
    assert not findings.items, f"{len(findings.items)} failure classes:\n\n{findings.report()}"
